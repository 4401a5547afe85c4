//! The container runtime side of the agent: podman subcommands run asynchronously on the
//! image storage, with their errors as text for pod status messages.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use tokio::process::Command;

use crate::podman::global_args;

/// What the agent needs from an image's config.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub id: String,
    /// The config's `User` (may be empty).
    pub user: String,
}

/// How a container ended, from `podman inspect`.
#[derive(Debug, Clone)]
pub struct Exit {
    pub code: i32,
    pub oom_killed: bool,
    pub started_at: Option<String>,
    pub finished_at: String,
    pub id: String,
}

#[derive(Debug, Clone)]
pub struct Runtime {
    storage: PathBuf,
}

impl Runtime {
    pub fn new(storage: PathBuf) -> Runtime {
        Runtime { storage }
    }

    fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command
            .args(global_args(&self.storage))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs podman with `args`; stdout on success, else a one-paragraph error.
    pub async fn run(&self, args: &[String]) -> Result<String, String> {
        let output = self
            .command()
            .args(args)
            .output()
            .await
            .map_err(|e| format!("cannot run podman: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(format!(
                "podman {} failed ({}): {}",
                args.first().map(String::as_str).unwrap_or(""),
                output.status,
                stderr.trim()
            ))
        }
    }

    /// The local image, or `None` when it is not in the storage (images are never pulled).
    pub async fn image(&self, image: &str) -> Result<Option<ImageInfo>, String> {
        let exists = self
            .command()
            .args(["image", "exists", image])
            .status()
            .await
            .map_err(|e| format!("cannot run podman: {e}"))?;
        if !exists.success() {
            return Ok(None);
        }
        let out = self
            .run(&["image".into(), "inspect".into(), image.into()])
            .await?;
        let list: Value =
            serde_json::from_str(&out).map_err(|e| format!("podman image inspect: {e}"))?;
        let v = &list[0];
        Ok(Some(ImageInfo {
            id: v["Id"].as_str().unwrap_or_default().to_owned(),
            user: v["Config"]["User"].as_str().unwrap_or_default().to_owned(),
        }))
    }

    /// `podman wait`: the container's exit code once it stops.
    pub async fn wait(&self, name: &str) -> Result<i32, String> {
        let out = self.run(&["wait".into(), name.into()]).await?;
        out.trim()
            .parse()
            .map_err(|_| format!("podman wait printed {out:?}"))
    }

    pub async fn exit(&self, name: &str) -> Result<Exit, String> {
        let out = self
            .run(&["container".into(), "inspect".into(), name.into()])
            .await?;
        let v: Value =
            serde_json::from_str(&out).map_err(|e| format!("podman container inspect: {e}"))?;
        let c = &v[0];
        let time = |t: &Value| {
            t.as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .filter(|t| t.timestamp() > 0)
                .map(|t| rfc3339(t.with_timezone(&chrono::Utc)))
        };
        Ok(Exit {
            code: c["State"]["ExitCode"].as_i64().unwrap_or(-1) as i32,
            oom_killed: c["State"]["OOMKilled"].as_bool().unwrap_or(false),
            started_at: time(&c["State"]["StartedAt"]),
            finished_at: time(&c["State"]["FinishedAt"]).unwrap_or_else(now),
            id: c["Id"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// Copies the container's output (stdout and stderr) into `file`.
    pub async fn save_logs(&self, name: &str, file: &Path) -> Result<(), String> {
        let out = std::fs::File::create(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let status = self
            .command()
            .args(["logs", name])
            .stdout(out)
            .stderr(err)
            .status()
            .await
            .map_err(|e| format!("cannot run podman: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("podman logs {name}: {status}"))
        }
    }

    /// Stops (after `grace` seconds) and removes every container of a pod.
    pub async fn remove_pod(&self, pod_uid: &str, grace: i64) {
        let Ok(ids) = self
            .run(&[
                "ps".into(),
                "-a".into(),
                "-q".into(),
                "--filter".into(),
                format!("label=io.kubernetes.pod.uid={pod_uid}"),
            ])
            .await
        else {
            return;
        };
        for id in ids.split_whitespace() {
            let _ = self
                .run(&["stop".into(), "-t".into(), grace.to_string(), id.into()])
                .await;
            let _ = self.run(&["rm".into(), "-f".into(), id.into()]).await;
        }
    }
}

/// A Kubernetes timestamp (RFC 3339, seconds, `Z`).
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn now() -> String {
    rfc3339(chrono::Utc::now())
}
