// Package diagnostics gathers what helps someone else understand an
// addond host into one .tar.gz (`addonctl diagnostics`): status, config,
// state, units, logs, versions, trust and policy — and leaves secrets out.
//
// Secrets are handled by construction, not by hope: nothing is read from
// credential files or process environments; every JSON file passes
// through Redact, which blanks every value under config_json (an add-on's
// configuration is the publisher's business, and it is where passwords
// live) and every value whose key names a secret; a file that is not
// JSON is included only when it cannot hold one (a policy, a public key's
// fingerprint).
package diagnostics

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Redacted replaces a secret value.
const Redacted = "<redacted>"

// blanked: keys whose whole value is blanked, however spelled (JSON
// decoders match field names case-insensitively): an add-on's
// configuration and its arguments.
func blanked(k string) bool {
	return strings.EqualFold(k, "config_json") || strings.EqualFold(k, "args")
}

// secretKey matches keys whose values are secrets, wherever they are.
var secretKey = regexp.MustCompile(`(?i)(secret|passw|token|credential|private|api_?key|access_?key|auth|cookie|session)`)

// Redact returns data, a JSON document, with every value under a
// "config_json" key, and every value whose key names a secret, replaced by
// Redacted (keys and structure stay, so the shape can still be read). Data
// that is not JSON is replaced whole: it cannot be vetted.
func Redact(data []byte) []byte {
	var v any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return []byte(Redacted + " (not JSON)\n")
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(redact(v, false)); err != nil {
		return []byte(Redacted + "\n")
	}
	return out.Bytes()
}

func redact(v any, secret bool) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = redact(e, secret || secretKey.MatchString(k) || blanked(k))
		}
		return t
	case []any:
		for i, e := range t {
			t[i] = redact(e, secret)
		}
		return t
	case string:
		if secret {
			return Redacted
		}
		// A URL's password (https://user:pass@host/…).
		return userinfo.ReplaceAllString(t, "://"+Redacted+"@")
	default:
		if secret {
			return Redacted
		}
		return v
	}
}

// userinfo is a URL's user and password, up to its last "@" before the
// path.
var userinfo = regexp.MustCompile(`://[^/\s]*@`)

// secretAssign is a secret-named KEY=VALUE or KEY: VALUE in text.
var secretAssign = regexp.MustCompile(`(?i)\b([a-z0-9_.-]*(?:secret|passw|token|credential|api_?key|access_?key|auth)[a-z0-9_.-]*)(\s*[=:]\s*)("[^"]*"|'[^']*'|\S+)`)

// RedactText blanks what looks like a secret in text that is not JSON (a
// command's output, log lines): URL passwords and secret-named
// assignments.
func RedactText(text string) string {
	text = userinfo.ReplaceAllString(text, "://"+Redacted+"@")
	return secretAssign.ReplaceAllString(text, "${1}${2}"+Redacted)
}

// Bundle is a .tar.gz being written: files by name, each added once.
type Bundle struct {
	tw   *tar.Writer
	gz   *gzip.Writer
	now  time.Time
	seen map[string]bool
	// Index lists every member with what it is, or why it is missing.
	Index []string
}

// NewBundle writes a bundle to w; its members live under dir/.
func NewBundle(w io.Writer, now time.Time) *Bundle {
	gz := gzip.NewWriter(w)
	return &Bundle{tw: tar.NewWriter(gz), gz: gz, now: now, seen: map[string]bool{}}
}

// Add writes one member.
func (b *Bundle) Add(name string, data []byte) error {
	if b.seen[name] {
		return nil
	}
	b.seen[name] = true
	b.Index = append(b.Index, fmt.Sprintf("%-48s %d bytes", name, len(data)))
	if err := b.tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(data)), ModTime: b.now, Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	_, err := b.tw.Write(data)
	return err
}

