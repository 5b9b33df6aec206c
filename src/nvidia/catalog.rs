//! Which driver files each capability brings: the per-capability lists of libnvidia-container
//! (`src/nvc_info.c`), which NVIDIA's legacy hook applies. Names are prefixes matched against
//! sonames (`libcuda.so` matches `libcuda.so.1`); only files carrying the running driver's version
//! are taken, so a library of another driver (CUDA compat, a stale copy) is never mounted.

use super::request::{Capabilities, Capability};

pub const UTILITY_LIBS: &[&str] = &["libnvidia-ml.so", "libnvidia-cfg.so", "libnvidia-nscq.so"];

pub const COMPUTE_LIBS: &[&str] = &[
    "libcuda.so",
    "libcudadebugger.so",
    "libnvidia-opencl.so",
    "libnvidia-gpucomp.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-fatbinaryloader.so",
    "libnvidia-allocator.so",
    "libnvidia-compiler.so",
    "libnvidia-pkcs11.so",
    "libnvidia-pkcs11-openssl3.so",
    "libnvidia-nvvm.so",
    "libnvidia-tileiras.so",
];

pub const VIDEO_LIBS: &[&str] = &[
    "libvdpau_nvidia.so",
    "libnvidia-encode.so",
    "libnvidia-opticalflow.so",
    "libnvcuvid.so",
];

pub const GRAPHICS_LIBS: &[&str] = &[
    "libnvidia-eglcore.so",
    "libnvidia-glcore.so",
    "libnvidia-tls.so",
    "libnvidia-glsi.so",
    "libnvidia-fbc.so",
    "libnvidia-ifr.so",
    "libnvidia-rtcore.so",
    "libnvoptix.so",
    // GLVND vendor libraries
    "libGLX_nvidia.so",
    "libEGL_nvidia.so",
    "libGLESv2_nvidia.so",
    "libGLESv1_CM_nvidia.so",
    "libnvidia-glvkspirv.so",
    "libnvidia-cbl.so",
    // Non-GLVND installs ship these with the driver's version; GLVND's own (libGL.so.1.7.0)
    // never carry it and are filtered out by the version check.
    "libGL.so",
    "libEGL.so",
    "libGLESv1_CM.so",
    "libGLESv2.so",
];

pub const NGX_LIBS: &[&str] = &["libnvidia-ngx.so"];

/// Graphics libraries NVIDIA ships with the driver but versions on their own (EGL platforms):
/// the toolkit injects them for graphics; no driver-version check applies.
pub const GRAPHICS_UNVERSIONED_LIBS: &[&str] = &[
    "libnvidia-egl-gbm.so",
    "libnvidia-egl-wayland.so",
    "libnvidia-egl-wayland2.so",
    "libnvidia-egl-xcb.so",
    "libnvidia-egl-xlib.so",
];

pub const UTILITY_BINS: &[&str] = &[
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nv-fabricmanager",
    "nvidia-imex",
    "nvidia-imex-ctl",
];

pub const COMPUTE_BINS: &[&str] = &["nvidia-cuda-mps-control", "nvidia-cuda-mps-server"];

/// Development links libnvidia-container creates beside the mounted libraries:
/// (library prefix that triggers it, link name, link target; `{ver}` = driver version).
pub const EXTRA_LINKS: &[(&str, &str, &str)] = &[
    ("libcuda.so", "libcuda.so", "libcuda.so.1"),
    (
        "libGLX_nvidia.so",
        "libGLX_indirect.so.0",
        "libGLX_nvidia.so.{ver}",
    ),
    (
        "libnvidia-opticalflow.so",
        "libnvidia-opticalflow.so",
        "libnvidia-opticalflow.so.1",
    ),
];

/// Library name prefixes for a capability set (`video` brings the compute libraries too, as in
/// libnvidia-container; `display` brings the graphics ones).
pub fn library_names(caps: &Capabilities) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    let mut add = |l: &[&'static str]| {
        for n in l {
            if !out.contains(n) {
                out.push(n);
            }
        }
    };
    if caps.has(Capability::Utility) {
        add(UTILITY_LIBS);
    }
    if caps.has(Capability::Compute) || caps.has(Capability::Video) {
        add(COMPUTE_LIBS);
    }
    if caps.has(Capability::Video) {
        add(VIDEO_LIBS);
    }
    if caps.has(Capability::Graphics) || caps.has(Capability::Display) {
        add(GRAPHICS_LIBS);
    }
    if caps.has(Capability::Ngx) {
        add(NGX_LIBS);
    }
    out
}

pub fn binary_names(caps: &Capabilities) -> Vec<&'static str> {
    let mut out = Vec::new();
    if caps.has(Capability::Utility) {
        out.extend_from_slice(UTILITY_BINS);
    }
    if caps.has(Capability::Compute) {
        out.extend_from_slice(COMPUTE_BINS);
    }
    out
}

pub fn wants_graphics(caps: &Capabilities) -> bool {
    caps.has(Capability::Graphics) || caps.has(Capability::Display)
}

/// `nvidia-uvm` and `nvidia-uvm-tools` go with the compute libraries (compute or video).
pub fn wants_uvm(caps: &Capabilities) -> bool {
    caps.has(Capability::Compute) || caps.has(Capability::Video)
}

/// `nvidia-modeset` goes with `display`.
pub fn wants_modeset(caps: &Capabilities) -> bool {
    caps.has(Capability::Display)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(s: &str) -> Capabilities {
        Capabilities(s.split(',').filter_map(Capability::from_name).collect())
    }

    #[test]
    fn capability_to_files() {
        let u = library_names(&caps("utility"));
        assert!(u.contains(&"libnvidia-ml.so") && !u.contains(&"libcuda.so"));
        let c = library_names(&caps("compute"));
        assert!(c.contains(&"libcuda.so") && !c.contains(&"libnvidia-ml.so"));
        // video implies the compute libraries (libnvidia-container's VIDEO_LIBS|COMPUTE_LIBS)
        assert!(library_names(&caps("video")).contains(&"libcuda.so"));
        assert!(library_names(&caps("display")).contains(&"libGLX_nvidia.so"));
        assert_eq!(binary_names(&caps("utility"))[0], "nvidia-smi");
        assert!(
            binary_names(&caps("compute"))
                .iter()
                .all(|b| b.starts_with("nvidia-cuda-mps"))
        );
        assert!(wants_uvm(&caps("video")) && !wants_uvm(&caps("utility")));
        assert!(wants_modeset(&caps("display")) && !wants_modeset(&caps("graphics")));
    }
}
