//! The parts of a DevWorkspace (`workspace.devfile.io/v1alpha2`, owned by DWO, not by wsr) that
//! the operator reads, as a partial typed view: unknown fields are ignored, and the operator
//! only ever merge-patches annotations, so nothing it does not know is lost.

use crate::eligibility::{LastBackup, WorkspaceState};
use crate::names::{annotation, wsr_annotation};
use chrono::{DateTime, Utc};
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `spec` of a DevWorkspace, as far as backups care.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "workspace.devfile.io",
    version = "v1alpha2",
    kind = "DevWorkspace",
    plural = "devworkspaces",
    namespaced,
    status = "DevWorkspaceStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct DevWorkspaceSpec {
    #[serde(default)]
    pub started: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Template>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Template {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DevWorkspaceStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default, rename = "devworkspaceId")]
    pub devworkspace_id: Option<String>,
    #[serde(default)]
    pub conditions: Vec<WorkspaceCondition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub last_transition_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub message: Option<String>,
}

/// DWO's storage-type template attribute.
pub const STORAGE_TYPE_ATTRIBUTE: &str = "controller.devfile.io/storage-type";

impl DevWorkspace {
    /// `status.devworkspaceId`, which names the workspace's directory and PVC.
    pub fn workspace_id(&self) -> Option<&str> {
        self.status
            .as_ref()?
            .devworkspace_id
            .as_deref()
            .filter(|id| !id.is_empty())
    }

    /// The storage-type attribute (`common` when unset).
    pub fn storage_type(&self) -> &str {
        self.spec
            .template
            .as_ref()
            .and_then(|t| t.attributes.get(STORAGE_TYPE_ATTRIBUTE))
            .and_then(|v| v.as_str())
            .unwrap_or("")
    }

    /// What the eligibility rules need, from status and this workspace's own annotations.
    pub fn backup_state(&self) -> WorkspaceState {
        let status = self.status.as_ref();
        let annotations = self.metadata.annotations.as_ref();
        WorkspaceState {
            phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
            last_stopped: status.and_then(|s| last_stopped(&s.conditions)),
            last_backup: annotations.and_then(last_backup),
            failures: annotations
                .and_then(|a| a.get(wsr_annotation::FAILURES))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            job_running: false,
        }
    }
}

/// `lastTransitionTime` of the last `Started=False` condition (upstream's rule).
fn last_stopped(conditions: &[WorkspaceCondition]) -> Option<DateTime<Utc>> {
    conditions
        .iter()
        .rev()
        .find(|c| c.type_ == "Started" && c.status == "False")
        .and_then(|c| c.last_transition_time)
}

/// The last backup from upstream's annotations; an unparseable time counts as none.
fn last_backup(annotations: &BTreeMap<String, String>) -> Option<LastBackup> {
    let finished = annotations.get(annotation::LAST_BACKUP_FINISHED_AT)?;
    let finished = DateTime::parse_from_rfc3339(finished)
        .ok()?
        .with_timezone(&Utc);
    let successful = annotations
        .get(annotation::LAST_BACKUP_SUCCESSFUL)
        .is_some_and(|v| v == "true");
    Some(LastBackup {
        finished,
        successful,
    })
}

#[cfg(test)]
pub mod fixtures {
    //! DevWorkspace builders for tests.
    use super::*;
    use kube::api::ObjectMeta;

    pub fn workspace(ns: &str, name: &str, id: &str, phase: &str) -> DevWorkspace {
        DevWorkspace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: DevWorkspaceSpec::default(),
            status: Some(DevWorkspaceStatus {
                phase: Some(phase.into()),
                devworkspace_id: Some(id.into()),
                conditions: vec![],
            }),
        }
    }

    impl DevWorkspace {
        pub fn stopped_at(mut self, t: DateTime<Utc>) -> Self {
            self.status
                .as_mut()
                .unwrap()
                .conditions
                .push(WorkspaceCondition {
                    type_: "Started".into(),
                    status: "False".into(),
                    last_transition_time: Some(t),
                    message: Some("Workspace is stopped".into()),
                });
            self
        }
        pub fn annotated(mut self, key: &str, value: &str) -> Self {
            self.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(key.into(), value.into());
            self
        }
        pub fn storage(mut self, kind: &str) -> Self {
            self.spec
                .template
                .get_or_insert_with(Default::default)
                .attributes
                .insert(STORAGE_TYPE_ATTRIBUTE.into(), kind.into());
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_real_devworkspace_document() {
        let dw: DevWorkspace = serde_json::from_value(serde_json::json!({
            "apiVersion": "workspace.devfile.io/v1alpha2",
            "kind": "DevWorkspace",
            "metadata": {"name": "ws", "namespace": "user1", "annotations": {
                "controller.devfile.io/last-backup-finished-at": "2026-11-20T10:00:00.123456789Z",
                "controller.devfile.io/last-backup-successful": "true"}},
            "spec": {"started": false, "routingClass": "che", "template": {
                "attributes": {"controller.devfile.io/storage-type": "per-workspace"},
                "components": [{"name": "tools", "container": {"image": "x"}}]}},
            "status": {"phase": "Stopped", "devworkspaceId": "workspace0123456789abcdef",
                "mainUrl": "https://x", "conditions": [
                {"type": "Started", "status": "False", "lastTransitionTime": "2026-11-19T09:00:00Z"},
                {"type": "Started", "status": "False", "lastTransitionTime": "2026-11-21T09:00:00Z",
                 "message": "Workspace is stopped"},
                {"type": "Ready", "status": "False", "lastTransitionTime": "2026-11-22T09:00:00Z"}]}
        }))
        .unwrap();
        assert_eq!(dw.workspace_id(), Some("workspace0123456789abcdef"));
        assert_eq!(dw.storage_type(), "per-workspace");
        let state = dw.backup_state();
        assert_eq!(state.phase, "Stopped");
        assert_eq!(
            state.last_stopped.unwrap().to_rfc3339(),
            "2026-11-21T09:00:00+00:00"
        );
        let last = state.last_backup.unwrap();
        assert!(last.successful);
        assert_eq!(last.finished.timestamp_subsec_nanos(), 123456789);
    }
}
