//! Cluster fixtures: workspaces as the DevWorkspace Operator would leave them, without running
//! DWO. [`install_devworkspace_crd`] installs a minimal `devworkspaces.workspace.devfile.io`
//! CRD (v1alpha2, structural schema, status subresource, DWO's open parts kept with
//! `x-kubernetes-preserve-unknown-fields`); [`Workspace::create`] makes one workspace:
//!
//! - the DevWorkspace object with `spec.started`, and a status with `phase`, `devworkspaceId`
//!   and a `Started` condition whose `lastTransitionTime` is when it started or stopped;
//! - the common PVC `claim-devworkspace` (shared by every workspace of the namespace), bound by
//!   the real PV controller to a node-agent hostPath volume, whose host directory the test
//!   fills through [`Workspace::projects_dir`] (`<claim dir>/<workspaceId>/projects`);
//! - a running workspace: Deployment `<workspaceId>` whose pod carries DWO's labels
//!   (`controller.devfile.io/devworkspace_id`, `devworkspace_name`, `creator`), mounts
//!   `<workspaceId>/projects` of the claim at `/projects` and runs a long-lived process
//!   (the [`WORKSPACE_IMAGE`], busybox, built locally by [`build_workspace_image`]);
//!   a stopped workspace: the same Deployment scaled to 0, as DWO leaves it.
//!
//! Typical use in a cluster test:
//! ```no_run
//! # async fn f(client: kube::Client) -> anyhow::Result<()> {
//! use scenarios::cluster::fixtures::{self, Phase, Workspace};
//! fixtures::install_devworkspace_crd(&client).await?;
//! let ws = Workspace::new("jdoe-devspaces", "my-workspace", "workspace7f3c1e2a9b8d4c05");
//! let created = ws.create(&client, Phase::Stopped).await?;
//! std::fs::write(created.projects_dir.join("README.md"), "hello")?;
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client};
use serde_json::{Value, json};

pub const CRD_NAME: &str = "devworkspaces.workspace.devfile.io";
/// DWO's common PVC name (`config.workspace.pvcName` default).
pub const COMMON_PVC: &str = "claim-devworkspace";
/// The labels DWO puts on a workspace's pods, Deployment, Jobs and ServiceAccounts.
pub const LABEL_ID: &str = "controller.devfile.io/devworkspace_id";
pub const LABEL_NAME: &str = "controller.devfile.io/devworkspace_name";
pub const LABEL_CREATOR: &str = "controller.devfile.io/creator";
/// A busybox image for long-lived workspace containers ([`build_workspace_image`]).
pub const WORKSPACE_IMAGE: &str = "localhost/wsr-test-workspace:busybox";
/// The label that makes a namespace enforce the "restricted" Pod Security Standard.
pub const RESTRICTED: (&str, &str) = ("pod-security.kubernetes.io/enforce", "restricted");
/// uid and fsGroup DWO gives workspace pods on Kubernetes.
pub const WORKSPACE_UID: i64 = 1234;

const WAIT: Duration = Duration::from_secs(120);

/// The DevWorkspace CRD: the parts of DWO's schema that wsr reads are typed; the rest of
/// `spec.template` and `status` stays open as in DWO's own CRD.
pub fn devworkspace_crd() -> CustomResourceDefinition {
    let condition = json!({"type": "object", "required": ["type", "status"], "properties": {
        "type": {"type": "string"}, "status": {"type": "string"},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
        "reason": {"type": "string"}, "message": {"type": "string"}}});
    let schema = json!({"type": "object", "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
        "spec": {"type": "object", "properties": {
            "started": {"type": "boolean"},
            "routingClass": {"type": "string"},
            "contributions": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            "template": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {
            "devworkspaceId": {"type": "string"},
            "phase": {"type": "string"},
            "mainUrl": {"type": "string"},
            "message": {"type": "string"},
            "conditions": {"type": "array", "items": condition}}}}});
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": "workspace.devfile.io",
            "names": {"kind": "DevWorkspace", "listKind": "DevWorkspaceList", "plural": "devworkspaces",
                      "singular": "devworkspace", "shortNames": ["dw"]},
            "scope": "Namespaced",
            "versions": [{"name": "v1alpha2", "served": true, "storage": true,
                          "subresources": {"status": {}},
                          "schema": {"openAPIV3Schema": schema}}],
        },
    }))
    .expect("valid CRD")
}

