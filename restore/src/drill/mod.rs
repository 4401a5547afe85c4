//! The disaster-recovery drill: restore every selected backup into a scratch directory, check
//! the restored tree against what the backup recorded, and report per backup its status, age
//! (the recovery point) and restore time (the recovery-time estimate).
//!
//! `run.rs` enumerates and drills; `check.rs` compares a restored tree with the backup's
//! listing; `report.rs` and `html.rs` render the result as pure functions of [`DrillReport`].

mod check;
mod html;
mod report;
mod run;

pub use html::html;
pub use report::{markdown, summary_line, table, termination_summary};
pub use run::{DrillOptions, DrillProgress, drill};

use crate::RestoreError;
use wsr_transport::TransportError;

/// The verdict on one backup. Every status but `Ok` fails the drill.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Restored and checked, and younger than `--max-age`.
    Ok,
    /// Restored and checked, but older than `--max-age`.
    Stale,
    /// A digest, the uncompressed stream, an archive entry or a restored file does not match.
    Corrupt,
    /// The registry or layout has lost a blob (or the manifest) the backup needs.
    MissingBlob,
    /// Not readable for another reason: not a valid backup, unreachable, scratch space.
    #[default]
    Unreadable,
    /// The credentials do not allow reading this backup.
    AuthDenied,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Ok,
        Status::Stale,
        Status::Corrupt,
        Status::MissingBlob,
        Status::Unreadable,
        Status::AuthDenied,
    ];

    /// As shown to people: `ok`, `stale`, `corrupt`, `missing blob`, `unreadable`, `auth denied`.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Stale => "stale",
            Status::Corrupt => "corrupt",
            Status::MissingBlob => "missing blob",
            Status::Unreadable => "unreadable",
            Status::AuthDenied => "auth denied",
        }
    }

    pub fn failed(self) -> bool {
        self != Status::Ok
    }
}

/// Maps a restore failure to the status it means for the backup.
pub fn status_of(error: &RestoreError) -> Status {
    match error {
        RestoreError::Transport(t) => match t {
            t if t.is_auth() => Status::AuthDenied,
            TransportError::NotFound { .. } => Status::MissingBlob,
            TransportError::DigestMismatch { .. } | TransportError::SizeMismatch { .. } => {
                Status::Corrupt
            }
            TransportError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Status::AuthDenied
            }
            _ => Status::Unreadable,
        },
        RestoreError::Corrupt(_) => Status::Corrupt,
        RestoreError::Unpack(
            wsr_format::unpack::UnpackError::Io { .. }
            | wsr_format::unpack::UnpackError::TooLarge { .. }
            | wsr_format::unpack::UnpackError::TooManyEntries { .. },
        ) => Status::Unreadable,
        RestoreError::Unpack(_) => Status::Corrupt,
        RestoreError::Unsupported(_) | RestoreError::Config(_) => Status::Unreadable,
        RestoreError::Paths(_)
        | RestoreError::Unmatched { .. }
        | RestoreError::TargetName { .. }
        | RestoreError::NotEmpty { .. }
        | RestoreError::Target { .. }
        | RestoreError::MoveAside { .. }
        | RestoreError::NoSpace { .. } => Status::Unreadable,
    }
}

/// One drilled backup (one tag of one workspace repository).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct BackupResult {
    pub namespace: String,
    pub workspace: String,
    pub tag: String,
    /// The repository, e.g. `registry:5000/backups/ns/ws` or `oci:/backups/ns/ws`.
    pub repository: String,
    pub status: Status,
    /// Why it failed (or is stale); `None` exactly when the status is `ok`.
    pub reason: Option<String>,
    pub digest: Option<String>,
    /// `native`, `dwo` or `tarball`.
    pub format: Option<String>,
    /// When the backup was taken (RFC 3339), from the manifest's `created` annotation.
    pub created: Option<String>,
    /// Seconds between `created` and the start of the drill: the recovery point.
    pub age_s: Option<f64>,
    /// Seconds the restore took (download, unpack, verify, move into place): the recovery time.
    pub restore_s: Option<f64>,
    /// Restored bytes per second of `restore_s`.
    pub throughput_bps: Option<f64>,
    /// Restored (uncompressed) bytes of regular files.
    pub bytes: Option<u64>,
    /// Compressed size of the data layers in the registry.
    pub stored_bytes: Option<u64>,
    /// Regular files restored.
    pub files: Option<u64>,
    /// Entries of the restored tree checked against the backup's listing.
    pub entries_checked: Option<u64>,
}

