//! `docker run --gpus` against a real dockerd (Debian's docker.io), started by this test with its
//! own data root, exec root, socket, containerd namespace and cgroup parent, no network.
//!
//! dockerd implements `--gpus` by looking up `nvidia-container-runtime-hook` in its PATH when it
//! starts and, for each such container, adding it as a prestart hook (`["nvidia-container-runtime-hook",
//! "prestart"]`, with dockerd's own environment) and appending `NVIDIA_VISIBLE_DEVICES` /
//! `NVIDIA_DRIVER_CAPABILITIES` to the container's env (moby daemon/nvidia_linux.go, 20.10;
//! daemon/devices_nvidia_linux.go now). Here that name is the link `make install-docker`
//! makes (into a DESTDIR, first in dockerd's PATH), so nvhook runs under that argv[0];
//! dockerd's env carries NVHOOK_CONFIG (the fake driver tree's config) to the hook.
//!
//! One test runs every case against one dockerd (starting dockerd costs seconds), each case
//! caught on its own so that a failure names every failing case; the daemon is stopped by its
//! pid at the end and nothing may be left: processes, mounts, cgroups (a Drop guard does the
//! same when the test panics).

#![forbid(unsafe_code)]

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const DOCKER: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";
const IMAGE: &str = "nvhook-docker-test:debian";
const HOOK_NAME: &str = "nvidia-container-runtime-hook";
/// A host's containerd: dockerd uses it, when it runs, instead of starting its own.
const SYSTEM_CONTAINERD: &str = "/run/containerd/containerd.sock";
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What each container prints: its NVIDIA_* env, then the short report (GPU nodes, CUDA,
/// nvidia-smi, which image-carried nodes the device cgroup lets it open).
fn report() -> String {
    format!("env | grep ^NVIDIA_ | sort; {SHORT_REPORT}")
}

/// A dockerd of our own. `stop` (or Drop) ends it by its pid and removes everything it made.
struct Dockerd {
    /// /tmp/nvhook-docker-<pid>: socket, data root, exec root, log (short: sun_path)
    dir: PathBuf,
    /// DESTDIR/usr/bin: nvhook and the link `make install-docker` made
    bin: PathBuf,
    child: Option<Child>,
    /// also the containerd namespace
    cgroup_parent: String,
    stopped: bool,
    /// NVHOOK_TEST_INSTALLED=1: the package's nvhook, the link in /usr/bin
    installed: bool,
    /// installed mode: /etc/nvhook/config.toml points at the fixture tree while dockerd runs
    config: Option<(InstalledConfig, std::sync::MutexGuard<'static, ()>)>,
}

impl Dockerd {
    fn sock(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.display())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log"))
            .map(|s| {
                let lines: Vec<&str> = s.lines().collect();
                lines[lines.len().saturating_sub(30)..].join("\n")
            })
            .unwrap_or_default()
    }

    /// A new dockerd, nvhook installed for it: by `make install-docker` into a DESTDIR first in
    /// dockerd's PATH, or, with NVHOOK_TEST_INSTALLED=1 (.ci/run, after `dpkg -i` of nvhook and
    /// nvhook-docker), as the packages put it: /usr/bin/nvidia-container-runtime-hook -> nvhook,
    /// found in the system PATH, reading /etc/nvhook/config.toml (no NVHOOK_CONFIG).
    fn start() -> Dockerd {
        require_tool(DOCKER, "docker.io");
        require_tool(DOCKERD, "docker.io");
        require_tool("make", "make");
        prepare_host();
        let name = format!("nvhook-docker-{}", std::process::id());
        let dir = PathBuf::from("/tmp").join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let installed = installed_mode();
        let bin = if installed {
            check_installed_package();
            check_docker_package();
            PathBuf::from("/usr/bin")
        } else {
            let destdir = dir.join("destdir");
            let bin = destdir.join("usr/bin");
            std::fs::create_dir_all(&bin).unwrap();
            // `make install` would copy the release binary here; the test's own build stands in
            std::os::unix::fs::symlink(nvhook(), bin.join("nvhook")).unwrap();
            let o = Command::new("make")
                .args([
                    "-s",
                    "-C",
                    env!("CARGO_MANIFEST_DIR"),
                    "install-docker",
                    "PREFIX=/usr",
                ])
                .arg(format!("DESTDIR={}", destdir.display()))
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "make install-docker: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            bin
        };
        let config = installed.then(|| {
            let lock = CONFIG_SWAP.lock().unwrap_or_else(|e| e.into_inner());
            (InstalledConfig::swap_in(&fixtures().config), lock)
        });
        let mut d = Dockerd {
            dir,
            bin,
            child: None,
            cgroup_parent: name,
            stopped: false,
            installed,
            config,
        };
        d.spawn();
        let o = d
            .docker(&["import", "-"])
            .arg(IMAGE)
            .stdin(std::fs::File::open(fixtures().dir.join("rootfs-debian.tar")).unwrap())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        d
    }

    /// Start dockerd (again) on the same directories and wait until it answers.
    fn spawn(&mut self) {
        let fx = fixtures();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .unwrap();
        let mut dockerd = Command::new(DOCKERD);
        dockerd.env_clear();
        if self.installed {
            dockerd.env("PATH", SYSTEM_PATH);
        } else {
            // dockerd hands its own environment to the hook (moby: `Env: os.Environ()`)
            dockerd
                .env("PATH", format!("{}:{SYSTEM_PATH}", self.bin.display()))
                .env("NVHOOK_CONFIG", &fx.config);
        }
        let child = dockerd
            .args(["--iptables=false", "--ip-forward=false", "--bridge=none"])
            .args(["--exec-opt", "native.cgroupdriver=cgroupfs"])
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("-H")
            .arg(self.sock())
            .arg("--pidfile")
            .arg(self.dir.join("dockerd.pid"))
            .args(["--containerd-namespace", &self.cgroup_parent])
            .args([
                "--containerd-plugins-namespace",
                &format!("{}-plugins", self.cgroup_parent),
            ])
            .args(["--cgroup-parent", &format!("/{}", self.cgroup_parent)])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{DOCKERD}: {e}"));
        self.child = Some(child);
        self.stopped = false;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("dockerd exited ({st}) before it answered:\n{}", self.log());
            }
            let ok = self
                .docker(&["version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer on {} in 120 s:\n{}",
                self.sock(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn docker(&self, args: &[&str]) -> Command {
        let mut c = Command::new(DOCKER);
        c.env_clear()
            .env("PATH", SYSTEM_PATH)
            .env("DOCKER_CONFIG", self.dir.join("client"))
            .arg("-H")
            .arg(self.sock())
            .args(args);
        c
    }

    /// `docker ARGS...`, printed as the report shows it, with what it printed.
    fn cmd(&self, shown: &str, args: &[&str]) -> Run {
        let o = self.docker(args).stdin(Stdio::null()).output().unwrap();
        let r = Run {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        };
        println!(
            "$ docker {shown}\n{}{}{}",
            r.stdout,
            r.stderr,
            if r.ok { "" } else { "(exit status non-zero)\n" }
        );
        r
    }

    /// `docker run --rm --network none OPTS IMAGE sh -c REPORT`
    fn run(&self, opts: &[&str]) -> Run {
        let shown = format!(
            "run --rm --network none {} IMAGE sh -c REPORT",
            opts.join(" ")
        );
        let script = report();
        let mut args = vec!["run", "--rm", "--network", "none"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&[IMAGE, "/bin/sh", "-c", &script]);
        self.cmd(&shown, &args)
    }

    /// Stop dockerd by its pid (SIGTERM, then wait), then remove what it leaves by design (its
    /// directories, the empty cgroup parent). Returns what should have gone and had not.
    fn stop(&mut self, remove: bool) -> Vec<String> {
        let mut left = Vec::new();
        if self.stopped {
            return left;
        }
        self.stopped = true;
        let Some(mut child) = self.child.take() else {
            return left;
        };
        if remove {
            let ids = self.docker(&["ps", "-aq"]).output().map(|o| o.stdout);
            let ids = String::from_utf8_lossy(&ids.unwrap_or_default()).into_owned();
            for id in ids.split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]).output();
            }
        }
        let system_containerd =
            !self.dir.join("exec/containerd").exists() && Path::new(SYSTEM_CONTAINERD).exists();
        let containerd_pid =
            std::fs::read_to_string(self.dir.join("exec/containerd/containerd.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            if Instant::now() > deadline {
                left.push(format!(
                    "dockerd {} did not exit on SIGTERM in 90 s",
                    child.id()
                ));
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // containerd (dockerd's child) and the shims: every process naming our directory
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let procs = processes_naming(&self.dir, &self.cgroup_parent, containerd_pid);
            if procs.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                for (pid, cmd) in procs {
                    left.push(format!("process {pid} still running: {cmd}"));
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !remove {
            return left;
        }
        let dir = self.dir.to_string_lossy().into_owned();
        let mut mounts: Vec<String> = host_mounts()
            .into_iter()
            .filter_map(|m| m.split(' ').next().map(str::to_owned))
            .filter(|mp| mp.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mp in mounts {
            left.push(format!("mount left: {mp}"));
            let _ = Command::new("umount").arg("-l").arg(&mp).status();
        }
        for cg in cgroup_dirs(&self.cgroup_parent) {
            // dockerd leaves the empty parent by design; a container's cgroup below it is a leak
            let mut subs: Vec<PathBuf> = walk_dirs(&cg);
            subs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for s in subs {
                if s != cg {
                    left.push(format!("cgroup left: {}", s.display()));
                }
                if let Err(e) = std::fs::remove_dir(&s) {
                    left.push(format!("cgroup {}: rmdir: {e}", s.display()));
                }
            }
        }
        // installed mode: the package's /etc/nvhook/config.toml comes back
        self.config = None;
        if system_containerd {
            // a containerd of the host's served this dockerd: drop our (empty) namespaces
            for ns in [
                self.cgroup_parent.clone(),
                format!("{}-plugins", self.cgroup_parent),
            ] {
                let _ = Command::new("ctr")
                    .args(["--address", SYSTEM_CONTAINERD, "namespaces", "remove", &ns])
                    .output();
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            left.push(format!("{}: {e}", self.dir.display()));
        }
        left
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        for l in self.stop(true) {
            eprintln!("cleanup: {l}");
        }
    }
}

/// Installed mode: the nvhook-docker package and its link.
fn check_docker_package() {
    let st = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "nvhook-docker"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert_eq!(
        st, "install ok installed",
        "NVHOOK_TEST_INSTALLED=1 but nvhook-docker is not installed (make deb-docker; dpkg -i target/debian/nvhook-docker_*.deb)"
    );
    let link = Path::new("/usr/bin").join(HOOK_NAME);
    assert_eq!(
        std::fs::read_link(&link).ok().as_deref(),
        Some(Path::new("nvhook")),
        "{}: the package must install it as a link to nvhook",
        link.display()
    );
}

/// Processes whose command line names `dir` or the containerd namespace `ns` (containerd,
/// shims, also those of a host's containerd), plus `pid` while it lives.
fn processes_naming(dir: &Path, ns: &str, pid: Option<u32>) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let ns = format!("-namespace {ns} ");
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !cmd.is_empty() && (cmd.contains(&needle) || cmd.contains(&ns) || Some(p) == pid) {
            v.push((p, cmd));
        }
    }
    v
}

/// `/sys/fs/cgroup/<controller>/<name>` (v1) and `/sys/fs/cgroup/<name>` (v2) that exist.
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut v = Vec::new();
    if root.join(name).is_dir() {
        v.push(root.join(name));
    }
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let p = e.path().join(name);
        if p.is_dir() {
            v.push(p);
        }
    }
    v
}

fn walk_dirs(d: &Path) -> Vec<PathBuf> {
    let mut v = vec![d.to_path_buf()];
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            v.extend(walk_dirs(&e.path()));
        }
    }
    v
}

