//! The backup Job: upstream's name prefix, labels and owner reference, the hardened pod from
//! [`crate::workload::pod`], and `wsr-backup` with explicit arguments (not the env contract).

use crate::devworkspace::DevWorkspace;
use crate::names::{JOB_NAME_PREFIX, REGISTRY_AUTH_SECRET, label, wsr_annotation};
use crate::policy::{BackupPolicySpec, DEFAULT_IMAGE};
use crate::workload::pod::{PROJECTS_MOUNT, PodOptions, hardened_pod_spec, run_once_job_spec};
use crate::workload::registry::RegistryAccess;
use crate::workload::storage::WorkspaceVolume;
use k8s_openapi::api::batch::v1::Job;
use kube::Resource;
use kube::api::ObjectMeta;
use std::collections::BTreeMap;

pub const CONTAINER: &str = "backup-workspace";
const DEFAULT_DEADLINE_SECONDS: i64 = 3600;
const DEFAULT_TTL_SECONDS: i32 = 86400;

/// Annotation on the Job: the reference it pushes to.
pub const JOB_REFERENCE_ANNOTATION: &str = "wsr.dev/reference";

/// One workspace's backup Job, as decided by a run.
pub struct BackupJob<'a> {
    pub workspace: &'a DevWorkspace,
    pub workspace_id: &'a str,
    pub policy_name: &'a str,
    pub policy: &'a BackupPolicySpec,
    pub volume: &'a WorkspaceVolume,
    /// `devworkspace-backup-registry-auth` exists (or was copied) in the namespace.
    pub auth_secret: bool,
    /// The node of a running pod holding the same single-node PVC.
    pub node: Option<String>,
}

impl BackupJob<'_> {
    /// The `wsr-backup` command line.
    pub fn command(&self) -> Vec<String> {
        let ws = self.workspace;
        let registry = &self.policy.registry;
        let mut args: Vec<String> = vec![
            "/usr/local/bin/wsr-backup".into(),
            "--json".into(),
            "--source".into(),
            PROJECTS_MOUNT.into(),
            "--registry".into(),
            registry.path.clone(),
            "--namespace".into(),
            ws.metadata.namespace.clone().unwrap_or_default(),
            "--workspace".into(),
            ws.metadata.name.clone().unwrap_or_default(),
            "--workspace-id".into(),
            self.workspace_id.into(),
            "--format".into(),
            self.policy.format.flag().into(),
        ];
        if let Some(keep) = self.policy.retention.as_ref().and_then(|r| r.keep_last) {
            args.extend(["--keep".into(), keep.to_string()]);
        }
        args.extend(self.registry_access().args());
        args
    }

    fn registry_access(&self) -> RegistryAccess {
        let registry = &self.policy.registry;
        RegistryAccess {
            plain_http: registry.plain_http,
            insecure: registry.insecure,
            auth_secret: self.auth_secret.then(|| REGISTRY_AUTH_SECRET.into()),
            ca_secret: registry.ca_secret.clone(),
        }
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (label::BACKUP_JOB.into(), "true".into()),
            (
                label::DEVWORKSPACE_NAME.into(),
                self.workspace.metadata.name.clone().unwrap_or_default(),
            ),
            (label::DEVWORKSPACE_ID.into(), self.workspace_id.into()),
            (label::POLICY.into(), self.policy_name.into()),
        ])
    }

    fn pod_options(&self) -> PodOptions {
        let t = &self.policy.job_template;
        PodOptions {
            image: t.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into()),
            image_pull_policy: t.image_pull_policy.map(|p| p.as_str().into()),
            resources: t.resources.clone(),
            tolerations: t.tolerations.clone(),
            node_selector: t.node_selector.clone(),
            pod_security_context: t.pod_security_context.clone(),
            node: self.node.clone(),
        }
    }

    /// The Job object to create (`generateName`, so the API server names it).
    pub fn build(&self, reference: &str) -> Job {
        let t = &self.policy.job_template;
        let labels = self.labels();
        let pod = hardened_pod_spec(
            CONTAINER,
            self.command(),
            self.volume,
            false,
            &self.registry_access().secrets(),
            &self.pod_options(),
        );
        Job {
            metadata: ObjectMeta {
                generate_name: Some(JOB_NAME_PREFIX.into()),
                namespace: self.workspace.metadata.namespace.clone(),
                labels: Some(labels.clone()),
                annotations: Some(BTreeMap::from([(
                    JOB_REFERENCE_ANNOTATION.into(),
                    reference.into(),
                )])),
                owner_references: self.workspace.controller_owner_ref(&()).map(|mut o| {
                    // blockOwnerDeletion would need `update` on devworkspaces/finalizers.
                    o.block_owner_deletion = None;
                    vec![o]
                }),
                ..Default::default()
            },
            spec: Some(run_once_job_spec(
                pod,
                labels,
                t.active_deadline_seconds
                    .unwrap_or(DEFAULT_DEADLINE_SECONDS),
                t.ttl_seconds_after_finished.unwrap_or(DEFAULT_TTL_SECONDS),
            )),
            status: None,
        }
    }
}

