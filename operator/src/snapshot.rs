//! A run's view of the cluster, indexed once from the watch caches so that planning costs
//! O(workspaces) however many Jobs, pods and PVCs exist: active backup Jobs by workspace, the
//! nodes that running workspace pods pin their claims to, PVCs by name, and which policy
//! owns each workspace.

use crate::devworkspace::DevWorkspace;
use crate::names::label;
use crate::plan::ClusterView;
use crate::policy::BackupPolicy;
use crate::results;
use crate::workload::storage::PvcInfo;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

type Key = (String, String);

#[derive(Debug, Default)]
pub struct Snapshot {
    active_jobs: HashSet<Key>,
    nodes: HashMap<Key, String>,
    pvcs: HashMap<Key, PvcInfo>,
}

impl Snapshot {
    /// `in_flight` are (namespace, workspace) pairs whose Job was just created and may not be
    /// in the Job cache yet.
    pub fn new(
        jobs: &[Arc<Job>],
        pods: &[Arc<Pod>],
        pvcs: &[Arc<PersistentVolumeClaim>],
        in_flight: impl IntoIterator<Item = Key>,
    ) -> Snapshot {
        let mut active_jobs: HashSet<Key> = in_flight.into_iter().collect();
        for job in jobs.iter().filter(|j| results::is_active(j)) {
            if let Some(ws) = job.labels().get(label::DEVWORKSPACE_NAME) {
                active_jobs.insert((job.namespace().unwrap_or_default(), ws.clone()));
            }
        }
        let mut nodes = HashMap::new();
        for pod in pods {
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let Some(spec) = pod.spec.as_ref() else {
                continue;
            };
            if !running || pod.labels().contains_key(label::BACKUP_JOB) {
                continue;
            }
            let Some(node) = &spec.node_name else {
                continue;
            };
            for claim in spec
                .volumes
                .iter()
                .flatten()
                .filter_map(|v| v.persistent_volume_claim.as_ref())
            {
                nodes.insert(
                    (
                        pod.namespace().unwrap_or_default(),
                        claim.claim_name.clone(),
                    ),
                    node.clone(),
                );
            }
        }
        let pvcs = pvcs
            .iter()
            .map(|p| {
                let info = PvcInfo {
                    access_modes: p
                        .spec
                        .as_ref()
                        .and_then(|s| s.access_modes.clone())
                        .unwrap_or_default(),
                };
                ((p.namespace().unwrap_or_default(), p.name_any()), info)
            })
            .collect();
        Snapshot {
            active_jobs,
            nodes,
            pvcs,
        }
    }
}

fn key(a: &str, b: &str) -> Key {
    (a.to_owned(), b.to_owned())
}

impl ClusterView for Snapshot {
    fn pvc(&self, namespace: &str, name: &str) -> Option<PvcInfo> {
        self.pvcs.get(&key(namespace, name)).cloned()
    }
    fn node_holding(&self, namespace: &str, claim: &str) -> Option<String> {
        self.nodes.get(&key(namespace, claim)).cloned()
    }
    fn job_running(&self, namespace: &str, workspace: &str) -> bool {
        self.active_jobs.contains(&key(namespace, workspace))
    }
}

/// Which policy owns a workspace: the first, by name, whose selectors match (so two policies
/// never back the same workspace up). Policies with an invalid selector own nothing.
pub struct Owners {
    policies: Vec<(String, Option<Selector>, Option<Selector>)>,
}

impl Owners {
    pub fn new(policies: &[Arc<BackupPolicy>]) -> Owners {
        let parse = |s: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>| {
            s.clone().map(Selector::try_from).transpose()
        };
        let mut policies: Vec<_> = policies
            .iter()
            .filter_map(|p| {
                let ns = parse(&p.spec.namespace_selector).ok()?;
                let ws = parse(&p.spec.workspace_selector).ok()?;
                Some((p.name_any(), ns, ws))
            })
            .collect();
        policies.sort_by(|a, b| a.0.cmp(&b.0));
        Owners { policies }
    }

    pub fn owner(
        &self,
        namespace_labels: &BTreeMap<String, String>,
        ws: &DevWorkspace,
    ) -> Option<&str> {
        let matches = |s: &Option<Selector>, labels: &BTreeMap<String, String>| {
            s.as_ref().is_none_or(|s| s.matches(labels))
        };
        self.policies
            .iter()
            .find(|(_, ns, sel)| matches(ns, namespace_labels) && matches(sel, ws.labels()))
            .map(|(name, _, _)| name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devworkspace::fixtures::workspace;

    fn policy(name: &str, ns_selector: serde_json::Value) -> Arc<BackupPolicy> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "wsr.dev/v1alpha1", "kind": "BackupPolicy",
                "metadata": {"name": name},
                "spec": {"registry": {"path": "r.example"}, "namespaceSelector": ns_selector}}))
            .unwrap(),
        )
    }

    #[test]
    fn the_first_matching_policy_by_name_owns_a_workspace() {
        let owners = Owners::new(&[
            policy("b-team", serde_json::json!({"matchLabels": {"team": "b"}})),
            policy("z-default", serde_json::json!(null)),
            policy(
                "a-team",
                serde_json::json!({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]}),
            ),
        ]);
        let ws = workspace("n", "w", "id", "Stopped");
        let labels = |team: &str| BTreeMap::from([("team".to_owned(), team.to_owned())]);
        assert_eq!(owners.owner(&labels("a"), &ws), Some("a-team"));
        assert_eq!(owners.owner(&labels("b"), &ws), Some("b-team"));
        assert_eq!(owners.owner(&labels("c"), &ws), Some("z-default"));
    }

    #[test]
    fn indexes_active_jobs_and_pinned_nodes() {
        let job: Job = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "j", "namespace": "n",
            "labels": {"controller.devfile.io/devworkspace_name": "w"}}, "status": {"active": 1}}),
        )
        .unwrap();
        let done: Job = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "k", "namespace": "n",
            "labels": {"controller.devfile.io/devworkspace_name": "x"}},
            "status": {"conditions": [{"type": "Complete", "status": "True"}]}}),
        )
        .unwrap();
        let pod: Pod = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "p", "namespace": "n"},
            "spec": {"nodeName": "node-1", "containers": [], "volumes": [
                {"name": "v", "persistentVolumeClaim": {"claimName": "claim-devworkspace"}}]},
            "status": {"phase": "Running"}}),
        )
        .unwrap();
        let s = Snapshot::new(
            &[Arc::new(job), Arc::new(done)],
            &[Arc::new(pod)],
            &[],
            [key("n", "y")],
        );
        assert!(s.job_running("n", "w") && s.job_running("n", "y") && !s.job_running("n", "x"));
        assert_eq!(
            s.node_holding("n", "claim-devworkspace").as_deref(),
            Some("node-1")
        );
        assert_eq!(s.node_holding("m", "claim-devworkspace"), None);
    }
}
