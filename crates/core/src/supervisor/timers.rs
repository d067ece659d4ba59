//! The supervisor's one timer queue: every deadline it waits for, keyed by what it is for.
//!
//! Setting a key again moves its deadline; cancelling removes it; a key fires at most once per
//! setting. So a timer whose reason has gone — the slot changed state, the process exited, the
//! app was deleted — cannot fire: its key was cancelled or re-set with the transition, instead
//! of a spawned sleep that later sends an event and must be recognised as stale. Deadlines are
//! tokio's [`Instant`]s, so paused time drives them in tests, and the event loop sleeps until
//! the earliest one (no polling while idle).
//!
//! It does not know what a key means: the event loop hands due keys to the supervisor.

use std::collections::{BTreeSet, HashMap};

use tokio::time::Instant;

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum TimerKey {
    /// A slot's own deadline: its restart backoff, its ready (listen) timeout, a reload's
    /// next process's ready timeout, its kill timeout, or its next drain check — whichever
    /// its state waits for ([`super::SlotState::deadline`]).
    Slot {
        /// App id.
        app: u32,
        /// Slot index.
        slot: u32,
    },
    /// A health probe of a process is due.
    Probe {
        /// Its pid.
        pid: u32,
        /// Which probe.
        kind: super::probes::ProbeKind,
    },
    /// A reloaded-away process gets SIGKILL then if it is still running.
    Retire {
        /// Its pid.
        pid: u32,
    },
    /// Reloaded-away processes still holding sockets of addresses the app left are asked to
    /// stop once those sockets' queues are empty (`moving.rs`).
    Handoff {
        /// App id.
        app: u32,
    },
    /// Time to compare the app's instances with its memory limit.
    Memory {
        /// App id.
        app: u32,
    },
    /// The app's watched files have been quiet long enough: reload it.
    Watch {
        /// App id.
        app: u32,
    },
    /// The app's `cron_restart` may be due: reload it if it is (`cron.rs`).
    Cron {
        /// App id.
        app: u32,
    },
    /// A `herd trigger` is answered with the replies it has.
    Trigger {
        /// The trigger's id.
        id: u64,
    },
    /// A scrape of the metrics endpoint is answered with what it has.
    Scrape {
        /// The scrape's id.
        id: u64,
    },
    /// The state is given to the keeper if it changed (after instances' messages).
    Journal,
    /// Workers nobody claimed are announced to the app's primary
    /// ([`super::primary::CLAIM_WINDOW`]).
    Claims {
        /// App id.
        app: u32,
    },
}

impl TimerKey {
    /// The app the timer belongs to, if any.
    fn app(&self) -> Option<u32> {
        match *self {
            TimerKey::Slot { app, .. }
            | TimerKey::Memory { app }
            | TimerKey::Handoff { app }
            | TimerKey::Watch { app }
            | TimerKey::Cron { app }
            | TimerKey::Claims { app } => Some(app),
            TimerKey::Retire { .. }
            | TimerKey::Probe { .. }
            | TimerKey::Scrape { .. }
            | TimerKey::Journal
            | TimerKey::Trigger { .. } => None,
        }
    }
}

/// Deadlines by key, ordered by time.
#[derive(Debug, Default)]
pub(super) struct Timers {
    by_key: HashMap<TimerKey, Instant>,
    queue: BTreeSet<(Instant, TimerKey)>,
}

impl Timers {
    /// Arms `key` for `at`, replacing an earlier setting of it.
    pub(super) fn set(&mut self, key: TimerKey, at: Instant) {
        if let Some(old) = self.by_key.insert(key, at) {
            self.queue.remove(&(old, key));
        }
        self.queue.insert((at, key));
    }

    /// Disarms `key`; whether it was armed.
    pub(super) fn cancel(&mut self, key: TimerKey) -> bool {
        match self.by_key.remove(&key) {
            Some(at) => {
                self.queue.remove(&(at, key));
                true
            }
            None => false,
        }
    }

    /// Disarms every timer of app `app` (it is gone).
    pub(super) fn cancel_app(&mut self, app: u32) {
        let keys: Vec<TimerKey> = self
            .by_key
            .keys()
            .filter(|k| k.app() == Some(app))
            .copied()
            .collect();
        for k in keys {
            self.cancel(k);
        }
    }

    /// When `key` fires, if armed.
    pub(super) fn deadline(&self, key: TimerKey) -> Option<Instant> {
        self.by_key.get(&key).copied()
    }

    /// The earliest deadline.
    pub(super) fn next(&self) -> Option<Instant> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// Takes the earliest key that is due at `now`; each setting is handed out once.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<TimerKey> {
        let &(at, key) = self.queue.first()?;
        if at > now {
            return None;
        }
        self.queue.remove(&(at, key));
        self.by_key.remove(&key);
        Some(key)
    }

    /// Armed timers.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Every armed key.
    #[cfg(test)]
    pub(super) fn keys(&self) -> impl Iterator<Item = &TimerKey> {
        self.by_key.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn slot(app: u32, slot: u32) -> TimerKey {
        TimerKey::Slot { app, slot }
    }

    #[tokio::test(start_paused = true)]
    async fn keys_fire_in_time_order_once() {
        let mut t = Timers::default();
        let now = Instant::now();
        t.set(slot(0, 1), now + Duration::from_millis(300));
        t.set(
            TimerKey::Retire { pid: 9 },
            now + Duration::from_millis(100),
        );
        t.set(
            TimerKey::Memory { app: 0 },
            now + Duration::from_millis(200),
        );
        assert_eq!(t.next(), Some(now + Duration::from_millis(100)));
        assert_eq!(t.pop_due(now), None);
        tokio::time::advance(Duration::from_millis(250)).await;
        let now = Instant::now();
        assert_eq!(t.pop_due(now), Some(TimerKey::Retire { pid: 9 }));
        assert_eq!(t.pop_due(now), Some(TimerKey::Memory { app: 0 }));
        assert_eq!(t.pop_due(now), None);
        assert_eq!(t.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_or_cancelled_timer_never_fires_stale() {
        let mut t = Timers::default();
        let now = Instant::now();
        t.set(slot(1, 0), now + Duration::from_millis(100));
        // The slot changed state: its new deadline replaces the old one.
        t.set(slot(1, 0), now + Duration::from_secs(5));
        tokio::time::advance(Duration::from_millis(150)).await;
        assert_eq!(t.pop_due(Instant::now()), None);
        assert_eq!(t.deadline(slot(1, 0)), Some(now + Duration::from_secs(5)));
        assert!(t.cancel(slot(1, 0)));
        assert!(!t.cancel(slot(1, 0)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(t.pop_due(Instant::now()), None);
        assert_eq!(t.next(), None);
    }

    #[test]
    fn cancel_app_leaves_other_apps_and_pids() {
        let mut t = Timers::default();
        let at = Instant::now();
        t.set(slot(1, 0), at);
        t.set(slot(1, 3), at);
        t.set(TimerKey::Watch { app: 1 }, at);
        t.set(TimerKey::Cron { app: 1 }, at);
        t.set(slot(2, 0), at);
        t.set(TimerKey::Retire { pid: 4 }, at);
        t.cancel_app(1);
        let mut left: Vec<TimerKey> = t.keys().copied().collect();
        left.sort();
        assert_eq!(left, vec![slot(2, 0), TimerKey::Retire { pid: 4 }]);
    }
}
