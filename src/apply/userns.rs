//! Rootless runtimes: nvhook run inside a user namespace.
//!
//! Rootless podman (and `runc --rootless`) run their hooks as the user who started them, inside
//! that user's user namespace (podman's pause process holds it), where the user is uid 0 with a
//! full capability set that counts only for what that namespace owns. Measured on Debian 12,
//! podman 4.3 + crun 1.8 (docs/rootless.md):
//!
//! - the container's mount namespace is owned by the same user namespace, so nvhook can enter
//!   it and bind-mount host files into it (`open_tree` + `mount_setattr` + `move_mount`), as
//!   when it runs as root. The bind mounts of the host's mounts are *locked* there: flags the
//!   source mount has (`nodev`, `nosuid`, `ro`, `noexec`) cannot be cleared. nvhook only ever
//!   adds flags, so that is no obstacle, except for a device node whose host mount is `nodev`:
//!   it would be present and unusable, so it is refused here, before anything is mounted;
//! - the device cgroup cannot be changed: v1 `devices.allow` needs `CAP_SYS_ADMIN` in the
//!   initial namespace and cgroup v2 device programs need `CAP_BPF`/`CAP_SYS_ADMIN` there. The
//!   runtime cannot install a device policy either, so none restricts the container (the nodes
//!   of the tests open as with no cgroup at all); nvhook leaves the cgroup alone;
//! - whether the container can open a node, or read a library, is decided by the host's file
//!   permissions against the user's own host ids; capabilities do not help for files whose
//!   owner is not mapped into the namespace (root's `/dev/nvidia*`). So each node and file is
//!   checked with the container process's credentials before anything is mounted, and a node it
//!   could not open is an error naming the node, who cannot open it and what to change.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::statvfs::{FsFlags, statvfs};
use nix::unistd::{AccessFlags, Gid, Uid};

use super::cgroup::DeviceCgroup;
use crate::error::Error;
use crate::plan::{DeviceRule, Plan};
use crate::state::ProcessUser;

/// Where nvhook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// root of the initial user namespace: everything is possible.
    HostRoot,
    /// inside a user namespace (a rootless runtime): `outside_uid` is the host uid that the
    /// namespace's uid 0 is, when the namespace maps one.
    UserNamespace { outside_uid: Option<u32> },
}

impl Privilege {
    /// Read this process's `uid_map` and capabilities. Fails when nvhook cannot mount at all.
    pub fn detect() -> Result<Privilege, Error> {
        let read = |p: &str| {
            crate::bounded::read_to_string(Path::new(p), crate::bounded::PROC_TEXT).map_err(|e| {
                Error::Rootless {
                    what: p.to_owned(),
                    reason: format!("cannot read it: {e}"),
                    hint: "nvhook needs /proc mounted".into(),
                }
            })
        };
        let privilege = from_uid_map(&read("/proc/self/uid_map")?);
        if !has_cap_sys_admin(&read("/proc/self/status")?) {
            return Err(Error::Rootless {
                what: format!("nvhook (uid {})", nix::unistd::geteuid()),
                reason: "it has no CAP_SYS_ADMIN in its user namespace, so it cannot mount into the container".into(),
                hint: "nvhook runs as a hook of a runtime running as root, or of rootless podman (which runs hooks as root of the user's namespace); a runtime started by a user that runs its hooks outside its user namespace (runc or crun run directly) cannot be served".into(),
            });
        }
        Ok(privilege)
    }

    pub fn in_user_namespace(&self) -> bool {
        matches!(self, Privilege::UserNamespace { .. })
    }

    /// Where this process runs, from its `uid_map` alone (no capability check): the poststop
    /// hook needs no mount rights. The initial namespace when the map cannot be read.
    pub fn from_uid_map_file() -> Privilege {
        std::fs::read_to_string("/proc/self/uid_map")
            .map(|t| from_uid_map(&t))
            .unwrap_or(Privilege::HostRoot)
    }

