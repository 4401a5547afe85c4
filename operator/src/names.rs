//! Names shared with upstream DWO and the Che dashboard (kept exactly), and wsr's own.

/// DevWorkspace annotations the Che dashboard reads (upstream names, kept exactly).
pub mod annotation {
    pub const LAST_BACKUP_SUCCESSFUL: &str = "controller.devfile.io/last-backup-successful";
    pub const LAST_BACKUP_FINISHED_AT: &str = "controller.devfile.io/last-backup-finished-at";
    pub const LAST_BACKUP_ERROR: &str = "controller.devfile.io/last-backup-error";
}

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
    /// On a BackupPolicy: set to any new value to run the policy now.
    pub const RUN_NOW: &str = "wsr.dev/run-now";
}

/// Labels on backup Jobs and their pods (the dashboard lists in-progress backups by them).
pub mod label {
    pub const BACKUP_JOB: &str = "controller.devfile.io/backup-job";
    pub const DEVWORKSPACE_NAME: &str = "controller.devfile.io/devworkspace_name";
    pub const DEVWORKSPACE_ID: &str = "controller.devfile.io/devworkspace_id";
    /// The BackupPolicy that created the Job.
    pub const POLICY: &str = "wsr.dev/policy";
    /// Upstream's label on Secrets its cache may see.
    pub const WATCH_SECRET: &str = "controller.devfile.io/watch-secret";
}

/// Upstream's Job name prefix (`generateName`).
pub const JOB_NAME_PREFIX: &str = "devworkspace-backup-";
/// Upstream's per-namespace registry credentials Secret.
pub const REGISTRY_AUTH_SECRET: &str = "devworkspace-backup-registry-auth";
/// The legacy Che common PVC, preferred when it exists (as DWO's common provisioner does).
pub const LEGACY_COMMON_PVC: &str = "claim-che-workspace";
/// Field manager and event reporter name.
pub const MANAGER: &str = "wsr-operator";
