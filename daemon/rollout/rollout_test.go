package rollout

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/fleet"
	"github.com/addond/addond/daemon/publish"
	"github.com/addond/addond/daemon/reconcile"
	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/store"
	"github.com/addond/addond/vmtest/miniotest"
)

func TestMain(m *testing.M) { os.Exit(miniotest.Run(m)) }

func TestParseWavesAndPlan(t *testing.T) {
	for in, want := range map[string][]int{"100%": {100}, "10%,50%,100%": {10, 50, 100}, "25, 100": {25, 100}} {
		if got, err := ParseWaves(in); err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("ParseWaves(%q) = %v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "50%", "0%,100%", "50%,40%,100%", "101%", "x", "50%,50%,100%"} {
		if _, err := ParseWaves(bad); err == nil {
			t.Errorf("ParseWaves(%q) accepted", bad)
		}
	}
	agents := strings.Split("a b c d e f g h i j", " ")
	for _, c := range []struct {
		canary int
		waves  []int
		want   string
	}{
		{1, []int{100}, "a|b c d e f g h i j"},
		{1, []int{10, 50, 100}, "a|b c d e|f g h i j"}, // 10 % is 1 agent, the canary already
		{0, []int{30, 100}, "a b c|d e f g h i j"},
		{3, []int{25, 100}, "a b c|d e f g h i j"},
		{20, []int{100}, "a b c d e f g h i j"},
		{2, []int{11, 100}, "a b|c d e f g h i j"}, // 11 % of 10 rounds up to 2
	} {
		var got []string
		for _, w := range Plan(agents, c.canary, c.waves) {
			got = append(got, strings.Join(w, " "))
		}
		if g := strings.Join(got, "|"); g != c.want {
			t.Errorf("Plan(canary %d, %v) = %s, want %s", c.canary, c.waves, g, c.want)
		}
	}
}

func TestJudge(t *testing.T) {
	st := func(version, active string, state reconcile.State, health string, probation bool) reconcile.AddonStatus {
		return reconcile.AddonStatus{AddonID: "hello", Version: version, ActiveVersion: active, State: state, Health: reconcile.Health(health), Probation: probation, LastError: "why"}
	}
	for _, c := range []struct {
		name   string
		serial uint64
		a      *reconcile.AddonStatus
		want   Verdict
	}{
		{"no report", 5, nil, Pending},
		{"a report without the add-on", 5, &reconcile.AddonStatus{}, Pending},
		{"running healthy past probation", 5, ptr(st("2.0.0", "2.0.0", reconcile.StateRunning, "healthy", false)), Promoted},
		{"on probation", 5, ptr(st("2.0.0", "2.0.0", reconcile.StateRunning, "healthy", true)), Pending},
		{"running unhealthy", 5, ptr(st("2.0.0", "2.0.0", reconcile.StateRunning, "unhealthy", false)), Pending},
		{"still the old version", 5, ptr(st("2.0.0", "1.0.0", reconcile.StateDownloading, "healthy", false)), Pending},
		{"rolled back", 5, ptr(st("2.0.0", "1.0.0", reconcile.StateRolledBack, "healthy", false)), Failed},
		{"failed", 5, ptr(st("2.0.0", "", reconcile.StateFailed, "unknown", false)), Failed},
		{"an older document's rollback of the version", 6, ptr(st("2.0.0", "1.0.0", reconcile.StateRolledBack, "healthy", false)), Pending},
	} {
		var rep *fleet.Report
		if c.a != nil {
			rep = &fleet.Report{AgentID: "a", Serial: 5}
			if c.a.AddonID != "" {
				rep.Addons = []reconcile.AddonStatus{*c.a}
			}
		}
		if got, why := Judge(rep, "hello", "2.0.0", c.serial); got != c.want || got == Failed && !strings.Contains(why, "why") {
			t.Errorf("%s: %v %q, want %v", c.name, got, why, c.want)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// world is a store with hello 1.0.0, 2.0.0 and 3.0.0 published, agents
// assigned hello@1.0.0 and other@1.0.0, and simulated agents: each reads
// its document and reports hello's version promoted, except 3.0.0, which
// it rolls back; silent agents never report.
type world struct {
	t      *testing.T
	st     store.Store
	key    ed25519.PrivateKey
	agents []string
	silent map[string]bool
	log    []string
	mu     sync.Mutex
}

func newWorld(t *testing.T, kind string, n int) *world {
	var st store.Store
	var err error
	switch kind {
	case "file":
		st, err = store.NewDir(t.TempDir())
	case "s3":
		st, err = store.Open(miniotest.Require(t).NewBucket(t))
	}
	if err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	w := &world{t: t, st: st, key: key, silent: map[string]bool{}}
	bin := filepath.Join(t.TempDir(), "hello")
	ctx := context.Background()
	for _, p := range []string{"hello@1.0.0", "hello@2.0.0", "hello@3.0.0", "other@1.0.0", "other@2.0.0"} {
		id, v, _ := strings.Cut(p, "@")
		os.WriteFile(bin, []byte("binary of "+p), 0o755)
		if _, err := publish.Publish(ctx, publish.PublishOptions{Store: st, Key: key, AddonID: id, Version: v,
			Files: []publish.File{{Platform: assignment.Platform{OS: "linux", Arch: "amd64"}, Path: bin}}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		a := fmt.Sprintf("edge-%02d", i+1)
		w.agents = append(w.agents, a)
		if _, err := publish.Assign(ctx, publish.AssignOptions{Store: st, AgentID: a, Key: key, Addons: []string{"hello@1.0.0", "other@1.0.0"},
			Args: map[string][]string{"hello": {"--mode", a}}}); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

// simulate runs the agents until ctx is done.
func (w *world) simulate(ctx context.Context) {
	var wg sync.WaitGroup
	for _, a := range w.agents {
		if w.silent[a] {
			continue
		}
		wg.Go(func() {
			var seen uint64
			for ctx.Err() == nil {
				time.Sleep(20 * time.Millisecond)
				raw, _, err := store.ReadSmall(ctx, w.st, publish.AssignmentsKey(a), assignment.MaxDocumentSize, store.OpenOptions{})
				if err != nil {
					continue
				}
				doc, err := assignment.Parse(raw)
				if err != nil || doc.Serial == seen {
					continue
				}
				seen = doc.Serial
				rep := fleet.Report{AgentID: a, ReportedAt: time.Now(), Ready: true, DocumentFresh: true, Serial: doc.Serial}
				for _, e := range doc.Addons {
					s := reconcile.AddonStatus{AddonID: e.AddonID, Version: e.Version, ActiveVersion: e.Version, State: reconcile.StateRunning, Health: "healthy"}
					if e.Version == "3.0.0" {
						s.ActiveVersion, s.State, s.LastError = "1.0.0", reconcile.StateRolledBack, "not healthy within the 1m0s probation: exit status 3"
					}
					rep.Addons = append(rep.Addons, s)
				}
				data, _ := rep.Marshal()
				w.st.Put(context.WithoutCancel(ctx), fleet.ReportKey(a), bytes.NewReader(data), int64(len(data)))
			}
		})
	}
	wg.Wait()
}

func (w *world) run(ctx context.Context, o Options) (*Progress, error) {
	o.Store, o.Key, o.AddonID = w.st, w.key, "hello"
	if o.Waves == nil {
		o.Waves = []int{100}
	}
	if o.Wait == 0 {
		o.Wait = 20 * time.Second
	}
	o.Poll = 20 * time.Millisecond
	also := o.Log
	o.Log = func(s string) {
		w.mu.Lock()
		w.log = append(w.log, s)
		w.mu.Unlock()
		if also != nil {
			also(s)
		}
	}
	simCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.simulate(simCtx); close(done) }()
	defer func() { stop(); <-done }()
	return Run(ctx, o)
}

// doc is agent a's document, its signature checked.
func (w *world) doc(a string) *assignment.Document {
	w.t.Helper()
	ctx := context.Background()
	raw, _, err := store.ReadSmall(ctx, w.st, publish.AssignmentsKey(a), assignment.MaxDocumentSize, store.OpenOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	sigData, _, err := store.ReadSmall(ctx, w.st, publish.AssignmentsKey(a)+".sig", 1024, store.OpenOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	sig, _ := signing.ParseSigFile(sigData)
	if !ed25519.Verify(w.key.Public().(ed25519.PublicKey), raw, sig) {
		w.t.Fatalf("%s: its document's signature does not verify", a)
	}
	doc, err := assignment.Parse(raw)
	if err != nil {
		w.t.Fatal(err)
	}
	return doc
}

func helloOf(d *assignment.Document) assignment.Addon { return d.Addons[entry(d, "hello")] }

func TestRolloutWaves(t *testing.T) {
	for _, kind := range []string{"file", "s3"} {
		t.Run(kind, func(t *testing.T) {
			w := newWorld(t, kind, 10)
			before := map[string]*assignment.Document{}
			for _, a := range w.agents {
				before[a] = w.doc(a)
			}
			var stands []Stand
			p, err := w.run(context.Background(), Options{Version: "2.0.0", All: true, Canary: 1, Waves: []int{50, 100},
				Progress: func(s Stand) { stands = append(stands, s) }})
			if err != nil {
				t.Fatalf("%v\n%s", err, strings.Join(w.log, "\n"))
			}
			checkStands(t, stands, []int{1, 4, 5})
			if p.State != "done" || len(p.Waves) != 3 || len(p.Waves[0]) != 1 || len(p.Waves[1]) != 4 {
				t.Fatalf("progress %+v", p)
			}
			for _, a := range w.agents {
				if s := p.Agents[a].Status; s != StatusPromoted {
					t.Errorf("%s: %s", a, s)
				}
				b, d := before[a], w.doc(a)
				// Only hello's version and artifact fields changed; its
				// args and the other entry are as they were.
				if d.Serial != b.Serial+1 || len(d.Addons) != 2 {
					t.Fatalf("%s: serial %d -> %d, %d entries", a, b.Serial, d.Serial, len(d.Addons))
				}
				h, old := helloOf(d), helloOf(b)
				if h.Version != "2.0.0" || h.Artifacts["linux/amd64"].SHA256 == old.Artifacts["linux/amd64"].SHA256 || !reflect.DeepEqual(h.Args, old.Args) {
					t.Fatalf("%s: hello %+v", a, h)
				}
				if p, _, err := assignment.VerifyPackage(nil, "hello", "2.0.0", h.PackageJSON, []byte(h.PackageSig)); err != nil || p.Version != "2.0.0" {
					t.Fatalf("%s: the embedded package is not 2.0.0's: %v", a, err)
				}
				h.Version, h.Artifacts, h.BinaryPath, h.PackageJSON, h.PackageSig = old.Version, old.Artifacts, old.BinaryPath, old.PackageJSON, old.PackageSig
				if !reflect.DeepEqual(h, old) || !reflect.DeepEqual(d.Addons[entry(d, "other")], b.Addons[entry(b, "other")]) {
					t.Fatalf("%s: fields other than the version, artifacts and package changed:\n%+v\n%+v", a, h, old)
				}
			}
			// The record is there; running it again is refused, resuming
			// a done rollout too.
			if _, err := w.run(context.Background(), Options{Version: "2.0.0", All: true}); err == nil || !strings.Contains(err.Error(), "--resume") {
				t.Fatalf("a second rollout of 2.0.0: %v", err)
			}
			if _, err := w.run(context.Background(), Options{Version: "2.0.0", Resume: true}); err == nil || !strings.Contains(err.Error(), "is done") {
				t.Fatalf("resuming a done rollout: %v", err)
			}
		})
	}
}

// TestRolloutHalts: a version every agent rolls back halts the rollout
// after the canary; nothing else is touched; --revert-on-halt gives the
// canary its entry back.
func TestRolloutHalts(t *testing.T) {
	for _, revert := range []bool{false, true} {
		t.Run(fmt.Sprintf("revert=%v", revert), func(t *testing.T) {
			w := newWorld(t, "file", 5)
			var last Stand
			p, err := w.run(context.Background(), Options{Version: "3.0.0", Agents: w.agents, Canary: 1, Waves: []int{100}, RevertOnHalt: revert,
				Progress: func(s Stand) { last = s }})
			if !errors.Is(err, ErrHalted) || p.State != "halted" {
				t.Fatalf("%v, %+v\n%s", err, p, strings.Join(w.log, "\n"))
			}
			if want := (Stand{Wave: 1, Waves: 2, Name: "wave 1/2 (canary)", Agents: 1, Failed: 1, Total: 5}); last != want {
				t.Fatalf("progress shown last: %+v, want %+v", last, want)
			}
			canary := p.Agents["edge-01"]
			if canary.Status != StatusFailed || !strings.Contains(canary.Reason, "rolled_back: not healthy within") || canary.Reverted != revert {
				t.Fatalf("canary %+v", canary)
			}
			for _, a := range w.agents[1:] {
				if d := w.doc(a); helloOf(d).Version != "1.0.0" || d.Serial != 1 || p.Agents[a].Status != StatusWaiting {
					t.Fatalf("%s was touched after the halt: serial %d, %+v", a, d.Serial, p.Agents[a])
				}
			}
			d := w.doc("edge-01")
			want, serial := "3.0.0", uint64(2)
			if revert {
				want, serial = "1.0.0", 3
			}
			if helloOf(d).Version != want || d.Serial != serial {
				t.Fatalf("canary's document: hello %s serial %d, want %s serial %d", helloOf(d).Version, d.Serial, want, serial)
			}
			if !strings.Contains(strings.Join(w.log, "\n"), "halted: 1 agents failed, more than --max-failures 0") {
				t.Fatalf("log:\n%s", strings.Join(w.log, "\n"))
			}
			// Resumed with a budget it fits in, it goes on to the next
			// wave, whose failures halt it again past the new budget (as
			// they are judged: maybe before the whole wave was changed).
			p, err = w.run(context.Background(), Options{Version: "3.0.0", Resume: true, MaxFailures: 2})
			if !errors.Is(err, ErrHalted) || len(p.Failures()) < 3 || p.Agents["edge-02"].Status == StatusWaiting {
				t.Fatalf("resumed: %v, failures %v", err, p.Failures())
			}
		})
	}
}

// TestRolloutWaitAndBudget: an agent that never reports fails after
// --wait; within --max-failures the rollout goes on and ends.
func TestRolloutWaitAndBudget(t *testing.T) {
	w := newWorld(t, "file", 4)
	w.silent["edge-02"] = true
	start := time.Now()
	p, err := w.run(context.Background(), Options{Version: "2.0.0", Agents: w.agents, Canary: 1, MaxFailures: 1, Wait: 500 * time.Millisecond})
	// Within the budget it goes on to the end, but not every agent
	// promoted: that is an error (exit 1), not success.
	if err == nil || errors.Is(err, ErrHalted) || !strings.Contains(err.Error(), "1 of 4 agents failed") || p.State != "done" {
		t.Fatalf("%v %+v", err, p)
	}
	if s := p.Agents["edge-02"]; s.Status != StatusFailed || !strings.Contains(s.Reason, "no report of hello@2.0.0 promoted within 500ms") {
		t.Fatalf("silent agent %+v", s)
	}
	if time.Since(start) < 500*time.Millisecond {
		t.Fatal("the silent agent failed before --wait")
	}
	for _, a := range []string{"edge-01", "edge-03", "edge-04"} {
		if p.Agents[a].Status != StatusPromoted {
			t.Fatalf("%s: %+v", a, p.Agents[a])
		}
	}
}

// TestRolloutResume: a rollout interrupted after its canary continues
// from its record; the canary is not changed twice.
func TestRolloutResume(t *testing.T) {
	w := newWorld(t, "file", 6)
	ctx, cancel := context.WithCancel(context.Background())
	o := Options{Version: "2.0.0", Agents: w.agents, Canary: 1, Waves: []int{100}}
	o.Log = func(s string) {
		if strings.HasPrefix(s, "edge-01: promoted") {
			cancel() // the machine running the rollout dies after the canary
		}
	}
	if _, err := w.run(ctx, o); !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted rollout: %v", err)
	}
	p, err := w.run(context.Background(), Options{Version: "2.0.0", Resume: true})
	if err != nil || p.State != "done" {
		t.Fatalf("resumed: %v %+v\n%s", err, p, strings.Join(w.log, "\n"))
	}
	for _, a := range w.agents {
		if d := w.doc(a); d.Serial != 2 || helloOf(d).Version != "2.0.0" || p.Agents[a].Status != StatusPromoted {
			t.Fatalf("%s: serial %d (changed once: 2), %+v", a, d.Serial, p.Agents[a])
		}
	}
}

// racingStore changes an agent's document (as another operator's assign
// would) just before the rollout's first conditional write of it.
type racingStore struct {
	store.Store
	once sync.Once
	w    *world
}

func (r *racingStore) PutIfMatch(ctx context.Context, key string, body io.Reader, size int64, ifMatch string) (store.Info, error) {
	if key == publish.AssignmentsKey("edge-01") {
		r.once.Do(func() {
			if _, err := publish.Assign(ctx, publish.AssignOptions{Store: r.Store, AgentID: "edge-01", Key: r.w.key,
				Addons: []string{"hello@1.0.0", "other@1.0.0"}, Args: map[string][]string{"hello": {"--changed-meanwhile"}}}); err != nil {
				r.w.t.Fatal(err)
			}
		})
	}
	return r.Store.PutIfMatch(ctx, key, body, size, ifMatch)
}

// TestRolloutNeverOverwritesAConcurrentWriter: the document changed
// between the rollout's read and write is read again; the other writer's
// change survives, and the rollout's is on top of it.
func TestRolloutNeverOverwritesAConcurrentWriter(t *testing.T) {
	for _, kind := range []string{"file", "s3"} {
		t.Run(kind, func(t *testing.T) {
			w := newWorld(t, kind, 1)
			w.st = &racingStore{Store: w.st, w: w}
			if _, err := w.run(context.Background(), Options{Version: "2.0.0", Agents: w.agents}); err != nil {
				t.Fatal(err)
			}
			d := w.doc("edge-01")
			if h := helloOf(d); d.Serial != 3 || h.Version != "2.0.0" || !reflect.DeepEqual(h.Args, []string{"--changed-meanwhile"}) {
				t.Fatalf("serial %d, hello %s %v: want the concurrent change kept (serial 2) and 2.0.0 on top (3)", d.Serial, h.Version, h.Args)
			}
			if !strings.Contains(strings.Join(w.log, "\n"), "changed while it was being rewritten") {
				t.Fatalf("log:\n%s", strings.Join(w.log, "\n"))
			}
		})
	}
}

// TestRolloutRefuses: before any agent is touched, a package that does
// not verify; an agent whose document does not verify under the key, or
// does not have the add-on, fails alone.
func TestRolloutRefuses(t *testing.T) {
	w := newWorld(t, "file", 3)
	if _, err := w.run(context.Background(), Options{Version: "9.9.9", Agents: w.agents}); err == nil || !strings.Contains(err.Error(), "hello@9.9.9") {
		t.Fatalf("an unpublished version: %v", err)
	}
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	if _, err := publish.Assign(context.Background(), publish.AssignOptions{Store: w.st, AgentID: "edge-02", Key: other, Addons: []string{"other@1.0.0"}}); err == nil {
		t.Fatal("assign with another key verified the packages")
	}
	body := []byte(`{"agent_id":"edge-02","serial":9,"addons":[]}`)
	w.st.Put(context.Background(), publish.AssignmentsKey("edge-02"), bytes.NewReader(body), int64(len(body)))
	p, err := w.run(context.Background(), Options{Version: "2.0.0", Agents: w.agents, Canary: 0, MaxFailures: 1})
	if err == nil || !strings.Contains(err.Error(), "1 of 3 agents failed") {
		t.Fatalf("%v\n%s", err, strings.Join(w.log, "\n"))
	}
	if s := p.Agents["edge-02"]; s.Status != StatusFailed || !strings.Contains(s.Reason, "does not verify") {
		t.Fatalf("edge-02 (document not signed by the key): %+v", s)
	}
	if raw, _, _ := store.ReadSmall(context.Background(), w.st, publish.AssignmentsKey("edge-02"), 1<<20, store.OpenOptions{}); !bytes.Equal(raw, body) {
		t.Fatal("the refused document was rewritten")
	}
}

// TestRolloutHaltsMidWave: an agent whose document cannot be changed
// fails at once, and past the budget no further agent of its wave is
// changed.
func TestRolloutHaltsMidWave(t *testing.T) {
	w := newWorld(t, "file", 4)
	body := []byte(`{"agent_id":"edge-01","serial":9,"addons":[]}`) // not signed by the key
	w.st.Put(context.Background(), publish.AssignmentsKey("edge-01"), bytes.NewReader(body), int64(len(body)))
	p, err := w.run(context.Background(), Options{Version: "2.0.0", Agents: w.agents, Canary: 0})
	if !errors.Is(err, ErrHalted) {
		t.Fatalf("%v", err)
	}
	for _, a := range w.agents[1:] {
		if d := w.doc(a); d.Serial != 1 || p.Agents[a].Status != StatusWaiting {
			t.Fatalf("%s was changed after the wave's first agent failed past the budget: serial %d, %+v", a, d.Serial, p.Agents[a])
		}
	}
}

// TestRolloutResumeAfterRevert: agents reverted after a halt start over
// on resume; it ends done only when every agent promoted.
func TestRolloutResumeAfterRevert(t *testing.T) {
	w := newWorld(t, "file", 3)
	w.silent["edge-02"] = true
	_, err := w.run(context.Background(), Options{Version: "2.0.0", Agents: w.agents, Canary: 0, Wait: 300 * time.Millisecond, RevertOnHalt: true})
	if !errors.Is(err, ErrHalted) {
		t.Fatalf("%v", err)
	}
	for _, a := range w.agents {
		if v := helloOf(w.doc(a)).Version; v != "1.0.0" {
			t.Fatalf("%s at %s after the revert", a, v)
		}
	}
	w.silent = map[string]bool{}
	p, err := w.run(context.Background(), Options{Version: "2.0.0", Resume: true, Wait: 5 * time.Second})
	if err != nil || p.State != "done" {
		t.Fatalf("resumed: %v\n%s", err, strings.Join(w.log, "\n"))
	}
	for _, a := range w.agents {
		if d := w.doc(a); helloOf(d).Version != "2.0.0" || p.Agents[a].Status != StatusPromoted {
			t.Fatalf("%s after the resume: %s, %+v", a, helloOf(d).Version, p.Agents[a])
		}
	}
}

// TestRolloutRefusesAnUnsignedRecord: a progress record changed in the
// store by someone without the key (a planted previous entry, an agent
// added to a wave) is not resumed from, and nothing is written.
func TestRolloutRefusesAnUnsignedRecord(t *testing.T) {
	w := newWorld(t, "file", 2)
	ctx, cancel := context.WithCancel(context.Background())
	o := Options{Version: "2.0.0", Agents: w.agents[:1], Canary: 1}
	o.Log = func(s string) {
		if strings.HasPrefix(s, "edge-01: hello 1.0.0 -> 2.0.0") {
			cancel()
		}
	}
	w.run(ctx, o)
	key := ProgressKey("hello", "2.0.0")
	raw, _, err := store.ReadSmall(context.Background(), w.st, key, 1<<20, store.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(string) string{
		"planted previous entry": func(s string) string { return strings.Replace(s, `"--mode"`, `"--attacker"`, 1) },
		"agent added": func(s string) string {
			var p Progress
			json.Unmarshal([]byte(s), &p)
			p.Waves[0] = append(p.Waves[0], "edge-02")
			p.Agents["edge-02"] = &AgentProgress{Status: StatusWaiting}
			b, _ := json.Marshal(p)
			return string(b)
		},
		"done undone": func(s string) string { return strings.Replace(s, `"state": "running"`, `"state": "halted"`, 1) },
	} {
		t.Run(name, func(t *testing.T) {
			forged := edit(string(raw))
			if forged == string(raw) {
				t.Fatalf("the edit changed nothing in\n%s", raw)
			}
			w.st.Put(context.Background(), key, strings.NewReader(forged), int64(len(forged)))
			d1, d2 := w.doc("edge-01"), w.doc("edge-02")
			if _, err := w.run(context.Background(), Options{Version: "2.0.0", Resume: true, RevertOnHalt: true}); err == nil || !strings.Contains(err.Error(), "does not verify") {
				t.Fatalf("resumed from a forged record: %v", err)
			}
			if a, b := w.doc("edge-01"), w.doc("edge-02"); a.Serial != d1.Serial || b.Serial != d2.Serial {
				t.Fatal("a document was written after the refusal")
			}
		})
	}
}

// ownWriteLostStore makes the first conditional write of a document land
// and then answer "changed", as a retried PUT whose first answer was lost
// does.
type ownWriteLostStore struct {
	store.Store
	once sync.Once
}

func (s *ownWriteLostStore) PutIfMatch(ctx context.Context, key string, body io.Reader, size int64, ifMatch string) (store.Info, error) {
	info, err := s.Store.PutIfMatch(ctx, key, body, size, ifMatch)
	lost := false
	if err == nil && key == publish.AssignmentsKey("edge-01") {
		s.once.Do(func() { lost = true })
	}
	if lost {
		return store.Info{}, fmt.Errorf("412 on the retry: %w", store.ErrChanged)
	}
	return info, err
}

func TestRolloutOwnWriteAnsweredChanged(t *testing.T) {
	w := newWorld(t, "file", 1)
	w.st = &ownWriteLostStore{Store: w.st}
	p, err := w.run(context.Background(), Options{Version: "2.0.0", Agents: w.agents})
	if err != nil || p.Agents["edge-01"].Status != StatusPromoted {
		t.Fatalf("%v %+v\n%s", err, p.Agents["edge-01"], strings.Join(w.log, "\n"))
	}
	if d := w.doc("edge-01"); d.Serial != 2 { // signed, written once
		t.Fatalf("serial %d", d.Serial)
	}
}

// TestRolloutRevertsAChangeItNeverRecorded: a rollout killed between
// writing an agent's document and recording the change (the record is
// saved in batches) leaves the record saying "waiting" and the document at
// the new version. The entry recorded before the wave wrote anything lets
// the resumed rollout revert that agent when it halts; the other agents
// are not touched.
func TestRolloutRevertsAChangeItNeverRecorded(t *testing.T) {
	w := newWorld(t, "file", 3)
	ctx := context.Background()
	before := map[string]*assignment.Document{}
	for _, a := range w.agents {
		before[a] = w.doc(a)
	}
	// The state the kill left: the canary's previous entry recorded (by
	// the wave's first save), its document then changed to the bad 3.0.0,
	// the change not recorded.
	prev := helloOf(before["edge-01"])
	p := &Progress{AddonID: "hello", Version: "3.0.0", State: "running", Waves: Plan(w.agents, 1, []int{100}),
		Wait: "20s", StartedAt: time.Now().UTC(), Agents: map[string]*AgentProgress{}}
	for i, wave := range p.Waves {
		for _, a := range wave {
			p.Agents[a] = &AgentProgress{Wave: i, Status: StatusWaiting}
		}
	}
	p.Agents["edge-01"].Previous = &prev
	body, _ := json.MarshalIndent(p, "", "  ")
	if _, err := publish.WriteSigned(ctx, w.st, ProgressKey("hello", "3.0.0"), body, "", w.key); err != nil {
		t.Fatal(err)
	}
	if _, err := publish.Assign(ctx, publish.AssignOptions{Store: w.st, AgentID: "edge-01", Key: w.key, Addons: []string{"hello@3.0.0", "other@1.0.0"},
		Args: map[string][]string{"hello": {"--mode", "edge-01"}}}); err != nil {
		t.Fatal(err)
	}

	_, err := w.run(ctx, Options{Version: "3.0.0", Resume: true, RevertOnHalt: true})
	if !errors.Is(err, ErrHalted) {
		t.Fatalf("resumed: %v\n%s", err, strings.Join(w.log, "\n"))
	}
	after := w.doc("edge-01")
	if got := helloOf(after); !reflect.DeepEqual(got, prev) {
		t.Fatalf("edge-01 not reverted to its recorded entry: hello %+v, want %+v\n%s", got, prev, strings.Join(w.log, "\n"))
	}
	if after.Serial != before["edge-01"].Serial+2 {
		t.Errorf("edge-01: serial %d -> %d, want the change and the revert", before["edge-01"].Serial, after.Serial)
	}
	for _, a := range []string{"edge-02", "edge-03"} {
		if d := w.doc(a); d.Serial != before[a].Serial || helloOf(d).Version != "1.0.0" {
			t.Errorf("%s touched by a rollout halted after its canary: serial %d -> %d, hello %s", a, before[a].Serial, d.Serial, helloOf(d).Version)
		}
	}
}

// TestRolloutSavesInBatches: a wave of many agents rewrites the progress
// record a few times, not once per agent (the record holds every agent).
func TestRolloutSavesInBatches(t *testing.T) {
	w := newWorld(t, "file", 40)
	counter := &countingStore{Store: w.st}
	w.st = counter
	p, err := w.run(context.Background(), Options{Version: "2.0.0", All: true, Canary: 1, Waves: []int{100}})
	if err != nil || p.State != "done" {
		t.Fatalf("%v\n%s", err, strings.Join(w.log, "\n"))
	}
	saves := counter.puts(ProgressKey("hello", "2.0.0"))
	// load, and per wave: prepare, at most one a second while writing,
	// the wave's end, its promotions; then done.
	if saves > 12 {
		t.Errorf("the progress record was written %d times for 40 agents in 2 waves", saves)
	}
	t.Logf("40 agents, 2 waves: the progress record written %d times", saves)
}

// countingStore counts the writes of each key.
type countingStore struct {
	store.Store
	mu sync.Mutex
	n  map[string]int
}

func (c *countingStore) note(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[key]++
}

func (c *countingStore) Put(ctx context.Context, key string, r io.Reader, size int64) (store.Info, error) {
	c.note(key)
	return c.Store.Put(ctx, key, r, size)
}

func (c *countingStore) PutIfMatch(ctx context.Context, key string, r io.Reader, size int64, ifMatch string) (store.Info, error) {
	c.note(key)
	return c.Store.PutIfMatch(ctx, key, r, size, ifMatch)
}

func (c *countingStore) puts(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

// TestRolloutMaxRate: --max-rate spaces a wave's changes, and a failure
// seen meanwhile halts the wave before the next change.
func TestRolloutMaxRate(t *testing.T) {
	t.Run("spaced", func(t *testing.T) {
		w := newWorld(t, "file", 4)
		const rate = 150 // a change every 400 ms
		p, err := w.run(context.Background(), Options{Version: "2.0.0", Agents: w.agents, MaxRate: rate})
		if err != nil || p.State != "done" {
			t.Fatalf("%v\n%s", err, strings.Join(w.log, "\n"))
		}
		if p.MaxRate != rate {
			t.Errorf("recorded max_rate %d", p.MaxRate)
		}
		// Change k (from 0) comes k × 400 ms after the first at the
		// earliest.
		first := p.Agents[w.agents[0]].ChangedAt
		for k, a := range w.agents {
			at := p.Agents[a].ChangedAt.Sub(first)
			if want := time.Minute * time.Duration(k) / rate; at < want-20*time.Millisecond {
				t.Errorf("%s changed %v after the first, want at least %v", a, at, want)
			}
			t.Logf("%s changed %v after the first", a, at.Round(time.Millisecond))
		}
	})
	t.Run("halts between changes", func(t *testing.T) {
		w := newWorld(t, "file", 4)
		before := map[string]uint64{}
		for _, a := range w.agents {
			before[a] = w.doc(a).Serial
		}
		// 3.0.0 is rolled back by every agent: the first agent's failure
		// is judged within the 6 s before the second change.
		_, err := w.run(context.Background(), Options{Version: "3.0.0", Agents: w.agents, MaxRate: 10})
		if !errors.Is(err, ErrHalted) {
			t.Fatalf("%v\n%s", err, strings.Join(w.log, "\n"))
		}
		if d := w.doc("edge-01"); helloOf(d).Version != "3.0.0" {
			t.Errorf("edge-01 at %s, want the changed 3.0.0 (no revert asked)", helloOf(d).Version)
		}
		for _, a := range w.agents[1:] {
			if d := w.doc(a); d.Serial != before[a] {
				t.Errorf("%s changed (serial %d -> %d) after the first agent failed\n%s", a, before[a], d.Serial, strings.Join(w.log, "\n"))
			}
		}
	})
}

// TestRolloutWritesInParallel: a wave's documents are changed several at
// a time, never more than writers at once; the package is read and
// verified once for the whole rollout.
func TestRolloutWritesInParallel(t *testing.T) {
	w := newWorld(t, "file", 40)
	slow := &slowStore{Store: w.st, delay: 20 * time.Millisecond}
	w.st = slow
	start := time.Now()
	p, err := w.run(context.Background(), Options{Version: "2.0.0", All: true, Canary: 1, Waves: []int{100}})
	if err != nil || p.State != "done" {
		t.Fatalf("%v\n%s", err, strings.Join(w.log, "\n"))
	}
	elapsed := time.Since(start)
	slow.mu.Lock()
	defer slow.mu.Unlock()
	if slow.most < 2 || slow.most > writers {
		t.Errorf("at most %d documents were written at once, want 2..%d", slow.most, writers)
	}
	if n := slow.opens[assignment.PackageKey("hello", "2.0.0")]; n != 1 {
		t.Errorf("the package was read %d times, want once", n)
	}
	// 40 conditional writes of 20 ms each, one after another, take 800 ms
	// alone.
	t.Logf("40 agents: at most %d documents written at once; rollout %v", slow.most, elapsed.Round(time.Millisecond))
}

// slowStore delays each write of an assignment document and counts the
// writes in flight at once, and the reads of each key; fail, when set,
// answers a write of key with an error instead (after the delay).
type slowStore struct {
	store.Store
	delay    time.Duration
	fail     func(key string) (time.Duration, error)
	mu       sync.Mutex
	inflight int
	most     int
	opens    map[string]int
}

func (s *slowStore) Open(ctx context.Context, key string, opts store.OpenOptions) (io.ReadCloser, store.Info, error) {
	s.mu.Lock()
	if s.opens == nil {
		s.opens = map[string]int{}
	}
	s.opens[key]++
	s.mu.Unlock()
	return s.Store.Open(ctx, key, opts)
}

func (s *slowStore) PutIfMatch(ctx context.Context, key string, r io.Reader, size int64, ifMatch string) (store.Info, error) {
	if s.fail != nil {
		if d, err := s.fail(key); err != nil {
			time.Sleep(d)
			return store.Info{}, err
		}
	}
	if !strings.HasSuffix(key, "/assignments.json") {
		return s.Store.PutIfMatch(ctx, key, r, size, ifMatch)
	}
	s.mu.Lock()
	s.inflight++
	s.most = max(s.most, s.inflight)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inflight--
		s.mu.Unlock()
	}()
	time.Sleep(s.delay)
	return s.Store.PutIfMatch(ctx, key, r, size, ifMatch)
}

// TestRolloutHaltRecordsWritesInFlight: a refusal in the middle of a
// wave written several at a time stops the changes; the ones in flight
// finish and are recorded, so that every document the rollout wrote is
// in its record, and --revert-on-halt gives each its entry back.
func TestRolloutHaltRecordsWritesInFlight(t *testing.T) {
	w := newWorld(t, "file", 30)
	w.st = &slowStore{Store: w.st, delay: 10 * time.Millisecond}
	const bad = "edge-15"
	body := []byte(`{"agent_id":"` + bad + `","serial":9,"addons":[]}`) // not signed by the key
	w.st.Put(context.Background(), publish.AssignmentsKey(bad), bytes.NewReader(body), int64(len(body)))
	p, err := w.run(context.Background(), Options{Version: "2.0.0", Agents: w.agents, Waves: []int{100}, RevertOnHalt: true})
	if !errors.Is(err, ErrHalted) {
		t.Fatalf("%v\n%s", err, strings.Join(w.log, "\n"))
	}
	changed := 0
	for _, a := range w.agents {
		if a == bad {
			continue
		}
		ap, d := p.Agents[a], w.doc(a)
		switch {
		case ap.Status == StatusWaiting && d.Serial != 1:
			t.Errorf("%s: its document was written (serial %d) but the record has it waiting", a, d.Serial)
		case ap.Status != StatusWaiting && (!ap.Reverted || d.Serial != 3 || helloOf(d).Version != "1.0.0"):
			t.Errorf("%s: changed and not reverted: %+v, serial %d, hello %s", a, ap, d.Serial, helloOf(d).Version)
		case ap.Status != StatusWaiting:
			changed++
		}
	}
	// Before the refusal, the 14 agents ahead of it; after it, at most
	// the writers in flight.
	if changed < 14 || changed > 14+writers-1 {
		t.Errorf("%d agents changed, want 14..%d", changed, 14+writers-1)
	}
	t.Logf("halted at %s: %d agents changed and reverted", bad, changed)
}

// TestRolloutSlowRefusalHoldsTheWave: a change that takes long to fail
// (a store timing out) holds the wave behind it: no more than writers-1
// later agents are changed before its failure halts the rollout.
func TestRolloutSlowRefusalHoldsTheWave(t *testing.T) {
	w := newWorld(t, "file", 40)
	bad := publish.AssignmentsKey("edge-05")
	w.st = &slowStore{Store: w.st, delay: 10 * time.Millisecond, fail: func(key string) (time.Duration, error) {
		if key == bad {
			return 600 * time.Millisecond, errors.New("store timeout")
		}
		return 0, nil
	}}
	p, err := w.run(context.Background(), Options{Version: "2.0.0", Agents: w.agents, Waves: []int{100}})
	if !errors.Is(err, ErrHalted) {
		t.Fatalf("%v\n%s", err, strings.Join(w.log, "\n"))
	}
	after := 0
	for _, a := range w.agents[5:] {
		if p.Agents[a].Status != StatusWaiting || w.doc(a).Serial != 1 {
			after++
		}
	}
	if after > writers-1 {
		t.Errorf("%d agents after the slowly failing edge-05 were changed, want at most %d", after, writers-1)
	}
	if ap := p.Agents["edge-05"]; ap.Status != StatusFailed || !strings.Contains(ap.Reason, "store timeout") {
		t.Errorf("edge-05: %+v", ap)
	}
	t.Logf("%d agents after the slow refusal were changed", after)
}

// TestRolloutInterruptedMidWave: a rollout interrupted (ctx cancelled)
// while writers are in flight stops starting changes, lets the ones in
// flight finish, and records every document it wrote; --resume then
// finishes the rollout.
func TestRolloutInterruptedMidWave(t *testing.T) {
	w := newWorld(t, "file", 40)
	w.st = &slowStore{Store: w.st, delay: 20 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var changes atomic.Int32
	_, err := w.run(ctx, Options{Version: "2.0.0", Agents: w.agents, Waves: []int{100}, Log: func(s string) {
		if strings.Contains(s, "-> 2.0.0") && changes.Add(1) == 10 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("%v\n%s", err, strings.Join(w.log, "\n"))
	}
	data, _, err := store.ReadSmall(context.Background(), w.st, ProgressKey("hello", "2.0.0"), 16<<20, store.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var rec Progress
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	written := 0
	for _, a := range w.agents {
		d := w.doc(a)
		if d.Serial == 1 {
			continue
		}
		written++
		if ap := rec.Agents[a]; ap.Status != StatusChanged && ap.Status != StatusPromoted || ap.Serial != d.Serial {
			t.Errorf("%s: its document was written (serial %d), the saved record has %+v", a, d.Serial, ap)
		}
	}
	if written < 10 || written == len(w.agents) {
		t.Errorf("%d documents written, want 10 and not all %d", written, len(w.agents))
	}
	p, err := w.run(context.Background(), Options{Version: "2.0.0", Resume: true})
	if err != nil || p.State != "done" {
		t.Fatalf("resumed: %v\n%s", err, strings.Join(w.log, "\n"))
	}
	for _, a := range w.agents {
		if d := w.doc(a); d.Serial != 2 || p.Agents[a].Status != StatusPromoted {
			t.Errorf("%s after the resume: serial %d, %+v", a, d.Serial, p.Agents[a])
		}
	}
	t.Logf("interrupted after %d documents written; resumed to done", written)
}

// TestRolloutSaveFailsMidWave: when the progress record cannot be written
// in the middle of a wave, the rollout stops with that error and leaves
// no writer behind.
func TestRolloutSaveFailsMidWave(t *testing.T) {
	w := newWorld(t, "file", 40)
	var saves atomic.Int32
	w.st = &slowStore{Store: w.st, delay: 20 * time.Millisecond, fail: func(key string) (time.Duration, error) {
		if key == ProgressKey("hello", "2.0.0") && saves.Add(1) > 2 { // the load's and the wave's prepare pass
			return 0, errors.New("access denied")
		}
		return 0, nil
	}}
	before := runtime.NumGoroutine()
	_, err := w.run(context.Background(), Options{Version: "2.0.0", Agents: w.agents, Waves: []int{100}})
	if err == nil || !strings.Contains(err.Error(), "recording the rollout's progress") || !strings.Contains(err.Error(), "access denied") {
		t.Fatalf("%v\n%s", err, strings.Join(w.log, "\n"))
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after the rollout returned, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

// checkStands: what a progress display was shown adds up, moves forward
// only, and ends every wave with its agents promoted.
func checkStands(t *testing.T, stands []Stand, sizes []int) {
	t.Helper()
	if len(stands) == 0 {
		t.Fatal("no progress shown")
	}
	total := 0
	for _, n := range sizes {
		total += n
	}
	prev := Stand{Wave: 1}
	for i, s := range stands {
		if s.Waiting+s.Changed+s.Promoted+s.Failed != s.Agents || s.Waves != len(sizes) || s.Agents != sizes[s.Wave-1] ||
			s.Total != total || s.Wave < prev.Wave || s.Done < prev.Done || !strings.HasPrefix(s.Name, fmt.Sprintf("wave %d/%d", s.Wave, s.Waves)) {
			t.Fatalf("stand %d: %+v after %+v", i, s, prev)
		}
		if s.Wave > prev.Wave && (prev.Promoted != prev.Agents || s.Wave != prev.Wave+1) {
			t.Fatalf("wave %d shown after %+v", s.Wave, prev)
		}
		if s.Wave == prev.Wave && s.Promoted+s.Failed < prev.Promoted+prev.Failed {
			t.Fatalf("stand %d: decided agents went back: %+v after %+v", i, s, prev)
		}
		prev = s
	}
	if last := stands[len(stands)-1]; last.Wave != len(sizes) || last.Promoted != last.Agents || last.Done != last.Total {
		t.Fatalf("last stand %+v", last)
	}
	if first := stands[0]; first.Wave != 1 || first.Waiting != first.Agents {
		t.Fatalf("first stand %+v", first)
	}
}

// TestConcurrentRolloutsOfTwoAddons: rollouts of two add-ons run at once
// on the same agents, on both stores, their writes of the canary's
// document made to cross. Every document ends with both changes: neither rollout
// lost the other's, and each raised the serial once.
func TestConcurrentRolloutsOfTwoAddons(t *testing.T) {
	for _, kind := range []string{"file", "s3"} {
		t.Run(kind, func(t *testing.T) {
			w := newWorld(t, kind, 6)
			before := map[string]*assignment.Document{}
			for _, a := range w.agents {
				before[a] = w.doc(a)
			}
			st := &crossingWrites{Store: w.st, key: publish.AssignmentsKey(w.agents[0])}
			ctx := context.Background()
			simCtx, stop := context.WithCancel(ctx)
			simulated := make(chan struct{})
			go func() { w.simulate(simCtx); close(simulated) }()
			var (
				wg      sync.WaitGroup
				errs    = make([]error, 2)
				crossed atomic.Int32
			)
			for i, id := range []string{"hello", "other"} {
				wg.Go(func() {
					_, errs[i] = Run(ctx, Options{Store: st, Key: w.key, AddonID: id, Version: "2.0.0", Agents: w.agents,
						Canary: 1, Waves: []int{100}, Wait: 20 * time.Second, Poll: 20 * time.Millisecond,
						Log: func(s string) {
							t.Logf("%s: %s", id, s)
							if strings.Contains(s, "changed while it was being rewritten") {
								crossed.Add(1)
							}
						}})
				})
			}
			wg.Wait()
			stop()
			<-simulated
			for i, err := range errs {
				if err != nil {
					t.Fatalf("rollout %d: %v", i, err)
				}
			}
			if crossed.Load() == 0 {
				t.Fatal("the two rollouts' writes never crossed: the test proves nothing")
			}
			for _, a := range w.agents {
				b, d := before[a], w.doc(a)
				h, o := helloOf(d), d.Addons[entry(d, "other")]
				if h.Version != "2.0.0" || o.Version != "2.0.0" || d.Serial != b.Serial+2 || !reflect.DeepEqual(h.Args, helloOf(b).Args) {
					t.Fatalf("%s: serial %d -> %d, hello %s %v, other %s: want both at 2.0.0, two changes", a, b.Serial, d.Serial, h.Version, h.Args, o.Version)
				}
			}
			t.Logf("%d writes crossed and were read again", crossed.Load())
		})
	}
}

// crossingWrites holds the first conditional write of the first agent's
// document until a second writer writes it too: both read the document
// before either wrote it, so one of them must find it changed.
type crossingWrites struct {
	store.Store
	key     string
	mu      sync.Mutex
	first   chan struct{}
	crossed bool
}

func (s *crossingWrites) PutIfMatch(ctx context.Context, key string, body io.Reader, size int64, ifMatch string) (store.Info, error) {
	if key == s.key {
		s.mu.Lock()
		switch {
		case s.first == nil:
			s.first = make(chan struct{})
			s.mu.Unlock()
			select {
			case <-s.first:
			case <-time.After(20 * time.Second): // the test then fails: nothing crossed
			}
		case !s.crossed:
			s.crossed = true
			close(s.first)
			s.mu.Unlock()
		default:
			s.mu.Unlock()
		}
	}
	return s.Store.PutIfMatch(ctx, key, body, size, ifMatch)
}
