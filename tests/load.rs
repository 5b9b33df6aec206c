//! Load and faults (issue 6): 64 containers started at once under runc and under podman, the
//! hook SIGKILLed at random points of its run, a container pid that is gone or belongs to the
//! wrong process, and 1,000 sequential runs whose memory and descriptors must stay flat.
//! (The hook run twice and a broken driver tree are in faults.rs.)
//!
//! Every test holds `serial()` for its whole run: it compares the host's mount table before and
//! after, and must not see the other test binaries' single containers as its own.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;
use serde_json::{Value, json};

// ----------------------------------------------------------------------------- helpers

/// A runc state directory of this test's own, so that `runc list` shows only its containers.
fn runc_root(name: &str) -> PathBuf {
    let p = PathBuf::from(format!(
        "/run/nvhook-tests/load-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Container ids in runc's state directory `root`.
fn runc_list(root: &Path) -> Vec<String> {
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
fn runc_run(root: &Path, b: &Bundle) -> Run {
    run_cmd(
        Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["run", "--bundle"])
            .arg(&b.dir)
            .arg(&b.id),
    )
}

fn run_cmd(c: &mut Command) -> Run {
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
fn our_mounts(skip_prefix: Option<&str>) -> Vec<String> {
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
fn set_hook(b: &Bundle, path: &Path, args: Vec<String>, env: Vec<String>) {
    let p = b.dir.join("config.json");
    let mut c: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    c["hooks"]["prestart"] = json!([{ "path": path, "args": args, "env": env }]);
    std::fs::write(&p, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
}

/// Every path under `dir` (symlinks not followed) with its type and size: a cheap fingerprint of
/// a tree, to show that nothing was created, removed or resized there.
fn tree(dir: &Path) -> BTreeMap<String, String> {
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
fn assert_no_cgroup_left(id: &str) {
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
fn host_ldcache() -> Vec<u8> {
    std::fs::read("/etc/ld.so.cache").unwrap_or_default()
}

/// A small deterministic generator (xorshift64*), seeded from the clock unless
/// NVHOOK_LOAD_SEED is set; the seed is printed so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("NVHOOK_LOAD_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        eprintln!("load: random seed {seed} (set NVHOOK_LOAD_SEED to replay)");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

// ----------------------------------------------------------------------------- 64 in parallel

/// What each parallel container reports: its GPU nodes, whether libcuda loads and how many GPUs
/// it opens, and which GPU it may open per the device cgroup (the image carries both nodes).
const WHO_AM_I: &str = "\
for n in nvidia0 nvidia1; do [ -e /dev/$n ] && echo node:$n; done; \
probe cuda; \
probe open /probe-nodes/gpu-fuse /probe-nodes/gpu-kmsg; \
for n in nvidia0 nvidia1; do [ -e /dev/$n ] && probe open /dev/$n; done; true";

/// The three kinds of container started side by side: GPU index 0, GPU index 1, no GPU.
const KINDS: [Option<&str>; 3] = [Some("0"), Some("1"), None];

/// Check one container's report against what it asked for.
fn check_isolation(kind: Option<&str>, r: &Run, who: &str) {
    let out = &r.stdout;
    let nodes: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("node:"))
        .collect();
    let ctx = || {
        format!(
            "{who} (NVIDIA_VISIBLE_DEVICES={kind:?}):\n{out}\n{}",
            r.stderr
        )
    };
    assert!(r.ok, "{} failed", ctx());
    // index 0 is the GPU on bus 3b, minor 1: /dev/nvidia1, the kmsg stand-in (1:11);
    // index 1 is minor 0: /dev/nvidia0, the fuse stand-in (10:229)
    match kind {
        Some("0") => {
            assert_eq!(nodes, ["nvidia1"], "{}", ctx());
            assert!(out.contains("cuInit=0 devices=1"), "{}", ctx());
            assert!(out.contains("/dev/nvidia1: ok"), "{}", ctx());
            assert!(out.contains("/probe-nodes/gpu-kmsg: ok"), "{}", ctx());
            assert!(out.contains("/probe-nodes/gpu-fuse: EPERM"), "{}", ctx());
        }
        Some(_) => {
            assert_eq!(nodes, ["nvidia0"], "{}", ctx());
            assert!(out.contains("cuInit=0 devices=1"), "{}", ctx());
            assert!(out.contains("/dev/nvidia0: ok"), "{}", ctx());
            assert!(out.contains("/probe-nodes/gpu-fuse: ok"), "{}", ctx());
            assert!(out.contains("/probe-nodes/gpu-kmsg: EPERM"), "{}", ctx());
        }
        None => {
            assert!(nodes.is_empty(), "{}", ctx());
            assert!(out.contains("cuda: dlopen failed"), "{}", ctx());
            assert!(out.contains("/probe-nodes/gpu-fuse: EPERM"), "{}", ctx());
            assert!(out.contains("/probe-nodes/gpu-kmsg: EPERM"), "{}", ctx());
        }
    }
}

fn kind_env(kind: Option<&str>) -> Vec<String> {
    kind.map(|k| vec![format!("NVIDIA_VISIBLE_DEVICES={k}")])
        .unwrap_or_default()
}

const PARALLEL: usize = 64;

#[test]
fn runc_64_containers_at_once_each_sees_only_its_own_gpu() {
    let _g = serial();
    require_tool("runc", "runc");
    prepare_host();
    let root = runc_root("parallel");
    let n = env_count("NVHOOK_LOAD_PARALLEL", PARALLEL);
    let bundles: Vec<(Bundle, Option<&str>)> = (0..n)
        .map(|i| {
            let kind = KINDS[i % KINDS.len()];
            let env = kind_env(kind);
            let env: Vec<&str> = env.iter().map(String::as_str).collect();
            (bundle(&Spec::new(&env, WHO_AM_I)), kind)
        })
        .collect();
    let before = our_mounts(None);
    let t = Instant::now();
    let runs: Vec<Run> = std::thread::scope(|s| {
        let hs: Vec<_> = bundles
            .iter()
            .map(|(b, _)| s.spawn(|| runc_run(&root, b)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = t.elapsed();
    let left = runc_list(&root);
    for (b, _) in &bundles {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["delete", "-f", &b.id])
            .output();
    }
    for ((b, kind), r) in bundles.iter().zip(&runs) {
        check_isolation(*kind, r, &b.id);
    }
    assert!(left.is_empty(), "containers left in runc's state: {left:?}");
    for (b, _) in &bundles {
        assert_no_cgroup_left(&b.id);
    }
    assert_eq!(before, our_mounts(None), "the host's mount table changed");
    eprintln!(
        "load: {n} runc containers with nvhook started at once: all correct in {:.1}s",
        took.as_secs_f64()
    );
}

#[test]
fn podman_64_containers_at_once_each_sees_only_its_own_gpu() {
    let _g = serial();
    let p = podman();
    let n = env_count("NVHOOK_LOAD_PARALLEL", PARALLEL);
    let store = {
        let o = p
            .cmd()
            .args(["info", "--format", "{{.Store.GraphRoot}}"])
            .output()
            .unwrap();
        let graph = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        assert!(!graph.is_empty(), "podman info: no graph root");
        Path::new(&graph)
            .parent()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let before = our_mounts(Some(&store));
    let names: Vec<String> = (0..n)
        .map(|i| format!("nvhook-load-{}-{i}", std::process::id()))
        .collect();
    let t = Instant::now();
    let runs: Vec<Run> = std::thread::scope(|s| {
        let hs: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                s.spawn(move || {
                    let env = kind_env(KINDS[i % KINDS.len()]);
                    let env: Vec<&str> = env.iter().map(String::as_str).collect();
                    p.run(DEBIAN_IMAGE, &env, &["--name", name], WHO_AM_I)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = t.elapsed();
    for (i, r) in runs.iter().enumerate() {
        check_isolation(KINDS[i % KINDS.len()], r, &names[i]);
    }
    let o = p
        .cmd()
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| names.iter().any(|n| n == l))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "containers left in podman: {left:?}");
    assert_eq!(
        before,
        our_mounts(Some(&store)),
        "the host's mount table changed"
    );
    eprintln!(
        "load: {n} podman containers with nvhook started at once: all correct in {:.1}s",
        took.as_secs_f64()
    );
}

// ----------------------------------------------------------------------------- SIGKILL

/// Where a kill landed, judged from the rootfs: nvhook's first visible change is a mount point
/// file for a driver library; its last, the merged linker cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Landed {
    /// killed before nvhook changed the rootfs (exec, parsing, discovery, setns, mounts begun)
    BeforeChanges,
    /// killed after it created mount points, before or while it wrote the linker cache
    MidApply,
    /// killed after the linker cache was written (the device cgroup grant, or the exit)
    AfterCache,
    /// the hook finished before the kill
    Completed,
}

#[test]
fn sigkill_at_random_points_leaves_the_host_untouched() {
    let _g = serial();
    require_tool("runc", "runc");
    prepare_host();
    let fx = fixtures();
    let wrap = fx.dir.join("hookwrap");
    let root = runc_root("kill");
    let report = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("load-kill-report-{}", std::process::id()));
    let marker = format!("usr/lib/x86_64-linux-gnu/libcuda.so.{}", fx.version);
    let hook_args = |mode: &[String]| -> Vec<String> {
        let mut a = vec!["hookwrap".to_owned()];
        a.extend(mode.iter().cloned());
        a.extend([
            nvhook().to_owned(),
            "--config".into(),
            fx.config.to_string_lossy().into_owned(),
            "prestart".into(),
        ]);
        a
    };
    let spec = Spec::new(&["NVIDIA_VISIBLE_DEVICES=0"], "echo started");

    // How long the hook takes here, under runc: the kills are spread over [0, 1.5 x that].
    let mut took = Vec::new();
    for _ in 0..5 {
        let _ = std::fs::remove_file(&report);
        let b = bundle(&spec);
        set_hook(
            &b,
            &wrap,
            hook_args(&["rusage".into(), report.to_string_lossy().into_owned()]),
            Vec::new(),
        );
        let r = runc_run(&root, &b).expect_ok("runc with the hook under hookwrap");
        assert!(r.has("started"));
        let line = std::fs::read_to_string(&report).unwrap();
        let us: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
        took.push(us);
    }
    took.sort();
    let hook_us = took[took.len() / 2];
    let max_delay = hook_us * 3 / 2;

    let n = env_count("NVHOOK_LOAD_KILLS", 120);
    let mut rng = Rng::new();
    let host_cache = host_ldcache();
    let fixtures_before = tree(&fx.dir);
    let mut landed: BTreeMap<Landed, usize> = BTreeMap::new();
    let t = Instant::now();
    for i in 0..n {
        let delay = rng.below(max_delay + 1);
        let b = bundle(&spec);
        let _ = std::fs::remove_file(&report);
        set_hook(
            &b,
            &wrap,
            hook_args(&[
                "kill".into(),
                delay.to_string(),
                report.to_string_lossy().into_owned(),
            ]),
            Vec::new(),
        );
        let image_cache = std::fs::read(b.rootfs().join("etc/ld.so.cache")).unwrap();
        let bundle_before: Vec<String> = tree(&b.dir)
            .into_keys()
            .filter(|k| !k.starts_with("rootfs/"))
            .collect();
        let mounts_before = our_mounts(None);

        let r = runc_run(&root, &b);

        let what = format!("kill {i} at {delay} us:\n{}\n{}", r.stdout, r.stderr);
        let left = runc_list(&root);
        if !left.is_empty() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "-f", &b.id])
                .output();
        }
        assert!(left.is_empty(), "{what}\nrunc left {left:?} behind");
        assert_no_cgroup_left(&b.id);
        assert_eq!(
            mounts_before,
            our_mounts(None),
            "{what}: host mounts changed"
        );
        let bundle_after: Vec<String> = tree(&b.dir)
            .into_keys()
            .filter(|k| !k.starts_with("rootfs/"))
            .collect();
        assert_eq!(
            bundle_before, bundle_after,
            "{what}: files beside the rootfs"
        );
        let outcome = std::fs::read_to_string(&report).unwrap_or_default();
        let killed = match outcome.trim() {
            "killed" => true,
            "exited 0" => false,
            other => panic!("{what}: hookwrap reported {other:?}"),
        };
        // the runtime reports a killed hook as a failure and never starts the container; a hook
        // that finished gives a working one
        assert_eq!(r.ok, !killed, "{what}");
        assert_eq!(r.has("started"), !killed, "{what}");
        let cache_changed =
            std::fs::read(b.rootfs().join("etc/ld.so.cache")).unwrap() != image_cache;
        let l = match (killed, b.rootfs().join(&marker).exists(), cache_changed) {
            (false, _, _) => Landed::Completed,
            (true, false, false) => Landed::BeforeChanges,
            (true, _, false) => Landed::MidApply,
            (true, _, true) => Landed::AfterCache,
        };
        *landed.entry(l).or_default() += 1;
    }
    assert_eq!(host_cache, host_ldcache(), "the host's ld.so.cache changed");
    assert_eq!(
        fixtures_before,
        tree(&fx.dir),
        "the driver tree or fixtures changed"
    );
    eprintln!(
        "load: {n} SIGKILLs over [0, {max_delay}] us (hook alone: {hook_us} us median of 5) in {:.1}s: {landed:?}",
        t.elapsed().as_secs_f64()
    );
    // the delays must have covered the run: some kills early, some mid-apply, some too late
    assert!(
        landed.contains_key(&Landed::BeforeChanges) && landed.contains_key(&Landed::Completed),
        "the kills did not spread over the hook's run: {landed:?}"
    );
}

/// NVML can hang on a sick GPU; nvhook asks it from a forked child with a timeout. When the hook
/// itself is killed meanwhile (a runtime's hook timeout, an OOM kill), that child must die with
/// it, not linger on the host with the driver open.
#[test]
fn a_killed_hook_leaves_no_nvml_child_behind() {
    let _g = serial();
    require_tool("runc", "runc");
    prepare_host();
    let fx = fixtures();
    let root = runc_root("nvml");
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let pidfile = tmp.join(format!("load-nvml-pid-{}", std::process::id()));
    let report = tmp.join(format!("load-nvml-report-{}", std::process::id()));
    let _ = std::fs::remove_file(&pidfile);
    let _ = std::fs::remove_file(&report);
    // a MIG device: only NVML knows the MIG layout, so the hook must ask it
    let b = bundle(&Spec::new(
        &["NVIDIA_VISIBLE_DEVICES=MIG-aaaaaaaa-1111-2222-3333-444444444444"],
        "echo started",
    ));
    set_hook(
        &b,
        &fx.dir.join("hookwrap"),
        vec![
            "hookwrap".into(),
            "killwhen".into(),
            pidfile.to_string_lossy().into_owned(),
            report.to_string_lossy().into_owned(),
            nvhook().into(),
            "--config".into(),
            fx.config.to_string_lossy().into_owned(),
            "prestart".into(),
        ],
        vec![format!("NVML_FAKE_HANG={}", pidfile.display())],
    );
    let mounts = our_mounts(None);
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z ") && !s.contains(") X "))
    };
    let pause = || std::thread::sleep(std::time::Duration::from_millis(1));
    // runc waits for its hook's output pipes to close, so a lingering child blocks it: the run
    // goes on a thread while this one watches, and kills a lingering child to free runc.
    let (r, outcome, child, lingered) = std::thread::scope(|s| {
        let run = s.spawn(|| runc_run(&root, &b));
        let mut outcome = String::new();
        for _ in 0..120_000 {
            outcome = std::fs::read_to_string(&report).unwrap_or_default();
            if !outcome.is_empty() || run.is_finished() {
                break;
            }
            pause();
        }
        let child: Option<i32> = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse().ok());
        let mut lingered = false;
        if let Some(c) = child {
            // the kernel sends the parent-death signal at once; allow a loaded machine a while
            for _ in 0..10_000 {
                if !alive(c) {
                    break;
                }
                pause();
            }
            lingered = alive(c);
            if lingered {
                // the shell's builtin kill: procps may not be installed
                let _ = Command::new("sh")
                    .arg("-c")
                    .arg(format!("kill -KILL {c}"))
                    .status();
            }
        }
        (run.join().unwrap(), outcome, child, lingered)
    });
    let _ = std::fs::remove_file(&pidfile);
    let _ = std::fs::remove_file(&report);
    let child = child.unwrap_or_else(|| panic!("NVML was never reached: {outcome}\n{}", r.stderr));
    let left = runc_list(&root);
    if !left.is_empty() {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["delete", "-f", &b.id])
            .output();
    }
    assert_eq!(outcome.trim(), "killed", "{}", r.stderr);
    assert!(!r.ok && !r.has("started"), "{}", r.stdout);
    assert!(!lingered, "the NVML child {child} outlived the killed hook");
    assert!(left.is_empty(), "runc left {left:?} behind");
    assert_no_cgroup_left(&b.id);
    assert_eq!(mounts, our_mounts(None), "the host's mounts changed");
}

// ----------------------------------------------------------------------------- the wrong pid

fn state_json(id: &str, pid: u32, b: &Bundle) -> String {
    json!({"ociVersion": "1.0.2", "id": id, "status": "creating", "pid": pid, "bundle": b.dir})
        .to_string()
}

/// `nvhook prestart` with `state` on stdin and a runtime-like environment.
fn prestart(state: &str, config: &Path, debug: bool) -> Run {
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

fn mnt_ns(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A process in a mount namespace of its own (a copy of the host's, private: nothing mounted in it
/// reaches the host), as a container's is at prestart: the rootfs still reachable at its host
/// path. Returns once the namespace exists.
fn process_in_own_mount_ns() -> std::process::Child {
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

/// The pid in the state is gone (exited and reaped, or a zombie not yet reaped), or is a process
/// in the host's own mount namespace (a stale state, or a container without a mount namespace):
/// each is a clear error before anything is touched. A live process in another, unrelated mount
/// namespace cannot be told from a container; what nvhook does there stays in that namespace.
#[test]
fn a_gone_or_wrong_pid_is_refused_and_touches_nothing() {
    let _g = serial();
    let fx = fixtures();
    let b = bundle(&Spec::new(&["NVIDIA_VISIBLE_DEVICES=0"], "true"));
    let rootfs_before = tree(&b.rootfs());
    let own_devices = std::fs::read_to_string("/sys/fs/cgroup/devices/devices.list").ok();
    let host_cache = host_ldcache();
    let mounts = our_mounts(None);

    let check_untouched = |what: &str| {
        assert_eq!(
            rootfs_before,
            tree(&b.rootfs()),
            "{what}: the rootfs changed"
        );
        assert_eq!(
            mounts,
            our_mounts(None),
            "{what}: the host's mounts changed"
        );
        assert_eq!(host_cache, host_ldcache(), "{what}: host ld.so.cache");
        assert_eq!(
            own_devices,
            std::fs::read_to_string("/sys/fs/cgroup/devices/devices.list").ok(),
            "{what}: the root device cgroup changed"
        );
    };

    // exited and reaped
    let mut c = Command::new("true").spawn().unwrap();
    let gone = c.id();
    c.wait().unwrap();
    let r = prestart(&state_json("gone", gone, &b), &fx.config, false);
    assert!(!r.ok, "a reaped pid must fail");
    assert!(
        r.stderr.contains(&format!("process {gone} is gone")),
        "{}",
        r.stderr
    );
    check_untouched("reaped pid");

    // a zombie: exited, not reaped (what a runtime holds if its container died during the hook)
    let mut z = Command::new("true").spawn().unwrap();
    let zombie = z.id();
    let stat = || std::fs::read_to_string(format!("/proc/{zombie}/stat")).unwrap_or_default();
    for _ in 0..5000 {
        if stat().contains(") Z ") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(stat().contains(") Z "), "no zombie: {}", stat());
    let r = prestart(&state_json("zombie", zombie, &b), &fx.config, false);
    z.wait().unwrap();
    assert!(!r.ok, "a zombie's pid must fail");
    assert!(
        r.stderr.contains(&format!("process {zombie} is gone")),
        "{}",
        r.stderr
    );
    check_untouched("zombie pid");

    // a live process in the host's mount namespace: applying there would mount on the host
    let mut host = Command::new("sleep").arg("600").spawn().unwrap();
    let r = prestart(&state_json("host", host.id(), &b), &fx.config, false);
    let _ = host.kill();
    let _ = host.wait();
    assert!(!r.ok, "a pid in the host's mount namespace must be refused");
    assert!(
        r.stderr.contains("nvhook's own mount namespace")
            && r.stderr.contains(&format!("process {}", host.id())),
        "{}",
        r.stderr
    );
    check_untouched("host pid");

    // nvhook's own pid namespace's init (pid 1) is in the host's mount namespace too
    if mnt_ns(1) == mnt_ns(std::process::id()) {
        let r = prestart(&state_json("init", 1, &b), &fx.config, false);
        assert!(
            !r.ok && r.stderr.contains("own mount namespace"),
            "{}",
            r.stderr
        );
        check_untouched("pid 1");
    }

    // an unrelated process with a mount namespace of its own, in the host's device cgroup:
    // nvhook applies there (it cannot tell it from a container), and nothing reaches the host
    let mut other = process_in_own_mount_ns();
    let r = prestart(&state_json("other", other.id(), &b), &fx.config, false);
    let _ = other.kill();
    let _ = other.wait();
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(mounts, our_mounts(None), "the host's mounts changed");
    assert_eq!(host_cache, host_ldcache());
    assert_eq!(
        own_devices,
        std::fs::read_to_string("/sys/fs/cgroup/devices/devices.list").ok(),
        "the root device cgroup changed"
    );
}

// ----------------------------------------------------------------------------- 1,000 runs

/// A fresh device cgroup (v1) or cgroup (v2) that denies everything, for a stand-in container.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(name: &str) -> TestCgroup {
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
    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
    fn devices_list(&self) -> String {
        std::fs::read_to_string(self.0.join("devices.list")).unwrap_or_default()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// 1,000 runs of `nvhook prestart`, each for a fresh stand-in container (a process in a new
/// private mount namespace, in a deny-all device cgroup), all on one bundle: every run enters the
/// namespace, bind-mounts the devices and libraries, checks the linker cache and grants the
/// devices. Peak RSS (wait4) and the descriptors open at the hook's end must not grow.
#[test]
fn a_thousand_runs_keep_memory_and_descriptors_flat() {
    let _g = serial();
    let fx = fixtures();
    let wrap = fx.dir.join("hookwrap");
    let n = env_count("NVHOOK_LOAD_RUNS", 1000);
    let b = bundle(&Spec::new(&["NVIDIA_VISIBLE_DEVICES=all"], "true"));
    let cg = TestCgroup::new("nvhook-load");
    let report = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("load-rusage-{}", std::process::id()));
    let _ = std::fs::remove_file(&report);
    let mounts = our_mounts(None);
    let host_cache = host_ldcache();
    let mut fds = Vec::new();
    let mut lists = Vec::new();
    let t = Instant::now();
    for i in 0..n {
        let mut ctr = process_in_own_mount_ns();
        cg.add(ctr.id());
        let mut c = Command::new(&wrap);
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("NVHOOK_LOG", "debug")
            .arg("rusage")
            .arg(&report)
            .arg(nvhook())
            .arg("--config")
            .arg(&fx.config)
            .arg("prestart")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(state_json(&format!("load-{i}"), ctr.id(), &b).as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        // the mounts are really there, in the stand-in's namespace
        let in_ns = std::fs::read_to_string(format!("/proc/{}/mountinfo", ctr.id())).unwrap();
        let _ = ctr.kill();
        let _ = ctr.wait();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "run {i}: {err}");
        assert!(
            in_ns.contains(&format!(
                "/rootfs/usr/lib/x86_64-linux-gnu/libcuda.so.{}",
                fx.version
            )),
            "run {i}: libcuda is not mounted in the container's namespace"
        );
        assert!(
            err.contains("applied") || err.contains("granted"),
            "run {i} did no work: {err}"
        );
        let fd = err
            .lines()
            .find_map(|l| l.split("open file descriptors at the end: ").nth(1))
            .unwrap_or_else(|| panic!("run {i}: no descriptor count in the debug log: {err}"))
            .trim()
            .to_owned();
        fds.push(fd);
        if i == 0 || i + 1 == n {
            lists.push(cg.devices_list());
        }
    }
    let took = t.elapsed();
    let rss: Vec<u64> = std::fs::read_to_string(&report)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
        .collect();
    assert_eq!(rss.len(), n, "one rusage line per run");
    let _ = std::fs::remove_file(&report);
    let (min, max) = (*rss.iter().min().unwrap(), *rss.iter().max().unwrap());
    let tenth = (n / 10).max(1);
    let first = *rss[..tenth].iter().max().unwrap();
    let last = *rss[n - tenth..].iter().max().unwrap();
    eprintln!(
        "load: {n} runs of nvhook prestart in {:.1}s: peak RSS {min}..{max} KiB (first tenth max {first}, last tenth max {last}); fds at end {:?}",
        took.as_secs_f64(),
        fds.iter().collect::<std::collections::BTreeSet<_>>()
    );
    assert!(
        fds.iter().all(|f| *f == fds[0]),
        "descriptors open at the end differ between runs: {:?}",
        fds.iter().collect::<std::collections::BTreeSet<_>>()
    );
    // one-shot processes: a leak would show as growth with the host state the runs leave behind
    // (mount points, cache entries, cgroup rules); page-granular noise stays well under 1 MiB
    assert!(
        max - min <= 1024,
        "peak RSS spread {min}..{max} KiB over {n} runs"
    );
    assert!(
        last <= first + 256,
        "peak RSS grew: first tenth max {first} KiB, last tenth max {last} KiB"
    );
    assert_eq!(
        lists.first(),
        lists.last(),
        "the device cgroup's rules grew from run to run"
    );
    assert!(
        lists[0].contains("c 10:229 rwm") && lists[0].contains("c 1:11 rwm")
            || !Path::new("/sys/fs/cgroup/devices/cgroup.procs").exists(),
        "the grants: {}",
        lists[0]
    );
    assert_eq!(mounts, our_mounts(None), "the host's mounts changed");
    assert_eq!(host_cache, host_ldcache(), "the host's ld.so.cache changed");
}
