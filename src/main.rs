//! `nvhook`: the command line.

#![forbid(unsafe_code)]
// The C entry point comes from nvhook_sys::entry! below: no Rust runtime start-up (why: there).
#![no_main]

use std::io::Write;
use std::path::PathBuf;

use nvhook::error::Error;
use nvhook::hook::{self, PlanSource};

const USAGE: &str = "\
nvhook: give OCI containers the host's NVIDIA GPUs (and other device classes)

usage:
  nvhook [--config FILE] prestart        run as an OCI hook (prestart or createRuntime stage);
                                         reads the container state on stdin (a state with
                                         status `stopped` is a poststop call)
  nvhook [--config FILE] poststop        run as an OCI poststop hook: put back what prestart
                                         created or replaced in the rootfs (recorded in
                                         /run/nvhook/containers); reads the container state
                                         on stdin
  nvhook [--config FILE] plan [--bundle DIR]
                                         print what prestart would do, as JSON, changing nothing;
                                         reads the state on stdin unless --bundle is given
  nvhook [--config FILE] list [--json]   what this host offers: driver, GPUs, MIG devices, nodes,
                                         each capability's libraries and binaries, and each
                                         device class with its numbered nodes
  nvhook [--config FILE] doctor [--json] check this host (driver, nodes, libraries, hooks.d
                                         registration, cgroups, runtimes, kernel,
                                         device classes); exit 1 on errors
  nvhook [--config FILE] cdi generate [--output FILE|-] [--capabilities LIST] [--kind K]
                                         [--cdi-version V] [--hook-path PATH]
                                         write a CDI spec for this host's GPUs (default
                                         /etc/cdi/nvhook.json, `-` for stdout; devices `all`,
                                         each index and GPU-UUID, MIG `<gpu>:<mig>` and MIG-UUID;
                                         capabilities default compute,utility; kind nvidia.com/gpu;
                                         CDI version 0.5.0, the highest podman 4.3 reads); then
                                         `podman run --device nvidia.com/gpu=all ...` (docs/cdi.md)
  nvhook cdi-hook [--link P=T] [--ldcache SONAME=P] [--ldcache32 SONAME=P] [--cuda-compat VER]
                                         the CDI spec's createRuntime hook (soname links, linker
                                         cache); reads the container state on stdin
  nvhook version                         print the version
  nvhook help                            this text

The container selects GPUs with NVIDIA_VISIBLE_DEVICES (all, none, void, or a comma list of
indexes, GPU-UUIDs and PCI bus ids) and files with NVIDIA_DRIVER_CAPABILITIES (compute,
utility, video, graphics, display, ngx, compat32, all; default compute,utility).

Device classes (class files in classes-dir, default /etc/nvhook/classes.d/<name>.toml) are
selected with NVHOOK_DEVICES_<NAME> (or the class's own env): all, none (the class's shared
nodes and files, no selectable node), void or empty (nothing), or a comma list of indexes
(the class's nodes in `nvhook list` order) and node names relative to /dev (video1,
infiniband/uverbs0). A name or index the host does not have is an error listing those it has.

