//! The host inventory cache: the driver's files as the last start found them under the driver
//! root, kept in `<cache-dir>/inventory-<hash>.json` (default `/run/nvhook`, a tmpfs: gone at
//! reboot), so that the next container start skips reading the host's linker cache and the
//! lookups of every library, binary and firmware file (about 0.6 ms of a 1.8 ms hook on the
//! GPU host, docs/benchmarks.md).
//!
//! When is an entry used? Only when its key matches exactly (nvhook's version, the running
//! driver's version read from /proc at this start, the capabilities asked for, the whole config),
//! and every witness is unchanged: the driver root's `etc/ld.so.cache` and each directory that
//! was searched or held a file found (device, inode, size, mtime; or absence). Installing,
//! removing or replacing a driver file changes its directory's mtime, and a new driver changes
//! the version; either way the entry is ignored and rewritten. An entry is written only once
//! every witness has been still for [`SETTLE`]: a directory changed within the same clock tick
//! as the lookup would otherwise look unchanged later.
//!
//! Trust: the file decides which host files are bind-mounted into containers, so it is used only
//! if it is a regular file owned by this user with no permission for others (0600), in a
//! directory owned by this user that nobody else can write (checked on the open descriptors);
//! every path in it must lie under the driver root. A file that is unreadable, corrupt,
//! foreign or wrong in any way is ignored (and replaced), never an error: the cache can only make
//! a start faster, not fail it.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::driver_files::DriverFile;
use super::libraries::{Binary, Library};
use super::private_file::{read_private, write_private};

/// Bumped whenever the file's shape or the meaning of its fields changes.
pub const FORMAT: u32 = 1;
/// A cache file larger than this is not read.
const MAX_SIZE: i64 = 1 << 20;
/// Witnesses must have been unchanged this long before an entry is written.
pub const SETTLE: Duration = Duration::from_secs(2);

/// The part of the inventory that comes from the driver root's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverFiles {
    pub nvml_lib: Option<PathBuf>,
    pub libcuda: Option<PathBuf>,
    /// Libraries with their linker-cache flags (not part of `Library`'s printed form).
    pub libraries: Vec<(Library, i32)>,
    pub libraries32: Vec<(Library, i32)>,
    pub binaries: Vec<Binary>,
    pub firmware: Vec<PathBuf>,
    /// Graphics configuration files and X server modules (IPC sockets are looked up live).
    pub files: Vec<DriverFile>,
}

impl DriverFiles {
    /// Every host path the entry names.
    fn paths(&self) -> impl Iterator<Item = &Path> {
        let libs = self
            .libraries
            .iter()
            .chain(&self.libraries32)
            .map(|(l, _)| l.host_path.as_path());
        self.nvml_lib
            .iter()
            .chain(&self.libcuda)
            .map(PathBuf::as_path)
            .chain(libs)
            .chain(self.binaries.iter().map(|b| b.host_path.as_path()))
            .chain(self.firmware.iter().map(PathBuf::as_path))
            .chain(self.files.iter().map(|f| f.host_path.as_path()))
    }
}

/// What a witness path looked like: (device, inode, size, mtime seconds, mtime nanoseconds), or
/// absent.
type Identity = Option<(u64, u64, u64, i64, i64)>;

