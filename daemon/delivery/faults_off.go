//go:build !faultinject

package delivery

const faultsEnabled = false

// FaultPoint is a no-op outside test builds (-tags faultinject).
func FaultPoint(string) {}
