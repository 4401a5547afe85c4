#!/usr/bin/env bash
# Mounts an ext4 filesystem with a journal for the benchmark's scratch trees (restores, the
# incremental copy): `scenarios bench --scratch-dir <mount point>`.
#
# Why: on ext4 without a journal, creating a file skips every inode freed in the last one to
# six minutes and checks each (`recently_deleted` in fs/ext4/ialloc.c), so each restore would
# pay for the trees the harness deleted before it. A journaled ext4 has no such rule.
#
# The filesystem lives in a sparse image file on the work disk, attached with direct I/O (no
# second page cache) and made by `mkfs.ext4` with its defaults but for the inode count. Needs
# root. Idempotent: an existing mount is reused. Prints the mount point. Mounted with
# `discard`, so the blocks of a deleted tree go back to the work disk (a `huge` corpus's trees
# would not fit twice). ext4 issues them once the transaction that freed the blocks commits,
# which the harness's untimed `sync` before every run forces.
# The image only grows while the work disk has room (past that ext4 sees I/O errors and
# remounts read-only): the harness counts the smaller of the two free spaces.
#   usage: bench-scratch.sh [mount point] [image file] [size]
set -euo pipefail

MOUNT=${1:-/mnt/wsr-bench-scratch}
IMAGE=${2:-$HOME/.cache/wsr/bench-scratch.img}
SIZE=${3:-24G}

if mountpoint -q "$MOUNT"; then
    echo "$MOUNT"
    exit 0
fi
mkdir -p "$MOUNT" "$(dirname "$IMAGE")"
if [ ! -f "$IMAGE" ]; then
    truncate -s "$SIZE" "$IMAGE"
    # One inode per 4 KiB: a phase keeps 14 restored trees of the many-files corpus (1.8 M
    # inodes). Initialized now, not by a background thread during the runs.
    mkfs.ext4 -q -F -i 4096 -E lazy_itable_init=0,lazy_journal_init=0 "$IMAGE"
fi
DEVICE=$(losetup --find --show --direct-io=on "$IMAGE")
mount -o discard "$DEVICE" "$MOUNT"
echo "$MOUNT"
