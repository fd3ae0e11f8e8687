// Command runbench measures `addond run` against the targets of the
// daemon issue, on a real MinIO:
//
//   - with 10 hello sidecars: addond's own RSS and its idle CPU;
//   - start → READY=1 with the store unreachable (10 last-known-good
//     add-ons to start);
//   - a reconcile of 200 unchanged assignments (200 running sidecars): its
//     duration (addond_reconcile_duration_seconds) and the artifact
//     requests it makes (counted by a proxy in front of MinIO; want 0).
//
// Run it as `make bench` does, from bench/:
//
//	ADDOND_MINIO_BIN=/path/to/minio go run ./cmd/runbench -addond ../bin/addond
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/addond/addond/vmtest/miniotest"
)

var (
	addondBin = flag.String("addond", "../bin/addond", "addond binary; addonctl and examples/hello beside it")
	idle      = flag.Duration("idle", 30*time.Second, "how long idle CPU is measured")
	big       = flag.Int("many", 200, "add-ons for the reconcile measurement")
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "runbench:", err)
		os.Exit(1)
	}
}

func logf(format string, a ...any) { fmt.Fprintf(os.Stderr, "runbench: "+format+"\n", a...) }

type bench struct {
	dir, binDir string
	srv         *miniotest.Server
	proxy       *proxy
	env         []string
	cfgPath     string
}

