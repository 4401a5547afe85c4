//! Reading a finished backup Job (and its pod's termination message or `--json` report) into
//! the DevWorkspace annotations: upstream's three, exactly, plus wsr's reference, digest,
//! failure count and the Job the result came from.

use crate::job::{CONTAINER, JOB_REFERENCE_ANNOTATION};
use crate::names::{annotation, wsr_annotation};
use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Map, Value, json};

/// The outcome of one finished backup Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub job: String,
    pub finished: DateTime<Utc>,
    pub result: Result<Pushed, String>,
    /// `succeeded`, or one of [`FAILURE_REASONS`] (a bounded metric label).
    pub reason: &'static str,
}

/// Why a backup Job failed, as a short word: `wsr-backup`'s exit code, or what stopped the
/// pod or the Job before it could say. docs/OPERATOR.md explains each.
pub const FAILURE_REASONS: [&str; 10] = [
    "internalError",       // exit 1
    "invalidArguments",    // exit 2
    "sourceUnreadable",    // exit 3
    "registryUnreachable", // exit 4 (or TLS verification)
    "registryAuth",        // exit 5
    "registryError",       // exit 6
    "oomKilled",
    "deadlineExceeded",
    "podFailed", // another exit code or container reason
    "jobFailed", // no pod says more
];

/// The bounded failure reason of a failed Job (see [`FAILURE_REASONS`]).
pub fn failure_reason(job: &Job, pod: Option<&Pod>) -> &'static str {
    let job_reason = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Failed"))
        .and_then(|c| c.reason.as_deref());
    if job_reason == Some("DeadlineExceeded") {
        return "deadlineExceeded";
    }
    let terminated = pod
        .and_then(|p| p.status.as_ref()?.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER))
        .and_then(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .or_else(|| c.last_state.as_ref()?.terminated.as_ref())
        });
    let Some(terminated) = terminated else {
        return "jobFailed";
    };
    if terminated.reason.as_deref() == Some("OOMKilled") {
        return "oomKilled";
    }
    match terminated.exit_code {
        1 => "internalError",
        2 => "invalidArguments",
        3 => "sourceUnreadable",
        4 => "registryUnreachable",
        5 => "registryAuth",
        6 => "registryError",
        _ => "podFailed",
    }
}

/// What a successful Job pushed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    pub reference: Option<String>,
    pub digest: Option<String>,
    /// File content backed up and bytes uploaded, from the `--json` report.
    pub bytes: Option<u64>,
    pub uploaded_bytes: Option<u64>,
}

pub fn to_chrono(t: &k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond() as u32).unwrap_or_default()
}

/// Whether the Job is active (not finished).
pub fn is_active(job: &Job) -> bool {
    finished(job).is_none()
}

/// `(succeeded, time)` when the Job has a terminal `Complete` or `Failed` condition.
pub fn finished(job: &Job) -> Option<(bool, DateTime<Utc>)> {
    let status = job.status.as_ref()?;
    status.conditions.iter().flatten().find_map(|c| {
        let ok = match c.type_.as_str() {
            "Complete" => true,
            "Failed" => false,
            _ => return None,
        };
        (c.status == "True").then(|| {
            let at = c
                .last_transition_time
                .as_ref()
                .or(status.completion_time.as_ref())
                .map(|t| to_chrono(&t.0))
                .unwrap_or_else(Utc::now);
            (ok, at)
        })
    })
}

/// The outcome of a finished Job; `pod` is its pod if still there (its termination message
/// is `wsr-backup`'s reason on failure, its `--json` report's figures on success).
pub fn outcome(job: &Job, pod: Option<&Pod>) -> Option<Outcome> {
    let (ok, at) = finished(job)?;
    let name = job.metadata.name.clone().unwrap_or_default();
    let message = pod.and_then(|p| termination_message(p, CONTAINER));
    let result = if ok {
        let report = message.as_deref().and_then(json_report);
        let planned = job
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(JOB_REFERENCE_ANNOTATION).cloned());
        Ok(report.unwrap_or(Pushed {
            reference: planned,
            ..Default::default()
        }))
    } else {
        Err(message.unwrap_or_else(|| job_failure_reason(job, "backup")))
    };
    let reason = if ok {
        "succeeded"
    } else {
        failure_reason(job, pod)
    };
    Some(Outcome {
        job: name,
        finished: at,
        result,
        reason,
    })
}

