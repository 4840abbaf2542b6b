#!/bin/sh
# Writes the host's active apt source files into DIR with the host's Debian release names
# (bookworm, bookworm-updates, bookworm-security) changed to SUITE, and prints their paths:
# mmdebstrap pastes a MIRROR argument that is an existing file into the chroot's sources
# (deb822 when the name ends in .sources). So the images' mirror is the host's, and no
# mirror host is named in this project.
# usage: images/apt-sources.sh SUITE DIR
set -eu
suite=$1
dir=$2
host=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$host" ] || { echo "apt-sources: /etc/os-release names no Debian release" >&2; exit 1; }
found=""
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
	[ -s "$f" ] || continue
	grep -Eq "(^|[[:space:]])$host(-updates|-security)?([[:space:]]|\$)" "$f" || continue
	copy="$dir/$(basename "$f")"
	sed -E "/^(Suites:|deb(-src)?[[:space:]])/ s/\b$host(-updates|-security|-backports)?\b/$suite\1/g" "$f" >"$copy"
	echo "$copy"
	found=1
done
[ -n "$found" ] || { echo "apt-sources: no apt source for $host on this host to take the mirror from" >&2; exit 1; }
