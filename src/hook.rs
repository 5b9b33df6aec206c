//! The two entry points that share the pipeline: `prestart` (apply) and `plan` (print).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::apply::{
    self, cgroup::DeviceCgroup, namespace::MountNamespace, systemd, userns::Privilege,
};
use crate::class::{self, ClassInventory};
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
    /// The container asked for no GPU and no device class: nothing was touched.
    NotRequested,
    /// The plan was applied.
    Applied { devices: usize, mounts: usize },
    /// A poststop call: what prestart had changed in the rootfs was looked at.
    Undone(crate::cleanup::Undone),
}

/// Could this container ask for a GPU or a device class? Decided from `process.env` and mount
/// destinations alone, without the host's config or class files: false means certainly not, and
/// nvhook does nothing. Every class variable starts with `NVHOOK_DEVICES_`, so classes cost
/// this check a prefix comparison per variable.
fn might_request(bundle: &BundleConfig) -> Result<bool> {
    let (env, device_mounts) = bundle.env();
    // An unparsable request is reported by the full path below, which knows the config.
    Ok(device_mounts
        || class::asks_for_a_class(env)
        || !matches!(Request::from_env(env, &Capabilities::all()), Ok(None)))
}

/// The container's request under the host's config (read from `config_file`; None: the
/// defaults, no file).
fn request_for(
    container: &state::Container,
    config: &Config,
    config_file: Option<&Path>,
) -> Result<Option<Request>> {
    let supported = config.supported().map_err(|reason| Error::ConfigParse {
        path: config_file.map_or_else(|| "config".into(), Path::to_path_buf),
        reason,
    })?;
    let src = nvidia::request::Sources {
        privileged: container.privileged,
        mounts: &container.mounts,
        accept_env_unprivileged: config.accept_nvidia_visible_devices_envvar_when_unprivileged,
        accept_volume_mounts: config.accept_nvidia_visible_devices_as_volume_mounts,
        disable_require: config.disable_require,
    };
    Request::from_container(&container.env, &supported, &src)
}

/// `nvhook prestart`: read the state from `input`, and give the container what it asked for.
/// Works the same when registered as a `createRuntime` hook (same point, same namespaces).
/// A state whose status is `stopped` is a poststop call (a hooks.d file has one argument list for
/// all its stages, so podman runs `nvhook prestart` at poststop too): it is handed to
/// [`poststop`].
pub fn prestart(input: impl Read, config_path: Option<&Path>) -> Result<Outcome> {
    let mut t = Timer::new();
    let st = state::read_state(input)?;
    if st.is_stopped() {
        return poststop_of(&st, config_path).map(Outcome::Undone);
    }
    let bundle = BundleConfig::read(st.bundle())?;
    // The fast path of every non-GPU container: decided from `process.env` alone, before the full
    // spec is parsed and before any file of the host is read (a broken config must not stop
    // containers that don't use GPUs).
    if !might_request(&bundle)? {
        t.mark("parse");
        log::debug!("container {}: no GPU requested; {}", st.id(), t.summary());
        return Ok(Outcome::NotRequested);
    }
    let container = bundle.container(Some(&st))?;
    t.mark("parse");
    let (config, config_file) = Config::load_with_source(config_path)?;
    crate::logging::to_file(config.log_file.as_deref());
    let Some(found) = discover(&container, (&config, config_file.as_deref()), &mut t)? else {
        log::debug!(
            "container {}: no GPU or device class requested under this host's config",
            st.id()
        );
        return Ok(Outcome::NotRequested);
    };
    apply_found(&container, &config, &found, t)
}

/// What a container asked for under the host's config, and what the host has for it.
struct Discovered {
    /// The NVIDIA request and the driver's files and devices for it.
    nvidia: Option<(Request, Inventory)>,
    /// The device classes asked for, each with what the host has for it.
    classes: Vec<ClassInventory>,
}

/// The container's request (NVIDIA's and the device classes') and the host's inventory for it;
/// `None` when the container asked for nothing under this host's config. Shared by `prestart`
/// and `plan`.
fn discover(
    container: &state::Container,
    (config, config_file): (&Config, Option<&Path>),
    t: &mut Timer,
) -> Result<Option<Discovered>> {
    let req = request_for(container, config, config_file)?;
    let class_reqs = class::requests_for(&container.env, container.privileged, config)?;
    if req.is_none() && class_reqs.is_empty() {
        return Ok(None);
    }
    t.mark("config");
    let nvidia = match req {
        Some(req) => {
            let inv = Inventory::discover(config, &req, t)?;
            nvidia::facts::check(&req, &inv)?;
            t.mark("require");
            Some((req, inv))
        }
        None => None,
    };
    let classes = class::discover_all(&class_reqs, config)?;
    if !classes.is_empty() {
        t.mark("classes");
    }
    Ok(Some(Discovered { nvidia, classes }))
}