fn identity(p: &Path) -> Identity {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

#[derive(Serialize, Deserialize)]
struct Entry {
    key: String,
    witnesses: Vec<(PathBuf, Identity)>,
    files: DriverFiles,
}

/// One lookup's cache slot: where it lives and what it must match.
pub struct Slot {
    dir: PathBuf,
    name: String,
    key: String,
    driver_root: PathBuf,
}

impl Slot {
    /// The slot for `key` in `dir` (`None` when the cache is off: an empty `cache-dir`).
    pub fn new(dir: &Path, key: String, driver_root: &Path) -> Option<Slot> {
        if dir.as_os_str().is_empty() {
            return None;
        }
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        Some(Slot {
            dir: dir.to_owned(),
            name: format!("inventory-{:016x}.json", h.finish()),
            key,
            driver_root: driver_root.to_owned(),
        })
    }

    /// The cached files, if the entry is there, trusted, for this key, and no witness changed.
    pub fn load(&self) -> Option<DriverFiles> {
        match self.try_load() {
            Ok(f) => {
                log::debug!(
                    "inventory cache {}: used",
                    self.dir.join(&self.name).display()
                );
                Some(f)
            }
            Err(why) => {
                log::debug!(
                    "inventory cache {}: not used ({why})",
                    self.dir.join(&self.name).display()
                );
                None
            }
        }
    }

    fn try_load(&self) -> Result<DriverFiles, String> {
        let bytes = read_private(&self.dir, &self.name, MAX_SIZE)?;
        let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if entry.key != self.key {
            return Err("another key (driver, capabilities, config or nvhook changed)".into());
        }
        if let Some(p) = entry
            .files
            .paths()
            .find(|p| !p.is_absolute() || !p.starts_with(&self.driver_root))
        {
            return Err(format!("{} is not under the driver root", p.display()));
        }
        for (path, id) in &entry.witnesses {
            if identity(path) != *id {
                return Err(format!("{} changed", path.display()));
            }
        }
        Ok(entry.files)
    }

    /// Keep `files`, found with `witnesses` as they are now, for the next start. Best effort:
    /// a failure is logged at debug level and changes nothing else.
    pub fn store(&self, files: &DriverFiles, witnesses: &[PathBuf]) {
        let now = SystemTime::now();
        let mut ids = Vec::with_capacity(witnesses.len());
        for w in witnesses {
            let id = identity(w);
            let settled = std::fs::metadata(w)
                .and_then(|m| m.modified())
                .map_or(true, |t| now.duration_since(t).is_ok_and(|d| d >= SETTLE));
            if !settled {
                log::debug!(
                    "inventory cache: {} changed less than {SETTLE:?} ago; not cached",
                    w.display()
                );
                return;
            }
            ids.push((w.clone(), id));
        }
        let entry = Entry {
            key: self.key.clone(),
            witnesses: ids,
            files: files.clone(),
        };
        if let Err(e) = self.write(&entry) {
            log::debug!(
                "inventory cache {}: not written ({e})",
                self.dir.join(&self.name).display()
            );
        }
    }

    fn write(&self, entry: &Entry) -> Result<(), String> {
        let bytes = serde_json::to_vec(entry).map_err(|e| e.to_string())?;
        write_private(&self.dir, &self.name, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn lib(dir: &Path, name: &str) -> (Library, i32) {
        (
            Library {
                soname: format!("{name}.1"),
                host_path: dir.join(format!("{name}.1.2.3")),
                file_name: format!("{name}.1.2.3"),
                cache_flags: 0,
            },
            0x303,
        )
    }

    /// A scratch directory, removed when dropped.
    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Fixture {
        _tmp: Tmp,
        root: PathBuf,
        cache: PathBuf,
        libdir: PathBuf,
        files: DriverFiles,
    }

    /// A driver root with one library directory that changed long enough ago.
    fn fixture() -> Fixture {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp =
            Tmp(std::env::temp_dir().join(format!("nvhook-invcache-{}-{n}", std::process::id())));
        let _ = std::fs::remove_dir_all(&tmp.0);
        let root = tmp.0.join("driver");
        let libdir = root.join("usr/lib");
        std::fs::create_dir_all(&libdir).unwrap();
        std::fs::write(libdir.join("libcuda.so.1.2.3"), b"x").unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::open(&libdir)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let files = DriverFiles {
            nvml_lib: None,
            libcuda: Some(libdir.join("libcuda.so.1.2.3")),
            libraries: vec![lib(&libdir, "libcuda.so")],
            libraries32: vec![],
            binaries: vec![],
            firmware: vec![],
            files: vec![],
        };
        Fixture {
            cache: tmp.0.join("cache"),
            _tmp: tmp,
            root,
            libdir,
            files,
        }
    }

    fn slot(f: &Fixture, key: &str) -> Slot {
        Slot::new(&f.cache, key.into(), &f.root).unwrap()
    }

    #[test]
    fn stored_entry_is_used_with_flags() {
        let f = fixture();
        let s = slot(&f, "k");
        assert_eq!(s.load(), None);
        s.store(
            &f.files,
            &[f.libdir.clone(), f.root.join("etc/ld.so.cache")],
        );
        let got = s.load().expect("a fresh entry is used");
        assert_eq!(got, f.files);
        assert_eq!(got.libraries[0].1, 0x303);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&f.cache), 0o700);
        assert_eq!(mode(&f.cache.join(&s.name)), 0o600);
    }

    #[test]
    fn another_key_is_not_used() {
        let f = fixture();
        slot(&f, "driver 1").store(&f.files, std::slice::from_ref(&f.libdir));
        let other = Slot {
            name: slot(&f, "driver 1").name,
            ..slot(&f, "driver 2")
        };
        assert_eq!(other.load(), None);
    }

    #[test]
    fn a_changed_or_new_witness_invalidates() {
        let f = fixture();
        let s = slot(&f, "k");
        let cache = f.root.join("etc/ld.so.cache");
        s.store(&f.files, &[f.libdir.clone(), cache.clone()]);
        assert!(s.load().is_some());
        // a library installed or removed: the directory's mtime moves
        std::fs::write(f.libdir.join("libnew.so.1"), b"y").unwrap();
        assert_eq!(s.load(), None);
        // the linker cache appears where there was none
        let old = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::open(&f.libdir)
            .unwrap()
            .set_modified(old)
            .unwrap();
        s.store(&f.files, &[f.libdir.clone(), cache.clone()]);
        assert!(s.load().is_some());
        std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
        std::fs::write(&cache, b"").unwrap();
        assert_eq!(s.load(), None);
    }

    #[test]
    fn a_witness_that_just_changed_is_not_cached() {
        let f = fixture();
        std::fs::write(f.libdir.join("libnew.so.1"), b"y").unwrap(); // mtime: now
        let s = slot(&f, "k");
        s.store(&f.files, std::slice::from_ref(&f.libdir));
        assert!(!f.cache.join(&s.name).exists());
    }

    #[test]
    fn corrupt_foreign_or_outside_entries_are_ignored() {
        let f = fixture();
        let s = slot(&f, "k");
        s.store(&f.files, std::slice::from_ref(&f.libdir));
        let file = f.cache.join(&s.name);
        assert!(s.load().is_some());
        // readable by others
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(s.load(), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(s.load().is_some());
        // a directory others can write
        std::fs::set_permissions(&f.cache, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(s.load(), None);
        std::fs::set_permissions(&f.cache, std::fs::Permissions::from_mode(0o700)).unwrap();
        // a path outside the driver root
        let mut bad = f.files.clone();
        bad.binaries.push(Binary {
            name: "sh".into(),
            host_path: "/bin/sh".into(),
        });
        s.store(&bad, std::slice::from_ref(&f.libdir));
        assert_eq!(s.load(), None);
        // garbage
        std::fs::write(&file, b"{not json").unwrap();
        assert_eq!(s.load(), None);
        // a symlink in its place
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &file).unwrap();
        assert_eq!(s.load(), None);
        // and a good entry replaces what is there
        std::fs::remove_file(&file).unwrap();
        s.store(&f.files, std::slice::from_ref(&f.libdir));
        assert!(s.load().is_some());
    }

    #[test]
    fn an_empty_cache_dir_turns_it_off() {
        assert!(Slot::new(Path::new(""), "k".into(), Path::new("/")).is_none());
    }

    /// A GPU's `information` is kept while its binding link stays the same inode, and read
    /// again once the link is made anew (a rebind) or where there is none.
    #[test]
    fn gpu_information_is_kept_while_the_binding_stays() {
        let f = fixture();
        let sys = f._tmp.0.join("sys");
        let drivers = sys.join("bus/pci/drivers/nvidia");
        std::fs::create_dir_all(&drivers).unwrap();
        let link = drivers.join("0000:00:06.0");
        std::os::unix::fs::symlink("../../../../devices/pci0000:00/0000:00:06.0", &link).unwrap();
        let memo = super::super::gpus::GpuInfo::new(&f.cache, &sys).unwrap();
        assert_eq!(memo.get("0000:00:06.0"), None, "nothing kept yet");
        memo.put("0000:00:06.0", "Model: A\nDevice Minor: 0\n");
        assert_eq!(
            memo.get("0000:00:06.0").as_deref(),
            Some("Model: A\nDevice Minor: 0\n")
        );
        // another GPU, or no binding: nothing
        assert_eq!(memo.get("0000:00:07.0"), None);
        memo.put("0000:00:07.0", "Model: B\n");
        assert_eq!(memo.get("0000:00:07.0"), None, "no binding, not kept");
        assert_eq!(memo.get("../x"), None);
        // a rebind: the link is made anew (another inode; keep the old one alive so the
        // number cannot be reused at once)
        let keep = drivers.join("old");
        std::fs::rename(&link, &keep).unwrap();
        std::os::unix::fs::symlink("../../../../devices/pci0000:00/0000:00:06.0", &link).unwrap();
        assert_eq!(memo.get("0000:00:06.0"), None, "read again after a rebind");
        // a file of someone else's mode is not trusted
        memo.put("0000:00:06.0", "Model: C\n");
        let kept = f.cache.join("gpu-0000:00:06.0.info");
        std::fs::set_permissions(&kept, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        assert_eq!(memo.get("0000:00:06.0"), None, "a 0644 file is ignored");
        assert!(
            super::super::gpus::GpuInfo::new(Path::new(""), &sys).is_none(),
            "cache off"
        );
    }
}
