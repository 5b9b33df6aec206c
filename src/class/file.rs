//! Class files: `<classes-dir>/<name>.toml`, one device class each (docs/device-classes.md).
//!
//! The file belongs to the host's administrator, but a typo must not silently grant more or less
//! than meant: unknown keys are errors, every value is checked here, and each error names the
//! file and the field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::glob::Pattern;
use crate::devnode::NodeType;
use crate::plan::MountFlags;

/// Every class's variable starts with this, so the hook's fast path can tell from the container's
/// environment alone, without reading any file of the host, that no class is asked for.
pub use crate::state::spec::CLASS_ENV_PREFIX as ENV_PREFIX;
/// Class files larger than this are not class files.
const MAX_CLASS_FILE: u64 = 256 << 10;

/// A class file as written.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawClass {
    name: Option<String>,
    description: Option<String>,
    env: Option<String>,
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    shared_devices: Vec<String>,
    #[serde(default)]
    mounts: Vec<RawMount>,
    #[serde(default)]
    libraries: Vec<PathBuf>,
    #[serde(default)]
    cgroup_rules: Vec<String>,
    #[serde(default)]
    privileged_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawMount {
    source: PathBuf,
    target: Option<String>,
    options: Option<Vec<String>>,
    #[serde(default)]
    optional: bool,
}

/// A device glob: literal directories under `/dev`, a [`Pattern`] for the last component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceGlob {
    /// `infiniband` for `infiniband/uverbs*`; empty for `video*`.
    pub dir: String,
    pub pattern: Pattern,
}

impl DeviceGlob {
    fn parse(text: &str) -> Result<DeviceGlob, String> {
        let rel = text.strip_prefix("/dev/").unwrap_or(text);
        if rel.starts_with('/') {
            return Err(format!(
                "{text:?}: a device glob is relative to /dev (\"video*\" or \"/dev/video*\")"
            ));
        }
        let comps: Vec<&str> = rel.split('/').collect();
        if comps
            .iter()
            .any(|c| c.is_empty() || *c == "." || *c == "..")
        {
            return Err(format!(
                "{text:?}: empty, '.' and '..' path components are not allowed"
            ));
        }
        let (last, dirs) = comps
            .split_last()
            .ok_or_else(|| format!("{text:?}: empty"))?;
        for d in dirs {
            if d.contains(['*', '?', '[']) {
                return Err(format!(
                    "{text:?}: wildcards are allowed in the last component only"
                ));
            }
        }
        Ok(DeviceGlob {
            dir: dirs.join("/"),
            pattern: Pattern::new(last)?,
        })
    }

    /// The container name (relative to /dev) of an entry `name` of this glob's directory.
    pub fn name_of(&self, entry: &str) -> String {
        if self.dir.is_empty() {
            entry.to_owned()
        } else {
            format!("{}/{entry}", self.dir)
        }
    }
}

impl std::fmt::Display for DeviceGlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name_of(self.pattern.as_str()))
    }
}

/// A host file or directory bind-mounted into every container that gets the class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassMount {
    pub source: PathBuf,
    pub target: String,
    pub flags: MountFlags,
    /// A missing source is skipped (with a warning) instead of stopping the container.
    pub optional: bool,
}

/// An extra device-cgroup rule (`c 231:64`): for nodes that are not in /dev when the container
/// starts. Always an exact major:minor, granted `rwm` as the class's nodes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtraRule {
    pub kind: NodeType,
    pub major: u64,
    pub minor: u64,
}

/// A validated device class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub name: String,
    pub description: String,
    /// The container variable that selects it.
    pub env: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Selectable nodes: a selection's indexes count through these globs' matches, glob by glob.
    pub devices: Vec<DeviceGlob>,
    /// Nodes every container that gets the class gets (also with `none`).
    pub shared_devices: Vec<DeviceGlob>,
    pub mounts: Vec<ClassMount>,
    /// Host libraries: mounted into the image's library directory and added to its linker cache.
    pub libraries: Vec<PathBuf>,
    pub cgroup_rules: Vec<ExtraRule>,
    pub privileged_only: bool,
}

