//! The scheduled disaster-recovery drill of a policy (`spec.drill`): a Job in the operator
//! namespace runs `wsr-restore drill --json` from the recovery image on the hardened pod (no
//! workspace volume, a scratch emptyDir, the registry credentials mounted read-only). Its
//! result is read from the pod's termination message (the compact summary `wsr-restore drill
//! --json` writes there) into an Event on the policy (`DrillPassed` / `DrillFailed`), the
//! `wsr_drill_*` metrics and `status.drill`. At most one drill Job runs per policy; finished
//! ones beyond the history limits are deleted once their result is recorded.
//!
//! The pure parts (the Job, the summary, when a drill is due, which Jobs to delete) are
//! unit-tested here; [`run`] ties them to the API server, like the backup run in
//! [`crate::controller`], level-based from the watch caches and `status.drill`.

use crate::controller::{Context, Error, chain, publish_event};
use crate::metrics::{DrillResultLabels, PolicyLabel};
use crate::names::{label, wsr_annotation};
use crate::policy::{
    BackupPolicy, BackupPolicySpec, DEFAULT_IMAGE, DrillCounts, DrillResult, DrillSpec, DrillStatus,
};
use crate::results::{self, to_chrono};
use crate::schedule::Schedule;
use crate::workload::pod::{PodOptions, run_once_job_spec, scratch_pod_spec};
use crate::workload::registry::RegistryAccess;
use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// The drill container's name.
pub const CONTAINER: &str = "drill";
/// Label on drill Jobs and their pods (with [`label::POLICY`]).
pub const DRILL_LABEL: &str = "wsr.dev/drill";
const SCRATCH: &str = "/scratch";
const DEFAULT_DEADLINE_SECONDS: i64 = 6 * 3600;
/// Finished drill Jobs are deleted by the history limits; the TTL is the backstop (a week).
const TTL_SECONDS: i32 = 7 * 86_400;
/// A finished Job whose pod has not shown its termination message yet is waited for this
/// long (the pod cache can lag behind the Job cache) before its result is recorded without it.
const POD_LAG: chrono::Duration = chrono::Duration::seconds(15);
/// A drill Job that could not be created is tried again after this long.
const RETRY: chrono::Duration = chrono::Duration::seconds(30);

/// What the controller remembers across runs about drill Jobs, to cover the caches' lag
/// behind its own writes (as for backup Jobs).
#[derive(Default)]
pub struct Memory {
    /// Policy to (Job name, creation time) of drill Jobs not yet in the Job cache.
    in_flight: Mutex<HashMap<String, (String, DateTime<Utc>)>>,
    /// Drill Jobs whose result was recorded, in case the policy cache lags the status write.
    recorded: Mutex<HashSet<String>>,
}

/// One policy's drill Job.
pub struct DrillJob<'a> {
    pub policy_name: &'a str,
    pub policy: &'a BackupPolicySpec,
    pub drill: &'a DrillSpec,
    pub namespace: &'a str,
}

