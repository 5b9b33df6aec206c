//! Logging: `log` + `env_logger`, quiet by default (warnings and errors), `NVHOOK_LOG=debug` for
//! every step with timings. Runtimes swallow a successful hook's stderr, so the log can go to a
//! file: `NVHOOK_LOG_FILE` (the hook's own environment, from its registration) or the config's
//! `log-file`, known only once the config is read; the sink switches then.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

static FILE: Mutex<Option<File>> = Mutex::new(None);

/// Where log records go: the file if one is set, stderr otherwise.
struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match FILE.lock().ok().as_deref_mut().and_then(Option::as_mut) {
            Some(f) => f.write(buf),
            None => std::io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn open_append(p: &Path) -> Option<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .ok()
}

/// Set up the logger (once, at start).
pub fn init() {
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
    if let Some(f) = std::env::var_os("NVHOOK_LOG_FILE").and_then(|p| open_append(Path::new(&p)))
        && let Ok(mut g) = FILE.lock()
    {
        *g = Some(f);
    }
    b.target(env_logger::Target::Pipe(Box::new(Sink)));
    let _ = b.try_init();
}

/// Send the log to the config's `log-file`, unless NVHOOK_LOG_FILE already chose a file.
pub fn to_file(path: Option<&Path>) {
    let Some(path) = path else { return };
    if let Ok(mut g) = FILE.lock()
        && g.is_none()
    {
        *g = open_append(path);
    }
}

/// Whether the log goes to a file (errors are then logged there too).
pub fn to_a_file() -> bool {
    FILE.lock().is_ok_and(|g| g.is_some())
}

/// crun runs hooks with stderr on /dev/null and reports only "error executing hook ... (exit
/// code: 1)", so the reason a container did not start would be lost. When our stderr is /dev/null,
/// the error is also written where the runtime's caller looks: the parent runtime's stderr (which
/// conmon passes on to podman) and, when the runtime logs JSON to a file (`--log F
/// --log-format=json`, as podman runs crun), one JSON line in that file.
pub fn report_to_runtime(msg: &str) {
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
    let Ok(cmdline) = crate::bounded::read(
        std::path::Path::new(&format!("/proc/{ppid}/cmdline")),
        crate::bounded::PROC_TEXT,
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
