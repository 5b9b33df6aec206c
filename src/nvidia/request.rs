//! The container's `NVIDIA_*` environment -> a typed request.
//!
//! Semantics follow NVIDIA's container toolkit (`internal/config/image/cuda_image.go`,
//! `capabilities.go`, `cmd/nvidia-container-runtime-hook/container_config.go`, v1.17-1.20) and
//! libnvidia-container's device selection (`src/cli/common.c`). Each rule is a test below.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::error::Error;
use crate::state::env_map;
use crate::text::{clip, quote};

pub const VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";
pub const DRIVER_CAPABILITIES: &str = "NVIDIA_DRIVER_CAPABILITIES";
pub const REQUIRE_CUDA: &str = "NVIDIA_REQUIRE_CUDA";
pub use crate::state::spec::CUDA_VERSION;
pub const IMEX_CHANNELS: &str = "NVIDIA_IMEX_CHANNELS";
pub const MIG_CONFIG: &str = "NVIDIA_MIG_CONFIG_DEVICES";
pub const MIG_MONITOR: &str = "NVIDIA_MIG_MONITOR_DEVICES";

/// Which GPUs the container asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Devices {
    /// Every GPU.
    All,
    /// No GPU, but the driver's files and control nodes for the capabilities (`none`).
    None,
    /// These device ids (index, `GPU-<uuid>`, PCI bus id), deduplicated in first-seen order.
    List(Vec<String>),
}

pub use crate::capability::{Capabilities, Capability};

/// The container's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    pub devices: Devices,
    pub capabilities: Capabilities,
    /// A "legacy" CUDA image: `CUDA_VERSION` set and `NVIDIA_REQUIRE_CUDA` empty or unset.
    pub legacy: bool,
    /// `NVIDIA_IMEX_CHANNELS`: IMEX channel numbers.
    pub imex_channels: Vec<u32>,
    /// `NVIDIA_MIG_CONFIG_DEVICES=all`: may reconfigure MIG (privileged containers only).
    pub mig_config: bool,
    /// `NVIDIA_MIG_MONITOR_DEVICES=all`: may monitor MIG devices (privileged containers only).
    pub mig_monitor: bool,
    /// `NVIDIA_REQUIRE_*` (and the legacy `CUDA_VERSION` rule), unless disabled.
    pub requirements: Vec<super::require::Requirement>,
}

/// Where a container's GPU request may come from, as the host's config allows (the toolkit's
/// `VisibleDevices()` precedence).
#[derive(Debug, Clone, Default)]
pub struct Sources<'a> {
    /// CAP_SYS_ADMIN in the bounding set.
    pub privileged: bool,
    /// The spec's mounts, (source, destination).
    pub mounts: &'a [(String, String)],
    /// `accept-nvidia-visible-devices-envvar-when-unprivileged`
    pub accept_env_unprivileged: bool,
    /// `accept-nvidia-visible-devices-as-volume-mounts`
    pub accept_volume_mounts: bool,
    /// `disable-require`: ignore NVIDIA_REQUIRE_*.
    pub disable_require: bool,
}

/// The toolkit's volume-mount way to ask for devices: `/dev/null` mounted at
/// `/var/run/nvidia-container-devices/<id>` (`imex/<channel>` for IMEX channels).
pub const DEVICE_LIST_DIR: &str = "/var/run/nvidia-container-devices";

/// Device ids and IMEX channels named by volume mounts.
pub fn volume_mount_requests(mounts: &[(String, String)]) -> (Vec<String>, Vec<String>) {
    let clean = |p: &str| {
        let parts: Vec<&str> = p
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        format!("/{}", parts.join("/"))
    };
    let (mut devices, mut imex) = (Vec::new(), Vec::new());
    for (src, dst) in mounts {
        if clean(src) != "/dev/null" {
            continue;
        }
        let dst = clean(dst);
        let Some(rest) = dst
            .strip_prefix(DEVICE_LIST_DIR)
            .and_then(|r| r.strip_prefix('/'))
        else {
            continue;
        };
        if rest.is_empty() || rest.split('/').any(|c| c == "..") {
            continue;
        }
        if let Some(ch) = rest.strip_prefix("imex/") {
            if !imex.iter().any(|i| i == ch) {
                imex.push(ch.to_owned());
            }
        } else if rest.starts_with("cdi/") {
            log::warn!(
                "ignoring CDI device request {rest:?} by volume mount: use a CDI-aware runtime"
            );
        } else if !devices.iter().any(|d| d == rest) {
            devices.push(rest.to_owned());
        }
    }
    (devices, imex)
}

