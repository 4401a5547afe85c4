//! The controller: a kube-rs `Controller` over `BackupPolicy` objects, woken by the watch
//! caches of DevWorkspaces, backup Jobs, workspace pods, PVCs and namespaces (never polling).
//! Each reconcile of a policy is a *run*: record finished Jobs on their workspaces, plan from
//! the caches, create the Jobs the plan starts, write the policy status, and requeue for the
//! earliest time something becomes due. Everything is level-based: a run only looks at what
//! exists now, so results of Jobs that finished while the operator was down are recorded at
//! start-up, and the policy is re-read at every run.

use crate::devworkspace::DevWorkspace;
use crate::eligibility::Timing;
use crate::job::BackupJob;
use crate::names::{MANAGER, REGISTRY_AUTH_SECRET, label, wsr_annotation};
use crate::plan::{Planned, plan};
use crate::policy::{BackupPolicy, BackupPolicySpec, BackupPolicyStatus, RunCounts};
use crate::results::{self, Outcome};
use crate::schedule::Schedule;
use crate::snapshot::{Owners, Snapshot};
use crate::workload::pod::{PodOptions, hardened_pod_spec, restricted_violations};
use crate::workload::storage::WorkspaceVolume;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::core::{ObjectMeta, PartialObjectMeta, Selector};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// Why a run failed (it is retried by `error_policy`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the auth Secret {name} in the operator namespace {namespace}: {reason}")]
    AuthSecret {
        namespace: String,
        name: String,
        reason: String,
    },
}

/// (namespace, workspace name).
type WorkspaceKey = (String, String);

/// The watch caches a run reads.
#[derive(Clone)]
pub struct Caches {
    pub workspaces: Store<DevWorkspace>,
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
    pub pvcs: Store<PersistentVolumeClaim>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub policies: Store<BackupPolicy>,
}

/// What a reconcile needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// Where the policies' `authSecret`s live.
    pub operator_namespace: String,
    pub caches: Caches,
    /// Jobs created but perhaps not yet in the Job cache: (namespace, workspace) to the Job's
    /// name and creation time.
    in_flight: Mutex<HashMap<WorkspaceKey, (String, DateTime<Utc>)>>,
    /// Jobs whose result was written, as (namespace, Job name), in case the workspace cache
    /// lags behind the patch; pruned to the Jobs still in the cache.
    recorded: Mutex<HashSet<WorkspaceKey>>,
}

/// `wsr-operator run`: watches, then reconciles policies until SIGTERM/SIGINT.
pub async fn run(client: Client, operator_namespace: String) -> anyhow::Result<()> {
    let policies: Api<BackupPolicy> = Api::all(client.clone());
    if let Err(e) = policies.list(&ListParams::default().limit(1)).await {
        anyhow::bail!(
            "cannot list BackupPolicies ({e}); is the CRD installed? `wsr-operator crd | kubectl apply -f -`"
        );
    }
    let (workspaces, ws_writer) = reflector::store();
    let (jobs, job_writer) = reflector::store();
    let (pods, pod_writer) = reflector::store();
    let (pvcs, pvc_writer) = reflector::store();
    let (namespaces, ns_writer) = reflector::store();
    let backup_jobs = watcher::Config::default().labels(&format!("{}=true", label::BACKUP_JOB));
    let workspace_pods = watcher::Config::default().labels(label::DEVWORKSPACE_ID);
    let all = watcher::Config::default;
    let triggers = futures_util::stream::select_all([
        wake(reflector::reflector(
            ws_writer,
            watcher(Api::<DevWorkspace>::all(client.clone()), all()),
        )),
        wake(reflector::reflector(
            job_writer,
            watcher(Api::<Job>::all(client.clone()), backup_jobs),
        )),
        wake(reflector::reflector(
            pod_writer,
            watcher(Api::<Pod>::all(client.clone()), workspace_pods),
        )),
        wake(reflector::reflector(
            pvc_writer,
            watcher(Api::<PersistentVolumeClaim>::all(client.clone()), all()),
        )),
        wake(reflector::reflector(
            ns_writer,
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                all(),
            ),
        )),
    ]);
    let controller = Controller::new(policies, watcher::Config::default())
        .with_config(ControllerConfig::default().debounce(Duration::from_secs(1)))
        .reconcile_all_on(triggers)
        .shutdown_on_signal();
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        operator_namespace,
        caches: Caches {
            workspaces,
            jobs,
            pods,
            pvcs,
            namespaces,
            policies: controller.store(),
        },
        in_flight: Mutex::default(),
        recorded: Mutex::default(),
    });
    info!("watching DevWorkspaces, backup Jobs, workspace pods, PVCs and BackupPolicies");
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
    Ok(())
}

