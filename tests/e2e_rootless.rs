#![forbid(unsafe_code)]
//! End to end under rootless podman: a non-root user (`nvhooktest`, created here if missing,
//! with /etc/subuid and /etc/subgid ranges) runs `podman run` with nvhook from a hooks dir.
//! podman runs the hook as root of the user's user namespace; nvhook must give the container
//! its GPU without touching the device cgroup, and refuse with a clear message what the user
//! cannot have (a node it may not open, a node on a nodev mount).
//!
//! The test itself runs as root (to create the user, device nodes and a nodev mount); every
//! container is started by the user through `runuser`. Everything the user needs (driver tree,
//! nodes, the nvhook binary, the config, podman's storage) lives under /var/tmp, which any user
//! can traverse, whatever the mode of the directory this repository was cloned into.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::*;
use serde_json::{Value, json};

const USER: &str = "nvhooktest";
/// A group that owns the "group" variant of the nodes; the user is a member.
const GROUP: &str = "nvhookgpu";
const IMAGE: &str = "localhost/nvhook-test:debian";

fn sh(script: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(script).output().unwrap()
}

fn sh_ok(script: &str) {
    let o = sh(script);
    assert!(
        o.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The user, its subordinate id ranges and its group (idempotent).
fn ensure_user() -> u32 {
    sh_ok(&format!(
        "getent group {GROUP} >/dev/null || groupadd {GROUP}; \
         id -u {USER} >/dev/null 2>&1 || useradd --no-create-home --home-dir /nonexistent --shell /bin/sh {USER}; \
         usermod -aG {GROUP} {USER}; \
         touch /etc/subuid /etc/subgid; \
         grep -q '^{USER}:' /etc/subuid || usermod --add-subuids 400000-465535 {USER}; \
         grep -q '^{USER}:' /etc/subgid || usermod --add-subgids 400000-465535 {USER}"
    ));
    let o = sh(&format!("id -u {USER}"));
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

struct Rootless {
    dir: PathBuf,
    uid: u32,
    xdg: PathBuf,
}

fn chown_user(path: &Path, uid: u32) {
    nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(uid)), None).unwrap();
}

/// Copy `src` (a fixture tree) into `dst` as root, keeping device nodes and modes.
fn copy(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", src.display(), dst.display());
}

/// A hooks dir registering the packaged hooks.d file with our binary and `config`.
fn hooks_dir(dir: &Path, name: &str, config: &Path) -> PathBuf {
    let hooks = dir.join(format!("hooks-{name}.d"));
    std::fs::create_dir_all(&hooks).unwrap();
    let packaged: Value = serde_json::from_slice(
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks.d/nvhook.json")).unwrap(),
    )
    .unwrap();
    let mut hook = packaged;
    hook["hook"]["path"] = json!(dir.join("nvhook"));
    hook["hook"]["args"] = json!(["nvhook", "--config", config, "prestart"]);
    hook["hook"]["env"] = json!(["NVHOOK_LOG=info"]);
    std::fs::write(
        hooks.join("nvhook.json"),
        serde_json::to_vec(&hook).unwrap(),
    )
    .unwrap();
    hooks
}

/// A config whose dev-root is `dev_root` (holding `dev/`).
fn config(dir: &Path, name: &str, dev_root: &Path) -> PathBuf {
    let path = dir.join(format!("config-{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "driver-root = \"{0}/driver\"\ndev-root = \"{1}\"\nproc-root = \"{0}/proc\"\nsys-root = \"{0}/sys\"\n",
            dir.display(),
            dev_root.display()
        ),
    )
    .unwrap();
    path
}

fn rootless() -> &'static Rootless {
    static R: OnceLock<Rootless> = OnceLock::new();
    R.get_or_init(|| {
        require_tool("podman", "podman");
        require_tool("crun", "crun");
        require_tool("newuidmap", "uidmap");
        require_tool("runuser", "util-linux");
        prepare_host();
        let fx = fixtures();
        let uid = ensure_user();
        let xdg = PathBuf::from(format!("/run/nvhook-rootless-{uid}"));
        // The previous run's rootless podman left its pause process (it holds the user's
        // namespaces); end it by its pid file before its runtime directory is removed.
        if let Ok(pid) = std::fs::read_to_string(xdg.join("libpod/tmp/pause.pid"))
            && let Ok(pid) = pid.trim().parse::<u32>() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        let dir = PathBuf::from("/var/tmp/nvhook-rootless-test");
        let _ = Command::new("umount")
            .arg("-l")
            .arg(dir.join("nodev"))
            .stderr(Stdio::null())
            .status();
        for d in [&dir, &xdg] {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o700)).unwrap();
        chown_user(&xdg, uid);
        for t in ["driver", "proc", "sys", "dev", "rootfs-debian.tar"] {
            copy(&fx.dir.join(t), &dir.join(t));
        }
        copy(Path::new(nvhook()), &dir.join("nvhook"));
        // Device-node variants: owned by root and a group of the user (0660), root's alone (0600)
        for (name, mode, group) in [("group", "660", GROUP), ("private", "600", "root")] {
            let root = dir.join(format!("dev-{name}"));
            std::fs::create_dir_all(&root).unwrap();
            copy(&fx.dir.join("dev"), &root.join("dev"));
            sh_ok(&format!(
                "chgrp {group} {0}/dev/nvidia* && chmod {mode} {0}/dev/nvidia*",
                root.display()
            ));
        }
        for d in ["home", "storage"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
            chown_user(&dir.join(d), uid);
        }
        std::fs::create_dir_all(dir.join("nodev")).unwrap();
        let r = Rootless { dir, uid, xdg };
        // The first podman command starts the user's pause process, whose mount namespace every
        // later podman command joins. It is started in a private mount namespace of its own
        // holding a nodev tmpfs with copies of the nodes, so the nodev case has its mount
        // without the host's mount table ever changing.
        let mut import = Command::new("unshare");
        import
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o nodev,mode=755 nvhook-nodev {0}/nodev && cp -a {0}/dev {0}/nodev/dev && exec \"$@\"",
                r.dir.display()
            ))
            .arg("sh");
        let podman = r.podman();
        import
            .arg(podman.get_program())
            .args(podman.get_args())
            .arg("import")
            .arg(r.dir.join("rootfs-debian.tar"))
            .arg(IMAGE)
            .current_dir(&r.dir);
        let o = import.output().unwrap();
        assert!(
            o.status.success(),
            "rootless podman import: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        r
    })
}

