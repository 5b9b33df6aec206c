#!/bin/bash
# A real, enforcing systemd host for the tests: a Debian 12 tree (debootstrap, cached under
# target/systemd-host/) booted with systemd-nspawn, cgroup v2 only, systemd as PID 1 and its
# device policy enforced by eBPF. The repository is bound at the same absolute path inside, so
# test binaries built here run there with their compiled-in paths (CARGO_TARGET_TMPDIR, the
# nvhook binary, the fixtures). docs/systemd.md, "The systemd test host".
#
#   host.sh build          build the tree, or reuse the cached one (keyed by package list+setup)
#   host.sh boot           boot it in the background; wait until systemd is up; self-check
#   host.sh exec CMD...    run CMD inside (all its namespaces, cwd = the repository), in a
#                          transient scope of its systemd; exit status passed through
#   host.sh stop           power it off (kill it if that hangs); check nothing is left behind
#   host.sh status         is it running (exit 0) and where
#   host.sh check          the device-policy self-check (boot runs it)
#   host.sh suites [TEST...]  build the e2e test binaries here and run them inside with the
#                          systemd cgroup manager (NVHOOK_TEST_SYSTEMD=1); default: e2e_runc
#                          e2e_crun e2e_podman e2e_classes
#
# Environment: NVHOOK_SYSTEMD_HOST_DIR (default target/systemd-host), NVHOOK_SYSTEMD_HOST_MIRROR
# (a Debian mirror, default http://deb.debian.org/debian), NVHOOK_SYSTEMD_HOST_BOOT_TIMEOUT (s),
# NVHOOK_SYSTEMD_HOST_ENV ("VAR=value ..." passed to exec'd commands; or `exec env VAR=value CMD`).
# A test that needs more in the tree adds its package to PACKAGES: the cache key follows.
# Needs root, debootstrap and systemd-container (systemd-nspawn) on this machine.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
BASE=${NVHOOK_SYSTEMD_HOST_DIR:-$REPO/target/systemd-host}
MIRROR=${NVHOOK_SYSTEMD_HOST_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
BOOT_TIMEOUT=${NVHOOK_SYSTEMD_HOST_BOOT_TIMEOUT:-180}
RUN=$BASE/run
# What the tests need inside: systemd and its bus, the three runtimes, what mkfixtures.sh and
# tests/e2e_classes.rs build fixtures with (gcc with -m32, binutils, python3), and bpftool to
# look at the device programs. container-network-stack is a virtual package debootstrap cannot
# resolve: netavark provides it.
PACKAGES="systemd systemd-sysv dbus runc crun podman conmon netavark golang-github-containers-common
busybox-static catatonit uidmap mount util-linux procps bpftool python3 gcc libc6-dev gcc-multilib
binutils"

die() { echo "host.sh: $*" >&2; exit 1; }
log() { echo "host.sh: $*" >&2; }

# Inside the tree after debootstrap. Part of the cache key (its text is hashed): change it and
# the tree is rebuilt.
configure_tree() {
    local t=$1
    echo nvhook-systemd-host > "$t/etc/hostname"
    # no login prompts on the console; nothing that needs a network
    for u in console-getty.service getty@.service serial-getty@.service systemd-networkd-wait-online.service \
        apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
        ln -sf /dev/null "$t/etc/systemd/system/$u"
    done
    # podman, as on a systemd host: the systemd cgroup manager (its default with systemd as PID 1,
    mkdir -p "$t/etc/containers"
    # said explicitly); journald events would need a journal the tests do not read. No pids
    # limit: where this machine binds every controller to cgroup v1 (a hybrid host), the
    # cgroup2 inside has none, and crun refuses a limit it cannot set.
    printf '[containers]\npids_limit = 0\n[engine]\ncgroup_manager = "systemd"\nevents_logger = "file"\n' \
        > "$t/etc/containers/containers.conf"
    # crun with the memlock shim (tests/systemd/memlock-shim.c says why), first in PATH and
    # podman's crun
    mkdir -p "$t/usr/local/lib" "$t/usr/local/src"
    cp "$REPO/tests/systemd/memlock-shim.c" "$t/usr/local/src/"
    chroot "$t" gcc -shared -fPIC -O1 -o /usr/local/lib/nvhook-memlock-shim.so /usr/local/src/memlock-shim.c -ldl
    printf '#!/bin/sh\n# tests/systemd/memlock-shim.c\nLD_PRELOAD=/usr/local/lib/nvhook-memlock-shim.so exec /usr/bin/crun "$@"\n' \
        > "$t/usr/local/bin/crun"
    chmod 755 "$t/usr/local/bin/crun"
    printf '[engine.runtimes]\ncrun = ["/usr/local/bin/crun"]\n' >> "$t/etc/containers/containers.conf"
    rm -rf "$t/var/cache/apt/archives/"*.deb "$t/var/lib/apt/lists/"*
}

tree_key() {
    { echo "$SUITE minbase $PACKAGES"; declare -f configure_tree; cat "$REPO/tests/systemd/memlock-shim.c"; } | sha256sum | cut -c1-16
}

tree() { echo "$BASE/tree-$(tree_key)"; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }

cmd_build() {
    need_root
    local t start
    t=$(tree)
    if [ -e "$t/.nvhook-complete" ]; then
        echo "$t"
        return
    fi
    command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
    mkdir -p "$BASE"
    if is_running; then die "a host is running from another tree: host.sh stop first"; fi
    # older trees (another package list) go: each is ~700 MB
    for old in "$BASE"/tree-*; do
        [ -e "$old" ] && [ "$old" != "$t" ] && { log "removing the stale tree $old"; rm -rf "$old"; }
    done
    rm -rf "$t"
    start=$(date +%s)
    log "building $t (debootstrap $SUITE from $MIRROR)"
    if ! debootstrap --variant=minbase --include="$(echo "$PACKAGES" | tr -s ' \n' ',')" \
        "$SUITE" "$t" "$MIRROR" > "$BASE/debootstrap.log" 2>&1; then
        tail -20 "$BASE/debootstrap.log" >&2
        [ -f "$t/debootstrap/debootstrap.log" ] && tail -30 "$t/debootstrap/debootstrap.log" >&2
        die "debootstrap failed (full log: $BASE/debootstrap.log)"
    fi
    configure_tree "$t"
    touch "$t/.nvhook-complete"
    log "tree built in $(( $(date +%s) - start ))s: $t"
    echo "$t"
}

# The systemd-nspawn process and the container's PID 1 (systemd), as seen from here.
nspawn_pid() {
    local p
    p=$(cat "$RUN/nspawn.pid" 2>/dev/null) || return 1
    [ -n "$p" ] && [ -d "/proc/$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = systemd-nspawn ] || return 1
    echo "$p"
}

leader_pid() {
    local n c kids
    n=$(nspawn_pid) || return 1
    read -ra kids <<<"$(cat "/proc/$n/task/"*/children 2>/dev/null)"
    for c in "${kids[@]}"; do
        # the payload's PID 1 is the child in another PID namespace
        if [ "$(readlink "/proc/$c/ns/pid")" != "$(readlink "/proc/$n/ns/pid")" ]; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

is_running() { leader_pid >/dev/null 2>&1; }

# nsenter into every namespace of the host's PID 1, with a clean environment. Only the variables
# the caller names in NVHOOK_SYSTEMD_HOST_ENV (space-separated VAR=value) are passed.
enter() {
    local pid
    pid=$(leader_pid) || die "the systemd host is not running (host.sh boot)"
    # shellcheck disable=SC2086 # word splitting of the VAR=value list is intended
    nsenter -t "$pid" -a env -i -C "$REPO" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM=dumb ${NVHOOK_SYSTEMD_HOST_ENV:-} "$@"
}

# nspawn --keep-unit runs in the cgroup it is started from and makes payload/ and supervisor/
# below it: a cgroup2 directory of this host's own, so that two hosts (two checkouts) never share
# one, and so that stop can see what is left. Empty when this machine has no cgroup2 mount.
host_cgroup() {
    local cg2
    cg2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
    [ -n "$cg2" ] || return 0
    echo "$cg2/nvhook-systemd-host-$(echo "$BASE" | sha256sum | cut -c1-12)"
}

# Mounts of this machine under the tree and processes in the host's cgroup: a stopped host must
# leave neither. (/proc/PID/root of a process inside reads "/" from here: its cgroup tells.)
leftovers() {
    local t=$1 cg p
    grep -F " $t" /proc/self/mountinfo | awk '{ print "mount " $5 }' || true
    cg=$(host_cgroup)
    [ -n "$cg" ] && [ -d "$cg" ] || return 0
    find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r p; do
        echo "process $p $(cat "/proc/$p/comm" 2>/dev/null)"
    done
}

cmd_boot() {
    need_root
    command -v systemd-nspawn >/dev/null || die "systemd-nspawn is missing: apt-get install systemd-container"
    command -v script >/dev/null || die "script is missing: apt-get install util-linux"
    if is_running; then die "already running (pid $(leader_pid)): host.sh stop first"; fi
    local t start state="" i
    t=$(cmd_build)
    mkdir -p "$RUN"
    [ -z "$(leftovers "$t")" ] || die "mounts or processes of $t exist before boot: $(leftovers "$t")"
    local cg
    cg=$(host_cgroup)
    echo "$t" > "$RUN/tree"
    start=$(date +%s)
    # SYSTEMD_SECCOMP=0 and --capability=all: without them systemd inside cannot attach its device
    # programs and DevicePolicy= is silently not enforced. The unified variable: cgroup v2 only
    # (else v1 with no devices controller here). A pty (script) for its console; stdin /dev/null.
    # --bind=$REPO: the repository at the same path (not nodev, unlike nspawn's /tmp).
    # --private-network: nspawn leaves /proc/sys/net writable only then, and podman's default
    # sysctl (net.ipv4.ping_group_range) is written there. Containers run with no network.
    local nspawn
    nspawn="SYSTEMD_SECCOMP=0 SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 exec systemd-nspawn --quiet --register=no --keep-unit \
--capability=all --private-network --machine=nvhook-systemd-host --link-journal=no --resolv-conf=off --timezone=off \
--bind=$(printf %q "$REPO") -D $(printf %q "$t") -b"
    local enter_cg=""
    if [ -n "$cg" ]; then
        mkdir -p "$cg"
        enter_cg="echo \$\$ > $(printf %q "$cg/cgroup.procs"); "
    fi
    setsid script -qfec "$enter_cg echo \$\$ > $(printf %q "$RUN/nspawn.pid"); $nspawn" "$RUN/console.log" \
        < /dev/null > /dev/null 2>&1 &
    for ((i = 0; i < BOOT_TIMEOUT * 2; i++)); do
        if is_running; then
            state=$(enter systemctl is-system-running 2>/dev/null || true)
            case "$state" in running|degraded) break;; esac
        elif [ "$i" -gt 20 ] && ! nspawn_pid >/dev/null; then
            tail -30 "$RUN/console.log" >&2 || true
            die "systemd-nspawn exited during boot (console: $RUN/console.log)"
        fi
        sleep 0.5
    done
    case "$state" in
        running|degraded) ;;
        *) tail -30 "$RUN/console.log" >&2 || true
           cmd_stop || true
           die "systemd did not come up within ${BOOT_TIMEOUT}s (state '$state')";;
    esac
    log "booted in $(( $(date +%s) - start ))s, system state $state (pid $(leader_pid))"
    if [ "$state" = degraded ]; then enter systemctl --failed --no-legend >&2 || true; fi
    if ! (cmd_check); then
        cmd_stop || true
        die "the booted host failed its self-check: stopped"
    fi
}

