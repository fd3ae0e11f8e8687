// Package assignment parses and resolves what the control plane pushes: the
// assignments document (which add-ons, which versions, which artifacts),
// the operator's local overrides patched on top of it, and the signed
// package metadata publishers write. Everything here is hostile input: the
// parsers bound sizes, and Resolve turns one add-on entry into a Spec only
// after every value that later becomes a path segment, an object key or a
// digest has been validated, so that delivery never sees an unchecked field.
package assignment
