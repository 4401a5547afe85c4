//! The real control plane that the operator and cluster scenarios run on: one cluster per test
//! binary (`Cluster::shared`, no node agent: these tests need no pod to run), one namespace per
//! test. Shows that the API server enforces RBAC for ServiceAccount tokens from the TokenRequest
//! API, that PodSecurity admission rejects pods violating the restricted profile, and that the
//! Job controller and the garbage collector act.

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams};
use scenarios::cluster::{Cluster, StartOptions};
use std::path::Path;
use std::time::{Duration, Instant};

fn cluster() -> &'static Cluster {
    Cluster::shared(
        &StartOptions::default(),
        Path::new(env!("CARGO_BIN_EXE_scenarios")),
    )
}

/// Polls `probe` every 250 ms until it returns `Some`; panics naming `what` after two minutes
/// (a bound on a hang, not a speed requirement).
fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A pod spec that satisfies the restricted Pod Security Standard.
fn restricted_pod_spec() -> serde_json::Value {
    serde_json::json!({
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 1000,
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "containers": [{
            "name": "main",
            "image": "localhost/wsr-test-never-pulled:0",
            "command": ["/bin/true"],
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": { "drop": ["ALL"] },
            },
        }],
    })
}

#[test]
fn the_api_is_ready_and_a_service_account_gets_only_what_rbac_grants() {
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    assert_eq!(
        cluster.kubectl(["get", "--raw", "/readyz"]).unwrap().trim(),
        "ok"
    );
    cluster.create_namespace("rbac", &[]).unwrap();
    cluster
        .kubectl(["create", "serviceaccount", "reader", "-n", "rbac"])
        .unwrap();
    cluster
        .kubectl([
            "create",
            "role",
            "pods",
            "-n",
            "rbac",
            "--verb=list",
            "--resource=pods",
        ])
        .unwrap();
    cluster
        .kubectl([
            "create",
            "rolebinding",
            "reader-pods",
            "-n",
            "rbac",
            "--role=pods",
            "--serviceaccount=rbac:reader",
        ])
        .unwrap();
    let sa = cluster
        .service_account_kubeconfig("rbac", "reader")
        .unwrap();

    // The token authenticates, and the role it is bound to applies...
    let whoami = cluster
        .kubectl_as(
            &sa,
            [
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
            None,
        )
        .unwrap();
    assert_eq!(whoami, "system:serviceaccount:rbac:reader");
    cluster
        .kubectl_as(&sa, ["get", "pods", "-n", "rbac"], None)
        .unwrap();
    // ...and nothing else: no secrets, cluster-wide or in its own namespace.
    let denied = cluster
        .kubectl_as(&sa, ["get", "secrets", "--all-namespaces"], None)
        .unwrap_err()
        .to_string();
    assert!(
        denied.contains("Forbidden")
            && denied.contains("system:serviceaccount:rbac:reader")
            && denied.contains("cannot list resource \"secrets\""),
        "{denied}"
    );

    // The same through kube-rs: the admin lists namespaces, the ServiceAccount gets a 403.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin = cluster.client().await.unwrap();
        let names: Vec<String> = Api::<Namespace>::all(admin)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        assert!(names.iter().any(|n| n == "rbac"), "{names:?}");
        let client = scenarios::cluster::client_for(&sa).await.unwrap();
        let err = Api::<Secret>::namespaced(client, "rbac")
            .list(&ListParams::default())
            .await
            .unwrap_err();
        match err {
            kube::Error::Api(status) => assert_eq!(status.code, 403, "{status:?}"),
            other => panic!("expected a 403, got {other}"),
        }
    });
}

#[test]
fn pod_security_admission_rejects_pods_that_violate_the_restricted_profile() {
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let ns = "restricted";
    cluster
        .create_namespace(ns, &[("pod-security.kubernetes.io/enforce", "restricted")])
        .unwrap();

    // A compliant pod passes admission (server-side dry run: nothing is stored).
    let good = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "compliant", "namespace": ns },
        "spec": restricted_pod_spec(),
    });
    cluster
        .kubectl_stdin(["create", "--dry-run=server", "-f", "-"], &good.to_string())
        .unwrap();

    // A privileged container running as root does not.
    let mut spec = restricted_pod_spec();
    spec["securityContext"] = serde_json::json!({});
    spec["containers"][0]["securityContext"] = serde_json::json!({ "privileged": true });
    let bad = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "violating", "namespace": ns },
        "spec": spec,
    });
    let rejected = cluster
        .kubectl_stdin(["create", "-f", "-"], &bad.to_string())
        .unwrap_err()
        .to_string();
    assert!(
        rejected.contains("violates PodSecurity \"restricted:latest\"")
            && rejected.contains("privileged"),
        "{rejected}"
    );

    // A Job with that pod template: the Job controller's pod creation is rejected the same way.
    let job = serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": { "name": "violating", "namespace": ns },
        "spec": { "backoffLimit": 0, "template": { "spec": spec } },
    });
    cluster
        .kubectl_stdin(["create", "-f", "-"], &job.to_string())
        .unwrap();
    let event = eventually("the Job's FailedCreate event", || {
        let out = cluster
            .kubectl([
                "get",
                "events",
                "-n",
                ns,
                "--field-selector=involvedObject.kind=Job,involvedObject.name=violating,reason=FailedCreate",
                "-o=jsonpath={.items[*].message}",
            ])
            .ok()?;
        (!out.trim().is_empty()).then_some(out)
    });
    assert!(event.contains("violates PodSecurity"), "{event}");
    let pods = cluster
        .kubectl(["get", "pods", "-n", ns, "-o=name"])
        .unwrap();
    assert_eq!(pods.trim(), "", "no pod may exist in {ns}");
}

