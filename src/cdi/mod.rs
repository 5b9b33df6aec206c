//! CDI (Container Device Interface) specs: `nvhook cdi generate`.
//!
//! A CDI spec tells a CDI-aware engine (podman, CRI-O, containerd) how to edit a container's OCI
//! spec for a named device (`--device nvidia.com/gpu=0`): device nodes, bind mounts, environment
//! and hooks. nvhook builds it from the same inventory and plan code as the hook: the plan of
//! `NVIDIA_VISIBLE_DEVICES=none` (the driver's files and control nodes, no GPU) becomes the
//! spec-wide edits, and each device's edits are its own plan less that common part. What a static
//! spec cannot do (soname links, the image's linker cache, CUDA forward compat) is left to
//! `nvhook cdi-hook` ([`hook`]), which the spec registers as a `createRuntime` hook.
//!
//! What the plan does and a spec does not: the read-only tmpfs over `/proc/driver/nvidia` that
//! shows a hook-run container only its own GPUs (a spec has no way to say "a tmpfs holding these
//! binds"); device access is limited all the same, by the device cgroup rules the engine derives
//! from `deviceNodes`.

pub mod hook;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::Error;
use crate::layout::Layout;
use crate::nvidia::request::{self, Capabilities, Devices, Request};
use crate::nvidia::{self, Inventory, catalog};
use crate::plan::Plan;
use crate::rootfs::Rootfs;
use crate::timing::Timer;

/// The lowest CDI version with what nvhook's specs use: device names starting with a digit
/// (`0`, `1:0`) and `deviceNodes[].hostPath` both came in 0.5.0. It is also the highest version
/// podman 4.3 (Debian 12) accepts; later engines accept it too.
pub const DEFAULT_VERSION: &str = "0.5.0";
/// Versions nvhook can write: the spec's fields it uses are the same in all of them.
pub const VERSIONS: &[&str] = &["0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0"];
pub const DEFAULT_KIND: &str = "nvidia.com/gpu";
/// Where podman, CRI-O and containerd look for static specs (`/var/run/cdi` is the volatile one).
pub const DEFAULT_OUTPUT: &str = "/etc/cdi/nvhook.json";

/// A CDI spec (the subset of fields nvhook writes; names as in the CDI JSON schema).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    #[serde(rename = "cdiVersion")]
    pub version: String,
    pub kind: String,
    pub devices: Vec<Device>,
    #[serde(rename = "containerEdits")]
    pub edits: Edits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub name: String,
    #[serde(rename = "containerEdits")]
    pub edits: Edits,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Edits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Hook>,
}

impl Edits {
    pub fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.device_nodes.is_empty()
            && self.mounts.is_empty()
            && self.hooks.is_empty()
    }
}

/// A device node the engine creates in the container (and allows in its device cgroup; no
/// `permissions` means `rwm`, what the hook grants).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    pub host_path: PathBuf,
    #[serde(rename = "type")]
    pub kind: String,
    pub major: u64,
    pub minor: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub options: Vec<String>,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    pub hook_name: String,
    pub path: PathBuf,
    pub args: Vec<String>,
}

/// What `nvhook cdi generate` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub kind: String,
    pub version: String,
    pub capabilities: Capabilities,
    /// The nvhook binary the spec's hook runs (absolute).
    pub hook_path: PathBuf,
}

/// `nvhook cdi generate [--output FILE|-] [--kind K] [--cdi-version V] [--capabilities LIST]
/// [--hook-path PATH]`: the options, with the host config for the capabilities it allows.
#[derive(Debug, Clone)]
pub struct GenerateArgs {
    /// `None`: standard output.
    pub output: Option<PathBuf>,
    pub kind: String,
    pub version: String,
    pub capabilities: Option<String>,
    pub hook_path: Option<PathBuf>,
    pub config: Option<PathBuf>,
}

