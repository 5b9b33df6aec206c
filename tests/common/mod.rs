//! Shared harness of the end-to-end tests: fixtures, bundles, runtimes, host checks.
//!
//! These tests need root and the real runtimes (runc, crun, podman). A missing tool or missing
//! root is a test failure with a message saying what to install, never a skip.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde_json::{Value, json};

pub const DEBIAN_IMAGE: &str = "localhost/nvhook-test:debian";
pub const GPU0_UUID: &str = "GPU-11111111-2222-3333-4444-555555555555"; // index 0, bus 3b, minor 1
pub const GPU1_UUID: &str = "GPU-66666666-7777-8888-9999-000000000000"; // index 1, bus 86, minor 0

/// Everything a test needs, built once per test binary.
pub struct Fixtures {
    pub dir: PathBuf,
    pub version: String,
    pub config: PathBuf,
}

fn tmp_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// A random seed: `var` parsed from the environment (to replay a run), else the clock.
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

pub fn nvhook() -> &'static str {
    env!("CARGO_BIN_EXE_nvhook")
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the end-to-end tests must run as root (they create containers, device nodes and mounts)"
    );
}

pub fn require_tool(name: &str, package: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{name} is required by this test: apt-get install {package}"
    );
}

/// `NVHOOK_TEST_SYSTEMD=1` (set by tests/systemd/host.sh inside its systemd host): runc and crun
/// run with `--systemd-cgroup` and a `slice:prefix:name` cgroupsPath, podman with
/// `--cgroup-manager systemd`, as on a production host where systemd is PID 1. Off by default:
/// the cgroupfs managers, as before.
pub fn systemd_mode() -> bool {
    let on = std::env::var("NVHOOK_TEST_SYSTEMD").is_ok_and(|v| v == "1");
    if on {
        let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
        assert_eq!(
            init.trim(),
            "systemd",
            "NVHOOK_TEST_SYSTEMD=1 needs systemd as PID 1: run the suites with tests/systemd/host.sh suites"
        );
    }
    on
}

/// The container's line of /proc/self/cgroup as the host names it (script snippet; the bundle
/// must share the host's cgroup namespace: [`without_cgroupns`]).
pub const CGROUP_LINE: &str = "grep '^0::' /proc/self/cgroup | sed 's/^/cgroup:/'";

/// Drop the cgroup namespace from a bundle, so the container sees its cgroup's real path.
pub fn without_cgroupns(b: &Bundle) {
    let path = b.dir.join("config.json");
    let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    if let Some(ns) = c["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "cgroup");
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
}

/// A GPU container under `runtime` (runc or crun) that reports its cgroup: it must be where the
/// cgroup manager in use puts it ([`assert_cgroup_manager`]), and its GPU must be granted there.
pub fn check_runs_where_the_cgroup_manager_puts_it(runtime: &str) {
    let _g = serial();
    let script = format!("{CGROUP_LINE}; probe open /probe-nodes/gpu-kmsg /probe-nodes/gpu-fuse");
    let b = bundle(&Spec::new(&["NVIDIA_VISIBLE_DEVICES=0"], &script));
    without_cgroupns(&b);
    let r = run_oci(runtime, &b).expect_ok(runtime);
    assert_cgroup_manager(runtime, &b.id, &r);
    assert!(
        r.has("/probe-nodes/gpu-kmsg: ok") && r.has("/probe-nodes/gpu-fuse: EPERM"),
        "{}",
        r.stdout
    );
}

/// Check that the container ran where the cgroup manager in use puts it: under
/// NVHOOK_TEST_SYSTEMD=1 in the systemd scope of its cgroupsPath (runc: the scope itself, crun:
/// its `container` sub-cgroup; podman: `machine.slice/libpod-<id>.scope/container`; `id` is
/// unused), otherwise in no systemd scope at all. Guards the systemd-host
/// step against running the cgroupfs paths unnoticed.
pub fn assert_cgroup_manager(runtime: &str, id: &str, r: &Run) {
    let line = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("cgroup:"))
        .unwrap_or_else(|| panic!("no cgroup line in the container's output:\n{}", r.stdout));
    if systemd_mode() && runtime == "podman" {
        // podman (crun) names the scope after the container's id: libpod-<id>.scope/container
        assert!(
            line.starts_with("0::/machine.slice/libpod-") && line.ends_with(".scope/container"),
            "podman --cgroup-manager systemd: {line}"
        );
    } else if systemd_mode() {
        let scope = format!("0::/system.slice/nvhook-test-{id}.scope");
        let want = if runtime == "crun" {
            format!("{scope}/container")
        } else {
            scope
        };
        assert_eq!(line, want, "{runtime} --systemd-cgroup");
    } else {
        assert!(!line.contains(".scope"), "{runtime} (cgroupfs): {line}");
    }
}

