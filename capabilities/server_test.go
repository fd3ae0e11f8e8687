package capabilities

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/addond/addond/vmtest"
)

// The test binary doubles as an updater client run as other users:
// with CAPT_CLIENT=1 it sends CAPT_REQUEST to CAPT_SOCKET and prints the
// answer.
func TestMain(m *testing.M) {
	if os.Getenv("CAPT_CLIENT") == "1" {
		os.Exit(clientMain())
	}
	if sock := os.Getenv("ADDOND_PEER_HELPER"); sock != "" {
		os.Exit(peerMain(sock))
	}
	if sock := os.Getenv("ADDOND_PEER_IDENTIFY"); sock != "" {
		os.Exit(identifyMain(sock))
	}
	os.Exit(m.Run())
}

func clientMain() int {
	var req Request
	if err := json.Unmarshal([]byte(os.Getenv("CAPT_REQUEST")), &req); err != nil {
		fmt.Fprintln(os.Stderr, "request:", err)
		return 2
	}
	c := &Client{Socket: os.Getenv("CAPT_SOCKET"), Timeout: 30 * time.Second}
	resp, err := c.call(context.Background(), req)
	if resp == nil {
		fmt.Fprintln(os.Stderr, "call:", err)
		return 2
	}
	json.NewEncoder(os.Stdout).Encode(resp)
	return 0
}

// clientBinary is a copy of the test binary that every user may run.
func (f *fixture) clientBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(f.base, "capt-client")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// call runs the client binary under wrap (a command that runs what
// follows it: setpriv, sh -c) and returns the helper's answer.
func (f *fixture) call(t *testing.T, sock string, req Request, wrap ...string) Response {
	t.Helper()
	raw, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	args := slices.Concat(wrap[1:], []string{f.clientBinary(t)})
	cmd := exec.Command(wrap[0], args...)
	cmd.Env = append(os.Environ(), "CAPT_CLIENT=1", "CAPT_SOCKET="+sock, "CAPT_REQUEST="+string(raw))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("client %v: %v\n%s", wrap, err, stderr.String())
	}
	var resp Response
	if err := json.Unmarshal(out, &resp); err != nil {
		t.Fatalf("client %v: answer %q: %v", wrap, out, err)
	}
	return resp
}

func asUser(uid, gid int) []string {
	return []string{"setpriv", "--reuid=" + strconv.Itoa(uid), "--regid=" + strconv.Itoa(gid), "--clear-groups"}
}

// inCgroup runs what follows in the cgroup directory dir, then as uid.
func inCgroup(dir string, uid, gid int) []string {
	return append([]string{"sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, dir}, asUser(uid, gid)...)
}

// unifiedCgroup is the cgroup2 hierarchy's mount point and this
// process's cgroup in it.
func unifiedCgroup(t *testing.T) (mount, self string) {
	t.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(mi), "\n") {
		_, after, ok := strings.Cut(line, " - ")
		if fields := strings.Fields(line); ok && strings.HasPrefix(after, "cgroup2 ") && len(fields) > 4 {
			mount = fields[4]
			break
		}
	}
	pc, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(pc), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			self = p
		}
	}
	if mount == "" || self == "" {
		vmtest.Unavailable(t, "no cgroup2 hierarchy mounted")
	}
	return mount, self
}

