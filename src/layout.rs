//! Where libraries go in this container image.
//!
//! Debian and Ubuntu images keep their libraries in the multiarch directory
//! (`/usr/lib/x86_64-linux-gnu`), other glibc distributions in `/usr/lib64`. libnvidia-container
//! decides by `/etc/debian_version`; we also accept an image that simply has the multiarch
//! directory (busybox-based images with Debian's glibc do). Paths are resolved inside the rootfs,
//! so usrmerge links (`/lib -> usr/lib`, `/lib64 -> usr/lib64`) are followed like ld.so follows them.

use serde::Serialize;

use crate::rootfs::{Kind, Rootfs};

/// Multiarch triplet of this build's architecture (Debian's library directory name).
pub fn multiarch_triplet() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        other => other,
    }
}

/// The container image's library layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// Where the driver's 64-bit libraries are mounted (container path).
    pub lib_dir: String,
    /// Where 32-bit libraries go (compat32).
    pub lib32_dir: String,
    /// Where binaries go.
    pub bin_dir: String,
}

impl Layout {
    /// Debian/Ubuntu layout: libraries in the multiarch directory.
    pub fn debian() -> Layout {
        Layout {
            lib_dir: format!("/usr/lib/{}", multiarch_triplet()),
            lib32_dir: "/usr/lib/i386-linux-gnu".into(),
            bin_dir: "/usr/bin".into(),
        }
    }

    /// Detect from the rootfs. Errors reading it (a hostile or broken image) fall back to the
    /// non-Debian layout: the linker cache we write makes either directory work.
    pub fn detect(rootfs: &Rootfs) -> Layout {
        let t = multiarch_triplet();
        let multiarch = format!("/usr/lib/{t}");
        let is_dir = |p: &str| matches!(rootfs.kind(p), Ok(Some(Kind::Dir)));
        let debian = matches!(rootfs.kind("/etc/debian_version"), Ok(Some(_)))
            || is_dir(&multiarch)
            || is_dir(&format!("/lib/{t}"));
        if debian {
            let lib_dir = if is_dir(&multiarch) || !is_dir(&format!("/lib/{t}")) {
                multiarch
            } else {
                // An image with only /lib/<triplet> (no usrmerge, no /usr/lib/<triplet>)
                format!("/lib/{t}")
            };
            Layout {
                lib_dir,
                ..Layout::debian()
            }
        } else {
            let lib32_dir = if is_dir("/usr/lib32") {
                "/usr/lib32"
            } else {
                "/usr/lib"
            };
            Layout {
                lib_dir: "/usr/lib64".into(),
                lib32_dir: lib32_dir.into(),
                bin_dir: "/usr/bin".into(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn root(name: &str, setup: impl FnOnce(&PathBuf)) -> (PathBuf, Layout) {
        let p = std::env::temp_dir().join(format!("nvhook-layout-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        setup(&p);
        let l = Layout::detect(&Rootfs::open(&p).unwrap());
        (p, l)
    }

    #[test]
    fn debian_fedora_usrmerge_and_bare() {
        let t = multiarch_triplet();
        let (p, l) = root("deb", |p| {
            std::fs::create_dir_all(p.join("etc")).unwrap();
            std::fs::write(p.join("etc/debian_version"), "12").unwrap();
        });
        assert_eq!(l.lib_dir, format!("/usr/lib/{t}"));
        std::fs::remove_dir_all(p).unwrap();

        let (p, l) = root("usrmerge", |p| {
            std::fs::create_dir_all(p.join(format!("usr/lib/{t}"))).unwrap();
            std::os::unix::fs::symlink("usr/lib", p.join("lib")).unwrap();
        });
        assert_eq!(l.lib_dir, format!("/usr/lib/{t}"));
        std::fs::remove_dir_all(p).unwrap();

        let (p, l) = root("oldlib", |p| {
            std::fs::create_dir_all(p.join(format!("lib/{t}"))).unwrap()
        });
        assert_eq!(l.lib_dir, format!("/lib/{t}"));
        std::fs::remove_dir_all(p).unwrap();

        let (p, l) = root("fedora", |p| {
            std::fs::create_dir_all(p.join("usr/lib64")).unwrap();
            std::os::unix::fs::symlink("usr/lib64", p.join("lib64")).unwrap();
        });
        assert_eq!(l.lib_dir, "/usr/lib64");
        std::fs::remove_dir_all(p).unwrap();

        // a hostile /etc/debian_version symlink out of the root changes nothing outside it
        let (p, l) = root("hostile", |p| {
            std::fs::create_dir_all(p.join("etc")).unwrap();
            std::os::unix::fs::symlink("/etc/os-release", p.join("etc/debian_version")).unwrap();
        });
        assert_eq!(l.lib_dir, "/usr/lib64");
        std::fs::remove_dir_all(p).unwrap();
    }
}
