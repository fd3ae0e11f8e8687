package capabilities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"time"

	sd "github.com/coreos/go-systemd/v22/dbus"
)

// DefaultAgentCgroup is addond's service cgroup: the only non-root
// processes the helper answers (add-on units share addond's uid, not its
// cgroup).
const DefaultAgentCgroup = "/system.slice/addond.service"

// Server answers the updater protocol.
type Server struct {
	Config      Config
	AgentCgroup string // the agent's service cgroup [DefaultAgentCgroup]
	Version     string // the helper's, for ping
	Log         *slog.Logger
	// IdleExit ends Serve after this long without a connection (socket
	// activation starts the helper again); 0: never.
	IdleExit time.Duration
	// Concurrency bounds requests served at once [4].
	Concurrency int
	// Systemd dials the system manager (tests); nil: its private socket.
	Systemd func(context.Context) (*sd.Conn, error)
}

// Serve answers connections on ln until ctx ends or the helper was idle
// for IdleExit.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	if s.AgentCgroup == "" {
		s.AgentCgroup = DefaultAgentCgroup
	}
	if s.Concurrency <= 0 {
		s.Concurrency = 4
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { <-ctx.Done(); ln.Close() }()

	var (
		wg     sync.WaitGroup
		sem    = make(chan struct{}, s.Concurrency)
		active = make(chan int, 64) // +1 / -1 as connections start and end
	)
	if s.IdleExit > 0 {
		go func() {
			n := 0
			idle := time.NewTimer(s.IdleExit)
			defer idle.Stop()
			for {
				select {
				case d := <-active:
					n += d
					idle.Stop()
					if n == 0 {
						idle.Reset(s.IdleExit)
					}
				case <-idle.C:
					s.Log.Info("idle: exiting", "after", s.IdleExit)
					cancel()
					return
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		if s.IdleExit > 0 {
			select {
			case active <- 1:
			case <-ctx.Done():
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if s.IdleExit > 0 {
					select {
					case active <- -1:
					case <-ctx.Done():
					}
				}
			}()
			// Who connected is decided now, not after the wait for a
			// slot: by then the peer may be gone and its pid reused.
			p, perr := peerOfConn(conn)
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-time.After(RequestTimeout):
				conn.Close()
				return
			}
			s.handle(conn, p, perr)
		}()
	}
}

func (s *Server) handle(conn net.Conn, p Peer, err error) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(RequestTimeout))
	answer := func(r Response) { json.NewEncoder(conn).Encode(r) }
	if err == nil {
		err = s.authorize(p)
	}
	pid, uid := p.PID, p.UID
	if err != nil {
		s.Log.Warn("refused a caller", "error", err)
		answer(Response{Error: "refused: " + err.Error()})
		return
	}
	var req Request
	dec := json.NewDecoder(io.LimitReader(conn, MaxRequest+1))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		s.Log.Warn("bad request", "pid", pid, "error", err)
		answer(Response{Error: "bad request: " + err.Error()})
		return
	}
	log := s.Log.With("pid", pid, "uid", uid, "op", req.Op)
	switch req.Op {
	case "ping":
		answer(Response{Version: s.Version, Protocol: Protocol})
	case "apply":
		if req.Apply == nil {
			answer(Response{Error: "apply: no request"})
			return
		}
		if p := req.Apply.Platform; p != "" && p != runtime.GOOS+"/"+runtime.GOARCH {
			// Served, the helper caps only what can run here.
			answer(Response{Error: fmt.Sprintf("addon %q: platform %s is not this host's", req.Apply.AddonID, p)})
			return
		}
		a, err := applyRevalidated(s.Config, *req.Apply, func(revoked []Revoked, err error) {
			s.endRevoked(context.Background(), revoked, err)
		})
		if err != nil {
			log.Warn("refused", "addon_id", req.Apply.AddonID, "version", req.Apply.Version, "error", err)
			answer(Response{Error: err.Error()})
			return
		}
		log.Info("applied", "addon_id", req.Apply.AddonID, "version", req.Apply.Version, "path", a.Path, "caps", strings.Join(a.Caps, ","))
		answer(Response{Applied: a})
	case "remove":
		if err := Remove(s.Config, req.AddonID, req.Version); err != nil {
			log.Warn("refused", "addon_id", req.AddonID, "error", err)
			answer(Response{Error: err.Error()})
			return
		}
		log.Info("removed", "addon_id", req.AddonID, "version", req.Version)
		answer(Response{})
	case "prepare", "start", "stop":
		s.unitOp(conn, log, req, answer)
	default:
		answer(Response{Error: fmt.Sprintf("unknown op %q", req.Op)})
	}
}