/// The API resource for `Api<DynamicObject>` on DevWorkspaces.
pub fn devworkspace_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("workspace.devfile.io", "v1alpha2", "DevWorkspace"),
        "devworkspaces",
    )
}

/// Installs the CRD (an existing one is kept) and waits until it is Established.
pub async fn install_devworkspace_crd(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    match api
        .create(&PostParams::default(), &devworkspace_crd())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e).context("creating the DevWorkspace CRD"),
    }
    poll("the DevWorkspace CRD to be Established", || async {
        let crd = api.get(CRD_NAME).await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        Ok(established.then_some(()))
    })
    .await
}

/// Builds [`WORKSPACE_IMAGE`] (Debian's static busybox, from scratch) into the node agent's
/// image storage unless it is there already; a few seconds.
pub fn build_workspace_image() -> Result<()> {
    let storage = crate::podman::image_storage();
    if crate::podman::command(&storage)
        .args(["image", "exists", WORKSPACE_IMAGE])
        .status()
        .is_ok_and(|s| s.success())
    {
        return Ok(());
    }
    let busybox = PathBuf::from("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox is missing: apt-get install busybox-static");
    }
    let buildah = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new("buildah")
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .context("cannot run buildah")?;
        if !out.status.success() {
            bail!("buildah {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let ctr = buildah(&["from", "--quiet", "scratch"])?;
    let result = (|| {
        buildah(&["copy", "--quiet", &ctr, "/bin/busybox", "/bin/busybox"])?;
        buildah(&[
            "config",
            "--user",
            "1234:0",
            "--entrypoint",
            "[\"/bin/busybox\"]",
            &ctr,
        ])?;
        buildah(&["commit", "--quiet", &ctr, WORKSPACE_IMAGE])
    })();
    let _ = buildah(&["rm", &ctr]);
    result.map(|_| ())
}

/// Whether the workspace runs (`Running`, `Started=True`, one pod) or is stopped (`Stopped`,
/// `Started=False`, Deployment at 0 replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    Stopped,
}

/// A workspace to create; see the module docs.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub namespace: String,
    pub name: String,
    /// `status.devworkspaceId` (DWO: `workspace` + 16 hex digits).
    pub id: String,
    /// `metadata.uid` of the creating user, for the creator label.
    pub creator: String,
}

/// What [`Workspace::create`] made.
#[derive(Debug, Clone)]
pub struct CreatedWorkspace {
    pub devworkspace: DynamicObject,
    /// The common PVC's host directory.
    pub claim_dir: PathBuf,
    /// `<claim dir>/<workspaceId>/projects`, created (mode 0777) and empty.
    pub projects_dir: PathBuf,
    /// The workspace pod's name when running.
    pub pod: Option<String>,
}

impl Workspace {
    pub fn new(namespace: &str, name: &str, id: &str) -> Workspace {
        Workspace {
            namespace: namespace.into(),
            name: name.into(),
            id: id.into(),
            creator: "5f0e6c1a-1234-4c2b-9d4e-000000000000".into(),
        }
    }

    fn labels(&self) -> Value {
        json!({LABEL_ID: self.id, LABEL_NAME: self.name, LABEL_CREATOR: self.creator})
    }

