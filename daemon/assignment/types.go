package assignment

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"

	"github.com/addond/addond/supervisors"
)

// Limits on outside input.
const (
	MaxDocumentSize  = 4 << 20 // assignments.json
	MaxPackageSize   = 1 << 20 // package.json
	MaxOverridesSize = 1 << 20 // addons.local.json
	MaxAddons        = 1024
)

// Delivery models.
const (
	DeliveryCompiledIn     = "compiled_in"
	DeliveryPushedArtifact = "pushed_artifact"
	DeliveryOSPackage      = "os_package"
)

// Supervision models (supervisors.Model's names).
const (
	SupervisionConfigToggle    = string(supervisors.ModelConfigToggle)
	SupervisionAgentSidecar    = string(supervisors.ModelAgentSidecar)
	SupervisionSystemdService  = string(supervisors.ModelService)
	SupervisionSystemdTimer    = string(supervisors.ModelTimer)
	SupervisionEphemeralHelper = string(supervisors.ModelHelper)
)

var (
	deliveries   = []string{DeliveryCompiledIn, DeliveryPushedArtifact, DeliveryOSPackage}
	supervisions = []string{SupervisionConfigToggle, SupervisionAgentSidecar, SupervisionSystemdService, SupervisionSystemdTimer, SupervisionEphemeralHelper}
)

// Document is assignments.json, field names as in the origin design.
type Document struct {
	AgentID       string `json:"agent_id"`
	Serial        uint64 `json:"serial"`
	ConfigVersion string `json:"config_version,omitempty"`
	// Expires, when set, is when the document stops being news: past it
	// addond applies nothing of it and keeps what runs, as expired.
	Expires *time.Time `json:"expires,omitempty"`
	Addons  []Addon    `json:"addons"`
}

// MaxSerial bounds a document's serial: 2^53, the largest integer every
// JSON implementation holds exactly. A serial above it is refused, so that
// no document can lock out every later one.
const MaxSerial = 1 << 53

// Expired reports whether the document has expired at now.
func (d *Document) Expired(now time.Time) bool {
	return d.Expires != nil && now.After(*d.Expires)
}

// Addon is one entry of the document: what the control plane wants this
// agent to run. Fields are unchecked until Resolve.
type Addon struct {
	AddonID           string              `json:"addon_id"`
	Version           string              `json:"version,omitempty"`
	Enabled           *bool               `json:"enabled,omitempty"` // nil means enabled
	Delivery          string              `json:"delivery,omitempty"`
	Supervision       string              `json:"supervision,omitempty"`
	BinaryPath        string              `json:"binary_path,omitempty"`
	Args              []string            `json:"args,omitempty"`
	ConfigJSON        json.RawMessage     `json:"config_json,omitempty"`
	Capabilities      []string            `json:"capabilities,omitempty"`
	OSCapabilities    []string            `json:"os_capabilities,omitempty"`
	ArtifactObjectKey string              `json:"artifact_object_key,omitempty"`
	ArtifactSHA256    string              `json:"artifact_sha256,omitempty"`
	ArtifactSignature string              `json:"artifact_signature,omitempty"`
	ArtifactKeyID     string              `json:"artifact_key_id,omitempty"`
	ArtifactSize      int64               `json:"artifact_size,omitempty"`
	TargetOS          string              `json:"target_os,omitempty"`
	TargetArch        string              `json:"target_arch,omitempty"`
	Artifacts         map[string]Artifact `json:"artifacts,omitempty"`
	Schedule          string              `json:"schedule,omitempty"`
	Timeout           string              `json:"timeout,omitempty"`
	AllowDowngrade    bool                `json:"allow_downgrade,omitempty"`
	Resources         *Resources          `json:"resources,omitempty"`
	// HelperCallers are the other add-ons that may run this add-on's
	// ephemeral helper (its own unit always may).
	HelperCallers []string `json:"helper_callers,omitempty"`
	// PackageJSON and PackageSig carry the version's signed package.json
	// (its exact bytes, base64 in JSON) and .sig (hex), as assign and
	// rollout embed them: the agent verifies them under its package keys
	// and needs no request of its own for the package.
	PackageJSON []byte `json:"package_json,omitempty"`
	PackageSig  string `json:"package_sig,omitempty"`
}