// ------------------------------------------------------------------------------ the cases

fn has_all(r: &Run, want: &[&str], not: &[&str]) {
    for w in want {
        assert!(r.has(w), "missing {w:?} in:\n{}{}", r.stdout, r.stderr);
    }
    for n in not {
        assert!(!r.has(n), "unexpected {n:?} in:\n{}{}", r.stdout, r.stderr);
    }
}

/// GPU 0 is /dev/nvidia1 (1:11, the image's /probe-nodes/gpu-kmsg), GPU 1 is /dev/nvidia0
/// (10:229, /probe-nodes/gpu-fuse): index != minor in the fake tree.
const GPU0_ONLY: &[&str] = &[
    "node:nvidia1",
    "/probe-nodes/gpu-kmsg: ok",
    "/probe-nodes/gpu-fuse: EPERM",
    "/probe-nodes/other: EPERM",
];
const GPU1_ONLY: &[&str] = &[
    "node:nvidia0",
    "/probe-nodes/gpu-fuse: ok",
    "/probe-nodes/gpu-kmsg: EPERM",
    "/probe-nodes/other: EPERM",
];
const BOTH: &[&str] = &[
    "node:nvidia0",
    "node:nvidia1",
    "/probe-nodes/gpu-fuse: ok",
    "/probe-nodes/gpu-kmsg: ok",
    "/probe-nodes/other: EPERM",
];
/// libcuda found by soname through the image's linker cache, cuInit works, nvidia-smi runs
const CUDA_OK: &[&str] = &["cuda: path=/usr/lib/", "cuInit=0", "cuda-rc:0", "smi:ok"];

