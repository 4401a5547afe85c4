//! Upstream DWO names that both wsr binaries which create Jobs need (kept exactly).

/// DevWorkspace annotations the Che dashboard reads (upstream names, kept exactly).
pub mod annotation {
    pub const LAST_BACKUP_SUCCESSFUL: &str = "controller.devfile.io/last-backup-successful";
    pub const LAST_BACKUP_FINISHED_AT: &str = "controller.devfile.io/last-backup-finished-at";
    pub const LAST_BACKUP_ERROR: &str = "controller.devfile.io/last-backup-error";
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
