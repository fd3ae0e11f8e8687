package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/addond/addond/daemon"
	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/daemon/diagnostics"
	"github.com/addond/addond/supervisors/systemd"
)

func newDiagnostics() *cobra.Command {
	var sf socketFlags
	var out string
	c := &cobra.Command{
		Use:   "diagnostics [--out FILE]",
		Short: "Write a .tar.gz of what helps diagnose this host, secrets left out",
		Long: `diagnostics gathers into one .tar.gz: addond's status, its config, the
overrides and the capability policy, the persisted state (the add-ons' state
files, the cached assignment document, a listing of the runtime root), the
add-on units and their properties, the last journal lines of addond and of each
add-on, versions, and the fingerprints of the trust keys. It prints the
bundle's path.

Secrets stay out: credential files and process environments are never read;
every value under an add-on's config_json, and every value whose key names a
secret (password, token, key, credential…), is replaced by <redacted>.
INDEX.txt lists every member, and what could not be gathered and why. Run it
as root to include the journal and the units.`,
		Example: `  sudo addonctl diagnostics
  sudo addonctl diagnostics --out /tmp/edge-01.tar.gz && tar -tzf /tmp/edge-01.tar.gz`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			src := sources(cmd.Context(), &sf)
			if out == "" {
				host, _ := os.Hostname()
				out = fmt.Sprintf("addond-diagnostics-%s-%s.tar.gz", host, time.Now().UTC().Format("20060102T150405Z"))
			}
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return err
			}
			b := diagnostics.NewBundle(f, time.Now())
			err = diagnostics.Collect(cmd.Context(), b, src)
			if cerr := b.Close(); err == nil {
				err = cerr
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				os.Remove(out)
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), out)
			return nil
		},
	}
	sf.add(c)
	c.Flags().StringVar(&out, "out", "", "bundle to write (default: addond-diagnostics-HOST-TIME.tar.gz here); never overwritten")
	return c
}

// unitProperties are the unit properties a bundle takes: state, results,
// restarts, resources, where the unit comes from. Not Environment= or
// ExecStart= (an operator's drop-in may hold a proxy password; an
// add-on's arguments are the publisher's).
const unitProperties = "Id,Description,LoadState,ActiveState,SubState,Result,MainPID,ExecMainStatus,ExecMainCode," +
	"NRestarts,ActiveEnterTimestamp,InactiveEnterTimestamp,StateChangeTimestamp,FragmentPath,DropInPaths,UnitFileState," +
	"User,MemoryCurrent,MemoryMax,MemoryHigh,CPUUsageNSec,TasksCurrent,TasksMax,NotifyAccess,WatchdogUSec,StatusText"

// sources finds what the bundle is made of: the config (when it can be
// read), and through it the runtime root, trust keys, policy, overrides
// and manager; the add-ons from the status (else the runtime root).
func sources(ctx context.Context, sf *socketFlags) diagnostics.Sources {
	src := diagnostics.Sources{
		Versions: map[string]string{"addonctl": daemon.Version, "go": runtime.Version(), "platform": runtime.GOOS + "/" + runtime.GOARCH},
		Commands: map[string][]string{
			"system/os-release.txt": {"cat", "/etc/os-release"},
			"system/uname.txt":      {"uname", "-a"},
			"units/addond.txt":      {"systemctl", "show", "--no-pager", "-p", unitProperties, "addond.service", "addond-updater.socket", "addond-updater.service"},
			"logs/addond.txt":       {"journalctl", "--no-pager", "-o", "short-iso-precise", "-n", "1000", "-u", "addond.service", "-u", "addond-updater.service"},
		},
	}
	cfg := &config.Config{RuntimeRoot: "/var/lib/addond", Systemd: config.Systemd{Manager: "user", AddonUser: "addond"}}
	if data, err := os.ReadFile(sf.config); err == nil {
		src.ConfigPath, src.Config = sf.config, data
		if c, err := config.Parse(data); err == nil {
			cfg = c
		}
		src.PolicyFile = filepath.Join(filepath.Dir(sf.config), daemon.PolicyFile)
	} else if !errors.Is(err, fs.ErrNotExist) {
		src.Versions["config"] = err.Error()
	}
	src.RuntimeRoot, src.Overrides = cfg.RuntimeRoot, cfg.LocalOverrides
	src.TrustKeys = append(append([]string{}, cfg.Trust.PublicKeys...), cfg.Trust.AssignmentKeys...)

	var ids []string
	// One status, asked once: the bundle's status.json, addond's version
	// and the add-ons whose state and logs are gathered.
	if cl, err := sf.client(); err == nil {
		st, err := cl.Status(ctx)
		src.Status = func(context.Context) ([]byte, error) {
			if err != nil {
				return nil, err
			}
			return json.Marshal(st)
		}
		if err == nil {
			src.Versions["addond"] = st.Version
			for _, a := range st.Addons {
				ids = append(ids, a.AddonID)
			}
		}
	}
	if ids == nil {
		entries, _ := os.ReadDir(filepath.Join(cfg.RuntimeRoot, "addons"))
		for _, e := range entries {
			ids = append(ids, e.Name())
		}
	}
	// Ids name members and paths: only valid ones (a status or a runtime
	// root that says otherwise is not trusted with a file name).
	ids = slices.DeleteFunc(ids, func(id string) bool { return assignment.ValidAddonID(id) != nil })
	src.AddonIDs = ids

	// The add-ons' units, in the manager addond uses.
	systemctl := []string{"systemctl"}
	unitField := "_SYSTEMD_UNIT"
	if cfg.Systemd.Manager == "user" {
		systemctl = append(systemctl, "--user", "-M", cfg.Systemd.AddonUser+"@")
		unitField = "_SYSTEMD_USER_UNIT"
	}
	if cfg.Systemd.Manager != "none" {
		src.Commands["units/addons-list.txt"] = append(append([]string{}, systemctl...), "list-units", "--all", "--no-pager", "addond-*")
		src.Commands["units/addons-show.txt"] = append(append([]string{}, systemctl...), "show", "--no-pager", "-p", unitProperties, "addond-*")
	}
	// Capped add-ons run in the system manager whatever addond's is.
	src.Commands["units/capped-show.txt"] = []string{"systemctl", "show", "--no-pager", "-p", unitProperties, "addond-*"}
	// Journal matches only from addond's uid (anyone can send ADDON_ID=
	// or run a user unit of that name), or from the system manager.
	uid := ""
	if u, err := user.Lookup(cfg.Systemd.AddonUser); err == nil {
		uid = u.Uid
	}
	for _, id := range ids {
		// What addond said about it, and what it wrote itself.
		argv := []string{"journalctl", "--no-pager", "-o", "short-iso-precise", "-n", "500", "ADDON_ID=" + id}
		if uid != "" {
			argv = append(argv, "_UID="+uid)
		}
		argv = append(argv, "+", unitField+"="+systemd.ServiceName(id))
		if uid != "" {
			argv = append(argv, "_UID="+uid)
		}
		if unitField != "_SYSTEMD_UNIT" {
			argv = append(argv, "+", "_SYSTEMD_UNIT="+systemd.ServiceName(id))
		}
		src.Commands["logs/addon-"+id+".txt"] = argv
	}
	return src
}
