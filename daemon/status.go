package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/addond/addond/capabilities"
	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/reconcile"
	"github.com/addond/addond/supervisors/helper"
)

// Status is GET /v1/status (DESIGN.md, "Contract: status").
type Status struct {
	AgentID       string `json:"agent_id"`
	Version       string `json:"version"`
	Ready         bool   `json:"ready"`
	Serial        uint64 `json:"serial"`
	DocumentError string `json:"document_error,omitempty"`
	// DocumentFresh: the assignment document in use is confirmed by the
	// source (just accepted, or unchanged). False while the store is
	// unreachable or its document is refused: add-ons keep running on what
	// they ran (from_lkg).
	DocumentFresh bool `json:"document_fresh"`
	// DocumentExpired: the document in use is past its expires; add-ons
	// keep their last-known-good.
	DocumentExpired bool `json:"document_expired"`
	// DocumentCheckedAt is the last time the source answered freshly (a
	// new accepted document, or unchanged), since addond started;
	// DocumentAppliedAt when the document in use was accepted.
	DocumentCheckedAt *time.Time    `json:"document_checked_at,omitempty"`
	DocumentAppliedAt *time.Time    `json:"document_applied_at,omitempty"`
	Addons            []AddonStatus `json:"addons"`
}

// timePtr is t, or nil when t is zero (never).
func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// AddonStatus is one add-on in Status.
type AddonStatus = reconcile.AddonStatus

// StatusGroup owns the status socket: its members (operators) may read.
const StatusGroup = "addond-status"

// parseRequest routes a status API request: reads are GET /v1/status;
// changes are POST /v1/reconcile, POST /v1/retry/<addon_id> and POST
// /v1/run/<addon_id> (an ephemeral helper run).
func parseRequest(method, path string) (req request, change bool, code int, err error) {
	switch {
	case path == "/v1/status":
		if method != http.MethodGet {
			return request{}, false, http.StatusMethodNotAllowed, fmt.Errorf("%s %s: use GET", method, path)
		}
		return request{kind: "status"}, false, 0, nil
	case path == "/v1/reconcile":
		if method != http.MethodPost {
			return request{}, false, http.StatusMethodNotAllowed, fmt.Errorf("%s %s: use POST", method, path)
		}
		return request{kind: "reconcile"}, true, 0, nil
	case strings.HasPrefix(path, "/v1/retry/"):
		if method != http.MethodPost {
			return request{}, false, http.StatusMethodNotAllowed, fmt.Errorf("%s %s: use POST", method, path)
		}
		id := strings.TrimPrefix(path, "/v1/retry/")
		if err := assignment.ValidAddonID(id); err != nil {
			return request{}, false, http.StatusBadRequest, err
		}
		return request{kind: "retry", id: id}, true, 0, nil
	case strings.HasPrefix(path, "/v1/run/"):
		if method != http.MethodPost {
			return request{}, false, http.StatusMethodNotAllowed, fmt.Errorf("%s %s: use POST", method, path)
		}
		id := strings.TrimPrefix(path, "/v1/run/")
		if err := assignment.ValidAddonID(id); err != nil {
			return request{}, false, http.StatusBadRequest, err
		}
		return request{kind: "run", id: id}, true, 0, nil
	}
	return request{}, false, http.StatusNotFound, fmt.Errorf("no such endpoint %q", path)
}

type callerKey struct{}

// caller is who is at the other end of a status socket connection,
// decided once, when the connection was accepted (capabilities.PeerOf):
// a kept-alive connection keeps what it was allowed then, whatever
// becomes of the process or its pid later.
type caller struct {
	uid, pid int
	// name is "root", "addond", "addon <id>" or "" (may only read).
	name  string
	addon string // the add-on whose unit it runs in
	err   error  // why it could not be identified
}

// mayChange: root, or a process in addond's own cgroup — add-ons run with
// addond's uid, so the uid alone proves nothing.
func (c caller) mayChange() error {
	switch {
	case c.err != nil:
		return fmt.Errorf("caller not identified: %w", c.err)
	case c.name == "root" || c.name == "addond":
		return nil
	}
	return fmt.Errorf("pid %d (uid %d) is neither root nor in addond's cgroup", c.pid, c.uid)
}

// identify decides what the peer of a new connection is.
func identify(uc *net.UnixConn, ownCgroup string) caller {
	p, err := capabilities.PeerOf(uc)
	c := caller{uid: p.UID, pid: p.PID, err: err}
	switch {
	case err != nil:
	case p.UID == 0:
		c.name = "root"
	case ownCgroup != "" && p.Cgroup == ownCgroup && p.UID == os.Getuid():
		c.name = "addond"
	default:
		if c.addon = addonUnitOf(p.UID, p.Cgroup); c.addon != "" {
			c.name = "addon " + c.addon
		}
	}
	return c
}

// serveStatus listens on the status socket: mode 0660, group addond-status
// when that group exists.
func (l *loop) serveStatus() (*http.Server, error) {
	path := l.a.cfg().StatusSocket
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path) // a stale socket from an earlier run
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if g, err := user.LookupGroup(StatusGroup); err == nil {
		if gid, err := strconv.Atoi(g.Gid); err == nil {
			if err := os.Chown(path, -1, gid); err != nil {
				l.log.Warn("status socket: operators (group "+StatusGroup+") cannot read it", "error", err)
			}
		}
	}
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("own cgroup: %w", err)
	}
	ownCgroup := capabilities.CgroupOf(own)
	srv := &http.Server{
		Handler:           l.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			id := caller{err: errors.New("not a unix socket")}
			if uc, ok := c.(*net.UnixConn); ok {
				id = identify(uc, ownCgroup)
			}
			return context.WithValue(ctx, callerKey{}, id)
		},
	}
	go srv.Serve(ln)
	return srv, nil
}

