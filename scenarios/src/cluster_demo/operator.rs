//! Installing wsr-operator on a cluster, behind one function ([`install`]) so the demo does not
//! care how: `kubectl apply -k` of the local-cluster overlay `scenarios/deploy/operator-local`
//! (the production base `operator/deploy` with one replica and a loopback listener), through a
//! kustomization over it ([`local_overlay`]) that sets this run's recovery image and moves the
//! listener to a free port, because the node agent runs every pod in the host's network,
//! shared with every other cluster on the machine. The operator then runs in its pod as its
//! ServiceAccount, with exactly the RBAC the manifests grant. The node agent serves no
//! `kubectl logs`, so [`Operator::log_tail`] reads the container's output with `podman logs`.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::cluster::Cluster;

/// The operator's namespace (`operator/deploy/namespace.yaml`).
pub const OPERATOR_NS: &str = "wsr-system";
/// The operator's Deployment and its pods' label (`operator/deploy/deployment.yaml`).
const DEPLOYMENT: &str = "wsr-operator";
const POD_SELECTOR: &str = "app.kubernetes.io/name=wsr-operator";

/// A kustomization in a new temporary directory under `parent` whose one resource is the
/// kustomization directory `base` (absolute), followed by `extra` YAML.
pub fn kustomization_over(parent: &Path, base: &Path, extra: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir_in(parent)?;
    // kustomize takes only relative paths to other kustomizations.
    let depth = dir.path().components().count() - 1;
    let relative = format!(
        "{}{}",
        "../".repeat(depth),
        base.to_string_lossy().trim_start_matches('/')
    );
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!("resources: [{relative}]\n{extra}"),
    )?;
    Ok(dir)
}

/// A kustomization under `parent` over `scenarios/deploy/operator-local` that runs `image` and
/// moves the listener (and so the probes) to `port` on loopback.
pub fn local_overlay(parent: &Path, port: u16, image: &str) -> Result<tempfile::TempDir> {
    let overlay = crate::podman::repo_root().join("scenarios/deploy/operator-local");
    kustomization_over(
        parent,
        &overlay,
        &format!(
            "patches:\n  - target: {{kind: Deployment, name: {DEPLOYMENT}}}\n    patch: |-\n      \
             - {{op: replace, path: /spec/template/spec/containers/0/image, value: \"{image}\"}}\n      \
             - {{op: replace, path: /spec/template/spec/containers/0/env/2, value: {{name: WSR_OPERATOR_LISTEN, value: \"127.0.0.1:{port}\"}}}}\n      \
             - {{op: replace, path: /spec/template/spec/containers/0/ports/0/containerPort, value: {port}}}\n"
        ),
    )
}

/// A free TCP port on loopback (free when asked; the caller binds it soon after).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The installed operator Deployment; deleted when dropped (its pod releases the Lease on
/// SIGTERM), as the demo's operator lives only as long as the demo.
pub struct Operator<'a> {
    cluster: &'a Cluster,
}

impl Operator<'_> {
    /// The operator's pods: (name, container restarts).
    fn pods(&self) -> Result<Vec<(String, u32)>> {
        let out = self.cluster.kubectl([
            "get",
            "pods",
            "-n",
            OPERATOR_NS,
            "-l",
            POD_SELECTOR,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.containerStatuses[0].restartCount}{\"\\n\"}{end}",
        ])?;
        Ok(out
            .lines()
            .filter_map(|line| {
                let (name, restarts) = line.split_once(' ')?;
                Some((name.to_owned(), restarts.trim().parse().unwrap_or(0)))
            })
            .collect())
    }

    /// `Err` with the log's tail once the operator's container has restarted (it never exits
    /// by itself) or its pod is gone.
    pub fn ensure_running(&self) -> Result<()> {
        let pods = self.pods()?;
        match pods.iter().find(|(_, restarts)| *restarts > 0) {
            Some((pod, restarts)) => bail!(
                "the wsr-operator container of pod {pod} restarted {restarts} time(s); {}",
                self.log_tail(20)
            ),
            None if pods.is_empty() => bail!("no wsr-operator pod in {OPERATOR_NS}"),
            None => Ok(()),
        }
    }

    /// The last `lines` lines of the operator container's output (`podman logs` of the node
    /// agent's container `k8s_operator_<pod>_wsr-system_<uid>_<attempt>`; a finished attempt's
    /// output is also in the node agent's `pods/<ns>_<pod>_<uid>/logs/operator-<attempt>.log`).
    pub fn log_tail(&self, lines: usize) -> String {
        self.try_log_tail(lines)
            .unwrap_or_else(|e| format!("(no operator log: {e:#})"))
    }

    fn try_log_tail(&self, lines: usize) -> Result<String> {
        let (pod, _) = self.pods()?.into_iter().next().context("no operator pod")?;
        let storage = crate::podman::image_storage();
        let prefix = format!("k8s_operator_{pod}_{OPERATOR_NS}_");
        let names = crate::podman::command(&storage)
            .args(["ps", "-a", "--format", "{{.Names}}"])
            .output()?;
        let container = String::from_utf8_lossy(&names.stdout)
            .lines()
            .filter(|n| n.starts_with(&prefix))
            .max_by_key(|n| n.rsplit('_').next().and_then(|a| a.parse::<u32>().ok()))
            .map(str::to_owned)
            .with_context(|| format!("no podman container {prefix}*"))?;
        let out = crate::podman::command(&storage)
            .args(["logs", "--tail", &lines.to_string(), &container])
            .output()?;
        Ok(format!(
            "the end of `podman logs {container}`:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Drop for Operator<'_> {
    fn drop(&mut self) {
        let _ = self.cluster.kubectl([
            "delete",
            "deployment",
            DEPLOYMENT,
            "-n",
            OPERATOR_NS,
            "--ignore-not-found",
        ]);
        let _ = self.cluster.kubectl([
            "wait",
            "--for=delete",
            "pod",
            "-l",
            POD_SELECTOR,
            "-n",
            OPERATOR_NS,
            "--timeout=60s",
        ]);
    }
}

/// Applies [`local_overlay`] with `image` (the recovery image, which holds `wsr-operator`)
/// with `kubectl apply -k` and waits for the Deployment's rollout and its Available condition.
pub fn install<'a>(cluster: &'a Cluster, image: &str) -> Result<Operator<'a>> {
    let overlay = local_overlay(cluster.dir(), free_port()?, image)?;
    cluster
        .kubectl(["apply".as_ref(), "-k".as_ref(), overlay.path().as_os_str()])
        .context("kubectl apply -k scenarios/deploy/operator-local")?;
    let operator = Operator { cluster };
    // The demo applies a BackupPolicy next; the CRD came in the same apply.
    cluster.wait_crd_established("backuppolicies.wsr.dev")?;
    let deployment = format!("deployment/{DEPLOYMENT}");
    let rollout = cluster
        .kubectl([
            "rollout",
            "status",
            &deployment,
            "-n",
            OPERATOR_NS,
            "--timeout=180s",
        ])
        .and_then(|_| {
            cluster.kubectl([
                "wait",
                "--for=condition=Available",
                &deployment,
                "-n",
                OPERATOR_NS,
                "--timeout=60s",
            ])
        });
    if let Err(e) = rollout {
        bail!(
            "the wsr-operator Deployment did not become Available: {e:#}\n{}",
            operator.log_tail(30)
        );
    }
    Ok(operator)
}
