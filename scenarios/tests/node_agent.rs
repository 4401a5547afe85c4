//! Jobs on the real control plane (`scenarios::cluster`) with the node agent running their
//! pods: the real Job controller must complete a backup Job that runs the recovery image under
//! the `restricted` Pod Security Standard, and fail a Job whose pod fails, with the container's
//! termination message in the pod status.
//!
//! Needs the cluster binaries (`scenarios/cluster/build.sh`, or `WSR_CLUSTER_BIN`), podman,
//! buildah and runc, and this test run's static binaries for the image (see tests/image.rs);
//! fails, rather than skips, without them.

mod common;

use common::{RESTRICTED, cluster, image};

use std::path::Path;

use anyhow::Result;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use scenarios::cluster::fixtures::{self, Phase, Workspace};
use serde_json::{Value, json};
use wsr_transport::testing::{RegistryKind, TestRegistry};

/// The backup Job's uid, and the fsGroup that lets it read the workspace's owner-only files.
const JOB_UID: i64 = 12345;
const FS_GROUP: i64 = 1234;

/// A registry auth Secret as DWO copies it into the workspace namespace, plus the registry's
/// CA (which DWOC `oras.extraArgs: --ca-file ...` points at).
async fn registry_secret(client: &Client, ns: &str, registry: &TestRegistry) -> Result<()> {
    let config = std::fs::read(registry.auth_file().expect("auth"))?;
    let ca = std::fs::read(registry.ca_file().expect("tls"))?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "devworkspace-backup-registry-auth", "namespace": ns,
                     "labels": {"controller.devfile.io/watch-secret": "true"}},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": String::from_utf8(config)?, "ca.crt": String::from_utf8(ca)?},
    }))?;
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await?;
    Ok(())
}

/// DWO's backup Job (upstream-dwo.md §2.4) with a pod spec that passes `restricted`.
fn backup_job(ws: &Workspace, name: &str, source: &str, registry: &TestRegistry) -> Result<Job> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ws.namespace, "labels": {
            "controller.devfile.io/backup-job": "true",
            fixtures::LABEL_ID: ws.id, fixtures::LABEL_NAME: ws.name}},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "securityContext": {"runAsNonRoot": true, "runAsUser": JOB_UID, "fsGroup": FS_GROUP,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "backup-workspace",
                    "image": image(),
                    "imagePullPolicy": "IfNotPresent",
                    "args": ["/workspace-recovery.sh", "--backup"],
                    "env": [
                        {"name": "DEVWORKSPACE_NAME", "value": ws.name},
                        {"name": "DEVWORKSPACE_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "WORKSPACE_ID", "value": ws.id},
                        {"name": "BACKUP_SOURCE_PATH", "value": source},
                        {"name": "DEVWORKSPACE_BACKUP_REGISTRY", "value": format!("{}/backups/", registry.host())},
                        {"name": "ORAS_EXTRA_ARGS", "value": "--ca-file /tmp/.docker/ca.crt"},
                        {"name": "REGISTRY_AUTH_FILE", "value": "/tmp/.docker/.dockerconfigjson"},
                    ],
                    "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                        "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [
                        {"name": "workspace-data", "mountPath": "/workspace"},
                        {"name": "build-storage", "mountPath": "/var/lib/containers"},
                        {"name": "registry-auth-secret", "mountPath": "/tmp/.docker", "readOnly": true},
                    ],
                }],
                "volumes": [
                    {"name": "workspace-data", "persistentVolumeClaim": {"claimName": fixtures::COMMON_PVC}},
                    {"name": "build-storage", "emptyDir": {}},
                    {"name": "registry-auth-secret", "secret": {"secretName": "devworkspace-backup-registry-auth"}},
                ],
            }},
        },
    }))?)
}

/// Waits for the Job's `Complete` or `Failed` condition; returns its type and the Job.
async fn finished(client: &Client, ns: &str, name: &str) -> Result<(String, Value)> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    fixtures::poll(&format!("Job {ns}/{name} to finish"), || async {
        let job = serde_json::to_value(api.get(name).await?)?;
        let done = job["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
            .map(|c| c["type"].as_str().unwrap_or_default().to_owned());
        Ok(done.map(|kind| (kind, job)))
    })
    .await
}

async fn job_pods(client: &Client, ns: &str, job: &str) -> Result<Vec<Value>> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await?;
    Ok(pods
        .items
        .into_iter()
        .map(|p| serde_json::to_value(p).unwrap())
        .collect())
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

