#!/bin/bash
# Where the time of an nvhook start goes, on an NVIDIA host, in one command (root):
#
#   bench/profile.sh KIT PEERS OUT [TOOLS]
#
# KIT from tests/gpu/build-kit.sh, PEERS NVIDIA's binaries (../shared/peers), OUT a directory for
# the results, TOOLS an optional directory with bin/strace (and lib/ for its libraries) where the
# host has none. It prints: the host's facts, a short interleaved benchmark with nvhook's phase
# breakdown (bench.py), the cost of exec'ing the hook binary against /bin/true, the dynamic
# loader's own statistics, and an `strace -f -T` of the hook for an all-GPU start.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=$(cd "$1" && pwd); PEERS=$(cd "$2" && pwd); OUTD=$3; TOOLS=${4:+$(cd "$4" && pwd)}
mkdir -p "$OUTD"; OUTD=$(cd "$OUTD" && pwd)
export PATH="$KIT/bin:$PATH" LD_LIBRARY_PATH="$KIT/lib"
NVHOOK=${NVHOOK:-$KIT/bin/nvhook}
STRACE=$(command -v strace || true)
if [ -z "$STRACE" ] && [ -n "$TOOLS" ] && [ -x "$TOOLS/bin/strace" ]; then
    STRACE="$TOOLS/bin/strace"; export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$TOOLS/lib"
fi
echo "== host"
uname -r; nproc; grep -m1 'model name' /proc/cpuinfo; head -1 /proc/driver/nvidia/version
sed -n 's/^Model:[[:space:]]*//p' /proc/driver/nvidia/gpus/*/information
runc --version | head -1; stat -fc 'cgroup fs: %T' /sys/fs/cgroup; findmnt -no FSTYPE,OPTIONS /run
ls -la /etc/ld.so.cache /usr/local/nvidia/etc/ld.so.cache 2>&1; ldconfig -p | head -1
echo "strace: ${STRACE:-none}; perf: $(command -v perf || echo none); bpftrace: $(command -v bpftrace || echo none)"
ls -la "$NVHOOK"; ldd "$NVHOOK"

echo "== interleaved benchmark with nvhook's phase breakdown"
[ -n "${SKIP_BENCH:-}" ] || python3 "$HERE/bench.py" --nvhook "$NVHOOK" --rootfs-tar "$KIT/rootfs-debian.tar" --runc "$KIT/bin/runc" \
    --peers "$PEERS" --n "${N:-40}" --warmup 3 --breakdown-n 30 --out "$OUTD/bench.md" ${BENCH_ARGS:-} 2>&1 | grep -v '^  round'

echo "== exec cost: fork+exec+wait, median of 2000 (microseconds)"
python3 - "$NVHOOK" ${NVHOOK_BASE:-} <<'PY'
import os, sys, time, statistics
def med(argv, n=2000):
    t = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        pid = os.posix_spawn(argv[0], argv, {"PATH": "/usr/bin:/bin"},
                             file_actions=[(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)])
        os.waitpid(pid, 0)
        t.append((time.perf_counter_ns() - t0) / 1000)
    return statistics.median(t)
runs = [["/bin/true"]] + [[nv, "version"] for nv in sys.argv[1:]]
for argv in runs + runs:
    print("%-40s %8.1f" % (" ".join(argv), med(argv)))
PY
echo "== dynamic loader statistics (nvhook version)"
LD_DEBUG=statistics "$NVHOOK" version 2>&1 | sed 's/^ *[0-9]*: *//' | head -20

echo "== reading the driver's /proc files: median of 300 open+read+close (microseconds)"
python3 - <<'PY'
import glob, os, statistics, time
files = ["/proc/driver/nvidia/version", "/proc/driver/nvidia/registry", "/proc/driver/nvidia/params"]
files += glob.glob("/proc/driver/nvidia/gpus/*/information")
for f in files:
    t = []
    for _ in range(300):
        t0 = time.perf_counter_ns()
        with open(f, "rb") as h:
            h.read()
        t.append((time.perf_counter_ns() - t0) / 1000)
    print("%-60s %8.1f" % (f, statistics.median(t)))
PY

echo "== nvhook's phases with the inventory cache off and on (20 debug-logged starts each)"
printf 'cache-dir = ""\n' > "$OUTD/nocache.toml"
for cfg in "$OUTD/nocache.toml" ""; do
    python3 "$HERE/bench.py" --nvhook "$NVHOOK" --rootfs-tar "$KIT/rootfs-debian.tar" --runc "$KIT/bin/runc" \
        --setups c --n 1 --warmup 0 --breakdown-n 20 --work /tmp/nvhook-prof-cache ${cfg:+--config "$cfg"} 2>&1 \
        | sed -n "/own time per start/,\$p" | grep '^|'
done

if [ -n "$STRACE" ]; then
    echo "== strace -f -T of the hook, all GPUs compute,utility (5 starts, traces in $OUTD)"
    W=$OUTD/strace-wrap.sh
    # the hook's environment comes from its registration: strace's own libraries are named here,
    # and removed again for the traced hook (-E)
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s -E LD_LIBRARY_PATH -f -T -ttt -o %s/strace-hook.$$ %s "$@"\n' \
        "$LD_LIBRARY_PATH" "$STRACE" "$OUTD" "$NVHOOK" > "$W"
    chmod 755 "$W"
    python3 "$HERE/bench.py" --nvhook "$W" --rootfs-tar "$KIT/rootfs-debian.tar" --runc "$KIT/bin/runc" \
        --setups c --n 5 --warmup 0 --breakdown-n 0 --work /tmp/nvhook-prof-strace 2>&1 | tail -3
    ls "$OUTD"/strace-hook.* | head -3
    # keep the last trace whole, drop the others (the check run's and the warm ones)
    last=$(ls -t "$OUTD"/strace-hook.* | head -1)
    mv "$last" "$OUTD/strace-hook-c.txt"; rm -f "$OUTD"/strace-hook.* "$W"
    echo "syscalls by total time (us):"
    python3 - "$OUTD/strace-hook-c.txt" <<'PY'
import re, sys, collections
t = collections.Counter(); c = collections.Counter()
for line in open(sys.argv[1]):
    m = re.match(r"\d+\s+[\d.]+\s+(?:<\.\.\. )?(\w+).*<([\d.]+)>$", line.strip())
    if m:
        t[m.group(1)] += float(m.group(2)) * 1e6; c[m.group(1)] += 1
for k, v in t.most_common(25):
    print("%10.0f %5d %s" % (v, c[k], k))
PY
    echo "first and last timestamps:"; head -1 "$OUTD/strace-hook-c.txt"; tail -1 "$OUTD/strace-hook-c.txt"
fi
