//! The command line: `plan` output, and clear errors (never panics) on bad input.

#![forbid(unsafe_code)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

fn nvhook_with(args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    let mut c = Command::new(nvhook())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // nvhook stops reading an oversized state early: a broken pipe here is expected
    let _ = c.stdin.take().unwrap().write_all(stdin);
    let o = c.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn plan_for_all_gpus_on_the_fake_tree() {
    let fx = fixtures();
    let b = bundle(&Spec::new(&["NVIDIA_VISIBLE_DEVICES=all"], "true"));
    let cfg = fx.config.to_str().unwrap();
    let (ok, out, err) = nvhook_with(
        &["--config", cfg, "plan", "--bundle", b.dir.to_str().unwrap()],
        b"",
    );
    assert!(ok, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    let dev_paths: Vec<&str> = plan["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    // all: both GPUs, then (as nvidia-container-cli) every MIG device's GI and CI capabilities
    // (the fixture's GPU 1 has two MIG devices)
    assert_eq!(
        dev_paths,
        [
            "/dev/nvidiactl",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools",
            "/dev/nvidia1",
            "/dev/nvidia0",
            "/dev/nvidia-caps/nvidia-cap12",
            "/dev/nvidia-caps/nvidia-cap13",
            "/dev/nvidia-caps/nvidia-cap21",
            "/dev/nvidia-caps/nvidia-cap22"
        ]
    );
    let rules: Vec<String> = plan["cgroup_rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {}:{}",
                r["type"].as_str().unwrap(),
                r["major"],
                r["minor"]
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            "c 120:255",
            "c 120:0",
            "c 120:1",
            "c 1:11",
            "c 10:229",
            "c 122:12",
            "c 122:13",
            "c 122:21",
            "c 122:22"
        ]
    );
    let v = &fx.version;
    let targets: Vec<&str> = plan["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["target"].as_str().unwrap())
        .collect();
    for t in [
        format!("/usr/lib/x86_64-linux-gnu/libcuda.so.{v}"),
        format!("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.{v}"),
        "/usr/bin/nvidia-smi".into(),
        format!("/lib/firmware/nvidia/{v}/gsp_ga10x.bin"),
    ] {
        assert!(targets.contains(&t.as_str()), "{t} not in {targets:?}");
    }
    assert!(
        !out.contains("/usr/local/cuda/compat"),
        "the stale compat libcuda must not be planned"
    );
    assert!(out.contains("\"soname\": \"libcuda.so.1\""));
    assert_eq!(plan["summary"]["gpus"].as_array().unwrap().len(), 2);
    // plan changes nothing
    assert!(
        !b.rootfs()
            .join(format!("usr/lib/x86_64-linux-gnu/libcuda.so.{v}"))
            .exists()
    );
    // the same plan from a state on stdin
    let state = format!(
        r#"{{"ociVersion":"1.0.2","id":"x","status":"creating","pid":1,"bundle":"{}"}}"#,
        b.dir.display()
    );
    let (ok, out2, err) = nvhook_with(&["--config", cfg, "plan"], state.as_bytes());
    assert!(ok, "{err}");
    assert_eq!(out, out2);
}

#[test]
fn bad_input_gets_a_clear_error_not_a_panic() {
    let fx = fixtures();
    let cfg = fx.config.to_str().unwrap();
    let b = bundle(&Spec::new(&["NVIDIA_VISIBLE_DEVICES=all"], "true"));
    let gone_pid = {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let state = |pid: u32, bundle: &str| {
        format!(
            r#"{{"ociVersion":"1.0.2","id":"x","status":"creating","pid":{pid},"bundle":"{bundle}"}}"#
        )
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "stdin is empty"),
        (b"{not json".to_vec(), "cannot parse the OCI state"),
        (b"[1,2,3]".to_vec(), "cannot parse the OCI state"),
        (
            state(1, "/nonexistent/bundle").into_bytes(),
            "/nonexistent/bundle/config.json",
        ),
        (
            state(gone_pid, b.dir.to_str().unwrap()).into_bytes(),
            "is gone",
        ),
        (vec![b'x'; 2 << 20], "cannot parse the OCI state"),
    ];
    for (input, want) in cases {
        let (ok, _, err) = nvhook_with(&["--config", cfg, "prestart"], &input);
        assert!(!ok, "{want}: should fail");
        assert!(
            err.contains("nvhook: error:") && err.contains(want),
            "want {want:?} in {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // a config file that does not exist, named explicitly
    let (ok, _, err) = nvhook_with(
        &["--config", "/nonexistent.toml", "prestart"],
        state(1, b.dir.to_str().unwrap()).as_bytes(),
    );
    assert!(!ok && err.contains("/nonexistent.toml"), "{err}");
    // unknown commands and options
    let (ok, _, err) = nvhook_with(&["frobnicate"], b"");
    assert!(!ok && err.contains("unknown command"), "{err}");
    let (ok, out, _) = nvhook_with(&["help"], b"");
    assert!(ok && out.contains("NVIDIA_VISIBLE_DEVICES"));
}

#[test]
fn a_non_gpu_container_passes_even_with_a_broken_config() {
    let b = bundle(&Spec::new(&[], "true"));
    std::fs::write(b.dir.join("bad.toml"), "this is = = not toml").unwrap();
    let state = format!(
        r#"{{"ociVersion":"1.0.2","id":"x","status":"creating","pid":1,"bundle":"{}"}}"#,
        b.dir.display()
    );
    let (ok, _, err) = nvhook_with(
        &[
            "--config",
            b.dir.join("bad.toml").to_str().unwrap(),
            "prestart",
        ],
        state.as_bytes(),
    );
    assert!(ok, "{err}");
    // ...and a GPU container names the config's problem
    let b2 = bundle(&Spec::new(&["NVIDIA_VISIBLE_DEVICES=all"], "true"));
    let state = format!(
        r#"{{"ociVersion":"1.0.2","id":"x","status":"creating","pid":1,"bundle":"{}"}}"#,
        b2.dir.display()
    );
    let (ok, _, err) = nvhook_with(
        &[
            "--config",
            b.dir.join("bad.toml").to_str().unwrap(),
            "prestart",
        ],
        state.as_bytes(),
    );
    assert!(!ok && err.contains("bad.toml"), "{err}");
}

#[test]
fn a_driver_root_without_a_linker_cache_is_scanned() {
    let fx = fixtures();
    let (copy, cfg) = driver_copy("nocache");
    std::fs::remove_file(copy.join("etc/ld.so.cache")).unwrap();
    let b = bundle(&Spec::new(&["NVIDIA_VISIBLE_DEVICES=0"], "true"));
    let (ok, out, err) = nvhook_with(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "plan",
            "--bundle",
            b.dir.to_str().unwrap(),
        ],
        b"",
    );
    assert!(ok, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    let sonames: Vec<&str> = plan["ldcache"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["soname"].as_str().unwrap())
        .collect();
    // sonames come from the libraries' own DT_SONAME; the stale 500.x compat copy is not taken
    assert!(
        sonames.contains(&"libcuda.so.1") && sonames.contains(&"libnvidia-ml.so.1"),
        "{sonames:?}"
    );
    let v = &fx.version;
    assert!(
        out.contains(&format!(
            "{}/usr/lib/x86_64-linux-gnu/libcuda.so.{v}",
            copy.display()
        )),
        "{out}"
    );
    assert!(!out.contains("compat/libcuda"), "{out}");
}

/// `nvhook poststop`, and `nvhook prestart` called at poststop (a hooks.d file has one argument
/// list for all its stages): a container nvhook recorded nothing for costs nothing and succeeds,
/// whatever its id; bad input is a clear error.
#[test]
fn poststop_without_a_record_succeeds_and_bad_input_is_clear() {
    let stopped = |id: &str| {
        format!(
            r#"{{"ociVersion":"1.0.2","id":"{id}","status":"stopped","bundle":"/nonexistent/bundle"}}"#
        )
    };
    for id in ["never-seen-by-nvhook", "../../etc/passwd", ".lock", "a@0"] {
        for cmd in ["poststop", "prestart"] {
            let (ok, out, err) = nvhook_with(&[cmd], stopped(id).as_bytes());
            assert!(ok && out.is_empty() && err.is_empty(), "{cmd} {id}: {err}");
        }
    }
    assert!(Path::new("/etc/passwd").is_file());
    let (ok, _, err) = nvhook_with(&["poststop"], b"");
    assert!(!ok && err.contains("stdin is empty"), "{err}");
    // a live state given to `poststop` by mistake: no record, nothing done
    let (ok, _, err) = nvhook_with(
        &["poststop"],
        br#"{"ociVersion":"1.0.2","id":"x","status":"created","pid":1,"bundle":"/b"}"#,
    );
    assert!(ok, "{err}");
}