    /// Creates the workspace in `phase` (the namespace must exist; the CRD must be installed;
    /// a running workspace needs [`build_workspace_image`]). Returns once the claim is bound
    /// and, when running, the pod is Running.
    pub async fn create(&self, client: &Client, phase: Phase) -> Result<CreatedWorkspace> {
        let claim_dir = ensure_common_claim(client, &self.namespace).await?;
        let projects_dir = claim_dir.join(&self.id).join("projects");
        std::fs::create_dir_all(&projects_dir)?;
        for dir in [claim_dir.join(&self.id), projects_dir.clone()] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
        }
        let devworkspace = self.create_devworkspace(client, phase).await?;
        self.create_deployment(client, phase).await?;
        let pod = match phase {
            Phase::Running => Some(self.wait_for_pod(client).await?),
            Phase::Stopped => None,
        };
        Ok(CreatedWorkspace {
            devworkspace,
            claim_dir,
            projects_dir,
            pod,
        })
    }

    /// Stops a running workspace as DWO does: `spec.started: false`, the Deployment scaled to
    /// 0 (returns once its pods are gone), then status `Stopped` with a new `Started=False`
    /// transition, the time the backup scheduler compares with the last backup.
    pub async fn stop(&self, client: &Client) -> Result<DynamicObject> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &self.namespace, &devworkspace_resource());
        let params = PatchParams::default();
        api.patch(
            &self.name,
            &params,
            &Patch::Merge(json!({"spec": {"started": false}})),
        )
        .await?;
        Api::<Deployment>::namespaced(client.clone(), &self.namespace)
            .patch(
                &self.id,
                &params,
                &Patch::Merge(json!({"spec": {"replicas": 0}})),
            )
            .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &self.namespace);
        let selector = format!("{LABEL_ID}={}", self.id);
        poll("the workspace pods to be gone", || async {
            let left = pods.list(&ListParams::default().labels(&selector)).await?;
            Ok(left.items.is_empty().then_some(()))
        })
        .await?;
        api.patch_status(
            &self.name,
            &params,
            &Patch::Merge(self.status(Phase::Stopped)),
        )
        .await
        .context("writing the DevWorkspace status")
    }

    fn status(&self, phase: Phase) -> Value {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let (phase_name, status, message) = match phase {
            Phase::Running => ("Running", "True", "DevWorkspace is started"),
            Phase::Stopped => ("Stopped", "False", "Workspace is stopped"),
        };
        let mut conditions = vec![json!({"type": "Started", "status": status,
            "lastTransitionTime": now, "message": message})];
        if phase == Phase::Running {
            conditions.push(json!({"type": "Ready", "status": "True", "lastTransitionTime": now}));
        }
        json!({"status": {
            "devworkspaceId": self.id,
            "phase": phase_name,
            "message": message,
            "mainUrl": format!("https://che.example.com/{}/{}/3100/", self.namespace, self.name),
            "conditions": conditions,
        }})
    }

    async fn create_devworkspace(&self, client: &Client, phase: Phase) -> Result<DynamicObject> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &self.namespace, &devworkspace_resource());
        let started = phase == Phase::Running;
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "workspace.devfile.io/v1alpha2",
            "kind": "DevWorkspace",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {"started": started, "routingClass": "che", "template": {
                "attributes": {"controller.devfile.io/storage-type": "common"},
                "components": [{"name": "tools", "container": {
                    "image": WORKSPACE_IMAGE, "mountSources": true, "sourceMapping": "/projects"}}]}},
        }))?;
        api.create(&PostParams::default(), &object)
            .await
            .context("creating the DevWorkspace")?;
        let status = self.status(phase);
        api.patch_status(&self.name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .context("writing the DevWorkspace status")
    }

    async fn create_deployment(&self, client: &Client, phase: Phase) -> Result<()> {
        let api: Api<Deployment> = Api::namespaced(client.clone(), &self.namespace);
        let replicas = if phase == Phase::Running { 1 } else { 0 };
        let keep_running = "trap 'exit 0' TERM; while true; do sleep 1; done";
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": self.id, "namespace": self.namespace, "labels": self.labels()},
            "spec": {
                "replicas": replicas,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": {LABEL_ID: self.id}},
                "template": {
                    "metadata": {"name": self.id, "labels": self.labels()},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "automountServiceAccountToken": false,
                        "securityContext": {"runAsUser": WORKSPACE_UID, "fsGroup": WORKSPACE_UID,
                                            "runAsNonRoot": true,
                                            "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [{
                            "name": "tools",
                            "image": WORKSPACE_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["/bin/busybox", "sh", "-c", keep_running],
                            "env": [{"name": "PROJECTS_ROOT", "value": "/projects"},
                                    {"name": "DEVWORKSPACE_ID", "value": self.id}],
                            "securityContext": {"allowPrivilegeEscalation": false,
                                                "capabilities": {"drop": ["ALL"]}},
                            "volumeMounts": [{"name": COMMON_PVC, "mountPath": "/projects",
                                              "subPath": format!("{}/projects", self.id)}],
                        }],
                        "volumes": [{"name": COMMON_PVC, "persistentVolumeClaim": {"claimName": COMMON_PVC}}],
                    },
                },
            },
        }))?;
        api.create(&PostParams::default(), &deployment)
            .await
            .context("creating the workspace Deployment")?;
        Ok(())
    }

    async fn wait_for_pod(&self, client: &Client) -> Result<String> {
        let api: Api<Pod> = Api::namespaced(client.clone(), &self.namespace);
        let selector = format!("{LABEL_ID}={}", self.id);
        poll("the workspace pod to be Running", || async {
            let pods = api.list(&ListParams::default().labels(&selector)).await?;
            let running = pods.items.into_iter().find(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            });
            Ok(running.and_then(|p| p.metadata.name))
        })
        .await
    }
}

