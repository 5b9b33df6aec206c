//! The raw Linux system calls nvhook needs that `nix` does not wrap: the new mount API
//! (`open_tree`, `mount_setattr`, `move_mount`) and `bpf(2)`.
//!
//! This is the only crate of nvhook that contains `unsafe` code. Each wrapper passes pointers to
//! memory it owns for the duration of the call, checks the return value, and wraps every returned
//! file descriptor in an `OwnedFd` at once so it cannot leak or be closed twice.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Take ownership of a descriptor a syscall just returned.
fn owned(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = cvt(ret)? as RawFd;
    // SAFETY: the kernel returned a new descriptor that nothing else owns; OwnedFd closes it once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

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

/// The id of the mount `fd` lies on (`statx(fd, "", AT_EMPTY_PATH, STATX_MNT_ID)`, Linux 5.8),
/// the number that starts its line in `/proc/<pid>/mountinfo`. Works on `O_PATH` descriptors.
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: an all-zero statx is a valid value of this plain C struct.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a static NUL-terminated empty string, `st` is a live, writable statx
    // owned by this frame for the whole call.
    let ret = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID,
            &mut st,
        )
    };
    cvt(ret as libc::c_long)?;
    if st.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    Ok(st.stx_mnt_id)
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
// bpf(2): just what a cgroup v2 device program needs
// ---------------------------------------------------------------------------------------------

pub const BPF_PROG_LOAD: libc::c_long = 5;
pub const BPF_PROG_ATTACH: libc::c_long = 8;
pub const BPF_PROG_DETACH: libc::c_long = 9;
pub const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
pub const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
pub const BPF_PROG_QUERY: libc::c_long = 16;

pub const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
pub const BPF_CGROUP_DEVICE: u32 = 6;
pub const BPF_F_ALLOW_OVERRIDE: u32 = 1;
pub const BPF_F_ALLOW_MULTI: u32 = 2;
pub const BPF_F_REPLACE: u32 = 4;

/// One eBPF instruction, as the kernel lays it out (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BpfInsn {
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high nibble
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// `union bpf_attr` is at most this large for the commands we use; the kernel requires the bytes
/// past the fields a command reads to be zero, which a zeroed buffer gives.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes([
            self.0[off],
            self.0[off + 1],
            self.0[off + 2],
            self.0[off + 3],
        ])
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> libc::c_long {
    // SAFETY: `attr` is a valid, writable, 8-aligned buffer of the size we pass; every pointer
    // stored inside it points to memory the caller keeps alive across this call.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    }
}

/// Load a `BPF_PROG_TYPE_CGROUP_DEVICE` program. On a verifier error the load is repeated with
/// the verifier's log on, and the log is returned in the error message (a logged load is several
/// times slower, so the common case runs without it).
pub fn prog_load_cgroup_device(insns: &[BpfInsn], license: &str) -> io::Result<OwnedFd> {
    let lic = CString::new(license).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut a = Attr::new();
    a.u32(0, BPF_PROG_TYPE_CGROUP_DEVICE)
        .u32(4, insns.len() as u32)
        .u64(8, insns.as_ptr() as u64)
        .u64(16, lic.as_ptr() as u64);
    let ret = bpf(BPF_PROG_LOAD, &mut a);
    if ret >= 0 {
        return owned(ret);
    }
    let mut log = vec![0u8; 64 * 1024];
    a.u32(24, 1) // log_level
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64);
    let ret = bpf(BPF_PROG_LOAD, &mut a);
    if ret < 0 {
        let err = io::Error::last_os_error();
        let end = log.iter().position(|b| *b == 0).unwrap_or(0);
        let msg = String::from_utf8_lossy(&log[..end]);
        return Err(io::Error::new(
            err.kind(),
            format!("{err}; verifier log: {}", msg.trim()),
        ));
    }
    owned(ret)
}

/// The programs attached to a cgroup at `attach_type`: (attach flags, program ids), in the
/// order the kernel runs them.
pub fn prog_query(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<(u32, Vec<u32>)> {
    let mut ids = vec![0u32; 64];
    let mut a = Attr::new();
    a.u32(0, cgroup.as_raw_fd() as u32)
        .u32(4, attach_type)
        .u64(16, ids.as_mut_ptr() as u64)
        .u32(24, ids.len() as u32);
    cvt(bpf(BPF_PROG_QUERY, &mut a))?;
    let flags = a.get_u32(12);
    let cnt = a.get_u32(24) as usize;
    ids.truncate(cnt.min(64));
    Ok((flags, ids))
}

/// A descriptor for the loaded program with this id.
pub fn prog_get_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, id);
    owned(bpf(BPF_PROG_GET_FD_BY_ID, &mut a))
}

