// Command fleetsim runs a fleet of addond agents against one real MinIO on
// this machine and measures what the fleet costs the store (issue 14,
// docs/FLEET.md). Each agent is the daemon's own code (daemon.Open and
// Agent.Run: its poll loop, delivery, probation, reporter) with an
// in-memory supervisor in place of systemd: the add-on "runs" the moment
// it is started, healthy unless its version is the bad one. Agents reach
// MinIO through a counting proxy, the operator (publish, assign,
// rollouts, fleet status) through another, so every figure is a count of
// real S3 requests and bytes on the wire.
//
// It measures, in order:
//
//  1. start: the agents, started at random times within one poll
//     interval, each assigned sim@1.0.0, until every one has promoted it;
//
//  2. idle: store requests, bytes and report writes per agent, the share
//     of polls answered 304 Not Modified, MinIO's CPU;
//
//  3. a 3-wave rollout of a good version (1 %, 10 %, 100 %): time to 99 %
//     promoted, and the request rate's peak against the idle mean;
//
//  4. a rollout of a bad version: halted after the canary wave, how many
//     agents ever ran it, and how long until every canary is back on the
//     old version with --revert-on-halt.
//
//     ADDOND_MINIO_BIN=/path/to/minio go run ./vmtest/fleetsim -agents 2000
//
// `make fleet-sim` runs it with the defaults below.
package main

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/addond/addond/daemon"
	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/daemon/fleet"
	"github.com/addond/addond/daemon/publish"
	"github.com/addond/addond/daemon/rollout"
	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/store"
	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/vmtest/miniotest"
)

const (
	bucket    = "fleet"
	addonID   = "sim"
	oldV      = "1.0.0"
	goodV     = "1.1.0"
	pacedV    = "1.2.0" // good too, rolled out under --max-rate
	badV      = "1.3.0"
	modelName = assignment.SupervisionSystemdService
)

type flags struct {
	agents         int
	poll           time.Duration
	probation      time.Duration
	reportInterval time.Duration
	idle           time.Duration
	wait           time.Duration
	artifact       int
	waves          string
	out            string
	root           string
	addonctl       string
	maxRate        int
}

func main() {
	var f flags
	flag.IntVar(&f.agents, "agents", 2000, "agents to run")
	flag.DurationVar(&f.poll, "poll", 60*time.Second, "the agents' poll_interval")
	flag.DurationVar(&f.probation, "probation", 60*time.Second, "the agents' probation")
	flag.DurationVar(&f.reportInterval, "report-interval", 10*time.Minute, "the agents' report.interval")
	flag.DurationVar(&f.idle, "idle", 10*time.Minute, "how long the idle fleet is measured")
	flag.DurationVar(&f.wait, "wait", 10*time.Minute, "the rollouts' --wait (how long an agent has to report the version promoted)")
	flag.IntVar(&f.artifact, "artifact", 1<<20, "the add-on's artifact size in bytes")
	flag.StringVar(&f.waves, "waves", "1,10,100", "the rollouts' --waves")
	flag.StringVar(&f.out, "json", "", "also write the results as JSON to this file")
	flag.IntVar(&f.maxRate, "max-rate", 800, "a second good rollout runs under this --max-rate (changes per minute; 0: none)")
	flag.StringVar(&f.addonctl, "addonctl", "bin/addonctl", "the addonctl binary that reads the fleet's status")
	flag.StringVar(&f.root, "root", "", "where the agents' runtime roots go (default: a temporary directory, removed)")
	flag.Parse()
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	res, err := run(f)
	if res != nil {
		res.print(os.Stdout)
		if f.out != "" {
			data, _ := json.MarshalIndent(res, "", "  ")
			if werr := os.WriteFile(f.out, append(data, '\n'), 0o644); werr != nil {
				log.Print(werr)
			}
		}
	}
	if err != nil {
		log.Fatal(err)
	}
}

// sim is one simulation: MinIO, the two proxies, the fleet.
type sim struct {
	f        flags
	srv      *miniotest.Server
	agentsPx *proxy // every agent's requests
	opPx     *proxy // the operator's
	op       store.Store
	key      ed25519.PrivateKey
	keyDir   string
	root     string
	agents   []*simAgent
	start    time.Time
}

type simAgent struct {
	id    string
	a     *daemon.Agent
	sup   *memSupervisor
	done  chan error
	start time.Time
}

