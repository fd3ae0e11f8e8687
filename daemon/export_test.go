package daemon

import (
	"github.com/addond/addond/daemon/delivery"
	"github.com/addond/addond/daemon/store"
)

// newDelivererFor rebuilds a's deliverer over st (tests wrap real stores).
func newDelivererFor(a *Agent, st store.Store) *delivery.Deliverer {
	return delivery.New(delivery.Options{
		Root: a.cfg.RuntimeRoot, Store: st, Keys: a.keys, RequireSignatures: a.cfg.Trust.Required(),
		MaxConcurrent: a.cfg.MaxConcurrentDownloads, Retries: a.cfg.DownloadRetries, MinFree: a.cfg.MinFreeBytes,
	})
}