impl BackupResult {
    /// `namespace/workspace:tag`.
    pub fn name(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.workspace, self.tag)
    }
}

/// Counts by status.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub total: usize,
    pub ok: usize,
    pub failed: usize,
    pub stale: usize,
    pub corrupt: usize,
    pub missing_blob: usize,
    pub unreadable: usize,
    pub auth_denied: usize,
}

impl Summary {
    pub fn of(backups: &[BackupResult]) -> Summary {
        let mut s = Summary {
            total: backups.len(),
            ..Summary::default()
        };
        for b in backups {
            *match b.status {
                Status::Ok => &mut s.ok,
                Status::Stale => &mut s.stale,
                Status::Corrupt => &mut s.corrupt,
                Status::MissingBlob => &mut s.missing_blob,
                Status::Unreadable => &mut s.unreadable,
                Status::AuthDenied => &mut s.auth_denied,
            } += 1;
        }
        s.failed = s.total - s.ok;
        s
    }

    pub fn count(&self, status: Status) -> usize {
        match status {
            Status::Ok => self.ok,
            Status::Stale => self.stale,
            Status::Corrupt => self.corrupt,
            Status::MissingBlob => self.missing_blob,
            Status::Unreadable => self.unreadable,
            Status::AuthDenied => self.auth_denied,
        }
    }
}

/// Everything the drill found; the renderers are pure functions of it.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DrillReport {
    /// The registry path or layout that was drilled.
    pub source: String,
    /// When the drill started (RFC 3339); ages are measured from here.
    pub started: String,
    pub duration_s: f64,
    /// `--max-age` in seconds, if given.
    pub max_age_s: Option<u64>,
    pub summary: Summary,
    /// Sorted by namespace, workspace, tag.
    pub backups: Vec<BackupResult>,
    /// Repositories below the path that are not workspace backups (wrong depth, no tags,
    /// not a backup artifact), with the reason; not drilled, not failures.
    pub ignored: Vec<Ignored>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Ignored {
    pub repository: String,
    pub reason: String,
}

impl DrillReport {
    /// The drill passes when every backup is `ok` (and there was at least one).
    pub fn passed(&self) -> bool {
        !self.backups.is_empty() && self.summary.failed == 0
    }
}

/// Parses a duration such as `36h`, `7d`, `1d12h`, `90m`, `2w` or `3600` (seconds).
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid duration {text:?}: use e.g. 36h, 7d, 1d12h, 90m, 2w or seconds");
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(seconds);
    }
    let (mut total, mut number) = (0u64, String::new());
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

/// A short human age: `42s`, `17m`, `5h 12m`, `3d 4h`, `120d`.
pub fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => match (s % 3600) / 60 {
            0 => format!("{}h", s / 3600),
            m => format!("{}h {m}m", s / 3600),
        },
        86_400..8_640_000 => match (s % 86_400) / 3600 {
            0 => format!("{}d", s / 86_400),
            h => format!("{}d {h}h", s / 86_400),
        },
        _ => format!("{}d", s / 86_400),
    }
}

