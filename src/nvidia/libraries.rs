//! The driver's libraries and binaries under the driver root.
//!
//! Libraries are found the way ld.so would find them on the host: through the driver root's own
//! `etc/ld.so.cache` (its paths are relative to the driver root, as for a driver installed under
//! `/run/nvidia/driver`), following symlinks inside the driver root to the real file. When there
//! is no cache, or a name is not in it, the driver root's library directories are scanned and
//! each candidate's `DT_SONAME` read. Either way only files whose name ends with the running
//! driver's version are taken (libnvidia-container's rule), so a CUDA forward-compat copy or a
//! leftover of an older driver is never picked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Error;
use crate::layout::multiarch_triplet;
use crate::ldcache::LdCache;
use crate::rootfs::Rootfs;

pub use crate::library::Library;

/// A driver binary on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Binary {
    pub name: String,
    pub host_path: PathBuf,
}

/// Library directories scanned when the cache does not answer (driver-root relative).
fn library_dirs() -> Vec<String> {
    let t = multiarch_triplet();
    vec![
        format!("usr/lib/{t}"),
        format!("lib/{t}"),
        "usr/lib64".into(),
        "lib64".into(),
        "usr/lib".into(),
        "lib".into(),
        format!("usr/lib/{t}/nvidia/current"),
        "usr/local/nvidia/lib64".into(),
        "usr/local/nvidia/lib".into(),
    ]
}

/// Standard binary directories (driver-root relative), after any configured ones.
const BINARY_DIRS: &[&str] = &[
    "usr/local/sbin",
    "usr/local/bin",
    "usr/sbin",
    "usr/bin",
    "sbin",
    "bin",
    "usr/local/nvidia/bin",
];

/// Finds driver files under one driver root for one driver version.
pub struct DriverRoot {
    root: Rootfs,
    root_path: PathBuf,
    version: String,
    cache: Option<LdCache>,
    /// Set once the cache has given one library of this driver: from then on it is trusted to
    /// know the driver, and a name it lacks is one this driver does not ship (scanning the
    /// library directories for it would cost milliseconds on a host with a large /usr/lib).
    cache_has_driver: bool,
    /// accept any version suffix (see find_library_any_version)
    any_version: bool,
    /// directory listings made by the fallback scan, kept for the next name
    listings: HashMap<String, Vec<String>>,
    /// the directories of the linker-cache paths that gave a library (where its soname link
    /// lives, before links are followed): witnesses for the inventory cache
    link_dirs: std::cell::RefCell<Vec<PathBuf>>,
}

