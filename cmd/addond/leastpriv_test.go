package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/addond/addond/daemon/fleet"
	"github.com/addond/addond/daemon/store"
	"github.com/addond/addond/vmtest/miniotest"
)

// agentIdentity is credentials on srv limited by policy: MinIO's
// AssumeRole with the policy as the session policy, so the identity can do
// exactly what the policy allows.
func agentIdentity(t *testing.T, srv *miniotest.Server, policy string) credentials.Value {
	t.Helper()
	creds, err := credentials.NewSTSAssumeRole("http://"+srv.Endpoint, credentials.STSAssumeRoleOptions{
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Policy: policy, DurationSeconds: 3600,
	})
	if err != nil {
		t.Fatal(err)
	}
	var v credentials.Value
	// A MinIO just started answers "Server not initialized" until its IAM
	// is loaded.
	eventually(t, 30*time.Second, "AssumeRole answered", func() bool {
		v, err = creds.GetWithContext(nil)
		return err == nil
	})
	return v
}

// TestFleetLeastPrivilege: an agent whose identity has only the policy of
// `addonctl fleet policy` runs its add-ons and reports (addond as
// packaged would, with the credentials in the environment), and with the
// same identity cannot write another agent's report, any assignment,
// artifact or package, nor read another agent's assignments. Every refusal
// leaves the store as it was.
func TestFleetLeastPrivilege(t *testing.T) {
	e := newEnv(t, "s3")
	srv := miniotest.Require(t)
	key := filepath.Join(e.dir, "keys", "signing.key")
	e.publishFile("hello", "1.0.0", filepath.Join(bin, "hello"))
	e.assignWithConfig("hello@1.0.0", "hello", `{}`)
	e.run("addonctl", "assign", "--store", e.storeURL, "--agent", "edge-02", "--key", key, "--addon", "hello@1.0.0")

	policy := e.run("addonctl", "fleet", "policy", "--store", e.storeURL, "--agent", "edge-01")
	if !json.Valid([]byte(policy)) || !strings.Contains(policy, "agents/edge-01/status.json") {
		t.Fatalf("fleet policy:\n%s", policy)
	}
	t.Logf("edge-01's policy:\n%s", policy)
	id := agentIdentity(t, srv, policy)

	// addond runs as edge-01 with that identity only.
	publisher := e.extraEnv
	e.extraEnv = []string{"AWS_ACCESS_KEY_ID=" + id.AccessKeyID, "AWS_SECRET_ACCESS_KEY=" + id.SecretAccessKey, "AWS_SESSION_TOKEN=" + id.SessionToken,
		"MINIO_ACCESS_KEY=", "MINIO_SECRET_KEY=", "MINIO_ROOT_USER=", "MINIO_ROOT_PASSWORD="}
	e.extra = map[string]any{"report": map[string]string{"min_interval": "1s"}}
	d, _ := e.startReady(t)
	d.waitAddon(t, "hello", 30*time.Second, "running 1.0.0", runningHealthy("1.0.0"))
	e.extraEnv = publisher
	// edge-01 reports through its own identity; edge-02 (assigned, not
	// running) never did.
	e.fleetJSON("with edge-01 reporting through its own identity", func(s fleet.Status, code int) bool {
		return code == 1 && len(s.Agents) == 2 && s.Agents[0].AgentID == "edge-01" && len(s.Agents[0].Problems) == 0 &&
			reportedAddon(s.Agents[0], "hello").State == "running" && strings.Contains(strings.Join(s.Agents[1].Problems, ""), "never reported")
	})

	// The identity, attacked directly.
	u, err := store.ParseURL(e.storeURL)
	if err != nil {
		t.Fatal(err)
	}
	bucket := u.S3.Bucket
	as := func(v credentials.Value) *minio.Client {
		cl, err := minio.New(srv.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(v.AccessKeyID, v.SecretAccessKey, v.SessionToken)})
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	agent, root := as(id), as(credentials.Value{AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey})
	ctx := context.Background()
	before := map[string]string{}
	for obj := range root.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		before[obj.Key] = obj.ETag
	}
	if before["agents/edge-01/status.json"] == "" || before["agents/edge-02/assignments.json"] == "" {
		t.Fatalf("the store before the attack: %v", before)
	}
	put := func(key string) error {
		body := []byte(`{"agent_id":"edge-02","reported_at":"2026-12-06T12:00:00Z","addons":[]}`)
		_, err := agent.PutObject(ctx, bucket, key, bytes.NewReader(body), int64(len(body)), minio.PutObjectOptions{})
		return err
	}
	denied := func(what string, err error) {
		t.Helper()
		if minio.ToErrorResponse(err).Code != "AccessDenied" {
			t.Errorf("edge-01's identity: %s: %v, want AccessDenied", what, err)
		}
	}
	for _, k := range []string{
		"agents/edge-02/status.json", "agents/edge-02/assignments.json", "agents/edge-01/assignments.json",
		"agents/edge-01/assignments.json.sig", "artifacts/hello/1.0.0/linux-amd64/hello", "packages/hello/1.0.0/package.json",
		"packages/evil/1.0.0/package.json", "agents/edge-01/other.json", "rollouts/hello/2.0.0.json",
	} {
		denied("put "+k, put(k))
	}
	_, err = agent.GetObject(ctx, bucket, "agents/edge-02/assignments.json", minio.GetObjectOptions{})
	if err == nil {
		_, err = agent.StatObject(ctx, bucket, "agents/edge-02/assignments.json", minio.StatObjectOptions{})
	}
	denied("read agents/edge-02/assignments.json", err)
	denied("delete its own report", agent.RemoveObject(ctx, bucket, "agents/edge-01/status.json", minio.RemoveObjectOptions{}))
	denied("delete an artifact", agent.RemoveObject(ctx, bucket, "artifacts/hello/1.0.0/linux-amd64/hello", minio.RemoveObjectOptions{}))
	for obj := range agent.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: "agents/", Recursive: true}) {
		denied("list agents/", obj.Err)
		break
	}
	after := map[string]string{}
	for obj := range root.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		after[obj.Key] = obj.ETag
	}
	for k, etag := range after {
		if before[k] != etag && k != "agents/edge-01/status.json" {
			t.Errorf("%s changed or appeared after the refused writes", k)
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			t.Errorf("%s is gone after the refused deletes", k)
		}
	}
	// A missing object it may read is "not found" (MinIO answers 404 even
	// without s3:ListBucket), so addond's "no document yet" works as is.
	if _, err := agent.StatObject(ctx, bucket, "artifacts/nope/1.0.0/linux-amd64/nope", minio.StatObjectOptions{}); minio.ToErrorResponse(err).StatusCode != 404 {
		t.Errorf("a missing artifact under the policy: %v (%d), want 404", err, minio.ToErrorResponse(err).StatusCode)
	}
	// What it may write, it may: its own report.
	if err := put("agents/edge-01/status.json"); err != nil {
		t.Fatalf("edge-01's identity writing its own report: %v", err)
	}
}

