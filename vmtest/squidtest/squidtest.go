// Package squidtest runs a real forward proxy, Debian's squid (which `make
// deps` installs), on 127.0.0.1 for tests that prove a client honours
// HTTP_PROXY, HTTPS_PROXY and NO_PROXY, from the proxy's access log.
//
// Go never sends a request for "localhost" or a loopback address through a
// proxy, whatever the environment says, and test servers listen on the
// loopback. So the servers are named by made-up hosts (under .test, which
// no resolver answers) that only the proxy knows: squid reads them from its
// own hosts_file in the test's directory. A request that reaches such a
// server went through the proxy; one that bypasses the proxy cannot even
// resolve the name. Nothing of the host's resolver or /etc/hosts changes.
package squidtest

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/addond/addond/vmtest"
)

// Binary is the squid looked for: $ADDOND_SQUID_BIN, else /usr/sbin/squid.
func Binary() string {
	if p := os.Getenv("ADDOND_SQUID_BIN"); p != "" {
		return p
	}
	return "/usr/sbin/squid"
}

// Proxy is a running squid.
type Proxy struct {
	URL       string // http://127.0.0.1:PORT, for HTTP_PROXY and HTTPS_PROXY
	AccessLog string
}

// Start starts squid, resolving the names in hosts (name → IP) from its
// own hosts file, and stops it when t ends. Without the squid binary t
// fails under `make test` (ADDOND_TEST_STRICT=1) and is skipped elsewhere,
// saying how to get it.
func Start(t testing.TB, hosts map[string]string) *Proxy {
	t.Helper()
	bin := Binary()
	if _, err := os.Stat(bin); err != nil {
		vmtest.Unavailable(t, fmt.Sprintf("needs squid at %s (apt-get install squid, or `make deps`; ADDOND_SQUID_BIN names another): %v", bin, err))
	}
	// Not t.TempDir: squid started as root works as its unprivileged
	// user, which must reach its logs; t.TempDir's parent is private.
	dir, err := os.MkdirTemp("", "addond-squid-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	effective := ""
	if os.Geteuid() == 0 {
		u, err := user.Lookup("proxy")
		if err != nil {
			t.Fatalf("squid runs as user proxy when started as root: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		effective = "cache_effective_user proxy\n"
	}
	var hostsFile strings.Builder
	for name, ip := range hosts {
		fmt.Fprintf(&hostsFile, "%s %s\n", ip, name)
	}
	if err := os.WriteFile(filepath.Join(dir, "hosts"), []byte(hostsFile.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	port, err := vmtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := &Proxy{URL: "http://" + addr, AccessLog: filepath.Join(dir, "access.log")}
	conf := fmt.Sprintf(`http_port %[1]s
%[2]svisible_hostname addond-test-proxy
pid_filename %[3]s/squid.pid
access_log stdio:%[3]s/access.log
cache_log %[3]s/cache.log
cache_store_log none
logfile_rotate 0
hosts_file %[3]s/hosts
dns_nameservers 127.0.0.1
cache deny all
pinger_enable off
shutdown_lifetime 0 seconds
http_access allow localhost
http_access deny all
`, addr, effective, dir)
	confPath := filepath.Join(dir, "squid.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ := os.Create(filepath.Join(dir, "stderr"))
	cmd := exec.Command(bin, "-N", "-f", confPath)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its helpers stop with it
	if err := cmd.Start(); err != nil {
		t.Fatalf("start squid: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); out.Close() }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	})
	vmtest.WaitListening(t, "squid", addr, 30*time.Second, exited, func() string {
		a, _ := os.ReadFile(filepath.Join(dir, "stderr"))
		b, _ := os.ReadFile(filepath.Join(dir, "cache.log"))
		return "config:\n" + conf + "\nlog:\n" + string(a) + string(b)
	})
	return p
}

// Requests is the access log, one line per request the proxy handled
// (squid's native format: "TIME ELAPSED CLIENT CODE/STATUS BYTES METHOD URL
// ..."; a tunnelled https request is one CONNECT HOST:PORT).
func (p *Proxy) Requests() []string {
	data, _ := os.ReadFile(p.AccessLog)
	return strings.FieldsFunc(string(data), func(r rune) bool { return r == '\n' })
}