fn gpus_all(d: &Dockerd) {
    let r = d.run(&["--gpus", "all"]).expect_ok("--gpus all");
    has_all(&r, BOTH, &["NVIDIA_DRIVER_CAPABILITIES"]);
    has_all(
        &r,
        &["NVIDIA_VISIBLE_DEVICES=all", "devices=2", "node:nvidiactl"],
        &[],
    );
    has_all(&r, CUDA_OK, &[]);
}

fn gpus_count(d: &Dockerd) {
    let r = d.run(&["--gpus", "1"]).expect_ok("--gpus 1");
    has_all(&r, GPU0_ONLY, &["node:nvidia0"]);
    has_all(&r, &["NVIDIA_VISIBLE_DEVICES=0\n", "devices=1"], &[]);
    has_all(&r, CUDA_OK, &[]);
    let r = d.run(&["--gpus", "2"]).expect_ok("--gpus 2");
    has_all(&r, BOTH, &[]);
    has_all(&r, &["NVIDIA_VISIBLE_DEVICES=0,1", "devices=2"], &[]);
    // a count is turned into indexes by dockerd, not checked: 3 names index 2, which is not here
    let r = d.run(&["--gpus", "3"]);
    assert!(!r.ok, "--gpus 3 started:\n{}", r.stdout);
    assert!(r.stderr.contains("unknown device \"2\""), "{}", r.stderr);
}

