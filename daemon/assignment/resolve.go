package assignment

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/store"
)

// Spec is one add-on, validated and resolved for this host: every field
// delivery and supervision use has been checked. It is also what is
// persisted as last-known-good, verbatim.
type Spec struct {
	AddonID        string          `json:"addon_id"`
	Version        string          `json:"version"`
	Enabled        bool            `json:"enabled"`
	Delivery       string          `json:"delivery"`
	Supervision    string          `json:"supervision"`
	BinaryName     string          `json:"binary_name,omitempty"`
	Args           []string        `json:"args,omitempty"`
	ConfigJSON     json.RawMessage `json:"config_json,omitempty"`
	Capabilities   []string        `json:"capabilities,omitempty"`
	OSCapabilities []string        `json:"os_capabilities,omitempty"`
	Platform       string          `json:"platform,omitempty"`
	// Artifact is set for pushed artifacts: SHA256 and Signature are
	// normalized to lowercase hex.
	Artifact       *Artifact  `json:"artifact,omitempty"`
	Schedule       string     `json:"schedule,omitempty"`
	Timeout        string     `json:"timeout,omitempty"`
	AllowDowngrade bool       `json:"allow_downgrade,omitempty"`
	Resources      *Resources `json:"resources,omitempty"`
	// HelperCallers are the other add-ons that may run this add-on's
	// helper: valid add-on ids.
	HelperCallers []string `json:"helper_callers,omitempty"`
	// PackageJSON and PackageSig are the signed package the document
	// embeds (Addon.PackageJSON), unverified until delivery checks them.
	PackageJSON []byte `json:"package_json,omitempty"`
	PackageSig  string `json:"package_sig,omitempty"`
	// FromPackage is true when the artifact came from the signed
	// package.json (no reference in the assignment, e.g. an operator's
	// version pin), not from the assignment.
	FromPackage bool `json:"from_package,omitempty"`
	// BinaryPath is set for os_package delivery: the absolute, clean path
	// where a deb or rpm installed the binary.
	BinaryPath string `json:"binary_path,omitempty"`
	// BinarySHA256 is, for os_package delivery, the lowercase hex sha256
	// the installed binary must have (from artifact_sha256), if any.
	BinarySHA256 string `json:"binary_sha256,omitempty"`
	// Feature is set for compiled_in delivery: the compiled-in feature the
	// add-on toggles, named by binary_path or, when that is empty, by
	// addon_id.
	Feature string `json:"feature,omitempty"`
}

// NeedsPackage reports whether a pushed artifact has no reference in the
// assignment and must be looked up in its signed package.json.
func (s Spec) NeedsPackage() bool {
	return s.Delivery == DeliveryPushedArtifact && s.Artifact == nil
}

