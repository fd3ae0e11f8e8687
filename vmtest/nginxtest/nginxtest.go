// Package nginxtest runs a real nginx (Debian's nginx-light, which `make
// deps` installs) on 127.0.0.1 serving a directory, for tests of the
// read-only http(s):// store. Each server has its own configuration,
// logs and temporary directories in the test's temporary directory, runs
// in the foreground as one process (no master, no user switch, so it reads
// the test's files as the test does), and is stopped when the test ends.
//
// Its access log records every request with the headers a ranged,
// conditional read sends, for tests to assert what went over the wire.
package nginxtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/vmtest"
)

// Binary is the nginx looked for: $ADDOND_NGINX_BIN, else /usr/sbin/nginx.
func Binary() string {
	if p := os.Getenv("ADDOND_NGINX_BIN"); p != "" {
		return p
	}
	return "/usr/sbin/nginx"
}

// Options say what to serve and how.
type Options struct {
	Root string // the directory served at /
	// CertFile and KeyFile (PEM), when set, make it an https server.
	CertFile, KeyFile string
}

// Server is a running nginx.
type Server struct {
	Addr      string // 127.0.0.1:PORT
	URL       string // http(s)://127.0.0.1:PORT
	AccessLog string
	cmd       *exec.Cmd
}

// Start starts nginx for o and stops it when t ends. Without the nginx
// binary t fails under `make test` (ADDOND_TEST_STRICT=1) and is skipped
// elsewhere, saying how to get it.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	bin := Binary()
	if _, err := os.Stat(bin); err != nil {
		vmtest.Unavailable(t, fmt.Sprintf("needs nginx at %s (apt-get install nginx-light, or `make deps`; ADDOND_NGINX_BIN names another): %v", bin, err))
	}
	version, err := exec.Command(bin, "-V").CombinedOutput()
	if err != nil {
		t.Fatalf("%s -V: %v\n%s", bin, err, version)
	}
	dir := t.TempDir()
	port, err := vmtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", port), AccessLog: filepath.Join(dir, "access.log")}
	listen, scheme, tls := s.Addr, "http", ""
	if o.CertFile != "" {
		listen, scheme = s.Addr+" ssl", "https"
		tls = fmt.Sprintf("ssl_certificate %s;\n    ssl_certificate_key %s;\n", o.CertFile, o.KeyFile)
	}
	s.URL = scheme + "://" + s.Addr
	// Every temporary path of a module that is compiled in is set, so that
	// nothing outside dir is created or written.
	var temps strings.Builder
	for _, m := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		if m != "client_body" && strings.Contains(string(version), "--without-http_"+m+"_module") {
			continue
		}
		fmt.Fprintf(&temps, "  %s_temp_path %s;\n", m, filepath.Join(dir, m))
	}
	conf := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 64; }
http {
  default_type application/octet-stream;
  log_format test escape=none '$request_method $request_uri $status range=[$http_range] if_match=[$http_if_match] if_range=[$http_if_range] if_none_match=[$http_if_none_match] sent=$body_bytes_sent';
  access_log %[2]s test;
%[3]s  server {
    listen %[4]s;
    %[5]s    root %[6]s;
    location / { }
  }
}
`, dir, s.AccessLog, temps.String(), listen, tls, o.Root)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ := os.Create(filepath.Join(dir, "stderr"))
	s.cmd = exec.Command(bin, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", confPath)
	s.cmd.Stdout, s.cmd.Stderr = out, out
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start nginx: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- s.cmd.Wait(); out.Close() }()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-exited
	})
	vmtest.WaitListening(t, "nginx", s.Addr, 20*time.Second, exited, func() string {
		a, _ := os.ReadFile(filepath.Join(dir, "stderr"))
		b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return "config:\n" + conf + "\nlog:\n" + string(a) + string(b)
	})
	return s
}

// Requests is the access log: one line per request answered,
// "METHOD URI STATUS range=[…] if_match=[…] if_range=[…] if_none_match=[…] sent=N".
// nginx writes a line when the answer is done.
func (s *Server) Requests() []string {
	data, _ := os.ReadFile(s.AccessLog)
	return strings.FieldsFunc(string(data), func(r rune) bool { return r == '\n' })
}
