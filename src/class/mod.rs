//! Generic device classes: a class is configuration, not code (docs/device-classes.md).
//!
//! A class file under `classes-dir` names device-node globs, host files and libraries, and extra
//! cgroup rules; a container selects the class's nodes with `NVHOOK_DEVICES_<NAME>`. The
//! pipeline is NVIDIA's in small: the variable -> [`Selection`] (pure), the host's nodes ->
//! [`ClassInventory`], -> a [`Plan`] merged into the container's plan.
//!
//! The container's value is never turned into a path: it is an index into, or a name compared
//! with, the nodes the administrator's globs matched on the host. A value that is neither is an
//! error that lists what exists.

pub mod file;
pub mod glob;
mod list;
mod request;

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use file::{Class, ClassMount, DeviceGlob, ENV_PREFIX};
pub use list::{ClassEntry, list, text};
pub use request::{
    ClassRequest, Selection, asks_for_a_class, parse_selection, requests, requests_for,
};

use crate::config::Config;
use crate::devnode::{HostNode, NodeType};
use crate::error::Error;
use crate::layout::Layout;
use crate::library::Library;
use crate::plan::{DeviceRule, Plan};

/// More class files than this in one directory is a mistake, not a configuration.
const MAX_CLASSES: usize = 256;

/// Every class of this host: the `*.toml` files of `dir`, in name order. No directory, no
/// classes. Two classes with the same name or variable are an error naming both files.
pub fn load_dir(dir: &Path) -> Result<Vec<Class>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::ClassFile {
                path: dir.to_owned(),
                reason: format!("cannot read the classes directory: {e} (check classes-dir)"),
            });
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "toml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    if files.len() > MAX_CLASSES {
        return Err(Error::ClassFile {
            path: dir.to_owned(),
            reason: format!("more than {MAX_CLASSES} class files"),
        });
    }
    let mut classes: Vec<Class> = Vec::new();
    for f in files {
        let c = file::read(&f).map_err(|reason| Error::ClassFile {
            path: f.clone(),
            reason,
        })?;
        if let Some(other) = classes.iter().find(|o| o.name == c.name || o.env == c.env) {
            return Err(Error::ClassFile {
                path: f.clone(),
                reason: format!(
                    "name {:?} / env {} is already used by {}",
                    c.name,
                    c.env,
                    other.file.display()
                ),
            });
        }
        classes.push(c);
    }
    Ok(classes)
}

/// What the host gives one class request.
#[derive(Debug, Clone, Serialize)]
pub struct ClassInventory {
    pub class: String,
    pub env: String,
    pub selection: Selection,
    /// Selected nodes, in the container's order.
    pub devices: Vec<HostNode>,
    pub shared_devices: Vec<HostNode>,
    /// (mount, is a directory), present sources only.
    pub mounts: Vec<(ClassMount, bool)>,
    pub libraries: Vec<Library>,
    pub cgroup_rules: Vec<DeviceRule>,
}

fn host_err(class: &Class, path: &Path, reason: String) -> Error {
    Error::ClassHost {
        class: class.name.clone(),
        file: class.file.clone(),
        path: path.to_owned(),
        reason,
    }
}

/// The host's nodes matching `g` under `<dev_root>/dev`, in natural name order. Only real
/// character and block devices count: symlinks (udev's by-id names) and other files are skipped.
pub fn expand(class: &Class, g: &DeviceGlob, dev_root: &Path) -> Result<Vec<HostNode>, Error> {
    let dir = dev_root.join("dev").join(&g.dir);
    let mut names: Vec<String> = if g.pattern.is_literal() {
        vec![g.pattern.as_str().to_owned()]
    } else {
        match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| g.pattern.matches(n))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(host_err(class, &dir, e.to_string())),
        }
    };
    names.sort_by(|a, b| glob::natural_cmp(a, b));
    let mut nodes = Vec::new();
    for entry in names {
        let host_path = dir.join(&entry);
        let md = match std::fs::symlink_metadata(&host_path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(host_err(class, &host_path, e.to_string())),
        };
        let kind = if md.file_type().is_char_device() {
            NodeType::Char
        } else if md.file_type().is_block_device() {
            NodeType::Block
        } else {
            log::debug!(
                "class {}: {} is not a device node; skipped",
                class.name,
                host_path.display()
            );
            continue;
        };
        nodes.push(HostNode {
            name: g.name_of(&entry),
            host_path,
            kind,
            major: nix::sys::stat::major(md.rdev()),
            minor: nix::sys::stat::minor(md.rdev()),
        });
    }
    Ok(nodes)
}

