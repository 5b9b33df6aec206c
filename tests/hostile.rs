//! Hostile images under runc: each case crafts a rootfs (or environment) to attack one step of
//! nvhook, and must end either in a container that started with exactly what it asked for, or in
//! a clean refusal carrying nvhook's error. In both cases the host must be untouched: its mount
//! table, a canary directory beside the rootfs (where `../../..` escapes land), every host path a
//! followed symlink would have written (`/usr/lib/<triplet>/libcuda.so.*`, `/usr/bin/nvidia-smi`,
//! `/lib/firmware/nvidia`, `/etc/ld.so.conf.d/00-nvhook*`), and the host's `/etc/ld.so.cache`.
//! Each case also runs without the hook: what changes then is runc's doing, not nvhook's.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// What the host looks like where an escape would show.
fn host_state(bundle: &Path) -> Vec<String> {
    let mut v = host_mounts();
    let v_ = fixtures().version.clone();
    for p in [
        format!("/usr/lib/x86_64-linux-gnu/libcuda.so.{v_}"),
        format!("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.{v_}"),
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1".into(),
        "/usr/bin/nvidia-smi".into(),
        "/lib/firmware/nvidia".into(),
        "/etc/ld.so.conf.d/00-nvhook-cuda-compat.conf".into(),
        "/usr/lib64/libcuda.so.1".into(),
        "/dev/nvidiactl".into(),
        "/tmp/nvhook-hostile-pwned".into(),
    ] {
        v.push(format!(
            "{p} exists={}",
            Path::new(&p).symlink_metadata().is_ok()
        ));
    }
    let cache = std::fs::read("/etc/ld.so.cache").unwrap_or_default();
    v.push(format!(
        "host ld.so.cache {} bytes, sum {}",
        cache.len(),
        cache.iter().map(|b| *b as u64).sum::<u64>()
    ));
    // the canary beside the rootfs, and the bundle dir itself (minus the rootfs)
    let o = Command::new("find")
        .arg(bundle)
        .args([
            "-path",
            &bundle.join("rootfs").to_string_lossy(),
            "-prune",
            "-o",
            "-printf",
            "%P %y %s\n",
        ])
        .output()
        .unwrap();
    let mut tree: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| format!("bundle: {l}"))
        .collect();
    tree.sort();
    v.extend(tree);
    v
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// must start, and see the GPU's library resolve
    Starts,
    /// must be refused with nvhook's error
    Refused,
    /// either is fine (the point is the host)
    Either,
}

struct Case {
    name: &'static str,
    setup: fn(&Path),
    env: &'static [&'static str],
    expect: Expect,
}

fn rm(p: &Path) {
    if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        std::fs::remove_dir_all(p).unwrap();
    } else if p.symlink_metadata().is_ok() {
        std::fs::remove_file(p).unwrap();
    }
}

/// Replace `rel` in the rootfs with a symlink to `target`.
fn link(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    rm(&p);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    symlink(target, &p).unwrap();
}

