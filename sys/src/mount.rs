//! The new mount API (`open_tree`, `mount_setattr`, `move_mount`, `fsopen`/`fsmount`): cloning,
//! setting attributes on and attaching mounts by descriptor.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use crate::{cvt, owned};

// ---------------------------------------------------------------------------------------------
// New mount API (Linux >= 5.2; mount_setattr >= 5.12)
// ---------------------------------------------------------------------------------------------

pub const OPEN_TREE_CLONE: u32 = 1;
pub const OPEN_TREE_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
pub const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x0000_0004;
pub const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x0000_0040;
pub const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
pub const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
pub const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x0000_0008;

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)`: a detached bind mount of
/// `path` (resolved in the caller's mount namespace) that can be attached with [`move_mount`].
pub fn open_tree_clone(path: &str) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call; no other pointers.
    owned(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC,
        )
    })
}

/// `open_tree_attr(2)` (Linux 6.15): the same number on every architecture of the generic
/// syscall table, x86_64 included.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_OPEN_TREE_ATTR: libc::c_long = 467;

/// Whether `open_tree_attr` has answered ENOSYS (an older kernel) or EPERM (a seccomp filter
/// that does not know it) in this process: then every later clone takes the two-call way.
static NO_OPEN_TREE_ATTR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A detached bind mount of `path`, as [`open_tree_clone`] makes, with the mount attributes
/// `attr_set` (`MOUNT_ATTR_*`) already set on it: one `open_tree_attr` call where the kernel has
/// it (6.15), else [`open_tree_clone`] followed by [`mount_setattr`]. Either way the attributes
/// are on the mount before it can be attached anywhere.
pub fn open_tree_clone_attr(path: &str, attr_set: u64) -> io::Result<OwnedFd> {
    use std::sync::atomic::Ordering;
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    if !NO_OPEN_TREE_ATTR.load(Ordering::Relaxed) {
        let c = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let attr = MountAttr {
            attr_set,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: `c` is a valid NUL-terminated string and `attr` a live MountAttr, both owned by
        // this frame for the whole call; the size passed is attr's own size.
        let r = owned(unsafe {
            libc::syscall(
                SYS_OPEN_TREE_ATTR,
                libc::AT_FDCWD,
                c.as_ptr(),
                OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        });
        match r {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                NO_OPEN_TREE_ATTR.store(true, Ordering::Relaxed);
            }
            r => return r,
        }
    }
    let tree = open_tree_clone(path)?;
    mount_setattr(std::os::fd::AsFd::as_fd(&tree), attr_set)?;
    Ok(tree)
}

/// The id of the mount `fd` lies on (`statx(fd, "", AT_EMPTY_PATH, STATX_MNT_ID)`, Linux 5.8),
/// the number that starts its line in `/proc/<pid>/mountinfo`. Works on `O_PATH` descriptors.
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    statx_mount_id(fd, libc::STATX_MNT_ID)
}

/// The mount id `statx` gives for `fd` under `mask` (`STATX_MNT_ID` or `STATX_MNT_ID_UNIQUE`);
/// ENOSYS where the kernel does not fill it in.
fn statx_mount_id(fd: BorrowedFd<'_>, mask: u32) -> io::Result<u64> {
    // SAFETY: an all-zero statx is a valid value of this plain C struct.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a static NUL-terminated empty string, `st` is a live, writable statx
    // owned by this frame for the whole call.
    let ret = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            mask,
            &mut st,
        )
    };
    cvt(ret as libc::c_long)?;
    if st.stx_mask & mask == 0 {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    Ok(st.stx_mnt_id)
}

/// `statx`'s 64-bit mount id that is never reused (Linux 6.8), the id `statmount` takes.
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_STATMOUNT: libc::c_long = 457;
const STATMOUNT_MNT_BASIC: u64 = 0x2;
const STATMOUNT_MNT_POINT: u64 = 0x10;
/// `MS_SHARED` in `statmount`'s `mnt_propagation`.
const MS_SHARED: u64 = 1 << 20;
/// The fixed part of `struct statmount` (Linux 6.8 on: its spare words keep it this size); the
/// strings follow it.
const STATMOUNT_FIXED: usize = 512;

/// One mount, as `statmount(2)` (Linux 6.8) reports it: where it is mounted (relative to this
/// process's root, as in mountinfo) and, when its propagation is shared, its peer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountFacts {
    pub mount_point: String,
    pub shared_peer_group: Option<u64>,
}

/// [`MountFacts`] of the mount `fd` lies on, from `statmount(2)`: one mount looked up, where
/// reading `/proc/<pid>/mountinfo` prints every mount of the namespace while holding the
/// namespace's lock against every mount and unmount on the host (in a burst of container
/// starts, the most contended lock: docs/benchmarks.md). ENOSYS where the kernel is older.
pub fn mount_facts(fd: BorrowedFd<'_>) -> io::Result<MountFacts> {
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = fd;
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let mnt_id = statx_mount_id(fd, STATX_MNT_ID_UNIQUE)?;
        #[repr(C)]
        struct MntIdReq {
            size: u32,
            spare: u32,
            mnt_id: u64,
            param: u64,
        }
        let req = MntIdReq {
            size: std::mem::size_of::<MntIdReq>() as u32,
            spare: 0,
            mnt_id,
            param: STATMOUNT_MNT_BASIC | STATMOUNT_MNT_POINT,
        };
        let mut len = 4096usize;
        loop {
            // u64 words: the buffer is aligned for the struct's 64-bit fields
            let mut buf = vec![0u64; len / 8];
            // SAFETY: `req` is a live MntIdReq and `buf` a writable buffer of `len` bytes, both
            // owned by this frame for the whole call; the kernel writes at most `len` bytes.
            let r = cvt(unsafe {
                libc::syscall(
                    SYS_STATMOUNT,
                    &req as *const MntIdReq,
                    buf.as_mut_ptr(),
                    len,
                    0u32,
                )
            });
            match r {
                Err(e) if e.raw_os_error() == Some(libc::EOVERFLOW) && len < (1 << 20) => {
                    len *= 4;
                    continue;
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
            let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
            return parse_statmount(&bytes);
        }
    }
}

/// The fields [`mount_facts`] needs from a `struct statmount` the kernel wrote into `b`.
fn parse_statmount(b: &[u8]) -> io::Result<MountFacts> {
    let bad = |what: &str| io::Error::other(format!("statmount: {what}"));
    let u32_at = |o: usize| -> io::Result<u32> {
        b.get(o..o + 4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_ne_bytes)
            .ok_or_else(|| bad("short reply"))
    };
    let u64_at = |o: usize| -> io::Result<u64> {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_ne_bytes)
            .ok_or_else(|| bad("short reply"))
    };
    let size = u32_at(0)? as usize;
    let mask = u64_at(8)?;
    if mask & (STATMOUNT_MNT_BASIC | STATMOUNT_MNT_POINT)
        != STATMOUNT_MNT_BASIC | STATMOUNT_MNT_POINT
    {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    let propagation = u64_at(72)?;
    let peer_group = u64_at(80)?;
    let point_off = u32_at(108)? as usize;
    let strings = b
        .get(STATMOUNT_FIXED..size.min(b.len()))
        .ok_or_else(|| bad("no strings"))?;
    let point = strings
        .get(point_off..)
        .ok_or_else(|| bad("mount point offset"))?;
    let end = point
        .iter()
        .position(|c| *c == 0)
        .ok_or_else(|| bad("unterminated mount point"))?;
    Ok(MountFacts {
        mount_point: String::from_utf8_lossy(&point[..end]).into_owned(),
        shared_peer_group: (propagation & MS_SHARED != 0).then_some(peer_group),
    })
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Set mount attributes (`MOUNT_ATTR_*`) on the mount `fd` refers to (a detached tree from
/// [`open_tree_clone`]), before it becomes visible anywhere.
pub fn mount_setattr(fd: BorrowedFd<'_>, attr_set: u64) -> io::Result<()> {
    setattr(fd, attr_set, 0)
}

/// Like [`mount_setattr`], over the whole tree below `fd` (`AT_RECURSIVE`).
pub fn mount_setattr_recursive(fd: BorrowedFd<'_>, attr_set: u64) -> io::Result<()> {
    setattr(fd, attr_set, AT_RECURSIVE)
}

fn setattr(fd: BorrowedFd<'_>, attr_set: u64, extra_flags: u32) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: `empty` and `attr` are valid for the call; the size passed is attr's own size.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as u32 | extra_flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// Attach the detached mount `from` on top of the file or directory `to` refers to. No path is
/// resolved: the target is exactly the inode `to` was opened on.
pub fn move_mount(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<()> {
    let empty = c"";
    // SAFETY: both path arguments are the same valid empty string; fds are borrowed, not consumed.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            empty.as_ptr(),
            to.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })
    .map(drop)
}

// ---------------------------------------------------------------------------------------------
// A new, detached tmpfs (fsopen/fsconfig/fsmount, Linux >= 5.2)
// ---------------------------------------------------------------------------------------------

const FSOPEN_CLOEXEC: u32 = 1;
const FSCONFIG_SET_STRING: u32 = 1;
const FSCONFIG_CMD_CREATE: u32 = 6;
const FSMOUNT_CLOEXEC: u32 = 1;
/// `AT_RECURSIVE` for mount_setattr: the whole tree.
pub const AT_RECURSIVE: u32 = 0x8000;

/// A detached tmpfs mount with the given `mode=` option and mount attributes; populate it through
/// the returned descriptor (`*at` calls), then attach it with [`move_mount`].
pub fn tmpfs_detached(mode: &str, size: &str, attrs: u64) -> io::Result<OwnedFd> {
    let fstype = c"tmpfs";
    // SAFETY: valid NUL-terminated string for the duration of the call.
    let fs = owned(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
    for (k, v) in [("mode", mode), ("size", size)] {
        let k = CString::new(k).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let v = CString::new(v).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: fs is a valid fs context fd; key and value are valid strings for the call.
        cvt(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                k.as_ptr(),
                v.as_ptr(),
                0,
            )
        })?;
    }
    // SAFETY: no pointers; fs is valid.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    // SAFETY: no pointers; fs is valid.
    owned(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags_of(fd: &OwnedFd) -> u64 {
        // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a live, writable statvfs owned by this frame for the whole call.
        let r = unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) };
        assert_eq!(r, 0, "fstatvfs: {}", io::Error::last_os_error());
        st.f_flag
    }

    /// statmount's view of a mount is mountinfo's: the same mount point and the same shared
    /// peer group (or none), for every mount of this namespace that can be opened.
    #[test]
    fn statmount_agrees_with_mountinfo() {
        // one shared mount of our own, so that the shared case is checked too (needs root)
        let dir = std::env::temp_dir().join(format!("nvhook-statmount-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = CString::new(dir.to_str().unwrap()).unwrap();
        // SAFETY: NUL-terminated strings owned by this frame; null data is allowed.
        let r = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                c.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(
            r,
            0,
            "mount tmpfs (needs root): {}",
            io::Error::last_os_error()
        );
        // SAFETY: as above; a propagation change takes no source, type or data.
        let r = unsafe {
            libc::mount(
                std::ptr::null(),
                c.as_ptr(),
                std::ptr::null(),
                libc::MS_SHARED,
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "make-shared: {}", io::Error::last_os_error());
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let (mut checked, mut shared_checked) = (0, 0);
        for line in table.lines() {
            let (pre, _) = line.split_once(" - ").unwrap();
            let f: Vec<&str> = pre.split(' ').collect();
            let (id, point) = (f[0].parse::<u64>().unwrap(), f[4]);
            if point.contains('\\') {
                continue; // an escaped name: not worth unescaping here
            }
            let shared = f[6..]
                .iter()
                .find_map(|t| t.strip_prefix("shared:"))
                .map(|n| n.parse::<u64>().unwrap());
            let Ok(fd) = std::fs::File::open(point) else {
                continue;
            };
            let fd = OwnedFd::from(fd);
            if mount_id(std::os::fd::AsFd::as_fd(&fd)).ok() != Some(id) {
                continue; // covered by a later mount
            }
            let facts = mount_facts(std::os::fd::AsFd::as_fd(&fd)).expect("statmount (Linux 6.8)");
            assert_eq!(facts.mount_point, point, "{line}");
            assert_eq!(facts.shared_peer_group, shared, "{line}");
            checked += 1;
            shared_checked += usize::from(shared.is_some());
        }
        // SAFETY: a NUL-terminated path owned by this frame.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&dir);
        assert!(checked >= 3, "only {checked} mounts checked");
        assert!(shared_checked >= 1, "no shared mount checked");
    }

    /// Both ways of making the clone (open_tree_attr where the kernel has it, then, forced, the
    /// two-call way) leave exactly the asked attributes on it. Needs root (CI runs as root).
    #[test]
    fn a_clone_carries_its_attributes_either_way() {
        use std::sync::atomic::Ordering;
        for forced_fallback in [false, true] {
            if forced_fallback {
                NO_OPEN_TREE_ATTR.store(true, Ordering::Relaxed);
            }
            let ro = open_tree_clone_attr("/tmp", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID)
                .expect("open_tree_clone_attr (needs root)");
            let f = flags_of(&ro);
            assert_ne!(
                f & libc::ST_RDONLY,
                0,
                "fallback={forced_fallback}: not read-only"
            );
            assert_ne!(
                f & libc::ST_NOSUID,
                0,
                "fallback={forced_fallback}: not nosuid"
            );
            assert_eq!(
                f & libc::ST_NOEXEC,
                0,
                "fallback={forced_fallback}: noexec not asked"
            );
            let plain = open_tree_clone_attr("/tmp", MOUNT_ATTR_NOEXEC).unwrap();
            let f = flags_of(&plain);
            assert_eq!(
                f & libc::ST_RDONLY,
                0,
                "fallback={forced_fallback}: read-only not asked"
            );
            assert_ne!(
                f & libc::ST_NOEXEC,
                0,
                "fallback={forced_fallback}: not noexec"
            );
        }
    }
}
