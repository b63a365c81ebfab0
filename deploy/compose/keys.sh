#!/usr/bin/env bash
# CURVE keys for the compose file: the coordinator's pair, one pair shared by the
# workers, and the folder of allowed worker public keys. Uses the image's binary.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p keys/workers
for name in coordinator worker; do
    [ -e "keys/$name" ] || docker run --rm -u "$(id -u)" -v "$PWD/keys:/keys" backfill:latest keygen "/keys/$name"
done
cp keys/worker keys/workers/worker.key
# The secret files are mode 0600: the containers run as their owner.
grep -q '^BACKFILL_UID=' .env 2>/dev/null || echo "BACKFILL_UID=$(id -u)" >>.env
