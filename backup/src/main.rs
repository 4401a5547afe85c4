//! `wsr-backup`: back up a workspace directory to an OCI registry or an OCI layout.
//!
//! A thin shell over the `wsr_backup` library: parse flags (or upstream DWO's environment with
//! `--dwo-env`, read by `wsr_backup::dwo_env`), run, print the report, map errors to exit codes.

use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use wsr_backup::dwo_env::{self, DwoEnvError};
use wsr_backup::{BackupError, BackupOptions, Format, Progress, Tuning};
use wsr_cli::{
    ConnectArgs, ProgressMode, Sample, UsageError, block_on_with_progress, finish, human,
    init_process, is_usage_error, transport_exit_code,
};
use wsr_format::reference::{Reference, parse_registry_path, workspace_reference};

const EXIT_CODES: &str = "\
Exit codes:
  0  backup published
  1  unexpected internal error
  2  invalid arguments or environment
  3  source problem (missing, unreadable, changed during the backup, or more entries
     than a restore accepts)
  4  registry unreachable, its name not resolved, or TLS verification failed
  5  authentication or authorisation failed
  6  other registry error (after retries); the moving tag was not changed

Environment:
  WSR_RETRY_SECONDS         how long one registry operation is retried after transient
                            failures (connect errors, resets, stalls, 5xx, 429; Retry-After
                            honoured up to 30 s), from its first failure (default 60; 0: no retries)
  WSR_IDLE_TIMEOUT_SECONDS  no progress for this long is a stalled registry (default 60)
  WSR_RESOLV_CONF           resolver settings (nameservers, search, ndots) read instead
                            of /etc/resolv.conf; names resolve as glibc resolves them
  WSR_HOSTS_FILE            host table read instead of /etc/hosts";

