package daemon

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/addond/addond/capabilities"
	"github.com/addond/addond/supervisors/systemd"
)

// cappedUnits is systemd.Privileged over addond-updater: under an
// unprivileged addond, a capped add-on's unit is the helper's to make, in
// the system manager, from its own template. addond says which verified
// copy to run, with what arguments, configuration and description.
type cappedUnits struct {
	a     *Agent
	paths capabilities.Config // where the runtime directories are
}

var _ systemd.Privileged = cappedUnits{}

func (p cappedUnits) client() *capabilities.Client {
	return &capabilities.Client{Socket: p.a.cfg().UpdaterSocket, Timeout: time.Minute}
}

// unavailable marks the updater's absence as the environment's, never the
// version's fault (as for capped copies).
func unavailable(id string, err error) error {
	if errors.Is(err, capabilities.ErrUnavailable) {
		return fmt.Errorf("addon %q: %w: %v", id, ErrCapsUnavailable, err)
	}
	return err
}

func (p cappedUnits) Prepare(ctx context.Context, id string) error {
	return unavailable(id, p.client().Prepare(ctx, id))
}

func (p cappedUnits) Start(ctx context.Context, u systemd.CappedStart) error {
	spec := u.Spec
	dir := filepath.Join(p.a.privilegedRoot, spec.AddonID, spec.Version)
	if filepath.Dir(spec.Binary) != dir {
		return fmt.Errorf("addon %q: %s is not a capped copy (in %s)", spec.AddonID, spec.Binary, dir)
	}
	req := capabilities.StartRequest{
		AddonID: spec.AddonID, Version: spec.Version, File: filepath.Base(spec.Binary),
		Args: spec.Args, Config: spec.ConfigJSON, Description: u.Description,
		Sidecar: u.Sidecar, Env: u.Env, StatusSocket: p.a.cfg().StatusSocket,
	}
	if r := u.Restart; r != nil {
		req.Restart = &capabilities.Restart{Delay: r.Delay, Interval: r.Interval, Burst: r.Burst}
	}
	if r := spec.Resources; r != nil {
		req.Resources = &capabilities.Resources{CPUMaxPercent: r.CPUMaxPercent, MemoryMaxBytes: r.MemoryMaxBytes, MemoryHighBytes: r.MemoryHighBytes, TasksMax: r.TasksMax}
	}
	_, err := p.client().Start(ctx, req)
	return unavailable(spec.AddonID, err)
}

func (p cappedUnits) Stop(ctx context.Context, id string) error {
	return unavailable(id, p.client().Stop(ctx, id))
}

func (p cappedUnits) SocketDir(id string) string { return p.paths.SocketDir(id) }

func (p cappedUnits) HandshakeFile(id string) string { return p.paths.HandshakeFile(id) }
