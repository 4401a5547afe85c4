//! Which workspaces need a backup, and when: pure functions of a workspace's own state (its
//! status and its own annotations; never a global timestamp), the policy's timing and now.

use crate::schedule::Schedule;
use chrono::{DateTime, Duration, Utc};

/// The outcome of the last backup, from upstream's annotations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastBackup {
    pub finished: DateTime<Utc>,
    pub successful: bool,
}

/// What the scheduler knows about one workspace.
#[derive(Clone, Debug, Default)]
pub struct WorkspaceState {
    /// `status.phase`.
    pub phase: String,
    /// Time of the last `Started=False` condition transition, if the workspace ever stopped.
    pub last_stopped: Option<DateTime<Utc>>,
    /// `last-backup-finished-at` and `last-backup-successful`, if present and parseable.
    pub last_backup: Option<LastBackup>,
    /// Consecutive failed backups (`wsr.dev/backup-failures`).
    pub failures: u32,
    /// A backup Job for this workspace is still running (found by label).
    pub job_running: bool,
}

/// Why a workspace is not backed up now. The names are the policy status's count keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    NotStopped,
    NeverStarted,
    JobRunning,
    UpToDate,
    BackingOff,
    NotDue,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotStopped => "notStopped",
            Skip::NeverStarted => "neverStarted",
            Skip::JobRunning => "jobRunning",
            Skip::UpToDate => "upToDate",
            Skip::BackingOff => "backingOff",
            Skip::NotDue => "notDue",
        }
    }
}

/// Whether a workspace has data that is not yet backed up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Stopped since its last successful backup (or never backed up).
    Stale,
    /// The last backup failed; retry once the backoff has passed.
    Retry {
        after: DateTime<Utc>,
    },
    Skip(Skip),
}

/// Per-workspace exponential backoff after failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait after `failures` consecutive failures: initial, 2×, 4× … capped at max.
    pub fn wait(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        let wait = self.initial.num_seconds().saturating_mul(1i64 << doublings);
        Duration::seconds(wait.min(self.max.num_seconds()))
    }
}

/// Whether a workspace needs a backup. Improves on upstream: no global "last backup time"
/// can mark a workspace done; a workspace that never stopped is skipped; a running Job is
/// never duplicated; failures back off per workspace instead of retrying every tick.
pub fn decide(ws: &WorkspaceState, backoff: &Backoff) -> Decision {
    if ws.phase != "Stopped" {
        return Decision::Skip(Skip::NotStopped);
    }
    if ws.job_running {
        return Decision::Skip(Skip::JobRunning);
    }
    let Some(stopped) = ws.last_stopped else {
        return Decision::Skip(Skip::NeverStarted);
    };
    match ws.last_backup {
        None => Decision::Stale,
        Some(last) if !last.successful => Decision::Retry {
            after: last.finished + backoff.wait(ws.failures.max(1)),
        },
        Some(last) if stopped > last.finished => Decision::Stale,
        Some(_) => Decision::Skip(Skip::UpToDate),
    }
}

/// A policy's timing, as one run sees it.
#[derive(Clone, Debug)]
pub struct Timing<'a> {
    pub schedule: &'a Schedule,
    /// `Some(delay)` with `trigger: onStop`.
    pub on_stop_delay: Option<Duration>,
    /// The policy's creation: schedule times before it do not count.
    pub policy_created: DateTime<Utc>,
    /// A `run-now` request is pending: every stale workspace is due now.
    pub run_now: bool,
}

/// When a workspace is due, or why it is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    Now,
    /// Not yet: wake at this time.
    At(DateTime<Utc>, Skip),
    Never(Skip),
}

