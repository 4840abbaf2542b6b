#!/bin/sh
# The full image's customize step, run by build-stage.sh in a chroot over its base layer:
# Debian's Python libraries (debian-python-packages), then the PyPI-only ones the seed lists
# (pypi-packages), best effort: when no package index answers at build time they are left
# out, and /opt/codebox/build-notes.txt (quoted by CAPABILITIES.md) says so.
# usage: customize.sh RECIPE_DIR
set -eu
recipe=$1
# The first column of a list file: package names.
list() { awk '!/^[[:space:]]*#/ && NF { print $1 }' "$1"; }

apt-get update -q

# python3-wordcloud depends on texlive-fonts-extra (1.5 GB of TeX) for one font, Droid
# Sans Mono, which it links to by path. A stand-in package provides that dependency and
# that path, pointing it at DejaVu Sans Mono, so wordcloud works without the TeX.
standin=$(mktemp -d)
font=usr/share/texlive/texmf-dist/fonts/truetype/ascender/droid/droidsansmono
mkdir -p "$standin/DEBIAN" "$standin/$font"
ln -s /usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf "$standin/$font/DroidSansMono.ttf"
cat >"$standin/DEBIAN/control" <<'CONTROL'
Package: codebox-wordcloud-font
Version: 1.0
Architecture: all
Maintainer: codebox <codebox@localhost>
Depends: fonts-dejavu-core
Provides: texlive-fonts-extra
Description: stand-in for texlive-fonts-extra in the codebox worker image
 Gives python3-wordcloud its default font path (DejaVu Sans Mono) without TeX.
CONTROL
dpkg-deb --root-owner-group --build "$standin" /tmp/codebox-wordcloud-font.deb
dpkg -i /tmp/codebox-wordcloud-font.deb
rm -rf "$standin" /tmp/codebox-wordcloud-font.deb
# shellcheck disable=SC2046 # a list of package names
apt-get install -y -q --no-install-recommends python3-pip $(list "$recipe/debian-python-packages")
apt-get clean

notes=/opt/codebox/build-notes.txt
mkdir -p /opt/codebox
index=${PIP_INDEX_URL:-https://pypi.org/simple}
if python3 - "$index" <<'PY'
import sys
import urllib.request
try:
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/pip/", timeout=15)
except Exception as exc:
    print(f"customize: package index {sys.argv[1]} unreachable: {exc}", file=sys.stderr)
    sys.exit(1)
PY
then
	for p in $(list "$recipe/pypi-packages"); do
		if pip install --break-system-packages --root-user-action=ignore --no-cache-dir --index-url "$index" "$p"; then
			echo "pypi $p: installed from $index" >>"$notes"
		else
			echo "pypi $p: pip install failed at build time" >>"$notes"
		fi
	done
else
	for p in $(list "$recipe/pypi-packages"); do
		echo "pypi $p: not packaged by Debian $(. /etc/os-release && echo "$VERSION_ID"), and the package index ($index) did not answer at build time" >>"$notes"
	done
fi
