//! Recording successful restores on their DevWorkspaces: `wsr.dev/restored-from`
//! (`repository@sha256:…`), `wsr.dev/restored-at` and `wsr.dev/restored-by`, plus a
//! `Restored` Event. The source is the restore's own report, the termination message
//! `wsr-restore` leaves on a complete restore (`wsr_workload::restored`), read from the pods
//! the operator already watches (they carry DWO's `devworkspace_id` label): a restore Job's
//! pod (`wsr-restore --in-cluster`) and a workspace pod whose `workspace-restore` init
//! container restored (DWO's restore on start, run by wsr's image). A failed, partial or
//! skipped restore leaves no report, so nothing is recorded for it.
//!
//! Like backup results it is level-based and idempotent: the newest report per workspace is
//! written once, and never over a newer recorded restore. It does not depend on any
//! BackupPolicy (a restored workspace need not be backed up by wsr), runs on the leader only,
//! and merge-patches only its own three annotations, so it never touches the backup ones.

use crate::controller::publish_event;
use crate::devworkspace::DevWorkspace;
use crate::names::{label, wsr_annotation};
use crate::results::to_chrono;
use crate::workload::restored::{INIT_CONTAINER, JOB_CONTAINER, RESTORE_JOB_LABEL, Restored};
use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};
use wsr_format::reference::{Reference, Target};

/// One complete, successful restore, as its pod reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restore {
    pub namespace: String,
    /// DWO's `devworkspace_id` label of the pod.
    pub workspace_id: String,
    /// `repository@sha256:…`.
    pub source: String,
    /// `job/<name>` (a restore Job) or `pod/<name>` (a workspace pod's init container).
    pub by: String,
    /// When the restoring container finished.
    pub finished: DateTime<Utc>,
    pub files: u64,
    pub bytes: u64,
}

/// The restore `pod` reports, when it is a wsr restore whose container finished with exit
/// code 0 and left a complete restore's report pinned to a digest.
pub fn reported(pod: &Pod) -> Option<Restore> {
    let labels = pod.labels();
    let workspace_id = labels.get(label::DEVWORKSPACE_ID)?.clone();
    let status = pod.status.as_ref()?;
    let (statuses, container, by) =
        if labels.get(RESTORE_JOB_LABEL).map(String::as_str) == Some("true") {
            let job = pod.owner_references().iter().find(|o| o.kind == "Job")?;
            let statuses = status.container_statuses.as_ref()?;
            (statuses, JOB_CONTAINER, format!("job/{}", job.name))
        } else {
            let statuses = status.init_container_statuses.as_ref()?;
            (statuses, INIT_CONTAINER, format!("pod/{}", pod.name_any()))
        };
    let terminated = statuses
        .iter()
        .find(|s| s.name == container)?
        .state
        .as_ref()?
        .terminated
        .as_ref()?;
    if terminated.exit_code != 0 {
        return None;
    }
    let report = Restored::from_message(terminated.message.as_deref()?)?;
    let reference: Reference = report.restored.parse().ok()?;
    if !matches!(&reference.target, Target::Digest(d) if d.to_string() == report.digest) {
        return None;
    }
    Some(Restore {
        namespace: pod.namespace()?,
        workspace_id,
        source: report.restored,
        by,
        finished: to_chrono(&terminated.finished_at.as_ref()?.0),
        files: report.files,
        bytes: report.bytes,
    })
}

/// Whether the workspace's annotations already hold `restore` or a newer restore.
fn already_recorded(ws: &DevWorkspace, restore: &Restore) -> bool {
    let annotations = ws.annotations();
    let Some(at) = annotations
        .get(wsr_annotation::RESTORED_AT)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    else {
        return false;
    };
    let at = at.with_timezone(&Utc);
    at > restore.finished
        || (at == restore.finished
            && annotations.get(wsr_annotation::RESTORED_BY) == Some(&restore.by))
}

/// The restores to record now: for each workspace with a reported restore (matched by
/// namespace and `status.devworkspaceId`), its newest, unless its annotations hold it or a
/// newer one.
pub fn pending(
    workspaces: &[Arc<DevWorkspace>],
    pods: &[Arc<Pod>],
) -> Vec<(Arc<DevWorkspace>, Restore)> {
    let mut newest: BTreeMap<(String, String), Restore> = BTreeMap::new();
    for restore in pods.iter().filter_map(|p| reported(p)) {
        let key = (restore.namespace.clone(), restore.workspace_id.clone());
        let newer = newest
            .get(&key)
            .is_none_or(|n| (restore.finished, &restore.by) > (n.finished, &n.by));
        if newer {
            newest.insert(key, restore);
        }
    }
    workspaces
        .iter()
        .filter_map(|ws| {
            let key = (ws.namespace()?, ws.workspace_id()?.to_owned());
            let restore = newest.remove(&key)?;
            (!already_recorded(ws, &restore)).then(|| (ws.clone(), restore))
        })
        .collect()
}

