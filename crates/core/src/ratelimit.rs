//! Rate limits on what one source (an instance, the notify socket) can make the daemon write to
//! its own log, in journald's manner: `burst` lines per `interval`, the rest counted and
//! reported as one "N more suppressed" line when the interval ends (or with the next line let
//! through, or when the source goes away).
//!
//! This module only decides and counts; it writes nothing and owns no timer. Its owner asks
//! [`PerSource::next_due`] when to come back and calls [`PerSource::due`] then. Time is passed
//! in, so every rule is a unit test without sleeping.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write it. `suppressed` lines of the source's previous interval were dropped and not yet
    /// reported: say so first.
    Log {
        /// Lines suppressed before this one and not yet reported.
        suppressed: u64,
    },
    /// Drop it; it is counted.
    Suppress,
}

/// The limiter of one source.
#[derive(Debug, Clone)]
pub struct LogLimit {
    burst: u32,
    interval: Duration,
    /// Start of the current interval; none before the first line.
    since: Option<Instant>,
    /// Lines let through in the current interval.
    used: u32,
    /// Lines dropped and not yet reported.
    suppressed: u64,
}

impl LogLimit {
    /// `burst` lines per `interval` (a burst of 0 is taken as 1: the first line of an interval
    /// always tells that something is wrong).
    pub fn new(burst: u32, interval: Duration) -> Self {
        Self {
            burst: burst.max(1),
            interval,
            since: None,
            used: 0,
            suppressed: 0,
        }
    }

    fn ended(&self, now: Instant) -> bool {
        self.since
            .is_none_or(|s| now.saturating_duration_since(s) >= self.interval)
    }

    /// Decides about one line at `now`. Cheap: no allocation.
    pub fn admit(&mut self, now: Instant) -> Admit {
        if self.ended(now) {
            self.since = Some(now);
            self.used = 1;
            return Admit::Log {
                suppressed: std::mem::take(&mut self.suppressed),
            };
        }
        if self.used < self.burst {
            self.used += 1;
            return Admit::Log { suppressed: 0 };
        }
        self.suppressed = self.suppressed.saturating_add(1);
        Admit::Suppress
    }

    /// When the current interval ends, if lines were dropped in it.
    pub fn flush_at(&self) -> Option<Instant> {
        match self.since {
            Some(s) if self.suppressed > 0 => Some(s + self.interval),
            _ => None,
        }
    }

    /// Lines dropped and not yet reported, once the interval they were dropped in has ended
    /// (0 before that); they count as reported afterwards.
    pub fn flush(&mut self, now: Instant) -> u64 {
        if self.ended(now) {
            std::mem::take(&mut self.suppressed)
        } else {
            0
        }
    }

    /// Lines dropped and not yet reported, now (the source is going away).
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

/// One [`LogLimit`] per source, and the times at which suppressed counts fall due.
#[derive(Debug)]
pub struct PerSource<K> {
    burst: u32,
    interval: Duration,
    sources: HashMap<K, LogLimit>,
    /// (end of an interval in which lines were dropped, source). At most one entry per source
    /// and interval; entries of sources gone since are skipped.
    due: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K: Hash + Eq + Ord + Copy> PerSource<K> {
    /// `burst` lines per `interval` for each source.
    pub fn new(burst: u32, interval: Duration) -> Self {
        Self {
            burst,
            interval,
            sources: HashMap::new(),
            due: BinaryHeap::new(),
        }
    }

    /// Decides about one line of `source` at `now`.
    pub fn admit(&mut self, source: K, now: Instant) -> Admit {
        let (burst, interval) = (self.burst, self.interval);
        let limit = self
            .sources
            .entry(source)
            .or_insert_with(|| LogLimit::new(burst, interval));
        let first_drop = limit.suppressed == 0;
        let admit = limit.admit(now);
        if admit == Admit::Suppress && first_drop {
            if let Some(at) = limit.flush_at() {
                self.due.push(Reverse((at, source)));
            }
        }
        admit
    }

    /// The earliest time at which a suppressed count may fall due.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _))| *at)
    }

