#!/usr/bin/env bash
# Build an os_package add-on as its own deb or rpm, addond-addon-NAME, from
# this template (packaging/README.md, "Add-on packages"):
#
#   packaging/addon-template/build.sh --name pingsweep --version 1.0.0 \
#       --arch amd64 --format deb --binary bin/pingsweep \
#       --summary "ICMP ping sweeper" --copyright COPYRIGHT \
#       [--licenses DIR] --out dist
#
# --licenses: the license texts and NOTICE files of what the binary bundles
# (`go-licenses save` writes such a directory), shipped under
# /usr/share/doc/addond-addon-NAME/licenses/.
# The binary lands at /usr/libexec/addond-addons/NAME/NAME (root:root 0755),
# a README naming the assignment to use in /usr/share/doc/addond-addon-NAME/.
# nfpm is $NFPM, else built from packaging/tools.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage() {
	echo "usage: $0 --name NAME --version VERSION --arch ARCH --binary FILE --copyright FILE --out DIR" \
		"[--format deb|rpm] [--summary TEXT] [--maintainer 'NAME <EMAIL>'] [--licenses DIR]" >&2
	exit 2
}
name= version= arch= binary= copyright= out= format=deb licenses=
summary= maintainer="addond maintainers <maintainers@addond.invalid>"
while [ $# -gt 0 ]; do
	[ $# -ge 2 ] || usage
	case $1 in
	--name) name=$2 ;;
	--version) version=$2 ;;
	--arch) arch=$2 ;;
	--binary) binary=$2 ;;
	--copyright) copyright=$2 ;;
	--licenses) licenses=$2 ;;
	--out) out=$2 ;;
	--format) format=$2 ;;
	--summary) summary=$2 ;;
	--maintainer) maintainer=$2 ;;
	*) usage ;;
	esac
	shift 2
done
[ -n "$name" ] && [ -n "$version" ] && [ -n "$arch" ] && [ -n "$binary" ] && [ -n "$copyright" ] && [ -n "$out" ] || usage
# The add-on id rule (DESIGN.md), and a version dpkg and rpm both take.
if ! [[ $name =~ ^[a-z0-9][a-z0-9_-]{0,62}$ ]] || [[ $name == *_* ]]; then
	echo "addon-template: name $name: want an add-on id of lowercase letters, digits and '-' (a package name has no '_')" >&2
	exit 1
fi
if ! [[ $version =~ ^[0-9][A-Za-z0-9.+~]{0,63}$ ]]; then
	echo "addon-template: version $version: want digits first, then letters, digits, '.', '+' or '~'" >&2
	exit 1
fi
summary=${summary:-addond add-on $name}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(date +%s)}

stage=$(mktemp -d "${TMPDIR:-/tmp}/addond-addon.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/doc/licenses"
if [ -n "$licenses" ]; then
	cp -R "$licenses/." "$stage/doc/licenses/"
	chmod -R u=rwX,go=rX "$stage/doc/licenses"
fi
install -m 0755 "$binary" "$stage/bin/$name"
install -m 0644 "$copyright" "$stage/doc/copyright"
binary_path=/usr/libexec/addond-addons/$name/$name
sha=$(sha256sum "$binary" | cut -d' ' -f1)
sed -e "s|@NAME@|$name|g" -e "s|@VERSION@|$version|g" -e "s|@BINARY_PATH@|$binary_path|g" \
	-e "s|@SHA256@|$sha|g" -e "s|@SUMMARY@|${summary//|/\\|}|g" "$here/README.in" >"$stage/doc/README"
printf 'addond-addon-%s (%s) unstable; urgency=medium\n\n  * Packaged with the addond add-on template.\n\n -- %s  %s\n' \
	"$name" "$version" "$maintainer" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")" | gzip -9n >"$stage/doc/changelog.gz"

if [ -z "${NFPM:-}" ]; then
	NFPM=$stage/nfpm
	"${GO:-go}" -C "$here/../tools" build -o "$NFPM" github.com/goreleaser/nfpm/v2/cmd/nfpm
fi
mkdir -p "$out"
ADDON_NAME=$name ADDON_VERSION=$version ADDON_ARCH=$arch ADDON_SUMMARY=$summary \
	ADDON_MAINTAINER=$maintainer ADDON_STAGE=$stage \
	"$NFPM" package --config "$here/nfpm.yaml" --packager "$format" --target "$out/"
