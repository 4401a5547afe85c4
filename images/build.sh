#!/usr/bin/env bash
# Builds wsr's recovery image (the drop-in for upstream DWO's `project-backup` image) from
# scratch with buildah: static binaries, CA certificates, no shell, no base image.
#
#   images/build.sh [--arch amd64,arm64] [--name NAME] [--tag TAG] [--push REF [--push-arg ARG]...]
#
#   --arch LIST     comma-separated: amd64 (default: the host's), arm64. More than one builds one
#                   image per architecture (NAME:TAG-ARCH) and a manifest list NAME:TAG over them.
#   --name NAME     image name (default localhost/wsr-recovery)
#   --tag TAG       image tag (default: the workspace version from Cargo.toml)
#   --push REF      afterwards push NAME:TAG to REF (e.g. quay.io/me/wsr-recovery:0.1.0, or any
#                   transport buildah knows: docker://..., oci:DIR:TAG, oci-archive:FILE)
#   --push-arg ARG  extra argument for `buildah push` / `buildah manifest push`, repeatable
#                   (e.g. --push-arg --authfile=auth.json --push-arg --tls-verify=false)
#   --binaries DIR  package the static wsr-backup, wsr-restore, workspace-recovery and wsr-operator already in
#                   DIR (stripped on the way) instead of building release binaries; host
#                   architecture only. The test suite uses this with its own (debug, static) build.
#
# Environment:
#   WSR_IMAGE_STORAGE     buildah/podman storage (default target/image/containers); the image
#                         lands in <it>/root, so run it with the same flags, e.g.
#                         podman --root $S/root --runroot $S/run --storage-driver vfs run ...
#   WSR_IMAGE_TARGET_DIR  cargo target dir for the static release binaries (default
#                         target/image, separate from the debug test build)
#   SOURCE_DATE_EPOCH     image timestamp (default: the time of the last git commit), so the
#                         same binaries give the same image id
#
# The last line on stdout is the built reference (NAME:TAG). See images/README.md.
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

NAME=localhost/wsr-recovery
TAG=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
ARCHES=
PUSH=
PUSH_ARGS=()
PREBUILT=
while (($#)); do
    case $1 in
    --arch) ARCHES=$2; shift 2 ;;
    --name) NAME=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --push) PUSH=$2; shift 2 ;;
    --push-arg) PUSH_ARGS+=("$2"); shift 2 ;;
    --binaries) PREBUILT=$(realpath "$2"); shift 2 ;;
    -h | --help) sed -n "2,/^set -euo/p" "$ROOT/images/build.sh" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

host_arch() {
    case $(uname -m) in
    x86_64) echo amd64 ;;
    aarch64 | arm64) echo arm64 ;;
    *) die "unsupported host architecture $(uname -m)" ;;
    esac
}
ARCHES=${ARCHES:-$(host_arch)}

STORAGE=$(realpath -m "${WSR_IMAGE_STORAGE:-$ROOT/target/image/containers}") # podman records it: keep it absolute
TARGET_DIR=$(realpath -m "${WSR_IMAGE_TARGET_DIR:-$ROOT/target/image}")
CARGO=${CARGO:-cargo}
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
BUILDAH=(buildah --root "$STORAGE/root" --runroot "$STORAGE/run" --storage-driver vfs)

command -v buildah >/dev/null || die "buildah not found; install it (Debian: apt-get install buildah)"
[[ -s $CA_BUNDLE ]] || die "$CA_BUNDLE missing; install it (Debian: apt-get install ca-certificates)"

REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [[ $REVISION != unknown ]] && ! git diff --quiet HEAD -- 2>/dev/null; then
    REVISION+=-dirty
fi
EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
CREATED=$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)

# Statically linked glibc binaries (no musl target is needed): a scratch image then needs no
# shared libraries. Host names are resolved by reqwest's hickory-dns (pure Rust, reads
# /etc/resolv.conf and /etc/hosts), so no NSS modules are needed either.
triple_of() {
    case $1 in
    amd64) echo x86_64-unknown-linux-gnu ;;
    arm64) echo aarch64-unknown-linux-gnu ;;
    *) die "unsupported architecture $1 (amd64, arm64)" ;;
    esac
}

