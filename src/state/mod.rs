//! The OCI state a runtime writes to a hook's stdin, and the bundle's `config.json`.
//!
//! Both are read as tolerantly as the runtimes read them: only the fields nvhook uses, any
//! other field of any type ignored (docs/compat.md, "What nvhook reads of config.json").

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::Error;

pub mod spec;

pub use spec::SpecView;

/// The state JSON is small (a few hundred bytes); anything past this is not a runtime talking.
const MAX_STATE_SIZE: u64 = 1 << 20;

/// The largest `config.json` nvhook reads. Real ones are 5-50 KiB; none that can start comes
/// near this: `process.env` and `args` together are bounded by the kernel's exec limit (6 MiB
/// at most), and a seccomp filter by 32768 BPF instructions.
pub const MAX_CONFIG_SIZE: u64 = 16 << 20;

/// The OCI state on the hook's stdin: what nvhook uses of it. Unknown fields (and
/// `annotations`, `ociVersion`, of any value) are ignored; `status`, of any value, only tells a
/// poststop call (`"stopped"`) from the others.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct State {
    #[serde(default)]
    id: String,
    #[serde(default)]
    pid: Option<i32>,
    #[serde(default)]
    bundle: PathBuf,
    /// Docker's runc before 17.06 wrote `bundlePath` (the toolkit reads it too).
    #[serde(default, rename = "bundlePath")]
    bundle_path: PathBuf,
    #[serde(default)]
    status: serde_json::Value,
}

impl State {
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The container's init process, in the container's namespaces.
    pub fn pid(&self) -> Option<i32> {
        self.pid
    }
    /// A poststop call: runc, crun and podman pass `"status": "stopped"` then.
    pub fn is_stopped(&self) -> bool {
        self.status.as_str() == Some("stopped")
    }
    pub fn bundle(&self) -> &Path {
        if self.bundle.as_os_str().is_empty() {
            &self.bundle_path
        } else {
            &self.bundle
        }
    }
}

/// What nvhook needs to know about the container being created.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    /// The container's init process, in the container's namespaces (prestart/createRuntime).
    pub pid: Option<i32>,
    pub bundle: PathBuf,
    /// The entries of `process.env` nvhook reads (`NVIDIA_*`, `NVHOOK_DEVICES_*`,
    /// `CUDA_VERSION`), in order.
    pub env: Vec<String>,
    /// The rootfs as the runtime sees it: `root.path`, joined to the bundle when relative.
    pub rootfs: PathBuf,
    /// `linux.cgroupsPath`, if the spec names one.
    pub cgroups_path: Option<String>,
    /// `CAP_SYS_ADMIN` in the bounding set: what the toolkit calls a privileged container.
    pub privileged: bool,
    /// (source, destination) of every mount of the spec.
    pub mounts: Vec<(String, String)>,
    /// Who the container's process will run as, in the runtime's user namespace.
    pub user: ProcessUser,
}

/// The container process's credentials (`process.user`), translated through the spec's own
/// `linux.uidMappings`/`gidMappings` when it asks for a user namespace of its own, so the ids
/// are those of the namespace the runtime (and the hook) run in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// crun's `run.oci.keep_original_groups=1` (podman `--group-add keep-groups`): the process
    /// keeps the supplementary groups of the user who started the runtime.
    pub keep_groups: bool,
}

impl ProcessUser {
    fn from_view(v: &SpecView) -> ProcessUser {
        // an id outside every range (or a range past u32) cannot be taken: u32::MAX, never a
        // real id
        let map = |id: u32, maps: &[spec::IdMapping]| {
            if maps.is_empty() {
                return id;
            }
            maps.iter()
                .find(|m| id >= m.container_id && id - m.container_id < m.size)
                .and_then(|m| m.host_id.checked_add(id - m.container_id))
                .unwrap_or(u32::MAX)
        };
        ProcessUser {
            uid: map(v.uid.unwrap_or(0), &v.uid_mappings),
            gid: map(v.gid.unwrap_or(0), &v.gid_mappings),
            additional_gids: v
                .additional_gids
                .iter()
                .map(|g| map(*g, &v.gid_mappings))
                .collect(),
            keep_groups: v.keep_original_groups.as_deref() == Some("1"),
        }
    }
}

/// Parse the state JSON from a reader (the hook's stdin).
pub fn read_state(mut input: impl Read) -> Result<State, Error> {
    let mut buf = Vec::new();
    input
        .by_ref()
        .take(MAX_STATE_SIZE + 1)
        .read_to_end(&mut buf)
        .map_err(|source| Error::StateRead { source })?;
    if buf.len() as u64 > MAX_STATE_SIZE {
        return Err(Error::StateParse {
            reason: format!("more than {MAX_STATE_SIZE} bytes on stdin"),
        });
    }
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::StateParse {
            reason: "stdin is empty; nvhook prestart must be run by a container runtime as an OCI hook (or use `nvhook plan --bundle DIR`)".into(),
        });
    }
    if !buf.trim_ascii_start().starts_with(b"{") {
        return Err(Error::StateParse {
            reason: "it is not a JSON object".into(),
        });
    }
    serde_json::from_slice(&buf).map_err(|e| Error::StateParse {
        reason: e.to_string(),
    })
}

