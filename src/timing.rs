//! Where a hook run's time goes: named phases, logged at debug level, plus the process's own
//! wall time and peak RSS, so the benchmark can attribute every millisecond.
//!
//! Peak RSS is `VmHWM` of /proc/self/status, the high-water mark of this address space.
//! getrusage's `ru_maxrss` is not used: at execve Linux folds the pre-exec image's peak into it,
//! so a hook forked from a Go runtime (runc) would report runc's ~10 MiB, not its own.

use std::time::Instant;

/// Phase timer: `mark("inventory")` records the time since the previous mark.
pub struct Timer {
    start: Instant,
    last: Instant,
    phases: Vec<(&'static str, u128)>,
}

impl Default for Timer {
    fn default() -> Self {
        Self::new()
    }
}

impl Timer {
    pub fn new() -> Timer {
        let now = Instant::now();
        Timer {
            start: now,
            last: now,
            phases: Vec::new(),
        }
    }

    pub fn mark(&mut self, phase: &'static str) {
        let now = Instant::now();
        self.phases
            .push((phase, now.duration_since(self.last).as_micros()));
        self.last = now;
    }

    /// One line: `timing total_us=.. maxrss_kib=.. parse=.. inventory=.. ...` (microseconds).
    pub fn summary(&self) -> String {
        let total = self.start.elapsed().as_micros();
        let rss = peak_rss_kib().unwrap_or(0);
        let mut s = format!("timing total_us={total} maxrss_kib={rss}");
        for (name, us) in &self.phases {
            s.push_str(&format!(" {name}={us}"));
        }
        s
    }
}

/// `VmHWM` (peak resident set of this process's own address space), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = crate::bounded::read_to_string(
        std::path::Path::new("/proc/self/status"),
        crate::bounded::PROC_TEXT,
    )
    .ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
