// Package sdk is what add-on authors build against: implement Addon and
// call Serve, and the program is an addond sidecar — about twenty lines:
//
//	type hello struct{}
//
//	func (hello) Info(context.Context) (sdk.Info, error) { return sdk.Info{ID: "hello", Version: "1.0.0"}, nil }
//	func (hello) Configure(_ context.Context, config []byte) error { return nil }
//	func (hello) Health(context.Context) (sdk.Health, error) { return sdk.Health{Status: sdk.Healthy}, nil }
//
//	func main() { sdk.Serve(hello{}) }
//
// Under addond the program speaks go-plugin's gRPC protocol (mutual TLS over
// a unix socket, as go-plugin's AutoMTLS sets it up on the add-on's side; a
// magic-cookie handshake; grpc.health.v1). Started any other
// way — by hand, or as a systemd unit — Serve runs it standalone: it reads
// its configuration from the file named by $ADDOND_CONFIG, calls Configure
// once, and runs until SIGTERM or SIGINT.
//
// The package never imports the agent: an add-on links the SDK, the
// generated protocol (sdk/proto) and its own code, nothing of addond. The
// host side of the protocol (Client) lives here too, so that both ends of
// the contract are one package.
package sdk
