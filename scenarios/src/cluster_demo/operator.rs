//! Installing and running wsr-operator on a cluster, behind one function ([`install`]) so the
//! demo does not care how: today the CRD, the operator namespace and its RBAC from
//! `operator/deploy/` are applied with kubectl, and `wsr-operator run` runs as a local process
//! authenticated as its ServiceAccount (a TokenRequest token), so it acts with exactly the
//! RBAC the manifests grant, as `scenarios/tests/operator.rs` runs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, ensure};

use crate::cluster::Cluster;

/// The operator's namespace (`operator/deploy/namespace.yaml`).
pub const OPERATOR_NS: &str = "wsr-system";
const SERVICE_ACCOUNT: &str = "wsr-operator";

/// A running operator; stopped when dropped.
pub struct Operator {
    child: std::sync::Mutex<Child>,
    log: PathBuf,
}

impl Operator {
    /// The operator's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `Err` with the log's tail once the operator has exited (it never exits by itself).
    pub fn ensure_running(&self) -> Result<()> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match child.try_wait()? {
            None => Ok(()),
            Some(status) => anyhow::bail!(
                "wsr-operator exited ({status}); the end of {}:\n{}",
                self.log.display(),
                self.log_tail(20)
            ),
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Installs the operator's manifests and starts `BINARIES/wsr-operator run`, logging to
/// `<cluster dir>/operator-<name>.log`.
pub fn install(cluster: &Cluster, binaries: &Path, name: &str) -> Result<Operator> {
    let deploy = crate::podman::repo_root().join("operator/deploy");
    let apply = |file: &str| {
        let path = deploy.join(file);
        cluster
            .kubectl([
                std::ffi::OsStr::new("apply"),
                "-f".as_ref(),
                path.as_os_str(),
            ])
            .with_context(|| format!("applying {}", path.display()))
    };
    apply("crd.yaml")?;
    cluster.kubectl([
        "wait",
        "--for=condition=Established",
        "crd/backuppolicies.wsr.dev",
    ])?;
    apply("namespace.yaml")?;
    apply("rbac.yaml")?;
    let kubeconfig = cluster.service_account_kubeconfig(OPERATOR_NS, SERVICE_ACCOUNT)?;
    let exe = binaries.join("wsr-operator");
    ensure!(
        exe.is_file(),
        "{} is missing: cargo build -p wsr-operator",
        exe.display()
    );
    let log = cluster.dir().join(format!("operator-{name}.log"));
    let file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log)?;
    let child = Command::new(exe)
        .args(["run", "--namespace", OPERATOR_NS])
        .env("KUBECONFIG", &kubeconfig)
        .env("WSR_LOG", "info")
        // Operators that serve /healthz and /metrics listen on loopback, on a free port, so
        // demos and tests on one machine do not collide (older ones ignore the variable).
        .env("WSR_OPERATOR_LISTEN", "127.0.0.1:0")
        .stdout(file.try_clone()?)
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .context("starting wsr-operator")?;
    Ok(Operator {
        child: std::sync::Mutex::new(child),
        log,
    })
}
