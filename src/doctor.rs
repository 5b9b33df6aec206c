//! `nvhook doctor`: checks a host, each finding with what to do about it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::devnode::stat_node;
use crate::nvidia::gpus;
use crate::nvidia::libraries::DriverRoot;

mod docker;
mod systemd;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub status: Status,
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn add(
        &mut self,
        check: &'static str,
        status: Status,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.0.push(Finding {
            check,
            status,
            message: message.into(),
            hint: hint.into(),
        });
    }
}

/// Podman and CRI-O read hook registrations from these; `/etc` masks a same-named file.
pub const HOOK_DIRS: &[&str] = &[
    "/etc/containers/oci/hooks.d",
    "/usr/share/containers/oci/hooks.d",
];

/// Run every check. `config` is the result of loading the config (and which file it came from).
pub fn run(
    config: Result<(Config, Option<PathBuf>), crate::error::Error>,
    hook_dirs: &[&str],
) -> Vec<Finding> {
    let mut f = Findings::default();
    let config = match config {
        Ok((c, file)) => {
            let from = file.map_or("no config file: the defaults".into(), |p| {
                format!("read {}", p.display())
            });
            f.add("config", Status::Ok, from, "");
            c
        }
        Err(e) => {
            f.add(
                "config",
                Status::Error,
                e.to_string(),
                "fix the file (every key is listed in packaging/config.toml)",
            );
            Config::default()
        }
    };
    kernel(&mut f);
    let version = driver(&mut f, &config);
    let gpu_list = gpus::discover(&config.proc_root, None).unwrap_or_default();
    nodes(&mut f, &config, &gpu_list);
    if let Some(v) = &version {
        libraries(&mut f, &config, v);
    }
    hooks(&mut f, hook_dirs);
    cgroups(&mut f, &config);
    systemd(&mut f, &config);
    runtimes(&mut f);
    docker::check(&mut f, Path::new("/proc"));
    classes(&mut f, &config);
    f.0
}

/// Device classes: each file parses, and what it would give on this host. Nothing is reported
/// when classes-dir does not exist (no classes: nothing to check).
fn classes(f: &mut Findings, c: &Config) {
    if !c.classes_dir.exists() {
        return;
    }
    let entries = match crate::class::list(c) {
        Ok(e) => e,
        Err(e) => {
            f.add(
                "classes",
                Status::Error,
                e.to_string(),
                "fix or remove the class file (docs/device-classes.md lists every key); containers that set NVHOOK_DEVICES_* fail until then",
            );
            return;
        }
    };
    for e in entries {
        let what = format!("class {} ({})", e.name, e.env);
        if let Some(err) = e.error {
            f.add(
                "classes",
                Status::Error,
                format!("{what}: {err}"),
                "containers that ask for this class fail until the host has these files",
            );
        } else if e.globs.is_empty() {
            f.add(
                "classes",
                Status::Ok,
                format!("{what}: no selectable nodes (shared nodes, files, libraries)"),
                "",
            );
        } else if e.devices.is_empty() {
            f.add(
                "classes",
                Status::Warn,
                format!("{what}: no node matches /dev/{}", e.globs.join(", /dev/")),
                "load the device's driver, check dev-root, or remove the class file",
            );
        } else {
            let names: Vec<String> = e.devices.iter().map(|n| n.name.clone()).collect();
            f.add(
                "classes",
                Status::Ok,
                format!("{what}: {}", names.join(", ")),
                "",
            );
        }
    }
}

fn kernel(f: &mut Findings) {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut it = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    if (major, minor) >= (5, 12) {
        f.add(
            "kernel",
            Status::Ok,
            format!("Linux {release}: openat2 and the new mount API are there"),
            "",
        );
    } else {
        f.add(
            "kernel",
            Status::Error,
            format!(
                "Linux {release}: nvhook needs 5.12 or later (openat2, open_tree, mount_setattr)"
            ),
            "upgrade the kernel",
        );
    }
}

