//! Grant the injected devices in the container's device cgroup.
//!
//! Runtimes install a device policy before prestart hooks run (runc and crun both set up cgroups
//! first, so that hooks can extend them). Without a grant, `open("/dev/nvidia0")` fails with EPERM.
//!
//! - cgroup v1 (and hybrid hosts, which have the v1 `devices` controller): one `c MAJ:MIN rwm` line
//!   per device written to the container's `devices.allow`. The kernel refuses a grant the parent
//!   cgroup does not have, so nothing beyond what the host allows can be granted.
//! - cgroup v2: device access is decided by `BPF_PROG_TYPE_CGROUP_DEVICE` programs. Every program
//!   attached to the container's cgroup *and to each ancestor* (with `BPF_F_ALLOW_MULTI`) must
//!   allow an access, so adding a program of our own can only restrict. Instead, for each device
//!   program attached to the container's own (leaf) cgroup, nvhook reads its instructions back
//!   from the kernel, puts "allow exactly these devices" blocks in front of them
//!   ([`super::bpfprog`]) and swaps the new program in atomically (`BPF_F_REPLACE`), on the same
//!   cgroup, with the same attach flags. Everything else the runtime (or systemd) decided still
//!   holds, bit for bit. A program we cannot read back (maps, hardened JIT dumps, LSM refusal)
//!   is an error: a program we cannot extend might deny the device.
//!   An ancestor's program is never modified: it also runs for every other cgroup under that
//!   ancestor, so widening it would let a sibling open the GPU (issue 16). Each ancestor program
//!   is instead evaluated ([`super::bpfeval`]) for every granted node; one that denies it, or
//!   that the evaluator cannot follow, stops the grant with [`Error::CgroupAncestorDenies`]
//!   before anything is changed.
//!   On a hybrid host the same is done for any device program on the unified hierarchy (runc and
//!   systemd attach none there, but one would AND-deny).
//!
//! The cgroup is found from the container process (`/proc/<pid>/cgroup`) and this process's mount
//! table, before nvhook enters the container's mount namespace; the descriptors opened here are
//! used later, so what is granted is exactly the cgroup the process was in.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::Mode;
use nvhook_sys::{self as sys, BpfInsn};

use super::bpfeval::{self, Verdict};
use super::bpfprog;
use crate::error::Error;
use crate::plan::DeviceRule;

/// One line of `/proc/<pid>/cgroup`: hierarchy id, controllers, path.
fn parse_proc_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let (mut v1_devices, mut v2) = (None, None);
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctrls.is_empty() {
            v2 = Some(path.to_owned());
        } else if ctrls.split(',').any(|c| c == "devices") {
            v1_devices = Some(path.to_owned());
        }
    }
    (v1_devices, v2)
}

/// A cgroup mount from mountinfo: (root of the mount inside the hierarchy, mount point).
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    root: String,
    mount_point: PathBuf,
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // `\ooo` up to \377 (a byte); `\777` overflowed a u8 (found by tests/fuzz.rs)
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                u8::try_from(v).ok()
            });
        if let Some(v) = octal {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The v1 devices mount and the cgroup2 mount of this mount namespace.
fn parse_mountinfo(text: &str) -> (Option<CgroupMount>, Option<CgroupMount>) {
    let (mut v1, mut v2) = (None, None);
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let m = CgroupMount {
            root: unescape(pre[3]),
            mount_point: PathBuf::from(unescape(pre[4])),
        };
        match post[0] {
            "cgroup2" if v2.is_none() => v2 = Some(m),
            "cgroup" if v1.is_none() && post[2].split(',').any(|o| o == "devices") => v1 = Some(m),
            _ => {}
        }
    }
    (v1, v2)
}

/// The directory of cgroup `path` (from /proc/pid/cgroup) under `mount`.
fn cgroup_dir(mount: &CgroupMount, path: &str) -> Result<PathBuf, Error> {
    let rel = if mount.root != "/" {
        path.strip_prefix(mount.root.as_str()).unwrap_or(path)
    } else {
        path
    };
    // The kernel writes `/..` components for a cgroup outside the reader's cgroup namespace;
    // joined to the mount point they would lead out of the hierarchy (found by tests/fuzz.rs).
    if rel.split('/').any(|c| c == "..") {
        return Err(Error::CgroupNotFound {
            reason: format!(
                "the process's cgroup {path} lies outside nvhook's cgroup namespace; run the hook in the runtime's cgroup namespace"
            ),
        });
    }
    let rel = rel.trim_start_matches('/');
    Ok(if rel.is_empty() {
        mount.mount_point.clone()
    } else {
        mount.mount_point.join(rel)
    })
}

