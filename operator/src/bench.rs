//! `wsr-operator bench-plan`: the planning step of one run over N synthetic workspaces (a
//! realistic mix of running, stopped, backed-up, failing and never-started ones, spread over
//! namespaces with common and per-workspace storage), timed.

use crate::devworkspace::{DevWorkspace, DevWorkspaceSpec, DevWorkspaceStatus, WorkspaceCondition};
use crate::eligibility::Timing;
use crate::names::annotation;
use crate::plan::{ClusterView, plan};
use crate::policy::BackupPolicySpec;
use crate::schedule::Schedule;
use crate::workload::storage::PvcInfo;
use chrono::{DateTime, Duration, Utc};
use kube::api::ObjectMeta;
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

/// Every namespace has the common PVC; per-workspace PVCs exist for every tenth workspace.
struct SyntheticView {
    running_jobs: HashSet<(String, String)>,
}

impl ClusterView for SyntheticView {
    fn pvc(&self, _ns: &str, name: &str) -> Option<PvcInfo> {
        (name == "claim-devworkspace" || name.starts_with("storage-")).then(|| PvcInfo {
            access_modes: vec!["ReadWriteOnce".into()],
        })
    }
    fn node_holding(&self, _ns: &str, _claim: &str) -> Option<String> {
        None
    }
    fn job_running(&self, ns: &str, ws: &str) -> bool {
        self.running_jobs.contains(&(ns.to_owned(), ws.to_owned()))
    }
}

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

/// Builds `n` workspaces and plans `rounds` runs over them; prints and returns the median
/// planning time.
pub fn bench_plan(n: usize, rounds: usize) -> std::time::Duration {
    let now = Utc::now();
    let workspaces: Vec<DevWorkspace> = (0..n).map(|i| synthetic(i, now)).collect();
    let view = SyntheticView {
        running_jobs: (0..n)
            .step_by(97)
            .map(|i| (format!("user{}", i / 3), format!("ws-{i}")))
            .collect(),
    };
    let spec: BackupPolicySpec = serde_json::from_value(serde_json::json!({
        "registry": {"path": "registry.example/backups"}, "maxConcurrentJobs": 50,
        "schedule": "*/30 * * * *", "trigger": "onStop"}))
    .expect("valid spec");
    let schedule = Schedule::parse(&spec.schedule, None).expect("valid schedule");
    let timing = Timing {
        schedule: &schedule,
        on_stop_delay: Some(Duration::seconds(60)),
        policy_created: now - Duration::days(30),
        run_now: false,
    };
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        let p = plan(&spec, &timing, &workspaces, &view, 5, now);
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
