//! The node agent: the ONE stand-in in wsr's test cluster, in place of the kubelet. Everything
//! else (API server, etcd, scheduler, controller manager with the Job, PersistentVolume and
//! garbage-collection controllers, PodSecurity admission) is the real Kubernetes code.
//!
//! It registers Node `wsr-node` (Ready, with capacity, heartbeat through a Lease), provisions a
//! hostPath PersistentVolume under its directory for every pending claim (the real PV
//! controller binds it), and runs every pod bound to the node with podman on the image storage
//! `images/build.sh` fills (`--pull never`: images are local): init containers in order, then
//! the containers, honouring command/args, env (values, Secret/ConfigMap/field refs, envFrom),
//! volume mounts with subPath and readOnly, persistentVolumeClaim, secret, configMap,
//! downwardAPI, projected (with ServiceAccount tokens) and emptyDir volumes, the pod and
//! container securityContext, restartPolicy and activeDeadlineSeconds. It writes pod status
//! as a kubelet does (phase, conditions, container states, exit codes, termination messages),
//! so the real Job controller completes or fails Jobs from it. A pod it cannot honour fails
//! with reason `NodeAgentUnsupported` naming the fields; what it honours only in part is listed
//! in a `wsr.io/NodeAgentNotes` pod condition. `docs/CLUSTER.md` ("The node agent") lists what
//! it does and does not emulate.
//!
//! Layout: `spec` (pod spec -> podman arguments, pure), `status` (states -> phase and status
//! patch, pure), `probe` (httpGet liveness and readiness probes), `volumes` (host directories), `runtime` (podman calls), `pod` (one pod's
//! life), `node` (Node, Lease, volume provisioner).

mod node;
mod pod;
pub mod probe;
mod runtime;
pub mod spec;
pub mod status;
mod volumes;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::watch;

pub use node::{NODE_NAME, PROVISIONED_LABEL};

use crate::podman;

/// `scenarios node-agent --kubeconfig FILE --dir DIR`: runs until SIGTERM or SIGINT, then
/// removes every container it started.
pub fn main(kubeconfig: &Path, dir: &Path) -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(kubeconfig, dir))
}

async fn connect(kubeconfig: &Path) -> Result<(Client, Vec<(String, String)>)> {
    let file = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("cannot read {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await?;
    let host = config.cluster_url.host().unwrap_or("127.0.0.1").to_owned();
    let port = config.cluster_url.port_u16().unwrap_or(443).to_string();
    let base_env = vec![
        ("KUBERNETES_SERVICE_HOST".to_owned(), host.clone()),
        ("KUBERNETES_SERVICE_PORT".to_owned(), port.clone()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".to_owned(), port.clone()),
        ("KUBERNETES_PORT".to_owned(), format!("tcp://{host}:{port}")),
    ];
    Ok((Client::try_from(config)?, base_env))
}

pub async fn run(kubeconfig: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let (client, base_env) = connect(kubeconfig).await?;
    let agent = Arc::new(pod::Agent {
        client: client.clone(),
        runtime: runtime::Runtime::new(podman::image_storage()),
        ulimits: spec::Ulimits {
            nofile: podman::rlimit(libc::RLIMIT_NOFILE),
            nproc: podman::rlimit(libc::RLIMIT_NPROC),
        },
        base_env,
        dir: dir.clone(),
    });
    remove_containers(&agent).await;
    let since = runtime::now();
    node::register(&client, &since)
        .await
        .context("registering the node")?;
    tracing::info!("node {NODE_NAME} registered");
    tokio::spawn(node::heartbeat(client.clone(), since));
    tokio::spawn(node::provision(client.clone(), dir.clone()));
    let mut pods = tokio::spawn(run_pods(agent.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = &mut pods => {}
    }
    tracing::info!("stopping: removing containers");
    pods.abort();
    remove_containers(&agent).await;
    Ok(())
}

/// Removes every container labelled with this agent's directory (left by an earlier run, or
/// at shutdown).
async fn remove_containers(agent: &pod::Agent) {
    let filter = format!("label={}={}", spec::OWNER_LABEL, agent.dir.display());
    if let Ok(ids) = agent
        .runtime
        .run(&[
            "ps".into(),
            "-a".into(),
            "-q".into(),
            "--filter".into(),
            filter,
        ])
        .await
    {
        for id in ids.split_whitespace() {
            let _ = agent
                .runtime
                .run(&["rm".into(), "-f".into(), "-t".into(), "0".into(), id.into()])
                .await;
        }
    }
}

/// Watches the pods bound to this node and keeps one worker per pod UID.
async fn run_pods(agent: Arc<pod::Agent>) {
    let api: Api<Pod> = Api::all(agent.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={NODE_NAME}"));
    let mut events = watcher(api, config).boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut seen_in_relist: Vec<String> = Vec::new();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("pod watch: {e}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        match event {
            watcher::Event::Init => seen_in_relist.clear(),
            watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                seen_in_relist.push(uid.clone());
                workers.retain(|_, tx| !tx.is_closed());
                match workers.get(&uid) {
                    Some(tx) => {
                        let _ = tx.send(Some(p));
                    }
                    None => {
                        let (tx, rx) = watch::channel(Some(p));
                        tokio::spawn(pod::work(agent.clone(), rx));
                        workers.insert(uid, tx);
                    }
                }
            }
            watcher::Event::Delete(p) => {
                if let Some(tx) = workers.remove(p.metadata.uid.as_deref().unwrap_or_default()) {
                    let _ = tx.send(None);
                }
            }
            watcher::Event::InitDone => {
                // Pods that vanished while the watch was down.
                workers.retain(|uid, tx| {
                    let keep = seen_in_relist.contains(uid);
                    if !keep {
                        let _ = tx.send(None);
                    }
                    keep
                });
            }
        }
    }
}

/// The directory the agent keeps pods and claim volumes in, for tests and fixtures:
/// `<dir>/volumes/<namespace>_<claim>_<uid>` backs a claim.
pub fn volumes_dir(dir: &Path) -> PathBuf {
    dir.join("volumes")
}
