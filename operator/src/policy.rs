//! The `BackupPolicy` custom resource (`wsr.dev/v1alpha1`, cluster-scoped): what to back up,
//! when, where to, and how the backup Jobs look. Its schema is generated from these types.

use k8s_openapi::api::core::v1::{PodSecurityContext, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Upstream's default schedule (`0 0 1 * *`, monthly) is kept for `import-dwoc`; a new policy
/// without a schedule backs up daily at 01:00, which is what upstream's documentation promises.
pub const DEFAULT_SCHEDULE: &str = "0 1 * * *";
pub use wsr_workload::names::{DEFAULT_COMMON_PVC, DEFAULT_IMAGE};

/// A backup policy: the schedule and trigger, the registry, retention, and the shape of the
/// backup Jobs for every DevWorkspace its selectors match.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wsr.dev",
    version = "v1alpha1",
    kind = "BackupPolicy",
    plural = "backuppolicies",
    shortname = "wsrbp",
    status = "BackupPolicyStatus",
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Trigger","type":"string","jsonPath":".spec.trigger"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Last run","type":"date","jsonPath":".status.lastRunTime"}"#,
    printcolumn = r#"{"name":"Next run","type":"date","jsonPath":".status.nextRunTime"}"#,
    printcolumn = r#"{"name":"Drill passed","type":"boolean","jsonPath":".status.drill.lastResult.passed","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicySpec {
    /// Five-field cron schedule, as CronJobs take it (`@hourly`, `@daily`... also work).
    #[serde(default = "default_schedule")]
    #[schemars(regex(
        pattern = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|\S+\s+\S+\s+\S+\s+\S+\s+\S+)$"
    ))]
    pub schedule: String,
    /// IANA time zone the schedule is evaluated in (default UTC), like CronJob `timeZone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    /// Stop creating Jobs (results of running Jobs are still recorded).
    #[serde(default)]
    pub suspend: bool,
    /// `schedule`: back up at schedule times only. `onStop`: also back up a workspace
    /// `onStopDelaySeconds` after it stops (a restart within the delay cancels it); the
    /// schedule stays as the safety net.
    #[serde(default)]
    pub trigger: Trigger,
    /// Delay between a workspace stopping and its onStop backup.
    #[serde(default = "default_on_stop_delay")]
    #[schemars(range(min = 0, max = 86400))]
    pub on_stop_delay_seconds: u32,
    pub registry: RegistrySpec,
    /// Artifact format: `native` (incremental tar+zstd layers) or `dwo` (upstream's single tar.gz).
    #[serde(default)]
    pub format: ArtifactFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// At most this many backup Jobs run at once under this policy.
    #[serde(default = "default_max_concurrent_jobs")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_concurrent_jobs: u32,
    #[serde(default)]
    pub failure_backoff: FailureBackoff,
    /// Only namespaces with these labels (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Only DevWorkspaces with these labels (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_selector: Option<LabelSelector>,
    #[serde(default)]
    pub storage: StorageSpec,
    #[serde(default)]
    pub job_template: JobTemplate,
    /// A scheduled disaster-recovery drill of `registry.path` (none without this section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillSpec>,
}

