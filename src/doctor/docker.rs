//! `nvhook doctor`, Docker: will `docker run --gpus` reach nvhook?
//!
//! dockerd looks `nvidia-container-runtime-hook` up in its own PATH (Go's exec.LookPath: the
//! first executable regular file of that name) when it starts, registers its `nvidia` device
//! driver only if found, and looks the name up again for each `--gpus` container (moby
//! daemon/nvidia_linux.go, 20.10; daemon/devices_nvidia_linux.go now). So: resolve the name in
//! each running dockerd's PATH (read from /proc/<pid>/environ), say whether that is nvhook, and
//! whether the daemon started before the link was made (then it has no GPU driver until it is
//! restarted).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{Findings, Status};

pub const HOOK_NAME: &str = "nvidia-container-runtime-hook";
/// dockerd's PATH when none is set for it: systemd's default (docker.service sets none).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// USER_HZ: the unit of /proc/<pid>/stat's start time, 100 in every Linux ABI.
const USER_HZ: f64 = 100.0;
/// Start times are derived from two clocks read at slightly different moments.
const SLACK: Duration = Duration::from_secs(1);

/// A running dockerd: pid, the PATH it runs with (None: unset), when it started.
struct Daemon {
    pid: u32,
    path: Option<String>,
    started: Option<SystemTime>,
}

pub(super) fn check(f: &mut Findings, proc_root: &Path) {
    let daemons = daemons(proc_root);
    if daemons.is_empty() {
        let dockerd = resolve("dockerd", DEFAULT_PATH);
        let Some(dockerd) = dockerd else {
            // no Docker on this host: nothing to say
            return;
        };
        let (status, msg, hint) = match resolve(HOOK_NAME, DEFAULT_PATH) {
            Some(p) if is_nvhook(&p) => (
                Status::Ok,
                format!(
                    "dockerd ({}) is not running; started with the default PATH it finds nvhook as {}",
                    dockerd.display(),
                    p.display()
                ),
                "",
            ),
            Some(p) => (
                Status::Info,
                format!(
                    "dockerd is not running; with the default PATH, `--gpus` would run {}, which is not nvhook",
                    p.display()
                ),
                "that is NVIDIA's hook: nvhook leaves it in place (docs: README, Docker)",
            ),
            None => (
                Status::Info,
                format!(
                    "dockerd is not running; no {HOOK_NAME} in the default PATH: `docker run --gpus` would fail"
                ),
                "sudo make install-docker, then start dockerd",
            ),
        };
        f.add("docker", status, msg, hint);
        return;
    }
    for d in daemons {
        daemon(f, &d);
    }
}

fn daemon(f: &mut Findings, d: &Daemon) {
    let who = format!("dockerd (pid {})", d.pid);
    let Some(path) = &d.path else {
        f.add(
            "docker",
            Status::Warn,
            format!("{who} runs without PATH: it finds no {HOOK_NAME}; `docker run --gpus` fails"),
            "start dockerd with a PATH holding the hook (systemd gives one by default)",
        );
        return;
    };
    let Some(hook) = resolve(HOOK_NAME, path) else {
        f.add(
            "docker",
            Status::Warn,
            format!(
                "{who} finds no {HOOK_NAME} in its PATH ({path}): `docker run --gpus` fails with \"could not select device driver\""
            ),
            "sudo make install-docker, then restart dockerd (systemctl restart docker)",
        );
        return;
    };
    if !is_nvhook(&hook) {
        f.add(
            "docker",
            Status::Info,
            format!(
                "{who} runs {} for `--gpus`, which is not nvhook",
                hook.display()
            ),
            "that is NVIDIA's hook: nvhook leaves it in place; remove NVIDIA's toolkit, then sudo make install-docker",
        );
        return;
    }
    let made = std::fs::symlink_metadata(&hook)
        .and_then(|m| m.modified())
        .ok();
    match (d.started, made) {
        (Some(start), Some(made)) if made > start + SLACK => f.add(
            "docker",
            Status::Warn,
            format!(
                "{who} finds nvhook as {}, but that was made after dockerd started: if it was not there before, dockerd registered no GPU driver",
                hook.display()
            ),
            "restart dockerd (systemctl restart docker): it looks for the hook only when it starts",
        ),
        (Some(_), Some(_)) => f.add(
            "docker",
            Status::Ok,
            format!("{who} runs nvhook for `--gpus`: {}", hook.display()),
            "",
        ),
        _ => f.add(
            "docker",
            Status::Info,
            format!(
                "{who} finds nvhook as {}; could not tell whether it was there when dockerd started",
                hook.display()
            ),
            "if `docker run --gpus` says \"could not select device driver\", restart dockerd",
        ),
    }
}

/// The running dockerd processes.
fn daemons(proc_root: &Path) -> Vec<Daemon> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let uptime = std::fs::read_to_string(proc_root.join("uptime"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok());
    let now = SystemTime::now();
    let mut v: Vec<Daemon> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            if comm.trim_end() != "dockerd" {
                return None;
            }
            let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
            let path = environ
                .split(|b| *b == 0)
                .find_map(|kv| kv.strip_prefix(b"PATH="))
                .map(|p| String::from_utf8_lossy(p).into_owned());
            let started = std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| start_ticks(&s))
                .zip(uptime)
                .and_then(|(ticks, up)| {
                    let age = up - ticks as f64 / USER_HZ;
                    now.checked_sub(Duration::from_secs_f64(age.max(0.0)))
                });
            Some(Daemon { pid, path, started })
        })
        .collect();
    v.sort_by_key(|d| d.pid);
    v
}

/// Field 22 of /proc/<pid>/stat (start time in clock ticks since boot); the command name, field
/// 2, is in parentheses and may hold spaces: count from the last ')'.
fn start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Go's exec.LookPath: the first PATH entry holding an executable regular file `name`.
/// Relative entries are skipped (Go refuses them too).
pub fn resolve(name: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether `p` is nvhook under another name: it resolves to this very binary or to a file
/// named nvhook.
fn is_nvhook(p: &Path) -> bool {
    let Ok(real) = std::fs::canonicalize(p) else {
        return false;
    };
    let me = std::env::current_exe().and_then(std::fs::canonicalize).ok();
    me.as_deref() == Some(real.as_path()) || real.file_name().is_some_and(|n| n == "nvhook")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_field_after_a_name_with_spaces() {
        let stat =
            "4242 (docker d) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 12 0 987654 100 200";
        assert_eq!(start_ticks(stat), Some(987654));
        assert_eq!(start_ticks("garbage"), None);
    }

    #[test]
    fn lookpath_takes_the_first_executable_file() {
        let d = std::env::temp_dir().join(format!("nvhook-lookpath-{}", std::process::id()));
        let (a, b, c) = (d.join("a"), d.join("b"), d.join("c"));
        for x in [&a, &b, &c] {
            std::fs::create_dir_all(x).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(a.join("h"), "").unwrap(); // not executable: skipped
        std::fs::create_dir(b.join("h")).unwrap(); // a directory: skipped
        std::fs::write(c.join("h"), "").unwrap();
        std::fs::set_permissions(c.join("h"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("rel:{}:{}:{}", a.display(), b.display(), c.display());
        assert_eq!(resolve("h", &path), Some(c.join("h")));
        assert_eq!(resolve("h", "rel:/nonexistent"), None);
        let _ = std::fs::remove_dir_all(&d);
    }
}