fn gpus_device_index(d: &Dockerd) {
    let r = d.run(&["--gpus", "device=1"]).expect_ok("--gpus device=1");
    has_all(&r, GPU1_ONLY, &["node:nvidia1"]);
    has_all(&r, &["NVIDIA_VISIBLE_DEVICES=1\n", "devices=1"], &[]);
    has_all(&r, CUDA_OK, &[]);
    // --gpus is one CSV record: a field holding commas is quoted, --gpus '"device=0,1"'
    let r = d
        .run(&["--gpus", "\"device=0,1\""])
        .expect_ok("--gpus '\"device=0,1\"'");
    has_all(&r, BOTH, &[]);
    has_all(&r, &["NVIDIA_VISIBLE_DEVICES=0,1", "devices=2"], &[]);
}

fn gpus_device_uuid(d: &Dockerd) {
    let r = d
        .run(&["--gpus", &format!("device={GPU1_UUID}")])
        .expect_ok("--gpus device=GPU-<uuid>");
    has_all(&r, GPU1_ONLY, &["node:nvidia1"]);
    has_all(&r, CUDA_OK, &[]);
}

fn gpus_capabilities(d: &Dockerd) {
    // no count: the CLI asks for 1 GPU; "utility" alone: nvidia-smi, no libcuda
    let r = d
        .run(&["--gpus", "capabilities=utility"])
        .expect_ok("capabilities=utility");
    has_all(&r, GPU0_ONLY, &["node:nvidia0", "cuda-rc:0"]);
    has_all(
        &r,
        &[
            "NVIDIA_DRIVER_CAPABILITIES=utility\n",
            "smi:ok",
            "cuda: dlopen failed",
        ],
        &[],
    );
    let r = d
        .run(&["--gpus", "\"capabilities=compute,utility\""])
        .expect_ok("capabilities=compute,utility");
    has_all(&r, CUDA_OK, &[]);
    has_all(&r, &["NVIDIA_DRIVER_CAPABILITIES=compute,utility"], &[]);
    // compute alone: libcuda, no nvidia-smi
    let r = d
        .run(&["--gpus", "all,capabilities=compute"])
        .expect_ok("capabilities=compute");
    has_all(&r, &["cuda-rc:0"], &["smi:ok"]);
}

fn gpus_capability_words(d: &Dockerd) {
    // dockerd's own words select its nvidia driver and are not driver capabilities
    let r = d
        .run(&["--gpus", "all,capabilities=nvidia"])
        .expect_ok("capabilities=nvidia");
    has_all(&r, BOTH, &["NVIDIA_DRIVER_CAPABILITIES"]);
    has_all(&r, CUDA_OK, &[]);
    let r = d
        .run(&[
            "--gpus",
            "driver=nvidia,count=1,\"capabilities=gpu,utility\"",
        ])
        .expect_ok("driver=nvidia,capabilities=gpu,utility");
    has_all(&r, GPU0_ONLY, &[]);
    has_all(
        &r,
        &["NVIDIA_DRIVER_CAPABILITIES=utility\n", "smi:ok"],
        &["cuda-rc:0"],
    );
    // driver options are accepted and ignored by dockerd's nvidia driver
    let r = d
        .run(&["--gpus", "all,\"options=a=b\""])
        .expect_ok("options=");
    has_all(&r, BOTH, &[]);
    // a word no driver has: dockerd's own refusal, the hook never runs
    let r = d.run(&["--gpus", "all,capabilities=tpu"]);
    assert!(!r.ok, "{}", r.stdout);
    assert!(
        r.stderr.contains("could not select device driver"),
        "{}",
        r.stderr
    );
}

