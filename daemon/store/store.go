// Package store is addond's view of object storage: a small interface that
// opens objects for streaming (with size, ETag, ranged and conditional
// reads) and writes them, with three backends — S3-compatible storage
// through minio-go, a plain directory laid out like a bucket for air-gapped
// sites and the demo, and a read-only tree served over HTTP(S) by any web
// server or CDN, for sites whose agents may only reach a web proxy.
//
// Object keys come from assignment documents, which are hostile input: every
// key is checked by ValidKey before it reaches a backend, and the directory
// backend additionally resolves keys through os.Root so that no key and no
// symlink inside the tree can name a file outside it. The servers are
// hostile too: the network backends believe no length, range or ETag they
// cannot check, and never read past the size an answer states.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"
)

// Sentinel errors callers act on. Backends wrap them.
var (
	// ErrNotFound: the object does not exist.
	ErrNotFound = errors.New("object not found")
	// ErrNotModified: the object's ETag equals OpenOptions.IfNoneMatch.
	ErrNotModified = errors.New("object not modified")
	// ErrChanged: the object's ETag differs from OpenOptions.IfMatch, so a
	// resumed download must start again from zero.
	ErrChanged = errors.New("object changed (ETag mismatch)")
	// ErrInvalidKey: the key is not a safe relative object name.
	ErrInvalidKey = errors.New("invalid object key")
	// ErrRangeIgnored: a ranged read (OpenOptions.Offset > 0) was answered
	// with the whole object. Nothing of it was returned; a resumed download
	// starts again from zero.
	ErrRangeIgnored = errors.New("server ignored Range (answered with the whole object)")
	// ErrReadOnly: the store cannot be written (http:// and https://
	// stores). Its messages name the store.
	ErrReadOnly = errors.New("store is read-only")
	// ErrDenied: the store refused the credentials or the request (S3's
	// 403: access denied, an unknown key id, a bad signature). Trying
	// again does not help.
	ErrDenied = errors.New("refused by the store")
	// ErrNotResumable: the store does not keep a checksum of each part
	// of an upload, which a resumable write needs (Resumable). Nothing was
	// written; a plain Put can write the object.
	ErrNotResumable = errors.New("the store keeps no part checksums: the write cannot be resumable")
)

// Info describes an object.
type Info struct {
	Key     string
	Size    int64 // the whole object's size, also for ranged reads
	ETag    string
	ModTime time.Time
	// Signature is the object's addond-signature metadata (SignatureHeader)
	// as a read returned it: the hex signature its writer put on it,
	// atomically with its bytes. "" when the backend keeps no metadata
	// (a directory) or the writer put none. Hostile input like the bytes.
	Signature string
}

// SignatureHeader carries an object's signature in its metadata: S3 user
// metadata "addond-signature", which S3, MinIO and a CDN in front of them
// return with the object.
const SignatureHeader = "X-Amz-Meta-Addond-Signature"

// SignedPutter is a store that can write a signature into an object's
// metadata together with its bytes (S3): a reader then has both from one
// request, and never a document beside another document's signature.
type SignedPutter interface {
	// PutIfMatchSigned is PutIfMatch that also sets the object's
	// SignatureHeader metadata to sig.
	PutIfMatchSigned(ctx context.Context, key string, r io.Reader, size int64, ifMatch, sig string) (Info, error)
}

// OpenOptions make a read conditional or ranged.
type OpenOptions struct {
	// Offset starts the read at this byte (a Range request).
	Offset int64
	// IfMatch, when set, makes the read fail with ErrChanged unless the
	// object's ETag is exactly this one. Resumed downloads always set it.
	IfMatch string
	// IfNoneMatch, when set, makes the read fail with ErrNotModified when
	// the object's ETag is this one. Polls of the assignment document set it.
	IfNoneMatch string
}

// Store is a bucket of objects.
type Store interface {
	// Stat returns an object's size and ETag without reading it.
	Stat(ctx context.Context, key string) (Info, error)
	// Open streams an object from opts.Offset to its end. The reader
	// yields exactly Info.Size-opts.Offset bytes or fails.
	Open(ctx context.Context, key string, opts OpenOptions) (io.ReadCloser, Info, error)
	// Put writes an object of the given size from r; readers never see a
	// partial object.
	Put(ctx context.Context, key string, r io.Reader, size int64) (Info, error)
	// PutIfMatch is Put on a condition, checked and applied atomically:
	// the object's ETag is still ifMatch, or, with ifMatch "", there is no
	// object yet. Otherwise it fails with ErrChanged and writes nothing:
	// two writers of one document never both succeed from one version.
	PutIfMatch(ctx context.Context, key string, r io.Reader, size int64, ifMatch string) (Info, error)
	// Delete removes an object; a missing object is not an error.
	Delete(ctx context.Context, key string) error
	// List calls fn with every object under prefix (a key that ends in /),
	// in key order, until fn returns an error, which List returns. Keys
	// that fail ValidKey are not listed: the store is hostile too.
	List(ctx context.Context, prefix string, fn func(Info) error) error
	// String names the store for logs and errors, without secrets.
	String() string
}

