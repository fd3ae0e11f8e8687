// Package delivery turns a resolved, validated add-on spec into a staged
// version on disk, and knows nothing of supervision.
//
// One streaming pass carries the artifact from the store through SHA-256 and
// Ed25519 verification into a partial file under <runtime_root>/tmp/ —
// never the whole artifact in memory. Only a verified file is fsynced and
// renamed into addons/<id>/versions/<version>/<binary>; activation swaps the
// relative addons/<id>/current symlink by rename. A download that breaks off
// resumes with a Range request bound to the object's ETag (If-Match), and
// starts again from zero when the object changed. The runtime tree is laid
// out in DESIGN.md ("Contract: files").
package delivery