fn clear_setgid(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::symlink_metadata(dir)?.permissions().mode();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o1777))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            clear_setgid(&entry.path())?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_job_completes_under_restricted_and_restores_identically_in_and_out_of_the_cluster()
-> Result<()> {
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let image = image();
    let client = cluster.client().await?;
    let ns = "wsr-node-agent-backup";
    cluster.create_namespace(ns, &[RESTRICTED])?;
    fixtures::install_devworkspace_crd(&client).await?;
    let registry = TestRegistry::start(RegistryKind::TlsAuth)?;
    registry_secret(&client, ns, &registry).await?;

    let ws = Workspace::new(ns, "my-workspace", "workspace7f3c1e2a9b8d4c05");
    let created = ws.create(&client, Phase::Stopped).await?;
    scenarios::sample::write_sample(&created.projects_dir, false)?;
    // A restore by a non-root uid (the in-cluster one below) fails today on a directory without
    // owner write permission ("cannot use target .../locked-dir: Permission denied", also with
    // wsr-restore from an OCI layout), so the sample's read-only directory is made writable.
    owner_writable_dirs(&created.projects_dir)?;

    let source = format!("/workspace/{}/projects", ws.id);
    let job = backup_job(&ws, "backup-ok", &source, &registry)?;
    Api::<Job>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &job)
        .await?;
    let (outcome, job) = finished(&client, ns, "backup-ok").await?;
    let pods = job_pods(&client, ns, "backup-ok").await?;
    assert_eq!(
        outcome,
        "Complete",
        "job: {job:#}\npods: {pods:#?}\nregistry:\n{}",
        registry.log_tail(20)
    );
    assert_eq!(job["status"]["succeeded"], 1, "{job:#}");
    let pod = &pods[0];
    assert_eq!(pod["status"]["phase"], "Succeeded", "{pod:#}");
    let state = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (state["exitCode"].as_i64(), state["reason"].as_str()),
        (Some(0), Some("Completed")),
        "{pod:#}"
    );
    eprintln!("backup pod ran with image {image}");

    // The fsGroup was applied to the claim (that is how the Job's uid read owner-only files).
    use std::os::unix::fs::MetadataExt;
    let secret_key = std::fs::metadata(created.projects_dir.join("secret.key"))?;
    assert_eq!(
        (secret_key.gid(), secret_key.mode() & 0o070),
        (FS_GROUP as u32, 0o060)
    );

    // Restores clear setuid/setgid bits (docs/FORMAT.md); the fsGroup change set setgid on
    // every directory of the claim, so the source is compared without it.
    clear_setgid(&created.projects_dir)?;
    let expected = common::expected_snapshot(&created.projects_dir);
    let restored = tempfile::tempdir()?;
    let reference = format!("{}/backups/{ns}/{}:latest", registry.host(), ws.name);
    tokio::task::block_in_place(|| {
        common::restore(&reference, restored.path(), common::connect_for(&registry))
    })?;
    assert_eq!(
        scenarios::sample::snapshot(restored.path())?,
        expected,
        "the restored tree differs from the workspace's /projects"
    );

    // The same backup restored in the cluster by DWO's `workspace-restore` init container
    // (upstream-dwo.md §4.3) into a new workspace's directory on the common claim; the main
    // container runs the restore again, which must leave the now non-empty /projects alone.
    let new_id = "workspace00000000restored1";
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(
        &PostParams::default(),
        &restore_pod(ns, new_id, &reference)?,
    )
    .await?;
    let status = fixtures::poll("the restore pod to finish", || async {
        let p = serde_json::to_value(pods.get("restore-workspace").await?)?;
        let phase = p["status"]["phase"].as_str().unwrap_or_default().to_owned();
        Ok(matches!(phase.as_str(), "Succeeded" | "Failed").then(|| p["status"].clone()))
    })
    .await?;
    assert_eq!(status["phase"], "Succeeded", "{status:#}");
    assert_eq!(
        status["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
        0
    );
    let restored_in_cluster = created.claim_dir.join(new_id).join("projects");
    assert_eq!(
        scenarios::sample::snapshot(&restored_in_cluster)?,
        expected,
        "the tree the init container restored differs from the workspace's /projects"
    );
    Ok(())
}

