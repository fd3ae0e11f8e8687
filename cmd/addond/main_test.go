package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/addond/addond/vmtest"
	"github.com/addond/addond/vmtest/miniotest"
	"github.com/addond/addond/vmtest/nspawn"
)

// bin holds addond built with fault points (-tags faultinject) and addonctl.
var bin string

func TestMain(m *testing.M) {
	// TestKeptAliveConnectionAfterPIDReuse's peer.
	if os.Getenv("ADDOND_TEST_USE_CONN") == "1" {
		useConn()
	}
	if sock := os.Getenv("ADDOND_TEST_HOLD_CONN"); sock != "" {
		holdConn(sock)
	}
	if raceBuild {
		// A race in any process this test starts stops it at once.
		os.Setenv("GORACE", "halt_on_error=1 exitcode=66")
	}
	if nspawn.InMachine() {
		bin = nspawn.BinDir // copied in by the host side of the test
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "addond-bin-")
	if err != nil {
		panic(err)
	}
	addond := []string{"build", "-tags", "faultinject", "-o", filepath.Join(dir, "addond"), "."}
	if raceBuild {
		addond = append(addond[:1], append([]string{"-race"}, addond[1:]...)...)
	}
	for _, b := range [][]string{
		addond,
		{"build", "-o", filepath.Join(dir, "addonctl"), "../addonctl"},
		{"build", "-o", filepath.Join(dir, "hello"), "github.com/addond/addond/sdk/examples/hello"},
		{"build", "-o", filepath.Join(dir, "probe"), "github.com/addond/addond/sdk/examples/probe"},
		{"build", "-o", filepath.Join(dir, "ticker"), "github.com/addond/addond/sdk/examples/ticker"},
		{"build", "-o", filepath.Join(dir, "pingsweep"), "github.com/addond/addond/sdk/examples/pingsweep"},
		{"build", "-o", filepath.Join(dir, "addond-updater"), "../addond-updater"},
		{"build", "-o", filepath.Join(dir, "capprobe"), "../../vmtest/capprobe"},
	} {
		if out, err := exec.Command("go", b...).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go %v: %v\n%s", b, err, out)
			os.Exit(1)
		}
	}
	os.Chmod(dir, 0o755) // tests run addonctl as an unprivileged user too
	bin = dir
	code := miniotest.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// eventually waits for the state a test asserts (vmtest.Eventually).
var eventually = vmtest.Eventually

// env is a publisher's key pair, a store and an agent config, driven
// through the binaries exactly as DESIGN.md's contract names them.
type env struct {
	t        *testing.T
	dir      string
	storeURL string
	root     string
	config   string
	extraEnv []string
	extra    map[string]any // config keys every writeConfig adds
}

func newEnv(t *testing.T, kind string) *env {
	e := &env{t: t, dir: t.TempDir()}
	switch kind {
	case "file":
		e.storeURL = "file://" + filepath.Join(e.dir, "store")
		os.MkdirAll(filepath.Join(e.dir, "store"), 0o755)
	case "s3":
		srv := miniotest.Require(t)
		e.storeURL = srv.NewBucket(t)
		e.extraEnv = srv.Env()
	}
	e.root = filepath.Join(e.dir, "root")
	e.run("addonctl", "keygen", "--out", filepath.Join(e.dir, "keys"))
	e.config = filepath.Join(e.dir, "addond.json")
	e.writeConfig(nil)
	return e
}

func (e *env) writeConfig(extra map[string]any) {
	cfg := map[string]any{
		"agent_id":       "edge-01",
		"runtime_root":   e.root,
		"store":          e.storeURL,
		"assignments":    map[string]string{"store_key": "agents/edge-01/assignments.json"},
		"trust":          map[string]any{"public_keys": []string{filepath.Join(e.dir, "keys", "signing.pub")}, "require_signatures": true},
		"min_free_bytes": 1 << 20,
	}
	for _, m := range []map[string]any{extra, e.extra} {
		for k, v := range m {
			cfg[k] = v
		}
	}
	b, _ := json.Marshal(cfg)
	os.WriteFile(e.config, b, 0o644)
}

type result struct {
	code           int
	signal         syscall.Signal
	stdout, stderr string
}

