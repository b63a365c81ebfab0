#!/usr/bin/env bash
# Lints what can be checked of deploy/ without a container engine:
# - every YAML file parses (libyaml, via bf_yamlcheck), every Kubernetes document
#   has apiVersion, kind and metadata.name;
# - every --option the Dockerfile, compose file, manifests and systemd units pass
#   to backfill exists in the --help of a backfill command;
# - the Dockerfile's runtime stage installs the Debian package of every shared
#   library the built binary needs (readelf NEEDED -> dpkg -S), libc and sanitizer
#   runtimes aside.
set -euo pipefail
: "${BF:?BF must point to the backfill binary}" "${BF_SOURCE_DIR:?}" "${BF_YAMLCHECK:?}"
D=$BF_SOURCE_DIR/deploy
fail() { echo "FAIL: $*" >&2; exit 1; }

mapfile -t yamls < <(find "$D" -name '*.yaml' | sort)
[ "${#yamls[@]}" -ge 6 ] || fail "expected the compose and Kubernetes YAML files in $D"
"$BF_YAMLCHECK" "${yamls[@]}"
for f in "$D"/k8s/*.yaml; do
    awk -v f="$f" '
        function check() { if (n && (!api || !kind || !name)) { print f ": document " n " lacks apiVersion, kind or metadata.name"; bad = 1 } }
        /^---/ { check(); api = kind = name = 0; next }
        /^apiVersion: / { api = 1; n = n ? n : 1 }
        /^kind: / { kind = 1; n = n ? n : 1 }
        /^  name: / { name = 1 }
        END { check(); exit bad }' "$f" || fail "bad manifest"
done

help=$(for c in coordinator worker run status throttle keygen; do "$BF" "$c" --help; done)
files=("$D"/Dockerfile "$D"/compose/compose.yaml "$D"/k8s/*.yaml "$D"/systemd/*.service)
for opt in $(grep -ho -- '--[a-z][a-z-]*' "${files[@]}" | sort -u); do
    case "$opt" in --help | --build | --no-install-recommends | --from | --rm | --scale | --from-literal | --from-file | --replicas | --home-dir | --shell | --system | --uid | --target | --appendonly | --requirepass | --now) continue ;; esac
    grep -qw -- "$opt" <<<"$help" || fail "deploy/ passes $opt, which no backfill command knows"
done

if command -v readelf >/dev/null && command -v dpkg >/dev/null; then
    runtime=$(awk '/^FROM .*slim/ { rt = 1 } rt' "$D/Dockerfile")
    for lib in $(readelf -d "$BF" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
        # (awk reads all of ldconfig's output: an early exit would SIGPIPE it)
        path=$(ldconfig -p | awk -v l="$lib" '$1 == l && !p { p = $NF } END { print p }')
        [ -n "$path" ] || continue
        # dpkg knows a library by the path it installed (merged /usr: try both)
        pkg=$({ dpkg -S "$path" 2>/dev/null || dpkg -S "$(readlink -f "$path")" 2>/dev/null ||
            true; } | awk -F: 'NR == 1 { print $1 }')
        case "$pkg" in "" | libc6 | libgcc-s1 | libstdc++6 | libasan* | libubsan* | liblsan* | libtsan*) continue ;; esac
        grep -qw -- "$pkg" <<<"$runtime" || fail "the Dockerfile's runtime stage lacks $pkg (for $lib)"
    done
fi
echo "PASS: deploy files"