# Cross builds need the Rust target and a C cross toolchain with a static glibc (aws-lc-sys and
# zstd-sys compile C). Checked for every architecture before anything is built.
check_arch() { # ARCH
    local triple gcc
    triple=$(triple_of "$1")
    [[ $1 == "$(host_arch)" ]] && return
    [[ -d $(rustc --print sysroot)/lib/rustlib/$triple ]] ||
        die "Rust target $triple is not installed: rustup target add $triple"
    gcc=${triple/-unknown/}-gcc # aarch64-linux-gnu-gcc
    command -v "$gcc" >/dev/null ||
        die "cross compiler $gcc not found (Debian: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)"
}

check_static() { # DIR
    local b
    for b in wsr-backup wsr-restore workspace-recovery wsr-operator; do
        [[ -x $1/$b ]] || die "missing binary $1/$b"
        if command -v readelf >/dev/null && readelf -lW "$1/$b" | grep -q 'program interpreter'; then
            die "$1/$b is dynamically linked; a scratch image needs static binaries (RUSTFLAGS=\"-C target-feature=+crt-static\" with an explicit --target)"
        fi
    done
}

build_binaries() { # ARCH -> sets BINDIR to the directory holding the binaries
    local arch=$1 triple
    if [[ -n $PREBUILT ]]; then
        [[ $arch == "$(host_arch)" ]] || die "--binaries packages host binaries only ($(host_arch)), not $arch"
        BINDIR=$PREBUILT
        check_static "$BINDIR"
        return
    fi
    triple=$(triple_of "$arch")
    # Nothing may override the static flag (CARGO_ENCODED_RUSTFLAGS would win over RUSTFLAGS).
    local env=(-u CARGO_ENCODED_RUSTFLAGS RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=symbols)
    if [[ $arch != "$(host_arch)" ]]; then
        local gcc=${triple/-unknown/}-gcc upper=${triple^^}
        env+=("CARGO_TARGET_${upper//-/_}_LINKER=$gcc" "CC_${triple//-/_}=$gcc" "AR_${triple//-/_}=${gcc%-gcc}-ar")
    fi
    log "cargo build --release --target $triple (static) into $TARGET_DIR"
    env "${env[@]}" "$CARGO" build --release --locked --target "$triple" --target-dir "$TARGET_DIR" \
        -p wsr-backup -p wsr-restore -p wsr-operator >&2
    BINDIR=$TARGET_DIR/$triple/release
    check_static "$BINDIR"
}

# The root filesystem, as a tar with fixed owners, modes and times.
make_rootfs() { # BINDIR OUT.tar
    local bin=$1 out=$2 fs
    fs=$(mktemp -d)
    mkdir -p "$fs/usr/local/bin" "$fs/etc/ssl/certs" "$fs/tmp" "$fs/workspace" "$fs/projects"
    for b in wsr-backup wsr-restore workspace-recovery wsr-operator; do
        install -m 0755 --strip "$bin/$b" "$fs/usr/local/bin/$b"
    done
    # The dispatcher under upstream's two names; it finds wsr-backup / wsr-restore next to its
    # resolved location (/usr/local/bin) and dispatches on the name it was started as.
    ln -s usr/local/bin/workspace-recovery "$fs/entrypoint.sh"
    ln -s usr/local/bin/workspace-recovery "$fs/workspace-recovery.sh"
    install -m 0644 "$CA_BUNDLE" "$fs/etc/ssl/certs/ca-certificates.crt"
    # Names for uid 1000 / gid 0 (upstream's `oras` user) for tools that display them; nothing
    # in the image needs them, and any other uid works the same.
    printf 'root:x:0:0:root:/root:/sbin/nologin\nwsr:x:1000:0:wsr:/tmp:/sbin/nologin\n' >"$fs/etc/passwd"
    printf 'root:x:0:\n' >"$fs/etc/group"
    chmod 0644 "$fs/etc/passwd" "$fs/etc/group"
    chmod 1777 "$fs/tmp"
    chmod 0755 "$fs/workspace" "$fs/projects" "$fs/usr" "$fs/usr/local" "$fs/usr/local/bin" "$fs/etc" "$fs/etc/ssl" "$fs/etc/ssl/certs"
    tar -C "$fs" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" -cf "$out" .
    rm -rf "$fs"
}

