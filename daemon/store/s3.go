package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3 is a store in an S3-compatible bucket, reached through minio-go.
// Requests are not retried inside minio-go: delivery retries with its own
// bounded backoff, and resumes from where a body broke off.
type S3 struct {
	cfg  S3Config
	core minio.Core
}

var _ Store = (*S3)(nil)

// credentialChain is minio-go's standard chain: environment (AWS_*, then
// MINIO_*), the AWS and MinIO client credentials files, then IAM.
func credentialChain() *credentials.Credentials {
	return credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.EnvMinio{},
		&credentials.FileAWSCredentials{},
		&credentials.FileMinioClient{},
		&credentials.IAM{},
	})
}

// NewS3 returns the store for cfg. It does not connect.
func NewS3(cfg S3Config) (*S3, error) {
	tr, err := minio.DefaultTransport(!cfg.Insecure)
	if err != nil {
		return nil, err
	}
	// minio-go's transport takes its proxy from the environment too, but
	// through http.ProxyFromEnvironment, which reads it once per process.
	applyTransport(tr)
	if !cfg.Insecure {
		if tr.TLSClientConfig, err = tlsConfig("s3 store", cfg.CAFile); err != nil {
			return nil, err
		}
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:      credentialChain(),
		Secure:     !cfg.Insecure,
		Region:     cfg.Region,
		Transport:  tr,
		MaxRetries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 store: %w", err)
	}
	return &S3{cfg: cfg, core: minio.Core{Client: client}}, nil
}

func (s *S3) String() string {
	scheme := "https"
	if s.cfg.Insecure {
		scheme = "http"
	}
	return fmt.Sprintf("s3://%s/%s (%s://%s)", s.cfg.Bucket, strings.TrimSuffix(s.cfg.Prefix, "/"), scheme, s.cfg.Endpoint)
}

func (s *S3) object(key string) (string, error) {
	if err := ValidKey(key); err != nil {
		return "", err
	}
	return s.cfg.Prefix + key, nil
}

func (s *S3) mapErr(key string, err error) error {
	resp := minio.ToErrorResponse(err)
	switch {
	case resp.StatusCode == http.StatusNotModified:
		return ErrNotModified
	case resp.StatusCode == http.StatusPreconditionFailed:
		return fmt.Errorf("%s: %s: %w", s, key, ErrChanged)
	case resp.Code == minio.NoSuchKey || resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%s: %s: %w", s, key, ErrNotFound)
	case resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("%s: %s: %w (%w)", s, key, err, ErrDenied)
	}
	return fmt.Errorf("%s: %s: %w", s, key, err)
}

func (s *S3) List(ctx context.Context, prefix string, fn func(Info) error) error {
	if err := validPrefix(prefix); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx) // ends minio-go's listing when fn stops it
	defer cancel()
	for oi := range s.core.Client.ListObjects(ctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: s.cfg.Prefix + prefix, Recursive: true}) {
		if oi.Err != nil {
			return s.mapErr(prefix, oi.Err)
		}
		key, ok := strings.CutPrefix(oi.Key, s.cfg.Prefix)
		if !ok || ValidKey(key) != nil || !strings.HasPrefix(key, prefix) {
			continue
		}
		if err := fn(Info{Key: key, Size: oi.Size, ETag: oi.ETag, ModTime: oi.LastModified}); err != nil {
			return err
		}
	}
	return nil
}

func (s *S3) Stat(ctx context.Context, key string) (Info, error) {
	obj, err := s.object(key)
	if err != nil {
		return Info{}, err
	}
	oi, err := s.core.StatObject(ctx, s.cfg.Bucket, obj, minio.StatObjectOptions{})
	if err != nil {
		return Info{}, s.mapErr(key, err)
	}
	return Info{Key: key, Size: oi.Size, ETag: oi.ETag, ModTime: oi.LastModified}, nil
}

