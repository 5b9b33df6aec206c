//! End to end under runc, with nvhook registered in the bundle's config.json, on the fake driver
//! tree: the container is a busybox + glibc image with no driver in it.

#![forbid(unsafe_code)]

mod common;

use common::*;

/// A script that reports what the container sees, one fact per line.
const REPORT: &str = "\
for n in nvidia0 nvidia1 nvidiactl nvidia-uvm nvidia-uvm-tools nvidia-modeset; do \
  [ -e /dev/$n ] && echo node:$n; done; \
[ -e /usr/bin/nvidia-smi ] && echo file:nvidia-smi; \
probe cuda; echo cuda-rc:$?; \
probe absent libnvidia-ml.so.1; \
nvidia-smi >/dev/null 2>&1 && echo smi:ok; \
probe open /probe-nodes/gpu-fuse /probe-nodes/gpu-kmsg /probe-nodes/other; \
ls /usr/lib/*/libcuda* /usr/lib64/libcuda* 2>/dev/null | sed 's/^/lib:/'; \
true";

fn runc(env: &[&str]) -> Run {
    run_checked("runc", &Spec::new(env, REPORT)).expect_ok("runc container")
}

fn nodes(r: &Run) -> Vec<&str> {
    r.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("node:"))
        .collect()
}

#[test]
fn all_gpus_compute_utility() {
    let r = runc(&["NVIDIA_VISIBLE_DEVICES=all"]);
    assert_eq!(
        nodes(&r),
        [
            "nvidia0",
            "nvidia1",
            "nvidiactl",
            "nvidia-uvm",
            "nvidia-uvm-tools"
        ],
        "{}",
        r.stdout
    );
    let v = &fixtures().version;
    assert!(
        r.has(&format!(
            "cuda: path=/usr/lib/x86_64-linux-gnu/libcuda.so.1 version={v} cuInit=0 devices=2"
        )),
        "libcuda resolves by soname, is the host driver's (not the stale compat copy), and both GPUs open:\n{}",
        r.stdout
    );
    assert!(
        r.has("smi:ok") && r.has("libnvidia-ml.so.1: present"),
        "{}",
        r.stdout
    );
    assert!(
        r.has("/probe-nodes/gpu-fuse: ok") && r.has("/probe-nodes/gpu-kmsg: ok"),
        "{}",
        r.stdout
    );
    assert!(
        r.has("/probe-nodes/other: EPERM"),
        "a device nvhook did not grant stays denied:\n{}",
        r.stdout
    );
}

#[test]
fn index_selects_by_bus_order_and_denies_the_other_gpu() {
    // index 0 is the GPU on bus 3b, whose minor is 1: /dev/nvidia1 (the kmsg node)
    let r = runc(&["NVIDIA_VISIBLE_DEVICES=0"]);
    assert_eq!(
        nodes(&r),
        ["nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"],
        "{}",
        r.stdout
    );
    assert!(r.has("devices=1"), "{}", r.stdout);
    assert!(
        r.has("/probe-nodes/gpu-kmsg: ok"),
        "selected GPU opens:\n{}",
        r.stdout
    );
    assert!(
        r.has("/probe-nodes/gpu-fuse: EPERM"),
        "unselected GPU is denied by the cgroup:\n{}",
        r.stdout
    );
    assert!(r.has("/probe-nodes/other: EPERM"), "{}", r.stdout);
}

#[test]
fn uuid_selects_that_gpu() {
    let r = runc(&[&format!("NVIDIA_VISIBLE_DEVICES={GPU1_UUID}")]);
    assert_eq!(
        nodes(&r),
        ["nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"],
        "{}",
        r.stdout
    );
    assert!(
        r.has("/probe-nodes/gpu-fuse: ok") && r.has("/probe-nodes/gpu-kmsg: EPERM"),
        "{}",
        r.stdout
    );
}

