#!/bin/sh
# Builds one layer of a worker image on top of earlier ones: the layers are unpacked into a
# scratch directory, an overlayfs puts an empty upper directory over it, SCRIPT runs as root
# in a chroot of the merged tree (with the host's network, as the build of the root
# filesystem does), and the upper directory becomes the layer tar. The recipe's directory is
# at /tmp/codebox-recipe, SCRIPT's argument.
# usage: build-stage.sh OUT.tar SCRIPT RECIPE_DIR BASE.tar [LAYER.tar...]
set -eu
out=$1
script=$2
recipe=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)

work=$(mktemp -d "$(dirname "$out")/.stage-XXXXXX")
cleanup() {
	for m in merged/dev merged/proc merged/sys merged; do
		mountpoint -q "$work/$m" 2>/dev/null && umount -l "$work/$m"
	done
	rm -rf --one-file-system "$work"
}
trap cleanup EXIT INT TERM
mkdir -p "$work/lower" "$work/upper" "$work/work" "$work/merged"

(cd "$here/.." && go build -o "$work/layertool" ./images/layertool)
"$work/layertool" apply "$work/lower" "$@"
mount -t overlay overlay -o "lowerdir=$work/lower,upperdir=$work/upper,workdir=$work/work" "$work/merged"
mount --bind /dev "$work/merged/dev"
mount -t proc proc "$work/merged/proc"
mount -t sysfs sysfs "$work/merged/sys"
# Name resolution for apt and npm: the host's, for the build only (the image's own file is
# put back below).
if [ -e "$work/merged/etc/resolv.conf" ] || [ -L "$work/merged/etc/resolv.conf" ]; then
	cp -a "$work/merged/etc/resolv.conf" "$work/resolv.conf.image"
fi
rm -f "$work/merged/etc/resolv.conf"
cp -L /etc/resolv.conf "$work/merged/etc/resolv.conf"
# TLS trust for npm and pip: the host's CA bundle, for the build only (a host behind a
# TLS-inspecting proxy trusts its CA there); the image keeps Debian's own.
cp -L "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$work/merged/tmp/codebox-build-ca.crt"
cp "$script" "$work/merged/tmp/codebox-stage"
# The stage's inputs (package lists) are the recipe's.
mkdir -p "$work/merged/tmp/codebox-recipe"
cp -r "$recipe/." "$work/merged/tmp/codebox-recipe/"

ca=/tmp/codebox-build-ca.crt
# A stage that hangs on the network fails the build instead.
timeout 30m chroot "$work/merged" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
	SSL_CERT_FILE=$ca NODE_EXTRA_CA_CERTS=$ca NPM_CONFIG_CAFILE=$ca PIP_CERT=$ca \
	${PIP_INDEX_URL:+PIP_INDEX_URL=$PIP_INDEX_URL} ${NPM_CONFIG_REGISTRY:+NPM_CONFIG_REGISTRY=$NPM_CONFIG_REGISTRY} \
	${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} ${no_proxy:+no_proxy=$no_proxy} \
	sh /tmp/codebox-stage /tmp/codebox-recipe

# What the build needed but the image must not keep.
rm -rf "$work/merged/tmp/codebox-stage" "$work/merged/tmp/codebox-recipe" "$work/merged$ca" "$work/merged/root/.npm" \
	"$work/merged/root/.cache" "$work/merged/var/lib/apt/lists"/* "$work/merged/var/cache/apt"/*.bin \
	"$work/merged/var/cache/apt/archives"/*.deb "$work/merged/var/log"/*
rm -f "$work/merged/etc/resolv.conf"
if [ -e "$work/resolv.conf.image" ] || [ -L "$work/resolv.conf.image" ]; then
	cp -a "$work/resolv.conf.image" "$work/merged/etc/resolv.conf"
fi
umount "$work/merged/sys" "$work/merged/proc" "$work/merged/dev" "$work/merged"
"$work/layertool" diff "$work/lower" "$work/upper" "$out"