// newCgroup makes a cgroup below this process's one and returns its
// directory and its path from the hierarchy's root.
func newCgroup(t *testing.T, name string) (dir, rel string) {
	t.Helper()
	mount, self := unifiedCgroup(t)
	var rnd [4]byte
	rand.Read(rnd[:])
	rel = filepath.Join(self, name+"-"+hex.EncodeToString(rnd[:]))
	dir = filepath.Join(mount, rel)
	if err := os.Mkdir(dir, 0o755); err != nil {
		vmtest.Unavailable(t, "cannot create a cgroup: "+err.Error())
	}
	t.Cleanup(func() {
		for range 50 { // its last process may take a moment to leave
			if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("cgroup %s was not removed", dir)
	})
	return dir, rel
}

func TestServerPing(t *testing.T) {
	f := newFixture(t)
	v, p, err := f.client().Ping(context.Background())
	if err != nil || v != "test-1" || p != 1 {
		t.Fatalf("ping: %q %d %v, want test-1 1", v, p, err)
	}
	// Nothing listening: unavailable, not a refusal.
	c := &Client{Socket: filepath.Join(f.base, "run", "none.sock"), Timeout: time.Second}
	if _, _, err := c.Ping(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("ping without a helper: %v, want ErrUnavailable", err)
	}
}

// The helper answers root, and the agent user only in the agent's own
// cgroup: not another user, not the agent's uid elsewhere (its add-on
// units), not a cgroup below or beside the agent's.
func TestServerAuthorization(t *testing.T) {
	f := newFixture(t)
	agentDir, agentRel := newCgroup(t, "capt-agent")
	addonDir, addonRel := newCgroup(t, "capt-addon")
	childDir := filepath.Join(agentDir, "child")
	if err := os.Mkdir(childDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(childDir) })
	sock := filepath.Join(f.base, "run", "cg.sock")
	serve(t, &Server{Config: f.cfg, AgentCgroup: agentRel, Version: "test-2"}, sock)

	req := f.staged(t, "authz", "1.0.0")
	apply := Request{Op: "apply", Apply: &req}
	ping := Request{Op: "ping"}
	copyPath := filepath.Join(f.priv, "authz", "1.0.0", "pingsweep")

	refusedAs := func(t *testing.T, wrap []string, want ...string) {
		t.Helper()
		before := snapshot(t, f.base)
		for _, r := range []Request{ping, apply, {Op: "remove", AddonID: "control"}} {
			resp := f.call(t, sock, r, wrap...)
			if !strings.HasPrefix(resp.Error, "refused: ") || resp.Protocol != 0 || resp.Applied != nil {
				t.Fatalf("%s: %+v, want a refusal", r.Op, resp)
			}
			for _, w := range want {
				if !strings.Contains(resp.Error, w) {
					t.Fatalf("%s: refusal %q does not name %q", r.Op, resp.Error, w)
				}
			}
			t.Logf("%s: %s", r.Op, resp.Error)
		}
		sameSnapshot(t, before, snapshot(t, f.base))
		// Still serving.
		if resp := f.call(t, sock, ping, "env"); resp.Error != "" || resp.Protocol != 1 {
			t.Fatalf("ping as root after the refusal: %+v", resp)
		}
	}

	t.Run("root", func(t *testing.T) {
		resp := f.call(t, sock, ping, "env")
		if resp.Error != "" || resp.Version != "test-2" || resp.Protocol != 1 {
			t.Fatalf("ping: %+v", resp)
		}
	})
	t.Run("nobody", func(t *testing.T) {
		refusedAs(t, asUser(65534, 65534), "uid 65534 is neither root nor the agent's")
	})
	t.Run("nobody in the agent's cgroup", func(t *testing.T) {
		refusedAs(t, inCgroup(agentDir, 65534, 65534), "uid 65534 is neither root nor the agent's")
	})
	t.Run("agent uid outside the agent's cgroup", func(t *testing.T) {
		refusedAs(t, asUser(f.uid, f.gid), "not the agent's", strconv.Quote(agentRel))
	})
	t.Run("agent uid in an add-on's cgroup", func(t *testing.T) {
		refusedAs(t, inCgroup(addonDir, f.uid, f.gid), strconv.Quote(addonRel), "not the agent's "+strconv.Quote(agentRel))
	})
	t.Run("agent uid below the agent's cgroup", func(t *testing.T) {
		refusedAs(t, inCgroup(childDir, f.uid, f.gid), strconv.Quote(agentRel+"/child"), "not the agent's")
	})
	t.Run("agent gid but another uid", func(t *testing.T) {
		refusedAs(t, inCgroup(agentDir, 65534, f.gid), "neither root nor the agent's")
	})
	t.Run("agent in its cgroup", func(t *testing.T) {
		wrap := inCgroup(agentDir, f.uid, f.gid)
		if resp := f.call(t, sock, ping, wrap...); resp.Error != "" || resp.Protocol != 1 {
			t.Fatalf("ping: %+v", resp)
		}
		resp := f.call(t, sock, apply, wrap...)
		if resp.Error != "" || resp.Applied == nil || resp.Applied.Path != copyPath {
			t.Fatalf("apply: %+v", resp)
		}
		f.checkCopy(t, copyPath, f.good, Set(0).Add(capNetRaw))
		// Served, yet still refused for what it must not have.
		bad := req
		bad.Caps = []string{"cap_sys_admin"}
		if resp := f.call(t, sock, Request{Op: "apply", Apply: &bad}, wrap...); !strings.Contains(resp.Error, "not granted by the signed package") {
			t.Fatalf("apply cap_sys_admin: %+v", resp)
		}
		if resp := f.call(t, sock, Request{Op: "remove", AddonID: "authz", Version: "1.0.0"}, wrap...); resp.Error != "" {
			t.Fatalf("remove: %+v", resp)
		}
		if _, err := os.Lstat(copyPath); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("removed copy: %v", err)
		}
	})
}

// rawCall sends raw bytes as root and returns the answer.
func rawCall(t *testing.T, sock string, raw []byte) Response {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	go func() {
		conn.Write(raw) // the helper may stop reading (and close) early
		conn.(*net.UnixConn).CloseWrite()
	}()
	var resp Response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		t.Fatalf("no answer: %v", err)
	}
	return resp
}

