//! NVML, the one place nvhook talks to it: loaded at run time (nvml-wrapper) from the driver's
//! own libnvidia-ml, in a child process, answering in one session everything the hook may ask:
//! the MIG devices of each GPU (for [`super::mig`]), and the CUDA version, compute capability and
//! brand (for [`super::facts`]).

use std::path::{Path, PathBuf};

use nvhook_sys::nvml_wrapper::enum_wrappers::device::Brand;
use serde::Serialize;

use super::gpus::Gpu;
use super::mig::{MigDevice, MigSource};
use crate::error::Error;

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
            a.brand.insert(g.uuid.clone(), brand_name(b).to_owned());
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

/// NVML's brand, named as libnvidia-container names it (`src/driver.c`).
pub fn brand_name(b: Brand) -> &'static str {
    match b {
        Brand::Quadro => "Quadro",
        Brand::Tesla => "Tesla",
        Brand::NVS => "NVS",
        Brand::GRID => "GRID",
        Brand::GeForce => "GeForce",
        Brand::Titan => "TITAN",
        Brand::VApps => "VApps",
        Brand::VPC => "VPC",
        Brand::VCS => "VCS",
        Brand::VWS => "VWS",
        Brand::CloudGaming | Brand::VGaming => "CloudGaming",
        Brand::QuadroRTX => "QuadroRTX",
        Brand::NvidiaRTX => "NvidiaRTX",
        Brand::Nvidia => "Nvidia",
        Brand::GeForceRTX => "GeForceRTX",
        Brand::TitanRTX => "TitanRTX",
        Brand::Unknown => "Unknown",
    }
}
