//! Where a hook run's time goes: named phases, logged at debug level, plus the process's own
//! wall time and peak RSS (from getrusage), so the benchmark can attribute every millisecond.

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
        let rss = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
            .map(|u| u.max_rss())
            .unwrap_or(0);
        let mut s = format!("timing total_us={total} maxrss_kib={rss}");
        for (name, us) in &self.phases {
            s.push_str(&format!(" {name}={us}"));
        }
        s
    }
}
