//! Resource figures of instance processes, read from `/proc` only when someone asks (a
//! listing or a memory limit), never on a timer of its own.

use std::time::Instant;

/// CPU time and resident memory of one process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was read.
    pub at: Instant,
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

/// Reads `pid`'s figures; `None` if it is gone.
pub fn sample(pid: u32) -> Option<Sample> {
    let p = procfs::process::Process::new(pid as i32).ok()?;
    let stat = p.stat().ok()?;
    Some(Sample {
        at: Instant::now(),
        cpu_ticks: stat.utime + stat.stime,
        rss_bytes: stat.rss * procfs::page_size(),
    })
}

/// CPU use in percent of one core between two samples, or since the process started.
pub fn cpu_percent(now: &Sample, before: Option<&Sample>, since_start: Instant) -> f64 {
    let tps = procfs::ticks_per_second() as f64;
    let (ticks, secs) = match before {
        Some(b) => (
            now.cpu_ticks.saturating_sub(b.cpu_ticks),
            now.at.duration_since(b.at).as_secs_f64(),
        ),
        None => (
            now.cpu_ticks,
            now.at.duration_since(since_start).as_secs_f64(),
        ),
    };
    if secs <= 0.0 {
        return 0.0;
    }
    ((ticks as f64 / tps) / secs * 100.0 * 10.0).round() / 10.0
}
