package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/daemon/fleet"
	"github.com/addond/addond/daemon/store"
)

// The agent's report to the store (DESIGN.md, "Fleet"): the loop offers
// every status it publishes; the reporter, a goroutine of the loop's,
// writes agents/<agent>/status.json when something an operator acts on
// changed and otherwise every report.interval, jittered. A change is
// written report.min_interval after it was first seen (and never sooner
// than that after the last write), with every change since: an update's
// download, activation and a quick promotion land in one write, not
// three. A failed write is retried with backoff and counted; it never
// holds up or fails anything else. A read-only store (http:// or https://)
// takes no report: the reporter is off, says so once per configuration in
// the log, and addond_report_enabled is 0.

// reportSchedule is the reporter's policy state: when the last report was
// written, what it said, and the failures since.
type reportSchedule struct {
	written   string    // fleet.Report.Material of the last report written
	writtenAt time.Time // zero: none yet
	changed   time.Time // when material other than written was first seen; zero: none since
	jitter    time.Duration
	failures  int
	retryAt   time.Time
}

// saw is the schedule once material m was seen at now.
func (s reportSchedule) saw(m string, now time.Time) reportSchedule {
	switch {
	case m == s.written:
		s.changed = time.Time{} // changed back: nothing to tell
	case s.changed.IsZero():
		s.changed = now
	}
	return s
}

// due is when a report whose material is m is to be written, under cfg.
func (s reportSchedule) due(m string, cfg config.Report) time.Time {
	switch {
	case s.failures > 0:
		return s.retryAt
	case s.writtenAt.IsZero():
		return time.Time{} // at once
	case m != s.written:
		at := s.writtenAt.Add(cfg.Min())
		if held := s.changed.Add(cfg.Min()); !s.changed.IsZero() && held.After(at) {
			at = held
		}
		return at
	}
	return s.writtenAt.Add(cfg.Every() + s.jitter)
}

// wrote is the schedule after a write of material m at now that ended in
// err; jitter is in [-1, 1), the share of a tenth of the interval by which
// the next periodic report moves (agents started together spread out).
func (s reportSchedule) wrote(m string, now time.Time, err error, cfg config.Report, jitter float64) reportSchedule {
	if err != nil {
		s.failures++
		backoff := cfg.Min() << min(s.failures-1, 16)
		s.retryAt = now.Add(min(backoff, cfg.Every()))
		return s
	}
	return reportSchedule{written: m, writtenAt: now, jitter: time.Duration(jitter * float64(cfg.Every()) / 10)}
}

// reporter writes the reports; offer is its only entry from the loop.
type reporter struct {
	a       *Agent
	log     *slog.Logger
	metrics *metrics
	wake    chan struct{}

	mu     sync.Mutex
	latest *Status
}

func newReporter(a *Agent, m *metrics) *reporter {
	return &reporter{a: a, log: a.log, metrics: m, wake: make(chan struct{}, 1)}
}

// offer hands the reporter the latest status; it never blocks.
func (r *reporter) offer(st Status) {
	r.mu.Lock()
	r.latest = &st
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// reportsOff is why e writes no report, or "" when it writes them.
func reportsOff(e *env) string {
	switch {
	case e.store == nil:
		return "no store"
	case store.ReadOnly(e.store):
		return "the store is read-only"
	case !e.cfg.Report.On():
		return "report.enabled is false"
	}
	return ""
}

// report is the report of the latest status, or nil (none yet, or
// reports are off: see reportsOff).
func (r *reporter) report(e *env) *fleet.Report {
	r.mu.Lock()
	st := r.latest
	r.mu.Unlock()
	if st == nil || reportsOff(e) != "" {
		return nil
	}
	return &fleet.Report{
		AgentID: st.AgentID, AddondVersion: st.Version, Platform: r.a.platform.String(),
		Ready: st.Ready, Serial: st.Serial,
		DocumentFresh: st.DocumentFresh, DocumentExpired: st.DocumentExpired, DocumentError: st.DocumentError,
		Addons: st.Addons,
	}
}

// run writes reports until ctx is done.
func (r *reporter) run(ctx context.Context) {
	var s reportSchedule
	var seen *env // the configuration whose reports were last noted
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		e := r.a.env.Load()
		if e != seen {
			seen = e
			r.metrics.reportsOn.Set(boolGauge(reportsOff(e) == ""))
			if e.store != nil && e.cfg.Report.On() && store.ReadOnly(e.store) {
				r.log.Info("reports are off: the store is read-only, so this agent's status.json is not written and fleet status and rollouts do not see it", "store", e.store.String())
			}
		}
		if rep := r.report(e); rep != nil {
			m := rep.Material()
			s = s.saw(m, time.Now())
			if wait := time.Until(s.due(m, e.cfg.Report)); wait > 0 {
				timer.Reset(wait)
			} else {
				s = s.wrote(m, time.Now(), r.write(ctx, e, rep, s.failures), e.cfg.Report, 2*rand.Float64()-1)
				continue
			}
		} else {
			timer.Stop()
		}
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-timer.C:
		}
	}
}

// write puts rep in the store, bounded in time.
func (r *reporter) write(ctx context.Context, e *env, rep *fleet.Report, failures int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rep.ReportedAt = time.Now().UTC().Truncate(time.Millisecond)
	data, err := rep.Marshal()
	if err == nil {
		_, err = e.store.Put(ctx, fleet.ReportKey(rep.AgentID), bytes.NewReader(data), int64(len(data)))
	}
	switch {
	case err == nil:
		r.metrics.reports.WithLabelValues("ok").Inc()
		r.metrics.reportedAt.SetToCurrentTime()
		if failures > 0 {
			r.log.Info("report written again", "key", fleet.ReportKey(rep.AgentID), "failures", failures)
		}
	case errors.Is(ctx.Err(), context.Canceled):
		// shutting down
	default:
		r.metrics.reports.WithLabelValues("error").Inc()
		if failures == 0 {
			// Once per run of failures: the retries are counted.
			r.log.Warn("writing the agent's report to the store; retrying with backoff", "key", fleet.ReportKey(rep.AgentID), "error", err)
		}
	}
	return err
}
