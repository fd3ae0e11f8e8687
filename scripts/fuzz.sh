#!/usr/bin/env bash
# Runs every fuzz target of the main module, one after the other, each for
# FUZZTIME with FUZZPARALLEL workers, and prints a markdown table of the
# runs at the end. Each package's instrumented test binary is built once
# and run from the package directory, so that a crasher lands in
# <pkg>/testdata/fuzz/<FuzzName>/ and the seed corpus there is used; the
# generated corpus goes to Go's fuzz cache, as with `go test -fuzz`.
#
#   FUZZTIME      time per target (3m); anything -test.fuzztime takes
#   FUZZPARALLEL  fuzzing workers per target (1)
#   FUZZMINIMIZE  -test.fuzzminimizetime (200x): Go's default of 60s per
#                 new corpus entry would spend most of a short run
#                 minimizing, and some of these binaries minimize slowly
#   FUZZPKGS      packages to fuzz (./...)
#   FUZZMATCH     only targets whose name matches this extended regexp (.)
#   FUZZREPORT    also write the table to this file
#
# Exits non-zero when a target failed (a crasher, or a build failure).
set -uo pipefail

GO=${GO:-go}
FUZZTIME=${FUZZTIME:-3m}
FUZZPARALLEL=${FUZZPARALLEL:-1}
FUZZMINIMIZE=${FUZZMINIMIZE:-200x}
FUZZPKGS=${FUZZPKGS:-./...}
FUZZMATCH=${FUZZMATCH:-.}
FUZZREPORT=${FUZZREPORT:-}

cd "$(dirname "$0")/.."
cache=$($GO env GOCACHE)/fuzz
work=$(mktemp -d)
child=
cleanup() {
	[ -n "$child" ] && kill "$child" 2>/dev/null && wait "$child" 2>/dev/null
	rm -rf "$work"
}
stop() {
	echo "fuzz: interrupted; the table has the targets that ran" >&2
	interrupted=1
	[ -n "$child" ] && kill -INT "$child" 2>/dev/null
}
trap cleanup EXIT
trap stop INT TERM
interrupted=0

rows=()
failed=0
start=$SECONDS
# shellcheck disable=SC2086
while read -r dir pkg; do
	[ "$interrupted" = 1 ] && break
	targets=$(grep -hoE '^func Fuzz[A-Za-z0-9_]+\(f \*testing\.F\)' "$dir"/*_test.go 2>/dev/null |
		sed -E 's/^func (Fuzz[A-Za-z0-9_]+).*/\1/' | grep -E -- "$FUZZMATCH" | sort)
	[ -z "$targets" ] && continue
	bin=$work/$(echo "$pkg" | tr / _).test
	echo "== build $pkg"
	if ! $GO test -c -fuzz=. -o "$bin" "$pkg" >"$work/build.log" 2>&1; then
		cat "$work/build.log" >&2
		for t in $targets; do
			rows+=("| $pkg | $t | - | - | - | build failed |")
		done
		failed=1
		continue
	fi
	for t in $targets; do
		[ "$interrupted" = 1 ] && break
		echo "== $pkg $t ($FUZZTIME, $FUZZPARALLEL worker(s))"
		log=$work/$t.log
		t0=$SECONDS
		(cd "$dir" && exec "$bin" -test.run='^$' -test.fuzz="^$t\$" -test.fuzztime="$FUZZTIME" -test.fuzzminimizetime="$FUZZMINIMIZE" \
			-test.parallel="$FUZZPARALLEL" -test.fuzzcachedir="$cache/$pkg") >"$log" 2>&1 &
		child=$!
		wait "$child"
		rc=$?
		# wait returns early on a trapped signal: wait for the run itself.
		while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done
		child=
		last=$(grep -E '^fuzz: elapsed: .*execs: [0-9]+' "$log" | tail -n 1)
		elapsed=$(sed -nE 's/^fuzz: elapsed: ([^,]+),.*/\1/p' <<<"$last")
		execs=$(sed -nE 's/.*execs: ([0-9]+) .*/\1/p' <<<"$last")
		newc=$(sed -nE 's/.*new interesting: ([0-9]+).*/\1/p' <<<"$last")
		if [ "$rc" = 0 ] && grep -q '^PASS' "$log"; then
			result=ok
		elif [ "$interrupted" = 1 ]; then
			result="interrupted"
		else
			failed=1
			crasher=$(sed -nE 's/.*(testdata\/fuzz\/[^ ]+).*/\1/p' "$log" | grep -v '^$' | tail -n 1)
			result="FAIL${crasher:+ ($dir/$crasher)}"
			result=${result/$PWD\//}
			tail -n 40 "$log" >&2
		fi
		rows+=("| ${pkg#github.com/addond/addond/} | $t | ${elapsed:-$((SECONDS - t0))s} | ${execs:-0} | ${newc:-0} | $result |")
	done
done < <($GO list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.Dir}} {{.ImportPath}}{{end}}' $FUZZPKGS)

table=$(
	echo "| package | target | fuzz time | executions | new corpus entries | result |"
	echo "|---|---|---|---|---|---|"
	printf '%s\n' "${rows[@]}"
)
echo
echo "fuzz: ${#rows[@]} target(s), FUZZTIME=$FUZZTIME FUZZPARALLEL=$FUZZPARALLEL, $((SECONDS - start))s in all"
echo
echo "$table"
[ -n "$FUZZREPORT" ] && { echo "$table" >"$FUZZREPORT"; }
[ "$failed" = 0 ] && [ "$interrupted" = 0 ]
