//! The record directory: `/run/nvhook/containers` (0700, root's), one JSON file per container id,
//! the original bytes of replaced files as `<id>@<n>`, `.lock`, and an index of the records by
//! the rootfs they are about: `.by-root/<dev>-<ino>_<id>` (empty files). A start reads only the
//! records of its own rootfs through the index (not every record of the host: with many
//! containers, and in a burst of starts under the one lock, reading all of them cost milliseconds
//! per start, measured on the GPU host); the whole directory is swept (records of gone rootfs,
//! debris, stale index entries) at most once per [`SWEEP_EVERY`], stamped by `.swept`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag, RenameFlags, openat, renameat, renameat2};
use nix::sys::stat::{Mode, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::{Entry, RECORD_VERSION, Record};
use crate::rootfs::{Identity, create_exclusive};

/// An appended line of a record file ([`Store::append`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct Added {
    add: Vec<Entry>,
}

/// A record is a few hundred bytes per entry; anything larger is not ours.
const MAX_RECORD: u64 = 16 << 20;
const MAX_BLOB: u64 = 64 << 20;

/// The index of records by rootfs identity: a directory per rootfs, `<dev>-<ino>`, holding an
/// empty file per container id that has a record about it, so that a start reads only its own
/// rootfs's entries however many records there are.
const INDEX: &str = ".by-root";
/// The time of the last sweep (its mtime).
const SWEPT: &str = ".swept";
/// How often a start sweeps the whole directory.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The index directory of the rootfs `root`.
fn index_dir(root: Identity) -> String {
    format!("{}-{}", root.dev, root.ino)
}

/// Can `id` name a record file? The runtime's container id (runc allows `[\w+.-]`), never `.`
/// or `..`, no `/`; a leading `.` is refused too (the lock and temporary files start with one),
/// and `@` (blobs) cannot occur.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.'))
}

fn valid_blob(name: &str) -> bool {
    name.split_once('@').is_some_and(|(id, n)| {
        valid_id(id) && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    })
}

fn io(e: Errno) -> std::io::Error {
    e.into()
}

/// The open record directory.
pub struct Store {
    dir: OwnedFd,
    path: PathBuf,
}

/// The record directory for this process: `/run/nvhook` as root of the host, and for rootless
/// podman (`rootless_uid` `Some(Some(uid))`: hooks run in the user's namespace, as its root) the
/// user's runtime directory `/run/user/<uid>/nvhook`, which that root owns.
fn dir_path(rootless_uid: Option<Option<u32>>) -> Option<PathBuf> {
    match rootless_uid {
        None => Some(PathBuf::from(RECORD_DIR)),
        Some(Some(uid)) => Some(PathBuf::from(format!("/run/user/{uid}/nvhook/containers"))),
        Some(None) => None,
    }
}

/// Root's record directory: a directory of its own under nvhook's /run directory (which other
/// state, such as a cache, may share).
pub const RECORD_DIR: &str = "/run/nvhook/containers";

impl Store {
    /// Open (with `create`, make) the record directory. It must be a directory of this user's,
    /// closed to others: one that is not is refused rather than trusted. `Ok(None)`: there is no
    /// record directory (not created yet, or no place for one in this user namespace).
    pub fn open(rootless_uid: Option<Option<u32>>, create: bool) -> std::io::Result<Option<Store>> {
        match dir_path(rootless_uid) {
            Some(path) => Store::open_at(path, create),
            None => Ok(None),
        }
    }