build_image() { # ARCH REF
    local arch=$1 ref=$2 rootfs ctr
    build_binaries "$arch"
    rootfs=$(mktemp --suffix=.tar)
    make_rootfs "$BINDIR" "$rootfs"
    log "assembling $ref ($arch) in $STORAGE"
    ctr=$("${BUILDAH[@]}" from --quiet scratch)
    WORKING_CONTAINER=$ctr
    "${BUILDAH[@]}" add --quiet "$ctr" "$rootfs" / >/dev/null
    rm -f "$rootfs"
    "${BUILDAH[@]}" config \
        --os linux --arch "$arch" \
        --user 1000:0 \
        --workingdir / \
        --env PATH=/usr/local/bin \
        --env HOME=/tmp \
        --env NO_COLOR=1 \
        --entrypoint '["/entrypoint.sh"]' \
        --created-by "images/build.sh" \
        --label org.opencontainers.image.title=wsr-recovery \
        --label "org.opencontainers.image.description=wsr workspace backup and restore; drop-in for DevWorkspace Operator's project-backup image (/workspace-recovery.sh --backup | --restore)" \
        --label "org.opencontainers.image.version=$TAG" \
        --label "org.opencontainers.image.revision=$REVISION" \
        --label "org.opencontainers.image.created=$CREATED" \
        --label org.opencontainers.image.licenses=Apache-2.0 \
        --label io.k8s.display-name=wsr-recovery \
        --label "io.k8s.description=Backs up /projects to an OCI registry and restores it; runs as any uid with gid 0 on a read-only root filesystem" \
        "$ctr"
    "${BUILDAH[@]}" commit --quiet --rm --format oci --timestamp "$EPOCH" "$ctr" "$ref" >/dev/null
    WORKING_CONTAINER=
}

# A failed build must not leave its working container behind in the storage.
WORKING_CONTAINER=
trap '[[ -z $WORKING_CONTAINER ]] || "${BUILDAH[@]}" rm "$WORKING_CONTAINER" >/dev/null 2>&1 || true' EXIT

IFS=, read -r -a arch_list <<<"$ARCHES"
for arch in "${arch_list[@]}"; do
    check_arch "$arch"
done
REF=$NAME:$TAG
if ((${#arch_list[@]} == 1)); then
    build_image "${arch_list[0]}" "$REF"
else
    "${BUILDAH[@]}" manifest rm "$REF" >/dev/null 2>&1 || true
    "${BUILDAH[@]}" rmi "$REF" >/dev/null 2>&1 || true
    for arch in "${arch_list[@]}"; do
        build_image "$arch" "$REF-$arch"
    done
    "${BUILDAH[@]}" manifest create "$REF" >/dev/null
    for arch in "${arch_list[@]}"; do
        "${BUILDAH[@]}" manifest add --arch "$arch" --os linux "$REF" "containers-storage:$REF-$arch" >/dev/null
    done
fi
# Earlier builds of the same tag are left untagged; this storage holds only wsr's images.
"${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
log "built $REF ($ARCHES)"

if [[ -n $PUSH ]]; then
    case $PUSH in
    *://* | oci:* | oci-archive:* | dir:* | docker-archive:* | containers-storage:*) ;;
    *) PUSH=docker://$PUSH ;; # a plain registry reference
    esac
    log "pushing $REF to $PUSH"
    if ((${#arch_list[@]} == 1)); then
        "${BUILDAH[@]}" push "${PUSH_ARGS[@]}" "$REF" "$PUSH" >&2
    else
        "${BUILDAH[@]}" manifest push --all "${PUSH_ARGS[@]}" "$REF" "$PUSH" >&2
    fi
fi
echo "$REF"