/// `runc`/`crun` with the cgroup manager of this test run (systemd mode: `--systemd-cgroup`).
pub fn oci_runtime(runtime: &str) -> Command {
    let mut c = Command::new(runtime);
    if systemd_mode() {
        c.arg("--systemd-cgroup");
    }
    c
}

/// crun refuses hybrid cgroups while the cgroup2 mount holds a controller (hugetlb on the CI
/// machine). Mounting hugetlb as a v1 hierarchy frees it. Idempotent; only when needed.
pub fn prepare_host() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let ctrl = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default();
        if !ctrl.trim().is_empty() {
            let script = "mkdir -p /sys/fs/cgroup/hugetlb && \
                 (mountpoint -q /sys/fs/cgroup/hugetlb || mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb)";
            let st = Command::new("sh").arg("-c").arg(script).status().unwrap();
            assert!(st.success(), "could not move hugetlb to a v1 hierarchy for crun");
        }
    });
}

pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        require_root();
        let name = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "tests".into());
        let dir = tmp_root().join(format!("fixtures-{name}"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mkfixtures.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "building fixtures failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let version = std::fs::read_to_string(dir.join("driver-version"))
            .unwrap()
            .trim()
            .to_owned();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "driver-root = \"{0}/driver\"\ndev-root = \"{0}\"\nproc-root = \"{0}/proc\"\nsys-root = \"{0}/sys\"\n",
                dir.display()
            ),
        )
        .unwrap();
        Fixtures {
            dir,
            version,
            config,
        }
    })
}

/// Container runs are serialized: the host-mount-table check must see one container at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every file under `dir` as `path type size` lines, sorted: to see that nothing changed.
pub fn file_tree(dir: &Path) -> Vec<String> {
    let o = Command::new("find")
        .arg(dir)
        .arg("-printf")
        .arg("%P %y %s\n")
        .output()
        .unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

/// Every entry under `dir` with its type, mode, owner, size and content (a hash of a file's
/// bytes, a symlink's target), sorted: to see that a rootfs is byte for byte what it was.
pub fn rootfs_digest(dir: &Path) -> Vec<String> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = p.symlink_metadata() else {
                continue;
            };
            let what = if m.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                walk(base, &p, out);
                "dir".into()
            } else if m.is_file() {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&p).unwrap_or_default().hash(&mut h);
                format!("{} bytes {:016x}", m.len(), h.finish())
            } else {
                format!("rdev {:x}", m.rdev())
            };
            let rel = p.strip_prefix(base).unwrap().display();
            out.push(format!(
                "{rel} {:o} {}:{} {what}",
                m.mode(),
                m.uid(),
                m.gid()
            ));
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// The record directory of nvhook's poststop (root's).
pub const RECORD_DIR: &str = "/run/nvhook/containers";

/// nvhook's records (and kept originals) of container `id` left in /run/nvhook.
pub fn records_of(id: &str) -> Vec<String> {
    std::fs::read_dir(RECORD_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n == id || n.starts_with(&format!("{id}@")))
                .collect()
        })
        .unwrap_or_default()
}

