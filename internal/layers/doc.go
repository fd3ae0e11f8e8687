// Package layers holds the test that keeps the repository's dependencies
// pointing one way (docs/ARCHITECTURE.md): cmd/ → daemon/ → supervisors/ →
// sdk/; daemon/ and cmd/addond-updater → capabilities/, which imports
// nothing of daemon/ or supervisors/; and the add-on SDK, a module of its
// own, depending on go-plugin and grpc (and protobuf, their wire format)
// alone, so that an add-on never pulls in the agent.
package layers
