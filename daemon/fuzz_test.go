package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/addond/addond/capabilities"
	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/supervisors/helper"
)

type answerTransport struct {
	code int
	body []byte
}

func (a answerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		io.Copy(io.Discard, req.Body)
		req.Body.Close()
	}
	return &http.Response{
		StatusCode: a.code, Status: fmt.Sprintf("%d %s", a.code, http.StatusText(a.code)),
		Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(bytes.NewReader(a.body)),
		ContentLength: int64(len(a.body)), Request: req, ProtoMajor: 1, ProtoMinor: 1,
	}, nil
}

// FuzzClientDecode: addonctl decodes whatever answers on the status
// socket (a path an operator names; anything may listen there). Any status
// other than 200 is an error, carrying the answer's "error" when it has
// one; a 200 decodes exactly as encoding/json decodes the body, or is an
// error; a call that expects no body ignores it.
func FuzzClientDecode(f *testing.F) {
	f.Add(uint16(200), []byte(`{"agent_id":"edge-01","version":"0.1.0","ready":true,"serial":7,"addons":[{"addon_id":"hello","version":"1.0.0","active_version":"1.0.0","previous_version":"","supervision":"agent_sidecar","state":"running","health":"healthy","from_lkg":false,"last_error":"","since":"2026-01-02T03:04:05Z"}]}`))
	f.Add(uint16(200), []byte(`{"addon_id":"probe","version":"1","unit":"addond-probe.run-1.service","exit_code":3,"stdout":"cHJvYmU6IGEgYgo=","stderr":"","duration_ns":1000}`))
	f.Add(uint16(200), []byte(`{"exit_code":137,"signal":9,"timed_out":true,"stdout":"!!"}`))
	f.Add(uint16(403), []byte(`{"error":"forbidden: not addond's cgroup"}`))
	f.Add(uint16(404), []byte(`{"error":""}`))
	f.Add(uint16(500), []byte(`not json`))
	f.Add(uint16(200), []byte(`{"serial":-1}`))
	f.Add(uint16(200), []byte(`{"addons":[{"since":"yesterday"}]}`))
	f.Add(uint16(204), []byte(``))
	f.Add(uint16(302), []byte(``))
	f.Fuzz(func(t *testing.T, code uint16, body []byte) {
		c := NewClient("/nonexistent/addond.sock")
		status := int(code)%500 + 100
		c.hc = &http.Client{Transport: answerTransport{status, body}}
		ctx := context.Background()

		var e struct{ Error string }
		wantMsg := ""
		if json.Unmarshal(body, &e) == nil {
			wantMsg = e.Error
		}
		checkErr := func(what string, err error, decodeErr error) {
			t.Helper()
			if status != http.StatusOK {
				if err == nil {
					t.Fatalf("%s: answer %d accepted", what, status)
				}
				if wantMsg != "" && !strings.Contains(err.Error(), wantMsg) {
					t.Fatalf("%s: error %q does not carry %q", what, err, wantMsg)
				}
				return
			}
			if (err == nil) != (decodeErr == nil) {
				t.Fatalf("%s: error %v, encoding/json says %v", what, err, decodeErr)
			}
		}

		st, err := c.Status(ctx)
		var refSt Status
		checkErr("status", err, json.Unmarshal(body, &refSt))
		if err == nil && !reflect.DeepEqual(*st, refSt) {
			t.Fatalf("status %+v, encoding/json says %+v", *st, refSt)
		}

		res, err := c.RunHelper(ctx, "probe", []string{"a", "b"})
		var refRes helper.Result
		checkErr("run", err, json.Unmarshal(body, &refRes))
		if err == nil && (res == nil || !reflect.DeepEqual(*res, refRes)) {
			t.Fatalf("run %+v, encoding/json says %+v", res, refRes)
		}
		if err != nil && res != nil {
			t.Fatalf("run refused (%v) with a result", err)
		}

		err = c.Reconcile(ctx)
		checkErr("reconcile", err, nil)
	})
}