fn driver(f: &mut Findings, c: &Config) -> Option<String> {
    match gpus::driver_version(&c.proc_root) {
        Ok(v) => {
            let gpus = gpus::discover(&c.proc_root, None).unwrap_or_default();
            let list: Vec<String> = gpus
                .iter()
                .map(|g| format!("{} {} ({})", g.index, g.model, g.uuid))
                .collect();
            f.add(
                "driver",
                Status::Ok,
                format!(
                    "NVIDIA driver {v}; GPUs: {}",
                    if list.is_empty() {
                        "none".into()
                    } else {
                        list.join(", ")
                    }
                ),
                "",
            );
            if gpus.is_empty() {
                f.add(
                    "gpus",
                    Status::Warn,
                    "the driver lists no GPU",
                    "check `nvidia-smi` on the host; containers can still ask for `none`",
                );
            }
            Some(v)
        }
        Err(e) => {
            f.add(
                "driver",
                Status::Error,
                e.to_string(),
                "install or load the NVIDIA driver (nvidia kernel module), or set proc-root",
            );
            None
        }
    }
}

/// The majors /proc/devices gives the driver's character devices.
fn proc_majors(proc_root: &Path, names: &[&str]) -> Vec<u64> {
    let text =
        crate::bounded::read_to_string(&proc_root.join("devices"), crate::bounded::PROC_TEXT)
            .unwrap_or_default();
    parse_proc_devices(&text, names)
}

/// The character-device majors `/proc/devices` lists under `names`.
pub fn parse_proc_devices(text: &str, names: &[&str]) -> Vec<u64> {
    text.lines()
        .take_while(|l| !l.starts_with("Block"))
        .filter_map(|l| l.trim().split_once(' '))
        .filter(|(_, n)| names.contains(n))
        .filter_map(|(m, _)| m.parse().ok())
        .collect()
}

fn nodes(f: &mut Findings, c: &Config, gpu_list: &[gpus::Gpu]) {
    let frontend = proc_majors(&c.proc_root, &["nvidia-frontend", "nvidia", "nvidiactl"]);
    let uvm = proc_majors(&c.proc_root, &["nvidia-uvm"]);
    let mut check = |name: String, majors: &[u64], required: bool, hint: &str| match stat_node(
        &c.dev_root,
        &name,
    ) {
        Ok(Some(n)) if majors.is_empty() || majors.contains(&n.major) => f.add(
            "device-nodes",
            Status::Ok,
            format!("/dev/{name} {}:{}", n.major, n.minor),
            "",
        ),
        Ok(Some(n)) => f.add(
            "device-nodes",
            Status::Warn,
            format!(
                "/dev/{name} is {}:{} but the driver's major is {majors:?} in /proc/devices",
                n.major, n.minor
            ),
            "recreate the node (nvidia-modprobe) or check dev-root",
        ),
        Ok(None) if required => f.add(
            "device-nodes",
            Status::Error,
            format!(
                "{} is missing",
                c.dev_root.join("dev").join(&name).display()
            ),
            hint,
        ),
        Ok(None) => f.add(
            "device-nodes",
            Status::Warn,
            format!(
                "{} is missing",
                c.dev_root.join("dev").join(&name).display()
            ),
            hint,
        ),
        Err(e) => f.add(
            "device-nodes",
            Status::Error,
            format!("/dev/{name}: {e}"),
            hint,
        ),
    };
    check(
        "nvidiactl".into(),
        &frontend,
        true,
        "run `nvidia-modprobe -c=0` (or nvidia-smi) on the host",
    );
    for g in gpu_list {
        check(
            format!("nvidia{}", g.minor),
            &frontend,
            true,
            "run `nvidia-modprobe -c=<minor>` (or nvidia-smi) on the host",
        );
    }
    check(
        "nvidia-uvm".into(),
        &uvm,
        false,
        "CUDA needs it: run `nvidia-modprobe -u -c=0` on the host",
    );
}

