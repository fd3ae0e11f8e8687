package daemon

import (
	"net/http"
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
	for _, s := range []string{"/v1/status", "/v1/reconcile", "/v1/retry/hello", "/v1/retry/../../etc", "/v1/retry/a/b"} {
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
		if req.kind == "retry" && (req.id == "" || strings.ContainsAny(req.id, "/.\\") || !change) {
			t.Fatalf("parseRequest(%q, %q) accepted retry of %q", method, path, req.id)
		}
	})
}
