#![forbid(unsafe_code)]
//! CDI end to end: `nvhook cdi generate` on the fake driver tree, then podman (which reads CDI
//! specs from /etc/cdi and /var/run/cdi only) started with `--device nvidia.com/gpu=...` and no
//! nvhook prestart hook registered: the spec alone (and its createRuntime hook, `nvhook cdi-hook`)
//! must give a working GPU container.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

use common::*;
use serde_json::Value;

const REPORT: &str = SHORT_REPORT;
const CDI_DIR: &str = "/var/run/cdi";
const MIG_B: &str = "MIG-bbbbbbbb-1111-2222-3333-444444444444";

fn generate(extra: &[&str]) -> String {
    let o = Command::new(nvhook())
        .arg("--config")
        .arg(&fixtures().config)
        .args(["cdi", "generate", "--output", "-"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cdi generate: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The spec generated from the fixtures (once per test binary), as text.
fn spec_text() -> &'static str {
    static S: OnceLock<String> = OnceLock::new();
    S.get_or_init(|| generate(&[]))
}

/// The spec installed in podman's CDI directory while a test runs. podman has no option for
/// another directory, so the file has a name of this process and is removed when dropped; a
/// file left by a killed run (its pid gone) is removed first. One installed spec at a time.
struct Installed {
    path: PathBuf,
    _lock: MutexGuard<'static, ()>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn install_spec(text: &str) -> Installed {
    static LOCK: Mutex<()> = Mutex::new(());
    let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::create_dir_all(CDI_DIR).unwrap();
    for e in std::fs::read_dir(CDI_DIR).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("nvhook-e2e-")
            .and_then(|r| r.strip_suffix(".json"))
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let path = Path::new(CDI_DIR).join(format!("nvhook-e2e-{}.json", std::process::id()));
    std::fs::write(&path, text).unwrap();
    Installed { path, _lock: lock }
}

/// podman with `--device` for each CDI name, without nvhook's prestart hook.
fn run_cdi(image: &str, devices: &[&str], extra: &[&str], script: &str) -> Run {
    let _spec = install_spec(spec_text());
    let mut args: Vec<String> = Vec::new();
    for d in devices {
        args.push("--device".into());
        args.push(format!("nvidia.com/gpu={d}"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    podman().run_checked_hooks(false, image, &[], &args, script)
}

#[test]
fn generated_spec_names_every_device_with_host_paths() {
    let fx = fixtures();
    let spec: Value = serde_json::from_str(spec_text()).unwrap();
    assert_eq!(spec["cdiVersion"], "0.5.0");
    assert_eq!(spec["kind"], "nvidia.com/gpu");
    let names: Vec<&str> = spec["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "all",
            "0",
            GPU0_UUID,
            "1",
            GPU1_UUID,
            "1:0",
            "MIG-aaaaaaaa-1111-2222-3333-444444444444",
            "1:1",
            MIG_B
        ]
    );
    let dev = |name: &str| {
        spec["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .unwrap()["containerEdits"]
            .clone()
    };
    // index 0 is the GPU with minor 1; its node comes from the config's dev-root
    assert_eq!(
        dev("0")["deviceNodes"],
        serde_json::json!([{"path": "/dev/nvidia1", "hostPath": fx.dir.join("dev/nvidia1"),
            "type": "c", "major": 1, "minor": 11}])
    );
    assert_eq!(dev("0"), dev(GPU0_UUID));
    let mig_edits = dev(MIG_B);
    let mig: Vec<&str> = mig_edits["deviceNodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        mig,
        [
            "/dev/nvidia0",
            "/dev/nvidia-caps/nvidia-cap21",
            "/dev/nvidia-caps/nvidia-cap22"
        ]
    );
    // the spec-wide edits: control nodes, driver files from the driver root, the hook
    let common = &spec["containerEdits"];
    let text = common.to_string();
    assert!(text.contains("/dev/nvidiactl") && !text.contains("\"/dev/nvidia0\""));
    let driver = fx.dir.join("driver");
    let libcuda = common["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            m["containerPath"]
                .as_str()
                .unwrap()
                .ends_with(&format!("libcuda.so.{}", fx.version))
        })
        .expect("libcuda mounted");
    assert!(
        Path::new(libcuda["hostPath"].as_str().unwrap()).starts_with(&driver),
        "{libcuda}"
    );
    assert_eq!(
        libcuda["options"],
        serde_json::json!(["bind", "ro", "nosuid", "nodev"])
    );
    assert_eq!(
        common["env"],
        serde_json::json!(["NVIDIA_VISIBLE_DEVICES=void"])
    );
    let hook = &common["hooks"][0];
    assert_eq!(hook["hookName"], "createRuntime");
    assert_eq!(
        Path::new(hook["path"].as_str().unwrap()),
        Path::new(nvhook()).canonicalize().unwrap()
    );
    let args: Vec<&str> = hook["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[..2], ["nvhook", "cdi-hook"]);
    assert!(
        args.contains(&"libcuda.so.1=/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        "{args:?}"
    );
}

#[test]
fn written_atomically_with_mode_0644() {
    use std::os::unix::fs::PermissionsExt;
    let fx = fixtures();
    let dir = fx.dir.join("cdi-out");
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.join("sub/nvhook.json");
    for _ in 0..2 {
        // umask 077 must not make the spec unreadable to engines running as other users
        let st = Command::new("sh")
            .arg("-c")
            .arg(r#"umask 077; exec "$0" --config "$1" cdi generate --output "$2""#)
            .arg(nvhook())
            .arg(&fx.config)
            .arg(&out)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    }
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), spec_text());
    let left: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["nvhook.json"], "no temporary file left behind");
}

#[test]
fn all_gpus_through_cdi_alone() {
    let script = format!("{REPORT}; ls -l /usr/lib/x86_64-linux-gnu/libcuda.so.1");
    let r = run_cdi(DEBIAN_IMAGE, &["all"], &[], &script).expect_ok("podman --device all");
    assert!(
        r.has("node:nvidia0") && r.has("node:nvidia1") && r.has("node:nvidiactl"),
        "{}",
        r.stdout
    );
    // libcuda found by soname through the linker cache the hook wrote, nvidia-smi runs
    assert!(
        r.has("cuInit=0 devices=2") && r.has("smi:ok"),
        "{}",
        r.stdout
    );
    assert!(r.has("/probe-nodes/other: EPERM"), "{}", r.stdout);
    assert!(
        r.has(&format!(
            "libcuda.so.1 -> libcuda.so.{}",
            fixtures().version
        )),
        "the soname link made by the hook:\n{}",
        r.stdout
    );
}

#[test]
fn one_gpu_by_index_and_by_uuid() {
    let r = run_cdi(DEBIAN_IMAGE, &["0"], &[], REPORT).expect_ok("podman --device 0");
    assert!(
        r.has("node:nvidia1") && !r.has("node:nvidia0") && r.has("cuda-rc:0"),
        "{}",
        r.stdout
    );
    assert!(
        r.has("/probe-nodes/gpu-kmsg: ok") && r.has("/probe-nodes/gpu-fuse: EPERM"),
        "the other GPU is denied by the device cgroup:\n{}",
        r.stdout
    );
    let r = run_cdi(DEBIAN_IMAGE, &[GPU1_UUID], &[], REPORT).expect_ok("podman --device UUID");
    assert!(
        r.has("node:nvidia0") && !r.has("node:nvidia1") && r.has("smi:ok"),
        "{}",
        r.stdout
    );
    assert!(r.has("/probe-nodes/gpu-kmsg: EPERM"), "{}", r.stdout);
}

#[test]
fn read_only_non_debian_and_runc() {
    let r =
        run_cdi(DEBIAN_IMAGE, &["all"], &["--read-only"], REPORT).expect_ok("podman --read-only");
    assert!(r.has("cuda-rc:0") && r.has("smi:ok"), "{}", r.stdout);
    // an image without the multiarch directory: the libraries go where the host keeps them, and
    // the linker cache makes them found
    let r = run_cdi("localhost/nvhook-test:lib64", &["all"], &[], REPORT)
        .expect_ok("podman lib64 image");
    assert!(
        r.has("path=/usr/lib/x86_64-linux-gnu/libcuda.so.1") && r.has("cuda-rc:0"),
        "{}",
        r.stdout
    );
    let r = run_cdi(DEBIAN_IMAGE, &["1"], &["--runtime", "runc"], REPORT)
        .expect_ok("podman --runtime runc");
    assert!(
        r.has("node:nvidia0") && !r.has("node:nvidia1") && r.has("smi:ok"),
        "{}",
        r.stdout
    );
}

#[test]
fn mig_device_by_index_and_uuid() {
    let script = "ls /dev/nvidia-caps; probe open /dev/nvidia-caps/nvidia-cap21 /dev/nvidia-caps/nvidia-cap12; true";
    for name in ["1:1", MIG_B] {
        let r = run_cdi(DEBIAN_IMAGE, &[name], &[], script).expect_ok(name);
        assert!(
            r.has("nvidia-cap21") && r.has("nvidia-cap22") && !r.has("nvidia-cap13"),
            "{name}: {}",
            r.stdout
        );
        assert!(
            r.has("/dev/nvidia-caps/nvidia-cap21: ENXIO"),
            "{name}: granted in the device cgroup:\n{}",
            r.stdout
        );
    }
}

#[test]
fn prestart_hook_stands_aside_for_cdi() {
    // nvhook's prestart hook registered as well, and the image asks for all GPUs: the spec's
    // NVIDIA_VISIBLE_DEVICES=void keeps the hook out, so the container has GPU 0 only
    let _spec = install_spec(spec_text());
    let r = podman()
        .run_checked(
            DEBIAN_IMAGE,
            &["NVIDIA_VISIBLE_DEVICES=all"],
            &["--device", "nvidia.com/gpu=0"],
            REPORT,
        )
        .expect_ok("podman with both");
    assert!(
        r.has("node:nvidia1") && !r.has("node:nvidia0") && r.has("cuda-rc:0"),
        "{}",
        r.stdout
    );
}

#[test]
fn cuda_forward_compat_in_the_image_is_used() {
    static IMPORTED: OnceLock<()> = OnceLock::new();
    IMPORTED.get_or_init(|| {
        let o = podman()
            .cmd()
            .arg("import")
            .arg(fixtures().dir.join("rootfs-compat.tar"))
            .arg("localhost/nvhook-test:compat")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    });
    let r = run_cdi(
        "localhost/nvhook-test:compat",
        &["all"],
        &[],
        "probe cuda; nvidia-smi; cat /etc/ld.so.conf.d/00-nvhook-cuda-compat.conf",
    )
    .expect_ok("compat image");
    assert!(
        r.has("path=/usr/local/cuda/compat/libcuda.so.1 version=600.1.2 cuInit=0"),
        "{}",
        r.stdout
    );
    assert!(r.has("NVIDIA-SMI fake"), "{}", r.stdout);
    // the Debian image's compat libcuda is older than the host's: the host's is used
    let r = run_cdi(DEBIAN_IMAGE, &["all"], &[], "probe cuda").expect_ok("older compat");
    assert!(
        r.has(&format!("version={}", fixtures().version)),
        "{}",
        r.stdout
    );
}

#[test]
fn cdi_hook_refuses_a_state_without_a_host_pid() {
    // createContainer-style states (runc passes pid 1, crun pid 0): never enter pid 1's namespace
    let fx = fixtures();
    let bundle = fx.dir.join("cdi-hook-bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#,
    )
    .unwrap();
    for pid in [0, 1] {
        let state = format!(
            r#"{{"ociVersion":"1.0.2","id":"x","status":"creating","pid":{pid},"bundle":"{}"}}"#,
            bundle.display()
        );
        let mut c = Command::new(nvhook())
            .args([
                "cdi-hook",
                "--ldcache",
                "libcuda.so.1=/usr/lib/libcuda.so.1",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(state.as_bytes()).unwrap();
        let o = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "pid {pid}: {err}");
        assert!(
            err.contains(&format!("pid is {pid}")) && err.contains("createRuntime"),
            "{err}"
        );
    }
    assert!(!bundle.join("rootfs").exists(), "nothing was created");
}

#[test]
fn every_capability_dri_nodes_and_links_per_device() {
    let spec = generate(&["--capabilities", "all"]);
    let _spec = install_spec(&spec);
    // the same GPU named twice (index and UUID): the engine merges the edits, the hook's links
    // are made twice without harm
    let r = podman()
        .run_checked_hooks(
            false,
            DEBIAN_IMAGE,
            &[],
            &[
                "--device",
                "nvidia.com/gpu=0",
                "--device",
                &format!("nvidia.com/gpu={GPU0_UUID}"),
            ],
            "ls -l /dev/dri /dev/dri/by-path /usr/lib/i386-linux-gnu; \
             cat /etc/vulkan/icd.d/nvidia_icd.json; probe cuda",
        )
        .expect_ok("podman, all capabilities");
    assert!(
        r.has("pci-0000:3b:00.0-card -> ../card1")
            && r.has("pci-0000:3b:00.0-render -> ../renderD129"),
        "{}",
        r.stdout
    );
    assert!(r.has("226,   1") && r.has("renderD129"), "{}", r.stdout);
    assert!(
        r.has(&format!(
            "libcuda.so.1 -> libcuda.so.{}",
            fixtures().version
        )) && r.has("libGLX_nvidia.so.0")
            && r.has("cuInit=0 devices=1"),
        "{}",
        r.stdout
    );
}

#[test]
fn runc_alone_through_the_kits_cdi_injector() {
    // tests/gpu/cdi-inject.py applies the spec to a bundle as an engine would: runc alone, with
    // no nvhook prestart hook, starts the container the GPU kit starts on a real driver
    require_tool("python3", "python3");
    let fx = fixtures();
    let spec = fx.dir.join("cdi-inject-spec.json");
    std::fs::write(&spec, spec_text()).unwrap();
    let mut s = Spec::new(&["NVIDIA_VISIBLE_DEVICES=all"], REPORT);
    s.stage = Stage::None;
    let _g = serial();
    let b = bundle(&s);
    let inject = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gpu/cdi-inject.py");
    let o = Command::new("python3")
        .arg(&inject)
        .arg(&spec)
        .arg(&b.dir)
        .args(["0", "1:1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before = host_mounts();
    let r = run_oci("runc", &b).expect_ok("runc with the injected spec");
    assert_eq!(before, host_mounts(), "the host's mount table changed");
    // GPU 0 (node nvidia1) and MIG 1:1 (node nvidia0 and its caps); the image's
    // NVIDIA_VISIBLE_DEVICES=all was replaced by void, so nothing else came in
    assert!(
        r.has("node:nvidia0") && r.has("node:nvidia1") && r.has("cuda-rc:0") && r.has("smi:ok"),
        "{}",
        r.stdout
    );
    assert!(r.has("/probe-nodes/other: EPERM"), "{}", r.stdout);
    let o = Command::new("python3")
        .arg(&inject)
        .arg(&spec)
        .arg(&b.dir)
        .arg("7")
        .output()
        .unwrap();
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("nvidia.com/gpu=7"),
        "an unknown device is refused"
    );
}

#[test]
fn command_line_errors_are_clear() {
    let fx = fixtures();
    let cases: &[(&[&str], &str)] = &[
        (&["cdi"], "usage: nvhook cdi generate"),
        (&["cdi", "list"], "unknown cdi command"),
        (&["cdi", "generate", "--bogus"], "--bogus"),
        (&["cdi", "generate", "--cdi-version", "0.4.0"], "0.5.0"),
        (
            &["cdi", "generate", "-o", "-", "--kind", "gpu"],
            "vendor.com/class",
        ),
        (
            &["cdi", "generate", "-o", "-", "--capabilities", "warp"],
            "warp",
        ),
        (&["cdi-hook", "--link", "x"], "NAME=VALUE"),
    ];
    for (args, want) in cases {
        let o = Command::new(nvhook())
            .arg("--config")
            .arg(&fx.config)
            .args(*args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(
            err.starts_with("nvhook: error:") && err.contains(want),
            "{args:?}: {err}"
        );
        assert!(o.stdout.is_empty(), "{args:?}: nothing on stdout");
    }
    // help names both commands
    let o = Command::new(nvhook()).arg("help").output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("cdi generate") && help.contains("cdi-hook"),
        "{help}"
    );
}