func run(f flags) (*results, error) {
	raiseNoFile()
	s := &sim{f: f, start: time.Now()}
	res := &results{Agents: f.agents, Poll: f.poll.String(), Probation: f.probation.String(),
		ReportInterval: f.reportInterval.String(), IdleWindow: f.idle.String(), Wait: f.wait.String(),
		Waves: f.waves, ArtifactBytes: f.artifact, CPUs: runtime.NumCPU()}
	var err error
	if s.srv, err = miniotest.Start(); err != nil {
		return nil, err
	}
	defer s.srv.Stop()
	for _, kv := range s.srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
	mc, err := minio.New(s.srv.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s.srv.AccessKey, s.srv.SecretKey, "")})
	if err != nil {
		return nil, err
	}
	if err := mc.MakeBucket(context.Background(), bucket, minio.MakeBucketOptions{}); err != nil {
		return nil, err
	}
	if s.agentsPx, err = startProxy(s.srv.Endpoint); err != nil {
		return nil, err
	}
	defer s.agentsPx.Close()
	if s.opPx, err = startProxy(s.srv.Endpoint); err != nil {
		return nil, err
	}
	defer s.opPx.Close()
	if s.op, err = store.Open(s.opPx.url(bucket)); err != nil {
		return nil, err
	}
	s.root = f.root
	if s.root == "" {
		if s.root, err = os.MkdirTemp("/var/tmp", "fleetsim-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(s.root)
	}
	if err := s.publish(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer func() {
		cancel()
		for _, a := range s.agents {
			if a.done != nil {
				<-a.done
				a.a.Close()
			}
		}
	}()

	// 1. Start.
	log.Printf("starting %d agents within one poll interval (%v), each assigned %s@%s", f.agents, f.poll, addonID, oldV)
	t0 := time.Now()
	if err := s.startAgents(ctx); err != nil {
		return res, err
	}
	if err := s.waitPromoted(oldV, f.agents, f.poll+f.probation+5*time.Minute); err != nil {
		return res, err
	}
	res.StartSeconds = time.Since(t0).Seconds()
	res.RSSBytes = rss()
	res.Goroutines = runtime.NumGoroutine()
	log.Printf("all %d agents run %s@%s, promoted, in %.0fs; this process: %d MiB RSS, %d goroutines",
		f.agents, addonID, oldV, res.StartSeconds, res.RSSBytes>>20, res.Goroutines)

	// Reports settle (the last changes' coalesced writes), then idle.
	time.Sleep(10 * time.Second)
	log.Printf("idle: measuring for %v", f.idle)
	s.agentsPx.reset()
	cpu0 := procCPU(s.srv.PID())
	time.Sleep(f.idle)
	cpu1 := procCPU(s.srv.PID())
	idle := s.agentsPx.snapshot()
	res.Idle = idleFigures(idle, f, cpu1-cpu0)

	// 3. A good rollout in three waves.
	log.Printf("rollout of %s@%s, waves %s, canary %d", addonID, goodV, f.waves, canary(f.agents))
	s.agentsPx.reset()
	good, err := s.rollout(ctx, goodV, 0, "")
	if err != nil {
		return res, fmt.Errorf("rollout of %s: %w", goodV, err)
	}
	good.peaks(s.agentsPx.snapshot(), res.Idle.RequestsPerSecond)
	res.GoodRollout = good
	current := goodV

	// 3b. The same under --max-rate: the herd against the time.
	if f.maxRate > 0 {
		time.Sleep(10 * time.Second)
		log.Printf("rollout of %s@%s, waves %s, canary %d, --max-rate %d", addonID, pacedV, f.waves, canary(f.agents), f.maxRate)
		s.agentsPx.reset()
		paced, err := s.rollout(ctx, pacedV, f.maxRate, "")
		if err != nil {
			return res, fmt.Errorf("rollout of %s: %w", pacedV, err)
		}
		paced.peaks(s.agentsPx.snapshot(), res.Idle.RequestsPerSecond)
		res.PacedRollout = paced
		current = pacedV
	}

	// 4. A bad version: halted after the canary, reverted.
	time.Sleep(10 * time.Second)
	log.Printf("rollout of the bad %s@%s, canary %d, --revert-on-halt", addonID, badV, canary(f.agents))
	s.agentsPx.reset()
	bad, err := s.rollout(ctx, badV, 0, current)
	if err != nil {
		return res, fmt.Errorf("rollout of %s: %w", badV, err)
	}
	res.BadRollout = bad

	// 5. The operator's view once the reverted canaries have reported
	// (their next poll, then a report within min_interval): addonctl
	// fleet status, every report read.
	time.Sleep(f.poll + 10*time.Second)
	if res.FleetStatus, err = s.fleetStatus(); err != nil {
		return res, err
	}
	res.OperatorRequests = s.opPx.total()
	res.TotalSeconds = time.Since(s.start).Seconds()
	return res, nil
}

// rolloutPoll is how often a rollout reads the reports (addonctl's
// default): a wave waits for it after its last agent promoted.
const rolloutPoll = 5 * time.Second

func canary(agents int) int { return max(1, agents/100) }

// publish makes the key and publishes the three versions.
func (s *sim) publish() error {
	privPEM, pubPEM, err := signing.GenerateKey()
	if err != nil {
		return err
	}
	if s.key, err = signing.ParsePrivateKeyPEM(privPEM); err != nil {
		return err
	}
	s.keyDir = filepath.Join(s.root, "trust")
	if err := os.MkdirAll(s.keyDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(s.keyDir, "fleetsim.pub"), pubPEM, 0o644); err != nil {
		return err
	}
	bin := filepath.Join(s.root, "sim")
	for _, v := range []string{oldV, goodV, pacedV, badV} {
		content := make([]byte, s.f.artifact)
		for i := range content {
			content[i] = byte(rand.Uint32())
		}
		if err := os.WriteFile(bin, content, 0o755); err != nil {
			return err
		}
		if _, err := publish.Publish(context.Background(), publish.PublishOptions{
			Store: s.op, Key: s.key, AddonID: addonID, Version: v, Supervision: modelName,
			Files: []publish.File{{Platform: assignment.Host(), Path: bin}},
		}); err != nil {
			return fmt.Errorf("publish %s@%s: %w", addonID, v, err)
		}
	}
	return nil
}

func agentID(i int) string { return fmt.Sprintf("sim-%05d", i) }

// startAgents assigns every agent the old version and starts them at
// random times within one poll interval, the way a fleet's hosts came up.
func (s *sim) startAgents(ctx context.Context) error {
	var (
		wg   sync.WaitGroup
		errs = make(chan error, s.f.agents)
		sem  = make(chan struct{}, 16)
	)
	for i := range s.f.agents {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := publish.Assign(ctx, publish.AssignOptions{Store: s.op, AgentID: agentID(i), Key: s.key, Addons: []string{addonID + "@" + oldV}}); err != nil {
				errs <- fmt.Errorf("assign %s: %w", agentID(i), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	offsets := make([]time.Duration, s.f.agents)
	for i := range offsets {
		offsets[i] = rand.N(s.f.poll)
	}
	slices.Sort(offsets)
	begin := time.Now()
	for i := range s.f.agents {
		a, err := s.openAgent(i)
		if err != nil {
			return err
		}
		s.agents = append(s.agents, a)
		time.Sleep(time.Until(begin.Add(offsets[i])))
		a.start = time.Now()
		a.done = make(chan error, 1)
		go func() {
			a.done <- a.a.Run(ctx, daemon.RunOptions{Supervisors: map[string]supervisors.Supervisor{modelName: a.sup}})
		}()
	}
	return nil
}

func (s *sim) openAgent(i int) (*simAgent, error) {
	id := agentID(i)
	dir := filepath.Join(s.root, id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cfg := map[string]any{
		"agent_id":                 id,
		"runtime_root":             dir,
		"store":                    s.agentsPx.url(bucket),
		"assignments":              map[string]string{"store_key": publish.AssignmentsKey(id)},
		"poll_interval":            s.f.poll.String(),
		"probation":                s.f.probation.String(),
		"trust":                    map[string]any{"public_keys": []string{s.keyDir}},
		"status_socket":            filepath.Join(dir, "status.sock"),
		"systemd":                  map[string]string{"manager": "none"},
		"max_concurrent_downloads": 1,
		"min_free_bytes":           1 << 20,
		"report":                   map[string]any{"interval": s.f.reportInterval.String()},
	}
	data, _ := json.Marshal(cfg)
	path := filepath.Join(dir, "addond.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return nil, err
	}
	c, err := config.Load(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", id, err)
	}
	sup := &memSupervisor{events: map[string]supervisors.Event{}}
	a, err := daemon.Open(c, daemon.Options{})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", id, err)
	}
	sup.notify = a.Notify
	return &simAgent{id: id, a: a, sup: sup}, nil
}

// promoted counts the agents that run version, promoted (not on
// probation).
func (s *sim) promoted(version string, among []string) int {
	want := map[string]bool{}
	for _, id := range among {
		want[id] = true
	}
	n := 0
	for _, a := range s.agents {
		if among != nil && !want[a.id] {
			continue
		}
		for _, as := range a.a.Status().Addons {
			if as.AddonID == addonID && as.ActiveVersion == version && !as.Probation && as.Health == "healthy" {
				n++
			}
		}
	}
	return n
}

func (s *sim) waitPromoted(version string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := time.Now()
	for {
		got := s.promoted(version, nil)
		if got >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d agents promoted %s within %v", got, n, version, timeout)
		}
		if time.Since(last) > 15*time.Second {
			log.Printf("  %d of %d agents promoted %s", got, n, version)
			last = time.Now()
		}
		time.Sleep(time.Second)
	}
}

// rollout runs one rollout of version to every agent and measures it.
// A bad version (backTo set: the version its canaries go back to) is
// rolled out with --revert-on-halt and must halt.
func (s *sim) rollout(ctx context.Context, version string, maxRate int, backTo string) (*rolloutFigures, error) {
	bad := backTo != ""
	waves, err := rollout.ParseWaves(s.f.waves)
	if err != nil {
		return nil, err
	}
	rf := &rolloutFigures{Version: version, MaxRate: maxRate}
	start := time.Now()
	// Each wave's writing: from its first document change to its last.
	var (
		logMu       sync.Mutex
		wave        = -1
		first, last []time.Time
	)
	var reached99 atomic.Int64
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() { // 99 % promoted, on the agents' own status
		defer close(watched)
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
			if reached99.Load() == 0 && s.promoted(version, nil)*100 >= 99*len(s.agents) {
				reached99.Store(int64(time.Since(start)))
			}
		}
	}()
	p, err := rollout.Run(ctx, rollout.Options{
		Store: s.op, Key: s.key, AddonID: addonID, Version: version, All: true,
		Canary: canary(s.f.agents), Waves: waves, MaxFailures: 0, Wait: s.f.wait,
		RevertOnHalt: bad, Poll: rolloutPoll, MaxRate: maxRate,
		Log: func(line string) {
			logMu.Lock()
			defer logMu.Unlock()
			now := time.Now()
			switch {
			case strings.HasPrefix(line, "wave ") && !strings.HasSuffix(line, ": done"):
				wave++
				first, last = append(first, time.Time{}), append(last, time.Time{})
			case wave >= 0 && strings.Contains(line, " -> "+version+" (serial"):
				if first[wave].IsZero() {
					first[wave] = now
				}
				last[wave] = now
				return
			}
			if strings.Contains(line, "wave") || strings.Contains(line, "halt") || strings.Contains(line, "done") || strings.Contains(line, "revert") {
				log.Printf("  rollout: %s", line)
			}
		},
	})
	close(stop)
	<-watched
	rf.Seconds = time.Since(start).Seconds()
	logMu.Lock()
	for w := range first {
		if !first[w].IsZero() {
			rf.WritingSeconds = append(rf.WritingSeconds, last[w].Sub(first[w]).Seconds())
		}
	}
	logMu.Unlock()
	if p != nil {
		rf.State = p.State
		for _, w := range p.Waves {
			rf.WaveSizes = append(rf.WaveSizes, len(w))
		}
	}
	if !bad {
		if err != nil {
			if p != nil {
				for _, a := range p.Failures() {
					err = fmt.Errorf("%w; %s: %s", err, a, p.Agents[a].Reason)
				}
			}
			return rf, err
		}
		if v := reached99.Load(); v > 0 {
			rf.To99Seconds = time.Duration(v).Seconds()
		} else {
			rf.To99Seconds = rf.Seconds
		}
		rf.Bound = (3 * (s.f.poll + s.f.probation + rolloutPoll)).String()
		return rf, nil
	}
	if !errors.Is(err, rollout.ErrHalted) {
		return rf, fmt.Errorf("the bad version was not halted: %v", err)
	}
	var canaries []string
	if p != nil && len(p.Waves) > 0 {
		canaries = p.Waves[0]
	}
	rf.Canary = len(canaries)
	changedAt := map[string]time.Time{}
	for _, c := range canaries {
		changedAt[c] = p.Agents[c].ChangedAt
	}
	// Every canary back on the good version, promoted, its document
	// reverted: measured from the halt.
	halted := time.Now()
	deadline := halted.Add(s.f.poll + s.f.probation + 2*time.Minute)
	for s.promoted(backTo, canaries) < len(canaries) {
		if time.Now().After(deadline) {
			return rf, fmt.Errorf("%d of %d canaries back on %s within %v of the halt", s.promoted(backTo, canaries), len(canaries), backTo, time.Since(halted))
		}
		time.Sleep(time.Second)
	}
	for _, id := range canaries {
		doc, err := s.document(ctx, id)
		if err != nil {
			return rf, err
		}
		for _, ad := range doc.Addons {
			if ad.AddonID == addonID && ad.Version != backTo {
				return rf, fmt.Errorf("%s: its document names %s@%s after the revert", id, addonID, ad.Version)
			}
		}
	}
	rf.CanariesBackSeconds = time.Since(halted).Seconds()
	// Measured on each agent: from its document's change to the old
	// version started again.
	for _, a := range s.agents {
		at, back := a.sup.bad()
		if at.IsZero() {
			continue
		}
		rf.AgentsThatRanIt++
		if ch, ok := changedAt[a.id]; ok && !back.IsZero() {
			rf.RolledBackSeconds = max(rf.RolledBackSeconds, back.Sub(ch).Seconds())
		}
	}
	// One poll is up to 1.2 × poll_interval (the loop's ±20 % jitter).
	rf.RollbackBound = (s.f.poll*6/5 + s.f.probation).String()
	rf.BackTo = backTo
	return rf, nil
}

// fleetStatus runs `addonctl fleet status --json` against the store and
// times it.
func (s *sim) fleetStatus() (*fleetStatusFigures, error) {
	before := s.opPx.total()
	start := time.Now()
	cmd := exec.Command(s.f.addonctl, "fleet", "status", "--json", "--store", s.opPx.url(bucket))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 1) { // 1: not every agent is OK
		return nil, fmt.Errorf("addonctl fleet status: %w", err)
	}
	fs := &fleetStatusFigures{Seconds: time.Since(start).Seconds(), Requests: s.opPx.total() - before}
	var st fleet.Status
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("addonctl fleet status --json: %w", err)
	}
	fs.Agents = len(st.Agents)
	fs.OK, fs.Stale, fs.Problems = st.Counts()
	fs.Versions = st.Addons[addonID]
	if fs.Agents != s.f.agents {
		return fs, fmt.Errorf("addonctl fleet status shows %d agents, want %d", fs.Agents, s.f.agents)
	}
	return fs, nil
}

