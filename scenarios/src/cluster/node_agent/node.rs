//! The node itself: registering Node `wsr-node` with capacity and a Ready condition, the
//! heartbeat (a Lease in `kube-node-lease` plus status updates), and the local volume
//! provisioner: one pre-bound hostPath PersistentVolume per pending claim, which the real
//! PersistentVolume controller then binds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::json;

use super::runtime::now;

pub const NODE_NAME: &str = "wsr-node";
/// Label on the PersistentVolumes the agent provisions.
pub const PROVISIONED_LABEL: &str = "wsr.io/node-agent-provisioned";
const HEARTBEAT: Duration = Duration::from_secs(10);
const LEASE_SECONDS: i32 = 40;

fn memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(4 << 20)
}

/// The node status; `since` is when the conditions last changed (registration), so only the
/// heartbeat time moves on later updates.
fn status_body(since: &str) -> serde_json::Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let capacity =
        json!({"cpu": cpus.to_string(), "memory": format!("{}Ki", memory_kib()), "pods": "110"});
    let t = now();
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": t, "lastTransitionTime": since})
    };
    json!({"status": {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "not measured by the wsr node agent"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "not measured by the wsr node agent"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "not measured by the wsr node agent"),
            condition("Ready", "True", "KubeletReady", "wsr node agent (kubelet stand-in) is posting ready status"),
        ],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": NODE_NAME}],
        "nodeInfo": {
            "machineID": "wsr-node", "systemUUID": "wsr-node", "bootID": "wsr-node",
            "kernelVersion": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "osImage": "wsr node agent", "containerRuntimeVersion": "podman://4",
            "kubeletVersion": "wsr-node-agent", "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": "amd64",
        },
    }})
}

/// Creates the Node (or takes over an existing one), reports it Ready and removes the
/// `not-ready` taint the API server's admission put on it at creation.
pub async fn register(client: &Client, since: &str) -> kube::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": NODE_NAME, "labels": {
            "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
    }))
    .expect("valid node");
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e),
    }
    api.patch_status(
        NODE_NAME,
        &PatchParams::default(),
        &Patch::Merge(status_body(since)),
    )
    .await?;
    let current = api.get(NODE_NAME).await?;
    let taints: Vec<_> = current
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.key != "node.kubernetes.io/not-ready")
        .collect();
    api.patch(
        NODE_NAME,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"taints": taints}})),
    )
    .await?;
    Ok(())
}

