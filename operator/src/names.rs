//! Names shared with upstream DWO and the Che dashboard (kept exactly), and wsr's own. The
//! upstream names a restore Job needs too live in `wsr_workload::names` and are re-exported.

pub use wsr_workload::names::{LEGACY_COMMON_PVC, REGISTRY_AUTH_SECRET, annotation, label};

/// wsr's own DevWorkspace annotations, next to upstream's.
pub mod wsr_annotation {
    /// `repository@digest` of the last successful backup.
    pub const LAST_BACKUP_REFERENCE: &str = "wsr.dev/last-backup-reference";
    /// Manifest digest of the last successful backup.
    pub const LAST_BACKUP_DIGEST: &str = "wsr.dev/last-backup-digest";
    /// Consecutive failed backups (drives the backoff); removed on success.
    pub const FAILURES: &str = "wsr.dev/backup-failures";
    /// The Job whose result the annotations hold, so a result is recorded once.
    pub const LAST_BACKUP_JOB: &str = "wsr.dev/last-backup-job";
    /// `repository@sha256:…` of the last successful complete restore into the workspace.
    pub const RESTORED_FROM: &str = "wsr.dev/restored-from";
    /// When that restore finished (its container's finish time, RFC 3339).
    pub const RESTORED_AT: &str = "wsr.dev/restored-at";
    /// What restored it: `job/<restore Job>` or `pod/<workspace pod>` (the init container).
    pub const RESTORED_BY: &str = "wsr.dev/restored-by";
    /// On a BackupPolicy: set to any new value to run the policy now.
    pub const RUN_NOW: &str = "wsr.dev/run-now";
    /// On a BackupPolicy with `spec.drill`: set to any new value to run the drill now.
    pub const DRILL_NOW: &str = "wsr.dev/drill-now";
}

/// Upstream's Job name prefix (`generateName`).
pub const JOB_NAME_PREFIX: &str = "devworkspace-backup-";
/// Field manager and event reporter name.
pub const MANAGER: &str = "wsr-operator";