    /// For the record directory of [`crate::cleanup`]: None as root of the host, else the host
    /// uid that owns this user namespace (if it maps one).
    pub fn rootless_uid(&self) -> Option<Option<u32>> {
        match self {
            Privilege::HostRoot => None,
            Privilege::UserNamespace { outside_uid } => Some(*outside_uid),
        }
    }
}

/// The initial user namespace maps all 2^32-1 ids onto themselves; any other map is a user
/// namespace.
fn from_uid_map(text: &str) -> Privilege {
    let lines: Vec<Vec<u64>> = text
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .collect();
    if lines.len() == 1 && lines[0] == [0, 0, u64::from(u32::MAX)] {
        return Privilege::HostRoot;
    }
    let outside_uid = lines
        .iter()
        .find(|l| l.len() == 3 && l[0] == 0 && l[2] > 0)
        .and_then(|l| u32::try_from(l[1]).ok());
    Privilege::UserNamespace { outside_uid }
}

fn has_cap_sys_admin(status: &str) -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// One file the container's process must be able to use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Need {
    host: PathBuf,
    /// where the container sees it
    target: String,
    access: AccessFlags,
    device: bool,
    /// an IPC socket or directory (nvidia-persistenced, MPS): the driver works without them, so
    /// one the user cannot use is a warning
    optional: bool,
}

/// What the plan asks of the host's files: read+write for device nodes and IPC sockets/dirs,
/// read for libraries and data, read+execute for programs.
fn needs(plan: &Plan) -> Vec<Need> {
    let mut v: Vec<Need> = plan
        .devices
        .iter()
        .map(|d| Need {
            host: d.node.host_path.clone(),
            target: d.path.clone(),
            access: AccessFlags::R_OK | AccessFlags::W_OK,
            device: true,
            optional: false,
        })
        .collect();
    for m in &plan.mounts {
        let mut access = AccessFlags::R_OK;
        if !m.flags.readonly {
            access |= AccessFlags::W_OK;
        }
        let executable = std::fs::metadata(&m.source)
            .is_ok_and(|md| md.is_file() && md.mode() & 0o111 != 0 && !m.flags.noexec);
        if m.directory || executable {
            access |= AccessFlags::X_OK;
        }
        v.push(Need {
            host: m.source.clone(),
            target: m.target.clone(),
            access,
            device: false,
            optional: !m.flags.readonly,
        });
    }
    v
}

fn access_names(a: AccessFlags) -> String {
    [
        (AccessFlags::R_OK, "read"),
        (AccessFlags::W_OK, "write"),
        (AccessFlags::X_OK, "execute"),
    ]
    .iter()
    .filter(|(f, _)| a.contains(*f))
    .map(|(_, n)| *n)
    .collect::<Vec<_>>()
    .join("+")
}

/// The container's v1 device policy, as far as it can be read from a user namespace: the
/// cgroup's description and its `devices.list`. `None` (with an info log) where there is none to
/// read: cgroup v2, whose device programs only the initial namespace may query.
pub fn device_policy(pid: i32, cgroups_path: Option<&str>) -> Option<(String, String)> {
    let cg = match DeviceCgroup::open(pid, cgroups_path) {
        Ok(cg) => cg,
        Err(e) => {
            log::info!("{CGROUP_NOTE} ({e})");
            return None;
        }
    };
    match cg.v1_list() {
        Some(Ok(list)) => {
            log::info!("{CGROUP_NOTE}; checking its v1 policy {}", cg.describe());
            Some((cg.describe(), list))
        }
        Some(Err(e)) => {
            log::info!("{CGROUP_NOTE}; its v1 policy is unreadable: {e}");
            None
        }
        None => {
            log::info!("{CGROUP_NOTE} ({})", cg.describe());
            None
        }
    }
}

/// Does a v1 `devices.list` (`a *:* rwm`, `c 195:* rw`, ...) let the container read and write
/// the device of `rule`?
fn list_allows(list: &str, rule: &DeviceRule) -> bool {
    let num = |f: &str, v: u64| f == "*" || f.parse::<u64>().is_ok_and(|n| n == v);
    list.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let [kind, dev, access] = f[..] else {
            return false;
        };
        let Some((maj, min)) = dev.split_once(':') else {
            return false;
        };
        (kind == "a" || kind.starts_with(rule.kind.letter()))
            && num(maj, rule.major)
            && num(min, rule.minor)
            && access.contains('r')
            && access.contains('w')
    })
}