/// The program's instructions as the kernel holds them after verification ("xlated").
pub fn prog_xlated_insns(prog: BorrowedFd<'_>) -> io::Result<(u32, Vec<BpfInsn>)> {
    // struct bpf_prog_info: type@0 u32, xlated_prog_len@20 u32, xlated_prog_insns@32 u64
    let mut info = [0u8; 256];
    let mut a = Attr::new();
    a.u32(0, prog.as_raw_fd() as u32)
        .u32(4, info.len() as u32)
        .u64(8, info.as_mut_ptr() as u64);
    cvt(bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a))?;
    let prog_type = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
    let len = u32::from_ne_bytes([info[20], info[21], info[22], info[23]]) as usize;
    let mut insns = vec![BpfInsn::default(); len / std::mem::size_of::<BpfInsn>()];
    let mut info = [0u8; 256];
    info[20..24].copy_from_slice(&(len as u32).to_ne_bytes());
    info[32..40].copy_from_slice(&(insns.as_mut_ptr() as u64).to_ne_bytes());
    let mut a = Attr::new();
    a.u32(0, prog.as_raw_fd() as u32)
        .u32(4, info.len() as u32)
        .u64(8, info.as_mut_ptr() as u64);
    cvt(bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a))?;
    let got = u32::from_ne_bytes([info[20], info[21], info[22], info[23]]) as usize;
    insns.truncate(got / std::mem::size_of::<BpfInsn>());
    Ok((prog_type, insns))
}

/// Attach `prog` to `cgroup`; with `BPF_F_REPLACE` in `flags`, atomically in place of `replace`.
pub fn prog_attach(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    attach_type: u32,
    flags: u32,
    replace: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, cgroup.as_raw_fd() as u32)
        .u32(4, prog.as_raw_fd() as u32)
        .u32(8, attach_type)
        .u32(12, flags)
        .u32(16, replace.map(|r| r.as_raw_fd() as u32).unwrap_or(0));
    cvt(bpf(BPF_PROG_ATTACH, &mut a)).map(drop)
}

/// Detach `prog` from `cgroup`.
pub fn prog_detach(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, cgroup.as_raw_fd() as u32)
        .u32(4, prog.as_raw_fd() as u32)
        .u32(8, attach_type);
    cvt(bpf(BPF_PROG_DETACH, &mut a)).map(drop)
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

// ---------------------------------------------------------------------------------------------
// NVML calls nvml-wrapper does not wrap
// ---------------------------------------------------------------------------------------------

pub use nvml_wrapper;
use nvml_wrapper::error::{NvmlError, nvml_sym, nvml_try};

/// The GPU instance and compute instance ids of a MIG device handle (nvmlDeviceGetGpuInstanceId,
/// nvmlDeviceGetComputeInstanceId): they name its capability files under
/// /proc/driver/nvidia/capabilities/gpu<N>/mig/gi<GI>/ci<CI>.
pub fn mig_instance_ids(device: &nvml_wrapper::Device<'_>) -> Result<(u32, u32), NvmlError> {
    let lib = device.nvml().lib();
    let gi_fn = nvml_sym(lib.nvmlDeviceGetGpuInstanceId.as_ref())?;
    let ci_fn = nvml_sym(lib.nvmlDeviceGetComputeInstanceId.as_ref())?;
    let (mut gi, mut ci) = (0u32, 0u32);
    // SAFETY: `device.handle()` is a valid handle for as long as `device` (which borrows the
    // initialized Nvml) lives; the out-pointers are to locals that outlive the calls.
    unsafe {
        nvml_try(gi_fn(device.handle(), &mut gi))?;
        nvml_try(ci_fn(device.handle(), &mut ci))?;
    }
    Ok((gi, ci))
}

// ---------------------------------------------------------------------------------------------
// Descriptors inherited from whoever started us
// ---------------------------------------------------------------------------------------------

