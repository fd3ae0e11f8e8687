// Command stagebench measures `addond stage` against three other ways of
// fetching the same signed artifact from S3 and verifying it, side by side
// on one MinIO server:
//
//   - addond stage: one streaming pass (SHA-256 while writing: the
//     publisher's signed package pins digest and size), fsync, rename,
//     current symlink;
//   - addond stage, origin mode: the same artifact assigned by a document
//     with its own signature over the bytes and no package (SHA-256 and
//     Ed25519 in the pass);
//   - floor: a plain minio-go GetObject into a file, fsync (no verification);
//   - nomad-way: hashicorp/go-getter's S3 getter with checksum=sha256:…,
//     then a second pass over the file for crypto/ed25519.Verify;
//   - origin-way: the whole object read into memory, SHA-256 and
//     crypto/ed25519.Verify over it, then written and fsynced.
//
// Every method is its own process, started through cmd/launch, which
// records its wall time, CPU time and peak RSS (the process's rusage). The
// methods alternate within each round (the order rotates from round to
// round). Before each run stagebench syncs and, unless -warm-memory=false,
// warms memory (see memory.go); after it, outside the timing, it checks the
// run's output against the published SHA-256 and deletes it. addond stage
// also runs on a 1 MiB artifact, for the RSS comparison, and on real Go
// binaries of this build (bin/addond, bin/examples/pingsweep) published
// plain and with --compress zstd, for the bytes on the wire. See
// docs/BENCHMARKS.md for the results.
//
// Run it as `make bench` (BENCHFLAGS=... passes flags), or from bench/:
//
//	ADDOND_MINIO_BIN=/path/to/minio go run ./cmd/stagebench -addond ../bin/addond
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// options are stagebench's flags.
type options struct {
	addond     string
	size       byteSize
	smallSize  byteSize
	rounds     int
	warmup     int
	keep       bool
	markdown   bool
	warmMemory bool
}

func main() {
	os.Exit(run())
}

func run() int {
	o := options{size: 1 << 30, smallSize: 1 << 20}
	flag.StringVar(&o.addond, "addond", "../bin/addond", "addond binary; addonctl is taken from the same directory")
	flag.Var(&o.size, "size", "artifact size (bytes, or with a unit: 512MiB, 1GiB)")
	flag.Var(&o.smallSize, "small-size", "small artifact size for addond's RSS comparison")
	flag.IntVar(&o.rounds, "rounds", 5, "measured rounds (every method runs once per round)")
	flag.IntVar(&o.warmup, "warmup", 1, "unmeasured warm-up rounds before the measured ones")
	flag.BoolVar(&o.keep, "keep", false, "keep the temp dir (MinIO data, keys, logs) instead of removing it")
	flag.BoolVar(&o.markdown, "markdown", false, "print the results as Markdown (for docs/BENCHMARKS.md)")
	flag.BoolVar(&o.warmMemory, "warm-memory", true, "before each run, touch and free 3×size of memory (see memory.go)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: stagebench [flags]  (needs ADDOND_MINIO_BIN)\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		return 2
	}
	if o.rounds < 1 || o.warmup < 0 || o.size < 1 || o.smallSize < 1 {
		fmt.Fprintln(os.Stderr, "stagebench: -rounds must be ≥ 1, -warmup ≥ 0, sizes ≥ 1 byte")
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := runBench(ctx, o)
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "stagebench: interrupted (MinIO stopped, temp dir removed unless -keep)")
		return 1
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "stagebench:", err)
		return 1
	}
	if o.markdown {
		res.writeMarkdown(os.Stdout)
	} else {
		res.writeText(os.Stdout)
	}
	return 0
}
