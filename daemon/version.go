package daemon

// Version is addond's version, set at build time with
// -ldflags "-X github.com/addond/addond/daemon.Version=…".
var Version = "0.1.0-dev"
