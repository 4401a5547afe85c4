//! `wsr-restore --in-cluster`, `--on-next-start` and `--clear` on the real control plane
//! (`scenarios::cluster`), run as a namespace user (a ServiceAccount with only the Role the
//! user guide lists), with the node agent running the restore Job's pod from the recovery
//! image: a stopped workspace's deleted data comes back byte-identical through a Job; a running
//! workspace is refused; `--on-next-start` sets DWO's attributes and a start with DWO's
//! `workspace-restore` init container restores; `--clear` removes them.
//!
//! Needs the cluster binaries, podman, buildah and runc, and this run's static binaries
//! (`cargo build -p wsr-backup -p wsr-restore` with the suite's flags); fails without them.

mod common;

use common::{RESTRICTED, cluster, image};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use scenarios::cluster::Cluster;
use scenarios::cluster::fixtures::{self, Phase, Workspace};
use serde_json::{Value, json};
use wsr_transport::testing::{RegistryKind, TestRegistry};
use wsr_workload::restored::Restored;

const RESTORE_WORKSPACE: &str = "controller.devfile.io/restore-workspace";
const RESTORE_SOURCE_IMAGE: &str = "controller.devfile.io/restore-source-image";
const USER: &str = "developer";

/// The Role the user guide (docs/RESTORE.md) asks for, bound to ServiceAccount `developer`;
/// returns a kubeconfig authenticating as it.
fn namespace_user(cluster: &Cluster, ns: &str) -> Result<PathBuf> {
    let manifest = format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: {USER}, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: wsr-restore-user, namespace: {ns}}}
rules:
- apiGroups: [workspace.devfile.io]
  resources: [devworkspaces]
  verbs: [get, list, patch]
- apiGroups: [""]
  resources: [pods, persistentvolumeclaims]
  verbs: [get, list]
- apiGroups: [""]
  resources: [pods/log, secrets]
  verbs: [get]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: wsr-restore-user, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: wsr-restore-user}}
subjects: [{{kind: ServiceAccount, name: {USER}, namespace: {ns}}}]
"#
    );
    cluster.kubectl_stdin(["apply", "-f", "-"], &manifest)?;
    cluster.service_account_kubeconfig(ns, USER)
}

/// DWO's copy of the registry credentials, plus the test registry's CA under `ca.crt`.
async fn registry_secret(client: &Client, ns: &str, registry: &TestRegistry) -> Result<()> {
    let config = std::fs::read_to_string(registry.auth_file().expect("auth"))?;
    let ca = std::fs::read_to_string(registry.ca_file().expect("tls"))?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "devworkspace-backup-registry-auth", "namespace": ns,
                     "labels": {"controller.devfile.io/watch-secret": "true"}},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config, "ca.crt": ca},
    }))?;
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await?;
    Ok(())
}

/// `wsr-restore ARGS` with `kubeconfig`, bounded by `timeout(1)` so a hang fails the test.
fn wsr_restore(kubeconfig: &Path, args: &[&str]) -> Result<Output> {
    let bin = scenarios::podman::test_build_binaries().join("wsr-restore");
    let output = Command::new("timeout")
        .arg("600")
        .arg(bin)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .context("running wsr-restore")?;
    eprintln!(
        "wsr-restore {}: {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// Sample tree in `dir` (directories owner-writable: a non-root restore cannot fill a
/// read-only directory; see tests/node_agent.rs), backed up to the registry.
fn back_up(dir: &Path, reference: &str, registry: &TestRegistry) -> Result<(Vec<String>, String)> {
    scenarios::sample::write_sample(dir, false)?;
    owner_writable_dirs(dir)?;
    let expected = common::expected_snapshot(dir);
    let options = common::backup_options(
        dir,
        reference,
        wsr_backup::Format::Native,
        common::connect_for(registry),
    );
    let report = common::backup(&options)?;
    Ok((expected, report.reference))
}

fn owner_writable_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::symlink_metadata(dir)?.permissions().mode();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o200))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            owner_writable_dirs(&entry.path())?;
        }
    }
    Ok(())
}

