#!/usr/bin/env bash
# The project's test command (CI runs it through .ci/run): installs the Debian tools the
# tests drive (a real registry, skopeo, restic, podman, ...) when missing, builds the cluster
# binaries and the oras CLI, then runs rustfmt, clippy and the whole test suite.
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh -p wsr-format testing::`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() { printf '\n==> %s\n' "$*"; }

have() {
    # Root's PATH has the sbin dirs; a developer's may not (runc lives in /usr/sbin).
    command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /sbin/$1 ]]
}

section "Checking system tools"
# binary:Debian package. The tests start these as subprocesses.
tools=(
    docker-registry:docker-registry # the CNCF distribution registry under test
    htpasswd:apache2-utils          # bcrypt htpasswd for the auth registry
    openssl:openssl                 # self-signed TLS leaf for the TLS registry
    curl:curl
    skopeo:skopeo                   # independent OCI client for interop checks
    restic:restic
    zstd:zstd
    pigz:pigz
    busybox:busybox-static          # payload of the from-scratch test images
    podman:podman
    buildah:buildah
    runc:runc                       # podman's default crun fails in this container
    nginx:nginx                     # per-namespace access rules in front of the registry (drill)
    chromium:chromium               # renders the drill's HTML report (drill)
    shellcheck:shellcheck           # lints the kind scripts (scenarios/kind, tests/cluster_demo.rs)
    dnsmasq:dnsmasq-base            # a DNS server on loopback for the resolv.conf search-list tests
    /usr/bin/time:time              # GNU time: the benchmark's per-command CPU and peak RSS
)
missing=()
for entry in "${tools[@]}"; do
    have "${entry%%:*}" || missing+=("${entry#*:}")
done

if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && have apt-get; then
        echo "installing missing Debian packages: ${missing[*]}"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    else
        echo "missing tools; install these Debian packages and rerun:" >&2
        echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
fi
for tool in cargo rustfmt cargo-clippy; do
    if ! have "$tool"; then
        echo "$tool not found: install the Rust toolchain with the rustfmt and clippy components" >&2
        exit 1
    fi
done
echo "all tools present"

# Slow builds are cached in one stable directory per machine (CI clones the repo afresh each run,
# so a target/ inside the clone would rebuild everything every time). Override with
# CARGO_TARGET_DIR or WSR_CACHE_DIR.
export WSR_CACHE_DIR=${WSR_CACHE_DIR:-${HOME:-/root}/.cache/wsr}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$WSR_CACHE_DIR/target}
# Incremental compilation only pays off for edit-compile loops; here it costs gigabytes of disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
echo "cargo target dir: $CARGO_TARGET_DIR"

section "Kubernetes control plane and the oras CLI (scenarios/cluster/build.sh)"
# The cluster tests run a real etcd, kube-apiserver, controller manager and scheduler, and the
# interop tests the Go oras CLI. build.sh builds them from the Go modules pinned in
# scenarios/cluster/ on a machine's first run (7 to 35 minutes on 2 cores) and reuses
# $WSR_CACHE_DIR/cluster-bin/<versions> afterwards. It needs the Go toolchain (not Debian's
# golang-go, which is too old for Kubernetes 1.36).
if ! have go && [[ -x /usr/local/go/bin/go ]]; then
    PATH=$PATH:/usr/local/go/bin
fi
if ! have go; then
    echo "go not found: the cluster binaries are built with the Go toolchain (1.26 or newer)" >&2
    exit 1
fi
WSR_CLUSTER_BIN=$(HOME=${HOME:-/root} bash scenarios/cluster/build.sh)
export WSR_CLUSTER_BIN
export WSR_ORAS=$WSR_CLUSTER_BIN/oras
echo "WSR_CLUSTER_BIN=$WSR_CLUSTER_BIN"

# One build profile for the whole run: debug, for the host triple named explicitly, with static
# glibc. The explicit target keeps the flag off build scripts and proc-macros; static binaries
# let the image test package this very build instead of compiling a release build.
HOST_TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_BUILD_TARGET=$HOST_TRIPLE
TRIPLE_VAR=${HOST_TRIPLE^^}
export "CARGO_TARGET_${TRIPLE_VAR//-/_}_RUSTFLAGS=-C target-feature=+crt-static"

section "cargo fmt --all -- --check"
cargo fmt --all -- --check

section "cargo clippy --workspace --all-targets --locked -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

# Slow scenarios (scenarios/tests/incremental.rs) run only here; a plain `cargo test` skips them.
export WSR_SLOW_TESTS=1
# Tests point at unreachable registries on purpose; retry for seconds, not the production
# minute (docs/RELIABILITY.md). The fault tests set their own budget.
export WSR_RETRY_SECONDS=${WSR_RETRY_SECONDS:-4}

# --no-fail-fast: one failing test binary must not hide the results of the others.
section "cargo test --workspace --locked --no-fail-fast $*"
cargo test --workspace --locked --no-fail-fast "$@"

# Fuzzing (fuzz/, docs/RELIABILITY.md): a short bounded run of each target over its seeds and
# the inputs of past crashes, so a regression fails the suite. cargo-fuzz comes from the
# package registry once per machine into $WSR_CACHE_DIR/cargo-fuzz. libFuzzer's
# instrumentation flags are nightly-only; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept
# them. The fuzz build must not get the suite's static-glibc flag (AddressSanitizer needs the
# dynamic loader), so it runs in a subshell without it.
section "cargo fuzz: a bounded run of each target (fuzz/)"
# A fixed seed (WSR_FUZZ_SEED) makes the run repeatable: the same code explores the same inputs,
# so the suite does not pass or fail by luck; change the seed to explore elsewhere.
FUZZ_SECONDS=${WSR_FUZZ_SECONDS:-20}
FUZZ_SEED=${WSR_FUZZ_SEED:-1}
if [[ ! -x $WSR_CACHE_DIR/cargo-fuzz/bin/cargo-fuzz ]]; then
    cargo install cargo-fuzz --locked --root "$WSR_CACHE_DIR/cargo-fuzz"
fi
(
    unset "CARGO_TARGET_${TRIPLE_VAR//-/_}_RUSTFLAGS" CARGO_BUILD_TARGET
    export PATH=$WSR_CACHE_DIR/cargo-fuzz/bin:$PATH RUSTC_BOOTSTRAP=1
    cd fuzz
    corpus=$(mktemp -d)
    trap 'rm -rf "$corpus"' EXIT
    for target in reference documents unpack; do
        inputs=("seeds/$target")
        [[ -d regressions/$target ]] && inputs+=("regressions/$target")
        mkdir "$corpus/$target"
        log=$corpus/$target.log
        if ! cargo fuzz run -O "$target" "$corpus/$target" "${inputs[@]}" -- \
            -seed="$FUZZ_SEED" -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=512 -print_final_stats=1 >"$log" 2>&1; then
            cat "$log"
            echo "fuzz target $target failed; the input is under fuzz/artifacts/$target" >&2
            exit 1
        fi
        echo "$target: $(grep -E '^Done' "$log")"
    done
)
