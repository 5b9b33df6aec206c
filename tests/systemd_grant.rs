//! Durable device grants on a systemd host (issue 11, docs/systemd.md): a container's GPU access
//! must survive `systemctl daemon-reload`, which rebuilds a systemd unit's device policy from its
//! own `DeviceAllow=` list.
//!
//! This binary runs inside the systemd test host (tests/systemd/host.sh: systemd 252 as PID 1,
//! cgroup v2, device policy enforced by eBPF). Started anywhere else (plain `cargo test`), it boots
//! that host, runs itself inside, and stops the host again if it booted it: never a skip.
//!
//! Every case compares nvhook with its systemd step on (`systemd-device-grants = true`, the
//! default) and off, and prints both outcomes: off, the container loses its GPU at the first
//! daemon-reload (EPERM), which is the bug this step fixes, and shows the test can fail.
//!
//! The fake driver tree's GPU 0 (`NVIDIA_VISIBLE_DEVICES=0`) is the node c 1:11, GPU 1 is c 10:229;
//! the rootfs has both as `/probe-nodes/gpu-kmsg` and `/probe-nodes/gpu-fuse` whatever was
//! injected, so `probe open` tells the device policy apart from the mounts.

#![forbid(unsafe_code)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::{Value, json};

const MINE: &str = "/probe-nodes/gpu-kmsg"; // GPU 0, granted
const OTHER: &str = "/probe-nodes/gpu-fuse"; // GPU 1, not granted
const PROBE: &str = "probe open /probe-nodes/gpu-kmsg /probe-nodes/gpu-fuse";

