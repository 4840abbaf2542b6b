#!/bin/sh
# Assembles the kernel agent's directory, which codeboxd mounts read-only into every worker
# so that any image with python3 and IPython serves: the agent (images/agent), its one
# dependency (websockets' pure-Python frames and HTTP parser, from the host's Debian
# python3-websockets) and a static tini (the host's Debian tini) to run it under.
# usage: scripts/build-agent.sh OUT_DIR
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
# The pure-Python package only: a C speedup built for the host's Python would not load in
# an image's.
(cd "$(dirname "$websockets")" && find websockets -name '*.py' -o -name py.typed) | while read -r f; do
	mkdir -p "$tmp/vendor/$(dirname "$f")"
	cp "$(dirname "$websockets")/$f" "$tmp/vendor/$f"
done
cp "$tini" "$tmp/tini"
chmod -R u=rwX,go=rX "$tmp"
chmod 0755 "$tmp/tini"
rm -rf "$out"
mv "$tmp" "$out"