func run() error {
	b := &bench{binDir: filepath.Dir(*addondBin)}
	var err error
	if b.dir, err = os.MkdirTemp("", "runbench-"); err != nil {
		return err
	}
	defer os.RemoveAll(b.dir)
	if b.srv, err = miniotest.Start(); err != nil {
		return err
	}
	defer b.srv.Stop()
	b.env = append(os.Environ(), b.srv.Env()...)
	s3, err := minio.New(b.srv.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(b.srv.AccessKey, b.srv.SecretKey, "")})
	if err != nil {
		return err
	}
	if err := s3.MakeBucket(context.Background(), "runbench", minio.MakeBucketOptions{}); err != nil {
		return err
	}
	if b.proxy, err = startProxy(b.srv.Endpoint); err != nil {
		return err
	}
	store := fmt.Sprintf("s3://runbench?endpoint=%s&insecure=true", b.proxy.addr)

	keys := filepath.Join(b.dir, "keys")
	if err := b.cmd("addonctl", "keygen", "--out", keys); err != nil {
		return err
	}
	logf("publishing hello")
	if err := b.cmd("addonctl", "publish", "--store", store, "--key", filepath.Join(keys, "signing.key"),
		"--id", "hello", "--version", "1.0.0", "linux/amd64="+filepath.Join(b.binDir, "examples", "hello")); err != nil {
		return err
	}
	b.cfgPath = filepath.Join(b.dir, "addond.json")
	writeConfig := func(store string) error {
		cfg := map[string]any{
			"agent_id": "bench", "runtime_root": filepath.Join(b.dir, "root"), "store": store,
			"assignments":     map[string]string{"store_key": "agents/bench/assignments.json"},
			"trust":           map[string]any{"public_keys": []string{filepath.Join(keys, "signing.pub")}},
			"status_socket":   filepath.Join(b.dir, "addond.sock"),
			"systemd":         map[string]string{"manager": "none"},
			"metrics_address": "127.0.0.1:0", "poll_interval": "1h", "probation": "60s",
			"min_free_bytes": 1 << 20, "max_concurrent_downloads": 4,
		}
		data, _ := json.Marshal(cfg)
		return os.WriteFile(b.cfgPath, data, 0o644)
	}

	// 1. Ten sidecars: RSS and idle CPU.
	if err := b.assign(store, keys, 10); err != nil {
		return err
	}
	if err := writeConfig(store); err != nil {
		return err
	}
	d, err := b.start()
	if err != nil {
		return err
	}
	if err := d.waitRunning(10, 2*time.Minute); err != nil {
		d.stop()
		return err
	}
	time.Sleep(5 * time.Second)
	rss := d.rssKiB()
	cpu0 := d.cpuTicks()
	time.Sleep(*idle)
	cpu1 := d.cpuTicks()
	idleCPU := float64(cpu1-cpu0) / 100 / idle.Seconds() * 100 // clock ticks (100/s) → % of a core
	d.stop()

	// 2. Start → READY=1 with the store unreachable.
	if err := writeConfig("s3://runbench?endpoint=127.0.0.1:1&insecure=true"); err != nil {
		return err
	}
	var readies []time.Duration
	for i := 0; i < 5; i++ {
		d, err := b.start()
		if err != nil {
			return err
		}
		readies = append(readies, d.ready)
		if err := d.waitRunning(10, time.Minute); err != nil {
			d.stop()
			return err
		}
		d.stop()
	}
	sort.Slice(readies, func(i, j int) bool { return readies[i] < readies[j] })

	// 3. A reconcile of many unchanged assignments.
	if err := writeConfig(store); err != nil {
		return err
	}
	if err := b.assign(store, keys, *big); err != nil {
		return err
	}
	d, err = b.start()
	if err != nil {
		return err
	}
	defer d.stop()
	logf("waiting for %d sidecars", *big)
	if err := d.waitRunning(*big, 5*time.Minute); err != nil {
		return err
	}
	sum0, n0, err := d.reconcileMetric()
	if err != nil {
		return err
	}
	artifacts0 := b.proxy.artifactRequests.Load()
	const rounds = 20
	for i := 0; i < rounds; i++ {
		if err := b.cmd("addonctl", "reconcile", "--socket", filepath.Join(b.dir, "addond.sock")); err != nil {
			return err
		}
		for {
			_, n, err := d.reconcileMetric()
			if err != nil {
				return err
			}
			if n > n0+uint64(i) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	sum1, n1, _ := d.reconcileMetric()
	artifactReqs := b.proxy.artifactRequests.Load() - artifacts0
	mean := time.Duration((sum1 - sum0) / float64(n1-n0) * float64(time.Second))

	fmt.Printf("| measurement | measured | goal | result |\n| --- | ---: | ---: | :---: |\n")
	row := func(name, measured, goal string, ok bool) {
		res := "PASS"
		if !ok {
			res = "FAIL"
		}
		fmt.Printf("| %s | %s | %s | %s |\n", name, measured, goal, res)
	}
	row("addond RSS with 10 hello sidecars", fmt.Sprintf("%.1f MiB", float64(rss)/1024), "≤ 30 MiB", rss <= 30*1024)
	row(fmt.Sprintf("addond idle CPU with 10 sidecars (over %s)", *idle), fmt.Sprintf("%.2f %% of a core", idleCPU), "≤ 0.5 %", idleCPU <= 0.5)
	row("start → READY=1, store unreachable (median of 5)", readies[2].Round(time.Millisecond).String(), "≤ 300 ms", readies[2] <= 300*time.Millisecond)
	row(fmt.Sprintf("reconcile of %d unchanged assignments (mean of %d)", *big, rounds), mean.Round(10*time.Microsecond).String(), "≤ 20 ms", mean <= 20*time.Millisecond)
	row(fmt.Sprintf("artifact requests during those %d reconciles", rounds), strconv.FormatInt(artifactReqs, 10), "0", artifactReqs == 0)
	fmt.Printf("\nREADY=1 times: %v\n", readies)
	return nil
}

func (b *bench) cmd(name string, args ...string) error {
	c := exec.Command(filepath.Join(b.binDir, name), args...)
	c.Env = b.env
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %v: %v\n%s", name, args, err, out)
	}
	return nil
}

// assign writes a signed document with n add-ons h001…, all the hello
// artifact under their own ids.
func (b *bench) assign(store, keys string, n int) error {
	if err := b.cmd("addonctl", "assign", "--store", store, "--agent", "bench", "--key", filepath.Join(keys, "signing.key"), "--addon", "hello@1.0.0"); err != nil {
		return err
	}
	st, err := minio.New(b.srv.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(b.srv.AccessKey, b.srv.SecretKey, "")})
	if err != nil {
		return err
	}
	ctx := context.Background()
	obj, err := st.GetObject(ctx, "runbench", "agents/bench/assignments.json", minio.GetObjectOptions{})
	if err != nil {
		return err
	}
	raw, err := io.ReadAll(obj)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return err
	}
	entry := doc["addons"].([]any)[0].(map[string]any)
	var addons []any
	for i := 1; i <= n; i++ {
		e := map[string]any{}
		for k, v := range entry {
			e[k] = v
		}
		e["addon_id"] = fmt.Sprintf("h%03d", i)
		addons = append(addons, e)
	}
	doc["addons"] = addons
	doc["serial"] = doc["serial"].(float64) + 1
	out, _ := json.Marshal(doc)
	docPath := filepath.Join(b.dir, "doc.json")
	os.WriteFile(docPath, out, 0o644)
	c := exec.Command(filepath.Join(b.binDir, "addonctl"), "sign", "--key", filepath.Join(keys, "signing.key"), docPath)
	sig, err := c.Output()
	if err != nil {
		return err
	}
	if _, err := st.PutObject(ctx, "runbench", "agents/bench/assignments.json", bytes.NewReader(out), int64(len(out)), minio.PutObjectOptions{}); err != nil {
		return err
	}
	_, err = st.PutObject(ctx, "runbench", "agents/bench/assignments.json.sig", bytes.NewReader(sig), int64(len(sig)), minio.PutObjectOptions{})
	return err
}