impl GenerateArgs {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<GenerateArgs, Error> {
        let mut g = GenerateArgs {
            output: Some(DEFAULT_OUTPUT.into()),
            kind: DEFAULT_KIND.into(),
            version: DEFAULT_VERSION.into(),
            capabilities: None,
            hook_path: None,
            config: None,
        };
        let mut it = args.into_iter();
        while let Some(opt) = it.next() {
            let mut value = || {
                it.next().ok_or_else(|| {
                    Error::Usage(format!(
                        "cdi generate: {opt} needs a value; see `nvhook help`"
                    ))
                })
            };
            match opt.as_str() {
                "--output" | "-o" => {
                    let v = value()?;
                    g.output = (v != "-").then(|| v.into());
                }
                "--kind" => g.kind = value()?,
                "--cdi-version" => g.version = value()?,
                "--capabilities" => g.capabilities = Some(value()?),
                "--hook-path" => g.hook_path = Some(value()?.into()),
                "--config" | "-c" => g.config = Some(value()?.into()),
                other => {
                    return Err(Error::Usage(format!(
                        "cdi generate: unexpected argument {other:?}; see `nvhook help`"
                    )));
                }
            }
        }
        validate_kind(&g.kind)?;
        validate_version(&g.version)?;
        if let Some(p) = &g.hook_path
            && !p.is_absolute()
        {
            return Err(Error::Usage(format!(
                "--hook-path {}: must be absolute (runtimes exec it as is)",
                p.display()
            )));
        }
        Ok(g)
    }

    /// The generation options under the host's config (`--capabilities` checked against
    /// `supported-driver-capabilities`, as a container's NVIDIA_DRIVER_CAPABILITIES is).
    pub fn options(&self, config: &Config) -> Result<Options, Error> {
        let supported = config.supported().map_err(|reason| Error::ConfigParse {
            path: "config".into(),
            reason,
        })?;
        let capabilities =
            request::parse_capabilities(self.capabilities.as_deref(), false, &supported)
                .map_err(|e| Error::Usage(format!("--capabilities: {e}")))?;
        let hook_path = match &self.hook_path {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .and_then(|p| p.canonicalize())
                .map_err(|source| Error::Io {
                    what: "cannot find nvhook's own path for the spec's hook (give --hook-path)"
                        .into(),
                    source,
                })?,
        };
        Ok(Options {
            kind: self.kind.clone(),
            version: self.version.clone(),
            capabilities,
            hook_path,
        })
    }
}

/// `vendor.com/class`: a DNS-like vendor, a name of letters, digits, `-`, `_` (as CDI 0.5 checks).
pub fn validate_kind(kind: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Error::Usage(format!(
            "--kind {kind:?}: {why}; it must look like vendor.com/class (default {DEFAULT_KIND})"
        ))
    };
    let (vendor, class) = kind.split_once('/').ok_or_else(|| bad("no '/'"))?;
    let alnum_ends = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    let vendor_ok = alnum_ends(vendor)
        && vendor
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    let class_ok = alnum_ends(class)
        && class.len() <= 63
        && class
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
    if !vendor_ok {
        return Err(bad("invalid vendor"));
    }
    if !class_ok {
        return Err(bad("invalid class"));
    }
    Ok(())
}

pub fn validate_version(v: &str) -> Result<(), Error> {
    if VERSIONS.contains(&v) {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "--cdi-version {v:?}: nvhook writes {} (device names that start with a digit and deviceNodes' hostPath need 0.5.0; podman 4.3 reads up to 0.5.0)",
        VERSIONS.join(", ")
    )))
}

fn request_for(devices: Devices, caps: &Capabilities) -> Request {
    Request {
        devices,
        capabilities: caps.clone(),
        legacy: false,
        imex_channels: Vec::new(),
        mig_config: false,
        mig_monitor: false,
        requirements: Vec::new(),
    }
}

