//! Leave the image as it was found: what `prestart` created or replaced in the rootfs is recorded,
//! and the `poststop` hook puts it back.
//!
//! The mounts nvhook makes vanish with the container's mount namespace, but the mount points it
//! creates (empty files and directories), its soname links and its rewrite of `/etc/ld.so.cache`
//! are files of the rootfs. Engines with a copy-on-write layer per container throw them away;
//! a runc bundle whose rootfs directory is reused, or `podman run --rootfs DIR`, keeps them, and
//! a later container without that GPU request found an empty `/usr/bin/nvidia-smi`.
//!
//! The record, one per container: `/run/nvhook/containers/<container-id>` (a 0700 directory of
//! root's, of its own beside whatever else nvhook keeps in /run/nvhook; for rootless podman
//! `/run/user/<uid>/nvhook/containers`), JSON: the record as one line, replaced atomically,
//! then at most the one line a start's finish appends with its changes (one write, where a
//! rewrite would cost a temporary file, a rename and an unlink, each journaled on an ext4
//! `/run`); the original content of each replaced file beside it as `<id>@<n>`. It names each
//! entry by its path with every symlink already resolved (so poststop never follows one), its
//! type and its inode (`st_dev`, `st_ino`).
//! Poststop undoes an entry only if the path, resolved with no symlink allowed, still holds that
//! very inode; anything else is left where it is, with a warning. A replacement also carries
//! when the replaced file was looked at: inode numbers come back (the image's file a first
//! container replaced can be a second one's new inode), and only the times then tell which of
//! two replacements of a path came first.
//!
//! Containers can share a rootfs directory. An entry one of them created may be the mount point
//! of another that started later and found it there; removing it would detach that mount in the
//! running container. So the record also holds the container's init process (pid and start
//! time): at poststop, when another container with a record on the same rootfs still runs, this
//! container's entries are handed over to its record, and the last one out puts everything back.
//! One lock (`.lock` in the record directory, flock) orders all of it.

mod store;
mod undo;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rootfs::{Before, Change, Identity, Kind, Rootfs};
pub use store::{RECORD_DIR, Store, valid_id};

/// Bumped when the record's format changes; a record of another version is left alone.
const RECORD_VERSION: u32 = 1;

/// What was at an entry's path before nvhook put its own there, as kept in the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "was", rename_all = "lowercase")]
pub enum Saved {
    Absent,
    Symlink {
        target: String,
        id: Identity,
    },
    /// a regular file; its bytes are in the blob file `blob` beside the record
    File {
        mode: u32,
        uid: u32,
        gid: u32,
        blob: String,
        id: Identity,
    },
    Unrestorable {
        id: Identity,
    },
}

impl Saved {
    fn id(&self) -> Option<Identity> {
        match self {
            Saved::Absent => None,
            Saved::Symlink { id, .. } | Saved::File { id, .. } | Saved::Unrestorable { id } => {
                Some(*id)
            }
        }
    }
    fn blob(&self) -> Option<&str> {
        match self {
            Saved::File { blob, .. } => Some(blob),
            _ => None,
        }
    }
}

/// One entry nvhook put in the rootfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// in-root path with no symlink in it
    pub path: String,
    pub kind: Kind,
    pub id: Identity,
    pub before: Saved,
    /// when the replaced `before` was looked at (CLOCK_BOOTTIME ns; of entries folded into one,
    /// the latest look; 0: nothing was there, or a record written before this field): orders
    /// replacements when an inode number came back
    #[serde(default)]
    pub at: u64,
}

/// What one container's prestart changed in its rootfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    /// the rootfs as the runtime named it (`root.path`, joined to the bundle)
    pub rootfs: PathBuf,
    /// the rootfs directory's own inode, to know it again
    pub root: Identity,
    /// the container's init process and its start time (clock ticks since boot, /proc/PID/stat),
    /// to tell a running container from a gone one
    pub pid: i32,
    pub start_time: u64,
    pub entries: Vec<Entry>,
}