// Missing notes a member that could not be gathered, and why.
func (b *Bundle) Missing(name string, err error) {
	b.Index = append(b.Index, fmt.Sprintf("%-48s MISSING: %v", name, err))
}

// Close writes the index and ends the archive.
func (b *Bundle) Close() error {
	err := b.Add("INDEX.txt", []byte(strings.Join(b.Index, "\n")+"\n"))
	if cerr := b.tw.Close(); err == nil {
		err = cerr
	}
	if cerr := b.gz.Close(); err == nil {
		err = cerr
	}
	return err
}

// Read returns the members of a bundle, by name: for a reader of one (a
// test, a support tool).
func Read(r io.Reader) (map[string]string, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, err
	}
	members := map[string]string{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return members, nil
		}
		if err != nil {
			return nil, err
		}
		data, err := io.ReadAll(io.LimitReader(tr, 64<<20))
		if err != nil {
			return nil, err
		}
		members[h.Name] = string(data)
	}
}

// Sources is what Collect gathers from; each field may be empty.
type Sources struct {
	ConfigPath  string
	Config      []byte // the config file's bytes (redacted on the way in)
	RuntimeRoot string
	Status      func(ctx context.Context) ([]byte, error) // GET /v1/status
	TrustKeys   []string                                  // files or directories
	PolicyFile  string
	Overrides   string
	AddonIDs    []string
	// Commands run for the units and the journal: name → argv. Their
	// output is included as it is (logs and unit properties hold no
	// secrets addond put there).
	Commands map[string][]string
	Versions map[string]string
}

// Collect writes everything src names into b. A part that cannot be
// gathered is noted in the index; only a write error fails it.
func Collect(ctx context.Context, b *Bundle, src Sources) error {
	add := func(name string, get func() ([]byte, error)) error {
		data, err := get()
		if err != nil {
			b.Missing(name, err)
			return nil
		}
		return b.Add(name, data)
	}
	var vers []string
	for _, k := range slices.Sorted(maps.Keys(src.Versions)) {
		vers = append(vers, k+": "+src.Versions[k])
	}
	if err := b.Add("versions.txt", []byte(strings.Join(vers, "\n")+"\n")); err != nil {
		return err
	}
	if src.Status != nil {
		if err := add("status.json", func() ([]byte, error) { return redactOK(src.Status(ctx)) }); err != nil {
			return err
		}
	}
	if src.ConfigPath != "" {
		if err := add("config/addond.json", func() ([]byte, error) { return Redact(src.Config), nil }); err != nil {
			return err
		}
	}
	if src.Overrides != "" {
		if err := add("config/addons.local.json", func() ([]byte, error) { return redactFile(src.Overrides) }); err != nil {
			return err
		}
	}
	if src.PolicyFile != "" {
		if err := add("config/capabilities.allow", func() ([]byte, error) { return os.ReadFile(src.PolicyFile) }); err != nil {
			return err
		}
	}
	if err := b.Add("trust.txt", trust(src.TrustKeys)); err != nil {
		return err
	}
	if root := src.RuntimeRoot; root != "" {
		if err := add("state/tree.txt", func() ([]byte, error) { return tree(root) }); err != nil {
			return err
		}
		files := []string{"state/agent.json", "state/assignments.json"}
		for _, id := range src.AddonIDs {
			files = append(files, "addons/"+id+"/state.json")
		}
		// The runtime root is writable by addond's uid, which add-ons
		// share: a file there may be a link to anything root can read, or
		// a FIFO. Read through an os.Root (nothing outside the runtime
		// root), regular files only, bounded.
		r, rerr := os.OpenRoot(root)
		for _, f := range files {
			if err := add("state/"+f, func() ([]byte, error) {
				if rerr != nil {
					return nil, rerr
				}
				return redactOK(readRegular(r, f))
			}); err != nil {
				return err
			}
		}
		if r != nil {
			r.Close()
		}
	}
	for _, name := range slices.Sorted(maps.Keys(src.Commands)) {
		argv := src.Commands[name]
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		out, err := exec.CommandContext(cctx, argv[0], argv[1:]...).CombinedOutput()
		cancel()
		text := "$ " + strings.Join(argv, " ") + "\n" + RedactText(string(out))
		if err != nil {
			text += fmt.Sprintf("\n(%v)\n", err)
		}
		if err := b.Add(name, []byte(text)); err != nil {
			return err
		}
	}
	return nil
}

