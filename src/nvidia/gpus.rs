//! GPUs and the driver version, from the kernel's own files (no NVML: its init alone costs
//! hundreds of milliseconds).
//!
//! `<proc-root>/driver/nvidia/gpus/<bus id>/information` has one `Key: value` line per fact:
//!
//! ```text
//! Model:           NVIDIA H100 80GB HBM3
//! GPU UUID:        GPU-6f5d2c57-...
//! Bus Location:    0000:00:06.0
//! Device Minor:    0
//! GPU Excluded:    No
//! ```
//!
//! GPU indexes are the order of PCI bus ids, which is how NVML and nvidia-smi number GPUs
//! (CUDA's default order, FASTEST_FIRST, may differ; the toolkit follows NVML).

use std::path::{Path, PathBuf};

use serde::Serialize;

use std::os::unix::fs::MetadataExt;

use super::private_file::{read_private, write_private};
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gpu {
    /// nvidia-smi's index: position in PCI bus id order.
    pub index: u32,
    pub uuid: String,
    /// `/dev/nvidia<minor>`
    pub minor: u32,
    /// PCI bus id as the driver writes it (`0000:00:06.0`).
    pub bus_id: String,
    pub model: String,
    /// Its directory under `<proc-root>/driver/nvidia/gpus`.
    #[serde(skip)]
    pub proc_dir: std::path::PathBuf,
}

/// `Key: value` lines; whitespace around both is trimmed.
fn fields(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
}

