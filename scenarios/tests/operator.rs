//! `wsr-operator run` on the real control plane (`scenarios::cluster`), as its own
//! ServiceAccount with exactly `operator/deploy/rbac.yaml`, with the node agent running the
//! backup Jobs' pods from the real recovery image, into a real registry. Every workspace
//! namespace enforces the `restricted` Pod Security Standard, so each completed backup also
//! shows that the Job's pod is admitted there.
//!
//! Each test has its own namespace and its own policy (selecting that namespace by label), so
//! tests sharing the cluster do not see each other's workspaces; one operator runs at a time.
//! Needs what tests/node_agent.rs needs, plus the operator binary of this build
//! (`cargo build -p wsr-operator`; `cargo test --workspace` builds it).

mod common;

use common::{RESTRICTED, cluster, image};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use scenarios::cluster::fixtures::{self, Phase, Workspace};
use scenarios::cluster_demo;
use scenarios::cluster_demo::operator::{self, free_port};
use serde_json::{Value, json};
use wsr_transport::testing::{RegistryKind, TestRegistry};

const OPERATOR_NS: &str = "wsr-system";
/// The namespace label each test's policy selects on.
const TEST_LABEL: &str = "wsr-test";

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(scenarios::podman::repo_root().join(path)).expect(path)
}

/// The CRDs, the operator namespace and its RBAC, once per test binary; returns the
/// ServiceAccount's kubeconfig.
fn install() -> &'static Path {
    static SA: OnceLock<PathBuf> = OnceLock::new();
    SA.get_or_init(|| {
        let cluster = cluster();
        cluster
            .kubectl_stdin(["apply", "-f", "-"], &repo_file("operator/deploy/crd.yaml"))
            .expect("CRD");
        cluster
            .wait_crd_established("backuppolicies.wsr.dev")
            .expect("CRD established");
        cluster
            .kubectl_stdin(
                ["apply", "-f", "-"],
                &repo_file("operator/deploy/namespace.yaml"),
            )
            .expect("namespace");
        cluster
            .kubectl_stdin(
                ["apply", "-f", "-"],
                &repo_file("operator/deploy/rbac.yaml"),
            )
            .expect("RBAC");
        std::thread::spawn(|| {
            let rt = common::runtime();
            rt.block_on(async {
                let client = self::cluster().client().await.expect("client");
                fixtures::install_devworkspace_crd(&client)
                    .await
                    .expect("DevWorkspace CRD");
            })
        })
        .join()
        .expect("install thread");
        cluster
            .service_account_kubeconfig(OPERATOR_NS, "wsr-operator")
            .expect("ServiceAccount kubeconfig")
    })
}

/// A running `wsr-operator run` (leader election on, its listener on a free loopback port),
/// stopped with SIGTERM on drop; its log is printed unless the test called
/// [`Operator::passed`].
struct Operator {
    child: Child,
    log: PathBuf,
    port: u16,
    passed: bool,
}

impl Operator {
    /// As the operator's ServiceAccount with `deploy/rbac.yaml`.
    fn start(name: &str) -> Result<Operator> {
        Operator::start_as(name, install(), &[])
    }

    /// With `kubeconfig`'s identity and extra `run` arguments.
    fn start_as(name: &str, kubeconfig: &Path, extra: &[&str]) -> Result<Operator> {
        let exe = scenarios::podman::test_build_binaries().join("wsr-operator");
        anyhow::ensure!(
            exe.is_file(),
            "{} is missing: cargo build -p wsr-operator (scripts/test.sh builds it)",
            exe.display()
        );
        let log = cluster().dir().join(format!("operator-{name}.log"));
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)?;
        let port = free_port()?;
        let child = Command::new(exe)
            .args(["run", "--namespace", OPERATOR_NS, "--identity", name])
            .arg(format!("--listen=127.0.0.1:{port}"))
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("WSR_LOG", "info,wsr_operator=debug")
            .stdout(file.try_clone()?)
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .context("starting wsr-operator")?;
        Ok(Operator {
            child,
            log,
            port,
            passed: false,
        })
    }

    fn passed(mut self) {
        self.passed = true;
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET http://127.0.0.1:<port><path>`: status and body.
    fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.port, path)
    }

    /// SIGTERM (a graceful stop: the Lease is released), then waits; SIGKILL after 30 s.
    /// Returns the exit status.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        self.kill();
        None
    }

    /// SIGKILL: the process dies holding whatever it holds.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
        if !self.passed {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- operator log (last 60 lines)");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A plain HTTP/1.0 GET on loopback: status code and body.
fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of the HTTP header")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((status, body.to_owned()))
}

/// What one test needs: its namespace (restricted, labelled for its policy), a registry with
/// TLS and basic auth, the policy's auth Secret in the operator namespace and the CA Secret in
/// the workspace namespace.
struct Setup {
    /// One operator runs at a time: every test's operator must be the Lease holder (and the
    /// leader-election test runs two on purpose).
    _one_operator: tokio::sync::MutexGuard<'static, ()>,
    client: Client,
    ns: String,
    registry: TestRegistry,
}

static ONE_OPERATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn setup(ns: &str) -> Result<Setup> {
    let one_operator = ONE_OPERATOR.lock().await;
    let cluster = cluster();
    install();
    let _ = image();
    let client = cluster.client().await?;
    cluster.create_namespace(ns, &[RESTRICTED, (TEST_LABEL, ns)])?;
    let registry = TestRegistry::start(RegistryKind::TlsAuth)?;
    let config = std::fs::read_to_string(registry.auth_file().expect("auth"))?;
    let ca = std::fs::read_to_string(registry.ca_file().expect("tls"))?;
    create_secret(
        &client,
        OPERATOR_NS,
        &format!("push-{ns}"),
        "kubernetes.io/dockerconfigjson",
        ".dockerconfigjson",
        &config,
    )
    .await?;
    create_secret(&client, ns, "registry-ca", "Opaque", "ca.crt", &ca).await?;
    Ok(Setup {
        _one_operator: one_operator,
        client,
        ns: ns.into(),
        registry,
    })
}

async fn create_secret(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    key: &str,
    value: &str,
) -> Result<Secret> {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns}, "type": type_, "stringData": {key: value}}))?;
    Ok(Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await?)
}

