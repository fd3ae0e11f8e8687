package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/addond/addond/daemon/rollout"
	"github.com/addond/addond/daemon/signing"
)

func newRollout() *cobra.Command {
	var (
		storeURL, keyPath, ref, agents, waves string
		trust                                 []string
		all, revert, resume                   bool
		canary, maxFailures, maxRate          int
		wait, poll                            time.Duration
	)
	c := &cobra.Command{
		Use:   "rollout --store URL --key KEY --addon ID@VERSION (--agents A,B,... | --all) [flags]",
		Short: "Move one add-on to a version across agents in waves that halt themselves",
		Long: `Changes only ID's entry (its version and artifact fields, from the signed
package) in each agent's current document, wave by wave: the --canary agents
first, then each --waves percentage of all of them. After each wave it waits
until every agent of the wave has promoted the version (its report shows it
running, healthy and past probation) or failed it (rolled back, failed, or no
such report within --wait). More failures than --max-failures halt it: no
further agent is changed, the failures are listed, and with --revert-on-halt
the agents it changed get their previous entry back.

A wave's documents are changed up to 8 at a time (one at first, one more
after each that succeeds), the changed agents judged meanwhile. With
--max-rate N at most N documents are changed per minute: a large wave's
agents then fetch the new version a few at a time rather than all within
one poll interval (the store's request peak and bandwidth), and a failure
halts the wave before the rest are changed. Without it a wave is written
as fast as the store takes it.

Documents are written signed, with serial + 1, on the condition that nobody
wrote them meanwhile (a concurrent change is read again, never overwritten).
Progress is kept in rollouts/ID/VERSION.json: --resume continues a rollout
whose command was interrupted, or a halted one under a higher --max-failures.

One line per event is printed on standard output; when standard error is a
terminal, a bar of the current wave (its agents promoted, failed, and
pending a verdict) is drawn beneath the lines there.

Exit status: 0 every agent promoted, 3 halted, 1 any other error.`,
		Example: `  addonctl rollout --store "$STORE" --key signing.key --addon hello@1.2.0 --all --canary 1 --waves 10%,50%,100%
  addonctl rollout --store "$STORE" --key signing.key --addon hello@1.2.0 --agents edge-01,edge-02 --max-failures 1 --revert-on-halt
  addonctl rollout --store "$STORE" --key signing.key --addon hello@1.2.0 --all --canary 5 --waves 10%,100% --max-rate 500
  addonctl rollout --store "$STORE" --key signing.key --addon hello@1.2.0 --all --resume`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, version, ok := strings.Cut(ref, "@")
			if !ok {
				return fmt.Errorf("--addon %q: want ID@VERSION", ref)
			}
			if all == (agents != "") && !resume {
				return errors.New("give --agents A,B,... or --all")
			}
			w, err := rollout.ParseWaves(waves)
			if err != nil {
				return err
			}
			st, err := openWritable(storeURL)
			if err != nil {
				return err
			}
			o := rollout.Options{
				Store: st, AddonID: id, Version: version, All: all, Canary: canary, Waves: w,
				MaxFailures: maxFailures, Wait: wait, MaxRate: maxRate, RevertOnHalt: revert, Resume: resume, Poll: poll,
			}
			if agents != "" {
				o.Agents = strings.Split(agents, ",")
			}
			if o.Key, err = signing.LoadPrivateKey(keyPath); err != nil {
				return err
			}
			if len(trust) > 0 {
				if o.Trust, err = signing.LoadKeyring(trust); err != nil {
					return err
				}
			}
			out := cmd.OutOrStdout()
			view := newRolloutView(out, cmd.ErrOrStderr(), term.IsTerminal(int(os.Stderr.Fd())))
			o.Log, o.Progress = view.line, view.progress
			view.start(200 * time.Millisecond)
			p, err := rollout.Run(cmd.Context(), o)
			view.close()
			if p != nil {
				fmt.Fprintf(out, "progress: %s (%s)\n", rollout.ProgressKey(id, version), p.State)
			}
			if errors.Is(err, rollout.ErrHalted) {
				fmt.Fprintln(cmd.ErrOrStderr(), "addonctl:", err)
				return exitError{3}
			}
			return err
		},
	}
	f := c.Flags()
	f.StringVar(&storeURL, "store", "", "store URL")
	f.StringVar(&keyPath, "key", "", "PKCS#8 PEM key that signs the documents (and verifies them and the package)")
	f.StringArrayVar(&trust, "trust", nil, "public key file or directory that verifies the documents and the package (default: --key's public key)")
	f.StringVar(&ref, "addon", "", "ID@VERSION to roll out")
	f.StringVar(&agents, "agents", "", "agents, comma-separated, in the order they are changed")
	f.BoolVar(&all, "all", false, "every agent whose document has the add-on (sorted by id)")
	f.IntVar(&canary, "canary", 1, "agents in the first wave")
	f.StringVar(&waves, "waves", "100%", "cumulative percentages of the agents after the canary")
	f.IntVar(&maxFailures, "max-failures", 0, "failures tolerated before the rollout halts")
	f.DurationVar(&wait, "wait", 10*time.Minute, "how long an agent has to report the version promoted")
	f.IntVar(&maxRate, "max-rate", 0, "at most this many document changes per minute, the changed agents judged meanwhile (default 0: as fast as the store takes them)")
	f.DurationVar(&poll, "poll", 5*time.Second, "how often the agents' reports are read")
	f.BoolVar(&revert, "revert-on-halt", false, "on a halt, give the changed agents their previous entry back")
	f.BoolVar(&resume, "resume", false, "continue the rollout recorded in rollouts/ID/VERSION.json")
	for _, n := range []string{"store", "key", "addon"} {
		c.MarkFlagRequired(n)
	}
	return c
}
