#!/bin/sh
# Prints the configuration of a containerd of codebox's own: root, state and socket given.
# usage: scripts/containerd-config.sh ROOT STATE SOCKET
# CRI is off (codebox does not use it; it would listen and keep state for nothing).
# disabled_plugins is a top-level key: TOML puts every key after a [table] header into
# that table, so it must come before the first one.
set -eu
[ $# -eq 3 ] || { echo "usage: $0 ROOT STATE SOCKET" >&2; exit 2; }
cat <<TOML
version = 2
root = "$1"
state = "$2"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "$3"

[ttrpc]
  address = "$3.ttrpc"
TOML
