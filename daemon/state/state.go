// Package state persists what addond must remember across restarts and
// reboots, under the runtime root: per add-on (addons/<id>/state.json) the
// versions staged and verified, which one is current and previous, the
// last-known-good spec and failed versions; per agent (state/agent.json) the
// last applied serial and the last accepted assignment document, so that a
// restart while the store is down still knows what to run.
//
// Every write is atomic and durable (internal/atomicfile): a crash leaves
// the old file or the new one, never a torn one.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/internal/atomicfile"
)

// StagedVersion is a version whose artifact was verified and renamed into
// versions/<version>/<binary>.
type StagedVersion struct {
	SHA256   string    `json:"sha256"`
	Binary   string    `json:"binary"`
	Size     int64     `json:"size"`
	StagedAt time.Time `json:"staged_at"`
}

// Failure records why a version was marked failed.
type Failure struct {
	SHA256 string    `json:"sha256,omitempty"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// Addon is addons/<id>/state.json.
type Addon struct {
	Current  string                   `json:"current,omitempty"`
	Previous string                   `json:"previous,omitempty"`
	LKG      *assignment.Spec         `json:"last_known_good,omitempty"`
	Staged   map[string]StagedVersion `json:"staged,omitempty"`
	Failed   map[string]Failure       `json:"failed,omitempty"`
	// HighestVersion is the highest version ever activated (anti-rollback).
	HighestVersion string `json:"highest_version,omitempty"`
	// Probation is the version on probation, if any: after a crash during
	// probation the next start rolls it back.
	Probation *Probation `json:"probation,omitempty"`
}

// Highest is the highest version ever activated, given the version
// current points to: HighestVersion, or, for state written before it was
// kept, the higher of current and the last-known-good (semantic versions
// only have an order; see assignment.HigherVersion).
func (a *Addon) Highest(current string) string {
	var lkg string
	if a.LKG != nil {
		lkg = a.LKG.Version
	}
	return assignment.HighestVersion(a.HighestVersion, current, lkg)
}

// NoteActivated records that version became current by staging or
// promotion (not by a health rollback, which returns to a lower one).
func (a *Addon) NoteActivated(version string) {
	a.HighestVersion = assignment.HigherVersion(a.Highest(""), version)
}

// Probation is a newly activated version that has not yet proved healthy.
type Probation struct {
	Version  string    `json:"version"`
	Previous string    `json:"previous,omitempty"`
	Deadline time.Time `json:"deadline"`
}

// AddonPath is where add-on id's state lives.
func AddonPath(root, id string) string {
	return filepath.Join(root, "addons", id, "state.json")
}

// LoadAddon reads an add-on's state; a missing file is an empty state.
func LoadAddon(root, id string) (*Addon, error) {
	var a Addon
	if err := readJSON(AddonPath(root, id), &a); err != nil {
		return nil, err
	}
	if a.Staged == nil {
		a.Staged = map[string]StagedVersion{}
	}
	if a.Failed == nil {
		a.Failed = map[string]Failure{}
	}
	return &a, nil
}

// SaveAddon writes an add-on's state.
func SaveAddon(root, id string, a *Addon) error {
	if err := os.MkdirAll(filepath.Join(root, "addons", id), 0o755); err != nil {
		return err
	}
	return writeJSON(AddonPath(root, id), a)
}

// Agent is state/agent.json.
type Agent struct {
	// Source names the assignment source the fields below are about (the
	// store URL and key, or the file): serials are a source's own, so a
	// new source in the configuration starts afresh. Empty: state from
	// before it was recorded, taken as the configured source.
	Source        string `json:"source,omitempty"`
	LastSerial    uint64 `json:"last_serial"`
	ConfigVersion string `json:"config_version,omitempty"`
	DocumentToken string `json:"document_token,omitempty"` // ETag or file identity of the accepted document
	// DocumentDigest is the sha256 of the accepted document's bytes
	// (source.DocumentDigest): the same serial with other bytes is a
	// replay when signatures are required.
	DocumentDigest string    `json:"document_sha256,omitempty"`
	AppliedAt      time.Time `json:"applied_at,omitempty"`
}

func agentDir(root string) string { return filepath.Join(root, "state") }

// LoadAgent reads the agent state; a missing file is an empty state.
func LoadAgent(root string) (*Agent, error) {
	var a Agent
	return &a, readJSON(filepath.Join(agentDir(root), "agent.json"), &a)
}

// SaveAgent writes the agent state.
func SaveAgent(root string, a *Agent) error {
	if err := os.MkdirAll(agentDir(root), 0o700); err != nil {
		return err
	}
	return writeJSON(filepath.Join(agentDir(root), "agent.json"), a)
}

// SaveDocument keeps the last accepted assignment document and its
// signature (nil: none) verbatim, for restarts while the source is down.
func SaveDocument(root string, doc, sig []byte) error {
	if err := os.MkdirAll(agentDir(root), 0o700); err != nil {
		return err
	}
	sigPath := filepath.Join(agentDir(root), "assignments.json.sig")
	if sig == nil {
		if err := os.Remove(sigPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	} else if err := atomicfile.Write(sigPath, sig, 0o600); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(agentDir(root), "assignments.json"), doc, 0o600)
}

// LoadDocument returns the cached document and signature; ok is false when
// there is none.
func LoadDocument(root string) (doc, sig []byte, ok bool, err error) {
	doc, err = os.ReadFile(filepath.Join(agentDir(root), "assignments.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, false, nil
	}
	if err != nil {
		return nil, nil, false, err
	}
	sig, err = os.ReadFile(filepath.Join(agentDir(root), "assignments.json.sig"))
	if errors.Is(err, fs.ErrNotExist) {
		return doc, nil, true, nil
	}
	return doc, sig, err == nil, err
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	// What loads must save again: JSON that decodes to a value encoding
	// refuses (a time with a zone offset of 24 hours or more) is corrupt.
	if _, err := json.Marshal(v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(data, '\n'), 0o600)
}
