#!/bin/sh
# Installs the end-to-end tests' Node clients (e2e/node: playwright-core, the MCP SDK) from
# the npm registry, pinned by e2e/node/package-lock.json. Skipped when node_modules was
# installed from the same lock file.
set -eu
dir="$(cd "$(dirname "$0")/../e2e/node" && pwd)"
sum=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
stamp="$dir/node_modules/.codebox-lock-sha256"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
	exit 0
fi
echo "node-deps: npm ci in $dir" >&2
npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >&2
echo "$sum" >"$stamp"