# The host must enforce device policy: a strict scope allowed only /dev/null reads /dev/null and
# gets EPERM on /dev/zero. Checks the tree is bound at the same path and not nodev as well.
cmd_check() {
    local out
    enter systemd-run --quiet --scope -p DevicePolicy=strict -p "DeviceAllow=/dev/null rw" head -c1 /dev/null \
        || die "self-check: a scope allowed /dev/null cannot read it"
    if out=$(enter systemd-run --quiet --scope -p DevicePolicy=strict -p "DeviceAllow=/dev/null rw" \
        head -c1 /dev/zero 2>&1 >/dev/null); then
        die "self-check: device policy is NOT enforced (a strict scope read /dev/zero)"
    fi
    grep -q "Operation not permitted" <<<"$out" || die "self-check: expected EPERM on /dev/zero, got: $out"
    enter test -d "$REPO/.git" -o -f "$REPO/.git" || die "self-check: $REPO is not bound inside"
    enter sh -c "findmnt -no OPTIONS -T \"\$1\" | grep -qv nodev" - "$REPO" \
        || die "self-check: $REPO is nodev inside: fixture device nodes would not open"
    [ "$(enter stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || die "self-check: /sys/fs/cgroup is not cgroup2 inside"
    log "self-check ok: DevicePolicy enforced (EPERM on /dev/zero, /dev/null ok), cgroup2, $REPO bound"
}

cmd_exec() {
    [ $# -gt 0 ] || die "usage: host.sh exec CMD..."
    # a scope of its own: runtimes and podman inside expect to run in a cgroup systemd knows
    enter systemd-run --quiet --scope --collect -- "$@"
}

cmd_stop() {
    need_root
    local n t i
    t=$(cat "$RUN/tree" 2>/dev/null || tree)
    if n=$(nspawn_pid); then
        # bounded: a hung systemd would hang systemctl too
        if is_running; then enter timeout 15 systemctl poweroff --no-block >/dev/null 2>&1 || true; fi
        for ((i = 0; i < 120; i++)); do nspawn_pid >/dev/null || break; sleep 0.5; done
        if n=$(nspawn_pid); then
            log "poweroff did not finish in 60s: SIGTERM, then SIGKILL"
            kill -TERM "$n" 2>/dev/null || true
            for ((i = 0; i < 20; i++)); do nspawn_pid >/dev/null || break; sleep 0.5; done
            if n=$(nspawn_pid); then kill -KILL "$n" 2>/dev/null || true; sleep 1; fi
        fi
    fi
    # What a killed host leaves (a clean poweroff leaves nothing): its processes, killed by pid,
    # then nspawn's payload/ and supervisor/ cgroups (systemd inside removed its own).
    local what p left killed="" cg
    left=$(leftovers "$t")
    while read -r what p _; do
        [ "$what" = process ] || continue
        kill -KILL "$p" 2>/dev/null || true
        killed="$killed $p"
    done <<<"$left"
    for ((i = 0; i < 20; i++)); do
        grep -q '^process ' <<<"$(leftovers "$t")" || break
        sleep 0.5
    done
    rm -f "$RUN/nspawn.pid"
    cg=$(host_cgroup)
    [ -z "$cg" ] || [ ! -d "$cg" ] || find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ -z "$killed" ] || log "killed what the host left running:$killed"
    left=$(leftovers "$t")
    [ -z "$cg" ] || [ ! -d "$cg" ] || left="$left${left:+
}cgroup $cg"
    [ -z "$left" ] || die "the stopped host left behind:
$left"
    log "stopped; no mount, cgroup or process of it left"
}