fn libraries(f: &mut Findings, c: &Config, version: &str) {
    let root = match DriverRoot::open(&c.driver_root, version, &["libcuda.so", "libnvidia-ml.so"]) {
        Ok(r) => r,
        Err(e) => {
            f.add(
                "libraries",
                Status::Error,
                e.to_string(),
                "check driver-root",
            );
            return;
        }
    };
    let mut root = root;
    let flags = crate::ldcache::native_flags();
    for (name, cap) in [("libcuda.so", "compute"), ("libnvidia-ml.so", "utility")] {
        match root.find_library(name, flags) {
            Some(l) => f.add("libraries", Status::Ok, format!("{} -> {}", l.soname, l.host_path.display()), ""),
            None => f.add(
                "libraries",
                Status::Error,
                format!("{name}.{version} not found under {} ('{cap}' cannot be given)", c.driver_root.display()),
                "install the driver's user-space libraries of the same version as the kernel module, or set driver-root",
            ),
        }
    }
    let bins = root.find_binaries(&["nvidia-smi"], &c.binary_dirs, &[]);
    match bins.first() {
        Some(b) => f.add(
            "binaries",
            Status::Ok,
            format!("nvidia-smi -> {}", b.host_path.display()),
            "",
        ),
        None => f.add(
            "binaries",
            Status::Warn,
            "nvidia-smi not found ('utility' containers get no nvidia-smi)",
            "add its directory to binary-dirs",
        ),
    }
}

fn hooks(f: &mut Findings, dirs: &[&str]) {
    let mut found = false;
    let mut masked: Vec<String> = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        names.sort();
        for p in names
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
        {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if masked.contains(&name) {
                continue;
            }
            masked.push(name);
            // a hooks.d registration: a few hundred bytes
            let Ok(text) = crate::bounded::read_to_string(&p, crate::bounded::PROC_TEXT) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let Some(path) = v["hook"]["path"].as_str() else {
                continue;
            };
            if !path.contains("nvhook") {
                continue;
            }
            found = true;
            use std::os::unix::fs::PermissionsExt;
            let exec = std::fs::metadata(path)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            let poststop = v["stages"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s == "poststop"));
            if exec && !poststop {
                f.add(
                    "hooks.d",
                    Status::Warn,
                    format!("{} registers {path} without the poststop stage", p.display()),
                    "add \"poststop\" to its \"stages\" (as the packaged file has), or the files nvhook creates stay in `--rootfs` directories",
                );
            } else if exec {
                f.add(
                    "hooks.d",
                    Status::Ok,
                    format!("{} registers {path}", p.display()),
                    "",
                );
            } else {
                f.add(
                    "hooks.d",
                    Status::Error,
                    format!(
                        "{} registers {path}, which is missing or not executable",
                        p.display()
                    ),
                    "reinstall: sudo make install",
                );
            }
        }
    }
    if !found {
        f.add(
            "hooks.d",
            Status::Warn,
            format!("no nvhook registration in {}", dirs.join(" or ")),
            "install it (sudo make install) for podman and CRI-O; runc users add it to config.json",
        );
    }
}

fn cgroups(f: &mut Findings, c: &Config) {
    use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
    let v2 = statfs("/sys/fs/cgroup").is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC);
    let hybrid = !v2 && Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists();
    let (kind, how) = match (v2, hybrid) {
        (true, _) => (
            "v2",
            "nvhook extends the runtime's eBPF device program of each container",
        ),
        (false, true) => (
            "hybrid (v1 devices + cgroup2)",
            "nvhook writes the v1 devices.allow (and extends any device program on the cgroup2 side)",
        ),
        (false, false) => ("v1", "nvhook writes each container's devices.allow"),
    };
    if c.no_cgroups {
        f.add("cgroups", Status::Info, format!("cgroup {kind}; no-cgroups is set: nvhook grants no device access"), "the runtime or its config must allow the NVIDIA devices, or opening them fails with EPERM");
    } else {
        f.add("cgroups", Status::Ok, format!("cgroup {kind}: {how}"), "");
    }
}

