//! The host facts `NVIDIA_REQUIRE_*` needs, each fetched only when a factor asks for it:
//! the driver version from the kernel (already read), the CUDA version from libcuda's
//! `.note.cuda.fwd_compatibility` ELF note (a file read; NVML only if the note is missing), and
//! compute capability and brand from NVML (loaded from the driver root on first use).

use std::path::PathBuf;

use super::Inventory;
use super::gpus::Gpu;
use super::nvml::Nvml;
use super::require::Facts;

pub struct HostFacts {
    driver: String,
    libcuda: Option<PathBuf>,
    gpus: Vec<Gpu>,
    nvml: Nvml,
    cuda: Option<Option<String>>,
}

impl HostFacts {
    pub fn new(inv: &Inventory) -> HostFacts {
        HostFacts {
            driver: inv.driver_version.clone(),
            libcuda: inv.libcuda.clone(),
            gpus: inv.gpus.clone(),
            nvml: Nvml::new(inv.nvml_lib.clone(), &inv.gpus).with_answers(inv.nvml_answers.clone()),
            cuda: None,
        }
    }

    fn uuid(&self, index: u32) -> Option<String> {
        self.gpus
            .iter()
            .find(|g| g.index == index)
            .map(|g| g.uuid.clone())
    }

    fn cuda_from_note(&self) -> Option<String> {
        let f = std::fs::File::open(self.libcuda.as_ref()?).ok()?;
        crate::elf::cuda_version_note(&f)
    }
}

impl Facts for HostFacts {
    fn cuda_version(&mut self) -> Option<String> {
        if self.cuda.is_none() {
            let v = self
                .cuda_from_note()
                .or_else(|| self.nvml.answers().ok().and_then(|a| a.cuda.clone()));
            log::debug!("host CUDA driver version: {v:?}");
            self.cuda = Some(v);
        }
        self.cuda.clone().flatten()
    }

    fn driver_version(&mut self) -> Option<String> {
        Some(self.driver.clone())
    }

    fn arch(&mut self, gpu: u32) -> Option<String> {
        let uuid = self.uuid(gpu)?;
        self.nvml.answers().ok()?.arch.get(&uuid).cloned()
    }

    fn brand(&mut self, gpu: u32) -> Option<String> {
        let uuid = self.uuid(gpu)?;
        self.nvml.answers().ok()?.brand.get(&uuid).cloned()
    }
}

/// Check the request's requirements against this host, for the selected GPUs.
pub fn check(req: &super::request::Request, inv: &Inventory) -> Result<(), crate::error::Error> {
    if req.requirements.is_empty() {
        return Ok(());
    }
    let gpus: Vec<u32> = inv.selected.iter().map(|g| g.index).collect();
    super::require::check(&req.requirements, &gpus, &mut HostFacts::new(inv))
}
