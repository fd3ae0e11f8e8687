package store

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/vmtest"
	"github.com/addond/addond/vmtest/miniotest"
	"github.com/addond/addond/vmtest/squidtest"
)

// proxiedHost names the test's servers. Go sends no request for
// "localhost" or a loopback address through a proxy, and the servers
// listen on 127.0.0.1; so they are reached by a made-up name that only the
// proxy resolves (squid's hosts_file, see squidtest). A request that
// reaches a server by this name went through the proxy; one that bypasses
// the proxy fails to resolve it — and the proxy's access log shows which.
const (
	proxiedHost  = "addond-store.test"
	sentinelHost = "addond-sentinel.test"
)

// TestStoresHonourProxyEnvironment: the HTTP store (http and https) and the
// S3 store send their requests through a real forward proxy when
// HTTP_PROXY / HTTPS_PROXY say so, and straight to the host when NO_PROXY
// names it.
func TestStoresHonourProxyEnvironment(t *testing.T) {
	ctx := context.Background()
	minio := miniotest.Require(t)
	proxy := squidtest.Start(t, map[string]string{proxiedHost: "127.0.0.1", sentinelHost: "127.0.0.1"})
	body := bytes.Repeat([]byte("proxied "), 1024)
	const key = "artifacts/hello/1.0.0/linux-amd64/hello"

	plain := serveTree(t, "http")
	plain.put(t, key, body)
	secure := serveTree(t, "https", proxiedHost)
	secure.put(t, key, body)
	_, minioPort, _ := net.SplitHostPort(minio.Endpoint)
	bucket, _ := url.Parse(minio.NewBucket(t))
	byName := func(u string) string { return strings.Replace(u, "127.0.0.1", proxiedHost, 1) }
	stores := []struct {
		name, url string
		seen      string // what the proxy's access log shows of a request
		tunnel    bool   // https: one CONNECT, logged when the tunnel closes
	}{
		{"http", byName(plain.storeURL("")), "GET " + byName(plain.srv.URL) + "/" + key, false},
		{"https", byName(secure.storeURL("")), "CONNECT " + strings.TrimPrefix(byName(secure.srv.URL), "https://"), true},
		{"s3", fmt.Sprintf("s3://%s?endpoint=%s:%s&insecure=true", bucket.Host, proxiedHost, minioPort),
			fmt.Sprintf("GET http://%s:%s/%s/%s", proxiedHost, minioPort, bucket.Host, key), false},
	}
	open := func(t *testing.T, u string) Store {
		t.Helper()
		s, err := Open(u)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	closeIdle := func(s Store) {
		if h, ok := s.(*HTTP); ok {
			h.client.CloseIdleConnections()
		}
	}

	t.Run("through the proxy", func(t *testing.T) {
		t.Setenv("HTTP_PROXY", proxy.URL)
		t.Setenv("HTTPS_PROXY", proxy.URL)
		t.Setenv("NO_PROXY", "example.org,.example.net,127.0.0.1") // not the store's host
		for _, tc := range stores {
			t.Run(tc.name, func(t *testing.T) {
				s := open(t, tc.url)
				if tc.name == "s3" {
					if _, err := s.Put(ctx, key, bytes.NewReader(body), int64(len(body))); err != nil {
						t.Fatalf("Put through the proxy: %v", err)
					}
				}
				data, info, err := ReadSmall(ctx, s, key, 1<<20, OpenOptions{})
				if err != nil || !bytes.Equal(data, body) {
					t.Fatalf("read through the proxy: %d bytes, %v", len(data), err)
				}
				rc, _, err := s.Open(ctx, key, OpenOptions{Offset: 100, IfMatch: info.ETag})
				if err != nil {
					t.Fatalf("ranged read through the proxy: %v", err)
				}
				rest, err := io.ReadAll(rc)
				rc.Close()
				if err != nil || !bytes.Equal(rest, body[100:]) {
					t.Fatalf("ranged read through the proxy: %d bytes, %v", len(rest), err)
				}
				closeIdle(s)
				// Every request in the log (squid logs each when it ends):
				// the whole read and the ranged one, or the one tunnel.
				want := []string{"/200 "}
				if !tc.tunnel {
					want = append(want, "/206 ")
				}
				vmtest.Eventually(t, 10*time.Second, "the requests in the proxy's log ("+tc.seen+")", func() bool {
					found := 0
					for _, w := range want {
						for _, l := range proxy.Requests() {
							if strings.Contains(l, w) && strings.Contains(l, " "+tc.seen+" ") {
								found++
								break
							}
						}
					}
					return found == len(want)
				})
			})
		}
	})

	t.Run("NO_PROXY bypasses it", func(t *testing.T) {
		t.Setenv("HTTP_PROXY", proxy.URL)
		t.Setenv("HTTPS_PROXY", proxy.URL)
		t.Setenv("NO_PROXY", "example.org,"+proxiedHost)
		// A request for another made-up name still goes through the proxy,
		// after the one under test: once it is logged, so would be
		// anything the proxy handled before it.
		sentinel := open(t, strings.Replace(plain.storeURL(""), "127.0.0.1", sentinelHost, 1))
		for _, tc := range stores {
			t.Run(tc.name, func(t *testing.T) {
				before := len(proxy.Requests())
				s := open(t, tc.url)
				ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				_, err := s.Stat(ctx, key)
				// Straight to the host: the made-up name does not resolve
				// here (or, without a resolver, the lookup times out).
				if err == nil || !strings.Contains(err.Error(), proxiedHost) {
					t.Fatalf("Stat with %s in NO_PROXY = %v, want a failed connection to it", proxiedHost, err)
				}
				closeIdle(s)
				if _, err := sentinel.Stat(ctx, key); err != nil {
					t.Fatalf("the sentinel through the proxy: %v", err)
				}
				var got []string
				vmtest.Eventually(t, 10*time.Second, "the sentinel in the proxy's log", func() bool {
					got = proxy.Requests()[before:]
					return strings.Contains(strings.Join(got, "\n"), sentinelHost)
				})
				if strings.Contains(strings.Join(got, "\n"), proxiedHost) {
					t.Fatalf("with %s in NO_PROXY the proxy saw %q (error %v), want only the sentinel", proxiedHost, got, err)
				}
			})
		}
	})
}
