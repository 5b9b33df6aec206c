//! The translation of plans into CDI edits, the hook's arguments and the spec's JSON shape.

use std::path::{Path, PathBuf};

use super::hook::HookArgs;
use super::*;
use crate::devnode::{HostNode, NodeType};
use crate::ldcache::{FLAG_ELF_LIBC6, native_flags};
use crate::plan::MountFlags;

fn node(name: &str, major: u64, minor: u64) -> HostNode {
    HostNode {
        name: name.into(),
        host_path: PathBuf::from("/host/dev").join(name),
        kind: NodeType::Char,
        major,
        minor,
    }
}

/// The plan of `none`: a control node, a library with its link and cache entry, a tool.
fn common_plan() -> Plan {
    let mut p = Plan::default();
    p.add_device(node("nvidiactl", 195, 255));
    p.add_mount(
        "/drv/lib/libcuda.so.550.1".into(),
        "/usr/lib/x86_64-linux-gnu/libcuda.so.550.1".into(),
        false,
        MountFlags::CODE,
    );
    p.add_mount(
        "/drv/tmp/nvidia-mps".into(),
        "/tmp/nvidia-mps".into(),
        true,
        MountFlags::IPC,
    );
    p.add_symlink(
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1".into(),
        "libcuda.so.550.1".into(),
    );
    p.add_ldcache(
        "libcuda.so.1".into(),
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1".into(),
        native_flags(),
    );
    p
}

const HOOK: &str = "/usr/bin/nvhook";

