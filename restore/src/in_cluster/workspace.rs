//! A DevWorkspace as `wsr-restore` reads it (DWO's resource, read through the user's
//! kubeconfig as a dynamic object): its id, phase, storage, annotations and restore attributes.

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client};
use serde_json::Value;
use wsr_workload::names::label;
use wsr_workload::storage::{PvcInfo, WorkspaceVolume, resolve_volume};

/// DWO's storage-type template attribute.
pub const STORAGE_TYPE: &str = "controller.devfile.io/storage-type";
/// DWO's restore attributes (template attributes, not annotations: upstream-dwo.md §4.1).
pub const RESTORE_WORKSPACE: &str = "controller.devfile.io/restore-workspace";
pub const RESTORE_SOURCE_IMAGE: &str = "controller.devfile.io/restore-source-image";

pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("workspace.devfile.io", "v1alpha2", "DevWorkspace"),
        "devworkspaces",
    )
}

pub fn api(client: &Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &resource())
}

/// Reads a DevWorkspace, with a clear message when it does not exist.
pub async fn get(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Workspace> {
    match api(client, namespace).get_opt(name).await {
        Ok(Some(object)) => Ok(Workspace(object)),
        Ok(None) => bail!("DevWorkspace {namespace}/{name} not found"),
        Err(e) => Err(e).with_context(|| format!("reading DevWorkspace {namespace}/{name}")),
    }
}

/// A DevWorkspace object with accessors for what wsr reads.
pub struct Workspace(pub DynamicObject);

impl Workspace {
    fn data(&self, pointer: &str) -> Option<&Value> {
        self.0.data.pointer(pointer)
    }

    pub fn name(&self) -> &str {
        self.0.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn id(&self) -> Option<&str> {
        self.data("/status/devworkspaceId")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
    }

    pub fn phase(&self) -> &str {
        self.data("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn started(&self) -> bool {
        self.data("/spec/started").and_then(Value::as_bool) == Some(true)
    }

    pub fn attribute(&self, key: &str) -> Option<String> {
        let value = self.data("/spec/template/attributes")?.get(key)?;
        Some(match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.0
            .metadata
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    pub fn owner_reference(&self) -> Option<OwnerReference> {
        Some(OwnerReference {
            api_version: "workspace.devfile.io/v1alpha2".into(),
            kind: "DevWorkspace".into(),
            name: self.0.metadata.name.clone()?,
            uid: self.0.metadata.uid.clone()?,
            controller: Some(true),
            block_owner_deletion: None,
        })
    }

    /// Why the workspace cannot be restored into now, if it is (or may be) running.
    pub fn running_reason(&self) -> Option<String> {
        if self.started() {
            return Some(format!("it is started (phase {:?})", self.phase()));
        }
        match self.phase() {
            "Running" | "Starting" | "Stopping" | "Failing" => {
                Some(format!("its phase is {}", self.phase()))
            }
            _ => None,
        }
    }
}

/// Pods of the workspace that are not finished (a stopped workspace has none).
pub async fn live_pods(client: &Client, namespace: &str, id: &str) -> anyhow::Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&format!("{}={id}", label::DEVWORKSPACE_ID)))
        .await
        .context("listing the workspace's pods")?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .filter_map(|p| p.metadata.name)
        // Our own restore Jobs' pods carry the id label too; they are refused separately.
        .filter(|name| !name.starts_with(super::job::JOB_NAME_PREFIX))
        .collect())
}

/// The workspace's PVC and sub path, resolved exactly as the operator does.
pub async fn volume(
    client: &Client,
    namespace: &str,
    ws: &Workspace,
    id: &str,
    common_pvc: &str,
) -> anyhow::Result<WorkspaceVolume> {
    // One list, then the operator's own resolution over it (no second copy of its rules).
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let existing = claims
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing PVCs in {namespace}"))?
        .items;
    let lookup = |name: &str| {
        existing
            .iter()
            .find(|pvc| pvc.metadata.name.as_deref() == Some(name))
            .map(|pvc| PvcInfo {
                access_modes: pvc
                    .spec
                    .as_ref()
                    .and_then(|s| s.access_modes.clone())
                    .unwrap_or_default(),
            })
    };
    let storage_type = ws.attribute(STORAGE_TYPE).unwrap_or_default();
    resolve_volume(&storage_type, id, common_pvc, lookup).with_context(|| {
        format!(
            "workspace {namespace}/{} has no volume to restore into",
            ws.name()
        )
    })
}