fn file_name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl DriverRoot {
    /// Open the driver root and read its `etc/ld.so.cache` if it has one, keeping the entries
    /// whose soname starts with one of `prefixes`.
    pub fn open(root_path: &Path, version: &str, prefixes: &[&str]) -> Result<DriverRoot, Error> {
        let root = Rootfs::open(root_path).map_err(|e| Error::DriverFile {
            path: root_path.to_owned(),
            reason: e.to_string(),
        })?;
        let cache_path = root_path.join("etc/ld.so.cache");
        let cache = match root.read_file("/etc/ld.so.cache", crate::ldcache::MAX_CACHE_SIZE as u64)
        {
            Ok(Some(bytes)) => Some(
                LdCache::parse_filtered(&bytes, |k| {
                    prefixes.iter().any(|p| k.starts_with(p.as_bytes()))
                })
                .map_err(|e| Error::DriverLdCache {
                    path: cache_path,
                    reason: e.to_string(),
                })?,
            ),
            Ok(None) => None,
            Err(e) => {
                return Err(Error::DriverLdCache {
                    path: cache_path,
                    reason: e.to_string(),
                });
            }
        };
        Ok(DriverRoot {
            root,
            root_path: root_path.to_owned(),
            version: version.to_owned(),
            cache,
            cache_has_driver: false,
            any_version: false,
            listings: HashMap::new(),
            link_dirs: std::cell::RefCell::new(Vec::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.root_path
    }

    /// Every path whose change could change what this root's lookups find: the linker cache,
    /// the directories scanned without it, the directories of the cache's paths that were
    /// followed, and the standard binary directories (the inventory cache's witnesses; the
    /// caller adds the directories of what was found).
    pub fn witnesses(&self) -> Vec<PathBuf> {
        let mut w = vec![self.root_path.join("etc/ld.so.cache")];
        w.extend(library_dirs().iter().map(|d| self.root_path.join(d)));
        w.extend(BINARY_DIRS.iter().map(|d| self.root_path.join(d)));
        w.extend(self.link_dirs.borrow().iter().cloned());
        w
    }

    /// The driver root, for lookups of other files under it.
    pub fn rootfs(&self) -> &Rootfs {
        &self.root
    }

    fn has_version(&self, file_name: &str) -> bool {
        if self.any_version {
            // <name>.so.<digits and dots>: libraries that carry their own version
            return file_name.split_once(".so.").is_some_and(|(_, v)| {
                !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            });
        }
        file_name
            .strip_suffix(self.version.as_str())
            .is_some_and(|head| head.ends_with(".so."))
    }

    /// Find a library that is shipped with the driver but versioned on its own
    /// (`libnvidia-egl-gbm.so.1.1.2`): any `.so.<version>` file is accepted.
    pub fn find_library_any_version(&mut self, prefix: &str, flags: i32) -> Option<Library> {
        self.any_version = true;
        let found = self.in_cache(prefix, flags);
        self.any_version = false;
        found
    }

    /// The library whose soname starts with `prefix`, for the ABI `flags`, if the host has one.
    pub fn find_library(&mut self, prefix: &str, flags: i32) -> Option<Library> {
        if let Some(lib) = self.in_cache(prefix, flags) {
            self.cache_has_driver = true;
            return Some(lib);
        }
        if self.cache.is_some() && self.cache_has_driver {
            return None;
        }
        self.by_scan(prefix, flags)
    }

    fn in_cache(&self, prefix: &str, flags: i32) -> Option<Library> {
        let cache = self.cache.as_ref()?;
        cache
            .entries
            .iter()
            // A key ending in ".so" is a development link ldconfig happened to cache, not a soname.
            .filter(|e| e.flags == flags && e.key.starts_with(prefix) && !e.key.ends_with(".so"))
            .find_map(|e| {
                let real = self.root.real_path(&e.value).ok()?;
                let file_name = file_name_of(&real);
                if let Some(dir) = Path::new(&e.value).parent() {
                    let dir = self.root_path.join(dir.strip_prefix("/").unwrap_or(dir));
                    let mut seen = self.link_dirs.borrow_mut();
                    if !seen.contains(&dir) {
                        seen.push(dir);
                    }
                }
                self.has_version(&file_name).then(|| Library {
                    soname: e.key.clone(),
                    host_path: real,
                    file_name,
                    cache_flags: e.flags,
                })
            })
    }

    fn by_scan(&mut self, prefix: &str, flags: i32) -> Option<Library> {
        for dir in library_dirs() {
            let names = self.listing(&dir).to_vec();
            for name in names {
                if !name.starts_with(prefix) || !self.has_version(&name) {
                    continue;
                }
                let Ok(real) = self.root.real_path(&format!("/{dir}/{name}")) else {
                    continue;
                };
                let Ok(info) = crate::elf::read(&real) else {
                    continue;
                };
                if info.cache_flags != flags {
                    continue;
                }
                return Some(Library {
                    soname: info.soname.unwrap_or_else(|| name.clone()),
                    file_name: file_name_of(&real),
                    host_path: real,
                    cache_flags: flags,
                });
            }
        }
        None
    }

    fn listing(&mut self, dir: &str) -> &[String] {
        let root = &self.root_path;
        self.listings.entry(dir.to_owned()).or_insert_with(|| {
            let mut v: Vec<String> = std::fs::read_dir(root.join(dir))
                .map(|it| {
                    it.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        })
    }

    /// Find the driver's binaries: configured directories first, then `bin` beside each
    /// directory the driver's libraries were found in (`/usr/local/nvidia/lib64` ->
    /// `/usr/local/nvidia/bin`), then the standard ones. Each directory is resolved once.
    pub fn find_binaries(
        &self,
        names: &[&str],
        extra_dirs: &[PathBuf],
        lib_dirs: &[PathBuf],
    ) -> Vec<Binary> {
        let beside_libs = lib_dirs
            .iter()
            .filter_map(|d| d.parent().map(|p| p.join("bin")))
            .filter_map(|d| d.strip_prefix(&self.root_path).ok().map(Path::to_path_buf));
        let mut dirs: Vec<String> = Vec::new();
        for d in extra_dirs
            .iter()
            .cloned()
            .chain(beside_libs)
            .chain(BINARY_DIRS.iter().map(PathBuf::from))
        {
            let d = format!("/{}", d.to_string_lossy().trim_matches('/'));
            if !dirs.contains(&d)
                && matches!(self.root.kind(&d), Ok(Some(crate::rootfs::Kind::Dir)))
            {
                dirs.push(d);
            }
        }
        let mut out = Vec::new();
        for name in names {
            for dir in &dirs {
                let Ok(fd) = self.root.resolve(&format!("{dir}/{name}")) else {
                    continue;
                };
                let executable = nix::sys::stat::fstat(&fd).is_ok_and(|st| {
                    st.st_mode & libc_s_ifmt() == libc_s_ifreg() && st.st_mode & 0o111 != 0
                });
                if !executable {
                    continue;
                }
                if let Ok(host_path) = crate::rootfs::fd_path(&fd) {
                    out.push(Binary {
                        name: (*name).to_owned(),
                        host_path,
                    });
                    break;
                }
            }
        }
        out
    }

    /// The GSP firmware files of this driver version: `nvidia/<version>/gsp*.bin` under the
    /// kernel's firmware search path (its custom path first, when the driver root is `/`).
    /// Where the GSP firmware of this driver version is looked for, in order (root-relative
    /// `<firmware dir>/nvidia/<version>`, as the kernel's firmware loader searches).
    pub fn firmware_dirs(&self) -> Vec<String> {
        let mut dirs: Vec<String> = Vec::new();
        if self.root_path == Path::new("/")
            && let Ok(custom) = crate::bounded::read_to_string(
                Path::new("/sys/module/firmware_class/parameters/path"),
                crate::bounded::PROC_TEXT,
            )
        {
            let custom = custom.trim();
            if !custom.is_empty() {
                dirs.push(custom.to_owned());
            }
        }
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        dirs.push(format!("/lib/firmware/updates/{release}"));
        dirs.push("/lib/firmware/updates".into());
        dirs.push(format!("/lib/firmware/{release}"));
        dirs.push("/lib/firmware".into());
        dirs.iter()
            .map(|d| format!("{}/nvidia/{}", d.trim_end_matches('/'), self.version))
            .collect()
    }

    pub fn find_firmware(&self) -> Vec<PathBuf> {
        for rel in self.firmware_dirs() {
            let Ok(real) = self.root.real_path(&rel) else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(&real) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("gsp") && n.ends_with(".bin")
                })
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            if !files.is_empty() {
                files.sort();
                return files;
            }
        }
        Vec::new()
    }
}

fn libc_s_ifmt() -> u32 {
    nix::sys::stat::SFlag::S_IFMT.bits()
}
fn libc_s_ifreg() -> u32 {
    nix::sys::stat::SFlag::S_IFREG.bits()
}