/// Check, before anything is mounted, that what `plan` mounts will work for the container's
/// process in this user namespace: the device policy (v1, when `policy` was read) lets the
/// nodes through, and the process may use every node and file. Errors name what would not.
pub fn preflight(
    plan: &Plan,
    user: &ProcessUser,
    privilege: Privilege,
    policy: Option<&(String, String)>,
) -> Result<(), Error> {
    if let Some((cgroup, list)) = policy {
        check_policy(plan, cgroup, list)?;
    }
    let needs = needs(plan);
    check_nodev(&needs)?;
    let (optional, denied): (Vec<_>, Vec<_>) = denied_to(user, &needs)?
        .into_iter()
        .partition(|(n, _)| n.optional);
    let who = describe_user(user, privilege);
    for (n, errno) in &optional {
        log::warn!(
            "{} ({}): the container's process ({who}) cannot {} it ({errno}); mounted anyway, the GPU works without it",
            n.host.display(),
            n.target,
            access_names(n.access)
        );
    }
    if denied.is_empty() {
        return Ok(());
    }
    Err(unusable(&denied, user, &who))
}

/// The device cgroup's v1 policy (`devices.list` of `cgroup`) allows every rule of `plan`.
fn check_policy(plan: &Plan, cgroup: &str, list: &str) -> Result<(), Error> {
    let denied: Vec<String> = plan
        .cgroup_rules
        .iter()
        .filter(|r| !list_allows(list, r))
        .map(|r| r.to_string())
        .collect();
    if !denied.is_empty() {
        return Err(Error::Rootless {
            what: format!("device cgroup {cgroup}"),
            reason: format!(
                "its policy (devices.list) does not allow {}, and nothing in a user namespace can change it",
                denied.join(", ")
            ),
            hint: "have root allow these devices in that cgroup (devices.allow) or one of its parents, or start podman from a cgroup without a device policy".into(),
        });
    }
    Ok(())
}

/// No device node lies on a nodev mount (a user namespace cannot lift the flag).
fn check_nodev(needs: &[Need]) -> Result<(), Error> {
    let nodev: Vec<String> = needs
        .iter()
        .filter(|n| n.device)
        .filter(|n| statvfs(&n.host).is_ok_and(|s| s.flags().contains(FsFlags::ST_NODEV)))
        .map(|n| n.host.display().to_string())
        .collect();
    if !nodev.is_empty() {
        return Err(Error::Rootless {
            what: format!("device node(s) {}", nodev.join(", ")),
            reason: "they lie on a host mount with nodev, a flag that a user namespace cannot lift: they would be present in the container but could not be opened".into(),
            hint: "give dev-root a directory on a mount without nodev (the host's /dev is one)".into(),
        });
    }
    Ok(())
}

