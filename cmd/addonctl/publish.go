package main

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/publish"
	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/store"
)

// progressMin is the upload size from which a terminal gets a progress bar.
const progressMin = 8 << 20

func newPublish() *cobra.Command {
	var (
		storeURL, keyPath, id, version, supervision, binaryName string
		caps                                                    []string
		allowDowngrade                                          bool
		compress                                                string
	)
	c := &cobra.Command{
		Use: "publish --store URL --key KEY --id ID --version VER [flags] OS/ARCH=PATH...",
		Example: `  addonctl publish --store 's3://addons?endpoint=minio.example:9000' --key signing.key \\
    --id pingsweep --version 1.2.0 --compress zstd \\
    linux/amd64=dist/amd64/pingsweep linux/arm64=dist/arm64/pingsweep`,
		Short: "Sign and upload an add-on's artifacts and write its signed package.json",
		Long: `Signs each OS/ARCH=PATH file (Ed25519), uploads it to
artifacts/ID/VERSION/OS-ARCH/NAME (with --compress zstd, as NAME.zst), and
writes packages/ID/VERSION/package.json and its .sig naming every artifact's
digest, size and signature. No package is written until every upload is in
the store; a failed upload is tried again (5 attempts, backoff from 1s).
On S3 an artifact of 64 MiB or more is a multipart upload with a SHA-256
per part: a retry, or the next run of the same command after this one was
killed, sends only the parts the store does not have.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openWritable(storeURL)
			if err != nil {
				return err
			}
			priv, err := signing.LoadPrivateKey(keyPath)
			if err != nil {
				return err
			}
			var files []publish.File
			for _, a := range args {
				f, err := publish.ParseFileArg(a)
				if err != nil {
					return err
				}
				files = append(files, f)
			}
			opts := publish.PublishOptions{
				Store: st, Key: priv, AddonID: id, Version: version, Supervision: supervision,
				OSCapabilities: caps, BinaryName: binaryName, Files: files, AllowDowngrade: allowDowngrade,
				Compress: compress,
				Warn:     func(s string) { fmt.Fprintln(cmd.ErrOrStderr(), "addonctl: warning:", s) },
				Note:     func(s string) { fmt.Fprintln(cmd.ErrOrStderr(), "addonctl:", s) },
			}
			if term.IsTerminal(int(os.Stderr.Fd())) {
				opts.Progress = func(name string, size int64) io.Writer {
					if size < progressMin {
						return io.Discard
					}
					return progressbar.DefaultBytes(size, "uploading "+name)
				}
			}
			pkg, err := publish.Publish(cmd.Context(), opts)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "published %s@%s (key_id %s)\n", pkg.AddonID, pkg.Version, signing.KeyID(priv.Public().(ed25519.PublicKey)))
			for _, p := range slices.Sorted(maps.Keys(pkg.Artifacts)) {
				a := pkg.Artifacts[p]
				fmt.Fprintf(out, "  %-12s %s sha256 %s (%d bytes)\n", p, a.ObjectKey, a.SHA256, a.Size)
				if a.Compression != "" {
					fmt.Fprintf(out, "  %-12s %s: %d bytes stored (%.0f %%), stored sha256 %s\n", "", a.Compression, a.StoredSize, 100*float64(a.StoredSize)/float64(max(a.Size, 1)), a.StoredSHA256)
				}
			}
			fmt.Fprintf(out, "  %s (+ .sig)\n", assignment.PackageKey(pkg.AddonID, pkg.Version))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&storeURL, "store", "", "store URL (s3://… or file:///…)")
	f.StringVar(&keyPath, "key", "", "PKCS#8 PEM signing key")
	f.StringVar(&id, "id", "", "add-on id")
	f.StringVar(&version, "version", "", "version")
	f.StringVar(&supervision, "supervision", "", "supervision model (agent_sidecar, systemd_service, systemd_timer, ephemeral_helper, config_toggle)")
	f.StringArrayVar(&caps, "os-capability", nil, "file capability the add-on needs (repeatable), e.g. cap_net_raw")
	f.BoolVar(&allowDowngrade, "allow-downgrade", false, "let addond-updater cap this version after a higher one (signed into package.json)")
	f.StringVar(&binaryName, "binary-name", "", "staged file name (default: each PATH's file name)")
	f.StringVar(&compress, "compress", "", "store the artifacts compressed: zstd (agents decompress while they verify)")
	for _, n := range []string{"store", "key", "id", "version"} {
		c.MarkFlagRequired(n)
	}
	return c
}

func newAssign() *cobra.Command {
	var (
		storeURL, agent, keyPath, platform                                    string
		trust                                                                 []string
		addons, supervision, schedule, args, configs, timeouts, helperCallers []string
		disable, allowDowngrade, remove                                       []string
		expires                                                               time.Duration
		merge, dryRun                                                         bool
	)
	c := &cobra.Command{
		Use: "assign --store URL --agent AGENT [--key KEY] --addon ID@VERSION... [flags]",
		Example: `  # Change one add-on on one host, keeping the others:
  addonctl assign --store "$STORE" --key signing.key --agent edge-01 --merge --addon pingsweep@1.2.0
  # See what a change would do, write nothing:
  addonctl assign --store "$STORE" --key signing.key --agent edge-01 --remove inventory --dry-run`,
		Short: "Write an agent's (signed) assignment document from published packages",
		Long: `assign writes agents/AGENT/assignments.json from published, signed packages:
one entry per --addon, with a serial one above the current document's.

Without --merge the document holds exactly the --addon add-ons: any other
add-on of the current document is removed from the host. --merge keeps them;
--remove ID drops one (and implies --merge). Every assign prints what it
changes, add-on by add-on (+ added, ~ changed, - removed); --dry-run prints
that and writes nothing.

The write is conditional on the current document (its ETag): when another
assign or a rollout wrote in between, nothing is written and assign says so;
run it again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := openWritable(storeURL)
			if err != nil {
				return err
			}
			o := publish.AssignOptions{
				Store: st, AgentID: agent, Addons: addons, Merge: merge, Remove: remove, DryRun: dryRun,
				Warn: func(s string) { fmt.Fprintln(cmd.ErrOrStderr(), "addonctl: warning:", s) },
			}
			if keyPath != "" {
				if o.Key, err = signing.LoadPrivateKey(keyPath); err != nil {
					return err
				}
			}
			if len(trust) > 0 {
				if o.Trust, err = signing.LoadKeyring(trust); err != nil {
					return err
				}
			}
			if platform != "" {
				p, err := assignment.ParsePlatform(platform)
				if err != nil {
					return err
				}
				o.Platform = &p
			}
			if o.Supervision, err = perAddon("--supervision", supervision); err != nil {
				return err
			}
			if o.Schedule, err = perAddon("--schedule", schedule); err != nil {
				return err
			}
			if o.ConfigFiles, err = perAddon("--config", configs); err != nil {
				return err
			}
			if o.Timeout, err = perAddon("--timeout", timeouts); err != nil {
				return err
			}
			if o.HelperCallers, err = perAddonList("--helper-caller", "HELPER=CALLER", helperCallers); err != nil {
				return err
			}
			if o.Args, err = perAddonList("--arg", "ID=ARG", args); err != nil {
				return err
			}
			o.Disable, o.AllowDowngrade, o.Expires = set(disable), set(allowDowngrade), expires
			if len(addons) == 0 && len(remove) == 0 {
				return errors.New("nothing to assign: give --addon ID@VERSION (or --remove ID)")
			}
			res, err := publish.Assign(cmd.Context(), o)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, ch := range res.Changes {
				fmt.Fprintln(out, ch)
			}
			if len(res.Changes) == 0 {
				fmt.Fprintln(out, "no add-on changes")
			}
			doc := res.Document
			signed := "unsigned"
			if o.Key != nil {
				signed = "signed"
			}
			verb := "wrote"
			if !res.Written {
				verb = "dry run: would write"
			}
			fmt.Fprintf(out, "%s %s serial %d config_version %s (%s, %d add-ons)\n",
				verb, publish.AssignmentsKey(agent), doc.Serial, doc.ConfigVersion[:16], signed, len(doc.Addons))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&storeURL, "store", "", "store URL")
	f.StringVar(&agent, "agent", "", "agent id")
	f.StringVar(&keyPath, "key", "", "PKCS#8 PEM key that signs the document (and verifies packages)")
	f.StringArrayVar(&trust, "trust", nil, "public key file or directory that verifies package.json signatures (default: --key's public key)")
	f.StringVar(&platform, "platform", "", "also emit the single artifact reference for OS/ARCH")
	f.StringArrayVar(&addons, "addon", nil, "ID@VERSION (repeatable)")
	f.StringArrayVar(&supervision, "supervision", nil, "ID=MODEL")
	f.StringArrayVar(&schedule, "schedule", nil, "ID=CALENDAR (systemd OnCalendar)")
	f.StringArrayVar(&helperCallers, "helper-caller", nil, "HELPER=CALLER: add-on CALLER may run add-on HELPER's helper (repeatable; an add-on may always run its own)")
	f.StringArrayVar(&args, "arg", nil, "ID=ARG (repeatable, order kept)")
	f.StringArrayVar(&configs, "config", nil, "ID=FILE.json")
	f.StringArrayVar(&timeouts, "timeout", nil, "ID=DURATION")
	f.StringArrayVar(&disable, "disable", nil, "ID (assigned but disabled)")
	f.StringArrayVar(&allowDowngrade, "allow-downgrade", nil, "ID")
	f.DurationVar(&expires, "expires", 0, "the document expires this long after it is written (e.g. 72h): past it agents apply nothing of it and say EXPIRED")
	f.BoolVar(&merge, "merge", false, "keep the current document's add-ons that --addon does not name")
	f.StringArrayVar(&remove, "remove", nil, "ID: drop this add-on from the current document (repeatable; implies --merge)")
	f.BoolVar(&dryRun, "dry-run", false, "print the changes, write nothing")
	for _, n := range []string{"store", "agent"} {
		c.MarkFlagRequired(n)
	}
	return c
}