/// A pod shaped like a DWO workspace pod with restore requested, restricted-compliant.
fn restore_pod(ns: &str, id: &str, image_ref: &str) -> Result<Pod> {
    let restore = |name: &str| {
        json!({
            "name": name,
            "image": image(),
            "command": ["/workspace-recovery.sh"],
            "args": ["--restore"],
            "env": [
                {"name": "DEVWORKSPACE_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "DEVWORKSPACE_NAME", "value": "restored-ws"},
                {"name": "DEVWORKSPACE_ID", "value": id},
                {"name": "PROJECTS_ROOT", "value": "/projects"},
                {"name": "BACKUP_IMAGE", "value": image_ref},
                {"name": "REGISTRY_AUTH_FILE", "value": "/tmp/.docker/.dockerconfigjson"},
            ],
            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [
                {"name": fixtures::COMMON_PVC, "mountPath": "/projects", "subPath": format!("{id}/projects")},
                {"name": "registry-auth-secret", "mountPath": "/tmp/.docker", "readOnly": true},
                // The test registry's CA, trusted through the image's system trust store.
                {"name": "registry-auth-secret", "mountPath": "/etc/pki/tls/certs/wsr-test-registry.crt",
                 "subPath": "ca.crt", "readOnly": true},
            ],
        })
    };
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "restore-workspace", "namespace": ns, "labels": {fixtures::LABEL_ID: id}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "runAsUser": JOB_UID, "fsGroup": FS_GROUP,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": [restore("workspace-restore")],
            "containers": [restore("restore-again")],
            "volumes": [
                {"name": fixtures::COMMON_PVC, "persistentVolumeClaim": {"claimName": fixtures::COMMON_PVC}},
                // DWO mounts the auth Secret with defaultMode 0640.
                {"name": "registry-auth-secret", "secret": {"secretName": "devworkspace-backup-registry-auth",
                                                             "defaultMode": 0o640}},
            ],
        },
    }))?)
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_job_reports_the_termination_message_and_fails() -> Result<()> {
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let client = cluster.client().await?;
    let ns = "wsr-node-agent-failure";
    cluster.create_namespace(ns, &[RESTRICTED])?;
    let registry = TestRegistry::start(RegistryKind::TlsAuth)?;
    registry_secret(&client, ns, &registry).await?;
    let ws = Workspace::new(ns, "broken", "workspace0000000000000bad");
    fixtures::ensure_common_claim(&client, ns).await?;

    // A source directory that does not exist: the backup binary exits non-zero and writes
    // its one-line reason to /dev/termination-log.
    let job = backup_job(
        &ws,
        "backup-fails",
        "/workspace/no-such-workspace/projects",
        &registry,
    )?;
    Api::<Job>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &job)
        .await?;
    let (outcome, job) = finished(&client, ns, "backup-fails").await?;
    let pods = job_pods(&client, ns, "backup-fails").await?;
    assert_eq!(outcome, "Failed", "job: {job:#}\npods: {pods:#?}");
    let failed = job["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .unwrap();
    assert_eq!(failed["reason"], "BackoffLimitExceeded", "{job:#}");

    assert_eq!(pods.len(), 1, "backoffLimit 0: one pod");
    let pod = &pods[0];
    assert_eq!(pod["status"]["phase"], "Failed", "{pod:#}");
    let state = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_ne!(state["exitCode"].as_i64(), Some(0), "{pod:#}");
    assert_eq!(state["reason"], "Error", "{pod:#}");
    let message = state["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no-such-workspace"),
        "the termination message should name the missing source: {message:?}\n{pod:#}"
    );
    // It is what the container wrote, byte for byte (the agent keeps the file it bind-mounted).
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let pod_name = pod["metadata"]["name"].as_str().unwrap();
    let file = cluster
        .dir()
        .join("node/pods")
        .join(format!("{ns}_{pod_name}_{uid}"))
        .join("run/backup-workspace-0.termination-log");
    assert_eq!(
        std::fs::read_to_string(&file)?,
        message,
        "{}",
        file.display()
    );
    Ok(())
}

/// The workspace fixture as DWO leaves a running workspace, then stopped: the pod runs under
/// `restricted` with DWO's labels and the claim's `<id>/projects` (fsGroup applied), and
/// scaling the Deployment to 0 removes it (the agent stops the container and deletes the pod).
#[tokio::test(flavor = "multi_thread")]
async fn workspace_fixture_runs_and_stops_as_dwo_leaves_it() -> Result<()> {
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let client = cluster.client().await?;
    let ns = "wsr-node-agent-workspace";
    cluster.create_namespace(ns, &[RESTRICTED])?;
    tokio::task::block_in_place(fixtures::build_workspace_image)?;
    fixtures::install_devworkspace_crd(&client).await?;
    let ws = Workspace::new(ns, "running-ws", "workspace00000000000000aa");
    let created = ws.create(&client, Phase::Running).await?;

    let dw = serde_json::to_value(&created.devworkspace)?;
    assert_eq!(dw["status"]["phase"], "Running", "{dw:#}");
    assert_eq!(dw["status"]["devworkspaceId"], ws.id.as_str());
    assert_eq!(dw["status"]["conditions"][0]["type"], "Started");
    assert_eq!(dw["status"]["conditions"][0]["status"], "True");

    let pod_name = created.pod.clone().expect("a running workspace has a pod");
    let pod = serde_json::to_value(
        Api::<Pod>::namespaced(client.clone(), ns)
            .get(&pod_name)
            .await?,
    )?;
    assert_eq!(
        pod["metadata"]["labels"][fixtures::LABEL_ID],
        ws.id.as_str(),
        "{pod:#}"
    );
    assert_eq!(
        pod["metadata"]["labels"][fixtures::LABEL_NAME],
        ws.name.as_str()
    );
    assert_eq!(
        pod["status"]["containerStatuses"][0]["ready"], true,
        "{pod:#}"
    );
    use std::os::unix::fs::MetadataExt;
    let projects = std::fs::metadata(&created.projects_dir)?;
    assert_eq!(
        projects.gid(),
        fixtures::WORKSPACE_UID as u32,
        "fsGroup applied to the claim"
    );

    let stopped = serde_json::to_value(ws.stop(&client).await?)?;
    assert_eq!(stopped["status"]["phase"], "Stopped", "{stopped:#}");
    assert_eq!(stopped["status"]["conditions"][0]["status"], "False");
    assert_eq!(stopped["spec"]["started"], false);
    Ok(())
}

