//! The two entry points that share the pipeline: `prestart` (apply) and `plan` (print).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::apply::{self, cgroup::DeviceCgroup, namespace::MountNamespace};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::nvidia::{self, Inventory, request::Capabilities, request::Request};
use crate::plan::Plan;
use crate::rootfs::Rootfs;
use crate::state::{self, BundleConfig};
use crate::timing::Timer;

/// What `prestart` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The container asked for no GPU: nothing was touched.
    NotRequested,
    /// The plan was applied.
    Applied { devices: usize, mounts: usize },
}

/// The container's request, with the host's supported capabilities applied.
fn request_for(env: &[String]) -> Result<Option<Request>> {
    Request::from_env(env, &Capabilities::all())
}

/// `nvhook prestart`: read the state from `input`, and give the container what it asked for.
/// Works the same when registered as a `createRuntime` hook (same point, same namespaces).
pub fn prestart(input: impl Read, config_path: Option<&Path>) -> Result<Outcome> {
    let mut t = Timer::new();
    let st = state::read_state(input)?;
    let bundle = BundleConfig::read(st.bundle())?;
    // The fast path of every non-GPU container: decided from `process.env` alone, before the full
    // spec is parsed and before any file of the host is read (a broken config must not stop
    // containers that don't use GPUs).
    let Some(req) = request_for(&bundle.env()?)? else {
        t.mark("parse");
        log::debug!("container {}: no GPU requested; {}", st.id(), t.summary());
        return Ok(Outcome::NotRequested);
    };
    let container = bundle.container(Some(&st))?;
    t.mark("parse");
    let config = Config::load(config_path)?;
    t.mark("config");
    let inv = Inventory::discover(&config, &req, &mut t)?;

    let pid = container.pid.ok_or(Error::NoPid)?;
    let ns = MountNamespace::of_pid(pid)?;
    let cgroup = if config.no_cgroups {
        None
    } else {
        Some(DeviceCgroup::open(pid, container.cgroups_path.as_deref())?)
    };
    t.mark("cgroup_open");
    ns.enter()?;
    t.mark("setns");

    let rootfs = Rootfs::open(&container.rootfs)?;
    let layout = Layout::detect(&rootfs);
    let compat = compat_of(&req, &rootfs);
    let plan = nvidia::plan(&req, &inv, &layout, compat.as_ref());
    t.mark("plan");
    apply::mounts(&plan, &rootfs)?;
    apply::tmpfs_dirs(&plan, &rootfs)?;
    t.mark("mounts");
    apply::ldcache(&plan, &rootfs)?;
    t.mark("ldcache");
    if let Some(cg) = &cgroup {
        cg.grant(&plan.cgroup_rules)?;
        log::debug!(
            "granted {} device(s) in {}",
            plan.cgroup_rules.len(),
            cg.describe()
        );
    }
    t.mark("cgroup");
    log::debug!("container {}: {}", container.id, t.summary());
    Ok(Outcome::Applied {
        devices: plan.devices.len(),
        mounts: plan.mounts.len(),
    })
}

/// Where `nvhook plan` reads the container from.
pub enum PlanSource<R: Read> {
    State(R),
    Bundle(PathBuf),
}

/// `nvhook plan`: the same pipeline as `prestart`, printing instead of applying. The layout is
/// detected from the rootfs as the host sees it.
pub fn plan<R: Read>(source: PlanSource<R>, config_path: Option<&Path>) -> Result<Plan> {
    let (bundle, st) = match source {
        PlanSource::State(r) => {
            let st = state::read_state(r)?;
            (BundleConfig::read(st.bundle())?, Some(st))
        }
        PlanSource::Bundle(b) => (BundleConfig::read(&b)?, None),
    };
    let Some(req) = request_for(&bundle.env()?)? else {
        return Ok(Plan {
            summary: serde_json::json!({"class": "nvidia", "requested": false}),
            ..Plan::default()
        });
    };
    let container = bundle.container(st.as_ref())?;
    let config = Config::load(config_path)?;
    let inv = Inventory::discover(&config, &req, &mut Timer::new())?;
    let (layout, compat) = match Rootfs::open(&container.rootfs) {
        Ok(r) => (Layout::detect(&r), compat_of(&req, &r)),
        Err(e) => {
            log::warn!("{e}; assuming a Debian-style library layout");
            (Layout::debian(), None)
        }
    };
    Ok(nvidia::plan(&req, &inv, &layout, compat.as_ref()))
}

/// The image's CUDA forward-compat libraries; looked for only with the compute libraries, as
/// libnvidia-container does.
fn compat_of(req: &Request, rootfs: &Rootfs) -> Option<nvidia::compat::CudaCompat> {
    nvidia::catalog::wants_uvm(&req.capabilities)
        .then(|| nvidia::compat::detect(rootfs))
        .flatten()
}
