package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/addond/addond/vmtest/miniotest"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
)

// bench is one stagebench run: a MinIO server, the published artifacts and
// the methods measured against them.
type bench struct {
	opts        options
	tmp         string // everything stagebench writes lives here
	addondBin   string
	addonctlBin string
	childDir    string // launch, floor, gogetter and inmemory, built for this run
	srv         *miniotest.Server
	s3          *minio.Client
	env         []string // the environment of every child process
	store       string   // s3:// URL of the bucket
	signingKey  string
	publicKey   string
}

// method is one way of fetching and verifying an artifact.
type method struct {
	slug string // directory and log name
	name string // as printed
	art  *artifact
	// args is the command line of one run whose output directory is dir
	// (empty when the run starts).
	args func(dir string) []string
	// output is the file a successful run leaves in dir.
	output func(dir string) string
	// check, if set, is a further check of a run's results.
	check   func(dir string) error
	samples []sample
}

// sample is one measured run.
type sample struct {
	wall time.Duration
	cpu  time.Duration // user + system
	rss  int64         // peak RSS, KiB
}

func runBench(ctx context.Context, o options) (res *result, err error) {
	b := &bench{opts: o}
	if err := b.findBinaries(); err != nil {
		return nil, err
	}
	if b.tmp, err = os.MkdirTemp("", "stagebench-"); err != nil {
		return nil, err
	}
	defer func() {
		if o.keep {
			logf("kept %s", b.tmp)
			return
		}
		if rerr := os.RemoveAll(b.tmp); rerr != nil && err == nil {
			err = rerr
		}
	}()

	logf("building the comparison programs")
	if err := b.buildChildren(ctx); err != nil {
		return nil, err
	}
	logf("starting MinIO")
	// The same MinIO runner the tests use ($ADDOND_MINIO_BIN).
	if b.srv, err = miniotest.Start(); err != nil {
		return nil, err
	}
	defer b.srv.Stop()
	b.env = append(os.Environ(), b.srv.Env()...)
	b.store = b.srv.URL(bucket)
	b.s3, err = minio.New(b.srv.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(b.srv.AccessKey, b.srv.SecretKey, ""),
		Region: "us-east-1",
	})
	if err != nil {
		return nil, err
	}
	if err := b.s3.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
		return nil, fmt.Errorf("make bucket: %w", err)
	}

	keys := filepath.Join(b.tmp, "keys")
	if err := b.addonctl(ctx, "keygen", "--out", keys); err != nil {
		return nil, err
	}
	b.signingKey, b.publicKey = filepath.Join(keys, "signing.key"), filepath.Join(keys, "signing.pub")
	logf("publishing a %s artifact and a %s one, and real Go binaries plain and with zstd", o.size, o.smallSize)
	big, err := b.publishArtifact(ctx, "big", "bench", int64(o.size), "", false)
	if err != nil {
		return nil, err
	}
	origin, err := b.assignOrigin(ctx, big, "big-origin", "bench-origin")
	if err != nil {
		return nil, err
	}
	small, err := b.publishArtifact(ctx, "small", "bench-small", int64(o.smallSize), "", false)
	if err != nil {
		return nil, err
	}
	var reals []*artifact
	for _, r := range realBinaries(b.addondBin) {
		for _, zst := range []bool{false, true} {
			id := r.id
			if zst {
				id += "-zst"
			}
			a, err := b.publishArtifact(ctx, id, "bench-"+id, 0, r.path, zst)
			if err != nil {
				return nil, err
			}
			reals = append(reals, a)
		}
	}

	methods, err := b.methods(big, origin, small, reals)
	if err != nil {
		return nil, err
	}
	floor, err := b.rssFloor(ctx)
	if err != nil {
		return nil, err
	}
	total := o.warmup + o.rounds
	for round := 0; round < total; round++ {
		measured := round >= o.warmup
		label := fmt.Sprintf("round %d/%d", round-o.warmup+1, o.rounds)
		if !measured {
			label = fmt.Sprintf("warm-up %d/%d", round+1, o.warmup)
		}
		// Rotate the order, so that over the rounds every method runs in
		// every position within a round.
		for i := range methods {
			m := methods[(i+round)%len(methods)]
			s, err := b.runOnce(ctx, m)
			if err != nil {
				return nil, fmt.Errorf("%s, %s: %w", label, m.name, err)
			}
			logf("%-13s %-28s %7.3f s  CPU %6.3f s  RSS %7.1f MiB", label, m.name, s.wall.Seconds(), s.cpu.Seconds(), mib(s.rss))
			if measured {
				m.samples = append(m.samples, s)
			}
		}
	}
	return newResult(o, methods, floor, reals), nil
}