/// The plan for what was found, in the rootfs's layout (Debian's without a rootfs): the NVIDIA
/// plan (or `empty` when only classes were asked for) with the classes merged in. Shared by
/// `prestart` and `plan`, so prestart applies what `nvhook plan` prints.
fn build_plan(found: &Discovered, rootfs: Option<&Rootfs>, empty: Plan) -> Plan {
    let layout = rootfs.map_or_else(Layout::debian, Layout::detect);
    let mut plan = match &found.nvidia {
        Some((req, inv)) => {
            let compat = rootfs.and_then(|r| compat_of(req, r));
            nvidia::plan(req, inv, &layout, compat.as_ref())
        }
        None => empty,
    };
    class::merge_into(&mut plan, &found.classes, &layout);
    plan
}

/// What prestart prepares in the host's view before it enters the container's mount namespace.
struct HostSide {
    privilege: Privilege,
    rootless: bool,
    tracker: Option<crate::cleanup::Tracker>,
    cgroup: Option<DeviceCgroup>,
    policy: Option<(String, String)>,
    unit: Option<String>,
    durable: Option<systemd::Pending>,
}

/// Opens, in the host's view: the container's mount namespace, the cleanup record, the device
/// cgroup; and forks the systemd child (single-threaded, before any namespace is entered).
/// Returns the namespace apart, to be entered.
fn open_host_side(
    container: &state::Container,
    config: &Config,
    t: &mut Timer,
) -> Result<(MountNamespace, HostSide)> {
    let pid = container.pid.ok_or(Error::NoPid)?;
    let privilege = Privilege::detect()?;
    let ns = MountNamespace::of_pid(pid)?;
    // the record directory is opened in the host's view, before entering the container's
    let tracker = crate::cleanup::Tracker::open(&container.id, pid, privilege.rootless_uid());
    t.mark("record_open");
    let rootless = privilege.in_user_namespace();
    let cgroup = if config.no_cgroups || rootless {
        None
    } else {
        Some(
            DeviceCgroup::open(pid, container.cgroups_path.as_deref())?
                .with_program_cache(&config.program_cache_dir),
        )
    };
    let policy = (rootless && !config.no_cgroups)
        .then(|| apply::userns::device_policy(pid, container.cgroups_path.as_deref()))
        .flatten();
    t.mark("cgroup_open");
    // Forked here, single-threaded and still in the host's mount namespace: the child connects to
    // the bus while this process mounts.
    let unit = cgroup
        .as_ref()
        .and_then(|cg| systemd::unit_of(container.cgroups_path.as_deref(), &cg.proc_path));
    let durable = unit
        .clone()
        .filter(|_| config.systemd_device_grants)
        .and_then(systemd::Pending::start);
    t.mark("systemd_check");
    let host = HostSide {
        privilege,
        rootless,
        tracker,
        cgroup,
        policy,
        unit,
        durable,
    };
    Ok((ns, host))
}

/// Prestart past discovery: the host side, then the container's namespace: plan, mounts, grants.
fn apply_found(
    container: &state::Container,
    config: &Config,
    found: &Discovered,
    mut t: Timer,
) -> Result<Outcome> {
    let (ns, mut host) = open_host_side(container, config, &mut t)?;
    ns.enter()?;
    t.mark("setns");

    let rootfs = Rootfs::open_journaled(&container.rootfs)?;
    let plan = build_plan(found, Some(&rootfs), Plan::default());
    if let Some(d) = &mut host.durable {
        d.send(&plan.cgroup_rules);
    }
    t.mark("plan");
    if host.rootless {
        apply::userns::preflight(&plan, &container.user, host.privilege, host.policy.as_ref())?;
        t.mark("rootless_check");
    }
    mount_recorded(&plan, &rootfs, host.tracker.take(), &mut t)?;
    grant(&plan, config, host, &mut t)?;
    log::debug!("container {}: {}", container.id, t.summary());
    if log::log_enabled!(log::Level::Debug) {
        // for the load tests: the count must not grow from run to run
        log::debug!("open file descriptors at the end: {}", open_fds());
    }
    Ok(Outcome::Applied {
        devices: plan.devices.len(),
        mounts: plan.mounts.len(),
    })
}

/// The plan's mounts, tmpfs directories and ld.so.cache, between the cleanup record's begin and
/// finish (finished also after a failure: the runtime's poststop then removes what was created).
fn mount_recorded(
    plan: &Plan,
    rootfs: &Rootfs,
    tracker: Option<crate::cleanup::Tracker>,
    t: &mut Timer,
) -> Result<()> {
    if let Some(tr) = &tracker {
        tr.begin(rootfs);
        t.mark("record_begin");
    }
    let applied = apply::mounts(plan, rootfs)
        .and_then(|()| apply::tmpfs_dirs(plan, rootfs))
        .map(|()| t.mark("mounts"))
        .and_then(|()| apply::ldcache(plan, rootfs))
        .map(|()| t.mark("ldcache"));
    // also after a failure: the runtime's poststop then removes what was created
    if let Some(tr) = tracker {
        tr.finish(rootfs);
        t.mark("record");
    }
    applied
}

