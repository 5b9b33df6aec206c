//! Every driver capability's file set, IMEX channels and CUDA forward compatibility, end to end
//! under runc on the fake driver tree (which has graphics, display, 32-bit and compat files).

#![forbid(unsafe_code)]

mod common;

use common::*;

fn run(env: &[&str], script: &str) -> Run {
    run_checked("runc", &Spec::new(env, script)).expect_ok("runc")
}

const FILES: &str = "for f in /etc/vulkan/icd.d/nvidia_icd.json /usr/share/glvnd/egl_vendor.d/10_nvidia.json \
    /usr/share/egl/egl_external_platform.d/15_nvidia_gbm.json /etc/X11/xorg.conf.d/10-nvidia.conf \
    /usr/lib/xorg/modules/drivers/nvidia_drv.so /usr/lib/xorg/modules/extensions/libglxserver_nvidia.so \
    /usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0 /usr/lib/x86_64-linux-gnu/libGLX_indirect.so.0 \
    /usr/lib/x86_64-linux-gnu/libnvidia-egl-gbm.so.1 /usr/lib/x86_64-linux-gnu/gbm/nvidia-drm_gbm.so \
    /usr/lib/x86_64-linux-gnu/libnvidia-encode.so.1 /usr/lib/x86_64-linux-gnu/libcuda.so.1 \
    /usr/bin/nvidia-smi /run/nvidia-persistenced/socket /tmp/nvidia-mps \
    /dev/nvidia-modeset /dev/dri/card1 /dev/dri/renderD129 /dev/dri/by-path/pci-0000:3b:00.0-card \
    /usr/lib/i386-linux-gnu/libcuda.so.1 /dev/nvidia-caps-imex-channels/channel0; do \
    [ -e $f ] && echo has:$f; done; true";

fn has(r: &Run, f: &str) -> bool {
    r.stdout.lines().any(|l| l == format!("has:{f}"))
}

/// Which files each capability brings, as libnvidia-container's per-capability lists and the
/// toolkit's graphics discoverer define them.
#[test]
fn capability_file_sets() {
    type Row<'a> = (&'a str, &'a [&'a str], &'a [&'a str]);
    let rows: &[Row] = &[
        (
            "graphics",
            &[
                "/etc/vulkan/icd.d/nvidia_icd.json",
                "/usr/share/glvnd/egl_vendor.d/10_nvidia.json",
                "/usr/share/egl/egl_external_platform.d/15_nvidia_gbm.json",
                "/usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0",
                "/usr/lib/x86_64-linux-gnu/libGLX_indirect.so.0",
                "/usr/lib/x86_64-linux-gnu/libnvidia-egl-gbm.so.1",
                "/dev/dri/card1",
                "/dev/dri/renderD129",
                "/dev/dri/by-path/pci-0000:3b:00.0-card",
            ],
            &[
                "/dev/nvidia-modeset",
                "/usr/lib/xorg/modules/drivers/nvidia_drv.so",
                "/usr/bin/nvidia-smi",
                "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
            ],
        ),
        (
            "display",
            &[
                "/dev/nvidia-modeset",
                "/usr/lib/xorg/modules/drivers/nvidia_drv.so",
                "/usr/lib/xorg/modules/extensions/libglxserver_nvidia.so",
                "/etc/X11/xorg.conf.d/10-nvidia.conf",
                "/usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0",
                "/dev/dri/card1",
            ],
            &["/usr/bin/nvidia-smi"],
        ),
        (
            "video",
            &[
                "/usr/lib/x86_64-linux-gnu/libnvidia-encode.so.1",
                "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
                "/tmp/nvidia-mps",
            ],
            &[
                "/usr/bin/nvidia-smi",
                "/dev/dri/card1",
                "/usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0",
            ],
        ),
        (
            "utility",
            &["/usr/bin/nvidia-smi", "/run/nvidia-persistenced/socket"],
            &["/tmp/nvidia-mps", "/dev/dri/card1"],
        ),
        (
            "compute",
            &["/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/tmp/nvidia-mps"],
            &[
                "/run/nvidia-persistenced/socket",
                "/usr/lib/i386-linux-gnu/libcuda.so.1",
            ],
        ),
        (
            "compute,compat32",
            &[
                "/usr/lib/i386-linux-gnu/libcuda.so.1",
                "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
            ],
            &[],
        ),
    ];
    for (caps, present, absent) in rows {
        let r = run(
            &[
                "NVIDIA_VISIBLE_DEVICES=0",
                &format!("NVIDIA_DRIVER_CAPABILITIES={caps}"),
            ],
            FILES,
        );
        for f in *present {
            assert!(has(&r, f), "{caps}: {f} missing:\n{}", r.stdout);
        }
        for f in *absent {
            assert!(
                !has(&r, f),
                "{caps}: {f} should not be there:\n{}",
                r.stdout
            );
        }
    }
    // all: everything, and DRM nodes only of the selected GPU (GPU 1 has none in the fake sysfs)
    let r = run(
        &["NVIDIA_VISIBLE_DEVICES=1", "NVIDIA_DRIVER_CAPABILITIES=all"],
        FILES,
    );
    assert!(
        has(&r, "/usr/bin/nvidia-smi")
            && has(&r, "/dev/nvidia-modeset")
            && !has(&r, "/dev/dri/card1"),
        "{}",
        r.stdout
    );
}