// ReadOnly reports whether s can only be read (an http:// or https://
// store): its Put, PutIfMatch, Delete and List fail with ErrReadOnly.
func ReadOnly(s Store) bool {
	ro, ok := s.(interface{ ReadOnly() bool })
	return ok && ro.ReadOnly()
}

// Writable is nil for a store that can be written and, for a read-only one,
// an ErrReadOnly that names it: what publish, assign and rollout check
// before they do anything.
func Writable(s Store) error {
	if ReadOnly(s) {
		return fmt.Errorf("%s: %w (http:// and https:// stores are for agents to read; write with an s3:// or file:// URL of the same tree)", s, ErrReadOnly)
	}
	return nil
}

// Open parses a store URL (DESIGN.md, "Contract: store URLs") and returns
// the store:
//
//	s3://BUCKET[/PREFIX]?endpoint=HOST:PORT[&region=R][&insecure=true][&ca_file=PATH]
//	file:///ABS/DIR
//	https://HOST[:PORT][/PREFIX][?ca_file=PATH]   (read-only)
//	http://HOST[:PORT][/PREFIX]                   (read-only)
func Open(rawURL string) (Store, error) {
	u, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "file":
		return NewDir(u.Path)
	case "http", "https":
		return NewHTTP(u.HTTP)
	default:
		return NewS3(u.S3)
	}
}

// URL is a parsed store URL.
type URL struct {
	Scheme string // "s3", "file", "http" or "https"
	Path   string // file: the absolute directory
	S3     S3Config
	HTTP   HTTPConfig
}

// HTTPConfig is everything needed to read a tree from a web server.
type HTTPConfig struct {
	Scheme string // "http" or "https"
	Host   string // host[:port], as in the URL
	Prefix string // "" or "a/b/" (always ends in /)
	CAFile string // https: extra roots for TLS
}

// S3Config is everything needed to reach a bucket.
type S3Config struct {
	Endpoint string // host:port
	Bucket   string
	Prefix   string // "" or "a/b/" (always ends in /)
	Region   string
	Insecure bool   // plain HTTP
	CAFile   string // extra roots for TLS
}

// ParseURL validates a store URL without connecting.
func ParseURL(raw string) (URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return URL{}, fmt.Errorf("store URL: %w", err)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return URL{}, fmt.Errorf("store URL %q: file URLs name a local directory (file:///ABS/DIR)", raw)
		}
		if u.RawQuery != "" || u.Fragment != "" {
			return URL{}, fmt.Errorf("store URL %q: file URLs take no query", raw)
		}
		if !strings.HasPrefix(u.Path, "/") || strings.Contains(u.Path, "\x00") {
			return URL{}, fmt.Errorf("store URL %q: the directory must be absolute", raw)
		}
		return URL{Scheme: "file", Path: u.Path}, nil
	case "s3":
		c := S3Config{Bucket: u.Host}
		if c.Bucket == "" {
			return URL{}, fmt.Errorf("store URL %q: missing bucket (s3://BUCKET[/PREFIX]?endpoint=HOST:PORT)", raw)
		}
		if u.User != nil {
			return URL{}, fmt.Errorf("store URL %q: credentials do not belong in the URL; use the environment or a credentials file", raw)
		}
		if p := strings.Trim(u.Path, "/"); p != "" {
			if err := ValidKey(p); err != nil {
				return URL{}, fmt.Errorf("store URL %q: prefix: %w", raw, err)
			}
			c.Prefix = p + "/"
		}
		q := u.Query()
		for k, v := range q {
			if len(v) != 1 {
				return URL{}, fmt.Errorf("store URL %q: %s given %d times", raw, k, len(v))
			}
			switch k {
			case "endpoint":
				c.Endpoint = v[0]
			case "region":
				c.Region = v[0]
			case "insecure":
				switch v[0] {
				case "true", "1":
					c.Insecure = true
				case "false", "0":
				default:
					return URL{}, fmt.Errorf("store URL %q: insecure=%q, want true or false", raw, v[0])
				}
			case "ca_file":
				c.CAFile = v[0]
			default:
				return URL{}, fmt.Errorf("store URL %q: unknown parameter %q", raw, k)
			}
		}
		if c.Endpoint == "" {
			return URL{}, fmt.Errorf("store URL %q: missing endpoint=HOST:PORT", raw)
		}
		if strings.ContainsAny(c.Endpoint, "/?#@ ") {
			return URL{}, fmt.Errorf("store URL %q: endpoint %q must be HOST:PORT", raw, c.Endpoint)
		}
		return URL{Scheme: "s3", S3: c}, nil
	case "http", "https":
		return parseHTTPURL(raw, u)
	case "":
		return URL{}, fmt.Errorf("store URL %q: missing scheme (s3://, file://, https:// or http://)", raw)
	default:
		return URL{}, fmt.Errorf("store URL %q: unsupported scheme %q (s3://, file://, https:// or http://)", raw, u.Scheme)
	}
}