impl DrillJob<'_> {
    /// The Secret the drill reads the registry with: `drill.authSecret`, else the policy's.
    pub fn auth_secret(&self) -> Option<&str> {
        self.drill
            .auth_secret
            .as_deref()
            .or(self.policy.registry.auth_secret.as_deref())
    }

    /// The `wsr-restore drill` command line.
    pub fn command(&self) -> Vec<String> {
        let registry = &self.policy.registry;
        let mut args: Vec<String> = vec![
            "/usr/local/bin/wsr-restore".into(),
            "drill".into(),
            "--registry".into(),
            registry.path.clone(),
        ];
        for ns in &self.drill.namespaces {
            args.extend(["--namespace".into(), ns.clone()]);
        }
        if self.drill.all_tags {
            args.push("--all-tags".into());
        }
        args.extend(["--parallel".into(), self.drill.parallel.to_string()]);
        if let Some(max_age) = &self.drill.max_age {
            args.extend(["--max-age".into(), max_age.clone()]);
        }
        args.extend([
            "--scratch".into(),
            SCRATCH.into(),
            "--json".into(),
            "--progress".into(),
            "never".into(),
        ]);
        args.extend(self.registry_access().args());
        args
    }

    /// The registry connection: the policy's, logging in with [`Self::auth_secret`].
    pub fn registry_access(&self) -> RegistryAccess {
        let registry = &self.policy.registry;
        RegistryAccess {
            plain_http: registry.plain_http,
            insecure: registry.insecure,
            auth_secret: self.auth_secret().map(String::from),
            ca_secret: registry.ca_secret.clone(),
        }
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (DRILL_LABEL.into(), "true".into()),
            (label::POLICY.into(), self.policy_name.into()),
        ])
    }

    /// The Job (`generateName`), owned by the policy so that deleting the policy deletes it.
    /// The pod takes the policy's image, pull policy, resources, tolerations and node
    /// selector, but not its `podSecurityContext` (that is for reading workspace files): so it
    /// also meets OpenShift's restricted-v2.
    pub fn build(
        &self,
        owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    ) -> Job {
        let t = &self.policy.job_template;
        let options = PodOptions {
            image: t.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into()),
            image_pull_policy: t.image_pull_policy.map(|p| p.as_str().into()),
            resources: t.resources.clone(),
            tolerations: t.tolerations.clone(),
            node_selector: t.node_selector.clone(),
            pod_security_context: None,
            node: None,
        };
        let pod = scratch_pod_spec(
            CONTAINER,
            self.command(),
            SCRATCH,
            &self.drill.scratch_size,
            &self.registry_access().secrets(),
            &options,
        );
        let labels = self.labels();
        Job {
            metadata: ObjectMeta {
                generate_name: Some(format!("wsr-drill-{}-", self.policy_name)),
                namespace: Some(self.namespace.into()),
                labels: Some(labels.clone()),
                owner_references: owner.map(|mut o| {
                    // blockOwnerDeletion would need `update` on backuppolicies/finalizers.
                    o.block_owner_deletion = None;
                    vec![o]
                }),
                ..Default::default()
            },
            spec: Some(run_once_job_spec(
                pod,
                labels,
                self.drill
                    .active_deadline_seconds
                    .unwrap_or(DEFAULT_DEADLINE_SECONDS),
                TTL_SECONDS,
            )),
            status: None,
        }
    }
}

/// The summary `wsr-restore drill --json` leaves as its termination message (docs/DRILL.md).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Summary {
    pub passed: bool,
    pub summary: Counts,
    #[serde(default)]
    pub oldest_age_s: Option<u64>,
    #[serde(default)]
    pub max_age_s: Option<u64>,
    #[serde(default)]
    pub failures: Vec<Failure>,
    #[serde(default)]
    pub failures_omitted: u64,
}

/// Backups by status, as the drill's report counts them.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub total: u32,
    pub ok: u32,
    pub failed: u32,
    pub stale: u32,
    pub corrupt: u32,
    pub missing_blob: u32,
    pub unreadable: u32,
    pub auth_denied: u32,
}

/// One failing backup of the summary.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Failure {
    pub backup: String,
    pub status: String,
    pub reason: String,
}

impl Counts {
    /// `(status label, count)` for every status, as the `wsr_drill_backups` series names them.
    pub fn by_status(&self) -> [(&'static str, u32); 6] {
        [
            ("ok", self.ok),
            ("stale", self.stale),
            ("corrupt", self.corrupt),
            ("missing_blob", self.missing_blob),
            ("unreadable", self.unreadable),
            ("auth_denied", self.auth_denied),
        ]
    }
}

/// A finished drill Job's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub job: String,
    pub finished: DateTime<Utc>,
    pub passed: bool,
    /// The drill's summary, when its pod left one.
    pub summary: Option<Summary>,
    /// One line for people: counts and the failing backups with their reasons, or why the
    /// Job failed.
    pub message: String,
}

