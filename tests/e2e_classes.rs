#![forbid(unsafe_code)]
//! Device classes end to end under runc: the packaged V4L2 class (packaging/classes/v4l2.toml)
//! and a test class with every kind of entry, on fake device nodes in the fixtures' dev-root.
//!
//! The fake cameras are real, harmless host devices that runtimes do not allow by default, as
//! the fake GPUs are: video0 = 1:11 (kmsg), video1 = 10:229 (fuse), both opened write-only and
//! closed. The image carries nodes with the same numbers (/probe-nodes/gpu-kmsg, gpu-fuse), so
//! the device cgroup's verdict on the camera that was NOT selected can be observed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

/// One fact per line: the class nodes the container sees, what opens, the class's files.
const REPORT: &str = "\
for n in video0 video1 video2 fakecam0 fakecam-ctl nvidia0 nvidia1 nvidiactl; do \
  [ -e /dev/$n ] && echo node:$n; done; \
probe open /dev/video0 /dev/video1 /dev/fakecam-ctl /probe-nodes/gpu-kmsg /probe-nodes/gpu-fuse /probe-nodes/other; \
probe absent libfakecam.so.1; \
[ -f /etc/fakecam/hello ] && echo conf:$(cat /etc/fakecam/hello); \
touch /etc/fakecam/x 2>/dev/null || echo conf:ro; \
probe cuda | sed 's/^/cuda:/'; true";

struct ClassFixtures {
    /// The fixtures' config with classes-dir set.
    config: PathBuf,
    /// The same with a proc-root where no NVIDIA driver is: class containers must not care.
    config_no_driver: PathBuf,
    classes_dir: PathBuf,
}

fn sh(script: &str) {
    let o = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn class_fixtures() -> &'static ClassFixtures {
    static F: OnceLock<ClassFixtures> = OnceLock::new();
    F.get_or_init(|| {
        let fx = fixtures();
        let d = fx.dir.display();
        let classes_dir = fx.dir.join("classes.d");
        std::fs::create_dir_all(&classes_dir).unwrap();
        // nodes: two cameras, a symlink that the glob must skip (udev's by-id names are links),
        // the test class's selectable and shared nodes (major 120: no driver, ENXIO when allowed)
        sh(&format!(
            "cd {d}/dev && mknod video0 c 1 11 && mknod video1 c 10 229 && ln -s video1 video2 && \
             mknod fakecam0 c 120 252 && mknod fakecam-ctl c 120 253 && chmod 666 video0 video1 fakecam*"
        ));
        // the test class's library and configuration directory
        sh(&format!(
            "mkdir -p {d}/classlib {d}/class-data && echo 'int fakecam_fn(void){{return 7;}}' > {d}/classlib/f.c && \
             gcc -shared -fPIC -Wl,-soname,libfakecam.so.1 -o {d}/classlib/libfakecam.so.1.2.3 {d}/classlib/f.c && \
             ln -sf libfakecam.so.1.2.3 {d}/classlib/libfakecam.so.1 && echo from-the-host > {d}/class-data/hello"
        ));
        let packaged = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/classes/v4l2.toml");
        std::fs::copy(packaged, classes_dir.join("v4l2.toml")).unwrap();
        std::fs::write(
            classes_dir.join("fakecam.toml"),
            format!(
                "description = \"test class\"\ndevices = [\"fakecam[0-9]\"]\n\
                 shared-devices = [\"fakecam-ctl\"]\nlibraries = [\"{d}/classlib/libfakecam.so.1\"]\n\
                 cgroup-rules = [\"c 121:7\"]\n\
                 [[mounts]]\nsource = \"{d}/class-data\"\ntarget = \"/etc/fakecam\"\n"
            ),
        )
        .unwrap();
        std::fs::write(
            classes_dir.join("privcam.toml"),
            "devices = [\"video*\"]\nprivileged-only = true\n",
        )
        .unwrap();
        let base = std::fs::read_to_string(&fx.config).unwrap();
        let config = fx.dir.join("config-classes.toml");
        std::fs::write(
            &config,
            format!("{base}classes-dir = \"{}\"\n", classes_dir.display()),
        )
        .unwrap();
        let config_no_driver = fx.dir.join("config-classes-no-driver.toml");
        std::fs::write(
            &config_no_driver,
            format!(
                "{}classes-dir = \"{}\"\n",
                base.replace(&format!("proc-root = \"{d}/proc\""), "proc-root = \"/nonexistent\""),
                classes_dir.display()
            ),
        )
        .unwrap();
        ClassFixtures {
            config,
            config_no_driver,
            classes_dir,
        }
    })
}

