//! The NVIDIA device class: the `NVIDIA_*` contract, the host's driver, and the plan for one
//! container.

pub mod cache;
pub mod catalog;
pub mod compat;
pub mod driver_files;
pub mod facts;
pub mod gpus;
pub mod libraries;
pub mod mig;
pub mod nvml;
pub mod private_file;
pub mod request;
pub mod require;
pub mod select;

use std::path::PathBuf;

use serde::Serialize;

use crate::config::Config;
use crate::devnode::{HostNode, stat_node};
use crate::error::Error;
use crate::layout::Layout;
use crate::plan::{MountFlags, Plan, TmpfsBind, TmpfsDir, TmpfsFile};
use crate::timing::Timer;
use gpus::Gpu;
use libraries::{Binary, DriverRoot, Library};
use request::{Capabilities, Request};

const NODE_HINT: &str = "the driver creates it on first use: run `nvidia-smi` (or `nvidia-modprobe -u -c=0`) on the host, or check dev-root in the config";

/// What the host offers for one request.
/// Fields in the order of the functions that fill them (driver facts, GPU selection, device
/// nodes, driver files, live files); kept flat, not nested per kind, so that plan, facts, list
/// and cdi read them by the same paths as before the split of `discover`.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub driver_version: String,
    pub gpus: Vec<Gpu>,
    /// The GPUs the request selects, in request order.
    pub selected: Vec<Gpu>,
    /// The MIG devices it selects, and their (and MIG config/monitor's) capabilities.
    pub migs: Vec<mig::MigDevice>,
    pub mig_caps: Vec<mig::Cap>,
    /// `<proc-root>/driver/nvidia/capabilities`, shown whole to MIG config/monitor containers.
    pub caps_dir: Option<PathBuf>,
    /// The driver's libnvidia-ml (for NVML, loaded only when needed).
    pub nvml_lib: Option<PathBuf>,
    /// The driver's libcuda (its ELF note tells the CUDA version).
    pub libcuda: Option<PathBuf>,
    /// What NVML answered during selection, if it was asked (reused by requirement checks).
    #[serde(skip)]
    pub nvml_answers: Option<nvml::NvmlAnswers>,
    pub control_nodes: Vec<HostNode>,
    pub gpu_nodes: Vec<HostNode>,
    pub libraries: Vec<Library>,
    /// 32-bit libraries (compat32).
    pub libraries32: Vec<Library>,
    pub binaries: Vec<Binary>,
    pub firmware: Vec<PathBuf>,
    /// Graphics/display configuration files, X server modules, IPC sockets and directories.
    pub files: Vec<driver_files::DriverFile>,
    /// The selected GPUs' DRM nodes and their /dev/dri/by-path links.
    pub dri_nodes: Vec<HostNode>,
    pub dri_links: Vec<(String, String)>,
    /// Requested IMEX channel nodes.
    pub imex_nodes: Vec<HostNode>,
    /// What the container's `/proc/driver/nvidia` will hold besides the selected GPUs.
    pub proc_files: gpus::DriverFiles,
}

/// Libraries that must be there when their capability is asked for; a driver install without
/// them is broken, and a container without them would fail in a confusing way later.
const REQUIRED_LIBS: &[(&str, request::Capability)] = &[
    ("libcuda.so", request::Capability::Compute),
    ("libnvidia-ml.so", request::Capability::Utility),
];

