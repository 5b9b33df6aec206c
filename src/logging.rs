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
