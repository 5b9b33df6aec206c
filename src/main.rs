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

/// The command line, parsed: the command and what its handler may use.
#[derive(Default)]
struct Args {
    config: Option<PathBuf>,
    bundle: Option<PathBuf>,
    json: bool,
    /// The arguments after `cdi` and `cdi-hook`, which parse their own options.
    sub: Vec<String>,
}

type Handler = fn(Args) -> Result<(), Error>;

/// Each command and its handler. createRuntime runs at the same point as prestart, in the same
/// namespaces, with the same state.
const COMMANDS: &[(&str, Handler)] = &[
    ("prestart", prestart_command),
    ("createRuntime", prestart_command),
    ("create-runtime", prestart_command),
    ("poststop", poststop_command),
    ("plan", plan_command),
    ("list", list_command),
    ("doctor", doctor_command),
    ("cdi", |a| cdi_command(a.sub, a.config)),
    ("cdi-hook", cdi_hook_command),
    ("version", |_| {
        stdout(concat!("nvhook ", env!("CARGO_PKG_VERSION"), "\n"));
        Ok(())
    }),
    ("help", |_| {
        stdout(USAGE);
        Ok(())
    }),
];

fn run(args: Vec<String>) -> Result<(), Error> {
    let (command, args) = parse(args)?;
    let Some(command) = command else {
        return Err(Error::Usage("no command given; see `nvhook help`".into()));
    };
    match COMMANDS.iter().find(|(name, _)| *name == command) {
        Some((_, handler)) => handler(args),
        None => Err(Error::Usage(format!(
            "unknown command {command:?}; see `nvhook help`"
        ))),
    }
}

/// The command and its options, from the process's arguments (the first is the program).
fn parse(args: Vec<String>) -> Result<(Option<String>, Args), Error> {
    let mut a = Args::default();
    let mut command: Option<String> = None;
    let mut it = args.into_iter().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                a.config = Some(
                    it.next()
                        .ok_or_else(|| Error::Usage("--config needs a file".into()))?
                        .into(),
                )
            }
            "--bundle" | "-b" => {
                a.bundle = Some(
                    it.next()
                        .ok_or_else(|| Error::Usage("--bundle needs a directory".into()))?
                        .into(),
                )
            }
            "--json" => a.json = true,
            "-h" | "--help" => command = Some("help".into()),
            "-V" | "--version" => command = Some("version".into()),
            _ if arg.starts_with('-') => {
                return Err(Error::Usage(format!(
                    "unknown option {arg}; see `nvhook help`"
                )));
            }
            _ if command.is_none() => {
                // these commands parse their own options
                if arg == "cdi" || arg == "cdi-hook" {
                    a.sub = it.by_ref().collect();
                }
                command = Some(arg)
            }
            _ => {
                return Err(Error::Usage(format!(
                    "unexpected argument {arg}; see `nvhook help`"
                )));
            }
        }
    }
    Ok((command, a))
}

fn stdout(s: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(s.as_bytes());
}

fn prestart_command(a: Args) -> Result<(), Error> {
    hook::prestart(std::io::stdin().lock(), a.config.as_deref()).map(drop)
}

fn poststop_command(a: Args) -> Result<(), Error> {
    hook::poststop(std::io::stdin().lock(), a.config.as_deref()).map(drop)
}

fn plan_command(a: Args) -> Result<(), Error> {
    let source = match a.bundle {
        Some(b) => PlanSource::Bundle(b),
        None => PlanSource::State(std::io::stdin().lock()),
    };
    let plan = hook::plan(source, a.config.as_deref())?;
    let json = serde_json::to_string_pretty(&plan).map_err(|source| Error::Json {
        what: "the plan",
        source,
    })?;
    stdout(&(json + "\n"));
    Ok(())
}

fn list_command(a: Args) -> Result<(), Error> {
    let cfg = nvhook::config::Config::load(a.config.as_deref())?;
    stdout(&nvhook::list::render(&cfg, a.json)?);
    Ok(())
}

fn doctor_command(a: Args) -> Result<(), Error> {
    let findings = nvhook::doctor::run(
        nvhook::config::Config::load_with_source(a.config.as_deref()),
        nvhook::doctor::HOOK_DIRS,
    );
    if a.json {
        let s = serde_json::to_string_pretty(&serde_json::json!({ "findings": &findings }))
            .map_err(|source| Error::Json {
                what: "the doctor findings",
                source,
            })?;
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

fn cdi_hook_command(a: Args) -> Result<(), Error> {
    let args = nvhook::cdi::hook::HookArgs::parse(a.sub)?;
    nvhook::cdi::hook::run(std::io::stdin().lock(), &args)
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
            nvhook::logging::report_to_runtime(&msg);
            1
        }
    }
}