/// A cache's changes as wake-ups for every policy (the caches are few-policy, many-object:
/// every run re-plans all of a policy's workspaces, which takes milliseconds).
fn wake<S, K>(stream: S) -> BoxStream<'static, ()>
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    stream
        .default_backoff()
        .filter_map(|event| async move {
            match event {
                Ok(
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone,
                ) => Some(()),
                Ok(_) => None,
                Err(e) => {
                    warn!(error = %e, "watch error (retrying)");
                    None
                }
            }
        })
        .boxed()
}

fn error_policy(policy: Arc<BackupPolicy>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(policy = %policy.name_any(), %error, "run failed; retrying in 30s");
    Action::requeue(Duration::from_secs(30))
}

/// How a run ends: at most this long until the next, even when nothing is due.
const MAX_IDLE: Duration = Duration::from_secs(300);

/// One run of a policy.
async fn reconcile(policy: Arc<BackupPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Plan only from complete caches (the first reconciles can come before the lists end).
    let _ = ctx.caches.workspaces.wait_until_ready().await;
    let _ = ctx.caches.jobs.wait_until_ready().await;
    let _ = ctx.caches.pods.wait_until_ready().await;
    let _ = ctx.caches.pvcs.wait_until_ready().await;
    let _ = ctx.caches.namespaces.wait_until_ready().await;
    let now = Utc::now();
    let name = policy.name_any();
    let mut counts = RunCounts::default();
    record_results(&policy, &ctx, &mut counts).await?;
    let checked = match check(&policy.spec) {
        Ok(checked) => checked,
        Err(reason) => {
            let condition = ready(false, "InvalidSpec", &reason);
            write_status(&policy, &ctx, condition, counts, None, None).await?;
            return Ok(Action::await_change());
        }
    };
    let next_run = checked.schedule.next_after(now);
    if policy.spec.suspend {
        let condition = ready(
            false,
            "Suspended",
            "spec.suspend is true: no Jobs are created",
        );
        write_status(&policy, &ctx, condition, counts, next_run, None).await?;
        return Ok(Action::await_change());
    }
    let run_now = policy.annotations().get(wsr_annotation::RUN_NOW).cloned();
    let status = policy.status.clone().unwrap_or_default();
    let timing = Timing {
        schedule: &checked.schedule,
        on_stop_delay: (policy.spec.trigger == crate::policy::Trigger::OnStop)
            .then(|| chrono::Duration::seconds(policy.spec.on_stop_delay_seconds.into())),
        policy_created: policy
            .creation_timestamp()
            .map(|t| results::to_chrono(&t.0))
            .unwrap_or(now),
        run_now: run_now.is_some() && run_now != status.last_run_now,
    };
    let workspaces = ctx.caches.workspaces.state();
    let owners = Owners::new(&ctx.caches.policies.state());
    let selected = workspaces
        .iter()
        .filter(|ws| {
            let ns = ws.namespace().unwrap_or_default();
            let ns_labels = ctx
                .caches
                .namespaces
                .get(&reflector::ObjectRef::new(&ns))
                .map(|n| n.labels().clone())
                .unwrap_or_default();
            owners.owner(&ns_labels, ws) == Some(name.as_str())
        })
        .map(Arc::as_ref);
    let jobs = ctx.caches.jobs.state();
    let view = Snapshot::new(
        &jobs,
        &ctx.caches.pods.state(),
        &ctx.caches.pvcs.state(),
        ctx.in_flight(now),
    );
    let active = jobs
        .iter()
        .filter(|j| j.labels().get(label::POLICY) == Some(&name) && results::is_active(j))
        .count() as u32;
    let planned = plan(&policy.spec, &timing, selected, &view, active, now);
    let mut run_counts = planned.counts.clone();
    run_counts.succeeded = counts.succeeded;
    run_counts.failed = counts.failed;
    let mut started_any = false;
    let mut problems = Vec::new();
    let mut auth_by_namespace: HashMap<String, bool> = HashMap::new();
    for p in &planned.start {
        match start(&policy, &ctx, p, &mut auth_by_namespace).await {
            Ok(()) => started_any = true,
            Err(e) => {
                run_counts.started -= 1;
                *run_counts
                    .skipped
                    .entry("jobNotCreated".into())
                    .or_default() += 1;
                problems.push(e.to_string());
            }
        }
    }
    let condition = match problems.first() {
        None => ready(
            true,
            "Scheduling",
            "the policy is valid and scheduling backups",
        ),
        Some(first) => ready(false, "JobsNotCreated", first),
    };
    let last_run = started_any.then_some(now);
    let mut status_run_now = status.last_run_now.clone();
    if timing.run_now {
        status_run_now = run_now;
    }
    write_status_full(
        &policy,
        &ctx,
        condition,
        run_counts,
        next_run,
        last_run,
        status_run_now,
    )
    .await?;
    let wake = [planned.wake_at, next_run].into_iter().flatten().min();
    let wait = wake
        .map(|at| (at - now).to_std().unwrap_or(Duration::ZERO))
        .unwrap_or(MAX_IDLE)
        .clamp(Duration::from_secs(1), MAX_IDLE);
    Ok(Action::requeue(wait))
}