impl Setup {
    /// A policy selecting this test's namespace; `extra` is merged into its spec.
    async fn policy(&self, extra: Value) -> Result<()> {
        let mut spec = json!({
            "schedule": "0 0 1 1 *",
            "registry": {"path": format!("{}/backups", self.registry.host()),
                         "authSecret": format!("push-{}", self.ns), "caSecret": "registry-ca"},
            "namespaceSelector": {"matchLabels": {TEST_LABEL: self.ns}},
            "failureBackoff": {"initialSeconds": 2, "maxSeconds": 60},
            "jobTemplate": {"image": image(), "imagePullPolicy": "IfNotPresent",
                            // The workspace's uid: the claim is mounted read-only, so no fsGroup
                            // change happens and only the files' owner can read owner-only files.
                            "podSecurityContext": {"runAsUser": fixtures::WORKSPACE_UID}},
        });
        merge(&mut spec, extra);
        let policy: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "wsr.dev/v1alpha1", "kind": "BackupPolicy",
            "metadata": {"name": self.ns}, "spec": spec}))?;
        self.policies()
            .create(&PostParams::default(), &policy)
            .await?;
        Ok(())
    }

    fn policies(&self) -> Api<DynamicObject> {
        let ar = ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("wsr.dev", "v1alpha1", "BackupPolicy"),
            "backuppolicies",
        );
        Api::all_with(self.client.clone(), &ar)
    }

    async fn run_now(&self, token: &str) -> Result<()> {
        let patch = json!({"metadata": {"annotations": {"wsr.dev/run-now": token}}});
        self.policies()
            .patch(&self.ns, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }

    async fn policy_status(&self) -> Result<Value> {
        Ok(serde_json::to_value(self.policies().get(&self.ns).await?)?["status"].clone())
    }

    fn workspaces(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.ns,
            &fixtures::devworkspace_resource(),
        )
    }

    async fn annotations(&self, ws: &str) -> Result<BTreeMap<String, String>> {
        Ok(self
            .workspaces()
            .get(ws)
            .await?
            .metadata
            .annotations
            .unwrap_or_default())
    }

    /// The workspace's annotations once its backup result is recorded.
    async fn recorded(&self, ws: &str) -> Result<BTreeMap<String, String>> {
        let result = fixtures::poll(&format!("the backup result on {ws}"), || async {
            let a = self.annotations(ws).await?;
            Ok(
                a.contains_key("controller.devfile.io/last-backup-successful")
                    .then_some(a),
            )
        })
        .await;
        if result.is_err() {
            self.diagnose();
        }
        result
    }

    /// Prints the namespace's Jobs, pods and events (for a failed wait).
    fn diagnose(&self) {
        for what in ["jobs,pods", "events"] {
            let out = cluster().kubectl(["get", what, "-n", &self.ns, "-o", "yaml"]);
            eprintln!(
                "--- {what} in {}:\n{}",
                self.ns,
                out.unwrap_or_else(|e| e.to_string())
            );
        }
        eprintln!("--- cluster logs\n{}", cluster().logs(30));
    }

    async fn jobs(&self, ws: &str) -> Result<Vec<Job>> {
        let selector = format!(
            "controller.devfile.io/backup-job=true,controller.devfile.io/devworkspace_name={ws}"
        );
        Ok(Api::<Job>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default().labels(&selector))
            .await?
            .items)
    }

    async fn event_reasons(&self, ws: &str) -> Result<Vec<String>> {
        let events = Api::<Event>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await?;
        Ok(events
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(ws))
            .filter_map(|e| e.reason)
            .collect())
    }

    fn reference(&self, ws: &str) -> String {
        format!("{}/backups/{}/{ws}:latest", self.registry.host(), self.ns)
    }

    /// Restores the workspace's `latest` and compares it with its `/projects`.
    fn assert_restorable(&self, ws: &str, projects: &Path) -> Result<()> {
        let restored = tempfile::tempdir()?;
        let (reference, connect) = (self.reference(ws), common::connect_for(&self.registry));
        let target = restored.path().to_owned();
        // The engine's helper runs its own runtime: off this one's threads.
        std::thread::spawn(move || common::restore(&reference, &target, connect).map(|_| ()))
            .join()
            .expect("restore thread")?;
        assert_eq!(
            scenarios::sample::snapshot(restored.path())?,
            common::expected_snapshot(projects),
            "the restored tree differs from {ws}'s /projects"
        );
        Ok(())
    }
}

