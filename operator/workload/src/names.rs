//! Names both wsr binaries that create Jobs need: upstream DWO's (kept exactly) and wsr's own
//! DevWorkspace annotations, which the operator writes and `wsr-restore` reads.

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

/// Upstream's per-namespace registry credentials Secret.
pub const REGISTRY_AUTH_SECRET: &str = "devworkspace-backup-registry-auth";
/// DWO's common PVC name (DWOC `config.workspace.pvcName` default).
pub const DEFAULT_COMMON_PVC: &str = "claim-devworkspace";
/// The recovery image wsr's Jobs run unless told otherwise (`images/build.sh` tags it).
pub const DEFAULT_IMAGE: &str = concat!("localhost/wsr-recovery:", env!("CARGO_PKG_VERSION"));
/// The legacy Che common PVC, preferred when it exists (as DWO's common provisioner does).
pub const LEGACY_COMMON_PVC: &str = "claim-che-workspace";
