package capabilities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	sd "github.com/coreos/go-systemd/v22/dbus"
)

// A start the template cannot take as it is is refused before anything
// is looked at.
func TestStartRequestCheck(t *testing.T) {
	cfg := &Config{RunRoot: "/run/addond-cap"}
	good := func() StartRequest {
		return StartRequest{AddonID: "pingsweep", Version: "1.0.0", File: "pingsweep", Sidecar: true,
			Description: "addond add-on pingsweep 1.0.0 [0123456789abcdef]",
			Env:         []string{"ADDOND_PLUGIN=x", "PLUGIN_PROTOCOL_VERSIONS=1", "PLUGIN_CLIENT_CERT=-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "PLUGIN_UNIX_SOCKET_DIR=/run/addond-cap/pingsweep/sock/plugin-dir1"}}
	}
	service := func() StartRequest {
		r := good()
		r.Sidecar, r.Env = false, nil
		r.Restart = &Restart{Delay: time.Second, Interval: time.Minute, Burst: 5}
		return r
	}
	if err := good().check(cfg); err != nil {
		t.Fatalf("a sidecar's start: %v", err)
	}
	if err := service().check(cfg); err != nil {
		t.Fatalf("a service's start: %v", err)
	}
	for name, tc := range map[string]struct {
		req  func() StartRequest
		want string
	}{
		"id":                {func() StartRequest { r := good(); r.AddonID = "../etc"; return r }, "not a valid add-on id"},
		"version":           {func() StartRequest { r := good(); r.Version = ".."; return r }, "version"},
		"file":              {func() StartRequest { r := good(); r.File = "a/b"; return r }, "file"},
		"argument NUL":      {func() StartRequest { r := good(); r.Args = []string{"a\x00b"}; return r }, "control character"},
		"arguments":         {func() StartRequest { r := good(); r.Args = make([]string, 257); return r }, "257 arguments"},
		"config not object": {func() StartRequest { r := good(); r.Config = json.RawMessage(`[1]`); return r }, "not a JSON object"},
		"config too large": {func() StartRequest {
			r := good()
			r.Config = json.RawMessage(`{"a":"` + strings.Repeat("x", maxConfig) + `"}`)
			return r
		}, "configuration larger"},
		"env LD_PRELOAD": {func() StartRequest { r := good(); r.Env = append(r.Env, "LD_PRELOAD=/tmp/x.so"); return r }, "only go-plugin's"},
		"env PATH":       {func() StartRequest { r := good(); r.Env = []string{"PATH=/tmp"}; return r }, "only go-plugin's"},
		"socket dir":     {func() StartRequest { r := good(); r.Env = []string{"PLUGIN_UNIX_SOCKET_DIR=/etc/x"}; return r }, "not in /run/addond-cap/pingsweep/sock"},
		"other's socket": {func() StartRequest {
			r := good()
			r.Env = []string{"PLUGIN_UNIX_SOCKET_DIR=/run/addond-cap/hello/sock/d"}
			return r
		}, "not in"},
		"escaping socket": {func() StartRequest {
			r := good()
			r.Env = []string{"PLUGIN_UNIX_SOCKET_DIR=/run/addond-cap/pingsweep/sock/../../x/y"}
			return r
		}, "not in"},
		"service env":    {func() StartRequest { r := service(); r.Env = []string{"ADDOND_PLUGIN=x"}; return r }, "for sidecars"},
		"description":    {func() StartRequest { r := good(); r.Description = "addond add-on hello 1.0.0 [x]"; return r }, "description"},
		"description nl": {func() StartRequest { r := good(); r.Description += "\nExecStart=/bin/sh"; return r }, "description"},
		// systemd writes the description into the transient unit's file
		// unescaped; a daemon-reload reads \r as a line's end.
		"description cr": {func() StartRequest {
			r := good()
			r.Description = "addond add-on pingsweep 1.0.0 x\r[Service]\rExecStopPost=+/bin/sh -c 'id >/root/pwned'"
			return r
		}, "description"},
		"description cr after fingerprint": {func() StartRequest { r := good(); r.Description += "\r[Service]\rExecStopPost=+/bin/id"; return r }, "description"},
		"argument cr":                      {func() StartRequest { r := good(); r.Args = []string{"a\rb"}; return r }, "control character"},
		"env cr":                           {func() StartRequest { r := good(); r.Env = []string{"ADDOND_PLUGIN=a\rb"}; return r }, "only go-plugin's"},
		"argument bad utf8":                {func() StartRequest { r := good(); r.Args = []string{"a\xffb"}; return r }, "control character"},
		"status socket cr":                 {func() StartRequest { r := good(); r.StatusSocket = "/run/a\rb"; return r }, "status socket"},
		"sidecar restart": {func() StartRequest {
			r := good()
			r.Restart = &Restart{Delay: time.Second, Interval: time.Minute, Burst: 5}
			return r
		}, "restarted by addond"},
		"no restart": {func() StartRequest { r := service(); r.Restart = nil; return r }, "restart policy"},
		"restart 0":  {func() StartRequest { r := service(); r.Restart.Delay = 0; return r }, "out of bounds"},
		"resources":  {func() StartRequest { r := good(); r.Resources = &Resources{MemoryMaxBytes: -1}; return r }, "resources"},
	} {
		t.Run(name, func(t *testing.T) {
			err := tc.req().check(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("check: %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

// The template gives exactly the grant, a uid of the unit's own, and
// every sandboxing option the grant does not need lifted.
func TestCappedProperties(t *testing.T) {
	cfg := &Config{PrivilegedRoot: "/var/lib/addond-privileged", RunRoot: "/run/addond-cap", RuntimeRoot: "/srv/addond"}
	req := StartRequest{AddonID: "pingsweep", Version: "1.0.0", File: "pingsweep", Args: []string{"-v"}, Sidecar: true,
		Description: "addond add-on pingsweep 1.0.0 [x]", Env: []string{"ADDOND_PLUGIN=x"}, StatusSocket: "/run/addond/addond.sock"}
	props := func(grant Set) map[string]any {
		m := map[string]any{}
		for _, p := range cappedProperties(cfg, req, "addond", grant) {
			if _, dup := m[p.Name]; dup {
				t.Fatalf("property %s twice", p.Name)
			}
			m[p.Name] = p.Value.Value()
		}
		return m
	}
	netRaw := Set(0).Add(capNetRaw)
	p := props(netRaw)
	for name, want := range map[string]any{
		"CapabilityBoundingSet": uint64(netRaw), "AmbientCapabilities": uint64(netRaw),
		"DynamicUser": true, "Group": "addond", "NoNewPrivileges": true, "ProtectSystem": "strict",
		"ProtectClock": true, "ProtectKernelModules": true, "PrivateDevices": true, "RestrictNamespaces": uint64(0),
		"ProtectControlGroups": true, "Restart": "no", "StandardOutputFileToTruncate": "/run/addond-cap/pingsweep/handshake",
	} {
		if got := p[name]; !equalValue(got, want) {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if _, ok := p["User"]; ok {
		t.Errorf("User= set: the unit's user is its own dynamic one")
	}
	exec := p["ExecStart"]
	if b, _ := json.Marshal(exec); !strings.Contains(string(b), `"/var/lib/addond-privileged/pingsweep/1.0.0/pingsweep","-v"`) {
		t.Errorf("ExecStart %s: not the copy with its arguments", b)
	}
	env, _ := p["Environment"].([]string)
	if !slices.Contains(env, "ADDOND_CONFIG=/run/addond-cap/pingsweep/config.json") || !slices.Contains(env, "ADDOND_PLUGIN=x") ||
		!slices.Contains(env, "ADDOND_STATUS_SOCKET=/run/addond/addond.sock") {
		t.Errorf("Environment %q", env)
	}
	inaccessible, _ := p["InaccessiblePaths"].([]string)
	for _, path := range []string{"-/var/lib/addond", "-/srv/addond", "-/run/credentials", "-/run/user", "-/run/addond-updater.sock", "-/run/systemd/private"} {
		if !slices.Contains(inaccessible, path) {
			t.Errorf("InaccessiblePaths %q lacks %s", inaccessible, path)
		}
	}

	// A grant that a setting would cancel lifts that setting (and only
	// that one), and allows the grant's system calls.
	sysTime, _ := Parse("cap_sys_time")
	p = props(Set(0).Add(sysTime))
	if _, ok := p["ProtectClock"]; ok {
		t.Error("ProtectClock with cap_sys_time: the grant would be void")
	}
	if p["ProtectKernelModules"] != true || p["PrivateDevices"] != true {
		t.Error("settings the grant does not need were lifted")
	}
	if b, _ := json.Marshal(p["SystemCallFilter"]); !strings.Contains(string(b), "@clock") {
		t.Errorf("SystemCallFilter %s lacks @clock for cap_sys_time", b)
	}
	// Packet sockets only for a grant that can open them.
	if b, _ := json.Marshal(p["RestrictAddressFamilies"]); strings.Contains(string(b), "AF_PACKET") || !strings.Contains(string(b), "AF_INET") {
		t.Errorf("RestrictAddressFamilies %s for cap_sys_time: want internet families, no AF_PACKET", b)
	}
	if b, _ := json.Marshal(props(netRaw)["RestrictAddressFamilies"]); !strings.Contains(string(b), "AF_PACKET") {
		t.Errorf("RestrictAddressFamilies %s for cap_net_raw lacks AF_PACKET", b)
	}
}

func equalValue(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// The runtime directories are made by root, without following anything
// addond (or anyone) left in their place, and the files the manager opens
// as root are in a directory only root writes.
func TestRunDirAttacks(t *testing.T) {
	f := newFixture(t)
	cfg := f.cfg
	cfg.RunRoot = filepath.Join(f.base, "run-cap")
	victim := filepath.Join(f.outside, "victim")
	if err := os.MkdirAll(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(victim, "config.json"), []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, f.outside)

	// The run root, someone else's: refused.
	if err := os.Mkdir(cfg.RunRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chown(cfg.RunRoot, f.uid, f.gid)
	if err := makeRunDir(&cfg, "pingsweep", f.gid); err == nil || !strings.Contains(err.Error(), "not a directory of root's") {
		t.Fatalf("a run root of the agent's: %v", err)
	}
	os.Chown(cfg.RunRoot, 0, 0)

	// The add-on's directory a link to the victim: replaced, not followed.
	if err := os.Symlink(victim, cfg.RunDir("pingsweep")); err != nil {
		t.Fatal(err)
	}
	if err := makeRunDir(&cfg, "pingsweep", f.gid); err != nil {
		t.Fatal(err)
	}
	req := StartRequest{AddonID: "pingsweep", Version: "1.0.0", Config: json.RawMessage(`{"k":1}`)}
	// config.json a link to the victim's file: removed, not written through.
	os.Symlink(filepath.Join(victim, "config.json"), filepath.Join(cfg.RunDir("pingsweep"), "config.json"))
	if err := writeRunFiles(&cfg, req, f.gid); err != nil {
		t.Fatal(err)
	}
	sameSnapshot(t, before, snapshot(t, f.outside))
	for path, want := range map[string]string{
		cfg.runRoot():              "drwxr-x--- 0:gid",
		cfg.RunDir("pingsweep"):    "drwxr-x--- 0:gid",
		cfg.SocketDir("pingsweep"): "drwxrwx--- 0:gid",
		filepath.Join(cfg.RunDir("pingsweep"), "config.json"): "-rw-r----- 0:gid",
		cfg.HandshakeFile("pingsweep"):                        "-rw-r----- 0:gid",
	} {
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		got := fmt.Sprintf("%v %d:%d", fi.Mode(), st.Uid, st.Gid)
		want = strings.Replace(want, ":gid", fmt.Sprintf(":%d", f.gid), 1)
		if got != want {
			t.Errorf("%s is %s, want %s", path, got, want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(cfg.RunDir("pingsweep"), "config.json")); string(b) != `{"k":1}` {
		t.Errorf("config.json %q", b)
	}
}

// A start for a version without a granted copy is refused with the
// add-on's name, before the manager is dialled or anything is written.
func TestStartWithoutGrant(t *testing.T) {
	f := newFixture(t)
	cfg := f.cfg
	cfg.RunRoot = filepath.Join(f.base, "run-cap")
	dialled := false
	s := &Server{Config: cfg, Systemd: func(context.Context) (*sd.Conn, error) {
		dialled = true
		return nil, errors.New("no manager in this test")
	}}
	before := snapshot(t, f.base)
	// No runtime directory (nor a unit loaded) for an add-on with no copy.
	if err := s.Prepare(context.Background(), "pingsweep"); err == nil || !strings.Contains(err.Error(), `addon "pingsweep": no capped copy held`) {
		t.Fatalf("prepare without a copy: %v", err)
	}
	if dialled {
		t.Error("the manager was dialled for a refused prepare")
	}
	sameSnapshot(t, before, snapshot(t, f.base))
	req := StartRequest{AddonID: "pingsweep", Version: "1.0.0", File: "pingsweep", Description: "addond add-on pingsweep 1.0.0 [0f]",
		Restart: &Restart{Delay: time.Second, Interval: time.Minute, Burst: 5}}
	_, err := s.Start(context.Background(), req)
	if err == nil || !strings.Contains(err.Error(), `addon "pingsweep" version "1.0.0": no capped copy to start`) {
		t.Fatalf("start without a copy: %v", err)
	}
	if dialled {
		t.Error("the manager was dialled for a refused start")
	}
	sameSnapshot(t, before, snapshot(t, f.base))

	// A copy whose key is no longer trusted: the same.
	f.stage(t, "pingsweep", "1.0.0", "pingsweep", f.good)
	a, err := f.client().Apply(context.Background(), f.request(t, f.pkg("pingsweep", "1.0.0", "pingsweep", f.good, "cap_net_raw"), "pingsweep"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("copy %s", a.Path)
	os.Remove(f.keyFile)
	before = snapshot(t, f.base)
	if _, err := s.Start(context.Background(), req); err == nil || !strings.Contains(err.Error(), "no capped copy to start") {
		t.Fatalf("start from a copy whose key is gone: %v", err)
	}
	if dialled {
		t.Error("the manager was dialled for a refused start")
	}
	sameSnapshot(t, before, snapshot(t, f.base))
}