/// Split a device list: commas, each token trimmed, empty tokens dropped.
fn tokens(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|t| !t.is_empty())
}

impl Request {
    /// The request of a container, from its environment and, where the host's config allows,
    /// its volume mounts; applies the privileged rule for the variable.
    pub fn from_container(
        env: &[String],
        supported: &Capabilities,
        src: &Sources<'_>,
    ) -> Result<Option<Request>, Error> {
        let mut r = Self::from_container_sources(env, supported, src)?;
        if src.disable_require
            && let Some(r) = r.as_mut()
        {
            r.requirements.clear();
        }
        Ok(r)
    }

    fn from_container_sources(
        env: &[String],
        supported: &Capabilities,
        src: &Sources<'_>,
    ) -> Result<Option<Request>, Error> {
        // The toolkit refuses MIG configuration/monitoring for unprivileged containers outright,
        // whichever route named the devices: this check comes before every route (the volume
        // mounts below once returned before it, and an unprivileged container got the MIG
        // config/monitor capability nodes by asking through a mount).
        let map = env_map(env);
        for var in [MIG_CONFIG, MIG_MONITOR] {
            if !src.privileged && map.get(var).is_some_and(|v| !v.is_empty()) {
                return Err(Error::BadRequest {
                    var: var.into(),
                    reason: "cannot be set in a non-privileged container (it needs CAP_SYS_ADMIN)"
                        .into(),
                });
            }
        }
        if src.accept_volume_mounts {
            let (devices, imex) = volume_mount_requests(src.mounts);
            if !devices.is_empty() {
                let mut env: Vec<String> = env
                    .iter()
                    .filter(|e| {
                        !e.starts_with("NVIDIA_VISIBLE_DEVICES=")
                            && !e.starts_with("NVIDIA_IMEX_CHANNELS=")
                    })
                    .cloned()
                    .collect();
                env.push(format!("{VISIBLE_DEVICES}={}", devices.join(",")));
                if !imex.is_empty() {
                    env.push(format!("{IMEX_CHANNELS}={}", imex.join(",")));
                }
                return Request::from_env(&env, supported);
            }
        }
        if !src.privileged && !src.accept_env_unprivileged {
            if map.contains_key(VISIBLE_DEVICES) {
                log::warn!(
                    "ignoring {VISIBLE_DEVICES} in an unprivileged container (accept-nvidia-visible-devices-envvar-when-unprivileged = false)"
                );
            }
            return Ok(None);
        }
        Request::from_env(env, supported)
    }

    /// Parse the container's environment. `Ok(None)` means "not a GPU container": nvhook does
    /// nothing at all. `supported` is the host's allowed capability set (config).
    pub fn from_env(env: &[String], supported: &Capabilities) -> Result<Option<Request>, Error> {
        let map = env_map(env);
        let legacy = map.get(CUDA_VERSION).is_some_and(|v| !v.is_empty())
            && map.get(REQUIRE_CUDA).is_none_or(|v| v.is_empty());

        let devices = match map.get(VISIBLE_DEVICES) {
            // Unset: a legacy CUDA image gets every GPU; anything else is not a GPU container.
            None if legacy => Devices::All,
            None => return Ok(None),
            Some(v) => match parse_devices(v) {
                Some(d) => d,
                None => return Ok(None),
            },
        };
        let capabilities =
            parse_capabilities(map.get(DRIVER_CAPABILITIES).copied(), legacy, supported)?;
        let imex_channels = parse_imex_channels(map.get(IMEX_CHANNELS).copied())?;
        let mig_config = parse_mig_all(MIG_CONFIG, map.get(MIG_CONFIG).copied())?;
        let mig_monitor = parse_mig_all(MIG_MONITOR, map.get(MIG_MONITOR).copied())?;
        let requirements = super::require::collect(&map, legacy, false)?;
        Ok(Some(Request {
            devices,
            capabilities,
            legacy,
            imex_channels,
            mig_config,
            mig_monitor,
            requirements,
        }))
    }
}

