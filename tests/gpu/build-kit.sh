#!/bin/bash
# Build the GPU end-to-end kit into KIT (default .gpukit): everything tests/gpu/run.sh needs on an
# NVIDIA host that has no container runtime, no compiler and no network:
#   KIT/bin/nvhook                 release build
#   KIT/bin/runc, KIT/bin/crun     this machine's runtimes, KIT/lib their shared libraries
#   KIT/bin/cdi-inject.py          applies a CDI spec to a bundle (the CDI cases; needs python3)
#   KIT/rootfs-debian.tar          busybox + glibc (+ libm, libdl, libpthread, librt), merged /usr,
#                                  /usr/bin/cudaprobe (driver API, PTX JIT, verified results) and
#                                  /usr/bin/probe; NO driver and no CUDA in it
#   KIT/rootfs-lib64.tar           the same, not Debian: glibc in a real /lib64, no /usr/lib/<triplet>
# Needs: cargo, gcc, busybox-static, runc (crun optional). Runs as root (mknod).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KIT=${1:-$ROOT/.gpukit}
mkdir -p "$KIT"
KIT=$(cd "$KIT" && pwd)
rm -rf "$KIT"/{bin,lib} "$KIT"/*.tar
mkdir -p "$KIT/bin" "$KIT/lib"

(cd "$ROOT" && cargo build --release --locked -q)
cp "$ROOT/target/release/nvhook" "$KIT/bin/"

# The rootfs images: reuse the test fixtures' builder, then add the CUDA probe.
FX=$(mktemp -d)
trap 'rm -rf "$FX"' EXIT
bash "$ROOT/tests/fixtures/mkfixtures.sh" "$FX/fx" >/dev/null
gcc -O2 -Wall -o "$FX/cudaprobe" "$ROOT/tests/gpu/cudaprobe.c" -ldl
gcc -O2 -Wall -o "$KIT/bin/nvtiming" "$ROOT/tests/gpu/nvtiming.c" -ldl
for r in rootfs-debian rootfs-lib64; do
    bin=/usr/bin; [ "$r" = rootfs-lib64 ] && bin=/bin
    cp "$FX/cudaprobe" "$FX/fx/$r$bin/cudaprobe"
    rm -rf "$FX/fx/$r/probe-nodes"/*       # run.sh makes nodes with the host's real numbers
    tar -C "$FX/fx/$r" -cf "$KIT/$r.tar" .
done

copy_runtime() { # copy_runtime NAME: the binary and the libraries it links (not glibc itself)
    local b
    b=$(command -v "$1") || return 1
    cp "$b" "$KIT/bin/"
    ldd "$b" | awk '/=> \// { print $3 }' | grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*)\.so' \
        | while read -r l; do cp -L "$l" "$KIT/lib/"; done
}
copy_runtime runc || { echo "build-kit: runc is required (apt-get install runc)" >&2; exit 1; }
copy_runtime crun || echo "build-kit: crun not found; the kit will run runc only" >&2
cp "$ROOT/tests/gpu/run.sh" "$KIT/run.sh"
cp "$ROOT/tests/gpu/cdi-inject.py" "$KIT/bin/cdi-inject.py"
du -sh "$KIT"
echo "build-kit: kit ready in $KIT"