func (s *sim) document(ctx context.Context, id string) (*assignment.Document, error) {
	rc, _, err := s.op.Open(ctx, publish.AssignmentsKey(id), store.OpenOptions{})
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return nil, err
	}
	var doc assignment.Document
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	return &doc, nil
}

// memSupervisor runs add-ons in memory: started means running, healthy
// unless the version is the bad one.
type memSupervisor struct {
	mu     sync.Mutex
	events map[string]supervisors.Event
	// badAt: when the bad version was first started; backAt: when
	// another version was started after it (the rollback).
	badAt, backAt time.Time
	notify        func(supervisors.Event)
}

func (m *memSupervisor) set(spec supervisors.Spec) {
	e := supervisors.Event{AddonID: spec.AddonID, Version: spec.Version, State: supervisors.StateRunning, Health: supervisors.HealthHealthy, PID: 1, Time: time.Now()}
	if spec.Version == badV {
		e.State, e.Health, e.Cause, e.Reason = supervisors.StateUnhealthy, supervisors.HealthUnhealthy, supervisors.CauseUnhealthy, "the simulation's bad version"
	}
	m.mu.Lock()
	m.events[spec.AddonID] = e
	switch {
	case spec.Version == badV && m.badAt.IsZero():
		m.badAt = e.Time
	case spec.Version != badV && !m.badAt.IsZero() && m.backAt.IsZero():
		m.backAt = e.Time
	}
	m.mu.Unlock()
	m.notify(e)
}

