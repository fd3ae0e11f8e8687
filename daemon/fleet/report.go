// Package fleet is what agents and operators share through the store
// (DESIGN.md, "Fleet"): each agent's report, agents/<agent>/status.json,
// and the fleet's view made of them. It is pure: no store, no clock.
package fleet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/reconcile"
)

// ReportsPrefix is where agents keep their objects in the store.
const ReportsPrefix = "agents/"

// MaxReportSize bounds a report read back from the store (one add-on takes
// well under 1 KiB; addond runs at most a few hundred).
const MaxReportSize = 1 << 20

// Report is agents/<agent>/status.json: what an agent's /v1/status says,
// with when and by which addond it was written.
type Report struct {
	AgentID       string    `json:"agent_id"`
	ReportedAt    time.Time `json:"reported_at"` // the agent's clock
	AddondVersion string    `json:"addond_version"`
	Platform      string    `json:"platform"` // "linux/amd64"
	Ready         bool      `json:"ready"`
	Serial        uint64    `json:"serial"`
	// DocumentFresh: the agent's document is confirmed by its source;
	// DocumentExpired: past its expires (last-known-good runs);
	// DocumentError: why the document in use is not the store's.
	DocumentFresh   bool                    `json:"document_fresh"`
	DocumentExpired bool                    `json:"document_expired"`
	DocumentError   string                  `json:"document_error,omitempty"`
	Addons          []reconcile.AddonStatus `json:"addons"`
}

// ReportKey is the object an agent writes its report to.
func ReportKey(agent string) string { return ReportsPrefix + agent + "/status.json" }

// AgentOfKey is the agent whose report key is key ("" when key is not a
// report's).
func AgentOfKey(key string) string { return agentOf(key, "/status.json") }

// AgentOfDocumentKey is the agent whose assignment document key is key
// ("" when key is not an assignment document's).
func AgentOfDocumentKey(key string) string { return agentOf(key, "/assignments.json") }

// agentOf is the agent of agents/<agent><suffix>, when it is a safe id.
func agentOf(key, suffix string) string {
	rest, ok := strings.CutPrefix(key, ReportsPrefix)
	if !ok {
		return ""
	}
	agent, ok := strings.CutSuffix(rest, suffix)
	if !ok || !ValidAgentID(agent) {
		return ""
	}
	return agent
}

var agentIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidAgentID is config's rule for agent_id: it is a path segment.
func ValidAgentID(id string) bool { return agentIDRe.MatchString(id) }

// Marshal is the report's bytes as written.
func (r Report) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(r, "", "  ")
	return append(b, '\n'), err
}

// Material is what, when it changes, is worth a report now rather than at
// the next interval: every field an operator acts on. PIDs, restart counts
// and times are left out, so that a restarting add-on does not rewrite the
// report on every restart.
func (r Report) Material() string {
	type addon struct {
		ID, Version, Active, Previous, State, Health, LastError string
		FromLKG, Probation                                      bool
	}
	m := struct {
		Ready, Fresh, Expired bool
		Serial                uint64
		DocErr, AddondVersion string
		Addons                []addon
	}{r.Ready, r.DocumentFresh, r.DocumentExpired, r.Serial, r.DocumentError, r.AddondVersion, nil}
	for _, a := range r.Addons {
		m.Addons = append(m.Addons, addon{a.AddonID, a.Version, a.ActiveVersion, a.PreviousVersion, string(a.State), string(a.Health), a.LastError, a.FromLKG, a.Probation})
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// ParseReport reads a report from the store, which is hostile: bounded,
// one JSON object, an agent id that is a safe path segment and equals the
// one its key names (agent; "" skips that check).
func ParseReport(data []byte, agent string) (Report, error) {
	if len(data) > MaxReportSize {
		return Report{}, fmt.Errorf("report is %d bytes, more than %d", len(data), MaxReportSize)
	}
	var r Report
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&r); err != nil {
		return Report{}, fmt.Errorf("report: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Report{}, errors.New("report: trailing data after the JSON object")
	}
	switch {
	case !ValidAgentID(r.AgentID):
		return Report{}, fmt.Errorf("report: agent_id %q is not a safe agent id", r.AgentID)
	case agent != "" && r.AgentID != agent:
		return Report{}, fmt.Errorf("report: agent_id %q in %s", r.AgentID, ReportKey(agent))
	case r.ReportedAt.IsZero():
		return Report{}, errors.New("report: no reported_at")
	}
	seen := map[string]bool{}
	for _, a := range r.Addons {
		if err := assignment.ValidAddonID(a.AddonID); err != nil {
			return Report{}, fmt.Errorf("report: %w", err)
		}
		if seen[a.AddonID] {
			return Report{}, fmt.Errorf("report: add-on %q listed twice", a.AddonID)
		}
		seen[a.AddonID] = true
		for _, v := range []string{a.Version, a.ActiveVersion, a.PreviousVersion} {
			if v != "" && assignment.ValidVersion(v) != nil {
				return Report{}, fmt.Errorf("report: add-on %q: version %q is not a safe version", a.AddonID, v)
			}
		}
	}
	return r, nil
}

// AgentPolicy is the S3 (IAM) policy of one agent's identity on a bucket
// whose objects start with prefix ("" or ending in /): it may read every
// artifact and package and its own assignment document, and write only its
// own report. One agent cannot change what another runs or reports.
func AgentPolicy(bucket, prefix, agent string) ([]byte, error) {
	if !ValidAgentID(agent) {
		return nil, fmt.Errorf("agent %q is not a safe agent id", agent)
	}
	if strings.ContainsAny(bucket+prefix, "*?$") {
		// Wildcards (and policy variables) in a resource would widen it.
		return nil, fmt.Errorf("bucket %q and prefix %q: a '*', '?' or '$' in them would widen the policy", bucket, prefix)
	}
	obj := func(key string) string { return "arn:aws:s3:::" + bucket + "/" + prefix + key }
	type statement struct {
		Sid      string   `json:"Sid"`
		Effect   string   `json:"Effect"`
		Action   []string `json:"Action"`
		Resource []string `json:"Resource"`
	}
	policy := struct {
		Version   string      `json:"Version"`
		Statement []statement `json:"Statement"`
	}{"2012-10-17", []statement{
		{"ReadArtifactsPackagesAndOwnAssignments", "Allow", []string{"s3:GetObject"}, []string{
			obj("artifacts/*"), obj("packages/*"),
			obj(ReportsPrefix + agent + "/assignments.json"), obj(ReportsPrefix + agent + "/assignments.json.sig"),
		}},
		{"WriteOwnReport", "Allow", []string{"s3:PutObject"}, []string{obj(ReportKey(agent))}},
	}}
	b, err := json.MarshalIndent(policy, "", "  ")
	return append(b, '\n'), err
}
