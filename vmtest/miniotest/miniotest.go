// Package miniotest runs a real MinIO server on 127.0.0.1 for tests of
// S3 code. There is no fake S3 in addond's tests: the server is the one
// `make test` builds once into a cache directory outside the repository
// (see Binary), started per test binary with a temporary data directory and
// stopped when the tests end.
//
// A test package that uses it has
//
//	func TestMain(m *testing.M) { os.Exit(miniotest.Run(m)) }
//
// and calls Require(t) in each test that needs the server.
package miniotest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/addond/addond/vmtest"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Version is the MinIO server release the tests run against.
const Version = "v0.0.0-20260212201848-7aac2a2c5b7c"

// Binary is where the MinIO server binary is looked for: $ADDOND_MINIO_BIN,
// else the cache `make minio` fills, $XDG_CACHE_HOME (or ~/.cache)
// /addond-test/minio-<Version>/minio.
func Binary() string {
	if p := os.Getenv("ADDOND_MINIO_BIN"); p != "" {
		return p
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "addond-test", "minio-"+Version, "minio")
}

// Server is a running MinIO.
type Server struct {
	Endpoint  string // 127.0.0.1:PORT
	AccessKey string
	SecretKey string
	cmd       *exec.Cmd
	dataDir   string
	log       *os.File
}

// Start launches MinIO on a free loopback port with a fresh data directory
// and waits until it is live.
func Start() (*Server, error) {
	bin := Binary()
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("MinIO server binary %s not found (run `make minio`): %w", bin, err)
	}
	dataDir, err := os.MkdirTemp("", "addond-minio-")
	if err != nil {
		return nil, err
	}
	port, err := vmtest.FreePort()
	if err != nil {
		return nil, err
	}
	s := &Server{
		Endpoint:  fmt.Sprintf("127.0.0.1:%d", port),
		AccessKey: "addondtest",
		SecretKey: "addondtest-" + randHex(8),
		dataDir:   dataDir,
	}
	s.log, _ = os.Create(filepath.Join(dataDir, "minio.log"))
	s.cmd = exec.Command(bin, "server", filepath.Join(dataDir, "data"),
		"--address", s.Endpoint, "--console-address", "127.0.0.1:0", "--quiet")
	s.cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+s.AccessKey,
		"MINIO_ROOT_PASSWORD="+s.SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
	)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(dataDir)
		return nil, fmt.Errorf("start MinIO: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + s.Endpoint + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("MinIO on %s not live after 30s", s.Endpoint)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop kills the server and removes its data.
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
	}
	if s.log != nil {
		s.log.Close()
	}
	os.RemoveAll(s.dataDir)
}

// Env is the credential environment addond and addonctl read (minio-go's
// standard chain).
func (s *Server) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s.SecretKey}
}

// URL is the store URL for bucket on this server.
func (s *Server) URL(bucket string) string {
	return fmt.Sprintf("s3://%s?endpoint=%s&insecure=true", bucket, s.Endpoint)
}

var (
	shared     *Server
	sharedErr  error
	sharedOnce sync.Once
)

// Run runs the tests and stops the shared server, if one was started.
func Run(m *testing.M) int {
	code := m.Run()
	if shared != nil {
		shared.Stop()
	}
	return code
}

// Require returns the test binary's shared server, starting it on first
// use, and sets the credential environment for the test. Without the MinIO
// binary the test fails under `make test` (ADDOND_TEST_STRICT=1, where every
// dependency is provided) and is skipped, with the reason, elsewhere.
func Require(t testing.TB) *Server {
	t.Helper()
	sharedOnce.Do(func() { shared, sharedErr = Start() })
	if sharedErr != nil {
		vmtest.Unavailable(t, fmt.Sprintf("needs MinIO: %v", sharedErr))
	}
	for _, kv := range shared.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	return shared
}

// NewBucket creates a bucket with a unique name and returns its store URL.
func (s *Server) NewBucket(t testing.TB) string {
	t.Helper()
	name := "t-" + randHex(6)
	c, err := minio.New(s.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("make bucket %s: %v", name, err)
	}
	return s.URL(name)
}

// Through returns the store URL of bucket (a NewBucket URL's) through a
// reverse proxy in front of this server whose answers modify changes
// first: a store that answers differently from MinIO. The proxy stops
// with the test.
func (s *Server) Through(t testing.TB, bucketURL string, modify func(*http.Response) error) string {
	t.Helper()
	target, err := url.Parse("http://" + s.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = modify
	ps := httptest.NewServer(rp)
	t.Cleanup(ps.Close)
	return strings.Replace(bucketURL, "endpoint="+s.Endpoint, "endpoint="+strings.TrimPrefix(ps.URL, "http://"), 1)
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// PID is the server's process id (for its CPU time).
func (s *Server) PID() int {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}
