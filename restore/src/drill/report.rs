//! The drill's text renderings: the terminal table, its one-line summary, and Markdown.

use super::{BackupResult, DrillReport, Status, human_bytes, human_duration, human_seconds};

/// One line saying whether the drill passed and what failed, e.g.
/// `FAILED: 8 backups, 4 ok, 4 failed (1 stale, 2 corrupt, 1 auth denied); oldest 3d 4h (max age 1d); …`.
pub fn summary_line(report: &DrillReport) -> String {
    let s = &report.summary;
    let mut line = if report.backups.is_empty() {
        "FAILED: no backups found".to_owned()
    } else if report.passed() {
        format!("PASSED: {} backups, all ok", s.total)
    } else {
        let parts: Vec<String> = Status::ALL[1..]
            .iter()
            .filter(|&&st| s.count(st) > 0)
            .map(|&st| format!("{} {}", s.count(st), st.label()))
            .collect();
        format!(
            "FAILED: {} backups, {} ok, {} failed ({})",
            s.total,
            s.ok,
            s.failed,
            parts.join(", ")
        )
    };
    if let Some(oldest) = report
        .backups
        .iter()
        .filter_map(|b| b.age_s)
        .reduce(f64::max)
    {
        line.push_str(&format!("; oldest {}", human_duration(oldest)));
        if let Some(max) = report.max_age_s {
            line.push_str(&format!(" (max age {})", human_duration(max as f64)));
        }
    }
    let times: Vec<f64> = report.backups.iter().filter_map(|b| b.restore_s).collect();
    if let Some(slowest) = times.iter().copied().reduce(f64::max) {
        line.push_str(&format!(
            "; slowest restore {}, {} in all",
            human_seconds(slowest),
            human_seconds(times.iter().sum())
        ));
    }
    if !report.ignored.is_empty() {
        line.push_str(&match report.ignored.len() {
            1 => "; 1 unrelated repository ignored".to_owned(),
            n => format!("; {n} unrelated repositories ignored"),
        });
    }
    line
}

/// The most a container's termination message may hold (the kubelet keeps 4096 bytes).
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;
/// Each failure's reason in the termination summary is cut to this many characters.
const SUMMARY_REASON_CHARS: usize = 240;

/// The drill's result as one compact JSON line for the pod's termination message, so a
/// controller can read it from the pod status: whether it passed, the counts by status, the
/// oldest age, and the failing backups with their reasons, as many as fit in
/// [`TERMINATION_MESSAGE_LIMIT`] (the rest counted in `failures_omitted`). docs/DRILL.md
/// documents the fields.
pub fn termination_summary(report: &DrillReport) -> String {
    let oldest = report
        .backups
        .iter()
        .filter_map(|b| b.age_s)
        .reduce(f64::max)
        .map(|s| s.round() as u64);
    let mut value = serde_json::json!({
        "passed": report.passed(),
        "summary": report.summary,
        "oldest_age_s": oldest,
        "max_age_s": report.max_age_s,
        "duration_s": (report.duration_s * 10.0).round() / 10.0,
        "ignored": report.ignored.len(),
        "failures": [],
        "failures_omitted": 0,
    });
    let failed: Vec<&BackupResult> = report
        .backups
        .iter()
        .filter(|b| b.status.failed())
        .collect();
    let mut listed = Vec::new();
    for (i, b) in failed.iter().enumerate() {
        let reason: String = b
            .reason
            .as_deref()
            .unwrap_or_default()
            .chars()
            .take(SUMMARY_REASON_CHARS)
            .collect();
        listed.push(serde_json::json!({
            "backup": b.name(), "status": b.status, "reason": reason,
        }));
        value["failures"] = serde_json::Value::Array(listed.clone());
        value["failures_omitted"] = (failed.len() - i - 1).into();
        // Leave room for the omitted count to grow by a few digits.
        if value.to_string().len() > TERMINATION_MESSAGE_LIMIT - 16 {
            listed.pop();
            value["failures"] = serde_json::Value::Array(listed);
            value["failures_omitted"] = (failed.len() - i).into();
            break;
        }
    }
    value.to_string()
}

