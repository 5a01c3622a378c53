#!/bin/sh
# Builds the embedded exec shim from its source with GNU as and ld
# (binutils): go generate ./workers/ runs it. Usage: build.sh OUT.
set -eu
src=$(dirname "$0")/shim_amd64.S
out=${1:-$(dirname "$0")/../shim_amd64.bin}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
as --64 -o "$tmp/shim.o" "$src"
ld -static -nostdlib -n -s --build-id=none -e _start -o "$tmp/shim" "$tmp/shim.o"
cp "$tmp/shim" "$out"