const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// Mark every descriptor from `first` up close-on-exec (`close_range(first, ~0,
/// CLOSE_RANGE_CLOEXEC)`, Linux 5.11), so that nothing the caller left open without that flag is
/// passed on to a program nvhook starts. Nothing is closed: the numbers stay taken, so no later
/// open can land on a number some code still holds. On an older kernel the descriptors are
/// marked one by one from `/proc/self/fd`.
pub fn cloexec_from(first: RawFd) -> io::Result<()> {
    let first = first.max(0) as libc::c_uint;
    // SAFETY: no pointers; the flag only changes descriptor flags of this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let mut fds = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd")? {
        let name = e?.file_name();
        match name.to_str().and_then(|n| n.parse::<RawFd>().ok()) {
            Some(fd) if fd >= first as RawFd => fds.push(fd),
            _ => {}
        }
    }
    for fd in fds {
        // SAFETY: F_SETFD takes an int argument and touches no memory; a number that is no
        // longer open (the read_dir's own descriptor) fails with EBADF, which is ignored.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Running a closure in a forked child
// ---------------------------------------------------------------------------------------------

/// Run `f` in a forked child process and return the bytes it produced; the child exits right
/// after. Used for NVML: its initialization starts threads, and `setns(CLONE_NEWNS)` refuses a
/// multi-threaded process, so NVML must never run in the hook process itself; the child also
/// isolates the hook from a library that can hang on a sick GPU (`timeout`, then SIGKILL), and
/// dies with the hook when the hook is killed (`PR_SET_PDEATHSIG`).
///
/// Refuses (EBUSY) unless the calling process has exactly one thread: forking a multi-threaded
/// process leaves the child with locks other threads held.
pub fn in_child(f: impl FnOnce() -> Vec<u8>, timeout: std::time::Duration) -> io::Result<Vec<u8>> {
    fork_child(|_request| f())?.wait(timeout)
}

/// A forked child of the hook ([`fork_child`]) that is still running or not yet reaped. Dropping
/// it unanswered kills and reaps it.
pub struct Child {
    pid: libc::pid_t,
    /// The write end of the child's request pipe (None once sent).
    request: Option<OwnedFd>,
    /// The read end of the child's answer pipe.
    answer: Option<OwnedFd>,
}

fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid 2-int array for pipe2 to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long)?;
    // SAFETY: pipe2 succeeded, so both are new descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Fork a child that runs `f` and exits: `f` gets the read end of a request pipe (what the
/// parent passes to [`Child::send`]; end of file once the parent has sent, or has given up), and
/// what it returns is the answer [`Child::wait`] reads. The child runs beside the parent, so
/// slow work (a D-Bus round trip) overlaps the parent's own; it dies with the parent
/// (`PR_SET_PDEATHSIG`), its descriptors are the parent's close-on-exec ones, and it never
/// returns into the caller's code.
///
/// Refuses (EBUSY) unless the calling process has exactly one thread: forking a multi-threaded
/// process leaves the child with locks other threads held. The child itself may start threads:
/// the parent stays single-threaded, so its `setns(CLONE_NEWNS)` still works.
pub fn fork_child(f: impl FnOnce(std::fs::File) -> Vec<u8>) -> io::Result<Child> {
    fork_child_with(Lifetime::WithParent, f, |_| {})
}

/// How long a [`fork_child_with`] child may live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// It dies with the parent (`PR_SET_PDEATHSIG`), and [`Child::wait`]'s deadline bounds it.
    WithParent,
    /// It may outlive the parent ([`Child::detach`]), for at most this long (`alarm(2)`: SIGALRM
    /// ends it); its standard input, output and error are /dev/null from the start, so it never
    /// holds the runtime's hook pipes (runc reads the hook's output until every writer is gone).
    Own(std::time::Duration),
}

