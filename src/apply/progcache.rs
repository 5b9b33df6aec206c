//! Device programs kept loaded between starts, so that a start whose extended program is one an
//! earlier start already loaded skips the kernel's verifier and JIT (`BPF_PROG_LOAD`, about
//! 0.3 ms of a start on the GPU host, and on a busy node, CPU of every core: the JIT's memory
//! changes flush every CPU's TLB).
//!
//! A program is pinned in the host's bpf filesystem as `<dir>/dev-<hash>-<count>` (config
//! `program-cache-dir`, default `/sys/fs/bpf/nvhook`: a 0700 directory of root's, made when
//! missing, and only in a bpf filesystem; none there, nothing is cached). The name says only where to look: a pinned program is attached only when
//! the kernel's copy of its instructions equals the instructions wanted, one for one, so a
//! stale, foreign or colliding pin is never used (it is replaced). Only a program whose
//! instructions the kernel kept as they were loaded is pinned (a kernel that rewrites them,
//! e.g. with `net.core.bpf_jit_harden`, just loads every time). At most [`MAX_PINS`] names:
//! when full, all are unpinned (a program attached to a cgroup stays loaded through that
//! attachment). `rm -r /sys/fs/bpf/nvhook` empties the cache at any time.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use nix::sys::statfs::FsType;
use nvhook_sys::{self as sys, BpfInsn};

/// `BPF_FS_MAGIC`
const BPF_FS: FsType = FsType(0xcafe_4a11);
/// The most programs kept pinned.
pub const MAX_PINS: usize = 256;

/// A loaded `BPF_PROG_TYPE_CGROUP_DEVICE` program with exactly `insns`: pinned in `dir` by an
/// earlier start, or loaded now (and pinned there for the next). No `dir`: loaded.
pub fn load(dir: Option<&Path>, insns: &[BpfInsn]) -> io::Result<OwnedFd> {
    let Some(dir) = dir.filter(|d| usable_dir(d)) else {
        return sys::prog_load_cgroup_device(insns, "GPL");
    };
    let path = format!(
        "{}/dev-{:016x}-{}",
        dir.display(),
        fnv1a(insns),
        insns.len()
    );
    if let Ok(fd) = sys::obj_get(&path) {
        if is_program(&fd, insns) {
            log::debug!("device program from {path}");
            return Ok(fd);
        }
        log::debug!("{path}: not the program wanted; loading it");
    }
    let fd = sys::prog_load_cgroup_device(insns, "GPL")?;
    if is_program(&fd, insns) {
        pin(dir, &fd, &path);
    }
    Ok(fd)
}

/// Is `fd` a device program whose instructions, as the kernel holds them, are `insns`?
fn is_program(fd: &OwnedFd, insns: &[BpfInsn]) -> bool {
    matches!(sys::prog_xlated_insns(fd.as_fd()),
        Ok((ty, got)) if ty == sys::BPF_PROG_TYPE_CGROUP_DEVICE && got == insns)
}

fn pin(dir: &Path, fd: &OwnedFd, path: &str) {
    make_room(dir);
    let mut r = sys::obj_pin(fd.as_fd(), path);
    if matches!(&r, Err(e) if e.kind() == io::ErrorKind::AlreadyExists) {
        // a pin that was not the program wanted (or a racing start's equal one): replaced
        let _ = std::fs::remove_file(path);
        r = sys::obj_pin(fd.as_fd(), path);
    }
    if let Err(e) = r {
        log::debug!("{path}: cannot pin the device program: {e}");
    }
}

/// Unpin everything when [`MAX_PINS`] are there.
fn make_room(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let names: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    if names.len() >= MAX_PINS {
        log::debug!(
            "{}: {} pinned programs; unpinning them",
            dir.display(),
            names.len()
        );
        for p in names {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The pin directory exists (made if missing, in a bpf filesystem only) and is root's alone.
fn usable_dir(dir: &Path) -> bool {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let on_bpffs = dir.parent().is_some_and(|p| {
                nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type() == BPF_FS)
            });
            if !on_bpffs {
                return false;
            }
            let made = std::fs::DirBuilder::new().mode(0o700).create(dir);
            if let Err(e) = made
                && e.kind() != io::ErrorKind::AlreadyExists
            {
                log::debug!("{}: {e}; device programs are not cached", dir.display());
                return false;
            }
            match std::fs::symlink_metadata(dir) {
                Ok(m) => m,
                Err(_) => return false,
            }
        }
        Err(_) => return false,
    };
    let ok = meta.is_dir() && meta.uid() == 0 && meta.mode() & 0o077 == 0;
    if !ok {
        log::debug!(
            "{} is not a directory of root's alone; device programs are not cached",
            dir.display()
        );
    }
    ok
}

/// FNV-1a over the instructions' bytes: where to look, never trusted (see the module doc).
fn fnv1a(insns: &[BpfInsn]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for i in insns {
        let mut bytes = [0u8; 8];
        bytes[0] = i.code;
        bytes[1] = i.regs;
        bytes[2..4].copy_from_slice(&i.off.to_le_bytes());
        bytes[4..8].copy_from_slice(&i.imm.to_le_bytes());
        for b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_depends_on_every_instruction() {
        let a = vec![BpfInsn::default(); 4];
        let mut b = a.clone();
        b[3].imm = 1;
        let mut c = a.clone();
        c[0].regs = 0x10;
        assert_ne!(fnv1a(&a), fnv1a(&b));
        assert_ne!(fnv1a(&a), fnv1a(&c));
        assert_eq!(fnv1a(&a), fnv1a(&a.clone()));
    }
}
