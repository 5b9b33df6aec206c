//! Durable device grants on systemd-managed cgroups (docs/systemd.md).
//!
//! When the container's cgroup is a systemd unit (podman/CRI-O with `cgroup_manager = "systemd"`,
//! `runc`/`crun --systemd-cgroup`, Docker and containerd with the systemd driver), systemd owns the
//! unit's device policy: every time it re-applies the unit (`systemctl daemon-reload`, which
//! package upgrades run) it rebuilds the device program (v2) or `devices.list` (v1) from the unit's
//! own `DeviceAllow=` list, and a rule a hook added behind its back is gone: the container keeps
//! its `/dev/nvidia*` nodes but gets EPERM. So nvhook also tells systemd, over the system bus,
//! about exactly the nodes it grants: `SetUnitProperties(unit, runtime=true,
//! [("DeviceAllow", [("/dev/char/M:m", "rwm")])])`, the equivalent of
//! `systemctl set-property --runtime`. The node is named `/dev/char/M:m` (or `/dev/block/M:m`):
//! systemd 252 accepts that form without the link existing (and refuses a path outside /dev,
//! such as a node of a driver root), so the grant never depends on the host's node names, and it
//! is one node, never a whole major.
//!
//! The bus call runs in a forked child ([`nvhook_sys::fork_child_with`]): zbus starts threads, and
//! the hook must stay single-threaded for `setns(CLONE_NEWNS)`; the child also keeps the host's
//! mount namespace (the bus socket is a host path). It is forked before the hook enters the
//! container's namespace, connects and asks whether systemd confines the unit while the hook
//! mounts, and learns the nodes when the plan is made. The hook does not wait for systemd: if the
//! answer has come by the time its own work is done, a failure is warned about on its standard
//! error; otherwise the child finishes alone (its standard streams are /dev/null, so runc does not
//! wait for it) and logs a failure in nvhook's log file. Either way the child lives at most
//! [`TIMEOUT`] (`alarm`), so a hung bus or systemd costs nothing but the durability. The container
//! uses its nodes from the start through the direct grant; systemd's record only has to be in
//! place before the next daemon-reload (a reload that comes first takes the nodes away until the
//! record lands, which re-applies the unit with them).

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::devnode::NodeType;
use crate::plan::DeviceRule;

/// The system bus. systemd's own private socket (`/run/systemd/private`) is not used: it
/// speaks D-Bus peer to peer, which needs zbus's `p2p` feature, and the system bus works on every
/// systemd host that runs containers (podman, Docker and CRI-O talk to systemd through it).
pub const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";