#[test]
fn the_job_controller_creates_pods_and_the_garbage_collector_removes_them_with_the_job() {
    let cluster = cluster();
    let _logs = cluster.logs_on_failure();
    let ns = "jobs";
    cluster
        .create_namespace(ns, &[("pod-security.kubernetes.io/enforce", "restricted")])
        .unwrap();
    let job = serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": { "name": "work", "namespace": ns },
        "spec": { "backoffLimit": 0, "template": { "spec": restricted_pod_spec() } },
    });
    cluster
        .kubectl_stdin(["create", "-f", "-"], &job.to_string())
        .unwrap();
    let job_uid = cluster
        .kubectl([
            "get",
            "job",
            "work",
            "-n",
            ns,
            "-o=jsonpath={.metadata.uid}",
        ])
        .unwrap();

    let pod = eventually("the Job's pod", || {
        let name = cluster
            .kubectl([
                "get",
                "pods",
                "-n",
                ns,
                "-l",
                "job-name=work",
                "-o=jsonpath={.items[0].metadata.name}",
            ])
            .ok()?;
        (!name.trim().is_empty()).then(|| name.trim().to_owned())
    });
    let owner = cluster
        .kubectl([
            "get",
            "pod",
            &pod,
            "-n",
            ns,
            "-o=jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].uid}",
        ])
        .unwrap();
    assert_eq!(owner, format!("Job/{job_uid}"));
    let active = eventually("the Job's status.active", || {
        let n = cluster
            .kubectl([
                "get",
                "job",
                "work",
                "-n",
                ns,
                "-o=jsonpath={.status.active}",
            ])
            .ok()?;
        (!n.trim().is_empty()).then_some(n)
    });
    assert_eq!(active.trim(), "1");

    // Deleting the Job in the background leaves the pod to the garbage collector.
    cluster
        .kubectl([
            "delete",
            "job",
            "work",
            "-n",
            ns,
            "--cascade=background",
            "--wait=false",
        ])
        .unwrap();
    eventually("the garbage collector to delete the pod", || {
        let left = cluster.kubectl(["get", "pods", "-n", ns, "-o=name"]).ok()?;
        left.trim().is_empty().then_some(())
    });
}

#[test]
fn cluster_up_leaves_a_cluster_running_and_cluster_down_stops_every_process_idempotently() {
    let exe = env!("CARGO_BIN_EXE_scenarios");
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(exe)
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "scenarios {args:?} failed:\n{stderr}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stdout = run(&["cluster", "up", "--no-node"]);
    let kubeconfig = stdout.lines().last().unwrap().to_owned();
    assert_eq!(
        Path::new(&kubeconfig),
        dir.path().canonicalize().unwrap().join("kubeconfig")
    );

    // The command has exited; the cluster it started still answers.
    let kubectl = scenarios::cluster::bin_dir().unwrap().join("kubectl");
    let ns = std::process::Command::new(&kubectl)
        .args([
            "--kubeconfig",
            &kubeconfig,
            "get",
            "namespace",
            "kube-system",
            "-o=name",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ns.stdout).trim(),
        "namespace/kube-system"
    );

    let pids: Vec<String> = std::fs::read_dir(dir.path().join("pids"))
        .unwrap()
        .map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .trim()
                .to_owned()
        })
        .collect();
    assert_eq!(
        pids.len(),
        4,
        "etcd, API server, controller manager, scheduler: {pids:?}"
    );
    run(&["cluster", "down"]);
    for pid in &pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .map(|(_, s)| s.trim_start().chars().next());
        assert!(
            stat.is_empty() || state == Some(Some('Z')),
            "process {pid} still runs: {stat}"
        );
    }
    run(&["cluster", "down"]);
}
