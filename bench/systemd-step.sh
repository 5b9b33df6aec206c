#!/bin/bash
# The cost of nvhook's systemd step (docs/systemd.md), from the hook's own per-phase timing:
# N podman starts (systemd cgroup manager, runc, NVIDIA_VISIBLE_DEVICES=0, the fake driver tree)
# with systemd-device-grants on and N with it off, interleaved in a random order per round.
# Run inside the systemd test host:
#   tests/systemd/host.sh exec bench/systemd-step.sh NVHOOK FIXTURES [N]
# NVHOOK: the binary (a release build), FIXTURES: a tree from tests/fixtures/mkfixtures.sh.
# Prints, per setting, the median of total_us and of the phases the step adds (systemd_check: the
# fork; systemd: the wait for systemd's answer after the mounts), and the median of the per-round
# differences on - off.
set -euo pipefail
NVHOOK=${1:?usage: systemd-step.sh NVHOOK FIXTURES [N]}
FX=${2:?usage: systemd-step.sh NVHOOK FIXTURES [N]}
N=${3:-30}
W=$(mktemp -d /var/tmp/nvhook-systemd-step.XXXXXX)
trap 'rm -rf "$W"' EXIT
for v in on off; do
    mkdir -p "$W/$v/hooks.d"
    { printf 'driver-root = "%s/driver"\ndev-root = "%s"\nproc-root = "%s/proc"\nsys-root = "%s/sys"\n' "$FX" "$FX" "$FX" "$FX"
      [ $v = on ] && echo "systemd-device-grants = true" || echo "systemd-device-grants = false"; } > "$W/$v/config.toml"
    printf '{"version":"1.0.0","hook":{"path":"%s","args":["nvhook","--config","%s","prestart"],"env":["NVHOOK_LOG=debug","NVHOOK_LOG_FILE=%s"]},"when":{"always":true},"stages":["prestart"]}\n' \
        "$NVHOOK" "$W/$v/config.toml" "$W/$v/log" > "$W/$v/hooks.d/nvhook.json"
done
run() {
    podman --runtime runc --cgroup-manager systemd --hooks-dir "$W/$1/hooks.d" run --rm --network none \
        --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 -e NVIDIA_VISIBLE_DEVICES=0 \
        --rootfs "$FX/rootfs-debian" true >/dev/null
}
run on; run off   # warm-up
: > "$W/on/log"; : > "$W/off/log"
for i in $(seq 1 "$N"); do
    if [ $((RANDOM % 2)) = 0 ]; then run on; run off; else run off; run on; fi
done
python3 - "$W/on/log" "$W/off/log" <<'PY'
import re, statistics, sys
def phases(path):
    out = []
    for l in open(path):
        if "timing total_us=" in l:
            out.append({k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", l)})
    return out
on, off = phases(sys.argv[1]), phases(sys.argv[2])
med = lambda xs: statistics.median(xs) if xs else float("nan")
for name, runs in (("on", on), ("off", off)):
    print(f"{name}: n={len(runs)} total_us median {med([r['total_us'] for r in runs])}"
          f" systemd_check {med([r.get('systemd_check', 0) for r in runs])}"
          f" systemd {med([r.get('systemd', 0) for r in runs])}"
          f" mounts {med([r.get('mounts', 0) for r in runs])}")
n = min(len(on), len(off))
print(f"added total_us, median of per-round differences on-off: {med([on[i]['total_us'] - off[i]['total_us'] for i in range(n)])}")
print(f"added on the critical path (systemd_check + systemd), median: {med([r.get('systemd_check', 0) + r.get('systemd', 0) for r in on])}")
PY