#[test]
fn compat32_libraries_are_in_the_linker_cache_as_32_bit() {
    let _g = serial();
    let b = bundle(&Spec::new(
        &[
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_DRIVER_CAPABILITIES=compute,utility,compat32",
        ],
        "true",
    ));
    run_oci("runc", &b).expect_ok("runc");
    let c = ldcache_listing(&b);
    assert!(
        c.contains("libcuda.so.1 (libc6) => /usr/lib/i386-linux-gnu/libcuda.so.1"),
        "{c}"
    );
    assert!(
        c.contains("libcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        "{c}"
    );
}

#[test]
fn imex_channels() {
    let r = run(
        &["NVIDIA_VISIBLE_DEVICES=none", "NVIDIA_IMEX_CHANNELS=0"],
        &format!("{FILES}; probe open /dev/nvidia-caps-imex-channels/channel0"),
    );
    assert!(
        has(&r, "/dev/nvidia-caps-imex-channels/channel0"),
        "{}",
        r.stdout
    );
    assert!(
        r.has("/dev/nvidia-caps-imex-channels/channel0: ENXIO"),
        "granted in the cgroup (no driver behind it):\n{}",
        r.stdout
    );
    let r = run_checked(
        "runc",
        &Spec::new(
            &["NVIDIA_VISIBLE_DEVICES=none", "NVIDIA_IMEX_CHANNELS=5"],
            "echo started",
        ),
    );
    assert!(!r.ok && r.stderr.contains("channel5"), "{}", r.stderr);
    let r = run_checked(
        "runc",
        &Spec::new(
            &["NVIDIA_VISIBLE_DEVICES=none", "NVIDIA_IMEX_CHANNELS=x"],
            "echo started",
        ),
    );
    assert!(
        !r.ok && r.stderr.contains("NVIDIA_IMEX_CHANNELS"),
        "{}",
        r.stderr
    );
}

#[test]
fn cuda_forward_compat_only_when_newer() {
    // rootfs-debian ships compat libcuda 500.x, older than the host's 550: the host's is used
    let r = run(&["NVIDIA_VISIBLE_DEVICES=all"], "probe cuda");
    assert!(
        r.has(&format!("version={}", fixtures().version))
            && r.has("path=/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        "{}",
        r.stdout
    );
    // rootfs-compat ships 600.x: the image's compat libcuda is used, the host's tools still work
    let mut s = Spec::new(
        &["NVIDIA_VISIBLE_DEVICES=all"],
        "probe cuda; nvidia-smi; cat /etc/ld.so.conf.d/00-nvhook-cuda-compat.conf",
    );
    s.rootfs = "rootfs-compat";
    let r = run_checked("runc", &s).expect_ok("compat image");
    assert!(
        r.has("path=/usr/local/cuda/compat/libcuda.so.1 version=600.1.2 cuInit=0"),
        "{}",
        r.stdout
    );
    assert!(
        r.has("NVIDIA-SMI fake") && r.has("/usr/local/cuda/compat"),
        "{}",
        r.stdout
    );
    // compat is a compute matter: utility alone leaves it alone
    let mut s = Spec::new(
        &[
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_DRIVER_CAPABILITIES=utility",
        ],
        "ls /etc/ld.so.conf.d/",
    );
    s.rootfs = "rootfs-compat";
    let r = run_checked("runc", &s).expect_ok("compat image, utility");
    assert!(!r.has("00-nvhook-cuda-compat.conf"), "{}", r.stdout);
}
