//! Unit tests of device classes: selection values, the class directory, host nodes, plans.

use std::path::{Path, PathBuf};

use super::*;
use crate::plan::MountFlags;

fn class(text: &str) -> Class {
    file::parse(text, "cam", Path::new("/classes/cam.toml")).unwrap()
}

fn env(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn node(name: &str, minor: u64) -> HostNode {
    HostNode {
        name: name.into(),
        host_path: PathBuf::from("/dev").join(name),
        kind: NodeType::Char,
        major: 81,
        minor,
    }
}

#[test]
fn the_fast_path_check_reads_only_the_prefix_and_the_value() {
    assert!(!asks_for_a_class(&env(&[
        "PATH=/bin",
        "NVIDIA_VISIBLE_DEVICES=all"
    ])));
    assert!(!asks_for_a_class(&env(&[
        "NVHOOK_DEVICES_V4L2=",
        "NVHOOK_DEVICES_RDMA=void",
        "NVHOOK_DEVICES_X= "
    ])));
    assert!(!asks_for_a_class(&env(&[
        "XNVHOOK_DEVICES_V4L2=all",
        "NVHOOK_DEVICES_"
    ])));
    assert!(asks_for_a_class(&env(&["NVHOOK_DEVICES_V4L2=0"])));
    assert!(asks_for_a_class(&env(&["NVHOOK_DEVICES_ANY=none"])));
}

#[test]
fn selection_values() {
    let s = |v: &str| parse_selection("NVHOOK_DEVICES_CAM", v);
    for void in ["", " ", ",,", "void", " void "] {
        assert_eq!(s(void).unwrap(), None, "{void:?}");
    }
    assert_eq!(s("all").unwrap(), Some(Selection::All));
    assert_eq!(s(" none ").unwrap(), Some(Selection::None));
    assert_eq!(
        s("1, video0,/dev/video2,1").unwrap(),
        Some(Selection::List(vec![
            "1".into(),
            "video0".into(),
            "video2".into()
        ]))
    );
    for bad in ["all,0", "0,none", "void,1", "all,all"] {
        let e = s(bad).unwrap_err().to_string();
        assert!(
            e.starts_with("NVHOOK_DEVICES_CAM: ") && e.contains("cannot be combined"),
            "{e}"
        );
    }
    let e = s(&"1,".repeat(3000)).unwrap_err().to_string();
    assert!(e.contains("longer than"), "{e}");
    // keywords are lower case: ALL is a name, which no node will have
    assert_eq!(s("ALL").unwrap(), Some(Selection::List(vec!["ALL".into()])));
}

#[test]
fn indexes_and_names_pick_only_matched_nodes() {
    let c = class("devices = [\"video*\"]\n");
    let all = [node("video0", 0), node("video1", 1), node("video2", 2)];
    let pick = |sel: Selection| select(&c, &sel, &all);
    let names = |v: Vec<HostNode>| v.into_iter().map(|n| n.name).collect::<Vec<_>>();
    assert_eq!(names(pick(Selection::All).unwrap()).len(), 3);
    assert!(pick(Selection::None).unwrap().is_empty());
    let l = |v: &[&str]| Selection::List(v.iter().map(|s| s.to_string()).collect());
    assert_eq!(
        names(pick(l(&["2", "video0", "0"])).unwrap()),
        ["video2", "video0"]
    );
    for bad in [
        "3",
        "99999999999999999999999",
        "video3",
        "../null",
        "/etc/passwd",
        "null",
        "video*",
        "",
    ] {
        let e = pick(l(&[bad])).unwrap_err().to_string();
        assert!(
            e.contains("NVHOOK_DEVICES_CAM") && e.contains(&format!("{bad:?}")),
            "{bad}: {e}"
        );
        assert!(e.contains("0=video0, 1=video1, 2=video2"), "{e}");
    }
    // all on a host without a matching node is an error saying what was looked for
    let e = select(&c, &Selection::All, &[]).unwrap_err().to_string();
    assert!(e.contains("no node matching /dev/video*"), "{e}");
    let e = select(&c, &l(&["0"]), &[]).unwrap_err().to_string();
    assert!(e.contains("no node matching /dev/video*"), "{e}");
}

#[test]
// Long by design: one scenario of classes and variables, checked step by step.
fn requests_follow_the_classes_and_refuse_unknown_variables() {
    let cam = class("devices = [\"video*\"]\n");
    let mut ib = file::parse(
        "devices = [\"infiniband/uverbs*\"]\nprivileged-only = true\n",
        "rdma",
        Path::new("/classes/rdma.toml"),
    )
    .unwrap();
    let classes = [cam.clone(), ib.clone()];
    let dir = Path::new("/classes");
    let r = requests(
        &env(&["NVHOOK_DEVICES_CAM=1", "NVHOOK_DEVICES_RDMA=all"]),
        &classes,
        false,
        dir,
    )
    .unwrap();
    assert_eq!(
        r.len(),
        1,
        "privileged-only class ignored when unprivileged"
    );
    assert_eq!(r[0].class.name, "cam");
    let r = requests(
        &env(&["NVHOOK_DEVICES_CAM=void", "NVHOOK_DEVICES_RDMA=all"]),
        &classes,
        true,
        dir,
    )
    .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].class.name.as_str(), &r[0].selection),
        ("rdma", &Selection::All)
    );
    // the last definition of a variable wins, as with getenv on a deduplicated environment
    let r = requests(
        &env(&["NVHOOK_DEVICES_CAM=1", "NVHOOK_DEVICES_CAM=void"]),
        &classes,
        false,
        dir,
    )
    .unwrap();
    assert!(r.is_empty());
    let r = requests(
        &env(&["NVHOOK_DEVICES_CAM=void", "NVHOOK_DEVICES_CAM=1"]),
        &classes,
        false,
        dir,
    )
    .unwrap();
    assert_eq!(r.len(), 1, "the later entry asks");
    // the same rule as NVIDIA_*: an entry without `=` removes the name (crun's reading)
    let r = requests(
        &env(&["NVHOOK_DEVICES_CAM=1", "NVHOOK_DEVICES_CAM"]),
        &classes,
        false,
        dir,
    )
    .unwrap();
    assert!(r.is_empty());
    let e = requests(&env(&["NVHOOK_DEVICES_FPGA=0"]), &classes, true, dir)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("NVHOOK_DEVICES_FPGA: no device class")
            && e.contains("cam (NVHOOK_DEVICES_CAM), rdma (NVHOOK_DEVICES_RDMA)")
            && e.contains("/classes"),
        "{e}"
    );
    // an unknown variable set to void or empty is nothing asked
    assert!(
        requests(&env(&["NVHOOK_DEVICES_FPGA=void"]), &classes, true, dir)
            .unwrap()
            .is_empty()
    );
    ib.privileged_only = false;
    let e = requests(&env(&["NVHOOK_DEVICES_RDMA=all,1"]), &[ib], true, dir)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("NVHOOK_DEVICES_RDMA: "), "{e}");
}

