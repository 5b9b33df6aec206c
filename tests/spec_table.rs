//! Issue 15: nvhook reads config.json as tolerantly as the runtimes. A table of real-world
//! specs (runc 1.0, 1.1 and 1.2, crun, podman and Docker 20.10 generated ones; see
//! tests/fixtures/specs/README.md for where each comes from) and of specs made to break a strict
//! reader (a capability no table knows, the flat capability list of OCI before 1.0.0-rc5, huge
//! numbers, fields from the future), each with and without a GPU request, through `nvhook plan`
//! on the fake driver tree, and each that runc accepts started end to end under runc.

#![forbid(unsafe_code)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use serde_json::{Value, json};

/// The GPU request of the "with" rows: GPU index 0, which is /dev/nvidia1 on the fake tree.
const GPU: &str = "NVIDIA_VISIBLE_DEVICES=0";
const GPU_NODE: &str = "/dev/nvidia1";
const SCRIPT: &str = "[ -e /dev/nvidia1 ] && echo node:nvidia1; echo started";

struct Variant {
    name: &'static str,
    spec: Value,
    /// runc 1.1.5 starts it (else: `nvhook plan` only).
    runc: bool,
    /// CAP_SYS_ADMIN in the bounding set, by the toolkit's rule.
    privileged: bool,
}

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/specs")
        .join(name);
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{p:?}: {e}")))
        .unwrap_or_else(|e| panic!("{p:?}: {e}"))
}

/// `<runtime> spec` in a scratch directory.
fn generated_spec(runtime: &str) -> Value {
    require_tool(runtime, runtime);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("spec-table-{runtime}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let o = Command::new(runtime)
        .arg("spec")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{runtime} spec: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    v
}

fn variants() -> Vec<Variant> {
    // podman's import, `init` and `rm` mount and unmount storage and shm: not while another
    // test compares the host's mount table around a container (tests/common::run_checked)
    let _g = serial();
    let runc11 = generated_spec("runc");
    let v = |name, spec, runc, privileged| Variant {
        name,
        spec,
        runc,
        privileged,
    };
    let with_cap = |spec: &Value, cap: &str| {
        let mut spec = spec.clone();
        for set in ["bounding", "effective", "permitted"] {
            spec["process"]["capabilities"][set]
                .as_array_mut()
                .unwrap()
                .push(json!(cap));
        }
        spec
    };
    let unknown_cap = with_cap(&runc11, "CAP_NVHOOK_FROM_2031");
    let unknown_cap_admin = with_cap(&unknown_cap, "CAP_SYS_ADMIN");
    // OCI 1.0.0-rc1 to rc4: one flat capability list (runc today refuses it)
    let mut pre_rc5 = runc11.clone();
    pre_rc5["ociVersion"] = json!("1.0.0-rc4");
    pre_rc5["process"]["capabilities"] = json!(["CAP_AUDIT_WRITE", "CAP_KILL"]);
    let mut pre_rc5_admin = pre_rc5.clone();
    pre_rc5_admin["process"]["capabilities"] = json!(["CAP_KILL", "CAP_SYS_ADMIN"]);
    // huge numbers runc takes (RLIM_INFINITY, the cgroup v1 "no limit" value), unknown fields
    let mut huge = runc11.clone();
    huge["process"]["rlimits"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "RLIMIT_CORE", "hard": u64::MAX, "soft": u64::MAX}));
    huge["linux"]["resources"]["memory"] = json!({"limit": 9223372036854771712_i64});
    huge["process"]["ioPriorityFromTheFuture"] = json!({"class": "IOPRIO_CLASS_2031", "n": 1e300});
    huge["futureTopLevel"] = json!([[{"deep": [1, 2, {"x": null}]}]]);
    huge["annotations"] = json!({"org.example/huge": "18446744073709551616"});
    // and numbers no runtime takes, where nvhook does and does not read them
    let mut huger = runc11.clone();
    huger["process"]["user"] =
        json!({"uid": 18446744073709551616_f64, "gid": -1, "additionalGids": [4294967296_u64]});
    huger["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": -1, "soft": 1.7e308}]);
    huger["linux"]["uidMappings"] =
        json!([{"containerID": 0, "hostID": 4294967295_u64, "size": 4294967295_u64}]);
    huger["linux"]["resources"] =
        json!({"cpu": {"shares": 1e30, "quota": -9223372036854775808_i64}});
    vec![
        v("runc-1.0", fixture("runc-1.0.json"), true, false),
        v("runc-1.1.5 (runc spec)", runc11.clone(), true, false),
        v("runc-1.2", fixture("runc-1.2.json"), true, false),
        v("crun (crun spec)", generated_spec("crun"), true, false),
        v(
            "podman-4.3 (podman create)",
            podman().oci_spec(DEBIAN_IMAGE, &[]),
            true,
            false,
        ),
        v(
            "podman-4.3 --privileged",
            podman().oci_spec(DEBIAN_IMAGE, &["--privileged"]),
            true,
            true,
        ),
        v("docker-20.10", fixture("docker-20.10.json"), true, false),
        v("unknown capability", unknown_cap, true, false),
        v(
            "unknown capability + CAP_SYS_ADMIN",
            unknown_cap_admin,
            true,
            true,
        ),
        v("pre-rc5 flat capabilities", pre_rc5, false, false),
        v(
            "pre-rc5 flat capabilities + CAP_SYS_ADMIN",
            pre_rc5_admin,
            false,
            true,
        ),
        v("huge numbers, unknown fields", huge, true, false),
        v("numbers no runtime takes", huger, false, false),
    ]
}