/// The annotation a successful result wrote last, so a re-read Job is not recorded twice.
pub fn recorded_job(ws: &DevWorkspace) -> Option<&str> {
    ws.metadata
        .annotations
        .as_ref()?
        .get(wsr_annotation::LAST_BACKUP_JOB)
        .map(String::as_str)
}

/// Compares a Job built by a test with `src/testdata/<file>`. After an intended change,
/// regenerate with `WSR_BLESS=1 cargo test -p wsr-operator`, then review the diff.
#[cfg(test)]
pub(crate) fn assert_matches_golden(job: &Job, file: &str) {
    let yaml = serde_saphyr::to_string(job).unwrap();
    let path = format!("{}/src/testdata/{file}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("WSR_BLESS").is_some() {
        std::fs::write(&path, &yaml).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap();
    assert!(yaml == golden, "Job spec changed ({file}):\n{yaml}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devworkspace::fixtures::workspace;
    use crate::policy::{JobTemplate, Retention};
    use crate::workload::pod::{openshift_restricted_v2_violations, restricted_violations};
    use k8s_openapi::api::core::v1::Toleration;

    fn policy() -> BackupPolicySpec {
        let mut spec: BackupPolicySpec = serde_json::from_value(serde_json::json!({
            "registry": {"path": "registry.example:5000/backups", "authSecret": "quay-push",
                         "caSecret": "registry-ca"},
            "retention": {"keepLast": 7}
        }))
        .unwrap();
        spec.job_template = JobTemplate {
            image: Some("quay.example/wsr/wsr-recovery:1.2.3".into()),
            tolerations: vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Equal".into()),
                value: Some("backup".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }],
            node_selector: BTreeMap::from([("disk".into(), "ssd".into())]),
            ..Default::default()
        };
        spec.retention = Some(Retention { keep_last: Some(7) });
        spec
    }

    fn job() -> Job {
        let ws = workspace("user1", "my-ws", "workspace0123456789abcdef", "Stopped");
        let volume = WorkspaceVolume {
            claim: "claim-devworkspace".into(),
            sub_path: "workspace0123456789abcdef/projects".into(),
            shared: true,
            single_node: true,
        };
        let policy = policy();
        BackupJob {
            workspace: &ws,
            workspace_id: "workspace0123456789abcdef",
            policy_name: "nightly",
            policy: &policy,
            volume: &volume,
            auth_secret: true,
            node: Some("node-a".into()),
        }
        .build("registry.example:5000/backups/user1/my-ws:latest")
    }

    /// The exact Job, compared with `testdata/backup-job.yaml`.
    #[test]
    fn golden_backup_job() {
        assert_matches_golden(&job(), "backup-job.yaml");
    }

    #[test]
    fn the_backup_pod_passes_the_restricted_profile_and_restricted_v2() {
        let job = job();
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(restricted_violations(&pod), Vec::<String>::new());
        assert_eq!(
            openshift_restricted_v2_violations(&pod),
            Vec::<String>::new()
        );
    }

    /// The drill Job docs/DRILL.md shows for running the drill by hand (the operator's own
    /// drill Job is checked in `drill.rs`).
    #[test]
    fn the_documented_drill_job_passes_the_restricted_profile_and_restricted_v2() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/DRILL.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let start = doc
            .find("```yaml\napiVersion: batch/v1\nkind: Job")
            .expect("the Job");
        let body = &doc[start + "```yaml\n".len()..];
        let yaml = &body[..body.find("```").unwrap()];
        let job: Job = serde_saphyr::from_str(yaml).expect("a Job");
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.containers[0].name, "drill");
        assert_eq!(restricted_violations(&pod), Vec::<String>::new());
        assert_eq!(
            openshift_restricted_v2_violations(&pod),
            Vec::<String>::new()
        );
    }

    #[test]
    fn upstream_labels_prefix_and_owner() {
        let job = job();
        assert_eq!(
            job.metadata.generate_name.as_deref(),
            Some("devworkspace-backup-")
        );
        let labels = job.metadata.labels.unwrap();
        assert_eq!(labels["controller.devfile.io/backup-job"], "true");
        assert_eq!(labels["controller.devfile.io/devworkspace_name"], "my-ws");
        assert_eq!(
            labels["controller.devfile.io/devworkspace_id"],
            "workspace0123456789abcdef"
        );
        let owner = &job.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("DevWorkspace", "my-ws", Some(true))
        );
    }
}