/// The bundle's `config.json`, read once: the fields nvhook uses.
pub struct BundleConfig {
    pub bundle: PathBuf,
    path: PathBuf,
    view: SpecView,
}

impl BundleConfig {
    /// Read `<bundle>/config.json` (at most [`MAX_CONFIG_SIZE`] bytes).
    pub fn read(bundle: &Path) -> Result<BundleConfig, Error> {
        if bundle.as_os_str().is_empty() {
            return Err(Error::StateParse {
                reason: "the state has no \"bundle\"".into(),
            });
        }
        let path = bundle.join("config.json");
        let read_err = |source| Error::SpecRead {
            path: path.clone(),
            source,
        };
        let too_big = |path| Error::SpecParse {
            path,
            reason: format!(
                "it is larger than {} MiB, which no runtime spec that can start is; nvhook does not read it",
                MAX_CONFIG_SIZE >> 20
            ),
        };
        let file = std::fs::File::open(&path).map_err(read_err)?;
        // refused by its size without reading it; the bounded read covers files that grow
        let size = file.metadata().map_err(read_err)?.len();
        if size > MAX_CONFIG_SIZE {
            return Err(too_big(path));
        }
        let mut text = Vec::with_capacity(size as usize + 1);
        file.take(MAX_CONFIG_SIZE + 1)
            .read_to_end(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_CONFIG_SIZE {
            return Err(too_big(path));
        }
        Self::from_bytes(bundle, &text)
    }

    /// A bundle whose `config.json` holds `text` (read already, or fed by a fuzz harness).
    pub fn from_bytes(bundle: &Path, text: &[u8]) -> Result<BundleConfig, Error> {
        let path = bundle.join("config.json");
        let view = SpecView::parse(text).map_err(|reason| Error::SpecParse {
            path: path.clone(),
            reason,
        })?;
        Ok(BundleConfig {
            bundle: bundle.to_owned(),
            path,
            view,
        })
    }

    /// The `process.env` entries nvhook reads, and whether any mount targets the device-list
    /// directory (`/var/run/nvidia-container-devices`, the toolkit's volume-mount way to ask for
    /// GPUs): all the fast path of every container looks at.
    pub fn env(&self) -> (&[String], bool) {
        let device_mounts = self.view.mounts.iter().any(|m| {
            m.destination
                .trim_start_matches('/')
                .starts_with("var/run/nvidia-container-devices")
        });
        (&self.view.env, device_mounts)
    }

    /// What nvhook read of the spec.
    pub fn view(&self) -> &SpecView {
        &self.view
    }

    /// The container, from the spec and the runtime's state (if there is one). Fails only on
    /// what a container that asks for a device needs: a `root.path`, fields nvhook uses that
    /// the runtimes would read differently, a bound passed.
    pub fn container(&self, state: Option<&State>) -> Result<Container, Error> {
        let v = &self.view;
        let bad = |reason: String| Error::SpecParse {
            path: self.path.clone(),
            reason,
        };
        if let Some(reason) = &v.over_limit {
            return Err(bad(reason.clone()));
        }
        if !v.ambiguous.is_empty() {
            return Err(bad(format!(
                "it gives {} twice with different values, or under a key only runc's case-insensitive matching reads: runc reads the last, crun the first; nvhook will not guess which one the container gets",
                v.ambiguous.join(", ")
            )));
        }
        let root = v
            .root_path
            .as_deref()
            .ok_or_else(|| bad("it has no \"root\": {\"path\": ...} string".into()))?;
        let root = Path::new(root);
        let rootfs = if root.is_absolute() {
            root.to_owned()
        } else {
            self.bundle.join(root)
        };
        let (id, pid) = state.map_or((String::new(), None), |st| (st.id().to_owned(), st.pid()));
        Ok(Container {
            id,
            pid,
            bundle: self.bundle.clone(),
            env: v.env.clone(),
            rootfs,
            cgroups_path: v.cgroups_path.clone(),
            privileged: v.sys_admin.unwrap_or(false),
            mounts: v
                .mounts
                .iter()
                .map(|m| (m.source.clone(), m.destination.clone()))
                .collect(),
            user: ProcessUser::from_view(v),
        })
    }
}

#[cfg(test)]
mod tests;

/// The environment as the container's process gets it, which is the one rule nvhook applies to
/// every variable it reads (`NVIDIA_*`, `CUDA_VERSION`, `NVHOOK_DEVICES_*`): `process.env` entries
/// apply in order and a later entry of a name replaces the earlier one. runc (1.0 to 1.2) and
/// crun pass execve one entry per name, the last (measured with runc 1.1.5 and crun 1.8.1, and
/// in runc's `prepareEnv`), so the process's `getenv` finds that last value; NVIDIA's hook reads
/// the last too (a map built in order). crun, which runs the process where runc refuses the
/// spec, also reads an entry as a C string (up to a NUL) and an entry without `=` as "remove this
/// name" (its putenv): nvhook does the same, so it never acts on a value the process cannot see.
pub fn env_map(env: &[String]) -> HashMap<&str, &str> {
    let mut map = HashMap::new();
    for e in env {
        let e = e.split('\0').next().unwrap_or_default();
        match e.split_once('=') {
            Some((k, v)) => {
                map.insert(k, v);
            }
            None => {
                map.remove(e);
            }
        }
    }
    map
}