func (s *S3) Open(ctx context.Context, key string, opts OpenOptions) (io.ReadCloser, Info, error) {
	obj, err := s.object(key)
	if err != nil {
		return nil, Info{}, err
	}
	var o minio.GetObjectOptions
	if opts.IfMatch != "" {
		o.SetMatchETag(opts.IfMatch)
	}
	if opts.IfNoneMatch != "" {
		o.SetMatchETagExcept(opts.IfNoneMatch)
	}
	if opts.Offset < 0 {
		return nil, Info{}, fmt.Errorf("%s: %s: negative offset", s, key)
	}
	if opts.Offset > 0 {
		o.SetRange(opts.Offset, 0)
	}
	body, oi, hdr, err := s.core.GetObject(ctx, s.cfg.Bucket, obj, o)
	if err != nil {
		return nil, Info{}, s.mapErr(key, err)
	}
	info := Info{Key: key, Size: oi.Size, ETag: oi.ETag, ModTime: oi.LastModified, Signature: hdr.Get(SignatureHeader)}
	if opts.Offset > 0 {
		// A server that ignores Range answers 200 with the whole object
		// (ErrRangeIgnored); appending that to a partial file would
		// corrupt it silently.
		total, err := contentRangeTotal(hdr.Get("Content-Range"), opts.Offset)
		if err != nil {
			body.Close()
			return nil, info, fmt.Errorf("%s: %s: ranged read: %w", s, key, err)
		}
		info.Size = total
	}
	if opts.IfMatch != "" && info.ETag != opts.IfMatch {
		body.Close()
		return nil, info, fmt.Errorf("%s: %s: %w", s, key, ErrChanged)
	}
	return &exactReader{r: body, c: body, left: info.Size - opts.Offset, key: key}, info, nil
}

func (s *S3) Put(ctx context.Context, key string, r io.Reader, size int64) (Info, error) {
	return s.put(ctx, key, r, size, minio.PutObjectOptions{})
}

// PutIfMatch sends If-Match (If-None-Match: * for "") with a single PUT:
// the server decides, so the condition holds across writers anywhere.
func (s *S3) PutIfMatch(ctx context.Context, key string, r io.Reader, size int64, ifMatch string) (Info, error) {
	return s.putIfMatch(ctx, key, r, size, ifMatch, nil)
}

// PutIfMatchSigned is PutIfMatch with sig in the object's metadata
// (SignatureHeader), written with it in the one PUT.
func (s *S3) PutIfMatchSigned(ctx context.Context, key string, r io.Reader, size int64, ifMatch, sig string) (Info, error) {
	return s.putIfMatch(ctx, key, r, size, ifMatch, map[string]string{"addond-signature": sig})
}

func (s *S3) putIfMatch(ctx context.Context, key string, r io.Reader, size int64, ifMatch string, meta map[string]string) (Info, error) {
	if size < 0 || size > conditionalMax {
		return Info{}, fmt.Errorf("%s: %s: a conditional write takes a known size up to %d bytes, not %d", s, key, conditionalMax, size)
	}
	o := minio.PutObjectOptions{UserMetadata: meta}
	if ifMatch == "" {
		o.SetMatchETagExcept("*")
	} else {
		o.SetMatchETag(ifMatch)
	}
	info, err := s.put(ctx, key, r, size, o)
	if errors.Is(err, ErrNotFound) {
		// If-Match on an object that is gone: S3 says 404.
		return Info{}, fmt.Errorf("%s: %s: gone (want ETag %s): %w", s, key, ifMatch, ErrChanged)
	}
	return info, err
}

// conditionalMax keeps a conditional write one PUT (minio-go goes
// multipart above 16 MiB, where no condition is sent).
const conditionalMax = 16 << 20

func (s *S3) put(ctx context.Context, key string, r io.Reader, size int64, o minio.PutObjectOptions) (Info, error) {
	obj, err := s.object(key)
	if err != nil {
		return Info{}, err
	}
	o.ContentType = "application/octet-stream"
	ui, err := s.core.Client.PutObject(ctx, s.cfg.Bucket, obj, r, size, o)
	if err != nil {
		return Info{}, s.mapErr(key, err)
	}
	return Info{Key: key, Size: ui.Size, ETag: ui.ETag, ModTime: ui.LastModified}, nil
}

func (s *S3) Delete(ctx context.Context, key string) error {
	obj, err := s.object(key)
	if err != nil {
		return err
	}
	if err := s.core.RemoveObject(ctx, s.cfg.Bucket, obj, minio.RemoveObjectOptions{}); err != nil {
		if errors.Is(s.mapErr(key, err), ErrNotFound) {
			return nil
		}
		return s.mapErr(key, err)
	}
	return nil
}
