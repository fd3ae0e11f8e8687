package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/addond/addond/daemon"
	"github.com/addond/addond/daemon/config"
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
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := sf.client()
			if err != nil {
				return err
			}
			st, err := cl.Status(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
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
			return tw.Flush()
		},
	}
	sf.add(c)
	c.Flags().BoolVar(&asJSON, "json", false, "print /v1/status as JSON")
	return c
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
		Use:   "reconcile",
		Short: "Ask addond to reconcile now",
		Args:  cobra.NoArgs,
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
		Use:   "retry ID",
		Short: "Forget an add-on's failed versions and try the assigned one again",
		Args:  cobra.ExactArgs(1),
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
		Use:   "run-helper ID [-- ARGS...]",
		Short: "Run an ephemeral helper; print its output and exit with its status",
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
