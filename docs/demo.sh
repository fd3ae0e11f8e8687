#!/usr/bin/env bash
# `make demo`: the main job on the embedded default — a file:// store in a
# temporary directory, no server, no root, no systemd. Act 1: a publisher
# signs and publishes an add-on, assigns it to an agent, and `addond stage`
# fetches, verifies and stages it; a new version, a tampered artifact, a
# local pin and a store outage show what the agent does with each. Act 2:
# `addond run` supervises the hello sidecar, a deliberately unhealthy new
# version is pushed and rolled back, the fleet's view shows it, and
# everything stops. DEMO_KEEP=1
# leaves addond running at the end instead.
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

mv "$DEMO/store.away" "$DEMO/store"

say "act 2: addond run supervises the hello sidecar"
run "$BIN/addonctl" publish --store "$STORE" --key "$DEMO/keys/signing.key" --id hello --version 1.0.0 "$PLATFORM=$BIN/examples/hello"
run "$BIN/addonctl" publish --store "$STORE" --key "$DEMO/keys/signing.key" --id hello --version 1.1.0 "$PLATFORM=$BIN/examples/hello"
run "$BIN/addonctl" assign --store "$STORE" --agent demo-01 --key "$DEMO/keys/signing.key" --addon hello@1.0.0
cat >"$DEMO/run.json" <<JSON
{
  "agent_id": "demo-01",
  "runtime_root": "$DEMO/runtime",
  "store": "$STORE",
  "assignments": {"store_key": "agents/demo-01/assignments.json"},
  "trust": {"public_keys": ["$DEMO/keys/signing.pub"]},
  "status_socket": "$DEMO/addond.sock",
  "systemd": {"manager": "none"},
  "poll_interval": "2s",
  "probation": "6s",
  "report": {"min_interval": "1s"},
  "min_free_bytes": 1048576
}
JSON
printf '$ addond run --config %s &   (log: %s)\n' "$DEMO/run.json" "$DEMO/addond.log"
"$BIN/addond" run --config "$DEMO/run.json" >"$DEMO/addond.log" 2>&1 &
ADDOND_PID=$!
trap 'kill $ADDOND_PID 2>/dev/null || true; wait $ADDOND_PID 2>/dev/null || true; rm -rf "$DEMO"' EXIT
# addonctl status exits 1 while an add-on is not running and healthy.
status() { "$BIN/addonctl" status --socket "$DEMO/addond.sock" || [ $? -eq 1 ]; }
wait_for() { # wait_for PATTERN: until addonctl status matches
	for _ in $(seq 1 150); do
		if status 2>/dev/null | grep -Eq "$1"; then return 0; fi
		sleep 0.2
	done
	echo "timed out waiting for: $1"; status; cat "$DEMO/addond.log"; exit 1
}
wait_for '^hello +running +healthy +1\.0\.0'
run status

say "publisher: hello 1.1.0 with a configuration that makes it unhealthy"
echo '{"health": "unhealthy"}' >"$DEMO/unhealthy.json"
run "$BIN/addonctl" assign --store "$STORE" --agent demo-01 --key "$DEMO/keys/signing.key" --addon hello@1.1.0 --config hello="$DEMO/unhealthy.json"
run "$BIN/addonctl" reconcile --socket "$DEMO/addond.sock"
wait_for '^hello +unhealthy'
run status
echo "(1.1.0 is on probation for 6s; it does not become healthy ...)"
wait_for '^hello +rolled_back +healthy +1\.1\.0 +1\.0\.0'
run status
echo "(... so current is back on 1.0.0 with its own configuration, and 1.1.0 is not retried until the assignment changes or 'addonctl retry hello')"
run readlink "$DEMO/runtime/addons/hello/current"

say "fleet: the agent reports to the store (agents/demo-01/status.json); the operator reads the fleet"
for _ in $(seq 1 50); do
	fleet=$("$BIN/addonctl" fleet status --store "$STORE" 2>/dev/null || true) # exit 1 while anything is wrong
	grep -q 'rolled_back' <<<"$fleet" && break
	sleep 0.2
done
run "$BIN/addonctl" fleet status --store "$STORE" && rc=0 || rc=$?
echo "(exit status $rc: an add-on is rolled back; a fleet where every add-on runs healthy exits 0)"

if [ "${DEMO_KEEP:-}" = 1 ]; then
	trap - EXIT
	say "DEMO_KEEP=1: addond keeps running (pid $ADDOND_PID)"
	echo "  $BIN/addonctl status --socket $DEMO/addond.sock"
	echo "  kill $ADDOND_PID; rm -rf $DEMO    # when done"
	exit 0
fi

say "stopping addond: its sidecars stop with it"
kill "$ADDOND_PID"
wait "$ADDOND_PID"
if pgrep -f "$DEMO/runtime" >/dev/null; then echo "UNEXPECTED: an add-on outlived addond"; exit 1; fi
echo "(addond exited cleanly; no add-on process left)"

say "demo done"
