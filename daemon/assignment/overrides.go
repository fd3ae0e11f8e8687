package assignment

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
)

// Overrides is addons.local.json: the operator's break-glass and pinning
// file. Each entry patches only the fields it names onto the pushed
// assignment with the same addon_id; entries for ids the control plane did
// not assign are added whole.
type Overrides struct {
	entries []override
}

type override struct {
	id     string
	fields map[string]json.RawMessage // without addon_id
}

// artifactFields describe which build to fetch. A version pin that names
// none of them drops the pushed ones (they belong to another version) and
// the agent resolves the pinned version from its signed package.json.
var artifactFields = []string{
	"artifact_object_key", "artifact_sha256", "artifact_signature", "artifact_key_id",
	"artifact_size", "target_os", "target_arch", "artifacts", "package_json", "package_sig",
}

var addonFields = func() map[string]bool {
	m := map[string]bool{}
	t := reflect.TypeOf(Addon{})
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		m[name] = true
	}
	return m
}()

// ParseOverrides decodes addons.local.json strictly: unknown keys, wrong
// types, invalid or duplicate ids are errors, because a typo in a
// break-glass file should be loud. (The caller then ignores the whole file
// and keeps the pushed set, so a bad file can never break delivery.)
func ParseOverrides(data []byte) (*Overrides, error) {
	if len(data) > MaxOverridesSize {
		return nil, fmt.Errorf("overrides file is %d bytes, more than %d", len(data), MaxOverridesSize)
	}
	var raw struct {
		Addons []map[string]json.RawMessage `json:"addons"`
	}
	if err := decodeStrictTrailing(data, &raw, true); err != nil {
		return nil, fmt.Errorf("overrides: %w", err)
	}
	o := &Overrides{}
	seen := map[string]bool{}
	for i, fields := range raw.Addons {
		at := func(key string, err error) error {
			return &KeyError{Path: fmt.Sprintf("addons.%d%s", i, key), Err: err}
		}
		var id string
		if err := json.Unmarshal(fields["addon_id"], &id); err != nil {
			key := ""
			if _, ok := fields["addon_id"]; ok {
				key = ".addon_id"
			}
			return nil, at(key, fmt.Errorf("overrides: entry %d: addon_id missing or not a string", i))
		}
		if err := ValidAddonID(id); err != nil {
			return nil, at(".addon_id", fmt.Errorf("overrides: entry %d: %w", i, err))
		}
		if seen[id] {
			return nil, at(".addon_id", fmt.Errorf("overrides: addon_id %q listed twice", id))
		}
		seen[id] = true
		delete(fields, "addon_id")
		for _, k := range slices.Sorted(maps.Keys(fields)) {
			if !addonFields[k] {
				return nil, at("."+k, fmt.Errorf("overrides: addon %q: unknown field %q", id, k))
			}
		}
		// Type-check the patch against the add-on schema. (Nested keys
		// are not checked against it: an unknown one was always ignored,
		// and refusing it now would make a file that worked malformed,
		// which the packaged unit's check-config refuses to start on.)
		var probe Addon
		if b, err := json.Marshal(fields); err != nil {
			return nil, at("", fmt.Errorf("overrides: addon %q: %w", id, err))
		} else if err := json.Unmarshal(b, &probe); err != nil {
			key := ""
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) && te.Field != "" {
				key = "." + te.Field
			}
			return nil, at(key, fmt.Errorf("overrides: addon %q: %w", id, err))
		}
		o.entries = append(o.entries, override{id: id, fields: fields})
	}
	return o, nil
}

// KeyError is an error about one key of a JSON file, named by its path
// from the top ("addons.2.probation"; an array's element by its index):
// `addond check-config` places it there (config.Locate).
type KeyError struct {
	Path string
	Err  error
}

func (e *KeyError) Error() string   { return e.Err.Error() }
func (e *KeyError) Unwrap() error   { return e.Err }
func (e *KeyError) KeyPath() string { return e.Path }

// Len is the number of entries.
func (o *Overrides) Len() int {
	if o == nil {
		return 0
	}
	return len(o.entries)
}

// Apply patches the pushed add-ons and appends local-only ones. It returns
// a new slice; pushed is not modified. The second result names the ids an
// override touched.
func (o *Overrides) Apply(pushed []Addon) ([]Addon, map[string]bool, error) {
	out := append([]Addon(nil), pushed...)
	touched := map[string]bool{}
	if o == nil {
		return out, touched, nil
	}
	index := map[string]int{}
	for i, a := range out {
		index[a.AddonID] = i
	}
	for _, e := range o.entries {
		touched[e.id] = true
		i, ok := index[e.id]
		if !ok {
			var a Addon
			b, _ := json.Marshal(e.fields)
			if err := json.Unmarshal(b, &a); err != nil {
				return nil, nil, fmt.Errorf("overrides: addon %q: %w", e.id, err)
			}
			a.AddonID = e.id
			out = append(out, a)
			continue
		}
		base, _ := json.Marshal(out[i])
		var m map[string]json.RawMessage
		json.Unmarshal(base, &m)
		if v, pinned := e.fields["version"]; pinned && !namesAny(e.fields, artifactFields) && string(v) != string(m["version"]) {
			for _, k := range artifactFields {
				delete(m, k)
			}
		}
		for k, v := range e.fields {
			m[k] = v
		}
		b, _ := json.Marshal(m)
		var a Addon
		if err := json.Unmarshal(b, &a); err != nil {
			return nil, nil, fmt.Errorf("overrides: addon %q: %w", e.id, err)
		}
		out[i] = a
	}
	return out, touched, nil
}

// PinsVersion reports whether the operator's entry for id sets the
// version: a local pin, which anti-rollback never refuses.
func (o *Overrides) PinsVersion(id string) bool {
	if o == nil {
		return false
	}
	for _, e := range o.entries {
		if e.id == id {
			_, ok := e.fields["version"]
			return ok
		}
	}
	return false
}

func namesAny(m map[string]json.RawMessage, keys []string) bool {
	for _, k := range keys {
		if _, ok := m[k]; ok {
			return true
		}
	}
	return false
}

// Set returns the raw entries as a document again, with entry id replaced
// by fields (nil removes it). addonctl uses it to edit the file.
func (o *Overrides) Set(id string, fields map[string]json.RawMessage) ([]byte, error) {
	var entries []map[string]json.RawMessage
	found := false
	if o != nil {
		for _, e := range o.entries {
			if e.id == id {
				found = true
				if fields == nil {
					continue
				}
				e = override{id: id, fields: mergeFields(e.fields, fields)}
			}
			entries = append(entries, withID(e))
		}
	}
	if !found && fields != nil {
		entries = append(entries, withID(override{id: id, fields: fields}))
	}
	if entries == nil {
		entries = []map[string]json.RawMessage{}
	}
	b, err := json.MarshalIndent(map[string]any{"addons": entries}, "", "  ")
	if err != nil {
		return nil, err
	}
	b = append(b, '\n')
	if _, err := ParseOverrides(b); err != nil {
		return nil, err
	}
	return b, nil
}

func mergeFields(a, b map[string]json.RawMessage) map[string]json.RawMessage {
	m := map[string]json.RawMessage{}
	for k, v := range a {
		m[k] = v
	}
	for k, v := range b {
		m[k] = v
	}
	return m
}

func withID(e override) map[string]json.RawMessage {
	m := map[string]json.RawMessage{}
	for k, v := range e.fields {
		m[k] = v
	}
	id, _ := json.Marshal(e.id)
	m["addon_id"] = id
	return m
}
