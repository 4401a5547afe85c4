//! The cluster demo (`scenarios::cluster_demo`, `scenarios cluster-demo`) and its failure paths
//! on the real control plane with the node agent: the whole story restores both workspaces
//! identically; with the registry down, a workspace whose `/projects` holds data still starts
//! and nothing in it is touched; a backup made as upstream's script makes it (GNU tar + the Go
//! oras CLI) is restored by the `workspace-restore` init container; and every YAML file the
//! kind scripts apply (`scenarios/kind/manifests/`) is accepted by the API server.
//!
//! Needs what tests/operator.rs needs (cluster binaries, podman, buildah, runc, this run's
//! static binaries and wsr-operator) plus `$WSR_ORAS`.

mod common;

use common::{RESTRICTED, cluster, image};

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::DeleteParams;
use scenarios::cluster::fixtures::{self, Phase, Workspace};
use scenarios::cluster_demo::{self, CA_ORAS_EXTRA_ARGS, manifests};
use wsr_transport::testing::{RegistryKind, TestRegistry};

#[test]
fn the_cluster_demo_restores_both_workspaces_identically() -> Result<()> {
    if !common::slow_tests_enabled("the_cluster_demo_restores_both_workspaces_identically") {
        return Ok(());
    }
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let binaries = scenarios::podman::test_build_binaries();
    let report = cluster_demo::run_on(cluster, &binaries, 8)?;
    eprintln!("{}", report.table());
    report.ensure_identical()?;
    let names: Vec<&str> = report.rows.iter().map(|r| r.workspace.as_str()).collect();
    assert_eq!(names, ["alpha", "beta"]);
    for row in &report.rows {
        assert!(row.digest.starts_with("sha256:"), "{row:?}");
        // The sample plus an 8 MiB binary, stored compressed in the registry.
        assert!(row.data_bytes > 8 << 20, "{row:?}");
        assert!(row.stored_bytes > 0, "{row:?}");
        assert!(row.entries > 40, "{row:?}");
    }
    assert_ne!(report.rows[0].digest, report.rows[1].digest);
    Ok(())
}

/// A stopped workspace in a new restricted namespace with the registry's Secrets as DWO has
/// them; returns its empty `/projects` on the host.
async fn workspace(
    ns: &str,
    ws: &Workspace,
    registry: &TestRegistry,
) -> Result<(kube::Client, std::path::PathBuf)> {
    let cluster = cluster();
    let client = cluster.client().await?;
    cluster.create_namespace(ns, &[RESTRICTED])?;
    fixtures::install_devworkspace_crd(&client).await?;
    tokio::task::block_in_place(fixtures::build_workspace_image)?;
    cluster_demo::registry_secrets(&client, ns, registry, None).await?;
    let created = ws.create(&client, Phase::Stopped).await?;
    Ok((client, created.projects_dir))
}

/// Creates the workspace pod with DWO's `workspace-restore` init container for `backup`.
async fn start_with_restore(
    client: &kube::Client,
    ws: &Workspace,
    backup: &str,
) -> Result<cluster_demo::Start> {
    let pod = cluster_demo::restore_pod(
        &ws.namespace,
        &ws.name,
        &ws.id,
        image(),
        backup,
        CA_ORAS_EXTRA_ARGS,
    )?;
    cluster().kubectl_stdin(["create", "-f", "-"], &pod)?;
    cluster_demo::workspace_start(client, &ws.namespace, &format!("{}-restored", ws.id)).await
}

/// The node agent's log of the pod's `workspace-restore` container.
fn init_log(ns: &str, pod: &str) -> Result<String> {
    let pods = cluster().dir().join("node/pods");
    let prefix = format!("{ns}_{pod}_");
    for entry in std::fs::read_dir(&pods)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let mut text = String::new();
            for log in std::fs::read_dir(entry.path().join("logs"))? {
                let log = log?;
                if log
                    .file_name()
                    .to_string_lossy()
                    .starts_with("workspace-restore")
                {
                    text.push_str(&std::fs::read_to_string(log.path())?);
                }
            }
            return Ok(text);
        }
    }
    anyhow::bail!("no pod directory {prefix}* in {}", pods.display())
}

