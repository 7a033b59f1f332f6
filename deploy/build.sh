#!/bin/sh
# The release build of handshaked's binaries, the one deploy/Dockerfile runs
# and CI checks (deploy/image_test.go): static, cgo-free, no file-system
# paths recorded, symbols stripped. The PKCS#11 backend (cgo, build tag
# pkcs11) is not in it.
#
#   deploy/build.sh OUTDIR     writes OUTDIR/handshaked, handshakectl, handshake-edge
set -eu
out=${1:?usage: deploy/build.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$out/" \
  ./cmd/handshaked ./clients/cmd/handshakectl ./clients/cmd/handshake-edge