fn empty_dir(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn attributes(dw: &DynamicObject) -> Value {
    dw.data["spec"]["template"]["attributes"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn in_cluster_restore_brings_deleted_data_back_through_a_job_and_refuses_a_running_workspace()
-> Result<()> {
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let _ = image();
    let client = cluster.client().await?;
    let ns = "wsr-in-cluster-restore";
    cluster.create_namespace(ns, &[RESTRICTED])?;
    fixtures::install_devworkspace_crd(&client).await?;
    tokio::task::block_in_place(fixtures::build_workspace_image)?;
    let registry = TestRegistry::start(RegistryKind::TlsAuth)?;
    registry_secret(&client, ns, &registry).await?;
    let kubeconfig = namespace_user(cluster, ns)?;

    let ws = Workspace::new(ns, "my-workspace", "workspace1c0ffee0000000a1");
    let created = ws.create(&client, Phase::Stopped).await?;
    let latest = format!("{}/backups/{ns}/{}:latest", registry.host(), ws.name);
    let (expected, pushed) =
        tokio::task::block_in_place(|| back_up(&created.projects_dir, &latest, &registry))?;
    // What the operator records after a backup; the restore finds the backup through it.
    let devworkspaces: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &fixtures::devworkspace_resource());
    devworkspaces
        .patch(
            &ws.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "wsr.dev/last-backup-reference": pushed,
                "controller.devfile.io/last-backup-successful": "true",
                "controller.devfile.io/last-backup-finished-at": "2026-11-25T10:00:00Z"}}})),
        )
        .await?;

    empty_dir(&created.projects_dir)?;
    assert!(scenarios::sample::snapshot(&created.projects_dir)?.is_empty());
    let image_flag = image();
    let args = [
        "--in-cluster",
        "--namespace",
        ns,
        "--workspace",
        &ws.name,
        "--image",
        image_flag,
        "--image-pull-policy",
        "IfNotPresent",
        "--ca-secret",
        "devworkspace-backup-registry-auth",
    ];
    let out = tokio::task::block_in_place(|| wsr_restore(&kubeconfig, &args))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("restored {pushed} into {ns}/{}", ws.name)),
        "{stdout}"
    );
    assert!(stderr.contains("succeeded 1"), "progress lines: {stderr}");
    assert_eq!(
        scenarios::sample::snapshot(&created.projects_dir)?,
        expected,
        "the tree the restore Job wrote differs from the backed-up one"
    );
    // The pod's termination message is the report the operator records the restore from.
    let ended = restore_pods_ended(&client, ns).await?;
    assert_eq!(ended.len(), 1);
    let report = Restored::from_message(&ended[0].1).map(|r| r.restored);
    assert_eq!(report.as_ref(), Some(&pushed), "{ended:?}");

    // The Job as the API server holds it: the hardened pod admitted under `restricted`,
    // only the workspace's sub path of the common claim, mounted read-write.
    let jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("wsr.dev/restore-job=true"))
        .await?;
    assert_eq!(jobs.items.len(), 1);
    let pod = jobs.items[0].spec.clone().unwrap().template.spec.unwrap();
    assert_eq!(
        wsr_workload::pod::restricted_violations(&pod),
        Vec::<String>::new()
    );
    let mount = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
    let sub_path = format!("{}/projects", ws.id);
    assert_eq!(mount.sub_path.as_deref(), Some(sub_path.as_str()));
    assert_ne!(mount.read_only, Some(true), "mounted read-write");
    assert_eq!(
        pod.volumes.as_ref().unwrap()[0]
            .persistent_volume_claim
            .as_ref()
            .unwrap()
            .claim_name,
        fixtures::COMMON_PVC
    );

    // Without --force a non-empty /projects is refused by the pod; its message comes back.
    std::fs::write(created.projects_dir.join("new-work.txt"), "keep me")?;
    let out = tokio::task::block_in_place(|| wsr_restore(&kubeconfig, &args))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("failed") && stderr.contains("not empty"),
        "{stderr}"
    );
    // A failed restore leaves its reason, never a report.
    let ended = restore_pods_ended(&client, ns).await?;
    let failed: Vec<_> = ended.iter().filter(|(code, _)| *code == 3).collect();
    assert_eq!(failed.len(), 1, "{ended:?}");
    assert!(failed[0].1.contains("not empty"), "{ended:?}");
    assert_eq!(Restored::from_message(&failed[0].1), None);
    // With --force the existing content is moved aside (inside /projects, a mount point in
    // the pod), nothing deleted, and the backup restored.
    let forced: Vec<&str> = args.iter().copied().chain(["--force"]).collect();
    let out = tokio::task::block_in_place(|| wsr_restore(&kubeconfig, &forced))?;
    assert!(out.status.success());
    let kept: Vec<PathBuf> = walk_files(&created.projects_dir)?
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "new-work.txt"))
        .collect();
    assert_eq!(kept.len(), 1, "moved aside once: {kept:?}");
    assert_ne!(kept[0], created.projects_dir.join("new-work.txt"));
    assert_eq!(std::fs::read_to_string(&kept[0])?, "keep me");

    // A running workspace is refused before any Job is created.
    let running = Workspace::new(ns, "busy-workspace", "workspace1c0ffee0000000b2");
    running.create(&client, Phase::Running).await?;
    let busy_args = [
        "--in-cluster",
        "--namespace",
        ns,
        "--workspace",
        &running.name,
        "--from",
        &pushed,
    ];
    let out = tokio::task::block_in_place(|| wsr_restore(&kubeconfig, &busy_args))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("refusing to restore into") && stderr.contains("stop the workspace"),
        "{stderr}"
    );
    let jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("wsr.dev/restore-job=true"))
        .await?;
    assert_eq!(jobs.items.len(), 3, "no Job for the running workspace");

    // list --in-cluster shows both workspaces, the recorded backup and the registry's tags.
    let ca = registry.ca_file().unwrap().to_str().unwrap().to_owned();
    let auth = registry.auth_file().unwrap().to_str().unwrap().to_owned();
    let list_args = [
        "list",
        "--in-cluster",
        "--namespace",
        ns,
        "--json",
        "--ca-file",
        &ca,
        "--auth-file",
        &auth,
    ];
    let out = tokio::task::block_in_place(|| wsr_restore(&kubeconfig, &list_args))?;
    assert!(out.status.success());
    let listed: Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default(),
    )?;
    let rows = listed["workspaces"].as_array().unwrap();
    let mine = rows
        .iter()
        .find(|r| r["workspace"] == ws.name.as_str())
        .unwrap();
    assert_eq!(mine["phase"], "Stopped");
    assert_eq!(mine["lastBackupSuccessful"], "true");
    assert!(
        mine["backups"]["tags"]
            .as_array()
            .is_some_and(|t| !t.is_empty()),
        "{mine:#}"
    );
    let busy = rows
        .iter()
        .find(|r| r["workspace"] == running.name.as_str())
        .unwrap();
    assert_eq!(busy["phase"], "Running");
    Ok(())
}

