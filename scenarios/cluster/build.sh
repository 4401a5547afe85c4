#!/usr/bin/env bash
# Builds the pinned Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl), etcd and the oras CLI from the Go modules pinned in k8s/, etcd/
# and oras/ beside this script, into a cache directory keyed by those pins:
#   ${WSR_CACHE_DIR:-$HOME/.cache/wsr}/cluster-bin/<key>/
# A directory that is already complete is reused, so a machine builds once. Prints the time
# the run took, and the bin directory as the last line of stdout.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
START=$(date +%s)

if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: the Go toolchain (go) is not on PATH; it is needed to build the cluster binaries" >&2
    exit 1
fi

# module dir -> packages it builds (one binary each, named after the last path element).
K8S_PKGS=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
ETCD_PKGS=(go.etcd.io/etcd/server/v3)
ORAS_PKGS=(oras.land/oras/cmd/oras)
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd oras)

pinned() { # module dir, module path -> version required in that go.mod
    awk -v m="$2" '$1 == m { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$HERE/$1/go.mod"
}
K8S_V=$(pinned k8s k8s.io/kubernetes)
ETCD_V=$(pinned etcd go.etcd.io/etcd/server/v3)
ORAS_V=$(pinned oras oras.land/oras)
GO_V=$(go env GOVERSION)
# The hash covers everything that changes the output: pins, sums, toolchain, this script.
DIGEST=$(cat "$HERE"/{k8s,etcd,oras}/go.{mod,sum} "$HERE/build.sh" <(echo "$GO_V") | sha256sum | cut -c1-12)
KEY="k8s-$K8S_V.etcd-$ETCD_V.oras-$ORAS_V.$GO_V.$DIGEST"
CACHE=${WSR_CACHE_DIR:-$HOME/.cache/wsr}/cluster-bin
BIN=$CACHE/$KEY

complete() {
    local b
    for b in "${BINARIES[@]}"; do [[ -x $1/$b ]] || return 1; done
}

mkdir -p "$CACHE"
# Several checkouts on one machine may build at once; one builds, the others wait and reuse.
exec 9>"$CACHE/.lock"
flock 9

if complete "$BIN"; then
    echo "cluster binaries cached (key $KEY); took $(($(date +%s) - START)) s" >&2
else
    echo "building cluster binaries (key $KEY); the first build takes tens of minutes" >&2
    WORK=$(mktemp -d "$CACHE/.build.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
    export CGO_ENABLED=0
    # Kubernetes' own build stamps its version into these variables; `go build` alone leaves
    # v0.0.0-master, which kubectl and clients would report.
    K8S_STAMP=""
    minor=${K8S_V#v1.}
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        K8S_STAMP+=" -X $pkg.gitVersion=$K8S_V -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor%%.*}"
        K8S_STAMP+=" -X $pkg.gitTreeState=clean"
    done
    build() { # module dir, extra ldflags, output (a dir ending in / or a file), packages...
        local dir=$1 stamp=$2 out=$3 t0=$(date +%s)
        shift 3
        (cd "$HERE/$dir" && go build -trimpath -ldflags="-s -w$stamp" -o "$out" "$@")
        echo "  $dir: $* built in $(($(date +%s) - t0)) s" >&2
    }
    build k8s "$K8S_STAMP" "$WORK/" "${K8S_PKGS[@]}"
    build etcd "" "$WORK/etcd" "${ETCD_PKGS[@]}" # named explicitly: the package path ends in /v3
    build oras "" "$WORK/" "${ORAS_PKGS[@]}"
    complete "$WORK"
    rm -rf "$BIN"
    mv "$WORK" "$BIN"
    trap - EXIT
    echo "cluster binaries built in $(($(date +%s) - START)) s" >&2
fi
echo "$BIN"
