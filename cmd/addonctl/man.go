//go:build manpages

package main

import (
	"github.com/spf13/cobra"

	"github.com/addond/addond/internal/manpage"
)

// Built with -tags manpages (packaging/build.sh): the hidden __man command
// writes this binary's man pages, section 1, from its command tree.
func init() {
	extraCommands = append(extraCommands, func(root *cobra.Command) *cobra.Command { return manpage.Command(root, "1") })
}
