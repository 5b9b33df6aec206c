//! End to end under podman (crun, its default runtime), with nvhook registered through a hooks
//! directory holding the packaged hooks.d/nvhook.json, and `-e NVIDIA_VISIBLE_DEVICES=...`.
//! With NVHOOK_TEST_INSTALLED=1 (.ci/run, after installing the .deb) the same tests run the
//! installed package: podman's default hooks dirs, /usr/bin/nvhook, /etc/nvhook/config.toml.

#![forbid(unsafe_code)]

mod common;

use common::*;

const REPORT: &str = SHORT_REPORT;

const DEBIAN: &str = DEBIAN_IMAGE;

#[test]
fn all_gpus_with_nvidia_smi() {
    let r = podman()
        .run_checked(DEBIAN, &["NVIDIA_VISIBLE_DEVICES=all"], &[], REPORT)
        .expect_ok("podman");
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
fn one_gpu_by_uuid_and_the_other_denied() {
    let env = format!("NVIDIA_VISIBLE_DEVICES={GPU0_UUID}");
    let r = podman()
        .run_checked(DEBIAN, &[&env], &[], REPORT)
        .expect_ok("podman");
    assert!(
        r.has("node:nvidia1") && !r.has("node:nvidia0"),
        "{}",
        r.stdout
    );
    assert!(
        r.has("/probe-nodes/gpu-kmsg: ok") && r.has("/probe-nodes/gpu-fuse: EPERM"),
        "{}",
        r.stdout
    );
}

#[test]
fn utility_and_compute_split() {
    let r = podman()
        .run_checked(
            DEBIAN,
            &[
                "NVIDIA_VISIBLE_DEVICES=all",
                "NVIDIA_DRIVER_CAPABILITIES=utility",
            ],
            &[],
            REPORT,
        )
        .expect_ok("podman utility");
    assert!(
        r.has("smi:ok") && r.has("cuda: dlopen failed"),
        "{}",
        r.stdout
    );
    let r = podman()
        .run_checked(
            DEBIAN,
            &[
                "NVIDIA_VISIBLE_DEVICES=all",
                "NVIDIA_DRIVER_CAPABILITIES=compute",
            ],
            &[],
            REPORT,
        )
        .expect_ok("podman compute");
    assert!(r.has("cuda-rc:0") && !r.has("smi:ok"), "{}", r.stdout);
}

#[test]
fn no_request_no_change() {
    let r = podman()
        .run_checked(DEBIAN, &[], &[], REPORT)
        .expect_ok("podman plain");
    assert!(
        !r.has("node:") && r.has("cuda: dlopen failed"),
        "{}",
        r.stdout
    );
    let r = podman()
        .run_checked(DEBIAN, &["NVIDIA_VISIBLE_DEVICES=void"], &[], REPORT)
        .expect_ok("podman void");
    assert!(!r.has("node:"), "{}", r.stdout);
}

#[test]
fn read_only_and_non_debian_images() {
    let r = podman()
        .run_checked(
            DEBIAN,
            &["NVIDIA_VISIBLE_DEVICES=all"],
            &["--read-only"],
            REPORT,
        )
        .expect_ok("podman --read-only");
    assert!(r.has("cuda-rc:0") && r.has("smi:ok"), "{}", r.stdout);
    let r = podman()
        .run_checked(
            "localhost/nvhook-test:lib64",
            &["NVIDIA_VISIBLE_DEVICES=all"],
            &[],
            REPORT,
        )
        .expect_ok("podman lib64 image");
    assert!(
        r.has("path=/usr/lib64/libcuda.so.1") && r.has("cuda-rc:0"),
        "{}",
        r.stdout
    );
}

#[test]
fn unknown_uuid_message_reaches_podmans_output() {
    let r = podman().run_checked(
        DEBIAN,
        &["NVIDIA_VISIBLE_DEVICES=GPU-deadbeef"],
        &[],
        "echo started",
    );
    assert!(!r.ok && !r.has("started"));
    assert!(
        r.stderr.contains("nvhook: error:") && r.stderr.contains("GPU-deadbeef"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(GPU1_UUID), "{}", r.stderr);
}

#[test]
fn the_registration_in_use() {
    let p = podman();
    let r = p
        .run_checked(DEBIAN, &["NVIDIA_VISIBLE_DEVICES=all"], &[], REPORT)
        .expect_ok("podman");
    assert!(r.has("node:nvidia0"), "{}", r.stdout);
    if installed_mode() {
        // podman found the package's registration by itself, and the package's config file is
        // back in place after the run (it pointed at the fixture tree only during it)
        assert!(p.hooks_dir.is_none());
        assert_eq!(
            installed_config_between_runs(),
            std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/packaging/config.toml"
            ))
            .unwrap()
        );
    } else {
        let dir = p.hooks_dir.as_ref().expect("a test hooks dir");
        let hook: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("nvhook.json")).unwrap()).unwrap();
        assert_eq!(hook["hook"]["path"], nvhook());
    }
}

#[test]
fn runs_where_the_cgroup_manager_puts_it() {
    let script = format!("{CGROUP_LINE}; probe open /probe-nodes/gpu-kmsg /probe-nodes/gpu-fuse");
    let r = podman()
        .run_checked(
            DEBIAN,
            &[&format!("NVIDIA_VISIBLE_DEVICES={GPU0_UUID}")],
            &["--cgroupns", "host"],
            &script,
        )
        .expect_ok("podman --cgroupns host");
    assert_cgroup_manager("podman", "", &r);
    assert!(
        r.has("/probe-nodes/gpu-kmsg: ok") && r.has("/probe-nodes/gpu-fuse: EPERM"),
        "{}",
        r.stdout
    );
}
