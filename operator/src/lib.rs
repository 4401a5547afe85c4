//! wsr-operator: the kube-rs controller that backs up stopped DevWorkspaces.
//!
//! It owns the `BackupPolicy` custom resource ([`policy`]), the pure decisions of a run
//! (eligibility, schedule, storage mapping, planning: [`eligibility`], [`schedule`],
//! [`workload::storage`], [`plan`]), the backup Job ([`job`], on the hardened pod of
//! [`workload::pod`]), reading finished Jobs back into DevWorkspace annotations ([`results`]),
//! recording successful restores from their pods' reports ([`restored`]), and the controller
//! that ties them to the API server ([`controller`]); the scheduled restore drill of a
//! policy's registry path ([`drill`]). Around it, for
//! production: leader election on a Lease ([`leader`]), Prometheus metrics ([`metrics`],
//! telemetry only, never read by the controller) and the health and metrics listener
//! ([`serve`]).
//!
//! It must not link the backup or restore engines or the transport: the Jobs run the recovery
//! image with `wsr-backup`. From `wsr-format` it uses names and references only. It writes
//! only what upstream DWO's consumers expect (annotations, Job labels, the auth Secret), never
//! DWO's own resources beyond annotations.

pub mod bench;
pub mod controller;
pub mod devworkspace;
pub mod drill;
pub mod dwoc;
pub mod eligibility;
pub mod job;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod plan;
pub mod policy;
pub mod restored;
pub mod results;
pub mod schedule;
pub mod serve;
pub mod snapshot;

pub use names::{annotation, label};
use wsr_format::reference::{
    InvalidReference, Reference, parse_registry_path, workspace_reference,
};
/// PVC resolution and the hardened pod, shared with `wsr-restore --in-cluster`.
pub use wsr_workload as workload;

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

#[cfg(test)]
mod tests {
    use super::*;

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