/// The directories of a process's device cgroup, before they are opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDirs {
    /// The v1 `devices` cgroup.
    pub v1: Option<PathBuf>,
    /// cgroup2 directories from the process's cgroup up to the mount root.
    pub v2: Vec<PathBuf>,
}

/// Where the cgroup of a process lies, from its `/proc/<pid>/cgroup` and our mountinfo (pure:
/// the fuzz harnesses feed it any text).
pub fn cgroup_dirs(proc_cgroup: &str, mountinfo: &str) -> Result<CgroupDirs, Error> {
    dirs_under(proc_cgroup, parse_mountinfo(mountinfo))
}

/// Where the cgroup2 hierarchy is mounted whole, found without reading mountinfo (which the
/// kernel writes out for every mount of the namespace, about 30 us): `/sys/fs/cgroup` when it is
/// a cgroup2 filesystem whose directory is the hierarchy's root (only the root cgroup has no
/// `cgroup.type`). Only for a process in no v1 devices cgroup (`proc_cgroup` names none): a
/// hybrid host, a cgroup namespace's mount, anything else is left to mountinfo.
fn unified_root_mount(proc_cgroup: &str) -> Option<CgroupMount> {
    const MOUNT_POINT: &str = "/sys/fs/cgroup";
    let (v1_path, v2_path) = parse_proc_cgroup(proc_cgroup);
    if v1_path.is_some() || v2_path.is_none() {
        return None;
    }
    let fs = nix::sys::statfs::statfs(MOUNT_POINT).ok()?;
    if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return None;
    }
    let typ = nix::sys::stat::lstat(Path::new(MOUNT_POINT).join("cgroup.type").as_path());
    matches!(typ, Err(nix::errno::Errno::ENOENT)).then(|| CgroupMount {
        root: "/".into(),
        mount_point: PathBuf::from(MOUNT_POINT),
    })
}

/// [`cgroup_dirs`] with the v1 devices mount and the cgroup2 mount found.
fn dirs_under(
    proc_cgroup: &str,
    (v1_mount, v2_mount): (Option<CgroupMount>, Option<CgroupMount>),
) -> Result<CgroupDirs, Error> {
    let (v1_path, v2_path) = parse_proc_cgroup(proc_cgroup);
    let v1 = match (&v1_path, &v1_mount) {
        (Some(p), Some(m)) => Some(cgroup_dir(m, p)?),
        // The kernel lists every v1 hierarchy in /proc/<pid>/cgroup even where none is mounted
        // (a cgroup2-only systemd host on a kernel that also serves v1 elsewhere: `5:devices:/`).
        // The root of a hierarchy nobody mounted confines nothing; the v2 programs decide there.
        (Some(p), None) if p == "/" => None,
        (Some(p), None) => {
            return Err(Error::CgroupNotFound {
                reason: format!(
                    "the process is in v1 devices cgroup {p} but no devices hierarchy is mounted"
                ),
            });
        }
        _ => None,
    };
    let mut v2 = Vec::new();
    if let (Some(p), Some(m)) = (&v2_path, &v2_mount) {
        let leaf = cgroup_dir(m, p)?;
        let mut cur = Some(leaf.as_path());
        while let Some(dir) = cur {
            v2.push(dir.to_owned());
            if dir == m.mount_point {
                break;
            }
            cur = dir.parent().filter(|d| d.starts_with(&m.mount_point));
        }
    }
    if v1.is_none() && v2.is_empty() {
        return Err(Error::CgroupNotFound {
            reason: "the process is in no devices (v1) or cgroup2 hierarchy".into(),
        });
    }
    Ok(CgroupDirs { v1, v2 })
}