/// `spec` made runnable here: the test's rootfs and script, nvhook as the hook (from `hooks`),
/// and nothing that names the host it was captured on (bind mounts of files that are gone,
/// namespace paths, cgroup paths, labels). Everything else is kept as the runtime wrote it.
fn for_this_host(mut spec: Value, env: &[String], hooks: &Value) -> Value {
    spec["root"] = json!({"path": "rootfs", "readonly": false});
    let p = &mut spec["process"];
    p["terminal"] = json!(false);
    p["args"] = json!(["/bin/sh", "-c", SCRIPT]);
    p["env"] = json!(env);
    for k in ["apparmorProfile", "selinuxLabel"] {
        p.as_object_mut().unwrap().remove(k);
    }
    spec["hooks"] = hooks.clone();
    if let Some(ms) = spec["mounts"].as_array_mut() {
        ms.retain(|m| {
            let bind = m["type"] == "bind"
                || m["options"]
                    .as_array()
                    .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"));
            !bind || m["source"].as_str().is_some_and(|s| Path::new(s).exists())
        });
    }
    let linux = spec["linux"].as_object_mut().unwrap();
    linux.remove("cgroupsPath");
    linux.remove("mountLabel");
    if let Some(ns) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
        for n in ns {
            n.as_object_mut().unwrap().remove("path");
        }
    }
    spec
}

