#![forbid(unsafe_code)]
//! Faults (issue 6): the hook SIGKILLed at random points of its run, the hook killed while NVML
//! hangs, and a container pid that is gone or belongs to the wrong process. (The hook run twice
//! and a broken driver tree are in faults.rs.)
//!
//! Every test holds `serial()` for its whole run: it compares the host's mount table before and
//! after, and must not see the other tests' containers as its own.

mod common;
#[path = "common/load.rs"]
mod load;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use common::*;
use load::*;

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
    // "started" only when libcuda loads and opens exactly its one GPU
    let spec = Spec::new(
        &["NVIDIA_VISIBLE_DEVICES=0"],
        "probe cuda | grep -q 'cuInit=0 devices=1' && echo started",
    );

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
    let mut retried = 0;
    let t = Instant::now();
    for i in 0..n {
        // a tenth certainly too late (the hook finishes), a tenth at once, the rest spread over
        // the run: the machine's load may change, the ends are still covered
        let delay = match i % 10 {
            0 => hook_us * 10,
            1 => 0,
            _ => rng.below(max_delay + 1),
        };
        let b = bundle(&spec);
        let plain: Value =
            serde_json::from_slice(&std::fs::read(b.dir.join("config.json")).unwrap()).unwrap();
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
            runc_delete(&root, &b.id);
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
        if killed {
            // the runtime (or the user) tries again on the same bundle, with what the killed run
            // left in the rootfs: the container must start with its GPU
            std::fs::write(
                b.dir.join("config.json"),
                serde_json::to_vec(&plain).unwrap(),
            )
            .unwrap();
            let again = runc_run(&root, &b);
            runc_delete(&root, &b.id);
            assert!(
                again.ok && again.has("started"),
                "{what}\nthe retry failed:\n{}\n{}",
                again.stdout,
                again.stderr
            );
            assert_eq!(mounts_before, our_mounts(None), "{what}: retry");
            retried += 1;
        }
    }
    assert_eq!(host_cache, host_ldcache(), "the host's ld.so.cache changed");
    assert_eq!(
        fixtures_before,
        tree(&fx.dir),
        "the driver tree or fixtures changed"
    );
    eprintln!(
        "load: {n} SIGKILLs (a tenth at 0, a tenth at 10x the hook's run, the rest over [0, {max_delay}] us; hook alone: {hook_us} us median of 5) in {:.1}s: {landed:?}; {retried} killed runs retried, all started",
        t.elapsed().as_secs_f64()
    );
    // the kills covered the run: some before nvhook changed anything, some too late
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
        runc_delete(&root, &b.id);
    }
    assert_eq!(outcome.trim(), "killed", "{}", r.stderr);
    assert!(!r.ok && !r.has("started"), "{}", r.stdout);
    assert!(!lingered, "the NVML child {child} outlived the killed hook");
    assert!(left.is_empty(), "runc left {left:?} behind");
    assert_no_cgroup_left(&b.id);
    assert_eq!(mounts, our_mounts(None), "the host's mounts changed");
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

    // an unrelated process with a mount namespace and a device cgroup of its own: nvhook applies
    // there (it cannot tell it from a container); that process's namespace and cgroup get the
    // GPU, and nothing reaches the host
    let cg = TestCgroup::new("nvhook-load-other");
    let mut other = process_in_own_mount_ns();
    cg.add(other.id());
    let r = prestart(&state_json("other", other.id(), &b), &fx.config, false);
    let in_ns =
        std::fs::read_to_string(format!("/proc/{}/mountinfo", other.id())).unwrap_or_default();
    let _ = other.kill();
    let _ = other.wait();
    assert!(r.ok, "{}", r.stderr);
    assert!(
        in_ns.contains(&format!(
            "/usr/lib/x86_64-linux-gnu/libcuda.so.{}",
            fx.version
        )),
        "applied in the other process's namespace"
    );
    if cg.0.join("devices.list").exists() {
        assert!(
            cg.devices_list().contains("c 1:11 rwm"),
            "{}",
            cg.devices_list()
        );
    }
    assert_eq!(mounts, our_mounts(None), "the host's mounts changed");
    assert_eq!(host_cache, host_ldcache());
    assert_eq!(
        own_devices,
        std::fs::read_to_string("/sys/fs/cgroup/devices/devices.list").ok(),
        "the root device cgroup changed"
    );
}

/// The container's process dies before nvhook runs (OOM, a signal): under runc, a first prestart
/// hook kills it, nvhook runs second. nvhook names the gone process, runc fails the start and
/// cleans up, and nothing is left on the host.
#[test]
fn the_container_killed_before_the_hook_is_a_clear_error_under_runc() {
    let _g = serial();
    require_tool("runc", "runc");
    prepare_host();
    let root = runc_root("gone");
    let b = bundle(&Spec::new(&["NVIDIA_VISIBLE_DEVICES=0"], "echo started"));
    let path = b.dir.join("config.json");
    let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let nvhook_hook = c["hooks"]["prestart"][0].clone();
    // the host's own shell, not the image's: it reads the state and SIGKILLs the container's init
    let killer = serde_json::json!({
        "path": "/bin/sh",
        "args": ["sh", "-c",
            "pid=$(sed 's/.*\"pid\": *\\([0-9]*\\).*/\\1/'); kill -KILL \"$pid\"; \
             while grep -qs '^State:.*[RSD]' /proc/$pid/status; do :; done"],
    });
    c["hooks"]["prestart"] = serde_json::json!([killer, nvhook_hook]);
    std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    let mounts = our_mounts(None);
    let r = runc_run(&root, &b);
    let left = runc_list(&root);
    if !left.is_empty() {
        runc_delete(&root, &b.id);
    }
    assert!(!r.ok && !r.has("started"), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("nvhook: error:") && r.stderr.contains("is gone"),
        "{}",
        r.stderr
    );
    eprintln!("load: {}", r.stderr.trim());
    assert!(left.is_empty(), "runc left {left:?} behind");
    assert_no_cgroup_left(&b.id);
    assert_eq!(mounts, our_mounts(None), "the host's mounts changed");
    let v = &fixtures().version;
    assert!(
        !b.rootfs()
            .join(format!("usr/lib/x86_64-linux-gnu/libcuda.so.{v}"))
            .exists(),
        "nvhook changed the rootfs of a container whose process was gone"
    );
}