/// The merge patch that records `restore`: only wsr's three restore annotations.
pub fn annotation_patch(restore: &Restore) -> Value {
    let at = restore
        .finished
        .to_rfc3339_opts(SecondsFormat::AutoSi, true);
    json!({"metadata": {"annotations": {
        wsr_annotation::RESTORED_FROM: restore.source,
        wsr_annotation::RESTORED_AT: at,
        wsr_annotation::RESTORED_BY: restore.by,
    }}})
}

/// A burst of cache changes (a pod's status updates) becomes one pass.
const DEBOUNCE: Duration = Duration::from_secs(1);
/// After an API error, the next pass.
const RETRY: Duration = Duration::from_secs(30);

/// Writes restores onto workspaces, woken by the watch caches.
pub struct RestoreRecorder {
    client: Client,
    events: Recorder,
    workspaces: Store<DevWorkspace>,
    pods: Store<Pod>,
    /// Restores written, as (namespace, workspace, by), in case the workspace cache lags
    /// behind the patch; pruned to the restores still pending.
    written: Mutex<HashSet<(String, String, String)>>,
}

impl RestoreRecorder {
    pub fn new(
        client: Client,
        reporter: Reporter,
        workspaces: Store<DevWorkspace>,
        pods: Store<Pod>,
    ) -> RestoreRecorder {
        RestoreRecorder {
            events: Recorder::new(client.clone(), reporter),
            client,
            workspaces,
            pods,
            written: Mutex::default(),
        }
    }

    /// Records pending restores whenever `wake` is notified or leadership changes, while this
    /// process leads, until `stop` is notified (a pass in progress finishes first). It holds
    /// a receiver of the election's channel, so it must have returned before the Lease can be
    /// released.
    pub async fn run(
        self,
        wake: Arc<Notify>,
        mut is_leader: watch::Receiver<bool>,
        stop: Arc<Notify>,
    ) {
        let mut election = true;
        loop {
            tokio::select! {
                biased;
                () = stop.notified() => return,
                () = wake.notified() => {}
                changed = is_leader.changed(), if election => election = changed.is_ok(),
            }
            tokio::time::sleep(DEBOUNCE).await;
            if !*is_leader.borrow_and_update() {
                continue;
            }
            let _ = self.workspaces.wait_until_ready().await;
            let _ = self.pods.wait_until_ready().await;
            if !self.record_pending().await {
                tokio::time::sleep(RETRY).await;
                wake.notify_one();
            }
        }
    }

    /// One pass; false when a write failed (retried later).
    async fn record_pending(&self) -> bool {
        let pending = pending(&self.workspaces.state(), &self.pods.state());
        let keys: HashSet<_> = pending
            .iter()
            .map(|(ws, r)| (r.namespace.clone(), ws.name_any(), r.by.clone()))
            .collect();
        self.written
            .lock()
            .expect("not poisoned")
            .retain(|k| keys.contains(k));
        let mut ok = true;
        for (ws, restore) in pending {
            let key = (restore.namespace.clone(), ws.name_any(), restore.by.clone());
            if self.written.lock().expect("not poisoned").contains(&key) {
                continue;
            }
            match self.record(&ws, &restore).await {
                Ok(()) => {
                    self.written.lock().expect("not poisoned").insert(key);
                }
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => {
                    warn!(namespace = %key.0, workspace = %key.1, error = %e,
                          "cannot record a restore; retrying in 30s");
                    ok = false;
                }
            }
        }
        ok
    }

