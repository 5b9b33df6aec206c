//! MIG devices end to end under runc: selection by MIG UUID and `<gpu>:<mig>`, the capability
//! nodes each brings, MIG config/monitor for privileged containers, and NVML (nvml-wrapper, loaded
//! from the driver root) used only when MIG is involved. The fake driver's libnvidia-ml answers
//! the NVML calls: GPU 1 has two MIG devices (GI 1/CI 0 -> caps 12, 13; GI 2/CI 0 -> caps 21, 22).

#![forbid(unsafe_code)]

mod common;

use common::*;

const MIG_A: &str = "MIG-aaaaaaaa-1111-2222-3333-444444444444";
const LIST: &str = "ls /dev /dev/nvidia-caps 2>/dev/null | grep -E '^nvidia' | sed 's/^/node:/'; \
    probe open /dev/nvidia-caps/nvidia-cap12 /dev/nvidia-caps/nvidia-cap21; true";

fn run_mig(env: &[&str], privileged: bool) -> (Run, String) {
    let log = std::env::temp_dir().join(format!(
        "nvhook-nvml-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let mut s = Spec::new(env, LIST);
    s.hook_env = vec![format!("NVML_FAKE_LOG={}", log.display())];
    s.privileged = privileged;
    let r = run_checked("runc", &s);
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    (r, calls)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn nodes(r: &Run) -> Vec<&str> {
    let mut v: Vec<&str> = r
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("node:"))
        .collect();
    v.sort();
    v
}

#[test]
fn mig_uuid_brings_its_parent_gpu_and_its_two_capabilities() {
    let (r, calls) = run_mig(&[&format!("NVIDIA_VISIBLE_DEVICES={MIG_A}")], false);
    let r = r.expect_ok("MIG by UUID");
    assert_eq!(
        nodes(&r),
        [
            "nvidia-cap12",
            "nvidia-cap13",
            "nvidia-caps",
            "nvidia-uvm",
            "nvidia-uvm-tools",
            "nvidia0",
            "nvidiactl"
        ],
        "{}",
        r.stdout
    );
    assert!(
        r.has("/dev/nvidia-caps/nvidia-cap12: ENXIO"),
        "granted in the device cgroup:\n{}",
        r.stdout
    );
    assert!(calls.contains("nvmlInit_v2"), "NVML was used: {calls}");
}

#[test]
fn gpu_colon_mig_index_form() {
    let (r, _) = run_mig(&["NVIDIA_VISIBLE_DEVICES=1:1"], false);
    let r = r.expect_ok("MIG 1:1");
    let n = nodes(&r);
    assert!(
        n.contains(&"nvidia-cap21") && n.contains(&"nvidia-cap22") && !n.contains(&"nvidia-cap12"),
        "{n:?}"
    );
}

#[test]
fn all_brings_every_mig_device_and_plain_gpus_never_load_nvml() {
    let (r, _) = run_mig(&["NVIDIA_VISIBLE_DEVICES=all"], false);
    let r = r.expect_ok("all");
    let n = nodes(&r);
    for c in [
        "nvidia-cap12",
        "nvidia-cap13",
        "nvidia-cap21",
        "nvidia-cap22",
        "nvidia0",
        "nvidia1",
    ] {
        assert!(n.contains(&c), "{c} missing: {n:?}");
    }
    // GPU 0 has no MIG instances in the kernel's files: NVML is never loaded
    let (r, calls) = run_mig(&["NVIDIA_VISIBLE_DEVICES=0"], false);
    let r = r.expect_ok("GPU 0");
    let n = nodes(&r);
    assert!(!n.iter().any(|x| x.starts_with("nvidia-cap")), "{n:?}");
    assert!(
        calls.is_empty(),
        "NVML must not be touched for a plain GPU: {calls}"
    );
}

#[test]
fn mig_config_needs_privilege_and_all() {
    let (r, _) = run_mig(
        &[
            "NVIDIA_VISIBLE_DEVICES=none",
            "NVIDIA_MIG_CONFIG_DEVICES=all",
        ],
        true,
    );
    let r = r.expect_ok("privileged MIG config");
    let n = nodes(&r);
    assert!(
        n.contains(&"nvidia-cap1") && !n.contains(&"nvidia-cap2"),
        "{n:?}"
    );
    let (r, _) = run_mig(
        &[
            "NVIDIA_VISIBLE_DEVICES=none",
            "NVIDIA_MIG_CONFIG_DEVICES=all",
        ],
        false,
    );
    assert!(
        !r.ok && r.stderr.contains("NVIDIA_MIG_CONFIG_DEVICES") && r.stderr.contains("privileged"),
        "{}",
        r.stderr
    );
    let (r, _) = run_mig(
        &[
            "NVIDIA_VISIBLE_DEVICES=none",
            "NVIDIA_MIG_MONITOR_DEVICES=0",
        ],
        true,
    );
    assert!(!r.ok && r.stderr.contains("only 'all'"), "{}", r.stderr);
}

#[test]
fn unknown_mig_device_is_an_error_naming_it() {
    let (r, _) = run_mig(
        &["NVIDIA_VISIBLE_DEVICES=MIG-ffffffff-0000-0000-0000-000000000000"],
        false,
    );
    assert!(
        !r.ok && r.stderr.contains("MIG-ffffffff") && r.stderr.contains(GPU1_UUID),
        "{}",
        r.stderr
    );
    let (r, _) = run_mig(&["NVIDIA_VISIBLE_DEVICES=1:7"], false);
    assert!(
        !r.ok && r.stderr.contains("\\\"1:7\\\"") || r.stderr.contains("\"1:7\""),
        "{}",
        r.stderr
    );
}
