//! Apply a plan: the only code with side effects.
//!
//! Order: device nodes and bind mounts, symlinks, the linker cache, then the device cgroup. Each
//! step fails closed: the first error stops everything and `nvhook prestart` exits non-zero, so
//! the runtime tears the container down. What nvhook changed lives only in the container: mounts
//! in its mount namespace, files in its rootfs, rules in its cgroup; nothing on the host.

pub mod bpfeval;
pub mod bpfprog;
pub mod cgroup;
pub mod namespace;
pub mod progcache;
pub mod systemd;
pub mod userns;

use std::os::fd::AsFd;

use nvhook_sys as sys;

use crate::error::Error;
use crate::ldcache::{Entry, LdCache};
use crate::plan::{MountFlags, Plan};
use crate::rootfs::Rootfs;

/// The container's `/etc/ld.so.cache` is read from the image: refuse anything larger.
const MAX_IMAGE_CACHE: u64 = crate::ldcache::MAX_CACHE_SIZE as u64;

fn attr_bits(f: MountFlags) -> u64 {
    let mut a = 0;
    if f.readonly {
        a |= sys::MOUNT_ATTR_RDONLY;
    }
    if f.nosuid {
        a |= sys::MOUNT_ATTR_NOSUID;
    }
    if f.nodev {
        a |= sys::MOUNT_ATTR_NODEV;
    }
    if f.noexec {
        a |= sys::MOUNT_ATTR_NOEXEC;
    }
    a
}

/// A detached bind mount of the host file or directory `source`, with mount attributes `attrs`
/// set on it before it is attached anywhere.
///
/// Each source is cloned from its host path, and every clone is attached: no detached tree is
/// left to close. An earlier version cloned each file from one detached, attribute-set copy of
/// its host directory (one `mount_setattr` per directory instead of one per mount), but closing
/// such a copy dissolves it, and each dissolution waits for an expedited RCU grace period
/// (`namespace_unlock` -> `synchronize_rcu_expedited`, one mutex host-wide): in six bursts of 16
/// starts on the dev VM `perf lock` counted 165 such waits, 202 ms in all (docs/benchmarks.md).
/// Where the kernel has `open_tree_attr` (6.15) the clone and its attributes are one call.
fn clone_source(source: &std::path::Path, attrs: u64) -> std::io::Result<std::os::fd::OwnedFd> {
    let src = source
        .to_str()
        .ok_or_else(|| std::io::Error::from_raw_os_error(nix::libc::EINVAL))?;
    sys::open_tree_clone_attr(src, attrs)
}

/// Bind-mount `source` (a host path, in the current mount namespace) onto the container path
/// `target`, with `flags` set on the new mount before it is attached, so it is never visible
/// writable or setuid even for an instant. The target is resolved in the rootfs and the mount
/// is attached to the descriptor, never to a path string.
fn bind(
    rootfs: &Rootfs,
    source: &std::path::Path,
    target: &str,
    dir: bool,
    flags: MountFlags,
) -> Result<(), Error> {
    let merr = |e: std::io::Error| Error::Mount {
        source_path: source.to_owned(),
        target: target.to_owned(),
        source: e,
    };
    let tree = clone_source(source, attr_bits(flags)).map_err(merr)?;
    // A mount attached under a mount with shared propagation is copied to its peers, outside
    // the container: refused before the mount point is created, and again on the descriptor
    // the mount is attached to (a racer may have swapped a component in between).
    let point = if dir {
        rootfs.refuse_shared_ancestor(target)?;
        let point = rootfs.mount_point_dir(target)?;
        rootfs.refuse_shared_mount(point.as_fd(), target)?;
        point
    } else {
        rootfs.file_mount_point(target)?
    };
    sys::move_mount(tree.as_fd(), point.as_fd()).map_err(merr)
}

/// Create the device nodes, bind mounts and symlinks of `plan` in `rootfs`.
pub fn mounts(plan: &Plan, rootfs: &Rootfs) -> Result<(), Error> {
    for d in &plan.devices {
        bind(
            rootfs,
            &d.node.host_path,
            &d.path,
            false,
            MountFlags::DEVICE,
        )?;
    }
    for m in &plan.mounts {
        bind(rootfs, &m.source, &m.target, m.directory, m.flags)?;
    }
    for f in &plan.files {
        let same = rootfs
            .read_file(&f.path, 1 << 20)
            .is_ok_and(|old| old.as_deref() == Some(f.content.as_bytes()));
        if !same {
            rootfs.write_file_atomic(&f.path, f.content.as_bytes(), 0o644)?;
        }
    }
    for s in &plan.symlinks {
        if !rootfs.symlink(&s.path, &s.target)? {
            log::warn!(
                "{} exists in the image and is not a symlink; left as it is (as ldconfig would)",
                s.path
            );
        }
    }
    Ok(())
}

