package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"strconv"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/reconcile"
	"github.com/addond/addond/supervisors"
	"github.com/addond/addond/supervisors/goplugin"
	"github.com/addond/addond/supervisors/helper"
	"github.com/addond/addond/supervisors/service"
	"github.com/addond/addond/supervisors/systemd"
	"github.com/addond/addond/supervisors/timer"
)

// Backends are the supervisors for one systemd.manager setting.
type Backends struct {
	// Supervisors by supervision model, for RunOptions.
	Supervisors map[string]supervisors.Supervisor
	// Helpers runs ephemeral helpers (nil without a manager).
	Helpers *helper.Backend
	// Manager is the connection to the manager add-ons run in (nil for
	// manager "none").
	Manager *systemd.Manager
	// System watches the system manager, where capped add-ons run when
	// addond is unprivileged (manager "user"); nil otherwise.
	System *systemd.Manager
	capped systemd.Privileged
}

// Orphans is RunOptions.Orphans for these backends (nil without a
// manager).
func (b *Backends) Orphans() func(context.Context, func(string) bool) ([]string, error) {
	if b.Manager == nil {
		return nil
	}
	return func(ctx context.Context, keep func(string) bool) ([]string, error) {
		stopped, err := systemd.StopOrphans(ctx, b.Manager, keep, nil)
		if b.System != nil && err == nil {
			var more []string
			more, err = systemd.StopOrphans(ctx, b.System, keep, b.capped)
			stopped = append(stopped, more...)
		}
		return stopped, err
	}
}

// Close drops the manager connection; units keep running.
func (b *Backends) Close() {
	if b.Manager != nil {
		b.Manager.Close()
	}
	if b.System != nil {
		b.System.Close()
	}
}

// NewBackends builds the supervisors the agent's config asks for:
// with systemd.manager "user" (addond's own user manager) or "system"
// (addond as root; units run as systemd.addon_user) every model runs as
// transient units; with "none" go-plugin sidecars run as children and
// the unit models are missing (reported unsupported).
func (a *Agent) NewBackends(log *slog.Logger) (*Backends, error) {
	notify := a.Notify
	cfg := a.cfg()
	if cfg.Systemd.Manager == "none" {
		return &Backends{Supervisors: map[string]supervisors.Supervisor{
			assignment.SupervisionAgentSidecar: goplugin.New(goplugin.Options{Log: log, Notify: notify}),
		}}, nil
	}
	target := systemd.Target{UID: os.Getuid()}
	var owner *systemd.Owner
	if cfg.Systemd.Manager == "system" {
		if os.Geteuid() != 0 {
			return nil, errors.New(`systemd.manager "system" needs addond to run as root; use "user"`)
		}
		target = systemd.Target{System: true, User: cfg.Systemd.AddonUser}
		u, err := user.Lookup(cfg.Systemd.AddonUser)
		if err != nil {
			return nil, fmt.Errorf("systemd.addon_user %q: %w", cfg.Systemd.AddonUser, err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		owner = &systemd.Owner{UID: uid, GID: gid}
	}
	m := systemd.NewManager(target, log)
	opts := systemd.Options{
		Manager: m, Log: log, Notify: notify,
		Paths: systemd.Paths{RuntimeRoot: cfg.RuntimeRoot, StatusSocket: cfg.StatusSocket, Owner: owner},
	}
	helpers := helper.New(opts)
	b := &Backends{
		Manager: m,
		Helpers: helpers,
		Supervisors: map[string]supervisors.Supervisor{
			assignment.SupervisionAgentSidecar: goplugin.New(goplugin.Options{Log: log, Notify: notify,
				Units: &goplugin.UnitOptions{Manager: m, Paths: opts.Paths}}),
			assignment.SupervisionSystemdService:  service.New(opts),
			assignment.SupervisionSystemdTimer:    timer.New(opts),
			assignment.SupervisionEphemeralHelper: helpers,
		},
	}
	if !target.System {
		if err := a.cappedBackends(b, opts, log); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// cappedBackends adds the backends of capped add-ons under an
// unprivileged addond: services and sidecars whose units addond-updater
// makes in the system manager, watched there read-only. (Timers and
// helpers with os_capabilities are reported unsupported.)
func (a *Agent) cappedBackends(b *Backends, opts systemd.Options, log *slog.Logger) error {
	group, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	if err != nil {
		return fmt.Errorf("addond's group: %w", err)
	}
	b.System = systemd.NewManager(systemd.Target{System: true}, log)
	b.capped = cappedUnits{a: a}
	opts.Manager, opts.Privileged = b.System, b.capped
	b.Supervisors[assignment.SupervisionAgentSidecar+reconcile.CappedSuffix] = goplugin.New(goplugin.Options{Log: log, Notify: opts.Notify,
		Units: &goplugin.UnitOptions{Manager: b.System, Paths: opts.Paths, Privileged: b.capped, SocketGroup: group.Name}})
	b.Supervisors[assignment.SupervisionSystemdService+reconcile.CappedSuffix] = service.New(opts)
	return nil
}