/// Renews the node Lease and the Ready condition every [`HEARTBEAT`]; never returns.
pub async fn heartbeat(client: Client, since: String) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    loop {
        let renew = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let spec = json!({"holderIdentity": NODE_NAME, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": renew});
        let result = match leases.get_opt(NODE_NAME).await {
            Ok(Some(_)) => leases
                .patch(
                    NODE_NAME,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": spec})),
                )
                .await
                .map(|_| ()),
            Ok(None) => {
                let owner = nodes.get(NODE_NAME).await.ok().and_then(|n| n.metadata.uid);
                let lease: Lease = serde_json::from_value(json!({
                    "metadata": {"name": NODE_NAME, "ownerReferences": owner.map(|uid| vec![json!({
                        "apiVersion": "v1", "kind": "Node", "name": NODE_NAME, "uid": uid})])},
                    "spec": spec,
                }))
                .expect("valid lease");
                leases
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!("node lease: {e}");
        }
        if let Err(e) = nodes
            .patch_status(
                NODE_NAME,
                &PatchParams::default(),
                &Patch::Merge(status_body(&since)),
            )
            .await
        {
            tracing::warn!("node status: {e}");
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// The host directory backing a claim.
pub fn claim_dir(dir: &Path, pvc: &PersistentVolumeClaim) -> PathBuf {
    let m = &pvc.metadata;
    dir.join("volumes").join(format!(
        "{}_{}_{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default(),
        m.uid.as_deref().unwrap_or_default()
    ))
}

/// The PersistentVolume the agent offers a pending claim: its size, access modes and class,
/// a hostPath directory under the agent's directory, pre-bound to the claim through claimRef.
pub fn volume_for(dir: &Path, pvc: &PersistentVolumeClaim) -> Option<PersistentVolume> {
    let spec = pvc.spec.as_ref()?;
    if spec.volume_mode.as_deref() == Some("Block") {
        return None;
    }
    let m = &pvc.metadata;
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map_or("1Gi".to_owned(), |q| q.0.clone());
    let modes = spec
        .access_modes
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| vec!["ReadWriteOnce".into()]);
    serde_json::from_value(json!({
        "metadata": {"name": format!("wsr-{}", m.uid.as_deref()?), "labels": {PROVISIONED_LABEL: "true"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": modes,
            "storageClassName": spec.storage_class_name.clone().unwrap_or_default(),
            "persistentVolumeReclaimPolicy": "Retain",
            "volumeMode": "Filesystem",
            "hostPath": {"path": claim_dir(dir, pvc), "type": "DirectoryOrCreate"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": m.namespace, "name": m.name, "uid": m.uid},
        },
    }))
    .ok()
}

/// Watches claims: provisions a volume for each pending one, and deletes the volume and its
/// directory when the claim is deleted. Never returns.
pub async fn provision(client: Client, dir: PathBuf) {
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let volumes: Api<PersistentVolume> = Api::all(client);
    let mut events = watcher(claims, watcher::Config::default()).boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(pvc) | watcher::Event::InitApply(pvc)) => {
                let pending =
                    pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
                let unbound = pvc
                    .spec
                    .as_ref()
                    .and_then(|s| s.volume_name.as_ref())
                    .is_none();
                if !(pending && unbound) {
                    continue;
                }
                let Some(pv) = volume_for(&dir, &pvc) else {
                    tracing::warn!(
                        "claim {:?}: block volumes are not provisioned",
                        pvc.metadata.name
                    );
                    continue;
                };
                let path = claim_dir(&dir, &pvc);
                if let Err(e) = std::fs::create_dir_all(&path).and_then(|_| {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
                }) {
                    tracing::warn!("{}: {e}", path.display());
                    continue;
                }
                match volumes.create(&PostParams::default(), &pv).await {
                    Ok(_) => tracing::info!(
                        "provisioned {} for claim {:?}",
                        path.display(),
                        pvc.metadata.name
                    ),
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => tracing::warn!("provision: {e}"),
                }
            }
            Ok(watcher::Event::Delete(pvc)) => {
                if let Some(uid) = &pvc.metadata.uid {
                    let _ = volumes
                        .delete(&format!("wsr-{uid}"), &Default::default())
                        .await;
                    let _ = std::fs::remove_dir_all(claim_dir(&dir, &pvc));
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("claim watch: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_claim_gets_a_pre_bound_host_path_volume() {
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "claim-devworkspace", "namespace": "jdoe", "uid": "u-9"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}},
        }))
        .unwrap();
        let pv = serde_json::to_value(volume_for(Path::new("/d"), &pvc).unwrap()).unwrap();
        assert_eq!(pv["metadata"]["name"], "wsr-u-9");
        assert_eq!(pv["spec"]["capacity"]["storage"], "5Gi");
        assert_eq!(pv["spec"]["storageClassName"], "");
        assert_eq!(
            pv["spec"]["hostPath"]["path"],
            "/d/volumes/jdoe_claim-devworkspace_u-9"
        );
        assert_eq!(pv["spec"]["claimRef"]["uid"], "u-9");
        assert_eq!(pv["spec"]["claimRef"]["namespace"], "jdoe");

        let block: PersistentVolumeClaim = serde_json::from_value(
            json!({"metadata": {"uid": "x"}, "spec": {"volumeMode": "Block"}}),
        )
        .unwrap();
        assert!(volume_for(Path::new("/d"), &block).is_none());
    }

    #[test]
    fn node_status_reports_ready_with_capacity() {
        let s = status_body("2026-01-01T00:00:00Z");
        let ready = s["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert!(
            s["status"]["capacity"]["memory"]
                .as_str()
                .unwrap()
                .ends_with("Ki")
        );
        assert_eq!(s["status"]["capacity"]["pods"], "110");
    }
}