// bad is when the bad version started here, and when it was rolled back
// (zero: never).
func (m *memSupervisor) bad() (at, back time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.badAt, m.backAt
}

func (m *memSupervisor) Start(_ context.Context, spec supervisors.Spec) error {
	m.set(spec)
	return nil
}

func (m *memSupervisor) Update(_ context.Context, spec supervisors.Spec) error {
	m.set(spec)
	return nil
}

func (m *memSupervisor) Stop(_ context.Context, id string) error {
	m.mu.Lock()
	e, ok := m.events[id]
	delete(m.events, id)
	m.mu.Unlock()
	if ok {
		e.State, e.Health, e.PID, e.Time = supervisors.StateStopped, supervisors.HealthUnknown, 0, time.Now()
		m.notify(e)
	}
	return nil
}

func (m *memSupervisor) Status(id string) (supervisors.Event, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.events[id]
	return e, ok
}

func (m *memSupervisor) Close(context.Context) error { return nil }

// proxy is a reverse proxy to MinIO that counts requests by kind and
// status, per second, and the bytes on its connections.
type proxy struct {
	ln  net.Listener
	srv *http.Server

	mu      sync.Mutex
	since   time.Time
	counts  map[string]int // "GET doc 304", "PUT report 200", …
	perSec  map[int64]int  // unix second -> requests
	wire    atomic.Int64   // bytes read and written on the agents' connections
	all     atomic.Int64   // requests since the start
	started time.Time
}

