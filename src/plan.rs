//! The plan: everything nvhook will do to a container, as plain data.
//!
//! It is generic over device classes: a class contributes device nodes, bind mounts, symlinks,
//! linker-cache entries and (derived from the nodes) device-cgroup rules. `nvhook plan` prints
//! it as JSON; `nvhook prestart` applies exactly this value, nothing else.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::devnode::{HostNode, NodeType};

/// Mount flags for a bind mount into the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountFlags {
    pub readonly: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
}

impl MountFlags {
    /// Libraries and binaries: read-only, no setuid, no device nodes; executable.
    pub const CODE: MountFlags = MountFlags {
        readonly: true,
        nosuid: true,
        nodev: true,
        noexec: false,
    };
    /// Data (firmware, config files): read-only and inert.
    pub const DATA: MountFlags = MountFlags {
        readonly: true,
        nosuid: true,
        nodev: true,
        noexec: true,
    };
    /// IPC sockets and the MPS pipe directory: clients write to them; nothing executes.
    pub const IPC: MountFlags = MountFlags {
        readonly: false,
        nosuid: true,
        nodev: true,
        noexec: true,
    };
    /// Device nodes: the node must stay usable (no nodev); nothing executes from it.
    pub const DEVICE: MountFlags = MountFlags {
        readonly: true,
        nosuid: true,
        nodev: false,
        noexec: true,
    };

    pub fn names(&self) -> Vec<&'static str> {
        let mut v = vec!["bind"];
        for (on, name) in [
            (self.readonly, "ro"),
            (self.nosuid, "nosuid"),
            (self.nodev, "nodev"),
            (self.noexec, "noexec"),
        ] {
            if on {
                v.push(name);
            }
        }
        v
    }
}

/// A bind mount of a host file or directory onto a container path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub source: PathBuf,
    /// Container path (absolute, inside the rootfs).
    pub target: String,
    pub directory: bool,
    pub flags: MountFlags,
}

/// A device node the container gets at `/dev/<name>` (bind-mounted from the host's node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    #[serde(flatten)]
    pub node: HostNode,
    /// Container path.
    pub path: String,
}

/// A symlink to create in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symlink {
    pub path: String,
    pub target: String,
}

/// An entry for the container's `/etc/ld.so.cache`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LdEntry {
    pub soname: String,
    pub path: String,
    /// ld.so.cache ABI flags (0x303 = x86-64 glibc).
    pub flags: i32,
}

/// A device-cgroup allow rule (`c 195:0 rwm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    #[serde(rename = "type")]
    pub kind: NodeType,
    pub major: u64,
    pub minor: u64,
}

impl DeviceRule {
    /// The v1 `devices.allow` line. `rwm` as the toolkit grants its nodes.
    pub fn v1_line(&self) -> String {
        format!("{} {}:{} rwm", self.kind.letter(), self.major, self.minor)
    }
}

impl std::fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}:{}", self.kind.letter(), self.major, self.minor)
    }
}

/// A small file written into the container's rootfs (replaced atomically).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsFile {
    pub path: String,
    pub content: String,
}

/// A file of a [`TmpfsDir`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsFile {
    /// Name inside the directory (no `/`).
    pub name: String,
    pub content: String,
}

/// A host directory or file bind-mounted (read-only) into a [`TmpfsDir`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsBind {
    pub source: PathBuf,
    /// Relative path inside the tmpfs (`gpus/0000:3b:00.0`).
    pub path: String,
    /// A file (a MIG capability's `access`) rather than a directory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub file: bool,
}

/// Replace a container directory by a read-only tmpfs holding exactly `files` and `binds`: used
/// to show the container only the selected GPUs under `/proc/driver/nvidia`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsDir {
    /// Container path; must exist.
    pub target: String,
    pub files: Vec<TmpfsFile>,
    pub binds: Vec<TmpfsBind>,
    /// Apply only if the target is on procfs (the container's own /proc): never create or
    /// cover an image directory that merely has that name.
    pub only_on_procfs: bool,
}