func TestServerBadRequests(t *testing.T) {
	f := newFixture(t)
	pad := func(n int) []byte {
		raw := []byte(`{"op":"ping"}`)
		return append(raw, []byte(strings.Repeat(" ", n-len(raw)))...)
	}
	for _, tc := range []struct {
		name string
		raw  []byte
		want string
	}{
		{"oversized", []byte(`{"op":"ping","addon_id":"` + strings.Repeat("a", 2*MaxRequest) + `"}`), "bad request"},
		{"oversized package", []byte(`{"op":"apply","apply":{"addon_id":"x","package":"` + strings.Repeat("A", MaxRequest+8) + `"}}`), "bad request"},
		{"not JSON", []byte("GET / HTTP/1.0\r\n\r\n"), "bad request"},
		{"empty", nil, "bad request"},
		{"unknown field", []byte(`{"op":"ping","admin":true}`), `unknown field "admin"`},
		{"unknown op", []byte(`{"op":"chmod"}`), `unknown op "chmod"`},
		{"apply without a request", []byte(`{"op":"apply"}`), "apply: no request"},
		{"apply with null", []byte(`{"op":"apply","apply":null}`), "apply: no request"},
		{"wrong type", []byte(`{"op":["ping"]}`), "bad request"},
		{"unknown field in apply", []byte(`{"op":"apply","apply":{"addon_id":"x","privileged_root":"/"}}`), `unknown field "privileged_root"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshot(t, f.base)
			resp := rawCall(t, f.sock, tc.raw)
			if !strings.Contains(resp.Error, tc.want) {
				t.Fatalf("answer %+v, want an error naming %q", resp, tc.want)
			}
			sameSnapshot(t, before, snapshot(t, f.base))
			f.control(t)
		})
	}
	t.Run("oversized through Client", func(t *testing.T) {
		// The refusal reaches the client, though the helper stopped
		// reading: not "unavailable".
		req := f.staged(t, "big", "1.0.0")
		req.Package = make([]byte, MaxRequest)
		_, err := f.client().Apply(context.Background(), req)
		if err == nil || errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "bad request") {
			t.Fatalf("apply with a %d-byte package: %v, want a bad request", len(req.Package), err)
		}
		f.control(t)
	})
	t.Run("as large as allowed", func(t *testing.T) {
		if resp := rawCall(t, f.sock, pad(MaxRequest)); resp.Error != "" || resp.Protocol != 1 {
			t.Fatalf("a ping of MaxRequest bytes: %+v", resp)
		}
	})
	t.Run("trailing data", func(t *testing.T) {
		// One request per connection: what follows it is not read.
		if resp := rawCall(t, f.sock, []byte(`{"op":"ping"}{"op":"remove","addon_id":"control"}`)); resp.Error != "" || resp.Protocol != 1 {
			t.Fatalf("answer %+v", resp)
		}
	})
}

// A client that sends nothing, or half a request, is cut off after
// RequestTimeout, and others are served meanwhile.
func TestServerSlowClients(t *testing.T) {
	f := newFixture(t)
	saved := RequestTimeout
	RequestTimeout = time.Second
	t.Cleanup(func() { RequestTimeout = saved }) // after the server below stops
	sock := filepath.Join(f.base, "run", "slow.sock")
	serve(t, &Server{Config: f.cfg, Version: "slow"}, sock)
	c := &Client{Socket: sock, Timeout: 10 * time.Second}

	type result struct {
		elapsed time.Duration
		data    string
		err     error
	}
	slow := func(send string) chan result {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		ch := make(chan result, 1)
		go func() {
			defer conn.Close()
			start := time.Now()
			conn.Write([]byte(send))
			conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			data, err := io.ReadAll(conn)
			ch <- result{time.Since(start), string(data), err}
		}()
		return ch
	}
	silent, half := slow(""), slow(`{"op":"apply","apply":{"addon_id":"pin`)
	time.Sleep(100 * time.Millisecond)
	for i := range 5 {
		start := time.Now()
		if _, p, err := c.Ping(context.Background()); err != nil || p != 1 {
			t.Fatalf("ping %d beside slow clients: %d %v", i, p, err)
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Fatalf("ping %d beside slow clients took %v", i, d)
		}
	}
	if _, err := c.Apply(context.Background(), f.staged(t, "slow", "1.0.0")); err != nil {
		t.Fatalf("apply beside slow clients: %v", err)
	}
	for name, ch := range map[string]chan result{"silent": silent, "half a request": half} {
		r := <-ch
		if r.err != nil {
			t.Errorf("%s client: %v (after %v): the helper never closed the connection", name, r.err, r.elapsed)
		}
		if r.elapsed < 800*time.Millisecond || r.elapsed > 5*time.Second {
			t.Errorf("%s client: closed after %v, want about RequestTimeout (%v)", name, r.elapsed, RequestTimeout)
		}
		if strings.Contains(r.data, `"applied"`) {
			t.Errorf("%s client: answered %q", name, r.data)
		}
		t.Logf("%s client: closed after %v with %q", name, r.elapsed, r.data)
	}
	if _, p, err := c.Ping(context.Background()); err != nil || p != 1 {
		t.Fatalf("ping after the slow clients: %v", err)
	}
}

// Serve ends when its context does, and by itself after IdleExit without
// a connection — but not while one is open.
func TestServerIdleExit(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, "idle.sock"))
	if err != nil {
		t.Fatal(err)
	}
	// This process is served (root, or the agent in its cgroup), so the
	// connection below stays open, waiting for its request.
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{IdleExit: 300 * time.Millisecond, Config: Config{AgentUser: me.Username}, AgentCgroup: CgroupOf(cg)}
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- s.Serve(context.Background(), ln) }()
	conn, err := net.Dial("unix", filepath.Join(dir, "idle.sock"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("Serve returned with a connection open: %v", err)
	case <-time.After(800 * time.Millisecond):
	}
	conn.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("idle exit after %v", time.Since(start))
	case <-time.After(RequestTimeout + 5*time.Second):
		t.Fatal("Serve did not exit when idle")
	}

	ln, err = net.Listen("unix", filepath.Join(dir, "ctx.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- (&Server{}).Serve(ctx, ln) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return when its context ended")
	}
}

// The copy is for the agent's group alone: another user cannot run it,
// the agent (and any member of its group) can, and gets exactly the
// capabilities granted.
func TestCappedCopyExecution(t *testing.T) {
	f := newFixture(t)
	a, err := f.client().Apply(context.Background(), f.staged(t, "exec", "1.0.0"))
	if err != nil {
		t.Fatal(err)
	}
	runAs := func(wrap []string) (string, error) {
		// setpriv keeps its capabilities up to its exec: the exec is the
		// shell's, with none.
		cmd := exec.Command(wrap[0], slices.Concat(wrap[1:], []string{"sh", "-c", `exec "$0" "$@"`, a.Path, "/proc/self/status"})...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := runAs(asUser(65534, 65534))
	if err == nil || !strings.Contains(out, "Permission denied") {
		t.Fatalf("nobody ran the capped copy: %v\n%s", err, out)
	}
	t.Logf("nobody: %v: %s", err, strings.TrimSpace(out))
	for name, wrap := range map[string][]string{
		"agent":                   asUser(f.uid, f.gid),
		"a member of agent group": {"setpriv", "--reuid=65534", "--regid=65534", "--groups=" + strconv.Itoa(f.gid)},
	} {
		out, err := runAs(wrap)
		if err != nil {
			t.Fatalf("%s could not run the capped copy: %v\n%s", name, err, out)
		}
		capEff := ""
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
				capEff = strings.TrimSpace(v)
			}
		}
		if want := fmt.Sprintf("%016x", uint64(Set(0).Add(capNetRaw))); capEff != want {
			t.Fatalf("%s: the capped copy ran with CapEff %q, want %s (cap_net_raw)", name, capEff, want)
		}
	}
}

func TestCgroupOf(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"0::/system.slice/addond.service\n", "/system.slice/addond.service"},
		{"12:pids:/system.slice/addond.service\n1:name=systemd:/system.slice/addond.service\n0::/system.slice/addond.service\n", "/system.slice/addond.service"},
		// Hybrid: systemd tracks units in v1 while v2 says "/".
		{"1:name=systemd:/system.slice/addond.service\n0::/\n", "/system.slice/addond.service"},
		{"1:name=systemd:/user.slice/user-999.slice/user@999.service/app.slice/x.service\n0::/\n", "/user.slice/user-999.slice/user@999.service/app.slice/x.service"},
		// v2 is the truth wherever it says more than "/".
		{"1:name=systemd:/system.slice/addond.service\n0::/user.slice/x.service\n", "/user.slice/x.service"},
		{"0::/\n", "/"},
		{"", ""},
		{"garbage", ""},
	} {
		if got := CgroupOf([]byte(tc.in)); got != tc.want {
			t.Errorf("CgroupOf(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// The kernel refuses cgroup names with a newline, which CgroupOf relies on
// (a name "x\n0::" would otherwise forge a line of /proc/PID/cgroup).
func TestCgroupNamesHaveNoNewline(t *testing.T) {
	vmtest.RequireRoot(t, "creating cgroups")
	mount, self := unifiedCgroup(t)
	dir := filepath.Join(mount, self, "capt\n0::")
	err := os.Mkdir(dir, 0o755)
	if err == nil {
		os.Remove(dir)
		t.Fatal("the kernel accepted a cgroup name with a newline")
	}
}