/// What every earlier start of a workspace leaves in its `/projects`: at each pod start the
/// kubelet (here the node agent) gives a writable volume's files group `fsGroup` and g+rw, and
/// its directories g+rwx and setgid. Applied beforehand so that comparing snapshots shows only
/// what the restore itself could have changed.
fn as_earlier_starts_left_it(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let gid = Some(fixtures::WORKSPACE_UID as u32);
        if meta.is_symlink() {
            std::os::unix::fs::lchown(&path, None, gid)?;
            continue;
        }
        std::os::unix::fs::chown(&path, None, gid)?;
        let extra = if meta.is_dir() { 0o2070 } else { 0o060 };
        let mode = meta.permissions().mode() & 0o7777;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | extra))?;
        if meta.is_dir() {
            as_earlier_starts_left_it(&path)?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_registry_down_a_workspace_with_data_starts_and_its_projects_are_untouched()
-> Result<()> {
    let _logs = cluster().logs_on_failure();
    let ns = "demo-registry-down";
    let mut registry = TestRegistry::start(RegistryKind::TlsAuth)?;
    let ws = Workspace::new(ns, "kept", "workspace0de00000000000c3");
    let (client, projects) = workspace(ns, &ws, &registry).await?;
    tokio::task::block_in_place(|| cluster_demo::write_workspace(&projects, "kept", 3, 1))?;
    as_earlier_starts_left_it(&projects)?;
    let before = cluster_demo::expected_snapshot(&projects)?;
    let backup = format!("{}/backups/{ns}/kept:latest", registry.host());
    registry.stop();

    let start = start_with_restore(&client, &ws, &backup).await?;
    assert_eq!(start.init_exit_code, 0, "{start:?}");
    assert_eq!(
        start.phase, "Running",
        "the workspace did not start: {start:?}"
    );
    let after = scenarios::sample::snapshot(&projects)?;
    assert_eq!(
        cluster_demo::difference(&before, &after),
        None,
        "/projects was touched"
    );
    let log = init_log(ns, &format!("{}-restored", ws.id))?;
    assert!(log.contains("is not empty"), "{log}");
    Api::<Pod>::namespaced(client, ns)
        .delete(&format!("{}-restored", ws.id), &DeleteParams::default())
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_made_as_upstreams_script_makes_it_is_restored_by_the_init_container() -> Result<()>
{
    let _logs = cluster().logs_on_failure();
    let ns = "demo-upstream-backup";
    let registry = TestRegistry::start(RegistryKind::TlsAuth)?;
    let ws = Workspace::new(ns, "upstream", "workspace0de00000000000d4");
    let (client, projects) = workspace(ns, &ws, &registry).await?;

    // Upstream's backup, in a scratch /tmp: `tar -czvf devworkspace-backup.tar.gz -C SRC .`,
    // then `oras push` with its arguments; the registry's CA and credentials as
    // ORAS_EXTRA_ARGS and REGISTRY_AUTH_FILE would give them.
    let scratch = tempfile::tempdir()?;
    let source = scratch.path().join("projects");
    std::fs::create_dir(&source)?;
    tokio::task::block_in_place(|| cluster_demo::write_workspace(&source, "upstream", 4, 1))?;
    let expected = cluster_demo::expected_snapshot(&source)?;
    let push_dir = scratch.path().join("tmp");
    std::fs::create_dir(&push_dir)?;
    run(Command::new("tar")
        .args(["-czvf", scenarios::oras::ARCHIVE_NAME, "-C"])
        .arg(&source)
        .arg(".")
        .current_dir(&push_dir))?;
    let backup = format!("{}/backups/{ns}/upstream:latest", registry.host());
    let ca = registry.ca_file().context("TLS")?.display().to_string();
    let auth = registry.auth_file().context("auth")?.display().to_string();
    let oras = scenarios::oras::cli().map_err(anyhow::Error::msg)?;
    let extra = ["--registry-config", &auth, "--ca-file", &ca];
    run(Command::new(oras)
        .args(scenarios::oras::push_args(&backup, "upstream", ns, &extra))
        .current_dir(&push_dir))?;

    let start = start_with_restore(&client, &ws, &backup).await?;
    assert_eq!(start.init_exit_code, 0, "{start:?}");
    assert_eq!(start.phase, "Running", "{start:?}");
    let got = scenarios::sample::snapshot(&projects)?;
    assert_eq!(
        cluster_demo::difference(&expected, &got),
        None,
        "the init container's restore of upstream's backup differs"
    );
    Ok(())
}

fn run(command: &mut Command) -> Result<()> {
    let out = command.output().with_context(|| format!("{command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Every YAML file `scenarios/kind/demo.sh` applies, rendered as the script renders it with
/// kind's values (a plain-HTTP registry container, docker's busybox), applied for real: the
/// DevWorkspace CRD, the common claim, a running workspace, the BackupPolicy and the restore
/// pod, plus the operator's kustomization (server-side dry run).
#[test]
fn every_manifest_the_kind_scripts_apply_is_accepted_by_the_api_server() -> Result<()> {
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let ns = "demo-kind-manifests";
    cluster.create_namespace(ns, &[RESTRICTED, ("wsr-demo", ns)])?;
    let kind = scenarios::podman::repo_root().join("scenarios/kind");
    let script = std::fs::read_to_string(kind.join("demo.sh"))?;
    // The operator as demo.sh installs it: `kubectl apply -k` of the base operator/deploy with
    // the image it loads into kind. Applied with a server-side dry run (admission included, the
    // namespace's restricted Pod Security among it), because for real its two host-network
    // replicas would bind the base's port here and replace the demo's Deployment.
    assert!(
        script.contains("apply -k \"$overlay\"") && script.contains("/operator/deploy\""),
        "demo.sh no longer applies operator/deploy with -k; keep this test in step"
    );
    let root = scenarios::podman::repo_root();
    // The namespace and the CRD for real: the namespaced objects and the policy below need them.
    for file in ["namespace.yaml", "crd.yaml"] {
        apply_file(&root.join("operator/deploy").join(file))?;
    }
    cluster.wait_crd_established("backuppolicies.wsr.dev")?;
    let overlay = cluster_demo::operator::kustomization_over(
        cluster.dir(),
        &root.join("operator/deploy"),
        "images: [{name: localhost/wsr-recovery, newName: localhost/wsr-recovery, newTag: \"0.1.0\"}]\n",
    )?;
    let applied = cluster.kubectl([
        "apply".as_ref(),
        "--dry-run=server".as_ref(),
        "-k".as_ref(),
        overlay.path().as_os_str(),
    ])?;
    assert!(
        applied.contains("deployment.apps/wsr-operator"),
        "{applied}"
    );
    let vars = [
        ("NAMESPACE", ns),
        ("WORKSPACE", "kind-ws"),
        ("WORKSPACE_ID", "workspace0de00000000000e5"),
        ("WORKSPACE_IMAGE", "docker.io/library/busybox:1.37"),
        ("RECOVERY_IMAGE", "localhost/wsr-recovery:0.1.0"),
        (
            "REGISTRY",
            "{path: \"kind-registry:5000/backups\", plainHTTP: true, authSecret: demo-push}",
        ),
        (
            "BACKUP_IMAGE",
            "kind-registry:5000/backups/demo-kind-manifests/kind-ws:latest",
        ),
        ("ORAS_EXTRA_ARGS", "--plain-http"),
    ];
    for (file, template) in [
        ("devworkspace-crd.yaml", manifests::DEVWORKSPACE_CRD),
        ("claim.yaml", manifests::CLAIM),
        ("workspace.yaml", manifests::WORKSPACE),
        ("policy.yaml", manifests::POLICY),
        ("restore-pod.yaml", manifests::RESTORE_POD),
    ] {
        assert!(
            script.contains(&format!("manifests/{file}")),
            "demo.sh no longer applies {file}"
        );
        let on_disk = std::fs::read_to_string(kind.join("manifests").join(file))?;
        assert_eq!(
            on_disk, template,
            "{file} changed since this test was built"
        );
        let rendered = manifests::render(template, &vars)?;
        cluster
            .kubectl_stdin(["apply", "-f", "-"], &rendered)
            .with_context(|| format!("applying {file}"))?;
        if file == "devworkspace-crd.yaml" {
            cluster.wait_crd_established("devworkspaces.workspace.devfile.io")?;
        }
    }
    // The objects are there as the script expects them.
    for object in [
        "persistentvolumeclaim/claim-devworkspace",
        "devworkspace/kind-ws",
        "deployment/workspace0de00000000000e5",
        "pod/workspace0de00000000000e5-restored",
    ] {
        cluster.kubectl(["get", "-n", ns, object])?;
    }
    cluster.kubectl(["get", "backuppolicy", ns])?;
    cluster.kubectl(["delete", "backuppolicy", ns])?;
    cluster.kubectl(["delete", "namespace", ns, "--wait=false"])?;
    Ok(())
}

fn apply_file(path: &Path) -> Result<()> {
    cluster()
        .kubectl([
            std::ffi::OsStr::new("apply"),
            "-f".as_ref(),
            path.as_os_str(),
        ])
        .map(|_| ())
}

#[test]
fn the_kind_script_passes_shellcheck_and_its_dry_run_prints_every_step() -> Result<()> {
    let script = scenarios::podman::repo_root().join("scenarios/kind/demo.sh");
    let shellcheck = Command::new("shellcheck").arg(&script).output().context(
        "shellcheck is missing: apt-get install shellcheck (scripts/test.sh installs it)",
    )?;
    assert!(
        shellcheck.status.success(),
        "{}",
        String::from_utf8_lossy(&shellcheck.stdout)
    );
    let out = Command::new("bash")
        .arg(&script)
        .arg("--dry-run")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "+ kind create cluster --name wsr-demo",
        "+ docker network connect kind kind-registry",
        "images/build.sh --tag",
        "+ kind load image-archive",
        "resources [operator/deploy], images [localhost/wsr-recovery:",
        "apply -k /",
        "rollout status -n wsr-system deployment/wsr-operator",
        "wait --for=condition=Available -n wsr-system deployment/wsr-operator",
        "kubectl apply -f manifests/devworkspace-crd.yaml",
        "kubectl apply -f manifests/claim.yaml",
        "kubectl apply -f manifests/workspace.yaml, rendered with: NAMESPACE=wsr-demo WORKSPACE=alpha",
        "kubectl apply -f manifests/policy.yaml",
        "annotate backuppolicy wsr-demo wsr.dev/run-now=1",
        "annotate backuppolicy wsr-demo wsr.dev/run-now=2",
        "delete pvc claim-devworkspace",
        "kubectl apply -f manifests/restore-pod.yaml, rendered with: NAMESPACE=wsr-demo WORKSPACE=alpha",
        "wsr-restore --kubeconfig",
        "--in-cluster --namespace wsr-demo --workspace beta",
        "==> Summary",
    ] {
        assert!(
            text.contains(expected),
            "dry run lacks {expected:?}:\n{text}"
        );
    }
    Ok(())
}
