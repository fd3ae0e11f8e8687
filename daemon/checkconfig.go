package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/addond/addond/capabilities"
	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/store"
)

// PolicyFile is the capability allow-list addond-updater enforces, beside
// the packaged config.
const PolicyFile = "capabilities.allow"

// CheckConfig checks the config at path the way `addond run` and a reload
// would take it, without touching the runtime root: the config itself,
// then what it names — the trust keys (and their scopes), the store URL
// and its CA file, the local overrides file — and the capability policy
// beside it. Each error says where: FILE:LINE:COLUMN: message (*config.PosError).
// No errors: the config is good to (re)load.
func CheckConfig(path string) []error {
	data, err := os.ReadFile(path)
	if err != nil {
		return []error{&config.PosError{Path: path, Line: 1, Col: 1, Err: err}}
	}
	cfg, err := config.Parse(data)
	if err != nil {
		return []error{config.Locate(path, data, err)}
	}
	at := func(key string, err error) error {
		return config.Locate(path, data, fmt.Errorf("key %q: %w", key, err))
	}
	var errs []error
	keys, err := signing.LoadKeyring(cfg.Trust.PublicKeys)
	if err != nil {
		errs = append(errs, at("trust.public_keys", err))
	}
	if len(cfg.Trust.AssignmentKeys) > 0 {
		docKeys, err := signing.LoadKeyring(cfg.Trust.AssignmentKeys)
		if err == nil {
			err = separateRoles(keys, docKeys)
		}
		if err != nil {
			errs = append(errs, at("trust.assignment_keys", err))
		}
	}
	if cfg.Store != "" {
		if _, err := store.Open(cfg.Store); err != nil {
			errs = append(errs, at("store", err))
		}
	}
	if p := cfg.LocalOverrides; p != "" {
		switch b, err := os.ReadFile(p); {
		case errors.Is(err, fs.ErrNotExist): // no overrides yet
		case err != nil:
			errs = append(errs, &config.PosError{Path: p, Line: 1, Col: 1, Err: err})
		default:
			if _, err := assignment.ParseOverrides(b); err != nil {
				errs = append(errs, config.Locate(p, b, err))
			}
		}
	}
	policy := filepath.Join(filepath.Dir(path), PolicyFile)
	switch b, err := os.ReadFile(policy); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		errs = append(errs, &config.PosError{Path: policy, Line: 1, Col: 1, Err: err})
	default:
		if _, err := capabilities.ParsePolicy(b); err != nil {
			pe := &config.PosError{Path: policy, Line: 1, Col: 1, Err: err}
			var le *capabilities.LineError
			if errors.As(err, &le) {
				pe.Line, pe.Err = le.Line, le.Err
			}
			errs = append(errs, pe)
		}
	}
	return errs
}
