//! `nvhook doctor`'s systemd check: is this host affected by systemd re-applying device policies
//! (`systemctl daemon-reload` taking GPUs away from running containers), and are nvhook's grants
//! durable here (docs/systemd.md).
//!
//! Affected: systemd is PID 1 and a container engine uses the systemd cgroup manager, as read
//! from its own configuration (the administrator's files: trusted, read with bounded size).

use std::path::Path;

/// One engine that puts containers into systemd units, and where that was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manager {
    pub engine: &'static str,
    pub why: String,
}

fn read(root: &Path, path: &str) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(root.join(path.trim_start_matches('/'))).ok()?;
    let mut s = String::new();
    f.take(1 << 20).read_to_string(&mut s).ok()?;
    Some(s)
}

/// `key = "value"` (or `key = value`) of a TOML-ish line, comments and quotes removed.
fn toml_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let line = line.split('#').next()?.trim();
    let (k, v) = line.split_once('=')?;
    (k.trim() == key).then(|| v.trim().trim_matches('"').trim_matches('\''))
}

fn last_toml_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .rev()
        .find_map(|l| toml_value(l, key))
        .map(str::to_owned)
}

/// CRI-O's config as it reads it: crio.conf, then each crio.conf.d file in name order.
fn crio_conf(root: &Path) -> String {
    let mut crio = read(root, "etc/crio/crio.conf").unwrap_or_default();
    if let Ok(d) = std::fs::read_dir(root.join("etc/crio/crio.conf.d")) {
        let mut files: Vec<_> = d.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            if let Some(t) = f.to_str().and_then(|p| read(Path::new("/"), p)) {
                crio.push_str(&t);
            }
        }
    }
    crio
}

/// Docker's cgroup driver from daemon.json's exec-opts (the last native.cgroupdriver=), if set.
fn docker_cgroup_driver(root: &Path) -> Option<String> {
    read(root, "etc/docker/daemon.json")
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v["exec-opts"].as_array().and_then(|a| {
                a.iter()
                    .rev()
                    .find_map(|o| o.as_str()?.strip_prefix("native.cgroupdriver="))
                    .map(str::to_owned)
            })
        })
}

/// The engines of the host under `root` that use the systemd cgroup manager. `systemd_pid1`:
/// engines whose default follows the init system (podman, CRI-O, Docker on cgroup v2) count
/// when their file says nothing.
pub fn managers(root: &Path, systemd_pid1: bool, cgroup_v2: bool) -> Vec<Manager> {
    let mut out = Vec::new();
    // podman: containers.conf [engine] cgroup_manager; default systemd where systemd is PID 1
    let podman = [
        "etc/containers/containers.conf",
        "usr/share/containers/containers.conf",
    ]
    .iter()
    .find_map(|p| {
        read(root, p)
            .and_then(|t| last_toml_value(&t, "cgroup_manager"))
            .map(|v| (v, format!("/{p}")))
    });
    let installed = |bin: &str| {
        ["usr/bin", "usr/local/bin", "usr/sbin"]
            .iter()
            .any(|d| root.join(d).join(bin).exists())
    };
    match podman {
        Some((v, file)) if v == "systemd" => out.push(Manager {
            engine: "podman",
            why: format!("{file}: cgroup_manager = \"systemd\""),
        }),
        None if systemd_pid1 && installed("podman") => out.push(Manager {
            engine: "podman",
            why: "installed; its default cgroup manager is systemd where systemd is PID 1".into(),
        }),
        _ => {}
    }
    // CRI-O: crio.conf (+ crio.conf.d) [crio.runtime] cgroup_manager; default systemd
    match last_toml_value(&crio_conf(root), "cgroup_manager") {
        Some(v) if v == "systemd" => out.push(Manager {
            engine: "CRI-O",
            why: "/etc/crio/crio.conf: cgroup_manager = \"systemd\"".into(),
        }),
        None if systemd_pid1 && installed("crio") => out.push(Manager {
            engine: "CRI-O",
            why: "installed; its default cgroup manager is systemd".into(),
        }),
        _ => {}
    }
    // Docker: daemon.json exec-opts native.cgroupdriver; default systemd on cgroup v2 + systemd
    match docker_cgroup_driver(root) {
        Some(v) if v == "systemd" => out.push(Manager {
            engine: "Docker",
            why: "/etc/docker/daemon.json: exec-opts native.cgroupdriver=systemd".into(),
        }),
        None if systemd_pid1 && cgroup_v2 && installed("dockerd") => out.push(Manager {
            engine: "Docker",
            why: "installed; its default cgroup driver is systemd on cgroup v2 with systemd".into(),
        }),
        _ => {}
    }
    // containerd (and every kubelet on it): runc options SystemdCgroup = true
    if read(root, "etc/containerd/config.toml")
        .and_then(|t| last_toml_value(&t, "SystemdCgroup"))
        .is_some_and(|v| v == "true")
    {
        out.push(Manager {
            engine: "containerd",
            why: "/etc/containerd/config.toml: SystemdCgroup = true".into(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_configs_are_read() {
        let d = std::env::temp_dir().join(format!("nvhook-doctor-systemd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let w = |p: &str, t: &str| {
            let p = d.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, t).unwrap();
        };
        assert!(managers(&d, true, true).is_empty(), "nothing installed");
        w(
            "etc/containers/containers.conf",
            "[engine]\n# cgroup_manager = \"systemd\"\ncgroup_manager = \"cgroupfs\"\n",
        );
        w("usr/bin/podman", "");
        assert!(
            managers(&d, true, true).is_empty(),
            "podman set to cgroupfs"
        );
        w("etc/containers/containers.conf", "[engine]\n");
        assert_eq!(
            managers(&d, true, true)[0].engine,
            "podman",
            "podman's default"
        );
        assert!(managers(&d, false, true).is_empty(), "no systemd: cgroupfs");
        w(
            "etc/docker/daemon.json",
            r#"{"exec-opts": ["native.cgroupdriver=systemd"]}"#,
        );
        w(
            "etc/crio/crio.conf.d/10-x.conf",
            "[crio.runtime]\ncgroup_manager = \"systemd\"\n",
        );
        w(
            "etc/containerd/config.toml",
            "[plugins.x.options]\n  SystemdCgroup = true\n",
        );
        let m: Vec<&str> = managers(&d, true, true).iter().map(|m| m.engine).collect();
        assert_eq!(m, ["podman", "CRI-O", "Docker", "containerd"]);
        w(
            "etc/docker/daemon.json",
            r#"{"exec-opts": ["native.cgroupdriver=cgroupfs"]}"#,
        );
        w("etc/containerd/config.toml", "SystemdCgroup = false\n");
        let m: Vec<&str> = managers(&d, true, true).iter().map(|m| m.engine).collect();
        assert_eq!(m, ["podman", "CRI-O"]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
