//! MIG (Multi-Instance GPU) devices.
//!
//! A MIG device is a GPU instance (GI) plus a compute instance (CI) of a physical GPU. A container
//! gets it as the parent GPU's `/dev/nvidiaN` plus the two capability nodes
//! `/dev/nvidia-caps/nvidia-cap<M>` that grant access to that GI and CI; the kernel publishes their
//! minors in `/proc/driver/nvidia/capabilities/gpu<N>/mig/gi<G>/access` and `.../ci<C>/access`
//! (`DeviceFileMinor: M`). Which GI/CI a MIG UUID or index names is only known to NVML, so NVML
//! (nvml-wrapper, loaded at run time from the driver root) is used, and only when a container names
//! a MIG device or the kernel shows MIG instances on a GPU the container gets with `all`.
//! The NVML side sits behind [`MigSource`], so the selection logic is tested with a fake.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::gpus::Gpu;
use crate::devnode::{HostNode, stat_node};
use crate::error::Error;

/// One MIG device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MigDevice {
    /// Index of the parent GPU.
    pub parent: u32,
    /// Its index among the parent's MIG devices (NVML order): the `<gpu>:<mig>` form.
    pub index: u32,
    pub uuid: String,
    pub gi: u32,
    pub ci: u32,
}

/// What only NVML knows.
pub trait MigSource {
    /// The MIG devices of `gpu`, in NVML order (empty if MIG is off).
    fn mig_devices(&mut self, gpu: &Gpu) -> Result<Vec<MigDevice>, Error>;
}

/// Does the kernel show MIG instances on this GPU? (Cheap: no NVML.)
pub fn has_instances(proc_root: &Path, gpu: &Gpu) -> bool {
    let dir = proc_root.join(format!("driver/nvidia/capabilities/gpu{}/mig", gpu.minor));
    std::fs::read_dir(dir).is_ok_and(|it| {
        it.filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("gi"))
    })
}

/// `<gpu>:<mig>` -> (gpu index, mig index).
pub fn parse_index_form(tok: &str) -> Option<(u32, u32)> {
    let (g, m) = tok.split_once(':')?;
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    Some((num(g)?, num(m)?))
}

/// The `DeviceFileMinor: M` line of a capability `access` file's text.
pub fn parse_cap_minor(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("DeviceFileMinor:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The `DeviceFileMinor` of a capability `access` file.
fn cap_minor(access: &Path) -> Result<u32, Error> {
    let text = crate::bounded::read_to_string(access, crate::bounded::PROC_TEXT).map_err(|e| {
        Error::ProcParse {
            path: access.to_owned(),
            reason: e.to_string(),
        }
    })?;
    parse_cap_minor(&text).ok_or_else(|| Error::ProcParse {
        path: access.to_owned(),
        reason: "no DeviceFileMinor line".into(),
    })
}

/// A capability: its node, and its `access` file (host path, path under /proc/driver/nvidia).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cap {
    pub node: HostNode,
    pub access: PathBuf,
    pub proc_rel: String,
}

/// The capability of `rel` (relative to `<proc-root>/driver/nvidia/capabilities`).
pub fn cap(proc_root: &Path, dev_root: &Path, rel: &str) -> Result<Cap, Error> {
    let access = proc_root
        .join("driver/nvidia/capabilities")
        .join(rel)
        .join("access");
    let minor = cap_minor(&access)?;
    let name = format!("nvidia-caps/nvidia-cap{minor}");
    let node = stat_node(dev_root, &name)
        .map_err(|e| e.to_string())
        .and_then(|n| n.ok_or_else(|| "not found".to_owned()))
        .map_err(|reason| Error::DeviceNode {
            path: dev_root.join("dev").join(&name),
            reason,
            hint: "MIG capability nodes are created by nvidia-modprobe (-f for each capability) or the driver's nvidia-caps setup",
        })?;
    Ok(Cap {
        node,
        access,
        proc_rel: format!("capabilities/{rel}/access"),
    })
}

/// The GI and CI capabilities of a MIG device.
pub fn device_caps(
    proc_root: &Path,
    dev_root: &Path,
    gpu: &Gpu,
    m: &MigDevice,
) -> Result<Vec<Cap>, Error> {
    let gi = format!("gpu{}/mig/gi{}", gpu.minor, m.gi);
    Ok(vec![
        cap(proc_root, dev_root, &gi)?,
        cap(proc_root, dev_root, &format!("{gi}/ci{}", m.ci))?,
    ])
}

#[cfg(test)]
pub mod fake {
    use super::*;

    /// A MigSource from a fixed table, counting calls (to prove NVML is not touched needlessly).
    pub struct Fake {
        pub devices: Vec<MigDevice>,
        pub calls: u32,
    }

    impl MigSource for Fake {
        fn mig_devices(&mut self, gpu: &Gpu) -> Result<Vec<MigDevice>, Error> {
            self.calls += 1;
            Ok(self
                .devices
                .iter()
                .filter(|m| m.parent == gpu.index)
                .cloned()
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_form() {
        assert_eq!(parse_index_form("0:1"), Some((0, 1)));
        assert_eq!(parse_index_form("12:0"), Some((12, 0)));
        for bad in ["0:", ":1", "a:1", "0:1:2", "0000:86:00.0", "-1:0"] {
            assert_eq!(parse_index_form(bad), None, "{bad}");
        }
    }

    #[test]
    fn cap_minor_from_access_file() {
        let d = std::env::temp_dir().join(format!("nvhook-cap-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("access"),
            "DeviceFileMinor: 21\nDeviceFileMode: 292\nDeviceFileModify: 1\n",
        )
        .unwrap();
        assert_eq!(cap_minor(&d.join("access")).unwrap(), 21);
        std::fs::write(d.join("access"), "garbage").unwrap();
        assert!(cap_minor(&d.join("access")).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
