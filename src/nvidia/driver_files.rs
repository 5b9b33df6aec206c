//! Driver files beyond libraries and binaries: the graphics stack's configuration (Vulkan ICD,
//! EGL vendor and platform files, GBM), the X server modules for `display`, the selected GPUs'
//! DRM nodes, the IPC sockets of nvidia-persistenced/fabric manager and the MPS pipe directory,
//! and IMEX channels. The file lists follow NVIDIA's toolkit (`internal/discover/graphics.go`,
//! `ipc.go`); what a host lacks is skipped.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::devnode::{HostNode, stat_node};
use crate::error::Error;
use crate::rootfs::Rootfs;

use super::gpus::Gpu;

/// A host file and the container path it is mounted at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DriverFile {
    pub host_path: PathBuf,
    pub target: String,
    /// A directory (the MPS pipe dir) rather than a file.
    pub directory: bool,
}

/// Where the graphics configuration files are looked for (driver-root relative), in order:
/// `/etc` first, then the data dirs, then the layout of a driver installed under /usr/local/nvidia.
const CONFIG_DIRS: &[&str] = &[
    "etc",
    "usr/local/share",
    "usr/share",
    "usr/local/nvidia/share",
];

/// (relative name, container directory): Vulkan files go under /etc as the toolkit mounts them.
const GRAPHICS_CONFIG: &[(&str, &str)] = &[
    ("vulkan/icd.d/nvidia_icd.json", "/etc/vulkan/icd.d"),
    ("vulkan/icd.d/nvidia_layers.json", "/etc/vulkan/icd.d"),
    (
        "vulkan/implicit_layer.d/nvidia_layers.json",
        "/etc/vulkan/implicit_layer.d",
    ),
    (
        "glvnd/egl_vendor.d/10_nvidia.json",
        "/usr/share/glvnd/egl_vendor.d",
    ),
    (
        "egl/egl_external_platform.d/15_nvidia_gbm.json",
        "/usr/share/egl/egl_external_platform.d",
    ),
    (
        "egl/egl_external_platform.d/10_nvidia_wayland.json",
        "/usr/share/egl/egl_external_platform.d",
    ),
    (
        "egl/egl_external_platform.d/09_nvidia_wayland2.json",
        "/usr/share/egl/egl_external_platform.d",
    ),
    ("nvidia/nvoptix.bin", "/usr/share/nvidia"),
    ("OpenCL/vendors/nvidia.icd", "/etc/OpenCL/vendors"),
];

/// X server configuration for `display`.
const DISPLAY_CONFIG: &[(&str, &str)] = &[
    ("X11/xorg.conf.d/10-nvidia.conf", "/etc/X11/xorg.conf.d"),
    (
        "X11/xorg.conf.d/nvidia-drm-outputclass.conf",
        "/etc/X11/xorg.conf.d",
    ),
];

/// X server module directories (driver-root relative, `{lib}` = each driver library directory).
const XORG_DIRS: &[&str] = &[
    "{lib}/nvidia/xorg",
    "{lib}/xorg/modules/drivers",
    "{lib}/xorg/modules/extensions",
    "usr/lib/xorg/modules/drivers",
    "usr/lib/xorg/modules/extensions",
    "usr/lib64/xorg/modules/drivers",
    "usr/lib64/xorg/modules/extensions",
    "usr/X11R6/lib/modules/drivers",
    "usr/X11R6/lib/modules/extensions",
];