/// Fold `newer` entries into `into`, keeping one entry per change of a path: when an entry
/// replaced what another one put there (its `before` is that one's inode), the pair becomes one
/// entry, "the newest inode, where the oldest `before` was". Returns the blobs no entry refers
/// to any more.
///
/// An inode number can come back: the image's file that the first replacement freed may be the
/// second one's new inode, and then each entry's `before` names the other's inode. Only then
/// do the times decide: the one looked at earlier did not replace the later one's
/// ([`Entry::at`]; a record without them keeps the first reading).
pub fn absorb(into: &mut Vec<Entry>, newer: Vec<Entry>) -> Vec<String> {
    let names = |a: &Entry, b: &Entry| a.path == b.path && a.before.id() == Some(b.id);
    // `a` replaced what `b` had put there
    let replaced = |a: &Entry, b: &Entry| {
        names(a, b) && !(names(b, a) && a.at != 0 && b.at != 0 && a.at < b.at)
    };
    let mut unused = Vec::new();
    for mut e in newer {
        // e replaced what x had put there
        if let Some(x) = into.iter_mut().find(|x| replaced(&e, x)) {
            unused.extend(e.before.blob().map(str::to_owned));
            e.before = std::mem::replace(&mut x.before, Saved::Absent);
            *x = e;
            continue;
        }
        // x replaced what e had put there (e comes from a container that ran earlier)
        if let Some(x) = into.iter_mut().find(|x| replaced(x, &e)) {
            unused.extend(x.before.blob().map(str::to_owned));
            x.before = e.before;
            continue;
        }
        if let Some(x) = into.iter().find(|x| x.path == e.path && x.id == e.id) {
            if x.before.blob() != e.before.blob() {
                unused.extend(e.before.blob().map(str::to_owned));
            }
            continue;
        }
        into.push(e);
    }
    unused
}

/// The start time of process `pid` (field 22 of /proc/PID/stat), or None if it is gone.
pub fn start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = crate::bounded::read_to_string(
        Path::new(&format!("/proc/{pid}/stat")),
        crate::bounded::PROC_TEXT,
    )
    .ok()?;
    // the command name (field 2) may hold spaces and parentheses: count from the last ')'
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn alive(r: &Record) -> bool {
    start_time(r.pid) == Some(r.start_time)
}

/// The record's view of a journaled change; the original bytes of a replaced file go to a blob.
fn entry_of(store: &Store, id: &str, c: Change) -> std::io::Result<Entry> {
    let before = match c.before {
        Before::Absent => Saved::Absent,
        Before::Symlink { target, id } => Saved::Symlink { target, id },
        Before::Unrestorable { id } => Saved::Unrestorable { id },
        Before::File {
            mode,
            uid,
            gid,
            content,
            id: orig,
        } => Saved::File {
            mode,
            uid,
            gid,
            blob: store.write_blob(id, &content)?,
            id: orig,
        },
    };
    Ok(Entry {
        path: c.path,
        kind: c.kind,
        id: c.id,
        before,
        at: c.at,
    })
}

/// The prestart side: records what the hook changes in one container's rootfs.
pub struct Tracker {
    store: Store,
    id: String,
    pid: i32,
    start_time: u64,
}

impl Tracker {
    /// Open the record directory, in the host's view (before entering the container's mount
    /// namespace). None, with a warning, when the container cannot be tracked: the container
    /// starts anyway, and its rootfs keeps what nvhook created, as before poststop existed.
    pub fn open(id: &str, pid: i32, rootless_uid: Option<Option<u32>>) -> Option<Tracker> {
        match Store::open(rootless_uid, true) {
            Ok(Some(store)) => Tracker::with_store(store, id, pid),
            Ok(None) => None,
            Err(e) => {
                log::warn!(
                    "{e}; what nvhook creates in the rootfs will not be removed at poststop"
                );
                None
            }
        }
    }

    /// [`Tracker::open`] with the record directory given.
    pub fn with_store(store: Store, id: &str, pid: i32) -> Option<Tracker> {
        if !valid_id(id) {
            log::warn!(
                "container id {id:?} cannot name a file; what nvhook creates in its rootfs will not be removed at poststop"
            );
            return None;
        }
        let Some(start_time) = start_time(pid) else {
            log::warn!("/proc/{pid}/stat: cannot read the container process's start time");
            return None;
        };
        Some(Tracker {
            store,
            id: id.to_owned(),
            pid,
            start_time,
        })
    }

    /// Before anything is changed: say that this container uses `rootfs` (so another
    /// container's poststop hands its entries over instead of removing what this one is
    /// about to mount on). The records of gone containers on the same rootfs (an earlier run
    /// of the same id, or any whose poststop has not come, or never will) are taken over: this
    /// container's poststop undoes their entries too. Those of gone containers whose rootfs is
    /// gone as well are dropped (a runtime without the poststop hook over a discarded layer), so
    /// records do not pile up.
    pub fn begin(&self, rootfs: &Rootfs) {
        if let Err(e) = self.try_begin(rootfs) {
            log::warn!(
                "{}/{}: cannot write the record: {e}; what nvhook creates in the rootfs will not be removed at poststop",
                self.store.path().display(),
                self.id
            );
        }
    }

