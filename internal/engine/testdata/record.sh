#!/usr/bin/env bash
# Re-records testdata/transcripts: real clients (openssl s_client, gnutls-cli,
# headless chromium) against the engine under fixed keys (testdata/keys of the
# repository) and seeded randomness. TestTranscripts replays them in every
# test run. Re-record only after a deliberate change of what the server sends
# or of the order in which it draws randomness, and review the diff.
set -euo pipefail
cd "$(dirname "$0")/.."
CI=true go test . -count=1 -run '^TestTranscripts$' -record "$@"