environment (of the hook, set in its registration, never the container's):
  NVHOOK_CONFIG=FILE   config file (default /etc/nvhook/config.toml, optional)
  NVHOOK_LOG=LEVEL     error, warn (default), info, debug (with per-phase timings), trace
  NVHOOK_LOG_FILE=FILE append the log to FILE instead of stderr
";

fn run(args: Vec<String>) -> Result<(), Error> {
    let mut config: Option<PathBuf> = None;
    let mut bundle: Option<PathBuf> = None;
    let mut command: Option<String> = None;
    let mut json = false;
    let mut sub: Vec<String> = Vec::new();
    let mut it = args.into_iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => {
                config = Some(
                    it.next()
                        .ok_or_else(|| Error::Usage("--config needs a file".into()))?
                        .into(),
                )
            }
            "--bundle" | "-b" => {
                bundle = Some(
                    it.next()
                        .ok_or_else(|| Error::Usage("--bundle needs a directory".into()))?
                        .into(),
                )
            }
            "--json" => json = true,
            "-h" | "--help" => command = Some("help".into()),
            "-V" | "--version" => command = Some("version".into()),
            _ if a.starts_with('-') => {
                return Err(Error::Usage(format!(
                    "unknown option {a}; see `nvhook help`"
                )));
            }
            _ if command.is_none() => {
                // these commands parse their own options
                if a == "cdi" || a == "cdi-hook" {
                    sub = it.by_ref().collect();
                }
                command = Some(a)
            }
            _ => {
                return Err(Error::Usage(format!(
                    "unexpected argument {a}; see `nvhook help`"
                )));
            }
        }
    }
    let stdout = |s: &str| {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(s.as_bytes());
    };
    match command.as_deref() {
        // createRuntime runs at the same point, in the same namespaces, with the same state.
        Some("prestart") | Some("createRuntime") | Some("create-runtime") => {
            hook::prestart(std::io::stdin().lock(), config.as_deref()).map(drop)
        }
        Some("poststop") => hook::poststop(std::io::stdin().lock(), config.as_deref()).map(drop),
        Some("plan") => {
            let source = match bundle {
                Some(b) => PlanSource::Bundle(b),
                None => PlanSource::State(std::io::stdin().lock()),
            };
            let plan = hook::plan(source, config.as_deref())?;
            let json =
                serde_json::to_string_pretty(&plan).map_err(|e| Error::Usage(e.to_string()))?;
            stdout(&(json + "\n"));
            Ok(())
        }
        Some("list") => {
            let cfg = nvhook::config::Config::load(config.as_deref())?;
            let classes = nvhook::class::list(&cfg)?;
            // A host with device classes but no NVIDIA driver still lists its classes.
            let (mut value, mut text) = match nvhook::report::list(&cfg) {
                Ok(r) => (
                    serde_json::to_value(&r).map_err(|e| Error::Usage(e.to_string()))?,
                    nvhook::report::text(&r),
                ),
                Err(e) if !classes.is_empty() => (
                    serde_json::json!({ "nvidia_error": e.to_string() }),
                    format!("NVIDIA: unavailable: {e}\n"),
                ),
                Err(e) => return Err(e),
            };
            text += &nvhook::class::text(&classes);
            if let Some(o) = value.as_object_mut() {
                let c = serde_json::to_value(&classes).map_err(|e| Error::Usage(e.to_string()))?;
                o.insert("classes".into(), c);
            }
            if json {
                let s = serde_json::to_string_pretty(&value)
                    .map_err(|e| Error::Usage(e.to_string()))?;
                stdout(&(s + "\n"));
            } else {
                stdout(&text);
            }
            Ok(())
        }
        Some("doctor") => {
            let findings = nvhook::doctor::run(
                nvhook::config::Config::load_with_source(config.as_deref()),
                nvhook::doctor::HOOK_DIRS,
            );
            if json {
                let s = serde_json::to_string_pretty(&serde_json::json!({ "findings": &findings }))
                    .map_err(|e| Error::Usage(e.to_string()))?;
                stdout(&(s + "\n"));
            } else {
                stdout(&nvhook::doctor::text(&findings));
            }
            let errors = findings
                .iter()
                .filter(|f| f.status == nvhook::doctor::Status::Error)
                .count();
            if errors > 0 {
                return Err(Error::Usage(format!("doctor: {errors} problem(s) found")));
            }
            Ok(())
        }
        Some("cdi") => cdi_command(sub, config),
        Some("cdi-hook") => {
            let args = nvhook::cdi::hook::HookArgs::parse(sub)?;
            nvhook::cdi::hook::run(std::io::stdin().lock(), &args)
        }
        Some("version") => {
            stdout(concat!("nvhook ", env!("CARGO_PKG_VERSION"), "\n"));
            Ok(())
        }
        Some("help") => {
            stdout(USAGE);
            Ok(())
        }
        Some(other) => Err(Error::Usage(format!(
            "unknown command {other:?}; see `nvhook help`"
        ))),
        None => Err(Error::Usage("no command given; see `nvhook help`".into())),
    }
}