func startProxy(target string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{counts: map[string]int{}, perSec: map[int64]int{}, since: time.Now(), started: time.Now()}
	p.ln = &countingListener{Listener: ln, n: &p.wire}
	u := &url.URL{Scheme: "http", Host: target}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{MaxIdleConnsPerHost: 512, IdleConnTimeout: 90 * time.Second}
	rp.ErrorLog = log.New(io.Discard, "", 0)
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &statusWriter{ResponseWriter: w, status: 200}
		rp.ServeHTTP(cw, r)
		p.count(r, cw.status)
	})}
	go p.srv.Serve(p.ln)
	return p, nil
}

func (p *proxy) url(bucket string) string {
	return fmt.Sprintf("s3://%s?endpoint=%s&insecure=true", bucket, p.ln.Addr())
}

func (p *proxy) Close() { p.srv.Close() }

func (p *proxy) count(r *http.Request, status int) {
	kind := classify(r)
	now := time.Now().Unix()
	p.all.Add(1)
	p.mu.Lock()
	p.counts[r.Method+" "+kind+" "+strconv.Itoa(status)]++
	p.perSec[now]++
	p.mu.Unlock()
}

// classify names what a request is for, from its key.
func classify(r *http.Request) string {
	key := strings.TrimPrefix(r.URL.Path, "/"+bucket)
	key = strings.TrimPrefix(key, "/")
	switch {
	case key == "" && r.URL.Query().Has("list-type"):
		return "list"
	case key == "":
		return "bucket"
	case strings.HasSuffix(key, "/assignments.json"):
		return "doc"
	case strings.HasSuffix(key, "/assignments.json.sig"):
		return "doc.sig"
	case strings.HasSuffix(key, "/status.json"):
		return "report"
	case strings.HasPrefix(key, "rollouts/"):
		return "rollout"
	case strings.HasSuffix(key, ".sig"):
		return "artifact.sig"
	case strings.HasSuffix(key, "package.json"):
		return "package"
	default:
		return "artifact"
	}
}

