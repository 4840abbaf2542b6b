#!/bin/sh
# Prints the address of a containerd that answers: the system one when it serves, otherwise
# one this script starts with its own root, state and socket (for machines without systemd,
# such as CI), after waiting until it serves.
set -eu
system=/run/containerd/containerd.sock
own_dir=/run/codebox/containerd
own="$own_dir/containerd.sock"

serves() { timeout 5 ctr --address "$1" version >/dev/null 2>&1; }

for a in "$system" "$own"; do
	if [ -S "$a" ] && serves "$a"; then
		echo "$a"
		exit 0
	fi
done

mkdir -p "$own_dir" /var/lib/codebox/containerd /var/log/codebox
"$(dirname "$0")/containerd-config.sh" /var/lib/codebox/containerd "$own_dir/state" "$own" >"$own_dir/config.toml"
echo "containerd: none answers; starting one at $own (log /var/log/codebox/containerd.log)" >&2
setsid containerd --config "$own_dir/config.toml" >>/var/log/codebox/containerd.log 2>&1 </dev/null &
echo $! >"$own_dir/containerd.pid"
i=0
until serves "$own"; do
	i=$((i + 1))
	if [ "$i" -gt 150 ]; then
		echo "containerd: did not serve within 30 s; see /var/log/codebox/containerd.log" >&2
		exit 1
	fi
	sleep 0.2
done
echo "$own"