fn gpus_and_env(d: &Dockerd) {
    // dockerd appends its NVIDIA_VISIBLE_DEVICES after the container's: --gpus wins, as with
    // NVIDIA's hook (a later entry of the env wins) and in the container's own env (runc)
    let r = d
        .run(&[
            "-e",
            "NVIDIA_VISIBLE_DEVICES=1",
            "-e",
            "NVIDIA_DRIVER_CAPABILITIES=compute",
            "--gpus",
            "device=0,\"capabilities=utility\"",
        ])
        .expect_ok("-e NVIDIA_VISIBLE_DEVICES=1 --gpus device=0");
    has_all(&r, GPU0_ONLY, &["node:nvidia0", "cuda-rc:0"]);
    has_all(
        &r,
        &[
            "NVIDIA_VISIBLE_DEVICES=0\n",
            "NVIDIA_DRIVER_CAPABILITIES=utility\n",
            "smi:ok",
        ],
        &[],
    );
    // without --gpus dockerd adds no hook: the variable alone gives nothing
    let r = d
        .run(&["-e", "NVIDIA_VISIBLE_DEVICES=all"])
        .expect_ok("-e NVIDIA_VISIBLE_DEVICES=all, no --gpus");
    has_all(
        &r,
        &["NVIDIA_VISIBLE_DEVICES=all", "/probe-nodes/gpu-fuse: EPERM"],
        &["node:", "cuda-rc:0"],
    );
}

fn gpus_bad_device(d: &Dockerd) {
    let r = d.run(&["--gpus", "device=7"]);
    assert!(!r.ok, "device=7 started:\n{}", r.stdout);
    assert!(
        r.stderr
            .contains("nvhook: error: NVIDIA_VISIBLE_DEVICES: unknown device \"7\"")
            && r.stderr.contains("this host has 2 GPU(s)"),
        "the hook's error must reach docker run's output:\n{}",
        r.stderr
    );
    let left = d.cmd("ps -aq", &["ps", "-aq"]);
    assert!(left.stdout.trim().is_empty(), "{}", left.stdout);
}

/// `docker exec` into a GPU container; `docker restart` runs the hook again on the container's
/// kept layer (the mount points and linker cache of the first start are already there).
fn restart_and_exec(d: &Dockerd) {
    let script = format!("{}; exec sleep 100000", report());
    d.cmd(
        "run -d --name nvt-restart --gpus device=1 IMAGE sh -c 'REPORT; exec sleep 100000'",
        &[
            "run",
            "-d",
            "--name",
            "nvt-restart",
            "--network",
            "none",
            "--stop-timeout",
            "1",
            "--gpus",
            "device=1",
            IMAGE,
            "/bin/sh",
            "-c",
            &script,
        ],
    )
    .expect_ok("run -d");
    let exec = || {
        d.cmd(
            "exec nvt-restart sh -c REPORT",
            &["exec", "nvt-restart", "/bin/sh", "-c", &report()],
        )
        .expect_ok("docker exec")
    };
    let r = exec();
    has_all(&r, GPU1_ONLY, &["node:nvidia1"]);
    has_all(&r, CUDA_OK, &[]);
    d.cmd(
        "restart -t 1 nvt-restart",
        &["restart", "-t", "1", "nvt-restart"],
    )
    .expect_ok("docker restart");
    let r = exec();
    has_all(&r, GPU1_ONLY, &["node:nvidia1"]);
    has_all(&r, CUDA_OK, &[]);
    let logs = d.cmd("logs nvt-restart", &["logs", "nvt-restart"]);
    assert_eq!(
        logs.stdout.matches("/probe-nodes/gpu-fuse: ok").count(),
        2,
        "two starts, each with GPU 1:\n{}",
        logs.stdout
    );
    d.cmd("rm -f nvt-restart", &["rm", "-f", "nvt-restart"])
        .expect_ok("docker rm");
}

