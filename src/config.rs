//! `/etc/nvhook/config.toml`: host settings. Valid with no file at all.
//!
//! The file belongs to the host's administrator (trusted), but a typo must not silently fall back to
//! a default, so unknown keys are an error that names them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;

pub const DEFAULT_PATH: &str = "/etc/nvhook/config.toml";
/// Device-class files (docs/device-classes.md).
pub const DEFAULT_CLASSES_DIR: &str = "/etc/nvhook/classes.d";
/// The host inventory cache (a tmpfs on systemd hosts: emptied at boot).
pub const DEFAULT_CACHE_DIR: &str = "/run/nvhook";
/// Where extended device programs are pinned (src/apply/progcache.rs).
pub const DEFAULT_PROGRAM_CACHE_DIR: &str = "/sys/fs/bpf/nvhook";
/// Environment variable that names the config file (the hook's environment comes from the
/// runtime's hook registration, never from the container).
pub const CONFIG_ENV: &str = "NVHOOK_CONFIG";
const MAX_CONFIG_SIZE: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Config {
    /// Where the driver is installed: its `etc/ld.so.cache`, libraries, binaries and firmware are
    /// looked up under this root (`/run/nvidia/driver` for a containerized driver).
    pub driver_root: PathBuf,
    /// The root under which `dev/nvidia*` device nodes are found.
    pub dev_root: PathBuf,
    /// Where procfs is mounted (`driver/nvidia/...` is read from there).
    pub proc_root: PathBuf,
    /// Where sysfs is mounted (the GPUs' DRM nodes are found under `bus/pci/devices`).
    pub sys_root: PathBuf,
    /// Extra directories (host paths, under `driver-root`) searched for the driver's binaries, before
    /// the standard ones.
    pub binary_dirs: Vec<PathBuf>,
    /// Don't touch the container's device cgroup (rootless runtimes; setups that grant devices
    /// themselves).
    pub no_cgroups: bool,
    /// The capabilities containers may ask for ("all", or a comma list); others are an error.
    pub supported_driver_capabilities: String,
    /// Ignore every `NVIDIA_REQUIRE_*` constraint (as `NVIDIA_DISABLE_REQUIRE=true` would).
    pub disable_require: bool,
    /// Honour `NVIDIA_VISIBLE_DEVICES` in containers without CAP_SYS_ADMIN. Turn off to let only
    /// privileged containers, or volume-mount requests, select GPUs.
    pub accept_nvidia_visible_devices_envvar_when_unprivileged: bool,
    /// Accept device requests as volume mounts of /dev/null under
    /// /var/run/nvidia-container-devices/<id> (they take precedence over the variable).
    pub accept_nvidia_visible_devices_as_volume_mounts: bool,
    /// Append nvhook's log (at NVHOOK_LOG's level, default warn) to this file.
    pub log_file: Option<PathBuf>,
    /// Where device-class files (`<name>.toml`) are read from; read only for containers that
    /// set an `NVHOOK_DEVICES_*` variable. A missing directory means no classes.
    pub classes_dir: PathBuf,
    /// Where the host inventory cache is kept (the driver's files as last found, checked against
    /// the driver version and the driver directories at every start; src/nvidia/cache.rs). An
    /// empty path turns the cache off.
    pub cache_dir: PathBuf,
    /// When the container's cgroup is a systemd unit, also record the granted nodes in the unit
    /// (`DeviceAllow=`, runtime) over the system bus, so that `systemctl daemon-reload` keeps
    /// them (docs/systemd.md).
    pub systemd_device_grants: bool,
    /// Where extended device programs (cgroup v2) are pinned for the next start to reuse instead
    /// of loading them again (a directory on a bpf filesystem; src/apply/progcache.rs). An empty
    /// path turns the cache off; so does a host without a bpf filesystem there.
    pub program_cache_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            driver_root: PathBuf::from("/"),
            dev_root: PathBuf::from("/"),
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            binary_dirs: Vec::new(),
            no_cgroups: false,
            supported_driver_capabilities: "all".into(),
            disable_require: false,
            accept_nvidia_visible_devices_envvar_when_unprivileged: true,
            accept_nvidia_visible_devices_as_volume_mounts: false,
            log_file: None,
            classes_dir: PathBuf::from(DEFAULT_CLASSES_DIR),
            cache_dir: PathBuf::from(DEFAULT_CACHE_DIR),
            systemd_device_grants: true,
            program_cache_dir: PathBuf::from(DEFAULT_PROGRAM_CACHE_DIR),
        }
    }
}