/// How long the child may take. systemd answers in about a millisecond, but a `daemon-reload`
/// holds its main loop for as long as the reload takes: the call waits behind it.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The systemd unit that is the container's own cgroup, or None.
///
/// Both must agree: the spec's `cgroupsPath` in the systemd form the runtimes share
/// (`slice:prefix:name`, e.g. `machine.slice:libpod:<id>`, which makes the unit
/// `prefix-name.scope`, or `name` itself when it ends in `.slice`), and the kernel's word for the
/// process's cgroup (`/proc/<pid>/cgroup`), where that unit must be the leaf, or the leaf's parent
/// (crun puts the process in a `container` sub-cgroup of its scope). Anything else is not a unit
/// of this container: a cgroupfs-managed container nested under some service's unit must never
/// widen that service's device policy.
pub fn unit_of(cgroups_path: Option<&str>, proc_path: &str) -> Option<String> {
    let mut parts = cgroups_path?.split(':');
    let (Some(_slice), Some(prefix), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let unit = if name.ends_with(".slice") {
        name.to_owned()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    let comps: Vec<&str> = proc_path.split('/').filter(|c| !c.is_empty()).collect();
    let n = comps.len();
    let is_leaf_or_parent = (n >= 1 && comps[n - 1] == unit) || (n >= 2 && comps[n - 2] == unit);
    is_leaf_or_parent.then_some(unit)
}

/// The `DeviceAllow=` entries of `rules`: one `/dev/char/M:m` (or `/dev/block/M:m`) node each,
/// with the access nvhook grants it (`rwm`, as the toolkit grants its nodes).
pub fn device_allow(rules: &[DeviceRule]) -> Vec<(String, String)> {
    rules
        .iter()
        .map(|r| {
            let dir = match r.kind {
                NodeType::Char => "char",
                NodeType::Block => "block",
            };
            (format!("/dev/{dir}/{}:{}", r.major, r.minor), "rwm".into())
        })
        .collect()
}

/// A `SetUnitProperties` call in flight: the forked child, already connected to the bus.
pub struct Pending {
    unit: String,
    child: nvhook_sys::Child,
}

impl Pending {
    /// Fork the child that will tell systemd about `unit`'s nodes, when systemd's bus is there
    /// (None otherwise: no systemd, nothing to make durable). Must be called while the hook is
    /// single-threaded and still in the host's mount namespace.
    pub fn start(unit: String) -> Option<Pending> {
        if !std::path::Path::new(SYSTEM_BUS).exists() {
            log::debug!("{SYSTEM_BUS} is absent: {unit}'s device grant is not made durable");
            return None;
        }
        let name = unit.clone();
        let child = nvhook_sys::fork_child_with(
            nvhook_sys::Lifetime::Own(TIMEOUT),
            move |request| child_main(&name, request),
            unheard,
        );
        match child {
            Ok(child) => Some(Pending { unit, child }),
            Err(e) => {
                log::warn!("{}", not_durable(&unit, &format!("cannot fork: {e}")));
                None
            }
        }
    }

    /// The unit the call is for.
    pub fn unit(&self) -> &str {
        &self.unit
    }

    /// Pass the nodes to the child, which sends the call at once.
    pub fn send(&mut self, rules: &[DeviceRule]) {
        let text: String = device_allow(rules)
            .into_iter()
            .map(|(path, access)| format!("{path} {access}\n"))
            .collect();
        if let Err(e) = self.child.send(text.as_bytes()) {
            log::debug!("systemd child for {}: {e}", self.unit);
        }
    }

    /// systemd's answer, if it has come while the hook mounted (the usual case where the
    /// bus is quick: then a failure is warned about here, on the hook's standard error). If not,
    /// the child is left to finish alone, bounded by its own [`TIMEOUT`], and warns in nvhook's
    /// log file on failure: the hook does not hold up the container's start for systemd (its
    /// direct grant already lets the container use the nodes; systemd's record only has to be
    /// in place before the next daemon-reload). Returns whether systemd recorded (or did not need)
    /// the nodes, None when the answer is still pending.
    pub fn finish(mut self, rules: &[DeviceRule]) -> Option<bool> {
        if rules.is_empty() {
            return Some(true);
        }
        let Some(answer) = self.child.answer_now() else {
            log::debug!(
                "systemd: {}: no answer yet; the child records the nodes alone (at most {TIMEOUT:?})",
                self.unit
            );
            self.child.detach();
            return None;
        };
        let answer = answer.map_err(|e| not_durable(&self.unit, &e.to_string()));
        match answer.map(|a| String::from_utf8_lossy(&a).into_owned()) {
            Ok(a) if a == "ok" => {
                log::debug!(
                    "systemd: {} DeviceAllow += {} node(s), runtime",
                    self.unit,
                    rules.len()
                );
                Some(true)
            }
            Ok(a) if a == UNCONFINED => {
                log::debug!(
                    "systemd does not confine {}'s devices: nothing to record",
                    self.unit
                );
                Some(true)
            }
            Ok(warning) | Err(warning) => {
                log::warn!("{warning}");
                Some(false)
            }
        }
    }
}

fn not_durable(unit: &str, why: &str) -> String {
    format!(
        "systemd did not record the device grant for {unit} ({why}): the container has its devices \
         now, but the next `systemctl daemon-reload` (package upgrades run it) will take them away \
         (EPERM). Check that systemd answers on {SYSTEM_BUS} (`busctl status`); set \
         systemd-device-grants = false in the config to skip this step"
    )
}

fn not_durable_with_rules(unit: &str, why: &str, entries: &[(String, String)]) -> String {
    let props: Vec<String> = entries
        .iter()
        .map(|(p, a)| format!("'DeviceAllow={p} {a}'"))
        .collect();
    format!(
        "{}; to keep them, run `systemctl set-property --runtime {unit} {}`",
        not_durable(unit, why),
        props.join(" ")
    )
}

/// Parse the child's request: `path access` lines, as [`Pending::send`] writes them.
fn parse_request(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(p, a)| (p.to_owned(), a.to_owned()))
        .collect()
}

const SYSTEMD: &str = "org.freedesktop.systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// Does systemd confine `unit`'s devices (`DevicePolicy` other than `auto`, or a `DeviceAllow=`
/// list)? A unit it does not confine has no device program of systemd's for a reload to rebuild
/// (crun's scope, whose own program sits on a sub-cgroup): there, adding `DeviceAllow=` would
/// *start* confining it to the GPU nodes alone, so nothing is recorded.
async fn confined(conn: &zbus::Connection, unit: &str) -> Result<bool, String> {
    let reply = conn
        .call_method(
            Some(SYSTEMD),
            "/org/freedesktop/systemd1",
            Some(MANAGER),
            "GetUnit",
            &(unit,),
        )
        .await
        .map_err(|e| format!("GetUnit {unit}: {e}"))?;
    let path: zbus::OwnedObjectPath = reply
        .body()
        .deserialize()
        .map_err(|e| format!("GetUnit {unit}: {e}"))?;
    let iface = if unit.ends_with(".slice") {
        "org.freedesktop.systemd1.Slice"
    } else {
        "org.freedesktop.systemd1.Scope"
    };
    let get = |prop: &'static str| {
        let path = path.clone();
        async move {
            conn.call_method(
                Some(SYSTEMD),
                path.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(iface, prop),
            )
            .await
            .map_err(|e| format!("{unit} {prop}: {e}"))
        }
    };
    let policy: zbus::OwnedVariant = get("DevicePolicy")
        .await?
        .body()
        .deserialize()
        .map_err(|e| format!("{unit} DevicePolicy: {e}"))?;
    let policy = String::try_from(policy).map_err(|e| format!("{unit} DevicePolicy: {e}"))?;
    if policy != "auto" {
        return Ok(true);
    }
    let allow: zbus::OwnedVariant = get("DeviceAllow")
        .await?
        .body()
        .deserialize()
        .map_err(|e| format!("{unit} DeviceAllow: {e}"))?;
    let allow =
        <Vec<(String, String)>>::try_from(allow).map_err(|e| format!("{unit} DeviceAllow: {e}"))?;
    Ok(!allow.is_empty())
}