#[test]
fn spec_wide_edits_carry_nodes_mounts_and_one_hook() {
    let e = edits_of(&common_plan(), None, Path::new(HOOK), Some("550.1".into())).unwrap();
    assert_eq!(
        e.device_nodes,
        [DeviceNode {
            path: "/dev/nvidiactl".into(),
            host_path: "/host/dev/nvidiactl".into(),
            kind: "c".into(),
            major: 195,
            minor: 255,
        }]
    );
    assert_eq!(e.mounts.len(), 2);
    assert_eq!(e.mounts[0].options, ["bind", "ro", "nosuid", "nodev"]);
    assert_eq!(e.mounts[0].kind, "bind");
    // IPC: writable, inert
    assert_eq!(e.mounts[1].options, ["bind", "nosuid", "nodev", "noexec"]);
    assert_eq!(e.hooks.len(), 1);
    let h = &e.hooks[0];
    assert_eq!(
        (h.hook_name.as_str(), h.path.as_path()),
        ("createRuntime", Path::new(HOOK))
    );
    assert_eq!(
        h.args,
        [
            "nvhook",
            "cdi-hook",
            "--cuda-compat",
            "550.1",
            "--link",
            "/usr/lib/x86_64-linux-gnu/libcuda.so.1=libcuda.so.550.1",
            "--ldcache",
            "libcuda.so.1=/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        ]
    );
}

#[test]
fn device_edits_are_the_plan_less_the_common_part() {
    let common = common_plan();
    let mut dev = common.clone();
    dev.add_device(node("nvidia0", 195, 0));
    let e = edits_of(&dev, Some(&common), Path::new(HOOK), None).unwrap();
    assert_eq!(e.device_nodes.len(), 1);
    assert_eq!(e.device_nodes[0].path, "/dev/nvidia0");
    assert!(e.mounts.is_empty() && e.env.is_empty());
    assert!(e.hooks.is_empty(), "no link of its own: no hook of its own");

    // a device with links of its own (DRI by-path) gets its own hook with just those
    dev.add_symlink(
        "/dev/dri/by-path/pci-0000:3b:00.0-card".into(),
        "../card1".into(),
    );
    let e = edits_of(&dev, Some(&common), Path::new(HOOK), None).unwrap();
    assert_eq!(
        e.hooks[0].args[2..],
        ["--link", "/dev/dri/by-path/pci-0000:3b:00.0-card=../card1"]
    );
}

#[test]
fn hook_args_round_trip() {
    let args = HookArgs {
        links: vec![crate::plan::Symlink {
            path: "/usr/lib/x/libcuda.so".into(),
            target: "libcuda.so.1".into(),
        }],
        ldcache: vec![
            crate::plan::LdEntry {
                soname: "libcuda.so.1".into(),
                path: "/usr/lib/x/libcuda.so.1".into(),
                flags: native_flags(),
            },
            crate::plan::LdEntry {
                soname: "libcuda.so.1".into(),
                path: "/usr/lib/i386-linux-gnu/libcuda.so.1".into(),
                flags: FLAG_ELF_LIBC6,
            },
        ],
        cuda_compat: Some("550.54.15".into()),
    };
    let argv = args.to_args().unwrap();
    assert!(argv.contains(&"--ldcache32".to_owned()));
    assert_eq!(HookArgs::parse(argv).unwrap(), args);
}

#[test]
fn hook_args_refuse_what_they_cannot_say() {
    let bad: &[&[&str]] = &[
        &["--link", "no-equals-sign"],
        &["--link", "relative/path=target"],
        &["--link", "=target"],
        &["--ldcache", "libcuda.so.1="],
        &["--ldcache"],
        &["--mount", "/a=/b"],
    ];
    for a in bad {
        let r = HookArgs::parse(a.iter().map(|s| s.to_string()));
        assert!(
            matches!(r, Err(Error::Usage(ref m)) if m.contains("cdi-hook")),
            "{a:?}: {r:?}"
        );
    }
    let link = HookArgs {
        links: vec![crate::plan::Symlink {
            path: "/a=b".into(),
            target: "c".into(),
        }],
        ..HookArgs::default()
    };
    assert!(link.to_args().is_err());
    let odd = HookArgs {
        ldcache: vec![crate::plan::LdEntry {
            soname: "x".into(),
            path: "/x".into(),
            flags: 0x7777,
        }],
        ..HookArgs::default()
    };
    assert!(odd.to_args().is_err());
}

#[test]
fn hook_plan_prefers_newer_cuda_compat() {
    let root = std::env::temp_dir().join(format!("nvhook-cdi-compat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("usr/local/cuda/compat");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(root.join("x.c"), "int cuInit(void){return 0;}").unwrap();
    let built = std::process::Command::new("gcc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(dir.join("libcuda.so.600.1.2"))
        .arg(root.join("x.c"))
        .status()
        .unwrap();
    assert!(
        built.success(),
        "gcc (build-essential) builds the compat library"
    );
    std::os::unix::fs::symlink("libcuda.so.600.1.2", dir.join("libcuda.so.1")).unwrap();
    let rootfs = Rootfs::open(&root).unwrap();
    let args = |v: &str| HookArgs {
        ldcache: vec![crate::plan::LdEntry {
            soname: "libcuda.so.1".into(),
            path: "/usr/lib/x/libcuda.so.1".into(),
            flags: native_flags(),
        }],
        cuda_compat: Some(v.into()),
        ..HookArgs::default()
    };
    let p = args("550.54.15").plan(&rootfs);
    // one entry per soname: the image's compat libcuda, not the host's
    assert_eq!(p.ldcache.len(), 1);
    assert_eq!(p.ldcache[0].path, "/usr/local/cuda/compat/libcuda.so.1");
    assert_eq!(p.files.len(), 1, "the ld.so.conf.d file");
    // a host driver as new as the compat copy: the host's libcuda only
    let p = args("600.0.1").plan(&rootfs);
    assert_eq!(p.ldcache.len(), 1);
    assert_eq!(p.ldcache[0].path, "/usr/lib/x/libcuda.so.1");
    assert!(p.files.is_empty());
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn json_uses_the_cdi_field_names() {
    // podman parses specs strictly: an unknown or misspelt field rejects the whole file
    let spec = Spec {
        version: DEFAULT_VERSION.into(),
        kind: DEFAULT_KIND.into(),
        devices: vec![Device {
            name: "0".into(),
            edits: edits_of(&common_plan(), None, Path::new(HOOK), None).unwrap(),
        }],
        edits: Edits {
            env: vec!["NVIDIA_VISIBLE_DEVICES=void".into()],
            ..Edits::default()
        },
    };
    let v: serde_json::Value = serde_json::from_str(&to_json(&spec).unwrap()).unwrap();
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&v),
        ["cdiVersion", "containerEdits", "devices", "kind"]
    );
    let dev = &v["devices"][0];
    assert_eq!(keys(dev), ["containerEdits", "name"]);
    let e = &dev["containerEdits"];
    assert_eq!(keys(e), ["deviceNodes", "hooks", "mounts"]);
    assert_eq!(
        keys(&e["deviceNodes"][0]),
        ["hostPath", "major", "minor", "path", "type"]
    );
    assert_eq!(
        keys(&e["mounts"][0]),
        ["containerPath", "hostPath", "options", "type"]
    );
    assert_eq!(keys(&e["hooks"][0]), ["args", "hookName", "path"]);
    assert_eq!(keys(&v["containerEdits"]), ["env"]);
    // and it reads back
    let back: Spec = serde_json::from_value(v).unwrap();
    assert_eq!(back, spec);
}

#[test]
fn kinds_and_versions() {
    for ok in ["nvidia.com/gpu", "example.org/my_dev-1", "a/b"] {
        assert!(validate_kind(ok).is_ok(), "{ok}");
    }
    for bad in [
        "gpu",
        "nvidia.com/",
        "/gpu",
        "nvidia.com/gpu/x",
        "nvidia.com/-gpu",
        "nvidia com/gpu",
        "nvidia.com/g.pu",
    ] {
        assert!(validate_kind(bad).is_err(), "{bad}");
    }
    for ok in VERSIONS {
        assert!(validate_version(ok).is_ok());
    }
    for bad in ["0.4.0", "0.3.0", "2.0.0", "", "latest"] {
        let e = validate_version(bad).unwrap_err().to_string();
        assert!(e.contains("0.5.0") && e.contains("podman"), "{e}");
    }
}

#[test]
fn generate_args() {
    let p = |a: &[&str]| GenerateArgs::parse(a.iter().map(|s| s.to_string()));
    let g = p(&[]).unwrap();
    assert_eq!(g.output.as_deref(), Some(Path::new(DEFAULT_OUTPUT)));
    assert_eq!(
        (g.kind.as_str(), g.version.as_str()),
        (DEFAULT_KIND, DEFAULT_VERSION)
    );
    let g = p(&[
        "-o",
        "-",
        "--cdi-version",
        "1.0.0",
        "--kind",
        "example.com/gpu",
    ])
    .unwrap();
    assert_eq!(g.output, None);
    assert_eq!(g.version, "1.0.0");
    for bad in [
        &["--hook-path", "nvhook"][..],
        &["--cdi-version", "0.3.0"],
        &["--kind", "gpu"],
        &["--output"],
        &["extra"],
    ] {
        assert!(matches!(p(bad), Err(Error::Usage(_))), "{bad:?}");
    }
    // capabilities are checked like NVIDIA_DRIVER_CAPABILITIES, under the host's config
    let cfg = Config::default();
    let o = p(&["--capabilities", "utility", "--hook-path", "/x/nvhook"])
        .unwrap()
        .options(&cfg)
        .unwrap();
    assert_eq!(o.capabilities.to_string(), "utility");
    assert_eq!(o.hook_path, Path::new("/x/nvhook"));
    let e = p(&["--capabilities", "compute,warp"])
        .unwrap()
        .options(&cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--capabilities") && e.contains("warp"), "{e}");
}

#[test]
fn write_atomic_replaces_whole_files() {
    let dir = std::env::temp_dir().join(format!("nvhook-cdi-write-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("cdi/nvhook.json");
    write_atomic(&path, "{\"a\":1}\n").unwrap();
    write_atomic(&path, "{}\n").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["nvhook.json"]);
    // a directory in the way is an error naming the path, and nothing is left behind
    let e = write_atomic(&dir.join("cdi"), "{}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("nvhook-cdi-write"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}
