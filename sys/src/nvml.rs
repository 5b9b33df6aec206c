//! NVML calls nvml-wrapper does not wrap.

pub use nvml_wrapper;
use nvml_wrapper::error::{NvmlError, nvml_sym, nvml_try};

/// The GPU instance and compute instance ids of a MIG device handle (nvmlDeviceGetGpuInstanceId,
/// nvmlDeviceGetComputeInstanceId): they name its capability files under
/// /proc/driver/nvidia/capabilities/gpu<N>/mig/gi<GI>/ci<CI>.
pub fn mig_instance_ids(device: &nvml_wrapper::Device<'_>) -> Result<(u32, u32), NvmlError> {
    let lib = device.nvml().lib();
    let gi_fn = nvml_sym(lib.nvmlDeviceGetGpuInstanceId.as_ref())?;
    let ci_fn = nvml_sym(lib.nvmlDeviceGetComputeInstanceId.as_ref())?;
    let (mut gi, mut ci) = (0u32, 0u32);
    // SAFETY: `device.handle()` is a valid handle for as long as `device` (which borrows the
    // initialized Nvml) lives; the out-pointers are to locals that outlive the calls.
    unsafe {
        nvml_try(gi_fn(device.handle(), &mut gi))?;
        nvml_try(ci_fn(device.handle(), &mut ci))?;
    }
    Ok((gi, ci))
}