#[test]
fn compute_only_has_no_nvidia_smi() {
    let r = runc(&[
        "NVIDIA_VISIBLE_DEVICES=all",
        "NVIDIA_DRIVER_CAPABILITIES=compute",
    ]);
    assert!(r.has("cuda-rc:0"), "{}", r.stdout);
    assert!(
        !r.has("file:nvidia-smi") && r.has("libnvidia-ml.so.1: absent"),
        "{}",
        r.stdout
    );
}

#[test]
fn utility_only_has_nvidia_smi_and_no_libcuda() {
    let r = runc(&[
        "NVIDIA_VISIBLE_DEVICES=all",
        "NVIDIA_DRIVER_CAPABILITIES=utility",
    ]);
    assert!(r.has("smi:ok"), "{}", r.stdout);
    assert!(
        r.has("cuda: dlopen failed") && !r.has("lib:"),
        "{}",
        r.stdout
    );
    assert_eq!(
        nodes(&r),
        ["nvidia0", "nvidia1", "nvidiactl"],
        "no uvm without compute:\n{}",
        r.stdout
    );
}

#[test]
fn none_gives_the_driver_but_no_gpu() {
    let r = runc(&["NVIDIA_VISIBLE_DEVICES=none"]);
    assert_eq!(
        nodes(&r),
        ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"],
        "{}",
        r.stdout
    );
    assert!(
        r.has("cuda: path=") && r.has("devices=0") && r.has("smi:ok"),
        "{}",
        r.stdout
    );
}

#[test]
fn unset_void_and_empty_change_nothing() {
    for env in [
        &[][..],
        &["NVIDIA_VISIBLE_DEVICES=void"],
        &["NVIDIA_VISIBLE_DEVICES="],
    ] {
        let _g = serial();
        let b = bundle(&Spec::new(env, REPORT));
        let tree = |p: &std::path::Path| file_tree(p);
        let before = tree(&b.rootfs());
        let r = run_oci("runc", &b).expect_ok("runc without GPU");
        assert!(
            nodes(&r).is_empty() && !r.has("lib:") && !r.has("file:nvidia-smi"),
            "{env:?}: {}",
            r.stdout
        );
        assert!(r.has("cuda: dlopen failed"), "{}", r.stdout);
        assert_eq!(before, tree(&b.rootfs()), "{env:?}: the rootfs was changed");
        assert!(r.has("/probe-nodes/gpu-fuse: EPERM"), "{}", r.stdout);
    }
}

#[test]
fn unknown_uuid_fails_the_start_with_nvhooks_message() {
    let r = run_checked(
        "runc",
        &Spec::new(&["NVIDIA_VISIBLE_DEVICES=GPU-deadbeef"], "echo started"),
    );
    assert!(!r.ok && !r.has("started"), "{}", r.stdout);
    assert!(
        r.stderr.contains("unknown device \\\"GPU-deadbeef\\\"")
            || r.stderr.contains("unknown device \"GPU-deadbeef\""),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(GPU0_UUID) && r.stderr.contains(GPU1_UUID),
        "{}",
        r.stderr
    );
}