impl Config {
    /// Load the config: `explicit` (from `--config`) if given, else `$NVHOOK_CONFIG` if set, else
    /// `/etc/nvhook/config.toml` if it exists, else the defaults. A file named explicitly must exist.
    pub fn load(explicit: Option<&Path>) -> Result<Config, Error> {
        Self::load_with_source(explicit).map(|(c, _)| c)
    }

    /// Like [`Config::load`], also telling which file was read (None: the defaults).
    pub fn load_with_source(explicit: Option<&Path>) -> Result<(Config, Option<PathBuf>), Error> {
        let from_env = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty());
        let (path, required) = match (explicit, from_env) {
            (Some(p), _) => (p.to_path_buf(), true),
            (None, Some(p)) => (PathBuf::from(p), true),
            (None, None) => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match read_bounded(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Config::default(), None));
            }
            Err(source) => return Err(Error::ConfigRead { path, source }),
        };
        match Config::parse(&text) {
            Ok(c) => Ok((c, Some(path))),
            Err(reason) => Err(Error::ConfigParse { path, reason }),
        }
    }

    /// Parse config text; the error is toml's message (with line and column).
    pub fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string().trim().to_owned())?;
        c.supported()?;
        Ok(c)
    }

    /// `supported-driver-capabilities` as a set; a word that is not a capability is an error
    /// (the toolkit: "Invalid value for config option").
    pub fn supported(&self) -> Result<crate::capability::Capabilities, String> {
        use crate::capability::{Capabilities, Capability};
        let mut caps = Capabilities::default();
        for w in self
            .supported_driver_capabilities
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
        {
            if w == "all" {
                return Ok(Capabilities::all());
            }
            let c = Capability::from_name(w).ok_or_else(|| {
                format!(
                    "supported-driver-capabilities: {w:?} is not a capability (supported: {})",
                    Capabilities::all()
                )
            })?;
            caps.0.insert(c);
        }
        Ok(caps)
    }
}

/// The config file's text; over [`MAX_CONFIG_SIZE`] is an error (it was silently cut there).
fn read_bounded(path: &Path) -> std::io::Result<String> {
    crate::bounded::read_to_string(path, MAX_CONFIG_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn keys_are_read() {
        let c = Config::parse("driver-root = \"/run/nvidia/driver\"\nno-cgroups = true\n").unwrap();
        assert_eq!(c.driver_root, Path::new("/run/nvidia/driver"));
        assert!(c.no_cgroups);
        assert_eq!(c.proc_root, Path::new("/proc"));
        assert_eq!(c.classes_dir, Path::new("/etc/nvhook/classes.d"));
        let c = Config::parse("classes-dir = \"/srv/classes\"\n").unwrap();
        assert_eq!(c.classes_dir, Path::new("/srv/classes"));
        assert!(Config::default().systemd_device_grants);
        let c = Config::parse("systemd-device-grants = false\n").unwrap();
        assert!(!c.systemd_device_grants);
    }

    #[test]
    fn unknown_keys_and_bad_types_are_errors_naming_them() {
        let e = Config::parse("driver_root = \"/x\"\n").unwrap_err();
        assert!(e.contains("driver_root"), "{e}");
        let e = Config::parse("no-cgroups = \"yes\"\n").unwrap_err();
        assert!(e.contains("no-cgroups") || e.contains("line 1"), "{e}");
    }

    #[test]
    fn toolkit_options() {
        let c = Config::parse(
            "supported-driver-capabilities = \"compute, utility\"\ndisable-require = true\n\
             accept-nvidia-visible-devices-envvar-when-unprivileged = false\n\
             accept-nvidia-visible-devices-as-volume-mounts = true\nlog-file = \"/var/log/nvhook.log\"\n",
        )
        .unwrap();
        assert_eq!(c.supported().unwrap().to_string(), "compute,utility");
        assert!(c.disable_require && !c.accept_nvidia_visible_devices_envvar_when_unprivileged);
        assert!(c.accept_nvidia_visible_devices_as_volume_mounts);
        let d = Config::default();
        assert!(
            d.accept_nvidia_visible_devices_envvar_when_unprivileged
                && !d.accept_nvidia_visible_devices_as_volume_mounts
        );
        assert_eq!(
            d.supported().unwrap().to_string(),
            "compat32,compute,display,graphics,ngx,utility,video"
        );
        let e = Config::parse("supported-driver-capabilities = \"compute,gpu\"\n").unwrap_err();
        assert!(e.contains("\"gpu\""), "{e}");
    }

    #[test]
    fn an_explicit_file_must_exist() {
        let e = Config::load(Some(Path::new("/nonexistent/nvhook.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/nvhook.toml"), "{e}");
    }
}