fn spec<'a>(env: &[&str], script: &str) -> Spec<'a> {
    let mut s = Spec::new(env, script);
    s.config = Some(class_fixtures().config.clone());
    s
}

fn nodes(r: &Run) -> Vec<&str> {
    r.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("node:"))
        .collect()
}

#[test]
fn an_index_gives_that_camera_and_the_cgroup_denies_the_other() {
    let r = run_checked("runc", &spec(&["NVHOOK_DEVICES_V4L2=1"], REPORT)).expect_ok("runc");
    assert_eq!(nodes(&r), ["video1"], "{}", r.stdout);
    assert!(r.has("/dev/video1: ok"), "{}", r.stdout);
    assert!(
        r.has("/probe-nodes/gpu-fuse: ok"),
        "video1's numbers are granted:\n{}",
        r.stdout
    );
    assert!(
        r.has("/probe-nodes/gpu-kmsg: EPERM") && r.has("/dev/video0: ENOENT"),
        "the other camera is neither there nor allowed:\n{}",
        r.stdout
    );
    assert!(r.has("/probe-nodes/other: EPERM"), "{}", r.stdout);
    assert!(
        r.has("cuda:cuda: dlopen failed"),
        "no NVIDIA files:\n{}",
        r.stdout
    );
}

#[test]
fn names_and_all() {
    let r =
        run_checked("runc", &spec(&["NVHOOK_DEVICES_V4L2=/dev/video0"], REPORT)).expect_ok("runc");
    assert_eq!(nodes(&r), ["video0"], "{}", r.stdout);
    assert!(
        r.has("/dev/video0: ok") && r.has("/probe-nodes/gpu-fuse: EPERM"),
        "{}",
        r.stdout
    );
    let r = run_checked("runc", &spec(&["NVHOOK_DEVICES_V4L2=all"], REPORT)).expect_ok("runc");
    assert_eq!(
        nodes(&r),
        ["video0", "video1"],
        "all matched nodes, not the video2 symlink:\n{}",
        r.stdout
    );
    assert!(
        r.has("/dev/video0: ok") && r.has("/dev/video1: ok"),
        "{}",
        r.stdout
    );
}

#[test]
fn shared_nodes_libraries_mounts_and_extra_rules() {
    let _g = serial();
    let b = bundle(&spec(&["NVHOOK_DEVICES_FAKECAM=none"], REPORT));
    let before = host_mounts();
    let r = run_oci("runc", &b).expect_ok("runc fakecam");
    assert_eq!(before, host_mounts(), "the host's mount table changed");
    assert_eq!(
        nodes(&r),
        ["fakecam-ctl"],
        "none: the shared node only:\n{}",
        r.stdout
    );
    assert!(
        r.has("/dev/fakecam-ctl: ENXIO"),
        "shared node granted (no driver behind it):\n{}",
        r.stdout
    );
    assert!(
        r.has("/probe-nodes/other: ENXIO"),
        "the class's extra cgroup rule c 121:7 is granted:\n{}",
        r.stdout
    );
    assert!(
        r.has("libfakecam.so.1: present"),
        "the class library resolves by soname:\n{}",
        r.stdout
    );
    assert!(
        r.has("conf:from-the-host") && r.has("conf:ro"),
        "{}",
        r.stdout
    );
    let text = ldcache_listing(&b);
    assert!(
        text.contains(
            "libfakecam.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libfakecam.so.1"
        ),
        "{text}"
    );
    assert!(
        text.contains("libc.so.6 (libc6,x86-64)"),
        "image entries kept:\n{text}"
    );
}

#[test]
fn a_class_and_gpus_together() {
    // GPU index 1 is /dev/nvidia0 (10:229); camera video0 is 1:11
    let r = run_checked(
        "runc",
        &spec(
            &["NVIDIA_VISIBLE_DEVICES=1", "NVHOOK_DEVICES_V4L2=video0"],
            REPORT,
        ),
    )
    .expect_ok("runc");
    assert_eq!(
        nodes(&r),
        ["video0", "nvidia0", "nvidiactl"],
        "{}",
        r.stdout
    );
    assert!(
        r.has("/probe-nodes/gpu-kmsg: ok") && r.has("/probe-nodes/gpu-fuse: ok"),
        "{}",
        r.stdout
    );
    assert!(r.has("cuInit=0 devices=1"), "{}", r.stdout);
}

