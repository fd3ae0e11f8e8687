package store

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// HTTP is a read-only store: a tree laid out like a bucket (published to an
// s3:// or file:// store, then served by nginx, a CDN or a bucket's public
// endpoint), read with GET and HEAD. Agents read through it; nothing writes
// through it (ErrReadOnly), so agents behind it send no reports.
//
// The server is hostile: an answer is believed only as far as it can be
// checked. A body has a stated length (Content-Length, or the total of a
// Content-Range) and nothing past it is read; a ranged answer must start
// where it was asked to; a ranged read is bound to the ETag the first bytes
// came with (If-Match and If-Range), and an object served without an ETag
// is not resumed but read again from zero. The ETag is kept verbatim,
// strong or weak; a weak one never satisfies If-Match, so such objects are
// read from zero too. 404 and 410 are ErrNotFound; 403 is not: it is what a
// misconfigured server or a bucket without public read answers, and taking
// it for "no such object" would turn a permission problem into a missing
// signature or artifact.
type HTTP struct {
	cfg    HTTPConfig
	base   string // scheme://host/ and the escaped prefix
	client *http.Client
}

var _ Store = (*HTTP)(nil)

// Bounds on what a server may make the store do or keep.
const (
	maxRedirects = 5
	maxETag      = 1024 // an ETag is kept in a partial download's metadata
)

// NewHTTP returns the store for cfg. It does not connect.
func NewHTTP(cfg HTTPConfig) (*HTTP, error) {
	if cfg.Scheme != "http" && cfg.Scheme != "https" || cfg.Host == "" {
		return nil, fmt.Errorf("http store: want http:// or https:// and a host, not %q://%q", cfg.Scheme, cfg.Host)
	}
	if cfg.CAFile != "" && cfg.Scheme != "https" {
		return nil, fmt.Errorf("http store: ca_file is for https:// stores")
	}
	h := &HTTP{cfg: cfg, base: cfg.Scheme + "://" + cfg.Host + "/"}
	if cfg.Prefix != "" {
		h.base += escapeKey(cfg.Prefix)
	}
	tr := &http.Transport{ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 16}
	applyTransport(tr)
	var err error
	if tr.TLSClientConfig, err = tlsConfig(h.String(), cfg.CAFile); err != nil {
		return nil, err
	}
	h.client = &http.Client{Transport: tr, CheckRedirect: checkRedirect}
	return h, nil
}

// checkRedirect follows a few redirects, to any host, but never from https
// to anything else: the bytes are signed, the document's freshness and the
// operator's choice of TLS are not.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) > maxRedirects {
		return fmt.Errorf("stopped after %d redirects", maxRedirects)
	}
	for _, v := range via {
		if v.URL.Scheme == "https" && req.URL.Scheme != "https" {
			return fmt.Errorf("redirect from https to %s://%s refused", req.URL.Scheme, req.URL.Host)
		}
	}
	return nil
}

// escapeKey escapes every segment of a valid key (or prefix) for a URL path.
func escapeKey(key string) string {
	segs := strings.Split(key, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}

func (h *HTTP) String() string {
	if h.cfg.Prefix == "" {
		return h.cfg.Scheme + "://" + h.cfg.Host
	}
	return h.cfg.Scheme + "://" + h.cfg.Host + "/" + strings.TrimSuffix(h.cfg.Prefix, "/")
}

// ReadOnly: see the package's ReadOnly.
func (h *HTTP) ReadOnly() bool { return true }

func (h *HTTP) readOnly(op, key string) error {
	return fmt.Errorf("%s: %s %s: %w", h, op, key, ErrReadOnly)
}

func (h *HTTP) Put(_ context.Context, key string, _ io.Reader, _ int64) (Info, error) {
	return Info{}, h.readOnly("put", key)
}

func (h *HTTP) PutIfMatch(_ context.Context, key string, _ io.Reader, _ int64, _ string) (Info, error) {
	return Info{}, h.readOnly("conditional put", key)
}

func (h *HTTP) Delete(_ context.Context, key string) error { return h.readOnly("delete", key) }

func (h *HTTP) List(_ context.Context, prefix string, _ func(Info) error) error {
	return h.readOnly("list", prefix)
}

// do sends one request for key; ValidKey is checked before anything is.
func (h *HTTP) do(ctx context.Context, method, key string, hdr http.Header) (*http.Response, error) {
	if err := ValidKey(key); err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, h.base+escapeKey(key), nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", h, key, err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Accept-Encoding", "identity")
	req.Header.Set("User-Agent", "addond")
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", h, key, err)
	}
	return resp, nil
}

func (h *HTTP) Stat(ctx context.Context, key string) (Info, error) {
	resp, err := h.do(ctx, http.MethodHead, key, nil)
	if err != nil {
		return Info{}, err
	}
	resp.Body.Close()
	return h.answer(resp, key, OpenOptions{})
}

