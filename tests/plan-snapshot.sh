#!/bin/bash
# `nvhook plan` on a fixed set of bundles, one output file per case: a refactor must not change
# what it prints (root: the fixtures need mknod).
#
#   tests/plan-snapshot.sh OUTDIR [NVHOOK_BIN]
#
# Everything but OUTDIR lies at fixed paths (under /tmp/nvhook-plan-snapshot), so two runs'
# outputs can be compared. Before and after a change:
#
#   cargo build && cp target/debug/nvhook /tmp/nvhook-plan-base     # on the base commit
#   tests/plan-snapshot.sh /tmp/before /tmp/nvhook-plan-base && tests/plan-snapshot.sh /tmp/after target/debug/nvhook && diff -r /tmp/before /tmp/after
#
# Each OUTDIR/CASE.out holds stdout, CASE.err stderr and CASE.rc the exit status.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:?usage: plan-snapshot.sh OUTDIR [NVHOOK_BIN]}
BIN=${2:-$ROOT/target/debug/nvhook}
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
WORK=/tmp/nvhook-plan-snapshot
FX=$WORK/fx
CFG=$WORK/config.toml

rm -rf "$WORK"
mkdir -p "$WORK"
bash "$ROOT/tests/fixtures/mkfixtures.sh" "$FX" >/dev/null
{
    printf 'driver-root = "%s/driver"\ndev-root = "%s"\nproc-root = "%s/proc"\nsys-root = "%s/sys"\n' "$FX" "$FX" "$FX" "$FX"
    printf 'cache-dir = ""\n'
} > "$CFG"
# one GPU's UUID, as the fixtures' proc tree has it
UUID=$(sed -n 's/^GPU UUID:[[:space:]]*//p' "$(find "$FX/proc/driver/nvidia/gpus" -name information | sort | head -n1)")
[ -n "$UUID" ] || { echo "plan-snapshot: no GPU UUID in $FX/proc" >&2; exit 1; }

# bundle NAME ENV...: a runc-style bundle with the Debian fixture rootfs and these variables
bundle() {
    local name=$1 b=$WORK/bundles/$1 env='"PATH=/usr/bin:/bin"' v
    shift
    for v in "$@"; do env+=",\"$v\""; done
    mkdir -p "$b"
    cp -a "$FX/rootfs-debian" "$b/rootfs"
    printf '{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0},"env":[%s]}}\n' "$env" > "$b/config.json"
}
bundle no-gpu
bundle visible-all NVIDIA_VISIBLE_DEVICES=all
bundle visible-0 NVIDIA_VISIBLE_DEVICES=0
bundle visible-1 NVIDIA_VISIBLE_DEVICES=1
bundle visible-uuid "NVIDIA_VISIBLE_DEVICES=$UUID"
bundle caps-all NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=all
bundle caps-compute-utility NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
bundle caps-graphics NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=graphics
bundle caps-display NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=display
bundle invalid-visible NVIDIA_VISIBLE_DEVICES=nonsense-17
bundle invalid-caps NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=bogus

rm -rf "$OUT"
mkdir -p "$OUT"
for b in "$WORK"/bundles/*; do
    name=$(basename "$b")
    rc=0
    "$BIN" --config "$CFG" plan --bundle "$b" >"$OUT/$name.out" 2>"$OUT/$name.err" || rc=$?
    echo "$rc" >"$OUT/$name.rc"
done
echo "plan-snapshot: $(ls "$WORK/bundles" | wc -l) cases in $OUT"
