use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};

use super::*;

struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp(name: &str) -> Tmp {
    let p = std::env::temp_dir().join(format!("nvhook-cleanup-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(p.join("root/etc")).unwrap();
    std::fs::create_dir_all(p.join("root/usr/lib/x86_64-linux-gnu")).unwrap();
    std::fs::create_dir_all(p.join("root/usr/bin")).unwrap();
    std::fs::create_dir_all(p.join("outside")).unwrap();
    std::fs::write(p.join("outside/canary"), b"canary").unwrap();
    symlink("usr/lib", p.join("root/lib")).unwrap();
    std::fs::write(p.join("root/etc/ld.so.cache"), b"the image's cache").unwrap();
    std::fs::set_permissions(
        p.join("root/etc/ld.so.cache"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::lchown(p.join("root/etc/ld.so.cache"), Some(12), Some(34)).unwrap();
    symlink(
        "libcuda.so.0",
        p.join("root/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
    )
    .unwrap();
    symlink("/nowhere", p.join("root/usr/bin/nvidia-smi")).unwrap();
    Tmp(p)
}

/// Every entry under `dir`: path, type, mode, owner, and content or symlink target.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let m = p.symlink_metadata().unwrap();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let what = if m.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                walk(base, &p, out);
                "dir".into()
            } else {
                format!("{:?}", std::fs::read(&p).unwrap())
            };
            out.push(format!(
                "{rel} {:o} {}:{} {what}",
                m.mode(),
                m.uid(),
                m.gid()
            ));
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

fn store(t: &Tmp) -> Store {
    Store::open_at(t.0.join("store"), true).unwrap().unwrap()
}

/// What prestart does to a rootfs, journaled and recorded as container `id`, running (this
/// process) or gone.
fn prestart(t: &Tmp, id: &str, running: bool, cache: &[u8]) {
    let r = Rootfs::open_journaled(&t.0.join("root")).unwrap();
    let tr = if running {
        Tracker::with_store(store(t), id, std::process::id() as i32).unwrap()
    } else {
        // this process with another start time: a gone one
        Tracker {
            store: store(t),
            id: id.into(),
            pid: std::process::id() as i32,
            start_time: 0,
        }
    };
    tr.begin(&r);
    r.mount_point_dir("/usr/local/nvidia/lib64").unwrap();
    r.mount_point_file("/usr/bin/nvidia-smi").unwrap();
    r.mount_point_file("/lib/x86_64-linux-gnu/libnvidia-ml.so.1")
        .unwrap();
    r.symlink("/lib/x86_64-linux-gnu/libcuda.so.1", "libcuda.so.535")
        .unwrap();
    r.symlink("/lib/x86_64-linux-gnu/libcuda.so", "libcuda.so.1")
        .unwrap();
    r.write_file_atomic("/etc/ld.so.cache", cache, 0o644)
        .unwrap();
    r.write_file_atomic("/etc/vulkan/icd.d/nvidia.json", b"{}", 0o644)
        .unwrap();
    tr.finish(&r);
}

fn store_files(t: &Tmp) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(t.0.join("store"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lock" && n != ".swept" && n != ".by-root")
        .collect();
    v.sort();
    v
}

/// The entries of the store's index of records by rootfs, as `<rootfs>/<id>`.
fn index_entries(t: &Tmp) -> Vec<String> {
    let mut v = Vec::new();
    for sub in std::fs::read_dir(t.0.join("store/.by-root"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = sub.file_name().to_string_lossy().into_owned();
        for e in std::fs::read_dir(sub.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            v.push(format!("{name}/{}", e.file_name().to_string_lossy()));
        }
    }
    v.sort();
    v
}

const NO_BUNDLE: &str = "/nonexistent/nvhook-bundle";

#[test]
fn poststop_puts_the_rootfs_back_exactly() {
    let t = tmp("exact");
    let root = t.0.join("root");
    let before = tree(&root);
    prestart(&t, "c1", true, b"nvhook's cache");
    let during = tree(&root);
    assert_ne!(before, during);
    assert!(root.join("usr/local/nvidia/lib64").is_dir());
    assert_eq!(
        std::fs::read(root.join("etc/ld.so.cache")).unwrap(),
        b"nvhook's cache"
    );
    assert_eq!(store_files(&t), ["c1", "c1@0"]);
    let s = store(&t);
    let u = poststop(&s, "c1", Path::new(NO_BUNDLE)).unwrap();
    assert_eq!(
        u,
        Undone::Restored {
            restored: 11,
            left: 0
        },
        "{:?}",
        tree(&root)
    );
    assert_eq!(before, tree(&root));
    assert!(store_files(&t).is_empty(), "{:?}", store_files(&t));
    assert!(index_entries(&t).is_empty(), "{:?}", index_entries(&t));
    // a second poststop, and one of a container nvhook never saw: nothing to do
    assert_eq!(
        poststop(&s, "c1", Path::new(NO_BUNDLE)).unwrap(),
        Undone::NoRecord
    );
    assert_eq!(
        poststop(&s, "other", Path::new(NO_BUNDLE)).unwrap(),
        Undone::NoRecord
    );
    assert_eq!(
        poststop(&s, "../c1", Path::new(NO_BUNDLE)).unwrap(),
        Undone::NoRecord
    );
}

#[test]
fn a_second_run_without_poststop_keeps_the_first_ones_original() {
    let t = tmp("twice");
    let root = t.0.join("root");
    let before = tree(&root);
    prestart(&t, "c1", false, b"cache one");
    // the same id again (a bundle run again, its poststop never came): the entries exist,
    // the cache is rewritten from nvhook's own
    prestart(&t, "c1", true, b"cache two");
    let s = store(&t);
    poststop(&s, "c1", Path::new(NO_BUNDLE)).unwrap();
    assert_eq!(before, tree(&root));
    assert!(store_files(&t).is_empty(), "{:?}", store_files(&t));
    assert!(index_entries(&t).is_empty(), "{:?}", index_entries(&t));
}

#[test]
fn a_running_container_on_the_same_rootfs_keeps_the_entries() {
    let t = tmp("shared");
    let root = t.0.join("root");
    let before = tree(&root);
    prestart(&t, "first", true, b"cache one");
    // a second container starts on the same rootfs while the first runs: it finds the entries
    prestart(&t, "second", true, b"cache two");
    let during = tree(&root);
    let s = store(&t);
    assert_eq!(
        poststop(&s, "first", Path::new(NO_BUNDLE)).unwrap(),
        Undone::HandedOver {
            to: "second".into()
        }
    );
    assert_eq!(
        during,
        tree(&root),
        "the running container's mount points must stay"
    );
    let second = poststop(&s, "second", Path::new(NO_BUNDLE)).unwrap();
    assert!(
        matches!(second, Undone::Restored { left: 0, .. }),
        "{second:?}: {:?}",
        tree(&root)
    );
    assert_eq!(before, tree(&root));
    assert!(store_files(&t).is_empty(), "{:?}", store_files(&t));
    assert!(index_entries(&t).is_empty(), "{:?}", index_entries(&t));
}

#[test]
fn a_gone_rootfs_drops_the_record() {
    let t = tmp("gone");
    prestart(&t, "c1", true, b"x");
    std::fs::rename(t.0.join("root"), t.0.join("moved")).unwrap();
    std::fs::create_dir(t.0.join("root")).unwrap();
    let s = store(&t);
    assert_eq!(
        poststop(&s, "c1", Path::new(NO_BUNDLE)).unwrap(),
        Undone::RootfsGone
    );
    assert!(store_files(&t).is_empty());
    assert!(index_entries(&t).is_empty(), "{:?}", index_entries(&t));
    assert!(
        t.0.join("moved/usr/local/nvidia/lib64").is_dir(),
        "nothing is touched"
    );
}

#[test]
fn swapped_entries_are_left_and_nothing_else_is_removed() {
    let t = tmp("swap");
    let root = t.0.join("root");
    prestart(&t, "c1", true, b"nvhook's cache");
    // the created mount-point directory becomes a symlink to a host directory with a canary
    std::fs::remove_dir(root.join("usr/local/nvidia/lib64")).unwrap();
    symlink(t.0.join("outside"), root.join("usr/local/nvidia/lib64")).unwrap();
    // the created empty file is renamed away and an important file put in its place
    std::fs::rename(root.join("usr/bin/nvidia-smi"), root.join("usr/bin/moved")).unwrap();
    std::fs::write(root.join("usr/bin/nvidia-smi"), b"important").unwrap();
    // a directory on the way to a created entry becomes a symlink to the outside
    std::fs::rename(root.join("etc/vulkan"), root.join("etc/vulkan-moved")).unwrap();
    symlink(t.0.join("outside"), root.join("etc/vulkan")).unwrap();
    std::fs::create_dir(t.0.join("outside/icd.d")).unwrap();
    std::fs::write(t.0.join("outside/icd.d/nvidia.json"), b"host's").unwrap();
    // the cache nvhook wrote is replaced by the container's own
    std::fs::write(root.join("etc/ld.so.cache.new"), b"container's").unwrap();
    std::fs::rename(
        root.join("etc/ld.so.cache.new"),
        root.join("etc/ld.so.cache"),
    )
    .unwrap();
    let s = store(&t);
    let u = poststop(&s, "c1", Path::new(NO_BUNDLE)).unwrap();
    // left: the four swapped entries, and the three directories on their way (not empty, or
    // now a symlink) and one under a symlinked directory
    assert_eq!(
        u,
        Undone::Restored {
            restored: 3,
            left: 8
        }
    );
    assert_eq!(
        std::fs::read(t.0.join("outside/canary")).unwrap(),
        b"canary"
    );
    assert_eq!(
        std::fs::read(t.0.join("outside/icd.d/nvidia.json")).unwrap(),
        b"host's"
    );
    assert_eq!(
        std::fs::read(root.join("usr/bin/nvidia-smi")).unwrap(),
        b"important"
    );
    assert!(root.join("usr/bin/moved").exists());
    assert_eq!(
        std::fs::read(root.join("etc/ld.so.cache")).unwrap(),
        b"container's"
    );
    assert!(
        root.join("usr/local/nvidia/lib64")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(store_files(&t).is_empty());
    assert!(index_entries(&t).is_empty(), "{:?}", index_entries(&t));
}

/// An inode of device 1.
fn ino(ino: u64) -> Identity {
    Identity { dev: 1, ino }
}

/// A kept original file (inode `n`) in blob `blob`.
fn kept(blob: &str, n: u64) -> Saved {
    Saved::File {
        mode: 0o644,
        uid: 0,
        gid: 0,
        blob: blob.into(),
        id: ino(n),
    }
}

/// nvhook's /etc/ld.so.cache, inode `n`, where `before` was, looked at `at`.
fn cache_entry(n: u64, before: Saved, at: u64) -> Entry {
    Entry {
        path: "/etc/ld.so.cache".into(),
        kind: Kind::File,
        id: ino(n),
        before,
        at,
    }
}

#[test]
fn absorb_chains_changes_of_one_path() {
    let e = |n, before| cache_entry(n, before, 0);
    let blob = kept;
    // the image's cache (inode 1) replaced by A's (2), then by B's (3)
    let a = e(2, blob("a@0", 1));
    let b = e(3, blob("b@0", 2));
    for (first, then) in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
        let mut into = vec![first];
        let unused = absorb(&mut into, vec![then]);
        assert_eq!(into, vec![e(3, blob("a@0", 1))]);
        assert_eq!(unused, ["b@0"]);
    }
    // the same entry twice is kept once; another path is added
    let mut into = vec![a.clone()];
    assert!(absorb(&mut into, vec![a.clone()]).is_empty());
    let mut d = e(9, Saved::Absent);
    d.path = "/usr/bin/nvidia-smi".into();
    absorb(&mut into, vec![d.clone()]);
    assert_eq!(into, vec![a, d]);
}

#[test]
fn absorb_is_not_fooled_by_an_inode_number_that_came_back() {
    let (e, blob) = (cache_entry, kept);
    // the image's cache (inode 1) replaced by A's (2), then by B's, which got inode 1 again:
    // A's `before` names B's inode and B's names A's; only the times tell who came first
    let a = e(2, blob("a@0", 1), 100);
    let b = e(1, blob("b@0", 2), 200);
    for (first, then) in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
        let mut into = vec![first];
        let unused = absorb(&mut into, vec![then]);
        assert_eq!(into, vec![e(1, blob("a@0", 1), 200)]);
        assert_eq!(unused, ["b@0"]);
    }
    // where the inodes are unambiguous the times do not matter (a record kept across a reboot:
    // CLOCK_BOOTTIME began again)
    let a = e(2, blob("a@0", 1), 900);
    let b = e(3, blob("b@0", 2), 100);
    for (first, then) in [(a.clone(), b.clone()), (b, a)] {
        let mut into = vec![first];
        absorb(&mut into, vec![then]);
        assert_eq!(into, vec![e(3, blob("a@0", 1), 100)]);
    }
}

#[test]
fn the_record_of_a_gone_container_on_the_same_rootfs_is_taken_over() {
    let t = tmp("adopt");
    let root = t.0.join("root");
    let before = tree(&root);
    // a container whose poststop never came (runc without the hook), then another one
    prestart(&t, "first", false, b"cache one");
    prestart(&t, "second", true, b"cache two");
    assert!(
        !store_files(&t).contains(&"first".to_owned()),
        "{:?}",
        store_files(&t)
    );
    let s = store(&t);
    assert_eq!(
        poststop(&s, "first", Path::new(NO_BUNDLE)).unwrap(),
        Undone::NoRecord
    );
    poststop(&s, "second", Path::new(NO_BUNDLE)).unwrap();
    assert_eq!(before, tree(&root));
    assert!(store_files(&t).is_empty(), "{:?}", store_files(&t));
    assert!(index_entries(&t).is_empty(), "{:?}", index_entries(&t));
}

#[test]
fn debris_of_a_killed_hook_goes_at_the_next_start_and_live_blobs_stay() {
    let t = tmp("debris");
    // a running container on another rootfs, with a kept original
    let other = tmp("debris-other");
    prestart(&other, "live", true, b"x");
    drop(store(&t));
    for f in ["live", "live@0"] {
        std::fs::copy(other.0.join("store").join(f), t.0.join("store").join(f)).unwrap();
    }
    // what a hook killed in the middle of a record write leaves
    std::fs::write(t.0.join("store/.killed.123.tmp"), b"").unwrap();
    std::fs::write(t.0.join("store/killed@0"), b"orphan").unwrap();
    prestart(&t, "next", true, b"y");
    assert_eq!(store_files(&t), ["live", "live@0", "next", "next@0"]);
}

#[test]
fn a_start_reads_only_its_rootfs_records_until_a_sweep_is_due() {
    // a record of another rootfs that is gone: only a sweep drops it
    let t = tmp("sweep");
    let other = tmp("sweep-other");
    prestart(&other, "elsewhere", false, b"x");
    let s = store(&t);
    drop(s);
    for f in std::fs::read_dir(other.0.join("store")).unwrap().flatten() {
        let n = f.file_name().to_string_lossy().into_owned();
        if n == "elsewhere" || n.starts_with("elsewhere@") {
            std::fs::copy(f.path(), t.0.join("store").join(&n)).unwrap();
        }
    }
    std::fs::remove_dir_all(other.0.join("root")).unwrap();
    // a sweep just ran: the start looks at its own rootfs's records only
    std::fs::write(t.0.join("store/.swept"), b"").unwrap();
    prestart(&t, "one", true, b"y");
    assert!(store_files(&t).contains(&"elsewhere".to_owned()));
    // the sweep is due again: the record of the gone rootfs goes
    let old = std::time::SystemTime::now() - super::store::SWEEP_EVERY * 2;
    std::fs::File::options()
        .write(true)
        .open(t.0.join("store/.swept"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    prestart(&t, "two", true, b"z");
    assert!(
        !store_files(&t).iter().any(|n| n.starts_with("elsewhere")),
        "{:?}",
        store_files(&t)
    );
    // one index entry per record that stays, none for the dropped one
    let index = index_entries(&t);
    assert_eq!(index.len(), 2, "{index:?}");
    assert!(
        index
            .iter()
            .all(|n| n.ends_with("/one") || n.ends_with("/two")),
        "{index:?}"
    );
}

/// A start on a rootfs that no record names: its record is created in place, and its finish is
/// one appended line (no temporary file, no rename), which a read folds in; poststop restores
/// everything from it.
#[test]
fn a_first_start_creates_its_record_in_place_and_appends_its_changes() {
    let t = tmp("append");
    let root = t.0.join("root");
    let before = tree(&root);
    prestart(&t, "c1", true, b"nvhook's cache");
    let raw = std::fs::read(t.0.join("store/c1")).unwrap();
    let lines: Vec<&[u8]> = raw.split_inclusive(|b| *b == b'\n').collect();
    assert_eq!(lines.len(), 2, "{}", String::from_utf8_lossy(&raw));
    assert!(
        lines[1].starts_with(b"{\"add\":["),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(store(&t).read("c1").unwrap().unwrap().entries.len(), 11);
    let u = poststop(&store(&t), "c1", Path::new(NO_BUNDLE)).unwrap();
    assert_eq!(
        u,
        Undone::Restored {
            restored: 11,
            left: 0
        }
    );
    assert_eq!(before, tree(&root));
    assert!(store_files(&t).is_empty(), "{:?}", store_files(&t));
}

/// An appended line that is not whole (a hook killed while writing it) or not readable is
/// ignored, and the lines around it are folded in; an append after such a line, or after a
/// record written without a final newline (an earlier nvhook), starts a line of its own; an empty
/// record file (a hook killed between create and write) is no record.
#[test]
fn a_torn_appended_line_is_ignored_and_an_empty_record_is_none() {
    let t = tmp("torn");
    prestart(&t, "c1", true, b"cache");
    let path = t.0.join("store/c1");
    let raw = std::fs::read(&path).unwrap();
    let mut lines = raw.split_inclusive(|b| *b == b'\n');
    let first = lines.next().unwrap().to_vec();
    let added = lines.next().unwrap().to_vec();
    let s = store(&t);
    let entries = s.read("c1").unwrap().unwrap().entries;
    assert_eq!(entries.len(), 11);
    let count = |s: &Store| s.read("c1").unwrap().unwrap().entries.len();

    std::fs::write(&path, [&first[..], b"{\"add\":[{\"pa\n", &added].concat()).unwrap();
    assert_eq!(count(&s), 11, "an unreadable line before a whole one");

    std::fs::write(&path, [&first[..], &added[..added.len() / 2]].concat()).unwrap();
    assert_eq!(count(&s), 0, "the only appended line cut short");
    s.append("c1", entries.clone()).unwrap();
    assert_eq!(count(&s), 11, "an append after a line cut short");

    std::fs::write(&path, &first[..first.len() - 1]).unwrap();
    assert_eq!(count(&s), 0);
    s.append("c1", entries).unwrap();
    assert_eq!(count(&s), 11, "an append to a record with no final newline");

    std::fs::write(&path, b"").unwrap();
    assert!(s.read("c1").unwrap().is_none());
}