/// Every node of a list of globs, glob by glob, without repeats.
fn expand_all(
    class: &Class,
    globs: &[DeviceGlob],
    dev_root: &Path,
) -> Result<Vec<HostNode>, Error> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for g in globs {
        for n in expand(class, g, dev_root)? {
            if seen.insert(n.name.clone()) {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// The nodes a selection picks out of `all` (the class's numbered nodes).
pub fn select(
    class: &Class,
    selection: &Selection,
    all: &[HostNode],
) -> Result<Vec<HostNode>, Error> {
    let available = || {
        if all.is_empty() {
            let globs: Vec<String> = class.devices.iter().map(|g| format!("/dev/{g}")).collect();
            return format!("no node matching {}", globs.join(", "));
        }
        let mut v: Vec<String> = all
            .iter()
            .take(16)
            .enumerate()
            .map(|(i, n)| format!("{i}={}", n.name))
            .collect();
        if all.len() > 16 {
            v.push(format!("... ({} in all)", all.len()));
        }
        v.join(", ")
    };
    match selection {
        Selection::None => Ok(Vec::new()),
        Selection::All if all.is_empty() && !class.devices.is_empty() => Err(Error::BadRequest {
            var: class.env.clone(),
            reason: format!("all: this host has {}", available()),
        }),
        Selection::All => Ok(all.to_vec()),
        Selection::List(ids) => {
            let mut out: Vec<HostNode> = Vec::new();
            for id in ids {
                let found = if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
                    id.parse::<usize>().ok().and_then(|i| all.get(i))
                } else {
                    all.iter().find(|n| n.name == *id)
                };
                let Some(n) = found else {
                    return Err(Error::UnknownDevice {
                        var: class.env.clone(),
                        id: id.clone(),
                        available: available(),
                    });
                };
                if !out.iter().any(|o| o.name == n.name) {
                    out.push(n.clone());
                }
            }
            Ok(out)
        }
    }
}

/// A host library of a class: the real file (links followed), its soname and ABI from its ELF
/// header.
fn library(class: &Class, path: &Path) -> Result<Library, Error> {
    let real = std::fs::canonicalize(path).map_err(|e| host_err(class, path, e.to_string()))?;
    let info = crate::elf::read(&real).map_err(|e| host_err(class, &real, e.to_string()))?;
    let file_name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| host_err(class, &real, "no file name".into()))?;
    let soname = info.soname.unwrap_or_else(|| file_name.clone());
    if soname.contains('/') || soname.starts_with('.') {
        return Err(host_err(
            class,
            &real,
            format!("its soname {soname:?} is not a file name"),
        ));
    }
    Ok(Library {
        soname,
        host_path: real,
        file_name,
        cache_flags: info.cache_flags,
    })
}

impl ClassInventory {
    /// Find what `req` needs on the host (under the config's dev-root).
    pub fn discover(req: &ClassRequest, config: &Config) -> Result<ClassInventory, Error> {
        let c = &req.class;
        let all = expand_all(c, &c.devices, &config.dev_root)?;
        let devices = select(c, &req.selection, &all)?;
        let shared_devices = expand_all(c, &c.shared_devices, &config.dev_root)?;
        let mut mounts = Vec::new();
        for m in &c.mounts {
            match std::fs::metadata(&m.source) {
                Ok(md) => mounts.push((m.clone(), md.is_dir())),
                Err(e) if m.optional && e.kind() == std::io::ErrorKind::NotFound => {
                    log::debug!(
                        "class {}: optional {} not found; skipped",
                        c.name,
                        m.source.display()
                    );
                }
                Err(e) => return Err(host_err(c, &m.source, e.to_string())),
            }
        }
        let libraries = c
            .libraries
            .iter()
            .map(|l| library(c, l))
            .collect::<Result<Vec<_>, _>>()?;
        let cgroup_rules = c
            .cgroup_rules
            .iter()
            .map(|r| DeviceRule {
                kind: r.kind,
                major: r.major,
                minor: r.minor,
            })
            .collect();
        Ok(ClassInventory {
            class: c.name.clone(),
            env: c.env.clone(),
            selection: req.selection.clone(),
            devices,
            shared_devices,
            mounts,
            libraries,
            cgroup_rules,
        })
    }

    /// The plan for this class: pure. Libraries go where the image keeps its own (`layout`).
    pub fn plan(&self, layout: &Layout) -> Plan {
        let mut p = Plan::default();
        for n in self.devices.iter().chain(&self.shared_devices) {
            p.add_device(n.clone());
        }
        for r in &self.cgroup_rules {
            if !p.cgroup_rules.contains(r) {
                p.cgroup_rules.push(*r);
            }
        }
        for (m, dir) in &self.mounts {
            p.add_mount(m.source.clone(), m.target.clone(), *dir, m.flags);
        }
        for lib in &self.libraries {
            p.add_library(&layout.lib_dir, lib);
        }
        p
    }

    /// What `nvhook plan` shows for this class.
    pub fn summary(&self) -> serde_json::Value {
        let names = |v: &[HostNode]| v.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
        serde_json::json!({
            "class": self.class,
            "env": self.env,
            "selection": self.selection,
            "devices": names(&self.devices),
            "shared_devices": names(&self.shared_devices),
        })
    }
}

/// Discover every requested class (before the hook enters the container's mount namespace).
pub fn discover_all(reqs: &[ClassRequest], config: &Config) -> Result<Vec<ClassInventory>, Error> {
    reqs.iter()
        .map(|r| ClassInventory::discover(r, config))
        .collect()
}

/// Merge the classes' plans into `plan` (NVIDIA's, or an empty one), and list them in its
/// summary under `classes`.
pub fn merge_into(plan: &mut Plan, invs: &[ClassInventory], layout: &Layout) {
    if invs.is_empty() {
        return;
    }
    for inv in invs {
        plan.merge(inv.plan(layout));
    }
    let list: Vec<serde_json::Value> = invs.iter().map(ClassInventory::summary).collect();
    if !plan.summary.is_object() {
        plan.summary = serde_json::json!({});
    }
    if let Some(o) = plan.summary.as_object_mut() {
        o.insert("classes".into(), serde_json::Value::Array(list));
    }
}

#[cfg(test)]
mod tests;