fn default_schedule() -> String {
    DEFAULT_SCHEDULE.to_owned()
}
fn default_on_stop_delay() -> u32 {
    60
}
fn default_max_concurrent_jobs() -> u32 {
    10
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Trigger {
    #[default]
    Schedule,
    OnStop,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum ArtifactFormat {
    #[default]
    Native,
    Dwo,
}

impl ArtifactFormat {
    /// The `wsr-backup --format` value.
    pub fn flag(self) -> &'static str {
        match self {
            ArtifactFormat::Native => "native",
            ArtifactFormat::Dwo => "dwo",
        }
    }
}

/// Where backups go: `<path>/<namespace>/<workspace>`, tagged `latest` plus a time-stamped tag.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(self.plainHTTP && has(self.caSecret))").message("caSecret has no effect with plainHTTP"))]
pub struct RegistrySpec {
    /// `HOST[:PORT][/PREFIX]`, e.g. `quay.io/my-org` (a trailing `/` is ignored).
    #[schemars(regex(pattern = r"^[a-zA-Z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*/?$"))]
    #[schemars(length(min = 1, max = 255))]
    pub path: String,
    /// A `kubernetes.io/dockerconfigjson` Secret in the operator's namespace, copied into a
    /// workspace namespace as `devworkspace-backup-registry-auth` when that has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub auth_secret: Option<String>,
    /// Talk plain HTTP to the registry.
    #[serde(default, rename = "plainHTTP")]
    pub plain_http: bool,
    /// Skip TLS certificate verification.
    #[serde(default)]
    pub insecure: bool,
    /// A Secret in the workspace namespace whose `ca.crt` the Job trusts in addition to the
    /// system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub ca_secret: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Keep the newest N time-stamped backups of each workspace (`wsr-backup --keep`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub keep_last: Option<u32>,
}

/// Per-workspace exponential backoff after a failed backup: `initial`, doubling up to `max`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxSeconds >= self.initialSeconds").message("maxSeconds must be at least initialSeconds"))]
pub struct FailureBackoff {
    #[serde(default = "default_backoff_initial")]
    #[schemars(range(min = 1, max = 86400))]
    pub initial_seconds: u32,
    #[serde(default = "default_backoff_max")]
    #[schemars(range(min = 1, max = 604800))]
    pub max_seconds: u32,
}

fn default_backoff_initial() -> u32 {
    60
}
fn default_backoff_max() -> u32 {
    3600
}

impl Default for FailureBackoff {
    fn default() -> Self {
        FailureBackoff {
            initial_seconds: default_backoff_initial(),
            max_seconds: default_backoff_max(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Name of DWO's common (and per-user) PVC, DWOC `config.workspace.pvcName`.
    #[serde(default = "default_common_pvc")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(max = 253)
    )]
    pub common_pvc_name: String,
}

fn default_common_pvc() -> String {
    DEFAULT_COMMON_PVC.to_owned()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            common_pvc_name: default_common_pvc(),
        }
    }
}

/// Overrides for the backup Jobs. The pod always stays within the "restricted" Pod Security
/// Standard: a `podSecurityContext` that would leave it is refused.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(RESTRICTED_POD_SECURITY_RULE).message("podSecurityContext must keep the restricted profile: runAsNonRoot not false, runAsUser not 0, seccompProfile RuntimeDefault or Localhost"))]
pub struct JobTemplate {
    /// The recovery image (default `localhost/wsr-recovery:<operator version>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    /// How long finished Jobs are kept (default 86400). The result is recorded from the Job, so
    /// an operator that is down for longer than this loses that run's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Merged over the restricted defaults (e.g. `runAsUser`/`fsGroup` matching the
    /// workspaces' so the Job can read their files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security_context: Option<PodSecurityContext>,
}

/// A scheduled `wsr-restore drill` of every backup below `registry.path`: a Job in the operator
/// namespace (the recovery image, the hardened pod without any workspace volume, a scratch
/// emptyDir) whose result becomes an Event on the policy, metrics and `status.drill`. At most
/// one runs at a time per policy; `suspend` stops new ones too.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillSpec {
    /// Five-field cron schedule in the policy's `timeZone` (`@weekly`... also work).
    #[schemars(regex(
        pattern = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|\S+\s+\S+\s+\S+\s+\S+\s+\S+)$"
    ))]
    pub schedule: String,
    /// Backups older than this fail the drill as stale, e.g. `36h`, `7d`, `1d12h` (default: no
    /// limit), as `wsr-restore drill --max-age` takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+|([0-9]+[smhdw])+)$"), length(max = 32))]
    pub max_age: Option<String>,
    /// Only these namespaces below the registry path (default: every one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 100),
        inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))
    )]
    pub namespaces: Vec<String>,
    /// Drill every tag, not only `latest`.
    #[serde(default)]
    pub all_tags: bool,
    /// Backups restored at once (default 1: the most faithful restore times).
    #[serde(default = "default_drill_parallel")]
    #[schemars(range(min = 1, max = 16))]
    pub parallel: u32,
    /// The scratch emptyDir's `sizeLimit` (default `20Gi`): one restored backup per `parallel`
    /// must fit.
    #[serde(default = "default_scratch_size")]
    #[schemars(
        regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"),
        length(max = 32)
    )]
    pub scratch_size: String,
    /// A `kubernetes.io/dockerconfigjson` Secret in the operator namespace the drill reads
    /// with, e.g. pull-only credentials (default: `registry.authSecret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub auth_secret: Option<String>,
    /// Default 21600 (6 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    /// Passed drill Jobs kept after their result is recorded (default 3).
    #[serde(default = "default_successful_history")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_jobs_history_limit: u32,
    /// Failed drill Jobs kept after their result is recorded (default 1).
    #[serde(default = "default_failed_history")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_jobs_history_limit: u32,
}

fn default_drill_parallel() -> u32 {
    1
}
fn default_scratch_size() -> String {
    "20Gi".into()
}
fn default_successful_history() -> u32 {
    3
}
fn default_failed_history() -> u32 {
    1
}