/// The error for the `denied` files: each with its mode and what it needs, and the fix.
fn unusable(denied: &[(Need, String)], user: &ProcessUser, who: &str) -> Error {
    let list = denied
        .iter()
        .map(|(n, errno)| {
            let mode = std::fs::metadata(&n.host)
                .map(|m| format!("mode {:04o}", m.mode() & 0o7777))
                .unwrap_or_else(|e| e.to_string());
            format!(
                "{} ({}; needs {}: {errno})",
                n.host.display(),
                mode,
                access_names(n.access)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let hint = if denied.iter().any(|(n, _)| n.device) {
        if user.keep_groups {
            "make the nodes accessible to this user on the host: add the user to the group that owns them (ls -l the node on the host), or make them world read-write (NVIDIA: the nvidia module's NVreg_DeviceFileMode=0666, its default)"
        } else {
            "make the nodes accessible to this user on the host: add the user to the group that owns them (ls -l the node on the host) and run podman with --group-add keep-groups (the container otherwise drops the user's supplementary groups), or make them world read-write (NVIDIA: the nvidia module's NVreg_DeviceFileMode=0666, its default)"
        }
    } else {
        "make the driver's files readable (and its programs executable) by this user on the host"
    };
    Error::Rootless {
        what: list,
        reason: format!("the container's process ({who}) could not use them"),
        hint: hint.into(),
    }
}

fn describe_user(user: &ProcessUser, privilege: Privilege) -> String {
    let outside = match privilege {
        Privilege::UserNamespace {
            outside_uid: Some(h),
        } if user.uid == 0 => format!(", host uid {h}"),
        _ => String::new(),
    };
    let groups = if user.keep_groups {
        "the user's own supplementary groups (keep-groups)".to_owned()
    } else if user.additional_gids.is_empty() {
        "no supplementary groups".to_owned()
    } else {
        format!("groups {:?}", user.additional_gids)
    };
    format!(
        "uid {} gid {} in the user namespace{outside}, {groups}",
        user.uid, user.gid
    )
}

/// Ask the kernel, with the container process's credentials, which of `needs` it would be
/// refused. `access(2)` checks without opening: opening a GPU node has side effects.
///
/// The credentials are taken in a forked child (nvhook keeps its own): the supplementary groups
/// as the runtime will set them (the spec's, or the user's own with keep-groups), then gid, uid.
fn denied_to(user: &ProcessUser, needs: &[Need]) -> Result<Vec<(Need, String)>, Error> {
    let paths: Vec<(PathBuf, AccessFlags)> =
        needs.iter().map(|n| (n.host.clone(), n.access)).collect();
    let user_c = user.clone();
    let answer = nvhook_sys::in_child(
        move || check_as(&user_c, &paths).into_bytes(),
        std::time::Duration::from_secs(10),
    )
    .map_err(|e| Error::Rootless {
        what: "the device and file access check".into(),
        reason: format!("its child process failed: {e}"),
        hint: "report this as a bug with NVHOOK_LOG=debug output".into(),
    })?;
    let answer = String::from_utf8_lossy(&answer);
    parse_answer(&answer, needs)
}

/// In the child: become the container's user, then `access` each path. One line per refusal,
/// `index errno`, or `creds errno` when the credentials could not be taken.
fn check_as(user: &ProcessUser, paths: &[(PathBuf, AccessFlags)]) -> String {
    let creds = || -> nix::Result<()> {
        if !user.keep_groups {
            let groups: Vec<Gid> = user
                .additional_gids
                .iter()
                .map(|g| Gid::from_raw(*g))
                .collect();
            nix::unistd::setgroups(&groups)?;
        }
        let gid = Gid::from_raw(user.gid);
        nix::unistd::setresgid(gid, gid, gid)?;
        let uid = Uid::from_raw(user.uid);
        nix::unistd::setresuid(uid, uid, uid)
    };
    if let Err(e) = creds() {
        return format!("creds {e}\n");
    }
    let mut out = String::new();
    for (i, (p, a)) in paths.iter().enumerate() {
        if let Err(e) = nix::unistd::access(p.as_path(), *a) {
            out.push_str(&format!("{i} {e}\n"));
        }
    }
    out
}

fn parse_answer(answer: &str, needs: &[Need]) -> Result<Vec<(Need, String)>, Error> {
    let mut denied = Vec::new();
    for line in answer.lines() {
        let (key, errno) = line.split_once(' ').unwrap_or((line, ""));
        if key == "creds" {
            return Err(Error::Rootless {
                what: "the container's user".into(),
                reason: format!("its credentials cannot be taken in this user namespace ({errno})"),
                hint:
                    "check process.user and the namespace's uid/gid maps (newuidmap, /etc/subuid)"
                        .into(),
            });
        }
        if let Some(n) = key.parse::<usize>().ok().and_then(|i| needs.get(i)) {
            denied.push((n.clone(), errno.to_owned()));
        }
    }
    Ok(denied)
}

/// Why nvhook leaves the device cgroup alone in a user namespace (an info log).
pub const CGROUP_NOTE: &str = "running in a user namespace (rootless): the device cgroup is left as it is; \
     it cannot be changed from a user namespace, and a rootless runtime cannot restrict devices either";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devnode::{HostNode, NodeType};
    use crate::plan::MountFlags;

    #[test]
    fn uid_maps() {
        assert_eq!(
            from_uid_map("         0          0 4294967295\n"),
            Privilege::HostRoot
        );
        assert_eq!(
            from_uid_map("         0       1001          1\n         1     100000      65536\n"),
            Privilege::UserNamespace {
                outside_uid: Some(1001)
            }
        );
        // a namespace that does not map 0 (runc --rootless with another map)
        assert_eq!(
            from_uid_map("1000 1000 1\n"),
            Privilege::UserNamespace { outside_uid: None }
        );
    }

    #[test]
    fn v1_device_lists() {
        let rule = |major, minor| DeviceRule {
            kind: NodeType::Char,
            major,
            minor,
        };
        assert!(list_allows("a *:* rwm\n", &rule(195, 0)));
        let list = "c 1:3 rwm\nc 195:* rw\nc 120:0 r\nb 120:1 rwm\nc 5:* m\ngarbage\nc x:1 rw\n";
        assert!(list_allows(list, &rule(1, 3)));
        assert!(list_allows(list, &rule(195, 7)));
        assert!(!list_allows(list, &rule(120, 0)), "read only");
        assert!(!list_allows(list, &rule(120, 1)), "block, not char");
        assert!(!list_allows(list, &rule(5, 0)), "mknod only");
        assert!(!list_allows(list, &rule(1, 11)));
        assert!(!list_allows("", &rule(1, 3)));
    }

    #[test]
    fn cap_sys_admin_from_status() {
        assert!(has_cap_sys_admin("Name:\tx\nCapEff:\t000001ffffffffff\n"));
        assert!(!has_cap_sys_admin("CapEff:\t0000000000000000\n"));
        assert!(!has_cap_sys_admin("CapEff:\tzz\n"));
        assert!(!has_cap_sys_admin(""));
    }

    #[test]
    fn what_each_planned_file_needs() {
        let mut plan = Plan::default();
        plan.add_device(HostNode {
            name: "nvidia0".into(),
            host_path: "/dev/null".into(),
            kind: NodeType::Char,
            major: 1,
            minor: 3,
        });
        plan.add_mount(
            "/bin/sh".into(),
            "/usr/bin/sh".into(),
            false,
            MountFlags::CODE,
        );
        plan.add_mount(
            "/etc/hostname".into(),
            "/etc/x".into(),
            false,
            MountFlags::DATA,
        );
        plan.add_mount("/tmp".into(), "/tmp/ipc".into(), true, MountFlags::IPC);
        let n = needs(&plan);
        let names: Vec<String> = n.iter().map(|n| access_names(n.access)).collect();
        assert_eq!(
            names,
            ["read+write", "read+execute", "read", "read+write+execute"]
        );
        assert!(n[0].device && !n[1].device);
        assert!(n[3].optional && !n[0].optional && !n[2].optional);
    }

    #[test]
    fn answers_are_parsed_strictly() {
        let need = Need {
            host: "/dev/nvidia0".into(),
            target: "/dev/nvidia0".into(),
            access: AccessFlags::R_OK,
            device: true,
            optional: false,
        };
        let needs = vec![need.clone()];
        assert!(parse_answer("", &needs).unwrap().is_empty());
        let d = parse_answer("0 EACCES: Permission denied\n7 EACCES\ngarbage\n", &needs).unwrap();
        assert_eq!(d, vec![(need, "EACCES: Permission denied".to_owned())]);
        let e = parse_answer("creds EINVAL\n", &needs).unwrap_err();
        assert!(e.to_string().contains("/etc/subuid"), "{e}");
    }

    #[test]
    fn the_user_is_described_with_its_host_uid_and_groups() {
        let mut u = ProcessUser::default();
        let p = Privilege::UserNamespace {
            outside_uid: Some(1001),
        };
        assert_eq!(
            describe_user(&u, p),
            "uid 0 gid 0 in the user namespace, host uid 1001, no supplementary groups"
        );
        u.keep_groups = true;
        assert!(describe_user(&u, p).contains("keep-groups"));
    }
}
