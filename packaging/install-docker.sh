#!/bin/sh
# make install-docker / make uninstall-docker: the name dockerd looks for, pointed at nvhook.
#
#   install-docker.sh install|uninstall BINDIR      (DESTDIR from the environment, may be empty)
#
# dockerd implements `docker run --gpus` only when it finds an executable named
# nvidia-container-runtime-hook in its PATH when it starts; it then adds it to each such
# container as a prestart hook, run as `nvidia-container-runtime-hook prestart`. This makes that
# name a symlink to nvhook in BINDIR (next to nvhook itself). It never replaces or shadows
# NVIDIA's own hook: an existing file of that name that is not our link, a package owning the
# name, or NVIDIA's hook elsewhere in dockerd's default PATH stops it with the reason.
# Uninstall removes only our own link.
set -eu

NAME=nvidia-container-runtime-hook
# dockerd's PATH under systemd (docker.service sets none: systemd's default)
DOCKERD_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

action=${1:?usage: install-docker.sh install|uninstall BINDIR}
bindir=${2:?usage: install-docker.sh install|uninstall BINDIR}
dest="${DESTDIR:-}$bindir"
link="$dest/$NAME"

fail() { echo "install-docker: $*" >&2; exit 1; }

# Our link: a symlink whose target is exactly "nvhook" (relative, next to it).
ours() { [ -L "$1" ] && [ "$(readlink "$1")" = nvhook ]; }

# What is at a path, in words.
what() { if [ -L "$1" ]; then echo "a symlink to $(readlink "$1")"; else echo "a file of $(wc -c <"$1") bytes"; fi; }

# The packages that own a path of that name (dpkg or rpm), ours (nvhook-docker) left out.
owners() {
    if command -v dpkg-query >/dev/null 2>&1; then
        dpkg-query -S "$NAME" 2>/dev/null | sed -n 's/^\([^:]*\): \(.*\)$/\1 (\2)/p' \
            | grep -v '^nvhook-docker ' || true
    fi
    if command -v rpm >/dev/null 2>&1; then
        for d in $(echo "$DOCKERD_PATH" | tr ':' ' '); do
            rpm -qf "$d/$NAME" 2>/dev/null | grep -v 'not owned' | sed "s#\$# ($d/$NAME)#" || true
        done
    fi
}

case "$action" in
install)
    [ -x "$dest/nvhook" ] || fail "$dest/nvhook is missing: run 'make install' first (the link points at it)"
    if ours "$link"; then
        echo "install-docker: $link -> nvhook already there"
        exit 0
    fi
    if [ -e "$link" ] || [ -L "$link" ]; then
        fail "$link exists and is not nvhook's link but $(what "$link"): NVIDIA's nvidia-container-toolkit installs that name; nvhook does not replace it. Keep using it, or remove that package first."
    fi
    if [ -z "${DESTDIR:-}" ]; then
        pkgs=$(owners)
        [ -z "$pkgs" ] || fail "a package provides $NAME: $pkgs. nvhook does not replace NVIDIA's hook; remove that package first (apt-get remove nvidia-container-toolkit) or keep using it."
        for d in $(echo "$DOCKERD_PATH" | tr ':' ' '); do
            f="$d/$NAME"
            [ "$f" = "$link" ] && continue
            if [ -e "$f" ] && ! ours "$f"; then
                fail "$f is in dockerd's PATH and is not nvhook: dockerd would run whichever comes first. Remove it (NVIDIA's toolkit?) first, or keep using it."
            fi
        done
    fi
    ln -s nvhook "$link"
    echo "install-docker: $link -> nvhook. Restart dockerd (systemctl restart docker): it looks for $NAME only when it starts. Then: docker run --gpus all IMAGE"
    ;;
uninstall)
    if ours "$link"; then
        rm -f "$link"
        echo "uninstall-docker: removed $link"
    elif [ -e "$link" ] || [ -L "$link" ]; then
        echo "uninstall-docker: $link is not nvhook's link: left alone"
    fi
    ;;
*) fail "unknown action $action (install or uninstall)" ;;
esac
