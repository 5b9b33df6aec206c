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

/// Everything nvhook asks NVML, answered in one session.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct NvmlAnswers {
    /// GPU UUID -> its MIG devices.
    pub mig: std::collections::BTreeMap<String, Vec<MigDevice>>,
    /// CUDA driver version, `major.minor`.
    pub cuda: Option<String>,
    /// GPU UUID -> compute capability `major.minor`.
    pub arch: std::collections::BTreeMap<String, String>,
    /// GPU UUID -> brand (libnvidia-container's names).
    pub brand: std::collections::BTreeMap<String, String>,
    /// Why NVML could not answer, if it could not.
    pub error: Option<String>,
}

/// NVML, loaded from the driver's own libnvidia-ml, in a child process: its initialization starts
/// threads (and `setns` refuses a multi-threaded process), can take tens of milliseconds, and can
/// hang on a sick GPU. The child answers every question at once; the hook asks at most once.
pub struct Nvml {
    lib_path: Option<PathBuf>,
    gpus: Vec<Gpu>,
    answers: Option<NvmlAnswers>,
}

/// How long NVML may take to answer before the child is killed.
const NVML_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Nvml {
    pub fn new(lib_path: Option<PathBuf>, gpus: &[Gpu]) -> Nvml {
        Nvml {
            lib_path,
            gpus: gpus.to_vec(),
            answers: None,
        }
    }

    /// Start from answers an earlier session gave.
    pub fn with_answers(mut self, answers: Option<NvmlAnswers>) -> Nvml {
        self.answers = answers;
        self
    }

    /// The answers, asking NVML (in a child) the first time.
    pub fn answers(&mut self) -> Result<&NvmlAnswers, Error> {
        if self.answers.is_none() {
            let (lib, gpus) = (self.lib_path.clone(), self.gpus.clone());
            let raw = nvhook_sys::in_child(
                move || serde_json::to_vec(&query_all(lib.as_deref(), &gpus)).unwrap_or_default(),
                NVML_TIMEOUT,
            )
            .map_err(|e| Error::Nvml {
                what: "query NVML (in a child process)".into(),
                reason: e.to_string(),
            })?;
            let a: NvmlAnswers = serde_json::from_slice(&raw).map_err(|e| Error::Nvml {
                what: "read NVML's answers".into(),
                reason: e.to_string(),
            })?;
            log::debug!("NVML answered: {} GPU(s) with MIG info", a.mig.len());
            self.answers = Some(a);
        }
        let a = self.answers.as_ref().ok_or_else(|| Error::Nvml {
            what: "query NVML".into(),
            reason: "no answer".into(),
        })?;
        match &a.error {
            Some(e) => Err(Error::Nvml {
                what: "initialize NVML".into(),
                reason: e.clone(),
            }),
            None => Ok(a),
        }
    }

    /// The answers gathered so far (for reuse by a later query of the same run).
    pub fn take_answers(self) -> Option<NvmlAnswers> {
        self.answers
    }
}

/// In the child: one NVML session answering everything.
fn query_all(lib: Option<&Path>, gpus: &[Gpu]) -> NvmlAnswers {
    use nvhook_sys::nvml_wrapper;
    let mut a = NvmlAnswers::default();
    let mut b = nvml_wrapper::Nvml::builder();
    if let Some(p) = lib {
        b.lib_path(p.as_os_str());
    }
    let nvml = match b.init() {
        Ok(n) => n,
        Err(e) => {
            a.error = Some(e.to_string());
            return a;
        }
    };
    // (errors of single queries leave that answer out; the requirement check then treats the
    // fact as unknown, as libnvidia-container does)
    a.cuda = nvml
        .sys_cuda_driver_version()
        .ok()
        .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10));
    for g in gpus {
        let Ok(dev) = nvml.device_by_uuid(g.uuid.as_str()) else {
            continue;
        };
        if let Ok(cc) = dev.cuda_compute_capability() {
            a.arch
                .insert(g.uuid.clone(), format!("{}.{}", cc.major, cc.minor));
        }
        if let Ok(b) = dev.brand() {
            a.brand
                .insert(g.uuid.clone(), super::facts::brand_name(b).to_owned());
        }
        let mut migs = Vec::new();
        let max = dev.mig_device_count().unwrap_or(0);
        for i in 0..max {
            // indexes past the existing devices fail with NotFound
            let Ok(m) = dev.mig_device_by_index(i) else {
                continue;
            };
            let (Ok(uuid), Ok((gi, ci))) = (m.uuid(), nvhook_sys::mig_instance_ids(&m)) else {
                continue;
            };
            migs.push(MigDevice {
                parent: g.index,
                index: migs.len() as u32,
                uuid,
                gi,
                ci,
            });
        }
        a.mig.insert(g.uuid.clone(), migs);
    }
    // The child exits right after answering: no nvmlShutdown, and no dlclose under the threads
    // NVML started (unloading the library they run in crashes them).
    std::mem::forget(nvml);
    a
}

impl MigSource for Nvml {
    fn mig_devices(&mut self, gpu: &Gpu) -> Result<Vec<MigDevice>, Error> {
        Ok(self
            .answers()?
            .mig
            .get(&gpu.uuid)
            .cloned()
            .unwrap_or_default())
    }
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
