#!/usr/bin/env bash
# Lints deploy/systemd/*.service with `systemd-analyze verify`, pointing ExecStart at
# the built binary (the units name /usr/local/bin/backfill). Skipped (exit 77) when
# systemd-analyze is not installed.
set -euo pipefail
: "${BF:?BF must point to the backfill binary}" "${BF_SOURCE_DIR:?}"
command -v systemd-analyze >/dev/null || { echo "SKIP: systemd-analyze not installed"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for unit in "$BF_SOURCE_DIR"/deploy/systemd/*.service; do
    name=$(basename "$unit")
    name=${name/@.service/@1.service}
    sed "s#/usr/local/bin/backfill#$BF#" "$unit" >"$work/$name"
done
out=$(cd "$work" && systemd-analyze verify ./*.service 2>&1 || true)
if [ -n "$out" ]; then
    echo "$out"
    exit 1
fi
echo "PASS: $(ls "$work" | tr '\n' ' ')"
