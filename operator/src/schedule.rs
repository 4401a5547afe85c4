//! A policy's schedule: a five-field cron pattern (croner, POSIX/Vixie semantics) in an
//! optional IANA time zone, as a CronJob takes `schedule` and `timeZone`.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    zone: Tz,
}

/// Why a schedule was refused (reported in the policy's `Ready` condition).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("schedule {pattern:?} is not a five-field cron pattern: {reason}")]
    Pattern { pattern: String, reason: String },
    #[error("time zone {0:?} is not an IANA time zone name")]
    TimeZone(String),
    #[error("schedule {0:?} never fires")]
    Never(String),
}

impl Schedule {
    /// Parses `pattern` (five fields or an `@daily`-style descriptor; no seconds, no year,
    /// no `CRON_TZ=` prefix: use `time_zone`) and `time_zone` (default UTC).
    pub fn parse(pattern: &str, time_zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let refuse = |reason: &str| ScheduleError::Pattern {
            pattern: pattern.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = pattern.trim();
        if !trimmed.starts_with('@') && trimmed.split_whitespace().count() != 5 {
            return Err(refuse(
                "expected minute hour day-of-month month day-of-week",
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(trimmed)
            .map_err(|e| refuse(&e.to_string()))?;
        let zone = match time_zone {
            None => Tz::UTC,
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| ScheduleError::TimeZone(name.to_owned()))?,
        };
        let schedule = Schedule { cron, zone };
        // A pattern such as `0 0 31 2 *` parses but never fires; croner reports that as an
        // error when searching, which is worth refusing up front.
        schedule
            .next_after(DateTime::UNIX_EPOCH)
            .ok_or_else(|| ScheduleError::Never(pattern.to_owned()))?;
        Ok(schedule)
    }

    /// The first schedule time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|next| next.with_timezone(&Utc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_run_table() {
        let cases = [
            (
                "0 0 1 * *",
                None,
                "2026-11-25T15:33:00Z",
                "2026-12-01T00:00:00Z",
            ),
            (
                "0 1 * * *",
                None,
                "2026-11-25T01:00:00Z",
                "2026-11-26T01:00:00Z",
            ),
            (
                "* * * * *",
                None,
                "2026-11-25T15:33:20Z",
                "2026-11-25T15:34:00Z",
            ),
            (
                "*/15 * * * *",
                None,
                "2026-11-25T15:33:00Z",
                "2026-11-25T15:45:00Z",
            ),
            (
                "@hourly",
                None,
                "2026-11-25T15:33:00Z",
                "2026-11-25T16:00:00Z",
            ),
            // Vixie semantics: day-of-month OR day-of-week when both are restricted.
            (
                "0 0 1 * 1",
                None,
                "2026-11-25T00:00:00Z",
                "2026-11-30T00:00:00Z",
            ),
            // 01:00 in Berlin is 00:00 UTC in winter.
            (
                "0 1 * * *",
                Some("Europe/Berlin"),
                "2026-11-25T12:00:00Z",
                "2026-11-26T00:00:00Z",
            ),
            (
                "0 1 * * *",
                Some("America/New_York"),
                "2026-11-25T12:00:00Z",
                "2026-11-26T06:00:00Z",
            ),
        ];
        for (pattern, tz, now, want) in cases {
            let s = Schedule::parse(pattern, tz).unwrap();
            assert_eq!(s.next_after(at(now)), Some(at(want)), "{pattern} {tz:?}");
        }
    }

    #[test]
    fn invalid_schedules_are_refused_with_a_reason() {
        for bad in [
            "",
            "* * * *",
            "0 * * * * *",
            "61 * * * *",
            "CRON_TZ=UTC 0 1 * * *",
            "0 0 31 2 *",
            "@every 1h",
        ] {
            assert!(Schedule::parse(bad, None).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            Schedule::parse("0 1 * * *", Some("Mars/Olympus")).unwrap_err(),
            ScheduleError::TimeZone("Mars/Olympus".into())
        );
    }
}
