//! `nvhook list`: what this host offers, from the same inventory code the hook runs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::config::Config;
use crate::devnode::HostNode;
use crate::error::Error;
use crate::nvidia::mig::MigDevice;
use crate::nvidia::request::{Capabilities, Capability, Devices, Request};
use crate::nvidia::{Inventory, gpus};
use crate::timing::Timer;

#[derive(Debug, Serialize)]
pub struct GpuEntry {
    pub index: u32,
    pub uuid: String,
    pub bus_id: String,
    pub minor: u32,
    pub model: String,
    pub node: Option<HostNode>,
}

/// What one capability brings on this host.
#[derive(Debug, Default, Serialize)]
pub struct CapabilityEntry {
    /// soname -> host path
    pub libraries: BTreeMap<String, PathBuf>,
    pub libraries32: BTreeMap<String, PathBuf>,
    pub binaries: BTreeMap<String, PathBuf>,
    pub files: Vec<PathBuf>,
    /// Why this capability cannot be given here, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct HostReport {
    pub driver_root: PathBuf,
    pub dev_root: PathBuf,
    pub proc_root: PathBuf,
    pub driver_version: String,
    pub gpus: Vec<GpuEntry>,
    /// MIG devices (through NVML, only when the kernel shows MIG instances).
    pub mig: Vec<MigDevice>,
    pub control_nodes: Vec<HostNode>,
    pub firmware: Vec<PathBuf>,
    pub capabilities: BTreeMap<String, CapabilityEntry>,
}

fn request(caps: Capabilities) -> Request {
    Request {
        devices: Devices::All,
        capabilities: caps,
        legacy: false,
        imex_channels: Vec::new(),
        mig_config: false,
        mig_monitor: false,
        requirements: Vec::new(),
    }
}

/// `nvhook list`'s output: the NVIDIA report and the device classes, as pretty JSON (`json`)
/// or text. A host with device classes but no NVIDIA driver still lists its classes.
pub fn render(config: &Config, json: bool) -> Result<String, Error> {
    let classes = crate::class::list(config)?;
    let (mut value, mut text) = match host_report(config) {
        Ok(r) => (
            serde_json::to_value(&r).map_err(|source| Error::Json {
                what: "the host report",
                source,
            })?,
            self::text(&r),
        ),
        Err(e) if !classes.is_empty() => (
            serde_json::json!({ "nvidia_error": e.to_string() }),
            format!("NVIDIA: unavailable: {e}\n"),
        ),
        Err(e) => return Err(e),
    };
    text += &crate::class::text(&classes);
    if let Some(o) = value.as_object_mut() {
        let c = serde_json::to_value(&classes).map_err(|source| Error::Json {
            what: "the device classes",
            source,
        })?;
        o.insert("classes".into(), c);
    }
    if json {
        let s = serde_json::to_string_pretty(&value).map_err(|source| Error::Json {
            what: "the list",
            source,
        })?;
        Ok(s + "\n")
    } else {
        Ok(text)
    }
}

/// Inventory the host for every capability.
pub fn host_report(config: &Config) -> Result<HostReport, Error> {
    let driver_version = gpus::driver_version(&config.proc_root)?;
    let all = Inventory::discover(config, &request(Capabilities::all()), &mut Timer::new());
    let mut capabilities = BTreeMap::new();
    for c in Capability::ALL {
        let caps = Capabilities([c].into_iter().collect());
        let mut e = CapabilityEntry::default();
        match Inventory::discover(config, &request(caps), &mut Timer::new()) {
            Ok(inv) => {
                for l in &inv.libraries {
                    e.libraries.insert(l.soname.clone(), l.host_path.clone());
                }
                for l in &inv.libraries32 {
                    e.libraries32.insert(l.soname.clone(), l.host_path.clone());
                }
                for b in &inv.binaries {
                    e.binaries.insert(b.name.clone(), b.host_path.clone());
                }
                e.files = inv.files.iter().map(|f| f.host_path.clone()).collect();
            }
            Err(err) => e.error = Some(err.to_string()),
        }
        capabilities.insert(c.name().to_owned(), e);
    }
    let all = all?;
    let node_of = |g: &gpus::Gpu| {
        all.gpu_nodes
            .iter()
            .find(|n| n.name == format!("nvidia{}", g.minor))
            .cloned()
    };
    Ok(HostReport {
        driver_root: config.driver_root.clone(),
        dev_root: config.dev_root.clone(),
        proc_root: config.proc_root.clone(),
        driver_version,
        gpus: all
            .gpus
            .iter()
            .map(|g| GpuEntry {
                index: g.index,
                uuid: g.uuid.clone(),
                bus_id: g.bus_id.clone(),
                minor: g.minor,
                model: g.model.clone(),
                node: node_of(g),
            })
            .collect(),
        mig: all.migs.clone(),
        control_nodes: all.control_nodes.clone(),
        firmware: all.firmware.clone(),
        capabilities,
    })
}

/// Human-readable text of a report.
pub fn text(r: &HostReport) -> String {
    let mut s = format!(
        "driver {} (driver root {}, dev root {}, proc root {})\n",
        r.driver_version,
        r.driver_root.display(),
        r.dev_root.display(),
        r.proc_root.display()
    );
    for g in &r.gpus {
        let node = g
            .node
            .as_ref()
            .map(|n| format!("{} ({}:{})", n.host_path.display(), n.major, n.minor))
            .unwrap_or_else(|| "no device node".into());
        s += &format!(
            "GPU {}: {} {} bus {} -> {node}\n",
            g.index, g.model, g.uuid, g.bus_id
        );
    }
    for m in &r.mig {
        s += &format!(
            "  MIG {}:{} {} (GI {}, CI {})\n",
            m.parent, m.index, m.uuid, m.gi, m.ci
        );
    }
    let nodes: Vec<String> = r.control_nodes.iter().map(|n| n.name.clone()).collect();
    s += &format!("control nodes: {}\n", nodes.join(", "));
    for f in &r.firmware {
        s += &format!("firmware: {}\n", f.display());
    }
    for (cap, e) in &r.capabilities {
        s += &format!("{cap}:\n");
        if let Some(err) = &e.error {
            s += &format!("  unavailable: {err}\n");
        }
        for (so, p) in &e.libraries {
            s += &format!("  {so} -> {}\n", p.display());
        }
        for (so, p) in &e.libraries32 {
            s += &format!("  {so} (32-bit) -> {}\n", p.display());
        }
        for (b, p) in &e.binaries {
            s += &format!("  {b} -> {}\n", p.display());
        }
        for p in &e.files {
            s += &format!("  {}\n", p.display());
        }
    }
    s
}
