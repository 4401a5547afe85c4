//! wsr-operator: the DevWorkspace-facing decisions of the backup scheduler, as pure functions.
//!
//! This crate will grow into the kube-rs controller that schedules backup Jobs running the
//! recovery image (`wsr-backup --dwo-env`) for stopped workspaces. Today it holds the decisions
//! that do not need a cluster: which workspaces are due for a backup, the DWO annotation and
//! label names the Che dashboard reads, and the backup reference. It uses `wsr-format` for names
//! and references only; it must never link the backup or restore engines.

use chrono::{DateTime, Utc};
use wsr_format::reference::{
    InvalidReference, Reference, parse_registry_path, workspace_reference,
};

/// DevWorkspace annotations the Che dashboard reads (upstream names, kept exactly).
pub mod annotation {
    pub const LAST_BACKUP_SUCCESSFUL: &str = "controller.devfile.io/last-backup-successful";
    pub const LAST_BACKUP_FINISHED_AT: &str = "controller.devfile.io/last-backup-finished-at";
    pub const LAST_BACKUP_ERROR: &str = "controller.devfile.io/last-backup-error";
}

/// Labels on backup Jobs (the dashboard lists in-progress backups by them).
pub mod label {
    pub const BACKUP_JOB: &str = "controller.devfile.io/backup-job";
    pub const DEVWORKSPACE_NAME: &str = "controller.devfile.io/devworkspace_name";
    pub const DEVWORKSPACE_ID: &str = "controller.devfile.io/devworkspace_id";
}

/// Upstream caps `last-backup-error` at 1024 characters.
pub const MAX_ERROR_LEN: usize = 1024;

/// The `last-backup-error` value: at most 1024 characters, cut with `...` as upstream does.
pub fn error_annotation(message: &str) -> String {
    if message.chars().count() <= MAX_ERROR_LEN {
        return message.to_owned();
    }
    let cut: String = message.chars().take(MAX_ERROR_LEN - 3).collect();
    format!("{cut}...")
}

/// Where a workspace's backups go: `<registry path>/<namespace>/<name>:latest`.
pub fn backup_reference(
    registry_path: &str,
    namespace: &str,
    name: &str,
) -> Result<Reference, InvalidReference> {
    workspace_reference(&parse_registry_path(registry_path)?, namespace, name)
}

/// What the scheduler knows about one workspace at a tick.
#[derive(Clone, Debug, Default)]
pub struct WorkspaceState {
    /// `status.phase`.
    pub phase: String,
    /// Time of the last `Started=False` condition transition, if the workspace ever stopped.
    pub last_stopped: Option<DateTime<Utc>>,
    /// `last-backup-finished-at` and `last-backup-successful`, if present and parseable.
    pub last_backup: Option<(DateTime<Utc>, bool)>,
    /// Consecutive failed backups (for backoff).
    pub failures: u32,
    /// A backup Job for this workspace is still running.
    pub job_running: bool,
}

/// The scheduler's decision for one workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Backup,
    Skip(&'static str),
}

/// Whether to back a workspace up now. Improves on upstream: a workspace that never stopped is
/// not backed up, a running Job is never duplicated, and failures back off exponentially
/// (1, 2, 4 … up to 64 minutes after the failed attempt) instead of retrying every tick.
pub fn decide(ws: &WorkspaceState, now: DateTime<Utc>) -> Decision {
    if ws.phase != "Stopped" {
        return Decision::Skip("not stopped");
    }
    if ws.job_running {
        return Decision::Skip("a backup job is already running");
    }
    let Some(stopped) = ws.last_stopped else {
        return Decision::Skip("never ran");
    };
    match ws.last_backup {
        None => Decision::Backup,
        Some((finished, false)) => {
            let wait = chrono::Duration::minutes(1i64 << ws.failures.saturating_sub(1).min(6));
            if now >= finished + wait {
                Decision::Backup
            } else {
                Decision::Skip("backing off after a failure")
            }
        }
        Some((finished, true)) if stopped > finished => Decision::Backup,
        Some(_) => Decision::Skip("unchanged since the last backup"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(min: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + min * 60, 0).unwrap()
    }

    #[test]
    fn decision_matrix() {
        let stopped = |last_stopped, last_backup, failures| WorkspaceState {
            phase: "Stopped".into(),
            last_stopped,
            last_backup,
            failures,
            job_running: false,
        };
        let cases: Vec<(WorkspaceState, Decision)> = vec![
            (
                WorkspaceState {
                    phase: "Running".into(),
                    ..Default::default()
                },
                Decision::Skip("not stopped"),
            ),
            (
                WorkspaceState {
                    phase: "Failed".into(),
                    last_stopped: Some(t(0)),
                    ..Default::default()
                },
                Decision::Skip("not stopped"),
            ),
            (stopped(None, None, 0), Decision::Skip("never ran")),
            (stopped(Some(t(0)), None, 0), Decision::Backup),
            (
                stopped(Some(t(10)), Some((t(5), true)), 0),
                Decision::Backup,
            ),
            (
                stopped(Some(t(5)), Some((t(10), true)), 0),
                Decision::Skip("unchanged since the last backup"),
            ),
            (
                stopped(Some(t(0)), Some((t(99), false)), 1),
                Decision::Skip("backing off after a failure"),
            ),
            (
                stopped(Some(t(0)), Some((t(98), false)), 1),
                Decision::Backup,
            ),
            (
                stopped(Some(t(0)), Some((t(92), false)), 4),
                Decision::Skip("backing off after a failure"),
            ),
            (
                stopped(Some(t(0)), Some((t(91), false)), 4),
                Decision::Backup,
            ),
            (
                stopped(Some(t(0)), Some((t(40), false)), 30),
                Decision::Skip("backing off after a failure"),
            ),
            (
                stopped(Some(t(0)), Some((t(35), false)), 30),
                Decision::Backup,
            ),
            (
                WorkspaceState {
                    job_running: true,
                    ..stopped(Some(t(0)), None, 0)
                },
                Decision::Skip("a backup job is already running"),
            ),
        ];
        for (i, (ws, want)) in cases.into_iter().enumerate() {
            assert_eq!(decide(&ws, t(99)), want, "case {i}: {ws:?}");
        }
    }

    #[test]
    fn error_annotation_is_capped_like_upstream() {
        assert_eq!(error_annotation("short"), "short");
        let long = "x".repeat(2000);
        let cut = error_annotation(&long);
        assert_eq!(cut.len(), 1024);
        assert!(cut.ends_with("..."));
    }

    #[test]
    fn backup_reference_follows_the_dwo_convention() {
        assert_eq!(
            backup_reference("quay.io/org/", "ns", "ws")
                .unwrap()
                .to_string(),
            "quay.io/org/ns/ws:latest"
        );
        assert!(backup_reference("quay.io/org", "NS", "ws").is_err());
    }
}
