//! Faults: the hook run twice for one container, and a broken driver tree.

#![forbid(unsafe_code)]

mod common;

use common::*;
use serde_json::Value;

/// Runtimes may run a hook again (a retried create); the second run must leave a working container.
#[test]
fn the_hook_run_twice_is_harmless() {
    let _g = serial();
    let b = bundle(&Spec::new(
        &["NVIDIA_VISIBLE_DEVICES=0"],
        "probe cuda; probe open /probe-nodes/gpu-kmsg /probe-nodes/gpu-fuse",
    ));
    let path = b.dir.join("config.json");
    let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let hook = c["hooks"]["prestart"][0].clone();
    c["hooks"]["prestart"] = Value::Array(vec![hook.clone(), hook]);
    std::fs::write(&path, serde_json::to_vec(&c).unwrap()).unwrap();
    let before = host_mounts();
    let r = run_oci("runc", &b).expect_ok("runc with nvhook registered twice");
    assert_eq!(before, host_mounts());
    assert!(r.has("cuInit=0 devices=1"), "{}", r.stdout);
    assert!(
        r.has("/probe-nodes/gpu-kmsg: ok") && r.has("/probe-nodes/gpu-fuse: EPERM"),
        "{}",
        r.stdout
    );
    assert!(
        ldcache_listing(&b)
            .matches("libcuda.so.1 (libc6,x86-64)")
            .count()
            == 1,
        "one cache entry, not two"
    );
}

/// A driver tree with its libcuda missing or dangling: a clear error naming it, not a half-set-up
/// container.
#[test]
fn a_broken_driver_tree_is_a_clear_error() {
    let fx = fixtures();
    let v = fx.version.clone();
    for (name, breakage) in [("missing", "rm"), ("dangling", "ln")] {
        let (copy, cfg) = driver_copy(&format!("broken-{name}"));
        let lib = copy.join(format!("usr/lib/x86_64-linux-gnu/libcuda.so.{v}"));
        std::fs::remove_file(&lib).unwrap();
        if breakage == "ln" {
            std::os::unix::fs::symlink("libcuda.so.does-not-exist", &lib).unwrap();
        }
        let mut s = Spec::new(&["NVIDIA_VISIBLE_DEVICES=0"], "echo started");
        s.config = Some(cfg);
        let r = run_checked("runc", &s);
        assert!(!r.ok && !r.has("started"), "{name}: {}", r.stdout);
        assert!(
            r.stderr.contains("nvhook: error:") && r.stderr.contains("libcuda.so"),
            "{name}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("compute"),
            "the error says which capability needs it: {}",
            r.stderr
        );
    }
}