impl Inventory {
    /// Discover what `request` needs from the host. Sub-phases are marked on `t`.
    pub fn discover(config: &Config, req: &Request, t: &mut Timer) -> Result<Inventory, Error> {
        let HostDriver {
            driver_version,
            all_gpus,
            proc_files,
        } = HostDriver::read(config)?;
        t.mark("inv_host");
        let (found, root) = cached_driver_files(config, req, &driver_version, t)?;
        let cache::DriverFiles {
            nvml_lib,
            libcuda,
            libraries,
            libraries32,
            binaries,
            firmware,
            files: found_files,
        } = found;
        let (libraries, libraries32) = (unflag(libraries), unflag(libraries32));
        let gpus = GpuSelection::select(config, req, &all_gpus, &nvml_lib)?;
        t.mark("inv_gpus");
        let (control_nodes, gpu_nodes) = device_nodes(config, &req.capabilities, &gpus.selected)?;
        t.mark("inv_nodes");
        let mut files = found_files;
        let live = LiveFiles::look_up(config, req, root.as_ref(), &gpus.selected, &mut files)?;
        t.mark("inv_live");
        Ok(Inventory {
            driver_version,
            gpus: all_gpus,
            selected: gpus.selected,
            migs: gpus.migs,
            mig_caps: gpus.mig_caps,
            caps_dir: gpus.caps_dir,
            nvml_lib,
            libcuda,
            nvml_answers: gpus.nvml_answers,
            control_nodes,
            gpu_nodes,
            libraries,
            libraries32,
            binaries,
            firmware,
            files,
            dri_nodes: live.dri_nodes,
            dri_links: live.dri_links,
            imex_nodes: live.imex_nodes,
            proc_files,
        })
    }
}

/// The driver facts from the kernel: its version, the GPUs, and `/proc/driver/nvidia`'s files.
struct HostDriver {
    driver_version: String,
    all_gpus: Vec<Gpu>,
    proc_files: gpus::DriverFiles,
}

impl HostDriver {
    fn read(config: &Config) -> Result<HostDriver, Error> {
        let driver_version = gpus::driver_version(&config.proc_root)?;
        let memo = gpus::GpuInfo::new(&config.cache_dir, &config.sys_root);
        let all_gpus = gpus::discover(&config.proc_root, memo.as_ref())?;
        let proc_files = gpus::driver_files(&config.proc_root);
        Ok(HostDriver {
            driver_version,
            all_gpus,
            proc_files,
        })
    }
}

/// The driver's files for `req`: from the inventory cache when an entry matches (marking
/// `inv_cache`), else found under the driver root (see [`driver_files`]) and stored. The driver
/// root comes back only when it was opened.
fn cached_driver_files(
    config: &Config,
    req: &Request,
    driver_version: &str,
    t: &mut Timer,
) -> Result<(cache::DriverFiles, Option<DriverRoot>), Error> {
    let slot = cache::Slot::new(
        &config.cache_dir,
        cache_key(config, req, driver_version),
        &config.driver_root,
    );
    let cached = slot.as_ref().and_then(cache::Slot::load);
    if cached.is_some() {
        t.mark("inv_cache");
    }
    Ok(match cached {
        Some(found) => (found, None),
        None => {
            let (found, root) = driver_files(config, req, driver_version, t)?;
            if let Some(slot) = &slot {
                let caps = &req.capabilities;
                slot.store(&found, &witnesses(&root, &found, caps, &config.binary_dirs));
            }
            (found, Some(root))
        }
    })
}

/// Libraries as the cache keeps them (with their ld.so.cache flags beside) back to [`Library`].
fn unflag(v: Vec<(Library, i32)>) -> Vec<Library> {
    v.into_iter()
        .map(|(mut l, f)| {
            l.cache_flags = f;
            l
        })
        .collect()
}

/// The GPUs and MIG devices the request selects, and the MIG capabilities they need.
struct GpuSelection {
    selected: Vec<Gpu>,
    migs: Vec<mig::MigDevice>,
    mig_caps: Vec<mig::Cap>,
    caps_dir: Option<PathBuf>,
    nvml_answers: Option<nvml::NvmlAnswers>,
}

