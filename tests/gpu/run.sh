#!/bin/bash
# nvhook's GPU end-to-end kit: start driverless containers with runc (and crun) on a real NVIDIA
# host, nvhook as their hook, and check what they can do. Prints a pass/fail table; exit 0 only
# if every case passed.
#
#   sudo tests/gpu/run.sh            build the kit (needs cargo, gcc, busybox-static, runc), then run
#   sudo tests/gpu/run.sh KIT_DIR    run a kit built elsewhere (tests/gpu/build-kit.sh KIT_DIR)
#
# nvhook runs with its defaults (no config file): driver root /, dev root /, proc /proc.
# If $OUT is set, the table and the logs are also written there.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${1:-}
if [ -z "$KIT" ]; then
    KIT=$(cd "$HERE/../.." && pwd)/.gpukit
    bash "$HERE/build-kit.sh" "$KIT" || exit 1
fi
KIT=$(cd "$KIT" && pwd)
[ "$(id -u)" = 0 ] || { echo "run.sh: run as root" >&2; exit 1; }
[ -r /proc/driver/nvidia/version ] || { echo "run.sh: no NVIDIA driver on this host" >&2; exit 1; }

export PATH="$KIT/bin:$PATH" LD_LIBRARY_PATH="$KIT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
NVHOOK=$KIT/bin/nvhook
WORK=${WORK:-/tmp/nvhook-gpu-e2e}
OUTDIR=${OUT:-$WORK/out}
rm -rf "$WORK"; mkdir -p "$WORK" "$OUTDIR"
LOG=$OUTDIR/gpu-e2e.log
: > "$LOG"
unset NVHOOK_CONFIG
[ -e /etc/nvhook/config.toml ] && echo "note: /etc/nvhook/config.toml exists and is used" | tee -a "$LOG"

