package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/minio/minio-go/v7"

	"github.com/addond/addond/daemon/signing"
)

const bucket = "stagebench"

// artifact is one published add-on version, as its package.json says.
type artifact struct {
	addonID     string
	version     string
	size        int64
	objectKey   string
	sha256      string // hex
	signature   string // hex
	keyID       string
	binary      string
	compression string
	storedSize  int64  // the object's size: what crosses the network
	agentID     string // the agent it is assigned to
}

// publishArtifact publishes addonID@1.0.0 for this platform — a file of
// size random bytes, or, with from, a copy of that file (size is then
// its) — compressed with zstd when compress is set; assigns it to agentID,
// and reads back what package.json says about it.
func (b *bench) publishArtifact(ctx context.Context, addonID, agentID string, size int64, from string, compress bool) (*artifact, error) {
	src := filepath.Join(b.tmp, "src", addonID)
	if err := os.MkdirAll(filepath.Dir(src), 0o700); err != nil {
		return nil, err
	}
	if from != "" {
		data, err := os.ReadFile(from)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(src, data, 0o700); err != nil {
			return nil, err
		}
		size = int64(len(data))
	} else if err := writeRandom(src, size); err != nil {
		return nil, err
	}
	defer os.Remove(src) // in the bucket now; no need to keep a copy
	a := &artifact{addonID: addonID, version: "1.0.0", agentID: agentID}
	platform := runtime.GOOS + "/" + runtime.GOARCH
	args := []string{"publish", "--store", b.store, "--key", b.signingKey, "--id", a.addonID, "--version", a.version}
	if compress {
		args = append(args, "--compress", "zstd")
	}
	if err := b.addonctl(ctx, append(args, platform+"="+src)...); err != nil {
		return nil, err
	}
	if err := b.addonctl(ctx, "assign", "--store", b.store, "--agent", agentID,
		"--key", b.signingKey, "--addon", a.addonID+"@"+a.version); err != nil {
		return nil, err
	}
	if err := b.readPackage(ctx, a); err != nil {
		return nil, err
	}
	if a.size != size {
		return nil, fmt.Errorf("package.json of %s says %d bytes, published %d", addonID, a.size, size)
	}
	return a, nil
}

// readPackage fills in a from packages/<id>/<version>/package.json.
func (b *bench) readPackage(ctx context.Context, a *artifact) error {
	key := "packages/" + a.addonID + "/" + a.version + "/package.json"
	obj, err := b.s3.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return err
	}
	defer obj.Close()
	var pkg struct {
		Artifacts map[string]struct {
			ObjectKey   string `json:"object_key"`
			SHA256      string `json:"sha256"`
			Size        int64  `json:"size"`
			Signature   string `json:"signature"`
			KeyID       string `json:"key_id"`
			BinaryName  string `json:"binary_name"`
			Compression string `json:"compression"`
			StoredSize  int64  `json:"stored_size"`
		} `json:"artifacts"`
	}
	if err := json.NewDecoder(obj).Decode(&pkg); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	if len(pkg.Artifacts) != 1 {
		return fmt.Errorf("%s: %d artifacts, want 1", key, len(pkg.Artifacts))
	}
	for _, art := range pkg.Artifacts {
		a.objectKey, a.sha256, a.size, a.signature, a.keyID, a.binary = art.ObjectKey, art.SHA256, art.Size, art.Signature, art.KeyID, art.BinaryName
		a.compression, a.storedSize = art.Compression, art.Size
		if art.Compression != "" {
			a.storedSize = art.StoredSize
		}
	}
	if a.objectKey == "" || len(a.sha256) != 64 || len(a.signature) != 128 || a.binary == "" {
		return fmt.Errorf("%s: incomplete artifact entry", key)
	}
	return nil
}

// assignOrigin assigns to agentID, as addonID@1.0.0, the artifact a as an
// origin-mode document does: a single reference with its own signature
// over the bytes, and no package for addonID@1.0.0 in the store. The
// agent then verifies that signature in its pass (the Ed25519 row).
func (b *bench) assignOrigin(ctx context.Context, a *artifact, addonID, agentID string) (*artifact, error) {
	priv, err := signing.LoadPrivateKey(b.signingKey)
	if err != nil {
		return nil, err
	}
	doc := map[string]any{"agent_id": agentID, "serial": 1, "addons": []map[string]any{{
		"addon_id": addonID, "version": a.version, "delivery": "pushed_artifact", "binary_path": a.binary,
		"artifact_object_key": a.objectKey, "artifact_sha256": a.sha256, "artifact_signature": a.signature,
		"artifact_key_id": a.keyID, "artifact_size": a.size, "target_os": runtime.GOOS, "target_arch": runtime.GOARCH,
	}}}
	raw, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	key := "agents/" + agentID + "/assignments.json"
	sig := []byte(hex.EncodeToString(ed25519.Sign(priv, raw)) + "\n")
	for k, body := range map[string][]byte{key: raw, key + ".sig": sig} {
		if _, err := b.s3.PutObject(ctx, bucket, k, bytes.NewReader(body), int64(len(body)), minio.PutObjectOptions{}); err != nil {
			return nil, err
		}
	}
	o := *a
	o.addonID, o.agentID = addonID, agentID
	return &o, nil
}

// writeConfig writes the addond config, at path, of an agent that is
// assigned a and stages into runtimeRoot.
func (b *bench) writeConfig(path string, a *artifact, runtimeRoot string, rateLimit int64) error {
	cfg := map[string]any{
		"agent_id":     a.agentID,
		"runtime_root": runtimeRoot,
		"store":        b.store,
		"assignments":  map[string]string{"store_key": "agents/" + a.agentID + "/assignments.json"},
		"trust": map[string]any{
			"public_keys":        []string{b.publicKey},
			"require_signatures": true,
		},
		"min_free_bytes": 1 << 20,
	}
	if rateLimit > 0 {
		cfg["download_rate_limit"] = rateLimit
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o600)
}

// writeRandom writes size bytes from a ChaCha8 stream seeded at random:
// incompressible, and different on every run.
func writeRandom(path string, size int64) error {
	var seed [32]byte
	rand.Read(seed[:])
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if _, err := io.CopyN(w, mrand.NewChaCha8(seed), size); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// addonctl runs bin/addonctl with the store's credentials.
func (b *bench) addonctl(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, b.addonctlBin, args...)
	cmd.Env = b.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("addonctl %s: %v\n%s", args[0], err, strings.TrimSpace(string(out)))
	}
	return nil
}