/// [`fork_child`] with a [`Lifetime`]; `unheard` gets the answer when nobody reads it any more
/// (the parent detached or died), so the child can log it.
pub fn fork_child_with(
    lifetime: Lifetime,
    f: impl FnOnce(std::fs::File) -> Vec<u8>,
    unheard: fn(&[u8]),
) -> io::Result<Child> {
    let threads = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_owned()));
    if threads.as_deref() != Some("1") {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            "fork_child: the process is multi-threaded",
        ));
    }
    let (ans_rd, ans_wr) = pipe_cloexec()?;
    let (req_rd, req_wr) = pipe_cloexec()?;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the process is single-threaded (checked above), so the child is a complete copy
    // whose only thread is this one: no lock can be held by a thread that does not exist there.
    // The child never returns into the caller's code: it runs `f`, writes, and `_exit`s (no
    // atexit handlers, no destructors of the parent's objects run twice).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        match lifetime {
            Lifetime::WithParent => {
                // The child dies with the hook: a hook killed while the child hangs (a runtime's
                // timeout, an OOM kill) must not leave a process on the host holding the driver
                // or a bus open, and holding the runtime's hook pipes, which runc waits on for
                // ever.
                // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
                // SAFETY: getppid has no preconditions.
                if unsafe { libc::getppid() } != parent {
                    // the hook died before the prctl took effect: nobody will read the answer
                    // SAFETY: terminating the child without returning into the parent's stack.
                    unsafe { libc::_exit(1) };
                }
            }
            Lifetime::Own(limit) => {
                // Off the parent's critical path by design: on a busy machine the parent (the
                // container's start) gets the CPU first.
                // SAFETY: setpriority on this process (who 0) takes plain integers.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
                let secs = limit.as_secs().clamp(1, u64::from(u32::MAX)) as libc::c_uint;
                // SAFETY: alarm takes a number of seconds; SIGALRM's default action ends the
                // child when the limit passes, whatever it is blocked in.
                unsafe { libc::alarm(secs) };
                // SAFETY: opening /dev/null with a static NUL-terminated path.
                let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
                if null >= 0 {
                    for fd in 0..3 {
                        // SAFETY: dup2 onto the standard descriptors of this (child) process.
                        unsafe { libc::dup2(null, fd) };
                    }
                    if null > 2 {
                        // SAFETY: closing the descriptor this branch just opened.
                        unsafe { libc::close(null) };
                    }
                }
            }
        }
        drop(ans_rd);
        // without this the child would hold its own request pipe open and never see its end
        drop(req_wr);
        let input = std::fs::File::from(req_rd);
        let out =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(input))).unwrap_or_default();
        let mut w = std::fs::File::from(ans_wr);
        let ok = std::io::Write::write_all(&mut w, &out).is_ok();
        if !ok {
            unheard(&out);
        }
        // SAFETY: terminating the child without returning into the parent's stack.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    drop(ans_wr);
    drop(req_rd);
    Ok(Child {
        pid,
        request: Some(req_wr),
        answer: Some(ans_rd),
    })
}

impl Child {
    /// Pass `bytes` to the child's request pipe and close it. A request larger than a pipe's
    /// buffer (64 KiB) blocks until the child reads it: keep requests small.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(fd) = self.request.take() else {
            return Err(io::Error::other("fork_child: request already sent"));
        };
        let mut w = std::fs::File::from(fd);
        // the child may have died: EPIPE (SIGPIPE is ignored in Rust programs)
        std::io::Write::write_all(&mut w, bytes)
    }

    /// The child's answer, waiting at most `timeout` for it (then SIGKILL), and its exit: an
    /// error unless it exited with status 0.
    pub fn wait(mut self, timeout: std::time::Duration) -> io::Result<Vec<u8>> {
        use std::io::Read;
        // a request never sent reads as end of file in the child
        self.request = None;
        let Some(rd) = self.answer.take() else {
            return Err(io::Error::other("fork_child: answer already read"));
        };
        let deadline = std::time::Instant::now() + timeout;
        let mut out = Vec::new();
        let mut file = std::fs::File::from(rd);
        let mut buf = [0u8; 8192];
        let mut timed_out = false;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut pfd = libc::pollfd {
                fd: file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe {
                libc::poll(
                    &mut pfd,
                    1,
                    left.as_millis().min(i32::MAX as u128) as libc::c_int,
                )
            };
            if n == 0 {
                timed_out = true;
                break;
            }
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => out.extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if timed_out {
            self.kill();
        }
        let status = self.reap();
        if timed_out {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("child did not answer within {timeout:?}"),
            ));
        }
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            return Err(io::Error::other(format!(
                "child failed (wait status {status:#x})"
            )));
        }
        Ok(out)
    }

    /// The answer if the child has already given it (without waiting), else None.
    pub fn answer_now(&mut self) -> Option<io::Result<Vec<u8>>> {
        let fd = self.answer.as_ref()?;
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call; no wait (timeout 0).
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n <= 0 {
            return None;
        }
        // readable: the answer (written in one piece before the child exits) or end of file
        let taken = Child {
            pid: std::mem::take(&mut self.pid),
            request: self.request.take(),
            answer: self.answer.take(),
        };
        Some(taken.wait(std::time::Duration::from_secs(1)))
    }

    /// Let the child go on alone ([`Lifetime::Own`] children only make sense here): it is
    /// neither killed nor waited for; its answer goes to its `unheard` function.
    pub fn detach(mut self) {
        self.request = None;
        self.answer = None;
        self.pid = 0;
    }

    fn kill(&self) {
        // never kill(0, ..): that would be the whole process group
        if self.pid > 0 {
            // SAFETY: `pid` is our own child, not yet reaped (reap sets it to 0).
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }

    fn reap(&mut self) -> libc::c_int {
        let mut status = 0;
        if self.pid > 0 {
            // SAFETY: reaping our own child; `status` is a valid out-pointer.
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
            self.pid = 0;
        }
        status
    }
}

