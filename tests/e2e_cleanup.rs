//! The rootfs is left as it was found: 20 starts of mixed requests on one rootfs directory (a
//! runc/crun bundle reused from run to run, `podman run --rootfs DIR`), with nvhook's poststop
//! hook registered, leave the rootfs byte for byte what it was (the linker cache included), and
//! no record in /run/nvhook.

#![forbid(unsafe_code)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

/// What each run prints: the short report, and whether the image has a `nvidia-smi` file (the
/// bug: an empty one left by a utility container, "Permission denied" for the next).
const SCRIPT: &str = "\
for n in nvidia0 nvidia1 nvidiactl; do [ -e /dev/$n ] && echo node:$n; done; \
probe cuda; echo cuda-rc:$?; nvidia-smi >/dev/null 2>&1 && echo smi:ok; \
[ -e /usr/bin/nvidia-smi ] && echo smi-file; [ -d /opt/cleancls ] && echo class-dir; true";

/// The requests, in turn; what each must show, and must not.
const MIX: &[(&[&str], &[&str], &[&str])] = &[
    (
        &["NVIDIA_VISIBLE_DEVICES=all"],
        &["cuda-rc:0", "smi:ok"],
        &[],
    ),
    (
        &[
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_DRIVER_CAPABILITIES=compute",
        ],
        &["cuda-rc:0"],
        &["smi-file", "smi:ok"],
    ),
    (
        &["NVIDIA_VISIBLE_DEVICES=0"],
        &["node:nvidia1", "cuda-rc:0"],
        &["node:nvidia0"],
    ),
    (&[], &[], &["node:", "smi-file"]),
    (
        &[
            "NVIDIA_VISIBLE_DEVICES=1",
            "NVIDIA_DRIVER_CAPABILITIES=utility",
        ],
        &["node:nvidia0", "smi:ok"],
        &["node:nvidia1"],
    ),
    (
        &["NVIDIA_VISIBLE_DEVICES=none"],
        &["node:nvidiactl", "smi:ok"],
        &["node:nvidia0", "node:nvidia1"],
    ),
    (
        &["NVHOOK_DEVICES_CLEANCLS=all"],
        &["class-dir"],
        &["smi-file"],
    ),
];

const STARTS: usize = 20;

/// The fixtures' config, with a device class whose mount target the image does not have.
fn config() -> &'static PathBuf {
    static C: OnceLock<PathBuf> = OnceLock::new();
    C.get_or_init(|| {
        let fx = fixtures();
        let classes = fx.dir.join("classes-cleanup.d");
        std::fs::create_dir_all(&classes).unwrap();
        std::fs::write(
            classes.join("cleancls.toml"),
            format!(
                "devices = [\"nvidiactl\"]\n[[mounts]]\nsource = \"{}/driver\"\ntarget = \"/opt/cleancls\"\n",
                fx.dir.display()
            ),
        )
        .unwrap();
        let cfg = fx.dir.join("config-cleanup.toml");
        let base = std::fs::read_to_string(&fx.config).unwrap();
        std::fs::write(&cfg, format!("{base}classes-dir = \"{}\"\n", classes.display())).unwrap();
        cfg
    })
}

