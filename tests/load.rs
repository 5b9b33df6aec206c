#![forbid(unsafe_code)]
//! Load (issue 6): 64 containers started at once under runc and under podman, each seeing only
//! its own GPU, and 1,000 sequential runs of the hook whose memory and descriptors stay flat.
//! Faults are in load_faults.rs and faults.rs.
//!
//! Every test holds `serial()` for its whole run: it compares the host's mount table before and
//! after, and must not see the other tests' containers as its own.

mod common;
#[path = "common/load.rs"]
mod load;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;
use load::*;

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
        runc_delete(&root, &b.id);
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
    // The first run creates the mount points in the shared rootfs and holds a descriptor for each
    // directory it created something in (the per-start directory cache); the later runs find them
    // there. So: no later run may hold more than the first, and the later runs hold the same.
    let count = |f: &String| f.parse::<u64>().unwrap_or(u64::MAX);
    let odd: Vec<String> = fds
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, f)| count(f) > count(&fds[0]) || fds.get(1) != Some(*f))
        .take(20)
        .map(|(i, f)| format!("run {i}: {f}"))
        .collect();
    assert!(
        odd.is_empty(),
        "descriptors open at the end differ between runs: run 0 had {}, run 1 {:?}, then {odd:?}",
        fds[0],
        fds.get(1)
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
