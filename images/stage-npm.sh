#!/bin/sh
# A recipe's npm layer, run by build-stage.sh in a chroot: the global npm packages of its
# npm-packages (the image needs npm, from its debian-packages), from the npm registry
# (NPM_CONFIG_REGISTRY, when set, names another).
# usage: stage-npm.sh RECIPE_DIR
set -eu
command -v npm >/dev/null || { echo "npm-packages: the image has no npm: add npm to debian-packages" >&2; exit 1; }
pkgs=$(awk '!/^[[:space:]]*#/ && NF { print $1 }' "$1/npm-packages" | tr '\n' ' ')
# shellcheck disable=SC2086 # a list of package names
npm install --global --no-audit --no-fund --no-update-notifier --loglevel=warn $pkgs
npm cache clean --force