/// The plan's device rules: systemd's answer (if asked), then the container's device cgroup.
fn grant(plan: &Plan, config: &Config, host: HostSide, t: &mut Timer) -> Result<()> {
    // systemd's answer, if it came while this process mounted; otherwise the child records the
    // nodes alone (the container's start does not wait for systemd). Where it came, systemd's
    // rebuilt program already allows the nodes and the grant below leaves it as it is (it
    // re-checks every program). That is also how an ancestor program of the container's own unit
    // (a runtime that nests the container in a sub-cgroup of its scope) comes to allow them:
    // systemd rebuilds it from DeviceAllow=; nvhook never widens a program above the container's
    // cgroup.
    let asked = match host.durable {
        Some(d) => {
            let answer = d.finish(&plan.cgroup_rules);
            t.mark("systemd");
            match answer {
                Some(true) => "recorded",
                Some(false) => "asked, and it failed (see the warning)",
                None => "asked, the answer still pending",
            }
        }
        None if !config.systemd_device_grants => "not asked: systemd-device-grants = false",
        None => "not asked: no system bus",
    };
    if let Some(cg) = &host.cgroup {
        if let Err(e) = cg.grant(&plan.cgroup_rules) {
            if let (Error::CgroupAncestorDenies { ancestor, .. }, Some(u)) = (&e, &host.unit)
                && ancestor.file_name().is_some_and(|n| *n == **u)
            {
                log::warn!(
                    "the denying program is on the container's own systemd unit {u}; systemd was {asked}"
                );
            }
            return Err(e);
        }
        log::debug!(
            "granted {} device(s) in {}",
            plan.cgroup_rules.len(),
            cg.describe()
        );
    }
    t.mark("cgroup");
    Ok(())
}

/// `nvhook poststop`: read the state from `input` and put back what prestart changed in the
/// container's rootfs (see [`crate::cleanup`]).
pub fn poststop(input: impl Read, config_path: Option<&Path>) -> Result<Outcome> {
    let st = state::read_state(input)?;
    poststop_of(&st, config_path).map(Outcome::Undone)
}

fn poststop_of(st: &state::State, config_path: Option<&Path>) -> Result<crate::cleanup::Undone> {
    use crate::cleanup::{Store, Undone};
    let mut t = Timer::new();
    let privilege = Privilege::from_uid_map_file();
    let cerr = |e: std::io::Error| Error::Cleanup {
        id: st.id().to_owned(),
        reason: e.to_string(),
    };
    let store = match Store::open(privilege.rootless_uid(), false).map_err(cerr)? {
        Some(store) if store.has(st.id()) => store,
        _ => return Ok(Undone::NoRecord),
    };
    t.mark("record_look");
    // only a container with a record costs more than the look for it: then the config is read,
    // for its log file
    if let Ok(config) = Config::load(config_path) {
        crate::logging::to_file(config.log_file.as_deref());
    }
    t.mark("config");
    let undone = crate::cleanup::poststop(&store, st.id(), st.bundle()).map_err(cerr)?;
    t.mark("undo");
    log::debug!(
        "container {}: poststop: {undone:?}; {}",
        st.id(),
        t.summary()
    );
    Ok(undone)
}

/// How many descriptors this process has open (less the one that lists them).
fn open_fds() -> String {
    match std::fs::read_dir("/proc/self/fd") {
        Ok(d) => d.count().saturating_sub(1).to_string(),
        Err(e) => format!("unknown ({e})"),
    }
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
    let not_requested = || Plan {
        summary: serde_json::json!({"class": "nvidia", "requested": false}),
        ..Plan::default()
    };
    if !might_request(&bundle)? {
        return Ok(not_requested());
    }
    let container = bundle.container(st.as_ref())?;
    let (config, config_file) = Config::load_with_source(config_path)?;
    let Some(found) = discover(
        &container,
        (&config, config_file.as_deref()),
        &mut Timer::new(),
    )?
    else {
        return Ok(not_requested());
    };
    let rootfs = match Rootfs::open(&container.rootfs) {
        Ok(r) => Some(r),
        Err(e) => {
            log::warn!("{e}; assuming a Debian-style library layout");
            None
        }
    };
    Ok(build_plan(&found, rootfs.as_ref(), not_requested()))
}

/// The image's CUDA forward-compat libraries; looked for only with the compute libraries, as
/// libnvidia-container does.
fn compat_of(req: &Request, rootfs: &Rootfs) -> Option<nvidia::compat::CudaCompat> {
    nvidia::catalog::wants_uvm(&req.capabilities)
        .then(|| nvidia::compat::detect(rootfs))
        .flatten()
}