func (p *proxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.counts, p.perSec, p.since = map[string]int{}, map[int64]int{}, time.Now()
	p.wire.Store(0)
}

func (p *proxy) total() int64 { return p.all.Load() }

// window is what a proxy counted since its last reset.
type window struct {
	Seconds float64
	Counts  map[string]int
	PerSec  map[int64]int
	Wire    int64
}

func (p *proxy) snapshot() window {
	p.mu.Lock()
	defer p.mu.Unlock()
	w := window{Seconds: time.Since(p.since).Seconds(), Counts: map[string]int{}, PerSec: map[int64]int{}, Wire: p.wire.Load()}
	for k, v := range p.counts {
		w.Counts[k] = v
	}
	for k, v := range p.perSec {
		w.PerSec[k] = v
	}
	return w
}

func (w window) total() int {
	n := 0
	for _, v := range w.Counts {
		n += v
	}
	return n
}

// sum counts the requests whose "METHOD kind status" has every one of
// the given fields ("" matches any).
func (w window) sum(method, kind, status string) int {
	n := 0
	for k, v := range w.Counts {
		f := strings.Fields(k)
		if (method == "" || f[0] == method) && (kind == "" || f[1] == kind) && (status == "" || f[2] == status) {
			n += v
		}
	}
	return n
}

// peak is the highest request rate over any span seconds of the window.
func (w window) peak(span int) float64 {
	if len(w.PerSec) == 0 {
		return 0
	}
	var lo, hi int64 = 1 << 62, 0
	for s := range w.PerSec {
		lo, hi = min(lo, s), max(hi, s)
	}
	best := 0
	for s := lo; s+int64(span)-1 <= hi || s == lo; s++ {
		n := 0
		for i := range int64(span) {
			n += w.PerSec[s+i]
		}
		best = max(best, n)
	}
	return float64(best) / float64(span)
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, n: l.n}, nil
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// Results.

type results struct {
	Agents           int                 `json:"agents"`
	CPUs             int                 `json:"cpus"`
	Poll             string              `json:"poll_interval"`
	Probation        string              `json:"probation"`
	ReportInterval   string              `json:"report_interval"`
	Idle             *idleResult         `json:"idle,omitempty"`
	IdleWindow       string              `json:"idle_window"`
	Wait             string              `json:"wait"`
	Waves            string              `json:"waves"`
	ArtifactBytes    int                 `json:"artifact_bytes"`
	StartSeconds     float64             `json:"start_seconds"`
	RSSBytes         int64               `json:"rss_bytes"`
	Goroutines       int                 `json:"goroutines"`
	GoodRollout      *rolloutFigures     `json:"good_rollout,omitempty"`
	PacedRollout     *rolloutFigures     `json:"paced_rollout,omitempty"`
	BadRollout       *rolloutFigures     `json:"bad_rollout,omitempty"`
	FleetStatus      *fleetStatusFigures `json:"fleet_status,omitempty"`
	OperatorRequests int64               `json:"operator_requests"`
	TotalSeconds     float64             `json:"total_seconds"`
}