/// A policy spec checked beyond what the schema can: the schedule, the time zone, the
/// registry path, the selectors and the restricted profile of the resulting pod.
struct Checked {
    schedule: Schedule,
}

fn check(spec: &BackupPolicySpec) -> Result<Checked, String> {
    let schedule =
        Schedule::parse(&spec.schedule, spec.time_zone.as_deref()).map_err(|e| e.to_string())?;
    match wsr_format::reference::parse_registry_path(&spec.registry.path) {
        Ok(wsr_format::reference::Repository::Registry { .. }) => {}
        Ok(_) => {
            return Err("registry.path must be a registry (HOST[:PORT][/PREFIX]), not oci:".into());
        }
        Err(e) => return Err(format!("registry.path: {e}")),
    }
    for (field, selector) in [
        ("namespaceSelector", &spec.namespace_selector),
        ("workspaceSelector", &spec.workspace_selector),
    ] {
        if let Some(s) = selector {
            Selector::try_from(s.clone()).map_err(|e| format!("{field}: {e}"))?;
        }
    }
    let probe = WorkspaceVolume {
        claim: "probe".into(),
        sub_path: "probe".into(),
        shared: false,
        single_node: false,
    };
    let options = PodOptions {
        pod_security_context: spec.job_template.pod_security_context.clone(),
        ..Default::default()
    };
    let pod = hardened_pod_spec("probe", vec![], &probe, false, &[], &options);
    let violations = restricted_violations(&pod);
    if !violations.is_empty() {
        return Err(format!(
            "jobTemplate.podSecurityContext leaves the restricted profile: {}",
            violations.join("; ")
        ));
    }
    Ok(Checked { schedule })
}

/// A created Job counts as running until the Job cache shows it, for at most this long.
const IN_FLIGHT_GRACE: chrono::Duration = chrono::Duration::minutes(2);

impl Context {
    /// Workspaces whose Job was created less than two minutes ago and is not yet in the
    /// Job cache.
    fn in_flight(&self, now: DateTime<Utc>) -> Vec<WorkspaceKey> {
        let mut in_flight = self.in_flight.lock().expect("not poisoned");
        in_flight.retain(|(ns, _), (job, created)| {
            let cached = self
                .caches
                .jobs
                .get(&reflector::ObjectRef::new(job).within(ns))
                .is_some();
            !cached && now - *created < IN_FLIGHT_GRACE
        });
        in_flight.keys().cloned().collect()
    }
}

/// Creates one backup Job (after making sure of the registry credentials) and says so in an
/// Event on the workspace.
async fn start(
    policy: &BackupPolicy,
    ctx: &Context,
    p: &Planned<'_>,
    auth_by_namespace: &mut HashMap<String, bool>,
) -> Result<(), Error> {
    let ws = p.workspace;
    let ns = ws.namespace().unwrap_or_default();
    let ws_name = ws.name_any();
    let auth_secret = match auth_by_namespace.get(&ns) {
        Some(found) => *found,
        None => {
            let found = ensure_auth_secret(ctx, &policy.spec, &ns).await?;
            auth_by_namespace.insert(ns.clone(), found);
            found
        }
    };
    let reference = crate::backup_reference(&policy.spec.registry.path, &ns, &ws_name)
        .map(|r| r.to_string())
        .unwrap_or_default();
    let job = BackupJob {
        workspace: ws,
        workspace_id: &p.workspace_id,
        policy_name: &policy.name_any(),
        policy: &policy.spec,
        volume: &p.volume,
        auth_secret,
        node: p.node.clone(),
    }
    .build(&reference);
    let created = Api::<Job>::namespaced(ctx.client.clone(), &ns)
        .create(&PostParams::default(), &job)
        .await?;
    let job_name = created.name_any();
    ctx.in_flight.lock().expect("not poisoned").insert(
        (ns.clone(), ws_name.clone()),
        (job_name.clone(), Utc::now()),
    );
    info!(namespace = %ns, workspace = %ws_name, job = %job_name, "backup Job created");
    publish(
        ctx,
        ws,
        EventType::Normal,
        "BackupStarted",
        format!(
            "backup Job {job_name} started: {} to {reference}",
            p.volume.claim
        ),
    )
    .await;
    Ok(())
}