/// The termination message of `pod`'s container `container` (what `wsr-backup` or
/// `wsr-restore drill` wrote, or its log tail), or its terminated reason.
pub fn termination_message(pod: &Pod, container: &str) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let status = statuses.iter().find(|s| s.name == container)?;
    let terminated = status
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| status.last_state.as_ref()?.terminated.as_ref())?;
    terminated
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .or_else(|| terminated.reason.clone().map(|r| format!("container {r}")))
}

/// The Job's own reason, when no pod says more (e.g. the deadline passed before it ran);
/// `what` names the Job's kind (`backup`, `drill`).
pub fn job_failure_reason(job: &Job, what: &str) -> String {
    let failed = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Failed"));
    match failed {
        Some(c) => format!(
            "{what} Job failed: {}: {}",
            c.reason.as_deref().unwrap_or("Failed"),
            c.message.as_deref().unwrap_or("")
        ),
        None => format!("{what} Job failed"),
    }
}

/// The `wsr-backup --json` report: the last line of the text that is a JSON object with a
/// `reference`.
fn json_report(text: &str) -> Option<Pushed> {
    text.lines().rev().find_map(|line| {
        let v: Value = serde_json::from_str(line.trim()).ok()?;
        let reference = v.get("reference")?.as_str()?.to_owned();
        Some(Pushed {
            reference: Some(reference),
            digest: v.get("digest").and_then(Value::as_str).map(str::to_owned),
            bytes: v.get("bytes").and_then(Value::as_u64),
            uploaded_bytes: v.get("uploaded_bytes").and_then(Value::as_u64),
        })
    })
}

