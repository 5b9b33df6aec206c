//! Hostile images under runc: each case crafts a rootfs (or environment) to attack one step of
//! nvhook, and must end either in a container that started with exactly what it asked for, or in
//! a clean refusal carrying nvhook's error. In both cases the host must be untouched: its mount
//! table, a canary directory beside the rootfs (where `../../..` escapes land), every host path a
//! followed symlink would have written (`/usr/lib/<triplet>/libcuda.so.*`, `/usr/bin/nvidia-smi`,
//! `/lib/firmware/nvidia`, `/etc/ld.so.conf.d/00-nvhook*`), and the host's `/etc/ld.so.cache`.
//! Each case also runs without the hook: what changes then is runc's doing, not nvhook's.

#![forbid(unsafe_code)]

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use common::*;

/// Mounts that come and go with other test runs on a shared machine: podman's storage of the
/// podman tests (this repository's other test binaries, other checkouts). Nothing of a runc
/// container of this suite is ever mounted there.
fn foreign_mount(line: &str) -> bool {
    let mp = line.split(' ').next().unwrap_or("");
    mp.contains("/target/tmp/podman-")
        || mp.starts_with("/run/nvhook-tests/")
        || mp.starts_with("/var/lib/containers/storage/")
        || mp.starts_with("/run/containers/storage/")
}

/// What the host looks like where an escape would show.
fn host_state(bundle: &Path) -> Vec<String> {
    let mut v: Vec<String> = host_mounts()
        .into_iter()
        .filter(|m| !foreign_mount(m))
        .collect();
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
    // anything a loader variable of the image would make a host process write (LD_DEBUG_OUTPUT
    // appends the pid)
    for e in std::fs::read_dir("/tmp").unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("nvhook-hostile-pwned") {
            v.push(format!("/tmp/{n} exists"));
        }
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
    /// crafts the rootfs; may also edit the bundle's config.json (the rootfs's parent)
    setup: fn(&Path),
    env: &'static [&'static str],
    expect: Expect,
    /// the fixture image the case starts from
    image: &'static str,
    /// a refusal must name this (the path or variable at fault)
    says: &'static str,
}

fn nothing(_: &Path) {}

const BASE: Case = Case {
    name: "",
    setup: nothing,
    env: &[],
    expect: Expect::Either,
    image: "rootfs-debian",
    says: "",
};

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

/// Edit the bundle's config.json (the case's rootfs is `<bundle>/rootfs`).
fn edit_config(root: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = root.parent().unwrap().join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut c);
    std::fs::write(&p, serde_json::to_vec(&c).unwrap()).unwrap();
}

/// Add `NAME=VALUE` to the container's environment (for values too large for a literal).
fn add_env(root: &Path, var: String) {
    edit_config(root, |c| {
        c["process"]["env"].as_array_mut().unwrap().push(var.into())
    });
}

/// Drop the runtime's mount at `dest` (e.g. `/dev`, `/proc`), so the image's own directory is
/// what the container (and nvhook) sees there.
fn drop_mount(root: &Path, dest: &str) {
    edit_config(root, |c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["destination"] != dest)
    });
}

/// Replace the image's `/etc/ld.so.cache` with a valid new-format cache whose entries all name
/// one string of `name_len` bytes: `entries` of them, or as many as fill `size` bytes.
fn crafted_cache(root: &Path, size: usize, name_len: usize, entries: usize) {
    let mut name = b"lib".to_vec();
    name.resize(name_len, b'a');
    name.push(0);
    let n = if entries > 0 {
        entries
    } else {
        (size - 48 - name.len()) / 24
    };
    let strings_at = (48 + n * 24) as u32;
    let mut b = Vec::with_capacity(strings_at as usize + name.len());
    b.extend_from_slice(b"glibc-ld.so.cache1.1");
    b.extend_from_slice(&(n as u32).to_le_bytes());
    b.extend_from_slice(&(name.len() as u32).to_le_bytes());
    b.extend_from_slice(&[2, 0, 0, 0]); // little endian
    b.extend_from_slice(&[0; 16]); // no extensions, unused
    for _ in 0..n {
        b.extend_from_slice(&0x0303i32.to_le_bytes());
        b.extend_from_slice(&strings_at.to_le_bytes());
        b.extend_from_slice(&strings_at.to_le_bytes());
        b.extend_from_slice(&[0; 12]);
    }
    b.extend_from_slice(&name);
    std::fs::write(root.join("etc/ld.so.cache"), b).unwrap();
}

/// A user volume with shared propagation: `<bundle>/vol`, made a shared mount on the host (a
/// host directory of a shared mount, as on systemd hosts), mounted at `/vol` with `rbind,rshared`
/// under `rootfsPropagation: rshared` (what docker sets when a volume is shared). The image's
/// `rel` moves into the volume as `name` and becomes a symlink to `/vol/<name>`, so nvhook's
/// mount targets there lie in the shared volume: a mount attached there reaches the host.
fn shared_volume(root: &Path, rel: &str, name: &str) {
    let bundle = root.parent().unwrap();
    let vol = bundle.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::rename(root.join(rel), vol.join(name)).unwrap();
    link(root, rel, &format!("/vol/{name}"));
    let v = vol.display();
    sh(&format!("mount --bind {v} {v} && mount --make-shared {v}"));
    let vol = vol.to_string_lossy().into_owned();
    edit_config(root, |c| {
        c["linux"]["rootfsPropagation"] = "rshared".into();
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "source": vol,
            "destination": "/vol",
            "type": "bind",
            "options": ["rbind", "rshared", "rw"],
        }));
    });
}

