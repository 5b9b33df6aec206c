#!/bin/bash
# cargo deny, with no network: licenses, bans, sources from deny.toml, and advisories from the
# RustSec snapshot in deny/advisory-db (only our dependencies' advisory files; SNAPSHOT names the
# rustsec/advisory-db commit it was taken from). cargo-deny reads its database from a git
# checkout, so one is made from the snapshot, committed with the snapshot's own date: the
# staleness limit in deny.toml then measures the snapshot's real age.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deny >/dev/null || { echo "deny/check.sh: cargo-deny not found (cargo install --locked cargo-deny)" >&2; exit 1; }
snap=deny/advisory-db
read -r commit date < "$snap/SNAPSHOT"
# A dependency that has advisories upstream must have them in the snapshot: a new dependency
# (or a crate that got its first advisory) means refreshing the snapshot, not silence.
missing=""
for c in $(sed -n 's/^name = "\(.*\)"/\1/p' Cargo.lock | sort -u); do
    if grep -qxF "$c" "$snap/CRATES-WITH-ADVISORIES" && [ ! -d "$snap/crates/$c" ]; then
        missing="$missing $c"
    fi
done
[ -z "$missing" ] || { echo "deny/check.sh: advisories of$missing are not in $snap: refresh the snapshot (docs/supply-chain.md)" >&2; exit 1; }
db=target/advisory-dbs/advisory-db-3157b0e258782691   # the directory cargo-deny derives from the default URL
rm -rf "$db"
mkdir -p "$db"
cp -r "$snap/crates" "$db/"
(
    cd "$db"
    export GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date"
    git init -q
    git -c user.name=nvhook -c user.email=nvhook@localhost add -A
    git -c user.name=nvhook -c user.email=nvhook@localhost commit -qm "rustsec/advisory-db $commit (our dependencies only)"
)
# cargo-deny reads the metadata of every locked package, also those built only for other
# platforms (windows-sys, ...), which a build never downloads: fetch them all first (crates.io).
cargo fetch --locked >/dev/null
cargo deny --offline check licenses bans sources advisories