fn mknod(path: &Path, kind: &str, major: u32, minor: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(path);
    let st = Command::new("mknod")
        .arg(path)
        .args([kind, &major.to_string(), &minor.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

const T: &str = "usr/lib/x86_64-linux-gnu";
const GPU: &[&str] = &["NVIDIA_VISIBLE_DEVICES=0"];

fn cases() -> Vec<Case> {
    // The Debian image is merged-/usr: lib -> usr/lib, bin -> usr/bin; libc lives in the
    // multiarch dir. Moving that dir breaks the image itself, so those cases accept either end.
    vec![
        Case {
            name: "usr -> / (absolute)",
            setup: |r| link(r, "usr", "/"),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "usr -> ../../.. (relative)",
            setup: |r| link(r, "usr", "../../.."),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "usr/lib -> /",
            setup: |r| link(r, "usr/lib", "/"),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "usr/lib -> ../../../..",
            setup: |r| link(r, "usr/lib", "../../../.."),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "multiarch dir -> itself (loop)",
            setup: |r| link(r, T, "/usr/lib/x86_64-linux-gnu"),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "multiarch dir -> ../../../../outside",
            setup: |r| link(r, T, "../../../../outside"),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "multiarch dir -> /proc/self/root/usr/lib/x86_64-linux-gnu",
            setup: |r| link(r, T, "/proc/self/root/usr/lib/x86_64-linux-gnu"),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "usr/bin -> /",
            setup: |r| link(r, "usr/bin", "/"),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "usr/bin -> ../../../..",
            setup: |r| link(r, "usr/bin", "../../../.."),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "usr/bin/nvidia-smi -> /usr/bin/nvidia-smi (host path)",
            setup: |r| link(r, "usr/bin/nvidia-smi", "/usr/bin/nvidia-smi"),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "usr/bin/nvidia-smi -> ../../../../../tmp/nvhook-hostile-pwned",
            setup: |r| {
                link(
                    r,
                    "usr/bin/nvidia-smi",
                    "../../../../../tmp/nvhook-hostile-pwned",
                )
            },
            env: GPU,
            expect: Expect::Starts,
        },
        Case {
            name: "libcuda mount target -> /etc/shadow",
            setup: |r| {
                link(
                    r,
                    &format!("{T}/libcuda.so.{}", fixtures().version),
                    "/etc/shadow",
                )
            },
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "soname link libcuda.so.1 -> /dev/mem",
            setup: |r| link(r, &format!("{T}/libcuda.so.1"), "/dev/mem"),
            env: GPU,
            expect: Expect::Starts,
        },
        Case {
            name: "lib/firmware -> /",
            setup: |r| link(r, "usr/lib/firmware", "/"),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "lib/firmware -> ../../../../outside",
            setup: |r| link(r, "usr/lib/firmware", "../../../../outside"),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "etc -> /",
            setup: |r| link(r, "etc", "/"),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "etc/ld.so.cache -> /etc/ld.so.cache (host path)",
            setup: |r| link(r, "etc/ld.so.cache", "/etc/ld.so.cache"),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "etc/ld.so.cache -> ../../../../etc/passwd",
            setup: |r| link(r, "etc/ld.so.cache", "../../../../etc/passwd"),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "etc/ld.so.cache is a FIFO",
            setup: |r| {
                rm(&r.join("etc/ld.so.cache"));
                nix::unistd::mkfifo(
                    &r.join("etc/ld.so.cache"),
                    nix::sys::stat::Mode::from_bits_truncate(0o644),
                )
                .unwrap();
            },
            env: GPU,
            expect: Expect::Refused,
        },
        Case {
            name: "etc/ld.so.cache is a directory",
            setup: |r| {
                rm(&r.join("etc/ld.so.cache"));
                std::fs::create_dir(r.join("etc/ld.so.cache")).unwrap();
            },
            env: GPU,
            expect: Expect::Refused,
        },
        Case {
            name: "etc/ld.so.cache is 100 MB (sparse)",
            setup: |r| {
                let f = std::fs::File::create(r.join("etc/ld.so.cache")).unwrap();
                f.set_len(100 << 20).unwrap();
            },
            env: GPU,
            expect: Expect::Refused,
        },
        Case {
            name: "etc/ld.so.cache is garbage",
            setup: |r| {
                std::fs::write(
                    r.join("etc/ld.so.cache"),
                    b"glibc-ld.so.cache1.1\xff\xff\xff\xff garbage",
                )
                .unwrap()
            },
            env: GPU,
            expect: Expect::Starts,
        },
        Case {
            name: "etc/ld.so.conf.d -> /etc/ld.so.conf.d (compat image)",
            setup: |r| link(r, "etc/ld.so.conf.d", "/etc/ld.so.conf.d"),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "proc -> /",
            setup: |r| link(r, "proc", "/"),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "dev -> /tmp (runc follows it itself)",
            setup: |r| link(r, "dev", "/tmp"),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "usr/lib -> /proc/1/root/usr/lib",
            setup: |r| link(r, "usr/lib", "/proc/1/root/usr/lib"),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "symlink loop usr/lib64 <-> usr/lib64",
            setup: |r| link(r, "usr/lib64", "lib64"),
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "multiarch dir is a file",
            setup: |r| {
                rm(&r.join(T));
                std::fs::write(r.join(T), b"x").unwrap();
            },
            env: GPU,
            expect: Expect::Either,
        },
        Case {
            name: "nvidia-smi target is a directory",
            setup: |r| {
                rm(&r.join("usr/bin/nvidia-smi"));
                std::fs::create_dir_all(r.join("usr/bin/nvidia-smi/x")).unwrap();
            },
            env: GPU,
            expect: Expect::Refused,
        },
        Case {
            name: "FIFO at the libcuda mount target",
            setup: |r| {
                let p = r.join(format!("{T}/libcuda.so.{}", fixtures().version));
                rm(&p);
                nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
            },
            env: GPU,
            expect: Expect::Starts,
        },
        Case {
            name: "device node (mem) at the nvidia-smi target",
            setup: |r| mknod(&r.join("usr/bin/nvidia-smi"), "c", 1, 1),
            env: GPU,
            expect: Expect::Starts,
        },
        Case {
            name: "image ldconfig replaced by a script (never run)",
            setup: |r| {
                for p in ["sbin/ldconfig", "usr/sbin/ldconfig"] {
                    let f = r.join(p);
                    let _ = std::fs::remove_file(&f);
                    std::fs::write(
                        &f,
                        "#!/bin/sh\ntouch /tmp/nvhook-hostile-pwned /ldconfig-ran\n",
                    )
                    .unwrap();
                    std::fs::set_permissions(
                        &f,
                        std::os::unix::fs::PermissionsExt::from_mode(0o755),
                    )
                    .unwrap();
                }
            },
            env: GPU,
            expect: Expect::Starts,
        },
        Case {
            name: "huge directory: 20000 files in the multiarch dir",
            setup: |r| {
                for i in 0..20000 {
                    std::fs::write(r.join(format!("{T}/junk-{i}.so")), b"").unwrap();
                }
            },
            env: GPU,
            expect: Expect::Starts,
        },
        Case {
            name: "LD_PRELOAD / LD_LIBRARY_PATH of the image",
            setup: |_| {},
            env: &[
                "NVIDIA_VISIBLE_DEVICES=0",
                "LD_PRELOAD=/tmp/nvhook-hostile-pwned.so",
                "LD_LIBRARY_PATH=/../../../tmp",
            ],
            expect: Expect::Starts,
        },
        Case {
            name: "NVIDIA_VISIBLE_DEVICES with a newline and ..",
            setup: |_| {},
            env: &["NVIDIA_VISIBLE_DEVICES=0\n../../../etc"],
            expect: Expect::Refused,
        },
        Case {
            name: "NVIDIA_VISIBLE_DEVICES=../../../dev/sda",
            setup: |_| {},
            env: &["NVIDIA_VISIBLE_DEVICES=../../../dev/sda"],
            expect: Expect::Refused,
        },
        // runc itself refuses a NUL in the environment before any hook runs
        Case {
            name: "NVIDIA_DRIVER_CAPABILITIES with a NUL",
            setup: |_| {},
            env: &[
                "NVIDIA_VISIBLE_DEVICES=0",
                "NVIDIA_DRIVER_CAPABILITIES=compute\u{0},utility",
            ],
            expect: Expect::Either,
        },
    ]
}

fn run_case(c: &Case, with_hook: bool) -> (Run, Vec<String>, Vec<String>, PathBuf) {
    // The reference run (no hook) only shows what runc itself does to the host: it runs the
    // static busybox `true`, so a hostile image's own linker (a FIFO as ld.so.cache blocks it
    // forever) cannot hang it.
    let script = if with_hook {
        "probe cuda; [ -e /ldconfig-ran ] && echo LDCONFIG-RAN; true"
    } else {
        "true"
    };
    let mut s = Spec::new(c.env, script);
    if !with_hook {
        s.stage = Stage::None;
    }
    let b = bundle(&s);
    std::fs::create_dir_all(b.dir.join("outside")).unwrap();
    std::fs::write(b.dir.join("outside/canary"), b"canary").unwrap();
    (c.setup)(&b.rootfs());
    let before = host_state(&b.dir);
    let r = run_oci("runc", &b);
    let after = host_state(&b.dir);
    let dir = b.dir.clone();
    std::mem::forget(b); // removed below, after the comparison
    (r, before, after, dir)
}

fn diff(a: &[String], b: &[String]) -> Vec<String> {
    let mut d: Vec<String> = a
        .iter()
        .filter(|x| !b.contains(x))
        .map(|x| format!("- {x}"))
        .collect();
    d.extend(
        b.iter()
            .filter(|x| !a.contains(x))
            .map(|x| format!("+ {x}")),
    );
    d
}

#[test]
fn hostile_images_never_touch_the_host() {
    let _g = serial();
    let _ = std::fs::remove_file("/tmp/nvhook-hostile-pwned");
    let cases = cases();
    assert!(cases.len() >= 30, "the suite has {} cases", cases.len());
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for c in &cases {
        let (_plain, pb, pa, pdir) = run_case(c, false);
        let runc_did = diff(&pb, &pa);
        let (r, b, a, dir) = run_case(c, true);
        let hook_did: Vec<String> = diff(&b, &a)
            .into_iter()
            .filter(|l| !runc_did.contains(l))
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&pdir);
        let started = r.ok;
        let refused_cleanly = !r.ok && r.stderr.contains("nvhook: error:");
        let outcome_ok = match c.expect {
            Expect::Starts => started && r.has("cuda: path=") && !r.has("LDCONFIG-RAN"),
            Expect::Refused => refused_cleanly,
            // either end is fine; a failure that is not nvhook's refusal must be the image's own
            // (the process could not run), never a hook crash
            Expect::Either => {
                !r.has("LDCONFIG-RAN")
                    && !r.stderr.contains("panicked")
                    && (started || refused_cleanly || !r.stderr.contains("error running hook"))
            }
        };
        let line = format!(
            "{:<62} {:<8} host changes by nvhook: {}{}",
            c.name,
            if started {
                "started"
            } else if refused_cleanly {
                "refused"
            } else {
                "failed"
            },
            hook_did.len(),
            if runc_did.is_empty() {
                String::new()
            } else {
                format!(" (runc alone changed {})", runc_did.len())
            }
        );
        report.push(line.clone());
        if !outcome_ok || !hook_did.is_empty() {
            failures.push(format!(
                "{line}\n  {hook_did:?}\n  stdout: {}\n  stderr: {}",
                r.stdout,
                r.stderr.chars().take(600).collect::<String>()
            ));
        }
    }
    assert!(
        !Path::new("/tmp/nvhook-hostile-pwned").exists(),
        "a marker was written on the host"
    );
    println!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