// findBinaries resolves -addond and the addonctl beside it.
func (b *bench) findBinaries() error {
	var err error
	if b.addondBin, err = filepath.Abs(b.opts.addond); err != nil {
		return err
	}
	b.addonctlBin = filepath.Join(filepath.Dir(b.addondBin), "addonctl")
	for _, p := range []string{b.addondBin, b.addonctlBin} {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("%w (run `make build`)", err)
		}
		if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("%s is not an executable file", p)
		}
	}
	return nil
}

// buildChildren builds launch, floor, gogetter and inmemory the way the Makefile
// builds addond (CGO_ENABLED=0, -trimpath), so that no run pays for a
// compile.
func (b *bench) buildChildren(ctx context.Context) error {
	b.childDir = filepath.Join(b.tmp, "bin")
	goBin, err := exec.LookPath("go")
	if err != nil {
		if goBin, err = exec.LookPath(filepath.Join(os.Getenv("GOROOT"), "bin", "go")); err != nil {
			return errors.New("the go command is not in PATH")
		}
	}
	const pkg = "github.com/addond/addond/bench/cmd/"
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-o", b.childDir+"/",
		pkg+"launch", pkg+"floor", pkg+"gogetter", pkg+"inmemory")
	cmd.Dir = moduleDir()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build (run stagebench from bench/, or `make bench`): %v\n%s", err, out)
	}
	return nil
}

// moduleDir is the bench module's directory when stagebench runs from its
// source (go run), else "" (the current directory).
func moduleDir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok || !filepath.IsAbs(file) {
		return ""
	}
	dir := filepath.Join(filepath.Dir(file), "..", "..")
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return ""
	}
	return dir
}

// slowLink is the download_rate_limit of the slow-link rows: 100 Mbit/s.
const slowLink = 100e6 / 8

// realBinary is a Go binary of this build, published as it is: what
// zstd does to real add-ons.
type realBinary struct{ id, name, path string }

func realBinaries(addondBin string) []realBinary {
	dir := filepath.Dir(addondBin)
	return []realBinary{
		{"addond", "bin/addond", addondBin},
		{"pingsweep", "bin/examples/pingsweep", filepath.Join(dir, "examples", "pingsweep")},
	}
}

// methods returns the measured methods: addond stage (package-pinned and
// origin mode), floor, nomad-way and origin-way on the big artifact,
// addond stage on the small one, and addond stage of each real binary,
// plain and compressed.
func (b *bench) methods(big, origin, small *artifact, reals []*artifact) ([]*method, error) {
	stage := func(slug, name string, a *artifact, rateLimit int64) (*method, error) {
		// The runtime root is the run's (fresh, empty) output directory.
		dir := b.outDir(slug)
		cfg := filepath.Join(b.tmp, "config-"+slug+".json")
		if err := b.writeConfig(cfg, a, dir, rateLimit); err != nil {
			return nil, err
		}
		current := filepath.Join(dir, "addons", a.addonID, "current")
		return &method{
			slug: slug, name: name, art: a,
			args:   func(string) []string { return []string{b.addondBin, "stage", "--config", cfg} },
			output: func(string) string { return filepath.Join(current, a.binary) },
			check: func(string) error {
				target, err := os.Readlink(current)
				if err != nil {
					return err
				}
				if want := "versions/" + a.version; target != want {
					return fmt.Errorf("current points to %q, want %q", target, want)
				}
				return nil
			},
		}, nil
	}
	child := func(slug, name, prog string, verify bool) *method {
		return &method{
			slug: slug, name: name, art: big,
			args: func(dir string) []string {
				args := []string{filepath.Join(b.childDir, prog),
					"-endpoint", b.srv.Endpoint, "-bucket", bucket, "-key", big.objectKey,
					"-out", filepath.Join(dir, big.binary)}
				if verify {
					args = append(args, "-sha256", big.sha256, "-sig", big.signature, "-pub", b.publicKey)
				}
				return args
			},
			output: func(dir string) string { return filepath.Join(dir, big.binary) },
		}
	}
	addond, err := stage("addond", "addond stage", big, 0)
	if err != nil {
		return nil, err
	}
	addondOrigin, err := stage("addond-origin", "addond stage, origin mode (Ed25519 over the bytes)", origin, 0)
	if err != nil {
		return nil, err
	}
	addondSmall, err := stage("addond-small", "addond stage ("+byteSize(small.size).String()+")", small, 0)
	if err != nil {
		return nil, err
	}
	ms := []*method{
		addond,
		addondOrigin,
		child("floor", "floor", "floor", false),
		child("nomad", "nomad-way", "gogetter", true),
		child("origin", "origin-way", "inmemory", true),
		addondSmall,
	}
	for _, a := range reals {
		name := fmt.Sprintf("addond stage (%s, %.1f MB", a.addonID, float64(a.size)/1e6)
		if a.compression != "" {
			name = fmt.Sprintf("addond stage (%s, %.1f MB %s", strings.TrimSuffix(a.addonID, "-zst"), float64(a.storedSize)/1e6, a.compression)
		}
		m, err := stage("addond-"+a.addonID, name+")", a, 0)
		if err != nil {
			return nil, err
		}
		ms = append(ms, m)
		// The same over a 100 Mbit/s link (download_rate_limit), where
		// the bytes on the wire, not the CPU, take the time.
		if strings.HasPrefix(a.addonID, "addond") {
			m, err := stage("addond-"+a.addonID+"-slow", name+", 100 Mbit/s)", a, slowLink)
			if err != nil {
				return nil, err
			}
			ms = append(ms, m)
		}
	}
	return ms, nil
}

