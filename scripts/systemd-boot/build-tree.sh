#!/bin/bash
# Builds, or finds in the cache, a Debian tree that boots with systemd as PID 1 under
# systemd-nspawn and runs containerd and codeboxd: the host of test.sh. Cached under
# $CACHE_DIR by a hash of its package list and of this script; prints the tree's path.
# usage: scripts/systemd-boot/build-tree.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE_DIR=${CACHE_DIR:-/var/cache/codebox}
suite=bookworm
# minbase has mount and util-linux. kmod: codeboxd runs `modprobe br_netfilter` when the
# sysctl is missing. The worker image brings its own Python; the CLI talks to the API.
packages="systemd systemd-sysv dbus iproute2 containerd runc containernetworking-plugins iptables e2fsprogs kmod"
include=$(echo "$packages" | tr ' ' '\n' | sort -u | paste -sd, -)
hash=$(sha256sum <"$here/build-tree.sh" | cut -c1-16)
tree="$CACHE_DIR/systemd-tree-$hash"
if [ -d "$tree" ]; then
	echo "$tree"
	exit 0
fi
sources=""
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
	[ -s "$f" ] || continue
	grep -Eq "(^|[[:space:]])$suite(-updates|-security)?([[:space:]]|\$)" "$f" && sources="$sources $f"
done
[ -n "$sources" ] || { echo "systemd tree: no apt source for $suite on this host" >&2; exit 1; }
mkdir -p "$CACHE_DIR"
rm -rf "$tree.partial"
# shellcheck disable=SC2086,SC2016 # $sources: paths without spaces; the hooks' "$1" is mmdebstrap's
mmdebstrap --variant=minbase --mode=root --format=directory \
	--aptopt='APT::Install-Recommends "false"' --include="$include" \
	--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
	--customize-hook='echo codebox-nspawn > "$1/etc/hostname"' \
	--customize-hook='rm -rf "$1/var/lib/apt/lists"/* "$1/var/cache/apt"/*' \
	"$suite" "$tree.partial" $sources >&2
mv "$tree.partial" "$tree"
# Trees of earlier recipes are dead weight now.
find "$CACHE_DIR" -maxdepth 1 -name 'systemd-tree-*' ! -name "$(basename "$tree")" -exec rm -rf {} +
echo "$tree"
