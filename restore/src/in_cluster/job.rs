//! The restore Job: the operator's hardened pod (from `wsr-workload`) with the workspace's sub
//! path mounted read-write, running `wsr-restore` into `/projects`. Pure: builds the object only.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::collections::BTreeMap;
use wsr_workload::names::label;
use wsr_workload::pod::{PROJECTS_MOUNT, PodOptions, hardened_pod_spec, run_once_job_spec};
pub use wsr_workload::registry::RegistryAccess;
use wsr_workload::storage::WorkspaceVolume;

pub use wsr_workload::restored::{JOB_CONTAINER as CONTAINER, RESTORE_JOB_LABEL};
/// `generateName` of restore Jobs (next to upstream's `devworkspace-backup-`).
pub const JOB_NAME_PREFIX: &str = "devworkspace-restore-";
/// Annotation on the Job: the reference it restores.
pub const REFERENCE_ANNOTATION: &str = "wsr.dev/reference";
const DEADLINE_SECONDS: i64 = 3600;
const TTL_SECONDS: i32 = 86400;

/// One restore Job, as decided from the workspace and the flags.
pub struct RestoreJob<'a> {
    pub namespace: &'a str,
    pub workspace: &'a str,
    pub workspace_id: &'a str,
    /// The DevWorkspace, so the Job is garbage-collected with it.
    pub owner: Option<OwnerReference>,
    pub reference: &'a str,
    pub volume: &'a WorkspaceVolume,
    /// Move existing content aside (inside `/projects`, a mount point) instead of refusing.
    pub force: bool,
    pub registry: &'a RegistryAccess,
    pub pod: &'a PodOptions,
}

impl RestoreJob<'_> {
    /// The `wsr-restore` command line run in the pod.
    pub fn command(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "/usr/local/bin/wsr-restore",
            "--from",
            self.reference,
            "--to",
            PROJECTS_MOUNT,
        ]
        .map(String::from)
        .to_vec();
        if self.force {
            args.push("--force".into());
        }
        args.extend(self.registry.args());
        args
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (RESTORE_JOB_LABEL.into(), "true".into()),
            (label::DEVWORKSPACE_NAME.into(), self.workspace.into()),
            (label::DEVWORKSPACE_ID.into(), self.workspace_id.into()),
        ])
    }

    /// The Job to create (`generateName`: the API server names it).
    pub fn build(&self) -> Job {
        let labels = self.labels();
        let pod = hardened_pod_spec(
            CONTAINER,
            self.command(),
            self.volume,
            true,
            &self.registry.secrets(),
            self.pod,
        );
        Job {
            metadata: ObjectMeta {
                generate_name: Some(JOB_NAME_PREFIX.into()),
                namespace: Some(self.namespace.into()),
                labels: Some(labels.clone()),
                annotations: Some(BTreeMap::from([(
                    REFERENCE_ANNOTATION.into(),
                    self.reference.into(),
                )])),
                owner_references: self.owner.clone().map(|o| vec![o]),
                ..Default::default()
            },
            spec: Some(run_once_job_spec(
                pod,
                labels,
                DEADLINE_SECONDS,
                TTL_SECONDS,
            )),
            status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSecurityContext;
    use wsr_workload::names::REGISTRY_AUTH_SECRET;
    use wsr_workload::pod::{openshift_restricted_v2_violations, restricted_violations};

    fn golden_job() -> Job {
        let volume = WorkspaceVolume {
            claim: "claim-devworkspace".into(),
            sub_path: "workspace7f3c1e2a9b8d4c05/projects".into(),
            shared: true,
            single_node: true,
        };
        let registry = RegistryAccess {
            plain_http: false,
            insecure: false,
            auth_secret: Some(REGISTRY_AUTH_SECRET.into()),
            ca_secret: Some("registry-ca".into()),
        };
        let pod = PodOptions {
            image: "quay.example/wsr/wsr-recovery:1.2.3".into(),
            image_pull_policy: Some("IfNotPresent".into()),
            pod_security_context: Some(PodSecurityContext {
                fs_group: Some(1234),
                ..Default::default()
            }),
            ..Default::default()
        };
        let owner = OwnerReference {
            api_version: "workspace.devfile.io/v1alpha2".into(),
            kind: "DevWorkspace".into(),
            name: "my-workspace".into(),
            uid: "5f0e6c1a-0000-4c2b-9d4e-000000000001".into(),
            controller: Some(true),
            block_owner_deletion: None,
        };
        RestoreJob {
            namespace: "jdoe-devspaces",
            workspace: "my-workspace",
            workspace_id: "workspace7f3c1e2a9b8d4c05",
            owner: Some(owner),
            reference: "registry.example:5000/backups/jdoe-devspaces/my-workspace@sha256:\
                        0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            volume: &volume,
            force: true,
            registry: &registry,
            pod: &pod,
        }
        .build()
    }

    /// The exact Job, field by field. Regenerate with `WSR_BLESS=1` after an intended change
    /// and review the diff.
    #[test]
    fn the_restore_job_matches_the_golden_file() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/in_cluster/testdata/restore-job.json"
        );
        let actual = serde_json::to_string_pretty(&golden_job()).unwrap() + "\n";
        if std::env::var_os("WSR_BLESS").is_some() {
            std::fs::write(path, &actual).unwrap();
        }
        let expected = std::fs::read_to_string(path).unwrap();
        assert_eq!(actual, expected, "restore Job differs from {path}");
    }

    /// Without overrides the restore pod passes restricted-v2; the golden Job's `fsGroup`
    /// override (for clusters that need it) is exactly what restricted-v2 refuses.
    #[test]
    fn the_restore_pod_passes_restricted_v2_unless_overridden() {
        let job = golden_job();
        let mut pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            openshift_restricted_v2_violations(&pod),
            ["pod fsGroup is set (MustRunAs assigns it)"]
        );
        pod.security_context.as_mut().unwrap().fs_group = None;
        assert_eq!(
            openshift_restricted_v2_violations(&pod),
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_restore_pod_is_restricted_and_mounts_only_the_sub_path_read_write() {
        let job = golden_job();
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(restricted_violations(&pod), Vec::<String>::new());
        let mount = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (
                mount.mount_path.as_str(),
                mount.sub_path.as_deref(),
                mount.read_only
            ),
            (
                "/projects",
                Some("workspace7f3c1e2a9b8d4c05/projects"),
                Some(false)
            )
        );
        let claim = pod.volumes.as_ref().unwrap()[0]
            .persistent_volume_claim
            .as_ref()
            .unwrap();
        assert_eq!(claim.read_only, Some(false));
        assert_eq!(pod.automount_service_account_token, Some(false));
    }
}