/// The exit code and termination message of every finished restore Job pod in `ns`.
async fn restore_pods_ended(client: &Client, ns: &str) -> Result<Vec<(i64, String)>> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("wsr.dev/restore-job=true"))
        .await?;
    let mut ended = Vec::new();
    for pod in pods.items {
        let status = serde_json::to_value(pod.status)?;
        let terminated = &status["containerStatuses"][0]["state"]["terminated"];
        if let Some(code) = terminated["exitCode"].as_i64() {
            let message = terminated["message"].as_str().unwrap_or_default();
            ended.push((code, message.to_owned()));
        }
    }
    Ok(ended)
}

fn walk_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            files.extend(walk_files(&entry.path())?);
        } else {
            files.push(entry.path());
        }
    }
    Ok(files)
}

#[tokio::test(flavor = "multi_thread")]
async fn on_next_start_sets_dwo_attributes_that_the_init_container_restores_and_clear_removes()
-> Result<()> {
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let _ = image();
    let client = cluster.client().await?;
    let ns = "wsr-on-next-start";
    cluster.create_namespace(ns, &[RESTRICTED])?;
    fixtures::install_devworkspace_crd(&client).await?;
    let registry = TestRegistry::start(RegistryKind::TlsAuth)?;
    registry_secret(&client, ns, &registry).await?;
    let kubeconfig = namespace_user(cluster, ns)?;

    // The backup of a workspace that is gone; a new stopped workspace restores it on start.
    let source = tempfile::tempdir()?;
    let old = format!("{}/backups/old-ns/old-workspace:latest", registry.host());
    let (expected, pushed) =
        tokio::task::block_in_place(|| back_up(source.path(), &old, &registry))?;
    let ws = Workspace::new(ns, "recovered", "workspace1c0ffee0000000c3");
    let created = ws.create(&client, Phase::Stopped).await?;

    let set = [
        "--on-next-start",
        "--namespace",
        ns,
        "--workspace",
        &ws.name,
        "--from",
        &old,
    ];
    let out = tokio::task::block_in_place(|| wsr_restore(&kubeconfig, &set))?;
    assert!(out.status.success());
    let devworkspaces: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &fixtures::devworkspace_resource());
    let dw = devworkspaces.get(&ws.name).await?;
    let attrs = attributes(&dw);
    assert_eq!(attrs[RESTORE_WORKSPACE], "true", "{attrs:#}");
    assert_eq!(attrs[RESTORE_SOURCE_IMAGE], old.as_str());
    assert_eq!(
        attrs["controller.devfile.io/storage-type"], "common",
        "other attributes are kept"
    );

    // The start, as DWO performs it from those attributes (upstream-dwo.md §4.2, §4.3).
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &dwo_start_pod(ns, &ws, &attrs)?)
        .await?;
    let status = fixtures::poll("the workspace pod's init container to finish", || async {
        let p = serde_json::to_value(pods.get("recovered-start").await?)?;
        let phase = p["status"]["phase"].as_str().unwrap_or_default().to_owned();
        Ok(matches!(phase.as_str(), "Succeeded" | "Failed").then(|| p["status"].clone()))
    })
    .await?;
    assert_eq!(status["phase"], "Succeeded", "{status:#}");
    let init = &status["initContainerStatuses"][0]["state"]["terminated"];
    assert_eq!(init["exitCode"], 0);
    // Its report (what the operator records) names the backup by the digest the tag resolved to.
    let report = Restored::from_message(init["message"].as_str().unwrap_or_default())
        .context("the init container's termination message is a restore report")?;
    assert_eq!(report.restored, pushed);
    assert_eq!(
        scenarios::sample::snapshot(&created.projects_dir)?,
        expected,
        "the tree the init container restored differs from the backed-up one"
    );

    let clear = ["--clear", "--namespace", ns, "--workspace", &ws.name];
    let out = tokio::task::block_in_place(|| wsr_restore(&kubeconfig, &clear))?;
    assert!(out.status.success());
    let attrs = attributes(&devworkspaces.get(&ws.name).await?);
    assert!(attrs.get(RESTORE_WORKSPACE).is_none(), "{attrs:#}");
    assert!(attrs.get(RESTORE_SOURCE_IMAGE).is_none(), "{attrs:#}");
    assert_eq!(attrs["controller.devfile.io/storage-type"], "common");

    // --on-next-start without a source leaves the choice to DWO's configured registry path.
    let default = [
        "--on-next-start",
        "--namespace",
        ns,
        "--workspace",
        &ws.name,
    ];
    let out = tokio::task::block_in_place(|| wsr_restore(&kubeconfig, &default))?;
    assert!(out.status.success());
    let attrs = attributes(&devworkspaces.get(&ws.name).await?);
    assert_eq!(attrs[RESTORE_WORKSPACE], "true");
    assert!(attrs.get(RESTORE_SOURCE_IMAGE).is_none(), "{attrs:#}");
    Ok(())
}