/// Writes the sample workspace as the workspace's user (uid/gid 1234, as DWO runs workspaces
/// on Kubernetes) would have left it.
fn write_projects(projects: &Path) -> Result<()> {
    scenarios::sample::write_sample(projects, false)?;
    let id = fixtures::WORKSPACE_UID as u32;
    for entry in walk(projects)? {
        std::os::unix::fs::lchown(&entry, Some(id), Some(id))?;
    }
    Ok(())
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![dir.to_owned()];
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            out.extend(walk(&entry.path())?);
        } else {
            out.push(entry.path());
        }
    }
    Ok(out)
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// A workspace that was created stopped, never having run: no `Started=False` transition.
async fn never_started(setup: &Setup, ws: &Workspace) -> Result<()> {
    ws.create(&setup.client, Phase::Stopped).await?;
    let patch = json!({"status": {"conditions": []}});
    setup
        .workspaces()
        .patch_status(&ws.name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

/// A workspace that stopped and was started again: `Running`, with an older `Started=False`
/// transition. (Only the DevWorkspace status is set, as DWO would; no pod runs.)
async fn restarted(setup: &Setup, ws: &Workspace) -> Result<()> {
    ws.create(&setup.client, Phase::Stopped).await?;
    set_phase(setup, &ws.name, "Running").await
}

/// Moves a workspace to `phase` with a `Started` transition now.
async fn set_phase(setup: &Setup, ws: &str, phase: &str) -> Result<()> {
    let started = if phase == "Running" { "True" } else { "False" };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let patch = json!({"status": {"phase": phase, "conditions": [
        {"type": "Started", "status": started, "lastTransitionTime": now, "reason": "", "message": ""}]}});
    setup
        .workspaces()
        .patch_status(ws, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_workspace_is_backed_up_and_running_or_never_started_ones_are_left_alone()
-> Result<()> {
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let setup = setup("op-backup").await?;
    let stopped = Workspace::new(&setup.ns, "stopped", "workspace00000000000000a1");
    let created = stopped.create(&setup.client, Phase::Stopped).await?;
    write_projects(&created.projects_dir)?;
    let running = Workspace::new(&setup.ns, "running", "workspace00000000000000a2");
    restarted(&setup, &running).await?;
    let fresh = Workspace::new(&setup.ns, "fresh", "workspace00000000000000a3");
    never_started(&setup, &fresh).await?;

    let operator = Operator::start("backup")?;
    setup.policy(json!({})).await?;
    setup.run_now("1").await?;

    let a = setup.recorded("stopped").await?;
    assert_eq!(
        a["controller.devfile.io/last-backup-successful"], "true",
        "{a:#?}"
    );
    assert!(
        !a.contains_key("controller.devfile.io/last-backup-error"),
        "{a:#?}"
    );
    chrono::DateTime::parse_from_rfc3339(&a["controller.devfile.io/last-backup-finished-at"])?;
    let reference = &a["wsr.dev/last-backup-reference"];
    assert!(
        reference.starts_with(&format!(
            "{}/backups/{}/stopped",
            setup.registry.host(),
            setup.ns
        )),
        "{reference}"
    );
    assert!(
        a["wsr.dev/last-backup-job"].starts_with("devworkspace-backup-"),
        "{a:#?}"
    );
    setup.assert_restorable("stopped", &created.projects_dir)?;

    let reasons = fixtures::poll("the BackupSucceeded Event", || async {
        let r = setup.event_reasons("stopped").await?;
        Ok(r.iter().any(|r| r == "BackupSucceeded").then_some(r))
    })
    .await?;
    assert!(reasons.contains(&"BackupStarted".to_owned()), "{reasons:?}");

    // The policy's credentials were copied as upstream does: fixed name, watch label, no owner.
    let copied = Api::<Secret>::namespaced(setup.client.clone(), &setup.ns)
        .get("devworkspace-backup-registry-auth")
        .await?;
    assert_eq!(
        copied.metadata.labels.unwrap_or_default()["controller.devfile.io/watch-secret"],
        "true"
    );
    assert!(
        copied
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );

    // The running and the never-started workspace got no Job and no annotations.
    for ws in ["running", "fresh"] {
        assert!(setup.jobs(ws).await?.is_empty(), "{ws} got a backup Job");
        let a = setup.annotations(ws).await?;
        assert!(
            !a.contains_key("controller.devfile.io/last-backup-finished-at"),
            "{ws}: {a:#?}"
        );
    }
    let status = fixtures::poll(
        "the policy status to count the skipped workspaces",
        || async {
            let s = setup.policy_status().await?;
            let skipped = &s["counts"]["skipped"];
            Ok((skipped["notStopped"] == 1
                && skipped["neverStarted"] == 1
                && skipped["upToDate"] == 1)
                .then_some(s))
        },
    )
    .await;
    if status.is_err() {
        eprintln!("policy status: {:#}", setup.policy_status().await?);
    }
    let status = status?;
    assert_eq!(status["conditions"][0]["status"], "True", "{status:#}");
    assert_eq!(status["lastRunNow"], "1", "{status:#}");
    assert_eq!(
        setup.jobs("stopped").await?.len(),
        1,
        "one backup, not one per run"
    );
    operator.passed();
    Ok(())
}

async fn stopped_workspace(setup: &Setup, name: &str, id: &str) -> Result<PathBuf> {
    let ws = Workspace::new(&setup.ns, name, id);
    let created = ws.create(&setup.client, Phase::Stopped).await?;
    write_projects(&created.projects_dir)?;
    Ok(created.projects_dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_backup_records_the_real_reason_and_is_retried_after_a_backoff() -> Result<()> {
    let _logs = cluster().logs_on_failure();
    let mut setup = setup("op-failure").await?;
    let projects = stopped_workspace(&setup, "ws", "workspace00000000000000b1").await?;
    // An earlier backup (made here, as any client could have): its `latest` must survive.
    let earlier = {
        let options = common::backup_options(
            &projects,
            &setup.reference("ws"),
            wsr_backup::Format::Native,
            common::connect_for(&setup.registry),
        );
        std::thread::spawn(move || common::backup(&options))
            .join()
            .expect("backup thread")?
            .digest
    };
    let registry_host = setup.registry.host();
    setup.registry.stop();

    let operator = Operator::start("failure")?;
    // The first backoff must outlast the checks below on a loaded machine, so that the registry
    // is back before the retry (a retry into the stopped registry would add a failed Job).
    setup
        .policy(json!({"failureBackoff": {"initialSeconds": 45, "maxSeconds": 90}}))
        .await?;
    setup.run_now("1").await?;

    let a = setup.recorded("ws").await?;
    assert_eq!(
        a["controller.devfile.io/last-backup-successful"], "false",
        "{a:#?}"
    );
    let error = &a["controller.devfile.io/last-backup-error"];
    // wsr-backup's own reason, from the pod's termination message, not the Job's
    // "BackoffLimitExceeded".
    assert!(error.contains(&registry_host), "{error}");
    assert!(!error.contains("backoff limit"), "{error}");
    assert_eq!(a["wsr.dev/backup-failures"], "1", "{a:#?}");
    let reasons = setup.event_reasons("ws").await?;
    assert!(reasons.contains(&"BackupFailed".to_owned()), "{reasons:?}");
    // `latest` still names the earlier backup (read from the stopped registry's storage).
    let latest = setup.registry.data_dir().join(format!(
        "docker/registry/v2/repositories/backups/{}/ws/_manifests/tags/latest/current/link",
        setup.ns
    ));
    assert_eq!(std::fs::read_to_string(&latest)?, earlier);

    // While backing off, no new Job: the policy reports the workspace as backing off.
    let status = fixtures::poll("the policy to report the backoff", || async {
        let s = setup.policy_status().await?;
        Ok((s["counts"]["skipped"]["backingOff"] == 1).then_some(s))
    })
    .await?;
    assert_eq!(status["counts"]["failed"], 1, "{status:#}");
    assert_eq!(
        setup.jobs("ws").await?.len(),
        1,
        "retried before the backoff ended"
    );

    // The registry comes back: the retry after the backoff succeeds, with no run-now.
    setup.registry.restart()?;
    let a = fixtures::poll("the retry to succeed", || async {
        let a = setup.annotations("ws").await?;
        Ok((a
            .get("controller.devfile.io/last-backup-successful")
            .map(String::as_str)
            == Some("true"))
        .then_some(a))
    })
    .await?;
    assert!(
        !a.contains_key("controller.devfile.io/last-backup-error"),
        "{a:#?}"
    );
    assert!(!a.contains_key("wsr.dev/backup-failures"), "{a:#?}");
    assert_eq!(setup.jobs("ws").await?.len(), 2);
    setup.assert_restorable("ws", &projects)?;
    operator.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_users_own_registry_secret_wins_and_is_never_overwritten() -> Result<()> {
    let _logs = cluster().logs_on_failure();
    let setup = setup("op-user-secret").await?;
    let projects = stopped_workspace(&setup, "ws", "workspace00000000000000c1").await?;
    // The user's Secret holds the working credentials; the policy's names wrong ones, so a
    // copy (or any change) of the user's Secret would make the backup fail.
    let good = std::fs::read_to_string(setup.registry.auth_file().expect("auth"))?;
    let users = create_secret(
        &setup.client,
        &setup.ns,
        "devworkspace-backup-registry-auth",
        "kubernetes.io/dockerconfigjson",
        ".dockerconfigjson",
        &good,
    )
    .await?;
    let bad = json!({"auths": {setup.registry.host(): {"auth": "d3Jvbmc6d3Jvbmc="}}}).to_string();
    create_secret(
        &setup.client,
        OPERATOR_NS,
        "wrong-creds",
        "kubernetes.io/dockerconfigjson",
        ".dockerconfigjson",
        &bad,
    )
    .await?;

    let operator = Operator::start("user-secret")?;
    setup
        .policy(json!({"registry": {"authSecret": "wrong-creds"}}))
        .await?;
    setup.run_now("1").await?;
    let a = setup.recorded("ws").await?;
    assert_eq!(
        a["controller.devfile.io/last-backup-successful"], "true",
        "{a:#?}"
    );
    setup.assert_restorable("ws", &projects)?;
    let after = Api::<Secret>::namespaced(setup.client.clone(), &setup.ns)
        .get("devworkspace-backup-registry-auth")
        .await?;
    assert_eq!(
        after.metadata.resource_version, users.metadata.resource_version,
        "the user's Secret was modified"
    );
    assert_eq!(after.data, users.data);
    operator.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn on_stop_backs_up_after_the_delay_and_a_restart_inside_it_cancels() -> Result<()> {
    let _logs = cluster().logs_on_failure();
    let setup = setup("op-on-stop").await?;
    let operator = Operator::start("on-stop")?;
    // A schedule that does not fire during the test: only the onStop trigger can act.
    setup
        .policy(json!({"trigger": "onStop", "onStopDelaySeconds": 15}))
        .await?;
    // "quick" stops and starts again inside the delay; "slow" stays stopped.
    stopped_workspace(&setup, "quick", "workspace00000000000000d1").await?;
    set_phase(&setup, "quick", "Running").await?;
    let projects = stopped_workspace(&setup, "slow", "workspace00000000000000d2").await?;
    let stopped_at = {
        let ws = serde_json::to_value(setup.workspaces().get("slow").await?)?;
        chrono::DateTime::parse_from_rfc3339(
            ws["status"]["conditions"][0]["lastTransitionTime"]
                .as_str()
                .unwrap_or_default(),
        )?
    };

    let a = setup.recorded("slow").await?;
    assert_eq!(
        a["controller.devfile.io/last-backup-successful"], "true",
        "{a:#?}"
    );
    let finished =
        chrono::DateTime::parse_from_rfc3339(&a["controller.devfile.io/last-backup-finished-at"])?;
    assert!(
        finished >= stopped_at + chrono::Duration::seconds(15),
        "backed up before the delay: stopped {stopped_at}, finished {finished}"
    );
    setup.assert_restorable("slow", &projects)?;
    // By now the delay has long passed for "quick" too: it was cancelled, not postponed.
    assert!(
        setup.jobs("quick").await?.is_empty(),
        "the restarted workspace was backed up"
    );
    assert!(
        !setup
            .annotations("quick")
            .await?
            .contains_key("controller.devfile.io/last-backup-finished-at")
    );
    operator.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_that_arrives_while_the_operator_is_down_is_recorded_when_it_restarts()
-> Result<()> {
    let _logs = cluster().logs_on_failure();
    let setup = setup("op-restart").await?;
    let projects = stopped_workspace(&setup, "ws", "workspace00000000000000e1").await?;
    let mut first = Operator::start("restart-1")?;
    setup.policy(json!({})).await?;
    setup.run_now("1").await?;
    let job = fixtures::poll("the backup Job", || async {
        Ok(setup.jobs("ws").await?.into_iter().next())
    })
    .await?;
    first.stop();
    first.passed();

    let name = job.metadata.name.clone().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(setup.client.clone(), &setup.ns);
    fixtures::poll("the Job to finish", || async {
        let job = jobs.get(&name).await?;
        Ok(job.status.and_then(|s| s.succeeded).filter(|n| *n > 0))
    })
    .await?;
    assert!(
        !setup
            .annotations("ws")
            .await?
            .contains_key("controller.devfile.io/last-backup-successful"),
        "recorded before the operator was killed: the test proves nothing"
    );

    let second = Operator::start("restart-2")?;
    let a = setup.recorded("ws").await?;
    assert_eq!(
        a["controller.devfile.io/last-backup-successful"], "true",
        "{a:#?}"
    );
    assert_eq!(a["wsr.dev/last-backup-job"], name);
    setup.assert_restorable("ws", &projects)?;
    assert_eq!(
        setup.jobs("ws").await?.len(),
        1,
        "the restarted operator backed up again"
    );
    second.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_minute_schedule_backs_up_without_run_now() -> Result<()> {
    let _logs = cluster().logs_on_failure();
    let setup = setup("op-schedule").await?;
    let projects = stopped_workspace(&setup, "ws", "workspace00000000000000f1").await?;
    let operator = Operator::start("schedule")?;
    setup.policy(json!({"schedule": "* * * * *"})).await?;
    let a = setup.recorded("ws").await?;
    assert_eq!(
        a["controller.devfile.io/last-backup-successful"], "true",
        "{a:#?}"
    );
    setup.assert_restorable("ws", &projects)?;
    let status = setup.policy_status().await?;
    assert!(status["lastRunTime"].is_string(), "{status:#}");
    assert!(status.get("lastRunNow").is_none(), "{status:#}");
    operator.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_policies_are_refused_by_the_schema_or_reported_in_the_status() -> Result<()> {
    let _logs = cluster().logs_on_failure();
    let setup = setup("op-invalid").await?;
    let operator = Operator::start("invalid")?;
    // CEL rules and patterns: the API server refuses these outright.
    for (spec, why) in [
        (
            json!({"failureBackoff": {"initialSeconds": 600, "maxSeconds": 60}}),
            "maxSeconds must be at least initialSeconds",
        ),
        (
            json!({"jobTemplate": {"podSecurityContext": {"runAsUser": 0}}}),
            "restricted profile",
        ),
        (json!({"schedule": "every day"}), "schedule"),
    ] {
        let err = setup
            .policy(spec)
            .await
            .expect_err("accepted an invalid policy");
        assert!(format!("{err:#}").contains(why), "{err:#}");
    }
    // What only the operator can check: a pattern that never fires, an unknown time zone.
    setup
        .policy(json!({"schedule": "0 0 31 2 *", "timeZone": "Mars/Olympus_Mons"}))
        .await?;
    let status = fixtures::poll("the policy to be reported invalid", || async {
        let s = setup.policy_status().await?;
        Ok((s["conditions"][0]["reason"] == "InvalidSpec").then_some(s))
    })
    .await?;
    assert_eq!(status["conditions"][0]["status"], "False", "{status:#}");
    let message = status["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("0 0 31 2 *") || message.contains("Mars"),
        "{message}"
    );
    operator.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_on_a_common_claim_held_by_a_running_workspace_is_pinned_to_its_node() -> Result<()> {
    let _logs = cluster().logs_on_failure();
    let setup = setup("op-affinity").await?;
    fixtures::build_workspace_image()?;
    let running = Workspace::new(&setup.ns, "running", "workspace0000000000000a71");
    let pod = running.create(&setup.client, Phase::Running).await?.pod;
    let projects = stopped_workspace(&setup, "stopped", "workspace0000000000000a72").await?;
    let operator = Operator::start("affinity")?;
    setup.policy(json!({})).await?;
    setup.run_now("1").await?;
    let a = setup.recorded("stopped").await?;
    assert_eq!(
        a["controller.devfile.io/last-backup-successful"], "true",
        "{a:#?}"
    );
    setup.assert_restorable("stopped", &projects)?;
    let job = serde_json::to_value(&setup.jobs("stopped").await?[0])?;
    let terms = &job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(
        terms,
        &json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [scenarios::cluster::NODE_NAME]}]}]),
        "running pod {pod:?}"
    );
    // The running workspace itself is left alone.
    assert!(setup.jobs("running").await?.is_empty());
    operator.passed();
    Ok(())
}

// ---- Production install, leader election, metrics and RBAC (issue 11) ----

/// The Lease's holder, if any.
async fn lease_holder(client: &Client) -> Result<Option<String>> {
    let lease = Api::<Lease>::namespaced(client.clone(), OPERATOR_NS)
        .get_opt("wsr-operator")
        .await?;
    Ok(lease
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

/// The value of one series line (`name{labels}`) in an OpenMetrics text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The report `wsr-backup --json` left as the termination message of a Job's pod.
async fn job_report(setup: &Setup, job: &Job) -> Result<Value> {
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let pods = Api::<Pod>::namespaced(setup.client.clone(), &setup.ns)
        .list(&ListParams::default())
        .await?;
    let pod = pods
        .items
        .into_iter()
        .find(|p| {
            p.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid)
        })
        .context("the Job's pod")?;
    let message = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.into_iter().next())
        .and_then(|c| c.state?.terminated?.message)
        .context("a termination message")?;
    Ok(serde_json::from_str(message.trim())?)
}

/// Deletes the operator Deployment on drop and waits for its pods to go (their operator
/// releases the Lease on SIGTERM).
struct Deployed;

impl Drop for Deployed {
    fn drop(&mut self) {
        let _ = cluster().kubectl([
            "delete",
            "deployment",
            "wsr-operator",
            "-n",
            OPERATOR_NS,
            "--ignore-not-found",
        ]);
        let _ = cluster().kubectl([
            "wait",
            "--for=delete",
            "pod",
            "-l",
            "app.kubernetes.io/name=wsr-operator",
            "-n",
            OPERATOR_NS,
            "--timeout=60s",
        ]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_k_installs_an_operator_pod_that_backs_up_as_its_service_account() -> Result<()> {
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let setup = setup("op-deploy").await?;
    let projects = stopped_workspace(&setup, "ws", "workspace00000000000000d1").await?;
    let port = free_port()?;
    let overlay = operator::local_overlay(cluster.dir(), port, image())?;
    let applied = cluster.kubectl(["apply".as_ref(), "-k".as_ref(), overlay.path().as_os_str()])?;
    let _deployed = Deployed;
    for kind in [
        "namespace/wsr-system",
        "customresourcedefinition.apiextensions.k8s.io/backuppolicies.wsr.dev",
        "serviceaccount/wsr-operator",
        "clusterrole.rbac.authorization.k8s.io/wsr-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/wsr-operator",
        "role.rbac.authorization.k8s.io/wsr-operator",
        "rolebinding.rbac.authorization.k8s.io/wsr-operator",
        "deployment.apps/wsr-operator",
    ] {
        assert!(
            applied.lines().any(|l| l.starts_with(kind)),
            "{kind} not applied:\n{applied}"
        );
    }

    // The pod passes the namespace's restricted admission, runs, and its probes make it Ready.
    let pods: Api<Pod> = Api::namespaced(setup.client.clone(), OPERATOR_NS);
    let selector = ListParams::default().labels("app.kubernetes.io/name=wsr-operator");
    let pod = fixtures::poll("the operator pod to be Ready", || async {
        Ok(pods.list(&selector).await?.items.into_iter().find(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        }))
    })
    .await;
    if pod.is_err() {
        eprintln!(
            "{}",
            cluster
                .kubectl(["get", "pods", "-n", OPERATOR_NS, "-o", "yaml"])
                .unwrap_or_default()
        );
        // The running container's output, from podman (containers are named k8s_<container>_<pod>_...).
        let storage = scenarios::podman::image_storage();
        let out = scenarios::podman::command(&storage)
            .args(["ps", "-a", "--format", "{{.Names}}"])
            .output()?;
        for name in String::from_utf8_lossy(&out.stdout).lines() {
            if name.starts_with("k8s_operator_wsr-operator") {
                let logs = scenarios::podman::command(&storage)
                    .args(["logs", name])
                    .output()?;
                eprintln!(
                    "--- {name}:\n{}{}",
                    String::from_utf8_lossy(&logs.stdout),
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
        }
    }
    let pod = pod?;
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    assert_eq!(
        pod.spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref()),
        Some("wsr-operator")
    );
    assert_eq!(http_get(port, "/readyz")?.0, 200);
    assert_eq!(http_get(port, "/healthz")?.0, 200);
    // The pod's process (POD_NAME is its identity) holds the Lease.
    let holder = fixtures::poll("the pod to hold the Lease", || async {
        Ok(lease_holder(&setup.client)
            .await?
            .filter(|h| *h == pod_name))
    })
    .await?;
    assert_eq!(holder, pod_name);

    setup.policy(json!({})).await?;
    setup.run_now("1").await?;
    let a = setup.recorded("ws").await?;
    assert_eq!(
        a["controller.devfile.io/last-backup-successful"], "true",
        "{a:#?}"
    );
    setup.assert_restorable("ws", &projects)?;
    // Its Events name the pod as the reporting instance: the in-cluster operator wrote them
    // with its ServiceAccount's token.
    let events = Api::<Event>::namespaced(setup.client.clone(), &setup.ns)
        .list(&ListParams::default())
        .await?;
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("BackupSucceeded")
                && e.reporting_instance.as_deref() == Some(pod_name.as_str())),
        "no BackupSucceeded Event from {pod_name}"
    );
    let (_, metrics) = http_get(port, "/metrics")?;
    assert_eq!(
        metric(
            &metrics,
            "wsr_backups_succeeded_total{namespace=\"op-deploy\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_lease_holder_creates_jobs_and_a_follower_takes_over_when_it_dies() -> Result<()> {
    let _logs = cluster().logs_on_failure();
    let setup = setup("op-leader").await?;
    let first_ws = stopped_workspace(&setup, "first", "workspace00000000000000e1").await?;
    let mut a = Operator::start_as("leader-a", install(), &["--log-format", "json"])?;
    fixtures::poll("leader-a to hold the Lease", || async {
        Ok(lease_holder(&setup.client)
            .await?
            .filter(|h| h == "leader-a"))
    })
    .await?;
    let mut b = Operator::start("leader-b")?;
    // The follower is ready once its caches are synced, although it does not reconcile.
    fixtures::poll("the follower to be ready", || async {
        Ok((b.get("/readyz").map(|r| r.0).unwrap_or(0) == 200).then_some(()))
    })
    .await?;
    assert_eq!(metric(&b.get("/metrics")?.1, "wsr_leader"), Some(0.0));
    assert_eq!(metric(&a.get("/metrics")?.1, "wsr_leader"), Some(1.0));

    setup.policy(json!({})).await?;
    setup.run_now("1").await?;
    let recorded = setup.recorded("first").await?;
    assert_eq!(
        recorded["controller.devfile.io/last-backup-successful"],
        "true"
    );
    setup.assert_restorable("first", &first_ws)?;
    let jobs = setup.jobs("first").await?;
    assert_eq!(jobs.len(), 1, "one Job for the first workspace");
    // JSON lines carry the workspace and the Job as fields of the line's span, and no
    // credentials (the copied Secret's data).
    let created = a
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "backup Job created")
        .context("a JSON line for the created Job")?;
    assert_eq!(created["span"]["workspace"], "first", "{created}");
    assert_eq!(created["span"]["namespace"], "op-leader", "{created}");
    assert_eq!(
        created["span"]["job"],
        jobs[0].metadata.name.clone().unwrap_or_default().as_str()
    );
    let config = std::fs::read_to_string(setup.registry.auth_file().context("auth")?)?;
    let auth: Value = serde_json::from_str(&config)?;
    for entry in auth["auths"].as_object().into_iter().flatten() {
        let secret = entry.1["auth"].as_str().unwrap_or_default();
        assert!(
            !secret.is_empty() && !a.log_text().contains(secret),
            "credentials logged"
        );
    }
    assert!(
        !b.log_text().contains("backup Job created"),
        "the follower created a Job"
    );

    // /metrics of the leader after that run: the series and their values.
    let report = job_report(&setup, &jobs[0]).await?;
    let text = fixtures::poll("the skip counts in /metrics", || async {
        let text = a.get("/metrics")?.1;
        Ok((metric(
            &text,
            "wsr_workspaces_skipped{policy=\"op-leader\",reason=\"upToDate\"}",
        ) == Some(1.0))
        .then_some(text))
    })
    .await?;
    // The leader records every policy's Jobs, and other tests' policies share this cluster
    // and this Lease: the unlabelled histograms are exact only when no other result was
    // recorded meanwhile.
    let results_recorded: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("wsr_backups_succeeded_total{")
                || l.starts_with("wsr_backups_failed_total{")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    if results_recorded == 1.0 {
        for (series, value) in [
            ("wsr_backup_duration_seconds_count", 1.0),
            ("wsr_backup_size_bytes_count", 1.0),
            (
                "wsr_backup_size_bytes_sum",
                report["bytes"].as_f64().unwrap_or(-1.0),
            ),
            (
                "wsr_backup_uploaded_bytes_sum",
                report["uploaded_bytes"].as_f64().unwrap_or(-1.0),
            ),
        ] {
            assert_eq!(metric(&text, series), Some(value), "{series} in\n{text}");
        }
    } else {
        let size_sum = metric(&text, "wsr_backup_size_bytes_sum").unwrap_or(-1.0);
        assert!(
            size_sum >= report["bytes"].as_f64().unwrap_or(f64::MAX),
            "{text}"
        );
        let count = metric(&text, "wsr_backup_duration_seconds_count").unwrap_or(0.0);
        assert!((1.0..=results_recorded).contains(&count), "{text}");
    }
    for (series, value) in [
        ("wsr_backups_started_total{namespace=\"op-leader\"}", 1.0),
        ("wsr_backups_succeeded_total{namespace=\"op-leader\"}", 1.0),
        ("wsr_backup_jobs_running{policy=\"op-leader\"}", 0.0),
        ("wsr_workspaces_eligible{policy=\"op-leader\"}", 0.0),
        ("wsr_leader", 1.0),
    ] {
        assert_eq!(metric(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(report["bytes"].as_f64().unwrap_or(0.0) > 0.0, "{report}");
    let finished = chrono::DateTime::parse_from_rfc3339(
        &recorded["controller.devfile.io/last-backup-finished-at"],
    )?;
    let last = metric(
        &text,
        "wsr_last_successful_backup_timestamp_seconds{policy=\"op-leader\"}",
    )
    .context("last success")?;
    assert!(
        (last - finished.timestamp_millis() as f64 / 1000.0).abs() < 0.001,
        "{last}"
    );
    assert!(!text.contains("workspace=\""), "no per-workspace label");

    // The leader dies without releasing the Lease; the follower takes over once it expires.
    a.kill();
    a.passed();
    fixtures::poll("leader-b to take the Lease over", || async {
        Ok(lease_holder(&setup.client)
            .await?
            .filter(|h| h == "leader-b"))
    })
    .await?;
    let second_ws = stopped_workspace(&setup, "second", "workspace00000000000000e2").await?;
    setup.run_now("2").await?;
    let recorded = setup.recorded("second").await?;
    assert_eq!(
        recorded["controller.devfile.io/last-backup-successful"],
        "true"
    );
    setup.assert_restorable("second", &second_ws)?;
    assert!(b.log_text().contains("backup Job created"));
    assert_eq!(setup.jobs("second").await?.len(), 1);
    assert_eq!(
        setup.jobs("first").await?.len(),
        1,
        "the new leader did not back the first workspace up again"
    );
    // A graceful stop: exit 0 and the Lease released (no holder).
    let status = b.stop().context("wsr-operator did not stop on SIGTERM")?;
    assert!(status.success(), "{status}");
    assert!(b.log_text().contains("leader Lease released"));
    assert_eq!(lease_holder(&setup.client).await?, None);
    b.passed();
    Ok(())
}

/// The restore annotations of workspace `ws` (`wsr.dev/restored-*`).
async fn restore_annotations(setup: &Setup, ws: &str) -> Result<BTreeMap<String, String>> {
    let mut a = setup.annotations(ws).await?;
    a.retain(|k, _| k.starts_with("wsr.dev/restored-"));
    Ok(a)
}

/// Waits until the operator records a restore on `ws`.
async fn restore_recorded(setup: &Setup, ws: &str) -> Result<BTreeMap<String, String>> {
    let recorded = fixtures::poll(&format!("the restore recorded on {ws}"), || async {
        let a = restore_annotations(setup, ws).await?;
        Ok((!a.is_empty()).then_some(a))
    })
    .await;
    if recorded.is_err() {
        setup.diagnose();
    }
    recorded
}

/// `wsr-restore --in-cluster` as the cluster's admin into workspace `ws` from `from`.
fn restore_job(setup: &Setup, ws: &str, from: &str) -> Result<std::process::Output> {
    let bin = scenarios::podman::test_build_binaries().join("wsr-restore");
    let out = Command::new("timeout")
        .arg("600")
        .arg(bin)
        .args(["--in-cluster", "--namespace", &setup.ns, "--workspace", ws])
        .args(["--from", from, "--image", image(), "--image-pull-policy"])
        .args(["IfNotPresent", "--ca-secret", "registry-ca"])
        .env("KUBECONFIG", cluster().kubeconfig())
        .output()
        .context("running wsr-restore")?;
    eprintln!(
        "wsr-restore --in-cluster into {ws}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// `wsr-restore list --in-cluster --json` of the test namespace, as the cluster's admin.
fn list_in_cluster(setup: &Setup) -> Result<Value> {
    let bin = scenarios::podman::test_build_binaries().join("wsr-restore");
    let out = Command::new("timeout")
        .arg("120")
        .arg(bin)
        .args(["list", "--in-cluster", "--namespace", &setup.ns, "--json"])
        .env("KUBECONFIG", cluster().kubeconfig())
        .output()
        .context("running wsr-restore list")?;
    anyhow::ensure!(
        out.status.success(),
        "wsr-restore list --in-cluster: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    Ok(serde_json::from_str(&last)?)
}

/// DWO's workspace pod for `ws` whose `workspace-restore` init container (the recovery image)
/// restores `backup_image`; returns the init container's exit code once it has finished.
async fn restore_on_start(setup: &Setup, ws: &Workspace, backup_image: &str) -> Result<i64> {
    let pod = cluster_demo::restore_pod(
        &setup.ns,
        &ws.name,
        &ws.id,
        image(),
        backup_image,
        cluster_demo::CA_ORAS_EXTRA_ARGS,
    )?;
    cluster().kubectl_stdin(["create", "-f", "-"], &pod)?;
    let start =
        cluster_demo::workspace_start(&setup.client, &setup.ns, &format!("{}-restored", ws.id))
            .await?;
    eprintln!("{}: init container {start:?}", ws.name);
    Ok(start.init_exit_code)
}

/// Both restore paths, each from a tag: the operator records on the workspace the digest the
/// restore resolved, with the restoring container's finish time and what restored it, and a
/// `Restored` Event. Failed restores (the Job's `/projects` not empty, the init container's
/// backup missing) and an init container that left a non-empty `/projects` alone are not
/// recorded: they all finished before the successful ones, and the operator records from one
/// ordered pod watch, so once the successes are recorded the failures would have been too.
/// No BackupPolicy exists: restores are recorded regardless.
#[tokio::test(flavor = "multi_thread")]
async fn a_successful_restore_is_recorded_with_its_digest_and_a_failed_one_is_not() -> Result<()> {
    let _logs = cluster().logs_on_failure();
    let setup = setup("op-restored").await?;
    tokio::task::block_in_place(fixtures::build_workspace_image)?;
    let config = std::fs::read_to_string(setup.registry.auth_file().expect("auth"))?;
    create_secret(
        &setup.client,
        &setup.ns,
        "devworkspace-backup-registry-auth",
        "kubernetes.io/dockerconfigjson",
        ".dockerconfigjson",
        &config,
    )
    .await?;
    // Two backups of different trees (so two digests), each to its `latest`.
    let mut digests = Vec::new();
    for name in ["one", "two"] {
        let source = tempfile::tempdir()?;
        cluster_demo::write_workspace(source.path(), name, 1, 0)?;
        let options = common::backup_options(
            source.path(),
            &setup.reference(name),
            wsr_backup::Format::Native,
            common::connect_for(&setup.registry),
        );
        let report = std::thread::spawn(move || common::backup(&options))
            .join()
            .expect("backup thread")?;
        digests.push(report.digest);
    }
    let repository = |name: &str| format!("{}/backups/{}/{name}", setup.registry.host(), setup.ns);
    let mut workspaces = BTreeMap::new();
    for (n, name) in ["job-failed", "init-failed", "init-kept", "job", "init"]
        .into_iter()
        .enumerate()
    {
        let ws = Workspace::new(&setup.ns, name, &format!("workspace0000000000restd{n:02}"));
        let created = ws.create(&setup.client, Phase::Stopped).await?;
        workspaces.insert(name, (ws, created.projects_dir));
    }
    let operator = Operator::start("restored")?;

    // The failures first.
    let (_, projects) = &workspaces["job-failed"];
    std::fs::write(projects.join("work.txt"), "not empty")?;
    let out =
        tokio::task::block_in_place(|| restore_job(&setup, "job-failed", &setup.reference("one")))?;
    assert_eq!(
        out.status.code(),
        Some(3),
        "the Job refuses a non-empty /projects"
    );
    let missing = format!("{}:latest", repository("missing"));
    let code = restore_on_start(&setup, &workspaces["init-failed"].0, &missing).await?;
    assert_ne!(
        code, 0,
        "the init container restores a backup that does not exist"
    );
    let (ws, projects) = &workspaces["init-kept"];
    std::fs::write(projects.join("work.txt"), "not empty")?;
    let code = restore_on_start(&setup, ws, &setup.reference("two")).await?;
    assert_eq!(code, 0, "a non-empty /projects is left alone");
    assert_eq!(std::fs::read_dir(projects)?.count(), 1);

    // A restore Job from `one:latest`.
    let out = tokio::task::block_in_place(|| restore_job(&setup, "job", &setup.reference("one")))?;
    assert!(out.status.success());
    let a = restore_recorded(&setup, "job").await?;
    assert_eq!(
        a["wsr.dev/restored-from"],
        format!("{}@{}", repository("one"), digests[0]),
        "{a:#?}"
    );
    let jobs = Api::<Job>::namespaced(setup.client.clone(), &setup.ns)
        .list(
            &ListParams::default()
                .labels("wsr.dev/restore-job=true,controller.devfile.io/devworkspace_name=job"),
        )
        .await?;
    let job_name = jobs.items[0].metadata.name.clone().unwrap_or_default();
    assert_eq!(a["wsr.dev/restored-by"], format!("job/{job_name}"));
    chrono::DateTime::parse_from_rfc3339(&a["wsr.dev/restored-at"])?;

    // DWO's init container from `two:latest`.
    let (ws, projects) = &workspaces["init"];
    let code = restore_on_start(&setup, ws, &setup.reference("two")).await?;
    assert_eq!(code, 0);
    assert!(projects.join("two.txt").is_file(), "restored");
    let a = restore_recorded(&setup, "init").await?;
    let pod_name = format!("{}-restored", ws.id);
    assert_eq!(
        a["wsr.dev/restored-from"],
        format!("{}@{}", repository("two"), digests[1]),
        "{a:#?}"
    );
    assert_eq!(a["wsr.dev/restored-by"], format!("pod/{pod_name}"));
    let pod = serde_json::to_value(
        Api::<Pod>::namespaced(setup.client.clone(), &setup.ns)
            .get(&pod_name)
            .await?,
    )?;
    let finished = pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["finishedAt"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(&a["wsr.dev/restored-at"])?,
        chrono::DateTime::parse_from_rfc3339(finished)?,
        "the init container's finish time"
    );

    for ws in ["job", "init"] {
        let reasons = fixtures::poll(&format!("the Restored Event on {ws}"), || async {
            let r = setup.event_reasons(ws).await?;
            Ok(r.iter().any(|r| r == "Restored").then_some(r))
        })
        .await?;
        assert_eq!(reasons.iter().filter(|r| *r == "Restored").count(), 1);
        let all = setup.annotations(ws).await?;
        assert!(
            !all.keys().any(|k| k.contains("last-backup")),
            "no backup annotation written: {all:#?}"
        );
    }
    // `list --in-cluster` shows what the operator recorded, and nothing for the failures.
    let listed = list_in_cluster(&setup)?;
    for ws in ["job", "init", "job-failed", "init-failed", "init-kept"] {
        let row = listed["workspaces"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["workspace"] == ws))
            .with_context(|| format!("{ws} listed: {listed:#}"))?;
        let recorded = restore_annotations(&setup, ws).await?;
        assert_eq!(
            row["restoredFrom"].as_str(),
            recorded.get("wsr.dev/restored-from").map(String::as_str),
            "{ws}: {row:#}"
        );
        assert_eq!(
            row["restoredAt"].as_str(),
            recorded.get("wsr.dev/restored-at").map(String::as_str),
            "{ws}: {row:#}"
        );
    }
    for ws in ["job-failed", "init-failed", "init-kept"] {
        assert_eq!(
            restore_annotations(&setup, ws).await?,
            BTreeMap::new(),
            "{ws}"
        );
        assert!(
            !setup
                .event_reasons(ws)
                .await?
                .contains(&"Restored".to_owned())
        );
    }
    for (ws, _) in workspaces.values() {
        let _ = cluster().kubectl([
            "delete",
            "pod",
            &format!("{}-restored", ws.id),
            "-n",
            &setup.ns,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
    operator.passed();
    Ok(())
}

/// Every verb of `operator/deploy/rbac.yaml` is used: for each one, the operator runs as a
/// ServiceAccount bound to a copy of the ClusterRole and Role without that verb, on a scenario
/// that exercises everything (a stopped workspace, a policy with an `authSecret`, run-now, a
/// registry that refuses connections so that the Job fails and is retried: two BackupStarted
/// Events make a series, hence the patch; a drill run now whose Job fails and is deleted by
/// the history limit), until its log shows the API server refusing that
/// very verb on that resource (at most two minutes each).
#[tokio::test(flavor = "multi_thread")]
async fn every_verb_in_the_rbac_is_needed() -> Result<()> {
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let setup = setup("op-rbac").await?;
    // kubectl prints each object of the file as its own JSON document.
    let printed = cluster.kubectl_stdin(
        ["create", "--dry-run=client", "-o", "json", "-f", "-"],
        &repo_file("operator/deploy/rbac.yaml"),
    )?;
    let objects = serde_json::Deserializer::from_str(&printed)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()?;
    let role_of = |kind: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind)
            .cloned()
            .with_context(|| format!("no {kind} in rbac.yaml"))
    };
    let (cluster_role, role) = (role_of("ClusterRole")?, role_of("Role")?);
    let reduced_sa = "wsr-operator-reduced";
    cluster.kubectl(["create", "serviceaccount", reduced_sa, "-n", OPERATOR_NS])?;
    let bindings = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": reduced_sa},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": reduced_sa},
         "subjects": [{"kind": "ServiceAccount", "name": reduced_sa, "namespace": OPERATOR_NS}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": reduced_sa, "namespace": OPERATOR_NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": reduced_sa},
         "subjects": [{"kind": "ServiceAccount", "name": reduced_sa, "namespace": OPERATOR_NS}]}]});
    cluster.kubectl_stdin(["apply", "-f", "-"], &bindings.to_string())?;
    let kubeconfig = cluster.service_account_kubeconfig(OPERATOR_NS, reduced_sa)?;

    // (which role, rule index, verb), in file order.
    let mut removals = Vec::new();
    for (which, r) in [("ClusterRole", &cluster_role), ("Role", &role)] {
        for (i, rule) in r["rules"].as_array().into_iter().flatten().enumerate() {
            for verb in rule["verbs"].as_array().into_iter().flatten() {
                removals.push((which, i, verb.as_str().unwrap_or_default().to_owned()));
            }
        }
    }
    let mut unused = Vec::new();
    for (n, (which, rule, verb)) in removals.iter().enumerate() {
        let (mut cr, mut r) = (cluster_role.clone(), role.clone());
        let target = if *which == "ClusterRole" {
            &mut cr
        } else {
            &mut r
        };
        let resources: Vec<String> = target["rules"][*rule]["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        let verbs = target["rules"][*rule]["verbs"]
            .as_array_mut()
            .context("verbs")?;
        verbs.retain(|v| v != verb.as_str());
        for role in [&mut cr, &mut r] {
            role["metadata"]["name"] = json!(reduced_sa);
            role["rules"]
                .as_array_mut()
                .context("rules")?
                .retain(|rule| rule["verbs"].as_array().is_some_and(|v| !v.is_empty()));
        }
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [cr, r]});
        cluster.kubectl_stdin(["apply", "-f", "-"], &list.to_string())?;

        // A fresh Lease, namespace, workspace and policy for each removal.
        let _ = cluster.kubectl([
            "delete",
            "lease",
            "wsr-operator",
            "-n",
            OPERATOR_NS,
            "--ignore-not-found",
        ]);
        let ns = format!("op-rbac-{n}");
        cluster.create_namespace(&ns, &[RESTRICTED, (TEST_LABEL, &ns)])?;
        Workspace::new(&ns, "ws", &format!("workspace0000000000rbac{n:02}"))
            .create(&setup.client, Phase::Stopped)
            .await?;
        let policy: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "wsr.dev/v1alpha1", "kind": "BackupPolicy",
            "metadata": {"name": ns, "annotations": {"wsr.dev/run-now": "1", "wsr.dev/drill-now": "1"}},
            "spec": {"schedule": "0 0 1 1 *",
                     "registry": {"path": "127.0.0.1:1/backups", "plainHTTP": true,
                                  "authSecret": "push-op-rbac"},
                     "namespaceSelector": {"matchLabels": {TEST_LABEL: ns}},
                     "failureBackoff": {"initialSeconds": 1, "maxSeconds": 2},
                     "jobTemplate": {"image": image(), "imagePullPolicy": "IfNotPresent"},
                     // A drill that fails at once (its deadline) and is deleted once recorded.
                     "drill": {"schedule": "0 0 1 1 *", "activeDeadlineSeconds": 1,
                               "successfulJobsHistoryLimit": 0, "failedJobsHistoryLimit": 0}}}))?;
        setup
            .policies()
            .create(&PostParams::default(), &policy)
            .await?;

        let what = format!("{which} {verb} {}", resources.join(","));
        let operator = Operator::start_as(&format!("rbac-{n}"), &kubeconfig, &[])?;
        let refused = resources
            .iter()
            .map(|res| format!("cannot {verb} resource \"{res}\""))
            .collect::<Vec<_>>();
        let seen = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            fixtures::poll(&what, || async {
                let log = operator.log_text();
                Ok(refused.iter().any(|r| log.contains(r)).then_some(()))
            }),
        )
        .await;
        match seen {
            Ok(Ok(())) => {
                eprintln!("without {what}: refused, as expected");
                // A cache that cannot list never syncs: the replica is alive but not ready.
                if verb == "list" && resources.iter().all(|r| r != "backuppolicies") {
                    assert_eq!(operator.get("/healthz")?.0, 200);
                    assert_eq!(operator.get("/readyz")?.0, 503, "ready without {what}");
                }
                operator.passed();
            }
            _ => {
                eprintln!("without {what}: nothing refused within 2 minutes");
                unused.push(what);
                drop(operator);
            }
        }
        setup.policies().delete(&ns, &Default::default()).await?;
        let _ = cluster.kubectl(["delete", "namespace", &ns, "--wait=false"]);
    }
    assert!(
        unused.is_empty(),
        "permissions the operator did not need: {unused:#?}"
    );
    Ok(())
}

/// Three backups below a policy's registry path, made here as any client could: `good`,
/// `old` (its manifest says it was taken three days ago) and `broken` (a byte of its first data
/// layer altered in the registry's storage).
async fn drill_backups(setup: &Setup, work: &Path) -> Result<()> {
    use wsr_format::manifest::Manifest;
    use wsr_format::media::{self, annotation};
    use wsr_transport::{Access, Store};
    let connect = common::connect_for(&setup.registry);
    for ws in ["good", "old", "broken"] {
        let src = work.join(ws);
        std::fs::create_dir_all(src.join("src"))?;
        std::fs::write(src.join("README.md"), format!("# {ws}\n"))?;
        let data: Vec<u8> = (0..64 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8 ^ ws.len() as u8)
            .collect();
        std::fs::write(src.join("src/data.bin"), data)?;
        let mut options = common::backup_options(
            &src,
            &setup.reference(ws),
            wsr_backup::Format::Native,
            connect.clone(),
        );
        options.namespace = Some(setup.ns.clone());
        options.workspace = Some(ws.into());
        std::thread::spawn(move || common::backup(&options))
            .join()
            .expect("backup thread")?;
        let repository = setup
            .reference(ws)
            .parse::<wsr_format::reference::Reference>()?
            .repository;
        let store = Store::open(&repository, &connect, Access::Push).await?;
        let (_, bytes) = store
            .fetch_manifest(&wsr_format::reference::Target::Tag("latest".into()))
            .await?;
        let mut manifest = Manifest::from_bytes(&bytes)?;
        match ws {
            "old" => {
                let taken = chrono::Utc::now() - chrono::Duration::days(3);
                manifest.annotations.get_or_insert_default().insert(
                    annotation::CREATED.into(),
                    taken.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                );
                let bytes = manifest.to_bytes();
                store.push_manifest(&bytes, media::MANIFEST_V1).await?;
                store
                    .tag_manifest(&bytes, media::MANIFEST_V1, "latest")
                    .await?;
            }
            "broken" => {
                let hex = manifest.layers[0].digest.hex().to_owned();
                let file = setup
                    .registry
                    .data_dir()
                    .join("docker/registry/v2/blobs/sha256")
                    .join(&hex[..2])
                    .join(&hex)
                    .join("data");
                let mut bytes = std::fs::read(&file)?;
                let at = bytes.len() / 2;
                bytes[at] ^= 0x5a;
                std::fs::write(&file, bytes)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// A policy with a drill schedule (every minute, `maxAge: 1d`): the operator runs a drill Job
/// in the operator namespace (which enforces `restricted`: the pod is admitted by the real
/// PodSecurity admission) against a registry holding a good, a stale and a corrupt backup,
/// reads the drill's summary from the pod's termination message, and reports the failure
/// with its reasons in a `DrillFailed` Event on the policy, the `wsr_drill_*` metrics and
/// `status.drill.lastResult`.
#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_drill_reports_the_stale_and_corrupt_backups_in_an_event_metrics_and_the_status()
-> Result<()> {
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let setup = setup("op-drill").await?;
    let work = tempfile::tempdir()?;
    drill_backups(&setup, work.path()).await?;
    // The drill Job runs in the operator namespace: the CA Secret the policy names is read there.
    let ca = std::fs::read_to_string(setup.registry.ca_file().expect("tls"))?;
    let _ = cluster.kubectl([
        "delete",
        "secret",
        "registry-ca",
        "-n",
        OPERATOR_NS,
        "--ignore-not-found",
    ]);
    create_secret(
        &setup.client,
        OPERATOR_NS,
        "registry-ca",
        "Opaque",
        "ca.crt",
        &ca,
    )
    .await?;
    let ns = cluster.kubectl(["get", "namespace", OPERATOR_NS, "-o", "json"])?;
    let ns: Value = serde_json::from_str(&ns)?;
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted",
        "the drill's namespace enforces the restricted profile"
    );

    let operator = Operator::start("drill")?;
    setup
        .policy(json!({"drill": {"schedule": "* * * * *", "maxAge": "1d",
                                 "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 1}}))
        .await?;
    let result = fixtures::poll_for(
        "the drill's result in the policy status",
        std::time::Duration::from_secs(240),
        || async {
            let s = setup.policy_status().await?;
            let r = s["drill"]["lastResult"].clone();
            Ok((!r.is_null()).then_some(r))
        },
    )
    .await;
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "{}",
                cluster
                    .kubectl(["get", "jobs,pods", "-n", OPERATOR_NS, "-o", "yaml"])
                    .unwrap_or_default()
            );
            setup
                .policies()
                .delete(&setup.ns, &Default::default())
                .await?;
            return Err(e);
        }
    };
    // No more drills (the Job stays for the checks below; deleting the policy deletes it).
    setup
        .policies()
        .patch(
            &setup.ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await?;
    assert_eq!(result["passed"], false, "{result:#}");
    let backups = &result["backups"];
    assert_eq!(
        (
            &backups["total"],
            &backups["ok"],
            &backups["stale"],
            &backups["corrupt"]
        ),
        (&json!(3), &json!(1), &json!(1), &json!(1)),
        "{result:#}"
    );
    let message = result["message"].as_str().unwrap_or_default().to_owned();
    let (old, broken) = (
        format!("{}/old:latest stale: ", setup.ns),
        format!("{}/broken:latest corrupt: ", setup.ns),
    );
    assert!(
        message.starts_with("FAILED: 3 backups, 1 ok, 2 failed (1 stale, 1 corrupt)"),
        "{message}"
    );
    assert!(
        message.contains(&old) && message.contains("older than the maximum age 1d"),
        "{message}"
    );
    assert!(message.contains(&broken), "{message}");
    assert!(!message.contains("/good:"), "{message}");
    let age = result["oldestBackupAgeSeconds"]
        .as_u64()
        .unwrap_or_default();
    assert!(age >= 3 * 86_400, "{result:#}");

    // The Job: in the operator namespace, its pod admitted and failed by the drill (exit 6).
    let job_name = result["job"].as_str().unwrap_or_default();
    let job = Api::<Job>::namespaced(setup.client.clone(), OPERATOR_NS)
        .get(job_name)
        .await?;
    assert_eq!(
        job.metadata.labels.unwrap_or_default()["wsr.dev/policy"],
        setup.ns
    );
    let pods = Api::<Pod>::namespaced(setup.client.clone(), OPERATOR_NS)
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job_name}")))
        .await?;
    let terminated = pods.items[0]
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c[0].state.as_ref()?.terminated.clone())
        .context("the drill container's terminated state")?;
    assert_eq!(terminated.exit_code, 6, "{terminated:?}");

    // The Event on the policy (cluster-scoped: in `default`), with the counts and reasons.
    let events = Api::<Event>::namespaced(setup.client.clone(), "default")
        .list(&ListParams::default())
        .await?;
    let failed = events
        .items
        .iter()
        .find(|e| {
            e.reason.as_deref() == Some("DrillFailed")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(setup.ns.as_str())
        })
        .context("no DrillFailed Event on the policy")?;
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    let note = failed.note.clone().unwrap_or_default();
    assert!(
        note.contains("1 stale, 1 corrupt") && note.contains(&old) && note.contains(&broken),
        "{note}"
    );
    let regarding = failed.regarding.clone().unwrap_or_default();
    assert_eq!(regarding.kind.as_deref(), Some("BackupPolicy"));

    // The metrics.
    let (code, text) = operator.get("/metrics")?;
    assert_eq!(code, 200);
    let policy = &setup.ns;
    for (series, want) in [
        (format!("wsr_drill_passed{{policy=\"{policy}\"}}"), 0.0),
        (
            format!("wsr_drill_backups{{policy=\"{policy}\",result=\"ok\"}}"),
            1.0,
        ),
        (
            format!("wsr_drill_backups{{policy=\"{policy}\",result=\"stale\"}}"),
            1.0,
        ),
        (
            format!("wsr_drill_backups{{policy=\"{policy}\",result=\"corrupt\"}}"),
            1.0,
        ),
        (
            format!("wsr_drill_backups{{policy=\"{policy}\",result=\"missing_blob\"}}"),
            0.0,
        ),
        (
            format!("wsr_drills_total{{policy=\"{policy}\",result=\"failed\"}}"),
            1.0,
        ),
    ] {
        assert_eq!(metric(&text, &series), Some(want), "{series} in\n{text}");
    }
    let oldest = metric(
        &text,
        &format!("wsr_drill_oldest_backup_age_seconds{{policy=\"{policy}\"}}"),
    );
    assert_eq!(oldest, Some(age as f64));
    let finished =
        chrono::DateTime::parse_from_rfc3339(result["finishTime"].as_str().unwrap_or_default())?;
    assert_eq!(
        metric(
            &text,
            &format!("wsr_drill_last_run_timestamp_seconds{{policy=\"{policy}\"}}")
        ),
        Some(finished.timestamp() as f64)
    );
    setup
        .policies()
        .delete(&setup.ns, &Default::default())
        .await?;
    operator.passed();
    Ok(())
}