/// Build the spec for this host from the inventory and plan code of the hook.
pub fn generate(config: &Config, opts: &Options) -> Result<Spec, Error> {
    validate_kind(&opts.kind)?;
    validate_version(&opts.version)?;
    // A spec is static, so libraries go where the host keeps them (the driver root's own
    // layout); the hook's linker cache makes them resolvable in an image of any layout.
    let layout = Layout::detect(&Rootfs::open(&config.driver_root)?);
    let plan_for = |devices: Devices| -> Result<(Plan, Inventory), Error> {
        let req = request_for(devices, &opts.capabilities);
        let inv = Inventory::discover(config, &req, &mut Timer::new())?;
        let plan = nvidia::plan(&req, &inv, &layout, None);
        Ok((plan, inv))
    };
    let (common, inv_none) = plan_for(Devices::None)?;
    let (all, inv_all) = plan_for(Devices::All)?;
    if inv_all.gpus.is_empty() {
        return Err(Error::Usage(format!(
            "no GPU found under {}: a CDI spec needs at least one device",
            config.proc_root.join("driver/nvidia/gpus").display()
        )));
    }
    let compat = catalog::wants_uvm(&opts.capabilities).then(|| inv_none.driver_version.clone());
    let hook_path = opts.hook_path.as_path();
    let mut devices = vec![Device {
        name: "all".into(),
        edits: edits_of(&all, Some(&common), hook_path, None)?,
    }];
    let mut add = |names: [String; 2], tok: String| -> Result<(), Error> {
        let (plan, _) = plan_for(Devices::List(vec![tok]))?;
        let edits = edits_of(&plan, Some(&common), hook_path, None)?;
        for name in names {
            devices.push(Device {
                name,
                edits: edits.clone(),
            });
        }
        Ok(())
    };
    for g in &inv_all.gpus {
        add([g.index.to_string(), g.uuid.clone()], g.index.to_string())?;
    }
    for m in &inv_all.migs {
        let index = format!("{}:{}", m.parent, m.index);
        add([index.clone(), m.uuid.clone()], index)?;
    }
    for d in &devices {
        if d.edits.is_empty() {
            return Err(Error::Usage(format!(
                "device {:?} would have no edits of its own (CDI refuses such a spec)",
                d.name
            )));
        }
    }
    let mut edits = edits_of(&common, None, hook_path, compat)?;
    // The engine applies the spec; nvhook's prestart hook (if also registered) must then leave
    // the container alone even when the image says NVIDIA_VISIBLE_DEVICES=all.
    edits.env.push(format!("{}=void", request::VISIBLE_DEVICES));
    Ok(Spec {
        version: opts.version.clone(),
        kind: opts.kind.clone(),
        devices,
        edits,
    })
}

/// The CDI edits for `plan`, less what `common` already brings. Symlinks and linker-cache entries
/// become arguments of one `createRuntime` hook running `nvhook cdi-hook`.
pub fn edits_of(
    plan: &Plan,
    common: Option<&Plan>,
    hook_path: &Path,
    cuda_compat: Option<String>,
) -> Result<Edits, Error> {
    let mut e = Edits::default();
    for d in &plan.devices {
        if common.is_some_and(|c| c.devices.iter().any(|x| x.path == d.path)) {
            continue;
        }
        e.device_nodes.push(DeviceNode {
            path: d.path.clone(),
            host_path: d.node.host_path.clone(),
            kind: d.node.kind.letter().to_string(),
            major: d.node.major,
            minor: d.node.minor,
        });
    }
    for m in &plan.mounts {
        if common.is_some_and(|c| c.mounts.iter().any(|x| x.target == m.target)) {
            continue;
        }
        e.mounts.push(Mount {
            host_path: m.source.clone(),
            container_path: m.target.clone(),
            options: m.flags.names().into_iter().map(String::from).collect(),
            kind: "bind".into(),
        });
    }
    let args = hook::HookArgs {
        links: plan
            .symlinks
            .iter()
            .filter(|s| common.is_none_or(|c| !c.symlinks.contains(s)))
            .cloned()
            .collect(),
        ldcache: plan
            .ldcache
            .iter()
            .filter(|l| common.is_none_or(|c| !c.ldcache.contains(l)))
            .cloned()
            .collect(),
        cuda_compat,
    };
    if !args.is_empty() {
        let mut argv = vec!["nvhook".to_owned(), "cdi-hook".to_owned()];
        argv.extend(args.to_args()?);
        e.hooks.push(Hook {
            hook_name: "createRuntime".into(),
            path: hook_path.to_owned(),
            args: argv,
        });
    }
    Ok(e)
}

/// The spec as pretty JSON (JSON is also YAML, so engines read it under either extension).
pub fn to_json(spec: &Spec) -> Result<String, Error> {
    serde_json::to_string_pretty(spec)
        .map(|s| s + "\n")
        .map_err(|e| Error::Usage(format!("cannot serialize the CDI spec: {e}")))
}

/// Write `text` to `path` atomically, mode 0644: a temporary file in the same directory (named so
/// that engines scanning for `*.json`/`*.yaml` never read it half-written), synced, then renamed.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), Error> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |what: &str, source: std::io::Error| Error::Io {
        what: format!("cannot write the CDI spec {} ({what})", path.display()),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("--output {}: not a file name", path.display())))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| err("creating its directory", e))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| err("creating a temporary file", e))?;
        // the umask may have taken bits away: engines run as other users too
        f.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| err("chmod", e))?;
        f.write_all(text.as_bytes())
            .map_err(|e| err("writing", e))?;
        f.sync_all().map_err(|e| err("syncing", e))?;
        std::fs::rename(&tmp, path).map_err(|e| err("renaming into place", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests;