impl GpuSelection {
    fn select(
        config: &Config,
        req: &Request,
        all_gpus: &[Gpu],
        nvml_lib: &Option<PathBuf>,
    ) -> Result<GpuSelection, Error> {
        let mut nvml = nvml::Nvml::new(nvml_lib.clone(), all_gpus);
        let selection = select::select(&req.devices, all_gpus, &config.proc_root, &mut nvml)?;
        let nvml_answers = nvml.take_answers();
        let selected = selection.gpus;
        let migs = selection.migs;
        let mut mig_caps = Vec::new();
        for m in &migs {
            if let Some(g) = selected.iter().find(|g| g.index == m.parent) {
                mig_caps.extend(mig::device_caps(&config.proc_root, &config.dev_root, g, m)?);
            }
        }
        let caps_dir = (req.mig_config || req.mig_monitor)
            .then(|| config.proc_root.join("driver/nvidia/capabilities"));
        if caps_dir.is_some()
            && matches!(req.devices, request::Devices::List(_))
            && !migs.is_empty()
        {
            return Err(Error::BadRequest {
                var: request::MIG_CONFIG.into(),
                reason: "cannot enable MIG config/monitor with specific MIG devices selected"
                    .into(),
            });
        }
        for (on, rel) in [
            (req.mig_config, "mig/config"),
            (req.mig_monitor, "mig/monitor"),
        ] {
            if on {
                mig_caps.push(mig::cap(&config.proc_root, &config.dev_root, rel)?);
            }
        }
        Ok(GpuSelection {
            selected,
            migs,
            mig_caps,
            caps_dir,
            nvml_answers,
        })
    }
}

/// The device node `/dev/<name>` under the dev root: an error when missing and `required`, else
/// skipped with a warning.
fn device_node(config: &Config, name: &str, required: bool) -> Result<Option<HostNode>, Error> {
    match stat_node(&config.dev_root, name) {
        Ok(Some(n)) => Ok(Some(n)),
        Ok(None) if !required => {
            log::warn!(
                "device node {} not found; skipped",
                config.dev_root.join("dev").join(name).display()
            );
            Ok(None)
        }
        Ok(None) => Err(Error::DeviceNode {
            path: config.dev_root.join("dev").join(name),
            reason: "not found".into(),
            hint: NODE_HINT,
        }),
        Err(e) => Err(Error::DeviceNode {
            path: config.dev_root.join("dev").join(name),
            reason: e.to_string(),
            hint: NODE_HINT,
        }),
    }
}

/// The control nodes the capabilities need, and the selected GPUs' nodes.
fn device_nodes(
    config: &Config,
    caps: &Capabilities,
    selected: &[Gpu],
) -> Result<(Vec<HostNode>, Vec<HostNode>), Error> {
    let node = |name: &str, required: bool| device_node(config, name, required);
    let mut control_nodes = Vec::new();
    control_nodes.extend(node("nvidiactl", true)?);
    if catalog::wants_uvm(caps) {
        control_nodes.extend(node("nvidia-uvm", false)?);
        control_nodes.extend(node("nvidia-uvm-tools", false)?);
    }
    if catalog::wants_modeset(caps) {
        control_nodes.extend(node("nvidia-modeset", false)?);
    }
    let mut gpu_nodes = Vec::new();
    for g in selected {
        gpu_nodes.extend(node(&format!("nvidia{}", g.minor), true)?);
    }
    Ok((control_nodes, gpu_nodes))
}

/// What is looked up at every start, never cached: DRM nodes, IMEX channels (and the IPC
/// sockets, added to the driver files).
struct LiveFiles {
    dri_nodes: Vec<HostNode>,
    dri_links: Vec<(String, String)>,
    imex_nodes: Vec<HostNode>,
}

impl LiveFiles {
    fn look_up(
        config: &Config,
        req: &Request,
        root: Option<&DriverRoot>,
        selected: &[Gpu],
        files: &mut Vec<driver_files::DriverFile>,
    ) -> Result<LiveFiles, Error> {
        let caps = &req.capabilities;
        // IPC sockets come and go with their daemons: looked up at every start
        let opened;
        let root_fs = match root {
            Some(r) => r.rootfs(),
            None => {
                opened = crate::rootfs::Rootfs::open(&config.driver_root).map_err(|e| {
                    Error::DriverFile {
                        path: config.driver_root.clone(),
                        reason: e.to_string(),
                    }
                })?;
                &opened
            }
        };
        files.extend(driver_files::ipc(
            root_fs,
            caps.has(request::Capability::Utility),
            catalog::wants_uvm(caps),
        ));
        let (dri_nodes, dri_links) = if catalog::wants_graphics(caps) {
            driver_files::dri_nodes(&config.sys_root, &config.dev_root, selected)?
        } else {
            (Vec::new(), Vec::new())
        };
        let imex_nodes = driver_files::imex_channels(&config.dev_root, &req.imex_channels)?;
        Ok(LiveFiles {
            dri_nodes,
            dri_links,
            imex_nodes,
        })
    }
}

