//! Put back recorded entries, in the host's view of the rootfs (the container's mount namespace
//! is gone by poststop).
//!
//! Each entry's directory is resolved with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)`: the recorded path has no symlink in it, so a symlink found on the way
//! now was put there since, and the entry is left. The entry itself is looked at without
//! following it (`fstatat(AT_SYMLINK_NOFOLLOW)` in that directory) and is removed or replaced
//! (`unlinkat`, `renameat` relative to the directory's descriptor) only if it is still the very
//! inode nvhook made (type, `st_dev`, `st_ino`); a directory only if empty. Whatever else is
//! found is left as it is, with a warning. So the most a rootfs that changes under nvhook can
//! make poststop remove is a name in one of the rootfs's own directories.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2, renameat};
use nix::sys::stat::{Mode, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::{Entry, Saved, Store};
use crate::rootfs::{Identity, Kind};

/// Open the rootfs directory (a path of the runtime's, not of the image's) and its identity.
pub fn open_root(path: &Path) -> Result<(OwnedFd, Identity), Errno> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let st = fstat(&fd)?;
    Ok((fd, Identity::of(&st)))
}

fn kind_of(mode: u32) -> Kind {
    match mode & nix::libc::S_IFMT {
        nix::libc::S_IFDIR => Kind::Dir,
        nix::libc::S_IFREG => Kind::File,
        nix::libc::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// The directory of `path` (no symlink followed) and the final name; `Ok(None)` when the
/// directory is not there (it was on a mount of the container's own, such as the runtime's
/// `/dev` tmpfs, gone with it: so is the entry).
fn parent<'p>(root: &OwnedFd, path: &'p str) -> Result<Option<(OwnedFd, &'p str)>, String> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let Some((name, dirs)) = comps.split_last() else {
        return Err("not a path".into());
    };
    if comps.iter().any(|c| *c == "." || *c == "..") {
        return Err("not a clean path".into());
    }
    let rel = if dirs.is_empty() {
        ".".to_owned()
    } else {
        dirs.join("/")
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    for _ in 0..32 {
        match openat2(root.as_fd(), rel.as_str(), how) {
            Err(Errno::EAGAIN) => continue,
            Ok(fd) => return Ok(Some((fd, name))),
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => return Err("a symlink is in its path now".into()),
            Err(e) => return Err(format!("its directory cannot be opened: {e}")),
        }
    }
    Err("its directory kept changing".into())
}

/// Undo each entry, deepest path first. Returns (put back, left as found).
pub fn undo(root: &OwnedFd, entries: &[Entry], store: &Store) -> (usize, usize) {
    let mut order: Vec<&Entry> = entries.iter().collect();
    order.sort_by_key(|e| std::cmp::Reverse(e.path.matches('/').count()));
    let (mut done, mut left) = (0, 0);
    for e in order {
        match undo_one(root, e, store) {
            Ok(true) => done += 1,
            Ok(false) => {}
            Err(why) => {
                left += 1;
                log::warn!("{} in the rootfs: {why}; left as it is", e.path);
            }
        }
    }
    (done, left)
}

/// Ok(true): put back; Ok(false): already gone (nothing to do).
fn undo_one(root: &OwnedFd, e: &Entry, store: &Store) -> Result<bool, String> {
    let Some((dir, name)) = parent(root, &e.path)? else {
        log::debug!("{}: its directory is gone; so is the entry", e.path);
        return Ok(false);
    };
    let st = match fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) if e.before == Saved::Absent => return Ok(false),
        Err(e) => return Err(format!("cannot look at it: {e}")),
    };
    let found = kind_of(st.st_mode);
    if found != e.kind || Identity::of(&st) != e.id {
        return Err(format!(
            "it is not what nvhook made there any more (a {found:?}, inode {}:{}, where nvhook made a {:?}, inode {}:{})",
            st.st_dev, st.st_ino, e.kind, e.id.dev, e.id.ino
        ));
    }
    match &e.before {
        Saved::Absent => {
            let flag = if found == Kind::Dir {
                UnlinkatFlags::RemoveDir
            } else {
                UnlinkatFlags::NoRemoveDir
            };
            match unlinkat(dir.as_fd(), name, flag) {
                Ok(()) => Ok(true),
                Err(Errno::ENOTEMPTY | Errno::EEXIST) => {
                    Err("the directory nvhook created is not empty".into())
                }
                Err(err) => Err(format!("cannot remove it: {err}")),
            }
        }
        Saved::Symlink { target, .. } => {
            let tmp = tmp_name(name);
            let _ = unlinkat(dir.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            nix::unistd::symlinkat(target.as_str(), dir.as_fd(), tmp.as_str())
                .map_err(|err| format!("cannot recreate the image's symlink: {err}"))?;
            replace(dir.as_fd(), &tmp, name, e)
        }
        Saved::File {
            mode,
            uid,
            gid,
            blob,
            ..
        } => {
            let content = store
                .read_blob(blob)
                .map_err(|err| format!("the original is not kept: {err}"))?;
            let tmp = tmp_name(name);
            let _ = unlinkat(dir.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            let fd = crate::rootfs::create_exclusive(dir.as_fd(), tmp.as_str(), 0o600)
                .map_err(|err| format!("cannot write the original back: {err}"))?;
            let mut f = std::fs::File::from(fd);
            let written = f
                .write_all(&content)
                .map_err(|err| err.to_string())
                .and_then(|()| {
                    nix::unistd::fchown(
                        f.as_fd(),
                        Some(nix::unistd::Uid::from_raw(*uid)),
                        Some(nix::unistd::Gid::from_raw(*gid)),
                    )
                    .map_err(|err| err.to_string())
                })
                .and_then(|()| {
                    nix::sys::stat::fchmod(&f, Mode::from_bits_truncate(*mode))
                        .map_err(|err| err.to_string())
                });
            if let Err(err) = written {
                let _ = unlinkat(dir.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
                return Err(format!("cannot write the original back: {err}"));
            }
            replace(dir.as_fd(), &tmp, name, e)
        }
        Saved::Unrestorable { .. } => {
            Err("what the image had there (a FIFO, device or very large file) was not kept".into())
        }
    }
}

fn tmp_name(name: &str) -> String {
    format!(".{name}.nvhook-{}", std::process::id())
}

/// Rename `tmp` over `name` if `name` is still nvhook's entry (checked once more, just before).
fn replace(dir: BorrowedFd<'_>, tmp: &str, name: &str, e: &Entry) -> Result<bool, String> {
    let still = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| Identity::of(&st) == e.id && kind_of(st.st_mode) == e.kind);
    let r = if still {
        renameat(dir, tmp, dir, name).map_err(|err| format!("cannot put the original back: {err}"))
    } else {
        Err("it changed while being put back".into())
    };
    if r.is_err() {
        let _ = unlinkat(dir, tmp, UnlinkatFlags::NoRemoveDir);
    }
    r.map(|()| true)
}