// Digest identifies a spec's content; equal digests mean nothing changed.
func (s Spec) Digest() string {
	b, _ := json.Marshal(s)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// AddonError is a refusal of one add-on, naming it and the reason.
type AddonError struct {
	AddonID string
	Err     error
}

func (e *AddonError) Error() string { return fmt.Sprintf("addon %q: %v", e.AddonID, e.Err) }
func (e *AddonError) Unwrap() error { return e.Err }

// Refuse wraps err as a refusal of add-on id.
func Refuse(id string, err error) error { return &AddonError{AddonID: id, Err: err} }

// Resolve validates a and picks the artifact for platform p. It refuses,
// naming the add-on and the reason, anything that could escape the runtime
// tree or cannot be verified.
func Resolve(a Addon, p Platform) (Spec, error) {
	s, err := resolve(a, p)
	if err != nil {
		return Spec{}, Refuse(a.AddonID, err)
	}
	return s, nil
}

func resolve(a Addon, p Platform) (Spec, error) {
	if err := ValidAddonID(a.AddonID); err != nil {
		return Spec{}, err
	}
	s := Spec{
		AddonID:        a.AddonID,
		Version:        a.Version,
		Enabled:        a.IsEnabled(),
		Delivery:       a.Delivery,
		Supervision:    a.Supervision,
		Args:           a.Args,
		Capabilities:   a.Capabilities,
		OSCapabilities: a.OSCapabilities,
		Schedule:       a.Schedule,
		Timeout:        a.Timeout,
		AllowDowngrade: a.AllowDowngrade,
		Resources:      a.Resources,
		HelperCallers:  a.HelperCallers,
	}
	for _, step := range []func(*Spec, Addon) error{resolveModels, resolveSettings} {
		if err := step(&s, a); err != nil {
			return Spec{}, err
		}
	}
	complete := resolveInstalled
	if s.Delivery == DeliveryPushedArtifact {
		complete = func(s *Spec, a Addon) error { return resolveArtifact(s, a, p) }
	}
	if err := complete(&s, a); err != nil {
		return Spec{}, err
	}
	return s, nil
}

// resolveModels completes and checks delivery and supervision. A
// compiled-in feature is toggled, and only a compiled-in feature can be:
// either model implies the other when the other is empty.
func resolveModels(s *Spec, _ Addon) error {
	switch {
	case s.Delivery == "" && s.Supervision == SupervisionConfigToggle:
		s.Delivery = DeliveryCompiledIn
	case s.Delivery == "":
		s.Delivery = DeliveryPushedArtifact
	}
	switch {
	case s.Supervision == "" && s.Delivery == DeliveryCompiledIn:
		s.Supervision = SupervisionConfigToggle
	case s.Supervision == "":
		s.Supervision = SupervisionAgentSidecar
	}
	if !slices.Contains(deliveries, s.Delivery) {
		return fmt.Errorf("unknown delivery %q (want one of %s)", s.Delivery, strings.Join(deliveries, ", "))
	}
	if err := ValidSupervision(s.Supervision); err != nil {
		return err
	}
	if (s.Delivery == DeliveryCompiledIn) != (s.Supervision == SupervisionConfigToggle) {
		return fmt.Errorf("delivery %q cannot be supervised by %q: %q goes with %q only", s.Delivery, s.Supervision, DeliveryCompiledIn, SupervisionConfigToggle)
	}
	return nil
}

// resolveSettings checks what the add-on runs with: its configuration
// (compacted), arguments, timeout and resources.
func resolveSettings(s *Spec, a Addon) error {
	if len(a.ConfigJSON) > 0 && !bytes.Equal(bytes.TrimSpace(a.ConfigJSON), []byte("null")) {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(a.ConfigJSON, &obj); err != nil {
			return fmt.Errorf("config_json is not a JSON object: %v", err)
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, a.ConfigJSON); err != nil {
			return fmt.Errorf("config_json: %v", err)
		}
		s.ConfigJSON = buf.Bytes()
	}
	for _, arg := range a.Args {
		if strings.ContainsRune(arg, 0) {
			return fmt.Errorf("args contain a NUL byte")
		}
	}
	if a.Timeout != "" {
		if d, err := time.ParseDuration(a.Timeout); err != nil || d <= 0 {
			return fmt.Errorf("timeout %q is not a positive duration", a.Timeout)
		}
	}
	if r := a.Resources; r != nil {
		if r.CPUMaxPercent < 0 || r.MemoryMaxBytes < 0 || r.MemoryHighBytes < 0 || r.TasksMax < 0 {
			return fmt.Errorf("resources must not be negative")
		}
	}
	for _, c := range a.HelperCallers {
		if err := ValidAddonID(c); err != nil {
			return fmt.Errorf("helper_callers: %w", err)
		}
	}
	return nil
}

// resolveInstalled completes an add-on addond does not deliver: a
// compiled-in feature, or a binary an OS package installed.
func resolveInstalled(s *Spec, a Addon) error {
	switch s.Delivery {
	case DeliveryCompiledIn:
		s.Feature = a.BinaryPath
		if s.Feature == "" {
			s.Feature = a.AddonID
		}
		if err := ValidFeature(s.Feature); err != nil {
			return err
		}
	case DeliveryOSPackage:
		if err := ValidInstalledPath(a.BinaryPath); err != nil {
			return err
		}
		s.BinaryPath = a.BinaryPath
		if a.ArtifactSHA256 != "" {
			sum, err := signing.NormalizeSHA256(a.ArtifactSHA256)
			if err != nil {
				return fmt.Errorf("artifact %w", err)
			}
			s.BinarySHA256 = sum
			if s.Version == "" {
				s.Version = sum[:12]
			}
		}
	}
	if s.Version != "" {
		return ValidVersion(s.Version)
	}
	return nil
}

// resolveArtifact completes a pushed artifact for platform p: the
// artifact reference, the version and the binary's name.
func resolveArtifact(s *Spec, a Addon, p Platform) error {
	art, err := pickArtifact(a, p)
	if err != nil {
		return err
	}
	s.Platform = p.String()
	if len(a.PackageJSON) > MaxPackageSize || len(a.PackageSig) > 1024 {
		return fmt.Errorf("embedded package is %d bytes (signature %d), more than %d (1024)", len(a.PackageJSON), len(a.PackageSig), MaxPackageSize)
	}
	if (len(a.PackageJSON) == 0) != (a.PackageSig == "") {
		return fmt.Errorf("package_json and package_sig go together")
	}
	s.PackageJSON, s.PackageSig = a.PackageJSON, a.PackageSig
	if art != nil {
		if err := validateArtifact(art); err != nil {
			return err
		}
		s.Artifact = art
		if s.Version == "" {
			s.Version = art.SHA256[:12]
		}
	}
	if err := ValidVersion(s.Version); err != nil {
		return err
	}
	s.BinaryName = binaryName(a, art)
	return ValidBinaryName(s.BinaryName)
}

// pickArtifact returns the artifact for p: from the artifacts map when it
// has p, else the single reference when it targets p (or names no target).
// It returns nil, nil when the assignment carries no reference at all.
func pickArtifact(a Addon, p Platform) (*Artifact, error) {
	if art, ok := a.Artifacts[p.String()]; ok {
		return &art, nil
	}
	if a.ArtifactObjectKey != "" || a.ArtifactSHA256 != "" {
		if a.TargetOS != "" && a.TargetOS != p.OS || a.TargetArch != "" && a.TargetArch != p.Arch {
			return nil, fmt.Errorf("artifact is for %s/%s, this host is %s", a.TargetOS, a.TargetArch, p)
		}
		return &Artifact{
			ObjectKey: a.ArtifactObjectKey, SHA256: a.ArtifactSHA256, Size: a.ArtifactSize,
			Signature: a.ArtifactSignature, KeyID: a.ArtifactKeyID,
		}, nil
	}
	if len(a.Artifacts) > 0 {
		have := slices.Sorted(maps.Keys(a.Artifacts))
		return nil, fmt.Errorf("no artifact for this host's platform %s (have %s)", p, strings.Join(have, ", "))
	}
	return nil, nil
}

// validateArtifact checks and normalizes an artifact reference in place.
// The agent is never asked to fetch what it cannot verify: key and sha256
// are both required.
func validateArtifact(art *Artifact) error {
	if art.ObjectKey == "" || art.SHA256 == "" {
		return fmt.Errorf("artifact reference needs both object key and sha256")
	}
	if err := store.ValidKey(art.ObjectKey); err != nil {
		return fmt.Errorf("artifact object key: %w", err)
	}
	sum, err := signing.NormalizeSHA256(art.SHA256)
	if err != nil {
		return fmt.Errorf("artifact %w", err)
	}
	art.SHA256 = sum
	if art.Signature != "" {
		sig, err := signing.DecodeSignature(art.Signature)
		if err != nil {
			return fmt.Errorf("artifact %w", err)
		}
		art.Signature = hex.EncodeToString(sig)
	}
	if art.KeyID != "" {
		if len(art.KeyID) != 16 {
			return fmt.Errorf("artifact key_id %q: want 16 hex characters", art.KeyID)
		}
		if _, err := hex.DecodeString(art.KeyID); err != nil {
			return fmt.Errorf("artifact key_id %q: want 16 hex characters", art.KeyID)
		}
		art.KeyID = strings.ToLower(art.KeyID)
	}
	if art.Size < 0 {
		return fmt.Errorf("artifact size %d is negative", art.Size)
	}
	switch art.Compression {
	case "":
		if art.StoredSHA256 != "" || art.StoredSize != 0 {
			return fmt.Errorf("artifact stored_sha256 and stored_size are only for a compressed artifact")
		}
	case CompressionZstd:
		if !strings.HasSuffix(art.ObjectKey, ".zst") {
			return fmt.Errorf("zstd artifact object key %q does not end in .zst", art.ObjectKey)
		}
		if art.Size <= 0 || art.StoredSize <= 0 {
			return fmt.Errorf("zstd artifact needs size and stored_size")
		}
		stored, err := signing.NormalizeSHA256(art.StoredSHA256)
		if err != nil {
			return fmt.Errorf("artifact stored_%w", err)
		}
		art.StoredSHA256 = stored
	default:
		return fmt.Errorf("artifact compression %q: want zstd or none", art.Compression)
	}
	if art.BinaryName != "" {
		if err := ValidBinaryName(art.BinaryName); err != nil {
			return err
		}
	}
	return nil
}

// binaryName is the staged file's name: the artifact's binary_name, else
// the base name of binary_path (only its base name counts for pushed
// artifacts), else the last segment of the object key (less the .zst of
// a compressed one), else the add-on id.
// The result is validated by the caller; path.Base("..") is "..", and a
// name with a backslash stays one segment and is refused there.
func binaryName(a Addon, art *Artifact) string {
	switch {
	case art != nil && art.BinaryName != "":
		return art.BinaryName
	case a.BinaryPath != "":
		if strings.HasSuffix(a.BinaryPath, "/") {
			return "" // a directory, not a file name
		}
		return path.Base(a.BinaryPath)
	case art != nil && art.ObjectKey != "":
		return strings.TrimSuffix(path.Base(art.ObjectKey), ".zst")
	default:
		return a.AddonID
	}
}

// WithPackage completes a spec that had no artifact reference from the
// add-on's verified package.json.
func (s Spec) WithPackage(pkg *Package, p Platform) (Spec, error) {
	if pkg.AddonID != s.AddonID || pkg.Version != s.Version {
		return Spec{}, Refuse(s.AddonID, fmt.Errorf("package.json is for %s@%s, want %s@%s", pkg.AddonID, pkg.Version, s.AddonID, s.Version))
	}
	art, ok := pkg.Artifacts[p.String()]
	if !ok {
		return Spec{}, Refuse(s.AddonID, fmt.Errorf("package %s@%s has no artifact for this host's platform %s", pkg.AddonID, pkg.Version, p))
	}
	if err := validateArtifact(&art); err != nil {
		return Spec{}, Refuse(s.AddonID, err)
	}
	s.Artifact = &art
	s.FromPackage = true
	if art.BinaryName != "" {
		s.BinaryName = art.BinaryName
	}
	return s, nil
}
