//! `wsr-restore drill`: flags, progress display, and writing the table, JSON, Markdown and
//! HTML renderings of the drill report.

use anyhow::Context as _;
use std::path::PathBuf;
use std::sync::Arc;
use wsr_cli::{ProgressMode, Reporter, Sample, UsageError};
use wsr_format::reference::parse_registry_path;
use wsr_restore::drill::{self, DrillOptions, DrillProgress};
use wsr_transport::ConnectOptions;

/// Exit code when the drill ran but a backup failed or is stale (same as a failed verify).
pub const EXIT_DRILL_FAILED: i32 = 6;

#[derive(clap::Args, Debug)]
pub struct DrillArgs {
    /// Registry path to drill: HOST[:PORT][/PREFIX] (backups at PREFIX/NAMESPACE/WORKSPACE) or oci:DIR.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "from",
        required_unless_present = "from"
    )]
    registry: Option<String>,
    /// A tree of OCI layouts to drill (DIR/NAMESPACE/WORKSPACE), as oci:DIR.
    #[arg(long, value_name = "oci:DIR")]
    from: Option<String>,
    /// Only this namespace (repeatable).
    #[arg(long = "namespace", value_name = "NS")]
    namespaces: Vec<String>,
    /// Only this workspace (repeatable).
    #[arg(long = "workspace", value_name = "NAME")]
    workspaces: Vec<String>,
    /// Drill every tag, not only `latest` (or the newest tag when there is no `latest`).
    #[arg(long)]
    all_tags: bool,
    /// Backups restored at once (each needs its own scratch space).
    #[arg(long, value_name = "N", default_value_t = 2)]
    parallel: usize,
    /// Backups older than this fail as stale, e.g. 36h, 7d, 1d12h (default: no limit).
    #[arg(long, value_name = "DURATION", value_parser = drill::parse_duration)]
    max_age: Option<u64>,
    /// Directory for the scratch restores (one per backup in flight, removed after each).
    #[arg(long, value_name = "DIR")]
    scratch: Option<PathBuf>,
    /// Refuse to restore a backup expanding beyond this many bytes (free space bounds it too).
    #[arg(long, value_name = "BYTES")]
    max_size: Option<u64>,
    /// Also write a self-contained HTML report (charts, sortable table) to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Also write the report as Markdown to FILE.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

/// Runs the drill; returns (JSON, table text, the compact termination summary, exit code).
pub fn run(
    args: DrillArgs,
    connect: ConnectOptions,
    mode: ProgressMode,
) -> anyhow::Result<(serde_json::Value, String, String, i32)> {
    let source = match (&args.registry, &args.from) {
        (Some(r), _) => parse_registry_path(r)?,
        (None, Some(f)) if f.starts_with("oci:") => parse_registry_path(f)?,
        (None, Some(f)) => {
            anyhow::bail!(UsageError(format!("--from takes oci:DIR, not {f:?}")))
        }
        (None, None) => anyhow::bail!(UsageError("give --registry PATH or --from oci:DIR".into())),
    };
    let scratch = args.scratch.clone().unwrap_or_else(std::env::temp_dir);
    if !scratch.is_dir() {
        anyhow::bail!(UsageError(format!(
            "--scratch {}: not a directory",
            scratch.display()
        )));
    }
    let options = DrillOptions {
        source,
        namespaces: args.namespaces,
        workspaces: args.workspaces,
        all_tags: args.all_tags,
        parallel: args.parallel,
        max_age_s: args.max_age,
        scratch,
        max_size: args.max_size,
        connect,
    };
    let progress = Arc::new(DrillProgress::default());
    let p = progress.clone();
    let reporter = Reporter::spawn(mode, move || {
        let s = p.sample();
        Sample {
            entries: s.entries,
            total_entries: s.total_entries,
            bytes: s.bytes,
            total_bytes: s.total_bytes,
            transfer: ("downloaded", s.downloaded),
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(drill::drill(&options, progress));
    reporter.finish();
    let report = report?;
    if let Some(path) = &args.report {
        std::fs::write(path, drill::html(&report))
            .with_context(|| format!("writing the HTML report {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, drill::markdown(&report))
            .with_context(|| format!("writing the Markdown report {}", path.display()))?;
    }
    let code = if report.passed() {
        0
    } else {
        EXIT_DRILL_FAILED
    };
    Ok((
        serde_json::to_value(&report)?,
        drill::table(&report),
        drill::termination_summary(&report),
        code,
    ))
}