/// Everything to do, in order: devices, mounts, symlinks, tmpfs dirs, linker cache, cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Plan {
    /// What the plan is for, for humans (`nvhook plan`); not used by apply.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub summary: serde_json::Value,
    pub devices: Vec<Device>,
    pub mounts: Vec<Mount>,
    pub symlinks: Vec<Symlink>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<TmpfsDir>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<RootfsFile>,
    pub ldcache: Vec<LdEntry>,
    pub cgroup_rules: Vec<DeviceRule>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
            && self.mounts.is_empty()
            && self.symlinks.is_empty()
            && self.ldcache.is_empty()
    }

    /// Add a device node (and its cgroup rule) unless it is already planned.
    pub fn add_device(&mut self, node: HostNode) {
        if self
            .devices
            .iter()
            .any(|d| d.node.host_path == node.host_path)
        {
            return;
        }
        let rule = DeviceRule {
            kind: node.kind,
            major: node.major,
            minor: node.minor,
        };
        if !self.cgroup_rules.contains(&rule) {
            self.cgroup_rules.push(rule);
        }
        self.devices.push(Device {
            path: format!("/dev/{}", node.name),
            node,
        });
    }

    /// Add a bind mount unless the target is already planned.
    pub fn add_mount(
        &mut self,
        source: PathBuf,
        target: String,
        directory: bool,
        flags: MountFlags,
    ) {
        if self.mounts.iter().any(|m| m.target == target) {
            return;
        }
        self.mounts.push(Mount {
            source,
            target,
            directory,
            flags,
        });
    }

    /// A driver or class library in the image's library directory `dir`: bind-mounted under its
    /// file name, linked under its soname where they differ, and entered in the linker cache.
    pub fn add_library(&mut self, dir: &str, lib: &crate::library::Library) {
        let dir = dir.trim_end_matches('/');
        let target = format!("{dir}/{}", lib.file_name);
        self.add_mount(lib.host_path.clone(), target, false, MountFlags::CODE);
        if lib.soname != lib.file_name {
            self.add_symlink(format!("{dir}/{}", lib.soname), lib.file_name.clone());
        }
        self.add_ldcache(
            lib.soname.clone(),
            format!("{dir}/{}", lib.soname),
            lib.cache_flags,
        );
    }

    pub fn add_symlink(&mut self, path: String, target: String) {
        if self.symlinks.iter().any(|s| s.path == path) {
            return;
        }
        self.symlinks.push(Symlink { path, target });
    }

    /// Add everything of `other` (another class's plan), keeping what is already planned when
    /// both plan the same device, target, link or soname. `other`'s summary is dropped.
    pub fn merge(&mut self, other: Plan) {
        for d in other.devices {
            self.add_device(d.node);
        }
        for r in other.cgroup_rules {
            if !self.cgroup_rules.contains(&r) {
                self.cgroup_rules.push(r);
            }
        }
        for m in other.mounts {
            self.add_mount(m.source, m.target, m.directory, m.flags);
        }
        for s in other.symlinks {
            self.add_symlink(s.path, s.target);
        }
        for t in other.tmpfs {
            if !self.tmpfs.iter().any(|x| x.target == t.target) {
                self.tmpfs.push(t);
            }
        }
        for f in other.files {
            if !self.files.iter().any(|x| x.path == f.path) {
                self.files.push(f);
            }
        }
        for e in other.ldcache {
            self.add_ldcache(e.soname, e.path, e.flags);
        }
    }

    pub fn add_ldcache(&mut self, soname: String, path: String, flags: i32) {
        if self
            .ldcache
            .iter()
            .any(|e| e.soname == soname && e.flags == flags)
        {
            return;
        }
        self.ldcache.push(LdEntry {
            soname,
            path,
            flags,
        });
    }
}