// FuzzAddonUnitOf: a caller's /proc/<pid>/cgroup names the unit it runs
// in, and unit names in addond's manager are chosen by whoever talks to
// it — add-ons too. A helper run is authorized for an add-on only when its
// cgroup (capabilities.CgroupOf of the file) puts the caller in exactly
// addond-<valid id>.service of addond's user manager (or the system
// manager), of the caller's own uid.
func FuzzAddonUnitOf(f *testing.F) {
	me := os.Getuid()
	um := fmt.Sprintf("/user.slice/user-%d.slice/user@%d.service/app.slice/", me, me)
	for _, s := range []string{
		"0::" + um + "addond-hello.service\n",
		"12:pids:/x\n1:name=systemd:" + um + "addond-probe.service\n0::/\n",
		"0::/system.slice/addond-svc.service\n",
		"0::" + um + "addond-hello.run-0011aa.service\n",
		"0::" + um + "addond-hello.timer\n",
		"0::" + um + "addond-../../x.service\n",
		"0::" + um + "addond-hello.service/sub\n",
		"0::/user.slice/user-5.slice/user@5.service/addond-x.service\n",
		"0::/system.slice/evil.slice/addond-x.service/../addond-y.service\n",
		"0::" + um + "addond-a.service\n0::" + um + "addond-b.service\n",
	} {
		f.Add([]byte(s), true)
	}
	f.Add([]byte("0::"+um+"addond-hello.service\n"), false)
	f.Fuzz(func(t *testing.T, cgroup []byte, sameUID bool) {
		for _, line := range strings.Split(string(cgroup), "\n") {
			_, path, found := strings.Cut(line, "::")
			if !found {
				_, path, found = strings.Cut(line, ":name=systemd:")
			}
			if found && (!strings.HasPrefix(path, "/") || filepath.Clean(path) != path) {
				return // the kernel writes clean absolute paths
			}
		}
		uid := me
		if !sameUID {
			uid = me + 1
		}
		path := capabilities.CgroupOf(cgroup)
		id := addonUnitOf(uid, path)
		if id == "" {
			return
		}
		if !sameUID && !strings.HasPrefix(path, "/system.slice/") {
			t.Fatalf("another uid's caller outside the system manager is add-on %q", id)
		}
		if assignment.ValidAddonID(id) != nil {
			t.Fatalf("caller is add-on %q, not a valid id", id)
		}
		// The unit is the first component below the manager that is not
		// a slice; what follows it (the unit's own sub-cgroups) names
		// nothing.
		unit := "addond-" + id + ".service"
		found := false
		for _, line := range []string{"0::" + path} {
			for _, below := range []string{fmt.Sprintf("/user@%d.service/", me), "/system.slice/"} {
				_, rest, ok := strings.Cut(line, below)
				if below == "/system.slice/" {
					_, path, _ := strings.Cut(line, ":/")
					rest, ok = strings.CutPrefix("/"+path, below)
				}
				for ok && rest != "" {
					c, tail, _ := strings.Cut(rest, "/")
					if !strings.HasSuffix(c, ".slice") {
						found = found || c == unit
						break
					}
					rest = tail
				}
			}
		}
		if !found {
			t.Fatalf("%q makes the caller add-on %q", cgroup, id)
		}
	})
}

type recordingHelpers struct {
	calls int
	args  []string
}

func (h *recordingHelpers) Run(_ context.Context, id string, args []string, caller string) (*helper.Result, error) {
	h.calls++
	h.args = args
	return &helper.Result{AddonID: id, Unit: "addond-" + id + ".run-1.service", ExitCode: len(args), Stdout: []byte(caller)}, nil
}

// FuzzServeRun: the body of POST /v1/run/<id> comes from any authorized
// caller, add-ons included. A body that is one JSON object of known fields
// (or nothing) with at most 256 arguments runs the helper with exactly
// those arguments; anything else is a 400 and runs nothing.
func FuzzServeRun(f *testing.F) {
	for _, s := range []string{
		`{"args":["a","b"]}`, `{"args":[]}`, `{}`, ``, `{"args":null}`, `{"args":["--exit","3"]} `,
		`{"args":["a"]} {"args":["b"]}`, `{"args":"a"}`, `{"argv":["a"]}`, `{"args":["\u0000"]}`,
		`{"args":[` + strings.Repeat(`"x",`, 256) + `"x"]}`, `[`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		h := &recordingHelpers{}
		r := &loop{opts: RunOptions{Helpers: h}, log: slog.New(slog.DiscardHandler)}
		req := httptest.NewRequest(http.MethodPost, "/v1/run/probe", bytes.NewReader(body))
		req = req.WithContext(context.WithValue(req.Context(), callerKey{}, caller{uid: 0, pid: 1, name: "root"}))
		w := httptest.NewRecorder()
		r.serveRun(w, req, "probe")

		var want runRequest
		dec := json.NewDecoder(io.LimitReader(bytes.NewReader(body), maxRunRequest))
		dec.DisallowUnknownFields()
		derr := dec.Decode(&want)
		ok := (derr == nil || errors.Is(derr, io.EOF)) && len(want.Args) <= 256 && len(body) <= maxRunRequest
		if !ok {
			if h.calls != 0 || w.Code != http.StatusBadRequest {
				t.Fatalf("%q: answered %d after %d runs, want 400 and none", body, w.Code, h.calls)
			}
			return
		}
		if h.calls != 1 || w.Code != http.StatusOK {
			t.Fatalf("%q: answered %d after %d runs: %s", body, w.Code, h.calls, w.Body)
		}
		if len(h.args) != len(want.Args) || (len(want.Args) > 0 && !reflect.DeepEqual(h.args, want.Args)) {
			t.Fatalf("%q ran with %q, want %q", body, h.args, want.Args)
		}
		var res helper.Result
		if err := json.Unmarshal(w.Body.Bytes(), &res); err != nil || res.ExitCode != len(want.Args) {
			t.Fatalf("answer %s: %v", w.Body, err)
		}
	})
}