#[test]
fn a_class_needs_no_nvidia_driver() {
    let cf = class_fixtures();
    let cfg = cf.config_no_driver.to_str().unwrap();
    // this config really has no driver: a GPU request fails with it
    let b = bundle(&Spec::new(&["NVIDIA_VISIBLE_DEVICES=all"], "true"));
    let o = Command::new(nvhook())
        .args(["--config", cfg, "plan", "--bundle"])
        .arg(&b.dir)
        .output()
        .unwrap();
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no NVIDIA driver"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut s = spec(&["NVHOOK_DEVICES_V4L2=1"], REPORT);
    s.config = Some(cf.config_no_driver.clone());
    let r = run_checked("runc", &s).expect_ok("runc without a driver");
    assert_eq!(nodes(&r), ["video1"], "{}", r.stdout);
    assert!(r.has("/dev/video1: ok"), "{}", r.stdout);
}

fn refused(env: &[&str], config: Option<PathBuf>) -> Run {
    let mut s = spec(env, "echo started");
    if config.is_some() {
        s.config = config;
    }
    let r = run_checked("runc", &s);
    assert!(!r.ok && !r.has("started"), "{env:?}: {}", r.stdout);
    // runc quotes the hook's stderr inside its own message
    Run {
        stderr: r.stderr.replace("\\\"", "\""),
        ..r
    }
}

#[test]
fn bad_values_and_unknown_classes_stop_the_container_with_a_clear_message() {
    let r = refused(&["NVHOOK_DEVICES_V4L2=5"], None);
    assert!(
        r.stderr.contains(
            "NVHOOK_DEVICES_V4L2: unknown device \"5\"; this host has 0=video0, 1=video1"
        ),
        "{}",
        r.stderr
    );
    for hostile in ["../../dev/null", "video2", "null", "/dev/../dev/video1"] {
        let r = refused(&[&format!("NVHOOK_DEVICES_V4L2={hostile}")], None);
        assert!(
            r.stderr.contains("unknown device"),
            "{hostile}: {}",
            r.stderr
        );
    }
    let r = refused(&["NVHOOK_DEVICES_V4L2=all,1"], None);
    assert!(r.stderr.contains("cannot be combined"), "{}", r.stderr);
    let r = refused(&["NVHOOK_DEVICES_SCANNER=0"], None);
    assert!(
        r.stderr.contains("NVHOOK_DEVICES_SCANNER: no device class")
            && r.stderr.contains("v4l2 (NVHOOK_DEVICES_V4L2)"),
        "{}",
        r.stderr
    );
}

/// A config whose classes-dir holds the packaged V4L2 class and a broken class file.
fn broken_classes_config() -> &'static PathBuf {
    static C: OnceLock<PathBuf> = OnceLock::new();
    C.get_or_init(|| {
        let fx = fixtures();
        let cf = class_fixtures();
        let dir = fx.dir.join("classes-broken.d");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(cf.classes_dir.join("v4l2.toml"), dir.join("v4l2.toml")).unwrap();
        std::fs::write(dir.join("zz-bad.toml"), "devices = [\"../sd*\"]\n").unwrap();
        let cfg = fx.dir.join("config-classes-broken.toml");
        std::fs::write(
            &cfg,
            std::fs::read_to_string(&fx.config).unwrap()
                + &format!("classes-dir = \"{}\"\n", dir.display()),
        )
        .unwrap();
        cfg
    })
}

#[test]
fn a_broken_class_file_stops_only_class_containers() {
    let cfg = broken_classes_config();
    let r = refused(&["NVHOOK_DEVICES_V4L2=0"], Some(cfg.clone()));
    assert!(
        r.stderr.contains("invalid device class file")
            && r.stderr.contains("zz-bad.toml")
            && r.stderr.contains("devices:"),
        "{}",
        r.stderr
    );
    let mut s = spec(&["NVIDIA_VISIBLE_DEVICES=0"], REPORT);
    s.config = Some(cfg.clone());
    let r = run_checked("runc", &s).expect_ok("a GPU container ignores the class files");
    assert!(r.has("cuInit=0 devices=1"), "{}", r.stdout);
}

#[test]
fn a_privileged_only_class_is_ignored_in_an_unprivileged_container() {
    let r = run_checked("runc", &spec(&["NVHOOK_DEVICES_PRIVCAM=0"], REPORT)).expect_ok("runc");
    assert!(nodes(&r).is_empty(), "{}", r.stdout);
    assert!(r.has("/probe-nodes/gpu-kmsg: EPERM"), "{}", r.stdout);
    let mut s = spec(&["NVHOOK_DEVICES_PRIVCAM=0"], REPORT);
    s.privileged = true;
    let r = run_checked("runc", &s).expect_ok("runc privileged");
    assert_eq!(nodes(&r), ["video0"], "{}", r.stdout);
    assert!(r.has("/dev/video0: ok"), "{}", r.stdout);
}

