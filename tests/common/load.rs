//! Helpers of the load and fault tests (tests/load.rs, tests/load_faults.rs): runc with a state
//! directory of its own, the host checks (our mounts, cgroups left, trees, the host's linker
//! cache), stand-in containers for runs of `nvhook prestart` without a runtime.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::common::*;

/// A runc state directory of this test's own, so that `runc list` shows only its containers;
/// removed when dropped.
pub struct RuncRoot(PathBuf);

impl std::ops::Deref for RuncRoot {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for RuncRoot {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for RuncRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn runc_root(name: &str) -> RuncRoot {
    let p = PathBuf::from(format!(
        "/run/nvhook-tests/load-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    RuncRoot(p)
}

/// Container ids in runc's state directory `root`.
/// `runc delete -f` of container `id` under state dir `root`, for cleanup (its result is ignored:
/// the tests judge runc's state with [`runc_list`]).
pub fn runc_delete(root: &Path, id: &str) {
    let _ = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["delete", "-f", id])
        .output();
}

pub fn runc_list(root: &Path) -> Vec<String> {
    let o = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["list", "-q"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "runc list: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `runc --root ROOT run` of a bundle, without any cleanup of ours: what is left is the runtime's.
pub fn runc_run(root: &Path, b: &Bundle) -> Run {
    run_cmd(
        Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["run", "--bundle"])
            .arg(&b.dir)
            .arg(&b.id),
    )
}

pub fn run_cmd(c: &mut Command) -> Run {
    let o = c.stdin(Stdio::null()).output().unwrap();
    Run {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// The host mounts that could be ours: any that mentions this test binary's fixtures (a driver
/// file or device node mounted somewhere) or lies under this worktree's test directory (a bundle's
/// rootfs). Other engineers' and other test binaries' containers come and go meanwhile.
pub fn our_mounts(skip_prefix: Option<&str>) -> Vec<String> {
    let tmp = env!("CARGO_TARGET_TMPDIR");
    let fx = fixtures()
        .dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    host_mounts()
        .into_iter()
        .filter(|m| m.contains(&fx) || m.contains(tmp))
        .filter(|m| match skip_prefix {
            // podman's own storage mounts, unless a fixture file is mounted there
            Some(p) => !m.starts_with(p) || m.contains(&fx),
            None => true,
        })
        .collect()
}

/// Rewrite a bundle's hook: `path` and `args` instead of nvhook's own.
pub fn set_hook(b: &Bundle, path: &Path, args: Vec<String>, env: Vec<String>) {
    let p = b.dir.join("config.json");
    let mut c: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    c["hooks"]["prestart"] = json!([{ "path": path, "args": args, "env": env }]);
    std::fs::write(&p, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
}

/// Every path under `dir` (symlinks not followed) with its type and size: a cheap fingerprint of
/// a tree, to show that nothing was created, removed or resized there.
pub fn tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.insert(rel, format!("{:?} {}", m.file_type(), m.len()));
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// runc (cgroupfs, no cgroupsPath in the spec) makes the container's cgroups under its own, named
/// after the id: after the container is gone, none may be left.
pub fn assert_no_cgroup_left(id: &str) {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    for line in own.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let base = match ctrl {
            "devices" => PathBuf::from("/sys/fs/cgroup/devices"),
            "" if Path::new("/sys/fs/cgroup/unified").is_dir() => {
                PathBuf::from("/sys/fs/cgroup/unified")
            }
            "" => PathBuf::from("/sys/fs/cgroup"),
            _ => continue,
        };
        let dir = base.join(path.trim_start_matches('/')).join(id);
        assert!(
            !dir.exists(),
            "{id}: its cgroup {} was left behind",
            dir.display()
        );
    }
}

/// The host's own linker cache, to show nvhook never writes it.
pub fn host_ldcache() -> Vec<u8> {
    std::fs::read("/etc/ld.so.cache").unwrap_or_default()
}

/// A small deterministic generator (xorshift64*), seeded from the clock unless
/// NVHOOK_LOAD_SEED is set; the seed is printed so that a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        let seed = seed_from_env("NVHOOK_LOAD_SEED") | 1;
        eprintln!("load: random seed {seed} (set NVHOOK_LOAD_SEED to replay)");
        Rng(seed)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

pub fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

// ----------------------------------------------------------------------------- processes

pub fn state_json(id: &str, pid: u32, b: &Bundle) -> String {
    json!({"ociVersion": "1.0.2", "id": id, "status": "creating", "pid": pid, "bundle": b.dir})
        .to_string()
}

/// `nvhook prestart` with `state` on stdin and a runtime-like environment.
pub fn prestart(state: &str, config: &Path, debug: bool) -> Run {
    let mut c = Command::new(nvhook());
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .arg("--config")
        .arg(config)
        .arg("prestart")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if debug {
        c.env("NVHOOK_LOG", "debug");
    }
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(state.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    Run {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

pub fn mnt_ns(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A process in a mount namespace of its own (a copy of the host's, private: nothing mounted in it
/// reaches the host), as a container's is at prestart: the rootfs still reachable at its host
/// path. Returns once the namespace exists.
pub fn process_in_own_mount_ns() -> std::process::Child {
    let mut c = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sleep", "600"])
        .spawn()
        .expect("unshare (util-linux)");
    let own = mnt_ns(std::process::id());
    for _ in 0..5000 {
        let ns = mnt_ns(c.id());
        if !ns.is_empty() && ns != own {
            return c;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let _ = c.kill();
    let _ = c.wait();
    panic!("unshare --mount did not enter a new mount namespace");
}

// ----------------------------------------------------------------------------- cgroups

/// A fresh device cgroup (v1) or cgroup (v2) that denies everything, for a stand-in container.
pub struct TestCgroup(pub PathBuf);

impl TestCgroup {
    pub fn new(name: &str) -> TestCgroup {
        let base = if Path::new("/sys/fs/cgroup/devices/cgroup.procs").exists() {
            PathBuf::from("/sys/fs/cgroup/devices")
        } else {
            PathBuf::from("/sys/fs/cgroup")
        };
        let dir = base.join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap();
        if dir.join("devices.deny").exists() {
            std::fs::write(dir.join("devices.deny"), "a").unwrap();
        }
        TestCgroup(dir)
    }
    pub fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
    pub fn devices_list(&self) -> String {
        std::fs::read_to_string(self.0.join("devices.list")).unwrap_or_default()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}