/// Sort key of a PCI bus id `domain:bus:device.function` (hex); unparsable ids sort last, by text.
fn bus_key(bus_id: &str) -> (u64, String) {
    let parts: Vec<u64> = bus_id
        .split([':', '.'])
        .map(|p| u64::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    let key = match parts.as_slice() {
        [d, b, dev, f] => (d << 24) | (b << 16) | (dev << 8) | f,
        _ => u64::MAX,
    };
    (key, bus_id.to_ascii_lowercase())
}

/// Parse one GPU's `information` file. The index is filled in by [`discover`].
pub fn parse_information(path: &Path, text: &str, dir_name: &str) -> Result<Option<Gpu>, Error> {
    let (mut uuid, mut minor, mut bus, mut model, mut excluded) =
        (None, None, None, String::new(), false);
    for (k, v) in fields(text) {
        match k {
            "GPU UUID" => uuid = Some(v.to_owned()),
            "Device Minor" => {
                minor = Some(v.parse::<u32>().map_err(|_| Error::ProcParse {
                    path: path.to_owned(),
                    reason: format!("\"Device Minor\" is not a number: {v:?}"),
                })?)
            }
            "Bus Location" => bus = Some(v.to_owned()),
            "Model" => model = v.to_owned(),
            "GPU Excluded" => excluded = v.eq_ignore_ascii_case("yes"),
            _ => {}
        }
    }
    if excluded {
        // NVML does not enumerate excluded GPUs, so they have no index either.
        return Ok(None);
    }
    let missing = |what: &str| Error::ProcParse {
        path: path.to_owned(),
        reason: format!("no \"{what}\" line"),
    };
    let uuid = uuid.ok_or_else(|| missing("GPU UUID"))?;
    if !uuid.starts_with("GPU-") || uuid.len() > 64 || uuid.contains(['/', '\0']) {
        return Err(Error::ProcParse {
            path: path.to_owned(),
            reason: format!("unexpected GPU UUID {uuid:?}"),
        });
    }
    Ok(Some(Gpu {
        index: 0,
        uuid,
        minor: minor.ok_or_else(|| missing("Device Minor"))?,
        bus_id: bus.unwrap_or_else(|| dir_name.to_owned()),
        model,
        proc_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
    }))
}

/// All GPUs the driver knows, in index order. `memo`: each GPU's `information` as an earlier
/// start read it, while the GPU stays bound to the driver.
pub fn discover(proc_root: &Path, memo: Option<&GpuInfo>) -> Result<Vec<Gpu>, Error> {
    let dir = proc_root.join("driver/nvidia/gpus");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        // The driver is loaded (we read its version) but has no GPU: not an error, `none` works.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::NoDriver { path: dir, source }),
    };
    let mut gpus = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::NoDriver {
            path: dir.clone(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path: PathBuf = entry.path().join("information");
        let text = match memo.and_then(|m| m.get(&name)) {
            Some(text) => text,
            None => {
                let text = read_proc(&path)?;
                if let Some(m) = memo {
                    m.put(&name, &text);
                }
                text
            }
        };
        if let Some(gpu) = parse_information(&path, &text, &name)? {
            gpus.push(gpu);
        }
    }
    number(&mut gpus);
    Ok(gpus)
}

/// A file of the driver's `/proc` tree, bounded; missing means no driver.
fn read_proc(path: &Path) -> Result<String, Error> {
    crate::bounded::read_to_string(path, crate::bounded::PROC_TEXT).map_err(|source| {
        Error::NoDriver {
            path: path.to_owned(),
            source,
        }
    })
}

/// Give GPUs nvidia-smi's indexes: sorted by PCI bus id, numbered from 0.
pub fn number(gpus: &mut [Gpu]) {
    gpus.sort_by_key(|g| bus_key(&g.bus_id));
    for (i, g) in gpus.iter_mut().enumerate() {
        g.index = i as u32;
    }
}

/// The kernel module's version, from `<proc-root>/driver/nvidia/version`:
/// `NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build ...`.
pub fn driver_version(proc_root: &Path) -> Result<String, Error> {
    let path = proc_root.join("driver/nvidia/version");
    let text = read_proc(&path)?;
    parse_version(&text).ok_or_else(|| Error::ProcParse {
        path,
        reason: "no \"NVRM version\" line with a version number".into(),
    })
}

pub fn parse_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version:"))?;
    line.split_whitespace()
        .find(|w| {
            w.contains('.')
                && w.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_owned)
}

/// The driver's `information` file of each GPU as an earlier start read it (reading it asks the
/// GPU's firmware: 0.15-0.3 ms a GPU at every start on the GPU host), kept in
/// `<cache-dir>/gpu-<bus>.info` with the identity of the GPU's binding to the driver,
/// `<sys-root>/bus/pci/drivers/nvidia/<bus>`: sysfs makes that link anew, with a new inode
/// number, whenever the driver binds the device (a module reload, an unbind and rebind, a new
/// device at that address), and nothing the file tells (model, UUID, bus, device minor) changes
/// while it stays bound. No link there (a fake tree, another driver): read every time.
pub struct GpuInfo {
    dir: PathBuf,
    drivers: PathBuf,
}

/// A GPU's `information` file is far smaller.
const MAX_INFO: i64 = 64 << 10;

impl GpuInfo {
    /// None when the cache is off (an empty `cache-dir`).
    pub fn new(cache_dir: &Path, sys_root: &Path) -> Option<GpuInfo> {
        (!cache_dir.as_os_str().is_empty()).then(|| GpuInfo {
            dir: cache_dir.to_owned(),
            drivers: sys_root.join("bus/pci/drivers/nvidia"),
        })
    }

    fn binding(&self, bus: &str) -> Option<String> {
        if bus.is_empty() || bus.contains('/') || bus.starts_with('.') {
            return None;
        }
        let m = std::fs::symlink_metadata(self.drivers.join(bus)).ok()?;
        Some(format!("binding {} {}\n", m.dev(), m.ino()))
    }

    /// The file as kept for GPU `bus`, if its binding is the one it was read under.
    pub fn get(&self, bus: &str) -> Option<String> {
        let head = self.binding(bus)?;
        let bytes = read_private(&self.dir, &format!("gpu-{bus}.info"), MAX_INFO).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        text.strip_prefix(head.as_str()).map(str::to_owned)
    }

    /// Keep `text`, just read for GPU `bus` (best effort).
    pub fn put(&self, bus: &str, text: &str) {
        let Some(head) = self.binding(bus) else {
            return;
        };
        if let Err(e) = write_private(
            &self.dir,
            &format!("gpu-{bus}.info"),
            format!("{head}{text}").as_bytes(),
        ) {
            log::debug!("GPU {bus}: information not kept: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: &str = "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 42\nGPU UUID: \t GPU-6f5d2c57-1111-2222-3333-444455556666\nVideo BIOS: \t ??.??.??.??.??\nBus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\nBus Location: \t 0000:00:06.0\nDevice Minor: \t 0\nGPU Excluded:\t No\n";

    #[test]
    fn parses_the_h100_information_file() {
        let g = parse_information(Path::new("x"), H100, "0000:00:06.0")
            .unwrap()
            .unwrap();
        assert_eq!(g.uuid, "GPU-6f5d2c57-1111-2222-3333-444455556666");
        assert_eq!(g.minor, 0);
        assert_eq!(g.bus_id, "0000:00:06.0");
        assert_eq!(g.model, "NVIDIA H100 80GB HBM3");
    }

    #[test]
    fn excluded_gpus_are_skipped_and_bad_files_are_errors() {
        let ex = H100.replace("GPU Excluded:\t No", "GPU Excluded:\t Yes");
        assert_eq!(parse_information(Path::new("x"), &ex, "d").unwrap(), None);
        let no_uuid = H100.replace("GPU UUID", "GPU UID");
        assert!(
            parse_information(Path::new("x"), &no_uuid, "d")
                .unwrap_err()
                .to_string()
                .contains("GPU UUID")
        );
        let bad_minor = H100.replace("Device Minor: \t 0", "Device Minor: \t zero");
        assert!(parse_information(Path::new("x"), &bad_minor, "d").is_err());
        let bad_uuid = H100.replace("GPU-6f5d", "../../etc");
        assert!(parse_information(Path::new("x"), &bad_uuid, "d").is_err());
    }

    #[test]
    fn params_copy_stops_device_file_modification() {
        let dir = std::env::temp_dir().join(format!("nvhook-params-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("driver/nvidia")).unwrap();
        std::fs::write(
            dir.join("driver/nvidia/params"),
            "ResmanDebugLevel: 4294967295\nModifyDeviceFiles: 1\nDeviceFileUID: 0\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("driver/nvidia/version"),
            "NVRM version: x 1.2.3 y\n",
        )
        .unwrap();
        let f = driver_files(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let params = &f.files.iter().find(|(n, _)| n == "params").unwrap().1;
        assert_eq!(
            params,
            "ResmanDebugLevel: 4294967295\nModifyDeviceFiles: 0\nDeviceFileUID: 0\n"
        );
        assert!(
            f.files.iter().any(|(n, _)| n == "version")
                && !f.files.iter().any(|(n, _)| n == "registry")
        );
    }

    #[test]
    fn bus_order_is_numeric() {
        let mut ids = vec![
            "0000:86:00.0",
            "0000:3b:00.0",
            "0001:00:00.0",
            "0000:0a:00.0",
        ];
        ids.sort_by_key(|b| bus_key(b));
        assert_eq!(
            ids,
            [
                "0000:0a:00.0",
                "0000:3b:00.0",
                "0000:86:00.0",
                "0001:00:00.0"
            ]
        );
    }

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (dvs-builder@U22)  Thu Oct 2 2025\nGCC version: gcc 12\n").as_deref(),
            Some("580.159.04")
        );
        assert_eq!(
            parse_version("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n").as_deref(),
            Some("550.54.15")
        );
        assert_eq!(parse_version("garbage"), None);
    }
}

/// The driver's files a container's `/proc/driver/nvidia` keeps (libnvidia-container copies the
/// same three): `version`, `registry`, and `params` with `ModifyDeviceFiles: 0`, so that the
/// driver's user-space libraries in the container never try to create device nodes themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DriverFiles {
    pub files: Vec<(String, String)>,
}

pub fn driver_files(proc_root: &Path) -> DriverFiles {
    let dir = proc_root.join("driver/nvidia");
    let mut files = Vec::new();
    for name in ["version", "registry", "params"] {
        let Ok(mut text) =
            crate::bounded::read_to_string(&dir.join(name), crate::bounded::PROC_TEXT)
        else {
            continue;
        };
        if name == "params" {
            text = text
                .lines()
                .map(|l| {
                    if l.trim_start().starts_with("ModifyDeviceFiles:") {
                        "ModifyDeviceFiles: 0".to_owned()
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
                + "\n";
        }
        files.push((name.to_owned(), text));
    }
    DriverFiles { files }
}