/// Build each planned tmpfs detached (files written, host directories bound in, everything
/// read-only, nosuid, nodev, noexec), then attach it over its target in one step, so the container
/// never sees a half-filled or writable directory.
pub fn tmpfs_dirs(plan: &Plan, rootfs: &Rootfs) -> Result<(), Error> {
    for t in &plan.tmpfs {
        let target = match rootfs.resolve(&t.target) {
            Ok(fd) => fd,
            Err(e) => {
                log::debug!(
                    "{}: not present in the container ({e}); not replaced",
                    t.target
                );
                continue;
            }
        };
        if t.only_on_procfs {
            let on_proc = nix::sys::statfs::fstatfs(&target)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC);
            if !on_proc {
                log::debug!(
                    "{} is not on the container's procfs; not replaced",
                    t.target
                );
                continue;
            }
        }
        rootfs.refuse_shared_mount(target.as_fd(), &t.target)?;
        tmpfs_dir(t, &target).map_err(|e| Error::Mount {
            source_path: "tmpfs".into(),
            target: t.target.clone(),
            source: e,
        })?;
    }
    Ok(())
}

fn tmpfs_dir(t: &crate::plan::TmpfsDir, target: &std::os::fd::OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::{Mode, mkdirat};
    use std::io::Write;
    let inert = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOEXEC;
    let mnt = sys::tmpfs_detached("0555", "1m", inert)?;
    for f in &t.files {
        if f.name.contains('/') || f.name.starts_with('.') {
            return Err(std::io::Error::from_raw_os_error(nix::libc::EINVAL));
        }
        let fd = openat(
            mnt.as_fd(),
            f.name.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o444),
        )?;
        std::fs::File::from(fd).write_all(f.content.as_bytes())?;
    }
    for b in &t.binds {
        // create the path inside the (fresh, private) tmpfs: directories, and for a file bind
        // an empty file to mount on
        let comps: Vec<&str> = b.path.split('/').filter(|c| !c.is_empty()).collect();
        if comps.is_empty() || comps.iter().any(|c| *c == ".." || *c == ".") {
            return Err(std::io::Error::from_raw_os_error(nix::libc::EINVAL));
        }
        let dirs = if b.file { comps.len() - 1 } else { comps.len() };
        for i in 1..=dirs {
            match mkdirat(
                mnt.as_fd(),
                comps[..i].join("/").as_str(),
                Mode::from_bits_truncate(0o555),
            ) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let path = comps.join("/");
        if b.file {
            openat(
                mnt.as_fd(),
                path.as_str(),
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o444),
            )?;
        }
        let kind = if b.file {
            OFlag::empty()
        } else {
            OFlag::O_DIRECTORY
        };
        let point = openat(
            mnt.as_fd(),
            path.as_str(),
            OFlag::O_PATH | kind | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let tree = clone_source(&b.source, sys::MOUNT_ATTR_RDONLY | inert)?;
        sys::move_mount(tree.as_fd(), point.as_fd())?;
    }
    sys::mount_setattr_recursive(mnt.as_fd(), sys::MOUNT_ATTR_RDONLY | inert)?;
    sys::move_mount(mnt.as_fd(), target.as_fd())
}

/// Merge the plan's sonames into the container's `/etc/ld.so.cache`, keeping every entry the
/// image had. No program of the image runs: the cache is read and written as data.
pub fn ldcache(plan: &Plan, rootfs: &Rootfs) -> Result<(), Error> {
    if plan.ldcache.is_empty() {
        return Ok(());
    }
    const PATH: &str = "/etc/ld.so.cache";
    let old = rootfs.read_file(PATH, MAX_IMAGE_CACHE);
    let mut cache = match &old {
        Ok(Some(bytes)) => match LdCache::parse(bytes) {
            Ok(c) => c,
            // Over nvhook's limits (issue 16: a crafted cache as a memory bomb): ld.so may well
            // read it, so replacing it would break the image; refuse, naming the limit.
            Err(e) if e.is_limit() => {
                return Err(Error::LdCacheUpdate {
                    path: PATH.into(),
                    reason: format!(
                        "the image's cache is over nvhook's limits: {e}; rebuild it with the image's ldconfig"
                    ),
                });
            }
            Err(e) => {
                // ld.so ignores a cache it cannot read, so the image never used it: start afresh.
                log::warn!("the image's {PATH} is unreadable ({e}); writing a new one");
                LdCache::default()
            }
        },
        Ok(None) => LdCache::default(),
        Err(e) => {
            return Err(Error::LdCacheUpdate {
                path: PATH.into(),
                reason: e.to_string(),
            });
        }
    };
    let entries: Vec<Entry> = plan
        .ldcache
        .iter()
        .map(|e| Entry::new(e.soname.clone(), e.path.clone(), e.flags))
        .collect();
    cache.merge(&entries);
    let bytes = cache.to_bytes().map_err(|e| Error::LdCacheUpdate {
        path: PATH.into(),
        reason: e.to_string(),
    })?;
    // Already what we would write (the hook ran before on this rootfs): leave the file alone.
    // Replacing a file by rename makes ext4 allocate and flush its blocks at once (auto_da_alloc),
    // about half a millisecond, and this is the common case for a reused bundle.
    if matches!(&old, Ok(Some(b)) if *b == bytes) {
        return Ok(());
    }
    rootfs.write_file_atomic(PATH, &bytes, 0o644)?;
    Ok(())
}
