//! Entering the container's mount namespace.
//!
//! `setns(CLONE_NEWNS)` fails with EINVAL in a process that shares its filesystem context, i.e.
//! one with more than one thread. nvhook never starts a thread, so it can enter directly.
//! At prestart/createRuntime the container's process exists in its own namespaces but has not
//! pivoted yet: the rootfs is still reachable at `root.path` inside that namespace.
//!
//! The pid comes from the runtime, which holds it: the container's process is its child and is
//! not reaped while the hook runs, so the pid cannot be reused by another process meanwhile (a
//! zombie has no namespaces left, and opening them fails). What the runtime cannot rule out is a
//! container without a mount namespace of its own, or a stale state: a process in nvhook's own
//! mount namespace is refused, since applying there would mount onto the host.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::fcntl::{OFlag, open};
use nix::sched::{CloneFlags, setns};
use nix::sys::stat::{Mode, fstat, stat};

use crate::error::Error;

/// An open handle on a process's mount namespace.
pub struct MountNamespace {
    fd: OwnedFd,
    path: PathBuf,
}

impl MountNamespace {
    /// Open `/proc/<pid>/ns/mnt`. Fails clearly if the process is gone, or if it shares nvhook's
    /// own mount namespace (the host's).
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
        let ns = MountNamespace { fd, path };
        if ns.is_own()? {
            return Err(Error::SharedMountNamespace { pid, path: ns.path });
        }
        Ok(ns)
    }

    /// Is this the namespace nvhook itself is in? Namespaces are the same when their nsfs
    /// inodes are (what `ls -l /proc/PID/ns/mnt` shows).
    fn is_own(&self) -> Result<bool, Error> {
        let own_path = "/proc/self/ns/mnt";
        let own = stat(own_path).map_err(|source| Error::Io {
            what: format!("cannot stat {own_path}"),
            source: source.into(),
        })?;
        let theirs = fstat(&self.fd).map_err(|source| Error::Io {
            what: format!("cannot stat {}", self.path.display()),
            source: source.into(),
        })?;
        Ok(own.st_dev == theirs.st_dev && own.st_ino == theirs.st_ino)
    }

    /// Move this process into the namespace, for good.
    pub fn enter(self) -> Result<(), Error> {
        setns(&self.fd, CloneFlags::CLONE_NEWNS).map_err(|source| Error::Setns {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_is_refused_and_a_gone_pid_is_named() {
        let me = std::process::id() as i32;
        match MountNamespace::of_pid(me) {
            Err(Error::SharedMountNamespace { pid, .. }) => assert_eq!(pid, me),
            Err(e) => panic!("expected SharedMountNamespace, got {e}"),
            Ok(_) => panic!("nvhook's own mount namespace must be refused"),
        }
        // pid_max is at most 2^22: this pid cannot exist
        match MountNamespace::of_pid(i32::MAX) {
            Err(Error::ProcessGone { pid, .. }) => assert_eq!(pid, i32::MAX),
            Err(e) => panic!("expected ProcessGone, got {e}"),
            Ok(_) => panic!("pid {} exists?", i32::MAX),
        }
    }
}
