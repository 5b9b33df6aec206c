//! Every error a user can act on, each naming the path, variable or device involved and what to do.
//! Any of them makes `nvhook prestart` exit non-zero, so the runtime refuses to start the container.

use std::path::PathBuf;

use crate::rootfs::RootfsError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- input from the runtime -------------------------------------------------------------
    #[error("cannot read the OCI state from stdin: {source}")]
    StateRead { source: std::io::Error },
    #[error("cannot parse the OCI state on stdin: {reason}")]
    StateParse { reason: String },
    #[error("cannot read the bundle's {path}: {source} (is the state's \"bundle\" right?)")]
    SpecRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse the bundle's {path}: {reason}")]
    SpecParse { path: PathBuf, reason: String },
    #[error(
        "poststop of container {id}: {reason}; the container's rootfs may keep files nvhook created (mount points, soname links, /etc/ld.so.cache)"
    )]
    Cleanup { id: String, reason: String },
    #[error(
        "the OCI state has no \"pid\": nvhook must run as a prestart or createRuntime hook, when the container's process exists"
    )]
    NoPid,
    #[error(
        "the OCI state's pid is {pid}: nvhook cdi-hook must run as a createRuntime (or prestart) hook, whose state names the container's process as the host sees it; regenerate the CDI spec with `nvhook cdi generate`"
    )]
    HookStage { pid: i32 },
    #[error(
        "the container's process {pid} is gone ({path}: {source}): it exited or was killed before the hook ran (see the container's memory limit and the runtime's log), or nvhook is registered at a stage without a live container process (use prestart or createRuntime)"
    )]
    ProcessGone {
        pid: i32,
        path: PathBuf,
        source: nix::errno::Errno,
    },
    #[error(
        "the container's process {pid} is in nvhook's own mount namespace ({path}); applying there would mount onto the host: the container needs a mount namespace of its own (\"mount\" in the spec's linux.namespaces), and the state's \"pid\" must be its process"
    )]
    SharedMountNamespace { pid: i32, path: PathBuf },

    // --- the container's request -------------------------------------------------------------
    #[error("{var}: {reason}")]
    BadRequest { var: String, reason: String },
    #[error(
        "{var}: unsatisfied condition: {condition} (this host: {host}); the image needs another host, or NVIDIA_DISABLE_REQUIRE=true to start it anyway"
    )]
    Requirement {
        var: String,
        condition: String,
        host: String,
    },
    #[error("{var}: unknown device {id:?}; this host has {available}")]
    UnknownDevice {
        var: String,
        id: String,
        available: String,
    },

    // --- host configuration -----------------------------------------------------------------
    #[error("cannot read the config file {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {reason}")]
    ConfigParse { path: PathBuf, reason: String },
    #[error("invalid device class file {path}: {reason}")]
    ClassFile { path: PathBuf, reason: String },

    // --- what the host offers ----------------------------------------------------------------
    #[error(
        "no NVIDIA driver found: cannot read {path}: {source} (is the nvidia kernel module loaded? is proc-root right in the config?)"
    )]
    NoDriver {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {reason}")]
    ProcParse { path: PathBuf, reason: String },
    #[error("device node {path} is missing or not a character device ({reason}); {hint}")]
    DeviceNode {
        path: PathBuf,
        reason: String,
        hint: &'static str,
    },
    #[error("cannot read the driver's library cache {path}: {reason}")]
    DriverLdCache { path: PathBuf, reason: String },
    #[error(
        "driver library {name} not found under {root} (looked in its etc/ld.so.cache and library directories); {hint}"
    )]
    LibraryMissing {
        name: String,
        root: PathBuf,
        hint: &'static str,
    },
    #[error("device class {class}: {path}: {reason} (fix the host, or the class file {file})")]
    ClassHost {
        class: String,
        file: PathBuf,
        path: PathBuf,
        reason: String,
    },
    #[error("driver file {path}: {reason}")]
    DriverFile { path: PathBuf, reason: String },
    #[error(
        "NVML: cannot {what}: {reason} (NVML is needed for MIG devices and some NVIDIA_REQUIRE_* checks)"
    )]
    Nvml { what: String, reason: String },

    // --- applying the plan -------------------------------------------------------------------
    #[error("cannot enter the container's mount namespace {path}: {source}")]
    Setns {
        path: PathBuf,
        source: nix::errno::Errno,
    },
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error("cannot bind-mount {source_path} onto {target} in the container: {source}")]
    Mount {
        source_path: PathBuf,
        target: String,
        source: std::io::Error,
    },
    #[error("cannot update the container's linker cache {path}: {reason}")]
    LdCacheUpdate { path: String, reason: String },
    #[error("device cgroup: {reason} (cgroup {path}; device {device})")]
    Cgroup {
        path: PathBuf,
        device: String,
        reason: String,
    },
    /// An ancestor's device program would not let the container use a node nvhook grants. The
    /// grant reaches only the container's own cgroup, so this is refused, never widened.
    #[error(
        "device cgroup: the device program {program} of the ancestor cgroup {ancestor} {reason} {device} (the container's cgroup is {container}); nvhook grants devices only in the container's own cgroup and never widens an ancestor's program, which would open the device to every cgroup below it: allow {device} rw in {ancestor}'s device policy (DeviceAllow= of its systemd unit, or the program of whoever attached it), or run the container under another parent cgroup"
    )]
    CgroupAncestorDenies {
        container: PathBuf,
        ancestor: PathBuf,
        device: String,
        program: u32,
        /// "denies" or "may deny (why the program could not be followed)"
        reason: String,
    },
    #[error("device cgroup: cannot find the container's cgroup: {reason}")]
    CgroupNotFound { reason: String },
    #[error("rootless: {what}: {reason}; {hint}")]
    Rootless {
        what: String,
        reason: String,
        hint: String,
    },

    // --- command line -------------------------------------------------------------------------
    /// A value that could not be written as JSON (`what`: which one); shown as before, by
    /// serde_json's own message.
    #[error("{source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;
