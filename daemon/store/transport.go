package store

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpproxy"
)

// What the two network backends (S3 and HTTP) share: TLS roots, the proxy
// from the environment, timeouts, and the check of a ranged answer.

// Timeouts of the network backends. None bounds a whole body: artifacts
// are large and links slow; the caller's context does.
const (
	dialTimeout           = 10 * time.Second
	tlsHandshakeTimeout   = 10 * time.Second
	responseHeaderTimeout = 30 * time.Second
	idleConnTimeout       = time.Minute
)

// tlsConfig is TLS 1.2 or later with the system roots, plus the
// certificates of caFile when it is set. who names the store for errors.
func tlsConfig(who, caFile string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return c, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("%s: ca_file: %w", who, err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: ca_file %s holds no PEM certificates", who, caFile)
	}
	c.RootCAs = pool
	return c, nil
}

// proxyFromEnvironment is http.ProxyFromEnvironment (HTTPS_PROXY,
// HTTP_PROXY, NO_PROXY and their lower-case forms, with the same rules),
// read when the store is made: net/http reads the variables once per
// process, so a store made after they changed would not see it.
func proxyFromEnvironment() func(*http.Request) (*url.URL, error) {
	proxy := httpproxy.FromEnvironment().ProxyFunc()
	return func(r *http.Request) (*url.URL, error) { return proxy(r.URL) }
}

// applyTransport sets what every network store's transport has in common.
func applyTransport(tr *http.Transport) {
	tr.Proxy = proxyFromEnvironment()
	tr.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	tr.TLSHandshakeTimeout = tlsHandshakeTimeout
	tr.ResponseHeaderTimeout = responseHeaderTimeout
	tr.IdleConnTimeout = idleConnTimeout
	tr.MaxResponseHeaderBytes = 64 << 10
	// The bytes as stored: a body the transport decompressed would neither
	// match its length nor its digest.
	tr.DisableCompression = true
}

// contentRangeTotal checks "bytes START-END/TOTAL" against the requested
// start and returns TOTAL. An answer without Content-Range is the whole
// object: ErrRangeIgnored.
func contentRangeTotal(h string, start int64) (int64, error) {
	if h == "" {
		return 0, fmt.Errorf("no Content-Range in the answer: %w", ErrRangeIgnored)
	}
	rest, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return 0, fmt.Errorf("malformed Content-Range %q", h)
	}
	span, totalStr, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, fmt.Errorf("malformed Content-Range %q", h)
	}
	first, last, ok := strings.Cut(span, "-")
	if !ok {
		return 0, fmt.Errorf("malformed Content-Range %q", h)
	}
	f, err1 := strconv.ParseInt(first, 10, 64)
	l, err2 := strconv.ParseInt(last, 10, 64)
	total, err3 := strconv.ParseInt(totalStr, 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return 0, fmt.Errorf("malformed Content-Range %q", h)
	}
	// total > start: a ranged read is only made for bytes that remain,
	// and it keeps total-1 from overflowing (a negative total).
	if f != start || total <= start || l != total-1 {
		return 0, fmt.Errorf("Content-Range %q does not answer bytes=%d-", h, start)
	}
	return total, nil
}
