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
use crate::state::{self, Container};
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
fn request_for(container: &Container) -> Result<Option<Request>> {
    Request::from_env(&container.env, &Capabilities::all())
}

/// `nvhook prestart`: read the state from `input`, and give the container what it asked for.
/// Works the same when registered as a `createRuntime` hook (same point, same namespaces).
pub fn prestart(input: impl Read, config_path: Option<&Path>) -> Result<Outcome> {
    let mut t = Timer::new();
    let st = state::read_state(input)?;
    let container = match Container::from_state(&st)? {
        Ok(c) => c,
        Err(unparsed) => {
            return match Request::from_env(&unparsed.env, &Capabilities::all())? {
                None => {
                    log::debug!(
                        "no GPU requested; config.json not fully parsed: {}",
                        unparsed.error
                    );
                    Ok(Outcome::NotRequested)
                }
                Some(_) => Err(unparsed.error),
            };
        }
    };
    t.mark("parse");
    // The fast path of every non-GPU container: decided from the environment alone, before any
    // file of the host is read (a broken config must not stop containers that don't use GPUs).
    let Some(req) = request_for(&container)? else {
        t.mark("request");
        log::debug!(
            "container {}: no GPU requested; {}",
            container.id,
            t.summary()
        );
        return Ok(Outcome::NotRequested);
    };
    let config = Config::load(config_path)?;
    t.mark("config");
    let inv = Inventory::discover(&config, &req)?;
    t.mark("inventory");

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
    let plan = nvidia::plan(&req, &inv, &layout);
    t.mark("plan");
    apply::mounts(&plan, &rootfs)?;
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
    let container = match source {
        PlanSource::State(r) => {
            Container::from_state(&state::read_state(r)?)?.map_err(|u| u.error)?
        }
        PlanSource::Bundle(b) => {
            let spec = state::load_spec(&b)?;
            Container::from_spec(&b, &spec)?
        }
    };
    let Some(req) = request_for(&container)? else {
        return Ok(Plan {
            summary: serde_json::json!({"class": "nvidia", "requested": false}),
            ..Plan::default()
        });
    };
    let config = Config::load(config_path)?;
    let inv = Inventory::discover(&config, &req)?;
    let layout = match Rootfs::open(&container.rootfs) {
        Ok(r) => Layout::detect(&r),
        Err(e) => {
            log::warn!("{e}; assuming a Debian-style library layout");
            Layout::debian()
        }
    };
    Ok(nvidia::plan(&req, &inv, &layout))
}