impl Rootless {
    /// `podman` as the user, with its own storage (vfs: needs neither fuse-overlayfs nor
    /// kernel support for unprivileged overlay).
    fn podman(&self) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", USER, "--", "env"])
            .arg(format!("HOME={}", self.dir.join("home").display()))
            .arg(format!("XDG_RUNTIME_DIR={}", self.xdg.display()))
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.xdg.join("storage"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        c
    }

    /// The host's mounts that a leak of this test's mounts would show: anything under the test's
    /// directory or the fixtures, or named like a GPU file. (Other podman containers on the
    /// machine come and go in the full table; rootless containers add none to it.)
    fn host_mounts(&self) -> Vec<String> {
        let (dir, fx) = (self.dir.to_string_lossy(), fixtures().dir.to_string_lossy());
        host_mounts()
            .into_iter()
            .filter(|m| m.contains(dir.as_ref()) || m.contains(fx.as_ref()) || m.contains("nvidia"))
            .collect()
    }

    /// A hooks dir whose nvhook uses the fixture nodes under `dev_root` (the plain ones: 0666).
    fn hooks(&self, name: &str, dev_root: &Path) -> PathBuf {
        let cfg = config(&self.dir, name, dev_root);
        hooks_dir(&self.dir, name, &cfg)
    }

    fn run(&self, hooks: &Path, env: &[&str], extra: &[&str], script: &str) -> Run {
        self.run_in(None, hooks, env, extra, script)
    }

