#!/bin/bash
# Kernel-side costs behind nvhook's phases, one figure per step (root; a C compiler):
#   clone_attr  open_tree + mount_setattr against one open_tree_attr (Linux 6.15), per clone
#   bind_steps  one file bind as nvhook makes it: create the mount point, fstat, clone, attach
#               (in a private mount namespace, on a fresh tmpfs)
#   procfs      reading the /proc files a start reads (mountinfo, status, ...) against capget
#
#   sudo bench/micro.sh [SOURCE_FILE_FOR_CLONES]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"; rmdir /tmp/nvhook-micro-* 2>/dev/null || true' EXIT
for p in clone_attr bind_steps procfs; do
    cc -O2 -o "$OUT/$p" "$HERE/micro/$p.c"
done
echo "kernel $(uname -r)"
echo "== clone_attr (3 rounds of 2000 clones)"; "$OUT/clone_attr" "${1:-/usr/bin/true}"
echo "== bind_steps (800 file binds)"; "$OUT/bind_steps" "${1:-/usr/bin/true}"
echo "== procfs (2000 reads each)"; "$OUT/procfs"
