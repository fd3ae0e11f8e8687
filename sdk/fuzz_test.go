package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	addonpb "github.com/addond/addond/sdk/proto"
)

// wireClient answers each call with a message decoded from raw bytes, as
// gRPC would from what the add-on sent.
type wireClient struct{ info, configure, health []byte }

func (w wireClient) Info(context.Context, *addonpb.InfoRequest, ...grpc.CallOption) (*addonpb.InfoResponse, error) {
	var m addonpb.InfoResponse
	return &m, proto.Unmarshal(w.info, &m)
}

func (w wireClient) Configure(context.Context, *addonpb.ConfigureRequest, ...grpc.CallOption) (*addonpb.ConfigureResponse, error) {
	var m addonpb.ConfigureResponse
	return &m, proto.Unmarshal(w.configure, &m)
}

func (w wireClient) Health(context.Context, *addonpb.HealthRequest, ...grpc.CallOption) (*addonpb.HealthResponse, error) {
	var m addonpb.HealthResponse
	return &m, proto.Unmarshal(w.health, &m)
}

// FuzzAddonAnswers: what an add-on answers over gRPC (Info, Configure,
// Health) is outside input to addond. Health maps to one of the four
// statuses (an unknown enum value is unknown, never healthy); Configure
// succeeds only when the add-on accepted, and a refusal is ErrRejected
// with the add-on's reason; Info passes the add-on's words through.
func FuzzAddonAnswers(f *testing.F) {
	enc := func(m proto.Message) []byte { b, _ := proto.Marshal(m); return b }
	f.Add(enc(&addonpb.InfoResponse{Id: "hello", Version: "1.0.0", Capabilities: []string{"hello:v1"}}),
		enc(&addonpb.ConfigureResponse{Accepted: true, ConfigHash: "0123abcd"}),
		enc(&addonpb.HealthResponse{Status: addonpb.HealthResponse_HEALTHY}))
	f.Add(enc(&addonpb.InfoResponse{Id: "../../etc"}),
		enc(&addonpb.ConfigureResponse{Accepted: false, Error: "bad interval"}),
		enc(&addonpb.HealthResponse{Status: addonpb.HealthResponse_UNHEALTHY, Reason: "no raw socket: operation not permitted"}))
	f.Add([]byte{}, []byte{}, enc(&addonpb.HealthResponse{Status: addonpb.HealthResponse_DEGRADED, Reason: "slow"}))
	f.Add([]byte{0xff}, []byte{0x08, 0x01}, []byte{0x08, 0x7f})                                // unknown enum value
	f.Add([]byte{0x0a, 0x05, 'h', 'e', 'l', 'l', 'o'}, []byte{0x0a, 0xff, 0xff}, []byte{0x08}) // truncated
	f.Fuzz(func(t *testing.T, info, configure, health []byte) {
		c := &Client{c: wireClient{info, configure, health}}
		ctx := context.Background()

		var hm addonpb.HealthResponse
		herr := proto.Unmarshal(health, &hm)
		h, err := c.Health(ctx)
		switch {
		case herr != nil:
			if err == nil {
				t.Fatalf("health %x: no error", health)
			}
		case err != nil:
			t.Fatalf("health %x: %v", health, err)
		default:
			want := map[addonpb.HealthResponse_Status]Status{addonpb.HealthResponse_HEALTHY: Healthy, addonpb.HealthResponse_DEGRADED: Degraded, addonpb.HealthResponse_UNHEALTHY: Unhealthy}[hm.Status]
			if _, known := map[addonpb.HealthResponse_Status]bool{addonpb.HealthResponse_HEALTHY: true, addonpb.HealthResponse_DEGRADED: true, addonpb.HealthResponse_UNHEALTHY: true}[hm.Status]; !known {
				want = Unknown
			}
			if h.Status != want || h.Reason != hm.Reason {
				t.Fatalf("health %v %q read as %v %q", hm.Status, hm.Reason, h.Status, h.Reason)
			}
			if s := h.Status.String(); s != "healthy" && s != "degraded" && s != "unhealthy" && s != "unknown" {
				t.Fatalf("status %q", s)
			}
		}

		var cm addonpb.ConfigureResponse
		cerr := proto.Unmarshal(configure, &cm)
		hash, err := c.Configure(ctx, []byte(`{}`))
		switch {
		case cerr != nil:
			if err == nil {
				t.Fatalf("configure %x: no error", configure)
			}
		case !cm.Accepted:
			if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), cm.Error) || hash != "" {
				t.Fatalf("refused configuration: %q, %v", hash, err)
			}
		case err != nil || hash != cm.ConfigHash:
			t.Fatalf("accepted configuration: %q, %v; want %q", hash, err, cm.ConfigHash)
		}

		var im addonpb.InfoResponse
		ierr := proto.Unmarshal(info, &im)
		in, err := c.Info(ctx)
		if (err == nil) != (ierr == nil) {
			t.Fatalf("info %x: %v, proto says %v", info, err, ierr)
		}
		if err == nil && (in.ID != im.Id || in.Version != im.Version || !reflect.DeepEqual(in.Capabilities, im.Capabilities)) {
			t.Fatalf("info %+v, proto says %v", in, &im)
		}
	})
}

