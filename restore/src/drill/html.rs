//! The drill's HTML report: one self-contained file (inline CSS, SVG charts and a few lines of
//! JavaScript for sorting; no network) with a verdict, summary cards, a chart of backup ages
//! against `--max-age`, a chart of restore times, and a sortable table.

use super::report::summary_line;
use super::{BackupResult, DrillReport, Status, human_bytes, human_duration, human_seconds};
use std::fmt::Write as _;

/// Escapes text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn color(status: Status) -> &'static str {
    match status {
        Status::Ok => "#1f9d55",
        Status::Stale => "#d97706",
        Status::Corrupt => "#dc2626",
        Status::MissingBlob => "#be185d",
        Status::Unreadable => "#7c3aed",
        Status::AuthDenied => "#475569",
    }
}

/// Table order: what needs attention first.
fn severity(status: Status) -> u8 {
    match status {
        Status::Corrupt => 0,
        Status::MissingBlob => 1,
        Status::Unreadable => 2,
        Status::AuthDenied => 3,
        Status::Stale => 4,
        Status::Ok => 5,
    }
}

fn css_class(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Stale => "stale",
        Status::Corrupt => "corrupt",
        Status::MissingBlob => "missing",
        Status::Unreadable => "unreadable",
        Status::AuthDenied => "auth",
    }
}

