#!/bin/sh
# Builds the base root filesystem of a worker image as a tar, from Debian packages, with
# mmdebstrap, from the mirror in the host's apt sources (no mirror host is named in this project).
# usage: build-rootfs.sh OUT.tar PACKAGES_FILE...
set -eu
out=$1
shift
# The images' Debian release is the recipe's choice, not the host's: trixie's Node.js 20 is
# supported upstream (bookworm's 18 is not) and its Python is 3.13.
suite=trixie

# The mirror is the host's (apt-sources.sh).
srcdir=$(mktemp -d)
trap 'rm -rf "$srcdir"' EXIT
sources=$("$(dirname "$0")/apt-sources.sh" "$suite" "$srcdir")

# The first column of each line that is not a comment.
# passwd: the sandbox user is made with its useradd.
include=$( (awk '!/^[[:space:]]*#/ && NF { print $1 }' "$@"; echo passwd) | sort -u | paste -sd, -)

tmp="$out.partial"
rm -f "$tmp"
# shellcheck disable=SC2086 # $sources is a list of paths without spaces
# shellcheck disable=SC2016 # the hooks' "$1" is the tree, expanded by mmdebstrap
mmdebstrap --variant=minbase --mode=root --format=tar \
	--aptopt='APT::Install-Recommends "false"' \
	--include="$include" \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' \
	--dpkgopt='path-exclude=/usr/include/boost/*' \
	--customize-hook='chroot "$1" useradd --uid 1000 --user-group --create-home --shell /bin/bash sandbox' \
	--customize-hook='mkdir -p "$1/sandbox" && chown 1000:1000 "$1/sandbox"' \
	--customize-hook='if chroot "$1" python3 -c "import matplotlib" 2>/dev/null; then mkdir -p "$1/opt/codebox/mplcache" && chroot "$1" env MPLCONFIGDIR=/opt/codebox/mplcache MPLBACKEND=agg python3 -c "import matplotlib.pyplot"; fi' \
	--customize-hook='rm -rf "$1/var/lib/apt/lists"/* "$1/var/cache/apt"/* "$1/var/log"/*' \
	"$suite" "$tmp" $sources
mv "$tmp" "$out"