// FuzzRunHelperAnswer: an add-on's RunHelper decodes what answers on the
// status socket it was given. Anything but 200 is an error (with the
// answer's "error" when it has one); a 200 is the result encoding/json
// decodes, or an error.
func FuzzRunHelperAnswer(f *testing.F) {
	f.Add(200, []byte(`{"exit_code":0,"stdout":"cHJvYmU6IGEgYgo=","stderr":"","duration_ns":15000000}`))
	f.Add(200, []byte(`{"exit_code":137,"signal":9,"timed_out":true,"stdout_truncated":true}`))
	f.Add(403, []byte(`{"error":"helper runs are for addond's own add-ons"}`))
	f.Add(404, []byte(`{"error":""}`))
	f.Add(500, []byte(`oops`))
	f.Add(200, []byte(`{"stdout":"not base64"}`))
	f.Add(200, []byte(`{"exit_code":1} {"exit_code":2}`))
	sock := filepath.Join(f.TempDir(), "addond.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		f.Fatal(err)
	}
	type answer struct {
		code int
		body []byte
	}
	current := make(chan answer, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := <-current
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(a.code)
		w.Write(a.body)
	})}
	go srv.Serve(ln)
	f.Cleanup(func() { srv.Close() })
	os.Setenv(StatusSocketEnv, sock)
	f.Fuzz(func(t *testing.T, code int, body []byte) {
		if code < 200 || code > 599 {
			code = 200 + (code%400+400)%400 // 1xx answers are interim
		}
		current <- answer{code, body}
		res, err := RunHelper(context.Background(), "probe", "a", "b")
		if code != http.StatusOK {
			if err == nil || res != nil {
				t.Fatalf("%d answered %+v, %v", code, res, err)
			}
			// 204 and 304 answers have no body (RFC 9110): what the
			// server wrote never reaches the client.
			bodyless := code == http.StatusNoContent || code == http.StatusNotModified
			var e struct{ Error string }
			if !bodyless && json.Unmarshal(body, &e) == nil && e.Error != "" && !strings.Contains(err.Error(), e.Error) {
				t.Fatalf("error %q does not carry %q", err, e.Error)
			}
			return
		}
		var want HelperResult
		werr := json.Unmarshal(body, &want)
		if (err == nil) != (werr == nil) {
			t.Fatalf("%q: %v, encoding/json says %v", body, err, werr)
		}
		if err == nil && !reflect.DeepEqual(*res, want) {
			t.Fatalf("%q: %+v, encoding/json says %+v", body, *res, want)
		}
	})
}
