package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/addond/addond/daemon"
)

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "addonctl",
		Short:         "Publish, assign and operate addond add-ons",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       daemon.Version,
	}
	root.SetVersionTemplate("addonctl {{.Version}}\n")
	root.AddGroup(
		&cobra.Group{ID: "operator", Title: "Operator commands:"},
		&cobra.Group{ID: "publisher", Title: "Publisher commands:"},
	)
	for _, c := range []*cobra.Command{newStatus(), newReconcile(), newRetry(), newRunHelper(), newOverride(), newDiagnostics(), newFleet()} {
		c.GroupID = "operator"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{newKeygen(), newSign(), newVerify(), newPublish(), newAssign(), newRollout()} {
		c.GroupID = "publisher"
		root.AddCommand(c)
	}
	version := &cobra.Command{
		Use:     "version",
		Short:   "Print the version",
		Example: "  addonctl version",
		Args:    cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "addonctl", daemon.Version)
		},
	}
	root.AddCommand(version)
	for _, extra := range extraCommands {
		root.AddCommand(extra(root))
	}
	return root
}

// extraCommands are added to the root by files built with tags (man.go).
var extraCommands []func(root *cobra.Command) *cobra.Command
