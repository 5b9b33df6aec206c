//! `nvhook list` and `nvhook doctor` on the fake driver tree.

#![forbid(unsafe_code)]

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn nvhook_json(args: &[&str]) -> (bool, Value, String) {
    let o = Command::new(nvhook()).args(args).output().unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (
        o.status.success(),
        v,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn list_shows_gpus_mig_and_each_capabilitys_files() {
    let fx = fixtures();
    let (ok, v, err) = nvhook_json(&["--config", fx.config.to_str().unwrap(), "list", "--json"]);
    assert!(ok, "{err}");
    let gpus = v["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2);
    assert_eq!(
        (
            gpus[0]["index"].as_u64(),
            gpus[0]["bus_id"].as_str(),
            gpus[0]["minor"].as_u64()
        ),
        (Some(0), Some("0000:3b:00.0"), Some(1))
    );
    assert_eq!(gpus[1]["uuid"], GPU1_UUID);
    assert_eq!(v["driver_version"], fx.version.as_str());
    assert_eq!(
        v["mig"].as_array().unwrap().len(),
        2,
        "the fake NVML's two MIG devices"
    );
    assert!(
        v["capabilities"]["compute"]["libraries"]["libcuda.so.1"]
            .as_str()
            .unwrap()
            .ends_with(&format!("libcuda.so.{}", fx.version))
    );
    assert!(v["capabilities"]["utility"]["binaries"]["nvidia-smi"].is_string());
    assert!(v["capabilities"]["utility"]["libraries"]["libcuda.so.1"].is_null());
    // and a human form
    let o = Command::new(nvhook())
        .args(["--config", fx.config.to_str().unwrap(), "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("GPU 0: Fake GPU 1 GPU-11111111") && text.contains("nvidia-smi ->"),
        "{text}"
    );
}

fn finding<'a>(v: &'a Value, check: &str, status: &str) -> Vec<&'a Value> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check && f["status"] == status)
        .collect()
}

#[test]
fn doctor_checks_the_fake_host() {
    let fx = fixtures();
    let (ok, v, err) = nvhook_json(&["--config", fx.config.to_str().unwrap(), "doctor", "--json"]);
    assert!(
        ok,
        "no error-level finding on the fixture tree: {err}\n{v:#}"
    );
    assert_eq!(finding(&v, "driver", "ok").len(), 1, "{v:#}");
    assert_eq!(finding(&v, "libraries", "ok").len(), 2, "{v:#}");
    // the fixture's nodes use other majors than /proc/devices names: reported, with the numbers
    let warned = finding(&v, "device-nodes", "warn");
    assert!(
        warned.iter().any(|f| f["message"]
            .as_str()
            .unwrap()
            .contains("/dev/nvidiactl is 120:255")),
        "{v:#}"
    );
    assert!(
        finding(&v, "device-nodes", "ok")
            .iter()
            .any(|f| f["message"].as_str().unwrap().contains("nvidia-uvm 120:0")),
        "{v:#}"
    );
    assert!(!finding(&v, "cgroups", "ok").is_empty());
    // this machine has no systemd as PID 1: not affected by daemon-reload (docs/systemd.md)
    assert!(
        finding(&v, "systemd", "info").iter().any(|f| f["message"]
            .as_str()
            .unwrap()
            .contains("systemd is not PID 1")),
        "{v:#}"
    );
    // every non-ok finding says what to do
    for f in v["findings"].as_array().unwrap() {
        if f["status"] == "warn" || f["status"] == "error" {
            assert!(f["hint"].as_str().is_some_and(|h| !h.is_empty()), "{f}");
        }
    }
}

#[test]
fn doctor_reports_a_broken_config_and_fails() {
    let fx = fixtures();
    let bad = fx.dir.join("broken.toml");
    std::fs::write(&bad, "driver-root = [\n").unwrap();
    let (ok, v, _) = nvhook_json(&["--config", bad.to_str().unwrap(), "doctor", "--json"]);
    assert!(!ok, "exit status 1 with an error finding");
    let e = finding(&v, "config", "error");
    assert_eq!(e.len(), 1, "{v:#}");
    assert!(e[0]["message"].as_str().unwrap().contains("broken.toml"));
}
