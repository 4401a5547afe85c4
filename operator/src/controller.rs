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
use crate::leader::{self, LeaseConfig};
use crate::metrics::{FailureLabels, Metrics, NamespaceLabel, PolicyLabel};
use crate::names::{MANAGER, REGISTRY_AUTH_SECRET, label, wsr_annotation};
use crate::plan::{Planned, plan};
use crate::policy::{BackupPolicy, BackupPolicySpec, BackupPolicyStatus, DrillStatus, RunCounts};
use crate::restored::RestoreRecorder;
use crate::results::{self, Outcome};
use crate::schedule::Schedule;
use crate::serve::{self, Health};
use crate::snapshot::{Owners, Snapshot};
use crate::workload::pod::{PodOptions, hardened_pod_spec, restricted_violations};
use crate::workload::storage::WorkspaceVolume;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ObjectMeta, PartialObjectMeta, Selector};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{Instrument as _, info, info_span, warn};

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
    /// Drill Jobs and their pods, in the operator namespace.
    pub drill_jobs: Store<Job>,
    pub drill_pods: Store<Pod>,
}

/// What a reconcile needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// Where the policies' `authSecret`s live.
    pub operator_namespace: String,
    pub caches: Caches,
    pub metrics: Arc<Metrics>,
    /// Whether this process holds the leader Lease (always true without leader election).
    is_leader: watch::Receiver<bool>,
    /// Set on SIGTERM/SIGINT: runs in progress finish their status writes but create no Job.
    stopping: Arc<AtomicBool>,
    /// Jobs created but perhaps not yet in the Job cache: (namespace, workspace) to the Job's
    /// name and creation time.
    in_flight: Mutex<HashMap<WorkspaceKey, (String, DateTime<Utc>)>>,
    /// Jobs whose result was written, as (namespace, Job name), in case the workspace cache
    /// lags behind the patch; pruned to the Jobs still in the cache.
    recorded: Mutex<HashSet<WorkspaceKey>>,
    /// The same for drill Jobs.
    pub drill: crate::drill::Memory,
}

/// How `wsr-operator run` runs.
pub struct RunOptions {
    /// Where the policies' `authSecret`s live (and the Lease).
    pub operator_namespace: String,
    /// The `/healthz`, `/readyz` and `/metrics` listener.
    pub listen: SocketAddr,
    /// Leader election, or `None` to reconcile unconditionally (one replica only).
    pub lease: Option<LeaseConfig>,
}

