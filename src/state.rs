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

/// Load `<bundle>/config.json`.
pub fn load_spec(bundle: &Path) -> Result<Spec, Error> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|source| Error::SpecRead {
        path: path.clone(),
        source,
    })?;
    parse_spec(&path, &text)
}

fn parse_spec(path: &Path, text: &[u8]) -> Result<Spec, Error> {
    serde_json::from_slice(text).map_err(|e| Error::SpecParse {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Just `process.env`, read leniently. oci-spec's types are strict (a missing `process.user`,
/// a field a newer runtime writes differently); a spec they reject must still not stop a
/// container that asks for no GPU, so the hook looks at the environment alone first.
#[derive(serde::Deserialize)]
struct EnvOnly {
    process: Option<EnvOnlyProcess>,
}
#[derive(serde::Deserialize)]
struct EnvOnlyProcess {
    env: Option<Vec<String>>,
}

/// A bundle whose config.json oci-spec rejected: its environment, and the error to report if
/// the environment does ask for a GPU.
#[derive(Debug)]
pub struct Unparsed {
    pub env: Vec<String>,
    pub error: Error,
}

impl Container {
    /// Combine the runtime's state with the bundle's spec. `Ok(Err(..))`: the spec could not be
    /// parsed by oci-spec, but its environment could.
    pub fn from_state(state: &State) -> Result<Result<Container, Unparsed>, Error> {
        let bundle = state.bundle().clone();
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
        let spec = match parse_spec(&path, &text) {
            Ok(s) => s,
            Err(error) => {
                let lenient: EnvOnly =
                    serde_json::from_slice(&text).map_err(|e| Error::SpecParse {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                let env = lenient.process.and_then(|p| p.env).unwrap_or_default();
                return Ok(Err(Unparsed { env, error }));
            }
        };
        let mut c = Container::from_spec(&bundle, &spec)?;
        c.id = state.id().clone();
        c.pid = *state.pid();
        Ok(Ok(c))
    }

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
        let e = Container::from_state(&s).unwrap_err();
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
    }
}