// Artifact is one platform's build of an add-on.
type Artifact struct {
	ObjectKey  string `json:"object_key"`
	SHA256     string `json:"sha256"`
	Size       int64  `json:"size,omitempty"`
	Signature  string `json:"signature,omitempty"`
	KeyID      string `json:"key_id,omitempty"`
	BinaryName string `json:"binary_name,omitempty"`
	// Compression "zstd": the object holds the binary compressed, and
	// StoredSHA256/StoredSize describe the object's bytes; SHA256/Size
	// always describe the binary that is staged (DESIGN.md, "Delivery v2").
	Compression  string `json:"compression,omitempty"`
	StoredSHA256 string `json:"stored_sha256,omitempty"`
	StoredSize   int64  `json:"stored_size,omitempty"`
}

// CompressionZstd is the one compression an artifact may have.
const CompressionZstd = "zstd"

// MaxZstdWindow bounds the memory a compressed artifact can make the
// agent's decoder hold: frames that ask for a larger window are refused.
// addonctl publish --compress zstd writes frames within it.
const MaxZstdWindow = 8 << 20

// Stored is what the object in the store holds: its size, and whether
// it is the binary itself.
func (a *Artifact) Stored() (size int64, compressed bool) {
	if a.Compression != "" {
		return a.StoredSize, true
	}
	return a.Size, false
}

// Resources are the limits applied to unit-based add-ons.
type Resources struct {
	CPUMaxPercent   int   `json:"cpu_max_percent,omitempty"`
	MemoryMaxBytes  int64 `json:"memory_max_bytes,omitempty"`
	MemoryHighBytes int64 `json:"memory_high_bytes,omitempty"`
	TasksMax        int64 `json:"tasks_max,omitempty"`
}

// Platform is an OS/architecture pair, written "linux/amd64".
type Platform struct{ OS, Arch string }

// Host is the platform addond was built for.
func Host() Platform { return Platform{runtime.GOOS, runtime.GOARCH} }

func (p Platform) String() string { return p.OS + "/" + p.Arch }

// ParsePlatform parses "os/arch".
func ParsePlatform(s string) (Platform, error) {
	os, arch, ok := strings.Cut(s, "/")
	if !ok || !platformWord(os) || !platformWord(arch) {
		return Platform{}, fmt.Errorf("platform %q: want OS/ARCH, e.g. linux/amd64", s)
	}
	return Platform{os, arch}, nil
}

func platformWord(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}

// IsEnabled reports the effective enabled flag (absent means enabled).
func (a Addon) IsEnabled() bool { return a.Enabled == nil || *a.Enabled }

// Parse decodes assignments.json. Unknown fields are ignored so that a
// newer control plane can extend the format; wrong types, trailing data,
// duplicate add-on ids and oversize documents are errors. Per-add-on fields
// are validated later, by Resolve, so that one bad entry does not take the
// others down.
func Parse(data []byte) (*Document, error) {
	if len(data) > MaxDocumentSize {
		return nil, fmt.Errorf("assignments document is %d bytes, more than %d", len(data), MaxDocumentSize)
	}
	var d Document
	if err := decodeStrictTrailing(data, &d, false); err != nil {
		return nil, fmt.Errorf("assignments document: %w", err)
	}
	if len(d.Addons) > MaxAddons {
		return nil, fmt.Errorf("assignments document lists %d add-ons, more than %d", len(d.Addons), MaxAddons)
	}
	if d.Serial > MaxSerial {
		return nil, fmt.Errorf("assignments document: serial %d is above 2^53", d.Serial)
	}
	seen := map[string]bool{}
	for _, a := range d.Addons {
		if seen[a.AddonID] {
			return nil, fmt.Errorf("assignments document: addon_id %q listed twice", a.AddonID)
		}
		seen[a.AddonID] = true
	}
	return &d, nil
}

func decodeStrictTrailing(data []byte, v any, disallowUnknown bool) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if disallowUnknown {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("trailing data after the JSON value")
	}
	return nil
}

// ComputeConfigVersion is the hash over the canonical document: the
// document's JSON encoding with config_version itself left empty. Artifact
// references are part of it, so a changed artifact is a changed version.
func ComputeConfigVersion(d Document) (string, error) {
	d.ConfigVersion = ""
	b, err := json.Marshal(d)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}
