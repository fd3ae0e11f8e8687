#!/usr/bin/env bash
# `make demo`: the main job on the embedded default — a file:// store in a
# temporary directory, no server. A publisher signs and publishes an add-on,
# assigns it to an agent, and `addond stage` fetches, verifies and stages
# it; then a new version, a tampered artifact and a store outage show what
# the agent does with each.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin
[ -x "$BIN/addond" ] || { echo "run 'make build' first" >&2; exit 1; }

DEMO=$(mktemp -d /tmp/addond-demo.XXXXXX)
trap 'rm -rf "$DEMO"' EXIT
STORE="file://$DEMO/store"
PLATFORM="$(go env GOOS)/$(go env GOARCH)"
mkdir -p "$DEMO/store"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "publisher: a signing key"
run "$BIN/addonctl" keygen --out "$DEMO/keys"

say "publisher: sign and publish probe 1.0.0, assign it to agent demo-01"
run "$BIN/addonctl" publish --store "$STORE" --key "$DEMO/keys/signing.key" \
	--id probe --version 1.0.0 --supervision ephemeral_helper "$PLATFORM=$BIN/examples/probe"
run "$BIN/addonctl" assign --store "$STORE" --agent demo-01 --key "$DEMO/keys/signing.key" --addon probe@1.0.0

cat >"$DEMO/addond.json" <<JSON
{
  "agent_id": "demo-01",
  "runtime_root": "$DEMO/runtime",
  "store": "$STORE",
  "assignments": {"store_key": "agents/demo-01/assignments.json"},
  "trust": {"public_keys": ["$DEMO/keys/signing.pub"], "require_signatures": true},
  "local_overrides": "$DEMO/addons.local.json",
  "min_free_bytes": 1048576
}
JSON

say "agent: one delivery reconcile (fetch, verify sha256 + ed25519 in one pass, stage)"
run "$BIN/addond" stage --config "$DEMO/addond.json"
run ls -l "$DEMO/runtime/addons/probe/"
run "$DEMO/runtime/addons/probe/current/probe" hello from the staged add-on

say "agent: nothing changed, nothing is downloaded again"
run "$BIN/addond" stage --config "$DEMO/addond.json"

say "publisher: probe 1.1.0; the agent swaps current atomically"
run "$BIN/addonctl" publish --store "$STORE" --key "$DEMO/keys/signing.key" \
	--id probe --version 1.1.0 --supervision ephemeral_helper "$PLATFORM=$BIN/examples/probe"
run "$BIN/addonctl" assign --store "$STORE" --agent demo-01 --key "$DEMO/keys/signing.key" --addon probe@1.1.0
run "$BIN/addond" stage --config "$DEMO/addond.json"
run readlink "$DEMO/runtime/addons/probe/current"

say "attack: probe 1.2.0 is tampered with in the store after it was signed"
run "$BIN/addonctl" publish --store "$STORE" --key "$DEMO/keys/signing.key" \
	--id probe --version 1.2.0 --supervision ephemeral_helper "$PLATFORM=$BIN/examples/probe"
run "$BIN/addonctl" assign --store "$STORE" --agent demo-01 --key "$DEMO/keys/signing.key" --addon probe@1.2.0
# one flipped byte, same size
printf '\xff' | dd of="$DEMO/store/artifacts/probe/1.2.0/${PLATFORM/\//-}/probe" bs=1 seek=4096 conv=notrunc status=none
if "$BIN/addond" stage --config "$DEMO/addond.json"; then echo "UNEXPECTED: tampered artifact accepted"; exit 1; fi
echo "(exit 1: refused, and 1.1.0 stays current)"
run readlink "$DEMO/runtime/addons/probe/current"

say "operator: pin probe back to 1.0.0 locally (resolved from its signed package)"
echo '{"addons": [{"addon_id": "probe", "version": "1.0.0"}]}' >"$DEMO/addons.local.json"
run "$BIN/addond" stage --config "$DEMO/addond.json"
run readlink "$DEMO/runtime/addons/probe/current"
rm "$DEMO/addons.local.json"

say "outage: the store disappears; the agent keeps its last-known-good version"
mv "$DEMO/store" "$DEMO/store.away"
if "$BIN/addond" stage --config "$DEMO/addond.json"; then echo "UNEXPECTED: converged without a store"; exit 1; fi
echo "(exit 1: not converged, last-known-good kept)"
run "$DEMO/runtime/addons/probe/current/probe" still running 1.0.0 from last-known-good

say "demo done"