    // Long by design: everything under the record lock in one place, so the order of
    // reads, takeovers and writes under it can be read at once.
    fn try_begin(&self, rootfs: &Rootfs) -> std::io::Result<()> {
        let root = rootfs.identity().map_err(std::io::Error::other)?;
        let _lock = self.store.lock()?;
        // every record once in a while (records of gone rootfs, debris of killed hooks); else
        // only the records of this rootfs, from the index, and an earlier one of this id
        let sweep = self.store.sweep_due();
        // an earlier record of this id (looked at once: nothing under the lock makes one)
        let had = self.store.has(&self.id);
        let candidates = if sweep {
            self.store.ids()?
        } else {
            let mut ids = self.store.ids_on(root)?;
            if !ids.contains(&self.id) && had {
                ids.push(self.id.clone());
            }
            ids
        };
        let mut entries = Vec::new();
        // the blobs the records kept refer to; the others are debris of a killed hook
        let mut referenced: Vec<String> = Vec::new();
        // the records that stay, with their rootfs (for the sweep of the index)
        let mut staying: Vec<(String, Identity)> = Vec::new();
        let mut keep = |other: &str, r: &Record| {
            referenced.extend(
                r.entries
                    .iter()
                    .filter_map(|e| e.before.blob().map(str::to_owned)),
            );
            staying.push((other.to_owned(), r.root));
        };
        for other in candidates {
            let old = match self.store.read(&other) {
                Ok(Some(r)) => r,
                _ => continue,
            };
            if other != self.id && alive(&old) {
                keep(&other, &old);
                continue;
            }
            if old.root == root && old.rootfs == rootfs.path() {
                let unused = absorb(&mut entries, old.entries);
                self.store.remove_blob_names(&unused);
                if other != self.id {
                    log::debug!("taking over the record of gone container {other}");
                    self.store.remove_record_file(&other, old.root);
                }
            } else if other == self.id {
                log::warn!(
                    "replacing the record of an earlier container {other} on {}: what it created there stays",
                    old.rootfs.display()
                );
                self.store.remove_record(&other, &old);
            } else if undo::open_root(&old.rootfs).map_or(true, |(_, found)| found != old.root) {
                log::debug!(
                    "dropping the record of gone container {other}: its rootfs {} is gone",
                    old.rootfs.display()
                );
                self.store.remove_record(&other, &old);
            } else {
                keep(&other, &old);
            }
        }
        if sweep {
            referenced.extend(
                entries
                    .iter()
                    .filter_map(|e: &Entry| e.before.blob().map(str::to_owned)),
            );
            self.store.remove_debris(&referenced);
            // this container's index entry is written with its record below
            staying.push((self.id.clone(), root));
            self.store.remove_stale_index(&staying);
            self.store.mark_swept();
        }
        let rec = Record {
            version: RECORD_VERSION,
            rootfs: rootfs.path().to_owned(),
            root,
            pid: self.pid,
            start_time: self.start_time,
            entries,
        };
        // the common case, a container id new to this host: its record is created in place (an
        // earlier record the loop removed is replaced by the rename path, which works either way)
        if had {
            self.store.write(&self.id, &rec)
        } else {
            self.store.create(&self.id, &rec)
        }
    }

    /// After the changes (also when one failed: the runtime's poststop then undoes the rest):
    /// add them to the record.
    pub fn finish(self, rootfs: &Rootfs) {
        let changes = rootfs.take_journal();
        if let Err(e) = self.try_finish(changes) {
            log::warn!(
                "{}/{}: cannot write the record: {e}; what nvhook created in the rootfs will not be removed at poststop",
                self.store.path().display(),
                self.id
            );
        }
    }