/// The host's mount table, as (mount point, root, fs type, source) lines, sorted. The one-time
/// host preparation (hugetlb moved to a v1 hierarchy for crun) is done first, so that a "before"
/// read on a fresh machine is not followed by that mount in the "after" one.
///
/// Left out: a runtime's own binary guard. crun (like runc 1.0) protects its executable by
/// bind-mounting `/proc/self/exe` read-only on a fresh `/tmp/crun.XXXXXX` in the host's mount
/// namespace and detaching it a moment later; a container start of another test running at the
/// same time shows up in a read as `/tmp/crun.znApN7 /usr/bin/crun ...` (CI saw exactly that).
/// It is not the hook's and not this container's.
pub fn host_mounts() -> Vec<String> {
    prepare_host();
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| !is_runtime_binary_guard(l))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let post = l.split(" - ").nth(1).unwrap_or("");
            format!(
                "{} {} {}",
                f.get(4).unwrap_or(&""),
                f.get(3).unwrap_or(&""),
                post
            )
        })
        .collect();
    v.sort();
    v
}

/// A mountinfo line of a runtime's transient self-protection mount: mount point
/// `/tmp/{crun,runc}.XXXXXX`, root the runtime's binary.
pub fn is_runtime_binary_guard(line: &str) -> bool {
    let f: Vec<&str> = line.split(' ').collect();
    let (Some(root), Some(point)) = (f.get(3), f.get(4)) else {
        return false;
    };
    let name_ok = |rt: &str| {
        point
            .strip_prefix("/tmp/")
            .and_then(|n| n.strip_prefix(rt))
            .and_then(|n| n.strip_prefix('.'))
            .is_some_and(|x| x.len() == 6 && x.bytes().all(|b| b.is_ascii_alphanumeric()))
            && root.rsplit('/').next() == Some(rt)
    };
    name_ok("crun") || name_ok("runc")
}

/// What a container run printed.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    /// Fail with everything the container and runtime printed.
    pub fn expect_ok(self, what: &str) -> Run {
        assert!(
            self.ok,
            "{what} failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
    pub fn has(&self, s: &str) -> bool {
        self.stdout.contains(s)
    }
}

/// Which hook stage nvhook is registered at.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Prestart,
    CreateRuntime,
    /// no hook at all (reference runs)
    None,
}

/// A runc/crun bundle with its own copy of a rootfs.
pub struct Bundle {
    pub dir: PathBuf,
    pub id: String,
}

impl Bundle {
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
}

/// Run `nvhook poststop` for container `id` of `bundle`, as a runtime would.
pub fn poststop(id: &str, bundle: &Path) -> Run {
    use std::io::Write;
    let state = json!({"ociVersion": "1.0.2", "id": id, "status": "stopped", "bundle": bundle});
    let mut c = Command::new(nvhook())
        .arg("poststop")
        .env("NVHOOK_LOG", "debug")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = c
        .stdin
        .take()
        .unwrap()
        .write_all(state.to_string().as_bytes());
    Run::from(c.wait_with_output().unwrap())
}

