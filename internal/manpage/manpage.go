//go:build manpages

// Package manpage generates a binary's man pages from its own command
// tree with cobra's doc package (one page per command, as kubectl and
// docker ship them). It is built only with the "manpages" tag: packaging
// builds generator binaries with it; the binaries it ships do not have it.
package manpage

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// Command is the hidden "__man" command that writes root's pages, in
// section, into --dir.
func Command(root *cobra.Command, section string) *cobra.Command {
	var dir, date, source, manual string
	c := &cobra.Command{
		Use:    "__man --dir DIR --date YYYY-MM-DD --source TEXT --manual TEXT",
		Short:  "Write the man pages",
		Hidden: true,
		Args:   cobra.NoArgs,
		// No root checks or config loading: it only writes text.
		PersistentPreRunE: func(*cobra.Command, []string) error { return nil },
		RunE: func(*cobra.Command, []string) error {
			d, err := time.Parse(time.DateOnly, date)
			if err != nil {
				return fmt.Errorf("--date: %w", err)
			}
			root.DisableAutoGenTag = true // the date is the release's, given
			for _, sub := range root.Commands() {
				if sub.Name() == "completion" {
					sub.Hidden = true // the packages ship the scripts themselves
				}
			}
			return doc.GenManTree(root, &doc.GenManHeader{Section: section, Date: &d, Source: source, Manual: manual}, dir)
		},
	}
	f := c.Flags()
	f.StringVar(&dir, "dir", "", "directory to write the pages into")
	f.StringVar(&date, "date", "", "the pages' date (the release's)")
	f.StringVar(&source, "source", "", "the pages' source, e.g. \"addond 1.0.0\"")
	f.StringVar(&manual, "manual", "addond manual", "the manual's title")
	c.MarkFlagRequired("dir")
	c.MarkFlagRequired("date")
	return c
}
