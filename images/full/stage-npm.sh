#!/bin/sh
# Layer 2 of the full image, run by build-stage.sh in a chroot: the global npm packages,
# from the npm registry (NPM_CONFIG_REGISTRY, when set, names another).
# usage: stage-npm.sh RECIPE_DIR
set -eu
pkgs=$(grep -v '^#' "$1/npm-packages" | grep -v '^[[:space:]]*$' | tr '\n' ' ')
# shellcheck disable=SC2086 # a list of package names
npm install --global --no-audit --no-fund --no-update-notifier --loglevel=warn $pkgs
npm cache clean --force
