//! `nvhook`: the command line.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use nvhook::error::Error;
use nvhook::hook::{self, PlanSource};

const USAGE: &str = "\
nvhook: give OCI containers the host's NVIDIA GPUs

usage:
  nvhook [--config FILE] prestart        run as an OCI hook (prestart or createRuntime stage);
                                         reads the container state on stdin
  nvhook [--config FILE] plan [--bundle DIR]
                                         print what prestart would do, as JSON, changing nothing;
                                         reads the state on stdin unless --bundle is given
  nvhook version                         print the version
  nvhook help                            this text

The container selects GPUs with NVIDIA_VISIBLE_DEVICES (all, none, void, or a comma list of
indexes, GPU-UUIDs and PCI bus ids) and files with NVIDIA_DRIVER_CAPABILITIES (compute,
utility, video, graphics, display, ngx, compat32, all; default compute,utility).

environment (of the hook, set in its registration, never the container's):
  NVHOOK_CONFIG=FILE   config file (default /etc/nvhook/config.toml, optional)
  NVHOOK_LOG=LEVEL     error, warn (default), info, debug (with per-phase timings), trace
";

fn init_logging() {
    let mut b = env_logger::Builder::new();
    b.filter_level(log::LevelFilter::Warn);
    if let Ok(spec) = std::env::var("NVHOOK_LOG") {
        b.parse_filters(&spec);
    }
    b.format(|f, r| {
        writeln!(
            f,
            "nvhook: {}: {}",
            r.level().as_str().to_lowercase(),
            r.args()
        )
    });
    b.target(env_logger::Target::Stderr);
    let _ = b.try_init();
}

fn run(args: Vec<String>) -> Result<(), Error> {
    let mut config: Option<PathBuf> = None;
    let mut bundle: Option<PathBuf> = None;
    let mut command: Option<String> = None;
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
            "-h" | "--help" => command = Some("help".into()),
            "-V" | "--version" => command = Some("version".into()),
            _ if a.starts_with('-') => {
                return Err(Error::Usage(format!(
                    "unknown option {a}; see `nvhook help`"
                )));
            }
            _ if command.is_none() => command = Some(a),
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

fn main() -> ExitCode {
    init_logging();
    match run(std::env::args().collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nvhook: error: {e}");
            ExitCode::FAILURE
        }
    }
}
