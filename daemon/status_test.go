package daemon

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/addond/addond/capabilities"
	"github.com/addond/addond/daemon/reconcile"
)

func TestParseRequest(t *testing.T) {
	cases := []struct {
		method, path string
		kind, id     string
		change       bool
		code         int
	}{
		{"GET", "/v1/status", "status", "", false, 0},
		{"POST", "/v1/reconcile", "reconcile", "", true, 0},
		{"POST", "/v1/retry/hello", "retry", "hello", true, 0},
		{"POST", "/v1/retry/../x", "", "", false, http.StatusBadRequest},
		{"POST", "/v1/retry/", "", "", false, http.StatusBadRequest},
		{"DELETE", "/v1/status", "", "", false, http.StatusMethodNotAllowed},
		{"GET", "/v1/retry/hello", "", "", false, http.StatusMethodNotAllowed},
		{"GET", "/", "", "", false, http.StatusNotFound},
		{"POST", "/v1/run/probe", "run", "probe", true, 0},
		{"GET", "/v1/run/probe", "", "", false, http.StatusMethodNotAllowed},
		{"POST", "/v1/run/a/b", "", "", false, http.StatusBadRequest},
	}
	for _, tc := range cases {
		req, change, code, err := parseRequest(tc.method, tc.path)
		if req.kind != tc.kind || req.id != tc.id || change != tc.change || code != tc.code || (code != 0) != (err != nil) {
			t.Errorf("parseRequest(%s %s) = %+v, %v, %d, %v", tc.method, tc.path, req, change, code, err)
		}
	}
}

// FuzzParseRequest: any method and path is routed or refused with a 4xx,
// and an accepted retry always names a valid add-on id.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{"/v1/status", "/v1/reconcile", "/v1/retry/hello", "/v1/retry/../../etc", "/v1/retry/a/b", "/v1/run/probe", "/v1/run/../x"} {
		f.Add("POST", s)
		f.Add("GET", s)
	}
	f.Fuzz(func(t *testing.T, method, path string) {
		req, change, code, err := parseRequest(method, path)
		if err != nil {
			if code < 400 || code > 499 {
				t.Fatalf("parseRequest(%q, %q) refused with %d", method, path, code)
			}
			return
		}
		if (req.kind == "retry" || req.kind == "run") && (req.id == "" || strings.ContainsAny(req.id, "/.\\") || !change) {
			t.Fatalf("parseRequest(%q, %q) accepted retry of %q", method, path, req.id)
		}
	})
}

func TestAddonUnitOf(t *testing.T) {
	me := os.Getuid()
	um := fmt.Sprintf("/user.slice/user-%d.slice/user@%d.service/app.slice/", me, me)
	for _, c := range []struct {
		uid    int
		cgroup string
		want   string
	}{
		{me, "0::" + um + "addond-hello.service\n", "hello"},
		{me, "12:pids:/x\n1:name=systemd:" + um + "addond-probe.service\n0::/\n", "probe"},
		{me, "0::/system.slice/addond-svc.service\n", "svc"},
		{me, "0::" + um + "addond-hello.run-0011aa.service\n", ""},                // a helper run may not start runs
		{me, "0::" + um + "addond-hello.timer\n", ""},                             // not a service
		{me, "0::" + um + "other.service\n", ""},                                  // not an add-on
		{me, "0::/user.slice/user-5.slice/user@5.service/addond-x.service\n", ""}, // another user's manager
		{me + 1, "0::" + um + "addond-hello.service\n", ""},                       // another uid
		{me + 1, "0::/system.slice/addond-ping.service\n", "ping"},                // a capped add-on, its own uid
		{me + 1, "0::/system.slice/addond-ping.service/sub\n", "ping"},
		{me + 1, "0::/system.slice/other.service\n", ""},
		{me, "0::" + um + "addond-../../x.service\n", ""},
		{me, "0::/addond-hello.service\n", ""}, // in no manager
		// An add-on's own sub-cgroups name nothing: it stays itself.
		{me, "0::" + um + "addond-hello.service/addond-root.service\n", "hello"},
		{me, "0::" + um + "addond-hello.service/user@" + fmt.Sprint(me) + ".service/addond-root.service\n", "hello"},
		{me, "0::" + um + "other.service/addond-root.service\n", ""},
		{me, "0::/user.slice/user-" + fmt.Sprint(me) + ".slice/user@" + fmt.Sprint(me) + ".service/addond-x.service\n", "x"},
	} {
		if got := addonUnitOf(c.uid, capabilities.CgroupOf([]byte(c.cgroup))); got != c.want {
			t.Errorf("addonUnitOf(uid %d, %q) = %q, want %q", c.uid, c.cgroup, got, c.want)
		}
	}
}

// TestMayRun: an add-on runs its own helper; another's only when that
// helper's signed entry lists it, and a capped helper never for a
// sandboxed caller; root and addond run any; nobody else runs any.
func TestMayRun(t *testing.T) {
	l := &loop{helpers: map[string]reconcile.HelperPolicy{
		"probe":  {Callers: []string{"caller"}},
		"raw":    {Callers: []string{"caller", "pinger"}, Capped: true},
		"caller": {},
		"pinger": {Capped: true},
		"other":  {},
	}}
	addon := func(id string) caller { return caller{uid: os.Getuid(), pid: 9, name: "addon " + id, addon: id} }
	for _, c := range []struct {
		who   caller
		id    string
		allow bool
	}{
		{caller{name: "root"}, "raw", true},
		{caller{name: "addond"}, "probe", true},
		{addon("probe"), "probe", true},    // its own
		{addon("caller"), "probe", true},   // listed
		{addon("other"), "probe", false},   // not listed
		{addon("caller"), "raw", false},    // listed, but sandboxed and raw is capped
		{addon("pinger"), "raw", true},     // listed and capped itself
		{addon("other"), "unknown", false}, // no such helper: nobody lists it
		{caller{uid: 65534, pid: 9}, "probe", false},
		{caller{err: errors.New("no pid")}, "probe", false},
	} {
		err := l.mayRun(c.who, c.id)
		if (err == nil) != c.allow {
			t.Errorf("mayRun(%+v, %q) = %v, want allowed %v", c.who, c.id, err, c.allow)
		}
	}
}