/// The records in /run/nvhook whose rootfs is `rootfs`.
fn records_on(rootfs: &Path) -> Vec<String> {
    let Ok(d) = std::fs::read_dir(RECORD_DIR) else {
        return Vec::new();
    };
    d.flatten()
        .filter_map(|e| {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            (v["rootfs"].as_str() == Some(rootfs.to_str()?))
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

fn check(i: usize, r: &Run) {
    let (env, want, not) = MIX[i % MIX.len()];
    assert!(
        r.ok,
        "start {i} {env:?} failed:\n{}\n{}",
        r.stdout, r.stderr
    );
    for w in want {
        assert!(r.has(w), "start {i} {env:?}: no {w}:\n{}", r.stdout);
    }
    for n in not {
        assert!(!r.has(n), "start {i} {env:?}: {n}:\n{}", r.stdout);
    }
}

fn set_env(b: &Bundle, env: &[&str]) {
    let path = b.dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut e =
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()];
    e.extend(env.iter().map(|s| s.to_string()));
    c["process"]["env"] = serde_json::json!(e);
    std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
}

/// One bundle, its rootfs reused by 20 containers of `runtime`.
fn reused_bundle(runtime: &str) {
    let _g = serial();
    let mut s = Spec::new(&[], SCRIPT);
    s.poststop = true;
    s.config = Some(config().clone());
    let mut b = bundle(&s);
    let base_id = b.id.clone();
    // a first run that asks for nothing: what the runtime itself leaves (mount points of /proc,
    // /dev, ...) is in the reference
    b.id = format!("{base_id}-warm");
    run_oci(runtime, &b).expect_ok("warm-up run");
    let reference = rootfs_digest(&b.rootfs());
    let cache = std::fs::read(b.rootfs().join("etc/ld.so.cache")).unwrap();
    for i in 0..STARTS {
        set_env(&b, MIX[i % MIX.len()].0);
        b.id = format!("{base_id}-{i}");
        let r = run_oci(runtime, &b);
        check(i, &r);
        assert!(
            records_of(&b.id).is_empty(),
            "start {i}: {runtime} ran the poststop hook, yet the record stays: {:?}",
            records_of(&b.id)
        );
    }
    assert_eq!(
        std::fs::read(b.rootfs().join("etc/ld.so.cache")).unwrap(),
        cache
    );
    let after = rootfs_digest(&b.rootfs());
    assert_eq!(
        reference,
        after,
        "the rootfs changed: {:?}",
        after
            .iter()
            .filter(|l| !reference.contains(l))
            .collect::<Vec<_>>()
    );
    assert!(records_on(&b.rootfs()).is_empty());
}

#[test]
fn runc_leaves_a_reused_rootfs_as_it_was() {
    reused_bundle("runc");
}

#[test]
fn crun_leaves_a_reused_rootfs_as_it_was() {
    reused_bundle("crun");
}

#[test]
fn podman_rootfs_dir_is_left_as_it_was() {
    let p = podman();
    let fx = fixtures();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cleanup-podman-rootfs");
    let _ = std::fs::remove_dir_all(&dir);
    let st = Command::new("cp")
        .arg("-a")
        .arg(fx.dir.join("rootfs-debian"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    let rootfs = dir.to_str().unwrap();
    // podman's hooks dir holds the packaged registration (prestart and poststop), pointed at the
    // fixtures' config; the class config is passed the same way
    let hooks = std::env::temp_dir().join(format!("nvhook-cleanup-hooks-{}", std::process::id()));
    std::fs::create_dir_all(&hooks).unwrap();
    let mut reg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks.d/nvhook.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(reg["stages"], serde_json::json!(["prestart", "poststop"]));
    reg["hook"]["path"] = serde_json::json!(nvhook());
    reg["hook"]["args"] = serde_json::json!(["nvhook", "--config", config(), "prestart"]);
    std::fs::write(hooks.join("nvhook.json"), serde_json::to_vec(&reg).unwrap()).unwrap();
    let run = |env: &[&str]| {
        let hooks_arg = hooks.to_str().unwrap();
        p.run_hooks(
            false,
            rootfs,
            env,
            &["--hooks-dir", hooks_arg, "--rootfs"],
            SCRIPT,
        )
    };
    let _g = serial();
    run(&[]).expect_ok("warm-up run");
    let reference = rootfs_digest(&dir);
    let cache = std::fs::read(dir.join("etc/ld.so.cache")).unwrap();
    for i in 0..STARTS {
        check(i, &run(MIX[i % MIX.len()].0));
    }
    assert_eq!(std::fs::read(dir.join("etc/ld.so.cache")).unwrap(), cache);
    let after = rootfs_digest(&dir);
    assert_eq!(
        reference,
        after,
        "the rootfs changed: {:?}",
        after
            .iter()
            .filter(|l| !reference.contains(l))
            .collect::<Vec<_>>()
    );
    assert!(records_on(&dir).is_empty(), "{:?}", records_on(&dir));
    let _ = std::fs::remove_dir_all(&hooks);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The bug as it was seen on the GPU host: a utility container, then a compute-only one on the
/// same rootfs, without poststop: the second finds an empty nvidia-smi. With it: none.
#[test]
fn a_compute_only_container_after_a_utility_one_finds_no_nvidia_smi() {
    let _g = serial();
    let mut ids = Vec::new();
    for poststop in [false, true] {
        let mut s = Spec::new(&["NVIDIA_VISIBLE_DEVICES=all"], SCRIPT);
        s.poststop = poststop;
        let mut b = bundle(&s);
        let base = b.id.clone();
        b.id = format!("{base}-utility");
        check(0, &run_oci("runc", &b));
        set_env(
            &b,
            &[
                "NVIDIA_VISIBLE_DEVICES=all",
                "NVIDIA_DRIVER_CAPABILITIES=compute",
            ],
        );
        b.id = format!("{base}-compute");
        let r = run_oci("runc", &b).expect_ok("compute-only run");
        assert_eq!(
            r.has("smi-file"),
            !poststop,
            "poststop {poststop}:\n{}",
            r.stdout
        );
        if !poststop {
            // the utility container's record was taken over by the compute-only one (its
            // poststop never came); the compute one's goes with the bundle, as its hook would
            let r = common::poststop(&format!("{base}-utility"), &b.dir);
            assert!(r.ok, "{}", r.stderr);
        }
        ids.extend([format!("{base}-utility"), format!("{base}-compute")]);
    }
    for id in ids {
        assert!(records_of(&id).is_empty(), "{id}: {:?}", records_of(&id));
    }
}

/// A poststop that fails (here: its record is not JSON) is logged and does not fail the delete:
/// runc only logs a poststop hook's error.
#[test]
fn a_failing_poststop_does_not_fail_runc_delete() {
    let _g = serial();
    let mut s = Spec::new(&["NVIDIA_VISIBLE_DEVICES=all"], "true");
    s.poststop = true;
    let b = bundle(&s);
    prepare_host();
    let created = Command::new("runc")
        .args(["create", "--bundle"])
        .arg(&b.dir)
        .arg(&b.id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(created.success());
    let record = Path::new(RECORD_DIR).join(&b.id);
    assert!(record.is_file(), "prestart wrote no record");
    std::fs::write(&record, b"not a record").unwrap();
    let deleted = Command::new("runc")
        .args(["delete", "--force"])
        .arg(&b.id)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&deleted.stderr);
    assert!(deleted.status.success(), "runc delete failed: {err}");
    assert!(
        err.contains("poststop of container"),
        "nvhook's error is logged: {err}"
    );
    let listed = Command::new("runc").arg("list").output().unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&b.id));
    std::fs::remove_file(&record).unwrap();
    for blob in records_of(&b.id) {
        let _ = std::fs::remove_file(Path::new(RECORD_DIR).join(blob));
    }
}
