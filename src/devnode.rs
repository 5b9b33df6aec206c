//! Host device nodes: found under `<dev-root>/dev`, major:minor read from the node itself (stat),
//! never assumed from constants (nvidia-uvm's major is dynamic, and test trees use other numbers).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Character or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeType {
    #[serde(rename = "c")]
    Char,
    #[serde(rename = "b")]
    Block,
}

impl NodeType {
    pub fn letter(self) -> char {
        match self {
            NodeType::Char => 'c',
            NodeType::Block => 'b',
        }
    }
}

/// A device node on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNode {
    /// Path relative to `/dev` (`nvidia0`, `nvidia-caps/nvidia-cap1`): the container sees it at
    /// `/dev/<name>`.
    pub name: String,
    pub host_path: PathBuf,
    #[serde(rename = "type")]
    pub kind: NodeType,
    pub major: u64,
    pub minor: u64,
}

/// Why a node could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("it is not a device node")]
    NotADevice,
}

/// `stat` the node `<dev_root>/dev/<name>` (following symlinks, as udev's `/dev/char/*` are).
/// `Ok(None)` when it does not exist.
pub fn stat_node(dev_root: &Path, name: &str) -> Result<Option<HostNode>, NodeError> {
    let host_path = dev_root.join("dev").join(name);
    let md = match std::fs::metadata(&host_path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let kind = if md.file_type().is_char_device() {
        NodeType::Char
    } else if md.file_type().is_block_device() {
        NodeType::Block
    } else {
        return Err(NodeError::NotADevice);
    };
    let rdev = md.rdev();
    Ok(Some(HostNode {
        name: name.to_owned(),
        host_path,
        kind,
        major: nix::sys::stat::major(rdev),
        minor: nix::sys::stat::minor(rdev),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_major_minor_from_the_node() {
        let n = stat_node(Path::new("/"), "null").unwrap().unwrap();
        assert_eq!((n.kind, n.major, n.minor), (NodeType::Char, 1, 3));
        assert!(
            stat_node(Path::new("/"), "no-such-node-here")
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            stat_node(Path::new("/"), "../etc/hostname"),
            Err(NodeError::NotADevice) | Ok(None)
        ));
    }
}
