//! Following a restore Job to its end: Job and pod status lines as they change, the pod's log
//! when the API server can serve it (it asks the node's kubelet), and the failed container's
//! termination message and exit code.

use futures_util::{AsyncBufReadExt as _, StreamExt as _};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::{Api, Client};
use std::time::Duration;

/// How a followed Job ended.
pub enum Outcome {
    Complete,
    /// The container's termination message (or the Job's condition message) and exit code.
    Failed {
        message: String,
        exit_code: i32,
    },
}

/// Polls the Job once a second until it completes or fails, printing progress to stderr.
pub async fn follow(client: &Client, namespace: &str, job: &str) -> anyhow::Result<Outcome> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("batch.kubernetes.io/job-name={job}");
    let mut last_line = String::new();
    let mut log_task: Option<tokio::task::JoinHandle<()>> = None;
    let outcome = loop {
        let current = jobs.get(job).await?;
        let pod = pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .into_iter()
            .next();
        let line = status_line(&current, pod.as_ref());
        if line != last_line {
            eprintln!("wsr-restore: job {job}: {line}");
            last_line = line;
        }
        if let Some(pod) = &pod
            && log_task.is_none()
            && pod_started(pod)
        {
            let name = pod.metadata.name.clone().unwrap_or_default();
            log_task = Some(tokio::spawn(stream_log(pods.clone(), name)));
        }
        if let Some(outcome) = finished(&current, pod.as_ref()) {
            break outcome;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    if let Some(task) = log_task {
        // Let the last log lines arrive, but never wait on a log the node cannot serve.
        if tokio::time::timeout(Duration::from_secs(3), &mut Box::pin(task))
            .await
            .is_err()
        {
            eprintln!("wsr-restore: (pod log still open; not waiting for it)");
        }
    }
    Ok(outcome)
}

fn pod_started(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running" | "Succeeded" | "Failed")
    )
}

/// Streams the restore container's log to stderr; says once why when it cannot.
async fn stream_log(pods: Api<Pod>, name: String) {
    let params = LogParams {
        container: Some(super::job::CONTAINER.into()),
        follow: true,
        ..Default::default()
    };
    match pods.log_stream(&name, &params).await {
        Ok(stream) => {
            let mut lines = stream.lines();
            while let Some(Ok(line)) = lines.next().await {
                eprintln!("  | {line}");
            }
        }
        Err(e) => {
            let why = match e {
                kube::Error::Api(status) => status.message,
                other => other.to_string(),
            };
            eprintln!(
                "wsr-restore: pod log unavailable ({why}); following the Job and pod status only"
            )
        }
    }
}

/// `active/succeeded/failed` of the Job and what its pod is doing.
fn status_line(job: &Job, pod: Option<&Pod>) -> String {
    let s = job.status.clone().unwrap_or_default();
    let mut line = format!(
        "active {} succeeded {} failed {}",
        s.active.unwrap_or(0),
        s.succeeded.unwrap_or(0),
        s.failed.unwrap_or(0)
    );
    match pod {
        None => line.push_str("; no pod yet"),
        Some(pod) => {
            let status = pod.status.clone().unwrap_or_default();
            line.push_str(&format!(
                "; pod {} {}",
                pod.metadata.name.as_deref().unwrap_or("-"),
                status.phase.as_deref().unwrap_or("Pending")
            ));
            let state = status
                .container_statuses
                .unwrap_or_default()
                .into_iter()
                .next()
                .and_then(|c| c.state);
            if let Some(w) = state.as_ref().and_then(|s| s.waiting.as_ref()) {
                line.push_str(&format!(" ({})", w.reason.as_deref().unwrap_or("waiting")));
            }
            if let Some(t) = state.as_ref().and_then(|s| s.terminated.as_ref()) {
                line.push_str(&format!(" (exit {})", t.exit_code));
            }
        }
    }
    line
}

/// The outcome once the Job has a `Complete` or `Failed` condition.
fn finished(job: &Job, pod: Option<&Pod>) -> Option<Outcome> {
    let conditions = job.status.as_ref()?.conditions.clone().unwrap_or_default();
    let done = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == kind && c.status == "True")
    };
    if done("Complete").is_some() {
        return Some(Outcome::Complete);
    }
    let failed = done("Failed")?;
    let terminated = pod
        .and_then(|p| p.status.clone())
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.state)
        .and_then(|s| s.terminated);
    let job_reason = format!(
        "{}: {}",
        failed.reason.as_deref().unwrap_or("Failed"),
        failed.message.as_deref().unwrap_or("")
    );
    Some(match terminated {
        Some(t) => Outcome::Failed {
            message: t
                .message
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty())
                .unwrap_or(job_reason),
            exit_code: t.exit_code,
        },
        None => Outcome::Failed {
            message: job_reason,
            exit_code: 1,
        },
    })
}
