// Command addond-updater is addond's only privileged part: run as root
// (socket-activated by addond-updater.socket), it puts on a verified,
// root-owned copy of a staged add-on binary the file capabilities its
// publisher signed for and the local policy allows. It trusts its own
// configuration, keys and policy — never its caller.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/spf13/cobra"

	"github.com/addond/addond/capabilities"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "addond-updater:", err)
		os.Exit(1)
	}
}

// config flags shared by serve and apply.
type configFlags struct {
	capabilities.Config
	trust string
}

func (c *configFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&c.RuntimeRoot, "runtime-root", "/var/lib/addond", "the agent's runtime root, where staged binaries are")
	f.StringVar(&c.PrivilegedRoot, "privileged-root", capabilities.DefaultPrivilegedRoot, "the root-owned tree of capped copies")
	f.StringVar(&c.trust, "trust", capabilities.DefaultTrustDir, "trusted publisher keys: a directory or key file (comma-separated for several)")
	f.StringVar(&c.Policy, "policy", capabilities.DefaultPolicyPath, "the allow-list of capabilities")
	f.StringVar(&c.AgentUser, "agent-user", "addond", "the user addond runs as")
}

func (c *configFlags) config() capabilities.Config {
	cfg := c.Config
	cfg.Trust = strings.Split(c.trust, ",")
	return cfg
}

func requireRoot(cmd *cobra.Command, _ []string) error {
	if os.Geteuid() != 0 {
		return errors.New("must run as root (it writes a root-owned tree and sets file capabilities)")
	}
	return nil
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "addond-updater",
		Short:         "Put signed file capabilities on root-owned copies of addond's staged add-ons",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServe(), newApply(), &cobra.Command{
		Use: "version", Short: "Print the version", Args: cobra.NoArgs,
		Run: func(*cobra.Command, []string) { fmt.Println("addond-updater", capabilities.Version) },
	})
	for _, extra := range extraCommands {
		root.AddCommand(extra(root))
	}
	return root
}

func newServe() *cobra.Command {
	var (
		cf     configFlags
		listen string
		cgroup string
		idle   time.Duration
	)
	c := &cobra.Command{
		Use:     "serve",
		Short:   "Answer addond on the updater socket (socket-activated, or --listen)",
		Args:    cobra.NoArgs,
		PreRunE: requireRoot,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			cfg := cf.config()
			var ln net.Listener
			if listen != "" {
				l, err := listenUnix(listen, cfg.AgentUser)
				if err != nil {
					return err
				}
				ln = l
			} else {
				ls, err := activation.Listeners()
				if err != nil {
					return err
				}
				if len(ls) != 1 {
					return fmt.Errorf("socket activation passed %d sockets, want 1 (or use --listen PATH)", len(ls))
				}
				ln = ls[0]
			}
			defer ln.Close()
			s := &capabilities.Server{Config: cfg, AgentCgroup: cgroup, Version: capabilities.Version, Log: log, IdleExit: idle}
			// What trust and policy no longer allow goes at every start,
			// and the units that run it stop.
			s.Revalidate(cmd.Context())
			log.Info("serving", "socket", ln.Addr().String(), "agent_cgroup", s.AgentCgroup)
			return s.Serve(cmd.Context(), ln)
		},
	}
	cf.add(c)
	c.Flags().StringVar(&listen, "listen", "", "listen on this socket path instead of a socket-activated one")
	c.Flags().StringVar(&cgroup, "agent-cgroup", capabilities.DefaultAgentCgroup, "the agent's service cgroup: the only non-root callers served")
	c.Flags().DurationVar(&idle, "idle-exit", time.Minute, "exit after this long without a request (0: never)")
	return c
}

// listenUnix makes the socket root:<agent group> 0660.
func listenUnix(path, agentUser string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	gid := 0
	if u, err := user.Lookup(agentUser); err == nil {
		gid, _ = strconv.Atoi(u.Gid)
	}
	if err := os.Chown(path, 0, gid); err != nil {
		ln.Close()
		return nil, err
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

func newApply() *cobra.Command {
	var (
		cf                           configFlags
		id, ver, file, pkg, platform string
		caps                         []string
	)
	c := &cobra.Command{
		Use:     "apply",
		Short:   "Make the capped copy of one staged binary, by hand (what serve does for addond)",
		Args:    cobra.NoArgs,
		PreRunE: requireRoot,
		RunE: func(cmd *cobra.Command, _ []string) error {
			raw, err := os.ReadFile(pkg)
			if err != nil {
				return err
			}
			sig, err := os.ReadFile(pkg + ".sig")
			if err != nil {
				return fmt.Errorf("the package's signature must sit beside it: %w", err)
			}
			a, err := capabilities.Apply(cf.config(), capabilities.ApplyRequest{
				AddonID: id, Version: ver, File: file, Platform: platform, Caps: caps,
				Package: raw, Signature: string(sig),
			})
			if err != nil {
				return err
			}
			fmt.Printf("%s %s\n", a.Path, strings.Join(a.Caps, ","))
			return nil
		},
	}
	cf.add(c)
	f := c.Flags()
	f.StringVar(&id, "addon", "", "add-on id")
	f.StringVar(&ver, "version", "", "version")
	f.StringVar(&file, "file", "", "the staged binary's file name")
	f.StringVar(&pkg, "package", "", "the signed package.json (its .sig beside it)")
	f.StringVar(&platform, "platform", "", "os/arch of the artifact (default: this host's)")
	f.StringSliceVar(&caps, "caps", nil, "capabilities to grant (default: all the package grants)")
	for _, n := range []string{"addon", "version", "file", "package"} {
		c.MarkFlagRequired(n)
	}
	return c
}

// extraCommands are added to the root by files built with tags (man.go).
var extraCommands []func(root *cobra.Command) *cobra.Command