type idleResult struct {
	Seconds                  float64        `json:"seconds"`
	Requests                 int            `json:"requests"`
	Counts                   map[string]int `json:"counts"`
	RequestsPerAgentPerPoll  float64        `json:"requests_per_agent_per_poll"`
	RequestsPerAgentPerHour  float64        `json:"requests_per_agent_per_hour"`
	PollsNotModifiedShare    float64        `json:"polls_not_modified_share"`
	NoBodyShare              float64        `json:"no_body_share"`
	BytesPerAgentPerHour     float64        `json:"bytes_per_agent_per_hour"`
	ReportWritesPerAgentHour float64        `json:"report_writes_per_agent_per_hour"`
	RequestsPerSecond        float64        `json:"requests_per_second"`
	Peak10s                  float64        `json:"peak_10s_requests_per_second"`
	MinIOCPUSeconds          float64        `json:"minio_cpu_seconds"`
	MinIOCoresPer1000        float64        `json:"minio_cores_per_1000_agents"`
}

func idleFigures(w window, f flags, cpu float64) *idleResult {
	agents, hours := float64(f.agents), w.Seconds/3600
	polls := w.Seconds / f.poll.Seconds()
	r := &idleResult{Seconds: w.Seconds, Requests: w.total(), Counts: w.Counts, MinIOCPUSeconds: cpu}
	docGets := w.sum("GET", "doc", "")
	r.RequestsPerAgentPerPoll = float64(r.Requests) / agents / polls
	r.RequestsPerAgentPerHour = float64(r.Requests) / agents / hours
	if docGets > 0 {
		r.PollsNotModifiedShare = float64(w.sum("GET", "doc", "304")) / float64(docGets)
	}
	if r.Requests > 0 {
		r.NoBodyShare = float64(w.sum("", "", "304")) / float64(r.Requests)
	}
	r.BytesPerAgentPerHour = float64(w.Wire) / agents / hours
	r.ReportWritesPerAgentHour = float64(w.sum("PUT", "report", "")) / agents / hours
	r.RequestsPerSecond = float64(r.Requests) / w.Seconds
	r.Peak10s = w.peak(10)
	r.MinIOCoresPer1000 = cpu / w.Seconds / agents * 1000
	return r
}

type rolloutFigures struct {
	Version   string  `json:"version"`
	State     string  `json:"state"`
	WaveSizes []int   `json:"wave_sizes"`
	Seconds   float64 `json:"seconds"`
	MaxRate   int     `json:"max_rate,omitempty"`
	// WritingSeconds: each wave's first document change to its last.
	WritingSeconds []float64 `json:"writing_seconds,omitempty"`
	// good
	To99Seconds  float64        `json:"to_99_percent_seconds,omitempty"`
	Bound        string         `json:"bound,omitempty"` // 3 × (poll + probation + the rollout's poll)
	Requests     int            `json:"requests,omitempty"`
	Counts       map[string]int `json:"counts,omitempty"`
	MeanRate     float64        `json:"mean_requests_per_second,omitempty"`
	Peak1s       float64        `json:"peak_1s_requests_per_second,omitempty"`
	Peak10s      float64        `json:"peak_10s_requests_per_second,omitempty"`
	Peak60s      float64        `json:"peak_60s_requests_per_second,omitempty"`
	IdleRate     float64        `json:"idle_requests_per_second,omitempty"`
	PeakOverIdle float64        `json:"peak_10s_over_idle,omitempty"`
	// bad
	Canary              int     `json:"canary,omitempty"`
	AgentsThatRanIt     int     `json:"agents_that_ran_it"`
	CanariesBackSeconds float64 `json:"canaries_back_seconds,omitempty"`
	// RolledBackSeconds: the longest any canary ran the bad version,
	// from its document's change to the old version started again;
	// RollbackBound: one poll (with its jitter) + probation.
	RolledBackSeconds float64 `json:"rolled_back_seconds,omitempty"`
	RollbackBound     string  `json:"rollback_bound,omitempty"`
	BackTo            string  `json:"back_to,omitempty"`
}

type fleetStatusFigures struct {
	Seconds  float64                   `json:"seconds"`
	Requests int64                     `json:"requests"`
	Agents   int                       `json:"agents"`
	OK       int                       `json:"ok"`
	Stale    int                       `json:"stale"`
	Problems int                       `json:"problems"`
	Versions map[string]map[string]int `json:"versions"`
}

func (rf *rolloutFigures) peaks(w window, idle float64) {
	rf.Requests, rf.Counts = w.total(), w.Counts
	rf.MeanRate = float64(rf.Requests) / w.Seconds
	rf.Peak1s, rf.Peak10s, rf.Peak60s = w.peak(1), w.peak(10), w.peak(60)
	rf.IdleRate = idle
	if idle > 0 {
		rf.PeakOverIdle = rf.Peak10s / idle
	}
}