/// The common PVC of `namespace` (created if missing, as DWO does: RWO, 10Gi), once bound;
/// returns its host directory.
pub async fn ensure_common_claim(client: &Client, namespace: &str) -> Result<PathBuf> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": COMMON_PVC, "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
    }))?;
    match api.create(&PostParams::default(), &claim).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e).context("creating the common PVC"),
    }
    claim_dir(client, namespace, COMMON_PVC).await
}

/// The host directory of claim `namespace/name` once the PV controller has bound it to a
/// hostPath volume (the node agent provisions one per pending claim).
pub async fn claim_dir(client: &Client, namespace: &str, name: &str) -> Result<PathBuf> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let volume = poll(&format!("claim {namespace}/{name} to be Bound"), || async {
        let pvc = claims.get(name).await?;
        let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        Ok(pvc.spec.and_then(|s| s.volume_name).filter(|_| bound))
    })
    .await?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&volume)
        .await?;
    let path = pv
        .spec
        .and_then(|s| s.host_path)
        .map(|h| PathBuf::from(h.path))
        .with_context(|| format!("volume {volume} is not a hostPath volume"))?;
    std::fs::create_dir_all(&path)?;
    Ok(path)
}

/// Polls `check` every 250 ms until it returns a value; fails after two minutes (errors in
/// between are retried, and the last one is reported).
pub async fn poll<T, F, Fut>(what: &str, check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    poll_for(what, WAIT, check).await
}

/// [`poll`] with its own time limit.
pub async fn poll_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() > deadline {
            let detail = last_error
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default();
            bail!(
                "waiting for {what}: not reached within {} s{detail}",
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crd_is_structural_with_a_status_subresource() {
        let crd = serde_json::to_value(devworkspace_crd()).unwrap();
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha2");
        assert_eq!(version["subresources"]["status"], json!({}));
        let schema = &version["schema"]["openAPIV3Schema"];
        assert_eq!(
            schema["properties"]["spec"]["properties"]["template"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
        assert_eq!(
            schema["properties"]["status"]["properties"]["phase"]["type"],
            "string"
        );
        // Structural: every node has a type.
        fn typed(v: &Value) -> bool {
            v["type"].is_string()
                && v["properties"]
                    .as_object()
                    .is_none_or(|p| p.values().all(typed))
                && (v["items"].is_null() || typed(&v["items"]))
        }
        assert!(typed(schema));
    }
}