/// The container's device cgroup, opened.
pub struct DeviceCgroup {
    v1: Option<(OwnedFd, PathBuf)>,
    /// cgroup2 directories from the container's cgroup up to the mount root.
    v2: Vec<(OwnedFd, PathBuf)>,
    /// pure v2 (no v1 devices controller): a missing program there means "no restriction".
    hybrid: bool,
    /// The process's cgroup as `/proc/<pid>/cgroup` names it (the v1 devices one on a hybrid
    /// host, else the cgroup2 one): where a systemd unit is recognised ([`super::systemd`]).
    pub proc_path: String,
    /// Where extended programs are pinned for reuse (config `program-cache-dir`; None: off).
    program_cache: Option<PathBuf>,
}

fn open_dir(path: &Path) -> Result<OwnedFd, Error> {
    open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::CgroupNotFound {
        reason: format!("cannot open {}: {e}", path.display()),
    })
}

impl DeviceCgroup {
    /// Find the cgroup of process `pid`. `cgroups_path` (the spec's) is only used in messages.
    pub fn open(pid: i32, cgroups_path: Option<&str>) -> Result<DeviceCgroup, Error> {
        let proc_cgroup = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let text = crate::bounded::read_to_string(&proc_cgroup, crate::bounded::PROC_TEXT)
            .map_err(|e| Error::CgroupNotFound {
                reason: format!(
                    "cannot read {}: {e} (spec cgroupsPath: {})",
                    proc_cgroup.display(),
                    cgroups_path.unwrap_or("none")
                ),
            })?;
        if let Some(m) = unified_root_mount(&text) {
            return Self::from_dirs(&text, dirs_under(&text, (None, Some(m)))?);
        }
        let mountinfo = crate::bounded::read_to_string(
            Path::new("/proc/self/mountinfo"),
            crate::bounded::MOUNTINFO,
        )
        .map_err(|e| Error::CgroupNotFound {
            reason: format!("cannot read /proc/self/mountinfo: {e}"),
        })?;
        Self::from_texts(&text, &mountinfo)
    }

    fn from_texts(proc_cgroup: &str, mountinfo: &str) -> Result<DeviceCgroup, Error> {
        Self::from_dirs(proc_cgroup, cgroup_dirs(proc_cgroup, mountinfo)?)
    }

    fn from_dirs(proc_cgroup: &str, dirs: CgroupDirs) -> Result<DeviceCgroup, Error> {
        let (v1_path, v2_path) = parse_proc_cgroup(proc_cgroup);
        let proc_path = match (&dirs.v1, v1_path, v2_path) {
            (Some(_), Some(p), _) | (_, _, Some(p)) => p,
            _ => String::new(),
        };
        let v1 = match dirs.v1 {
            Some(dir) => Some((open_dir(&dir)?, dir)),
            None => None,
        };
        let v2 = dirs
            .v2
            .into_iter()
            .map(|dir| Ok((open_dir(&dir)?, dir)))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(DeviceCgroup {
            hybrid: v1.is_some(),
            v1,
            v2,
            proc_path,
            program_cache: None,
        })
    }

    /// Reuse (and keep) extended device programs in `dir` ([`super::progcache`]); an empty
    /// path: none.
    pub fn with_program_cache(mut self, dir: &Path) -> DeviceCgroup {
        self.program_cache = (!dir.as_os_str().is_empty()).then(|| dir.to_owned());
        self
    }

    /// Which kind of cgroup this is, for logs and `nvhook doctor`.
    pub fn describe(&self) -> String {
        match (&self.v1, self.v2.first()) {
            (Some((_, p)), Some((_, u))) => {
                format!("v1 {} (hybrid, unified {})", p.display(), u.display())
            }
            (Some((_, p)), None) => format!("v1 {}", p.display()),
            (None, Some((_, p))) => format!("v2 {}", p.display()),
            (None, None) => "none".into(),
        }
    }