/// What an inventory cache entry must match besides its witnesses: nvhook's version, the
/// driver's, everything of the request that the driver files depend on, and the whole config.
fn cache_key(config: &Config, req: &Request, driver_version: &str) -> String {
    format!(
        "nvhook {} format {}|driver {driver_version}|caps {:?}|arch {}|config {config:?}",
        env!("CARGO_PKG_VERSION"),
        cache::FORMAT,
        req.capabilities,
        std::env::consts::ARCH,
    )
}

/// The driver's files for `req` under the driver root: libraries (through the root's linker
/// cache), binaries, firmware, graphics configuration files and X modules. Sub-phases are
/// marked on `t`.
fn driver_files(
    config: &Config,
    req: &Request,
    driver_version: &str,
    t: &mut Timer,
) -> Result<(cache::DriverFiles, DriverRoot), Error> {
    let caps = &req.capabilities;
    let names = catalog::library_names(caps);
    let mut root = open_driver_root(config, caps, driver_version, &names)?;
    let flags = crate::ldcache::native_flags();
    let nvml_lib = root
        .find_library("libnvidia-ml.so", flags)
        .map(|l| l.host_path);
    let libcuda = root.find_library("libcuda.so", flags).map(|l| l.host_path);
    t.mark("inv_ldcache");
    let libraries = find_libraries(config, caps, driver_version, &mut root, &names, flags)?;
    let libraries32 = find_libraries32(caps, &mut root, &names);
    t.mark("inv_libs");
    let lib_dirs = lib_dirs_of(&libraries);
    let binaries = find_binaries(config, caps, &root, &lib_dirs);
    t.mark("inv_bins");
    let firmware = root.find_firmware();
    let files = find_graphics_files(caps, &root, &lib_dirs, driver_version);
    t.mark("inv_firmware");
    let flagged = |v: Vec<Library>| {
        v.into_iter().map(|l| {
            let f = l.cache_flags;
            (l, f)
        })
    };
    let found = cache::DriverFiles {
        nvml_lib,
        libcuda,
        libraries: flagged(libraries).collect(),
        libraries32: flagged(libraries32).collect(),
        binaries,
        firmware,
        files,
    };
    Ok((found, root))
}

/// The driver root, its linker cache read for the libraries `names` (and NVML, libcuda and,
/// for graphics, the unversioned libraries).
fn open_driver_root(
    config: &Config,
    caps: &Capabilities,
    driver_version: &str,
    names: &[&str],
) -> Result<DriverRoot, Error> {
    let mut prefixes = names.to_vec();
    prefixes.push("libnvidia-ml.so");
    prefixes.push("libcuda.so");
    if catalog::wants_graphics(caps) {
        prefixes.extend_from_slice(catalog::GRAPHICS_UNVERSIONED_LIBS);
    }
    DriverRoot::open(&config.driver_root, driver_version, &prefixes)
}