/// The merge patch that records `outcome` on the workspace (`failures` is the current
/// consecutive failure count).
pub fn annotation_patch(outcome: &Outcome, failures: u32) -> Value {
    let mut a = Map::new();
    let at = outcome
        .finished
        .to_rfc3339_opts(SecondsFormat::AutoSi, true);
    a.insert(annotation::LAST_BACKUP_FINISHED_AT.into(), json!(at));
    a.insert(wsr_annotation::LAST_BACKUP_JOB.into(), json!(outcome.job));
    match &outcome.result {
        Ok(pushed) => {
            a.insert(annotation::LAST_BACKUP_SUCCESSFUL.into(), json!("true"));
            a.insert(annotation::LAST_BACKUP_ERROR.into(), Value::Null);
            a.insert(wsr_annotation::FAILURES.into(), Value::Null);
            if let Some(r) = &pushed.reference {
                a.insert(wsr_annotation::LAST_BACKUP_REFERENCE.into(), json!(r));
            }
            a.insert(
                wsr_annotation::LAST_BACKUP_DIGEST.into(),
                pushed.digest.as_ref().map_or(Value::Null, |d| json!(d)),
            );
        }
        Err(message) => {
            a.insert(annotation::LAST_BACKUP_SUCCESSFUL.into(), json!("false"));
            a.insert(
                annotation::LAST_BACKUP_ERROR.into(),
                json!(crate::error_annotation(message)),
            );
            a.insert(
                wsr_annotation::FAILURES.into(),
                json!(failures.saturating_add(1).to_string()),
            );
        }
    }
    json!({"metadata": {"annotations": a}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(condition: &str, message: &str) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "devworkspace-backup-abcde", "namespace": "u",
                         "annotations": {"wsr.dev/reference": "r.example/u/ws:latest"}},
            "status": {"conditions": [
                {"type": "FailureTarget", "status": "True", "lastTransitionTime": "2026-11-25T10:00:00Z"},
                {"type": condition, "status": "True", "lastTransitionTime": "2026-11-25T10:00:01Z",
                 "reason": "BackoffLimitExceeded", "message": message}]}
        }))
        .unwrap()
    }

    fn pod(message: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"containerStatuses": [{"name": "backup-workspace", "image": "i",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 4, "reason": "Error", "message": message}}}]}
        }))
        .unwrap()
    }

    #[test]
    fn failure_reason_comes_from_the_termination_message() {
        let reason = "registry 127.0.0.1:5999 unreachable: connection refused";
        let o = outcome(
            &job("Failed", "Job has reached the specified backoff limit"),
            Some(&pod(reason)),
        )
        .unwrap();
        assert_eq!(o.result, Err(reason.to_owned()));
        assert_eq!(o.reason, "registryUnreachable", "exit code 4");
        assert_eq!(o.finished.to_rfc3339(), "2026-11-25T10:00:01+00:00");
        // Without the pod, the Job condition is all there is.
        let o = outcome(
            &job("Failed", "Job was active longer than specified deadline"),
            None,
        )
        .unwrap();
        assert_eq!(
            o.result,
            Err("backup Job failed: BackoffLimitExceeded: Job was active longer than specified deadline".into())
        );
        assert_eq!(o.reason, "jobFailed");
    }

    #[test]
    fn success_reads_the_json_report_from_the_termination_message() {
        let report = "{\"reference\":\"r.example/u/ws@sha256:ab\",\"digest\":\"sha256:ab\",\"files\":3,\"bytes\":7,\"uploaded_bytes\":9}\n";
        let o = outcome(&job("Complete", ""), Some(&pod(report))).unwrap();
        assert_eq!(
            o.result,
            Ok(Pushed {
                reference: Some("r.example/u/ws@sha256:ab".into()),
                digest: Some("sha256:ab".into()),
                bytes: Some(7),
                uploaded_bytes: Some(9),
            })
        );
        assert_eq!(o.reason, "succeeded");
        let o = outcome(&job("Complete", ""), None).unwrap();
        assert_eq!(
            o.result.unwrap().reference.as_deref(),
            Some("r.example/u/ws:latest")
        );
    }

    #[test]
    fn running_jobs_have_no_outcome() {
        let running: Job =
            serde_json::from_value(json!({"metadata": {"name": "j"}, "status": {"active": 1}}))
                .unwrap();
        assert!(is_active(&running));
        assert_eq!(outcome(&running, None), None);
    }

    #[test]
    fn annotations_as_upstream_writes_them() {
        let failed = Outcome {
            job: "j1".into(),
            finished: DateTime::parse_from_rfc3339("2026-11-25T10:00:01.5Z")
                .unwrap()
                .into(),
            result: Err("e".repeat(2000)),
            reason: "registryError",
        };
        let p = annotation_patch(&failed, 2);
        let a = &p["metadata"]["annotations"];
        assert_eq!(a["controller.devfile.io/last-backup-successful"], "false");
        assert_eq!(
            a["controller.devfile.io/last-backup-finished-at"],
            "2026-11-25T10:00:01.500Z"
        );
        assert_eq!(
            a["controller.devfile.io/last-backup-error"]
                .as_str()
                .unwrap()
                .len(),
            1024
        );
        assert_eq!(a["wsr.dev/backup-failures"], "3");
        let ok = Outcome {
            result: Ok(Pushed {
                reference: Some("r@sha256:1".into()),
                digest: Some("sha256:1".into()),
                ..Default::default()
            }),
            ..failed
        };
        let a = &annotation_patch(&ok, 3)["metadata"]["annotations"];
        assert_eq!(a["controller.devfile.io/last-backup-successful"], "true");
        assert!(
            a["controller.devfile.io/last-backup-error"].is_null(),
            "removed on success"
        );
        assert!(a["wsr.dev/backup-failures"].is_null());
        assert_eq!(a["wsr.dev/last-backup-digest"], "sha256:1");
        assert_eq!(a["wsr.dev/last-backup-job"], "j1");
    }
}
