#!/usr/bin/env bash
# Installs what backfill needs (Debian/Ubuntu), builds it and runs the demo or the tests.
#
#   ./bootstrap.sh demo [args]   build, then run `build/backfill demo [args]`
#   ./bootstrap.sh test          build, run ctest; then an ASan/UBSan build and its ctest
#
# Environment: BF_SKIP_ASAN=1 skips the sanitizer pass of `test`;
#              BF_SKIP_DEPS=1 skips the package check.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

PACKAGES=(build-essential cmake pkg-config libzmq3-dev libczmq-dev libpq-dev libmsgpack-dev
    libhiredis-dev libyaml-dev libcmocka-dev libmicrohttpd-dev postgresql redis-server curl
    iproute2)
JOBS=$(nproc 2>/dev/null || echo 2)

say() { printf 'bootstrap: %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

usage() {
    cat >&2 <<'EOF'
usage: ./bootstrap.sh demo [args...]   install deps, build, run `backfill demo [args...]`
       ./bootstrap.sh test             install deps, build, run the tests (plain + ASan/UBSan)
environment: BF_SKIP_ASAN=1 skips the sanitizer pass; BF_SKIP_DEPS=1 skips the package check
EOF
}

# Prints the packages of PACKAGES that are not installed, one per line.
missing_packages() {
    local pkg status
    for pkg in "${PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        if [[ "$status" != "install ok installed" ]]; then
            printf '%s\n' "$pkg"
        fi
    done
}

install_deps() {
    if [[ "${BF_SKIP_DEPS:-0}" == 1 ]]; then
        say "BF_SKIP_DEPS=1: not checking packages"
        return 0
    fi
    if ! command -v dpkg-query >/dev/null 2>&1; then
        say "not a Debian-like system (no dpkg-query); make sure these are installed:"
        say "  ${PACKAGES[*]}"
        return 0
    fi
    local missing=()
    mapfile -t missing < <(missing_packages)
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    say "installing missing packages: ${missing[*]}"
    local -a sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        if ! command -v sudo >/dev/null 2>&1; then
            die "packages missing (${missing[*]}) and not root and no sudo; as root run:
  apt-get update && apt-get install -y ${missing[*]}"
        fi
        sudo=(sudo)
    fi
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update ||
        ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"; then
        die "installing packages failed; as root run:
  apt-get update && apt-get install -y ${missing[*]}"
    fi
    mapfile -t missing < <(missing_packages)
    if ((${#missing[@]} > 0)); then
        die "still missing after apt-get install: ${missing[*]}"
    fi
}

# build DIR [cmake args...]
build() {
    local dir=$1
    shift
    say "configuring and building $dir/"
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE="${BF_BUILD_TYPE:-RelWithDebInfo}" "$@" &&
        cmake --build "$dir" -j"$JOBS"
}

cmd_demo() {
    build build -DBF_SANITIZE=OFF || die "build failed"
    local rc=0
    build/backfill demo "$@" || rc=$?
    if ((rc == 0)); then
        say "demo: OK"
    else
        say "demo: FAILED (exit $rc)"
    fi
    return "$rc"
}

cmd_test() {
    local plain=FAIL asan=SKIPPED rc=0
    if build build -DBF_SANITIZE=OFF &&
        ctest --test-dir build --output-on-failure; then
        plain=PASS
    else
        rc=1
    fi
    if [[ "${BF_SKIP_ASAN:-0}" != 1 ]]; then
        asan=FAIL
        if BF_BUILD_TYPE=Debug build build-asan -DBF_SANITIZE=ON &&
            ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
                UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
                ctest --test-dir build-asan --output-on-failure; then
            asan=PASS
        else
            rc=1
        fi
    fi
    say "summary: tests $plain, asan+ubsan tests $asan"
    return "$rc"
}

main() {
    if (($# == 0)); then
        usage
        exit 2
    fi
    local cmd=$1
    shift
    case "$cmd" in
    demo)
        install_deps
        cmd_demo "$@"
        ;;
    test)
        (($# == 0)) || die "test takes no arguments"
        install_deps
        cmd_test
        ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage
        exit 2
        ;;
    esac
}

main "$@"
