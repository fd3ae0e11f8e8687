package daemon

import (
	"bytes"
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
	"strconv"
	"strings"
	"syscall"
	"time"

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

type peerKey struct{}

// peer is the process at the other end of a status socket connection.
type peer struct {
	uid, pid int
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
	srv := &http.Server{
		Handler:           l.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if uc, ok := c.(*net.UnixConn); ok {
				if p, err := peerOf(uc); err == nil {
					return context.WithValue(ctx, peerKey{}, p)
				}
			}
			return ctx
		},
	}
	go srv.Serve(ln)
	return srv, nil
}

func peerOf(c *net.UnixConn) (peer, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return peer{}, err
	}
	var cred *syscall.Ucred
	var cerr error
	raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if cerr != nil {
		return peer{}, cerr
	}
	return peer{uid: int(cred.Uid), pid: int(cred.Pid)}, nil
}

// authorizeChange allows changes to root and to processes in addond's own
// cgroup — add-ons run with addond's uid, so the uid alone proves nothing.
func authorizeChange(p peer, ok bool) error {
	if !ok {
		return errors.New("peer credentials unavailable")
	}
	if p.uid == 0 {
		return nil
	}
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return fmt.Errorf("own cgroup: %w", err)
	}
	theirs, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.pid))
	if err != nil {
		return fmt.Errorf("peer pid %d: %w", p.pid, err)
	}
	if !bytes.Equal(own, theirs) {
		return fmt.Errorf("pid %d (uid %d) is neither root nor in addond's cgroup", p.pid, p.uid)
	}
	return nil
}

// addonUnitOf returns the add-on id whose unit (addond-<id>.service in
// addond's own manager) the peer runs in, or "".
func addonUnitOf(p peer, cgroup []byte) string {
	if p.uid != os.Getuid() {
		return ""
	}
	for line := range strings.SplitSeq(string(cgroup), "\n") {
		// cgroup v2 ("0::/path") or v1's systemd hierarchy.
		_, path, ok := strings.Cut(line, "::")
		if !ok {
			if _, rest, found := strings.Cut(line, ":name=systemd:"); found {
				path, ok = rest, true
			}
		}
		if !ok {
			continue
		}
		id, ok := strings.CutPrefix(unitIn(path, p.uid), "addond-")
		if !ok {
			continue
		}
		if id, ok = strings.CutSuffix(id, ".service"); ok && assignment.ValidAddonID(id) == nil {
			return id
		}
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

// authorizeRun allows helper runs to whoever may make changes, and to
// add-ons running as units of addond's manager (the SDK's RunHelper); it
// names the caller for the log.
func authorizeRun(p peer, ok bool) (string, error) {
	if err := authorizeChange(p, ok); err == nil {
		if p.uid == 0 {
			return "root", nil
		}
		return "addond", nil
	} else if !ok {
		return "", err
	}
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.pid))
	if err != nil {
		return "", fmt.Errorf("peer pid %d: %w", p.pid, err)
	}
	if id := addonUnitOf(p, cg); id != "" {
		return "addon " + id, nil
	}
	return "", fmt.Errorf("pid %d (uid %d) is neither root, nor addond, nor one of its add-on units", p.pid, p.uid)
}

// runRequest is the body of POST /v1/run/<addon_id>.
type runRequest struct {
	Args []string `json:"args"`
}

// maxRunRequest bounds a run request's body.
const maxRunRequest = 64 << 10

func (l *loop) serveRun(w http.ResponseWriter, hr *http.Request, id string) {
	p, ok := hr.Context().Value(peerKey{}).(peer)
	caller, err := authorizeRun(p, ok)
	if err != nil {
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
	l.log.Info("helper run requested", "addon_id", id, "caller", caller, "pid", p.pid)
	res, err := l.opts.Helpers.Run(hr.Context(), id, body.Args, caller)
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
			p, ok := hr.Context().Value(peerKey{}).(peer)
			if err := authorizeChange(p, ok); err != nil {
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
