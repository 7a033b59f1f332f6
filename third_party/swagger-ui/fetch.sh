#!/usr/bin/env bash
# Fetches the pinned Swagger UI (npm package swagger-ui-dist) into this
# directory: the files /docs serves, its licence and notice, and the licences
# of what its bundle contains. SHA256SUMS records what was fetched; the Go
# package here embeds it and checks it (TestFilesMatchChecksums).
#
#   bash third_party/swagger-ui/fetch.sh          # (re)fetch the pin
#   bash third_party/swagger-ui/fetch.sh --check  # fetch into a temporary
#       directory and fail unless the committed files are the pin's (CI)
#
# To move the pin: change VERSION and INTEGRITY (`npm view
# swagger-ui-dist@X dist.integrity`), run the script, commit.
set -euo pipefail

VERSION=5.35.0
INTEGRITY=sha512-U06rpMtW9V3XPGOBeamTUSr0Z09jMX4IJuANpE/EZbAhw0G8CgwrzU4YmXkn/h0wCDNsXdGarTNNHC3sU8yVUQ==
FILES=(LICENSE NOTICE swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css favicon-32x32.png)

here=$(cd "$(dirname "$0")" && pwd)
check=false
case "${1:-}" in
  --check) check=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "swagger-ui-dist@$VERSION" >/dev/null)
tarball="$tmp/swagger-ui-dist-$VERSION.tgz"
# npm checks the registry's integrity itself; this checks the registry still
# serves the tarball that was pinned.
got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [ "$got" != "$INTEGRITY" ]; then
  echo "swagger-ui-dist@$VERSION: tarball is $got, the pin says $INTEGRITY" >&2
  exit 1
fi
mkdir "$tmp/out"
tar -xzf "$tarball" -C "$tmp" "${FILES[@]/#/package/}"
for f in "${FILES[@]}"; do cp "$tmp/package/$f" "$tmp/out/$f"; done
printf '%s\n' "$VERSION" > "$tmp/out/VERSION"
(cd "$tmp/out" && sha256sum VERSION "${FILES[@]}" > SHA256SUMS)

if $check; then
  for f in VERSION SHA256SUMS "${FILES[@]}"; do
    if ! cmp -s "$tmp/out/$f" "$here/$f"; then
      echo "third_party/swagger-ui/$f is not swagger-ui-dist@$VERSION's: run bash third_party/swagger-ui/fetch.sh" >&2
      exit 1
    fi
  done
  echo "third_party/swagger-ui matches swagger-ui-dist@$VERSION"
  exit 0
fi
for f in VERSION SHA256SUMS "${FILES[@]}"; do cp "$tmp/out/$f" "$here/$f"; done
echo "fetched swagger-ui-dist@$VERSION into third_party/swagger-ui"
