//! CUDA forward compatibility: an image may ship a newer driver's user-space CUDA libraries in
//! `/usr/local/cuda/compat` (the `cuda-compat` package) so that a new CUDA runs on an older host
//! driver. As NVIDIA's toolkit (`nvidia-cdi-hook enable-cuda-compat`) decides: they are used only
//! when the directory holds exactly one `libcuda.so.X.Y...` and X, its major version, is greater
//! than the host driver's major. Otherwise (an older or same-branch compat library, as on a host
//! whose driver is newer than the image's CUDA) the host's libraries are used.
//!
//! The image's files are read through the in-root resolver; they are never executed.

use serde::Serialize;

use crate::rootfs::{Kind, Rootfs};

pub const COMPAT_DIR: &str = "/usr/local/cuda/compat";

/// The image's forward-compat libraries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CudaCompat {
    /// Container directory (as written in the image's paths; ld.so follows its symlinks).
    pub dir: String,
    /// Driver version of the compat libcuda (`libcuda.so.<version>`).
    pub version: String,
    /// (soname, container path) of each compat library.
    pub libs: Vec<(String, String)>,
}

fn major(v: &str) -> Option<u64> {
    v.split('.').next()?.parse().ok()
}

/// Use the compat libraries with this host driver?
pub fn use_compat(compat_version: &str, host_version: &str) -> bool {
    matches!((major(compat_version), major(host_version)), (Some(c), Some(h)) if c > h)
}

/// Find the image's compat libraries, if any.
pub fn detect(rootfs: &Rootfs) -> Option<CudaCompat> {
    let entries = rootfs.list_dir(COMPAT_DIR, 256).ok()?;
    let cudas: Vec<&str> = entries
        .iter()
        .filter(|(n, k)| {
            *k != Kind::Dir
                && n.strip_prefix("libcuda.so.")
                    .is_some_and(|v| v.contains('.'))
        })
        .map(|(n, _)| n.as_str())
        .collect();
    let [libcuda] = cudas.as_slice() else {
        if cudas.len() > 1 {
            log::warn!("{COMPAT_DIR} holds several libcuda.so.X.Y ({cudas:?}); not using it");
        }
        return None;
    };
    let version = libcuda.trim_start_matches("libcuda.so.").to_owned();
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    let mut libs = Vec::new();
    for (name, kind) in &entries {
        // the real files; the soname links beside them are found by name below
        if *kind != Kind::File || !name.starts_with("lib") || !name.contains(".so.") {
            continue;
        }
        let path = format!("{COMPAT_DIR}/{name}");
        let Ok(file) = rootfs.open_file(&path) else {
            continue;
        };
        let Ok(info) = crate::elf::read_file(&file) else {
            continue;
        };
        if info.cache_flags != crate::ldcache::native_flags() {
            continue;
        }
        let soname = info.soname.unwrap_or_else(|| name.clone());
        let target = if names.contains(&soname.as_str()) {
            format!("{COMPAT_DIR}/{soname}")
        } else {
            path
        };
        libs.push((soname, target));
    }
    Some(CudaCompat {
        dir: COMPAT_DIR.into(),
        version,
        libs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// enable-cuda-compat: compat is used only for a greater major version.
    #[test]
    fn compat_rule() {
        let rows = [
            (
                "580.95.05",
                "580.159.04",
                false,
                "same branch, older (the GPU host's case)",
            ),
            ("580.95.05", "550.54.15", true, "newer branch than the host"),
            ("550.54.15", "580.159.04", false, "older branch"),
            (
                "575.1.1",
                "575.99.0",
                false,
                "same major, whatever the minor",
            ),
            ("x.y", "550.1", false, "unparsable: not used"),
        ];
        for (compat, host, want, why) in rows {
            assert_eq!(use_compat(compat, host), want, "{why}");
        }
    }
}