    /// `podman run` started in the v1 devices cgroup `cgroup` (podman, conmon and the container
    /// stay in their starter's cgroup: a rootless podman on cgroup v1 creates none).
    fn run_in(
        &self,
        cgroup: Option<&Path>,
        hooks: &Path,
        env: &[&str],
        extra: &[&str],
        script: &str,
    ) -> Run {
        let _g = serial();
        let before = self.host_mounts();
        let podman = self.podman();
        let mut c = match cgroup {
            Some(cg) => {
                let mut c = Command::new("sh");
                c.args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
                    .arg(cg.join("cgroup.procs"))
                    .arg(podman.get_program())
                    .args(podman.get_args())
                    .current_dir(&self.dir)
                    .stdin(Stdio::null());
                c
            }
            None => podman,
        };
        c.args(["run", "--rm", "--network", "none"])
            .arg("--hooks-dir")
            .arg(hooks);
        for e in env {
            c.args(["-e", e]);
        }
        let o = c
            .args(extra)
            .arg(IMAGE)
            .args(["/bin/sh", "-c", script])
            .output()
            .unwrap();
        let r = Run {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        };
        assert_eq!(
            before,
            self.host_mounts(),
            "the host's mount table changed:\n{}\n{}",
            r.stdout,
            r.stderr
        );
        r
    }
}

/// What the container reports: that it is in a user namespace, its GPU nodes and whether they
/// open (nvidiactl's major has no driver: ENXIO means the device cgroup let the open through),
/// libcuda by soname through the linker cache, nvidia-smi, and the flags of the bind mounts.
const REPORT: &str = "\
head -n1 /proc/self/uid_map | tr -s ' ' | sed 's/^ /uidmap:/'; \
for n in nvidia0 nvidia1 nvidiactl; do [ -e /dev/$n ] && echo node:$n; done; \
probe open /dev/nvidia1 /dev/nvidiactl; probe cuda; echo cuda-rc:$?; \
nvidia-smi >/dev/null 2>&1 && echo smi:ok; \
grep -E ' /dev/nvidia1 | /usr/lib/[^ ]*/libcuda[.]so[.][0-9]+[.]' /proc/self/mountinfo | cut -d' ' -f5,6; true";

fn mount_opts<'a>(r: &'a Run, target_suffix: &str) -> &'a str {
    r.stdout
        .lines()
        .find(|l| {
            l.split(' ')
                .next()
                .is_some_and(|t| t.ends_with(target_suffix))
        })
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or_else(|| panic!("no mount for {target_suffix}:\n{}", r.stdout))
}

#[test]
fn one_gpu_in_a_rootless_container() {
    let rl = rootless();
    let hooks = rl.hooks("plain", &rl.dir);
    let r = rl
        .run(&hooks, &["NVIDIA_VISIBLE_DEVICES=0"], &[], REPORT)
        .expect_ok("rootless podman");
    // really rootless: the container's root is the user
    assert!(
        r.has(&format!("uidmap:0 {} 1", rl.uid)),
        "not in the user's namespace:\n{}",
        r.stdout
    );
    // GPU index 0 is minor 1: /dev/nvidia1 and nothing of the other GPU
    assert!(
        r.has("node:nvidia1") && !r.has("node:nvidia0") && r.has("node:nvidiactl"),
        "{}",
        r.stdout
    );
    assert!(
        r.has("/dev/nvidia1: ok") && r.has("/dev/nvidiactl: ENXIO"),
        "{}",
        r.stdout
    );
    assert!(
        r.has("path=/usr/lib/x86_64-linux-gnu/libcuda.so.1")
            && r.has("cuInit=0 devices=1")
            && r.has("cuda-rc:0")
            && r.has("smi:ok"),
        "{}",
        r.stdout
    );
    // the bind mounts carry the flags nvhook set, even in a user namespace
    let node = mount_opts(&r, "/dev/nvidia1");
    assert!(
        node.contains("ro") && node.contains("nosuid") && !node.contains("nodev"),
        "{node}"
    );
    let lib = mount_opts(&r, &format!("/libcuda.so.{}", fixtures().version));
    assert!(
        lib.contains("ro") && lib.contains("nosuid") && lib.contains("nodev"),
        "{lib}"
    );
}

