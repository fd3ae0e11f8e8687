package store

import (
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// FuzzContentRangeTotal: a resumed download trusts the S3 server's
// Content-Range for the object's size. It is accepted only when it answers
// exactly the requested "bytes=START-": the range starts at START, ends at
// the last byte, and the total is a size that holds it (no overflow, no
// negative size); the total is the one the header states.
func FuzzContentRangeTotal(f *testing.F) {
	f.Add("bytes 100-1233/1234", int64(100))
	f.Add("bytes 1-1/2", int64(1))
	f.Add("bytes 100-1233/*", int64(100))
	f.Add("bytes 0-1233/1234", int64(100))
	f.Add("bytes 100-1232/1234", int64(100))
	f.Add("bytes +100-+1233/+1234", int64(100))
	f.Add("bytes 0100-1233/01234", int64(100))
	f.Add("bytes 5-4/5", int64(5))
	f.Add("bytes 5-9223372036854775807/-9223372036854775808", int64(5))
	f.Add("", int64(1))
	f.Add("items 1-1/2", int64(1))
	f.Fuzz(func(t *testing.T, h string, start int64) {
		if start <= 0 {
			return // only ranged reads (offset > 0) ask
		}
		total, err := contentRangeTotal(h, start)
		if err != nil {
			if total != 0 {
				t.Fatalf("refused (%v) with %d", err, total)
			}
			return
		}
		if total <= start {
			t.Fatalf("contentRangeTotal(%q, %d) = %d: no byte left to read from %d", h, start, total, start)
		}
		rest := strings.TrimPrefix(h, "bytes ")
		span, totalStr, _ := strings.Cut(rest, "/")
		first, last, _ := strings.Cut(span, "-")
		f1, _ := strconv.ParseInt(first, 10, 64)
		l1, _ := strconv.ParseInt(last, 10, 64)
		t1, _ := strconv.ParseInt(totalStr, 10, 64)
		if f1 != start || l1 != total-1 || t1 != total {
			t.Fatalf("contentRangeTotal(%q, %d) = %d", h, start, total)
		}
	})
}

// FuzzHTTPObjectURL: the URL an HTTP store requests for a key that passes
// ValidKey names the store's host, lies under its prefix, and decodes back
// to exactly prefix + key: no key climbs out of the prefix, reaches
// another host, or turns into a query or a fragment.
func FuzzHTTPObjectURL(f *testing.F) {
	f.Add("fleet/a", "artifacts/hello/1.0.0/linux-amd64/hello")
	f.Add("", "packages/we?ird #%20name;x/1.0.0+b/package.json")
	f.Add("p", "a/%2e%2e/b")
	f.Add("", "@evil.example/x")
	f.Add("", "a:b//c")
	f.Fuzz(func(t *testing.T, prefix, key string) {
		if ValidKey(key) != nil || prefix != "" && ValidKey(prefix) != nil {
			return
		}
		cfg := HTTPConfig{Scheme: "https", Host: "store.example:8443"}
		if prefix != "" {
			cfg.Prefix = prefix + "/"
		}
		h, err := NewHTTP(cfg)
		if err != nil {
			t.Fatal(err)
		}
		raw := h.base + escapeKey(key)
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("key %q under %q: %q does not parse: %v", key, prefix, raw, err)
		}
		if u.Host != cfg.Host || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Path != "/"+cfg.Prefix+key {
			t.Fatalf("key %q under %q: %q is host %q, path %q, query %q, fragment %q", key, prefix, raw, u.Host, u.Path, u.RawQuery, u.Fragment)
		}
	})
}
