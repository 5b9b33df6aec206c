//! `bpf(2)`: just what a cgroup v2 device program needs (load, attach, query, pin, read back).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use crate::{cvt, owned};

// ---------------------------------------------------------------------------------------------
// bpf(2): just what a cgroup v2 device program needs
// ---------------------------------------------------------------------------------------------

pub const BPF_PROG_LOAD: libc::c_long = 5;
pub const BPF_OBJ_PIN: libc::c_long = 6;
pub const BPF_OBJ_GET: libc::c_long = 7;
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

/// The program's instructions as the kernel holds them after verification ("xlated"). One
/// call into a buffer for [`XLATED_GUESS`] instructions (device programs are far smaller); a
/// second only for a larger program.
pub fn prog_xlated_insns(prog: BorrowedFd<'_>) -> io::Result<(u32, Vec<BpfInsn>)> {
    let mut insns = vec![BpfInsn::default(); XLATED_GUESS];
    let (prog_type, len) = xlated_into(prog, &mut insns)?;
    let n = len / std::mem::size_of::<BpfInsn>();
    if n > insns.len() {
        insns = vec![BpfInsn::default(); n];
        let (_, len) = xlated_into(prog, &mut insns)?;
        insns.truncate(len / std::mem::size_of::<BpfInsn>());
    } else {
        insns.truncate(n);
    }
    Ok((prog_type, insns))
}

/// How many instructions [`prog_xlated_insns`] makes room for at first.
pub const XLATED_GUESS: usize = 1024;

/// `BPF_OBJ_GET_INFO_BY_FD` with `insns` as the buffer for the xlated instructions: the
/// program's type and the byte length of all its xlated instructions (the kernel copies at
/// most the buffer's size).
fn xlated_into(prog: BorrowedFd<'_>, insns: &mut [BpfInsn]) -> io::Result<(u32, usize)> {
    // struct bpf_prog_info: type@0 u32, xlated_prog_len@20 u32, xlated_prog_insns@32 u64
    let mut info = [0u8; 256];
    let cap = std::mem::size_of_val(insns) as u32;
    info[20..24].copy_from_slice(&cap.to_ne_bytes());
    info[32..40].copy_from_slice(&(insns.as_mut_ptr() as u64).to_ne_bytes());
    let mut a = Attr::new();
    a.u32(0, prog.as_raw_fd() as u32)
        .u32(4, info.len() as u32)
        .u64(8, info.as_mut_ptr() as u64);
    cvt(bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a))?;
    let prog_type = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
    let len = u32::from_ne_bytes([info[20], info[21], info[22], info[23]]) as usize;
    Ok((prog_type, len))
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

/// Pin `obj` (a program) at `path`, a new name in a bpf filesystem: it stays loaded while the
/// name exists.
pub fn obj_pin(obj: BorrowedFd<'_>, path: &str) -> io::Result<()> {
    let c = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut a = Attr::new();
    a.u64(0, c.as_ptr() as u64).u32(8, obj.as_raw_fd() as u32);
    cvt(bpf(BPF_OBJ_PIN, &mut a)).map(drop)
}

/// A descriptor for the object pinned at `path` in a bpf filesystem.
pub fn obj_get(path: &str) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut a = Attr::new();
    a.u64(0, c.as_ptr() as u64);
    owned(bpf(BPF_OBJ_GET, &mut a))
}
