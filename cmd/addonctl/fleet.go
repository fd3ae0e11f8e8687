package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/addond/addond/daemon/fleet"
	"github.com/addond/addond/daemon/store"
)

func newFleet() *cobra.Command {
	c := &cobra.Command{
		Use:     "fleet",
		Example: `  addonctl fleet status --store 's3://addons?endpoint=minio.example:9000'`,
		Short:   "The fleet, as its agents report it to the store",
	}
	c.AddCommand(newFleetStatus(), newFleetPolicy())
	return c
}

func newFleetStatus() *cobra.Command {
	var (
		storeURL string
		asJSON   bool
		stale    time.Duration
	)
	c := &cobra.Command{
		Use:   "status --store URL [--json] [--stale DURATION]",
		Short: "Every agent's last report, and each add-on's versions and states across the fleet",
		Long: `Reads agents/<agent>/status.json of every agent in the store (addond writes it
when something changes, and every report.interval otherwise) and shows each
agent, then each add-on by assigned version and state.

An agent is STALE when the store took its last report more than --stale ago
(measured by the store's clock, not the agent's). Exits 0 when every agent
is fresh, ready, on a confirmed document, and every add-on it runs is running
and healthy (or disabled); 1 otherwise.`,
		Example: `  addonctl fleet status --store 's3://addons?endpoint=minio.example:9000'
  addonctl fleet status --store file:///srv/addons --stale 1h --json | jq '.agents[] | select(.problems)'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if stale <= 0 {
				return fmt.Errorf("--stale %v: want a positive duration", stale)
			}
			st, err := store.Open(storeURL)
			if err != nil {
				return err
			}
			if store.ReadOnly(st) {
				return fmt.Errorf("%s: %w: fleet status lists the reports under agents/, which an http(s) store cannot, and agents that read one write none; give the s3:// or file:// URL the tree is published to", st, store.ErrReadOnly)
			}
			found, err := readReports(cmd.Context(), st)
			if err != nil {
				return err
			}
			sum := fleet.Summarize(found, time.Now(), stale)
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(sum); err != nil {
					return err
				}
			} else if err := printFleet(out, sum, time.Now()); err != nil {
				return err
			}
			if !sum.OK {
				return exitError{1}
			}
			return nil
		},
	}
	c.Flags().StringVar(&storeURL, "store", "", "store URL (s3://… or file://…)")
	c.Flags().BoolVar(&asJSON, "json", false, "print the fleet as JSON")
	c.Flags().DurationVar(&stale, "stale", fleet.DefaultStale, "an agent whose last report is older than this is stale")
	c.MarkFlagRequired("store")
	return c
}

// readReports lists agents/ and reads every agent's report, a few at a
// time. A report that cannot be read or parsed is its agent's problem, not
// the command's; a store that cannot be listed is.
func readReports(ctx context.Context, st store.Store) ([]fleet.Found, error) {
	var found []fleet.Found
	reported, assigned := map[string]bool{}, []string{}
	err := st.List(ctx, fleet.ReportsPrefix, func(i store.Info) error {
		if agent := fleet.AgentOfKey(i.Key); agent != "" {
			found = append(found, fleet.Found{Agent: agent, SeenAt: i.ModTime})
			reported[agent] = true
		} else if agent := fleet.AgentOfDocumentKey(i.Key); agent != "" {
			assigned = append(assigned, agent)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing the agents' reports in %s: %w", st, err)
	}
	n := len(found) // reports to read; the agents that never reported follow
	for _, a := range assigned {
		if !reported[a] {
			found = append(found, fleet.Found{Agent: a})
		}
	}
	const parallel = 16
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range found[:n] {
		f := &found[i]
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			data, _, err := store.ReadSmall(ctx, st, fleet.ReportKey(f.Agent), fleet.MaxReportSize, store.OpenOptions{})
			if err != nil {
				f.Err = err
				return
			}
			r, err := fleet.ParseReport(data, f.Agent)
			if err != nil {
				f.Err = err
				return
			}
			f.Report = &r
		})
	}
	wg.Wait()
	return found, ctx.Err()
}

// printFleet is the table: one line per agent, one per add-on version,
// and the counts. Every string from a report passes through printable: the
// store is not trusted with the operator's terminal.
func printFleet(out io.Writer, sum fleet.Status, now time.Time) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AGENT\tLAST REPORT\tADDOND\tSERIAL\tADD-ONS\tSTATUS")
	for _, a := range sum.Agents {
		verdict := "ok"
		switch {
		case a.Stale:
			verdict = "STALE"
		case len(a.Problems) == 1:
			verdict = truncate(printable(a.Problems[0]), 100)
		case len(a.Problems) > 1:
			verdict = fmt.Sprintf("%s (and %d more)", truncate(printable(a.Problems[0]), 80), len(a.Problems)-1)
		}
		seen := "never"
		if !a.SeenAt.IsZero() {
			seen = ago(now, a.SeenAt)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", a.AgentID, seen, dash(printable(a.AddondVersion)), a.Serial, len(a.Addons), verdict)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(sum.Addons) > 0 {
		fmt.Fprintln(out)
		fmt.Fprintln(tw, "ADDON\tVERSION\tAGENTS BY STATE")
		for _, id := range slices.Sorted(maps.Keys(sum.Addons)) {
			for _, v := range slices.Sorted(maps.Keys(sum.Addons[id])) {
				states := sum.Addons[id][v]
				var parts []string
				for _, s := range slices.Sorted(maps.Keys(states)) {
					parts = append(parts, fmt.Sprintf("%s %d", printable(s), states[s]))
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", id, v, strings.Join(parts, ", "))
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	ok, stale, problems := sum.Counts()
	_, err := fmt.Fprintf(out, "\n%d agents: %d ok, %d stale, %d with problems\n", len(sum.Agents), ok, stale, problems)
	return err
}

// printable replaces what a terminal would act on (control and format
// characters: escapes, bidi overrides) with '?'.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '?'
	}, s)
}

func newFleetPolicy() *cobra.Command {
	var storeURL, agent string
	c := &cobra.Command{
		Use:   "policy --store s3://BUCKET[/PREFIX]?... --agent AGENT",
		Short: "Print the S3 policy of one agent's identity: read artifacts, packages and its own assignments; write only its own report",
		Long: `Prints an IAM policy (JSON) for the credentials of one agent. With it, the
agent reads artifacts/, packages/ and its own agents/AGENT/assignments.json
(and .sig), and writes only agents/AGENT/status.json: it cannot change another
agent's report, any assignment, or any artifact. Give every agent an identity
of its own with this policy (docs/FLEET.md shows it with mc).`,
		Example: `  addonctl fleet policy --store 's3://addons?endpoint=minio.example:9000' --agent edge-01 > edge-01.json
  mc admin policy create myminio addond-edge-01 edge-01.json
  mc admin user add myminio edge-01 "$SECRET"
  mc admin policy attach myminio addond-edge-01 --user edge-01`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			u, err := store.ParseURL(storeURL)
			if err != nil {
				return err
			}
			if u.Scheme != "s3" {
				return fmt.Errorf("--store %s: policies are for s3:// stores (a file:// store is guarded by file permissions)", storeURL)
			}
			p, err := fleet.AgentPolicy(u.S3.Bucket, u.S3.Prefix, agent)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(p)
			return err
		},
	}
	c.Flags().StringVar(&storeURL, "store", "", "the agents' store URL (s3://…)")
	c.Flags().StringVar(&agent, "agent", "", "the agent id")
	c.MarkFlagRequired("store")
	c.MarkFlagRequired("agent")
	return c
}