func (h *HTTP) Open(ctx context.Context, key string, opts OpenOptions) (io.ReadCloser, Info, error) {
	if err := ValidKey(key); err != nil {
		return nil, Info{}, err
	}
	hdr := http.Header{}
	switch {
	case opts.Offset < 0:
		return nil, Info{}, fmt.Errorf("%s: %s: negative offset", h, key)
	case opts.Offset > 0 && opts.IfMatch == "":
		// Nothing would tell that the rest belongs to the object the first
		// bytes came from: an object without an ETag is read from zero.
		return nil, Info{}, fmt.Errorf("%s: %s: a ranged read needs the ETag of the bytes before it: %w", h, key, ErrChanged)
	case opts.Offset > 0:
		hdr.Set("Range", "bytes="+strconv.FormatInt(opts.Offset, 10)+"-")
		hdr.Set("If-Range", opts.IfMatch)
	}
	if opts.IfMatch != "" {
		hdr.Set("If-Match", opts.IfMatch)
	}
	if opts.IfNoneMatch != "" {
		hdr.Set("If-None-Match", opts.IfNoneMatch)
	}
	resp, err := h.do(ctx, http.MethodGet, key, hdr)
	if err != nil {
		return nil, Info{}, err
	}
	info, err := h.answer(resp, key, opts)
	if err != nil {
		resp.Body.Close()
		return nil, info, err
	}
	return &exactReader{r: resp.Body, c: resp.Body, left: info.Size - opts.Offset, key: key}, info, nil
}

// answer maps a response to the request opts describe to the object's
// Info, or to the error it means. The body is the caller's.
func (h *HTTP) answer(resp *http.Response, key string, opts OpenOptions) (Info, error) {
	fail := func(format string, a ...any) error {
		return fmt.Errorf("%s: %s: %s", h, key, fmt.Sprintf(format, a...))
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusPartialContent:
	case http.StatusNotModified:
		if opts.IfNoneMatch == "" {
			return Info{}, fail("304 Not Modified to a request without If-None-Match")
		}
		return Info{}, ErrNotModified
	case http.StatusPreconditionFailed:
		return Info{}, fmt.Errorf("%s: %s: %w", h, key, ErrChanged)
	case http.StatusNotFound, http.StatusGone:
		return Info{}, fmt.Errorf("%s: %s: %d %s: %w", h, key, resp.StatusCode, http.StatusText(resp.StatusCode), ErrNotFound)
	default:
		// The code, not the server's text: that reaches terminals.
		return Info{}, fail("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	info := Info{Key: key, ETag: resp.Header.Get("ETag"), Signature: resp.Header.Get(SignatureHeader)}
	if len(info.ETag) > maxETag {
		return Info{}, fail("ETag of %d bytes", len(info.ETag))
	}
	if t, err := http.ParseTime(resp.Header.Get("Last-Modified")); err == nil {
		info.ModTime = t
	}
	if ce := resp.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		return Info{}, fail("body encoded %q, not the object's bytes", ce)
	}
	ranged := opts.Offset > 0
	switch {
	case resp.StatusCode == http.StatusPartialContent && !ranged:
		return Info{}, fail("206 Partial Content to a request without Range")
	case resp.StatusCode == http.StatusPartialContent:
		cr := resp.Header.Get("Content-Range")
		if cr == "" {
			return Info{}, fail("206 Partial Content without Content-Range")
		}
		total, err := contentRangeTotal(cr, opts.Offset)
		if err != nil {
			return Info{}, fail("ranged read: %v", err)
		}
		if resp.ContentLength >= 0 && resp.ContentLength != total-opts.Offset {
			return Info{}, fail("Content-Length %d does not match Content-Range %q", resp.ContentLength, cr)
		}
		info.Size = total
	case ranged:
		// 200 to a ranged read: the whole object. Either If-Range did its
		// work (the object changed) or the server ignores Range; either
		// way none of it goes after the bytes already read.
		if info.ETag != opts.IfMatch {
			return info, fmt.Errorf("%s: %s: ETag %q, want %q: %w", h, key, info.ETag, opts.IfMatch, ErrChanged)
		}
		return info, fmt.Errorf("%s: %s: ranged read from byte %d: %w", h, key, opts.Offset, ErrRangeIgnored)
	case resp.ContentLength < 0:
		return Info{}, fail("answer without Content-Length")
	case opts.IfNoneMatch != "" && info.ETag == opts.IfNoneMatch:
		return info, ErrNotModified // a server that does not answer If-None-Match
	default:
		info.Size = resp.ContentLength
	}
	if opts.IfMatch != "" && info.ETag != opts.IfMatch {
		return info, fmt.Errorf("%s: %s: ETag %q, want %q: %w", h, key, info.ETag, opts.IfMatch, ErrChanged)
	}
	return info, nil
}