#[test]
fn no_request_no_change_rootless() {
    let rl = rootless();
    let hooks = rl.hooks("plain", &rl.dir);
    let r = rl
        .run(&hooks, &[], &[], REPORT)
        .expect_ok("rootless podman, no GPU");
    assert!(
        !r.has("node:") && r.has("cuda: dlopen failed"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_node_the_user_cannot_open_stops_the_container_with_the_reason() {
    let rl = rootless();
    let hooks = rl.hooks("private", &rl.dir.join("dev-private"));
    let r = rl.run(&hooks, &["NVIDIA_VISIBLE_DEVICES=0"], &[], "echo started");
    assert!(!r.ok && !r.has("started"), "{}\n{}", r.stdout, r.stderr);
    let node = rl.dir.join("dev-private/dev/nvidia1");
    assert!(
        r.stderr.contains("nvhook: error: rootless:")
            && r.stderr.contains(&format!("{} (mode 0600", node.display()))
            && r.stderr.contains(&format!("host uid {}", rl.uid))
            && r.stderr.contains("NVreg_DeviceFileMode"),
        "{}",
        r.stderr
    );
}

#[test]
fn group_owned_nodes_need_keep_groups() {
    let rl = rootless();
    let hooks = rl.hooks("group", &rl.dir.join("dev-group"));
    let r = rl.run(&hooks, &["NVIDIA_VISIBLE_DEVICES=0"], &[], "echo started");
    assert!(!r.ok && !r.has("started"), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("nvidia1 (mode 0660") && r.stderr.contains("--group-add keep-groups"),
        "{}",
        r.stderr
    );
    let r = rl
        .run(
            &hooks,
            &["NVIDIA_VISIBLE_DEVICES=0"],
            &["--group-add", "keep-groups"],
            REPORT,
        )
        .expect_ok("rootless podman --group-add keep-groups");
    assert!(
        r.has("/dev/nvidia1: ok") && r.has("cuda-rc:0"),
        "{}",
        r.stdout
    );
}

/// A host mount's nodev is locked in a user namespace: a node there would be unusable in the
/// container, so nvhook refuses before mounting anything. The nodev mount exists only in the
/// user's namespaces (see [`rootless`]).
#[test]
fn a_node_on_a_nodev_mount_is_refused() {
    let rl = rootless();
    let hooks = rl.hooks("nodev", &rl.dir.join("nodev"));
    let r = rl.run(&hooks, &["NVIDIA_VISIBLE_DEVICES=0"], &[], "echo started");
    assert!(!r.ok && !r.has("started"), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "nvhook: error: rootless: device node(s) {0}/nodev/dev/nvidiactl, {0}/nodev/dev/nvidia-uvm",
            rl.dir.display()
        )) && r.stderr.contains(&format!("{}/nodev/dev/nvidia1", rl.dir.display()))
            && r
            .stderr
            .contains("nodev, a flag that a user namespace cannot lift"),
        "{}",
        r.stderr
    );
}

/// `--userns=keep-id`: the container runs as the user's own uid in a nested user namespace; the
/// spec's uid/gid mappings translate it (to root of the user's namespace, i.e. the user), so the
/// check judges the right credentials both ways.
#[test]
fn keep_id_containers() {
    let rl = rootless();
    let hooks = rl.hooks("plain", &rl.dir);
    let script = "id -u; probe open /dev/nvidia1; probe cuda; echo cuda-rc:$?";
    let r = rl
        .run(
            &hooks,
            &["NVIDIA_VISIBLE_DEVICES=0"],
            &["--userns=keep-id"],
            script,
        )
        .expect_ok("rootless podman --userns=keep-id");
    assert!(
        r.stdout.lines().next() == Some(rl.uid.to_string().as_str())
            && r.has("/dev/nvidia1: ok")
            && r.has("cuda-rc:0"),
        "{}",
        r.stdout
    );
    let hooks = rl.hooks("private", &rl.dir.join("dev-private"));
    let r = rl.run(
        &hooks,
        &["NVIDIA_VISIBLE_DEVICES=0"],
        &["--userns=keep-id"],
        "echo started",
    );
    assert!(
        !r.ok && !r.has("started") && r.stderr.contains("dev-private/dev/nvidia1 (mode 0600"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
}

/// A v1 device cgroup for the rootless podman to start in: deny everything, then allow `allow`.
struct DeviceCgroupV1(PathBuf);

impl DeviceCgroupV1 {
    fn new(name: &str, allow: &[&str]) -> DeviceCgroupV1 {
        let root = Path::new("/sys/fs/cgroup/devices");
        assert!(
            root.join("devices.allow").exists(),
            "this test needs the cgroup v1 devices hierarchy at {} (a hybrid cgroup host, as CI is)",
            root.display()
        );
        let dir = root.join(format!("nvhook-rootless-{name}"));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("devices.deny"), "a").unwrap();
        for a in allow {
            std::fs::write(dir.join("devices.allow"), a).unwrap();
        }
        DeviceCgroupV1(dir)
    }
}

impl Drop for DeviceCgroupV1 {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// What podman, conmon and a container need besides the GPU: null, zero, full, random, urandom
/// (and kmsg, the fake nvidia1), tty, console, ptmx, ptys.
const BASE_DEVICES: [&str; 3] = ["c 1:* rwm", "c 5:* rwm", "c 136:* rwm"];

/// nvhook cannot change a device cgroup from a user namespace, but on cgroup v1 it can read the
/// policy: a policy that would deny the GPU's nodes stops the container with the reason; one
/// that allows them works.
#[test]
fn a_v1_device_policy_is_read_not_changed() {
    let rl = rootless();
    let hooks = rl.hooks("plain", &rl.dir);
    let deny = DeviceCgroupV1::new("deny", &BASE_DEVICES);
    let r = rl.run_in(
        Some(&deny.0),
        &hooks,
        &["NVIDIA_VISIBLE_DEVICES=0"],
        &[],
        "echo started",
    );
    assert!(!r.ok && !r.has("started"), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(
            "nvhook: error: rootless: device cgroup v1 /sys/fs/cgroup/devices/nvhook-rootless-deny"
        ) && r.stderr.contains("does not allow c 120:255")
            && !r.stderr.contains("c 1:11"),
        "{}",
        r.stderr
    );
    // the policy is as it was: nvhook wrote nothing
    let list = std::fs::read_to_string(deny.0.join("devices.list")).unwrap();
    assert!(!list.contains("120:"), "{list}");
    drop(deny);

    let mut allow = BASE_DEVICES.to_vec();
    allow.push("c 120:* rw");
    let allow = DeviceCgroupV1::new("allow", &allow);
    let r = rl
        .run_in(
            Some(&allow.0),
            &hooks,
            &["NVIDIA_VISIBLE_DEVICES=0"],
            &[],
            &format!("{REPORT}; grep :devices: /proc/self/cgroup"),
        )
        .expect_ok("rootless podman in a device cgroup that allows the GPU");
    assert!(
        r.has("devices:/nvhook-rootless-allow")
            && r.has("/dev/nvidia1: ok")
            && r.has("/dev/nvidiactl: ENXIO")
            && r.has("cuda-rc:0"),
        "{}",
        r.stdout
    );
}

/// nvhook run by a user outside any user namespace of its own (as a rootless runc or crun started
/// directly runs its hooks) cannot mount anything: a clear error, before it touches anything.
#[test]
fn a_hook_without_privileges_says_so() {
    let rl = rootless();
    let bundle = rl.dir.join("bundle-direct");
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
            "process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0},"env":["NVIDIA_VISIBLE_DEVICES=0"]}}"#,
    )
    .unwrap();
    let state = format!(
        r#"{{"ociVersion":"1.0.2","id":"direct","status":"created","pid":{},"bundle":"{}"}}"#,
        std::process::id(),
        bundle.display()
    );
    let mut c = Command::new("runuser");
    c.args(["-u", USER, "--"])
        .arg(rl.dir.join("nvhook"))
        .arg("--config")
        .arg(config(&rl.dir, "direct", &rl.dir))
        .arg("prestart")
        .current_dir(&rl.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), state.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!("nvhook: error: rootless: nvhook (uid {})", rl.uid))
            && err.contains("no CAP_SYS_ADMIN"),
        "{err}"
    );
}
