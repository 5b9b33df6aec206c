//! `nvhook list` (and `doctor`): every class of the host with what it would give.

use std::path::PathBuf;

use serde::Serialize;

use super::{ClassInventory, ClassRequest, Selection, expand_all, load_dir};
use crate::config::Config;
use crate::devnode::HostNode;
use crate::error::Error;

/// One class as `nvhook list` shows it.
#[derive(Debug, Serialize)]
pub struct ClassEntry {
    pub name: String,
    pub description: String,
    pub env: String,
    pub file: PathBuf,
    pub privileged_only: bool,
    /// The `devices` globs, relative to /dev.
    pub globs: Vec<String>,
    /// Selectable nodes, index = position.
    pub devices: Vec<HostNode>,
    pub shared_devices: Vec<HostNode>,
    pub mounts: Vec<PathBuf>,
    pub libraries: Vec<PathBuf>,
    pub cgroup_rules: Vec<String>,
    /// Why the class cannot be given here (a node or file it needs is missing), if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every class of this host with what it would give (`nvhook list`). A broken class file is an
/// error; a class whose host files are missing is listed with the reason.
pub fn list(config: &Config) -> Result<Vec<ClassEntry>, Error> {
    let classes = load_dir(&config.classes_dir)?;
    let mut out = Vec::new();
    for c in classes {
        let req = ClassRequest {
            class: c.clone(),
            selection: Selection::None,
        };
        let inv = ClassInventory::discover(&req, config);
        let devices = expand_all(&c, &c.devices, &config.dev_root);
        let mut e = ClassEntry {
            name: c.name.clone(),
            description: c.description.clone(),
            env: c.env.clone(),
            file: c.file.clone(),
            privileged_only: c.privileged_only,
            globs: c.devices.iter().map(|g| g.to_string()).collect(),
            devices: Vec::new(),
            shared_devices: Vec::new(),
            mounts: Vec::new(),
            libraries: Vec::new(),
            cgroup_rules: c
                .cgroup_rules
                .iter()
                .map(|r| format!("{} {}:{} rwm", r.kind.letter(), r.major, r.minor))
                .collect(),
            error: None,
        };
        match (inv, devices) {
            (Ok(inv), Ok(devices)) => {
                e.devices = devices;
                e.shared_devices = inv.shared_devices;
                e.mounts = inv.mounts.into_iter().map(|(m, _)| m.source).collect();
                e.libraries = inv.libraries.into_iter().map(|l| l.host_path).collect();
            }
            (Err(err), _) | (_, Err(err)) => e.error = Some(err.to_string()),
        }
        out.push(e);
    }
    Ok(out)
}

/// Human-readable text of `nvhook list`'s classes.
pub fn text(entries: &[ClassEntry]) -> String {
    let mut s = String::new();
    for e in entries {
        s += &format!(
            "class {} ({}{}){}{}\n",
            e.name,
            e.env,
            if e.privileged_only {
                ", privileged only"
            } else {
                ""
            },
            if e.description.is_empty() { "" } else { ": " },
            e.description
        );
        if let Some(err) = &e.error {
            s += &format!("  unavailable: {err}\n");
        }
        for (i, n) in e.devices.iter().enumerate() {
            s += &format!(
                "  {i}: /dev/{} ({} {}:{})\n",
                n.name,
                n.kind.letter(),
                n.major,
                n.minor
            );
        }
        if e.devices.is_empty() && e.error.is_none() && !e.globs.is_empty() {
            s += &format!("  no node matches /dev/{}\n", e.globs.join(", /dev/"));
        }
        for n in &e.shared_devices {
            s += &format!(
                "  shared: /dev/{} ({} {}:{})\n",
                n.name,
                n.kind.letter(),
                n.major,
                n.minor
            );
        }
        for p in e.mounts.iter().chain(&e.libraries) {
            s += &format!("  {}\n", p.display());
        }
        for r in &e.cgroup_rules {
            s += &format!("  cgroup: {r}\n");
        }
    }
    s
}
