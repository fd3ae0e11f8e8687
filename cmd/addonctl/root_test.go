package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/addond/addond/daemon"
)

// TestEveryCommandHasAnExample: `--help` of every command shows how it is
// used, not only what its flags are.
func TestEveryCommandHasAnExample(t *testing.T) {
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Name() == "help" || sub.Name() == "completion" || sub.Hidden {
				continue
			}
			n++
			if strings.TrimSpace(sub.Example) == "" {
				t.Errorf("%q has no example", sub.CommandPath())
			} else if !strings.Contains(sub.Example, sub.CommandPath()) {
				t.Errorf("%q: its example does not use it:\n%s", sub.CommandPath(), sub.Example)
			}
			walk(sub)
		}
	}
	walk(newRoot())
	if n < 18 {
		t.Errorf("only %d commands", n)
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"version"}} {
		root := newRoot()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(args)
		if err := root.Execute(); err != nil || out.String() != "addonctl "+daemon.Version+"\n" {
			t.Errorf("addonctl %v: %q, %v", args, out.String(), err)
		}
	}
}