/// A pod asking for what the agent cannot do fails at once, naming the fields.
#[tokio::test(flavor = "multi_thread")]
async fn unsupported_pod_fails_with_a_reason() -> Result<()> {
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let client = cluster.client().await?;
    let ns = "wsr-node-agent-unsupported";
    cluster.create_namespace(ns, &[])?;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probed", "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "shareProcessNamespace": true,
            "containers": [{"name": "c", "image": image(),
                            "readinessProbe": {"exec": {"command": ["true"]}}}],
        },
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &pod).await?;
    let status = fixtures::poll("the pod to fail", || async {
        let p = serde_json::to_value(pods.get("probed").await?)?;
        Ok((p["status"]["phase"] == "Failed").then(|| p["status"].clone()))
    })
    .await?;
    assert_eq!(status["reason"], "NodeAgentUnsupported", "{status:#}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spec.shareProcessNamespace")
            && message.contains("container c: readinessProbe"),
        "{message}"
    );
    // Deleting it does not leave it Terminating: the agent deletes it with grace 0.
    pods.delete("probed", &Default::default()).await?;
    fixtures::poll("the pod to be gone", || async {
        Ok(pods.get_opt("probed").await?.is_none().then_some(()))
    })
    .await?;
    Ok(())
}

/// `restartPolicy: OnFailure`: the container fails once and is restarted in the same pod (its
/// emptyDir kept), after the init containers ran in order; the Job completes from it.
#[tokio::test(flavor = "multi_thread")]
async fn on_failure_restarts_the_container_after_ordered_init_containers() -> Result<()> {
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let client = cluster.client().await?;
    let ns = "wsr-node-agent-restarts";
    cluster.create_namespace(ns, &[RESTRICTED])?;
    tokio::task::block_in_place(fixtures::build_workspace_image)?;
    let step = |name: &str, script: &str| {
        json!({"name": name, "image": fixtures::WORKSPACE_IMAGE,
               "command": ["/bin/busybox", "sh", "-c", script],
               "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
               "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]})
    };
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "flaky", "namespace": ns},
        "spec": {"backoffLimit": 3, "template": {"spec": {
            "restartPolicy": "OnFailure",
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": [
                step("first", "echo first > /scratch/order"),
                step("second", "echo second >> /scratch/order"),
            ],
            "containers": [step("main",
                "test \"$(cat /scratch/order)\" = \"$(printf 'first\\nsecond')\" || exit 7; \
                 if [ -e /scratch/failed-once ]; then exit 0; fi; \
                 touch /scratch/failed-once; echo 'failing once' > /dev/termination-log; exit 1")],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        }}},
    }))?;
    Api::<Job>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &job)
        .await?;
    let (outcome, job) = finished(&client, ns, "flaky").await?;
    let pods = job_pods(&client, ns, "flaky").await?;
    assert_eq!(outcome, "Complete", "job: {job:#}\npods: {pods:#?}");
    assert_eq!(pods.len(), 1, "restarted in place, not replaced: {pods:#?}");
    let main = &pods[0]["status"]["containerStatuses"][0];
    assert_eq!(main["restartCount"], 1, "{main:#}");
    assert_eq!(main["lastState"]["terminated"]["exitCode"], 1, "{main:#}");
    assert_eq!(main["lastState"]["terminated"]["message"], "failing once\n");
    assert_eq!(main["state"]["terminated"]["exitCode"], 0, "{main:#}");
    let inits = pods[0]["status"]["initContainerStatuses"]
        .as_array()
        .unwrap();
    assert!(
        inits
            .iter()
            .all(|c| c["state"]["terminated"]["exitCode"] == 0),
        "{inits:#?}"
    );
    Ok(())
}
