//! The restart policy: what happens when an instance exits on its own. Pure logic, kept apart
//! from processes and timers so it can be tested with made-up durations.

use std::time::Duration;

use herd_proto::AppSpec;

/// What the policy remembers about a slot between exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct History {
    /// Consecutive runs shorter than `min_uptime`.
    pub unstable: u32,
    /// Consecutive restarts without a stable run (one of at least `min_uptime`).
    pub backoff_step: u32,
}

/// The decision for one exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start again after this delay (zero: at once).
    Restart(Duration),
    /// The exit code says the app stopped on purpose.
    Stop,
    /// Autorestart is off.
    Exit,
    /// Too many quick crashes in a row: give up until restarted by hand.
    Errored,
}

/// Decides what follows an exit after a run of `uptime`, updating `history`.
pub fn on_exit(
    spec: &AppSpec,
    history: &mut History,
    uptime: Duration,
    code: Option<i32>,
) -> Decision {
    if let Some(code) = code {
        if spec.stop_exit_codes.contains(&code) {
            return Decision::Stop;
        }
    }
    if !spec.autorestart {
        return Decision::Exit;
    }
    // A stable run (at least min_uptime) clears both counters: it is restarted after the fixed
    // restart_delay alone (at once by default); quick crashes back off exponentially on top of
    // it and, past max_restarts in a row, give up.
    if uptime < Duration::from_millis(spec.min_uptime_ms) {
        history.unstable += 1;
    } else {
        history.unstable = 0;
        history.backoff_step = 0;
    }
    if history.unstable > spec.max_restarts {
        return Decision::Errored;
    }
    let wait = delay(spec, history.backoff_step);
    history.backoff_step = history.backoff_step.saturating_add(1);
    Decision::Restart(wait)
}

/// Delay before the `step`-th consecutive restart without a stable run: the fixed
/// `restart_delay` (PM2's) plus the backoff's step.
pub fn delay(spec: &AppSpec, step: u32) -> Duration {
    Duration::from_millis(spec.restart_delay_ms).saturating_add(backoff(spec, step))
}

/// The backoff's `step`: 0, base, 2·base, 4·base, … up to `max_restart_delay`, where the base is
/// `exp_backoff_restart_delay` (PM2's).
pub fn backoff(spec: &AppSpec, step: u32) -> Duration {
    if step == 0 {
        return Duration::ZERO;
    }
    let factor = 1u64 << (step - 1).min(30);
    let ms = spec
        .exp_backoff_restart_delay_ms
        .saturating_mul(factor)
        .min(spec.max_restart_delay_ms);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AppSpec {
        AppSpec {
            name: "t".into(),
            script: "/bin/true".into(),
            max_restarts: 3,
            min_uptime_ms: 1000,
            exp_backoff_restart_delay_ms: 100,
            max_restart_delay_ms: 1000,
            ..AppSpec::default()
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let s = spec();
        let ms: Vec<u64> = (0..7).map(|i| backoff(&s, i).as_millis() as u64).collect();
        assert_eq!(ms, vec![0, 100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn the_fixed_delay_comes_before_every_restart_on_top_of_the_backoff() {
        let s = AppSpec {
            restart_delay_ms: 3000,
            ..spec()
        };
        let ms: Vec<u64> = (0..7).map(|i| delay(&s, i).as_millis() as u64).collect();
        // The cap is the backoff's: the fixed delay comes on top.
        assert_eq!(ms, vec![3000, 3100, 3200, 3400, 3800, 4000, 4000]);
        let mut h = History::default();
        let quick = Duration::from_millis(10);
        assert_eq!(
            on_exit(&s, &mut h, quick, Some(1)),
            Decision::Restart(Duration::from_millis(3000))
        );
        assert_eq!(
            on_exit(&s, &mut h, quick, Some(1)),
            Decision::Restart(Duration::from_millis(3100))
        );
        // A stable run resets the backoff, not the fixed delay (PM2 waits restart_delay
        // before every restart).
        assert_eq!(
            on_exit(&s, &mut h, Duration::from_secs(5), Some(1)),
            Decision::Restart(Duration::from_millis(3000))
        );
    }

    #[test]
    fn pm2s_restart_delay_alone_is_a_fixed_delay() {
        let s = AppSpec {
            restart_delay_ms: 500,
            exp_backoff_restart_delay_ms: 0,
            ..spec()
        };
        let ms: Vec<u64> = (0..4).map(|i| delay(&s, i).as_millis() as u64).collect();
        assert_eq!(ms, vec![500, 500, 500, 500]);
    }

    #[test]
    fn the_defaults_keep_herds_backoff() {
        let d = AppSpec::default();
        let ms: Vec<u64> = (0..10).map(|i| delay(&d, i).as_millis() as u64).collect();
        assert_eq!(
            ms,
            vec![0, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 15000]
        );
    }

    #[test]
    fn crash_loop_trips_after_max_restarts() {
        let s = spec();
        let mut h = History::default();
        let quick = Duration::from_millis(10);
        assert_eq!(
            on_exit(&s, &mut h, quick, Some(1)),
            Decision::Restart(Duration::ZERO)
        );
        assert_eq!(
            on_exit(&s, &mut h, quick, Some(1)),
            Decision::Restart(Duration::from_millis(100))
        );
        assert_eq!(
            on_exit(&s, &mut h, quick, Some(1)),
            Decision::Restart(Duration::from_millis(200))
        );
        assert_eq!(on_exit(&s, &mut h, quick, Some(1)), Decision::Errored);
    }

    #[test]
    fn stable_run_resets_counters() {
        let s = spec();
        let mut h = History::default();
        for _ in 0..3 {
            on_exit(&s, &mut h, Duration::from_millis(10), None);
        }
        assert_eq!(h.unstable, 3);
        assert_eq!(
            on_exit(&s, &mut h, Duration::from_secs(2), None),
            Decision::Restart(Duration::ZERO)
        );
        assert_eq!(h.unstable, 0);
        assert_eq!(
            on_exit(&s, &mut h, Duration::from_millis(10), None),
            Decision::Restart(Duration::from_millis(100))
        );
    }

    #[test]
    fn stop_exit_codes_and_no_autorestart() {
        let mut s = spec();
        s.stop_exit_codes = vec![0, 3];
        let mut h = History::default();
        assert_eq!(
            on_exit(&s, &mut h, Duration::from_secs(5), Some(3)),
            Decision::Stop
        );
        assert_eq!(
            on_exit(&s, &mut h, Duration::from_secs(5), None),
            Decision::Restart(Duration::ZERO)
        );
        s.autorestart = false;
        assert_eq!(
            on_exit(&s, &mut h, Duration::from_secs(5), Some(1)),
            Decision::Exit
        );
    }
}