func (r *results) print(out io.Writer) {
	p := func(format string, a ...any) { fmt.Fprintf(out, format+"\n", a...) }
	p("")
	p("fleetsim: %d agents (the daemon's code, in-memory supervisor), one MinIO, %d CPUs; poll %s, probation %s, report.interval %s, artifact %d bytes",
		r.Agents, r.CPUs, r.Poll, r.Probation, r.ReportInterval, r.ArtifactBytes)
	p("  start: every agent promoted %s in %.0f s; this process %d MiB RSS, %d goroutines", oldV, r.StartSeconds, r.RSSBytes>>20, r.Goroutines)
	if i := r.Idle; i != nil {
		p("idle (%.0f s):", i.Seconds)
		p("  store requests per agent per poll interval   %.3f  (%.1f per hour)", i.RequestsPerAgentPerPoll, i.RequestsPerAgentPerHour)
		p("  polls answered 304 Not Modified              %.2f %%", 100*i.PollsNotModifiedShare)
		p("  requests without a body (304)                %.2f %%", 100*i.NoBodyShare)
		p("  bytes per agent per hour (on the wire)       %.0f", i.BytesPerAgentPerHour)
		p("  report writes per agent per hour             %.2f", i.ReportWritesPerAgentHour)
		p("  request rate, mean / peak over 10 s          %.1f / %.1f per s", i.RequestsPerSecond, i.Peak10s)
		p("  MinIO CPU                                    %.1f s in %.0f s: %.3f cores per 1000 agents", i.MinIOCPUSeconds, i.Seconds, i.MinIOCoresPer1000)
		p("  requests: %s", fmtCounts(i.Counts))
	}
	for _, g := range []*rolloutFigures{r.GoodRollout, r.PacedRollout} {
		if g == nil {
			continue
		}
		rate := "as fast as the store takes them"
		if g.MaxRate > 0 {
			rate = fmt.Sprintf("--max-rate %d/min", g.MaxRate)
		}
		p("rollout of %s, waves %v (%s), changes %s:", g.Version, g.WaveSizes, r.Waves, rate)
		p("  99 %% of the agents promoted it after        %.0f s  (bound 3 × (poll + probation + the rollout's 5 s report poll) = %s); done after %.0f s", g.To99Seconds, g.Bound, g.Seconds)
		p("  each wave's writing (first change to last)  %s", fmtSeconds(g.WritingSeconds))
		p("  request rate: mean %.1f, peak over 1 s %.0f, 10 s %.1f, 60 s %.1f per s; idle mean %.1f; peak 10 s / idle %.2f",
			g.MeanRate, g.Peak1s, g.Peak10s, g.Peak60s, g.IdleRate, g.PeakOverIdle)
		p("  requests: %s", fmtCounts(g.Counts))
	}
	if b := r.BadRollout; b != nil {
		p("rollout of the bad %s: %s after %.0f s, canary %d; agents that ever ran it: %d", b.Version, b.State, b.Seconds, b.Canary, b.AgentsThatRanIt)
		p("  every canary rolled back within %.0f s of its document's change (bound: one poll, with its jitter, + probation = %s); back on %s, promoted, documents reverted, %.0f s after the halt",
			b.RolledBackSeconds, b.RollbackBound, b.BackTo, b.CanariesBackSeconds)
	}
	if fs := r.FleetStatus; fs != nil {
		p("addonctl fleet status: %d agents (%d OK, %d stale, %d with problems) in %.1f s, %d store requests; %s by version and state: %v",
			fs.Agents, fs.OK, fs.Stale, fs.Problems, fs.Seconds, fs.Requests, addonID, fs.Versions)
	}
	p("operator requests (publish, assign, rollouts, fleet status): %d; whole run %.0f s", r.OperatorRequests, r.TotalSeconds)
}

func fmtSeconds(v []float64) string {
	var parts []string
	for _, x := range v {
		parts = append(parts, fmt.Sprintf("%.1f s", x))
	}
	return strings.Join(parts, ", ")
}

func fmtCounts(c map[string]int) string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s: %d", k, c[k])
	}
	return b.String()
}

// Host figures.

// raiseNoFile lifts the open files limit: every agent holds a few (its
// lock, status socket, store connections). Root may raise the hard limit
// too; anyone else gets the hard limit.
func raiseNoFile() {
	want := syscall.Rlimit{Cur: 1 << 20, Max: 1 << 20}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) == nil {
		return
	}
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// procCPU is a process's user+system CPU time in seconds.
func procCPU(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	// fields after the command: state is f[0]; utime f[11], stime f[12]
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

func rss() int64 {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}