    fn try_finish(&self, changes: Vec<Change>) -> std::io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let _lock = self.store.lock()?;
        let Some(mut rec) = self.store.read(&self.id)? else {
            return Err(std::io::Error::other(
                "the record written at the start is gone",
            ));
        };
        let mut new = Vec::with_capacity(changes.len());
        for c in changes {
            new.push(entry_of(&self.store, &self.id, c)?);
        }
        let n = new.len();
        let mut folded = rec.entries.clone();
        let unused = absorb(&mut folded, new.clone());
        if unused.is_empty() {
            // the common case: one appended line (no new file, no rename), folded in the same
            // way by every later read
            self.store.append(&self.id, new)?;
        } else {
            // a blob goes: the record is rewritten without it
            rec.entries = folded;
            self.store.write(&self.id, &rec)?;
            self.store.remove_blob_names(&unused);
        }
        log::debug!(
            "recorded {n} change(s) to the rootfs in {}/{}",
            self.store.path().display(),
            self.id
        );
        Ok(())
    }
}

/// What poststop did.
#[derive(Debug, PartialEq, Eq)]
pub enum Undone {
    /// no record: the hook changed nothing, or this poststop already ran
    NoRecord,
    /// the rootfs is gone or is another directory now (a copy-on-write layer was discarded)
    RootfsGone,
    /// another container on the same rootfs still runs: it got the entries
    HandedOver { to: String },
    /// `restored` entries were put back, `left` were left as found (each with a warning)
    Restored { restored: usize, left: usize },
}

/// The rootfs as the runtime names it at poststop: the bundle's `root.path` (relative to the
/// bundle), or None when the bundle's config.json cannot say.
fn rootfs_of_bundle(bundle: &Path) -> Option<PathBuf> {
    let b = crate::state::BundleConfig::read(bundle).ok()?;
    b.container(None).ok().map(|c| c.rootfs)
}

/// `nvhook poststop`: put back what prestart changed in container `id`'s rootfs, as recorded in
/// `store`.
pub fn poststop(store: &Store, id: &str, bundle: &Path) -> std::io::Result<Undone> {
    if !valid_id(id) {
        return Ok(Undone::NoRecord);
    }
    let _lock = store.lock()?;
    let Some(rec) = store.read(id)? else {
        return Ok(Undone::NoRecord);
    };
    // the bundle's root.path as the host sees it now, else the path prestart was given; either
    // must still be the very directory prestart changed
    let candidates = rootfs_of_bundle(bundle)
        .into_iter()
        .chain([rec.rootfs.clone()]);
    let found = candidates
        .filter_map(|p| match undo::open_root(&p) {
            Ok((fd, found)) if found == rec.root => Some((fd, p)),
            _ => None,
        })
        .next();
    let Some((root, path)) = found else {
        log::debug!(
            "container {id}: its rootfs {} is gone or another directory now; nothing to put back",
            rec.rootfs.display()
        );
        store.remove_record(id, &rec);
        return Ok(Undone::RootfsGone);
    };
    // the other records on this rootfs
    let mut alive_ones = Vec::new();
    let mut gone = Vec::new();
    for other in store.ids_on(rec.root)? {
        if other == id {
            continue;
        }
        match store.read(&other) {
            Ok(Some(r)) if r.root == rec.root && r.rootfs == rec.rootfs => {
                if alive(&r) {
                    alive_ones.push((other, r));
                } else {
                    gone.push((other, r));
                }
            }
            _ => {}
        }
    }
    let mut entries = rec.entries.clone();
    for (_, r) in &gone {
        let unused = absorb(&mut entries, r.entries.clone());
        store.remove_blob_names(&unused);
    }
    if let Some((to, mut target)) = alive_ones.into_iter().next() {
        let unused = absorb(&mut target.entries, entries);
        store.remove_blob_names(&unused);
        store.write(&to, &target)?;
        remove_records(store, id, &gone, rec.root);
        log::debug!(
            "container {id}: container {to} still runs on {}; it keeps the entries",
            path.display()
        );
        return Ok(Undone::HandedOver { to });
    }
    let (restored, left) = undo::undo(&root, &entries, store);
    store.remove_blobs(&entries);
    remove_records(store, id, &gone, rec.root);
    log::debug!(
        "container {id}: {restored} entr(ies) of nvhook put back in {}, {left} left",
        path.display()
    );
    Ok(Undone::Restored { restored, left })
}

/// The end of a poststop: the record of `id` and those of the `gone` containers it absorbed
/// (all about rootfs `root`) go.
fn remove_records(store: &Store, id: &str, gone: &[(String, Record)], root: Identity) {
    store.remove_record_file(id, root);
    for (g, _) in gone {
        store.remove_record_file(g, root);
    }
}

#[cfg(test)]
mod tests;