func (e *env) exec(extraEnv []string, name string, args ...string) result {
	e.t.Helper()
	cmd := exec.Command(filepath.Join(bin, name), args...)
	cmd.Env = append(append(os.Environ(), e.extraEnv...), extraEnv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if err != nil {
		ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if ws.Signaled() {
			r.signal = ws.Signal()
		}
		r.code = cmd.ProcessState.ExitCode()
	}
	return r
}

func (e *env) run(name string, args ...string) string {
	e.t.Helper()
	r := e.exec(nil, name, args...)
	if r.code != 0 {
		e.t.Fatalf("%s %v: exit %d\n%s%s", name, args, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// publish writes a random artifact of size bytes as id@version and returns
// its sha256.
func (e *env) publish(id, version string, size int) string {
	e.t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	path := filepath.Join(e.t.TempDir(), id)
	os.WriteFile(path, data, 0o755)
	e.run("addonctl", "publish", "--store", e.storeURL, "--key", filepath.Join(e.dir, "keys", "signing.key"),
		"--id", id, "--version", version, "linux/amd64="+path)
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func (e *env) assign(refs ...string) {
	e.t.Helper()
	args := []string{"assign", "--store", e.storeURL, "--agent", "edge-01", "--key", filepath.Join(e.dir, "keys", "signing.key")}
	for _, r := range refs {
		args = append(args, "--addon", r)
	}
	e.run("addonctl", args...)
}

// currentDigest returns the version current points to and the sha256 of
// its binary.
func (e *env) currentDigest(id string) (string, string) {
	e.t.Helper()
	target, err := os.Readlink(filepath.Join(e.root, "addons", id, "current"))
	if err != nil {
		return "", ""
	}
	data, err := os.ReadFile(filepath.Join(e.root, "addons", id, target, id))
	if err != nil {
		e.t.Fatalf("current -> %s, but its binary is unreadable: %v", target, err)
	}
	sum := sha256.Sum256(data)
	return strings.TrimPrefix(target, "versions/"), hex.EncodeToString(sum[:])
}

func TestStageCLI(t *testing.T) {
	e := newEnv(t, "file")
	e.publish("hello", "1.0.0", 1000)
	e.assign("hello@1.0.0")
	r := e.exec(nil, "addond", "stage", "--config", e.config)
	if r.code != 0 || !strings.Contains(r.stdout, "hello") || !strings.Contains(r.stdout, "staged") {
		t.Fatalf("addond stage: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// A bad assignment: exit 1, the add-on and the reason on stderr.
	e.assign("hello@1.0.0")
	doc, _ := os.ReadFile(filepath.Join(e.dir, "store/agents/edge-01/assignments.json"))
	var d map[string]any
	json.Unmarshal(doc, &d)
	d["serial"] = d["serial"].(float64) + 1
	d["addons"].([]any)[0].(map[string]any)["version"] = "../../etc"
	doc, _ = json.Marshal(d)
	os.WriteFile(filepath.Join(e.dir, "store/agents/edge-01/assignments.json"), doc, 0o644)
	os.WriteFile(filepath.Join(e.dir, "doc"), doc, 0o644)
	sig := e.run("addonctl", "sign", "--key", filepath.Join(e.dir, "keys", "signing.key"), filepath.Join(e.dir, "doc"))
	os.WriteFile(filepath.Join(e.dir, "store/agents/edge-01/assignments.json.sig"), []byte(sig), 0o644)
	r = e.exec(nil, "addond", "stage", "--config", e.config)
	if r.code != 1 || !strings.Contains(r.stderr, `addon "hello"`) || !strings.Contains(r.stderr, `version "../../etc"`) {
		t.Fatalf("addond stage on a traversal: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if v, _ := e.currentDigest("hello"); v != "1.0.0" {
		t.Fatalf("current = %q after a refused assignment", v)
	}

	// Config errors name the key.
	os.WriteFile(e.config, []byte(`{"agent_id":"x","runtime_root":"/tmp/x","stroe":"file:///x"}`), 0o644)
	r = e.exec(nil, "addond", "stage", "--config", e.config)
	if r.code != 1 || !strings.Contains(r.stderr, `unknown key "stroe"`) {
		t.Fatalf("misspelt key: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestCrashConsistency kills `addond stage` with SIGKILL at each staging
// step (fault points compiled into test builds only) and shows that on
// restart current always points at a complete, verified version, and that
// the next run converges and leaves no partial files.
func TestCrashConsistency(t *testing.T) {
	for _, kind := range []string{"file", "s3"} {
		for _, point := range []string{"download-partial", "after-rename", "before-swap", "after-swap"} {
			t.Run(kind+"/"+point, func(t *testing.T) {
				e := newEnv(t, kind)
				sums := map[string]string{
					"1.0.0": e.publish("hello", "1.0.0", 4<<20),
					"2.0.0": e.publish("hello", "2.0.0", 8<<20),
				}
				e.assign("hello@1.0.0")
				e.run("addond", "stage", "--config", e.config)
				e.assign("hello@2.0.0")

				r := e.exec([]string{"ADDOND_FAULT=" + point}, "addond", "stage", "--config", e.config)
				if r.signal != syscall.SIGKILL {
					t.Fatalf("addond stage with ADDOND_FAULT=%s: exit %d signal %v, want SIGKILL\n%s", point, r.code, r.signal, r.stderr)
				}
				v, sum := e.currentDigest("hello")
				if sums[v] == "" || sum != sums[v] {
					t.Fatalf("after a crash at %s current -> %q with sha256 %s, want a complete verified version", point, v, sum)
				}
				if point == "download-partial" {
					fi, err := os.Stat(filepath.Join(e.root, "tmp", "hello@2.0.0.part"))
					if err != nil || fi.Size() == 0 {
						t.Fatalf("no partial download left to resume: %v", err)
					}
				}

				r = e.exec([]string{"ADDOND_LOG_LEVEL=info"}, "addond", "stage", "--config", e.config)
				if r.code != 0 {
					t.Fatalf("restart after a crash at %s: exit %d\n%s", point, r.code, r.stderr)
				}
				if v, sum := e.currentDigest("hello"); v != "2.0.0" || sum != sums["2.0.0"] {
					t.Fatalf("after recovery current -> %q (%s), want 2.0.0", v, sum)
				}
				if left, _ := os.ReadDir(filepath.Join(e.root, "tmp")); len(left) != 0 {
					t.Fatalf("partial files left after recovery: %v", left)
				}
				if point == "download-partial" && !strings.Contains(r.stderr, "resuming download") {
					t.Fatalf("the restart did not resume the partial download:\n%s", r.stderr)
				}
			})
		}
	}
}

// TestCheckConfigCLI: `addond check-config` exits 0 on a good config and 1
// on a bad one, one FILE:LINE:COLUMN line per error on stderr; with its
// stderr the journal's stream ($JOURNAL_STREAM names it) each line has
// the "<3>" prefix that makes it an entry of priority err.
func TestCheckConfigCLI(t *testing.T) {
	e := newEnv(t, "file")
	if r := e.exec(nil, "addond", "check-config", "--config", e.config); r.code != 0 || r.stdout != e.config+": valid\n" || r.stderr != "" {
		t.Fatalf("a good config: %+v", r)
	}
	bad := filepath.Join(e.dir, "bad.json")
	os.WriteFile(bad, []byte("{\n  \"agent_id\": \"edge-01\",\n  \"poll_interval\": 30\n}\n"), 0o644)
	r := e.exec(nil, "addond", "check-config", "--config", bad)
	if want := bad + `:3:3: key "poll_interval": want a duration string like "30s"` + "\n"; r.code != 1 || r.stderr != want || r.stdout != "" {
		t.Fatalf("a bad config: %+v\nwant stderr %q", r, want)
	}

	// Under the journal: stderr is a pipe whose device and inode
	// $JOURNAL_STREAM names.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	var st syscall.Stat_t
	syscall.Fstat(int(pw.Fd()), &st)
	cmd := exec.Command(filepath.Join(bin, "addond"), "check-config", "--config", bad)
	cmd.Env = append(os.Environ(), fmt.Sprintf("JOURNAL_STREAM=%d:%d", st.Dev, st.Ino))
	cmd.Stderr = pw
	err = cmd.Run()
	pw.Close()
	out, _ := io.ReadAll(pr)
	if cmd.ProcessState.ExitCode() != 1 || !strings.HasPrefix(string(out), "<3>"+bad+":3:3: ") {
		t.Fatalf("under the journal: %v, stderr %q", err, out)
	}
}