// Revalidate removes the capped copies trust and policy no longer allow
// (capabilities.Revalidate) and stops the units that run them.
func (s *Server) Revalidate(ctx context.Context) ([]Revoked, error) {
	revoked, err := Revalidate(s.Config)
	return revoked, s.endRevoked(ctx, revoked, err)
}

// endRevoked logs what a revalidation revoked (or why it failed) and
// stops the units that run those copies.
func (s *Server) endRevoked(ctx context.Context, revoked []Revoked, err error) error {
	for _, r := range revoked {
		s.Log.Warn("revoked a capped copy", "addon_id", r.AddonID, "version", r.Version, "reason", r.Reason)
	}
	if err != nil {
		s.Log.Error("revalidating the capped copies", "error", err)
	}
	ctx, cancel := context.WithTimeout(ctx, unitOpTimeout)
	defer cancel()
	if serr := s.stopRevoked(ctx, revoked); serr != nil {
		s.Log.Error("stopping the units of revoked copies", "error", serr)
		err = errors.Join(err, serr)
	}
	return err
}

// unitOpTimeout bounds starting or stopping a capped add-on's unit.
const unitOpTimeout = 30 * time.Second

// unitOp starts, stops or prepares a capped add-on's unit.
func (s *Server) unitOp(conn net.Conn, log *slog.Logger, req Request, answer func(Response)) {
	conn.SetDeadline(time.Now().Add(unitOpTimeout + 5*time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), unitOpTimeout)
	defer cancel()
	var (
		resp Response
		err  error
		id   = req.AddonID
	)
	switch req.Op {
	case "prepare":
		err = s.Prepare(ctx, id)
	case "stop":
		err = s.Stop(ctx, id)
	case "start":
		if req.Start == nil {
			answer(Response{Error: "start: no request"})
			return
		}
		id = req.Start.AddonID
		resp.Started, err = s.Start(ctx, *req.Start)
	}
	if err != nil {
		log.Warn("refused", "addon_id", id, "error", err)
		answer(Response{Error: err.Error()})
		return
	}
	if resp.Started != nil {
		log.Info("started", "addon_id", id, "version", req.Start.Version, "unit", resp.Started.Unit, "caps", strings.Join(resp.Started.Caps, ","))
	} else {
		log.Info(req.Op+"d", "addon_id", id)
	}
	answer(resp)
}

// peerOfConn is PeerOf for a connection the listener accepted.
func peerOfConn(conn net.Conn) (Peer, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return Peer{}, errors.New("not a unix socket")
	}
	return PeerOf(uc)
}

// authorize admits root, and the agent user's processes in the agent's own
// service cgroup — not its add-on units, which share its uid.
func (s *Server) authorize(p Peer) error {
	if p.UID == 0 {
		return nil
	}
	agentUID, _, err := s.Config.agent()
	if err != nil {
		return err
	}
	if p.UID != agentUID {
		return fmt.Errorf("pid %d: uid %d is neither root nor the agent's", p.PID, p.UID)
	}
	if p.Cgroup != s.AgentCgroup {
		return fmt.Errorf("pid %d (uid %d) is in cgroup %q, not the agent's %q", p.PID, p.UID, p.Cgroup, s.AgentCgroup)
	}
	return nil
}

// CgroupOf is the cgroup path in a /proc/<pid>/cgroup file: the unified
// hierarchy's, else the v1 name=systemd hierarchy's.
func CgroupOf(procCgroup []byte) string {
	var v1, v2 string
	for line := range strings.SplitSeq(string(procCgroup), "\n") {
		if path, ok := strings.CutPrefix(line, "0::"); ok {
			v2 = path
		}
		if _, path, ok := strings.Cut(line, ":name=systemd:"); ok {
			v1 = path
		}
	}
	if v2 == "" || (v2 == "/" && v1 != "") {
		return v1 // a hybrid host where systemd tracks units in v1
	}
	return v2
}