    /// The sources whose interval with dropped lines has ended by `now`, with the counts to
    /// report.
    pub fn due(&mut self, now: Instant) -> Vec<(K, u64)> {
        let mut out = Vec::new();
        while let Some(Reverse((at, source))) = self.due.peek().copied() {
            if at > now {
                break;
            }
            self.due.pop();
            if let Some(limit) = self.sources.get_mut(&source) {
                let n = limit.flush(now);
                if n > 0 {
                    out.push((source, n));
                }
            }
        }
        out
    }

    /// Forgets a source; returns what it had dropped and not reported.
    pub fn forget(&mut self, source: K) -> u64 {
        self.sources
            .remove(&source)
            .map_or(0, |mut l| l.take_suppressed())
    }

    /// Sources with a limiter now (for tests and bounds).
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// Whether no source has a limiter.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn a_burst_then_suppression_then_the_count_with_the_next_interval() {
        let t0 = Instant::now();
        let mut l = LogLimit::new(3, 10 * SEC);
        for _ in 0..3 {
            assert_eq!(l.admit(t0), Admit::Log { suppressed: 0 });
        }
        for i in 0..5 {
            assert_eq!(l.admit(t0 + i * SEC), Admit::Suppress);
        }
        assert_eq!(l.flush_at(), Some(t0 + 10 * SEC));
        // Within the interval nothing is due.
        assert_eq!(l.flush(t0 + 9 * SEC), 0);
        // The next line after the interval carries the count.
        assert_eq!(l.admit(t0 + 11 * SEC), Admit::Log { suppressed: 5 });
        assert_eq!(l.flush_at(), None);
        assert_eq!(l.admit(t0 + 12 * SEC), Admit::Log { suppressed: 0 });
    }

    #[test]
    fn the_count_falls_due_at_the_end_of_the_interval() {
        let t0 = Instant::now();
        let mut p = PerSource::new(2, 10 * SEC);
        for _ in 0..1000 {
            p.admit(7u32, t0);
        }
        p.admit(8u32, t0 + SEC);
        assert_eq!(p.next_due(), Some(t0 + 10 * SEC));
        assert!(p.due(t0 + 9 * SEC).is_empty());
        assert_eq!(p.due(t0 + 10 * SEC), vec![(7, 998)]);
        assert_eq!(p.next_due(), None);
        // Reported once only; the next line starts a new interval with nothing to report.
        assert_eq!(p.admit(7, t0 + 10 * SEC), Admit::Log { suppressed: 0 });
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn one_noisy_source_does_not_silence_another() {
        let t0 = Instant::now();
        let mut p = PerSource::new(1, SEC);
        assert_eq!(p.admit(1u32, t0), Admit::Log { suppressed: 0 });
        assert_eq!(p.admit(1u32, t0), Admit::Suppress);
        assert_eq!(p.admit(2u32, t0), Admit::Log { suppressed: 0 });
    }

    #[test]
    fn a_source_that_goes_away_gives_its_count() {
        let t0 = Instant::now();
        let mut p = PerSource::new(1, 10 * SEC);
        p.admit(1u32, t0);
        p.admit(1u32, t0);
        p.admit(1u32, t0);
        assert_eq!(p.forget(1), 2);
        assert!(p.is_empty());
        // Its pending entry is skipped.
        assert!(p.due(t0 + 20 * SEC).is_empty());
        assert_eq!(p.forget(1), 0);
    }

    #[test]
    fn one_due_entry_per_interval_however_many_drops() {
        let t0 = Instant::now();
        let mut p = PerSource::new(1, SEC);
        for i in 0..10_000u32 {
            p.admit(1u32, t0 + Duration::from_micros(u64::from(i)));
        }
        assert_eq!(p.due.len(), 1);
        let mut reported = 0;
        // Three intervals of drops: three entries over time, never more than one at once.
        for k in 1..=3u32 {
            let t = t0 + k * SEC;
            reported += p.due(t).iter().map(|(_, n)| n).sum::<u64>();
            for _ in 0..100 {
                p.admit(1u32, t);
            }
            assert!(p.due.len() <= 1);
        }
        assert_eq!(reported, 9_999 + 99 + 99);
    }
}