/// `NVIDIA_VISIBLE_DEVICES` value -> devices, or None for "void" (empty, only commas, or any
/// token `void`). The first of `all`/`none` decides; both are case-sensitive in the toolkit.
pub fn parse_devices(v: &str) -> Option<Devices> {
    let toks: Vec<&str> = tokens(v).collect();
    if toks.is_empty() || toks.contains(&"void") {
        return None;
    }
    for t in &toks {
        match *t {
            "all" => return Some(Devices::All),
            "none" => return Some(Devices::None),
            _ => {}
        }
    }
    // a set beside the list: a variable can hold millions of ids, and a list search per id
    // would make that quadratic (found by tests/fuzz.rs)
    let mut set = std::collections::HashSet::new();
    let seen: Vec<String> = toks
        .into_iter()
        .filter(|t| set.insert(*t))
        .map(str::to_owned)
        .collect();
    Some(Devices::List(seen))
}

/// `NVIDIA_MIG_CONFIG_DEVICES` / `NVIDIA_MIG_MONITOR_DEVICES`: unset or empty is off; `all`
/// (case-insensitive) is on; anything else is an error, as in nvidia-container-cli ("only 'all'
/// devices are currently supported").
pub fn parse_mig_all(var: &str, value: Option<&str>) -> Result<bool, Error> {
    match value.map(str::trim) {
        None | Some("") => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("all") => Ok(true),
        Some(v) => Err(Error::BadRequest {
            var: var.into(),
            reason: format!("{}: only 'all' devices are currently supported", quote(v)),
        }),
    }
}

/// `NVIDIA_IMEX_CHANNELS`: the device-list syntax; `all`, `none`, `void` and empty request no
/// channel (the toolkit treats a bare `all` as no request); otherwise decimal channel numbers
/// below 2^20, each an error if not (libnvidia-container: "unsupported IMEX channel value").
pub fn parse_imex_channels(value: Option<&str>) -> Result<Vec<u32>, Error> {
    let list = match value.and_then(parse_devices) {
        Some(Devices::List(l)) => l,
        _ => return Ok(Vec::new()),
    };
    let mut out = Vec::new();
    let mut set = std::collections::HashSet::new();
    for t in list {
        let n = t
            .parse::<u32>()
            .ok()
            .filter(|n| *n < (1 << 20) && t.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| Error::BadRequest {
                var: IMEX_CHANNELS.into(),
                reason: format!(
                    "unsupported IMEX channel value {}: channels are numbers below 1048576",
                    quote(&t)
                ),
            })?;
        if set.insert(n) {
            out.push(n);
        }
    }
    Ok(out)
}

