//! `wsr-operator bench-plan`: the planning step of one run over N synthetic workspaces (a
//! realistic mix of running, stopped, backed-up, failing and never-started ones, spread over
//! namespaces with common and per-workspace storage, with as many retained Jobs), timed.

use crate::devworkspace::{DevWorkspace, DevWorkspaceSpec, DevWorkspaceStatus, WorkspaceCondition};
use crate::eligibility::Timing;
use crate::names::annotation;
use crate::plan::plan;
use crate::policy::BackupPolicy;
use crate::schedule::Schedule;
use crate::snapshot::{Owners, Snapshot};
use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::ObjectMeta;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

fn synthetic(i: usize, now: DateTime<Utc>) -> DevWorkspace {
    let ns = format!("user{}", i / 3);
    let stopped = now - Duration::minutes((i % 5000) as i64 + 1);
    let phase = if i.is_multiple_of(4) {
        "Running"
    } else {
        "Stopped"
    };
    let mut annotations = BTreeMap::new();
    match i % 7 {
        0..=2 => {
            let done = stopped + Duration::seconds(if i.is_multiple_of(2) { 30 } else { -30 });
            annotations.insert(
                annotation::LAST_BACKUP_FINISHED_AT.to_owned(),
                done.to_rfc3339(),
            );
            annotations.insert(
                annotation::LAST_BACKUP_SUCCESSFUL.to_owned(),
                "true".to_owned(),
            );
        }
        3 => {
            annotations.insert(
                annotation::LAST_BACKUP_FINISHED_AT.to_owned(),
                stopped.to_rfc3339(),
            );
            annotations.insert(
                annotation::LAST_BACKUP_SUCCESSFUL.to_owned(),
                "false".to_owned(),
            );
            annotations.insert(
                crate::names::wsr_annotation::FAILURES.to_owned(),
                "2".to_owned(),
            );
        }
        _ => {}
    }
    let mut template = crate::devworkspace::Template::default();
    if i.is_multiple_of(10) {
        template.attributes.insert(
            crate::devworkspace::STORAGE_TYPE_ATTRIBUTE.into(),
            "per-workspace".into(),
        );
    }
    DevWorkspace {
        metadata: ObjectMeta {
            name: Some(format!("ws-{i}")),
            namespace: Some(ns),
            uid: Some(format!("uid-{i}")),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: DevWorkspaceSpec {
            started: phase == "Running",
            template: Some(template),
        },
        status: Some(DevWorkspaceStatus {
            phase: Some(phase.into()),
            devworkspace_id: Some(format!("workspace{i:016x}")),
            conditions: if i.is_multiple_of(11) {
                vec![]
            } else {
                vec![WorkspaceCondition {
                    type_: "Started".into(),
                    status: "False".into(),
                    last_transition_time: Some(stopped),
                    message: None,
                }]
            },
        }),
    }
}

fn job(i: usize, active: bool) -> Arc<Job> {
    let status = if active {
        serde_json::json!({"active": 1})
    } else {
        serde_json::json!({"conditions": [{"type": "Complete", "status": "True"}]})
    };
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("devworkspace-backup-{i}"), "namespace": format!("user{}", i / 3),
                "labels": {"controller.devfile.io/backup-job": "true",
                           "controller.devfile.io/devworkspace_name": format!("ws-{i}"),
                           "wsr.dev/policy": "bench"}},
            "status": status}))
        .expect("valid Job"),
    )
}

fn pod(i: usize) -> Arc<Pod> {
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("ws-{i}-pod"), "namespace": format!("user{}", i / 3)},
            "spec": {"nodeName": format!("node-{}", i % 50), "containers": [], "volumes": [
                {"name": "v", "persistentVolumeClaim": {"claimName": "claim-devworkspace"}}]},
            "status": {"phase": "Running"}}))
        .expect("valid Pod"),
    )
}

fn pvc(ns: String, name: String) -> Arc<PersistentVolumeClaim> {
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"accessModes": ["ReadWriteOnce"]}}))
        .expect("valid PVC"),
    )
}

/// Builds `n` workspaces with one retained Job each (every 97th still active), a pod per
/// running workspace and their PVCs, then times `rounds` runs of what a reconcile does
/// between reading the caches and creating Jobs: indexing the caches, choosing each
/// workspace's policy and planning. Prints and returns the median.
pub fn bench_plan(n: usize, rounds: usize) -> std::time::Duration {
    let now = Utc::now();
    let workspaces: Vec<DevWorkspace> = (0..n).map(|i| synthetic(i, now)).collect();
    let jobs: Vec<Arc<Job>> = (0..n).map(|i| job(i, i % 97 == 0)).collect();
    let pods: Vec<Arc<Pod>> = (0..n).filter(|i| i.is_multiple_of(4)).map(pod).collect();
    let mut pvcs: Vec<Arc<PersistentVolumeClaim>> = (0..n.div_ceil(3))
        .map(|u| pvc(format!("user{u}"), "claim-devworkspace".into()))
        .collect();
    pvcs.extend((0..n).filter(|i| i.is_multiple_of(10)).map(|i| {
        pvc(
            format!("user{}", i / 3),
            format!("storage-workspace{i:016x}"),
        )
    }));
    let policy: Arc<BackupPolicy> = Arc::new(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "wsr.dev/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "bench"},
            "spec": {"registry": {"path": "registry.example/backups"}, "maxConcurrentJobs": 50,
                     "schedule": "*/30 * * * *", "trigger": "onStop",
                     "workspaceSelector": {"matchExpressions": [
                         {"key": "wsr.dev/skip", "operator": "DoesNotExist"}]}}}))
        .expect("valid policy"),
    );
    let schedule = Schedule::parse(&policy.spec.schedule, None).expect("valid schedule");
    let timing = Timing {
        schedule: &schedule,
        on_stop_delay: Some(Duration::seconds(60)),
        policy_created: now - Duration::days(30),
        run_now: false,
    };
    let no_labels = BTreeMap::new();
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        let view = Snapshot::new(&jobs, &pods, &pvcs, []);
        let owners = Owners::new(std::slice::from_ref(&policy));
        let selected = workspaces
            .iter()
            .filter(|ws| owners.owner(&no_labels, ws) == Some("bench"));
        let p = plan(&policy.spec, &timing, selected, &view, 5, now);
        times.push(t.elapsed());
        last = Some(p.counts);
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "planned {n} workspaces in {:.1} ms (median of {}; min {:.1} ms, max {:.1} ms); counts: {}",
        median.as_secs_f64() * 1e3,
        times.len(),
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        serde_json::to_string(&last).unwrap_or_default()
    );
    median
}