/// Upstream's credentials contract: `devworkspace-backup-registry-auth` in the workspace
/// namespace wins and is never overwritten; otherwise the policy's `authSecret` is copied
/// there from the operator namespace (labelled for DWO's cache, no owner, so it outlives any
/// workspace). Returns whether the Job gets credentials. Secret contents are never logged.
async fn ensure_auth_secret(
    ctx: &Context,
    spec: &BackupPolicySpec,
    ns: &str,
) -> Result<bool, Error> {
    let here: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    if here.get_opt(REGISTRY_AUTH_SECRET).await?.is_some() {
        return Ok(true);
    }
    let Some(source_name) = spec.registry.auth_secret.as_deref() else {
        return Ok(false);
    };
    let source = Api::<Secret>::namespaced(ctx.client.clone(), &ctx.operator_namespace)
        .get_opt(source_name)
        .await?
        .ok_or_else(|| Error::AuthSecret {
            namespace: ctx.operator_namespace.clone(),
            name: source_name.into(),
            reason: "not found".into(),
        })?;
    let copy = Secret {
        metadata: ObjectMeta {
            name: Some(REGISTRY_AUTH_SECRET.into()),
            namespace: Some(ns.into()),
            labels: Some(BTreeMap::from([(
                label::WATCH_SECRET.into(),
                "true".into(),
            )])),
            ..Default::default()
        },
        type_: source.type_,
        data: source.data,
        ..Default::default()
    };
    match here.create(&PostParams::default(), &copy).await {
        Ok(_) => {
            info!(namespace = %ns, secret = REGISTRY_AUTH_SECRET, "registry credentials copied");
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Writes the result of every finished Job of this policy whose result is not on its
/// workspace yet: the newest finished Job per workspace, once.
async fn record_results(
    policy: &BackupPolicy,
    ctx: &Context,
    counts: &mut RunCounts,
) -> Result<(), Error> {
    let name = policy.name_any();
    let mut newest: BTreeMap<(String, String), (DateTime<Utc>, Arc<Job>)> = BTreeMap::new();
    for job in ctx.caches.jobs.state() {
        if job.labels().get(label::POLICY) != Some(&name) {
            continue;
        }
        let Some((_, at)) = results::finished(&job) else {
            continue;
        };
        let Some(ws) = job.labels().get(label::DEVWORKSPACE_NAME) else {
            continue;
        };
        let key = (job.namespace().unwrap_or_default(), ws.clone());
        if newest.get(&key).is_none_or(|(t, _)| at > *t) {
            newest.insert(key, (at, job));
        }
    }
    {
        // Jobs deleted by their TTL cannot come back: forget them.
        let cached: HashSet<WorkspaceKey> = ctx
            .caches
            .jobs
            .state()
            .iter()
            .map(|j| (j.namespace().unwrap_or_default(), j.name_any()))
            .collect();
        ctx.recorded
            .lock()
            .expect("not poisoned")
            .retain(|key| cached.contains(key));
    }
    for ((ns, ws_name), (finished_at, job)) in newest {
        let job_key = (ns.clone(), job.name_any());
        let Some(ws) = ctx
            .caches
            .workspaces
            .get(&reflector::ObjectRef::new(&ws_name).within(&ns))
        else {
            continue;
        };
        let annotated = ws.backup_state().last_backup;
        // Recorded already, or the annotations hold a newer result (e.g. written by another
        // controller): never overwrite a newer result with an older one.
        let recorded_before = crate::job::recorded_job(&ws) == Some(job_key.1.as_str())
            || annotated.is_some_and(|last| last.finished >= finished_at)
            || ctx
                .recorded
                .lock()
                .expect("not poisoned")
                .contains(&job_key);
        if recorded_before {
            continue;
        }
        let Some(outcome) = read_outcome(ctx, &job).await else {
            continue;
        };
        let failures = ws.backup_state().failures;
        let patch = results::annotation_patch(&outcome, failures);
        Api::<DevWorkspace>::namespaced(ctx.client.clone(), &ns)
            .patch(&ws_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        ctx.recorded.lock().expect("not poisoned").insert(job_key);
        announce(ctx, &ws, &outcome, counts).await;
    }
    Ok(())
}

/// The outcome of a finished Job, with its pod's termination message and, on success, the
/// `--json` report from the end of its log.
async fn read_outcome(ctx: &Context, job: &Job) -> Option<Outcome> {
    let uid = job.uid()?;
    let pod = ctx.caches.pods.find(|pod| {
        pod.owner_references()
            .iter()
            .any(|o| o.uid == uid && o.kind == "Job")
    });
    let mut log = None;
    if let (Some(pod), Some((true, _))) = (&pod, results::finished(job)) {
        let params = LogParams {
            container: Some(crate::job::CONTAINER.into()),
            tail_lines: Some(5),
            ..Default::default()
        };
        match Api::<Pod>::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default())
            .logs(&pod.name_any(), &params)
            .await
        {
            Ok(text) => log = Some(text),
            Err(e) => {
                warn!(job = %job.name_any(), error = %e, "cannot read the backup pod's log; recording without the digest")
            }
        }
    }
    results::outcome(job, pod.as_deref(), log.as_deref())
}

async fn announce(ctx: &Context, ws: &DevWorkspace, outcome: &Outcome, counts: &mut RunCounts) {
    let (kind, reason, note) = match &outcome.result {
        Ok(pushed) => {
            counts.succeeded += 1;
            let to = pushed.reference.as_deref().unwrap_or("the registry");
            (
                EventType::Normal,
                "BackupSucceeded",
                format!("backed up to {to} by Job {}", outcome.job),
            )
        }
        Err(message) => {
            counts.failed += 1;
            (
                EventType::Warning,
                "BackupFailed",
                format!("Job {}: {message}", outcome.job),
            )
        }
    };
    info!(namespace = ?ws.namespace(), workspace = %ws.name_any(), job = %outcome.job, reason, "backup result recorded");
    publish(ctx, ws, kind, reason, note).await;
}

async fn publish(ctx: &Context, ws: &DevWorkspace, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(crate::error_annotation(&note)),
        action: "Backup".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &ws.object_ref(&())).await {
        warn!(workspace = %ws.name_any(), error = %e, "cannot publish an Event");
    }
}

fn ready(ok: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: "Ready".into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: crate::error_annotation(message),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        observed_generation: None,
    }
}

async fn write_status(
    policy: &BackupPolicy,
    ctx: &Context,
    condition: Condition,
    counts: RunCounts,
    next_run: Option<DateTime<Utc>>,
    last_run: Option<DateTime<Utc>>,
) -> Result<(), Error> {
    let run_now = policy.status.as_ref().and_then(|s| s.last_run_now.clone());
    write_status_full(policy, ctx, condition, counts, next_run, last_run, run_now).await
}

/// Patches the status only when it changed (a status write wakes the policy again, so an
/// unconditional write would loop). `lastRunTime` moves only when Jobs were started.
async fn write_status_full(
    policy: &BackupPolicy,
    ctx: &Context,
    mut condition: Condition,
    counts: RunCounts,
    next_run: Option<DateTime<Utc>>,
    last_run: Option<DateTime<Utc>>,
    last_run_now: Option<String>,
) -> Result<(), Error> {
    let old = policy.status.clone().unwrap_or_default();
    let rfc = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    condition.observed_generation = policy.metadata.generation;
    if let Some(previous) = old.conditions.iter().find(|c| c.type_ == "Ready")
        && previous.status == condition.status
        && previous.reason == condition.reason
        && previous.message == condition.message
    {
        condition.last_transition_time = previous.last_transition_time.clone();
    }
    let mut counts = counts;
    // Results are recorded once; keep the last recorded figures until new ones arrive.
    if counts.succeeded == 0 && counts.failed == 0 {
        counts.succeeded = old.counts.succeeded;
        counts.failed = old.counts.failed;
    }
    let status = BackupPolicyStatus {
        conditions: vec![condition],
        observed_generation: policy.metadata.generation,
        last_run_time: last_run.map(rfc).or(old.last_run_time.clone()),
        next_run_time: next_run.map(rfc),
        last_run_now,
        counts,
    };
    if status == old {
        return Ok(());
    }
    Api::<BackupPolicy>::all(ctx.client.clone())
        .patch_status(
            &policy.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": status})),
        )
        .await?;
    Ok(())
}