    /// The v1 `devices.list` of the container's cgroup (its current policy), when it is in a v1
    /// devices hierarchy. Readable without privileges, unlike v2 device programs.
    pub fn v1_list(&self) -> Option<std::io::Result<String>> {
        let (fd, _) = self.v1.as_ref()?;
        Some(
            openat(
                fd.as_fd(),
                "devices.list",
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(std::io::Error::from)
            .and_then(|fd| {
                crate::bounded::read_to_end(std::fs::File::from(fd), crate::bounded::PROC_TEXT)
            })
            .and_then(|b| {
                String::from_utf8(b)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            }),
        )
    }

    /// Allow `rules` (and nothing else) for the container.
    pub fn grant(&self, rules: &[DeviceRule]) -> Result<(), Error> {
        if rules.is_empty() {
            return Ok(());
        }
        // Refuse before anything changes: an ancestor that would deny is never widened.
        if let Some(d) = self.ancestor_denial(rules)? {
            return Err(d.into_error(self.v2.first().map(|(_, p)| p.clone())));
        }
        if let Some((fd, path)) = &self.v1 {
            grant_v1(fd, path, rules)?;
        }
        if let Some((fd, path)) = self.v2.first() {
            grant_v2_leaf(fd, path, rules, self.hybrid, self.program_cache.as_deref())?;
        }
        Ok(())
    }

    /// The nearest ancestor device program (above the container's own cgroup) that would not
    /// let the container use one of `rules`' nodes, read from the kernel. `None`: every
    /// ancestor allows them all, so extending the leaf's programs is enough.
    pub fn ancestor_denial(&self, rules: &[DeviceRule]) -> Result<Option<AncestorDenial>, Error> {
        let mut levels = Vec::new();
        for (fd, path) in self.v2.iter().skip(1) {
            let progs = level_programs(fd, path, rules, self.hybrid)?
                .programs
                .into_iter()
                .map(|p| (p.id, p.insns))
                .collect();
            levels.push((path.clone(), progs));
        }
        Ok(ancestor_denial(&levels, rules))
    }
}

/// An ancestor cgroup whose device program denies (or may deny) a node granted to the
/// container. A distinct outcome so that a caller can act on it (e.g. when the ancestor is the
/// container's own systemd unit, ask systemd for the rule) instead of failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AncestorDenial {
    /// The ancestor cgroup's directory.
    pub ancestor: PathBuf,
    /// The kernel's id of its program.
    pub program: u32,
    /// The node it does not allow.
    pub device: DeviceRule,
    /// "denies", or "may deny (why the evaluator could not follow it)".
    pub reason: String,
}

impl AncestorDenial {
    /// The typed error that stops the start, naming the container's cgroup `container`.
    pub fn into_error(self, container: Option<PathBuf>) -> Error {
        Error::CgroupAncestorDenies {
            container: container.unwrap_or_default(),
            ancestor: self.ancestor,
            device: self.device.to_string(),
            program: self.program,
            reason: self.reason,
        }
    }
}

/// One ancestor cgroup: its directory and its device programs (kernel id, instructions).
pub type AncestorPrograms = (PathBuf, Vec<(u32, Vec<BpfInsn>)>);

/// The first program, nearest level first, that does not allow every rule's node for reading
/// and writing (pure). `levels`: each ancestor's directory with its programs (id, instructions).
pub fn ancestor_denial(
    levels: &[AncestorPrograms],
    rules: &[DeviceRule],
) -> Option<AncestorDenial> {
    for (path, programs) in levels {
        for (id, insns) in programs {
            for r in rules {
                let reason = match bpfeval::decide(insns, r) {
                    Verdict::Allow => continue,
                    Verdict::Deny => "denies".to_owned(),
                    Verdict::Unknown(why) => format!("may deny (it could not be evaluated: {why})"),
                };
                return Some(AncestorDenial {
                    ancestor: path.clone(),
                    program: *id,
                    device: *r,
                    reason,
                });
            }
        }
    }
    None
}

fn grant_v1(dir: &OwnedFd, path: &Path, rules: &[DeviceRule]) -> Result<(), Error> {
    let allow = path.join("devices.allow");
    let fd = openat(
        dir.as_fd(),
        "devices.allow",
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Cgroup {
        path: allow.clone(),
        device: rules[0].to_string(),
        reason: format!("cannot open devices.allow: {e}"),
    })?;
    let mut f = std::fs::File::from(fd);
    for r in rules {
        // One rule per write(2): the kernel parses exactly one entry per write.
        f.write_all(r.v1_line().as_bytes()).map_err(|e| Error::Cgroup {
            path: allow.clone(),
            device: r.to_string(),
            reason: format!(
                "writing {:?} to devices.allow failed: {e} (the parent cgroup must allow the device)",
                r.v1_line()
            ),
        })?;
    }
    Ok(())
}

