#!/bin/sh
# Install nvhook on a Kubernetes node, from a container that sees the node's root at NODE_ROOT
# (the DaemonSet in this directory mounts it at /host). Idempotent: a file whose content is
# already right is left alone (same inode, same mtime). Atomic: every file is written beside its
# target under a temporary name and renamed over it, so CRI-O, containerd and a running hook
# never see a half-written binary, registration or CDI spec, and a busy binary is replaced
# without ETXTBSY.
#
#   install.sh [options] NODE_ROOT
#   --bin FILE          the nvhook binary to install        (default /usr/share/nvhook/nvhook)
#   --hook FILE         the hooks.d template                (default /usr/share/nvhook/nvhook.json)
#   --config FILE       config.toml to install; without it an existing one is kept, else the
#                       default one is written              (default /usr/share/nvhook/config.toml)
#   --prefix DIR        node directory for bin/nvhook       (default /usr/local)
#   --hooks-dir DIR     node hooks.d directory (CRI-O)      (default /usr/share/containers/oci/hooks.d)
#   --cdi auto|yes|no   write a CDI spec (containerd; CRI-O reads it too) with
#                       `nvhook cdi generate`, run on the node (chroot NODE_ROOT) so that
#                       its paths are the node's; auto: only when the binary has that
#                       command                             (default auto)
#   --cdi-dir DIR       node directory for the CDI spec     (default /etc/cdi)
#   --uninstall         remove what install wrote (the config file too)
#
# Paths given with --prefix, --hooks-dir and --cdi-dir are the node's own paths (the hooks.d
# file names the binary by its node path); files are written under NODE_ROOT.
set -eu

share=/usr/share/nvhook
bin=$share/nvhook
hook=$share/nvhook.json
config=
default_config=$share/config.toml
prefix=/usr/local
hooks_dir=/usr/share/containers/oci/hooks.d
cdi=auto
cdi_dir=/etc/cdi
uninstall=false
root=
work=
tmp=
tmp_cdi=
cleanup() {
    [ -z "$work" ] || rm -rf "$work"
    [ -z "$tmp" ] || rm -f "$tmp"
    [ -z "$tmp_cdi" ] || rm -f "$root$tmp_cdi"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

die() { printf "nvhook install: error: %s\n" "$*" >&2; exit 1; }
say() { printf "nvhook install: %s\n" "$*"; }
need_arg() { [ $# -ge 2 ] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
    case $1 in
        --bin) need_arg "$@"; bin=$2; shift 2 ;;
        --hook) need_arg "$@"; hook=$2; shift 2 ;;
        --config) need_arg "$@"; config=$2; shift 2 ;;
        --prefix) need_arg "$@"; prefix=$2; shift 2 ;;
        --hooks-dir) need_arg "$@"; hooks_dir=$2; shift 2 ;;
        --cdi) need_arg "$@"; cdi=$2; shift 2 ;;
        --cdi-dir) need_arg "$@"; cdi_dir=$2; shift 2 ;;
        --uninstall) uninstall=true; shift ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$root" ] || die "one NODE_ROOT only (got $root and $1)"; root=$1; shift ;;
    esac
