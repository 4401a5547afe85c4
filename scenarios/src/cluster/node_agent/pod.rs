//! One pod's life on the node: review the spec, set up volumes, run the init containers in
//! order and then the containers with podman, restart them as `restartPolicy` says, write
//! the status a kubelet writes, and on deletion stop everything and delete the pod with grace 0.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::{Mutex, watch};

use super::probe::{self, HttpProbe, Verdict};
use super::runtime::{Runtime, now};
use super::spec::{self, ContainerRun, ObjectData, Ulimits};
use super::status::{ContainerStatus, POD_IP, PodState, State, termination_message};
use super::volumes::{self, VolumeError, Volumes};

/// What every pod worker shares.
pub struct Agent {
    pub client: kube::Client,
    pub runtime: Runtime,
    /// The agent's directory: `pods/` and `volumes/` below it.
    pub dir: PathBuf,
    pub ulimits: Ulimits,
    /// KUBERNETES_SERVICE_HOST and friends, pointing at the API server.
    pub base_env: Vec<(String, String)>,
}

/// How long a container waits before a restart: 1 s doubling up to 10 s (the kubelet's
/// CrashLoopBackOff is 10 s doubling up to 5 min; shorter keeps tests quick).
fn backoff(restarts: i32) -> Duration {
    Duration::from_secs((1u64 << restarts.clamp(0, 4) as u32).min(10))
}

/// How often a waiting condition (missing Secret, unbound claim, absent image) is retried.
const RETRY: Duration = Duration::from_secs(2);

