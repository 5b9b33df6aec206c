#!/bin/bash
# Run every nvhook test: formatting, lints, unit tests, and the end-to-end tests that start real
# containers with runc, crun and podman on a fake driver tree. Needs root. Installs the Debian
# packages it needs when they are missing (apt-get), so it works on a fresh Debian/Ubuntu machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: the tests create containers, mounts and device nodes: run as root," >&2
    echo "  e.g. sudo env \"PATH=\$PATH\" make test" >&2
    exit 1
fi
command -v cargo >/dev/null || { echo "tests/run.sh: cargo not found (install Rust >= 1.89, e.g. from rustup.rs)" >&2; exit 1; }

PKGS="runc crun podman conmon busybox-static build-essential python3 iproute2 util-linux uidmap catatonit groff-base python3-venv shellcheck strace git docker.io rootlesskit debootstrap systemd-container"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "tests/run.sh: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq $missing >/dev/null
fi

# kubernetes-validate (PyPI; carries the schemas of each Kubernetes release and validates offline)
# for tests/packaging.rs, in a venv under target/ (Debian's python refuses a global pip install).
K8S_VALIDATE_VERSION=1.37.0
venv=target/tools/k8s-venv
if [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" != "$K8S_VALIDATE_VERSION" ]; then
    echo "tests/run.sh: installing kubernetes-validate $K8S_VALIDATE_VERSION in $venv (pip)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$K8S_VALIDATE_VERSION"
fi
export NVHOOK_K8S_VALIDATE="$PWD/$venv/bin/kubernetes-validate"

start=$(date +%s)
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo deny (licenses, bans, sources, advisories from deny/advisory-db)"
if command -v cargo-deny >/dev/null; then
    deny/check.sh
elif [ "${CI:-}" = true ]; then
    echo "tests/run.sh: cargo-deny is missing on CI (.ci/run installs it)" >&2; exit 1
else
    echo "tests/run.sh: cargo-deny not installed, supply-chain check NOT run (cargo install --locked cargo-deny)" >&2
fi
echo "== cargo test (unit + end to end)"
cargo test --workspace --locked -- --test-threads=2 --skip fuzz_
echo "== systemd host: e2e suites with the systemd cgroup manager (tests/systemd/host.sh; docs/systemd.md)"
# A debootstrap tree cached under target/systemd-host/ (built once per clone), booted with
# systemd-nspawn; the runc, crun, podman and classes suites run inside it with
# NVHOOK_TEST_SYSTEMD=1. The host is stopped whatever happens, and stop fails if it left anything.
t=$(date +%s)
tests/systemd/host.sh stop >/dev/null 2>&1 || true
trap 'tests/systemd/host.sh stop || true' EXIT
tests/systemd/host.sh build >/dev/null
tests/systemd/host.sh boot
tests/systemd/host.sh suites
trap - EXIT
tests/systemd/host.sh stop
echo "tests/run.sh: systemd host step took $(( $(date +%s) - t ))s"
echo "== fuzzing, bounded (tests/fuzz.rs; prints execs and time per parser; docs/fuzzing.md)"
# The seed is chosen here and printed first, so that a run that hangs can be replayed; the
# bounded run takes under a minute, so ten minutes means a hang (once, a quadratic oracle), and
# the step fails instead of eating CI's whole limit.
export NVHOOK_FUZZ_SEED="${NVHOOK_FUZZ_SEED:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}"
echo "fuzz seed $NVHOOK_FUZZ_SEED (replay: NVHOOK_FUZZ_SEED=$NVHOOK_FUZZ_SEED cargo test --features fuzzing --test fuzz)"
cargo test --locked --features fuzzing --test fuzz --no-run
timeout --kill-after=10 600 cargo test --locked --features fuzzing --test fuzz -- --test-threads=2 --nocapture || {
    rc=$?; [ "$rc" = 124 ] && echo "tests/run.sh: fuzzing ran past 10 minutes (seed $NVHOOK_FUZZ_SEED)" >&2; exit "$rc"; }
echo "== benchmark smoke test (bench/run.sh, small N: it must run and report, no timing is judged)"
out=$(NVHOOK_BIN="$PWD/target/debug/nvhook" FIXTURES=/tmp/nvhook-bench-smoke bash bench/run.sh --n 3 --warmup 1 --breakdown-n 2 \
    --burst 2,3 --burst-reps 1 --hook-cpu 2 2>&1) || { echo "$out"; exit 1; }
for want in "(a) runc alone" "(z) runc, no-op hook" "(b) nvhook, no GPU asked" "(c) nvhook, all GPUs" "| (c) |" \
    "| (a) runc alone | 3 |" "| (c) nvhook, all GPUs, compute,utility | 3 |" "0 of 3 |" "| (c) nvhook, all GPUs, compute,utility | " \
    "in a burst of 3" "What each setup's container saw before timing" "(c) nvhook, all GPUs, compute,utility: ok"; do
    grep -qF "$want" <<<"$out" || { echo "$out"; echo "benchmark smoke test: '$want' missing"; exit 1; }
done
echo "tests/run.sh: all tests passed in $(( $(date +%s) - start ))s"