/// When a backup of this workspace is due. A stale workspace is due at the first schedule
/// time after it stopped (or after the policy was created, whichever is later), or with
/// `onStop` at its stop time plus the delay, whichever comes first. Because this depends on
/// the workspace's own state only, schedule times missed while the operator was down are
/// caught up at start-up, and a restart inside the onStop delay cancels the backup (the
/// workspace is no longer stopped).
pub fn due(ws: &WorkspaceState, backoff: &Backoff, timing: &Timing, now: DateTime<Utc>) -> Due {
    let at = match decide(ws, backoff) {
        Decision::Skip(why) => return Due::Never(why),
        Decision::Retry { after } => {
            return if after <= now {
                Due::Now
            } else {
                Due::At(after, Skip::BackingOff)
            };
        }
        Decision::Stale if timing.run_now => return Due::Now,
        Decision::Stale => {
            let stopped = ws.last_stopped.expect("stale implies stopped");
            let since = stopped.max(timing.policy_created);
            let scheduled = timing.schedule.next_after(since);
            let on_stop = timing.on_stop_delay.map(|delay| stopped + delay);
            match (scheduled, on_stop) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => return Due::Never(Skip::NotDue),
            }
        }
    };
    if at <= now {
        Due::Now
    } else {
        Due::At(at, Skip::NotDue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(min: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + min * 60, 0).unwrap()
    }

    const BACKOFF: Backoff = Backoff {
        initial: Duration::minutes(1),
        max: Duration::minutes(64),
    };

    fn stopped(last_stopped: Option<i64>, last_backup: Option<(i64, bool)>) -> WorkspaceState {
        WorkspaceState {
            phase: "Stopped".into(),
            last_stopped: last_stopped.map(t),
            last_backup: last_backup.map(|(m, successful)| LastBackup {
                finished: t(m),
                successful,
            }),
            failures: if matches!(last_backup, Some((_, false))) {
                1
            } else {
                0
            },
            job_running: false,
        }
    }

    /// Upstream's `wasStoppedSinceLastBackup` matrix (12 cases), translated: upstream falls
    /// back to the DWOC's global `lastBackupTime` when a workspace has no annotations, so a
    /// workspace whose Job was never created counts as backed up. wsr never does: the global
    /// column is kept to show that it has no effect.
    #[test]
    fn upstream_stopped_since_last_backup_matrix() {
        // (case, global lastBackupTime, state, upstream answer, wsr decision)
        let cases: Vec<(&str, Option<i64>, WorkspaceState, bool, Decision)> = vec![
            (
                "annotation after stop",
                None,
                stopped(Some(10), Some((20, true))),
                false,
                Decision::Skip(Skip::UpToDate),
            ),
            (
                "annotation before stop",
                None,
                stopped(Some(20), Some((10, true))),
                true,
                Decision::Stale,
            ),
            (
                "annotation wins over later global",
                Some(30),
                stopped(Some(20), Some((10, true))),
                true,
                Decision::Stale,
            ),
            (
                "annotation wins over earlier global",
                Some(5),
                stopped(Some(10), Some((20, true))),
                false,
                Decision::Skip(Skip::UpToDate),
            ),
            (
                "last backup failed, stopped before it",
                None,
                stopped(Some(10), Some((20, false))),
                true,
                Decision::Retry { after: t(21) },
            ),
            (
                "last backup failed, stopped after it",
                None,
                stopped(Some(30), Some((20, false))),
                true,
                Decision::Retry { after: t(21) },
            ),
            // An unparseable finished-at never reaches WorkspaceState: it is "absent".
            (
                "unparseable time, no global",
                None,
                stopped(Some(10), None),
                true,
                Decision::Stale,
            ),
            (
                "unparseable time, global after stop",
                Some(20),
                stopped(Some(10), None),
                false,
                Decision::Stale,
            ),
            (
                "no annotations, global after stop",
                Some(20),
                stopped(Some(10), None),
                false,
                Decision::Stale,
            ),
            (
                "no annotations, global before stop",
                Some(5),
                stopped(Some(10), None),
                true,
                Decision::Stale,
            ),
            (
                "empty annotations, no global",
                None,
                stopped(Some(10), None),
                true,
                Decision::Stale,
            ),
            (
                "never started, no time at all",
                None,
                stopped(None, None),
                true,
                Decision::Skip(Skip::NeverStarted),
            ),
        ];
        assert_eq!(cases.len(), 12);
        for (name, _global, state, _upstream, want) in cases {
            assert_eq!(decide(&state, &BACKOFF), want, "{name}");
        }
    }

    #[test]
    fn phase_and_running_job_matrix() {
        for phase in ["Running", "Starting", "Stopping", "Failed", "Failing", ""] {
            let ws = WorkspaceState {
                phase: phase.into(),
                ..stopped(Some(10), None)
            };
            assert_eq!(
                decide(&ws, &BACKOFF),
                Decision::Skip(Skip::NotStopped),
                "{phase}"
            );
        }
        let ws = WorkspaceState {
            job_running: true,
            ..stopped(Some(10), Some((5, false)))
        };
        assert_eq!(decide(&ws, &BACKOFF), Decision::Skip(Skip::JobRunning));
        // Equal times: the backup finished at the stop instant, nothing newer to save.
        assert_eq!(
            decide(&stopped(Some(10), Some((10, true))), &BACKOFF),
            Decision::Skip(Skip::UpToDate)
        );
    }

    #[test]
    fn backoff_doubles_per_failure_up_to_the_cap() {
        let waits: Vec<i64> = (0..10).map(|f| BACKOFF.wait(f).num_minutes()).collect();
        assert_eq!(waits, [1, 1, 2, 4, 8, 16, 32, 64, 64, 64]);
        assert_eq!(BACKOFF.wait(u32::MAX).num_minutes(), 64);
        let ws = WorkspaceState {
            failures: 4,
            ..stopped(Some(0), Some((90, false)))
        };
        assert_eq!(decide(&ws, &BACKOFF), Decision::Retry { after: t(98) });
    }

    #[test]
    fn due_matrix() {
        let hourly = Schedule::parse("0 * * * *", None).unwrap();
        // t(0) is 2027-01-15T08:00:00Z, on the hour.
        let timing = |on_stop: Option<i64>, run_now| Timing {
            schedule: &hourly,
            on_stop_delay: on_stop.map(Duration::minutes),
            policy_created: t(-1000),
            run_now,
        };
        let cases: Vec<(&str, WorkspaceState, Timing, i64, Due)> = vec![
            (
                "stopped, next tick not reached",
                stopped(Some(10), None),
                timing(None, false),
                30,
                Due::At(t(60), Skip::NotDue),
            ),
            (
                "stopped, tick passed",
                stopped(Some(10), None),
                timing(None, false),
                60,
                Due::Now,
            ),
            (
                "tick missed while down is caught up",
                stopped(Some(10), None),
                timing(None, false),
                500,
                Due::Now,
            ),
            (
                "onStop inside the delay",
                stopped(Some(10), None),
                timing(Some(1), false),
                10,
                Due::At(t(11), Skip::NotDue),
            ),
            (
                "onStop after the delay",
                stopped(Some(10), None),
                timing(Some(1), false),
                11,
                Due::Now,
            ),
            (
                "onStop delay longer than the tick: the tick wins",
                stopped(Some(10), None),
                timing(Some(90), false),
                60,
                Due::Now,
            ),
            (
                "run-now",
                stopped(Some(10), None),
                timing(None, true),
                11,
                Due::Now,
            ),
            (
                "run-now does not back up an up-to-date workspace",
                stopped(Some(10), Some((20, true))),
                timing(None, true),
                30,
                Due::Never(Skip::UpToDate),
            ),
            (
                "running workspace with onStop",
                WorkspaceState {
                    phase: "Running".into(),
                    ..stopped(Some(10), None)
                },
                timing(Some(1), false),
                30,
                Due::Never(Skip::NotStopped),
            ),
            (
                "failed, backing off",
                stopped(Some(10), Some((20, false))),
                timing(None, false),
                20,
                Due::At(t(21), Skip::BackingOff),
            ),
            (
                "failed, backoff over (not waiting for a tick)",
                stopped(Some(10), Some((20, false))),
                timing(None, false),
                21,
                Due::Now,
            ),
        ];
        for (name, state, timing, now, want) in cases {
            assert_eq!(due(&state, &BACKOFF, &timing, t(now)), want, "{name}");
        }
        // Schedule times before the policy existed do not count.
        let late = Timing {
            policy_created: t(70),
            ..timing(None, false)
        };
        assert_eq!(
            due(&stopped(Some(10), None), &BACKOFF, &late, t(100)),
            Due::At(t(120), Skip::NotDue)
        );
    }
}
