//! A shared library on the host, as a device class finds it and a plan mounts it (its own file
//! name in the container, plus the soname link and the ld.so.cache entry).

use std::path::PathBuf;

use serde::Serialize;

/// A driver library on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Library {
    /// The soname ld.so looks up (`libcuda.so.1`).
    pub soname: String,
    /// The real file on the host, all links resolved.
    pub host_path: PathBuf,
    /// Its file name (`libcuda.so.580.159.04`): the name it gets in the container.
    pub file_name: String,
    /// ld.so.cache ABI flags.
    #[serde(skip)]
    pub cache_flags: i32,
}