    /// [`Store::open`] of the directory `path` (the tests use their own).
    pub fn open_at(path: PathBuf, create: bool) -> std::io::Result<Option<Store>> {
        // it is there at every start but the first: made only when the open finds nothing
        if let Ok(dir) = nix::fcntl::open(
            &path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            return Store::checked(dir, path).map(Some);
        }
        if create {
            // nvhook's /run directory first (0700 too, when this makes it)
            let parents: Vec<&Path> = path.ancestors().skip(1).take(1).collect();
            for p in parents.iter().rev().copied().chain([path.as_path()]) {
                match nix::unistd::mkdir(p, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    // no /run/user/<uid> (no login session of that user): no records
                    Err(Errno::ENOENT) => return Ok(None),
                    Err(e) => {
                        return Err(std::io::Error::other(format!(
                            "cannot create {}: {e}",
                            p.display()
                        )));
                    }
                }
            }
        }
        let dir = match nix::fcntl::open(
            &path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if !create => return Ok(None),
            Err(e) => {
                return Err(std::io::Error::other(format!(
                    "cannot open {}: {e}",
                    path.display()
                )));
            }
        };
        Store::checked(dir, path).map(Some)
    }

    /// The directory `dir` (at `path`) as the record directory, if it is this user's and
    /// closed to others.
    fn checked(dir: OwnedFd, path: PathBuf) -> std::io::Result<Store> {
        let st = fstat(&dir).map_err(io)?;
        if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
            return Err(std::io::Error::other(format!(
                "{} is not a directory of uid {} closed to others (mode {:o}, owner {}); remove it",
                path.display(),
                nix::unistd::geteuid(),
                st.st_mode & 0o7777,
                st.st_uid
            )));
        }
        Ok(Store { dir, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hold the directory's lock until the returned value is dropped.
    pub fn lock(&self) -> std::io::Result<Flock<OwnedFd>> {
        let fd = openat(
            self.dir.as_fd(),
            ".lock",
            OFlag::O_CREAT | OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(io)?;
        Flock::lock(fd, FlockArg::LockExclusive).map_err(|(_, e)| io(e))
    }

    fn read_file(&self, name: &str, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
        let fd = match openat(
            self.dir.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let st = fstat(&fd).map_err(io)?;
        if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
            return Err(std::io::Error::other(format!(
                "{name} is not a regular file"
            )));
        }
        let mut buf = Vec::with_capacity((st.st_size.max(0) as u64).min(limit) as usize + 1);
        std::fs::File::from(fd)
            .take(limit + 1)
            .read_to_end(&mut buf)?;
        if buf.len() as u64 > limit {
            return Err(std::io::Error::other(format!(
                "{name} is larger than {limit} bytes"
            )));
        }
        Ok(Some(buf))
    }

    /// Write `name` whole, or not at all: a temporary file renamed over it.
    fn write_file(&self, name: &str, data: &[u8], exclusive: bool) -> std::io::Result<()> {
        if exclusive {
            let fd = create_exclusive(self.dir.as_fd(), name, 0o600).map_err(io)?;
            let w = std::fs::File::from(fd).write_all(data);
            if w.is_err() {
                let _ = unlinkat(self.dir.as_fd(), name, UnlinkatFlags::NoRemoveDir);
            }
            return w;
        }
        let tmp = format!(".{name}.{}.tmp", std::process::id());
        if let Err(e) = self.write_file(&tmp, data, true) {
            // debris of a killed hook that had this pid
            if e.raw_os_error() != Some(Errno::EEXIST as i32) {
                return Err(e);
            }
            let _ = unlinkat(self.dir.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            self.write_file(&tmp, data, true)?;
        }
        // An existing record is exchanged with the new one, then unlinked: a rename over an
        // existing file makes ext4 (auto_da_alloc) start writing the new file back at once,
        // about 0.3 ms on the start's path; an exchange does not. Where there is nothing to
        // replace (ENOENT) or the filesystem cannot exchange, a plain rename.
        let dir = self.dir.as_fd();
        let done = match renameat2(dir, tmp.as_str(), dir, name, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => {
                unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir).or(Ok::<(), Errno>(()))
            }
            Err(Errno::ENOENT | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                renameat(dir, tmp.as_str(), dir, name)
            }
            Err(e) => Err(e),
        };
        done.map_err(|e| {
            let _ = unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            io(e)
        })
    }

    /// Is there a record of container `id`? (One look, without the lock.)
    pub fn has(&self, id: &str) -> bool {
        valid_id(id)
            && fstatat(
                self.dir.as_fd(),
                id,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .is_ok()
    }

    /// The record of container `id`. A record of another format version is treated as none
    /// (and left in place).
    ///
    /// A record file is the record as one line of JSON, then any number of appended lines
    /// `{"add":[entries]}` ([`Store::append`]), folded in here in their order as a rewrite would
    /// have ([`super::absorb`]). An appended line that is not whole (a hook killed while writing
    /// it, or a crash of an ext4 `/run`) is ignored, as if that hook had stopped before its
    /// write. An empty file (a hook killed between [`Store::create`]'s create
    /// and write) is no record.
    pub fn read(&self, id: &str) -> std::io::Result<Option<Record>> {
        let Some(bytes) = self.read_file(id, MAX_RECORD)? else {
            return Ok(None);
        };
        if bytes.is_empty() {
            return Ok(None);
        }
        let mut lines = bytes.split_inclusive(|b| *b == b'\n');
        let first = lines.next().unwrap_or_default();
        let mut rec: Record = serde_json::from_slice(first).map_err(|e| {
            std::io::Error::other(format!("{}/{id}: not a record: {e}", self.path.display()))
        })?;
        for line in lines {
            let added = match line.strip_suffix(b"\n") {
                Some(l) => serde_json::from_slice::<Added>(l).map_err(|e| e.to_string()),
                None => Err("not whole".to_owned()),
            };
            match added {
                Ok(a) => {
                    // blobs it leaves unused are the sweep's to remove (remove_debris): a
                    // reader does not write
                    super::absorb(&mut rec.entries, a.add);
                }
                Err(e) => {
                    log::warn!(
                        "{}/{id}: an appended line is not readable ({e}); it is ignored",
                        self.path.display()
                    );
                }
            }
        }
        if rec.version != RECORD_VERSION {
            log::warn!(
                "{}/{id}: record version {} is not {RECORD_VERSION}; left alone",
                self.path.display(),
                rec.version
            );
            return Ok(None);
        }
        Ok(Some(rec))
    }

    /// Write the record of `id` and its index entry.
    pub fn write(&self, id: &str, rec: &Record) -> std::io::Result<()> {
        self.write_record(id, rec, false)
    }

    /// [`Store::write`] of a record with no entries where `id` has none: the file is created
    /// under its own name, with no temporary file and rename (on an ext4 `/run` each is a
    /// journaled change on the start's path). A hook killed between the create and the write
    /// leaves an empty file, which [`Store::read`] takes for no record; with no entries, there
    /// was nothing to lose.
    pub fn create(&self, id: &str, rec: &Record) -> std::io::Result<()> {
        if !rec.entries.is_empty() {
            return self.write(id, rec);
        }
        self.write_record(id, rec, true)
    }

    /// Add `entries` to the record of `id` by appending one line to its file (no new file, no
    /// rename: one write), to be folded in by [`Store::read`]. Only where folding them in frees
    /// no blob (the caller checked), so that a rewrite would have kept them all.
    pub fn append(&self, id: &str, entries: Vec<Entry>) -> std::io::Result<()> {
        let mut line =
            serde_json::to_vec(&Added { add: entries }).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let fd = openat(
            self.dir.as_fd(),
            id,
            OFlag::O_RDWR
                | OFlag::O_APPEND
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        let st = fstat(&fd).map_err(io)?;
        if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
            return Err(std::io::Error::other(format!("{id} is not a regular file")));
        }
        // the line's end must follow a whole line (a file written before records ended theirs
        // with one, or one whose last append was cut short, does not end with one)
        let ends_whole = st.st_size == 0 || {
            let mut last = [0u8; 1];
            nix::sys::uio::pread(&fd, &mut last, st.st_size - 1).map_err(io)? == 1
                && last[0] == b'\n'
        };
        if !ends_whole {
            line.insert(0, b'\n');
        }
        std::fs::File::from(fd).write_all(&line)
    }

    fn write_record(&self, id: &str, rec: &Record, exclusive: bool) -> std::io::Result<()> {
        let mut json = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        json.push(b'\n');
        self.write_file(id, &json, exclusive)?;
        let sub = index_dir(rec.root);
        let err = |e: Errno| {
            std::io::Error::other(format!(
                "{}/{INDEX}/{sub}: cannot index the record of {id}: {e}",
                self.path.display()
            ))
        };
        let open_sub = |at: BorrowedFd<'_>, name: &str| {
            openat(
                at,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
        };
        // the rootfs's directory is there when the start wrote its record at the beginning
        let dir = match open_sub(self.dir.as_fd(), &format!("{INDEX}/{sub}")) {
            Ok(fd) => fd,
            Err(_) => {
                let index = self.index(true)?;
                match nix::sys::stat::mkdirat(
                    index.as_fd(),
                    sub.as_str(),
                    Mode::from_bits_truncate(0o700),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(err(e)),
                }
                open_sub(index.as_fd(), &sub).map_err(err)?
            }
        };
        openat(
            dir.as_fd(),
            id,
            OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map(drop)
        .map_err(err)
    }

    /// The index directory (with `create`, made if missing).
    fn index(&self, create: bool) -> std::io::Result<OwnedFd> {
        if create {
            match nix::sys::stat::mkdirat(self.dir.as_fd(), INDEX, Mode::from_bits_truncate(0o700))
            {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(io(e)),
            }
        }
        openat(
            self.dir.as_fd(),
            INDEX,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)
    }

    /// The ids whose records the index lists for the rootfs `root`.
    pub fn ids_on(&self, root: Identity) -> std::io::Result<Vec<String>> {
        let dir = openat(
            self.dir.as_fd(),
            format!("{INDEX}/{}", index_dir(root)).as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        );
        match dir {
            Ok(fd) => Ok(names_in(fd)?
                .into_iter()
                .filter(|id| valid_id(id))
                .collect()),
            Err(Errno::ENOENT) => Ok(Vec::new()),
            Err(e) => Err(io(e)),
        }
    }

    /// Remove the record file of `id` (about rootfs `root`) and its index entry; not its blobs.
    pub fn remove_record_file(&self, id: &str, root: Identity) {
        self.remove_file(id);
        let Ok(index) = self.index(false) else { return };
        let sub = index_dir(root);
        match unlinkat(
            index.as_fd(),
            format!("{sub}/{id}").as_str(),
            UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => log::warn!(
                "cannot remove {}/{INDEX}/{sub} entry of {id}: {e}",
                self.path.display()
            ),
        }
        // the last one out removes the rootfs's directory (not empty: another record's)
        let _ = unlinkat(index.as_fd(), sub.as_str(), UnlinkatFlags::RemoveDir);
    }

    /// Index entries whose record is missing or about another rootfs (`roots`: every record's
    /// id and rootfs, read by the sweep) go, and so do rootfs directories left empty and
    /// anything else in the index (entries of an earlier layout, names of no valid id).
    pub fn remove_stale_index(&self, roots: &[(String, Identity)]) {
        let (Ok(index), Ok(listing)) = (self.index(false), self.index(false)) else {
            return;
        };
        let Ok(subs) = names_in(listing) else {
            return;
        };
        for sub in subs {
            let listing = openat(
                index.as_fd(),
                sub.as_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            );
            let Ok(ids) = listing.map_err(io).and_then(names_in) else {
                // not a directory: an entry of the earlier flat layout
                let _ = unlinkat(index.as_fd(), sub.as_str(), UnlinkatFlags::NoRemoveDir);
                continue;
            };
            for id in ids {
                let live = roots
                    .iter()
                    .any(|(rid, root)| *rid == id && index_dir(*root) == sub);
                if !live {
                    let _ = unlinkat(
                        index.as_fd(),
                        format!("{sub}/{id}").as_str(),
                        UnlinkatFlags::NoRemoveDir,
                    );
                }
            }
            let _ = unlinkat(index.as_fd(), sub.as_str(), UnlinkatFlags::RemoveDir);
        }
    }

    /// Is a sweep of the whole directory due (none yet, or the last more than [`SWEEP_EVERY`]
    /// ago)?
    pub fn sweep_due(&self) -> bool {
        let Ok(st) = fstatat(
            self.dir.as_fd(),
            SWEPT,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) else {
            return true;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let then = u64::try_from(st.st_mtime).unwrap_or(0);
        // a clock set back counts as due
        now < then || now - then >= SWEEP_EVERY.as_secs()
    }

    /// Stamp the sweep's time.
    pub fn mark_swept(&self) {
        if let Err(e) = self.write_file(SWEPT, b"", false) {
            log::debug!("cannot stamp {}/{SWEPT}: {e}", self.path.display());
        }
    }

    /// Keep `content` in a new blob of container `id`; returns its name.
    pub fn write_blob(&self, id: &str, content: &[u8]) -> std::io::Result<String> {
        for n in 0..10_000u32 {
            let name = format!("{id}@{n}");
            match self.write_file(&name, content, true) {
                Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => continue,
                r => return r.map(|()| name),
            }
        }
        Err(std::io::Error::other(format!("{id}: too many blobs")))
    }

    pub fn read_blob(&self, name: &str) -> std::io::Result<Vec<u8>> {
        if !valid_blob(name) {
            return Err(std::io::Error::other(format!(
                "{name:?} is not a blob name"
            )));
        }
        self.read_file(name, MAX_BLOB)?.ok_or_else(|| {
            std::io::Error::other(format!("{}/{name} is missing", self.path.display()))
        })
    }

    pub fn remove_file(&self, name: &str) {
        match unlinkat(self.dir.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => log::warn!("cannot remove {}/{name}: {e}", self.path.display()),
        }
    }

    pub fn remove_blob_names(&self, names: &[String]) {
        for n in names.iter().filter(|n| valid_blob(n)) {
            self.remove_file(n);
        }
    }

    pub fn remove_blobs(&self, entries: &[Entry]) {
        for e in entries {
            if let Some(b) = e.before.blob().filter(|b| valid_blob(b)) {
                self.remove_file(b);
            }
        }
    }

    /// Remove a record, its index entry and its blobs.
    pub fn remove_record(&self, id: &str, rec: &Record) {
        self.remove_blobs(&rec.entries);
        self.remove_record_file(id, rec.root);
    }

    /// The container ids that have a record.
    pub fn ids(&self) -> std::io::Result<Vec<String>> {
        Ok(self.names()?.into_iter().filter(|n| valid_id(n)).collect())
    }

    /// Remove what a hook killed while holding the lock left behind: temporary files, and blobs
    /// no record refers to (written, but the record naming them never was). Only under the lock,
    /// where no other writer is at work.
    pub fn remove_debris(&self, referenced: &[String]) {
        let Ok(names) = self.names() else { return };
        for n in names {
            let debris = (n.starts_with('.') && n.ends_with(".tmp"))
                || (valid_blob(&n) && !referenced.contains(&n));
            if debris {
                log::debug!(
                    "removing {}/{n}, left by a killed hook",
                    self.path.display()
                );
                self.remove_file(&n);
            }
        }
    }

    fn names(&self) -> std::io::Result<Vec<String>> {
        let dup = openat(
            self.dir.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        names_in(dup)
    }
}

/// The names in the directory `dir` (consumed), but `.` and `..`.
fn names_in(dir: OwnedFd) -> std::io::Result<Vec<String>> {
    let mut d = nix::dir::Dir::from_fd(dir).map_err(io)?;
    Ok(d.iter()
        .flatten()
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
        .filter(|n| n != "." && n != "..")
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_can_name_a_file() {
        for ok in ["a", "nvhook-test-1-2", "0123abcdef", "x.y_z+w", "a..b"] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".lock",
            "a/b",
            "../x",
            "a@1",
            "a b",
            "é",
            &"x".repeat(201),
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
        assert!(valid_blob("abc@0") && valid_blob("a.b@12"));
        assert!(
            !valid_blob("abc@")
                && !valid_blob("../x@1")
                && !valid_blob("abc@1x")
                && !valid_blob("abc")
        );
    }
}
