package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/config"
	"github.com/addond/addond/internal/atomicfile"
)

func newOverride() *cobra.Command {
	c := &cobra.Command{
		Use: "override",
		Example: `  addonctl override set pingsweep --enabled=false
  addonctl override show
  addonctl override clear pingsweep`,
		Short: "Edit the local overrides file (addons.local.json) and reconcile",
		Long: `override edits the local_overrides file named in addond's config: each entry
patches only the fields it names onto the pushed assignment with the same
addon_id. The file is validated and replaced atomically, then addond is asked
to reconcile.`,
	}
	c.AddCommand(newOverrideSet(), newOverrideClear(), newOverrideShow())
	return c
}

// overridesFile returns the path of the overrides file and its parsed
// contents (empty when the file does not exist yet).
func overridesFile(sf *socketFlags) (string, *assignment.Overrides, error) {
	cfg, err := config.Load(sf.config)
	if err != nil {
		return "", nil, err
	}
	if cfg.LocalOverrides == "" {
		return "", nil, fmt.Errorf("%s sets no local_overrides file", sf.config)
	}
	if sf.socket == "" {
		sf.socket = cfg.StatusSocket
	}
	data, err := os.ReadFile(cfg.LocalOverrides)
	if errors.Is(err, fs.ErrNotExist) {
		return cfg.LocalOverrides, nil, nil
	}
	if err != nil {
		return "", nil, err
	}
	ov, err := assignment.ParseOverrides(data)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w (fix or remove it by hand)", cfg.LocalOverrides, err)
	}
	return cfg.LocalOverrides, ov, nil
}

// writeOverrides replaces the file atomically and asks addond to
// reconcile; an addond that is not running applies it when it starts.
func writeOverrides(cmd *cobra.Command, sf *socketFlags, path string, data []byte) error {
	if err := atomicfile.Write(path, data, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "wrote %s\n", path)
	cl, err := sf.client()
	if err == nil {
		err = cl.Reconcile(cmd.Context())
	}
	if err != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "addonctl: addond not asked to reconcile (%v); it applies the file at its next reconcile\n", err)
	}
	return nil
}

func newOverrideSet() *cobra.Command {
	var (
		sf          socketFlags
		enabled     bool
		version     string
		supervision string
		args        []string
		configFile  string
	)
	c := &cobra.Command{
		Use: "set ID [--enabled=BOOL] [--version V] [--supervision S] [--arg ARG]... [--config-json FILE]",
		Example: `  addonctl override set pingsweep --enabled=false
  addonctl override set pingsweep --version 1.2.0 --arg --interval=30s`,
		Short: "Patch fields of one add-on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			id := a[0]
			if err := assignment.ValidAddonID(id); err != nil {
				return err
			}
			fields := map[string]json.RawMessage{}
			set := func(k string, v any) {
				b, _ := json.Marshal(v)
				fields[k] = b
			}
			fl := cmd.Flags()
			if fl.Changed("enabled") {
				set("enabled", enabled)
			}
			if fl.Changed("version") {
				if err := assignment.ValidVersion(version); err != nil {
					return err
				}
				set("version", version)
			}
			if fl.Changed("supervision") {
				set("supervision", supervision)
			}
			if fl.Changed("arg") {
				set("args", args)
			}
			if configFile != "" {
				data, err := os.ReadFile(configFile)
				if err != nil {
					return err
				}
				var obj map[string]json.RawMessage
				if err := json.Unmarshal(data, &obj); err != nil {
					return fmt.Errorf("%s is not a JSON object: %w", configFile, err)
				}
				set("config_json", obj)
			}
			if len(fields) == 0 {
				return errors.New("nothing to set: give --enabled, --version, --supervision, --arg or --config-json")
			}
			path, ov, err := overridesFile(&sf)
			if err != nil {
				return err
			}
			data, err := ov.Set(id, fields)
			if err != nil {
				return err
			}
			return writeOverrides(cmd, &sf, path, data)
		},
	}
	sf.add(c)
	f := c.Flags()
	f.BoolVar(&enabled, "enabled", true, "enable or disable the add-on")
	f.StringVar(&version, "version", "", "pin a version (resolved from its signed package.json)")
	f.StringVar(&supervision, "supervision", "", "supervision model")
	f.StringArrayVar(&args, "arg", nil, "argument (repeatable; replaces the assigned args)")
	f.StringVar(&configFile, "config-json", "", "file with the add-on's config_json")
	return c
}

func newOverrideClear() *cobra.Command {
	var sf socketFlags
	c := &cobra.Command{
		Use:     "clear ID",
		Example: `  addonctl override clear pingsweep`,
		Short:   "Remove one add-on's override",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			path, ov, err := overridesFile(&sf)
			if err != nil {
				return err
			}
			data, err := ov.Set(a[0], nil)
			if err != nil {
				return err
			}
			return writeOverrides(cmd, &sf, path, data)
		},
	}
	sf.add(c)
	return c
}

func newOverrideShow() *cobra.Command {
	var sf socketFlags
	c := &cobra.Command{
		Use:     "show",
		Example: `  addonctl override show`,
		Short:   "Print the local overrides",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, ov, err := overridesFile(&sf)
			if err != nil {
				return err
			}
			data, err := ov.Set("", nil) // the file, normalized
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "# %s\n%s", path, data)
			return nil
		},
	}
	sf.add(c)
	return c
}