/// The outcome of a finished drill Job (`None` while it runs); `pod` is its pod if still there.
pub fn outcome(job: &Job, pod: Option<&Pod>) -> Option<Outcome> {
    let (complete, finished) = results::finished(job)?;
    let text = pod.and_then(|p| results::termination_message(p, CONTAINER));
    let summary = text.as_deref().and_then(|t| {
        t.lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Summary>(l.trim()).ok())
    });
    let (passed, message) = match (&summary, complete) {
        (Some(s), _) => (complete && s.passed, describe(s)),
        (None, true) => (true, "drill Job completed without a summary".to_owned()),
        (None, false) => (
            false,
            match text {
                Some(t) => format!("drill Job failed: {}", t.trim()),
                None => results::job_failure_reason(job, "drill"),
            },
        ),
    };
    Some(Outcome {
        job: job.name_any(),
        finished,
        passed,
        summary,
        message: crate::error_annotation(&message),
    })
}

/// `PASSED: 3 backups, all ok; oldest 5h` or `FAILED: 3 backups, 1 ok, 2 failed (1 stale,
/// 1 corrupt); oldest 3d (max age 1d): ns/ws:latest stale: …; ns/db:latest corrupt: …`.
pub fn describe(s: &Summary) -> String {
    let c = &s.summary;
    let mut text = if c.total == 0 {
        "FAILED: no backups found".to_owned()
    } else if s.passed {
        format!("PASSED: {} backups, all ok", c.total)
    } else {
        let parts: Vec<String> = c.by_status()[1..]
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(status, n)| format!("{n} {}", status.replace('_', " ")))
            .collect();
        format!(
            "FAILED: {} backups, {} ok, {} failed ({})",
            c.total,
            c.ok,
            c.failed,
            parts.join(", ")
        )
    };
    if let Some(oldest) = s.oldest_age_s {
        text.push_str(&format!("; oldest {}", human_age(oldest)));
        if let Some(max) = s.max_age_s {
            text.push_str(&format!(" (max age {})", human_age(max)));
        }
    }
    let failures: Vec<String> = s
        .failures
        .iter()
        .map(|f| format!("{} {}: {}", f.backup, f.status.replace('_', " "), f.reason))
        .collect();
    if !failures.is_empty() {
        text.push_str(": ");
        text.push_str(&failures.join("; "));
    }
    if s.failures_omitted > 0 {
        text.push_str(&format!("; {} more", s.failures_omitted));
    }
    text
}

/// `42s`, `17m`, `5h`, `3d 8h`.
fn human_age(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h", seconds / 3600),
        _ => match (seconds % 86_400) / 3600 {
            0 => format!("{}d", seconds / 86_400),
            h => format!("{}d {h}h", seconds / 86_400),
        },
    }
}

/// The status's record of a result.
pub fn result_status(o: &Outcome) -> DrillResult {
    DrillResult {
        job: o.job.clone(),
        finish_time: rfc3339(o.finished),
        passed: o.passed,
        backups: o.summary.as_ref().map(|s| DrillCounts {
            total: s.summary.total,
            ok: s.summary.ok,
            stale: s.summary.stale,
            corrupt: s.summary.corrupt,
            missing_blob: s.summary.missing_blob,
            unreadable: s.summary.unreadable,
            auth_denied: s.summary.auth_denied,
        }),
        oldest_backup_age_seconds: o.summary.as_ref().and_then(|s| s.oldest_age_s),
        message: o.message.clone(),
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// When the next drill is due: the first schedule time after the last drill started (or,
/// before the first drill, after the policy was created). Missed times while the operator was
/// down make one drill, not one per time.
pub fn next_due(
    schedule: &Schedule,
    last_start: Option<DateTime<Utc>>,
    policy_created: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    schedule.next_after(last_start.unwrap_or(policy_created))
}

/// The finished Jobs (newest first by finish time) beyond the history limits: `keep_passed`
/// Complete ones and `keep_failed` Failed ones stay.
pub fn beyond_history(jobs: &[Arc<Job>], keep_passed: u32, keep_failed: u32) -> Vec<String> {
    let mut finished: Vec<(DateTime<Utc>, bool, String)> = jobs
        .iter()
        .filter_map(|j| results::finished(j).map(|(ok, at)| (at, ok, j.name_any())))
        .collect();
    finished.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.cmp(&b.2)));
    let (mut passed, mut failed) = (0, 0);
    let mut delete = Vec::new();
    for (_, ok, name) in finished {
        let (seen, keep) = if ok {
            (&mut passed, keep_passed)
        } else {
            (&mut failed, keep_failed)
        };
        *seen += 1;
        if *seen > keep {
            delete.push(name);
        }
    }
    delete
}