/// `wsr-operator run`: serves health and metrics, joins the leader election, watches, and
/// reconciles policies while it leads, until SIGTERM/SIGINT. Then it creates no more Jobs,
/// lets running reconciles finish their status writes, releases the Lease and returns.
pub async fn run(client: Client, options: RunOptions) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let policies: Api<BackupPolicy> = Api::all(client.clone());
    if let Err(e) = policies.list(&ListParams::default().limit(1)).await {
        anyhow::bail!(
            "cannot list BackupPolicies ({e}); is the CRD installed? `wsr-operator crd | kubectl apply -f -`"
        );
    }
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health {
        caches_synced: AtomicBool::new(false),
        metrics: metrics.clone(),
    });
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("listening on {}", options.listen))?;
    let server = tokio::spawn(serve::serve(listener, health.clone()));
    let election = match &options.lease {
        Some(config) => Some(
            leader::join(client.clone(), config)
                .await
                .context("joining the leader election (Lease)")?,
        ),
        None => None,
    };
    let is_leader = match &election {
        Some(e) => e.is_leader.clone(),
        None => watch::channel(true).1,
    };
    let stopping = Arc::new(AtomicBool::new(false));
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    {
        let stopping = stopping.clone();
        tokio::spawn(async move {
            stop_signal().await;
            stopping.store(true, Ordering::Release);
            info!("stopping: no new Jobs; letting running reconciles finish");
            let _ = shutdown_tx.send(());
        });
    }

    let (workspaces, ws_writer) = reflector::store();
    let (jobs, job_writer) = reflector::store();
    let (pods, pod_writer) = reflector::store();
    let (pvcs, pvc_writer) = reflector::store();
    let (namespaces, ns_writer) = reflector::store();
    let (policy_cache, policy_writer) = reflector::store();
    let (drill_jobs, drill_job_writer) = reflector::store();
    let (drill_pods, drill_pod_writer) = reflector::store();
    let drills =
        || watcher::Config::default().labels(&format!("{}=true", crate::drill::DRILL_LABEL));
    let backup_jobs = watcher::Config::default().labels(&format!("{}=true", label::BACKUP_JOB));
    let workspace_pods = watcher::Config::default().labels(label::DEVWORKSPACE_ID);
    let all = watcher::Config::default;
    // Each cache is driven by a task of its own, so it stays current whatever the controller
    // is doing; a change only leaves a wake-up (coalesced: one pending is enough, as a wake-up
    // runs every policy).
    let (wake_tx, wake_rx) = tokio::sync::mpsc::channel::<()>(1);
    let caches_changed = [
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
        // The policies too: the controller's own store is only as current as the controller
        // polls it, and readiness must not depend on that.
        wake(reflector::reflector(
            policy_writer,
            watcher(Api::<BackupPolicy>::all(client.clone()), all()),
        )),
        wake(reflector::reflector(
            drill_job_writer,
            watcher(
                Api::<Job>::namespaced(client.clone(), &options.operator_namespace),
                drills(),
            ),
        )),
        wake(reflector::reflector(
            drill_pod_writer,
            watcher(
                Api::<Pod>::namespaced(client.clone(), &options.operator_namespace),
                drills(),
            ),
        )),
    ];
    // Restores are recorded apart from the policies (a restored workspace need not be
    // covered by one), woken by the same changes.
    let restores_changed = Arc::new(tokio::sync::Notify::new());
    for changes in caches_changed {
        let wake_tx = wake_tx.clone();
        let restores_changed = restores_changed.clone();
        tokio::spawn(changes.for_each(move |()| {
            let _ = wake_tx.try_send(());
            restores_changed.notify_one();
            async {}
        }));
    }
    let woken = futures_util::stream::unfold(wake_rx, |mut rx| async move {
        rx.recv().await.map(|()| ((), rx))
    });
    let triggers = futures_util::stream::select(
        woken,
        leadership_changes(is_leader.clone(), metrics.clone()),
    );
    let controller = Controller::new(policies, watcher::Config::default())
        .with_config(ControllerConfig::default().debounce(Duration::from_secs(1)))
        .reconcile_all_on(triggers)
        .graceful_shutdown_on(async move {
            let _ = shutdown_rx.await;
        });
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let caches = Caches {
        workspaces,
        jobs,
        pods,
        pvcs,
        namespaces,
        policies: policy_cache,
        drill_jobs,
        drill_pods,
    };
    tokio::spawn(mark_ready_when_synced(caches.clone(), health));
    let restores = RestoreRecorder::new(
        client.clone(),
        reporter.clone(),
        caches.workspaces.clone(),
        caches.pods.clone(),
    );
    let restores_stop = Arc::new(tokio::sync::Notify::new());
    let mut restores =
        tokio::spawn(restores.run(restores_changed, is_leader.clone(), restores_stop.clone()));
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        operator_namespace: options.operator_namespace,
        caches,
        metrics,
        is_leader,
        stopping,
        in_flight: Mutex::default(),
        recorded: Mutex::default(),
        drill: Default::default(),
    });
    info!("watching DevWorkspaces, backup Jobs, workspace pods, PVCs and BackupPolicies");
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %chain(&e), "controller error");
            }
        })
        .await;
    // The restore recorder finishes its pass (or is cut short: its writes are idempotent)
    // and drops its view of the election, which the release waits for.
    restores_stop.notify_one();
    if tokio::time::timeout(Duration::from_secs(10), &mut restores)
        .await
        .is_err()
    {
        restores.abort();
        let _ = restores.await;
    }
    if let Some(election) = election {
        election.release().await;
    }
    server.abort();
    info!("stopped");
    Ok(())
}

