#!/bin/sh
# Assembles the kernel agent's directory, which codeboxd mounts read-only into every worker
# so that any image with python3 and IPython serves: the agent (images/agent), its one
# dependency (websockets' pure-Python frames and HTTP parser, from the host's Debian
# python3-websockets) and a static tini (the host's Debian tini) to run it under.
#
# OUT is a symbolic link to a sibling directory named by a hash of the content
# (agent-<hash>), swapped at once: running workers keep the directory they mounted, which
# stays until four newer ones exist (codeboxd labels each worker with its agent's version and
# adopts no idle worker of another).
# usage: scripts/build-agent.sh OUT
set -eu
out=$1
src=$(cd "$(dirname "$0")/../images/agent" && pwd)
websockets=/usr/lib/python3/dist-packages/websockets
tini=/usr/bin/tini-static
for need in "$websockets/frames.py" "$tini"; do
	[ -e "$need" ] || { echo "build-agent: $need missing (make deps installs python3-websockets and tini)" >&2; exit 1; }
done
tmp="$out.partial"
rm -rf "$tmp"
mkdir -p "$tmp/vendor"
cp "$src/codebox_boot.py" "$src/codebox_agent.py" "$src/codebox_languages.py" "$src/codebox_js.js" "$src/matplotlibrc" "$tmp/"
# The pure-Python package only (a C speedup built for the host's Python would not load in
# an image's), as codebox_websockets: its imports are relative, and the image's own
# websockets stays user code's.
(cd "$websockets" && find . -name '*.py') | while read -r f; do
	mkdir -p "$tmp/vendor/codebox_websockets/$(dirname "$f")"
	cp "$websockets/$f" "$tmp/vendor/codebox_websockets/$f"
done
# Its server module ends by importing the asyncio server it keeps for backwards
# compatibility (~15 ms of every worker's start), which the agent does not use.
sed -i '/^from \.legacy\.server import \*/d' "$tmp/vendor/codebox_websockets/server.py"
cp "$tini" "$tmp/tini"
chmod -R u=rwX,go=rX "$tmp"
chmod 0755 "$tmp/tini"

parent=$(dirname "$out")
version="agent-$(cd "$tmp" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-12)"
if [ -d "$parent/$version" ]; then
	rm -rf "$tmp"
else
	mv "$tmp" "$parent/$version"
fi
# An older make build left a plain directory here: workers made from it keep theirs.
[ ! -d "$out" ] || [ -L "$out" ] || mv "$out" "$parent/agent-unversioned-$(date +%s)"
ln -sfn "$version" "$out.new"
mv -T "$out.new" "$out"
# The four newest besides the current stay for the workers that mounted them.
# shellcheck disable=SC2010,SC2012 # names of our own making, without spaces
ls -1td "$parent"/agent-* | grep -v "/$version\$" | tail -n +5 | xargs -r rm -rf
