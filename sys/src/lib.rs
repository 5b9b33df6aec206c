//! The parts of nvhook that need `unsafe` code or talk to the kernel and libraries directly: the
//! new mount API (`open_tree`, `mount_setattr`, `move_mount`, a detached tmpfs), `bpf(2)` for
//! cgroup v2 device programs, the NVML calls nvml-wrapper does not wrap (MIG instance ids),
//! descriptors made close-on-exec and closures run in a forked child, and the process entry point
//! without Rust's runtime start-up (`entry!`, [`start`], [`finish`]).
//!
//! This is the only crate of nvhook that contains `unsafe` code. Each wrapper passes pointers to
//! memory it owns for the duration of the call, checks the return value, and wraps every returned
//! file descriptor in an `OwnedFd` at once so it cannot leak or be closed twice.
//!
//! One module per subject; every public name is re-exported here, so callers write
//! `nvhook_sys::name`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

mod bpf;
mod entry;
mod mount;
mod nvml;
mod process;

pub use bpf::*;
pub use entry::*;
pub use mount::*;
pub use nvml::*;
pub use process::*;

pub(crate) fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Take ownership of a descriptor a syscall just returned.
pub(crate) fn owned(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = cvt(ret)? as RawFd;
    // SAFETY: the kernel returned a new descriptor that nothing else owns; OwnedFd closes it once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
