// Command addond is the add-on delivery and supervision daemon.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"

	"github.com/addond/addond/daemon"
	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/daemon/logging"
	"github.com/addond/addond/supervisors/toggle"
)

// errNotConverged makes `addond stage` (and check-config) exit 1 after
// its errors were printed.
var errNotConverged = errors.New("not converged")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, errNotConverged):
		os.Exit(1)
	default:
		fmt.Fprintln(os.Stderr, "addond:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "addond",
		Short:         "Deliver, verify and supervise native add-ons",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	var cfgPath string
	stage := &cobra.Command{
		Use:   "stage",
		Short: "Fetch, verify and stage every enabled pushed artifact once, then exit",
		Long: `stage runs one delivery reconcile: it refreshes the assignment document,
applies local overrides, and fetches, verifies and stages every enabled pushed
artifact, making each one current. It exits 0 when everything converged and 1
otherwise; every error names the add-on and the reason.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runStage(cmd.Context(), cfgPath)
		},
	}
	stage.Flags().StringVar(&cfgPath, "config", config.DefaultPath, "config file")
	version := &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "addond", daemon.Version)
		},
	}
	var runCfg string
	run := &cobra.Command{
		Use:   "run",
		Short: "Run the daemon: deliver, supervise, promote and roll back add-ons",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDaemon(cmd.Context(), runCfg)
		},
	}
	run.Flags().StringVar(&runCfg, "config", config.DefaultPath, "config file")
	var checkCfg string
	check := &cobra.Command{
		Use:   "check-config",
		Short: "Check a config, and the keys, store, overrides and policy it names, without loading it",
		Long: `check-config reads the config as "addond run" and a reload would, and
checks what it names: the trust keys and their scopes, the store URL and its
CA file, the local overrides file, and the capability policy beside it. It
exits 0 when all of it is good, 1 otherwise, with one line per error:
FILE:LINE:COLUMN: message. The packaged unit runs it before every start and
reload, so a bad config never replaces a running good one.`,
		Example: `  addond check-config
  addond check-config --config /etc/addond/addond.json.new && mv /etc/addond/addond.json.new /etc/addond/addond.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			errs := daemon.CheckConfig(checkCfg)
			// Under systemd (ExecStartPre=, ExecReload=) each error is a
			// journal entry of priority err: "<3>" is the level prefix
			// systemd's stream reader takes (SyslogLevelPrefix=).
			prefix := ""
			if logging.UnderJournal() {
				prefix = "<3>"
			}
			for _, err := range errs {
				fmt.Fprintln(cmd.ErrOrStderr(), prefix+err.Error())
			}
			if len(errs) > 0 {
				return errNotConverged
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: valid\n", checkCfg)
			return nil
		},
	}
	check.Flags().StringVar(&checkCfg, "config", config.DefaultPath, "config file")
	root.AddCommand(run, stage, check, version)
	for _, extra := range extraCommands {
		root.AddCommand(extra(root))
	}
	return root
}

// init makes addond non-dumpable before main runs: add-ons share addond's
// uid, and none may ptrace it, read its memory, or act from its cgroup.
// The packaged binary is execute-only (0711), which makes the kernel set
// it at exec already; this covers a binary installed otherwise, as early
// as Go code runs.
func init() {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "addond: prctl(PR_SET_DUMPABLE):", err)
		os.Exit(1)
	}
}

func runDaemon(ctx context.Context, cfgPath string) error {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	level := logLevel()
	if os.Getenv("ADDOND_LOG_LEVEL") == "" {
		level = slog.LevelInfo
	}
	// Native journal entries under systemd (priorities, ADDON_ID…),
	// text otherwise.
	addons := &logging.Addons{}
	log := slog.New(logging.New(os.Stderr, level, addons))
	agent, err := daemon.Open(cfg, daemon.Options{Log: log, Addons: addons})
	if err != nil {
		return err
	}
	defer agent.Close()

	backends, err := agent.NewBackends(log)
	if err != nil {
		return err
	}
	defer backends.Close()
	backends.Supervisors[assignment.SupervisionConfigToggle] = toggle.New(toggle.Options{Log: log, Notify: agent.Notify,
		Features: map[string]toggle.Feature{daemon.HeartbeatFeature: agent.Heartbeat()}})
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := make(chan *config.Config, 1)
	go func() {
		for range hup {
			cfg, err := config.Load(cfgPath)
			if err != nil {
				log.Error("SIGHUP: config not reloaded", "error", err)
				cfg = nil // still re-read the document and overrides
			}
			select {
			case reload <- cfg:
			default:
			}
		}
	}()
	watchdog, _ := sddaemon.SdWatchdogEnabled(false)
	return agent.Run(ctx, daemon.RunOptions{
		Supervisors: backends.Supervisors,
		Orphans:     backends.Orphans(),
		Notify: func(state string) {
			if err := sdNotify(state); err != nil {
				log.Warn("sd_notify", "error", err)
			}
		},
		Watchdog: watchdog,
		Reload:   reload,
		Helpers:  helpers(backends),
	})
}

// helpers is the helper runner, or nil (an untyped nil: the daemon tells
// "no helpers here" from a nil interface).
func helpers(b *daemon.Backends) daemon.HelperRunner {
	if b.Helpers == nil {
		return nil
	}
	return b.Helpers
}

func runStage(ctx context.Context, cfgPath string) error {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	log := slog.New(logging.New(os.Stderr, logLevel(), nil))
	agent, err := daemon.Open(cfg, daemon.Options{Log: log})
	if err != nil {
		return err
	}
	defer agent.Close()
	rep, err := agent.Stage(ctx)
	if err != nil {
		return err
	}
	for _, a := range rep.Addons {
		switch {
		case a.Err == nil:
			fmt.Printf("%-24s %-12s %s\n", a.AddonID, a.Version, a.State)
		case a.FromLKG:
			fmt.Printf("%-24s %-12s failed, keeping last-known-good %s\n", a.AddonID, a.Version, a.ActiveVersion)
		default:
			fmt.Printf("%-24s %-12s failed\n", a.AddonID, a.Version)
		}
	}
	errs := rep.Errors()
	for _, e := range errs {
		fmt.Fprintln(os.Stderr, "addond:", e)
	}
	if !rep.Converged() {
		return errNotConverged
	}
	return nil
}

func logLevel() slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(os.Getenv("ADDOND_LOG_LEVEL"))); err != nil {
		return slog.LevelWarn
	}
	return l
}

// sdNotify sends state to the service manager as sd_notify(3) does, but
// never holds addond's loop for long: a manager that does not read its
// notification socket (its queue full) costs a message, not the daemon.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetWriteDeadline(time.Now().Add(250 * time.Millisecond))
	_, err = conn.Write([]byte(state))
	return err
}

// extraCommands are added to the root by files built with tags (man.go).
var extraCommands []func(root *cobra.Command) *cobra.Command