/// SIGTERM (the kubelet's stop) or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}

/// Sets `/readyz` once every watch cache has listed (followers too: they are warm standbys).
async fn mark_ready_when_synced(caches: Caches, health: Arc<Health>) {
    let _ = tokio::join!(
        caches.workspaces.wait_until_ready(),
        caches.jobs.wait_until_ready(),
        caches.pods.wait_until_ready(),
        caches.pvcs.wait_until_ready(),
        caches.namespaces.wait_until_ready(),
        caches.policies.wait_until_ready(),
        caches.drill_jobs.wait_until_ready(),
        caches.drill_pods.wait_until_ready(),
    );
    health.caches_synced.store(true, Ordering::Release);
    info!("watch caches synced; ready");
}

/// A wake-up for every policy whenever this process gains or loses the Lease (a new leader
/// runs every policy at once).
fn leadership_changes(
    is_leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> BoxStream<'static, ()> {
    futures_util::stream::unfold(is_leader, move |mut rx| {
        let metrics = metrics.clone();
        async move {
            let leading = *rx.borrow_and_update();
            metrics.leader.set(leading.into());
            if leading {
                info!("leading: reconciling policies");
            } else {
                info!("following: caches only, no reconciles");
            }
            rx.changed().await.ok()?;
            Some(((), rx))
        }
    })
    .boxed()
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
                    warn!(error = %chain(&e), "watch error (retrying)");
                    None
                }
            }
        })
        .boxed()
}

fn error_policy(policy: Arc<BackupPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(policy = %policy.name_any(), error = %chain(error), "run failed; retrying in 30s");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&PolicyLabel {
            policy: policy.name_any(),
        })
        .inc();
    Action::requeue(Duration::from_secs(30))
}

/// How a run ends: at most this long until the next, even when nothing is due.
const MAX_IDLE: Duration = Duration::from_secs(300);

/// One run of a policy, by the leader only.
async fn reconcile(policy: Arc<BackupPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!("run", policy = %policy.name_any());
    run_policy(policy, ctx).instrument(span).await
}

