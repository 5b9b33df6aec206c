//! The OCI state a runtime writes to a hook's stdin, and the bundle's `config.json`.

use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Spec, State};

use crate::error::Error;

/// The state JSON is small (a few hundred bytes); anything past this is not a runtime talking.
const MAX_STATE_SIZE: u64 = 1 << 20;

/// What nvhook needs to know about the container being created.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    /// The container's init process, in the container's namespaces (prestart/createRuntime).
    pub pid: Option<i32>,
    pub bundle: PathBuf,
    /// `process.env` of the bundle's config.json.
    pub env: Vec<String>,
    /// The rootfs as the runtime sees it: `root.path`, joined to the bundle when relative.
    pub rootfs: PathBuf,
    pub readonly_rootfs: bool,
    /// `linux.cgroupsPath`, if the spec names one.
    pub cgroups_path: Option<String>,
    /// Whether the spec asks for a user namespace (rootless and userns containers).
    pub user_namespace: bool,
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
    fn from_spec(spec: &Spec) -> ProcessUser {
        let map = |id: u32, maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| match maps {
            Some(ms) if !ms.is_empty() => ms
                .iter()
                .find(|m| id >= m.container_id() && id - m.container_id() < m.size())
                .map_or(u32::MAX, |m| m.host_id() + (id - m.container_id())),
            _ => id,
        };
        let linux = spec.linux().as_ref();
        let uids = linux.and_then(|l| l.uid_mappings().as_ref());
        let gids = linux.and_then(|l| l.gid_mappings().as_ref());
        let user = spec.process().as_ref().map(|p| p.user());
        ProcessUser {
            uid: map(user.map_or(0, |u| u.uid()), uids),
            gid: map(user.map_or(0, |u| u.gid()), gids),
            additional_gids: user
                .and_then(|u| u.additional_gids().as_ref())
                .map(|g| g.iter().map(|g| map(*g, gids)).collect())
                .unwrap_or_default(),
            keep_groups: spec
                .annotations()
                .as_ref()
                .and_then(|a| a.get("run.oci.keep_original_groups"))
                .is_some_and(|v| v == "1"),
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
    serde_json::from_slice(&buf).map_err(|e| Error::StateParse {
        reason: e.to_string(),
    })
}

fn parse_spec(path: &Path, text: &[u8]) -> Result<Spec, Error> {
    serde_json::from_slice(text).map_err(|e| Error::SpecParse {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Just `process.env`, read leniently: the fast path of every container looks at nothing else.
/// (oci-spec's full parse costs ~150 us and its types are strict: a spec they reject, or a field
/// a newer runtime writes differently, must not stop a container that asks for no GPU.)
#[derive(serde::Deserialize)]
struct EnvOnly {
    process: Option<EnvOnlyProcess>,
    mounts: Option<Vec<EnvOnlyMount>>,
}
#[derive(serde::Deserialize)]
struct EnvOnlyMount {
    destination: Option<String>,
}
#[derive(serde::Deserialize)]
struct EnvOnlyProcess {
    env: Option<Vec<String>>,
}

/// The bundle's `config.json`, read once.
pub struct BundleConfig {
    pub bundle: PathBuf,
    path: PathBuf,
    text: Vec<u8>,
}

impl BundleConfig {
    /// Read `<bundle>/config.json`.
    pub fn read(bundle: &Path) -> Result<BundleConfig, Error> {
        if bundle.as_os_str().is_empty() {
            return Err(Error::StateParse {
                reason: "the state has no \"bundle\"".into(),
            });
        }
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(|source| Error::SpecRead {
            path: path.clone(),
            source,
        })?;
        Ok(Self::from_bytes(bundle, text))
    }

    /// A bundle whose `config.json` holds `text` (read already, or fed by a fuzz harness).
    pub fn from_bytes(bundle: &Path, text: Vec<u8>) -> BundleConfig {
        BundleConfig {
            bundle: bundle.to_owned(),
            path: bundle.join("config.json"),
            text,
        }
    }

    /// `process.env` alone, and whether any mount targets the device-list directory
    /// (`/var/run/nvidia-container-devices`, the toolkit's volume-mount way to ask for GPUs).
    pub fn env(&self) -> Result<(Vec<String>, bool), Error> {
        let e: EnvOnly = serde_json::from_slice(&self.text).map_err(|e| Error::SpecParse {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let device_mounts = e.mounts.unwrap_or_default().iter().any(|m| {
            m.destination.as_deref().is_some_and(|d| {
                d.trim_start_matches('/')
                    .starts_with("var/run/nvidia-container-devices")
            })
        });
        Ok((
            e.process.and_then(|p| p.env).unwrap_or_default(),
            device_mounts,
        ))
    }

    /// The whole spec, through oci-spec.
    pub fn spec(&self) -> Result<Spec, Error> {
        parse_spec(&self.path, &self.text)
    }

    /// The container, from the whole spec and the runtime's state (if there is one).
    pub fn container(&self, state: Option<&State>) -> Result<Container, Error> {
        let mut c = Container::from_spec(&self.bundle, &self.spec()?)?;
        if let Some(st) = state {
            c.id = st.id().clone();
            c.pid = *st.pid();
        }
        Ok(c)
    }
}

impl Container {
    /// A container described by a bundle alone (for `nvhook plan --bundle`).
    pub fn from_spec(bundle: &Path, spec: &Spec) -> Result<Container, Error> {
        let env = spec
            .process()
            .as_ref()
            .and_then(|p| p.env().clone())
            .unwrap_or_default();
        let root = spec.root().as_ref().ok_or_else(|| Error::SpecParse {
            path: bundle.join("config.json"),
            reason: "it has no \"root\"".into(),
        })?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            bundle.join(root.path())
        };
        let linux = spec.linux().as_ref();
        let user_namespace = linux
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| {
                ns.iter()
                    .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User)
            });
        let privileged = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().as_ref())
            .and_then(|c| c.bounding().as_ref())
            .is_some_and(|b| b.contains(&oci_spec::runtime::Capability::SysAdmin));
        let mounts = spec
            .mounts()
            .as_ref()
            .map(|ms| {
                ms.iter()
                    .map(|m| {
                        let src = m
                            .source()
                            .as_ref()
                            .map(|s| s.to_string_lossy().into_owned());
                        (
                            src.unwrap_or_default(),
                            m.destination().to_string_lossy().into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Container {
            id: String::new(),
            pid: None,
            bundle: bundle.to_owned(),
            env,
            rootfs,
            readonly_rootfs: root.readonly().unwrap_or(false),
            cgroups_path: linux
                .and_then(|l| l.cgroups_path().as_ref())
                .map(|p| p.to_string_lossy().into_owned()),
            user_namespace,
            privileged,
            mounts,
            user: ProcessUser::from_spec(spec),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_errors_are_clear() {
        let e = read_state(&b""[..]).unwrap_err();
        assert!(e.to_string().contains("stdin is empty"), "{e}");
        let e = read_state(&b"{not json"[..]).unwrap_err();
        assert!(e.to_string().contains("OCI state"), "{e}");
        let big = vec![b' '; (MAX_STATE_SIZE + 10) as usize];
        assert!(read_state(&big[..]).is_err());
    }

    #[test]
    fn state_parses() {
        let s = read_state(
            &br#"{"ociVersion":"1.0.2","id":"c1","status":"created","pid":42,"bundle":"/b"}"#[..],
        )
        .unwrap();
        assert_eq!(*s.pid(), Some(42));
        assert_eq!(s.bundle(), Path::new("/b"));
    }

    #[test]
    fn missing_bundle_names_the_path() {
        let s = read_state(
            &br#"{"ociVersion":"1.0.2","id":"c1","status":"created","pid":42,"bundle":"/nonexistent/bundle"}"#[..],
        )
        .unwrap();
        let e = BundleConfig::read(s.bundle()).err().unwrap();
        assert!(
            e.to_string().contains("/nonexistent/bundle/config.json"),
            "{e}"
        );
    }

    #[test]
    fn relative_root_is_joined_to_the_bundle() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs","readonly":true},
                "process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0},"env":["A=1","NVIDIA_VISIBLE_DEVICES=all"]}}"#,
        )
        .unwrap();
        let c = Container::from_spec(Path::new("/b"), &spec).unwrap();
        assert_eq!(c.rootfs, Path::new("/b/rootfs"));
        assert!(c.readonly_rootfs);
        assert_eq!(c.env, ["A=1", "NVIDIA_VISIBLE_DEVICES=all"]);
        assert_eq!(c.user, ProcessUser::default());
    }

    #[test]
    fn process_user_is_mapped_through_the_specs_own_user_namespace() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
                "annotations":{"run.oci.keep_original_groups":"1"},
                "process":{"cwd":"/","args":["sh"],"user":{"uid":1000,"gid":5,"additionalGids":[5,7,70000]}},
                "linux":{"uidMappings":[{"containerID":0,"hostID":1,"size":999},{"containerID":1000,"hostID":0,"size":1}],
                         "gidMappings":[{"containerID":0,"hostID":100,"size":65536}]}}"#,
        )
        .unwrap();
        let u = Container::from_spec(Path::new("/b"), &spec).unwrap().user;
        assert_eq!((u.uid, u.gid), (0, 105));
        // an id outside every range cannot be taken by the process: u32::MAX, never a real id
        assert_eq!(u.additional_gids, [105, 107, u32::MAX]);
        assert!(u.keep_groups);
    }
}