/// Back up a workspace directory as an OCI artifact.
///
/// Publishes in a safe order: layer blobs (each ending with its file index) and config, the
/// manifest under an immutable time-stamped tag (wsr-YYYYMMDDTHHMMSSmmmZ), then the moving tag
/// (usually `latest`) last. A failure at any point leaves the previous `latest` intact.
///
/// The native format is incremental: layers whose files are unchanged (same names, sizes,
/// modes and nanosecond mtimes) are reused from the previous backup at the same tag without
/// being read or uploaded again.
#[derive(Parser, Debug)]
#[command(name = "wsr-backup", version, after_help = EXIT_CODES)]
struct Cli {
    /// Directory to back up (its contents become the archive root).
    #[arg(long, value_name = "DIR", required_unless_present = "dwo_env")]
    source: Option<PathBuf>,
    /// Destination: HOST[:PORT]/PATH[:TAG] or oci:DIR[:TAG]. With --workspace/--namespace and
    /// --registry instead, the DWO convention <registry>/<namespace>/<workspace>:latest is used.
    #[arg(long, value_name = "REF")]
    to: Option<String>,
    /// Registry path prefix for the DWO naming convention (HOST[:PORT][/PREFIX] or oci:DIR).
    #[arg(long, value_name = "PATH", conflicts_with = "to")]
    registry: Option<String>,
    /// DevWorkspace name, recorded in the artifact.
    #[arg(long, value_name = "NAME")]
    workspace: Option<String>,
    /// DevWorkspace namespace, recorded in the artifact.
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// DevWorkspace id, recorded in the artifact.
    #[arg(long, value_name = "ID")]
    workspace_id: Option<String>,
    /// Artifact format: native (incremental tar+zstd layers) or dwo (one tar.gz, as upstream).
    #[arg(long, value_enum, default_value = "native")]
    format: FormatArg,
    /// Compression level: zstd 1-19 for native (default 3), gzip 1-9 for dwo (default 1).
    #[arg(long, value_name = "N")]
    level: Option<i32>,
    /// Layers archived and compressed at once (default: one per core, at most 4; each uses one
    /// core); twice as many are uploading, more when layers are small. The output is identical
    /// for any value.
    #[arg(long, value_name = "N")]
    workers: Option<u32>,
    /// Keep the newest N time-stamped backups; delete older ones (by digest) after publishing.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    keep: Option<u64>,
    /// Record unreadable files and directories in the artifact instead of failing.
    #[arg(long)]
    skip_unreadable: bool,
    /// Ignore the previous backup and archive every layer again.
    #[arg(long)]
    full: bool,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Progress display: bars on a terminal, periodic log lines otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
    /// Print the report as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Read the upstream DWO backup Job environment (BACKUP_SOURCE_PATH, DEVWORKSPACE_BACKUP_REGISTRY,
    /// DEVWORKSPACE_NAMESPACE, DEVWORKSPACE_NAME, WORKSPACE_ID, REGISTRY_AUTH_FILE, ORAS_EXTRA_ARGS,
    /// WSR_FORMAT, WSR_KEEP: time-stamped backups kept, default 5) instead of flags. This is what `/workspace-recovery.sh --backup` runs.
    #[arg(long)]
    dwo_env: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum FormatArg {
    Native,
    Dwo,
}

fn main() {
    let cli = Cli::parse();
    init_process();
    finish("wsr-backup", run(cli), exit_code, step);
}

fn run(cli: Cli) -> anyhow::Result<String> {
    let options = if cli.dwo_env {
        let options = dwo_env::backup_options(
            &|name| std::env::var(name).ok(),
            tuning(&cli),
            cli.connect.options(),
        )?;
        tracing::info!(source = %options.source.display(), to = %options.to, format = ?options.format, "DWO backup");
        options
    } else {
        options_from_flags(&cli)?
    };
    let progress = Arc::new(Progress::default());
    let sample = sampler(progress.clone());
    let report =
        block_on_with_progress(cli.progress, sample, wsr_backup::run(&options, progress))??;
    if cli.json {
        // The report's figures as the termination message too: a controller reads them from
        // the pod status when it cannot read the log (one line, well under 1024 characters).
        let summary = serde_json::json!({
            "reference": report.reference, "digest": report.digest, "files": report.files,
            "bytes": report.bytes, "uploaded_bytes": report.uploaded_bytes,
            "duration_s": report.duration_s,
        });
        wsr_cli::write_termination_log(&summary.to_string());
        return Ok(serde_json::to_string(&report).expect("report serialises"));
    }
    let mut text = format!(
        "backed up {} files, {} dirs, {} symlinks ({}) to {} in {:.1}s; uploaded {} ({} of {} layers reused)",
        report.files,
        report.dirs,
        report.symlinks,
        human(report.bytes),
        report.reference,
        report.duration_s,
        human(report.uploaded_bytes),
        report.reused_layers,
        report.layers
    );
    for s in &report.skipped {
        text.push_str(&format!("\nskipped: {s}"));
    }
    Ok(text)
}

fn tuning(cli: &Cli) -> Tuning {
    Tuning {
        level: cli.level,
        workers: cli.workers,
        keep: cli.keep.map(|k| k as usize),
        skip_unreadable: cli.skip_unreadable,
        full: cli.full,
    }
}

fn options_from_flags(cli: &Cli) -> anyhow::Result<BackupOptions> {
    let to = match (&cli.to, &cli.registry) {
        (Some(to), _) => to.parse::<Reference>()?,
        (None, Some(registry)) => {
            let (Some(ns), Some(ws)) = (&cli.namespace, &cli.workspace) else {
                anyhow::bail!(UsageError(
                    "--registry needs --namespace and --workspace".into()
                ));
            };
            workspace_reference(&parse_registry_path(registry)?, ns, ws)?
        }
        (None, None) => anyhow::bail!(UsageError(
            "give --to REF, or --registry with --namespace and --workspace".into()
        )),
    };
    let format = match cli.format {
        FormatArg::Native => Format::Native,
        FormatArg::Dwo => Format::Dwo,
    };
    let source = cli.source.clone().expect("clap requires --source");
    let mut options = BackupOptions::new(source, to, format, tuning(cli), cli.connect.options());
    options.workspace = cli.workspace.clone();
    options.namespace = cli.namespace.clone();
    options.workspace_id = cli.workspace_id.clone();
    Ok(options)
}

fn exit_code(e: &anyhow::Error) -> i32 {
    if is_usage_error(e.as_ref()) || e.is::<DwoEnvError>() {
        return 2;
    }
    match e.downcast_ref::<BackupError>() {
        Some(BackupError::DigestDestination(_)) => 2,
        Some(
            BackupError::Source { .. }
            | BackupError::Unreadable { .. }
            | BackupError::Changed { .. }
            | BackupError::TooManyEntries { .. },
        ) => 3,
        Some(BackupError::Transport(t)) => transport_exit_code(t),
        _ => 1,
    }
}

/// The step that failed, named in the error message and the termination message.
fn step(e: &anyhow::Error) -> Option<&'static str> {
    if is_usage_error(e.as_ref()) || e.is::<DwoEnvError>() {
        return Some("arguments");
    }
    Some(match e.downcast_ref::<BackupError>()? {
        BackupError::DigestDestination(_) => "arguments",
        BackupError::Source { .. }
        | BackupError::Unreadable { .. }
        | BackupError::Changed { .. }
        | BackupError::TooManyEntries { .. } => "read source",
        BackupError::Archive(_) => "archive",
        BackupError::Transport(t) => t.step().unwrap_or("upload"),
    })
}

fn sampler(progress: Arc<Progress>) -> impl Fn() -> Sample + Send + 'static {
    move || Sample {
        entries: progress.entries.load(Ordering::Relaxed),
        total_entries: progress.total_entries.load(Ordering::Relaxed),
        bytes: progress.bytes.load(Ordering::Relaxed),
        total_bytes: progress.total_bytes.load(Ordering::Relaxed),
        transfer: ("uploaded", progress.uploaded.load(Ordering::Relaxed)),
    }
}
