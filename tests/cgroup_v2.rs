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
use nvhook::error::Error;
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

/// The ids of the programs attached to `cg` (an id changes when a program is replaced).
fn program_ids(cg: &Cg) -> Vec<u32> {
    let dir = std::fs::File::open(&cg.v2).unwrap();
    sys::prog_query(dir.as_fd(), sys::BPF_CGROUP_DEVICE)
        .unwrap()
        .1
}

#[test]
fn grant_extends_the_containers_own_programs_and_never_an_ancestors() {
    let _g = serial();
    assert!(Path::new("/dev/fuse").exists() && Path::new("/dev/kmsg").exists());
    let parent = Cg::new(None, &format!("nvhook-test-{}", std::process::id()));
    let child = Cg::new(Some(&parent), "ctr");
    let sibling = Cg::new(Some(&parent), "sibling");
    // The "runtime": the parent allows null, zero and fuse; the container's own cgroup only
    // null; the sibling has no program of its own, so only the parent's decides for it.
    parent.attach_runtime_program(&[rule(1, 3), rule(1, 5), rule(10, 229)]);
    child.attach_runtime_program(&[rule(1, 3)]);
    sibling.attach_runtime_program(&[rule(1, 3)]);
    let all = ["/dev/null", "/dev/zero", "/dev/fuse", "/dev/kmsg"];
    let before = child.open(&all);
    assert_eq!(
        before,
        "/dev/null: ok\n/dev/zero: EPERM\n/dev/fuse: EPERM\n/dev/kmsg: EPERM\n"
    );
    let parent_ids = program_ids(&parent);

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
        "fuse granted through the container's program; every other decision kept (zero still denied by the child's)"
    );
    assert_eq!(
        child.program_lengths().len(),
        1,
        "replaced in place, not added"
    );
    assert_eq!(
        program_ids(&parent),
        parent_ids,
        "the parent's program is never replaced"
    );
    assert_eq!(
        sibling.open(&all),
        "/dev/null: ok\n/dev/zero: EPERM\n/dev/fuse: EPERM\n/dev/kmsg: EPERM\n",
        "the sibling's own program still decides for it"
    );
}