/// The native driver libraries `names` (each file once), then for graphics the unversioned
/// ones; a missing library its capability requires (see [`REQUIRED_LIBS`]) is an error.
fn find_libraries(
    config: &Config,
    caps: &Capabilities,
    driver_version: &str,
    root: &mut DriverRoot,
    names: &[&'static str],
    flags: i32,
) -> Result<Vec<Library>, Error> {
    let mut libraries: Vec<Library> = Vec::new();
    for name in names.iter().copied() {
        match root.find_library(name, flags) {
            Some(lib) => {
                if !libraries.iter().any(|l| l.host_path == lib.host_path) {
                    libraries.push(lib);
                }
            }
            None => {
                if let Some((_, cap)) = REQUIRED_LIBS
                    .iter()
                    .find(|(n, c)| *n == name && caps.has(*c))
                {
                    return Err(Error::LibraryMissing {
                        name: format!("{name}.{driver_version} (needed for '{cap}')"),
                        root: config.driver_root.clone(),
                        hint: "check that the driver is fully installed and that driver-root in the config points at it",
                    });
                }
                log::debug!("driver library {name} not found; skipped");
            }
        }
    }
    if catalog::wants_graphics(caps) {
        for name in catalog::GRAPHICS_UNVERSIONED_LIBS {
            if let Some(lib) = root.find_library_any_version(name, flags) {
                libraries.push(lib);
            }
        }
    }
    Ok(libraries)
}

/// The 32-bit copies of the libraries `names` (compat32, x86_64 only), each file once.
fn find_libraries32(
    caps: &Capabilities,
    root: &mut DriverRoot,
    names: &[&'static str],
) -> Vec<Library> {
    let mut libraries32 = Vec::new();
    if caps.has(request::Capability::Compat32) && std::env::consts::ARCH == "x86_64" {
        for name in names {
            if let Some(lib) = root.find_library(name, crate::ldcache::FLAG_ELF_LIBC6)
                && !libraries32
                    .iter()
                    .any(|l: &Library| l.host_path == lib.host_path)
            {
                libraries32.push(lib);
            }
        }
    }
    libraries32
}

/// The driver binaries the capabilities need (in the configured directories, the standard ones
/// and `bin` beside the library directories).
fn find_binaries(
    config: &Config,
    caps: &Capabilities,
    root: &DriverRoot,
    lib_dirs: &[PathBuf],
) -> Vec<Binary> {
    let bin_names = catalog::binary_names(caps);
    let binaries = root.find_binaries(&bin_names, &config.binary_dirs, lib_dirs);
    for n in bin_names
        .iter()
        .filter(|n| !binaries.iter().any(|b| b.name == **n))
    {
        log::debug!("driver binary {n} not found; skipped");
    }
    binaries
}

/// The graphics configuration files (graphics) and X server modules (display).
fn find_graphics_files(
    caps: &Capabilities,
    root: &DriverRoot,
    lib_dirs: &[PathBuf],
    driver_version: &str,
) -> Vec<driver_files::DriverFile> {
    let mut files = Vec::new();
    if catalog::wants_graphics(caps) {
        files.extend(driver_files::config_files(
            root.rootfs(),
            catalog::wants_modeset(caps),
        ));
    }
    if catalog::wants_modeset(caps) {
        files.extend(driver_files::xorg_modules(
            root.rootfs(),
            root.path(),
            lib_dirs,
            driver_version,
        ));
    }
    files
}

fn lib_dirs_of(libraries: &[Library]) -> Vec<PathBuf> {
    libraries
        .iter()
        .filter_map(|l| l.host_path.parent().map(PathBuf::from))
        .collect()
}

/// Everything whose change could change what [`driver_files`] finds (see nvidia/cache.rs).
fn witnesses(
    root: &DriverRoot,
    found: &cache::DriverFiles,
    caps: &Capabilities,
    binary_dirs: &[PathBuf],
) -> Vec<PathBuf> {
    let mut w = root.witnesses();
    let under = |rel: &str| root.path().join(rel.trim_start_matches('/'));
    w.extend(binary_dirs.iter().map(|d| under(&d.to_string_lossy())));
    w.extend(root.firmware_dirs().iter().map(|d| under(d)));
    let libs: Vec<Library> = found.libraries.iter().map(|(l, _)| l.clone()).collect();
    let lib_dirs = lib_dirs_of(&libs);
    // `bin` beside each library directory is searched for binaries
    w.extend(
        lib_dirs
            .iter()
            .filter_map(|d| d.parent().map(|p| p.join("bin"))),
    );
    if catalog::wants_graphics(caps) || catalog::wants_modeset(caps) {
        w.extend(
            driver_files::candidate_dirs(catalog::wants_modeset(caps), root.path(), &lib_dirs)
                .iter()
                .map(|d| under(d)),
        );
    }
    // and the directory of everything found (a file replaced or removed moves its mtime)
    w.extend(
        found
            .libraries
            .iter()
            .chain(&found.libraries32)
            .filter_map(|(l, _)| l.host_path.parent().map(PathBuf::from))
            .chain(
                found
                    .binaries
                    .iter()
                    .filter_map(|b| b.host_path.parent().map(PathBuf::from)),
            )
            .chain(
                found
                    .firmware
                    .iter()
                    .filter_map(|f| f.parent().map(PathBuf::from)),
            )
            .chain(
                found
                    .files
                    .iter()
                    .filter_map(|f| f.host_path.parent().map(PathBuf::from)),
            ),
    );
    w.sort();
    w.dedup();
    w
}

/// What a plan is for (printed by `nvhook plan`).
#[derive(Debug, Serialize)]
struct Summary<'a> {
    class: &'static str,
    driver_version: &'a str,
    gpus: &'a [Gpu],
    capabilities: &'a Capabilities,
    layout: &'a Layout,
}

/// The plan for one container: pure, from the request, the inventory and what the image holds
/// (its library layout, its CUDA forward-compat libraries if any).
pub fn plan(
    req: &Request,
    inv: &Inventory,
    layout: &Layout,
    compat: Option<&compat::CudaCompat>,
) -> Plan {
    let mut p = Plan {
        summary: serde_json::to_value(Summary {
            class: "nvidia",
            driver_version: &inv.driver_version,
            gpus: &inv.selected,
            capabilities: &req.capabilities,
            layout,
        })
        .unwrap_or_default(),
        ..Plan::default()
    };
    let nodes = inv.control_nodes.iter().chain(&inv.gpu_nodes);
    let mig_nodes = inv.mig_caps.iter().map(|c| &c.node);
    for n in nodes
        .chain(mig_nodes)
        .chain(&inv.dri_nodes)
        .chain(&inv.imex_nodes)
    {
        p.add_device(n.clone());
    }
    for (link, target) in &inv.dri_links {
        p.add_symlink(link.clone(), target.clone());
    }
    plan_compat(&mut p, req, inv, compat);
    plan_libraries(&mut p, req, inv, layout);
    for b in &inv.binaries {
        let target = format!("{}/{}", layout.bin_dir, b.name);
        p.add_mount(b.host_path.clone(), target, false, MountFlags::CODE);
    }
    plan_files(&mut p, inv);
    plan_proc(&mut p, inv);
    for f in &inv.firmware {
        if let Some(name) = f.file_name() {
            let target = format!(
                "/lib/firmware/nvidia/{}/{}",
                inv.driver_version,
                name.to_string_lossy()
            );
            p.add_mount(f.clone(), target, false, MountFlags::DATA);
        }
    }
    p
}

/// CUDA forward compat goes first: the first linker-cache entry of a soname is the one ld.so
/// uses, so the image's newer libcuda wins over the host's for the same soname.
fn plan_compat(p: &mut Plan, req: &Request, inv: &Inventory, compat: Option<&compat::CudaCompat>) {
    let Some(c) = compat.filter(|c| {
        catalog::wants_uvm(&req.capabilities) && compat::use_compat(&c.version, &inv.driver_version)
    }) else {
        return;
    };
    plan_cuda_compat(p, c);
}

/// The linker-cache entries and ld.so.conf.d file that make the image's forward-compat libraries
/// win over the host's (also used by `nvhook cdi-hook`, which finds them at container creation).
pub fn plan_cuda_compat(p: &mut Plan, c: &compat::CudaCompat) {
    for (soname, path) in &c.libs {
        p.add_ldcache(soname.clone(), path.clone(), crate::ldcache::native_flags());
    }
    // so that an ldconfig run inside the container later keeps preferring them
    p.files.push(crate::plan::RootfsFile {
        path: "/etc/ld.so.conf.d/00-nvhook-cuda-compat.conf".into(),
        content: format!("{}\n", c.dir),
    });
}

/// Driver libraries (64-bit and, with compat32, 32-bit) into the image's library directories,
/// with their soname links and linker-cache entries.
fn plan_libraries(p: &mut Plan, req: &Request, inv: &Inventory, layout: &Layout) {
    for (libs, dir) in [
        (&inv.libraries, &layout.lib_dir),
        (&inv.libraries32, &layout.lib32_dir),
    ] {
        for lib in libs {
            p.add_library(dir, lib);
        }
        let dir = dir.trim_end_matches('/');
        for (prefix, link, target) in catalog::EXTRA_LINKS {
            if libs.iter().any(|l| l.file_name.starts_with(prefix)) {
                let target = target.replace("{ver}", &inv.driver_version);
                p.add_symlink(format!("{dir}/{link}"), target);
            }
        }
    }
    let allocator = inv
        .libraries
        .iter()
        .any(|l| l.soname == "libnvidia-allocator.so.1");
    if catalog::wants_graphics(&req.capabilities) && allocator {
        // GBM loads its backend by name from <libdir>/gbm (the toolkit makes the same link).
        let dir = layout.lib_dir.trim_end_matches('/');
        p.add_symlink(
            format!("{dir}/gbm/nvidia-drm_gbm.so"),
            "../libnvidia-allocator.so.1".into(),
        );
    }
}

/// Configuration files, X server modules, IPC sockets and directories.
fn plan_files(p: &mut Plan, inv: &Inventory) {
    for f in &inv.files {
        let xorg = f.target.starts_with("/usr/lib/xorg/");
        let flags = if f.directory || f.target.starts_with("/run/") {
            MountFlags::IPC
        } else if xorg {
            MountFlags::CODE
        } else {
            MountFlags::DATA
        };
        p.add_mount(f.host_path.clone(), f.target.clone(), f.directory, flags);
        let versioned = f.target.strip_suffix(&format!(".{}", inv.driver_version));
        if let (true, Some(base)) = (xorg, versioned) {
            // libglxserver_nvidia.so -> libglxserver_nvidia.so.<ver>, as the toolkit links it
            let file = f.target.rsplit('/').next().unwrap_or_default().to_owned();
            p.add_symlink(base.to_owned(), file);
        }
    }
}

/// /proc/driver/nvidia: only the selected GPUs, and the driver's files (params with
/// ModifyDeviceFiles: 0), as libnvidia-container shows them.
fn plan_proc(p: &mut Plan, inv: &Inventory) {
    let files = inv
        .proc_files
        .files
        .iter()
        .map(|(name, content)| TmpfsFile {
            name: name.clone(),
            content: content.clone(),
        });
    let binds = inv.selected.iter().filter_map(|g| {
        let name = g.proc_dir.file_name()?.to_string_lossy().into_owned();
        Some(TmpfsBind {
            source: g.proc_dir.clone(),
            path: format!("gpus/{name}"),
            file: false,
        })
    });
    // MIG: the capability files of the selected MIG devices, or the whole capabilities directory
    // for MIG config/monitor
    let caps: Vec<TmpfsBind> = match &inv.caps_dir {
        Some(dir) => vec![TmpfsBind {
            source: dir.clone(),
            path: "capabilities".into(),
            file: false,
        }],
        None => inv
            .mig_caps
            .iter()
            .map(|c| TmpfsBind {
                source: c.access.clone(),
                path: c.proc_rel.clone(),
                file: true,
            })
            .collect(),
    };
    let binds = binds.chain(caps);
    p.tmpfs.push(TmpfsDir {
        target: "/proc/driver/nvidia".into(),
        files: files.collect(),
        binds: binds.collect(),
        only_on_procfs: true,
    });
}
