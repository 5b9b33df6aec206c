//! `nvhook cdi-hook`: what a CDI spec cannot say, done when the container is created.
//!
//! A CDI spec mounts the driver's files, but ld.so finds a library by soname through the image's
//! `/etc/ld.so.cache`, and the soname links (`libcuda.so.1 -> libcuda.so.550.54.15`) have to be
//! made in the image. The spec registers this command as a `createRuntime` hook with the links and
//! linker-cache entries as arguments; it applies them with the same code as `nvhook prestart`.
//!
//! Why `createRuntime` and not `createContainer` (which NVIDIA's own specs use): both run after
//! the runtime's mounts and before pivot_root, but `createContainer` runs inside the container's
//! PID namespace and its state names no usable process (runc 1.1 passes pid 1, crun 1.8 pid 0),
//! and crun has already made a `--read-only` rootfs read-only by then. At `createRuntime` the
//! state carries the container's PID as the host sees it, exactly as at `prestart`: nvhook enters
//! that process's mount namespace and resolves every path inside the rootfs, as the hook does.

use std::io::Read;

use crate::apply::{self, namespace::MountNamespace};
use crate::error::Error;
use crate::ldcache::{FLAG_ELF_LIBC6, native_flags};
use crate::nvidia::{self, compat};
use crate::plan::{LdEntry, Plan, Symlink};
use crate::rootfs::Rootfs;
use crate::state::{self, BundleConfig};

/// The hook's arguments: everything it does is written in the spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookArgs {
    pub links: Vec<Symlink>,
    pub ldcache: Vec<LdEntry>,
    /// The host driver's version: use the image's CUDA forward-compat libraries if newer.
    pub cuda_compat: Option<String>,
}

fn usage(msg: String) -> Error {
    Error::Usage(format!("cdi-hook: {msg}; see `nvhook help`"))
}

/// `PATH=VALUE` with an absolute container path that has no `=` of its own.
fn pair(opt: &str, v: &str) -> Result<(String, String), Error> {
    match v.split_once('=') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_owned(), b.to_owned())),
        _ => Err(usage(format!("{opt} {v:?}: expected NAME=VALUE"))),
    }
}

fn absolute(opt: &str, p: &str) -> Result<(), Error> {
    if p.starts_with('/') {
        Ok(())
    } else {
        Err(usage(format!(
            "{opt}: {p:?} is not an absolute container path"
        )))
    }
}

impl HookArgs {
    pub fn is_empty(&self) -> bool {
        self.links.is_empty() && self.ldcache.is_empty() && self.cuda_compat.is_none()
    }

    /// Parse `--link PATH=TARGET`, `--ldcache SONAME=PATH`, `--ldcache32 SONAME=PATH`,
    /// `--cuda-compat DRIVER_VERSION`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<HookArgs, Error> {
        let mut h = HookArgs::default();
        let mut it = args.into_iter();
        while let Some(opt) = it.next() {
            let mut value = || {
                it.next()
                    .ok_or_else(|| usage(format!("{opt} needs a value")))
            };
            match opt.as_str() {
                "--link" => {
                    let (path, target) = pair(&opt, &value()?)?;
                    absolute(&opt, &path)?;
                    h.links.push(Symlink { path, target });
                }
                "--ldcache" | "--ldcache32" => {
                    let (soname, path) = pair(&opt, &value()?)?;
                    absolute(&opt, &path)?;
                    let flags = if opt == "--ldcache" {
                        native_flags()
                    } else {
                        FLAG_ELF_LIBC6
                    };
                    h.ldcache.push(LdEntry {
                        soname,
                        path,
                        flags,
                    });
                }
                "--cuda-compat" => h.cuda_compat = Some(value()?),
                other => return Err(usage(format!("unknown option {other:?}"))),
            }
        }
        Ok(h)
    }

    /// The arguments that [`HookArgs::parse`] reads back.
    pub fn to_args(&self) -> Result<Vec<String>, Error> {
        let mut v = Vec::new();
        if let Some(ver) = &self.cuda_compat {
            v.extend(["--cuda-compat".to_owned(), ver.clone()]);
        }
        for l in &self.links {
            if l.path.contains('=') {
                return Err(Error::Usage(format!(
                    "cannot express the link {:?} in a hook argument (it contains '=')",
                    l.path
                )));
            }
            v.extend(["--link".to_owned(), format!("{}={}", l.path, l.target)]);
        }
        for e in &self.ldcache {
            let opt = match e.flags {
                f if f == native_flags() => "--ldcache",
                FLAG_ELF_LIBC6 => "--ldcache32",
                f => {
                    return Err(Error::Usage(format!(
                        "cannot express the linker-cache entry {} (flags {f:#x}) in a hook argument",
                        e.soname
                    )));
                }
            };
            v.extend([opt.to_owned(), format!("{}={}", e.soname, e.path)]);
        }
        Ok(v)
    }

    /// What to do in this rootfs: the image's forward-compat libraries first (the first cache
    /// entry of a soname wins), then the links and the driver's entries.
    pub fn plan(&self, rootfs: &Rootfs) -> Plan {
        let mut p = Plan::default();
        if let Some(host) = &self.cuda_compat
            && let Some(c) = compat::detect(rootfs).filter(|c| compat::use_compat(&c.version, host))
        {
            nvidia::plan_cuda_compat(&mut p, &c);
        }
        for l in &self.links {
            p.add_symlink(l.path.clone(), l.target.clone());
        }
        for e in &self.ldcache {
            p.add_ldcache(e.soname.clone(), e.path.clone(), e.flags);
        }
        p
    }
}

/// Run as the spec's `createRuntime` hook: the OCI state on `input`.
pub fn run(input: impl Read, args: &HookArgs) -> Result<(), Error> {
    let st = state::read_state(input)?;
    let bundle = BundleConfig::read(st.bundle())?;
    let container = bundle.container(Some(&st))?;
    let pid = container.pid.ok_or(Error::NoPid)?;
    if pid <= 1 {
        // A createContainer/startContainer hook sees the container's own PID namespace: pid 1
        // there is the host's init here, whose mount namespace must never be entered.
        return Err(Error::HookStage { pid });
    }
    MountNamespace::of_pid(pid)?.enter()?;
    let rootfs = Rootfs::open(&container.rootfs)?;
    let plan = args.plan(&rootfs);
    apply::mounts(&plan, &rootfs)?;
    apply::ldcache(&plan, &rootfs)?;
    log::debug!(
        "container {}: {} link(s), {} linker-cache entries",
        container.id,
        plan.symlinks.len(),
        plan.ldcache.len()
    );
    Ok(())
}
