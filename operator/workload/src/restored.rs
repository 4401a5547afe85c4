//! What a successful, complete restore leaves in its pod's status: one JSON line as the
//! container's termination message. `wsr-restore` writes it (in a restore Job's container, or
//! as `init` in DWO's `workspace-restore` init container) and the operator reads it back to
//! record `wsr.dev/restored-from` on the DevWorkspace. A failed restore, a partial one
//! (`--paths`), an `init` that found `/projects` not empty, or one that failed with
//! `WSR_RESTORE_OPTIONAL=true` writes no such line, so nothing is recorded for it.

use serde::{Deserialize, Serialize};

/// DWO's restore init container in the workspace pod (upstream's name).
pub const INIT_CONTAINER: &str = "workspace-restore";
/// The container of a `wsr-restore --in-cluster` Job.
pub const JOB_CONTAINER: &str = "restore-workspace";
/// Label on restore Jobs and their pods (not upstream's backup-job label: the dashboard would
/// show a restore as a backup in progress).
pub const RESTORE_JOB_LABEL: &str = "wsr.dev/restore-job";
/// The longest message `wsr-cli` writes (one line); the kubelet keeps 4096 bytes. A message
/// cut at this length no longer parses, so a cut report is never mistaken for a whole one.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// The report of one complete restore, as its termination message carries it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// `repository@sha256:…`: what was restored, the tag (if any) resolved once before the
    /// first download.
    pub restored: String,
    /// The manifest digest (`sha256:` and 64 lowercase hex digits), as in `restored`.
    pub digest: String,
    /// Files and bytes of file content written.
    pub files: u64,
    pub bytes: u64,
}

impl Restored {
    /// The termination message: one JSON line.
    pub fn message(&self) -> String {
        serde_json::to_string(self).expect("plain strings and numbers serialise")
    }

    /// The report in a termination message, when the message is exactly one such line whose
    /// reference is pinned to its digest; anything else (a failure's reason, a cut line, a
    /// tag-only reference) is `None`.
    pub fn from_message(message: &str) -> Option<Restored> {
        let line = message.trim();
        if line.len() > MAX_MESSAGE_LEN || line.contains('\n') {
            return None;
        }
        let report: Restored = serde_json::from_str(line).ok()?;
        let (repository, digest) = report.restored.rsplit_once('@')?;
        let hex = report.digest.strip_prefix("sha256:")?;
        let well_formed = !repository.is_empty()
            && digest == report.digest
            && hex.len() == 64
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        well_formed.then_some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn report() -> Restored {
        Restored {
            restored: format!("registry.example:5000/backups/ns/ws@{DIGEST}"),
            digest: DIGEST.into(),
            files: 12,
            bytes: 3456,
        }
    }

    #[test]
    fn the_message_is_one_json_line_that_reads_back() {
        let message = report().message();
        assert!(!message.contains('\n'));
        assert!(message.len() < MAX_MESSAGE_LEN);
        assert_eq!(
            Restored::from_message(&format!("{message}\n")),
            Some(report())
        );
    }

    #[test]
    fn anything_but_a_pinned_report_is_refused() {
        let refused = |r: Restored| Restored::from_message(&r.message());
        let mut tag = report();
        tag.restored = "registry.example:5000/backups/ns/ws:latest".into();
        assert_eq!(refused(tag), None, "not pinned to a digest");
        let mut other = report();
        other.digest = format!("sha256:{}", "f".repeat(64));
        assert_eq!(refused(other), None, "digest differs from the reference's");
        let mut short = report();
        short.digest = "sha256:0123".into();
        short.restored = "r/ns/ws@sha256:0123".into();
        assert_eq!(refused(short), None);
        for message in [
            "write: target /projects is not empty; restore into an empty directory",
            "",
            "{\"restored\":\"r/ns/ws@sha256:01",
            "{\"skipped\":true}",
        ] {
            assert_eq!(Restored::from_message(message), None, "{message}");
        }
        let long = format!(
            "{{\"restored\":\"r/{}@{DIGEST}\",\"digest\":\"{DIGEST}\",\"files\":1,\"bytes\":1}}",
            "a".repeat(MAX_MESSAGE_LEN)
        );
        assert_eq!(Restored::from_message(&long), None, "longer than written");
        let two = format!("{}\n{}", report().message(), report().message());
        assert_eq!(Restored::from_message(&two), None);
    }
}