/// A device program attached to one cgroup, read back from the kernel.
struct Program {
    id: u32,
    fd: OwnedFd,
    insns: Vec<BpfInsn>,
}

/// The device programs attached to one cgroup, with their attach flags.
struct Level {
    flags: u32,
    programs: Vec<Program>,
}

fn cgroup_err(path: &Path, rules: &[DeviceRule], reason: String) -> Error {
    Error::Cgroup {
        path: path.to_owned(),
        device: rules
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        reason,
    }
}

/// Read the device programs attached to `dir` (none: nothing restricts there).
fn level_programs(
    dir: &OwnedFd,
    path: &Path,
    rules: &[DeviceRule],
    hybrid: bool,
) -> Result<Level, Error> {
    let err = |reason: String| cgroup_err(path, rules, reason);
    let (flags, ids) = match sys::prog_query(dir.as_fd(), sys::BPF_CGROUP_DEVICE) {
        Ok(q) => q,
        // No program can be attached (e.g. a kernel without CONFIG_CGROUP_BPF): nothing restricts.
        Err(e) if e.raw_os_error() == Some(libc_einval()) && hybrid => {
            return Ok(Level {
                flags: 0,
                programs: Vec::new(),
            });
        }
        Err(e) => return Err(err(format!("BPF_PROG_QUERY failed: {e}"))),
    };
    let mut programs = Vec::new();
    for id in ids {
        let fd = match sys::prog_get_fd_by_id(id) {
            Ok(fd) => fd,
            // Detached between query and open: nothing to extend.
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) => continue,
            Err(e) => return Err(err(format!("cannot open device program {id}: {e}"))),
        };
        let (ptype, insns) = sys::prog_xlated_insns(fd.as_fd())
            .map_err(|e| err(format!("cannot read device program {id}: {e}")))?;
        if ptype != sys::BPF_PROG_TYPE_CGROUP_DEVICE {
            continue;
        }
        if insns.is_empty() || insns.iter().all(|i| *i == BpfInsn::default()) {
            return Err(err(format!(
                "the kernel did not return device program {id}'s instructions (net.core.bpf_jit_harden=2?); set no-cgroups and grant devices another way"
            )));
        }
        programs.push(Program { id, fd, insns });
    }
    Ok(Level { flags, programs })
}

/// Extend every device program of the container's own cgroup with allow blocks for `rules`.
fn grant_v2_leaf(
    dir: &OwnedFd,
    path: &Path,
    rules: &[DeviceRule],
    hybrid: bool,
    cache: Option<&Path>,
) -> Result<(), Error> {
    let err = |reason: String| cgroup_err(path, rules, reason);
    let level = level_programs(dir, path, rules, hybrid)?;
    for Program { id, fd: old, insns } in level.programs {
        if bpfprog::already_allows(rules, &insns) {
            log::debug!(
                "cgroup {}: program {id} already allows the devices",
                path.display()
            );
            continue;
        }
        // A program that allows them by its own rules (systemd's, rebuilt from the DeviceAllow=
        // nvhook just recorded: src/apply/systemd.rs) is left as it is: replacing it would leave
        // systemd a program it can no longer detach at its next re-application.
        if rules
            .iter()
            .all(|r| bpfeval::decide(&insns, r) == Verdict::Allow)
        {
            log::debug!(
                "cgroup {}: program {id} allows the devices by its own rules",
                path.display()
            );
            continue;
        }
        let new = bpfprog::prepend_allow(rules, &insns);
        let new_fd = super::progcache::load(cache, &new)
            .map_err(|e| err(format!("cannot load the extended device program: {e}")))?;
        attach_in_place(dir, &new_fd, &old, level.flags)
            .map_err(|e| err(format!("cannot swap device program {id}: {e}")))?;
        log::debug!(
            "cgroup {}: program {id} extended ({} -> {} insns)",
            path.display(),
            insns.len(),
            new.len()
        );
    }
    Ok(())
}

fn libc_einval() -> i32 {
    nix::errno::Errno::EINVAL as i32
}