func redactOK(data []byte, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	return Redact(data), nil
}

// maxFile bounds what one member may read.
const maxFile = 16 << 20

// readRegular reads name in r: a regular file of at most maxFile bytes,
// opened without blocking (a FIFO planted there is refused, not waited on).
func readRegular(r *os.Root, name string) ([]byte, error) {
	// Not through a link, even one that stays in the root (to an
	// add-on's config file, say): the file itself, the one opened.
	li, err := r.Lstat(name)
	if err != nil {
		return nil, err
	}
	if !li.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%v)", name, li.Mode().Type())
	}
	f, err := r.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !os.SameFile(li, fi) {
		return nil, fmt.Errorf("%s changed while it was opened", name)
	}
	if fi.Size() > maxFile {
		return nil, fmt.Errorf("%s: %d bytes, more than %d", name, fi.Size(), maxFile)
	}
	return io.ReadAll(io.LimitReader(f, maxFile))
}

func redactFile(path string) ([]byte, error) {
	return redactOK(os.ReadFile(path))
}

// trust lists each trust key file: its path, the SHA-256 of its bytes and
// the scope beside it. Key files are public; only their fingerprints go
// in.
func trust(paths []string) []byte {
	var lines []string
	for _, p := range paths {
		files := []string{p}
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			entries, _ := os.ReadDir(p)
			files = files[:0]
			for _, e := range entries {
				files = append(files, filepath.Join(p, e.Name()))
			}
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			switch {
			case err != nil:
				lines = append(lines, fmt.Sprintf("%s: %v", f, err))
			case strings.HasSuffix(f, ".scope"):
				lines = append(lines, fmt.Sprintf("%s: %s", f, bytes.TrimSpace(Redact(data))))
			case strings.HasSuffix(f, ".pub") || strings.HasSuffix(f, ".pem"):
				sum := sha256.Sum256(data)
				lines = append(lines, fmt.Sprintf("%s: sha256 %s", f, hex.EncodeToString(sum[:])))
			default:
				lines = append(lines, fmt.Sprintf("%s: (not a key file, not read)", f))
			}
		}
	}
	return []byte(strings.Join(lines, "\n") + "\n")
}

// tree lists the runtime root: names, sizes, modes, link targets — no
// contents; an add-on's own data/ directory is counted, not listed, and
// the listing stops at maxTree lines.
func tree(root string) ([]byte, error) {
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if len(lines) >= maxTree {
			lines = append(lines, fmt.Sprintf("… (stopped at %d entries)", maxTree))
			return filepath.SkipAll
		}
		if err != nil {
			lines = append(lines, fmt.Sprintf("%s: %v", p, err))
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		line := fmt.Sprintf("%s %10d %s %s", fi.Mode(), fi.Size(), fi.ModTime().UTC().Format(time.RFC3339), p)
		if fi.Mode()&fs.ModeSymlink != 0 {
			if t, err := os.Readlink(p); err == nil {
				line += " -> " + t
			}
		}
		if d.IsDir() && d.Name() == "data" && filepath.Base(filepath.Dir(filepath.Dir(p))) == "addons" {
			entries, _ := os.ReadDir(p)
			lines = append(lines, fmt.Sprintf("%s (%d entries, not listed: the add-on's own)", line, len(entries)))
			return filepath.SkipDir
		}
		lines = append(lines, line)
		return nil
	})
	return []byte(strings.Join(lines, "\n") + "\n"), err
}

const maxTree = 5000