/// The toolkit's other route to a GPU: `/dev/null` mounted at
/// `/var/run/nvidia-container-devices/0`, under a host config that accepts such mounts and
/// ignores the variable for unprivileged containers; `var` is added to the environment. The
/// hook is pointed at that config (written beside the rootfs, in the bundle).
fn volume_mount_request(root: &Path, var: &str) {
    let bundle = root.parent().unwrap();
    let config = bundle.join("nvhook-volume-mounts.toml");
    let mut text = std::fs::read_to_string(&fixtures().config).unwrap();
    text.push_str(
        "accept-nvidia-visible-devices-as-volume-mounts = true\n\
         accept-nvidia-visible-devices-envvar-when-unprivileged = false\n",
    );
    std::fs::write(&config, text).unwrap();
    let var = var.to_owned();
    edit_config(root, |c| {
        c["process"]["env"].as_array_mut().unwrap().push(var.into());
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "source": "/dev/null",
            "destination": "/var/run/nvidia-container-devices/0",
            "type": "bind",
            "options": ["rbind", "ro"],
        }));
        for stage in ["prestart", "createRuntime"] {
            if let Some(hooks) = c["hooks"][stage].as_array_mut() {
                for h in hooks {
                    h["args"][2] = config.to_string_lossy().into_owned().into();
                }
            }
        }
    });
}