// daemon is a running `addond run`.
type daemon struct {
	cmd     *exec.Cmd
	ready   time.Duration
	socket  string
	metrics string
	hc      *http.Client
}

func (b *bench) start() (*daemon, error) {
	notifyPath := filepath.Join(b.dir, "notify-"+hex.EncodeToString([]byte(time.Now().Format("150405.000"))))
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	logFile, _ := os.OpenFile(filepath.Join(b.dir, "addond.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	cmd := exec.Command(*addondBin, "run", "--config", b.cfgPath)
	cmd.Env = append(b.env, "NOTIFY_SOCKET="+notifyPath, "ADDOND_LOG_LEVEL=warn")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	buf := make([]byte, 4096)
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		n, err := conn.Read(buf)
		if err != nil {
			cmd.Process.Kill()
			return nil, fmt.Errorf("no READY=1: %w (see %s)", err, logFile.Name())
		}
		if strings.Contains(string(buf[:n]), "READY=1") {
			break
		}
	}
	d := &daemon{cmd: cmd, ready: time.Since(t0), socket: filepath.Join(b.dir, "addond.sock")}
	d.hc = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", d.socket)
	}}}
	d.metrics = metricsAddr(cmd.Process.Pid)
	return d, nil
}

// metricsAddr finds the port addond's metrics server listens on
// (metrics_address 127.0.0.1:0): the process's listening TCP socket.
func metricsAddr(pid int) string {
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 9 && fields[3] == "0A" && inodes[fields[9]] { // LISTEN
			port, _ := strconv.ParseUint(fields[1][strings.Index(fields[1], ":")+1:], 16, 16)
			return fmt.Sprintf("127.0.0.1:%d", port)
		}
	}
	return ""
}

func (d *daemon) stop() {
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.cmd.Wait()
}

func (d *daemon) waitRunning(n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := d.hc.Get("http://addond/v1/status")
		if err == nil {
			var st struct {
				Addons []struct{ State, Health string }
			}
			json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			running := 0
			for _, a := range st.Addons {
				if a.State == "running" && a.Health == "healthy" {
					running++
				}
			}
			if running >= n {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("fewer than %d add-ons running after %v", n, timeout)
}

func (d *daemon) rssKiB() int {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			n, _ := strconv.Atoi(strings.Fields(l)[1])
			return n
		}
	}
	return -1
}

func (d *daemon) cpuTicks() int64 {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", d.cmd.Process.Pid))
	s := string(data)
	fields := strings.Fields(s[strings.LastIndex(s, ")")+2:])
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	return ut + st
}

// reconcileMetric reads addond_reconcile_duration_seconds' sum and count.
func (d *daemon) reconcileMetric() (float64, uint64, error) {
	resp, err := http.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var sum float64
	var count uint64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if v, ok := strings.CutPrefix(l, "addond_reconcile_duration_seconds_sum "); ok {
			sum, _ = strconv.ParseFloat(v, 64)
		}
		if v, ok := strings.CutPrefix(l, "addond_reconcile_duration_seconds_count "); ok {
			count, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	return sum, count, nil
}

// proxy forwards TCP to MinIO and counts requests for artifacts/.
type proxy struct {
	addr             string
	target           string
	artifactRequests atomic.Int64
}

func startProxy(target string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{addr: ln.Addr().String(), target: target}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p, nil
}

func (p *proxy) serve(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer server.Close()
	go func() {
		io.Copy(client, server)
		client.Close()
	}()
	// Forward bytes as they come; count request lines for artifacts
	// (a request line arrives in one read in practice).
	buf := make([]byte, 64<<10)
	for {
		n, err := client.Read(buf)
		if n > 0 {
			chunk := string(buf[:n])
			p.artifactRequests.Add(int64(strings.Count(chunk, "GET /runbench/artifacts/") + strings.Count(chunk, "HEAD /runbench/artifacts/")))
			if _, werr := server.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
