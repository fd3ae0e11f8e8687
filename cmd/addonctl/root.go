package main

import (
	"github.com/spf13/cobra"
)

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "addonctl",
		Short:         "Publish, assign and operate addond add-ons",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddGroup(
		&cobra.Group{ID: "operator", Title: "Operator commands:"},
		&cobra.Group{ID: "publisher", Title: "Publisher commands:"},
	)
	for _, c := range []*cobra.Command{newStatus(), newReconcile(), newRetry(), newRunHelper(), newOverride(), newFleet()} {
		c.GroupID = "operator"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{newKeygen(), newSign(), newVerify(), newPublish(), newAssign(), newRollout()} {
		c.GroupID = "publisher"
		root.AddCommand(c)
	}
	return root
}
