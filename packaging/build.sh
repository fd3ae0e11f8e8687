#!/usr/bin/env bash
# `make packages` (packaging/README.md): the addond deb and rpm for each of
# ARCHES, and the pingsweep add-on's, from packaging/addon-template, into
# OUT. nfpm and the generators come from the tools module packaging/tools,
# which keeps them out of the main module's dependencies.
#
#   VERSION=0.1.0-dev+abc1234 OUT=dist packaging/build.sh
#
# Environment: VERSION (required; "-" becomes "~" so that a pre-release
# sorts before its release in dpkg and rpm), OUT [dist], ARCHES
# [amd64 arm64], FORMATS [deb rpm], GO [go], SOURCE_DATE_EPOCH [the commit
# time]: every file's time in the packages, the man pages' and the
# changelog's date.
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
: "${VERSION:?VERSION is required}"
OUT=$(realpath -m "${OUT:-dist}")
ARCHES=${ARCHES:-amd64 arm64}
FORMATS=${FORMATS:-deb rpm}
MAINTAINER="addond maintainers <maintainers@addond.invalid>"

PKG_VERSION=${VERSION//-/\~}
if ! [[ $PKG_VERSION =~ ^[0-9][A-Za-z0-9.+~]*$ ]]; then
	echo "packaging: version $PKG_VERSION (from $VERSION) is not a valid deb and rpm version" >&2
	exit 1
fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
DATE_DAY=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
DATE_RFC=$(date -u -R -d "@$SOURCE_DATE_EPOCH")

BUILD=$(mktemp -d "${TMPDIR:-/tmp}/addond-packages.XXXXXX")
trap 'rm -rf "$BUILD"' EXIT
mkdir -p "$OUT" "$BUILD/share" "$BUILD/pingsweep"

# Tools, from their own module.
"$GO" -C packaging/tools build -o "$BUILD/tools/" \
	github.com/goreleaser/nfpm/v2/cmd/nfpm github.com/google/go-licenses/v2
NFPM=$BUILD/tools/nfpm
GO_LICENSES=$BUILD/tools/go-licenses

# Binaries: static Go (no cgo), built as position-independent executables
# (the kernel loads them at a random address; lintian refuses static
# non-PIE ones) with immediate binding, stripped.
LDFLAGS="-s -w -bindnow -X github.com/addond/addond/daemon.Version=$VERSION -X github.com/addond/addond/capabilities.Version=$VERSION"
for arch in $ARCHES; do
	echo "packaging: building linux/$arch binaries"
	CGO_ENABLED=0 GOOS=linux GOARCH=$arch "$GO" build -trimpath -buildmode=pie -ldflags "$LDFLAGS" \
		-o "$BUILD/$arch/" ./cmd/addond ./cmd/addonctl ./cmd/addond-updater github.com/addond/addond/sdk/examples/pingsweep
done

# Completions come from running addonctl, one for this machine; man pages
# from generator builds of the three binaries (-tags manpages: a hidden
# __man command, cobra's doc package over the binary's own command tree;
# the shipped binaries have neither), one page per command.
HOST=$BUILD/host
CGO_ENABLED=0 "$GO" build -trimpath -tags manpages -ldflags "$LDFLAGS" -o "$HOST/" ./cmd/addond ./cmd/addonctl ./cmd/addond-updater
"$HOST/addonctl" completion bash >"$BUILD/share/addonctl.bash"
"$HOST/addonctl" completion zsh >"$BUILD/share/_addonctl"
"$HOST/addonctl" completion fish >"$BUILD/share/addonctl.fish"
mkdir -p "$BUILD/share/man1" "$BUILD/share/man8"
for b in addonctl:1 addond:8 addond-updater:8; do
	"$HOST/${b%%:*}" __man --dir "$BUILD/share/man${b##*:}" --date "$DATE_DAY" --source "addond $VERSION" --manual "addond manual"
done
gzip -9n "$BUILD"/share/man1/*.1 "$BUILD"/share/man8/*.8

# changelog: packaging/files/changelog, with an entry for this version on
# top when it is not a release the file has.
top=$(sed -n '1s/^addond (\([^)]*\)).*/\1/p' packaging/files/changelog)
{
	if [ "$top" != "$PKG_VERSION" ]; then
		printf 'addond (%s) UNRELEASED; urgency=medium\n\n  * Development build %s.\n\n -- %s  %s\n\n' \
			"$PKG_VERSION" "$VERSION" "$MAINTAINER" "$DATE_RFC"
	fi
	cat packaging/files/changelog
} | gzip -9n >"$BUILD/share/changelog.gz"

# copyright: the project's, with the Go modules in the binaries and their
# licenses, from go-licenses; the license texts and NOTICE files of those
# modules go to licenses/, one directory per module. A module whose license
# go-licenses cannot classify, or one that it rates forbidden, stops the
# build.
copyright() { # OUT LICENSES PACKAGE...
	local out=$1 saved=$2
	shift 2
	GOOS=linux GOARCH=${first} "$GO_LICENSES" check --ignore github.com/addond/addond \
		--disallowed_types=forbidden,unknown "$@" 2>"$BUILD/go-licenses.log" ||
		{ cat "$BUILD/go-licenses.log" >&2; exit 1; }
	local mods
	mods=$(GOOS=linux GOARCH=${first} "$GO_LICENSES" report --ignore github.com/addond/addond \
		--template packaging/files/copyright-modules.tpl "$@" 2>>"$BUILD/go-licenses.log" | sort -u)
	awk -v mods="$mods" '$0 == " @GO_MODULES@" {print mods; next} {print}' packaging/files/copyright >"$out"
	rm -rf "$saved"
	GOOS=linux GOARCH=${first} "$GO_LICENSES" save --ignore github.com/addond/addond --save_path "$saved" \
		"$@" 2>>"$BUILD/go-licenses.log"
	# go-licenses keeps the whole source of a module under a reciprocal
	# license (MPL-2.0: go-plugin, yamux), as that license asks; its VCS
	# files and empty files are no documentation.
	find "$saved" -mindepth 1 \( -name '.*' -o -empty \) -prune -exec rm -rf {} +
	chmod -R u=rwX,go=rX "$saved"
}
first=${ARCHES%% *}
copyright "$BUILD/share/copyright" "$BUILD/share/licenses" ./cmd/addond ./cmd/addonctl ./cmd/addond-updater

for arch in $ARCHES; do
	for format in $FORMATS; do
		ARCH=$arch PKG_VERSION=$PKG_VERSION BUILD=$BUILD \
			"$NFPM" package --config packaging/nfpm.yaml --packager "$format" --target "$OUT/"
	done
done

# The pingsweep add-on, from the add-on template, at addond's version.
copyright "$BUILD/pingsweep/copyright" "$BUILD/pingsweep/licenses" github.com/addond/addond/sdk/examples/pingsweep
for arch in $ARCHES; do
	for format in $FORMATS; do
		NFPM=$NFPM packaging/addon-template/build.sh --name pingsweep --version "$PKG_VERSION" \
			--arch "$arch" --format "$format" --binary "$BUILD/$arch/pingsweep" \
			--summary "ICMP ping sweeper (example addond add-on)" \
			--copyright "$BUILD/pingsweep/copyright" --licenses "$BUILD/pingsweep/licenses" --maintainer "$MAINTAINER" --out "$OUT"
	done
done
ls -l "$OUT"/*"$PKG_VERSION"*