fn env_of(spec: &Value, gpu: bool) -> Vec<String> {
    let mut env: Vec<String> = spec["process"]["env"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    if gpu {
        env.push(GPU.into());
    }
    env
}

/// `nvhook --config <config> plan --bundle <dir>`: the plan, or the error.
fn plan(config: &Path, dir: &Path) -> Result<Value, String> {
    let o = Command::new(nvhook())
        .arg("--config")
        .arg(config)
        .args(["plan", "--bundle"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&o.stdout).unwrap())
}

fn devices(plan: &Value) -> Vec<String> {
    plan["devices"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|d| d["path"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The fixtures' config with the toolkit's strict setting: `NVIDIA_VISIBLE_DEVICES` is taken
/// from privileged containers only, so a plan shows what nvhook decided about privilege.
fn strict_config() -> std::path::PathBuf {
    let fx = fixtures();
    let p = fx.dir.join("config-strict-env.toml");
    let text = std::fs::read_to_string(&fx.config).unwrap()
        + "accept-nvidia-visible-devices-envvar-when-unprivileged = false\n";
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn real_world_specs_with_and_without_a_gpu() {
    let fx = fixtures();
    let strict = strict_config();
    let mut failures = Vec::new();
    for v in variants() {
        for gpu in [false, true] {
            let row = format!("{} ({} GPU)", v.name, if gpu { "with" } else { "without" });
            let b = bundle(&Spec::new(&[], SCRIPT));
            let path = b.dir.join("config.json");
            let ours: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let spec = for_this_host(v.spec.clone(), &env_of(&v.spec, gpu), &ours["hooks"]);
            // plan reads the spec as it came, only root, env and hooks replaced
            let mut as_written = v.spec.clone();
            as_written["root"] = json!({"path": "rootfs"});
            as_written["process"]["env"] = json!(env_of(&v.spec, gpu));
            std::fs::write(&path, serde_json::to_vec_pretty(&as_written).unwrap()).unwrap();
            match plan(&fx.config, &b.dir) {
                Ok(p) if gpu && !devices(&p).iter().any(|d| d == GPU_NODE) => {
                    failures.push(format!("{row}: plan has no {GPU_NODE}: {p}"))
                }
                Ok(p)
                    if !gpu
                        && (p["summary"]["requested"] != json!(false)
                            || !devices(&p).is_empty()) =>
                {
                    failures.push(format!(
                        "{row}: a plan for a container that asked for nothing: {p}"
                    ))
                }
                Ok(_) => {}
                Err(e) => failures.push(format!("{row}: nvhook plan failed: {e}")),
            }
            if gpu {
                // the toolkit's privilege rule, read from this spec's capabilities
                match plan(&strict, &b.dir) {
                    Ok(p) if devices(&p).is_empty() == v.privileged => failures.push(format!(
                        "{row}: privileged should be {}, the strict plan says otherwise: {p}",
                        v.privileged
                    )),
                    Ok(_) => {}
                    Err(e) => failures.push(format!("{row}: strict plan failed: {e}")),
                }
            }
            if !v.runc {
                continue;
            }
            std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
            let _g = serial();
            let before = host_mounts();
            let r = run_oci("runc", &b);
            if host_mounts() != before {
                failures.push(format!("{row}: the host's mount table changed"));
            }
            let has_node = r.stdout.contains("node:nvidia1");
            if !r.ok || !r.stdout.contains("started") || has_node != gpu {
                failures.push(format!(
                    "{row}: under runc (ok {}, node {has_node}):\n{}\n{}",
                    r.ok, r.stdout, r.stderr
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} row(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Item 5 of issue 16, checked against the runtimes themselves: given an environment variable
/// twice, the container's process gets one entry, the last one, from runc and from crun; nvhook
/// decides from that same last value (for `NVIDIA_*` and `NVHOOK_DEVICES_*` alike, one
/// `env_map`), so a GPU is given exactly when the process sees the request.
#[test]
fn duplicate_env_entries_the_runtimes_and_nvhook_agree_on_the_last() {
    let rows: &[(&[&str], bool)] = &[
        (
            &["NVIDIA_VISIBLE_DEVICES=void", "NVIDIA_VISIBLE_DEVICES=0"],
            true,
        ),
        (
            &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_VISIBLE_DEVICES=void"],
            false,
        ),
        (
            &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_VISIBLE_DEVICES="],
            false,
        ),
    ];
    // PID 1 is the shell the runtime started: /proc/1/environ is what it got from execve
    let script = "cat /proc/1/environ | tr '\\000' '\\n' | grep ^NVIDIA_VISIBLE_DEVICES | sed s/^/env:/; \
                  [ -e /dev/nvidia1 ] && echo node:nvidia1; echo started";
    for runtime in ["runc", "crun"] {
        for (env, gpu) in rows {
            let r = run_checked(runtime, &Spec::new(env, script)).expect_ok(runtime);
            let seen: Vec<&str> = r
                .stdout
                .lines()
                .filter_map(|l| l.strip_prefix("env:"))
                .collect();
            let last = env.last().unwrap();
            assert_eq!(
                seen,
                [*last],
                "{runtime} {env:?}: the process sees one entry, the last:\n{}",
                r.stdout
            );
            assert_eq!(
                r.has("node:nvidia1"),
                *gpu,
                "{runtime} {env:?}:\n{}\n{}",
                r.stdout,
                r.stderr
            );
        }
    }
}