/// The cells of one backup's row, in column order (shared by the table and Markdown).
fn cells(b: &BackupResult) -> [String; 9] {
    let dash = || "-".to_owned();
    [
        b.status.label().to_owned(),
        b.name(),
        b.format.clone().unwrap_or_else(dash),
        b.age_s.map(human_duration).unwrap_or_else(dash),
        b.bytes.map(human_bytes).unwrap_or_else(dash),
        b.files.map(|f| f.to_string()).unwrap_or_else(dash),
        b.restore_s.map(human_seconds).unwrap_or_else(dash),
        b.throughput_bps
            .map(|r| format!("{}/s", human_bytes(r as u64)))
            .unwrap_or_else(dash),
        b.reason.clone().unwrap_or_default(),
    ]
}

const HEADERS: [&str; 9] = [
    "STATUS", "BACKUP", "FORMAT", "AGE", "SIZE", "FILES", "RESTORE", "RATE", "REASON",
];
/// Columns aligned right (numbers).
const RIGHT: [bool; 9] = [false, false, false, true, true, true, true, true, false];

/// The terminal table followed by the summary line.
pub fn table(report: &DrillReport) -> String {
    let rows: Vec<[String; 9]> = report.backups.iter().map(cells).collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i == cells.len() - 1 {
                out.push_str(cell);
            } else if RIGHT[i] {
                out.push_str(&format!("{}{cell}  ", " ".repeat(pad)));
            } else {
                out.push_str(&format!("{cell}{}  ", " ".repeat(pad)));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = String::new();
    if !rows.is_empty() {
        out.push_str(&line(&HEADERS.map(str::to_owned)));
        out.push('\n');
        for row in &rows {
            out.push_str(&line(row));
            out.push('\n');
        }
    }
    for i in &report.ignored {
        out.push_str(&format!("ignored {}: {}\n", i.repository, i.reason));
    }
    out.push_str(&summary_line(report));
    out
}

fn md_escape(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// A Markdown document: heading, summary, one table row per backup, ignored repositories.
pub fn markdown(report: &DrillReport) -> String {
    let mut out = format!(
        "# Backup restore drill\n\n**{}**\n\n- Source: `{}`\n- Started: {} (took {})\n",
        md_escape(&summary_line(report)),
        report.source,
        report.started,
        human_seconds(report.duration_s)
    );
    if let Some(max) = report.max_age_s {
        out.push_str(&format!("- Maximum age: {}\n", human_duration(max as f64)));
    }
    out.push_str("\n| Status | Backup | Format | Created | Age | Size | Files | Restore | Throughput | Reason |\n");
    out.push_str("|---|---|---|---|--:|--:|--:|--:|--:|---|\n");
    for b in &report.backups {
        let c = cells(b);
        let status = if b.status.failed() {
            format!("**{}**", c[0])
        } else {
            c[0].clone()
        };
        out.push_str(&format!(
            "| {status} | `{}` | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            c[1],
            c[2],
            b.created.as_deref().unwrap_or("-"),
            c[3],
            c[4],
            c[5],
            c[6],
            c[7],
            md_escape(&c[8])
        ));
    }
    if !report.ignored.is_empty() {
        out.push_str("\nIgnored (not workspace backups):\n\n");
        for i in &report.ignored {
            out.push_str(&format!("- `{}`: {}\n", i.repository, md_escape(&i.reason)));
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::drill::{Ignored, Summary};

    /// A report with one backup of each status, shared with the HTML tests.
    pub(crate) fn sample_report() -> DrillReport {
        let b =
            |ws: &str, status: Status, age_h: f64, restore_s: Option<f64>, reason: Option<&str>| {
                BackupResult {
                    namespace: "team-a".into(),
                    workspace: ws.into(),
                    tag: "latest".into(),
                    repository: format!("registry:5000/backups/team-a/{ws}"),
                    status,
                    reason: reason.map(str::to_owned),
                    digest: Some(format!("sha256:{}", "ab".repeat(32))),
                    format: Some("native".into()),
                    created: Some("2026-11-24T10:00:00Z".into()),
                    age_s: Some(age_h * 3600.0),
                    restore_s,
                    throughput_bps: restore_s.map(|s| 50e6 / s),
                    bytes: restore_s.map(|_| 50_000_000),
                    stored_bytes: Some(20_000_000),
                    files: restore_s.map(|_| 1200),
                    entries_checked: restore_s.map(|_| 1400),
                }
            };
        let backups = vec![
            b("api", Status::Ok, 5.0, Some(1.25), None),
            b(
                "web|ui",
                Status::Stale,
                80.0,
                Some(3.5),
                Some("older than the maximum age 1d"),
            ),
            b(
                "db",
                Status::Corrupt,
                10.0,
                None,
                Some("digest mismatch for layer blob"),
            ),
            b(
                "docs",
                Status::MissingBlob,
                12.0,
                None,
                Some("not found: blob sha256:12"),
            ),
            b(
                "<ops>",
                Status::AuthDenied,
                2.0,
                None,
                Some("access denied (DENIED)"),
            ),
        ];
        DrillReport {
            source: "registry:5000/backups".into(),
            started: "2026-11-25T16:00:00Z".into(),
            duration_s: 9.5,
            max_age_s: Some(86_400),
            summary: Summary::of(&backups),
            backups,
            ignored: vec![Ignored {
                repository: "registry:5000/backups/tools".into(),
                reason: "not NAMESPACE/WORKSPACE below the path".into(),
            }],
        }
    }

    #[test]
    fn table_has_a_row_per_backup_with_reasons_and_a_summary_line() {
        let report = sample_report();
        let text = table(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("STATUS"), "{text}");
        assert_eq!(lines.len(), 1 + 5 + 1 + 1, "{text}");
        assert!(
            lines[2].starts_with("stale ") && lines[2].ends_with("older than the maximum age 1d")
        );
        assert!(lines[4].contains("missing blob") && lines[4].contains("not found: blob"));
        assert!(
            lines[1].contains("1.25s") && lines[1].contains("38.15 MiB/s"),
            "{}",
            lines[1]
        );
        assert!(lines[6].starts_with("ignored registry:5000/backups/tools"));
        assert_eq!(
            lines[7],
            "FAILED: 5 backups, 1 ok, 4 failed (1 stale, 1 corrupt, 1 missing blob, 1 auth denied); \
             oldest 3d 8h (max age 1d); slowest restore 3.50s, 4.75s in all; 1 unrelated repository ignored"
        );
    }

    #[test]
    fn the_termination_summary_is_one_json_line_with_counts_and_reasons() {
        let report = sample_report();
        let line = termination_summary(&report);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["passed"], false);
        assert_eq!(v["summary"]["total"], 5);
        assert_eq!(v["summary"]["ok"], 1);
        assert_eq!(v["summary"]["stale"], 1);
        assert_eq!(v["oldest_age_s"], 80 * 3600);
        assert_eq!(v["max_age_s"], 86_400);
        assert_eq!(v["ignored"], 1);
        assert_eq!(v["failures"].as_array().unwrap().len(), 4);
        assert_eq!(v["failures"][0]["backup"], "team-a/web|ui:latest");
        assert_eq!(v["failures"][0]["status"], "stale");
        assert_eq!(v["failures"][3]["status"], "auth_denied");
        assert_eq!(v["failures_omitted"], 0);
    }

    #[test]
    fn the_termination_summary_stays_within_the_kubelets_limit() {
        let mut report = sample_report();
        let template = report.backups[3].clone();
        report.backups = (0..200)
            .map(|i| BackupResult {
                workspace: format!("workspace-with-a-long-name-{i:03}"),
                reason: Some("x".repeat(1000)),
                ..template.clone()
            })
            .collect();
        report.summary = Summary::of(&report.backups);
        let line = termination_summary(&report);
        assert!(line.len() <= TERMINATION_MESSAGE_LIMIT, "{}", line.len());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let listed = v["failures"].as_array().unwrap().len();
        assert!(listed >= 5, "{listed}");
        assert_eq!(v["failures_omitted"], 200 - listed);
        assert_eq!(
            v["failures"][0]["reason"].as_str().unwrap().len(),
            SUMMARY_REASON_CHARS
        );
    }

    #[test]
    fn summary_says_passed_only_when_all_are_ok() {
        let mut report = sample_report();
        report.backups.retain(|b| b.status == Status::Ok);
        report.summary = Summary::of(&report.backups);
        report.ignored.clear();
        assert!(summary_line(&report).starts_with("PASSED: 1 backups, all ok; oldest 5h"));
        report.backups.clear();
        assert!(summary_line(&report).starts_with("FAILED: no backups found"));
    }

    #[test]
    fn markdown_escapes_pipes_and_lists_every_backup() {
        let md = markdown(&sample_report());
        assert!(md.starts_with("# Backup restore drill\n"));
        assert!(md.contains("| **corrupt** | `team-a/db:latest` |"), "{md}");
        assert!(md.contains("`team-a/web|ui:latest`"), "{md}");
        assert_eq!(md.matches("\n| ").count(), 1 + 5, "{md}");
        assert!(md.contains("- `registry:5000/backups/tools`: not NAMESPACE/WORKSPACE"));
    }
}