#[test]
fn libraries_resolve_through_the_containers_linker_cache() {
    let _g = serial();
    let b = bundle(&Spec::new(&["NVIDIA_VISIBLE_DEVICES=all"], "probe cuda"));
    run_oci("runc", &b).expect_ok("runc");
    // glibc's own reader of the cache nvhook wrote
    let text = ldcache_listing(&b);
    assert!(
        text.contains("libcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        "{text}"
    );
    assert!(text.contains("libnvidia-ml.so.1 (libc6,x86-64)"), "{text}");
    assert!(
        text.contains("libc.so.6 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libc.so.6"),
        "image entries kept:\n{text}"
    );
}

#[test]
fn non_debian_image_gets_usr_lib64_and_keeps_its_own_cache() {
    let mut s = Spec::new(&["NVIDIA_VISIBLE_DEVICES=all"], REPORT);
    s.rootfs = "rootfs-lib64";
    let r = run_checked("runc", &s).expect_ok("runc lib64 image");
    assert!(
        r.has("cuda: path=/usr/lib64/libcuda.so.1") && r.has("cuda-rc:0"),
        "{}",
        r.stdout
    );
    assert!(r.has("smi:ok"), "{}", r.stdout);
}

#[test]
fn readonly_rootfs_works() {
    let mut s = Spec::new(
        &["NVIDIA_VISIBLE_DEVICES=all"],
        &format!("{REPORT}; touch /x 2>/dev/null || echo ro:yes"),
    );
    s.readonly = true;
    let r = run_checked("runc", &s).expect_ok("runc readonly");
    assert!(
        r.has("cuda-rc:0") && r.has("smi:ok") && r.has("ro:yes"),
        "{}",
        r.stdout
    );
}

#[test]
fn registered_as_create_runtime_hook() {
    let mut s = Spec::new(&["NVIDIA_VISIBLE_DEVICES=1"], REPORT);
    s.stage = Stage::CreateRuntime;
    let r = run_checked("runc", &s).expect_ok("runc createRuntime");
    assert_eq!(
        nodes(&r),
        ["nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"],
        "{}",
        r.stdout
    );
    assert!(r.has("cuda-rc:0"), "{}", r.stdout);
}

#[test]
fn no_cgroups_leaves_the_device_cgroup_alone() {
    let fx = fixtures();
    let cfg = fx.dir.join("config-no-cgroups.toml");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&fx.config).unwrap() + "no-cgroups = true\n",
    )
    .unwrap();
    let mut s = Spec::new(&["NVIDIA_VISIBLE_DEVICES=0"], REPORT);
    s.config = Some(cfg);
    let r = run_checked("runc", &s).expect_ok("runc no-cgroups");
    // the node is there, but the runtime's default policy still denies it: nvhook granted nothing
    assert!(nodes(&r).contains(&"nvidia1"), "{}", r.stdout);
    assert!(r.has("/probe-nodes/gpu-kmsg: EPERM"), "{}", r.stdout);
}

#[test]
fn runs_where_the_cgroup_manager_puts_it() {
    check_runs_where_the_cgroup_manager_puts_it("runc");
}

/// Every bind mount carries its attributes (set on each clone before it is attached,
/// src/apply/mod.rs `clone_source`): libraries and tools read-only, nosuid, nodev; device nodes
/// read-only, nosuid, noexec.
#[test]
fn bind_mounts_are_read_only_and_nosuid() {
    let script = "awk '$5 ~ /libcuda.so|nvidia-smi|\\/dev\\/nvidia/ {print \"mnt:\" $5 \" \" $6}' /proc/self/mountinfo";
    let r = run_checked("runc", &Spec::new(&["NVIDIA_VISIBLE_DEVICES=all"], script))
        .expect_ok("runc container");
    let mounts: Vec<&str> = r
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("mnt:"))
        .collect();
    let opts = |target: &str| -> Vec<&str> {
        mounts
            .iter()
            .find_map(|m| m.strip_prefix(target)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{target} not mounted:\n{}", r.stdout))
            .split(',')
            .collect()
    };
    for lib in [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.".to_owned() + &fixtures().version,
        "/usr/bin/nvidia-smi".into(),
    ] {
        let o = opts(&lib);
        for want in ["ro", "nosuid", "nodev"] {
            assert!(o.contains(&want), "{lib}: {o:?} lacks {want}");
        }
    }
    for dev in ["/dev/nvidia0", "/dev/nvidiactl"] {
        let o = opts(dev);
        for want in ["ro", "nosuid", "noexec"] {
            assert!(o.contains(&want), "{dev}: {o:?} lacks {want}");
        }
        assert!(!o.contains(&"nodev"), "{dev}: {o:?}");
    }
}