/// `nvhook cdi generate ...`: build the spec, write it (or print it with `--output -`).
fn cdi_command(args: Vec<String>, config: Option<PathBuf>) -> Result<(), Error> {
    let mut it = args.into_iter();
    match it.next().as_deref() {
        Some("generate") => {}
        Some(other) => {
            return Err(Error::Usage(format!(
                "unknown cdi command {other:?}; the one there is is `nvhook cdi generate`"
            )));
        }
        None => return Err(Error::Usage("usage: nvhook cdi generate [options]".into())),
    }
    let g = nvhook::cdi::GenerateArgs::parse(it)?;
    let cfg = nvhook::config::Config::load(g.config.as_deref().or(config.as_deref()))?;
    let spec = nvhook::cdi::generate(&cfg, &g.options(&cfg)?)?;
    let text = nvhook::cdi::to_json(&spec)?;
    match &g.output {
        None => {
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
        }
        Some(path) => {
            nvhook::cdi::write_atomic(path, &text)?;
            let names: Vec<&str> = spec.devices.iter().map(|d| d.name.as_str()).collect();
            eprintln!(
                "nvhook: wrote {} (CDI {}, {}: {})",
                path.display(),
                spec.version,
                spec.kind,
                names.join(", ")
            );
        }
    }
    Ok(())
}

/// crun runs hooks with stderr on /dev/null and reports only "error executing hook ... (exit
/// code: 1)", so the reason a container did not start would be lost. When our stderr is /dev/null,
/// the error is also written where the runtime's caller looks: the parent runtime's stderr (which
/// conmon passes on to podman) and, when the runtime logs JSON to a file (`--log F
/// --log-format=json`, as podman runs crun), one JSON line in that file.
fn report_to_runtime(msg: &str) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    let is_null = |p: &str| {
        std::fs::metadata(p).is_ok_and(|m| {
            m.file_type().is_char_device() && m.rdev() == nix::sys::stat::makedev(1, 3)
        })
    };
    if !is_null("/proc/self/fd/2") {
        return;
    }
    let ppid = nix::unistd::getppid();
    let append = |path: &str, text: &str, extra: i32| {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .custom_flags(nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK | extra)
            .open(path)
        {
            let _ = f.write_all(text.as_bytes());
        }
    };
    let parent_err = format!("/proc/{ppid}/fd/2");
    if !is_null(&parent_err) {
        // a magic link to the runtime's open stderr: it must be followed
        append(&parent_err, msg, 0);
    }
    let Ok(cmdline) = nvhook::bounded::read(
        std::path::Path::new(&format!("/proc/{ppid}/cmdline")),
        nvhook::bounded::PROC_TEXT,
    ) else {
        return;
    };
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let json = args.iter().any(|a| a == "--log-format=json")
        || args
            .windows(2)
            .any(|w| w[0] == "--log-format" && w[1] == "json");
    let log = args
        .iter()
        .position(|a| a == "--log")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--log=").map(str::to_owned))
        });
    if let (true, Some(log)) = (json, log)
        && log.starts_with('/')
    {
        let line = serde_json::json!({"level": "error", "msg": msg.trim_end()});
        append(&log, &format!("{line}\n"), nix::libc::O_NOFOLLOW);
    }
}

nvhook_sys::entry!(nvhook_main);

fn nvhook_main() -> u8 {
    nvhook::logging::init();
    // Whatever descriptors our caller left open without close-on-exec (runc passes only 0-2,
    // but an admin's shell running `nvhook doctor` may pass more) are not passed on to anything
    // nvhook starts: the runtimes `doctor` asks for their version.
    if let Err(e) = nvhook_sys::cloexec_from(3) {
        log::warn!("cannot mark inherited descriptors close-on-exec: {e}");
    }
    match run(std::env::args().collect()) {
        Ok(()) => 0,
        Err(e) => {
            let msg = format!("nvhook: error: {e}\n");
            eprint!("{msg}");
            if nvhook::logging::to_a_file() {
                log::error!("{e}");
            }
            report_to_runtime(&msg);
            1
        }
    }
}