/// Issue 16: the grant once extended every ancestor's program too, so a sibling cgroup that the
/// parent's program denied a device could open it after a GPU container ran beside it, and for
/// ever after. Now an ancestor that denies a granted node is left alone and the grant refused.
#[test]
fn a_parent_that_denies_the_device_is_never_widened_for_a_sibling() {
    let _g = serial();
    let parent = Cg::new(None, &format!("nvhook-test-deny-{}", std::process::id()));
    let child = Cg::new(Some(&parent), "ctr");
    // no program of its own: only the parent's decides for the sibling
    let sibling = Cg::new(Some(&parent), "sibling");
    // the parent denies fuse (standing in for "c 195:*"), allows null and zero
    parent.attach_runtime_program(&[rule(1, 3), rule(1, 5)]);
    child.attach_runtime_program(&[rule(1, 3)]);
    let probe = ["/dev/null", "/dev/fuse"];
    assert_eq!(sibling.open(&probe), "/dev/null: ok\n/dev/fuse: EPERM\n");
    let (parent_ids, child_ids) = (program_ids(&parent), program_ids(&child));

    let mut s = sleeper(&child);
    let cg = DeviceCgroup::open(s.id() as i32, None).unwrap();
    let r = cg.grant(&[rule(10, 229)]);
    let child_after = child.open(&probe);
    let _ = s.kill();
    let _ = s.wait();

    assert_eq!(
        sibling.open(&probe),
        "/dev/null: ok\n/dev/fuse: EPERM\n",
        "the sibling must stay denied after the container's grant ({r:?})"
    );
    assert_eq!(
        program_ids(&parent),
        parent_ids,
        "the parent's program was replaced"
    );
    assert_eq!(
        program_ids(&child),
        child_ids,
        "nothing changes when the grant is refused"
    );
    assert_eq!(child_after, "/dev/null: ok\n/dev/fuse: EPERM\n");
    match r {
        Err(Error::CgroupAncestorDenies {
            ancestor,
            device,
            container,
            reason,
            ..
        }) => {
            assert_eq!(ancestor, parent.v2);
            assert_eq!(container, child.v2);
            assert_eq!(device, "c 10:229");
            assert_eq!(reason, "denies");
        }
        other => panic!("want CgroupAncestorDenies naming the parent, got {other:?}"),
    }
    let msg = cg.grant(&[rule(10, 229)]).unwrap_err().to_string();
    assert!(
        msg.contains(&parent.v2.display().to_string()) && msg.contains("DeviceAllow="),
        "{msg}"
    );
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

/// A private bpf filesystem, unmounted on drop.
struct BpfFs(PathBuf);

impl BpfFs {
    fn new(name: &str) -> BpfFs {
        let d = std::env::temp_dir().join(format!("nvhook-bpffs-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&d)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t bpf bpf {}", d.display());
        BpfFs(d)
    }
    fn pins(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.0.join("nvhook")) {
            Ok(d) => d.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Grant `rules` to a process in `cg`, with extended programs cached in `cache`.
fn grant_cached(cg: &Cg, cache: &Path, rules: &[DeviceRule]) {
    let mut s = sleeper(cg);
    DeviceCgroup::open(s.id() as i32, None)
        .unwrap()
        .with_program_cache(cache)
        .grant(rules)
        .unwrap();
    let _ = s.kill();
    let _ = s.wait();
}

/// The program cache (src/apply/progcache.rs): the second container with the same runtime
/// program gets the very program the first one's grant loaded (one kernel object attached to
/// both cgroups, the verifier skipped), and a pin that is not the program wanted is never
/// attached.
#[test]
fn an_extended_program_is_loaded_once_and_an_impostor_pin_is_never_used() {
    let _g = serial();
    let fs = BpfFs::new("cache");
    let cache = fs.0.join("nvhook");
    let parent = Cg::new(None, &format!("nvhook-test-cache-{}", std::process::id()));
    let a = Cg::new(Some(&parent), "a");
    let b = Cg::new(Some(&parent), "b");
    let c = Cg::new(Some(&parent), "c");
    for cg in [&a, &b, &c] {
        cg.attach_runtime_program(&[rule(1, 3)]);
    }
    let all = ["/dev/null", "/dev/fuse", "/dev/kmsg"];
    let want = "/dev/null: ok\n/dev/fuse: ok\n/dev/kmsg: EPERM\n";

    grant_cached(&a, &cache, &[rule(10, 229)]);
    assert_eq!(fs.pins().len(), 1, "the extended program is pinned");
    grant_cached(&b, &cache, &[rule(10, 229)]);
    assert_eq!(
        program_ids(&a),
        program_ids(&b),
        "b got the program loaded for a"
    );
    assert_eq!(fs.pins().len(), 1);
    assert_eq!(a.open(&all), want);
    assert_eq!(b.open(&all), want);

    let pin = fs.pins().remove(0);
    std::fs::remove_file(&pin).unwrap();
    // an impostor under that name: a program that also allows /dev/kmsg (1:11)
    let evil = sys::prog_load_cgroup_device(
        &bpfprog::allow_only(&[rule(1, 3), rule(10, 229), rule(1, 11)]),
        "GPL",
    )
    .unwrap();
    sys::obj_pin(evil.as_fd(), pin.to_str().unwrap()).unwrap();
    let (_, evil_insns) = sys::prog_xlated_insns(evil.as_fd()).unwrap();
    grant_cached(&c, &cache, &[rule(10, 229)]);
    assert_eq!(c.open(&all), want, "/dev/kmsg (1:11) stays denied in c");
    let c_ids = program_ids(&c);
    assert_eq!(c_ids.len(), 1);
    let (_, c_insns) =
        sys::prog_xlated_insns(sys::prog_get_fd_by_id(c_ids[0]).unwrap().as_fd()).unwrap();
    assert_ne!(c_insns, evil_insns, "the impostor is not attached");
    assert_ne!(c_ids, program_ids(&a), "c's program was loaded anew");
    // and the name holds the right program again
    let repinned = sys::obj_get(pin.to_str().unwrap()).unwrap();
    assert_eq!(sys::prog_xlated_insns(repinned.as_fd()).unwrap().1, c_insns);
}
