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
//! The bus call runs in a forked child ([`nvhook_sys::fork_child`]): zbus starts threads, and the
//! hook must stay single-threaded for `setns(CLONE_NEWNS)`; the child also keeps the host's mount
//! namespace (the bus socket is a host path) and bounds the call in time: a hung bus or systemd
//! costs at most [`TIMEOUT`], then the child is killed and the container starts with its direct
//! grant and a warning. The child is forked before the hook enters the container's namespace and
//! connects while the hook mounts; it learns the nodes when the plan is made, so the round trip
//! overlaps the mount work. The hook waits for systemd's answer before it extends any program
//! itself: systemd then already allows the nodes and its program is left alone (a program of
//! systemd's that nvhook replaced would be one systemd can no longer detach).

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::devnode::NodeType;
use crate::plan::DeviceRule;

/// The system bus. systemd's own private socket (`/run/systemd/private`) is not used: it
/// speaks D-Bus peer to peer, which needs zbus's `p2p` feature, and the system bus works on every
/// systemd host that runs containers (podman, Docker and CRI-O talk to systemd through it).
pub const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";

/// How long the hook waits for systemd's answer. systemd answers in about a millisecond, but a
/// `daemon-reload` holds its main loop for as long as the reload takes: the call waits behind it.
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
        match nvhook_sys::fork_child(move |request| child_main(&name, request)) {
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

    /// Wait (at most [`TIMEOUT`]) for systemd's answer. A failure is a warning, never an error:
    /// the container still gets its direct grant, only not durably.
    pub fn finish(self, rules: &[DeviceRule]) -> bool {
        if rules.is_empty() {
            return true;
        }
        let answer = self
            .child
            .wait(TIMEOUT)
            .map_err(|e| e.to_string())
            .and_then(|a| {
                let a = String::from_utf8_lossy(&a).into_owned();
                if a == "ok" { Ok(()) } else { Err(a) }
            });
        match answer {
            Ok(()) => {
                log::debug!(
                    "systemd: {} DeviceAllow += {} node(s), runtime",
                    self.unit,
                    rules.len()
                );
                true
            }
            Err(e) => {
                log::warn!("{}", not_durable_with_rules(&self.unit, &e, rules));
                false
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

fn not_durable_with_rules(unit: &str, why: &str, rules: &[DeviceRule]) -> String {
    let props: Vec<String> = device_allow(rules)
        .into_iter()
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
/// mounts), wait for the nodes, call systemd. Returns "ok", "unconfined" or why not.
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
        Err(e) => return e.into_bytes(),
    };
    if !confined {
        return UNCONFINED.as_bytes().to_vec();
    }
    let mut text = String::new();
    if let Err(e) = request.read_to_string(&mut text) {
        return format!("reading the request: {e}").into_bytes();
    }
    let entries = parse_request(&text);
    if entries.is_empty() {
        return b"ok".to_vec();
    }
    let r: Result<(), String> = zbus::block_on(async {
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
        .map_err(|e| format!("SetUnitProperties: {e}"))?;
        // systemd answers before it re-applies the unit's cgroup (its realize queue runs between
        // two bus messages): one more round trip and the new device policy is in place when the
        // hook looks at the cgroup again.
        conn.call_method(
            Some(SYSTEMD),
            "/org/freedesktop/systemd1",
            Some("org.freedesktop.DBus.Peer"),
            "Ping",
            &(),
        )
        .await
        .map_err(|e| format!("Ping after SetUnitProperties: {e}"))?;
        Ok(())
    });
    match r {
        Ok(()) => b"ok".to_vec(),
        Err(e) => e.into_bytes(),
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
        let w = not_durable_with_rules("libpod-x.scope", "timed out", &rules);
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
