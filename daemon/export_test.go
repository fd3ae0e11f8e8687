package daemon

import (
	"github.com/addond/addond/daemon/delivery"
	"github.com/addond/addond/daemon/source"
	"github.com/addond/addond/daemon/store"
)

// withEnv changes a's env (tests, before Run or Stage).
func (a *Agent) withEnv(fn func(e *env)) {
	e := *a.env.Load()
	fn(&e)
	a.env.Store(&e)
}

// useStore makes a read and deliver through st (tests wrap real stores).
func (a *Agent) useStore(st store.Store) {
	a.withEnv(func(e *env) {
		e.store = st
		e.del = a.deliverer(e.cfg, e.keys, st)
	})
}

// setDeliverer gives a the deliverer made from opts, with its keys.
func (a *Agent) setDeliverer(fn func(keys delivery.Options) delivery.Options) {
	a.withEnv(func(e *env) {
		e.del = delivery.New(fn(delivery.Options{Keys: e.keys}))
	})
}

// setSource makes a read its document through st.
func (a *Agent) setSource(st store.Store) {
	a.withEnv(func(e *env) {
		e.src = &source.Store{Store: st, Key: e.cfg.Assignments.StoreKey}
	})
}
