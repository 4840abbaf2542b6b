#!/bin/sh
# A recipe's Python layer, run by build-stage.sh in a chroot: the packages of its
# python-packages, with pip (python3-pip, from its debian-packages), from the package index
# at PIP_INDEX_URL (default pypi.org). An index that does not answer, or a package it cannot
# install, fails the build with a message naming the package.
# usage: stage-python.sh RECIPE_DIR
set -eu
pkgs=$(awk '!/^[[:space:]]*#/ && NF { print $1 }' "$1/python-packages")
index=${PIP_INDEX_URL:-https://pypi.org/simple}
fail() {
	echo "python-packages: $*" >&2
	exit 1
}
python3 -m pip --version >/dev/null 2>&1 || fail "the image has no pip: add python3-pip to debian-packages"
python3 - "$index" <<'PY' || fail "the package index $index does not answer, so $(echo "$pkgs" | head -1) and the rest cannot be installed (set PIP_INDEX_URL to one that answers)"
import sys
import urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=15)
except Exception as exc:
    print(f"stage-python: {sys.argv[1]}: {exc}", file=sys.stderr)
    sys.exit(1)
PY
for p in $pkgs; do
	python3 -m pip install --break-system-packages --root-user-action=ignore --no-cache-dir --no-input \
		--index-url "$index" "$p" || fail "$p: pip could not install it from $index"
done
