package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// minioServer is a MinIO server on a free 127.0.0.1 port, with its data in
// a directory of the run's temp dir.
type minioServer struct {
	endpoint  string // 127.0.0.1:PORT
	accessKey string
	secretKey string
	cmd       *exec.Cmd
	log       *os.File
}

// startMinIO starts bin with its data under dir and waits until it is live.
// The caller must call stop, whatever happens.
func startMinIO(ctx context.Context, bin, dir string) (*minioServer, error) {
	if bin == "" {
		return nil, errors.New("ADDOND_MINIO_BIN is not set (run `make bench`, or point it at a MinIO server binary)")
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("MinIO server binary: %w (run `make minio`)", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		return nil, err
	}
	s := &minioServer{
		endpoint:  fmt.Sprintf("127.0.0.1:%d", port),
		accessKey: "stagebench",
		secretKey: "stagebench-" + randHex(12),
	}
	if s.log, err = os.Create(filepath.Join(dir, "minio.log")); err != nil {
		return nil, err
	}
	s.cmd = exec.Command(bin, "server", filepath.Join(dir, "data"),
		"--address", s.endpoint, "--console-address", "127.0.0.1:0", "--quiet")
	s.cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+s.accessKey,
		"MINIO_ROOT_PASSWORD="+s.secretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
	)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	// Should stagebench die without cleaning up, the server dies with it.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		s.log.Close()
		return nil, fmt.Errorf("start MinIO: %w", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + s.endpoint + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.stop()
			return nil, fmt.Errorf("MinIO on %s not live after 60s (see %s)", s.endpoint, s.log.Name())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the server: SIGTERM, then SIGKILL after 10 seconds.
func (s *minioServer) stop() {
	if s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { s.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			s.cmd.Process.Kill()
			<-done
		}
	}
	s.log.Close()
}

// env is the credential environment for addond, addonctl and the
// comparison programs (minio-go's and the AWS SDK's standard variables).
func (s *minioServer) env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s.accessKey, "AWS_SECRET_ACCESS_KEY=" + s.secretKey}
}

func (s *minioServer) storeURL(bucket string) string {
	return fmt.Sprintf("s3://%s?endpoint=%s&insecure=true", bucket, s.endpoint)
}

func (s *minioServer) client() (*minio.Client, error) {
	return minio.New(s.endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(s.accessKey, s.secretKey, ""),
		Region: "us-east-1",
	})
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