fn main() {
    if !inside_systemd_host() {
        std::process::exit(run_in_host());
    }
    let cases: [(&str, fn()); 5] = [
        ("podman_daemon_reload", podman_daemon_reload),
        ("runc_systemd_cgroup", || oci_daemon_reload("runc")),
        ("crun_systemd_cgroup", || oci_daemon_reload("crun")),
        ("reload_storm_16_containers", reload_storm),
        ("removal_leaves_no_drop_in", removal_leaves_no_drop_in),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    for (name, f) in cases {
        if !filter.is_empty() && !filter.iter().any(|w| name.contains(w.as_str())) {
            continue;
        }
        println!("test {name} ...");
        match std::panic::catch_unwind(f) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        println!("systemd_grant: failed: {failed:?}");
        std::process::exit(1);
    }
    println!("systemd_grant: all passed");
}

// ------------------------------------------------------------------------------- the host

fn inside_systemd_host() -> bool {
    Path::new("/run/systemd/system").is_dir()
        && std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
}

/// Outside the systemd host: boot it (unless it runs), run this binary inside, stop it again.
fn run_in_host() -> i32 {
    let host = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/systemd/host.sh");
    assert!(
        host.is_file(),
        "{}: the systemd test host is missing",
        host.display()
    );
    let running = Command::new(&host)
        .arg("status")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !running {
        let st = Command::new(&host).arg("boot").status().unwrap();
        assert!(st.success(), "host.sh boot failed");
    }
    let exe = std::env::current_exe().unwrap();
    let st = Command::new(&host)
        .arg("exec")
        .arg(exe)
        .args(std::env::args().skip(1))
        .status()
        .unwrap();
    if !running {
        let _ = Command::new(&host).arg("stop").status();
    }
    st.code().unwrap_or(1)
}

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn daemon_reload() {
    sh("systemctl daemon-reload");
}

/// The unit's `DeviceAllow=` entries once `done` holds for them, or after 6 s (nvhook's child
/// records the nodes beside the container's start, within 5 s).
fn device_allow_when(unit: &str, done: impl Fn(&BTreeSet<String>) -> bool) -> BTreeSet<String> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(6);
    loop {
        let a = device_allow(unit);
        if done(&a) || std::time::Instant::now() > until {
            return a;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The unit's `DeviceAllow=` entries.
fn device_allow(unit: &str) -> BTreeSet<String> {
    sh(&format!("systemctl show -p DeviceAllow {unit}"))
        .lines()
        .filter_map(|l| l.strip_prefix("DeviceAllow="))
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `probe open` output: path -> "ok" / errno name.
fn probed(out: &str) -> (String, String) {
    let get = |p: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{p}: ")))
            .unwrap_or("missing")
            .trim()
            .to_owned()
    };
    (get(MINE), get(OTHER))
}

/// The nvhook config with the systemd step on or off, and a hooks dir registering nvhook with it.
fn config_and_hooks(on: bool) -> (PathBuf, PathBuf) {
    let fx = fixtures();
    let tag = if on { "on" } else { "off" };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("systemd-grant-{tag}"));
    std::fs::create_dir_all(dir.join("hooks.d")).unwrap();
    let cfg = dir.join("config.toml");
    let mut text = std::fs::read_to_string(&fx.config).unwrap();
    text.push_str(&format!("systemd-device-grants = {on}\n"));
    std::fs::write(&cfg, text).unwrap();
    let hook = json!({
        "version": "1.0.0",
        "hook": {
            "path": nvhook(),
            "args": ["nvhook", "--config", cfg, "prestart"],
            "env": ["NVHOOK_LOG=debug", format!("NVHOOK_LOG_FILE={}", dir.join("nvhook.log").display())],
        },
        "when": {"always": true},
        "stages": ["prestart"],
    });
    std::fs::write(
        dir.join("hooks.d/nvhook.json"),
        serde_json::to_vec(&hook).unwrap(),
    )
    .unwrap();
    (cfg, dir.join("hooks.d"))
}

// ------------------------------------------------------------------------------- podman

/// podman with the systemd cgroup manager and runc (the combination where systemd confines the
/// scope; with crun, podman's default, it does not: see `oci_daemon_reload`), its own storage,
/// nvhook from `hooks`.
fn podman(hooks: &Path) -> Command {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("systemd-grant-podman");
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(base.join("root"))
        .args(["--runroot", "/run/nvhook-tests/systemd-grant"])
        .args(["--cgroup-manager", "systemd", "--events-backend", "file"])
        .args(["--runtime", "runc"])
        .arg("--hooks-dir")
        .arg(hooks);
    c
}

/// A running podman container (removed on drop).
struct Ctr {
    name: String,
    unit: String,
    hooks: PathBuf,
}

impl Ctr {
    fn start(name: &str, on: bool) -> Result<Ctr, String> {
        let (_, hooks) = config_and_hooks(on);
        let _ = podman(&hooks).args(["rm", "-f", name]).output();
        let o = podman(&hooks)
            .args(["run", "-d", "--name", name, "--network", "none"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .args(["-e", "NVIDIA_VISIBLE_DEVICES=0", "--rootfs"])
            .arg(fixtures().dir.join("rootfs-debian"))
            .args(["sleep", "1000"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).into_owned());
        }
        let id = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        Ok(Ctr {
            name: name.to_owned(),
            unit: format!("libpod-{id}.scope"),
            hooks,
        })
    }

    fn exec(&self, cmd: &str) -> String {
        let o = podman(&self.hooks)
            .args(["exec", &self.name, "sh", "-c", cmd])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The container's /dev/nvidia* nodes as DeviceAllow entries (`/dev/char/M:m rwm`).
    fn injected_nodes(&self) -> BTreeSet<String> {
        self.exec("for f in /dev/nvidia*; do [ -c \"$f\" ] && stat -c '%t %T' \"$f\"; done")
            .lines()
            .filter_map(|l| {
                let (a, b) = l.split_once(' ')?;
                let (ma, mi) = (
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                );
                Some(format!("/dev/char/{ma}:{mi} rwm"))
            })
            .collect()
    }
}

impl Drop for Ctr {
    fn drop(&mut self) {
        let _ = podman(&self.hooks)
            .args(["rm", "-f", "-t", "0", &self.name])
            .output();
    }
}

/// The case of the issue: podman (hooks.d, systemd cgroup manager), NVIDIA_VISIBLE_DEVICES=0,
/// daemon-reload, open again.
fn podman_daemon_reload() {
    let off = Ctr::start("nvhook-sg-off", false).expect("podman run, systemd step off");
    let on = Ctr::start("nvhook-sg-on", true).expect("podman run, systemd step on");
    for c in [&on, &off] {
        assert_eq!(
            probed(&c.exec(PROBE)),
            ("ok".into(), "EPERM".into()),
            "{}: before daemon-reload",
            c.name
        );
    }
    // The unit lists exactly the granted nodes more than the runtime's own list (the off
    // container's unit, which nvhook did not touch).
    let baseline = device_allow(&off.unit);
    let nodes = on.injected_nodes();
    assert!(
        nodes.len() >= 2 && nodes.contains("/dev/char/1:11 rwm"),
        "{nodes:?}"
    );
    let want: BTreeSet<String> = baseline.union(&nodes).cloned().collect();
    let got = device_allow_when(&on.unit, |a| *a == want);
    assert_eq!(got, want, "DeviceAllow of {}", on.unit);
    assert!(
        !got.iter()
            .any(|e| e.contains("195") || e.contains("char-nvidia"))
    );
    println!("  {}: DeviceAllow added by nvhook: {nodes:?}", on.unit);

    daemon_reload();
    let after_on = probed(&on.exec(PROBE));
    let after_off = probed(&off.exec(PROBE));
    println!(
        "  after daemon-reload, systemd step on:  {MINE} {}, {OTHER} {}",
        after_on.0, after_on.1
    );
    println!(
        "  after daemon-reload, systemd step off: {MINE} {}, {OTHER} {}",
        after_off.0, after_off.1
    );
    assert_eq!(
        after_on,
        ("ok".into(), "EPERM".into()),
        "step on keeps the GPU, and only it"
    );
    assert_eq!(
        after_off,
        ("EPERM".into(), "EPERM".into()),
        "step off: daemon-reload takes the GPU away (the bug)"
    );
}

// ------------------------------------------------------------------------------- runc, crun

/// `runtime --systemd-cgroup run` of a bundle that probes, waits for /go in its rootfs (the test
/// runs daemon-reload meanwhile), probes again: (before, after).
fn oci_run(runtime: &str, on: bool) -> ((String, String), (String, String), String) {
    let (cfg, _) = config_and_hooks(on);
    let mut s = Spec::new(
        &["NVIDIA_VISIBLE_DEVICES=0"],
        &format!(
            "{PROBE}; echo READY; while [ ! -e /go ]; do sleep 0.05; done; {PROBE}; echo DONE"
        ),
    );
    s.config = Some(cfg);
    let b = bundle(&s);
    let path = b.dir.join("config.json");
    let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    c["linux"]["cgroupsPath"] = json!(format!("system.slice:nvhook-test:{}", b.id));
    std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    let unit = format!("nvhook-test-{}.scope", b.id);
    let mut child = Command::new(runtime)
        .args(["--systemd-cgroup", "run", "--bundle"])
        .arg(&b.dir)
        .arg(&b.id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    let mut line = String::new();
    while out.read_line(&mut line).unwrap_or(0) > 0 {
        if line.trim() == "READY" {
            break;
        }
        first.push_str(&line);
        line.clear();
    }
    let allow = device_allow_when(&unit, |a| a.iter().any(|e| e.starts_with("/dev/char/1:11")));
    daemon_reload();
    std::fs::write(b.rootfs().join("go"), "").unwrap();
    let mut second = String::new();
    for l in out.lines() {
        second.push_str(&l.unwrap());
        second.push('\n');
    }
    let o = child.wait_with_output().unwrap();
    let _ = Command::new(runtime)
        .args(["--systemd-cgroup", "delete", "-f", &b.id])
        .output();
    assert!(
        o.status.success() && second.contains("DONE"),
        "{runtime}: {first}{second}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let allowed = allow
        .iter()
        .filter(|e| e.starts_with("/dev/char/1:11"))
        .count();
    (probed(&first), probed(&second), format!("{allowed}"))
}

/// runc: systemd confines the scope (`DevicePolicy=strict`), daemon-reload re-attaches its own
/// program, so the step is what keeps the GPU. crun 1.8 leaves the scope unconfined (its program
/// is on a `container/` sub-cgroup): daemon-reload changes nothing there, and nvhook must record
/// nothing (a `DeviceAllow=` would start confining the scope to the GPU nodes alone).
fn oci_daemon_reload(runtime: &str) {
    require_tool(runtime, runtime);
    let confined = runtime == "runc";
    let (before_on, after_on, listed_on) = oci_run(runtime, true);
    let (before_off, after_off, listed_off) = oci_run(runtime, false);
    println!(
        "  {runtime} --systemd-cgroup, step on:  before {before_on:?}, after daemon-reload {after_on:?}, DeviceAllow=/dev/char/1:11 listed {listed_on}"
    );
    println!(
        "  {runtime} --systemd-cgroup, step off: before {before_off:?}, after daemon-reload {after_off:?}, DeviceAllow=/dev/char/1:11 listed {listed_off}"
    );
    let granted = ("ok".to_owned(), "EPERM".to_owned());
    assert_eq!(before_on, granted);
    assert_eq!(before_off, granted);
    assert_eq!(after_on, granted, "{runtime}: step on keeps the GPU");
    assert_eq!(listed_off, "0", "{runtime}: no DeviceAllow, step off");
    if confined {
        assert_eq!(
            listed_on, "1",
            "{runtime}: DeviceAllow=/dev/char/1:11 once, step on"
        );
        assert_eq!(
            after_off,
            ("EPERM".into(), "EPERM".into()),
            "{runtime}: step off loses it"
        );
    } else {
        assert_eq!(
            listed_on, "0",
            "{runtime}: an unconfined scope gets no DeviceAllow"
        );
        assert_eq!(after_off, granted, "{runtime}: nothing to lose");
    }
}

// ------------------------------------------------------------------------------- load, cleanup

/// 16 containers start while daemon-reload runs in a loop (five a second, as a package upgrade
/// that reloads after each of its packages): every one gets its GPU and keeps it.
///
/// Not back to back: systemd then serves the reloading client (systemctl, on systemd's private
/// socket) before the system bus, and a SetUnitProperties waited 25-37 s for its turn in that
/// measurement (docs/systemd.md): past nvhook's 5 s bound, so those containers started with their
/// direct grant and the warning, not durably.
fn reload_storm() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let reloads = std::thread::spawn(move || {
        let mut n = 0;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            daemon_reload();
            n += 1;
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        n
    });
    let starts: Vec<_> = (0..16)
        .map(|i| std::thread::spawn(move || Ctr::start(&format!("nvhook-sg-storm{i}"), true)))
        .collect();
    let ctrs: Vec<Ctr> = starts
        .into_iter()
        .map(|t| {
            t.join()
                .unwrap()
                .expect("podman run during the reload storm")
        })
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = reloads.join().unwrap();
    // every container's unit lists its GPU (the children record it beside the starts), then one
    // more reload
    for c in &ctrs {
        device_allow_when(&c.unit, |a| a.contains("/dev/char/1:11 rwm"));
    }
    daemon_reload();
    let mut bad = Vec::new();
    for c in &ctrs {
        let p = probed(&c.exec(PROBE));
        if p != ("ok".into(), "EPERM".into()) {
            bad.push(format!("{}: {p:?}", c.name));
        }
    }
    println!("  16 containers started during {n} daemon-reloads; lost their GPU: {bad:?}");
    assert!(n >= 2, "the storm must overlap the starts ({n} reloads)");
    assert!(bad.is_empty(), "{bad:?}");
}

/// Runtime properties die with the unit: after `podman rm`, no drop-in of it is left in
/// /run/systemd/transient or /run/systemd/system.control.
fn removal_leaves_no_drop_in() {
    let leftovers = |unit: &str| -> Vec<String> {
        ["/run/systemd/transient", "/run/systemd/system.control"]
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.path().display().to_string())
            .filter(|p| p.contains(unit))
            .collect()
    };
    let c = Ctr::start("nvhook-sg-rm", true).expect("podman run");
    let unit = c.unit.clone();
    let before = leftovers(&unit);
    assert!(
        before.iter().any(|p| p.ends_with(".d")),
        "the unit's drop-in directory while it runs: {before:?}"
    );
    drop(c);
    // podman rm returns when the container is gone; systemd removes the stopped scope's files
    // when it garbage-collects the unit, right after
    let mut left = leftovers(&unit);
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        left = leftovers(&unit);
    }
    println!("  {unit}: while running {before:?}; after removal {left:?}");
    assert!(left.is_empty(), "left behind: {left:?}");
}