impl Drop for Bundle {
    fn drop(&mut self) {
        // a bundle without the poststop hook (a test that looks at the rootfs after the run)
        // leaves nvhook's record: removed here, as the hook would have
        if !records_of(&self.id).is_empty() {
            poststop(&self.id, &self.dir);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Options of a test container.
pub struct Spec<'a> {
    pub rootfs: &'a str,
    pub env: Vec<String>,
    pub script: String,
    pub readonly: bool,
    pub stage: Stage,
    /// Extra environment for the hook process itself.
    pub hook_env: Vec<String>,
    /// Give the container CAP_SYS_ADMIN (the toolkit's "privileged").
    pub privileged: bool,
    /// Another nvhook config than the fixtures' own.
    pub config: Option<PathBuf>,
    /// Register `nvhook poststop` too (off: tests that read the rootfs after the run see what
    /// prestart left there).
    pub poststop: bool,
}

impl<'a> Spec<'a> {
    pub fn new(env: &[&str], script: &str) -> Spec<'a> {
        Spec {
            rootfs: "rootfs-debian",
            env: env.iter().map(|s| s.to_string()).collect(),
            script: script.to_owned(),
            readonly: false,
            stage: Stage::Prestart,
            hook_env: Vec::new(),
            privileged: false,
            config: None,
            poststop: false,
        }
    }
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Make a bundle: `runc spec`'s defaults, the test's env/script, nvhook as the hook.
pub fn bundle(spec: &Spec<'_>) -> Bundle {
    let fx = fixtures();
    let id = unique("nvhook-test");
    let dir = tmp_root().join("bundles").join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(fx.dir.join(spec.rootfs))
        .arg(dir.join("rootfs"))
        .status()
        .unwrap();
    assert!(st.success());
    require_tool("runc", "runc");
    let st = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success(), "runc spec failed");
    let path = dir.join("config.json");
    let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    c["process"]["terminal"] = json!(false);
    c["process"]["args"] = json!(["/bin/sh", "-c", spec.script]);
    let mut env =
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()];
    env.extend(spec.env.iter().cloned());
    c["process"]["env"] = json!(env);
    c["root"]["readonly"] = json!(spec.readonly);
    if systemd_mode() {
        // the systemd driver's form: the container becomes nvhook-test-<id>.scope in system.slice
        c["linux"]["cgroupsPath"] = json!(format!("system.slice:nvhook-test:{id}"));
    }
    if spec.privileged {
        for set in ["bounding", "effective", "permitted"] {
            if let Some(caps) = c["process"]["capabilities"][set].as_array_mut() {
                caps.push(json!("CAP_SYS_ADMIN"));
            }
        }
    }
    let mut hook_env = vec!["NVHOOK_LOG=debug".to_owned()];
    hook_env.extend(spec.hook_env.iter().cloned());
    let hook = json!([{
        "path": nvhook(),
        "args": ["nvhook", "--config", spec.config.as_ref().unwrap_or(&fx.config), "prestart"],
        "env": hook_env,
    }]);
    let stage = match spec.stage {
        Stage::Prestart => Some("prestart"),
        Stage::CreateRuntime => Some("createRuntime"),
        Stage::None => None,
    };
    if let Some(stage) = stage {
        c["hooks"] = json!({ stage: hook });
        if spec.poststop {
            c["hooks"]["poststop"] = json!([{
                "path": nvhook(),
                "args": ["nvhook", "poststop"],
                "env": ["NVHOOK_LOG=debug"],
            }]);
        }
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    Bundle { dir, id }
}

/// `runtime run` the bundle (runc or crun), capture output, clean up.
pub fn run_oci(runtime: &str, b: &Bundle) -> Run {
    require_tool(runtime, runtime);
    prepare_host();
    let o = oci_runtime(runtime)
        .args(["run", "--bundle"])
        .arg(&b.dir)
        .arg(&b.id)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = oci_runtime(runtime).args(["delete", "-f", &b.id]).output();
    Run::from(o)
}

/// Run a container under `runtime` and check that the host's mount table is the same after.
pub fn run_checked(runtime: &str, spec: &Spec<'_>) -> Run {
    let _g = serial();
    let b = bundle(spec);
    let before = host_mounts();
    let r = run_oci(runtime, &b);
    let after = host_mounts();
    assert_eq!(
        before, after,
        "the host's mount table changed:\n{}\n{}",
        r.stdout, r.stderr
    );
    r
}

// ----------------------------------------------------------------------------- podman

pub struct Podman {
    root: PathBuf,
    /// podman refuses a runroot of more than 50 characters: it lives under /run.
    runroot: PathBuf,
    /// Our hooks dir (`--hooks-dir`); None in installed mode, where podman reads its defaults.
    pub hooks_dir: Option<PathBuf>,
}

/// `NVHOOK_TEST_INSTALLED=1` (set by .ci/run after `dpkg -i` of the .deb): the podman tests run
/// nvhook as the package installed it, /usr/bin/nvhook registered by
/// /usr/share/containers/oci/hooks.d/nvhook.json, found by podman's default hooks dirs (no
/// `--hooks-dir`), reading /etc/nvhook/config.toml. Missing package files are a failure.
pub fn installed_mode() -> bool {
    std::env::var("NVHOOK_TEST_INSTALLED").is_ok_and(|v| v == "1")
}

pub const INSTALLED_BIN: &str = "/usr/bin/nvhook";
pub const INSTALLED_HOOK: &str = "/usr/share/containers/oci/hooks.d/nvhook.json";
pub const INSTALLED_CONFIG: &str = "/etc/nvhook/config.toml";
const INSTALLED_CONFIG_ORIG: &str = "/etc/nvhook/config.toml.nvhook-test-orig";

/// Checks what the package must have installed; panics naming what is missing.
pub fn check_installed_package() {
    let st = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "nvhook"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert_eq!(
        st, "install ok installed",
        "NVHOOK_TEST_INSTALLED=1 but the nvhook package is not installed (make deb; dpkg -i target/debian/nvhook_*.deb)"
    );
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(INSTALLED_BIN)
        .unwrap_or_else(|e| panic!("{INSTALLED_BIN}: {e}: the package must install it"));
    assert!(
        m.is_file() && m.permissions().mode() & 0o111 != 0,
        "{INSTALLED_BIN} is not executable"
    );
    let text = std::fs::read(INSTALLED_HOOK)
        .unwrap_or_else(|e| panic!("{INSTALLED_HOOK}: {e}: the package must install it"));
    let hook: Value =
        serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{INSTALLED_HOOK}: not JSON: {e}"));
    assert_eq!(
        hook["hook"]["path"],
        json!(INSTALLED_BIN),
        "{INSTALLED_HOOK}: {hook}"
    );
    assert_eq!(
        hook["hook"]["args"],
        json!(["nvhook", "prestart"]),
        "{INSTALLED_HOOK}: {hook}"
    );
    assert!(
        Path::new(INSTALLED_CONFIG).is_file(),
        "{INSTALLED_CONFIG}: the package must install it (a conffile)"
    );
}

pub static CONFIG_SWAP: Mutex<()> = Mutex::new(());

/// /etc/nvhook/config.toml as it is between container runs (installed mode).
pub fn installed_config_between_runs() -> String {
    let _g = CONFIG_SWAP.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::read_to_string(INSTALLED_CONFIG).unwrap_or_else(|e| panic!("{INSTALLED_CONFIG}: {e}"))
}

/// In installed mode, /etc/nvhook/config.toml points at the fixture tree for the length of one
/// container run; the package's file comes back on drop (also when the test panics). The
/// original is kept by a hard link, so restoring it is one rename; one left by a killed run is
/// put back first.
pub struct InstalledConfig;

impl InstalledConfig {
    pub fn swap_in(fixture_config: &Path) -> InstalledConfig {
        let (etc, orig) = (
            Path::new(INSTALLED_CONFIG),
            Path::new(INSTALLED_CONFIG_ORIG),
        );
        if orig.exists() {
            std::fs::rename(orig, etc).expect("restore the config of an interrupted run");
        }
        std::fs::hard_link(etc, orig).expect("keep the package's /etc/nvhook/config.toml");
        let tmp = etc.with_extension("toml.nvhook-test-tmp");
        std::fs::copy(fixture_config, &tmp).expect("write the fixture config");
        std::fs::rename(&tmp, etc).expect("put the fixture config in place");
        InstalledConfig
    }
}

impl Drop for InstalledConfig {
    fn drop(&mut self) {
        if let Err(e) = std::fs::rename(INSTALLED_CONFIG_ORIG, INSTALLED_CONFIG) {
            eprintln!("could not restore {INSTALLED_CONFIG} from {INSTALLED_CONFIG_ORIG}: {e}");
        }
    }
}

impl Podman {
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.root.join("root"))
            .arg("--runroot")
            .arg(&self.runroot)
            .arg("--cgroup-manager")
            .arg(if systemd_mode() {
                "systemd"
            } else {
                "cgroupfs"
            })
            .args(["--events-backend", "file"]);
        c
    }

    /// `podman run --rm` of `image` with nvhook from the hooks dir.
    pub fn run(&self, image: &str, env: &[&str], extra: &[&str], script: &str) -> Run {
        self.run_hooks(true, image, env, extra, script)
    }

    /// `podman run --rm`, with nvhook's hooks dir or with no hook at all (`hooks` false: an empty
    /// hooks dir, for CDI runs that must work without nvhook's prestart hook).
    pub fn run_hooks(
        &self,
        hooks: bool,
        image: &str,
        env: &[&str],
        extra: &[&str],
        script: &str,
    ) -> Run {
        let no_hooks = self.root.join("no-hooks.d");
        let _ = std::fs::create_dir_all(&no_hooks);
        let mut c = self.cmd();
        c.args([
            "run",
            "--rm",
            "--network",
            "none",
            "--log-driver",
            "k8s-file",
        ])
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ]);
        // No hooks: an empty hooks dir (it replaces podman's default ones). Installed mode (no
        // hooks dir of our own): podman's default dirs, where the package put its registration.
        match (&self.hooks_dir, hooks) {
            (_, false) => {
                c.arg("--hooks-dir").arg(&no_hooks);
            }
            (Some(dir), true) => {
                c.arg("--hooks-dir").arg(dir);
            }
            (None, true) => {}
        }
        for e in env {
            c.args(["-e", e]);
        }
        c.args(extra).arg(image).args(["/bin/sh", "-c", script]);
        let _config = (hooks && self.hooks_dir.is_none()).then(|| {
            let lock = CONFIG_SWAP.lock().unwrap_or_else(|e| e.into_inner());
            (InstalledConfig::swap_in(&fixtures().config), lock)
        });
        Run::from(c.stdin(Stdio::null()).output().unwrap())
    }

    /// The host's mounts, less podman's own storage mounts (its overlay home comes and goes with
    /// podman's asynchronous `container cleanup`; it is podman's, not the container's).
    fn host_mounts(&self) -> Vec<String> {
        let (a, b) = (self.root.to_string_lossy(), self.runroot.to_string_lossy());
        host_mounts()
            .into_iter()
            .filter(|m| !m.starts_with(a.as_ref()) && !m.starts_with(b.as_ref()))
            .collect()
    }

    pub fn run_checked(&self, image: &str, env: &[&str], extra: &[&str], script: &str) -> Run {
        self.run_checked_hooks(true, image, env, extra, script)
    }

    /// The config.json podman generates for `podman create [extra] image cmd` (no hooks):
    /// created, initialised (which writes the spec), read, removed.
    pub fn oci_spec(&self, image: &str, extra: &[&str]) -> Value {
        let no_hooks = self.root.join("no-hooks.d");
        let _ = std::fs::create_dir_all(&no_hooks);
        let podman = |args: &[&str]| {
            let o = self.cmd().args(args).stdin(Stdio::null()).output().unwrap();
            assert!(
                o.status.success(),
                "podman {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        };
        let mut create = vec!["create", "--hooks-dir", no_hooks.to_str().unwrap()];
        create.extend([
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ]);
        create.extend(extra);
        create.extend([image, "/bin/sh", "-c", "true"]);
        let id = podman(&create);
        podman(&["init", &id]);
        let path = podman(&["inspect", "--format", "{{.OCIConfigPath}}", &id]);
        let spec = std::fs::read(&path);
        podman(&["rm", "-f", &id]);
        serde_json::from_slice(&spec.unwrap_or_else(|e| panic!("{path}: {e}")))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// [`Podman::run_hooks`], checking that the host's mount table is the same after.
    pub fn run_checked_hooks(
        &self,
        hooks: bool,
        image: &str,
        env: &[&str],
        extra: &[&str],
        script: &str,
    ) -> Run {
        let _g = serial();
        let before = self.host_mounts();
        let r = self.run_hooks(hooks, image, env, extra, script);
        let after = self.host_mounts();
        assert_eq!(
            before, after,
            "the host's mount table changed:\n{}\n{}",
            r.stdout, r.stderr
        );
        r
    }
}

/// A podman with its own storage, the fixture images imported, and a hooks dir holding
/// nvhook's registration (the packaged hooks.d file, pointed at the test binary and config),
/// or, in installed mode, the package's own registration.
pub fn podman() -> &'static Podman {
    static P: OnceLock<Podman> = OnceLock::new();
    P.get_or_init(|| {
        require_tool("podman", "podman");
        require_tool("crun", "crun");
        prepare_host();
        let fx = fixtures();
        // One store per test binary; a previous run's storage mounts are removed first.
        let name = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let root = tmp_root().join(format!("podman-{name}"));
        for m in host_mounts() {
            let mp = m.split(' ').next().unwrap_or("");
            if mp.starts_with(root.to_str().unwrap()) {
                let _ = Command::new("umount").arg("-l").arg(mp).status();
            }
        }
        let _ = std::fs::remove_dir_all(&root);
        let runroot = PathBuf::from("/run/nvhook-tests").join(&name);
        let _ = std::fs::remove_dir_all(&runroot);
        let hooks_dir = if installed_mode() {
            check_installed_package();
            std::fs::create_dir_all(&root).unwrap();
            None
        } else {
            let hooks_dir = root.join("hooks.d");
            std::fs::create_dir_all(&hooks_dir).unwrap();
            let packaged: Value = serde_json::from_slice(
                &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks.d/nvhook.json"))
                    .unwrap(),
            )
            .unwrap();
            let mut hook = packaged.clone();
            hook["hook"]["path"] = json!(nvhook());
            hook["hook"]["args"] = json!(["nvhook", "--config", fx.config, "prestart"]);
            std::fs::write(
                hooks_dir.join("nvhook.json"),
                serde_json::to_vec(&hook).unwrap(),
            )
            .unwrap();
            Some(hooks_dir)
        };
        let p = Podman {
            root,
            runroot,
            hooks_dir,
        };
        for (tar, tag) in [
            ("rootfs-debian.tar", "debian"),
            ("rootfs-lib64.tar", "lib64"),
        ] {
            let o = p
                .cmd()
                .arg("import")
                .arg(fx.dir.join(tar))
                .arg(format!("localhost/nvhook-test:{tag}"))
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "podman import: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        // podman mounts its storage home on first use: do that now, before any test compares
        // the host's mount table.
        let warm = p.run(DEBIAN_IMAGE, &[], &[], "true");
        assert!(
            warm.ok,
            "podman cannot run a container here: {}",
            warm.stderr
        );
        p
    })
}

/// What glibc's own ldconfig reads from a bundle's linker cache (`ldconfig -p -C`).
pub fn ldcache_listing(b: &Bundle) -> String {
    let o = Command::new("ldconfig")
        .arg("-p")
        .arg("-C")
        .arg(b.rootfs().join("etc/ld.so.cache"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A short report of what a container sees, for the runtime tests: its GPU nodes, whether the
/// CUDA probe and nvidia-smi work, and which image-carried nodes the device cgroup allows.
pub const SHORT_REPORT: &str = "\
for n in nvidia0 nvidia1 nvidiactl nvidia-uvm; do [ -e /dev/$n ] && echo node:$n; done; \
probe cuda; echo cuda-rc:$?; nvidia-smi >/dev/null 2>&1 && echo smi:ok; \
probe open /probe-nodes/gpu-fuse /probe-nodes/gpu-kmsg /probe-nodes/other; true";

/// A copy of the fixture driver root named `name`, and a config that uses it instead of the
/// original (for tests that break the driver tree).
pub fn driver_copy(name: &str) -> (PathBuf, PathBuf) {
    let fx = fixtures();
    let copy = fx.dir.join(format!("driver-{name}"));
    let _ = std::fs::remove_dir_all(&copy);
    let st = Command::new("cp")
        .arg("-a")
        .arg(fx.dir.join("driver"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success(), "copying the fixture driver tree");
    let cfg = fx.dir.join(format!("config-{name}.toml"));
    let text = std::fs::read_to_string(&fx.config).unwrap().replace(
        &format!("{}/driver\"", fx.dir.display()),
        &format!("{}\"", copy.display()),
    );
    std::fs::write(&cfg, text).unwrap();
    (copy, cfg)
}