    async fn record(&self, ws: &DevWorkspace, restore: &Restore) -> Result<(), kube::Error> {
        let patch = annotation_patch(restore);
        Api::<DevWorkspace>::namespaced(self.client.clone(), &restore.namespace)
            .patch(
                &ws.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        info!(namespace = %restore.namespace, workspace = %ws.name_any(),
              from = %restore.source, by = %restore.by, "restore recorded");
        let note = format!(
            "restored from {} by {}: {} files, {} bytes",
            restore.source, restore.by, restore.files, restore.bytes
        );
        let (kind, reason) = (EventType::Normal, "Restored");
        publish_event(&self.events, ws, "Restore", kind, reason, &note).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devworkspace::fixtures::workspace;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const ID: &str = "workspace1c0ffee0000000a1";

    fn message() -> String {
        Restored {
            restored: format!("r.example/backups/u/ws@{DIGEST}"),
            digest: DIGEST.into(),
            files: 3,
            bytes: 7,
        }
        .message()
    }

    /// A restore Job's pod (or, with `job: None`, a workspace pod with the init container).
    fn pod(name: &str, job: Option<&str>, exit_code: i32, message: &str, at: &str) -> Arc<Pod> {
        let terminated = json!({"name": if job.is_some() { JOB_CONTAINER } else { INIT_CONTAINER },
            "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "message": message, "finishedAt": at}}});
        let mut labels = json!({label::DEVWORKSPACE_ID: ID});
        let mut metadata = json!({"name": name, "namespace": "u"});
        let status = match job {
            Some(job) => {
                labels[RESTORE_JOB_LABEL] = json!("true");
                metadata["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job",
                    "name": job, "uid": format!("uid-{job}")}]);
                json!({"containerStatuses": [terminated]})
            }
            None => json!({"initContainerStatuses": [terminated],
                           "containerStatuses": [{"name": "tools", "image": "i", "imageID": "",
                               "ready": true, "restartCount": 0, "state": {"running": {}}}]}),
        };
        metadata["labels"] = labels;
        Arc::new(serde_json::from_value(json!({"metadata": metadata, "status": status})).unwrap())
    }

    fn ws() -> Arc<DevWorkspace> {
        Arc::new(workspace("u", "ws", ID, "Stopped"))
    }

    #[test]
    fn a_restore_jobs_and_an_init_containers_report_are_read() {
        let job = reported(&pod(
            "p1",
            Some("devworkspace-restore-x"),
            0,
            &message(),
            "2026-11-25T10:00:00Z",
        ))
        .unwrap();
        assert_eq!(job.source, format!("r.example/backups/u/ws@{DIGEST}"));
        assert_eq!(job.by, "job/devworkspace-restore-x");
        assert_eq!(job.workspace_id, ID);
        assert_eq!((job.files, job.bytes), (3, 7));
        let init = reported(&pod("ws-abc", None, 0, &message(), "2026-11-25T10:00:00Z")).unwrap();
        assert_eq!(init.by, "pod/ws-abc");
        assert_eq!(init.finished.to_rfc3339(), "2026-11-25T10:00:00+00:00");
    }

    #[test]
    fn failed_skipped_and_foreign_restores_are_not_read() {
        let at = "2026-11-25T10:00:00Z";
        let job = Some("devworkspace-restore-x");
        // A failure's reason, a non-zero exit with a report (cannot happen, still refused),
        // init's "not empty" and WSR_RESTORE_OPTIONAL's failure (exit 0, no report), and
        // upstream's script (no message at all).
        for p in [
            pod("p", job, 3, "write: target /projects is not empty", at),
            pod("p", job, 1, &message(), at),
            pod("p", None, 0, "", at),
            pod("p", None, 0, "{\"skipped\":true}", at),
        ] {
            assert_eq!(reported(&p), None);
        }
        // A report whose reference and digest disagree.
        let other = message().replace("@sha256:0123", "@sha256:ffff");
        assert_eq!(reported(&pod("p", job, 0, &other, at)), None);
        // A pod with no finish time cannot be recorded idempotently.
        let mut no_time = (*pod("p", job, 0, &message(), at)).clone();
        no_time
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0]
            .state
            .as_mut()
            .unwrap()
            .terminated
            .as_mut()
            .unwrap()
            .finished_at = None;
        assert_eq!(reported(&no_time), None);
    }

    #[test]
    fn the_newest_restore_is_recorded_once() {
        let older = pod(
            "a",
            Some("devworkspace-restore-a"),
            0,
            &message(),
            "2026-11-25T10:00:00Z",
        );
        let newer = pod("b", None, 0, &message(), "2026-11-25T11:00:00Z");
        let failed_later = pod(
            "c",
            Some("devworkspace-restore-c"),
            3,
            "write: no",
            "2026-11-25T12:00:00Z",
        );
        let pods = [older.clone(), newer, failed_later];
        let todo = pending(&[ws()], &pods);
        assert_eq!(todo.len(), 1);
        let restore = &todo[0].1;
        assert_eq!(restore.by, "pod/b", "the newest successful restore");
        let patch = annotation_patch(restore);
        let a = &patch["metadata"]["annotations"];
        assert_eq!(
            a["wsr.dev/restored-from"],
            format!("r.example/backups/u/ws@{DIGEST}")
        );
        assert_eq!(a["wsr.dev/restored-at"], "2026-11-25T11:00:00Z");
        assert_eq!(a["wsr.dev/restored-by"], "pod/b");
        assert_eq!(a.as_object().unwrap().len(), 3, "nothing else is touched");

        // Recorded: nothing more to do, and an older restore never overwrites it.
        let mut recorded = (*ws()).clone();
        let annotations: BTreeMap<String, String> = serde_json::from_value(a.clone()).unwrap();
        recorded.metadata.annotations = Some(annotations);
        let recorded = Arc::new(recorded);
        assert!(pending(std::slice::from_ref(&recorded), &pods).is_empty());
        assert!(pending(&[recorded], &[older]).is_empty());
    }

    #[test]
    fn restores_match_workspaces_by_namespace_and_id() {
        let p = pod(
            "a",
            Some("devworkspace-restore-a"),
            0,
            &message(),
            "2026-11-25T10:00:00Z",
        );
        let same_name_new_id =
            Arc::new(workspace("u", "ws", "workspace00000000000000ff", "Stopped"));
        let other_namespace = Arc::new(workspace("v", "ws", ID, "Stopped"));
        assert!(pending(&[same_name_new_id, other_namespace], &[p]).is_empty());
    }
}