/// `--restart=always`: dockerd, stopped by its pid and started again, starts the container
/// again, and the hook runs again (same link, same environment).
fn restart_always_after_dockerd_restart(d: &mut Dockerd) {
    d.cmd(
        "run -d --restart=always --name nvt-always --gpus device=0 IMAGE sleep 100000",
        &[
            "run",
            "-d",
            "--restart=always",
            "--stop-timeout",
            "1",
            "--name",
            "nvt-always",
            "--network",
            "none",
            "--gpus",
            "device=0",
            IMAGE,
            "sleep",
            "100000",
        ],
    )
    .expect_ok("run --restart=always");
    let old = d.pid();
    let left = d.stop(false);
    assert!(left.is_empty(), "stopping dockerd: {left:?}");
    d.spawn();
    println!(
        "(dockerd {old} stopped by its pid, dockerd {} started)",
        d.pid()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = d
            .docker(&["inspect", "-f", "{{.State.Running}}", "nvt-always"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&o.stdout).trim() == "true" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nvt-always did not come back after the dockerd restart:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = d
        .cmd(
            "exec nvt-always sh -c REPORT",
            &["exec", "nvt-always", "/bin/sh", "-c", &report()],
        )
        .expect_ok("exec after the dockerd restart");
    has_all(&r, GPU0_ONLY, &["node:nvidia0"]);
    has_all(&r, CUDA_OK, &[]);
    d.cmd("rm -f nvt-always", &["rm", "-f", "nvt-always"])
        .expect_ok("docker rm");
}

/// `nvhook doctor` sees that this dockerd finds nvhook under the hook's name, and says to
/// restart dockerd once the link is newer than the daemon.
fn doctor_sees_dockerd(d: &Dockerd) {
    let doctor = || {
        let o = Command::new(nvhook())
            .args([
                "--config",
                fixtures().config.to_str().unwrap(),
                "doctor",
                "--json",
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let mine = format!("dockerd (pid {})", d.pid());
        let f: Vec<serde_json::Value> = v["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| {
                f["check"] == "docker" && f["message"].as_str().is_some_and(|m| m.contains(&mine))
            })
            .cloned()
            .collect();
        println!("$ nvhook doctor (docker findings for {mine})\n{f:#?}");
        f
    };
    let link = d.bin.join(HOOK_NAME);
    let f = doctor();
    assert!(
        f.len() == 1
            && f[0]["status"] == "ok"
            && f[0]["message"]
                .as_str()
                .is_some_and(|m| m.contains(&link.display().to_string())),
        "{f:?}"
    );
    // the link made (again) after dockerd started: dockerd may have registered no GPU driver
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let st = Command::new("touch")
        .args(["-h", "-d", &format!("@{later}")])
        .arg(&link)
        .status()
        .unwrap();
    assert!(st.success());
    let f = doctor();
    assert!(
        f.len() == 1
            && f[0]["status"] == "warn"
            && f[0]["hint"].as_str().is_some_and(|m| m.contains("restart")),
        "{f:?}"
    );
}

#[test]
fn docker_run_gpus() {
    let _g = serial();
    let t0 = Instant::now();
    let before: Vec<String> = host_mounts()
        .into_iter()
        .filter(|m| m.contains("nvidia") || m.contains(&*fixtures().dir.to_string_lossy()))
        .collect();
    let mut d = Dockerd::start();
    println!(
        "dockerd {} up, image imported, in {:.1} s",
        d.pid(),
        t0.elapsed().as_secs_f64()
    );
    type Case = (&'static str, fn(&mut Dockerd));
    let cases: &[Case] = &[
        ("--gpus all", |d| gpus_all(d)),
        ("--gpus 1 / 2 (count)", |d| gpus_count(d)),
        ("--gpus device=1, \"device=0,1\"", |d| gpus_device_index(d)),
        ("--gpus device=GPU-<uuid>", |d| gpus_device_uuid(d)),
        ("--gpus capabilities=...", |d| gpus_capabilities(d)),
        ("capability words gpu/nvidia, driver, options", |d| {
            gpus_capability_words(d)
        }),
        ("--gpus with -e NVIDIA_VISIBLE_DEVICES", |d| gpus_and_env(d)),
        ("--gpus device=7 (error)", |d| gpus_bad_device(d)),
        ("docker restart, docker exec", |d| restart_and_exec(d)),
        ("--restart=always across a dockerd restart", |d| {
            restart_always_after_dockerd_restart(d)
        }),
        ("nvhook doctor", |d| doctor_sees_dockerd(d)),
    ];
    let mut failed = Vec::new();
    for (name, case) in cases {
        println!("=== case: {name}");
        let t = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| case(&mut d))) {
            Ok(()) => println!("=== case {name}: ok ({:.1} s)", t.elapsed().as_secs_f64()),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                println!("=== case {name}: FAILED");
                failed.push(format!("{name}: {msg}"));
            }
        }
    }
    let pid = d.pid();
    let left = d.stop(true);
    let after: Vec<String> = host_mounts()
        .into_iter()
        .filter(|m| m.contains("nvidia") || m.contains(&*fixtures().dir.to_string_lossy()))
        .collect();
    println!(
        "dockerd {pid} stopped; {} cases in {:.1} s",
        cases.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n---\n")
    );
    assert!(left.is_empty(), "left behind: {left:#?}");
    assert_eq!(before, after, "the host's mount table changed");
}

/// `make install-docker` never replaces or shadows NVIDIA's hook; `uninstall-docker` removes
/// only its own link.
#[test]
fn install_docker_refuses_nvidias_hook() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("install-docker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bin = dir.join("usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let make = |target: &str, destdir: Option<&Path>, prefix: &Path, path: Option<&Path>| {
        let mut c = Command::new("make");
        c.arg("-s")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .arg(target)
            .arg(format!("PREFIX={}", prefix.display()));
        if let Some(d) = destdir {
            c.arg(format!("DESTDIR={}", d.display()));
        }
        if let Some(p) = path {
            c.env("PATH", format!("{}:{SYSTEM_PATH}", p.display()));
        }
        let o = c.output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let link = bin.join(HOOK_NAME);
    // no nvhook yet: says to run make install
    let (ok, out) = make("install-docker", Some(&dir), Path::new("/usr"), None);
    assert!(!ok && out.contains("run 'make install' first"), "{out}");
    std::os::unix::fs::symlink(nvhook(), bin.join("nvhook")).unwrap();
    // NVIDIA's binary at that name: refused, the file kept
    std::fs::write(&link, "#!/bin/sh\necho nvidia\n").unwrap();
    let (ok, out) = make("install-docker", Some(&dir), Path::new("/usr"), None);
    assert!(!ok && out.contains("is not nvhook's link"), "{out}");
    let (ok, out) = make("uninstall-docker", Some(&dir), Path::new("/usr"), None);
    assert!(ok && out.contains("left alone"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&link).unwrap(),
        "#!/bin/sh\necho nvidia\n"
    );
    std::fs::remove_file(&link).unwrap();
    // the real thing: the link, idempotent; uninstall removes it
    let (ok, out) = make("install-docker", Some(&dir), Path::new("/usr"), None);
    assert!(ok, "{out}");
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("nvhook"));
    // nvhook under that argv[0] is nvhook
    let o = Command::new(&link).arg("version").output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("nvhook "),
        "{o:?}"
    );
    let (ok, _) = make("install-docker", Some(&dir), Path::new("/usr"), None);
    assert!(ok);
    let (ok, out) = make("uninstall-docker", Some(&dir), Path::new("/usr"), None);
    assert!(ok && !link.exists() && !link.is_symlink(), "{out}");
    // a package owning the name (dpkg-query says so), no DESTDIR: refused naming it
    let fake = dir.join("fake-dpkg");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(
        fake.join("dpkg-query"),
        "#!/bin/sh\necho 'nvidia-container-toolkit-base: /usr/bin/nvidia-container-runtime-hook'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        fake.join("dpkg-query"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let prefix = dir.join("usr");
    let (ok, out) = make("install-docker", None, &prefix, Some(&fake));
    assert!(
        !ok && out.contains("nvidia-container-toolkit-base"),
        "{out}"
    );
    assert!(!link.is_symlink());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rootless dockerd (`dockerd-rootless.sh`, rootlesskit) as an unprivileged user: the same
/// lookup of the hook in the daemon's PATH, nvhook running as root of the user's namespace
/// (no device cgroup: nvhook checks the user can open each node, docs/rootless.md).
/// rootlesskit runs with `--net=host` (DOCKERD_ROOTLESS_ROOTLESSKIT_NET=host): the default
/// slirp4netns needs /dev/net/tun, which some hosts (this one: mode 0600) keep from users, and
/// containers here use no network anyway.
#[test]
fn rootless_dockerd_gpus() {
    const RL_USER: &str = "nvhookdocker";
    const SCRIPT: &str = "/usr/share/docker.io/contrib/dockerd-rootless.sh";
    require_tool(DOCKER, "docker.io");
    require_tool("rootlesskit", "rootlesskit");
    assert!(
        Path::new(SCRIPT).exists(),
        "{SCRIPT}: apt-get install docker.io"
    );
    let fx = fixtures();
    let sh = |script: &str| {
        let o = Command::new("sh").arg("-c").arg(script).output().unwrap();
        assert!(
            o.status.success(),
            "{script}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    sh(&format!(
        "id -u {RL_USER} >/dev/null 2>&1 || useradd --no-create-home --home-dir /nonexistent --shell /bin/sh {RL_USER}; \
         touch /etc/subuid /etc/subgid; \
         grep -q '^{RL_USER}:' /etc/subuid || usermod --add-subuids 500000-565535 {RL_USER}; \
         grep -q '^{RL_USER}:' /etc/subgid || usermod --add-subgids 500000-565535 {RL_USER}"
    ));
    // Everything the user's daemon and the hook read lies in one directory the user can reach
    // (a CI checkout may sit under /root): nvhook, the link, the fixture tree, the image.
    let dir = PathBuf::from(format!("/tmp/nvhook-docker-rl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let guard = RootlessDir(dir.clone());
    let bin = dir.join("destdir/usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(nvhook(), bin.join("nvhook")).unwrap();
    sh(&format!(
        "make -s -C {} install-docker PREFIX=/usr DESTDIR={}/destdir",
        env!("CARGO_MANIFEST_DIR"),
        dir.display()
    ));
    let tree = dir.join("fx");
    sh(&format!(
        "mkdir -p {t} && cp -a {f}/driver {f}/proc {f}/sys {f}/dev {t}/ && chmod 755 {t}/dev/nvidia-caps {t}/dev/nvidia-caps-imex-channels && chmod 666 {t}/dev/nvidia-caps/* && cp {f}/rootfs-debian.tar {d}/ && mkdir -m 700 {d}/xdg {d}/home && chown {RL_USER} {d}/xdg {d}/home && chmod -R a+rX {d}/destdir {d}/rootfs-debian.tar",
        t = tree.display(),
        f = fx.dir.display(),
        d = dir.display()
    ));
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "driver-root = \"{0}/driver\"\ndev-root = \"{0}\"\nproc-root = \"{0}/proc\"\nsys-root = \"{0}/sys\"\n",
            tree.display()
        ),
    )
    .unwrap();
    let (xdg, home) = (dir.join("xdg"), dir.join("home"));
    let sock = format!("unix://{}/docker.sock", xdg.display());
    let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
    let mut child = Command::new("runuser")
        .args(["-u", RL_USER, "--", "env", "-i"])
        .arg(format!("HOME={}", home.display()))
        .arg(format!("XDG_RUNTIME_DIR={}", xdg.display()))
        .arg(format!(
            "PATH={}:/usr/share/docker.io/contrib:{SYSTEM_PATH}",
            bin.display()
        ))
        .arg(format!("NVHOOK_CONFIG={}", cfg.display()))
        .args([
            "DOCKERD_ROOTLESS_ROOTLESSKIT_NET=host",
            "DOCKERD_ROOTLESS_ROOTLESSKIT_PORT_DRIVER=none",
            SCRIPT,
            "--iptables=false",
            "--ip-forward=false",
            "--bridge=none",
        ])
        .arg("--data-root")
        .arg(home.join("data"))
        .arg("--exec-root")
        .arg(xdg.join("exec"))
        .args(["-H", &sock])
        .arg("--pidfile")
        .arg(xdg.join("dockerd.pid"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let docker = |args: &[&str]| {
        let o = Command::new("runuser")
            .args(["-u", RL_USER, "--", "env", "-i"])
            .arg(format!("HOME={}", home.display()))
            .arg(format!("PATH={SYSTEM_PATH}"))
            .args([DOCKER, "-H", &sock])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Run {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !docker(&["version"]).ok {
        let log = std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default();
        assert!(
            child.try_wait().ok().flatten().is_none() && Instant::now() < deadline,
            "rootless dockerd did not come up:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let tar = dir.join("rootfs-debian.tar");
    docker(&["import", tar.to_str().unwrap(), IMAGE]).expect_ok("docker import");
    let info = docker(&["info", "-f", "{{.SecurityOptions}}"]);
    assert!(info.stdout.contains("rootless"), "{}", info.stdout);
    let run = |gpus: &str| {
        let r = docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--gpus",
            gpus,
            IMAGE,
            "/bin/sh",
            "-c",
            &report(),
        ]);
        println!(
            "$ docker run --rm --network none --gpus {gpus} IMAGE sh -c REPORT   (rootless dockerd)\n{}{}",
            r.stdout, r.stderr
        );
        r
    };
    let r = run("device=1").expect_ok("rootless --gpus device=1");
    has_all(
        &r,
        &["node:nvidia0", "NVIDIA_VISIBLE_DEVICES=1\n", "devices=1"],
        &["node:nvidia1"],
    );
    has_all(&r, CUDA_OK, &[]);
    let r = run("all").expect_ok("rootless --gpus all");
    has_all(&r, &["node:nvidia0", "node:nvidia1", "devices=2"], &[]);
    has_all(&r, CUDA_OK, &[]);
    let r = run("device=7");
    assert!(
        !r.ok && r.stderr.contains("unknown device \"7\""),
        "{}",
        r.stderr
    );
    // stop it by its pid; rootlesskit and the runuser above it follow
    let pid = std::fs::read_to_string(xdg.join("dockerd.pid")).unwrap();
    sh(&format!("kill -TERM {}", pid.trim()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().ok().flatten().is_none() {
        assert!(
            Instant::now() < deadline,
            "rootless dockerd {pid} did not exit"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = processes_naming(&dir, "-", None);
    assert!(left.is_empty(), "left running: {left:?}");
    drop(guard);
}

/// Removes the rootless test's directory, also when the test panics; kills what still runs
/// from it (by pid).
struct RootlessDir(PathBuf);

impl Drop for RootlessDir {
    fn drop(&mut self) {
        for (pid, _) in processes_naming(&self.0, "-", None) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        std::thread::sleep(Duration::from_millis(200));
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