/// The forked child: connect to the bus and ask whether systemd confines the unit (while the hook
/// mounts), wait for the nodes, call systemd. Returns "ok", "unconfined", or the warning to give.
fn child_main(unit: &str, mut request: std::fs::File) -> Vec<u8> {
    let conn = zbus::block_on(async {
        let stream = UnixStream::connect(SYSTEM_BUS)
            .map_err(|e| format!("cannot connect to {SYSTEM_BUS}: {e}"))?;
        let conn = zbus::connection::Builder::unix_stream(stream)
            .build()
            .await
            .map_err(|e| format!("D-Bus handshake on {SYSTEM_BUS}: {e}"))?;
        let confined = confined(&conn, unit).await?;
        Ok::<_, String>((conn, confined))
    });
    let (conn, confined) = match conn {
        Ok(c) => c,
        Err(e) => return not_durable(unit, &e).into_bytes(),
    };
    if !confined {
        return UNCONFINED.as_bytes().to_vec();
    }
    let mut text = String::new();
    if let Err(e) = request.read_to_string(&mut text) {
        return not_durable(unit, &format!("reading the request: {e}")).into_bytes();
    }
    let entries = parse_request(&text);
    if entries.is_empty() {
        return b"ok".to_vec();
    }
    let r = zbus::block_on(async {
        let allow: Vec<(&str, &str)> = entries
            .iter()
            .map(|(p, a)| (p.as_str(), a.as_str()))
            .collect();
        let props: Vec<(&str, zbus::Variant<'_>)> =
            vec![("DeviceAllow", zbus::Variant::from(allow))];
        conn.call_method(
            Some(SYSTEMD),
            "/org/freedesktop/systemd1",
            Some(MANAGER),
            "SetUnitProperties",
            &(unit, true, props),
        )
        .await
    });
    match r {
        Ok(_) => b"ok".to_vec(),
        Err(e) => {
            not_durable_with_rules(unit, &format!("SetUnitProperties: {e}"), &entries).into_bytes()
        }
    }
}

/// A child's answer nobody read (the hook had already let it go): a failure goes to the log.
fn unheard(answer: &[u8]) {
    let a = String::from_utf8_lossy(answer);
    if a != "ok" && a != UNCONFINED {
        log::warn!("{a}");
    }
}

/// The child's answer for a unit whose devices systemd does not confine.
const UNCONFINED: &str = "unconfined";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_must_be_the_containers_own() {
        let id = "0123abcd";
        let podman = Some("machine.slice:libpod:0123abcd");
        let leaf = format!("/machine.slice/libpod-{id}.scope");
        assert_eq!(
            unit_of(podman, &leaf).as_deref(),
            Some("libpod-0123abcd.scope")
        );
        // crun's sub-cgroup of its scope
        assert_eq!(
            unit_of(podman, &format!("{leaf}/container")).as_deref(),
            Some("libpod-0123abcd.scope")
        );
        // two levels below the scope: not the container's own unit
        assert_eq!(unit_of(podman, &format!("{leaf}/a/b")), None);
        // a slice named by the runtime is the unit itself
        assert_eq!(
            unit_of(
                Some("kubepods.slice::pod1.slice"),
                "/kubepods.slice/pod1.slice"
            )
            .as_deref(),
            Some("pod1.slice")
        );
        assert_eq!(
            unit_of(Some("system.slice::c1"), "/system.slice/c1.scope").as_deref(),
            Some("c1.scope")
        );
        // cgroupfs paths, or a spec that names another unit than the process is in: none
        assert_eq!(unit_of(Some("/machine.slice/libpod-x.scope"), &leaf), None);
        assert_eq!(unit_of(None, &leaf), None);
        assert_eq!(
            unit_of(Some("system.slice:docker:0123abcd"), &leaf),
            None,
            "the process is not in docker-0123abcd.scope"
        );
        // a cgroupfs container below some service's scope does not make that scope its unit
        assert_eq!(
            unit_of(
                Some("/user.slice/session-1.scope/mine"),
                "/user.slice/session-1.scope/mine"
            ),
            None
        );
        assert_eq!(unit_of(Some("a:b:c:d"), &leaf), None);
        assert_eq!(unit_of(Some("a:b:"), "/a/b-.scope"), None);
        assert_eq!(unit_of(Some("a:b:../x"), "/b-../x.scope"), None);
    }

    #[test]
    fn device_allow_names_each_node_never_a_major() {
        let rules = [
            DeviceRule {
                kind: NodeType::Char,
                major: 195,
                minor: 0,
            },
            DeviceRule {
                kind: NodeType::Block,
                major: 8,
                minor: 16,
            },
        ];
        let a = device_allow(&rules);
        assert_eq!(
            a,
            vec![
                ("/dev/char/195:0".to_owned(), "rwm".to_owned()),
                ("/dev/block/8:16".to_owned(), "rwm".to_owned())
            ]
        );
        let text: String = a.iter().map(|(p, x)| format!("{p} {x}\n")).collect();
        assert_eq!(parse_request(&text), a);
        assert!(parse_request("").is_empty());
        let w = not_durable_with_rules("libpod-x.scope", "timed out", &a);
        for want in [
            "daemon-reload",
            "libpod-x.scope",
            "timed out",
            "'DeviceAllow=/dev/char/195:0 rwm'",
            "systemd-device-grants = false",
        ] {
            assert!(w.contains(want), "{want:?} in {w}");
        }
    }
}