/// `status.drill` for a JSON merge patch: every field the status lacks is an explicit `null`,
/// so that a patch removes what is gone (a merge patch keeps what it does not name).
pub fn merge_patch_value(status: Option<&DrillStatus>) -> serde_json::Value {
    let Some(status) = status else {
        return serde_json::Value::Null;
    };
    let mut value = serde_json::to_value(status).expect("the drill status serialises");
    for key in [
        "nextRunTime",
        "lastJob",
        "lastStartTime",
        "lastDrillNow",
        "lastResult",
    ] {
        value
            .as_object_mut()
            .expect("an object")
            .entry(key)
            .or_insert(serde_json::Value::Null);
    }
    if let Some(result) = value.get_mut("lastResult").and_then(|r| r.as_object_mut()) {
        for key in ["backups", "oldestBackupAgeSeconds"] {
            result.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    value
}

/// What a drill step leaves for the policy's status and requeue.
#[derive(Default)]
pub struct Step {
    /// `status.drill` to write (None without `spec.drill` and no earlier drill status).
    pub status: Option<DrillStatus>,
    /// When to run the policy again for the drill.
    pub wake_at: Option<DateTime<Utc>>,
    /// Why a due drill Job was not created.
    pub problem: Option<String>,
}

/// The drill part of a run: record the newest finished drill Job, delete Jobs beyond the
/// history, and create a drill Job when one is due (only with `schedule`: a valid, unsuspended
/// policy with `spec.drill`).
pub async fn run(
    policy: &BackupPolicy,
    ctx: &Context,
    schedule: Option<&Schedule>,
    now: DateTime<Utc>,
) -> Result<Step, Error> {
    let name = policy.name_any();
    let old = policy.status.as_ref().and_then(|s| s.drill.clone());
    let jobs: Vec<Arc<Job>> = ctx
        .caches
        .drill_jobs
        .state()
        .into_iter()
        .filter(|j| j.labels().get(label::POLICY) == Some(&name))
        .collect();
    if policy.spec.drill.is_none() && old.is_none() && jobs.is_empty() {
        return Ok(Step::default());
    }
    let mut status = old.clone().unwrap_or_default();
    let mut step = Step::default();
    record(policy, ctx, &jobs, &mut status, &mut step, now).await;
    if let Some(drill) = &policy.spec.drill {
        delete_beyond_history(ctx, drill, &jobs).await;
    }
    let (Some(drill), Some(schedule)) = (&policy.spec.drill, schedule) else {
        status.next_run_time = None;
        step.status = policy.spec.drill.as_ref().map(|_| status);
        return Ok(step);
    };
    let in_flight = ctx.drill.in_flight(&name, &ctx.caches, now);
    let active = in_flight.is_some() || jobs.iter().any(|j| results::is_active(j));
    let created = policy
        .creation_timestamp()
        .map(|t| to_chrono(&t.0))
        .unwrap_or(now);
    let last_start = last_start(&jobs, &status, in_flight.map(|(_, at)| at));
    let drill_now = policy
        .annotations()
        .get(wsr_annotation::DRILL_NOW)
        .filter(|token| status.last_drill_now.as_ref() != Some(*token))
        .cloned();
    let scheduled = next_due(schedule, last_start, created);
    let due = if drill_now.is_some() {
        Some(now)
    } else {
        scheduled
    };
    let mut next = scheduled;
    if due.is_some_and(|at| at <= now) && !active {
        if ctx.may_create_jobs() {
            match start(policy, ctx, drill).await {
                Ok(job) => {
                    status.last_job = Some(job);
                    status.last_start_time = Some(rfc3339(now));
                    if drill_now.is_some() {
                        status.last_drill_now = drill_now;
                    }
                    next = schedule.next_after(now);
                }
                Err(e) => {
                    warn!(error = %chain(&e), "drill Job not created");
                    step.problem = Some(e.to_string());
                    step.wake_at = Some(now + RETRY);
                    next = None;
                }
            }
        }
    } else if due.is_some_and(|at| at <= now) {
        // Due while the previous drill still runs: it starts once that one has finished.
        next = schedule.next_after(now);
    }
    status.next_run_time = next.or(due).map(rfc3339);
    step.wake_at = [step.wake_at, next].into_iter().flatten().min();
    step.status = Some(status);
    Ok(step)
}

/// Deletes finished drill Jobs beyond the policy's history limits (best effort: logged).
async fn delete_beyond_history(ctx: &Context, drill: &DrillSpec, jobs: &[Arc<Job>]) {
    let (passed, failed) = (
        drill.successful_jobs_history_limit,
        drill.failed_jobs_history_limit,
    );
    for job in beyond_history(jobs, passed, failed) {
        let api = Api::<Job>::namespaced(ctx.client.clone(), &ctx.operator_namespace);
        match api.delete(&job, &DeleteParams::background()).await {
            Ok(_) => info!(job, "drill Job beyond the history limit deleted"),
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => warn!(job, error = %chain(&e), "cannot delete an old drill Job"),
        }
    }
}

/// The latest start of a drill: a Job's creation, the recorded start, or one created but not
/// yet in the cache.
fn last_start(
    jobs: &[Arc<Job>],
    status: &DrillStatus,
    in_flight: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    jobs.iter()
        .filter_map(|j| j.creation_timestamp().map(|t| to_chrono(&t.0)))
        .chain(status.last_start_time.as_deref().and_then(parse_time))
        .chain(in_flight)
        .max()
}

/// Records the newest finished drill Job's result once: Event, metrics, `status.drill`.
async fn record(
    policy: &BackupPolicy,
    ctx: &Context,
    jobs: &[Arc<Job>],
    status: &mut DrillStatus,
    step: &mut Step,
    now: DateTime<Utc>,
) {
    let Some((job, finished)) = jobs
        .iter()
        .filter_map(|j| results::finished(j).map(|(_, at)| (j, at)))
        .max_by_key(|(_, at)| *at)
    else {
        return;
    };
    let job_name = job.name_any();
    let recorded_before = status.last_result.as_ref().is_some_and(|r| {
        r.job == job_name || parse_time(&r.finish_time).is_some_and(|t| t >= finished)
    }) || ctx
        .drill
        .recorded
        .lock()
        .expect("not poisoned")
        .contains(&job_name);
    if recorded_before {
        return;
    }
    let uid = job.uid().unwrap_or_default();
    let pod = ctx.caches.drill_pods.find(|pod| {
        pod.owner_references()
            .iter()
            .any(|o| o.uid == uid && o.kind == "Job")
    });
    let has_message = pod
        .as_deref()
        .and_then(|p| results::termination_message(p, CONTAINER))
        .is_some();
    if !has_message && now - finished < POD_LAG {
        // The pod cache may not show the termination message yet.
        step.wake_at = Some(now + chrono::Duration::seconds(5));
        return;
    }
    let Some(outcome) = outcome(job, pod.as_deref()) else {
        return;
    };
    ctx.drill
        .recorded
        .lock()
        .expect("not poisoned")
        .insert(job_name.clone());
    status.last_result = Some(result_status(&outcome));
    observe(ctx, &policy.name_any(), &outcome);
    let (type_, reason) = if outcome.passed {
        (EventType::Normal, "DrillPassed")
    } else {
        (EventType::Warning, "DrillFailed")
    };
    info!(job = %job_name, reason, message = %outcome.message, "drill result recorded");
    let note = format!("Job {job_name}: {}", outcome.message);
    publish_event(&ctx.recorder, policy, "Drill", type_, reason, &note).await;
}

/// The `wsr_drill_*` series of one recorded drill.
fn observe(ctx: &Context, policy: &str, outcome: &Outcome) {
    let m = &ctx.metrics;
    let p = PolicyLabel {
        policy: policy.into(),
    };
    m.drill_passed.get_or_create(&p).set(outcome.passed.into());
    m.drill_last_run
        .get_or_create(&p)
        .set(outcome.finished.timestamp_millis() as f64 / 1000.0);
    let result = if outcome.passed { "passed" } else { "failed" };
    m.drills
        .get_or_create(&DrillResultLabels {
            policy: policy.into(),
            result: result.into(),
        })
        .inc();
    if let Some(s) = &outcome.summary {
        for (status, n) in s.summary.by_status() {
            m.drill_backups
                .get_or_create(&DrillResultLabels {
                    policy: policy.into(),
                    result: status.into(),
                })
                .set(n.into());
        }
        if let Some(age) = s.oldest_age_s {
            m.drill_oldest_age
                .get_or_create(&p)
                .set(i64::try_from(age).unwrap_or(i64::MAX));
        }
    }
}

/// Creates the drill Job (after checking that its Secrets exist, so that a missing one is
/// reported rather than leaving a pod that cannot start); returns its name.
async fn start(policy: &BackupPolicy, ctx: &Context, drill: &DrillSpec) -> Result<String, Error> {
    let ns = &ctx.operator_namespace;
    let name = policy.name_any();
    let job = DrillJob {
        policy_name: &name,
        policy: &policy.spec,
        drill,
        namespace: ns,
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    for mount in job.registry_access().secrets() {
        if secrets.get_opt(&mount.secret).await?.is_none() {
            return Err(Error::AuthSecret {
                namespace: ns.clone(),
                name: mount.secret,
                reason: "not found (the drill Job mounts it from the operator namespace)".into(),
            });
        }
    }
    let created = Api::<Job>::namespaced(ctx.client.clone(), ns)
        .create(
            &PostParams::default(),
            &job.build(policy.controller_owner_ref(&())),
        )
        .await?;
    let job_name = created.name_any();
    ctx.drill
        .in_flight
        .lock()
        .expect("not poisoned")
        .insert(name, (job_name.clone(), Utc::now()));
    info!(job = %job_name, "drill Job created");
    let note = format!(
        "drill Job {job_name} started: every backup below {}",
        policy.spec.registry.path
    );
    // The policy is cluster-scoped: Kubernetes keeps its Events in `default`.
    let (kind, reason) = (EventType::Normal, "DrillStarted");
    publish_event(&ctx.recorder, policy, "Drill", kind, reason, &note).await;
    Ok(job_name)
}

impl Memory {
    /// The policy's drill Job created less than two minutes ago and not yet in the Job cache.
    fn in_flight(
        &self,
        policy: &str,
        caches: &crate::controller::Caches,
        now: DateTime<Utc>,
    ) -> Option<(String, DateTime<Utc>)> {
        let mut in_flight = self.in_flight.lock().expect("not poisoned");
        let entry = in_flight.get(policy)?.clone();
        let ns_jobs = caches.drill_jobs.state();
        let cached = ns_jobs.iter().any(|j| j.name_any() == entry.0);
        if cached || now - entry.1 >= crate::controller::IN_FLIGHT_GRACE {
            in_flight.remove(policy);
            return None;
        }
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::pod::{openshift_restricted_v2_violations, restricted_violations};
    use serde_json::json;

    fn policy() -> BackupPolicySpec {
        serde_json::from_value(json!({
            "registry": {"path": "registry.example:5000/backups", "authSecret": "quay-push",
                         "caSecret": "registry-ca"},
            "jobTemplate": {"image": "quay.example/wsr/wsr-recovery:1.2.3",
                            "imagePullPolicy": "IfNotPresent",
                            "podSecurityContext": {"runAsUser": 1234}},
            "drill": {"schedule": "0 3 * * 0", "maxAge": "36h", "namespaces": ["team-a"],
                      "allTags": true, "parallel": 2, "scratchSize": "50Gi",
                      "authSecret": "quay-pull"}
        }))
        .unwrap()
    }

    fn job() -> Job {
        let spec = policy();
        let owner: BackupPolicy = BackupPolicy {
            metadata: ObjectMeta {
                name: Some("nightly".into()),
                uid: Some("5f6b4c1e-0000-4000-8000-000000000001".into()),
                ..Default::default()
            },
            spec: spec.clone(),
            status: None,
        };
        nightly(&spec, spec.drill.as_ref().unwrap()).build(owner.controller_owner_ref(&()))
    }

    /// The drill Job of the policy `nightly` in `wsr-system`.
    fn nightly<'a>(spec: &'a BackupPolicySpec, drill: &'a DrillSpec) -> DrillJob<'a> {
        DrillJob {
            policy_name: "nightly",
            policy: spec,
            drill,
            namespace: "wsr-system",
        }
    }

    /// The exact Job, compared with `testdata/drill-job.yaml`.
    #[test]
    fn golden_drill_job() {
        crate::job::assert_matches_golden(&job(), "drill-job.yaml");
    }

    #[test]
    fn the_drill_pod_passes_the_restricted_profile_and_restricted_v2() {
        let pod = job().spec.unwrap().template.spec.unwrap();
        assert_eq!(restricted_violations(&pod), Vec::<String>::new());
        assert_eq!(
            openshift_restricted_v2_violations(&pod),
            Vec::<String>::new(),
            "the policy's runAsUser is not applied to the drill"
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        let volumes = pod.volumes.unwrap();
        assert!(volumes.iter().all(|v| v.persistent_volume_claim.is_none()));
        let secrets: Vec<_> = volumes
            .iter()
            .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
            .collect();
        assert_eq!(secrets, ["quay-pull", "registry-ca"]);
    }

    #[test]
    fn the_command_reads_the_policys_registry_and_drill_settings() {
        let spec = policy();
        let drill = spec.drill.clone().unwrap();
        let job = nightly(&spec, &drill);
        assert_eq!(
            job.command().join(" "),
            "/usr/local/bin/wsr-restore drill --registry registry.example:5000/backups \
             --namespace team-a --all-tags --parallel 2 --max-age 36h --scratch /scratch \
             --json --progress never --ca-file /tmp/.ca/ca.crt \
             --auth-file /tmp/.docker/.dockerconfigjson"
        );
        // Without a drill authSecret the policy's is used; without any, no --auth-file.
        let mut spec = policy();
        spec.drill.as_mut().unwrap().auth_secret = None;
        let drill = spec.drill.clone().unwrap();
        let job = nightly(&spec, &drill);
        assert_eq!(job.auth_secret(), Some("quay-push"));
        spec.registry.auth_secret = None;
        let job = nightly(&spec, &drill);
        assert!(!job.command().iter().any(|a| a == "--auth-file"));
    }

    #[test]
    fn defaults_fill_a_minimal_drill() {
        let drill: DrillSpec = serde_json::from_value(json!({"schedule": "@weekly"})).unwrap();
        assert_eq!(drill.parallel, 1);
        assert_eq!(drill.scratch_size, "20Gi");
        assert_eq!(
            (
                drill.successful_jobs_history_limit,
                drill.failed_jobs_history_limit
            ),
            (3, 1)
        );
        assert_eq!(drill.max_age, None);
    }

    fn finished_job(name: &str, condition: &str, at: &str) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "wsr-system", "uid": format!("uid-{name}")},
            "status": {"conditions": [
                {"type": condition, "status": "True", "lastTransitionTime": at,
                 "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}
        }))
        .unwrap()
    }

    fn pod(exit_code: i32, message: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"containerStatuses": [{"name": "drill", "image": "i",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code, "reason": "Error", "message": message}}}]}
        }))
        .unwrap()
    }

    /// A summary as `wsr-restore drill --json` writes it (restore/src/drill/report.rs).
    const FAILED_SUMMARY: &str = r#"{"duration_s":2.4,"failures":[{"backup":"team-a/old:latest","reason":"taken 3d ago, older than the maximum age 1d","status":"stale"},{"backup":"team-a/db:latest","reason":"digest mismatch for layer blob sha256:ab","status":"corrupt"}],"failures_omitted":0,"ignored":0,"max_age_s":86400,"oldest_age_s":259200,"passed":false,"summary":{"auth_denied":0,"corrupt":1,"failed":2,"missing_blob":0,"ok":1,"stale":1,"total":3,"unreadable":0}}"#;

    #[test]
    fn a_failed_drill_reads_its_counts_and_reasons_from_the_termination_message() {
        let job = finished_job("wsr-drill-nightly-abcde", "Failed", "2026-11-25T10:00:01Z");
        let o = outcome(&job, Some(&pod(6, FAILED_SUMMARY))).unwrap();
        assert!(!o.passed);
        let s = o.summary.clone().unwrap();
        assert_eq!(
            (
                s.summary.total,
                s.summary.ok,
                s.summary.stale,
                s.summary.corrupt
            ),
            (3, 1, 1, 1)
        );
        assert_eq!(
            o.message,
            "FAILED: 3 backups, 1 ok, 2 failed (1 stale, 1 corrupt); oldest 3d (max age 1d): \
             team-a/old:latest stale: taken 3d ago, older than the maximum age 1d; \
             team-a/db:latest corrupt: digest mismatch for layer blob sha256:ab"
        );
        let r = result_status(&o);
        assert_eq!(r.finish_time, "2026-11-25T10:00:01Z");
        assert_eq!(r.backups.unwrap().corrupt, 1);
        assert_eq!(r.oldest_backup_age_seconds, Some(259_200));
    }

    #[test]
    fn a_drill_that_ended_without_a_summary_says_why() {
        let job = finished_job("j", "Failed", "2026-11-25T10:00:01Z");
        let o = outcome(
            &job,
            Some(&pod(
                4,
                "resolve: registry.example:5000 unreachable: connection refused",
            )),
        )
        .unwrap();
        assert!(!o.passed);
        assert_eq!(o.summary, None);
        assert_eq!(
            o.message,
            "drill Job failed: resolve: registry.example:5000 unreachable: connection refused"
        );
        let o = outcome(&job, None).unwrap();
        assert_eq!(
            o.message,
            "drill Job failed: BackoffLimitExceeded: Job has reached the specified backoff limit"
        );
        let passed = r#"{"passed":true,"summary":{"total":2,"ok":2,"failed":0,"stale":0,"corrupt":0,"missing_blob":0,"unreadable":0,"auth_denied":0},"oldest_age_s":18000,"failures":[],"failures_omitted":0}"#;
        let done = finished_job("k", "Complete", "2026-11-25T10:00:01Z");
        let o = outcome(&done, Some(&pod(0, passed))).unwrap();
        assert!(o.passed);
        assert_eq!(o.message, "PASSED: 2 backups, all ok; oldest 5h");
        let running: Job =
            serde_json::from_value(json!({"metadata": {"name": "r"}, "status": {"active": 1}}))
                .unwrap();
        assert_eq!(outcome(&running, None), None);
    }

    #[test]
    fn drills_are_due_at_the_first_schedule_time_after_the_last_start() {
        let at = |s: &str| parse_time(s).unwrap();
        let weekly = Schedule::parse("0 3 * * 0", None).unwrap();
        let created = at("2026-11-25T12:00:00Z"); // a Wednesday
        assert_eq!(
            next_due(&weekly, None, created),
            Some(at("2026-11-29T03:00:00Z"))
        );
        // Several missed times make one drill: the next after the last start.
        assert_eq!(
            next_due(&weekly, Some(at("2026-11-01T03:00:05Z")), created),
            Some(at("2026-11-08T03:00:00Z"))
        );
    }

    #[test]
    fn history_keeps_the_newest_passed_and_failed_jobs() {
        let jobs: Vec<Arc<Job>> = [
            ("p1", "Complete", "2026-11-20T00:00:00Z"),
            ("p2", "Complete", "2026-11-21T00:00:00Z"),
            ("f1", "Failed", "2026-11-22T00:00:00Z"),
            ("p3", "Complete", "2026-11-23T00:00:00Z"),
            ("f2", "Failed", "2026-11-24T00:00:00Z"),
        ]
        .into_iter()
        .map(|(n, c, t)| Arc::new(finished_job(n, c, t)))
        .chain([Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": "running"}, "status": {"active": 1}}),
            )
            .unwrap(),
        )])
        .collect();
        assert_eq!(beyond_history(&jobs, 2, 1), ["f1", "p1"]);
        assert_eq!(beyond_history(&jobs, 3, 1), ["f1"]);
        assert_eq!(beyond_history(&jobs, 0, 0), ["f2", "p3", "f1", "p2", "p1"]);
    }
}
