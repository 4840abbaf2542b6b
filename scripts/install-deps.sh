#!/bin/sh
# Installs the host packages codebox needs, when any is missing (Debian 12).
#   install-deps.sh        what running codeboxd and building its worker image take
#   install-deps.sh test   that, plus what the tests and `make bench` drive it with
set -eu
# tini and python3-websockets go into the agent's directory (scripts/build-agent.sh).
pkgs="containerd runc containernetworking-plugins iptables iproute2 mmdebstrap e2fsprogs util-linux systemd curl tini python3-websockets"
if [ "${1:-}" = test ]; then
	# A loopback registry, systemd under nspawn, shell lint, HAProxy (the fleet), the
	# agent's unit tests on the host's Python and the Jupyter peer of `make bench`.
	pkgs="$pkgs docker-registry systemd-container shellcheck haproxy
python3 python3-venv python3-setuptools python3-ipython python3-websockets jupyter-server python3-ipykernel python3-tornado python3-matplotlib-inline python3-matplotlib"
	# The browser tests: Debian's chromium, driven from Node (a host may already have its
	# own Node; Debian 12's 18 is enough for the pinned clients).
	pkgs="$pkgs chromium"
	command -v node >/dev/null 2>&1 || pkgs="$pkgs nodejs"
	command -v npm >/dev/null 2>&1 || pkgs="$pkgs npm"
fi
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "deps: installing$missing" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >&2
	# shellcheck disable=SC2086
	apt-get install -y -q --no-install-recommends $missing >&2
fi
