#!/bin/bash
# The start-latency benchmark in one command (root):
#
#   sudo bench/run.sh [bench.py options]
#       any machine: builds the test fixtures (a fake driver tree) and nvhook, and times setups a-d
#       against them (nvhook reads the fake tree through its config)
#   sudo bench/run.sh --kit KIT [--peers DIR] [bench.py options]
#       an NVIDIA host: KIT from tests/gpu/build-kit.sh (nvhook, runc, a rootfs with cudaprobe);
#       --peers DIR (NVIDIA's binaries, xz) adds NVIDIA's shim and legacy hook (setups e-i)
#
# Options go to bench/bench.py (see its --help): --n 200 --warmup 10 --out FILE ...
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
KIT=""
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --kit) KIT=$2; shift 2 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
if [ -n "$KIT" ]; then
    KIT=$(cd "$KIT" && pwd)
    export PATH="$KIT/bin:$PATH" LD_LIBRARY_PATH="$KIT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    exec python3 "$HERE/bench.py" --nvhook "$KIT/bin/nvhook" --rootfs-tar "$KIT/rootfs-debian.tar" \
        --runc "$KIT/bin/runc" "${ARGS[@]}"
fi
FX=${FIXTURES:-/tmp/nvhook-bench-fixtures}
bash "$ROOT/tests/fixtures/mkfixtures.sh" "$FX" >/dev/null
printf 'driver-root = "%s/driver"\ndev-root = "%s"\nproc-root = "%s/proc"\nsys-root = "%s/sys"\n' "$FX" "$FX" "$FX" "$FX" > "$FX/config.toml"
# NVHOOK_BIN: time another build (the CI smoke test uses the debug build it already has)
BIN=${NVHOOK_BIN:-}
if [ -z "$BIN" ]; then
    (cd "$ROOT" && cargo build --release --locked -q)
    BIN=$ROOT/target/release/nvhook
fi
exec python3 "$HERE/bench.py" --nvhook "$BIN" --rootfs-tar "$FX/rootfs-debian.tar" \
    --config "$FX/config.toml" --fake "${ARGS[@]}"