fn tmpdir(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("nvhook-class-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

#[test]
fn class_directory_errors_name_the_file_and_field() {
    let d = tmpdir("dir");
    assert!(load_dir(&d.join("missing")).unwrap().is_empty());
    std::fs::write(d.join("b-cam.toml"), "devices = [\"video*\"]\n").unwrap();
    std::fs::write(d.join("a-ib.toml"), "devices = [\"infiniband/uverbs*\"]\n").unwrap();
    std::fs::write(d.join("README"), "not a class").unwrap();
    std::fs::write(d.join(".hidden.toml"), "junk").unwrap();
    let c = load_dir(&d).unwrap();
    let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a-ib", "b-cam"]);
    assert_eq!(c[0].env, "NVHOOK_DEVICES_A_IB");

    std::fs::write(d.join("c-bad.toml"), "devices = [\"video*\"]\nmounts = 3\n").unwrap();
    let e = load_dir(&d).unwrap_err().to_string();
    assert!(e.contains("c-bad.toml") && e.contains("mounts"), "{e}");
    std::fs::write(
        d.join("c-bad.toml"),
        "devices = [\"video*\"]\nenv = \"NVHOOK_DEVICES_B_CAM\"\n",
    )
    .unwrap();
    let e = load_dir(&d).unwrap_err().to_string();
    assert!(
        e.contains("c-bad.toml") && e.contains("already used by") && e.contains("b-cam.toml"),
        "{e}"
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn globs_match_device_nodes_in_natural_order_and_skip_other_files() {
    // the host's own /dev: full and null exist on every Linux system
    let c = class("devices = [\"*ull\"]\nshared-devices = [\"zero\", \"no-such-node\"]\n");
    let nodes = expand_all(&c, &c.devices, Path::new("/")).unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["full", "null"]);
    assert_eq!((nodes[1].major, nodes[1].minor), (1, 3));
    let shared = expand_all(&c, &c.shared_devices, Path::new("/")).unwrap();
    assert_eq!(shared.len(), 1);
    assert_eq!(shared[0].host_path, Path::new("/dev/zero"));

    // a dev root whose matches are a symlink to a node, a file and a directory: none counts
    let d = tmpdir("dev");
    std::fs::create_dir_all(d.join("dev/sub/video3")).unwrap();
    std::os::unix::fs::symlink("/dev/null", d.join("dev/video0")).unwrap();
    std::fs::write(d.join("dev/video1"), "").unwrap();
    let c = class("devices = [\"video*\", \"sub/video*\"]\n");
    assert!(expand_all(&c, &c.devices, &d).unwrap().is_empty());
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_class_plan_has_nodes_rules_mounts_and_libraries() {
    let t = crate::layout::multiarch_triplet();
    let libc = format!("/lib/{t}/libc.so.6");
    let c = class(&format!(
        "devices = [\"*ull\"]\nshared-devices = [\"zero\"]\nlibraries = [\"{libc}\"]\n\
         cgroup-rules = [\"c 231:64\"]\n\
         [[mounts]]\nsource = \"/etc\"\ntarget = \"/etc/host\"\n\
         [[mounts]]\nsource = \"/nonexistent\"\noptional = true\n"
    ));
    let cfg = Config {
        dev_root: "/".into(),
        ..Config::default()
    };
    let req = ClassRequest {
        class: c.clone(),
        selection: Selection::List(vec!["1".into()]),
    };
    let inv = ClassInventory::discover(&req, &cfg).unwrap();
    let p = inv.plan(&Layout::debian());
    let devs: Vec<&str> = p.devices.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(devs, ["/dev/null", "/dev/zero"]);
    let rules: Vec<String> = p.cgroup_rules.iter().map(|r| r.to_string()).collect();
    assert_eq!(rules, ["c 1:3", "c 1:5", "c 231:64"]);
    assert_eq!(p.mounts[0].target, "/etc/host");
    assert!(p.mounts[0].directory && p.mounts[0].flags == MountFlags::DATA);
    let lib = &p.mounts[1];
    assert!(lib.target.starts_with(&format!("/usr/lib/{t}/")) && lib.flags == MountFlags::CODE);
    assert_eq!(p.mounts.len(), 2, "the optional missing mount is skipped");
    assert_eq!(p.ldcache[0].soname, "libc.so.6");
    assert_eq!(p.ldcache[0].path, format!("/usr/lib/{t}/libc.so.6"));

    // a required source that is missing stops the container, naming class, path and file
    let bad = class("[[mounts]]\nsource = \"/nonexistent/conf\"\n");
    let req = ClassRequest {
        class: bad,
        selection: Selection::None,
    };
    let e = ClassInventory::discover(&req, &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("device class cam: /nonexistent/conf") && e.contains("/classes/cam.toml"),
        "{e}"
    );
    let bad = class("libraries = [\"/etc/hostname\"]\n");
    let req = ClassRequest {
        class: bad,
        selection: Selection::None,
    };
    let e = ClassInventory::discover(&req, &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("/etc/hostname") && e.contains("ELF"), "{e}");
}

#[test]
fn merging_keeps_what_is_planned_and_lists_the_classes() {
    let c = class("devices = [\"*ull\"]\n");
    let cfg = Config {
        dev_root: "/".into(),
        ..Config::default()
    };
    let req = ClassRequest {
        class: c,
        selection: Selection::All,
    };
    let inv = ClassInventory::discover(&req, &cfg).unwrap();
    let mut base = Plan::default();
    base.add_device(HostNode {
        major: 1,
        ..node("null", 3)
    });
    merge_into(&mut base, &[inv], &Layout::debian());
    let devs: Vec<&str> = base.devices.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(devs, ["/dev/null", "/dev/full"], "no duplicate /dev/null");
    assert_eq!(base.cgroup_rules.len(), 2);
    assert_eq!(base.summary["classes"][0]["class"], "cam");
    assert_eq!(base.summary["classes"][0]["devices"][1], "null");
}