impl Drop for Child {
    /// An unanswered child (the hook gave up on it, or failed before asking) is killed and
    /// reaped: no process of the hook outlives it.
    fn drop(&mut self) {
        if self.pid > 0 {
            self.kill();
            self.reap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Process entry without Rust's runtime start-up
// ---------------------------------------------------------------------------------------------

/// Define the C `main` of a `#![no_main]` binary that calls `$main() -> u8` (the exit status).
///
/// Why: Rust's start-up (`lang_start`) installs a stack-overflow handler, and to find the main
/// thread's stack it calls `pthread_getattr_np`, which reads and parses `/proc/self/maps`; with
/// the alternate signal stack that is about 0.2 ms per exec on the GPU host's VM, a tenth of what
/// a hook for all GPUs costs in all. nvhook runs once per container start, so it starts through
/// this instead and keeps the two parts of that set-up that matter to it ([`start`]): standard
/// descriptors 0-2 that exist, and SIGPIPE ignored. A stack overflow is still caught by the
/// kernel's guard gap (SIGSEGV); only Rust's message about it is lost. On glibc, `std::env::args`
/// works without `lang_start` (std reads argv from glibc's `.init_array` call).
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        // SAFETY: `main` is the one C entry point of this binary (it is `#![no_main]`, so nothing
        // else defines the symbol); it takes the C signature crt1.o calls it with and ignores
        // the arguments, which std reads itself.
        #[unsafe(no_mangle)]
        pub extern "C" fn main(
            _argc: ::std::ffi::c_int,
            _argv: *const *const ::std::ffi::c_char,
        ) -> ::std::ffi::c_int {
            $crate::start();
            let code: u8 = $main();
            $crate::finish();
            ::std::ffi::c_int::from(code)
        }
    };
}

/// What nvhook keeps of Rust's start-up: descriptors 0, 1 and 2 are made to exist (opened on
/// /dev/null if the caller closed them, so no file nvhook opens later can become its stdout or
/// stderr), and SIGPIPE is ignored (a closed pipe is an EPIPE error, not a silent death).
pub fn start() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: three valid pollfd structs owned by this frame; a timeout of 0 never blocks.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) };
    if r >= 0 {
        for p in fds.iter().filter(|p| p.revents & libc::POLLNVAL != 0) {
            // SAFETY: a NUL-terminated literal path; the descriptor is deliberately not wrapped:
            // it is the process's standard descriptor `p.fd` for its whole life.
            let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
            if fd != p.fd {
                // /dev/null cannot be opened in its place: stop, as Rust's runtime does
                // SAFETY: terminating the process; nothing has run yet.
                unsafe { libc::abort() };
            }
        }
    }
    // SAFETY: setting a signal's disposition to SIG_IGN touches no memory of ours.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Flush standard output before the process exits (Rust's runtime does this after `main`).
pub fn finish() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test harness runs tests on threads: in_child must refuse to fork it. (The forking path
    /// itself runs in the nvhook binary, single-threaded: see the MIG and NVIDIA_REQUIRE
    /// end-to-end tests, whose NVML queries go through it.)
    #[test]
    fn refuses_a_multi_threaded_process() {
        let e = in_child(|| b"x".to_vec(), std::time::Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ResourceBusy);
    }
}