#[test]
fn under_crun_too() {
    let r = run_checked("crun", &spec(&["NVHOOK_DEVICES_V4L2=1"], REPORT)).expect_ok("crun");
    assert_eq!(nodes(&r), ["video1"], "{}", r.stdout);
    assert!(
        r.has("/dev/video1: ok") && r.has("/probe-nodes/gpu-kmsg: EPERM"),
        "{}",
        r.stdout
    );
}

#[test]
fn doctor_checks_the_class_files() {
    let doctor = |cfg: &Path| {
        let o = Command::new(nvhook())
            .args(["--config", cfg.to_str().unwrap(), "doctor", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let found: Vec<(String, String)> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["check"] == "classes")
            .map(|f| {
                (
                    f["status"].as_str().unwrap().to_owned(),
                    f["message"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        (o.status.success(), found)
    };
    let (_, found) = doctor(&class_fixtures().config);
    assert!(
        found.contains(&(
            "ok".into(),
            "class v4l2 (NVHOOK_DEVICES_V4L2): video0, video1".into()
        )) && found.contains(&(
            "ok".into(),
            "class fakecam (NVHOOK_DEVICES_FAKECAM): fakecam0".into()
        )),
        "{found:?}"
    );
    let (ok, found) = doctor(broken_classes_config());
    assert!(!ok, "a broken class file is an error-level finding");
    assert!(
        found.len() == 1 && found[0].0 == "error" && found[0].1.contains("zz-bad.toml"),
        "{found:?}"
    );
}

#[test]
fn void_and_unset_change_nothing() {
    for env in [
        &[][..],
        &["NVHOOK_DEVICES_V4L2=void"],
        &["NVHOOK_DEVICES_V4L2="],
    ] {
        let _g = serial();
        let b = bundle(&spec(env, REPORT));
        let tree = |p: &Path| file_tree(p);
        let before = tree(&b.rootfs());
        let r = run_oci("runc", &b).expect_ok("runc");
        assert!(nodes(&r).is_empty(), "{env:?}: {}", r.stdout);
        assert!(r.has("/probe-nodes/gpu-fuse: EPERM"), "{}", r.stdout);
        assert_eq!(before, tree(&b.rootfs()), "{env:?}: the rootfs was changed");
    }
}

#[test]
fn plan_and_list_show_the_classes() {
    let cf = class_fixtures();
    let cfg = cf.config.to_str().unwrap();
    let b = bundle(&spec(
        &["NVHOOK_DEVICES_V4L2=1", "NVHOOK_DEVICES_FAKECAM=all"],
        "true",
    ));
    let o = Command::new(nvhook())
        .args(["--config", cfg, "plan", "--bundle"])
        .arg(&b.dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let devs: Vec<&str> = plan["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    // class-file order (fakecam.toml before v4l2.toml), selected nodes before shared ones
    assert_eq!(devs, ["/dev/fakecam0", "/dev/fakecam-ctl", "/dev/video1"]);
    assert_eq!(plan["summary"]["requested"], false, "no GPU asked");
    let classes = plan["summary"]["classes"].as_array().unwrap();
    assert_eq!(classes[1]["class"], "v4l2");
    assert_eq!(classes[1]["devices"][0], "video1");
    let rules: Vec<String> = plan["cgroup_rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{} {}:{}", r["type"], r["major"], r["minor"]))
        .collect();
    assert_eq!(
        rules,
        [
            "\"c\" 120:252",
            "\"c\" 120:253",
            "\"c\" 121:7",
            "\"c\" 10:229"
        ]
    );

    let o = Command::new(nvhook())
        .args(["--config", cfg, "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        text.contains("class v4l2 (NVHOOK_DEVICES_V4L2): V4L2 cameras")
            && text.contains("  0: /dev/video0 (c 1:11)\n  1: /dev/video1 (c 10:229)\n")
            && text.contains("shared: /dev/fakecam-ctl (c 120:253)")
            && text.contains("cgroup: c 121:7 rwm"),
        "{text}"
    );
    assert!(
        text.contains("GPU 0: "),
        "the GPUs are still listed:\n{text}"
    );
    // without a driver the classes are still listed
    let o = Command::new(nvhook())
        .args([
            "--config",
            cf.config_no_driver.to_str().unwrap(),
            "list",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        list["nvidia_error"]
            .as_str()
            .unwrap()
            .contains("no NVIDIA driver")
    );
    let v4l2 = list["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "v4l2")
        .unwrap();
    assert_eq!(v4l2["devices"][1]["name"], "video1");
}