func perAddon(flag string, vals []string) (map[string]string, error) {
	m := map[string]string{}
	for _, v := range vals {
		id, val, ok := strings.Cut(v, "=")
		if !ok || id == "" {
			return nil, fmt.Errorf("%s %q: want ID=VALUE", flag, v)
		}
		if _, dup := m[id]; dup {
			return nil, fmt.Errorf("%s given twice for %s", flag, id)
		}
		m[id] = val
	}
	return m, nil
}

// perAddonList gathers a repeatable ID=VALUE flag's values by add-on, in
// order.
func perAddonList(flag, want string, vals []string) (map[string][]string, error) {
	m := map[string][]string{}
	for _, v := range vals {
		id, val, ok := strings.Cut(v, "=")
		if !ok {
			return nil, fmt.Errorf("%s %q: want %s", flag, v, want)
		}
		m[id] = append(m[id], val)
	}
	return m, nil
}

func set(ids []string) map[string]bool {
	m := map[string]bool{}
	for _, id := range ids {
		m[id] = true
	}
	return m
}

// openWritable opens the store of a command that writes to it: a read-only
// (http:// or https://) store is refused before anything else is done.
func openWritable(storeURL string) (store.Store, error) {
	st, err := store.Open(storeURL)
	if err != nil {
		return nil, err
	}
	return st, store.Writable(st)
}