// mayRun: root and addond may run any helper; an add-on its own, and
// another's only when that helper's signed entry lists it in
// helper_callers — and a helper that runs with capabilities never for a
// sandboxed caller (a confused deputy).
func (l *loop) mayRun(c caller, id string) error {
	if c.mayChange() == nil {
		return nil
	}
	if c.err != nil {
		return fmt.Errorf("caller not identified: %w", c.err)
	}
	if c.addon == "" {
		return fmt.Errorf("pid %d (uid %d) is neither root, nor addond, nor one of its add-on units", c.pid, c.uid)
	}
	if c.addon == id {
		return nil
	}
	l.mu.Lock()
	target, from := l.helpers[id], l.helpers[c.addon]
	l.mu.Unlock()
	if !slices.Contains(target.Callers, c.addon) {
		return fmt.Errorf("addon %q may not run addon %q's helper: its signed entry does not list it in helper_callers", c.addon, id)
	}
	if target.Capped && !from.Capped {
		return fmt.Errorf("addon %q may not run addon %q's helper: it runs with capabilities, and %q is sandboxed", c.addon, id, c.addon)
	}
	return nil
}

// callerOf is the request's caller (identified at accept).
func callerOf(hr *http.Request) caller {
	c, ok := hr.Context().Value(callerKey{}).(caller)
	if !ok {
		return caller{err: errors.New("peer credentials unavailable")}
	}
	return c
}

// addonUnitOf returns the add-on id whose unit (addond-<id>.service in
// addond's own manager, or a capped add-on's in the system manager) a
// process of uid in cgroup path runs in, or "".
func addonUnitOf(uid int, path string) string {
	// A capped add-on runs under a dynamic uid of its own, in a unit of
	// the system manager that addond-updater made: there the cgroup, in
	// which only root places processes, says who it is, whatever the uid.
	if uid != os.Getuid() && !strings.HasPrefix(path, "/system.slice/") {
		return ""
	}
	id, ok := strings.CutPrefix(unitIn(path, uid), "addond-")
	if !ok {
		return ""
	}
	if id, ok = strings.CutSuffix(id, ".service"); ok && assignment.ValidAddonID(id) == nil {
		return id
	}
	return ""
}

// unitIn returns the unit a cgroup path belongs to, in uid's user manager
// or in the system manager: the first component below the manager that is
// not a slice. Deeper components are the unit's own sub-cgroups, which its
// processes may create (the user manager's subtree is delegated to the
// user) and so name nothing: an add-on cannot pass for another by moving
// into …/addond-<it>.service/addond-<other>.service.
func unitIn(path string, uid int) string {
	rest, ok := strings.CutPrefix(path, "/system.slice/")
	if !ok {
		if _, rest, ok = strings.Cut(path, fmt.Sprintf("/user@%d.service/", uid)); !ok {
			return ""
		}
	}
	for c := range strings.SplitSeq(rest, "/") {
		if !strings.HasSuffix(c, ".slice") {
			return c
		}
	}
	return ""
}

// runRequest is the body of POST /v1/run/<addon_id>.
type runRequest struct {
	Args []string `json:"args"`
}

// maxRunRequest bounds a run request's body.
const maxRunRequest = 64 << 10

func (l *loop) serveRun(w http.ResponseWriter, hr *http.Request, id string) {
	c := callerOf(hr)
	if err := l.mayRun(c, id); err != nil {
		writeError(w, http.StatusForbidden, err)
		return
	}
	if l.opts.Helpers == nil {
		writeError(w, http.StatusNotFound, fmt.Errorf("addon %q: ephemeral helpers are not available on this host", id))
		return
	}
	var body runRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, hr.Body, maxRunRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil && !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("run request: %w", err))
		return
	}
	if len(body.Args) > 256 {
		writeError(w, http.StatusBadRequest, fmt.Errorf("run request: %d arguments, at most 256", len(body.Args)))
		return
	}
	// The run is bounded by the helper's own timeout, not by the
	// server's write timeout.
	http.NewResponseController(w).SetWriteDeadline(time.Time{})
	l.log.Info("helper run requested", "addon_id", id, "caller", c.name, "pid", c.pid)
	res, err := l.opts.Helpers.Run(hr.Context(), id, body.Args, c.name)
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, helper.ErrNotHelper) {
			code = http.StatusNotFound
		}
		writeError(w, code, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (l *loop) routes() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, hr *http.Request) {
		req, change, code, err := parseRequest(hr.Method, hr.URL.Path)
		if err != nil {
			writeError(w, code, err)
			return
		}
		if req.kind == "run" {
			l.serveRun(w, hr, req.id)
			return
		}
		if change {
			if err := callerOf(hr).mayChange(); err != nil {
				writeError(w, http.StatusForbidden, err)
				return
			}
		}
		if req.kind == "status" {
			l.mu.Lock()
			st := l.status
			l.mu.Unlock()
			writeJSON(w, http.StatusOK, st)
			return
		}
		req.reply = make(chan error, 1)
		select {
		case l.reqs <- req:
		case <-hr.Context().Done():
			return
		case <-time.After(10 * time.Second):
			writeError(w, http.StatusServiceUnavailable, errors.New("addond is busy"))
			return
		}
		if err := <-req.reply; err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, errUnknownAddon) {
				code = http.StatusNotFound
			}
			writeError(w, code, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"result": "ok"})
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