/// Is this host affected by systemd re-applying device policies, and are nvhook's grants durable
/// here (docs/systemd.md)?
fn systemd(f: &mut Findings, c: &Config) {
    use crate::apply::systemd::SYSTEM_BUS;
    use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
    let pid1 = Path::new("/run/systemd/system").is_dir();
    let v2 = statfs("/sys/fs/cgroup").is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC);
    let managers = systemd::managers(Path::new("/"), pid1, v2);
    if managers.is_empty() {
        let why = if pid1 {
            "systemd is PID 1, but no container engine found here uses its cgroup manager: \
             daemon-reload does not touch containers' device access"
        } else {
            "systemd is not PID 1: containers' device access does not depend on it"
        };
        f.add("systemd", Status::Info, why.to_owned(), "");
        return;
    }
    let list: Vec<String> = managers
        .iter()
        .map(|m| format!("{} ({})", m.engine, m.why))
        .collect();
    let affected = format!(
        "affected: containers are systemd units here ({}), and `systemctl daemon-reload` rebuilds their device policy",
        list.join("; ")
    );
    if c.no_cgroups {
        f.add(
            "systemd",
            Status::Info,
            format!("{affected}; no-cgroups is set: nvhook grants nothing"),
            "",
        );
    } else if !c.systemd_device_grants {
        f.add(
            "systemd",
            Status::Warn,
            format!("{affected}; systemd-device-grants = false: a daemon-reload (package upgrades run it) takes GPUs away from running containers (EPERM)"),
            "set systemd-device-grants = true in the config",
        );
    } else if !Path::new(SYSTEM_BUS).exists() {
        f.add(
            "systemd",
            Status::Warn,
            format!("{affected}; but {SYSTEM_BUS} is missing: nvhook cannot record its grants with systemd, a daemon-reload takes them away"),
            "install and start dbus (apt-get install dbus)",
        );
    } else {
        f.add(
            "systemd",
            Status::Ok,
            format!("{affected}; nvhook records each grant in the container's unit (DeviceAllow=, runtime): it survives daemon-reload"),
            "",
        );
    }
}

fn runtimes(f: &mut Findings) {
    for rt in ["runc", "crun", "podman"] {
        let out = std::process::Command::new(rt)
            .arg("--version")
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(std::process::Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let first = String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                f.add("runtimes", Status::Info, first, "");
            }
            _ => f.add("runtimes", Status::Info, format!("{rt}: not found"), ""),
        }
    }
}

/// Text form: one line a finding, hints indented.
pub fn text(findings: &[Finding]) -> String {
    let mut s = String::new();
    for x in findings {
        let tag = match x.status {
            Status::Ok => " ok ",
            Status::Info => "info",
            Status::Warn => "warn",
            Status::Error => "FAIL",
        };
        s += &format!("[{tag}] {}: {}\n", x.check, x.message);
        if !x.hint.is_empty() {
            s += &format!("       -> {}\n", x.hint);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_registration_without_poststop_is_a_warning() {
        let d = std::env::temp_dir().join(format!("nvhook-doctor-hooks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let bin = d.join("nvhook");
        std::fs::write(&bin, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let status = |stages: &str| {
            let reg = format!(
                r#"{{"version":"1.0.0","hook":{{"path":"{}","args":["nvhook","prestart"]}},"when":{{"always":true}},"stages":{stages}}}"#,
                bin.display()
            );
            std::fs::write(d.join("nvhook.json"), reg).unwrap();
            let mut f = Findings::default();
            hooks(&mut f, &[d.to_str().unwrap()]);
            f.0.iter().map(|x| x.status).collect::<Vec<_>>()
        };
        assert_eq!(status(r#"["prestart","poststop"]"#), [Status::Ok]);
        assert_eq!(status(r#"["prestart"]"#), [Status::Warn]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
