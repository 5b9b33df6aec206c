//! Private files of nvhook's cache directory (`cache-dir`): read only when they are ours, 0600,
//! in a directory of ours nobody else can write; written whole or not at all. Shared by the
//! inventory cache (cache.rs) and the GPU facts (gpus.rs).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, fstat};

/// The bytes of `name` in the cache directory `dir`, if it is a regular file of ours that
/// nobody else can read or write (0600), in a directory of ours nobody else can write, and
/// at most `max` bytes.
pub fn read_private(dir: &Path, name: &str, max: i64) -> Result<Vec<u8>, String> {
    let dir = open_private_dir(dir)?;
    let fd = openat(
        dir.as_fd(),
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| e.to_string())?;
    let st = fstat(&fd).map_err(|e| e.to_string())?;
    if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
        return Err("not a regular file".into());
    }
    if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
        return Err(format!(
            "owner {} mode {:o}: must be ours and 0600",
            st.st_uid,
            st.st_mode & 0o7777
        ));
    }
    if st.st_size > max {
        return Err("too large".into());
    }
    let mut bytes = Vec::with_capacity(st.st_size.max(0) as usize + 1);
    std::fs::File::from(fd)
        .take(max as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// Write `name` (0600) in the cache directory `dir` (made 0700 if missing) whole or not at all.
pub fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| e.to_string())?;
        }
        _ => {}
    }
    let dir = open_private_dir(dir)?;
    let tmp = format!(".{name}.{}", std::process::id());
    let fd = crate::rootfs::create_exclusive(dir.as_fd(), tmp.as_str(), 0o600)
        .map_err(|e| e.to_string())?;
    let written = std::fs::File::from(fd).write_all(bytes);
    let renamed = written.map_err(|e| e.to_string()).and_then(|()| {
        nix::fcntl::renameat(dir.as_fd(), tmp.as_str(), dir.as_fd(), name)
            .map_err(|e| e.to_string())
    });
    if renamed.is_err() {
        let _ = nix::unistd::unlinkat(
            dir.as_fd(),
            tmp.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
    renamed
}

/// Open the cache directory (no symlink) and check that it is ours and nobody else can write it.
fn open_private_dir(dir: &Path) -> Result<std::os::fd::OwnedFd, String> {
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("{}: {e}", dir.display()))?;
    let st = fstat(&fd).map_err(|e| e.to_string())?;
    if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o022 != 0 {
        return Err(format!(
            "{}: owner {} mode {:o}: must be ours and writable by nobody else",
            dir.display(),
            st.st_uid,
            st.st_mode & 0o7777
        ));
    }
    Ok(fd)
}