/// The worker for one pod: runs it unless it is already finished or being deleted, then
/// waits for deletion and cleans up. `rx` carries the latest pod (None once it is gone).
pub async fn work(agent: Arc<Agent>, mut rx: watch::Receiver<Option<Pod>>) {
    let Some(pod) = rx.borrow().clone() else {
        return;
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
    let runner = Arc::new(PodRunner::new(agent.clone(), pod.clone()));
    let fresh = pod.metadata.deletion_timestamp.is_none()
        && !matches!(phase.as_deref(), Some("Succeeded" | "Failed"));
    if fresh {
        let deadline = pod
            .spec
            .as_ref()
            .and_then(|s| s.active_deadline_seconds)
            .map(|s| Duration::from_secs(s.max(0) as u64));
        tokio::select! {
            _ = runner.run_with_deadline(deadline) => {}
            _ = deletion_requested(&mut rx) => {}
        }
    }
    deletion_requested(&mut rx).await;
    let latest = rx.borrow().clone();
    let grace = latest
        .as_ref()
        .and_then(|p| p.metadata.deletion_grace_period_seconds)
        .unwrap_or(0)
        .min(10);
    agent.runtime.remove_pod(&uid, grace).await;
    if let Some(pod) = latest {
        if fresh && !runner.state.lock().await.is_terminal() {
            let mut state = runner.state.lock().await;
            state.failure = Some((
                "Terminated".into(),
                "the pod was deleted while it ran".into(),
            ));
            drop(state);
            runner.publish().await;
        }
        delete_now(&agent.client, &pod).await;
    }
    let _ = fs::remove_dir_all(runner.dir.join("volumes"));
}

/// Waits until the pod has a deletion timestamp or is gone.
async fn deletion_requested(rx: &mut watch::Receiver<Option<Pod>>) {
    loop {
        match &*rx.borrow_and_update() {
            None => return,
            Some(p) if p.metadata.deletion_timestamp.is_some() => return,
            Some(_) => {}
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Deletes the pod with grace 0 (its containers are already gone), only this incarnation.
async fn delete_now(client: &kube::Client, pod: &Pod) {
    let api: Api<Pod> = Api::namespaced(
        client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
    );
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    match api.delete(&name, &params).await {
        Ok(_) => tracing::info!(pod = %name, "deleted"),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => tracing::warn!(pod = %name, "delete: {e}"),
    }
}

pub struct PodRunner {
    agent: Arc<Agent>,
    pod: Pod,
    /// `<agent dir>/pods/<ns>_<name>_<uid>`: volumes, env files, termination files, logs.
    dir: PathBuf,
    state: Mutex<PodState>,
}

/// Why a container could not be started yet, as a waiting reason and message.
struct NotStarted(&'static str, String);

impl PodRunner {
    fn new(agent: Arc<Agent>, pod: Pod) -> PodRunner {
        let m = &pod.metadata;
        let dir = agent.dir.join("pods").join(format!(
            "{}_{}_{}",
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default(),
            m.uid.as_deref().unwrap_or_default()
        ));
        let spec = pod.spec.clone().unwrap_or_default();
        let has_init = spec.init_containers.as_ref().is_some_and(|c| !c.is_empty());
        let status = |c: &Container, reason: &str| {
            ContainerStatus::new(
                &c.name,
                c.image.as_deref().unwrap_or_default(),
                State::waiting(reason, None),
            )
        };
        let init = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| status(c, "PodInitializing"))
            .collect();
        let main_reason = if has_init {
            "PodInitializing"
        } else {
            "ContainerCreating"
        };
        let main = spec
            .containers
            .iter()
            .map(|c| status(c, main_reason))
            .collect();
        let start = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.to_string())
            .unwrap_or_else(now);
        let restart = spec.restart_policy.as_deref().unwrap_or("Always");
        PodRunner {
            state: Mutex::new(PodState::new(init, main, restart, &start)),
            agent,
            pod,
            dir,
        }
    }

    fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }

    fn spec(&self) -> &k8s_openapi::api::core::v1::PodSpec {
        self.pod.spec.as_ref().expect("pods have a spec")
    }

    /// Sends the current state to the pod's status subresource.
    async fn publish(&self) {
        let body = self.state.lock().await.to_patch(&now());
        let api: Api<Pod> = Api::namespaced(
            self.agent.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or_default(),
        );
        if let Err(e) = api
            .patch_status(
                self.name(),
                &PatchParams::default(),
                &Patch::Strategic(body),
            )
            .await
        {
            tracing::warn!(pod = %self.name(), "status update: {e}");
        }
    }

    async fn run_with_deadline(&self, deadline: Option<Duration>) {
        let Some(deadline) = deadline else {
            return self.run().await;
        };
        if tokio::time::timeout(deadline, self.run()).await.is_err() {
            let uid = self.pod.metadata.uid.clone().unwrap_or_default();
            self.agent.runtime.remove_pod(&uid, 0).await;
            self.state.lock().await.failure = Some((
                "DeadlineExceeded".into(),
                "Pod was active on the node longer than the specified deadline".into(),
            ));
            self.publish().await;
        }
    }

    async fn run(&self) {
        let review = spec::review(&self.pod);
        self.state.lock().await.notes = review.notes;
        if !review.unsupported.is_empty() {
            let message = format!(
                "the wsr node agent (a kubelet stand-in) cannot honour: {}",
                review.unsupported.join(", ")
            );
            tracing::warn!(pod = %self.name(), "{message}");
            self.state.lock().await.failure = Some((spec::UNSUPPORTED_REASON.into(), message));
            self.publish().await;
            return;
        }
        self.publish().await;
        let Some((data, volumes)) = self.prepare().await else {
            return;
        };
        let spec = self.spec();
        for (i, c) in spec.init_containers.iter().flatten().enumerate() {
            let code = self.run_until_done(c, true, i, &data, &volumes).await;
            if code != 0 {
                return; // restartPolicy Never: the pod failed (OnFailure/Always retry inside)
            }
        }
        let all = spec
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| self.run_until_done(c, false, i, &data, &volumes));
        futures_util::future::join_all(all).await;
    }

    /// Fetches referenced objects and sets up volumes, retrying what the kubelet retries.
    async fn prepare(&self) -> Option<(ObjectData, Volumes)> {
        loop {
            let data = self.fetch_objects().await;
            match volumes::prepare(&self.agent.client, &self.pod, &self.dir, &data).await {
                Ok(v) => return Some((data, v)),
                Err(VolumeError::Retry(message)) => {
                    self.set_all_waiting(
                        "ContainerCreating",
                        &format!("MountVolume.SetUp failed: {message}"),
                    )
                    .await;
                    self.publish().await;
                    tokio::time::sleep(RETRY).await;
                }
                Err(VolumeError::Fatal(message)) => {
                    self.state.lock().await.failure = Some(("FailedMount".into(), message));
                    self.publish().await;
                    return None;
                }
            }
        }
    }

    async fn set_all_waiting(&self, reason: &str, message: &str) {
        let mut state = self.state.lock().await;
        let state = &mut *state;
        for c in state.init.iter_mut().chain(state.main.iter_mut()) {
            if matches!(c.state, State::Waiting { .. }) {
                c.state = State::waiting(reason, Some(message.to_owned()));
            }
        }
    }

    async fn fetch_objects(&self) -> ObjectData {
        let ns = self.pod.metadata.namespace.as_deref().unwrap_or_default();
        let (secrets, config_maps) = spec::referenced_objects(&self.pod);
        let mut data = ObjectData::default();
        let secret_api: Api<Secret> = Api::namespaced(self.agent.client.clone(), ns);
        for name in secrets {
            if let Ok(Some(s)) = secret_api.get_opt(&name).await {
                let mut values: std::collections::BTreeMap<String, Vec<u8>> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                for (k, v) in s.string_data.unwrap_or_default() {
                    values.insert(k, v.into_bytes());
                }
                data.secrets.insert(name, values);
            }
        }
        let cm_api: Api<ConfigMap> = Api::namespaced(self.agent.client.clone(), ns);
        for name in config_maps {
            if let Ok(Some(m)) = cm_api.get_opt(&name).await {
                let mut values: std::collections::BTreeMap<String, Vec<u8>> = m
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                for (k, v) in m.binary_data.unwrap_or_default() {
                    values.insert(k, v.0);
                }
                data.config_maps.insert(name, values);
            }
        }
        data
    }

    async fn with_status<R>(
        &self,
        init: bool,
        i: usize,
        f: impl FnOnce(&mut ContainerStatus) -> R,
    ) -> R {
        let r = {
            let mut state = self.state.lock().await;
            let list = if init {
                &mut state.init
            } else {
                &mut state.main
            };
            f(&mut list[i])
        };
        self.publish().await;
        r
    }

    /// Runs one container until `restartPolicy` lets it rest; returns its last exit code.
    async fn run_until_done(
        &self,
        c: &Container,
        init: bool,
        i: usize,
        data: &ObjectData,
        volumes: &Volumes,
    ) -> i32 {
        let policy = self
            .spec()
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let mut attempt = 0;
        loop {
            let finished = self.run_once(c, init, i, attempt, data, volumes).await;
            let code = match &finished {
                State::Terminated { exit_code, .. } => *exit_code,
                _ => -1,
            };
            let restart = match policy.as_str() {
                "Never" => false,
                "OnFailure" => code != 0,
                _ => !init || code != 0,
            };
            if !restart {
                return code;
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
            self.with_status(init, i, |s| {
                s.last_state = Some(finished);
                s.restart_count = attempt;
                s.state = State::waiting("CrashLoopBackOff", None);
            })
            .await;
        }
    }

    /// Creates, starts and waits for one container attempt; returns its terminated state.
    async fn run_once(
        &self,
        c: &Container,
        init: bool,
        i: usize,
        attempt: i32,
        data: &ObjectData,
        volumes: &Volumes,
    ) -> State {
        let name = container_name(&self.pod, c, attempt);
        let termination_file = loop {
            match self.create(c, &name, attempt, data, volumes).await {
                Ok(file) => break file,
                Err(NotStarted(reason, message)) => {
                    self.with_status(init, i, |s| s.state = State::waiting(reason, Some(message)))
                        .await;
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        let runtime = &self.agent.runtime;
        let started_at = now();
        if let Err(message) = runtime.run(&["start".into(), name.clone()]).await {
            let _ = runtime.run(&["rm".into(), "-f".into(), name.clone()]).await;
            let state = State::Terminated {
                exit_code: 128,
                reason: "StartError".into(),
                message: Some(message),
                started_at: None,
                finished_at: now(),
                container_id: None,
            };
            self.with_status(init, i, |s| s.state = state.clone()).await;
            return state;
        }
        let readiness = probe::http_probe(c, c.readiness_probe.as_ref()).filter(|_| !init);
        let liveness = probe::http_probe(c, c.liveness_probe.as_ref()).filter(|_| !init);
        self.with_status(init, i, |s| {
            s.state = State::Running {
                started_at: started_at.clone(),
            };
            s.probed_ready = readiness.as_ref().map(|_| false);
        })
        .await;
        let waited = tokio::select! {
            waited = runtime.wait(&name) => waited,
            _ = self.probe(i, &name, readiness, liveness) => unreachable!("probing never ends"),
        };
        let exit = runtime.exit(&name).await;
        let log = self
            .dir
            .join("logs")
            .join(format!("{}-{attempt}.log", c.name));
        let _ = fs::create_dir_all(self.dir.join("logs"));
        if let Err(e) = runtime.save_logs(&name, &log).await {
            tracing::warn!(pod = %self.name(), "{e}");
        }
        let _ = runtime.run(&["rm".into(), "-f".into(), name.clone()]).await;
        let state = match (waited, exit) {
            (Ok(_), Ok(exit)) => {
                let file = fs::read(&termination_file).unwrap_or_default();
                let log = fs::read(&log).unwrap_or_default();
                let message = termination_message(
                    &file,
                    c.termination_message_policy.as_deref(),
                    exit.code,
                    &log,
                );
                let reason = if exit.oom_killed {
                    "OOMKilled"
                } else if exit.code == 0 {
                    "Completed"
                } else {
                    "Error"
                };
                State::Terminated {
                    exit_code: exit.code,
                    reason: reason.into(),
                    message,
                    started_at: exit.started_at.or(Some(started_at)),
                    finished_at: exit.finished_at,
                    container_id: Some(format!("podman://{}", exit.id)),
                }
            }
            (Err(e), _) | (_, Err(e)) => State::Terminated {
                exit_code: 128,
                reason: "Unknown".into(),
                message: Some(e),
                started_at: Some(started_at),
                finished_at: now(),
                container_id: None,
            },
        };
        self.with_status(init, i, |s| s.state = state.clone()).await;
        state
    }

    /// Runs a running container's probes (never returns; dropped when the container exits):
    /// readiness sets its `ready`, liveness stops it after `failureThreshold` failures so
    /// that `restartPolicy` applies, as the kubelet does.
    async fn probe(
        &self,
        i: usize,
        name: &str,
        readiness: Option<HttpProbe>,
        liveness: Option<HttpProbe>,
    ) {
        let ready = async {
            let Some(p) = readiness else { return };
            tokio::time::sleep(p.initial_delay).await;
            let mut verdict = Verdict::new();
            let mut last = Some(false);
            loop {
                let result = verdict.add(&p, probe::check(&p).await);
                if result.is_some() && result != last {
                    last = result;
                    self.with_status(false, i, |s| s.probed_ready = result)
                        .await;
                }
                tokio::time::sleep(p.period).await;
            }
        };
        let live = async {
            let Some(p) = liveness else { return };
            tokio::time::sleep(p.initial_delay).await;
            let mut verdict = Verdict::new();
            loop {
                if verdict.add(&p, probe::check(&p).await) == Some(false) {
                    tracing::warn!(pod = %self.name(), container = name, "liveness probe failed; stopping the container");
                    let stop = ["stop".into(), "-t".into(), "10".into(), name.to_owned()];
                    let _ = self.agent.runtime.run(&stop).await;
                    return;
                }
                tokio::time::sleep(p.period).await;
            }
        };
        futures_util::future::join(ready, live).await;
        std::future::pending::<()>().await
    }

    /// Creates the podman container; returns the host path of its termination message file.
    async fn create(
        &self,
        c: &Container,
        name: &str,
        attempt: i32,
        data: &ObjectData,
        volumes: &Volumes,
    ) -> Result<PathBuf, NotStarted> {
        let config_error = |m: String| NotStarted("CreateContainerConfigError", m);
        let image_name = c.image.clone().unwrap_or_default();
        let image = match self.agent.runtime.image(&image_name).await {
            Ok(Some(image)) => image,
            Ok(None) => {
                return Err(NotStarted(
                    "ErrImageNeverPull",
                    format!(
                        "Container image \"{image_name}\" is not present on the node (images are never pulled)"
                    ),
                ));
            }
            Err(e) => return Err(NotStarted("ImageInspectError", e)),
        };
        let env = spec::container_env(&self.pod, c, data, &self.agent.base_env, POD_IP)
            .map_err(config_error)?;
        let user = spec::user(
            self.spec().security_context.as_ref(),
            c.security_context.as_ref(),
            &image.user,
        )
        .map_err(config_error)?;
        let mut mounts = volumes::container_mounts(c, volumes).map_err(|e| match e {
            VolumeError::Retry(m) | VolumeError::Fatal(m) => config_error(m),
        })?;
        let io = |e: std::io::Error| config_error(format!("{}: {e}", self.dir.display()));
        let run_dir = self.dir.join("run");
        fs::create_dir_all(&run_dir).map_err(io)?;
        let termination_file = run_dir.join(format!("{}-{attempt}.termination-log", c.name));
        fs::write(&termination_file, b"").map_err(io)?;
        fs::set_permissions(&termination_file, fs::Permissions::from_mode(0o666)).map_err(io)?;
        mounts.push(spec::Mount {
            source: termination_file.clone(),
            target: c
                .termination_message_path
                .clone()
                .unwrap_or_else(|| spec::DEFAULT_TERMINATION_MESSAGE_PATH.into()),
            read_only: false,
        });
        let env_file = run_dir.join(format!("{}-{attempt}.env", c.name));
        let (file_text, inline) = spec::env_file(&env);
        fs::write(&env_file, file_text).map_err(io)?;
        fs::set_permissions(&env_file, fs::Permissions::from_mode(0o600)).map_err(io)?;
        let run = ContainerRun {
            pod: &self.pod,
            container: c,
            name: name.to_owned(),
            owner: self.agent.dir.to_string_lossy().into_owned(),
            env_file,
            mounts,
            user,
            ulimits: self.agent.ulimits,
        };
        let args = spec::create_args(&run, &env, &inline).map_err(config_error)?;
        let runtime = &self.agent.runtime;
        let _ = runtime
            .run(&["rm".into(), "-f".into(), name.to_owned()])
            .await;
        runtime
            .run(&args)
            .await
            .map_err(|m| NotStarted("CreateContainerError", m))?;
        let image_id = format!("sha256:{}", image.id);
        let state = &mut *self.state.lock().await;
        for s in state
            .init
            .iter_mut()
            .chain(state.main.iter_mut())
            .filter(|s| s.name == c.name)
        {
            s.image_id = image_id.clone();
        }
        Ok(termination_file)
    }
}

/// The podman name of one container attempt: unique per pod UID.
fn container_name(pod: &Pod, c: &Container, attempt: i32) -> String {
    let m = &pod.metadata;
    format!(
        "k8s_{}_{}_{}_{}_{attempt}",
        c.name,
        m.name.as_deref().unwrap_or_default(),
        m.namespace.as_deref().unwrap_or_default(),
        m.uid.as_deref().unwrap_or_default()
    )
}