/// CEL: the overrides may not leave the restricted Pod Security Standard.
const RESTRICTED_POD_SECURITY_RULE: &str = "!has(self.podSecurityContext) || \
((!has(self.podSecurityContext.runAsNonRoot) || self.podSecurityContext.runAsNonRoot) && \
(!has(self.podSecurityContext.runAsUser) || self.podSecurityContext.runAsUser != 0) && \
(!has(self.podSecurityContext.seccompProfile) || self.podSecurityContext.seccompProfile.type in ['RuntimeDefault', 'Localhost']))";

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// What the operator observed at its last run of this policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicyStatus {
    /// `Ready`: the policy is valid and scheduling (False with the reason when a value is
    /// invalid or the policy is suspended).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the operator last evaluated the workspaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_time: Option<String>,
    /// The next schedule time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_time: Option<String>,
    /// The `wsr.dev/run-now` annotation value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_now: Option<String>,
    /// Counts from the last run.
    #[serde(default)]
    pub counts: RunCounts,
    /// The drill's next time and last result (with `spec.drill`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillStatus>,
}

/// The scheduled drill as the operator last saw it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillStatus {
    /// The next schedule time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_time: Option<String>,
    /// The last drill Job the operator created (its result may not be in yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job: Option<String>,
    /// When that Job was created (RFC 3339); the schedule counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_start_time: Option<String>,
    /// The `wsr.dev/drill-now` annotation value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill_now: Option<String>,
    /// The newest finished drill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<DrillResult>,
}

/// One finished drill: its verdict, counts and reasons.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillResult {
    /// The drill Job (in the operator namespace).
    pub job: String,
    /// When it finished (RFC 3339).
    pub finish_time: String,
    /// Every backup restored, checked and within `maxAge`.
    pub passed: bool,
    /// Backups by status, from the drill's report (absent when the drill ended without one,
    /// e.g. the registry was unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<DrillCounts>,
    /// Age of the oldest backup drilled, in seconds (the worst recovery point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_backup_age_seconds: Option<u64>,
    /// The drill's summary: the failing backups with their reasons, or why the Job failed.
    pub message: String,
}

/// Backups of one drill by status (`wsr-restore drill`'s statuses).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillCounts {
    pub total: u32,
    pub ok: u32,
    pub stale: u32,
    pub corrupt: u32,
    pub missing_blob: u32,
    pub unreadable: u32,
    pub auth_denied: u32,
}

/// Workspaces by outcome at the last run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunCounts {
    /// Workspaces the selectors match.
    pub selected: u32,
    /// Jobs created at this run.
    pub started: u32,
    /// Jobs still running.
    pub running: u32,
    /// Eligible, but waiting for a free slot (`maxConcurrentJobs`).
    pub deferred: u32,
    /// Not due, with the reason as key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped: BTreeMap<String, u32>,
    /// Results recorded at this run.
    pub succeeded: u32,
    pub failed: u32,
}

/// The CRD as YAML, as `wsr-operator crd` prints it and `deploy/crd.yaml` holds it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    serde_saphyr::to_string(&BackupPolicy::crd()).expect("the CRD serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn committed_crd_matches_the_types() {
        let generated = crd_yaml();
        let committed = include_str!("../deploy/crd.yaml");
        assert!(
            generated == committed,
            "operator/deploy/crd.yaml is stale: run `cargo run -p wsr-operator -- crd > operator/deploy/crd.yaml`"
        );
    }

    #[test]
    fn defaults_fill_a_minimal_policy() {
        let spec: BackupPolicySpec =
            serde_json::from_value(serde_json::json!({"registry": {"path": "r.example/org"}}))
                .unwrap();
        assert_eq!(spec.schedule, DEFAULT_SCHEDULE);
        assert_eq!(spec.trigger, Trigger::Schedule);
        assert_eq!(spec.on_stop_delay_seconds, 60);
        assert_eq!(spec.max_concurrent_jobs, 10);
        assert_eq!(spec.failure_backoff, FailureBackoff::default());
        assert_eq!(spec.storage.common_pvc_name, "claim-devworkspace");
        assert_eq!(spec.format, ArtifactFormat::Native);
    }

    #[test]
    fn crd_is_cluster_scoped_and_carries_cel_rules() {
        let crd = BackupPolicy::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        let json = serde_json::to_string(&crd).unwrap();
        assert!(json.contains("self.maxSeconds >= self.initialSeconds"));
        assert!(json.contains("x-kubernetes-validations"));
    }
}
