//! One run of a policy, planned without API calls: which selected workspaces get a backup Job
//! now (bounded by `maxConcurrentJobs`, oldest stop first), which wait and until when, and the
//! counts by reason for the policy status. Everything it reads comes from the watch caches.

use crate::devworkspace::DevWorkspace;
use crate::eligibility::{Backoff, Due, Timing, due};
use crate::policy::{BackupPolicySpec, RunCounts};
use crate::workload::storage::{PvcInfo, WorkspaceVolume, resolve_volume};
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;

/// What a plan may ask of the cluster state (answered from caches).
pub trait ClusterView {
    /// A PVC in `namespace`.
    fn pvc(&self, namespace: &str, name: &str) -> Option<PvcInfo>;
    /// The node of a running pod in `namespace` that mounts `claim`.
    fn node_holding(&self, namespace: &str, claim: &str) -> Option<String>;
    /// Whether a backup Job for this workspace is active.
    fn job_running(&self, namespace: &str, workspace: &str) -> bool;
}

/// A backup to start now.
#[derive(Debug)]
pub struct Planned<'a> {
    pub workspace: &'a DevWorkspace,
    pub workspace_id: String,
    pub volume: WorkspaceVolume,
    pub node: Option<String>,
}

#[derive(Debug, Default)]
pub struct Plan<'a> {
    pub start: Vec<Planned<'a>>,
    pub counts: RunCounts,
    /// The earliest time something becomes due (the next reconcile).
    pub wake_at: Option<DateTime<Utc>>,
}

/// When workspaces wait for a free slot, look again after this long (finishing Jobs also
/// wake the policy through the Job watch).
const DEFERRED_RECHECK: Duration = Duration::seconds(30);

