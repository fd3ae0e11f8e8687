#!/usr/bin/env bash
# Runs every fuzz target of the repository's modules (the agent's and the
# add-on SDK's: `go test -fuzz` takes only a main module's packages, so each
# is built from its own module), each for FUZZTIME with
# FUZZPARALLEL workers (FUZZJOBS targets at a time), and prints a markdown
# table of the runs at the end. Each package's instrumented test binary is
# built once and run from the package directory, so that a crasher lands
# in <pkg>/testdata/fuzz/<FuzzName>/ and the seed corpus there is used; the
# generated corpus goes to Go's fuzz cache, as with `go test -fuzz`.
#
#   FUZZTIME      time per target (3m); anything -test.fuzztime takes
#   FUZZPARALLEL  fuzzing workers per target (1)
#   FUZZJOBS      targets fuzzed at the same time (1)
#   FUZZMINIMIZE  -test.fuzzminimizetime (200x): Go's default of 60s per
#                 new corpus entry would spend most of a short run
#                 minimizing, and some of these binaries minimize slowly
#   FUZZMODS      module directories, in this order (". sdk")
#   FUZZPKGS      packages to fuzz in each module, in this order (./...)
#   FUZZMATCH     only targets whose name matches this extended regexp (.)
#   FUZZREPORT    also write the table to this file
#
# SIGINT/SIGTERM stop the runs in progress and still print the table.
# Exits non-zero when a target failed (a crasher, or a build failure).
set -uo pipefail

GO=${GO:-go}
FUZZTIME=${FUZZTIME:-3m}
FUZZPARALLEL=${FUZZPARALLEL:-1}
FUZZJOBS=${FUZZJOBS:-1}
FUZZMINIMIZE=${FUZZMINIMIZE:-200x}
FUZZMODS=${FUZZMODS:-. sdk}
FUZZPKGS=${FUZZPKGS:-./...}
FUZZMATCH=${FUZZMATCH:-.}
FUZZREPORT=${FUZZREPORT:-}

cd "$(dirname "$0")/.."
cache=$($GO env GOCACHE)/fuzz
work=$(mktemp -d)
declare -A running=() # pid -> row index
interrupted=0
stop() {
	interrupted=1
	echo "fuzz: interrupted; stopping the runs in progress" >&2
	for pid in "${!running[@]}"; do kill -INT "$pid" 2>/dev/null; done
}
cleanup() {
	for pid in "${!running[@]}"; do kill "$pid" 2>/dev/null; done
	rm -rf "$work"
}
trap cleanup EXIT
trap stop INT TERM

start=$SECONDS
failed=0
dirs=() mods=() pkgs=() targets=() bins=() rows=() t0s=()