func (b *bench) outDir(slug string) string { return filepath.Join(b.tmp, "out", slug) }

// runOnce runs m once in an empty output directory and measures it. After
// the timing it checks the output against the published digest, then
// deletes it.
func (b *bench) runOnce(ctx context.Context, m *method) (sample, error) {
	dir := b.outDir(m.slug)
	if err := os.RemoveAll(dir); err != nil {
		return sample{}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return sample{}, err
	}
	defer os.RemoveAll(dir)
	// Start every run with nothing dirty in the page cache, so that no run
	// pays for an earlier one's writeback.
	syscall.Sync()
	if b.opts.warmMemory {
		// The largest footprint is origin-way's: the artifact in the page
		// cache plus io.ReadAll's last buffer and the one it grew from.
		if err := warmMemory(3*m.art.size + 256<<20); err != nil {
			return sample{}, fmt.Errorf("warming memory: %w", err)
		}
	}

	log, err := os.Create(filepath.Join(b.tmp, m.slug+".log"))
	if err != nil {
		return sample{}, err
	}
	defer log.Close()
	args := m.args(dir)
	s, err := b.launch(ctx, args, log)
	if err != nil {
		return sample{}, fmt.Errorf("%s: %v\n%s", filepath.Base(args[0]), err, tail(log.Name()))
	}

	if err := checkFile(m.output(dir), m.art); err != nil {
		return sample{}, fmt.Errorf("VERIFY FAILED: %w", err)
	}
	if m.check != nil {
		if err := m.check(dir); err != nil {
			return sample{}, fmt.Errorf("VERIFY FAILED: %w", err)
		}
	}
	return s, nil
}

// launch runs args under the launch program (see cmd/launch for why) with
// output going to log (nil: discarded), and returns its measurements.
func (b *bench) launch(ctx context.Context, args []string, log io.Writer) (sample, error) {
	rusage := filepath.Join(b.tmp, "rusage")
	os.Remove(rusage)
	cmd := exec.CommandContext(ctx, filepath.Join(b.childDir, "launch"), append([]string{"-out", rusage}, args...)...)
	cmd.Env = b.env
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	runErr := cmd.Run()
	if ctx.Err() != nil {
		return sample{}, ctx.Err()
	}
	data, err := os.ReadFile(rusage)
	if err != nil {
		return sample{}, errors.Join(runErr, err)
	}
	var wall, rss, user, sys int64
	var code int
	if _, err := fmt.Sscan(string(data), &wall, &rss, &user, &sys, &code); err != nil {
		return sample{}, fmt.Errorf("launch wrote %q: %v", data, err)
	}
	if code != 0 || runErr != nil {
		return sample{}, fmt.Errorf("exit code %d", code)
	}
	return sample{wall: time.Duration(wall), cpu: time.Duration(user + sys), rss: rss}, nil
}

// rssFloor is the least peak RSS a program run under launch can show: that
// of /bin/true, which is launch's own footprint when it starts the program.
func (b *bench) rssFloor(ctx context.Context) (int64, error) {
	trueBin, err := exec.LookPath("true")
	if err != nil {
		return 0, err
	}
	var floor int64
	for range 3 {
		s, err := b.launch(ctx, []string{trueBin}, nil)
		if err != nil {
			return 0, fmt.Errorf("launch true: %w", err)
		}
		floor = max(floor, s.rss)
	}
	return floor, nil
}

// checkFile fails unless path is a regular file with a's size and SHA-256.
func checkFile(path string, a *artifact) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Size() != a.size {
		return fmt.Errorf("%s: %v, %d bytes; want a regular file of %d bytes", path, fi.Mode(), fi.Size(), a.size)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != a.sha256 {
		return fmt.Errorf("%s: sha256 %s, want %s", path, got, a.sha256)
	}
	return nil
}

// tail returns the last lines of a log file, for error messages.
func tail(path string) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "stagebench: "+format+"\n", args...)
}

func mib(kib int64) float64 { return float64(kib) / 1024 }
