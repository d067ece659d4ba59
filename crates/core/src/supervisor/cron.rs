//! `cron_restart`: an app is reloaded (rolling, as `herd reload`) at each time its cron
//! expression matches, while it runs.
//!
//! The app's timer (`TimerKey::Cron`) is derived from its state, as a slot's is: after every
//! event it is armed if the app runs and cancelled if not (stopped, deleted, or waiting for
//! the apps it depends on). It is armed to the next match, or [`RECHECK`] from now if that
//! comes first: matches are wall-clock times and timers run on the monotonic clock, which a
//! suspended machine or a clock set anew leaves behind. A firing reloads the app only once the wall clock has reached the match; the timer
//! is then armed to the match after it. It does not parse expressions (`crate::schedule`) or
//! reload (`reload.rs`).

use std::time::{Duration, SystemTime};

use herd_proto::AppStatus;
use tokio::time::Instant;

use super::{App, State, TimerKey, Timers};
use crate::schedule::Schedule;

/// Longest wait between two looks at the wall clock while a match is ahead.
pub(super) const RECHECK: Duration = Duration::from_secs(60);

/// An app's schedule, and the match its timer waits for.
#[derive(Debug)]
pub(super) struct CronRestart {
    schedule: Schedule,
    /// The next match, while the app runs (none if nothing matches any more).
    next: Option<SystemTime>,
}

impl CronRestart {
    /// The schedule of `spec`, if it has one. The daemon checked it when the app was started;
    /// one that does not read (a handover from another herd) is logged and left out.
    pub(super) fn of(spec: &herd_proto::AppSpec) -> Option<Self> {
        let expr = spec.cron_restart.as_deref()?;
        match Schedule::parse(expr) {
            Ok(schedule) => Some(Self {
                schedule,
                next: None,
            }),
            Err(e) => {
                tracing::warn!(app = %spec.name, "cron_restart {e}; the app is not reloaded on a schedule");
                None
            }
        }
    }

    /// When the timer reloads the app next, while it runs.
    pub(super) fn next(&self) -> Option<SystemTime> {
        self.next
    }
}

/// Arms or cancels `app`'s cron timer by its state; `now` is the wall clock.
pub(super) fn sync(app: &mut App, timers: &mut Timers, now: SystemTime) {
    let key = TimerKey::Cron { app: app.id };
    let Some(cron) = app.cron.as_mut() else {
        return;
    };
    // An app that waits for the apps it depends on (`depends_on`) does not run yet.
    if app.status != AppStatus::Running || app.deleting || app.waiting {
        cron.next = None;
        timers.cancel(key);
        return;
    }
    if timers.deadline(key).is_some() {
        return;
    }
    if cron.next.is_none() {
        cron.next = cron.schedule.next_after(now);
    }
    let wait = cron.next.map_or(RECHECK, |at| {
        at.duration_since(now).unwrap_or_default().min(RECHECK)
    });
    timers.set(key, Instant::now() + wait);
}

impl State {
    /// App `id`'s cron timer fired: a rolling reload if its match has come.
    pub(super) fn on_cron_timer(&mut self, id: u32) {
        let now = self.os.wall_clock();
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        if app.status != AppStatus::Running || app.waiting {
            return;
        }
        let Some(cron) = app.cron.as_mut() else {
            return;
        };
        // Early (the wall clock is behind the timer, or this is a recheck): `sync` arms the
        // timer again for the same match.
        if cron.next.is_none_or(|at| at > now) {
            return;
        }
        // `sync` arms it for the match after this one.
        cron.next = None;
        tracing::info!(
            app = %app.spec.name,
            schedule = app.spec.cron_restart.as_deref().unwrap_or_default(),
            "cron_restart: reloading"
        );
        if let Err(e) = self.start_reload(id) {
            tracing::warn!(app = id, "cron_restart: the reload did not start: {e}");
        }
    }
}