done
[ -n "$root" ] || die "no NODE_ROOT given (the node's / as this container sees it, e.g. /host)"
[ -d "$root" ] || die "NODE_ROOT $root is not a directory: mount the node's / there (hostPath)"
case $cdi in auto|yes|no) ;; *) die "--cdi takes auto, yes or no, not '$cdi'" ;; esac
for d in "$prefix" "$hooks_dir" "$cdi_dir"; do
    case $d in /*) ;; *) die "$d: node paths must be absolute" ;; esac
    case $d in *[\"\\#]*) die "$d: a node path may not hold '\"', '\\' or '#'" ;; esac
done
root=${root%/}

node_bin=$prefix/bin/nvhook
dst_bin=$root$node_bin
dst_hook=$root$hooks_dir/nvhook.json
dst_config=$root/etc/nvhook/config.toml
dst_cdi=$root$cdi_dir/nvidia.json

# put SRC DST MODE: DST gets SRC's content and MODE, through a rename; unchanged files stay.
put() {
    if [ -f "$2" ] && [ ! -L "$2" ] && cmp -s "$1" "$2"; then
        chmod "$3" "$2"
        say "$2: unchanged"
        return
    fi
    mkdir -p "$(dirname "$2")"
    tmp=$(dirname "$2")/.$(basename "$2").nvhook-tmp.$$
    cp "$1" "$tmp"
    chmod "$3" "$tmp"
    mv -f "$tmp" "$2"
    tmp=
    say "$2: installed"
}

if $uninstall; then
    for f in "$dst_hook" "$dst_cdi" "$dst_bin" "$dst_config"; do
        if [ -e "$f" ] || [ -L "$f" ]; then rm -f "$f"; say "$f: removed"; fi
    done
    rmdir "$root/etc/nvhook" 2>/dev/null || true
    exit 0
fi

if [ ! -f "$bin" ] || [ ! -x "$bin" ]; then die "$bin: no nvhook binary there (--bin FILE)"; fi
[ -f "$hook" ] || die "$hook: no hooks.d template there (--hook FILE)"
grep -q '"path": *"/usr/bin/nvhook"' "$hook" \
    || die "$hook: its hook.path is not \"/usr/bin/nvhook\"; cannot point it at $node_bin"
[ -z "$config" ] || [ -f "$config" ] || die "$config: no such config file (--config FILE)"
work=$(mktemp -d)

# 1. the binary
put "$bin" "$dst_bin" 0755

# 2. the configuration: the ConfigMap's when given, else keep the node's, else the default
if [ -n "$config" ]; then
    put "$config" "$dst_config" 0644
elif [ -e "$dst_config" ]; then
    say "$dst_config: kept (the node's own)"
else
    [ -f "$default_config" ] || die "$default_config: no default config (--config FILE)"
    put "$default_config" "$dst_config" 0644
fi

# 3. the hooks.d registration, naming the binary by its node path
sed "s#\"path\": *\"/usr/bin/nvhook\"#\"path\": \"$node_bin\"#" "$hook" >"$work/nvhook.json"
put "$work/nvhook.json" "$dst_hook" 0644

# 4. the CDI spec, for containerd (and CRI-O with CDI): generated on the node, so that the
#    driver's paths in it are the node's. The binary run is the one just installed.
if [ "$cdi" = no ]; then
    say "CDI spec: not asked for (--cdi no)"
    exit 0
fi
if ! "$bin" help 2>/dev/null | grep -q 'cdi generate'; then
    [ "$cdi" = auto ] || die "$bin has no 'cdi generate' command (nvhook too old?); --cdi no skips the CDI spec"
    say "CDI spec: skipped, $bin has no 'cdi generate' command (containerd nodes need it)"
    exit 0
fi
mkdir -p "$root$cdi_dir"
# a name containerd and CRI-O ignore (they read *.json and *.yaml) until it is renamed
tmp_cdi=$cdi_dir/.nvidia.json.nvhook-tmp.$$
chroot "$root" "$node_bin" cdi generate --output "$tmp_cdi" \
    || die "'chroot $root $node_bin cdi generate --output $tmp_cdi' failed; the old spec (if any) is kept"
[ -s "$root$tmp_cdi" ] || die "nvhook cdi generate wrote nothing to $root$tmp_cdi"
if [ -f "$dst_cdi" ] && cmp -s "$root$tmp_cdi" "$dst_cdi"; then
    say "$dst_cdi: unchanged"
else
    chmod 0644 "$root$tmp_cdi"
    mv -f "$root$tmp_cdi" "$dst_cdi"
    tmp_cdi=
    say "$dst_cdi: written"
fi
