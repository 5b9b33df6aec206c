//! End to end under crun, with the same bundles as the runc tests.

#![forbid(unsafe_code)]

mod common;

use common::*;

const REPORT: &str = SHORT_REPORT;

fn crun(env: &[&str]) -> Run {
    run_checked("crun", &Spec::new(env, REPORT)).expect_ok("crun container")
}

#[test]
fn all_gpus() {
    let r = crun(&["NVIDIA_VISIBLE_DEVICES=all"]);
    assert!(
        r.has("node:nvidia0") && r.has("node:nvidia1") && r.has("node:nvidiactl"),
        "{}",
        r.stdout
    );
    assert!(
        r.has("cuInit=0 devices=2") && r.has("smi:ok"),
        "{}",
        r.stdout
    );
    assert!(r.has("/probe-nodes/other: EPERM"), "{}", r.stdout);
}

#[test]
fn one_gpu_opens_the_other_is_denied() {
    let r = crun(&["NVIDIA_VISIBLE_DEVICES=0"]);
    assert!(
        r.has("node:nvidia1") && !r.has("node:nvidia0"),
        "{}",
        r.stdout
    );
    assert!(r.has("/probe-nodes/gpu-kmsg: ok"), "{}", r.stdout);
    assert!(
        r.has("/probe-nodes/gpu-fuse: EPERM") && r.has("/probe-nodes/other: EPERM"),
        "{}",
        r.stdout
    );
}

#[test]
fn compute_only_and_unset() {
    let r = crun(&[
        "NVIDIA_VISIBLE_DEVICES=all",
        "NVIDIA_DRIVER_CAPABILITIES=compute",
    ]);
    assert!(r.has("cuda-rc:0") && !r.has("smi:ok"), "{}", r.stdout);
    let r = crun(&[]);
    assert!(
        !r.has("node:") && r.has("cuda: dlopen failed"),
        "{}",
        r.stdout
    );
}

#[test]
fn readonly_rootfs() {
    let mut s = Spec::new(&["NVIDIA_VISIBLE_DEVICES=all"], REPORT);
    s.readonly = true;
    let r = run_checked("crun", &s).expect_ok("crun readonly");
    assert!(r.has("cuda-rc:0") && r.has("smi:ok"), "{}", r.stdout);
}

#[test]
fn unknown_uuid_message_reaches_cruns_output() {
    let r = run_checked(
        "crun",
        &Spec::new(&["NVIDIA_VISIBLE_DEVICES=GPU-deadbeef"], "echo started"),
    );
    assert!(!r.ok && !r.has("started"));
    assert!(
        r.stderr.contains("nvhook: error:") && r.stderr.contains("GPU-deadbeef"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(GPU0_UUID), "{}", r.stderr);
}

#[test]
fn runs_where_the_cgroup_manager_puts_it() {
    check_runs_where_the_cgroup_manager_puts_it("crun");
}
