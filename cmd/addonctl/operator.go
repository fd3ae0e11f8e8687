package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/addond/addond/daemon"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/daemon/reconcile"
	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/helper"
)

// socketFlags find the status socket: --socket, else status_socket in
// --config, else the default.
type socketFlags struct {
	socket, config string
}

func (s *socketFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&s.socket, "socket", "", "status socket (default: status_socket of --config, else /run/addond/addond.sock)")
	c.Flags().StringVar(&s.config, "config", config.DefaultPath, "addond config, to find the status socket")
}

func (s *socketFlags) client() (*daemon.Client, error) {
	if s.socket != "" {
		return daemon.NewClient(s.socket), nil
	}
	cfg, err := config.Load(s.config)
	switch {
	case err == nil:
		return daemon.NewClient(cfg.StatusSocket), nil
	case errors.Is(err, fs.ErrNotExist):
		return daemon.NewClient("/run/addond/addond.sock"), nil
	default:
		return nil, err
	}
}

func newStatus() *cobra.Command {
	var sf socketFlags
	var asJSON bool
	c := &cobra.Command{
		Use:   "status [--json]",
		Short: "Show every add-on: state, health, desired and active version",
		Long: `status shows every add-on addond knows: its state and health, the version
wanted and the one active, since when, and its last error.

Exit status: 0 when every enabled add-on is running and healthy; 1 when any
is not (starting, degraded, unhealthy, failed, rolled back, circuit open…),
the assignment document has expired, or addond is still starting; 2 when
addond cannot be reached.`,
		Example: `  addonctl status
  addonctl status --json | jq '.addons[] | select(.health != "healthy")'
  addonctl status >/dev/null || echo "an add-on needs attention"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := sf.client()
			if err != nil {
				return unreachable(err)
			}
			st, err := cl.Status(cmd.Context())
			if err != nil {
				return unreachable(err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(st); err != nil {
					return err
				}
				return notWell(cmd, st)
			}
			ready := "ready"
			if !st.Ready {
				ready = "starting"
			}
			fmt.Fprintf(out, "agent %s (addond %s), %s, serial %d%s\n", st.AgentID, st.Version, ready, st.Serial, staleness(st, time.Now()))
			if st.DocumentError != "" {
				fmt.Fprintf(out, "assignments: %s\n", st.DocumentError)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ADDON\tSTATE\tHEALTH\tDESIRED\tACTIVE\tSINCE\tLAST ERROR")
			for _, a := range st.Addons {
				active := a.ActiveVersion
				if a.FromLKG {
					active += " (last-known-good)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.AddonID, a.State, a.Health, dash(a.Version), dash(active),
					a.Since.Local().Format(time.DateTime), truncate(a.LastError, 80))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			return notWell(cmd, st)
		},
	}
	sf.add(c)
	c.Flags().BoolVar(&asJSON, "json", false, "print /v1/status as JSON")
	return c
}

// unreachable: addond could not be asked; status exits 2.
func unreachable(err error) error {
	return fmt.Errorf("%w (exit status 2: addond cannot be reached)", exitErrorWith{exitError{2}, err})
}

// exitErrorWith is an exit status that prints its cause.
type exitErrorWith struct {
	exitError
	err error
}

func (e exitErrorWith) Error() string { return e.err.Error() }
func (e exitErrorWith) Unwrap() error { return e.err }

// notWell is status's exit: nil when every enabled add-on is running and
// healthy and the document has not expired; else exit status 1, with the
// add-ons that are not on stderr.
func notWell(cmd *cobra.Command, st *daemon.Status) error {
	var bad []string
	if !st.Ready {
		bad = append(bad, "addond is starting (not ready)")
	}
	if st.DocumentExpired {
		bad = append(bad, "the assignment document has expired")
	}
	for _, a := range st.Addons {
		if a.State == reconcile.StateDisabled || a.State == reconcile.StateRunning && a.Health == supervisors.HealthHealthy {
			continue
		}
		bad = append(bad, fmt.Sprintf("%s is %s, %s", a.AddonID, a.State, a.Health))
	}
	if len(bad) == 0 {
		return nil
	}
	fmt.Fprintln(cmd.ErrOrStderr(), "addonctl: not every add-on is running and healthy: "+strings.Join(bad, "; "))
	return exitError{1}
}

// staleness is the header's note when the assignment document in use is
// not confirmed by the source: add-ons keep running on what they ran.
func staleness(st *daemon.Status, now time.Time) string {
	if !st.Ready || st.DocumentFresh {
		return ""
	}
	if st.DocumentError == "" && st.DocumentCheckedAt == nil && st.DocumentAppliedAt == nil {
		return "" // not yet reconciled (or an addond that does not say)
	}
	if st.DocumentExpired {
		return ", assignments EXPIRED (add-ons keep their last-known-good; " + st.DocumentError + ")"
	}
	s := ", assignments STALE (add-ons keep their last-known-good"
	if t := st.DocumentCheckedAt; t != nil {
		s += "; last checked " + ago(now, *t)
	} else {
		s += "; not checked since addond started"
	}
	if t := st.DocumentAppliedAt; t != nil {
		s += ", applied " + ago(now, *t)
	}
	return s + ")"
}

func ago(now, t time.Time) string {
	d := now.Sub(t).Round(time.Second)
	if d < time.Second {
		return "just now"
	}
	return d.String() + " ago"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func newReconcile() *cobra.Command {
	var sf socketFlags
	c := &cobra.Command{
		Use:     "reconcile",
		Example: `  addonctl reconcile`,
		Short:   "Ask addond to reconcile now",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := sf.client()
			if err != nil {
				return err
			}
			return cl.Reconcile(cmd.Context())
		},
	}
	sf.add(c)
	return c
}

func newRetry() *cobra.Command {
	var sf socketFlags
	c := &cobra.Command{
		Use:     "retry ID",
		Example: `  addonctl retry pingsweep`,
		Short:   "Forget an add-on's failed versions and try the assigned one again",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := sf.client()
			if err != nil {
				return err
			}
			return cl.Retry(cmd.Context(), args[0])
		},
	}
	sf.add(c)
	return c
}

func newRunHelper() *cobra.Command {
	var sf socketFlags
	c := &cobra.Command{
		Use:     "run-helper ID [-- ARGS...]",
		Example: `  addonctl run-helper inventory -- --format json`,
		Short:   "Run an ephemeral helper; print its output and exit with its status",
		Long: `Runs the ephemeral helper ID once, as a transient unit in addond's manager,
with ARGS after its assigned arguments. Prints its stdout on stdout and its
stderr on stderr (each bounded; a note on stderr says when output was cut)
and exits with the helper's exit status (128+N when signal N killed it, e.g.
at its timeout).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() > 1 || (cmd.ArgsLenAtDash() < 0 && len(args) > 1) {
				return errors.New("run-helper ID [-- ARGS...]: put the helper's arguments after --")
			}
			cl, err := sf.client()
			if err != nil {
				return err
			}
			res, err := cl.RunHelper(cmd.Context(), args[0], args[1:])
			if err != nil {
				return err
			}
			os.Stdout.Write(res.Stdout)
			os.Stderr.Write(res.Stderr)
			if res.StdoutTruncated || res.StderrTruncated {
				fmt.Fprintf(os.Stderr, "addonctl: %s: output truncated to %d bytes per stream\n", args[0], helper.OutputLimit)
			}
			if res.TimedOut {
				fmt.Fprintf(os.Stderr, "addonctl: %s: killed at its timeout after %s\n", args[0], res.Duration.Round(time.Millisecond))
			}
			if res.ExitCode != 0 {
				return exitError{res.ExitCode}
			}
			return nil
		},
	}
	sf.add(c)
	return c
}
