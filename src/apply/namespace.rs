//! Entering the container's mount namespace.
//!
//! `setns(CLONE_NEWNS)` fails with EINVAL in a process that shares its filesystem context, i.e.
//! one with more than one thread. nvhook never starts a thread, so it can enter directly.
//! At prestart/createRuntime the container's process exists in its own namespaces but has not
//! pivoted yet: the rootfs is still reachable at `root.path` inside that namespace.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::fcntl::{OFlag, open};
use nix::sched::{CloneFlags, setns};
use nix::sys::stat::Mode;

use crate::error::Error;

/// An open handle on a process's mount namespace.
pub struct MountNamespace {
    fd: OwnedFd,
    path: PathBuf,
}

impl MountNamespace {
    /// Open `/proc/<pid>/ns/mnt`. Fails clearly if the process is gone.
    pub fn of_pid(pid: i32) -> Result<MountNamespace, Error> {
        let path = PathBuf::from(format!("/proc/{pid}/ns/mnt"));
        let fd =
            open(&path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|source| {
                Error::ProcessGone {
                    pid,
                    path: path.clone(),
                    source,
                }
            })?;
        Ok(MountNamespace { fd, path })
    }

    /// Move this process into the namespace, for good.
    pub fn enter(self) -> Result<(), Error> {
        setns(&self.fd, CloneFlags::CLONE_NEWNS).map_err(|source| Error::Setns {
            path: self.path.clone(),
            source,
        })
    }
}