DRIVER=$(sed -n 's/^NVRM version:.*  \([0-9][0-9.]*\)  .*/\1/p' /proc/driver/nvidia/version | head -1)
INFO=$(ls /proc/driver/nvidia/gpus/*/information | head -1)
UUID=$(sed -n 's/^GPU UUID:[[:space:]]*//p' "$INFO")
MODEL=$(sed -n 's/^Model:[[:space:]]*//p' "$INFO")
CAPS_MAJOR=$(awk '$2 == "nvidia-caps" { print $1 }' /proc/devices)
CGROUP=$(stat -fc %T /sys/fs/cgroup)

json_str() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
json_array() { local out="" a; for a in "$@"; do out="$out${out:+, }$(json_str "$a")"; done; printf '[%s]' "$out"; }

# mkbundle DIR ROOTFS_TAR READONLY STAGE ARGS... -- ENV...
mkbundle() {
    local dir=$1 tar=$2 ro=$3 stage=$4; shift 4
    local args=() env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    while [ $# -gt 0 ] && [ "$1" != -- ]; do args+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    env+=("$@")
    mkdir -p "$dir/rootfs"
    tar -C "$dir/rootfs" -xf "$tar"
    mkdir -p "$dir/rootfs/probe-nodes"
    mknod "$dir/rootfs/probe-nodes/gpu0" c 195 0
    mknod "$dir/rootfs/probe-nodes/gpu1" c 195 1
    [ -n "$CAPS_MAJOR" ] && mknod "$dir/rootfs/probe-nodes/cap1" c "$CAPS_MAJOR" 1
    local hooks=""
    [ "$stage" != none ] && hooks=", \"hooks\": {\"$stage\": [{\"path\": \"$NVHOOK\", \"args\": [\"nvhook\", \"prestart\"], \"env\": [\"NVHOOK_LOG=debug\", \"NVHOOK_LOG_FILE=$OUTDIR/nvhook.log\"]}]}"
    cat > "$dir/config.json" <<EOF
{"ociVersion": "1.0.2", "process": {"terminal": false, "user": {"uid": 0, "gid": 0},
 "args": $(json_array "${args[@]}"), "env": $(json_array "${env[@]}"), "cwd": "/",
 "capabilities": {"bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
  "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
  "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]},
 "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}], "noNewPrivileges": true},
 "root": {"path": "rootfs", "readonly": $ro}, "hostname": "gpu-e2e",
 "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
  {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
  {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
  {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
  {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}],
 "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]},
  "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
  "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"], "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]}
 $hooks}
EOF
}

# run_case RUNTIME NAME ROOTFS READONLY STAGE 'SCRIPT' ENV... : run, save output in $WORK/NAME.out
N=0
run_case() {
    local rt=$1 name=$2 rootfs=$3 ro=$4 stage=$5 script=$6; shift 6
    N=$((N + 1))
    local dir=$WORK/b-$N
    mkbundle "$dir" "$KIT/$rootfs.tar" "$ro" "$stage" /bin/sh -c "$script" -- "$@"
    local inject_err=""
    if [ -n "${CDI_DEVICES:-}" ]; then # CDI cases: the spec's edits applied as an engine would
        python3 "$KIT/bin/cdi-inject.py" "$CDI_SPEC" "$dir" $CDI_DEVICES > "$dir/inject.log" 2>&1 \
            || inject_err="cdi-inject:failed $(cat "$dir/inject.log")"
    fi
    find "$dir/rootfs" -printf '%P %y %s\n' | sort > "$dir/tree.before"
    mount | sort > "$dir/mounts.before"
    "$rt" run --bundle "$dir" "gpu-e2e-$N" > "$WORK/$name.out" 2>&1 < /dev/null
    echo "rc=$?" >> "$WORK/$name.out"
    [ -n "$inject_err" ] && echo "$inject_err" >> "$WORK/$name.out"
    "$rt" delete -f "gpu-e2e-$N" >/dev/null 2>&1
    mount | sort > "$dir/mounts.after"
    find "$dir/rootfs" -printf '%P %y %s\n' | sort > "$dir/tree.after"
    if ! cmp -s "$dir/mounts.before" "$dir/mounts.after"; then echo "host-mounts:changed" >> "$WORK/$name.out"; fi
    if cmp -s "$dir/tree.before" "$dir/tree.after"; then echo "rootfs:unchanged" >> "$WORK/$name.out"; fi
    { echo "===== $name ($rt, $rootfs, readonly=$ro, stage=$stage, env: $*)"; cat "$WORK/$name.out"; } >> "$LOG"
}

ROWS=()
FAILED=0
check() { # check NAME 'description' grep-patterns... (prefix ! = must not match)
    local name=$1 desc=$2; shift 2
    local ok=PASS p
    for p in "$@"; do
        if [[ $p == '!'* ]]; then grep -qE -- "${p#!}" "$WORK/$name.out" && ok=FAIL
        else grep -qE -- "$p" "$WORK/$name.out" || ok=FAIL; fi
    done
    grep -q "host-mounts:changed" "$WORK/$name.out" && ok=FAIL
    [ $ok = FAIL ] && FAILED=$((FAILED + 1))
    ROWS+=("| $name | $desc | $ok |")
}

GPU_OK='cudaprobe: .*: 1048576/1048576 results verified'
SMI_OK="GPU 0: .*\(UUID: $UUID\)"
FULL='nvidia-smi -L; cudaprobe; echo cuda-rc=$?'
NODES='ls /dev | grep -E "^nvidia" | sed "s/^/node:/"'
OPEN='probe open /probe-nodes/gpu0 /probe-nodes/gpu1 /probe-nodes/cap1'

run_case runc all rootfs-debian false prestart "$FULL; $NODES; $OPEN" NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
check all "\`all\`, compute,utility: nvidia-smi -L lists the GPU; PTX kernel verifies" "$SMI_OK" "$GPU_OK" 'cuda-rc=0' 'rc=0'

run_case runc index0 rootfs-debian false prestart "$FULL; $NODES; $OPEN" NVIDIA_VISIBLE_DEVICES=0 NVIDIA_DRIVER_CAPABILITIES=compute,utility
check index0 "\`0\`: same; an image node of a GPU that does not exist (195:1) and nvidia-cap1 are denied" \
    "$SMI_OK" "$GPU_OK" '/probe-nodes/gpu0: ok' '/probe-nodes/gpu1: EPERM' "$( [ -n "$CAPS_MAJOR" ] && echo '/probe-nodes/cap1: EPERM' || echo . )"

run_case runc uuid rootfs-debian false prestart "$FULL" "NVIDIA_VISIBLE_DEVICES=$UUID" NVIDIA_DRIVER_CAPABILITIES=compute,utility
check uuid "\`<the GPU's UUID>\`: same" "$SMI_OK" "$GPU_OK"

run_case runc utility rootfs-debian false prestart 'nvidia-smi -L; probe absent libcuda.so.1; ls /usr/lib/*/libcuda* >/dev/null 2>&1 && echo libcuda-file:present; true' NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=utility
check utility "\`utility\` only: nvidia-smi works, libcuda.so.1 absent" "$SMI_OK" 'libcuda.so.1: absent' '!libcuda-file:present' 'rc=0'

run_case runc compute rootfs-debian false prestart 'cudaprobe; [ -e /usr/bin/nvidia-smi ] || echo smi:absent' NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute
check compute "\`compute\` only: kernel runs, nvidia-smi absent" "$GPU_OK" 'smi:absent'

run_case runc none rootfs-debian false prestart "$NODES; $OPEN; nvidia-smi -L; echo smi-rc=\$?" NVIDIA_VISIBLE_DEVICES=none
check none "\`none\`: no /dev/nvidia0 (the image's own 195:0 node is denied), control node and driver files present" \
    '!node:nvidia0$' 'node:nvidiactl' '/probe-nodes/gpu0: EPERM' 'rc=0'

run_case runc unset rootfs-debian false prestart "$NODES; ls /usr/lib/*/ | grep -iE 'nvidia|cuda'; [ -e /usr/bin/nvidia-smi ] && echo smi:present; $OPEN; echo done"
check unset "unset: no NVIDIA file at all, rootfs untouched, as if no hook were there" \
    '!node:' '!nvidia|cuda' '!smi:present' '/probe-nodes/gpu0: EPERM' 'rootfs:unchanged' 'done' 'rc=0'

run_case runc nohook rootfs-debian false none "$NODES; echo done"
check nohook "(reference) the same container with no hook at all" 'done' 'rc=0' '!node:'

run_case runc readonly rootfs-debian true prestart "$FULL; touch /x 2>/dev/null || echo ro:yes" NVIDIA_VISIBLE_DEVICES=all
check readonly "read-only rootfs" "$SMI_OK" "$GPU_OK" 'ro:yes'

run_case runc lib64 rootfs-lib64 false prestart "$FULL; ls -l /usr/lib64/libcuda.so.1" NVIDIA_VISIBLE_DEVICES=all
check lib64 "non-Debian image, real /lib (no usrmerge): libraries in /usr/lib64" "$SMI_OK" "$GPU_OK" '/usr/lib64/libcuda.so.1 ->'

run_case runc usrmerge rootfs-debian false prestart "ls -ld /lib; ls -l /lib/x86_64-linux-gnu/libcuda.so.1; cudaprobe" NVIDIA_VISIBLE_DEVICES=all
check usrmerge "usrmerge image (/lib -> usr/lib): libraries in the multiarch dir, seen through /lib" 'lib -> usr/lib' 'libcuda.so.1 ->' "$GPU_OK"

run_case runc createruntime rootfs-debian false createRuntime "$FULL" NVIDIA_VISIBLE_DEVICES=all
check createruntime "registered as createRuntime instead of prestart" "$SMI_OK" "$GPU_OK"

run_case runc unknown rootfs-debian false prestart 'echo started' NVIDIA_VISIBLE_DEVICES=GPU-00000000-dead-beef-0000-000000000000
check unknown "unknown UUID: the start fails with nvhook's message" '!started' 'nvhook: error: NVIDIA_VISIBLE_DEVICES: unknown device' "$UUID"

run_case runc caps-all rootfs-debian false prestart "$FULL; ls /etc/vulkan/icd.d/ /usr/share/glvnd/egl_vendor.d/ 2>&1; ls /usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0 /usr/lib/x86_64-linux-gnu/libnvidia-encode.so.1 2>&1" NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=all
check caps-all "\`NVIDIA_DRIVER_CAPABILITIES=all\`: compute and utility work; graphics (GLX, Vulkan ICD, EGL vendor file) and video libraries present" "$SMI_OK" "$GPU_OK" 'nvidia_icd.json' '10_nvidia.json' 'libGLX_nvidia.so.0$' 'libnvidia-encode.so.1$'

# the mount attributes each bind got (set on the detached clone: open_tree_attr on kernels that
# have it, open_tree + mount_setattr before): libraries and binaries ro,nosuid,nodev; device
# nodes ro,nosuid,noexec; no driver bind writable
ATTRS='awk '"'"'$5 ~ /(libcuda\.so\.[0-9.]+|libnvidia-ml\.so\.[0-9.]+|nvidia-smi|nvidiactl|nvidia0)$/ {print "attr:" $5 " " $6}'"'"' /proc/self/mountinfo'
run_case runc attrs rootfs-debian false prestart "$ATTRS; cudaprobe" NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
check attrs "mount attributes: libraries and nvidia-smi ro,nosuid,nodev; /dev/nvidiactl and /dev/nvidia0 ro,nosuid,noexec; none writable" "$GPU_OK" 'attr:/usr/lib/x86_64-linux-gnu/libcuda\.so\.[0-9.]+ ro,nosuid,nodev' 'attr:/usr/lib/x86_64-linux-gnu/libnvidia-ml\.so\.[0-9.]+ ro,nosuid,nodev' 'attr:/usr/bin/nvidia-smi ro,nosuid,nodev' 'attr:/dev/nvidiactl ro,nosuid,noexec' 'attr:/dev/nvidia0 ro,nosuid,noexec' '!attr:.* rw'

run_case runc proc rootfs-debian false prestart "ls /proc/driver/nvidia/ /proc/driver/nvidia/gpus/; grep ModifyDeviceFiles /proc/driver/nvidia/params; nvidia-smi -L >/dev/null; ls -d /dev/nvidia-caps 2>&1" NVIDIA_VISIBLE_DEVICES=all
check proc "/proc/driver/nvidia shows the selected GPU, params has ModifyDeviceFiles: 0, and nvidia-smi creates no device nodes" 'ModifyDeviceFiles: 0' "$(basename "$(dirname "$INFO")")" '/dev/nvidia-caps: No such file'

run_case runc proc-none rootfs-debian false prestart "ls /proc/driver/nvidia/gpus/ | wc -l; ls /proc/driver/nvidia/" NVIDIA_VISIBLE_DEVICES=none
check proc-none "\`none\`: /proc/driver/nvidia/gpus is empty" '^0$' 'version'

# CDI: nvhook's spec for this host, applied to the bundle by tests/gpu/cdi-inject.py (runc does not
# read CDI itself), with no prestart hook: only the spec's createRuntime hook, `nvhook cdi-hook`
if command -v python3 >/dev/null 2>&1; then
    CDI_SPEC=$WORK/nvhook-cdi.json
    "$NVHOOK" cdi generate --output "$CDI_SPEC" >> "$LOG" 2>&1
    CDI_DEVICES=all run_case runc cdi-all rootfs-debian false none "$FULL; $NODES; env | grep NVIDIA_VISIBLE" NVIDIA_VISIBLE_DEVICES=all
    check cdi-all "CDI \`nvidia.com/gpu=all\` from \`nvhook cdi generate\`, no prestart hook: nvidia-smi, PTX kernel; the image's NVIDIA_VISIBLE_DEVICES made void" \
        "$SMI_OK" "$GPU_OK" 'NVIDIA_VISIBLE_DEVICES=void' '!cdi-inject:failed'
    CDI_DEVICES="0 $UUID" run_case runc cdi-index0 rootfs-lib64 false none "$FULL; $OPEN"
    check cdi-index0 "CDI \`0\` and its UUID, non-Debian image (libraries where the host keeps them, found through the cache); 195:1 and nvidia-cap1 denied" \
        "$SMI_OK" "$GPU_OK" '/probe-nodes/gpu1: EPERM' "$( [ -n "$CAPS_MAJOR" ] && echo '/probe-nodes/cap1: EPERM' || echo . )" '!cdi-inject:failed'
else
    ROWS+=("| cdi-* | no python3 on this host for tests/gpu/cdi-inject.py | SKIP |")
fi

if [ -d /usr/local/cuda/compat ]; then
    # an image that ships the host CUDA toolkit's forward-compat libs (older than this driver)
    N=$((N + 1)); COMPAT_TAR=$WORK/rootfs-compat.tar
    mkdir -p "$WORK/compat/usr/local/cuda" && tar -C "$WORK/compat" -xf "$KIT/rootfs-debian.tar"
    cp -a "$(readlink -f /usr/local/cuda/compat)" "$WORK/compat/usr/local/cuda/compat"
    tar -C "$WORK/compat" -cf "$COMPAT_TAR" . && cp "$COMPAT_TAR" "$KIT/rootfs-compat.tar"
    run_case runc compat-older rootfs-compat false prestart "ls /usr/local/cuda/compat/ | grep libcuda.so.; cudaprobe; nvidia-smi -L" NVIDIA_VISIBLE_DEVICES=all
    check compat-older "image ships the host's CUDA compat libcuda ($(ls /usr/local/cuda/compat/ | grep -o 'libcuda.so.[0-9.]*[0-9]' | head -1)), older than the driver: the driver's libcuda is used" "$GPU_OK" "$SMI_OK"
fi

run_case runc require-ok rootfs-debian false prestart "cudaprobe" NVIDIA_VISIBLE_DEVICES=all "NVIDIA_REQUIRE_CUDA=cuda>=12.0 brand=tesla,driver>=470"
check require-ok "NVIDIA_REQUIRE_CUDA=cuda>=12.0 ...: satisfied, the container starts" "$GPU_OK" 'rc=0'

run_case runc require-fail rootfs-debian false prestart "echo started" NVIDIA_VISIBLE_DEVICES=all "NVIDIA_REQUIRE_CUDA=cuda>=99.0"
check require-fail "NVIDIA_REQUIRE_CUDA=cuda>=99.0: the start fails naming the requirement and the host's CUDA version" '!started' 'cuda>=99.0' 'nvhook: error'

run_case runc legacy rootfs-debian false prestart "$FULL; ls /etc/vulkan/icd.d/" CUDA_VERSION=12.4.1
check legacy "legacy image (CUDA_VERSION=12.4.1, nothing else): all GPUs, all capabilities, cuda>=12.4 checked" "$SMI_OK" "$GPU_OK" 'nvidia_icd.json'

if command -v crun >/dev/null && crun --version >/dev/null 2>&1; then
    run_case crun crun-all rootfs-debian false prestart "$FULL; $OPEN" NVIDIA_VISIBLE_DEVICES=0
    check crun-all "crun, \`0\`: nvidia-smi and the kernel; 195:1 denied" "$SMI_OK" "$GPU_OK" '/probe-nodes/gpu1: EPERM'
else
    ROWS+=("| crun-all | crun could not run on this host | SKIP |")
fi

# Load: PARALLEL (default 64) runc containers started at once, each with nvhook and its own CUDA
# context; every one must list the GPU, verify the kernel and leave nothing behind.
PAR=${PARALLEL:-64}
mkdir -p "$WORK/par"
for i in $(seq 1 "$PAR"); do
    mkbundle "$WORK/par/$i" "$KIT/rootfs-debian.tar" false prestart /bin/sh -c "$FULL" -- NVIDIA_VISIBLE_DEVICES=all
done
mount | sort > "$WORK/par/mounts.before"
par_start=$(date +%s%N)
for i in $(seq 1 "$PAR"); do
    ( runc run --bundle "$WORK/par/$i" "gpu-par-$i" > "$WORK/par/$i.out" 2>&1 < /dev/null; echo "rc=$?" >> "$WORK/par/$i.out"
      runc delete -f "gpu-par-$i" >/dev/null 2>&1 ) &
done
wait
par_ms=$(( ($(date +%s%N) - par_start) / 1000000 ))
mount | sort > "$WORK/par/mounts.after"
par_ok=0
for i in $(seq 1 "$PAR"); do
    grep -qE "$GPU_OK" "$WORK/par/$i.out" && grep -qE "$SMI_OK" "$WORK/par/$i.out" && grep -q '^rc=0$' "$WORK/par/$i.out" && par_ok=$((par_ok + 1))
done
left=$(runc list -q 2>/dev/null | grep -c '^gpu-par-' || true)
{ echo "===== parallel: $PAR containers at once, $par_ok verified, ${par_ms} ms wall, $left left in runc list"; cat "$WORK/par/1.out"; } >> "$LOG"
{ echo "parallel-ok=$par_ok/$PAR"; echo "left=$left"; cmp -s "$WORK/par/mounts.before" "$WORK/par/mounts.after" || echo "host-mounts:changed"; } > "$WORK/parallel.out"
check parallel "$PAR runc containers started at once, each with nvhook: all list the GPU and verify the kernel ($par_ok/$PAR, ${par_ms} ms wall); none left in runc's state" "parallel-ok=$PAR/$PAR" 'left=0'

{
    echo "nvhook GPU end-to-end kit"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- host: $(uname -r), cgroup fs: $CGROUP, GPU: $MODEL ($UUID), driver $DRIVER"
    echo "- runtimes: $(runc --version | head -1); $(crun --version 2>/dev/null | head -1 || echo 'crun: none')"
    echo "- nvhook: $($NVHOOK version), no config file (defaults)"
    echo
    echo "| case | what is checked | result |"
    echo "| --- | --- | --- |"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "$(( ${#ROWS[@]} - FAILED )) of ${#ROWS[@]} passed"
} | tee "$OUTDIR/gpu-e2e.md"
{
    echo; echo '$ nvhook list'; "$NVHOOK" list 2>&1
    echo; echo '$ nvhook doctor'; "$NVHOOK" doctor 2>&1
    echo; echo '$ nvtiming (cost of asking the driver for its CUDA version)'; "$KIT/bin/nvtiming" 2>&1
    echo; echo '$ readelf -p .note.cuda.fwd_compatibility <host libcuda>'
    readelf -p .note.cuda.fwd_compatibility "$(readlink -f "$(ldconfig -p | awk '/libcuda.so.1 .*x86-64/ {print $NF; exit}')")" 2>&1 | tail -3
} > "$OUTDIR/gpu-tools.txt" 2>&1
[ "$FAILED" = 0 ]
