package daemon

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
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
		{me, "0::" + um + "addond-../../x.service\n", ""},
		{me, "0::/addond-hello.service\n", ""}, // in no manager
		// An add-on's own sub-cgroups name nothing: it stays itself.
		{me, "0::" + um + "addond-hello.service/addond-root.service\n", "hello"},
		{me, "0::" + um + "addond-hello.service/user@" + fmt.Sprint(me) + ".service/addond-root.service\n", "hello"},
		{me, "0::" + um + "other.service/addond-root.service\n", ""},
		{me, "0::/user.slice/user-" + fmt.Sprint(me) + ".slice/user@" + fmt.Sprint(me) + ".service/addond-x.service\n", "x"},
	} {
		if got := addonUnitOf(peer{uid: c.uid, pid: 1}, []byte(c.cgroup)); got != c.want {
			t.Errorf("addonUnitOf(uid %d, %q) = %q, want %q", c.uid, c.cgroup, got, c.want)
		}
	}
}