// parseHTTPURL checks https://HOST[:PORT][/PREFIX][?ca_file=PATH] and
// http://HOST[:PORT][/PREFIX].
func parseHTTPURL(raw string, u *url.URL) (URL, error) {
	c := HTTPConfig{Scheme: u.Scheme, Host: u.Host}
	switch {
	case u.Opaque != "" || u.Hostname() == "":
		return URL{}, fmt.Errorf("store URL %q: missing host (%s://HOST[:PORT][/PREFIX])", raw, u.Scheme)
	case u.User != nil:
		return URL{}, fmt.Errorf("store URL %q: credentials do not belong in the URL (an http(s) store is read without them)", raw)
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return URL{}, fmt.Errorf("store URL %q: a fragment means nothing here", raw)
	case strings.ContainsAny(u.Host, "/?#@ \\") || u.Port() != "" && strings.TrimLeft(u.Port(), "0123456789") != "":
		return URL{}, fmt.Errorf("store URL %q: host %q must be HOST[:PORT]", raw, u.Host)
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		if err := ValidKey(p); err != nil {
			return URL{}, fmt.Errorf("store URL %q: prefix: %w", raw, err)
		}
		c.Prefix = p + "/"
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return URL{}, fmt.Errorf("store URL %q: query: %w", raw, err)
	}
	for k, v := range q {
		switch {
		case len(v) != 1:
			return URL{}, fmt.Errorf("store URL %q: %s given %d times", raw, k, len(v))
		case k != "ca_file":
			return URL{}, fmt.Errorf("store URL %q: unknown parameter %q", raw, k)
		case u.Scheme != "https":
			return URL{}, fmt.Errorf("store URL %q: ca_file is for https:// stores", raw)
		case v[0] == "":
			return URL{}, fmt.Errorf("store URL %q: ca_file wants the path of a PEM file", raw)
		}
		c.CAFile = v[0]
	}
	return URL{Scheme: u.Scheme, HTTP: c}, nil
}

// ValidKey reports whether key is a safe relative object name: at most 1024
// bytes, '/'-separated segments that are neither empty, "." nor "..", no
// backslash, no control characters. Keys that pass cannot climb out of a
// directory store and mean the same thing to every S3 implementation.
func ValidKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty", ErrInvalidKey)
	}
	if len(key) > 1024 {
		return fmt.Errorf("%w: %d bytes long", ErrInvalidKey, len(key))
	}
	for _, r := range key {
		if r < 0x20 || r == 0x7f || r == '\\' {
			return fmt.Errorf("%w: %q contains a control character or backslash", ErrInvalidKey, key)
		}
	}
	for _, seg := range strings.Split(key, "/") {
		switch seg {
		case "":
			return fmt.Errorf("%w: %q has an empty segment (leading, trailing or doubled /)", ErrInvalidKey, key)
		case ".", "..":
			return fmt.Errorf("%w: %q has a %q segment", ErrInvalidKey, key, seg)
		}
	}
	return nil
}

// validPrefix checks a List prefix: a valid key followed by /.
func validPrefix(prefix string) error {
	if !strings.HasSuffix(prefix, "/") {
		return fmt.Errorf("%w: list prefix %q does not end in /", ErrInvalidKey, prefix)
	}
	return ValidKey(strings.TrimSuffix(prefix, "/"))
}

// MaxSigSize bounds a .sig object: one hex-encoded ed25519 signature and
// a newline, with room to spare.
const MaxSigSize = 1024

// Signature returns the signature that goes with the object at key, read
// as info: the one in the object's own metadata where the store keeps one
// (S3: written in the same PUT, so never another version's), else the
// .sig object beside it, a second read that a concurrent writer's next
// write may not have reached yet (inMeta false).
func Signature(ctx context.Context, s Store, key string, info Info) (sig []byte, inMeta bool, err error) {
	if info.Signature != "" {
		return []byte(info.Signature + "\n"), true, nil
	}
	sig, _, err = ReadSmall(ctx, s, key+".sig", MaxSigSize, OpenOptions{})
	return sig, false, err
}

// ReadSmall reads a whole small object (documents, signatures), refusing
// objects larger than limit before reading them.
func ReadSmall(ctx context.Context, s Store, key string, limit int64, opts OpenOptions) ([]byte, Info, error) {
	rc, info, err := s.Open(ctx, key, opts)
	if err != nil {
		return nil, info, err
	}
	defer rc.Close()
	if info.Size > limit {
		return nil, info, fmt.Errorf("%s: object is %d bytes, more than the %d allowed", key, info.Size, limit)
	}
	data, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, info, fmt.Errorf("%s: %w", key, err)
	}
	if int64(len(data)) > limit {
		return nil, info, fmt.Errorf("%s: object is larger than the %d bytes allowed", key, limit)
	}
	return data, info, nil
}
