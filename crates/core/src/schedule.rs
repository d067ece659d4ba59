//! Cron schedules (`cron_restart`, PM2's field of the same name): reading an expression, and
//! the next time it matches. Expressions are read by `croner`, the Rust port of the library PM2
//! itself uses: five fields (`minute hour day-of-month month day-of-week`), an optional
//! leading seconds field, `@daily` and the like. Times are the machine's local time, as in PM2
//! and cron (`TZ` when set, else `/etc/localtime`).
//!
//! It does not arm timers or reload anything: the supervisor does (`docs/slots.md`).

use std::str::FromStr;
use std::time::SystemTime;

use chrono::{DateTime, Local, TimeZone};
use croner::Cron;

/// What an expression must look like, for error messages.
pub const EXAMPLE: &str =
    "give MINUTE HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK, e.g. \"0 3 * * *\" for 03:00 every day";

/// A cron expression that was read and matches at least once.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
}

/// An expression that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    /// It is not a cron expression.
    #[error("{expr:?} is not a cron expression ({why}); {EXAMPLE}")]
    Invalid {
        /// The expression as given.
        expr: String,
        /// What the parser said.
        why: String,
    },
    /// It is one, but no date matches it (`0 0 30 2 *`, the 30th of February).
    #[error("{0:?} never matches a date (is the day of the month in that month?); {EXAMPLE}")]
    Never(String),
}

impl Schedule {
    /// Reads `expr`.
    ///
    /// # Errors
    /// When it is not a cron expression, or nothing ever matches it.
    pub fn parse(expr: &str) -> Result<Self, ScheduleError> {
        let cron = Cron::from_str(expr).map_err(|e| ScheduleError::Invalid {
            expr: expr.to_string(),
            why: e.to_string(),
        })?;
        let schedule = Self { cron };
        // Within four years every day of every month comes (29 February too), so an
        // expression with no match from a fixed date has none at all.
        let from = DateTime::from_timestamp(0, 0).unwrap_or_default();
        if schedule.next_in(&from).is_none() {
            return Err(ScheduleError::Never(expr.to_string()));
        }
        Ok(schedule)
    }

    /// The first match strictly after `after`, in the machine's local time zone.
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        let local: DateTime<Local> = DateTime::<chrono::Utc>::from(after).with_timezone(&Local);
        self.next_in(&local).map(SystemTime::from)
    }

    /// The first match strictly after `after`, in `after`'s time zone.
    pub fn next_in<Tz: TimeZone>(&self, after: &DateTime<Tz>) -> Option<DateTime<Tz>> {
        self.cron.find_next_occurrence(after, false).ok()
    }
}

/// `t` in the local time zone, to the second, with its offset: `2026-03-01 03:00:00 +01:00`.
pub fn local_time(t: SystemTime) -> String {
    DateTime::<chrono::Utc>::from(t)
        .with_timezone(&Local)
        .format("%Y-%m-%d %H:%M:%S %:z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{FixedOffset, Utc};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(expr: &str, after: &str) -> String {
        Schedule::parse(expr)
            .unwrap()
            .next_in(&at(after))
            .unwrap()
            .to_rfc3339()
    }

    #[test]
    fn five_fields_six_fields_and_nicknames() {
        assert_eq!(
            next("0 3 * * *", "2026-03-01T02:59:59Z"),
            "2026-03-01T03:00:00+00:00"
        );
        // Strictly after: a time that matches gives the next one.
        assert_eq!(
            next("0 3 * * *", "2026-03-01T03:00:00Z"),
            "2026-03-02T03:00:00+00:00"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-03-01T10:07:00Z"),
            "2026-03-01T10:15:00+00:00"
        );
        // With seconds first, as PM2's croner reads it.
        assert_eq!(
            next("30 0 12 * * *", "2026-03-01T12:00:00Z"),
            "2026-03-01T12:00:30+00:00"
        );
        assert_eq!(
            next("@daily", "2026-03-01T12:00:00Z"),
            "2026-03-02T00:00:00+00:00"
        );
        // Monday to Friday at 04:30: from a Saturday, the Monday.
        assert_eq!(
            next("30 4 * * 1-5", "2026-03-07T00:00:00Z"),
            "2026-03-09T04:30:00+00:00"
        );
        // The 29th of February waits for a leap year.
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00:00Z"),
            "2028-02-29T00:00:00+00:00"
        );
    }

    #[test]
    fn matches_are_in_the_zone_of_the_time_given() {
        let s = Schedule::parse("0 3 * * *").unwrap();
        let paris = FixedOffset::east_opt(3600).unwrap();
        let after = at("2026-03-01T00:00:00Z").with_timezone(&paris);
        let got = s.next_in(&after).unwrap();
        assert_eq!(got.to_rfc3339(), "2026-03-01T03:00:00+01:00");
        assert_eq!(
            got.with_timezone(&Utc).to_rfc3339(),
            "2026-03-01T02:00:00+00:00"
        );
    }

    #[test]
    fn the_local_match_is_the_zone_match_of_now() {
        let s = Schedule::parse("*/5 * * * *").unwrap();
        let now = SystemTime::now();
        let got = s.next_after(now).unwrap();
        assert!(got > now);
        let left = got.duration_since(now).unwrap();
        assert!(left <= std::time::Duration::from_secs(300), "{left:?}");
    }

    #[test]
    fn bad_expressions_are_refused_with_an_example() {
        for bad in [
            "",
            "every day",
            "0 25 * * *",
            "61 * * * *",
            "* * * *",
            "0 3 * * 8",
        ] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(matches!(e, ScheduleError::Invalid { .. }), "{bad}: {e:?}");
            let shown = e.to_string();
            assert!(shown.contains("is not a cron expression"), "{shown}");
            assert!(shown.contains("e.g. \"0 3 * * *\""), "{shown}");
        }
        let e = Schedule::parse("0 0 30 2 *").unwrap_err();
        assert_eq!(e, ScheduleError::Never("0 0 30 2 *".into()));
        assert!(e.to_string().contains("never matches"));
    }
}