/// The directories the graphics configuration files and X server modules are looked for in
/// (each candidate's own directory, driver-root relative): the inventory cache's witnesses, so
/// that a file installed or removed there is noticed.
pub fn candidate_dirs(display: bool, root_path: &Path, lib_dirs: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    let list = GRAPHICS_CONFIG
        .iter()
        .chain(if display { DISPLAY_CONFIG } else { &[] });
    for (rel, _) in list {
        let sub = Path::new(rel)
            .parent()
            .map(|p| p.to_string_lossy().into_owned());
        for dir in CONFIG_DIRS {
            out.push(format!("{dir}/{}", sub.as_deref().unwrap_or("")));
        }
    }
    if display {
        let libs: Vec<String> = lib_dirs
            .iter()
            .filter_map(|d| d.strip_prefix(root_path).ok())
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        for d in XORG_DIRS {
            if d.contains("{lib}") {
                out.extend(libs.iter().map(|l| d.replace("{lib}", l)));
            } else {
                out.push((*d).to_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn base_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The graphics (and, with `display`, X server) configuration files the host has: the first
/// location that has each.
pub fn config_files(root: &Rootfs, display: bool) -> Vec<DriverFile> {
    let list = GRAPHICS_CONFIG
        .iter()
        .chain(if display { DISPLAY_CONFIG } else { &[] });
    let mut out = Vec::new();
    for (rel, target_dir) in list {
        for dir in CONFIG_DIRS {
            if let Ok(host_path) = root.real_path(&format!("/{dir}/{rel}"))
                && host_path.is_file()
            {
                out.push(DriverFile {
                    target: format!("{target_dir}/{}", base_name(Path::new(rel))),
                    host_path,
                    directory: false,
                });
                break;
            }
        }
    }
    out
}

/// The X server's NVIDIA modules for `display`: `nvidia_drv.so` and `libglxserver_nvidia.so.<ver>`
/// (first hit of each), mounted where Xorg looks for them.
pub fn xorg_modules(
    root: &Rootfs,
    root_path: &Path,
    lib_dirs: &[PathBuf],
    version: &str,
) -> Vec<DriverFile> {
    let libs: Vec<String> = lib_dirs
        .iter()
        .filter_map(|d| d.strip_prefix(root_path).ok())
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    let glx = format!("libglxserver_nvidia.so.{version}");
    let mut out = Vec::new();
    for (name, target_dir) in [
        ("nvidia_drv.so", "/usr/lib/xorg/modules/drivers"),
        (glx.as_str(), "/usr/lib/xorg/modules/extensions"),
    ] {
        let dirs = XORG_DIRS.iter().flat_map(|d| {
            if d.contains("{lib}") {
                libs.iter()
                    .map(|l| d.replace("{lib}", l))
                    .collect::<Vec<_>>()
            } else {
                vec![d.to_string()]
            }
        });
        for dir in dirs {
            if let Ok(host_path) = root.real_path(&format!("/{dir}/{name}"))
                && host_path.is_file()
            {
                out.push(DriverFile {
                    host_path,
                    target: format!("{target_dir}/{name}"),
                    directory: false,
                });
                break;
            }
        }
    }
    out
}

/// DRM nodes and the `(link, target)` pairs of their `/dev/dri/by-path` links.
pub type DriNodes = (Vec<HostNode>, Vec<(String, String)>);

/// The DRM nodes (`/dev/dri/card*`, `/dev/dri/renderD*`) of the selected GPUs, found through
/// `<sys-root>/bus/pci/devices/<bus id>/drm/`, with the `/dev/dri/by-path` links udev would make.
pub fn dri_nodes(sys_root: &Path, dev_root: &Path, gpus: &[Gpu]) -> Result<DriNodes, Error> {
    let mut nodes = Vec::new();
    let mut links = Vec::new();
    for g in gpus {
        let drm = sys_root
            .join("bus/pci/devices")
            .join(g.bus_id.to_ascii_lowercase())
            .join("drm");
        let Ok(entries) = std::fs::read_dir(&drm) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                (n.starts_with("card") || n.starts_with("renderD"))
                    && n.bytes()
                        .skip_while(|b| b.is_ascii_alphabetic())
                        .all(|b| b.is_ascii_digit())
            })
            .collect();
        names.sort();
        for n in names {
            let node = stat_node(dev_root, &format!("dri/{n}")).map_err(|e| Error::DeviceNode {
                path: dev_root.join("dev/dri").join(&n),
                reason: e.to_string(),
                hint: "check dev-root in the config",
            })?;
            if let Some(node) = node {
                let kind = if n.starts_with("card") {
                    "card"
                } else {
                    "render"
                };
                links.push((
                    format!(
                        "/dev/dri/by-path/pci-{}-{kind}",
                        g.bus_id.to_ascii_lowercase()
                    ),
                    format!("../{n}"),
                ));
                nodes.push(node);
            }
        }
    }
    Ok((nodes, links))
}

/// nvidia-persistenced's and the fabric manager's sockets (with `utility`) and the MPS pipe
/// directory (with compute), where the host has them. Mounted read-write: clients talk to them.
pub fn ipc(root: &Rootfs, utility: bool, compute: bool) -> Vec<DriverFile> {
    let mut out = Vec::new();
    if utility {
        for sock in ["nvidia-persistenced/socket", "nvidia-fabricmanager/socket"] {
            for base in ["/run", "/var/run"] {
                if let Ok(p) = root.real_path(&format!("{base}/{sock}")) {
                    out.push(DriverFile {
                        host_path: p,
                        target: format!("/run/{sock}"),
                        directory: false,
                    });
                    break;
                }
            }
        }
    }
    if compute
        && let Ok(p) = root.real_path("/tmp/nvidia-mps")
        && p.is_dir()
    {
        out.push(DriverFile {
            host_path: p,
            target: "/tmp/nvidia-mps".into(),
            directory: true,
        });
    }
    out
}

/// `/dev/nvidia-caps-imex-channels/channel<N>` for the requested channels; a channel the host
/// has not created is an error naming it.
pub fn imex_channels(dev_root: &Path, channels: &[u32]) -> Result<Vec<HostNode>, Error> {
    let mut out = Vec::new();
    for c in channels {
        let name = format!("nvidia-caps-imex-channels/channel{c}");
        match stat_node(dev_root, &name) {
            Ok(Some(n)) => out.push(n),
            Ok(None) => {
                return Err(Error::DeviceNode {
                    path: dev_root.join("dev").join(&name),
                    reason: "not found".into(),
                    hint: "the IMEX channel must exist on the host (created by nvidia-modprobe or the IMEX daemon's setup); check NVIDIA_IMEX_CHANNELS",
                });
            }
            Err(e) => {
                return Err(Error::DeviceNode {
                    path: dev_root.join("dev").join(&name),
                    reason: e.to_string(),
                    hint: "check dev-root in the config",
                });
            }
        }
    }
    Ok(out)
}