fn sh(script: &str) {
    let o = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Move the rootfs onto a fresh tmpfs mounted with `opts` (the mount is removed after the case).
fn rootfs_on_tmpfs(root: &Path, opts: &str) {
    let r = root.display();
    sh(&format!(
        "mv {r} {r}.img && mkdir {r} && mount -t tmpfs -o {opts} nvhook-hostile {r} && \
         cp -a {r}.img/. {r}/ && rm -rf {r}.img"
    ));
}

/// Unmount whatever a case mounted under `dir` (its rootfs), innermost first.
fn unmount_under(dir: &Path) {
    let d = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = host_mounts()
        .into_iter()
        .filter_map(|m| m.split(' ').next().map(str::to_owned))
        .filter(|mp| mp.starts_with(&d))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for mp in points {
        let _ = Command::new("umount").arg("-l").arg(&mp).status();
    }
}

/// Files nvhook would leave behind if it stopped half-way through a write (its temporary files
/// are `.<name>.nvhook-<pid>`).
fn leftovers(root: &Path) -> Vec<String> {
    let o = Command::new("find")
        .arg(root)
        .args(["-xdev", "-name", ".*.nvhook-*"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
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
            ..BASE
        },
        Case {
            name: "usr -> ../../.. (relative)",
            setup: |r| link(r, "usr", "../../.."),
            env: GPU,
            expect: Expect::Either,
            ..BASE
        },
        Case {
            name: "usr/lib -> /",
            setup: |r| link(r, "usr/lib", "/"),
            env: GPU,
            expect: Expect::Either,
            ..BASE
        },
        Case {
            name: "usr/lib -> ../../../..",
            setup: |r| link(r, "usr/lib", "../../../.."),
            env: GPU,
            expect: Expect::Either,
            ..BASE
        },
        Case {
            name: "multiarch dir -> itself (loop)",
            setup: |r| link(r, T, "/usr/lib/x86_64-linux-gnu"),
            env: GPU,
            expect: Expect::Either,
            ..BASE
        },
        Case {
            name: "multiarch dir -> ../../../../outside",
            setup: |r| link(r, T, "../../../../outside"),
            env: GPU,
            expect: Expect::Either,
            ..BASE
        },
        Case {
            name: "multiarch dir -> /proc/self/root/usr/lib/x86_64-linux-gnu",
            setup: |r| link(r, T, "/proc/self/root/usr/lib/x86_64-linux-gnu"),
            env: GPU,
            expect: Expect::Either,
            ..BASE
        },
        Case {
            name: "usr/bin -> /",
            setup: |r| link(r, "usr/bin", "/"),
            env: GPU,
            expect: Expect::Either,
            ..BASE
        },
        Case {
            name: "usr/bin -> ../../../..",
            setup: |r| link(r, "usr/bin", "../../../.."),
            env: GPU,
            expect: Expect::Either,
            ..BASE
        },
        Case {
            name: "usr/bin/nvidia-smi -> /usr/bin/nvidia-smi (host path)",
            setup: |r| link(r, "usr/bin/nvidia-smi", "/usr/bin/nvidia-smi"),
            env: GPU,
            expect: Expect::Either,
            ..BASE
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
            ..BASE
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
            ..BASE
        },
        Case {
            name: "soname link libcuda.so.1 -> /dev/mem",
            setup: |r| link(r, &format!("{T}/libcuda.so.1"), "/dev/mem"),
            env: GPU,
            expect: Expect::Starts,
            ..BASE
        },
        Case {
            name: "lib/firmware -> /",
            setup: |r| link(r, "usr/lib/firmware", "/"),
            env: GPU,
            expect: Expect::Either,
            ..BASE
        },
        Case {
            name: "lib/firmware -> ../../../../outside",
            setup: |r| link(r, "usr/lib/firmware", "../../../../outside"),
            env: GPU,
            expect: Expect::Either,
            ..BASE
        },
        Case {
            name: "etc -> /",
            setup: |r| link(r, "etc", "/"),
            env: GPU,
            expect: Expect::Either,
            ..BASE
        },
        Case {
            name: "etc/ld.so.cache -> /etc/ld.so.cache (host path)",
            setup: |r| link(r, "etc/ld.so.cache", "/etc/ld.so.cache"),
            env: GPU,
            expect: Expect::Either,
            ..BASE
        },
        Case {
            name: "etc/ld.so.cache -> ../../../../etc/passwd",
            setup: |r| link(r, "etc/ld.so.cache", "../../../../etc/passwd"),
            env: GPU,
            expect: Expect::Either,
            ..BASE
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
            ..BASE
        },
        Case {
            name: "etc/ld.so.cache is a directory",
            setup: |r| {
                rm(&r.join("etc/ld.so.cache"));
                std::fs::create_dir(r.join("etc/ld.so.cache")).unwrap();
            },
            env: GPU,
            expect: Expect::Refused,
            ..BASE
        },
        Case {
            name: "etc/ld.so.cache is 100 MB (sparse)",
            setup: |r| {
                let f = std::fs::File::create(r.join("etc/ld.so.cache")).unwrap();
                f.set_len(100 << 20).unwrap();
            },
            env: GPU,
            expect: Expect::Refused,
            ..BASE
        },
        Case {
            name: "etc/ld.so.cache crafted: 64 MiB, 2.8 million entries (memory bomb)",
            setup: |r| crafted_cache(r, 64 << 20, 36, 0),
            env: GPU,
            expect: Expect::Refused,
            says: "/etc/ld.so.cache inside the container rootfs is larger than",
            ..BASE
        },
        Case {
            name: "etc/ld.so.cache crafted: 8 MiB, 349,000 entries",
            setup: |r| crafted_cache(r, 8 << 20, 36, 0),
            env: GPU,
            expect: Expect::Refused,
            says: "more than the 65536 nvhook reads",
            ..BASE
        },
        Case {
            name: "etc/ld.so.cache crafted: 65,536 entries naming one 4 KB string",
            setup: |r| crafted_cache(r, 0, 4000, 65_536),
            env: GPU,
            expect: Expect::Refused,
            says: "its names add up to more than",
            ..BASE
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
            ..BASE
        },
        Case {
            name: "etc/ld.so.conf.d -> /etc/ld.so.conf.d (compat image)",
            setup: |r| link(r, "etc/ld.so.conf.d", "/etc/ld.so.conf.d"),
            env: GPU,
            expect: Expect::Either,
            image: "rootfs-compat",
            ..BASE
        },
        Case {
            name: "proc -> /",
            setup: |r| link(r, "proc", "/"),
            env: GPU,
            expect: Expect::Either,
            ..BASE
        },
        Case {
            name: "dev -> /tmp (runc follows it itself)",
            setup: |r| link(r, "dev", "/tmp"),
            env: GPU,
            expect: Expect::Either,
            ..BASE
        },
        Case {
            name: "usr/lib -> /proc/1/root/usr/lib",
            setup: |r| link(r, "usr/lib", "/proc/1/root/usr/lib"),
            env: GPU,
            expect: Expect::Either,
            ..BASE
        },
        Case {
            name: "symlink loop usr/lib64 <-> usr/lib64",
            setup: |r| link(r, "usr/lib64", "lib64"),
            env: GPU,
            expect: Expect::Either,
            ..BASE
        },
        Case {
            name: "multiarch dir is a file",
            setup: |r| {
                rm(&r.join(T));
                std::fs::write(r.join(T), b"x").unwrap();
            },
            env: GPU,
            expect: Expect::Either,
            ..BASE
        },
        Case {
            name: "nvidia-smi target is a directory",
            setup: |r| {
                rm(&r.join("usr/bin/nvidia-smi"));
                std::fs::create_dir_all(r.join("usr/bin/nvidia-smi/x")).unwrap();
            },
            env: GPU,
            expect: Expect::Refused,
            ..BASE
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
            ..BASE
        },
        Case {
            name: "device node (mem) at the nvidia-smi target",
            setup: |r| mknod(&r.join("usr/bin/nvidia-smi"), "c", 1, 1),
            env: GPU,
            expect: Expect::Starts,
            ..BASE
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
            ..BASE
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
            ..BASE
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
            ..BASE
        },
        Case {
            name: "NVIDIA_VISIBLE_DEVICES with a newline and ..",
            setup: |_| {},
            env: &["NVIDIA_VISIBLE_DEVICES=0\n../../../etc"],
            expect: Expect::Refused,
            ..BASE
        },
        Case {
            name: "NVIDIA_VISIBLE_DEVICES=../../../dev/sda",
            setup: |_| {},
            env: &["NVIDIA_VISIBLE_DEVICES=../../../dev/sda"],
            expect: Expect::Refused,
            ..BASE
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
            ..BASE
        },
        // ---- added: the list, component by component (firmware, compat conf, lib64)
        Case {
            name: "lib -> ../outside (top-level, relative)",
            setup: |r| link(r, "lib", "../outside"),
            env: GPU,
            ..BASE
        },
        Case {
            name: "lib/firmware/nvidia -> /",
            setup: |r| link(r, "usr/lib/firmware/nvidia", "/"),
            env: GPU,
            ..BASE
        },
        Case {
            name: "lib/firmware/nvidia/<ver> -> ../../../../../outside",
            setup: |r| {
                link(
                    r,
                    &format!("usr/lib/firmware/nvidia/{}", fixtures().version),
                    "../../../../../outside",
                )
            },
            env: GPU,
            ..BASE
        },
        Case {
            name: "lib/firmware/nvidia/<ver>/gsp_ga10x.bin -> /etc/shadow",
            setup: |r| {
                link(
                    r,
                    &format!(
                        "usr/lib/firmware/nvidia/{}/gsp_ga10x.bin",
                        fixtures().version
                    ),
                    "/etc/shadow",
                )
            },
            env: GPU,
            ..BASE
        },
        Case {
            name: "lib/firmware is a file",
            setup: |r| std::fs::write(r.join("usr/lib/firmware"), b"x").unwrap(),
            env: GPU,
            ..BASE
        },
        Case {
            name: "FIFO at lib/firmware/nvidia",
            setup: |r| {
                std::fs::create_dir_all(r.join("usr/lib/firmware")).unwrap();
                nix::unistd::mkfifo(
                    &r.join("usr/lib/firmware/nvidia"),
                    nix::sys::stat::Mode::from_bits_truncate(0o644),
                )
                .unwrap();
            },
            env: GPU,
            ..BASE
        },
        Case {
            name: "usr/bin -> /proc/self/root/usr/bin",
            setup: |r| link(r, "usr/bin", "/proc/self/root/usr/bin"),
            env: GPU,
            ..BASE
        },
        Case {
            name: "etc -> /proc/1/root/etc",
            setup: |r| link(r, "etc", "/proc/1/root/etc"),
            env: GPU,
            ..BASE
        },
        Case {
            name: "etc -> ../outside (relative)",
            setup: |r| link(r, "etc", "../outside"),
            env: GPU,
            ..BASE
        },
        Case {
            name: "etc/ld.so.cache is a char device (kmsg): never opened",
            setup: |r| mknod(&r.join("etc/ld.so.cache"), "c", 1, 11),
            env: GPU,
            expect: Expect::Refused,
            says: "/etc/ld.so.cache",
            ..BASE
        },
        Case {
            name: "etc/ld.so.cache -> a directory",
            setup: |r| link(r, "etc/ld.so.cache", "/usr"),
            env: GPU,
            expect: Expect::Refused,
            says: "/etc/ld.so.cache",
            ..BASE
        },
        Case {
            name: "libcuda mount target is a directory",
            setup: |r| {
                std::fs::create_dir_all(r.join(format!("{T}/libcuda.so.{}/x", fixtures().version)))
                    .unwrap()
            },
            env: GPU,
            expect: Expect::Refused,
            says: "libcuda.so",
            ..BASE
        },
        Case {
            name: "soname link libcuda.so.1 is a directory",
            setup: |r| std::fs::create_dir_all(r.join(format!("{T}/libcuda.so.1/x"))).unwrap(),
            env: GPU,
            ..BASE
        },
        Case {
            name: "unix socket at the nvidia-smi target",
            setup: |r| {
                let p = r.join("usr/bin/nvidia-smi");
                rm(&p);
                // Bound through the directory's descriptor: a deep CI checkout makes the full path
                // longer than sun_path (108 bytes).
                let dir = std::fs::File::open(r.join("usr/bin")).unwrap();
                let short = format!("/proc/self/fd/{}/nvidia-smi", dir.as_raw_fd());
                std::os::unix::net::UnixListener::bind(short).unwrap();
            },
            env: GPU,
            ..BASE
        },
        Case {
            name: "usr/lib64 -> / (lib64 image)",
            setup: |r| link(r, "usr/lib64", "/"),
            env: GPU,
            image: "rootfs-lib64",
            ..BASE
        },
        Case {
            name: "usr -> ../outside (lib64 image)",
            setup: |r| link(r, "usr", "../outside"),
            env: GPU,
            image: "rootfs-lib64",
            ..BASE
        },
        Case {
            name: "etc/ld.so.conf.d -> ../../outside (compat image)",
            setup: |r| link(r, "etc/ld.so.conf.d", "../../outside"),
            env: GPU,
            image: "rootfs-compat",
            ..BASE
        },
        Case {
            name: "ld.so.conf.d/00-nvhook-cuda-compat.conf -> canary (compat image)",
            setup: |r| {
                link(
                    r,
                    "etc/ld.so.conf.d/00-nvhook-cuda-compat.conf",
                    "../../../outside/canary",
                )
            },
            env: GPU,
            image: "rootfs-compat",
            expect: Expect::Starts,
            ..BASE
        },
        Case {
            name: "etc/ld.so.conf.d is a file (compat image)",
            setup: |r| {
                rm(&r.join("etc/ld.so.conf.d"));
                std::fs::write(r.join("etc/ld.so.conf.d"), b"/tmp\n").unwrap();
            },
            env: GPU,
            image: "rootfs-compat",
            ..BASE
        },
        Case {
            name: "usr/local/cuda/compat -> /usr/lib/x86_64-linux-gnu (compat image)",
            setup: |r| link(r, "usr/local/cuda/compat", "/usr/lib/x86_64-linux-gnu"),
            env: GPU,
            image: "rootfs-compat",
            ..BASE
        },
        Case {
            name: "huge directory: 20000 files in usr/local/cuda/compat",
            setup: |r| {
                for i in 0..20000 {
                    std::fs::write(r.join(format!("usr/local/cuda/compat/junk-{i}.so")), b"")
                        .unwrap();
                }
            },
            env: GPU,
            image: "rootfs-compat",
            expect: Expect::Starts,
            ..BASE
        },
        Case {
            name: "image's own /dev (no tmpfs): dev/nvidia0 -> /dev/mem, nvidiactl -> canary",
            setup: |r| {
                drop_mount(r, "/dev");
                link(r, "dev/nvidia0", "/dev/mem");
                link(r, "dev/nvidiactl", "../../outside/canary");
            },
            env: GPU,
            ..BASE
        },
        Case {
            name: "image's own /proc (no procfs): proc/driver/nvidia -> /",
            setup: |r| {
                drop_mount(r, "/proc");
                link(r, "proc/driver/nvidia", "/");
            },
            env: GPU,
            ..BASE
        },
        Case {
            name: "image's own /proc (no procfs): proc/driver -> ../../outside",
            setup: |r| {
                drop_mount(r, "/proc");
                link(r, "proc/driver", "../../outside");
            },
            env: GPU,
            ..BASE
        },
        // ---- a read-only or full rootfs: start if possible, else a refusal naming the path
        Case {
            name: "root.readonly = true",
            setup: |r| edit_config(r, |c| c["root"]["readonly"] = true.into()),
            env: GPU,
            expect: Expect::Starts,
            ..BASE
        },
        Case {
            name: "rootfs on a read-only bind mount",
            setup: |r| {
                let r = r.display();
                sh(&format!(
                    "mount --bind {r} {r} && mount -o remount,bind,ro {r}"
                ))
            },
            env: GPU,
            expect: Expect::Refused,
            says: "Read-only file system",
            ..BASE
        },
        Case {
            name: "rootfs on a full tmpfs (ENOSPC on write)",
            setup: |r| {
                rootfs_on_tmpfs(r, "size=64m");
                // fill it: dd stops at ENOSPC
                let _ = Command::new("dd")
                    .args(["if=/dev/zero", "bs=1M", "status=none"])
                    .arg(format!("of={}/fill", r.display()))
                    .status();
            },
            env: GPU,
            expect: Expect::Refused,
            says: "/etc/ld.so.cache",
            ..BASE
        },
        Case {
            name: "rootfs on a tmpfs with no inode left (ENOSPC on create)",
            setup: |r| {
                let count = String::from_utf8(
                    Command::new("sh")
                        .arg("-c")
                        .arg(format!("find {} | wc -l", r.display()))
                        .output()
                        .unwrap()
                        .stdout,
                )
                .unwrap();
                let count: u64 = count.trim().parse().unwrap();
                rootfs_on_tmpfs(r, &format!("nr_inodes={}", count + 20));
                let mut i = 0;
                while std::fs::write(r.join(format!("fill-{i}")), b"").is_ok() {
                    i += 1;
                }
            },
            env: GPU,
            expect: Expect::Refused,
            says: "No space left on device",
            ..BASE
        },
        // ---- the environment: 10 MB values, crafted loader variables
        Case {
            name: "NVIDIA_VISIBLE_DEVICES of 10 MB",
            setup: |r| {
                add_env(
                    r,
                    format!("NVIDIA_VISIBLE_DEVICES={}", "0,".repeat(5 << 20)),
                )
            },
            env: &[],
            ..BASE
        },
        Case {
            name: "NVIDIA_DRIVER_CAPABILITIES of 10 MB",
            setup: |r| {
                add_env(
                    r,
                    format!(
                        "NVIDIA_DRIVER_CAPABILITIES={}",
                        "compute,".repeat(10 << 20 >> 3)
                    ),
                )
            },
            env: GPU,
            ..BASE
        },
        Case {
            name: "NVIDIA_REQUIRE_CUDA of 10 MB",
            setup: |r| {
                add_env(
                    r,
                    format!("NVIDIA_REQUIRE_CUDA={}", "cuda>=1.0 ".repeat(1 << 20)),
                )
            },
            env: GPU,
            ..BASE
        },
        Case {
            name: "NVIDIA_MIG_CONFIG_DEVICES of 10 MB with ../ and newlines",
            setup: |r| {
                add_env(
                    r,
                    format!(
                        "NVIDIA_MIG_CONFIG_DEVICES={}",
                        "../\n".repeat(10 << 20 >> 2)
                    ),
                )
            },
            env: GPU,
            ..BASE
        },
        Case {
            name: "loader variables aimed at the host (LD_AUDIT, LD_DEBUG_OUTPUT, $ORIGIN)",
            setup: |_| {},
            env: &[
                "NVIDIA_VISIBLE_DEVICES=0",
                "LD_PRELOAD=/tmp/nvhook-hostile-pwned.so\n/../../../tmp/nvhook-hostile-pwned.so",
                "LD_LIBRARY_PATH=$ORIGIN/../../../../tmp:/proc/self/root/tmp:/proc/1/root/tmp",
                "LD_AUDIT=/tmp/nvhook-hostile-pwned.so",
                "LD_DEBUG=all",
                "LD_DEBUG_OUTPUT=/tmp/nvhook-hostile-pwned",
                "GCONV_PATH=/tmp/nvhook-hostile-pwned",
            ],
            expect: Expect::Starts,
            ..BASE
        },
        Case {
            name: "usr/bin in a user volume mounted rshared (docker's rootfsPropagation)",
            setup: |r| shared_volume(r, "usr/bin", "bin"),
            env: GPU,
            expect: Expect::Refused,
            says: "shared propagation",
            ..BASE
        },
        Case {
            name: "multiarch dir in a user volume mounted rshared",
            setup: |r| shared_volume(r, T, "lib"),
            env: GPU,
            expect: Expect::Refused,
            says: "shared propagation",
            ..BASE
        },
        Case {
            name: "MIG config asked through a device volume mount, unprivileged",
            setup: |r| volume_mount_request(r, "NVIDIA_MIG_CONFIG_DEVICES=all"),
            env: &[],
            expect: Expect::Refused,
            says: "NVIDIA_MIG_CONFIG_DEVICES: cannot be set in a non-privileged container",
            ..BASE
        },
        Case {
            name: "MIG monitor asked through a device volume mount, unprivileged",
            setup: |r| volume_mount_request(r, "NVIDIA_MIG_MONITOR_DEVICES=all"),
            env: &[],
            expect: Expect::Refused,
            says: "NVIDIA_MIG_MONITOR_DEVICES: cannot be set in a non-privileged container",
            ..BASE
        },
        Case {
            name: "LD_LIBRARY_PATH of 100 KB",
            setup: |r| add_env(r, format!("LD_LIBRARY_PATH={}", "/../tmp:".repeat(12800))),
            env: GPU,
            expect: Expect::Starts,
            ..BASE
        },
    ]
}

struct Ran {
    run: Run,
    before: Vec<String>,
    after: Vec<String>,
    /// temporary files nvhook left in the rootfs
    leftovers: Vec<String>,
}

fn run_case(c: &Case, with_hook: bool) -> Ran {
    // The reference run (no hook) only shows what runc itself does to the host: it runs the
    // static busybox `true`, so a hostile image's own linker (a FIFO as ld.so.cache blocks it
    // forever) cannot hang it.
    let script = if with_hook {
        "probe cuda; [ -e /ldconfig-ran ] && echo LDCONFIG-RAN; true"
    } else {
        "true"
    };
    let mut s = Spec::new(c.env, script);
    s.rootfs = c.image;
    if !with_hook {
        s.stage = Stage::None;
    }
    let b = bundle(&s);
    std::fs::create_dir_all(b.dir.join("outside")).unwrap();
    std::fs::write(b.dir.join("outside/canary"), b"canary").unwrap();
    (c.setup)(&b.rootfs());
    let before = host_state(&b.dir);
    let run = run_oci("runc", &b);
    let after = host_state(&b.dir);
    let leftovers = leftovers(&b.rootfs());
    // a case may have mounted something under its bundle (a tmpfs or read-only rootfs): that
    // goes before the bundle is removed
    unmount_under(&b.dir);
    Ran {
        run,
        before,
        after,
        leftovers,
    }
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
    // NVHOOK_HOSTILE_CASE=<part of a name> runs only the matching cases (while debugging one)
    let only = std::env::var("NVHOOK_HOSTILE_CASE").ok();
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| only.as_ref().is_none_or(|o| c.name.contains(o.as_str())))
        .collect();
    assert!(
        cases.len() >= 70 || only.is_some(),
        "the suite has {} cases",
        cases.len()
    );
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for c in &cases {
        let plain = run_case(c, false);
        let runc_did = diff(&plain.before, &plain.after);
        let ran = run_case(c, true);
        let hook_did: Vec<String> = diff(&ran.before, &ran.after)
            .into_iter()
            .filter(|l| !runc_did.contains(l))
            .chain(
                ran.leftovers
                    .iter()
                    .map(|l| format!("left in the rootfs: {l}")),
            )
            .collect();
        let r = ran.run;
        let started = r.ok;
        let refused_cleanly = !r.ok && r.stderr.contains("nvhook: error:");
        let outcome_ok = match c.expect {
            Expect::Starts => started && r.has("cuda: path=") && !r.has("LDCONFIG-RAN"),
            Expect::Refused => refused_cleanly && r.stderr.contains(c.says),
            // either end is fine; a failure that is not nvhook's refusal must be the image's own
            // (the process could not run), never a hook crash
            Expect::Either => {
                !r.has("LDCONFIG-RAN")
                    && !r.stderr.contains("panicked")
                    && (started || refused_cleanly || !r.stderr.contains("error running hook"))
            }
        };
        let why = if started || refused_cleanly {
            String::new()
        } else {
            // the runtime's own reason (the process could not start)
            let last = r.stderr.lines().last().unwrap_or("").to_owned();
            let tail: String = last
                .chars()
                .rev()
                .take(90)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!(" [{tail}]")
        };
        let line = format!(
            "{:<62} {:<8} host changes by nvhook: {}{}{why}",
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

/// The swaps raced against nvhook: (the name in the image, the symlink swapped in for it, where
/// that symlink points). Each pair is swapped by its own racer, all at once.
const RACES: &[(&str, &str, &str)] = &[
    // relative from usr/lib: the bundle directory, outside the rootfs
    (
        "usr/lib/x86_64-linux-gnu",
        "usr/lib/.race-multiarch",
        "../../..",
    ),
    ("usr/bin", "usr/.race-bin", "/"),
    (
        "usr/lib/firmware",
        "usr/lib/.race-firmware",
        "../../../outside",
    ),
    (
        "etc/ld.so.cache",
        "etc/.race-ldcache",
        "../../outside/canary",
    ),
];

fn tail(s: &str, n: usize) -> String {
    let v: Vec<char> = s.chars().collect();
    v[v.len().saturating_sub(n)..].iter().collect()
}

/// SIGTERM the racers still running (checked by name: a pid may have been reused), and wait
/// until each has written its count (they swap back and print at once on SIGTERM).
fn stop_racers(pids: &str, work: &Path) {
    for p in pids.split_whitespace() {
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains("racer") {
            let _ = Command::new("kill").arg(p).status();
        }
    }
    for j in 0..RACES.len() {
        let f = work.join(format!("swaps-{j}"));
        for _ in 0..10_000 {
            if std::fs::metadata(&f).is_ok_and(|m| m.len() > 0) || !f.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// The mount points of a mountinfo listing.
fn mount_points(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect()
}

/// A racing process in the container's mount namespace swaps directories of the image with
/// symlinks to `/`, `../../..` and the canary (renameat2 RENAME_EXCHANGE in a tight loop) for
/// the whole time nvhook runs, start after start. Prestart hooks run in order: the first starts
/// the racers (with nsenter, after recording the container's mount table), nvhook runs, the
/// third stops them and records the container's mount table again. Every start must succeed or
/// be refused by nvhook; nothing may change on the host, and every mount nvhook added in the
/// container's namespace must lie inside the rootfs.
#[test]
fn symlinks_swapped_while_the_hook_runs_never_escape() {
    const STARTS: usize = 50;
    let _g = serial();
    let fx = fixtures();
    let racer = fx.dir.join("racer");
    let (mut started, mut with_cuda, mut refused, mut swaps) = (0, 0, 0, Vec::new());
    let mut reasons: Vec<String> = Vec::new();
    let mut failures = Vec::new();
    for i in 0..STARTS {
        // nvhook's files may land elsewhere in the rootfs when a swap wins the walk: the container
        // then starts without a working libcuda, which is safe; only the host matters here
        let b = bundle(&Spec::new(GPU, "probe cuda; true"));
        let root = b.rootfs();
        std::fs::create_dir_all(b.dir.join("outside")).unwrap();
        std::fs::write(b.dir.join("outside/canary"), b"canary").unwrap();
        std::fs::create_dir_all(root.join("usr/lib/firmware/nvidia")).unwrap();
        for (_, alt, target) in RACES {
            symlink(target, root.join(alt)).unwrap();
        }
        // the hooks' scratch space, beside the bundle (the bundle's tree is part of the check)
        let work = b.dir.with_extension("race");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let w = work.display();
        let mut start = format!(
            "#!/bin/sh\nset -e\npid=$(sed -n 's/.*\"pid\": *\\([0-9]*\\).*/\\1/p')\n\
             cat /proc/$pid/mountinfo > {w}/mounts-before\n"
        );
        for (j, (name, alt, _)) in RACES.iter().enumerate() {
            start += &format!(
                "nsenter -t $pid -m -- {} {w}/ready-{j} {r}/{name} {r}/{alt} > {w}/swaps-{j} 2>&1 &\n\
                 echo $! >> {w}/pids\n",
                racer.display(),
                r = root.display()
            );
        }
        // wait for every racer's first swap (or its death)
        for j in 0..RACES.len() {
            start += &format!(
                "while [ ! -e {w}/ready-{j} ]; do if [ -s {w}/swaps-{j} ]; then exit 1; fi; done\n"
            );
        }
        let mut stop = format!(
            "#!/bin/sh\npid=$(sed -n 's/.*\"pid\": *\\([0-9]*\\).*/\\1/p')\n\
             for p in $(cat {w}/pids); do kill $p; done\n"
        );
        for j in 0..RACES.len() {
            stop += &format!("while [ ! -s {w}/swaps-{j} ]; do :; done\n");
        }
        stop += &format!("cat /proc/$pid/mountinfo > {w}/mounts-after\n");
        for (name, text) in [("start.sh", &start), ("stop.sh", &stop)] {
            std::fs::write(work.join(name), text).unwrap();
            std::fs::set_permissions(
                work.join(name),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .unwrap();
        }
        edit_config(&root, |c| {
            let nvhook = c["hooks"]["prestart"][0].clone();
            let hook = |p: &str| serde_json::json!({ "path": work.join(p) });
            c["hooks"]["prestart"] = serde_json::json!([hook("start.sh"), nvhook, hook("stop.sh")]);
        });

        let before = host_state(&b.dir);
        let r = run_oci("runc", &b);
        let after = host_state(&b.dir);
        let read = |n: &str| std::fs::read_to_string(work.join(n)).unwrap_or_default();
        // the third hook stops the racers; when nvhook refused the container it never ran
        stop_racers(&read("pids"), &work);
        let n: Vec<u64> = (0..RACES.len())
            .map(|j| read(&format!("swaps-{j}")).trim().parse().unwrap_or(0))
            .collect();
        let (mb, ma) = (
            mount_points(&read("mounts-before")),
            mount_points(&read("mounts-after")),
        );
        let rootfs = root.to_string_lossy().into_owned();
        let outside: Vec<&String> = ma
            .iter()
            .filter(|m| !mb.contains(m) && !m.starts_with(&rootfs))
            .collect();
        let changed = diff(&before, &after);
        let refused_cleanly = !r.ok && r.stderr.contains("nvhook: error:");
        if r.ok {
            started += 1;
            with_cuda += r.has("cuda: path=") as usize;
        } else if refused_cleanly {
            refused += 1;
            if let Some(e) = r.stderr.split("nvhook: error: ").nth(1) {
                let e: String = e.chars().take_while(|c| *c != '\\' && *c != '"').collect();
                if !reasons.contains(&e) {
                    reasons.push(e);
                }
            }
        }
        if !(r.ok || refused_cleanly)
            || !changed.is_empty()
            || !outside.is_empty()
            || (r.ok && ma.is_empty())
            || n.contains(&0)
        {
            failures.push(format!(
                "start {i}: ok={} swaps={n:?} host changes={changed:?} mounts outside the rootfs={outside:?} \
                 (container mount table read: {})\n  racers: {:?}\n  stdout: {}\n  stderr: ...{}",
                r.ok,
                !ma.is_empty(),
                (0..RACES.len()).map(|j| read(&format!("swaps-{j}"))).collect::<Vec<_>>(),
                r.stdout,
                tail(&r.stderr, 400)
            ));
        }
        swaps.push(n.iter().sum::<u64>());
        let _ = std::fs::remove_dir_all(&work);
    }
    println!(
        "{STARTS} starts raced by {} renameat2 swappers: {started} started ({with_cuda} with \
         libcuda resolvable), {refused} refused by nvhook; swaps per start: min {} max {} total {}",
        RACES.len(),
        swaps.iter().min().unwrap_or(&0),
        swaps.iter().max().unwrap_or(&0),
        swaps.iter().sum::<u64>()
    );
    println!("nvhook's refusals:\n  {}", reasons.join("\n  "));
    assert!(
        failures.is_empty(),
        "{} of {STARTS} raced starts failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Opening a FIFO releases a writer waiting on it; opening a device node runs its driver's open.
/// nvhook runs on the host with every capability, outside the container's device cgroup, so it
/// must never open what the image planted unless it is a regular file: a writer blocked on the
/// image's `/etc/ld.so.cache` FIFO must still be blocked after the (refused) start.
#[test]
fn a_fifo_of_the_image_is_never_opened() {
    let _g = serial();
    let b = bundle(&Spec::new(GPU, "true"));
    let fifo = b.rootfs().join("etc/ld.so.cache");
    rm(&fifo);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let mark = b.dir.join("writer-released");
    let mut writer = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3>{}; echo released > {}",
            fifo.display(),
            mark.display()
        ))
        .spawn()
        .unwrap();
    let r = run_oci("runc", &b);
    let still_blocked = writer.try_wait().unwrap().is_none() && !mark.exists();
    let _ = writer.kill();
    let _ = writer.wait();
    assert!(
        !r.ok && r.stderr.contains("/etc/ld.so.cache"),
        "a FIFO as ld.so.cache must be refused, naming it:\n{}",
        r.stderr
    );
    assert!(
        still_blocked,
        "nvhook opened the image's FIFO (the writer waiting on it was released)"
    );
}

/// Issue 16, item 4 (config.json): memory is bounded by what nvhook keeps, not by the file.
/// `nvhook plan` runs in an address space of 64 MiB (prlimit, util-linux): a 13 MB config.json of
/// a million variables nvhook does not read plans the GPU it asks for (nvhook 0.1 kept every
/// variable, twice: it died), and a 64 MiB one is refused by its size before it is read.
#[test]
fn huge_config_json_stays_within_a_small_address_space() {
    require_tool("prlimit", "util-linux");
    let fx = fixtures();
    let b = bundle(&Spec::new(&["NVIDIA_VISIBLE_DEVICES=0"], "true"));
    let path = b.dir.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let plan = |what: &str| {
        let o = Command::new("prlimit")
            .arg(format!("--as={}", 64 << 20))
            .arg("--")
            .arg(nvhook())
            .arg("--config")
            .arg(&fx.config)
            .args(["plan", "--bundle"])
            .arg(&b.dir)
            .output()
            .unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        eprintln!(
            "{what}: exit {:?}, stderr {}",
            o.status.code(),
            tail(&err, 400)
        );
        (o.status.success(), out, err)
    };
    let env = spec["process"]["env"].as_array_mut().unwrap();
    env.extend((0..1_000_000).map(|i| serde_json::json!(format!("V{i}=x"))));
    std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let (ok, out, err) = plan("a million variables");
    assert!(ok && out.contains("/dev/nvidia1"), "{err}");

    spec["padding"] = serde_json::json!("x".repeat(64 << 20));
    std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let (ok, _, err) = plan("64 MiB");
    assert!(
        !ok && err.contains("config.json") && err.contains("larger than 16 MiB"),
        "{err}"
    );
}

/// The rootfs changes between prestart and poststop (another container sharing it, anyone on
/// the host with access to it): a mount-point directory nvhook created becomes a symlink to a
/// host directory holding a canary, an empty file it created is renamed away and a hard link to
/// a host file put in its place, the linker cache it wrote becomes a symlink to a host file.
/// Poststop must leave all three, and the host files, as they are, and still remove the rest.
#[test]
fn a_rootfs_swapped_between_prestart_and_poststop_makes_poststop_delete_nothing_else() {
    let _g = serial();
    let mut s = Spec::new(GPU, "true");
    s.poststop = true;
    let b = bundle(&s);
    let (root, outside) = (b.rootfs(), b.dir.join("outside"));
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("canary"), b"canary").unwrap();
    std::fs::write(outside.join("important"), b"host-important").unwrap();
    prepare_host();
    // the container's stdio is runc's: nothing a test would wait on for EOF
    let log = b.dir.join("create.log");
    let created = Command::new("runc")
        .arg("--log")
        .arg(&log)
        .args(["create", "--bundle"])
        .arg(&b.dir)
        .arg(&b.id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        created.success(),
        "runc create: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // what nvhook made, as its record says, seen from the host (the mounts are the container's)
    // read as nvhook reads it (the record line and the line its finish appended, folded)
    let store = nvhook::cleanup::Store::open_at(RECORD_DIR.into(), false)
        .unwrap()
        .expect("nvhook's record directory");
    let rec = serde_json::to_value(store.read(&b.id).unwrap().expect("nvhook's record")).unwrap();
    let made = |kind: &str, was: &str| -> Vec<String> {
        let mut v: Vec<String> = rec["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind && e["before"]["was"] == was)
            .map(|e| {
                e["path"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches('/')
                    .to_owned()
            })
            .filter(|p| root.join(p).symlink_metadata().is_ok())
            .collect();
        v.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
        v
    };
    let (dirs, files) = (made("dir", "absent"), made("file", "absent"));
    assert!(
        !dirs.is_empty() && files.len() >= 2,
        "nvhook made no directory or too few files: {rec}"
    );
    // a directory that is empty from the host (a mount point for a directory)
    let dir = dirs
        .iter()
        .find(|d| std::fs::read_dir(root.join(d)).is_ok_and(|mut r| r.next().is_none()))
        .unwrap_or_else(|| panic!("no empty directory among {dirs:?}"));
    let (file, kept) = (&files[0], &files[1]);
    std::fs::remove_dir(root.join(dir)).unwrap();
    symlink(&outside, root.join(dir)).unwrap();
    std::fs::rename(root.join(file), root.join(format!("{file}.moved"))).unwrap();
    std::fs::hard_link(outside.join("important"), root.join(file)).unwrap();
    let cache = root.join("etc/ld.so.cache");
    std::fs::rename(&cache, root.join("etc/ld.so.cache.moved")).unwrap();
    symlink(outside.join("canary"), &cache).unwrap();
    let before = host_state(&b.dir);
    let deleted = Command::new("runc")
        .args(["delete", "--force"])
        .arg(&b.id)
        .output()
        .unwrap();
    assert!(deleted.status.success(), "runc delete: {deleted:?}");
    assert_eq!(diff(&before, &host_state(&b.dir)), Vec::<String>::new());
    assert_eq!(std::fs::read(outside.join("canary")).unwrap(), b"canary");
    assert_eq!(
        std::fs::read(outside.join("important")).unwrap(),
        b"host-important"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(outside.join("important"))
            .unwrap()
            .nlink(),
        2,
        "the hard link in the rootfs is left"
    );
    assert!(
        std::fs::read_link(root.join(dir)).is_ok(),
        "{dir}: the symlink is left"
    );
    assert_eq!(std::fs::read_link(&cache).unwrap(), outside.join("canary"));
    assert!(root.join(format!("{file}.moved")).exists());
    // and what was not touched was removed: poststop ran
    assert!(
        root.join(kept).symlink_metadata().is_err(),
        "{kept}: poststop did not remove what nvhook made"
    );
    assert!(records_of(&b.id).is_empty(), "{:?}", records_of(&b.id));
}
