//! The read-only tmpfs that replaces `/proc/driver/nvidia`, built and attached for real, in a
//! private mount namespace of a test thread (nothing is mounted on the host).

#![forbid(unsafe_code)]

mod common;

use std::path::PathBuf;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nvhook::apply;
use nvhook::plan::{Plan, TmpfsBind, TmpfsDir, TmpfsFile};
use nvhook::rootfs::Rootfs;

fn in_private_mount_ns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // CLONE_NEWNS implies a private fs context for this thread only.
        unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS): run the tests as root");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn plan(target: &str, src: PathBuf, only_on_procfs: bool) -> Plan {
    Plan {
        tmpfs: vec![TmpfsDir {
            target: target.into(),
            files: vec![
                TmpfsFile {
                    name: "version".into(),
                    content: "NVRM version: fake 1.2.3\n".into(),
                },
                TmpfsFile {
                    name: "params".into(),
                    content: "ModifyDeviceFiles: 0\n".into(),
                },
            ],
            binds: vec![TmpfsBind {
                source: src,
                path: "gpus/0000:3b:00.0".into(),
                file: false,
            }],
            only_on_procfs,
        }],
        ..Plan::default()
    }
}

#[test]
fn replaces_the_directory_with_exactly_the_planned_content_read_only() {
    let _g = common::serial();
    let before = common::host_mounts();
    let base = std::env::temp_dir().join(format!("nvhook-tmpfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("rootfs");
    let src = base.join("host-gpu");
    std::fs::create_dir_all(root.join("proc/driver/nvidia/gpus/0000:86:00.0")).unwrap();
    std::fs::write(root.join("proc/driver/nvidia/secret"), "other GPU").unwrap();
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("information"), "GPU UUID: GPU-1\n").unwrap();

    let (r, src2, root2) = (root.clone(), src.clone(), root.clone());
    let seen = in_private_mount_ns(move || {
        let rootfs = Rootfs::open(&r).unwrap();
        // only_on_procfs: an image directory of that name is left alone
        apply::tmpfs_dirs(&plan("/proc/driver/nvidia", src2.clone(), true), &rootfs).unwrap();
        let untouched = std::fs::read_dir(r.join("proc/driver/nvidia"))
            .unwrap()
            .count();
        apply::tmpfs_dirs(&plan("/proc/driver/nvidia", src2, false), &rootfs).unwrap();
        let d = root2.join("proc/driver/nvidia");
        let mut names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let gpus: Vec<String> = std::fs::read_dir(d.join("gpus"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let info = std::fs::read_to_string(d.join("gpus/0000:3b:00.0/information")).unwrap();
        let write = std::fs::write(d.join("new"), "x").map_err(|e| e.raw_os_error());
        let write_bind = std::fs::write(d.join("gpus/0000:3b:00.0/information"), "x")
            .map_err(|e| e.raw_os_error());
        (untouched, names, gpus, info, write, write_bind)
    });
    let (untouched, names, gpus, info, write, write_bind) = seen;
    assert_eq!(untouched, 2, "not on procfs: left as it was");
    assert_eq!(names, ["gpus", "params", "version"]);
    assert_eq!(gpus, ["0000:3b:00.0"], "only the selected GPU is visible");
    assert_eq!(info, "GPU UUID: GPU-1\n");
    assert_eq!(write, Err(Some(nix::libc::EROFS)));
    assert_eq!(write_bind, Err(Some(nix::libc::EROFS)));
    // the private namespace is gone with its thread; the host saw nothing
    assert_eq!(before, common::host_mounts());
    assert_eq!(
        std::fs::read_to_string(root.join("proc/driver/nvidia/secret")).unwrap(),
        "other GPU"
    );
    std::fs::remove_dir_all(&base).unwrap();
}