/// The workspace pod DWO builds when `restore-workspace` is true: the `workspace-restore` init
/// container first (the recovery image, `BACKUP_IMAGE` from `restore-source-image`, the claim's
/// `<id>/projects` at `/projects`, the auth Secret at `/tmp/.docker`), no project-clone; a
/// short main container stands in for the editor.
fn dwo_start_pod(ns: &str, ws: &Workspace, attrs: &Value) -> Result<Pod> {
    let source = attrs[RESTORE_SOURCE_IMAGE]
        .as_str()
        .context("this test sets restore-source-image")?;
    let hardened = json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                          "capabilities": {"drop": ["ALL"]}});
    let projects = json!({"name": fixtures::COMMON_PVC, "mountPath": "/projects",
                          "subPath": format!("{}/projects", ws.id)});
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "recovered-start", "namespace": ns,
                     "labels": {fixtures::LABEL_ID: ws.id, fixtures::LABEL_NAME: ws.name}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": {"runAsUser": fixtures::WORKSPACE_UID, "fsGroup": fixtures::WORKSPACE_UID,
                                "runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": [{
                "name": "workspace-restore",
                "image": image(),
                "imagePullPolicy": "IfNotPresent",
                "command": ["/workspace-recovery.sh"],
                "args": ["--restore"],
                "env": [
                    {"name": "DEVWORKSPACE_NAMESPACE", "value": ns},
                    {"name": "DEVWORKSPACE_NAME", "value": ws.name},
                    {"name": "DEVWORKSPACE_ID", "value": ws.id},
                    {"name": "PROJECTS_ROOT", "value": "/projects"},
                    {"name": "BACKUP_IMAGE", "value": source},
                    {"name": "REGISTRY_AUTH_FILE", "value": "/tmp/.docker/.dockerconfigjson"},
                ],
                "securityContext": hardened,
                "volumeMounts": [
                    projects,
                    {"name": "registry-auth-secret", "mountPath": "/tmp/.docker", "readOnly": true},
                    // The test registry's CA, trusted through the image's system trust store.
                    {"name": "registry-auth-secret", "mountPath": "/etc/pki/tls/certs/wsr-test-registry.crt",
                     "subPath": "ca.crt", "readOnly": true},
                ],
            }],
            "containers": [{
                "name": "tools",
                "image": image(),
                "imagePullPolicy": "IfNotPresent",
                "command": ["/usr/local/bin/wsr-restore", "--version"],
                "securityContext": hardened,
                "volumeMounts": [projects],
            }],
            "volumes": [
                {"name": fixtures::COMMON_PVC, "persistentVolumeClaim": {"claimName": fixtures::COMMON_PVC}},
                {"name": "registry-auth-secret", "secret": {"secretName": "devworkspace-backup-registry-auth",
                                                             "defaultMode": 0o640}},
            ],
        },
    }))?)
}