cmd_status() {
    if is_running; then
        echo "running: pid $(leader_pid), tree $(cat "$RUN/tree"), state $(enter systemctl is-system-running 2>/dev/null || true)"
    else
        echo "not running (tree $(tree))"
        return 1
    fi
}

# Build the test binaries here (cargo is not in the tree), then run each inside.
cmd_suites() {
    local tests=("$@") bins t b rc=0
    [ ${#tests[@]} -gt 0 ] || tests=(e2e_runc e2e_crun e2e_podman e2e_classes)
    local args=()
    for t in "${tests[@]}"; do args+=(--test "$t"); done
    bins=$(cd "$REPO" && cargo test --locked --no-run --message-format=json "${args[@]}" \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])')
    is_running || die "the systemd host is not running (host.sh boot)"
    for t in "${tests[@]}"; do
        b=$(awk -v n="$t" '$1 == n { print $2 }' <<<"$bins")
        [ -n "$b" ] || die "no test binary for $t"
        log "== $t inside the systemd host (systemd cgroup manager)"
        NVHOOK_SYSTEMD_HOST_ENV="NVHOOK_TEST_SYSTEMD=1 RUST_BACKTRACE=1" \
            cmd_exec "$b" --test-threads=2 || { rc=1; log "$t FAILED inside the systemd host"; }
    done
    return "$rc"
}

case "${1:-}" in
    build) cmd_build >/dev/null; tree;;
    boot) cmd_boot;;
    exec) shift; cmd_exec "$@";;
    stop) cmd_stop;;
    status) cmd_status;;
    check) cmd_check;;
    suites) shift; cmd_suites "$@";;
    *) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' >&2; exit 2;;
esac