async fn run_policy(policy: Arc<BackupPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Followers wait: a change of leadership wakes every policy again.
    if !ctx.may_write() {
        return Ok(Action::await_change());
    }
    // Plan only from complete caches (the first reconciles can come before the lists end).
    let _ = ctx.caches.workspaces.wait_until_ready().await;
    let _ = ctx.caches.jobs.wait_until_ready().await;
    let _ = ctx.caches.pods.wait_until_ready().await;
    let _ = ctx.caches.pvcs.wait_until_ready().await;
    let _ = ctx.caches.namespaces.wait_until_ready().await;
    let _ = ctx.caches.policies.wait_until_ready().await;
    let _ = ctx.caches.drill_jobs.wait_until_ready().await;
    let _ = ctx.caches.drill_pods.wait_until_ready().await;
    let now = Utc::now();
    let name = policy.name_any();
    let mut counts = RunCounts::default();
    record_results(&policy, &ctx, &mut counts).await?;
    let checked = check(&policy.spec);
    let drill_schedule = match &checked {
        Ok(c) if !policy.spec.suspend => c.drill.as_ref(),
        _ => None,
    };
    let drill = crate::drill::run(&policy, &ctx, drill_schedule, now).await?;
    let checked = match checked {
        Ok(checked) => checked,
        Err(reason) => {
            let condition = ready(false, "InvalidSpec", &reason);
            write_status(&policy, &ctx, condition, counts, None, None, drill.status).await?;
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
        write_status(
            &policy,
            &ctx,
            condition,
            counts,
            next_run,
            None,
            drill.status,
        )
        .await?;
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
    ctx.metrics.record_run(
        &name,
        planned.counts.running,
        planned.counts.started + planned.counts.deferred,
        &planned.counts.skipped,
        &status.counts.skipped,
    );
    let mut run_counts = planned.counts.clone();
    run_counts.succeeded = counts.succeeded;
    run_counts.failed = counts.failed;
    let mut started_any = false;
    let mut problems = Vec::new();
    let mut auth_by_namespace: HashMap<String, bool> = HashMap::new();
    for p in &planned.start {
        if !ctx.may_create_jobs() {
            // Stopping, or the Lease was lost: the next leader starts the rest.
            run_counts.started -= 1;
            run_counts.deferred += 1;
            continue;
        }
        let span = info_span!("backup", namespace = %p.workspace.namespace().unwrap_or_default(),
                              workspace = %p.workspace.name_any(), job = tracing::field::Empty);
        match start(&policy, &ctx, p, &mut auth_by_namespace)
            .instrument(span)
            .await
        {
            Ok(()) => started_any = true,
            Err(e) => {
                warn!(namespace = %p.workspace.namespace().unwrap_or_default(),
                      workspace = %p.workspace.name_any(), error = %chain(&e), "backup Job not created");
                run_counts.started -= 1;
                *run_counts
                    .skipped
                    .entry("jobNotCreated".into())
                    .or_default() += 1;
                problems.push(e.to_string());
            }
        }
    }
    problems.extend(drill.problem.clone());
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
        drill.status,
    )
    .await?;
    let wake = [planned.wake_at, next_run, drill.wake_at]
        .into_iter()
        .flatten()
        .min();
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
    /// `spec.drill`'s schedule, in the policy's time zone.
    drill: Option<Schedule>,
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
    let drill = match &spec.drill {
        None => None,
        Some(d) => Some(
            Schedule::parse(&d.schedule, spec.time_zone.as_deref())
                .map_err(|e| format!("drill.{e}"))?,
        ),
    };
    Ok(Checked { schedule, drill })
}

/// A created Job counts as running until the Job cache shows it, for at most this long.
pub(crate) const IN_FLIGHT_GRACE: chrono::Duration = chrono::Duration::minutes(2);

impl Context {
    /// Whether this process may write (it leads, or there is no election).
    fn may_write(&self) -> bool {
        *self.is_leader.borrow()
    }

    /// Whether this process may create Jobs: it leads and is not stopping.
    pub(crate) fn may_create_jobs(&self) -> bool {
        self.may_write() && !self.stopping.load(Ordering::Acquire)
    }

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
    tracing::Span::current().record("job", job_name.as_str());
    ctx.metrics
        .backups_started
        .get_or_create(&NamespaceLabel {
            namespace: ns.clone(),
        })
        .inc();
    ctx.in_flight.lock().expect("not poisoned").insert(
        (ns.clone(), ws_name.clone()),
        (job_name.clone(), Utc::now()),
    );
    info!("backup Job created");
    let note = format!(
        "backup Job {job_name} started: {} to {reference}",
        p.volume.claim
    );
    publish_event(
        &ctx.recorder,
        ws,
        "Backup",
        EventType::Normal,
        "BackupStarted",
        &note,
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
        let span = info_span!("backup", namespace = %ns, workspace = %ws_name, job = %job_key.1);
        async {
            let Some(outcome) = read_outcome(ctx, &job) else {
                return Ok(());
            };
            let failures = ws.backup_state().failures;
            let patch = results::annotation_patch(&outcome, failures);
            Api::<DevWorkspace>::namespaced(ctx.client.clone(), &ns)
                .patch(&ws_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            ctx.recorded
                .lock()
                .expect("not poisoned")
                .insert(job_key.clone());
            observe(ctx, &policy.name_any(), &ns, &job, &outcome);
            announce(ctx, &ws, &outcome, counts).await;
            Ok::<(), Error>(())
        }
        .instrument(span)
        .await?;
    }
    Ok(())
}

/// The metrics of one recorded result.
fn observe(ctx: &Context, policy: &str, ns: &str, job: &Job, outcome: &Outcome) {
    let m = &ctx.metrics;
    let started = job.status.as_ref().and_then(|s| s.start_time.as_ref());
    if let Some(started) = started {
        let seconds = (outcome.finished - results::to_chrono(&started.0)).num_milliseconds();
        m.backup_duration.observe(seconds.max(0) as f64 / 1000.0);
    }
    let namespace = NamespaceLabel {
        namespace: ns.into(),
    };
    match &outcome.result {
        Ok(pushed) => {
            m.backups_succeeded.get_or_create(&namespace).inc();
            if let Some(bytes) = pushed.bytes {
                m.backup_size.observe(bytes as f64);
            }
            if let Some(bytes) = pushed.uploaded_bytes {
                m.backup_uploaded.observe(bytes as f64);
            }
            let at = outcome.finished.timestamp_millis() as f64 / 1000.0;
            let last = m.last_success.get_or_create(&PolicyLabel {
                policy: policy.into(),
            });
            if at > last.get() {
                last.set(at);
            }
        }
        Err(_) => {
            let labels = FailureLabels {
                namespace: ns.into(),
                reason: outcome.reason.into(),
            };
            m.backups_failed.get_or_create(&labels).inc();
        }
    }
}

/// The outcome of a finished Job, from its pod's termination message: `wsr-backup --json`
/// writes its report's figures there on success and its reason on failure, so the pod
/// status says everything and no log is read.
fn read_outcome(ctx: &Context, job: &Job) -> Option<Outcome> {
    let uid = job.uid()?;
    let pod = ctx.caches.pods.find(|pod| {
        pod.owner_references()
            .iter()
            .any(|o| o.uid == uid && o.kind == "Job")
    });
    results::outcome(job, pod.as_deref())
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
    info!(reason, "backup result recorded");
    publish_event(&ctx.recorder, ws, "Backup", kind, reason, &note).await;
}

/// Publishes an Event on `object`, its note capped as the annotations are. Best effort: a
/// failure is logged, never returned, so reporting cannot fail the work it reports.
pub(crate) async fn publish_event<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    object: &K,
    action: &str,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(crate::error_annotation(note)),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
        warn!(error = %chain(&e), "cannot publish an Event");
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
    drill: Option<DrillStatus>,
) -> Result<(), Error> {
    let run_now = policy.status.as_ref().and_then(|s| s.last_run_now.clone());
    write_status_full(
        policy, ctx, condition, counts, next_run, last_run, run_now, drill,
    )
    .await
}

/// Patches the status only when it changed (a status write wakes the policy again, so an
/// unconditional write would loop). `lastRunTime` moves only when Jobs were started.
#[allow(clippy::too_many_arguments)] // each is one field of the status
async fn write_status_full(
    policy: &BackupPolicy,
    ctx: &Context,
    mut condition: Condition,
    counts: RunCounts,
    next_run: Option<DateTime<Utc>>,
    last_run: Option<DateTime<Utc>>,
    last_run_now: Option<String>,
    drill: Option<DrillStatus>,
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
        drill,
    };
    if status == old {
        return Ok(());
    }
    // A merge patch keeps what it does not name: a drill status that went away (or lost a
    // field) is removed explicitly.
    let mut value = serde_json::to_value(&status).expect("the status serialises");
    value["drill"] = crate::drill::merge_patch_value(status.drill.as_ref());
    Api::<BackupPolicy>::all(ctx.client.clone())
        .patch_status(
            &policy.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": value})),
        )
        .await?;
    Ok(())
}

/// An error with its sources, one line (the API server's message is often a source).
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}