// TestReportDeniedByPolicy: an agent whose identity may read what it
// runs but not write its report (the bucket policy denies it) runs, updates
// and promotes its add-ons as if reports were taken; the refusals are
// counted, logged, and write nothing.
func TestReportDeniedByPolicy(t *testing.T) {
	e := newEnv(t, "s3")
	srv := miniotest.Require(t)
	e.publishFile("hello", "1.0.0", filepath.Join(bin, "hello"))
	e.publishFile("hello", "1.1.0", filepath.Join(bin, "hello"))
	e.assignWithConfig("hello@1.0.0", "hello", `{}`)

	var policy struct {
		Version   string
		Statement []map[string]any
	}
	if err := json.Unmarshal([]byte(e.run("addonctl", "fleet", "policy", "--store", e.storeURL, "--agent", "edge-01")), &policy); err != nil {
		t.Fatal(err)
	}
	policy.Statement = slices.DeleteFunc(policy.Statement, func(s map[string]any) bool { return s["Sid"] == "WriteOwnReport" })
	if len(policy.Statement) != 1 {
		t.Fatalf("policy without its report statement: %+v", policy)
	}
	readOnly, _ := json.Marshal(policy)
	id := agentIdentity(t, srv, string(readOnly))

	publisher := e.extraEnv
	e.extraEnv = []string{"AWS_ACCESS_KEY_ID=" + id.AccessKeyID, "AWS_SECRET_ACCESS_KEY=" + id.SecretAccessKey, "AWS_SESSION_TOKEN=" + id.SessionToken,
		"MINIO_ACCESS_KEY=", "MINIO_SECRET_KEY=", "MINIO_ROOT_USER=", "MINIO_ROOT_PASSWORD="}
	metrics := arFreeAddr(t)
	e.extra = map[string]any{"report": map[string]string{"min_interval": "1s"}, "metrics_address": metrics, "poll_interval": "1s", "probation": "2s"}
	d, _ := e.startReady(t)
	e.extraEnv = publisher
	d.waitAddon(t, "hello", 30*time.Second, "running 1.0.0", runningHealthy("1.0.0"))

	e.assignWithConfig("hello@1.1.0", "hello", `{}`)
	if st := d.waitAddon(t, "hello", 30*time.Second, "1.1.0 promoted", runningHealthy("1.1.0")); st.Probation {
		eventually(t, 30*time.Second, "1.1.0 off probation", func() bool {
			st, err := d.client.Status(context.Background())
			return err == nil && len(st.Addons) == 1 && !st.Addons[0].Probation && st.Addons[0].ActiveVersion == "1.1.0"
		})
	}
	eventually(t, 10*time.Second, "the refused report writes counted", func() bool {
		return strings.Contains(arMetrics(t, metrics), `addond_report_writes_total{result="error"}`)
	})
	if m := grepLines(arMetrics(t, metrics), "addond_report_writes_total"); strings.Contains(m, `result="ok"`) {
		t.Fatalf("a report write succeeded against a policy that denies it:\n%s", m)
	}
	if !d.logged("retrying with backoff") || !strings.Contains(d.logText(), "Access Denied") {
		t.Fatalf("the refusal was not logged with its reason:\n%s", d.logText())
	}
	st, err := store.Open(e.storeURL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Stat(context.Background(), fleet.ReportKey("edge-01")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a report was written: %v", err)
	}
}