/// `NVIDIA_DRIVER_CAPABILITIES` -> capabilities, as the toolkit's legacy hook computes them:
/// unset or empty: `compute,utility` (all supported ones for an unset legacy image); `all`: all
/// supported; otherwise the listed words, and any word that is not a supported capability is an
/// error (`none` too), unless `all` is also listed.
pub fn parse_capabilities(
    value: Option<&str>,
    legacy: bool,
    supported: &Capabilities,
) -> Result<Capabilities, Error> {
    let value = match value {
        None if legacy => return Ok(supported.clone()),
        None => return Ok(Capabilities::default_set().intersect(supported)),
        Some("") => return Ok(Capabilities::default_set().intersect(supported)),
        Some(v) => v,
    };
    let words: BTreeSet<&str> = tokens(value).collect();
    if words.contains("all") {
        return Ok(supported.clone());
    }
    let mut caps = Capabilities::default();
    let mut unknown = Vec::new();
    for w in &words {
        match Capability::from_name(w).filter(|c| supported.has(*c)) {
            Some(c) => {
                caps.0.insert(c);
            }
            None => unknown.push(*w),
        }
    }
    if !unknown.is_empty() {
        let asked: Vec<&str> = words.iter().copied().collect();
        return Err(Error::BadRequest {
            var: DRIVER_CAPABILITIES.into(),
            reason: format!(
                "unsupported capabilities found in '{}' (allowed '{}'): {} not one of {}",
                clip(&asked.join(",")),
                caps,
                clip(&unknown.join(", ")),
                supported
            ),
        });
    }
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[&str]) -> Vec<String> {
        vars.iter().map(|s| s.to_string()).collect()
    }
    fn req(vars: &[&str]) -> Option<Request> {
        Request::from_env(&env(vars), &Capabilities::all()).unwrap()
    }
    fn list(ids: &[&str]) -> Devices {
        Devices::List(ids.iter().map(|s| s.to_string()).collect())
    }

    /// NVIDIA_VISIBLE_DEVICES, each row citing the toolkit behaviour it mirrors
    /// (cuda_image.go devicesFromEnvvars + devices.go NewVisibleDevices).
    #[test]
    // Long by design: one table of NVIDIA_VISIBLE_DEVICES cases, one row each.
    fn visible_devices_table() {
        let rows: &[(&[&str], Option<Devices>, &str)] = &[
            (&[], None, "unset: same behaviour as runc"),
            (
                &["NVIDIA_VISIBLE_DEVICES="],
                None,
                "empty: same behaviour as runc",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=void"],
                None,
                "void: same behaviour as runc",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES= , ,"],
                None,
                "only empty tokens: void",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=0,void"],
                None,
                "void anywhere wins",
            ),
            (&["NVIDIA_VISIBLE_DEVICES=all"], Some(Devices::All), "all"),
            (
                &["NVIDIA_VISIBLE_DEVICES=none"],
                Some(Devices::None),
                "none: driver, no GPU",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=0,all"],
                Some(Devices::All),
                "first special token decides",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=none,all"],
                Some(Devices::None),
                "first special token decides",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=ALL"],
                Some(list(&["ALL"])),
                "special words are case-sensitive",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES= 1 , 0 "],
                Some(list(&["1", "0"])),
                "tokens trimmed, order kept",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=0,1,0"],
                Some(list(&["0", "1"])),
                "duplicates dropped (cli: first appearance)",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_VISIBLE_DEVICES=1"],
                Some(list(&["1"])),
                "last entry wins, as the process sees it",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_VISIBLE_DEVICES=void"],
                None,
                "a later void wins",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_VISIBLE_DEVICES"],
                None,
                "an entry without = removes the name (crun; runc refuses the spec)",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_VISIBLE_DEVICES\0=0"],
                None,
                "an entry ends at NUL (crun): the name alone, removed",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=0\0,1"],
                Some(list(&["0"])),
                "a value ends at NUL (crun)",
            ),
            (
                &["CUDA_VERSION=12.4.0"],
                Some(Devices::All),
                "legacy image, unset: all",
            ),
            (
                &["CUDA_VERSION=12.4.0", "NVIDIA_REQUIRE_CUDA="],
                Some(Devices::All),
                "empty REQUIRE_CUDA is still legacy",
            ),
            (
                &["CUDA_VERSION=12.4.0", "NVIDIA_REQUIRE_CUDA=cuda>=12.4"],
                None,
                "not legacy: unset means no GPU",
            ),
            (
                &["CUDA_VERSION=12.4.0", "NVIDIA_VISIBLE_DEVICES="],
                None,
                "legacy but set to empty: void",
            ),
            (&["CUDA_VERSION="], None, "empty CUDA_VERSION is not legacy"),
        ];
        for (vars, want, why) in rows {
            let got = req(vars).map(|r| r.devices);
            assert_eq!(&got, want, "{why}: {vars:?}");
        }
    }

    /// NVIDIA_DRIVER_CAPABILITIES (container_config.go getDriverCapabilities).
    #[test]
    fn capabilities_table() {
        use Capability::*;
        let c = |v: &[Capability]| Capabilities(v.iter().copied().collect());
        let rows: &[(&[&str], Capabilities, &str)] = &[
            (
                &["NVIDIA_VISIBLE_DEVICES=all"],
                c(&[Compute, Utility]),
                "unset: default compute,utility",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES="],
                c(&[Compute, Utility]),
                "empty: default",
            ),
            (
                &[
                    "NVIDIA_VISIBLE_DEVICES=all",
                    "NVIDIA_DRIVER_CAPABILITIES=all",
                ],
                Capabilities::all(),
                "all: every supported",
            ),
            (
                &[
                    "NVIDIA_VISIBLE_DEVICES=all",
                    "NVIDIA_DRIVER_CAPABILITIES=utility",
                ],
                c(&[Utility]),
                "one word",
            ),
            (
                &[
                    "NVIDIA_VISIBLE_DEVICES=all",
                    "NVIDIA_DRIVER_CAPABILITIES= compute , video ",
                ],
                c(&[Compute, Video]),
                "trimmed",
            ),
            (
                &[
                    "NVIDIA_VISIBLE_DEVICES=all",
                    "NVIDIA_DRIVER_CAPABILITIES=all,foo",
                ],
                Capabilities::all(),
                "unknown words next to all are accepted",
            ),
            (
                &["CUDA_VERSION=11.0"],
                Capabilities::all(),
                "legacy, unset: all supported",
            ),
            (
                &["CUDA_VERSION=11.0", "NVIDIA_DRIVER_CAPABILITIES="],
                c(&[Compute, Utility]),
                "legacy, empty: default",
            ),
        ];
        for (vars, want, why) in rows {
            assert_eq!(&req(vars).unwrap().capabilities, want, "{why}: {vars:?}");
        }
    }

    #[test]
    fn unknown_capabilities_are_an_error_like_the_toolkit() {
        for bad in ["compute,foo", "none", "Compute"] {
            let e = Request::from_env(
                &env(&[
                    "NVIDIA_VISIBLE_DEVICES=all",
                    &format!("NVIDIA_DRIVER_CAPABILITIES={bad}"),
                ]),
                &Capabilities::all(),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("NVIDIA_DRIVER_CAPABILITIES"), "{e}");
            assert!(e.contains("unsupported capabilities found in"), "{e}");
        }
    }

    #[test]
    fn host_supported_set_limits_capabilities() {
        let supported = Capabilities([Capability::Utility].into_iter().collect());
        let r = Request::from_env(&env(&["NVIDIA_VISIBLE_DEVICES=all"]), &supported)
            .unwrap()
            .unwrap();
        assert_eq!(r.capabilities.to_string(), "utility");
        assert!(
            Request::from_env(
                &env(&[
                    "NVIDIA_VISIBLE_DEVICES=all",
                    "NVIDIA_DRIVER_CAPABILITIES=compute"
                ]),
                &supported
            )
            .is_err()
        );
    }

    /// NVIDIA_IMEX_CHANNELS (cuda_image.go imexChannelsFromEnvVar, LNC parse_imex_info).
    #[test]
    fn imex_channels_table() {
        type Row<'a> = (Option<&'a str>, Result<Vec<u32>, ()>);
        let rows: &[Row] = &[
            (None, Ok(vec![])),
            (Some(""), Ok(vec![])),
            (Some("all"), Ok(vec![])),
            (Some("none"), Ok(vec![])),
            (Some("0"), Ok(vec![0])),
            (Some("3, 1,3"), Ok(vec![3, 1])),
            (Some("1048575"), Ok(vec![1048575])),
            (Some("1048576"), Err(())),
            (Some("x"), Err(())),
            (Some("+1"), Err(())),
        ];
        for (v, want) in rows {
            assert_eq!(parse_imex_channels(*v).map_err(|_| ()), *want, "{v:?}");
        }
    }

    /// Device sources (cuda_image.go VisibleDevices, requestsFromMounts; hook config defaults).
    #[test]
    fn sources_table() {
        let m = |s: &str, d: &str| (s.to_string(), d.to_string());
        let mounts = vec![
            m("/dev/null", "/var/run/nvidia-container-devices/1"),
            m("/dev/null", "/var/run/nvidia-container-devices/imex/3"),
            m("/dev/zero", "/var/run/nvidia-container-devices/0"),
            m(
                "/dev/null",
                "/var/run/nvidia-container-devices/cdi/nvidia.com/gpu=0",
            ),
            m("/dev/null", "/var/run/nvidia-container-devices/../etc"),
        ];
        let all = Capabilities::all();
        let env = env(&["NVIDIA_VISIBLE_DEVICES=0"]);
        let src = |privileged, accept_env, accept_mounts| Sources {
            privileged,
            mounts: &mounts,
            accept_env_unprivileged: accept_env,
            accept_volume_mounts: accept_mounts,
            disable_require: false,
        };
        let devs = |s: Sources| {
            Request::from_container(&env, &all, &s)
                .unwrap()
                .map(|r| (r.devices, r.imex_channels))
        };
        // defaults: the variable counts for everyone, volume mounts are ignored
        assert_eq!(devs(src(false, true, false)), Some((list(&["0"]), vec![])));
        // unprivileged and env not accepted: nothing
        assert_eq!(devs(src(false, false, false)), None);
        // privileged: the variable counts regardless
        assert_eq!(devs(src(true, false, false)), Some((list(&["0"]), vec![])));
        // volume mounts accepted and present: they win; only /dev/null sources; imex/ gives channels
        assert_eq!(devs(src(false, false, true)), Some((list(&["1"]), vec![3])));
        // volume mounts accepted but none: back to the variable rules
        let none: Vec<(String, String)> = vec![];
        let s = Sources {
            mounts: &none,
            ..src(false, true, true)
        };
        assert_eq!(
            Request::from_container(&env, &all, &s)
                .unwrap()
                .map(|r| r.devices),
            Some(list(&["0"]))
        );
    }

    /// Issue 16: every route to a request passes the privilege rule of the MIG variables (the
    /// volume-mount route once skipped it).
    #[test]
    fn mig_variables_need_privilege_on_every_route() {
        let mounts = vec![(
            "/dev/null".to_string(),
            "/var/run/nvidia-container-devices/0".to_string(),
        )];
        let none: Vec<(String, String)> = vec![];
        let all = Capabilities::all();
        for var in [MIG_CONFIG, MIG_MONITOR] {
            let env = env(&["NVIDIA_VISIBLE_DEVICES=0", &format!("{var}=all")]);
            for (mounts, accept_env, accept_mounts) in [
                (&mounts, false, true),
                (&mounts, true, true),
                (&none, true, false),
                (&none, false, false),
                (&none, true, true),
            ] {
                let s = Sources {
                    privileged: false,
                    mounts,
                    accept_env_unprivileged: accept_env,
                    accept_volume_mounts: accept_mounts,
                    disable_require: false,
                };
                let e = Request::from_container(&env, &all, &s);
                assert!(
                    matches!(&e, Err(Error::BadRequest { var: v, .. }) if v == var),
                    "{var} via mounts={} env={accept_env} accept_mounts={accept_mounts}: {e:?}",
                    mounts.len()
                );
                let privileged = Sources {
                    privileged: true,
                    ..s
                };
                let r = Request::from_container(&env, &all, &privileged)
                    .unwrap()
                    .unwrap();
                assert!(r.mig_config || r.mig_monitor, "{var}: {r:?}");
            }
        }
    }

    #[test]
    fn entries_without_equals_are_ignored() {
        assert_eq!(
            req(&["GARBAGE", "NVIDIA_VISIBLE_DEVICES=0"])
                .unwrap()
                .devices,
            list(&["0"])
        );
    }

    /// Found by tests/fuzz.rs: a 10 MB variable of distinct ids was deduplicated in quadratic
    /// time (the hook hung), and errors quoted whole values (a 10 MB line in the runtime's log).
    #[test]
    fn huge_values_are_linear_and_quoted_short() {
        let ids: Vec<String> = (0..1_500_000).map(|i| i.to_string()).collect();
        let v = ids.join(",");
        assert!(v.len() > 10 << 20);
        assert_eq!(parse_devices(&v), Some(Devices::List(ids)));
        let e = parse_imex_channels(Some(&v)).unwrap_err().to_string();
        assert!(e.len() < 400, "{e}");
        let e = parse_mig_all(MIG_CONFIG, Some(&v)).unwrap_err().to_string();
        assert!(e.len() < 400, "{e}");
        let caps = format!("compute,{}", "x".repeat(10 << 20));
        let e = parse_capabilities(Some(&caps), false, &Capabilities::all())
            .unwrap_err()
            .to_string();
        assert!(e.len() < 600, "{e}");
        let e = Request::from_env(&env(&[&format!("CUDA_VERSION={v}")]), &Capabilities::all())
            .unwrap_err()
            .to_string();
        assert!(e.len() < 400, "{e}");
    }
}
