//! Writes that failed: the daemon's log, the instances' logs and the state files. A full disk
//! (or a file that vanished) must never stop the daemon or an app: the write is dropped,
//! counted here, tried again at the next write, and shown by `herd list` and `herd describe`
//! as a warning line until writes succeed again.
//!
//! The counters are process-wide atomics so that every writer (the daemon's log sits outside
//! the supervisor) can count without a lock or a channel.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// One kind of file herd writes.
#[derive(Debug)]
pub struct Writes {
    what: &'static str,
    failed: AtomicU64,
    dropped_bytes: AtomicU64,
    failing: AtomicBool,
    last: Mutex<Option<(u64, String)>>,
}

impl Writes {
    const fn new(what: &'static str) -> Self {
        Self {
            what,
            failed: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            last: Mutex::new(None),
        }
    }

    /// Counts a failed write of `bytes` bytes. Returns true for the first failure after a
    /// success, so the caller can say so once rather than at every write.
    pub fn failed(&self, bytes: usize, error: &std::io::Error) -> bool {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.dropped_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Ok(mut last) = self.last.lock() {
            *last = Some((now, error.to_string()));
        }
        !self.failing.swap(true, Ordering::Relaxed)
    }

    /// Notes a write that worked. Returns true if writes were failing until now.
    pub fn succeeded(&self) -> bool {
        self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed)
    }

    /// Failed writes so far.
    pub fn failures(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// A warning line if any write has failed, `None` otherwise.
    pub fn warning(&self) -> Option<String> {
        let n = self.failures();
        if n == 0 {
            return None;
        }
        let bytes = self.dropped_bytes.load(Ordering::Relaxed);
        let (at, why) = self
            .last
            .lock()
            .ok()
            .and_then(|l| l.clone())
            .unwrap_or((0, String::from("unknown error")));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let failing = self.failing.load(Ordering::Relaxed);
        // Once writes work again, the warning stays for an hour, then goes.
        if !failing && now.saturating_sub(at) > RECOVERED_SHOWN_SECS {
            return None;
        }
        let ago =
            humantime::format_duration(std::time::Duration::from_secs(now.saturating_sub(at)));
        let state = if failing {
            "still failing: free space on the disk of HERD_HOME (herd flush clears instance logs); herd retries at every write"
        } else {
            "writing again since"
        };
        Some(format!(
            "{n} writes to {} failed ({bytes} bytes lost), the last {ago} ago: {why}; {state}",
            self.what
        ))
    }
}

/// How long a warning is shown after writes work again.
const RECOVERED_SHOWN_SECS: u64 = 3600;

/// `daemon.log`.
pub static DAEMON_LOG: Writes = Writes::new("daemon.log");
/// The instances' log files.
pub static APP_LOGS: Writes = Writes::new("instance logs");
/// State files (`instances.pids`).
pub static STATE: Writes = Writes::new("state files");

/// Every warning line, for `herd list` and `herd describe`.
pub fn warnings() -> Vec<String> {
    [&DAEMON_LOG, &APP_LOGS, &STATE]
        .iter()
        .filter_map(|w| w.warning())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_says_once_per_failing_stretch() {
        let w = Writes::new("x");
        assert_eq!(w.warning(), None);
        let e = std::io::Error::from_raw_os_error(28);
        assert!(w.failed(10, &e));
        assert!(!w.failed(5, &e));
        let text = w.warning().unwrap();
        assert!(
            text.contains("2 writes to x failed (15 bytes lost)"),
            "{text}"
        );
        assert!(text.contains("still failing"), "{text}");
        assert!(w.succeeded());
        assert!(!w.succeeded());
        assert!(w.warning().unwrap().contains("writing again"));
        assert!(w.failed(1, &e));
    }
}