/// Replace `old` with `new` on `cgroup`, keeping its attach mode.
fn attach_in_place(
    cgroup: &OwnedFd,
    new: &OwnedFd,
    old: &OwnedFd,
    flags: u32,
) -> std::io::Result<()> {
    if flags & sys::BPF_F_ALLOW_MULTI == 0 {
        // Exclusive or override mode: attaching again replaces the one program.
        return sys::prog_attach(
            cgroup.as_fd(),
            new.as_fd(),
            sys::BPF_CGROUP_DEVICE,
            flags,
            None,
        );
    }
    match sys::prog_attach(
        cgroup.as_fd(),
        new.as_fd(),
        sys::BPF_CGROUP_DEVICE,
        sys::BPF_F_ALLOW_MULTI | sys::BPF_F_REPLACE,
        Some(old.as_fd()),
    ) {
        Err(e) if e.raw_os_error() == Some(libc_einval()) => {
            // Kernels before 5.6 have no BPF_F_REPLACE: attach, then detach the old one. In
            // between both run, which only restricts more.
            sys::prog_attach(
                cgroup.as_fd(),
                new.as_fd(),
                sys::BPF_CGROUP_DEVICE,
                sys::BPF_F_ALLOW_MULTI,
                None,
            )?;
            sys::prog_detach(cgroup.as_fd(), old.as_fd(), sys::BPF_CGROUP_DEVICE)
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path finds the cgroup2 hierarchy only where mountinfo has it whole at
    /// `/sys/fs/cgroup`, and then names the same directories; a process in a v1 devices cgroup
    /// never takes it. (On the hybrid dev/CI machine `/sys/fs/cgroup` is a tmpfs: None.)
    #[test]
    fn the_unified_fast_path_agrees_with_mountinfo() {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let at_sys_fs_cgroup = mi.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            (pre.get(4) == Some(&"/sys/fs/cgroup")).then(|| {
                (
                    pre[3].to_owned(),
                    post.split(' ').next().unwrap_or("").to_owned(),
                )
            })
        });
        let pc = "0::/some/group\n";
        match unified_root_mount(pc) {
            Some(m) => {
                assert_eq!(
                    at_sys_fs_cgroup,
                    Some(("/".to_owned(), "cgroup2".to_owned()))
                );
                assert_eq!(
                    dirs_under(pc, (None, Some(m))).unwrap(),
                    CgroupDirs {
                        v1: None,
                        v2: vec![
                            PathBuf::from("/sys/fs/cgroup/some/group"),
                            PathBuf::from("/sys/fs/cgroup/some"),
                            PathBuf::from("/sys/fs/cgroup"),
                        ],
                    }
                );
            }
            None => assert!(
                at_sys_fs_cgroup
                    .as_ref()
                    .is_none_or(|(root, fs)| fs != "cgroup2" || root != "/")
                    || Path::new("/sys/fs/cgroup/cgroup.type").exists(),
                "{at_sys_fs_cgroup:?}"
            ),
        }
        assert!(unified_root_mount("5:devices:/x\n0::/x\n").is_none());
        assert!(unified_root_mount("5:devices:/x\n").is_none());
        assert!(unified_root_mount("").is_none());
    }

    #[test]
    fn proc_cgroup_forms() {
        let hybrid = "12:hugetlb:/\n5:devices:/runc-test/c1\n1:name=systemd:/x\n0::/runc-test/c1\n";
        assert_eq!(
            parse_proc_cgroup(hybrid),
            (Some("/runc-test/c1".into()), Some("/runc-test/c1".into()))
        );
        assert_eq!(
            parse_proc_cgroup("0::/system.slice/x.scope\n"),
            (None, Some("/system.slice/x.scope".into()))
        );
        assert_eq!(
            parse_proc_cgroup("garbage\n3:cpu,devices:/a\n"),
            (Some("/a".into()), None)
        );
    }

    #[test]
    fn ancestor_denial_names_the_nearest_program_that_does_not_allow() {
        use crate::devnode::NodeType;
        let dev = |major, minor| DeviceRule {
            kind: NodeType::Char,
            major,
            minor,
        };
        let (gpu, fuse) = (dev(195, 0), dev(10, 229));
        let allows = bpfprog::allow_only(&[gpu, fuse]);
        let denies_gpu = bpfprog::allow_only(&[fuse]);
        let lvl = |p: &str, progs: Vec<(u32, Vec<BpfInsn>)>| (PathBuf::from(p), progs);
        assert_eq!(ancestor_denial(&[], &[gpu]), None);
        assert_eq!(
            ancestor_denial(
                &[lvl("/cg/a", vec![(7, allows.clone())]), lvl("/cg", vec![])],
                &[gpu, fuse]
            ),
            None
        );
        let d = ancestor_denial(
            &[
                lvl("/cg/a", vec![(7, allows.clone())]),
                lvl("/cg", vec![(8, allows.clone()), (9, denies_gpu.clone())]),
                lvl("/", vec![(10, denies_gpu)]),
            ],
            &[fuse, gpu],
        )
        .unwrap();
        assert_eq!(
            d,
            AncestorDenial {
                ancestor: "/cg".into(),
                program: 9,
                device: gpu,
                reason: "denies".into()
            }
        );
        let e = d.into_error(Some("/cg/a/ctr".into())).to_string();
        for want in ["/cg ", "c 195:0", "program 9", "/cg/a/ctr", "DeviceAllow="] {
            assert!(e.contains(want), "{want:?} in {e}");
        }
        // a program the evaluator cannot follow (a helper call) may deny: refused too
        let call = vec![
            nvhook_sys::BpfInsn {
                code: 0x85,
                regs: 0,
                off: 0,
                imm: 1,
            },
            nvhook_sys::BpfInsn {
                code: 0x95,
                regs: 0,
                off: 0,
                imm: 0,
            },
        ];
        let d = ancestor_denial(&[lvl("/cg", vec![(3, call)])], &[gpu]).unwrap();
        assert!(d.reason.starts_with("may deny"), "{}", d.reason);
    }

    #[test]
    fn mountinfo_and_paths() {
        let mi = "30 25 0:26 / /sys/fs/cgroup/devices rw,relatime shared:10 - cgroup cgroup rw,devices\n\
                  31 25 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                  40 25 0:28 /sub /mnt/cg\\040x rw - cgroup2 cgroup2 rw\n";
        let (v1, v2) = parse_mountinfo(mi);
        let v1 = v1.unwrap();
        assert_eq!(v1.mount_point, Path::new("/sys/fs/cgroup/devices"));
        assert_eq!(
            cgroup_dir(&v1, "/runc/c1").unwrap(),
            Path::new("/sys/fs/cgroup/devices/runc/c1")
        );
        assert_eq!(
            cgroup_dir(&v2.unwrap(), "/").unwrap(),
            Path::new("/sys/fs/cgroup/unified")
        );
        let sub = CgroupMount {
            root: "/sub".into(),
            mount_point: "/mnt/cg x".into(),
        };
        assert_eq!(
            cgroup_dir(&sub, "/sub/c1").unwrap(),
            Path::new("/mnt/cg x/c1")
        );
        // found by tests/fuzz.rs: a cgroup outside our namespace is refused, not joined
        assert!(cgroup_dir(&v1, "/../../etc").is_err());
        let d = cgroup_dirs("0::/../x\n", mi).unwrap_err();
        assert!(d.to_string().contains("outside"), "{d}");
        assert_eq!(unescape("/mnt/cg\\040x"), "/mnt/cg x");
        assert_eq!(unescape("/a\\777"), "/a\\777");
        assert_eq!(unescape("/a\\04"), "/a\\04");
    }

    #[test]
    fn unmounted_v1_devices_root_is_ignored_not_refused() {
        // the systemd-nspawn test host: cgroup2 only, the kernel still lists its v1 hierarchies
        let proc = "5:devices:/\n1:name=systemd:/\n0::/system.slice/c1.scope\n";
        let mi = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        let d = cgroup_dirs(proc, mi).unwrap();
        assert_eq!(d.v1, None);
        assert_eq!(
            d.v2,
            [
                Path::new("/sys/fs/cgroup/system.slice/c1.scope"),
                Path::new("/sys/fs/cgroup/system.slice"),
                Path::new("/sys/fs/cgroup"),
            ]
        );
        // a v1 devices cgroup below the root confines: not mounted there is still an error
        let e = cgroup_dirs("5:devices:/runc/c1\n0::/c1\n", mi).unwrap_err();
        assert!(
            e.to_string().contains("no devices hierarchy is mounted"),
            "{e}"
        );
    }
}
