//! Reading files with a size limit.
//!
//! Every file nvhook reads is bounded (issue 16: a crafted 64 MiB image `ld.so.cache` drove
//! the hook to ~700 MiB of memory, outside the container's memory limit). A file over its
//! limit is an error that says so; callers wrap it with the path and what to do.

use std::io::Read;
use std::path::Path;

/// The most read from a small text file of the kernel (`/proc/driver/nvidia/*`, a capability's
/// `access`, `uid_map`, `/proc/<pid>/cgroup`, `cmdline`, `status`, a `/sys` parameter): real ones
/// are a few KiB. The proc root comes from the config, so a fake tree may stand in for the kernel.
pub const PROC_TEXT: u64 = 1 << 20;

/// The most read from a `mountinfo` (a host with tens of thousands of mounts stays far below).
pub const MOUNTINFO: u64 = 16 << 20;

/// The error for a file over `limit` bytes.
pub fn too_large(limit: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("larger than {limit} bytes, the most nvhook reads from it"),
    )
}

/// The first read's buffer: /proc and /sys files say size 0, and most are a few KiB; an empty
/// buffer would make the standard library probe with 32 bytes, then double (8 reads for 4 KiB).
const FIRST_READ: u64 = 8 << 10;

/// Read at most `limit` bytes from `r`; more is an error.
pub fn read_to_end(r: impl Read, limit: u64) -> std::io::Result<Vec<u8>> {
    read_to_end_sized(r, limit, 0)
}

/// [`read_to_end`] of something that says it holds `size` bytes (a regular file's length).
pub fn read_to_end_sized(r: impl Read, limit: u64, size: u64) -> std::io::Result<Vec<u8>> {
    let first = size
        .saturating_add(1)
        .max(FIRST_READ)
        .min(limit.saturating_add(1));
    let mut buf = Vec::with_capacity(usize::try_from(first).unwrap_or(0));
    r.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(too_large(limit));
    }
    Ok(buf)
}

/// The whole of `path`, at most `limit` bytes.
pub fn read(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let size = f.metadata().map_or(0, |m| m.len());
    read_to_end_sized(f, limit, size)
}

/// The whole of `path` as UTF-8 text, at most `limit` bytes.
pub fn read_to_string(path: &Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read(path, limit)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_exact() {
        assert_eq!(read_to_end(&b"abcd"[..], 4).unwrap(), b"abcd");
        let e = read_to_end(&b"abcde"[..], 4).unwrap_err();
        assert!(e.to_string().contains("larger than 4 bytes"), "{e}");
        assert!(
            read_to_end(std::io::repeat(0), 1 << 20).is_err(),
            "an endless file stops"
        );
    }
}