# The targets, in module and package order.
for mod in $FUZZMODS; do
	# A module that cannot be listed, or has no target where every target
	# was asked for, fails the run: it must not pass by fuzzing nothing.
	# shellcheck disable=SC2086
	if ! listing=$($GO list -C "$mod" -f '{{if or .TestGoFiles .XTestGoFiles}}{{.Dir}} {{.ImportPath}}{{end}}' $FUZZPKGS); then
		echo "fuzz: go list in module $mod failed" >&2
		exit 1
	fi
	before=${#targets[@]}
	while read -r dir pkg; do
		[ -n "$dir" ] || continue
		for t in $(grep -hoE '^func Fuzz[A-Za-z0-9_]+\(f \*testing\.F\)' "$dir"/*_test.go 2>/dev/null |
			sed -E 's/^func (Fuzz[A-Za-z0-9_]+).*/\1/' | grep -E -- "$FUZZMATCH" | sort); do
			dirs+=("$dir") mods+=("$mod") pkgs+=("$pkg") targets+=("$t") bins+=("$work/$(tr / _ <<<"$pkg").test") rows+=("")
		done
	done <<<"$listing"
	if [ "$FUZZMATCH" = . ] && [ "$FUZZPKGS" = ./... ] && [ "${#targets[@]}" = "$before" ]; then
		echo "fuzz: module $mod has no fuzz target" >&2
		exit 1
	fi
done

short() { echo "${1#github.com/addond/addond/}"; }

# A row from a finished run's log and exit status.
finish() {
	local i=$1 rc=$2 log=$work/$1.log last elapsed execs newc result crasher
	last=$(grep -E '^fuzz: elapsed: .*execs: [0-9]+' "$log" | tail -n 1)
	elapsed=$(sed -nE 's/^fuzz: elapsed: ([^,]+),.*/\1/p' <<<"$last")
	execs=$(sed -nE 's/.*execs: ([0-9]+) .*/\1/p' <<<"$last")
	newc=$(sed -nE 's/.*new interesting: ([0-9]+).*/\1/p' <<<"$last")
	if [ "$rc" = 0 ] && grep -q '^PASS' "$log"; then
		result=ok
		if [ "$interrupted" = 1 ]; then result="ok (stopped early)"; fi
	elif [ "$interrupted" = 1 ] && ! grep -q 'Failing input written to' "$log"; then
		result=interrupted
	elif ! grep -q 'Failing input written to' "$log" && grep -q '^    context deadline exceeded$' "$log" &&
		! grep -qE '_test\.go:[0-9]+:' "$log"; then
		# Go's fuzzing engine can end a run that found a new input in its
		# last moment with its own -fuzztime deadline as the "failure":
		# no input failed, none was written.
		result="ok (the engine's own deadline)"
	else
		failed=1
		crasher=$(sed -nE 's/.*Failing input written to (testdata\/fuzz\/[^ ]+).*/\1/p' "$log" | tail -n 1)
		result="FAIL${crasher:+ ($(short "${pkgs[$i]}")/$crasher)}"
		echo "--- ${pkgs[$i]} ${targets[$i]}:" >&2
		tail -n 40 "$log" >&2
	fi
	rows[i]="| $(short "${pkgs[$i]}") | ${targets[$i]} | ${elapsed:-$((SECONDS - t0s[i]))s} | ${execs:-0} | ${newc:-0} | $result |"
	echo "== done $(short "${pkgs[$i]}") ${targets[$i]}: $result, ${execs:-0} executions"
}

# Wait for one run to end.
reap() {
	local pid rc
	wait -n -p pid "${!running[@]}"
	rc=$?
	if [ -z "${pid:-}" ]; then
		return # a trapped signal woke the wait
	fi
	finish "${running[$pid]}" "$rc"
	unset "running[$pid]"
}

built=""
for i in "${!targets[@]}"; do
	[ "$interrupted" = 1 ] && break
	pkg=${pkgs[$i]} bin=${bins[$i]}
	case " $built " in
	*" $pkg "*) ;;
	*)
		echo "== build $(short "$pkg")"
		built="$built $pkg"
		if ! $GO test -C "${mods[$i]}" -c -fuzz=. -o "$bin" "$pkg" >"$work/build.log" 2>&1; then
			cat "$work/build.log" >&2
			failed=1
			rm -f "$bin"
		fi
		;;
	esac
	if [ ! -x "$bin" ]; then
		rows[i]="| $(short "$pkg") | ${targets[$i]} | - | - | - | build failed |"
		continue
	fi
	while [ "${#running[@]}" -ge "$FUZZJOBS" ]; do reap; done
	[ "$interrupted" = 1 ] && break
	echo "== $(short "$pkg") ${targets[$i]} ($FUZZTIME, $FUZZPARALLEL worker(s))"
	t0s[i]=$SECONDS
	(cd "${dirs[$i]}" && exec "$bin" -test.run='^$' -test.fuzz="^${targets[$i]}\$" -test.fuzztime="$FUZZTIME" \
		-test.fuzzminimizetime="$FUZZMINIMIZE" -test.parallel="$FUZZPARALLEL" -test.fuzzcachedir="$cache/$pkg") \
		>"$work/$i.log" 2>&1 &
	running[$!]=$i
done
while [ "${#running[@]}" -gt 0 ]; do reap; done

ran=0
table="| package | target | fuzz time | executions | new corpus entries | result |
|---|---|---|---|---|---|"
for i in "${!targets[@]}"; do
	if [ -n "${rows[$i]}" ]; then
		table+=$'\n'"${rows[$i]}"
		ran=$((ran + 1))
	fi
done
echo
echo "fuzz: $ran of ${#targets[@]} target(s), FUZZTIME=$FUZZTIME FUZZPARALLEL=$FUZZPARALLEL FUZZJOBS=$FUZZJOBS, $((SECONDS - start))s in all"
echo
echo "$table"
if [ -n "$FUZZREPORT" ]; then echo "$table" >"$FUZZREPORT"; fi
[ "$failed" = 0 ] && [ "$interrupted" = 0 ]