/// The default variable of class `name`: `NVHOOK_DEVICES_<NAME>`, `-` becoming `_`.
pub fn default_env(name: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

/// Read and validate a class file; the error names the field and what is wrong (the caller adds
/// the file's path).
pub fn read(path: &Path) -> Result<Class, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CLASS_FILE + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read it: {e}"))?;
    if text.len() as u64 > MAX_CLASS_FILE {
        return Err(format!("larger than {MAX_CLASS_FILE} bytes"));
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse(&text, &stem, path)
}

/// Parse class-file text. `stem` is the file name without `.toml` (the default class name).
pub fn parse(text: &str, stem: &str, file: &Path) -> Result<Class, String> {
    let raw: RawClass = toml::from_str(text).map_err(|e| e.to_string().trim().to_owned())?;
    let name = raw.name.unwrap_or_else(|| stem.to_owned());
    let name_ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !name_ok {
        return Err(format!(
            "name: {name:?} must be 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
        ));
    }
    if name == "nvidia" {
        return Err(
            "name: \"nvidia\" is nvhook's built-in class (NVIDIA_VISIBLE_DEVICES); pick another name"
                .into(),
        );
    }
    let env = raw.env.unwrap_or_else(|| default_env(&name));
    let env_ok = env.len() > ENV_PREFIX.len()
        && env.starts_with(ENV_PREFIX)
        && env
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !env_ok {
        return Err(format!(
            "env: {env:?} must be {ENV_PREFIX}<SUFFIX> with A-Z, 0-9 and '_' (the prefix lets containers that ask for no device skip reading the class files)"
        ));
    }
    let globs = |field: &str, list: &[String]| -> Result<Vec<DeviceGlob>, String> {
        list.iter()
            .map(|g| DeviceGlob::parse(g).map_err(|e| format!("{field}: {e}")))
            .collect()
    };
    let devices = globs("devices", &raw.devices)?;
    let shared_devices = globs("shared-devices", &raw.shared_devices)?;
    let mounts = raw
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| mount(m).map_err(|e| format!("mounts[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, l) in raw.libraries.iter().enumerate() {
        if !l.is_absolute() || l.file_name().is_none() {
            return Err(format!(
                "libraries[{i}]: {} must be an absolute host path of a library file",
                l.display()
            ));
        }
    }
    let cgroup_rules = raw
        .cgroup_rules
        .iter()
        .map(|r| rule(r).map_err(|e| format!("cgroup-rules: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if devices.is_empty()
        && shared_devices.is_empty()
        && mounts.is_empty()
        && raw.libraries.is_empty()
    {
        return Err(
            "devices: the class gives nothing (no devices, shared-devices, mounts or libraries)"
                .into(),
        );
    }
    Ok(Class {
        description: raw.description.unwrap_or_default(),
        name,
        env,
        file: file.to_owned(),
        devices,
        shared_devices,
        mounts,
        libraries: raw.libraries,
        cgroup_rules,
        privileged_only: raw.privileged_only,
    })
}

fn mount(m: &RawMount) -> Result<ClassMount, String> {
    if !m.source.is_absolute() {
        return Err(format!(
            "source: {} must be an absolute host path",
            m.source.display()
        ));
    }
    let target = match &m.target {
        Some(t) => t.clone(),
        None => m
            .source
            .to_str()
            .ok_or_else(|| format!("source: {} is not UTF-8", m.source.display()))?
            .to_owned(),
    };
    if !target.starts_with('/') || target.split('/').any(|c| c == "..") || target == "/" {
        return Err(format!(
            "target: {target:?} must be an absolute container path below / without '..'"
        ));
    }
    // Always nosuid and nodev: device nodes come through `devices`, and a setuid host binary must
    // not become a way up inside the container.
    let mut flags = MountFlags::DATA;
    for o in m.options.iter().flatten() {
        match o.as_str() {
            "ro" => flags.readonly = true,
            "rw" => flags.readonly = false,
            "noexec" => flags.noexec = true,
            "exec" => flags.noexec = false,
            "nosuid" | "nodev" => {}
            other => {
                return Err(format!(
                    "options: {other:?} is not one of ro, rw, noexec, exec, nosuid, nodev (nosuid and nodev are always on)"
                ));
            }
        }
    }
    Ok(ClassMount {
        source: m.source.clone(),
        target,
        flags,
        optional: m.optional,
    })
}

/// `c 231:64` or `c 231:64 rwm`: exact numbers only. A wildcard (`c 231:* rwm`) would grant
/// every present and future device of a driver, far more than the nodes a container was given.
fn rule(text: &str) -> Result<ExtraRule, String> {
    let bad =
        |why: &str| format!("{text:?}: {why} (write \"c MAJOR:MINOR\" or \"b MAJOR:MINOR rwm\")");
    let parts: Vec<&str> = text.split_whitespace().collect();
    let (kind, num, access) = match parts.as_slice() {
        [k, n] => (*k, *n, "rwm"),
        [k, n, a] => (*k, *n, *a),
        _ => return Err(bad("expected a type and MAJOR:MINOR")),
    };
    let kind = match kind {
        "c" => NodeType::Char,
        "b" => NodeType::Block,
        _ => return Err(bad("the type must be c or b ('a' is every device)")),
    };
    if access != "rwm" {
        return Err(bad(
            "the access must be rwm: nvhook grants devices whole, as the runtimes' own device rules do",
        ));
    }
    let (ma, mi) = num.split_once(':').ok_or_else(|| bad("no ':'"))?;
    if ma == "*" || mi == "*" {
        return Err(bad("wildcards are not allowed"));
    }
    let n = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| bad(&format!("{s:?} is not a device number")))
    };
    Ok(ExtraRule {
        kind,
        major: n(ma)?.into(),
        minor: n(mi)?.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Class, String> {
        parse(text, "cam", Path::new("/etc/nvhook/classes.d/cam.toml"))
    }

    #[test]
    fn minimal_class_takes_its_name_from_the_file() {
        let c = p("devices = [\"video*\"]\n").unwrap();
        assert_eq!(c.name, "cam");
        assert_eq!(c.env, "NVHOOK_DEVICES_CAM");
        assert_eq!(c.devices[0].dir, "");
        assert_eq!(c.devices[0].to_string(), "video*");
        assert!(!c.privileged_only && c.mounts.is_empty());
    }

    #[test]
    fn every_field() {
        let c = p(r#"
name = "rdma-x"
description = "RDMA"
env = "NVHOOK_DEVICES_IB"
devices = ["/dev/infiniband/uverbs*"]
shared-devices = ["infiniband/rdma_cm"]
libraries = ["/usr/lib/x86_64-linux-gnu/libfoo.so.1"]
cgroup-rules = ["c 231:64", "b 8:0 rwm"]
privileged-only = true
[[mounts]]
source = "/etc/libibverbs.d"
optional = true
[[mounts]]
source = "/opt/x"
target = "/usr/local/x"
options = ["rw", "exec"]
"#)
        .unwrap();
        assert_eq!(
            (c.name.as_str(), c.env.as_str()),
            ("rdma-x", "NVHOOK_DEVICES_IB")
        );
        assert_eq!(c.devices[0].dir, "infiniband");
        assert_eq!(c.devices[0].to_string(), "infiniband/uverbs*");
        assert!(c.shared_devices[0].pattern.is_literal());
        assert_eq!(c.mounts[0].target, "/etc/libibverbs.d");
        assert_eq!(c.mounts[0].flags, MountFlags::DATA);
        assert!(c.mounts[0].optional);
        let f = c.mounts[1].flags;
        assert!(!f.readonly && !f.noexec && f.nosuid && f.nodev);
        assert_eq!(c.cgroup_rules.len(), 2);
        assert_eq!(c.cgroup_rules[1].kind, NodeType::Block);
        assert!(c.privileged_only);
        assert_eq!(default_env("v4l2-cam"), "NVHOOK_DEVICES_V4L2_CAM");
    }

    #[test]
    fn errors_name_the_field() {
        for (text, field) in [
            ("devices = [\"video*\"]\nfoo = 1\n", "foo"),
            ("devices = \"video*\"\n", "devices"),
            ("name = \"Cam\"\ndevices = [\"v*\"]\n", "name:"),
            ("name = \"nvidia\"\ndevices = [\"v*\"]\n", "name:"),
            ("env = \"CAMERA\"\ndevices = [\"v*\"]\n", "env:"),
            ("env = \"NVHOOK_DEVICES_\"\ndevices = [\"v*\"]\n", "env:"),
            ("env = \"NVHOOK_DEVICES_a\"\ndevices = [\"v*\"]\n", "env:"),
            ("devices = [\"../etc/*\"]\n", "devices:"),
            ("devices = [\"/etc/passwd\"]\n", "devices:"),
            ("devices = [\"*/uverbs0\"]\n", "devices:"),
            ("devices = [\"video[\"]\n", "devices:"),
            ("shared-devices = [\"a//b\"]\n", "shared-devices:"),
            ("libraries = [\"libfoo.so\"]\n", "libraries[0]"),
            ("[[mounts]]\nsource = \"etc\"\n", "mounts[0]: source"),
            (
                "[[mounts]]\nsource = \"/e\"\ntarget = \"/../e\"\n",
                "mounts[0]: target",
            ),
            (
                "[[mounts]]\nsource = \"/e\"\noptions = [\"suid\"]\n",
                "mounts[0]: options",
            ),
            (
                "[[mounts]]\nsource = \"/e\"\noptions = [\"dev\"]\n",
                "mounts[0]: options",
            ),
            ("[[mounts]]\nsource = \"/e\"\nsize = 1\n", "size"),
            (
                "devices = [\"v*\"]\ncgroup-rules = [\"c 13:* rwm\"]\n",
                "cgroup-rules",
            ),
            (
                "devices = [\"v*\"]\ncgroup-rules = [\"a *:* rwm\"]\n",
                "cgroup-rules",
            ),
            (
                "devices = [\"v*\"]\ncgroup-rules = [\"c 13:64 r\"]\n",
                "cgroup-rules",
            ),
            (
                "devices = [\"v*\"]\ncgroup-rules = [\"c 13\"]\n",
                "cgroup-rules",
            ),
            (
                "devices = [\"v*\"]\ncgroup-rules = [\"c x:1\"]\n",
                "cgroup-rules",
            ),
            ("description = \"nothing\"\n", "gives nothing"),
        ] {
            let e = p(text).unwrap_err();
            assert!(e.contains(field), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_packaged_classes_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/classes");
        let v4l2 = read(&dir.join("v4l2.toml")).unwrap();
        assert_eq!(v4l2.env, "NVHOOK_DEVICES_V4L2");
        assert_eq!(v4l2.devices[0].to_string(), "video*");
        let rdma = read(&dir.join("rdma.toml")).unwrap();
        assert_eq!(rdma.env, "NVHOOK_DEVICES_RDMA");
        assert_eq!(rdma.devices[0].to_string(), "infiniband/uverbs*");
    }
}
