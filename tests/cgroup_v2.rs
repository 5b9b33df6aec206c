//! The cgroup v2 device grant, on a real kernel.
//!
//! On a pure v2 host the device policy is an eBPF program the runtime attached. This test plays the
//! runtime: it makes cgroups on the cgroup2 mount (`/sys/fs/cgroup/unified` on the hybrid CI
//! machine, where BPF device programs are enforced on top of v1), attaches default-deny programs
//! like runc's, and checks that nvhook's grant lets exactly the granted device through while every
//! other decision of those programs still holds.

#![forbid(unsafe_code)]

mod common;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use nvhook::apply::bpfprog;
use nvhook::apply::cgroup::DeviceCgroup;
use nvhook::devnode::NodeType;
use nvhook::plan::DeviceRule;
use nvhook_sys as sys;

fn rule(major: u64, minor: u64) -> DeviceRule {
    DeviceRule {
        kind: NodeType::Char,
        major,
        minor,
    }
}

fn mount_point(fstype: &str, opt: Option<&str>) -> Option<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mi.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let post: Vec<&str> = post.split(' ').collect();
        let ok = post[0] == fstype
            && opt.is_none_or(|o| post.get(2).is_some_and(|s| s.split(',').any(|x| x == o)));
        ok.then(|| PathBuf::from(pre.split(' ').nth(4).unwrap()))
    })
}

/// A cgroup on the cgroup2 mount (and, on a hybrid host, a v1 devices cgroup of the same name),
/// removed on drop.
struct Cg {
    v2: PathBuf,
    v1: Option<PathBuf>,
}

impl Cg {
    fn new(parent: Option<&Cg>, name: &str) -> Cg {
        let v2root =
            mount_point("cgroup2", None).expect("a cgroup2 mount (cgroup v2 or hybrid host)");
        let v2 = parent.map_or(v2root, |p| p.v2.clone()).join(name);
        std::fs::create_dir_all(&v2).unwrap();
        let v1 = mount_point("cgroup", Some("devices")).map(|root| {
            let d = parent.and_then(|p| p.v1.clone()).unwrap_or(root).join(name);
            std::fs::create_dir_all(&d).unwrap();
            d
        });
        Cg { v2, v1 }
    }

    /// Attach a runtime-style program allowing only `allowed`, with BPF_F_ALLOW_MULTI.
    fn attach_runtime_program(&self, allowed: &[DeviceRule]) {
        let prog = sys::prog_load_cgroup_device(&bpfprog::allow_only(allowed), "GPL").unwrap();
        let dir = std::fs::File::open(&self.v2).unwrap();
        sys::prog_attach(
            dir.as_fd(),
            prog.as_fd(),
            sys::BPF_CGROUP_DEVICE,
            sys::BPF_F_ALLOW_MULTI,
            None,
        )
        .unwrap();
    }

    fn program_lengths(&self) -> Vec<usize> {
        let dir = std::fs::File::open(&self.v2).unwrap();
        let (_, ids) = sys::prog_query(dir.as_fd(), sys::BPF_CGROUP_DEVICE).unwrap();
        ids.into_iter()
            .map(|id| {
                sys::prog_xlated_insns(sys::prog_get_fd_by_id(id).unwrap().as_fd())
                    .unwrap()
                    .1
                    .len()
            })
            .collect()
    }

    /// A shell that moves itself into this cgroup, then runs `cmd`.
    fn spawn(&self, cmd: &str) -> Child {
        let mut join = format!("echo $$ > {}/cgroup.procs", self.v2.display());
        if let Some(v1) = &self.v1 {
            join.push_str(&format!(" && echo $$ > {}/cgroup.procs", v1.display()));
        }
        Command::new("sh")
            .arg("-c")
            .arg(format!("{join} && {cmd}"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn open(&self, paths: &[&str]) -> String {
        let probe = fixtures().dir.join("probe");
        let c = self.spawn(&format!(
            "exec {} open {}",
            probe.display(),
            paths.join(" ")
        ));
        String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap()
    }
}

impl Drop for Cg {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.v2);
        if let Some(v1) = &self.v1 {
            let _ = std::fs::remove_dir(v1);
        }
    }
}

fn sleeper(cg: &Cg) -> Child {
    let c = cg.spawn("exec sleep 30");
    // wait until it has joined
    for _ in 0..100 {
        let procs = std::fs::read_to_string(cg.v2.join("cgroup.procs")).unwrap();
        if procs.lines().any(|l| l == c.id().to_string()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    c
}

#[test]
fn grant_extends_the_runtime_programs_of_the_cgroup_and_its_ancestors() {
    let _g = serial();
    assert!(Path::new("/dev/fuse").exists() && Path::new("/dev/kmsg").exists());
    let parent = Cg::new(None, &format!("nvhook-test-{}", std::process::id()));
    let child = Cg::new(Some(&parent), "ctr");
    // The "runtime": the parent allows null and zero, the container's own cgroup only null.
    parent.attach_runtime_program(&[rule(1, 3), rule(1, 5)]);
    child.attach_runtime_program(&[rule(1, 3)]);
    let all = ["/dev/null", "/dev/zero", "/dev/fuse", "/dev/kmsg"];
    let before = child.open(&all);
    assert_eq!(
        before,
        "/dev/null: ok\n/dev/zero: EPERM\n/dev/fuse: EPERM\n/dev/kmsg: EPERM\n"
    );

    let mut s = sleeper(&child);
    let cg = DeviceCgroup::open(s.id() as i32, None).unwrap();
    cg.grant(&[rule(10, 229)]).unwrap();
    let after = child.open(&all);
    let lens = child.program_lengths();
    // Run again, as a runtime retrying the hook would: nothing grows.
    cg.grant(&[rule(10, 229)]).unwrap();
    assert_eq!(
        child.program_lengths(),
        lens,
        "a second grant must not grow the program"
    );
    let _ = s.kill();
    let _ = s.wait();

    assert_eq!(
        after, "/dev/null: ok\n/dev/zero: EPERM\n/dev/fuse: ok\n/dev/kmsg: EPERM\n",
        "fuse granted through both programs; every other decision kept (zero still denied by the child's)"
    );
    assert_eq!(
        child.program_lengths().len(),
        1,
        "replaced in place, not added"
    );
    assert_eq!(parent.program_lengths().len(), 1);
}

#[test]
fn a_cgroup_without_device_programs_is_left_alone() {
    let _g = serial();
    let cg = Cg::new(None, &format!("nvhook-test-free-{}", std::process::id()));
    let mut s = sleeper(&cg);
    let dc = DeviceCgroup::open(s.id() as i32, None).unwrap();
    dc.grant(&[rule(10, 229)]).unwrap();
    assert!(
        cg.program_lengths().is_empty(),
        "no program is attached where none was"
    );
    let _ = s.kill();
    let _ = s.wait();
}