const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#0f172a;background:#eef2f7}
header{background:linear-gradient(120deg,#0f172a,#1e3a5f);color:#f8fafc;padding:22px 32px;display:flex;align-items:center;justify-content:space-between;gap:24px}
header h1{margin:0;font-size:22px;font-weight:650;letter-spacing:.2px}
header .meta{margin-top:4px;color:#cbd5e1;font-size:13px}
header code{color:#e2e8f0;background:rgba(255,255,255,.08);padding:1px 6px;border-radius:4px}
.verdict{font-weight:700;font-size:15px;padding:9px 18px;border-radius:999px;letter-spacing:.6px;white-space:nowrap}
.verdict.pass{background:#dcfce7;color:#14532d}.verdict.fail{background:#fee2e2;color:#7f1d1d}
main{padding:22px 32px 32px;max-width:1400px;margin:0 auto}
.summary{margin:0 0 18px;color:#334155;font-size:13px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:14px;margin-bottom:18px}
.card{background:#fff;border-radius:10px;padding:14px 16px;box-shadow:0 1px 2px rgba(15,23,42,.08),0 1px 8px rgba(15,23,42,.04);border-top:3px solid #94a3b8}
.card .k{color:#64748b;font-size:12px;text-transform:uppercase;letter-spacing:.5px}
.card .v{font-size:26px;font-weight:650;margin-top:2px}
.card .s{color:#64748b;font-size:12px;margin-top:2px}
.card.good{border-top-color:#1f9d55}.card.bad{border-top-color:#dc2626}.card.warn{border-top-color:#d97706}.card.info{border-top-color:#2563eb}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:14px;margin-bottom:18px}
.panel{background:#fff;border-radius:10px;padding:14px 16px 10px;box-shadow:0 1px 2px rgba(15,23,42,.08),0 1px 8px rgba(15,23,42,.04)}
.panel h2{margin:0 0 2px;font-size:15px;font-weight:650}
.panel .sub{color:#64748b;font-size:12px;margin-bottom:6px}
svg{width:100%;height:auto;display:block}
svg text{font:11px system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;fill:#334155}
svg .axis{fill:#94a3b8}
.legend{display:flex;flex-wrap:wrap;gap:6px 14px;margin:6px 0 2px;font-size:12px;color:#475569}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;vertical-align:-1px}
table{width:100%;border-collapse:collapse;font-size:13px}
th{text-align:left;font-weight:600;color:#475569;font-size:12px;text-transform:uppercase;letter-spacing:.4px;padding:9px 10px;border-bottom:2px solid #e2e8f0;cursor:pointer;user-select:none;white-space:nowrap}
th:hover{color:#0f172a}th.asc::after{content:" \25B2";font-size:9px}th.desc::after{content:" \25BC";font-size:9px}
td{padding:8px 10px;border-bottom:1px solid #eef2f7;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:hover td{background:#f8fafc}
td.name{font-weight:550;white-space:nowrap}td.name small{display:block;color:#94a3b8;font-weight:400;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:11px}
td.reason{color:#b91c1c;max-width:460px;overflow-wrap:anywhere;font-size:12px}
td.when{white-space:nowrap}
.chip{display:inline-block;padding:2px 9px;border-radius:999px;font-size:12px;font-weight:600;white-space:nowrap}
.chip.ok{background:#dcfce7;color:#166534}.chip.stale{background:#fef3c7;color:#92400e}.chip.corrupt{background:#fee2e2;color:#991b1b}
.chip.missing{background:#fce7f3;color:#9d174d}.chip.unreadable{background:#ede9fe;color:#5b21b6}.chip.auth{background:#e2e8f0;color:#334155}
.ignored{margin-top:14px;color:#64748b;font-size:12px}
footer{color:#94a3b8;font-size:12px;padding:0 32px 24px;max-width:1400px;margin:0 auto}
"#;

const SCRIPT: &str = r#"
document.querySelectorAll('table.sortable').forEach(function(table){
  var heads=table.querySelectorAll('th');
  heads.forEach(function(th,col){th.addEventListener('click',function(){
    var asc=!th.classList.contains('asc');
    heads.forEach(function(h){h.classList.remove('asc','desc')});
    th.classList.add(asc?'asc':'desc');
    var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
    var num=th.dataset.type==='num';
    rows.sort(function(a,b){
      var x=a.cells[col].dataset.v,y=b.cells[col].dataset.v;
      if(x===undefined)x=a.cells[col].textContent;if(y===undefined)y=b.cells[col].textContent;
      if(num){x=x===''?Infinity:+x;y=y===''?Infinity:+y;return asc?x-y:y-x}
      return asc?x.localeCompare(y):y.localeCompare(x)});
    rows.forEach(function(r){body.appendChild(r)});
  })});
});
"#;

/// The whole report as one HTML document.
pub fn html(report: &DrillReport) -> String {
    let mut out = String::new();
    let verdict = if report.passed() {
        r#"<div class="verdict pass">&#10004; DRILL PASSED</div>"#
    } else {
        r#"<div class="verdict fail">&#10008; DRILL FAILED</div>"#
    };
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>Backup restore drill: {}</title><style>{STYLE}</style></head><body>\n\
         <header><div><h1>Backup restore drill</h1><div class=\"meta\">Source <code>{}</code> &middot; \
         started {} &middot; took {}</div></div>{verdict}</header>\n<main>\n\
         <p class=\"summary\">{}</p>",
        esc(&report.source),
        esc(&report.source),
        esc(&report.started),
        esc(&human_seconds(report.duration_s)),
        esc(&summary_line(report)),
    );
    out.push_str(&cards(report));
    out.push_str("<div class=\"charts\">\n");
    out.push_str(&age_panel(report));
    out.push_str(&restore_panel(report));
    out.push_str("</div>\n");
    out.push_str(&table(report));
    out.push_str("</main>\n");
    let _ = writeln!(
        out,
        "<footer>Generated by wsr-restore {} drill. Every backup was downloaded, its digests \
         verified, restored into a scratch directory and checked file by file against its \
         listing; ages are measured from the start of the drill.</footer>\n\
         <script>{SCRIPT}</script></body></html>",
        env!("CARGO_PKG_VERSION")
    );
    out
}

fn card(out: &mut String, class: &str, key: &str, value: &str, sub: &str) {
    let _ = writeln!(
        out,
        "<div class=\"card {class}\"><div class=\"k\">{}</div><div class=\"v\">{}</div><div class=\"s\">{}</div></div>",
        esc(key),
        esc(value),
        esc(sub)
    );
}

fn cards(report: &DrillReport) -> String {
    let s = &report.summary;
    let mut out = String::from("<div class=\"cards\">\n");
    card(
        &mut out,
        "info",
        "Backups drilled",
        &s.total.to_string(),
        &match report.ignored.len() {
            1 => "1 unrelated repository ignored".to_owned(),
            n => format!("{n} unrelated repositories ignored"),
        },
    );
    card(
        &mut out,
        if s.ok > 0 { "good" } else { "" },
        "Restored OK",
        &s.ok.to_string(),
        "verified file by file",
    );
    let failures: Vec<String> = Status::ALL[1..]
        .iter()
        .filter(|&&st| s.count(st) > 0)
        .map(|&st| format!("{} {}", s.count(st), st.label()))
        .collect();
    card(
        &mut out,
        if s.failed > 0 { "bad" } else { "good" },
        "Failed",
        &s.failed.to_string(),
        &if failures.is_empty() {
            "none".to_owned()
        } else {
            failures.join(", ")
        },
    );
    let oldest = report
        .backups
        .iter()
        .filter_map(|b| b.age_s)
        .reduce(f64::max);
    let stale = oldest
        .zip(report.max_age_s)
        .is_some_and(|(o, m)| o > m as f64);
    card(
        &mut out,
        if stale { "warn" } else { "good" },
        "Oldest recovery point",
        &oldest.map(human_duration).unwrap_or_else(|| "-".into()),
        &report
            .max_age_s
            .map(|m| format!("maximum age {}", human_duration(m as f64)))
            .unwrap_or_else(|| "no maximum age set".into()),
    );
    let restored: Vec<&BackupResult> = report
        .backups
        .iter()
        .filter(|b| b.restore_s.is_some())
        .collect();
    let slowest = restored.iter().filter_map(|b| b.restore_s).reduce(f64::max);
    card(
        &mut out,
        "info",
        "Slowest restore",
        &slowest.map(human_seconds).unwrap_or_else(|| "-".into()),
        "recovery-time estimate per workspace",
    );
    let bytes: u64 = restored.iter().filter_map(|b| b.bytes).sum();
    let seconds: f64 = restored.iter().filter_map(|b| b.restore_s).sum();
    card(
        &mut out,
        "info",
        "Data restored",
        &human_bytes(bytes),
        &if seconds > 0.0 {
            format!(
                "{}/s on average",
                human_bytes((bytes as f64 / seconds) as u64)
            )
        } else {
            "-".into()
        },
    );
    out.push_str("</div>\n");
    out
}

/// One bar of a horizontal bar chart.
struct Bar {
    label: String,
    value: Option<f64>,
    color: &'static str,
    text: String,
    tooltip: String,
}

/// Tick positions for an axis from 0 to `max`, with labels from `fmt`.
fn ticks(max: f64, unit: f64) -> Vec<f64> {
    let span = (max / unit).max(1e-9);
    let raw = span / 4.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| span / s <= 5.0)
        .unwrap_or(10.0 * magnitude);
    (0..=((span / step).floor() as usize))
        .map(|i| i as f64 * step * unit)
        .collect()
}

/// The unit an axis of seconds is labelled in: (seconds per unit, suffix).
fn time_unit(max: f64) -> (f64, &'static str) {
    match max {
        m if m <= 120.0 => (1.0, "s"),
        m if m <= 2.0 * 3600.0 => (60.0, "m"),
        m if m <= 3.0 * 86_400.0 => (3600.0, "h"),
        _ => (86_400.0, "d"),
    }
}

fn truncate(label: &str, max: usize) -> String {
    if label.chars().count() <= max {
        label.to_owned()
    } else {
        let head: String = label.chars().take(max - 1).collect();
        format!("{head}\u{2026}")
    }
}

/// A horizontal bar chart of durations in seconds; `limit` draws a dashed line and shades
/// everything beyond it.
fn bar_chart(bars: &[Bar], limit: Option<(f64, String)>) -> String {
    const W: f64 = 640.0;
    const LABEL_W: f64 = 178.0;
    const VALUE_W: f64 = 118.0;
    const ROW: f64 = 24.0;
    const TOP: f64 = 8.0;
    let plot_w = W - LABEL_W - VALUE_W;
    let data_max = bars.iter().filter_map(|b| b.value).fold(0.0, f64::max);
    let max = limit
        .as_ref()
        .map_or(data_max, |(l, _)| data_max.max(*l * 1.15))
        .max(1e-3)
        * 1.05;
    let x = |v: f64| LABEL_W + v / max * plot_w;
    let height = TOP + bars.len() as f64 * ROW + 34.0;
    let mut svg = format!(
        "<svg viewBox=\"0 0 {W} {height}\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\">\n"
    );
    let bottom = TOP + bars.len() as f64 * ROW;
    if let Some((l, _)) = &limit {
        let _ = writeln!(
            svg,
            "<rect x=\"{:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#fef2f2\"/>",
            x(*l),
            LABEL_W + plot_w - x(*l),
            bottom - TOP
        );
    }
    let (unit, suffix) = time_unit(max);
    for t in ticks(max, unit) {
        let _ = writeln!(
            svg,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{TOP}\" y2=\"{bottom}\" stroke=\"#e2e8f0\"/>\
             <text class=\"axis\" x=\"{0:.1}\" y=\"{1:.1}\" text-anchor=\"middle\">{2}{suffix}</text>",
            x(t),
            bottom + 14.0,
            format_tick(t / unit)
        );
    }
    for (i, bar) in bars.iter().enumerate() {
        let y = TOP + i as f64 * ROW;
        let _ = write!(
            svg,
            "<g><title>{}</title><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            esc(&bar.tooltip),
            LABEL_W - 8.0,
            y + ROW / 2.0 + 4.0,
            esc(&truncate(&bar.label, 30))
        );
        let end = match bar.value {
            Some(v) => {
                let w = (x(v) - LABEL_W).max(2.0);
                let _ = write!(
                    svg,
                    "<rect x=\"{LABEL_W}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" rx=\"3\" fill=\"{}\"/>",
                    y + 4.0,
                    ROW - 8.0,
                    bar.color
                );
                LABEL_W + w
            }
            None => LABEL_W,
        };
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            end + 6.0,
            y + ROW / 2.0 + 4.0,
            esc(&bar.text)
        );
    }
    let _ = writeln!(
        svg,
        "<line x1=\"{LABEL_W}\" x2=\"{LABEL_W}\" y1=\"{TOP}\" y2=\"{bottom}\" stroke=\"#94a3b8\"/>"
    );
    if let Some((l, label)) = &limit {
        let _ = writeln!(
            svg,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1}\" y2=\"{2:.1}\" stroke=\"#dc2626\" stroke-width=\"1.5\" stroke-dasharray=\"5 4\"/>\
             <text x=\"{0:.1}\" y=\"{3:.1}\" text-anchor=\"middle\" style=\"fill:#b91c1c;font-weight:600\">{4}</text>",
            x(*l),
            TOP - 2.0,
            bottom,
            bottom + 28.0,
            esc(label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn format_tick(v: f64) -> String {
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn legend(statuses: &[Status]) -> String {
    let mut out = String::from("<div class=\"legend\">");
    for &s in statuses {
        let _ = write!(
            out,
            "<span><i style=\"background:{}\"></i>{}</span>",
            color(s),
            s.label()
        );
    }
    out.push_str("</div>\n");
    out
}

fn present_statuses<'a>(backups: impl Iterator<Item = &'a BackupResult>) -> Vec<Status> {
    let mut present: Vec<Status> = backups.map(|b| b.status).collect();
    present.sort();
    present.dedup();
    present
}

fn age_panel(report: &DrillReport) -> String {
    let mut backups: Vec<&BackupResult> = report.backups.iter().collect();
    backups.sort_by(|a, b| b.age_s.unwrap_or(-1.0).total_cmp(&a.age_s.unwrap_or(-1.0)));
    let bars: Vec<Bar> = backups
        .iter()
        .map(|b| Bar {
            label: format!("{}/{}", b.namespace, b.workspace) + &tag_suffix(b),
            value: b.age_s,
            color: color(b.status),
            text: b
                .age_s
                .map(human_duration)
                .unwrap_or_else(|| "unknown".into()),
            tooltip: format!(
                "{} — {}; created {}",
                b.name(),
                b.status.label(),
                b.created.as_deref().unwrap_or("unknown")
            ),
        })
        .collect();
    let limit = report
        .max_age_s
        .map(|m| (m as f64, format!("max age {}", human_duration(m as f64))));
    let sub = match report.max_age_s {
        Some(m) => format!(
            "Time since each backup was taken (the data you would lose). Bars past the dashed line are older than the maximum age of {}.",
            human_duration(m as f64)
        ),
        None => {
            "Time since each backup was taken (the data you would lose). No maximum age was set."
                .into()
        }
    };
    format!(
        "<section class=\"panel\"><h2>Recovery point: backup age</h2><div class=\"sub\">{}</div>{}{}</section>\n",
        esc(&sub),
        legend(&present_statuses(report.backups.iter())),
        if bars.is_empty() {
            "<p>No backups.</p>".into()
        } else {
            bar_chart(&bars, limit)
        }
    )
}

/// `:tag` unless the tag is `latest` (keeps chart labels short).
fn tag_suffix(b: &BackupResult) -> String {
    if b.tag == "latest" {
        String::new()
    } else {
        format!(":{}", b.tag)
    }
}

fn restore_panel(report: &DrillReport) -> String {
    let mut restored: Vec<&BackupResult> = report
        .backups
        .iter()
        .filter(|b| b.restore_s.is_some())
        .collect();
    restored.sort_by(|a, b| {
        b.restore_s
            .unwrap_or(0.0)
            .total_cmp(&a.restore_s.unwrap_or(0.0))
    });
    let bars: Vec<Bar> = restored
        .iter()
        .map(|b| Bar {
            label: format!("{}/{}", b.namespace, b.workspace) + &tag_suffix(b),
            value: b.restore_s,
            color: color(b.status),
            text: format!(
                "{} · {}",
                b.restore_s.map(human_seconds).unwrap_or_default(),
                b.bytes.map(human_bytes).unwrap_or_default()
            ),
            tooltip: format!(
                "{} — restored {} ({} files) in {} at {}/s",
                b.name(),
                b.bytes.map(human_bytes).unwrap_or_default(),
                b.files.unwrap_or(0),
                b.restore_s.map(human_seconds).unwrap_or_default(),
                b.throughput_bps
                    .map(|r| human_bytes(r as u64))
                    .unwrap_or_default()
            ),
        })
        .collect();
    let not_restored = report.backups.len() - restored.len();
    let mut sub = "How long each restore took: download, verify, unpack and move into place (the recovery-time estimate).".to_owned();
    if not_restored > 0 {
        sub.push_str(&format!(
            " {not_restored} backup(s) could not be restored and are not shown."
        ));
    }
    format!(
        "<section class=\"panel\"><h2>Recovery time: restore duration</h2><div class=\"sub\">{}</div>{}{}</section>\n",
        esc(&sub),
        legend(&present_statuses(restored.iter().copied())),
        if bars.is_empty() {
            "<p>No backup was restored.</p>".into()
        } else {
            bar_chart(&bars, None)
        }
    )
}

/// `sha256:` digests cut to their first 12 hex digits (the full text is in the tooltip).
fn shorten_digests(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("sha256:") {
        let hex_start = at + "sha256:".len();
        let hex_len = rest[hex_start..]
            .bytes()
            .take_while(u8::is_ascii_hexdigit)
            .count();
        out.push_str(&rest[..hex_start]);
        if hex_len == 64 {
            out.push_str(&rest[hex_start..hex_start + 12]);
            out.push('\u{2026}');
        } else {
            out.push_str(&rest[hex_start..hex_start + hex_len]);
        }
        rest = &rest[hex_start + hex_len..];
    }
    out.push_str(rest);
    out
}

/// `2026-11-25 15:50` (UTC) from an RFC 3339 time (as given when it does not parse).
fn short_time(created: Option<&str>) -> String {
    match created.map(chrono::DateTime::parse_from_rfc3339) {
        Some(Ok(t)) => t
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M")
            .to_string(),
        Some(Err(_)) => created.unwrap_or_default().to_owned(),
        None => "-".into(),
    }
}

fn num_cell(value: Option<f64>, text: String) -> String {
    match value {
        Some(v) => format!("<td class=\"n\" data-v=\"{v}\">{}</td>", esc(&text)),
        None => "<td class=\"n\" data-v=\"\">-</td>".to_owned(),
    }
}

fn table(report: &DrillReport) -> String {
    let mut out = String::from(
        "<section class=\"panel\"><h2>Backups</h2><div class=\"sub\">Click a column to sort.</div>\n\
         <table class=\"sortable\"><thead><tr><th data-type=\"num\">Status</th><th>Backup</th><th>Format</th>\
         <th>Created (UTC)</th><th data-type=\"num\">Age</th><th data-type=\"num\">Size</th><th data-type=\"num\">Files</th>\
         <th data-type=\"num\">Restore</th><th data-type=\"num\">Throughput</th><th>Reason</th></tr></thead><tbody>\n",
    );
    // Failures first, worst first; then by name.
    let mut rows: Vec<&BackupResult> = report.backups.iter().collect();
    rows.sort_by_key(|b| (severity(b.status), b.name()));
    for b in rows {
        let digest = b
            .digest
            .as_deref()
            .map(|d| &d[..d.len().min(19)])
            .unwrap_or("");
        let _ = writeln!(
            out,
            "<tr><td data-v=\"{}\"><span class=\"chip {}\">{}</span></td>\
             <td class=\"name\">{}<small>{}</small></td><td>{}</td><td class=\"when\" title=\"{}\">{}</td>{}{}{}{}{}<td class=\"reason\" title=\"{}\">{}</td></tr>",
            Status::ALL
                .iter()
                .rposition(|&s| s == b.status)
                .unwrap_or(0),
            css_class(b.status),
            esc(b.status.label()),
            esc(&b.name()),
            esc(digest),
            esc(b.format.as_deref().unwrap_or("-")),
            esc(b.created.as_deref().unwrap_or("")),
            esc(&short_time(b.created.as_deref())),
            num_cell(b.age_s, b.age_s.map(human_duration).unwrap_or_default()),
            num_cell(
                b.bytes.map(|v| v as f64),
                b.bytes.map(human_bytes).unwrap_or_default()
            ),
            num_cell(
                b.files.map(|v| v as f64),
                b.files.map(|f| f.to_string()).unwrap_or_default()
            ),
            num_cell(
                b.restore_s,
                b.restore_s.map(human_seconds).unwrap_or_default()
            ),
            num_cell(
                b.throughput_bps,
                b.throughput_bps
                    .map(|r| format!("{}/s", human_bytes(r as u64)))
                    .unwrap_or_default()
            ),
            esc(b.reason.as_deref().unwrap_or("")),
            esc(&shorten_digests(b.reason.as_deref().unwrap_or(""))),
        );
    }
    out.push_str("</tbody></table>\n");
    if !report.ignored.is_empty() {
        out.push_str("<div class=\"ignored\">Ignored (not workspace backups): ");
        let items: Vec<String> = report
            .ignored
            .iter()
            .map(|i| format!("<code>{}</code> ({})", esc(&i.repository), esc(&i.reason)))
            .collect();
        out.push_str(&items.join(", "));
        out.push_str("</div>\n");
    }
    out.push_str("</section>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::report::tests::sample_report;

    #[test]
    fn report_is_self_contained_escaped_and_names_every_backup_and_reason() {
        let report = sample_report();
        let page = html(&report);
        assert!(page.starts_with("<!DOCTYPE html>"));
        // No network: nothing is loaded from anywhere.
        for needle in ["http://", "https://", "src=", "<link", "@import", "url("] {
            let allowed = page.matches("http://www.w3.org/2000/svg").count();
            let found = page.matches(needle).count();
            assert!(
                found == 0 || (needle == "http://" && found == allowed),
                "{needle} in the page"
            );
        }
        assert!(page.contains("DRILL FAILED"));
        assert!(
            page.contains("team-a/&lt;ops&gt;:latest"),
            "names are escaped"
        );
        assert!(!page.contains("<ops>"));
        for b in &report.backups {
            assert!(page.contains(&esc(&b.name())), "{}", b.name());
            if let Some(r) = &b.reason {
                assert!(page.contains(&esc(r)), "{r}");
            }
        }
        // Two charts; the age chart has the max-age line; one table row per backup.
        assert_eq!(page.matches("<svg").count(), 2);
        assert!(page.contains("max age 1d"));
        assert_eq!(
            page.matches("<tr><td data-v=").count(),
            report.backups.len()
        );
        assert!(page.contains("table.sortable"));
        // The table lists what needs attention first.
        let table = &page[page.find("<table").unwrap()..];
        let at = |name: &str| table.find(name).unwrap();
        assert!(at("team-a/db:latest") < at("team-a/docs:latest"));
        assert!(at("team-a/docs:latest") < at("team-a/web|ui:latest"));
        assert!(at("team-a/web|ui:latest") < at("team-a/api:latest"));
    }

    #[test]
    fn passing_report_says_so() {
        let mut report = sample_report();
        report.backups.retain(|b| b.status == Status::Ok);
        report.summary = crate::drill::Summary::of(&report.backups);
        let page = html(&report);
        assert!(page.contains("DRILL PASSED") && !page.contains("DRILL FAILED"));
    }

    #[test]
    fn ticks_are_round_numbers_within_the_axis() {
        assert_eq!(ticks(10.0, 1.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(100_000.0, 3600.0);
        assert!(t.iter().all(|&v| v <= 100_000.0) && t.len() >= 3, "{t:?}");
        assert_eq!(time_unit(30.0).1, "s");
        assert_eq!(time_unit(30_000.0).1, "h");
        assert_eq!(truncate("abcdef", 4), "abc\u{2026}");
        assert_eq!(format_tick(0.025), "0.025");
        assert_eq!(format_tick(2.0), "2");
        let d = "ab".repeat(32);
        assert_eq!(
            shorten_digests(&format!("blob sha256:{d} in x, sha256:12")),
            "blob sha256:abababababab\u{2026} in x, sha256:12"
        );
    }
}