/// Plans one run. `active_jobs` is the number of this policy's Jobs still running.
pub fn plan<'a>(
    spec: &BackupPolicySpec,
    timing: &Timing,
    workspaces: impl IntoIterator<Item = &'a DevWorkspace>,
    view: &impl ClusterView,
    active_jobs: u32,
    now: DateTime<Utc>,
) -> Plan<'a> {
    let backoff = Backoff {
        initial: Duration::seconds(spec.failure_backoff.initial_seconds.into()),
        max: Duration::seconds(spec.failure_backoff.max_seconds.into()),
    };
    let mut counts = RunCounts::default();
    let mut skipped: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut wake_at: Option<DateTime<Utc>> = None;
    let mut due_now: Vec<(DateTime<Utc>, Planned<'a>)> = Vec::new();
    for ws in workspaces {
        counts.selected += 1;
        let ns = ws.metadata.namespace.as_deref().unwrap_or_default();
        let name = ws.metadata.name.as_deref().unwrap_or_default();
        let mut state = ws.backup_state();
        // Only stopped workspaces can have a Job worth looking up.
        state.job_running = state.phase == "Stopped" && view.job_running(ns, name);
        if state.job_running {
            counts.running += 1;
        }
        match due(&state, &backoff, timing, now) {
            Due::Never(why) => *skipped.entry(why.as_str()).or_default() += 1,
            Due::At(at, why) => {
                *skipped.entry(why.as_str()).or_default() += 1;
                wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
            }
            Due::Now => {
                let Some(id) = ws.workspace_id() else {
                    *skipped.entry("noWorkspaceId").or_default() += 1;
                    continue;
                };
                let pvc = |claim: &str| view.pvc(ns, claim);
                match resolve_volume(ws.storage_type(), id, &spec.storage.common_pvc_name, pvc) {
                    Err(why) => *skipped.entry(why.as_str()).or_default() += 1,
                    Ok(volume) => {
                        let stopped = state.last_stopped.unwrap_or(now);
                        due_now.push((
                            stopped,
                            Planned {
                                workspace: ws,
                                workspace_id: id.to_owned(),
                                volume,
                                node: None,
                            },
                        ));
                    }
                }
            }
        }
    }
    // Oldest stop first, so a backlog drains fairly.
    due_now.sort_by_key(|(stopped, p)| (*stopped, p.workspace.metadata.uid.clone()));
    let slots = spec.max_concurrent_jobs.saturating_sub(active_jobs) as usize;
    let start: Vec<Planned> = due_now.into_iter().map(|(_, p)| p).collect();
    let (start, deferred) = if start.len() > slots {
        let mut start = start;
        let deferred = start.split_off(slots);
        (start, deferred.len())
    } else {
        (start, 0)
    };
    let mut start = start;
    for p in &mut start {
        // A shared single-node claim may be attached to a node by a running workspace.
        if p.volume.shared && p.volume.single_node {
            let ns = p
                .workspace
                .metadata
                .namespace
                .as_deref()
                .unwrap_or_default();
            p.node = view.node_holding(ns, &p.volume.claim);
        }
    }
    if deferred > 0 {
        let at = now + DEFERRED_RECHECK;
        wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
    }
    counts.deferred = deferred as u32;
    counts.started = start.len() as u32;
    counts.skipped = skipped
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    Plan {
        start,
        counts,
        wake_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devworkspace::fixtures::workspace;
    use crate::names::annotation;
    use crate::schedule::Schedule;
    use std::collections::{HashMap, HashSet};

    #[derive(Default)]
    struct View {
        pvcs: HashMap<(String, String), PvcInfo>,
        nodes: HashMap<(String, String), String>,
        running: HashSet<(String, String)>,
    }

    impl ClusterView for View {
        fn pvc(&self, ns: &str, name: &str) -> Option<PvcInfo> {
            self.pvcs.get(&(ns.into(), name.into())).cloned()
        }
        fn node_holding(&self, ns: &str, claim: &str) -> Option<String> {
            self.nodes.get(&(ns.into(), claim.into())).cloned()
        }
        fn job_running(&self, ns: &str, ws: &str) -> bool {
            self.running.contains(&(ns.into(), ws.into()))
        }
    }

    fn t(min: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + min * 60, 0).unwrap()
    }

    fn spec(max: u32) -> BackupPolicySpec {
        serde_json::from_value(serde_json::json!({
            "registry": {"path": "r.example"}, "maxConcurrentJobs": max}))
        .unwrap()
    }

    #[test]
    fn a_run_starts_due_workspaces_up_to_the_limit_and_counts_the_rest() {
        let hourly = Schedule::parse("0 * * * *", None).unwrap();
        let timing = Timing {
            schedule: &hourly,
            on_stop_delay: None,
            policy_created: t(-1000),
            run_now: false,
        };
        let rwo = PvcInfo {
            access_modes: vec!["ReadWriteOnce".into()],
        };
        let mut view = View::default();
        view.pvcs
            .insert(("a".into(), "claim-devworkspace".into()), rwo.clone());
        view.nodes
            .insert(("a".into(), "claim-devworkspace".into()), "node-7".into());
        view.running.insert(("a".into(), "busy".into()));
        let workspaces = vec![
            workspace("a", "old", "w1", "Stopped").stopped_at(t(-30)),
            workspace("a", "new", "w2", "Stopped").stopped_at(t(-20)),
            workspace("a", "newest", "w3", "Stopped").stopped_at(t(-10)),
            workspace("a", "running", "w4", "Running").stopped_at(t(-50)),
            workspace("a", "never", "w5", "Stopped"),
            workspace("a", "busy", "w6", "Stopped").stopped_at(t(-40)),
            workspace("a", "eph", "w7", "Stopped")
                .stopped_at(t(-40))
                .storage("ephemeral"),
            workspace("b", "nopvc", "w8", "Stopped").stopped_at(t(-40)),
            workspace("a", "later", "w9", "Stopped").stopped_at(t(5)),
            workspace("a", "done", "w10", "Stopped")
                .stopped_at(t(-40))
                .annotated(annotation::LAST_BACKUP_FINISHED_AT, "2027-01-15T07:50:00Z")
                .annotated(annotation::LAST_BACKUP_SUCCESSFUL, "true"),
        ];
        let plan = plan(&spec(3), &timing, &workspaces, &view, 1, t(10));
        let started: Vec<_> = plan
            .start
            .iter()
            .map(|p| p.workspace.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            started,
            ["old", "new"],
            "oldest first, 3 slots minus 1 active"
        );
        assert_eq!(plan.start[0].node.as_deref(), Some("node-7"));
        assert_eq!(plan.start[0].volume.sub_path, "w1/projects");
        let c = &plan.counts;
        assert_eq!(
            (c.selected, c.started, c.deferred, c.running),
            (10, 2, 1, 1)
        );
        let skipped: Vec<(&str, u32)> = c.skipped.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            skipped,
            [
                ("ephemeralStorage", 1),
                ("jobRunning", 1),
                ("neverStarted", 1),
                ("noPVC", 1),
                ("notDue", 1),
                ("notStopped", 1),
                ("upToDate", 1)
            ]
        );
        // The deferred one is looked at again in 30 s, before "later" becomes due at t(60).
        assert_eq!(plan.wake_at, Some(t(10) + DEFERRED_RECHECK));
    }
}