/// Bytes in binary units, as the rest of wsr shows them: `512 B`, `1.50 KiB`, `38.15 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// Restore times: `0.42s`, `12.3s`, `4m 05s`.
pub fn human_seconds(seconds: f64) -> String {
    if seconds < 10.0 {
        format!("{seconds:.2}s")
    } else if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else {
        let s = seconds.round() as u64;
        format!("{}m {:02}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_common_units_and_reject_garbage() {
        assert_eq!(parse_duration("3600"), Ok(3600));
        assert_eq!(parse_duration("36h"), Ok(36 * 3600));
        assert_eq!(parse_duration("1d12h"), Ok(36 * 3600));
        assert_eq!(parse_duration("2w"), Ok(14 * 86_400));
        assert_eq!(parse_duration("90m"), Ok(5400));
        assert_eq!(parse_duration("5s"), Ok(5));
        for bad in [
            "",
            "h",
            "5x",
            "1.5h",
            "12h3",
            "-1d",
            "99999999999999999999w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn human_durations_are_short() {
        assert_eq!(human_duration(42.4), "42s");
        assert_eq!(human_duration(17.0 * 60.0 + 5.0), "17m");
        assert_eq!(human_duration(3.0 * 3600.0), "3h");
        assert_eq!(human_duration(5.0 * 3600.0 + 12.0 * 60.0), "5h 12m");
        assert_eq!(human_duration(3.0 * 86_400.0 + 4.0 * 3600.0), "3d 4h");
        assert_eq!(human_duration(200.0 * 86_400.0), "200d");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(40_000_000), "38.15 MiB");
        assert_eq!(human_seconds(0.4249), "0.42s");
        assert_eq!(human_seconds(12.34), "12.3s");
        assert_eq!(human_seconds(245.0), "4m 05s");
    }

    #[test]
    fn restore_errors_map_to_the_status_they_mean() {
        let t = |e| status_of(&RestoreError::Transport(e));
        assert_eq!(
            t(TransportError::Forbidden {
                registry: "r".into(),
                detail: "denied".into()
            }),
            Status::AuthDenied
        );
        assert_eq!(
            t(TransportError::NotFound {
                what: "blob".into()
            }),
            Status::MissingBlob
        );
        let d = wsr_format::digest::Digest::of(b"x");
        assert_eq!(
            t(TransportError::DigestMismatch {
                what: "layer".into(),
                expected: d.clone(),
                actual: d
            }),
            Status::Corrupt
        );
        assert_eq!(
            t(TransportError::Io {
                what: "open".into(),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied)
            }),
            Status::AuthDenied
        );
        assert_eq!(
            t(TransportError::Connect {
                registry: "r".into(),
                detail: "refused".into()
            }),
            Status::Unreadable
        );
        // A layer blob whose length differs from its descriptor (the transport's reader
        // stops one byte past the declared size).
        assert_eq!(
            t(TransportError::SizeMismatch {
                digest: wsr_format::digest::Digest::of(b"layer"),
                expected: 10,
                found: "more than 10".into()
            }),
            Status::Corrupt
        );
        assert_eq!(
            status_of(&RestoreError::Corrupt("x".into())),
            Status::Corrupt
        );
        assert_eq!(
            status_of(&RestoreError::Unsupported(
                wsr_format::artifact::ArtifactError::Unrecognised("x".into())
            )),
            Status::Unreadable
        );
    }

    #[test]
    fn summary_counts_each_status_and_only_ok_passes() {
        let b = |status| BackupResult {
            status,
            ..BackupResult::default()
        };
        let backups = vec![
            b(Status::Ok),
            b(Status::Ok),
            b(Status::Stale),
            b(Status::Corrupt),
        ];
        let s = Summary::of(&backups);
        assert_eq!(
            (s.total, s.ok, s.failed, s.stale, s.corrupt),
            (4, 2, 2, 1, 1)
        );
        let mut report = DrillReport {
            summary: s,
            backups,
            ..DrillReport::default()
        };
        assert!(!report.passed());
        report.backups.retain(|b| b.status == Status::Ok);
        report.summary = Summary::of(&report.backups);
        assert!(report.passed());
        report.backups.clear();
        report.summary = Summary::of(&report.backups);
        assert!(!report.passed(), "an empty drill proves nothing");
    }
}
