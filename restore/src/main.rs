//! `wsr-restore`: restore, list, inspect and verify workspace backups; `init` is the
//! init-container mode. A thin shell over the `wsr_restore` library, plus the binary-only
//! cluster modes in `in_cluster/` (`--in-cluster`, `--on-next-start`, `--clear`).

mod drill_cli;
/// Binary-only: the library (the restore engine) never depends on kube.
mod in_cluster;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use wsr_cli::{
    ConnectArgs, ProgressMode, Reporter, Sample, UsageError, human, init_process, is_usage_error,
    report_error, transport_exit_code, write_termination_log,
};
use wsr_format::reference::{Reference, Target, parse_registry_path, workspace_reference};
use wsr_restore::init::{InitError, InitOutcome};
use wsr_restore::{Progress, RestoreError, RestoreOptions, RestoreReport};
use wsr_transport::ConnectOptions;

const EXIT_CODES: &str = "\
Exit codes:
  0  done (init: also when the target was not empty and nothing was restored)
  1  unexpected internal error
  2  invalid arguments or environment
  3  target problem (not empty without --force, not writable, no space)
  4  registry unreachable, its name not resolved, or TLS verification failed
  5  authentication or authorisation failed
  6  backup not found, unreadable, or failed verification
     (drill: a backup failed or is older than --max-age)

Environment:
  WSR_RETRY_SECONDS         how long one registry operation is retried after transient
                            failures (connect errors, resets, stalls, 5xx, 429; Retry-After
                            honoured up to 30 s), from its first failure (default 60; 0: no retries)
  WSR_IDLE_TIMEOUT_SECONDS  no progress for this long is a stalled registry (default 60)
  WSR_RESOLV_CONF           resolver settings (nameservers, search, ndots) read instead
                            of /etc/resolv.conf; names resolve as glibc resolves them
  WSR_HOSTS_FILE            host table read instead of /etc/hosts";

/// Restore a workspace backup into an empty directory, verified and atomically.
///
/// Reads wsr native backups and upstream DWO backups (any single-layer gzip/zstd tar artifact).
/// Every blob digest is checked; native backups are also checked layer by layer and file by
/// file against their index. The tree is unpacked into a hidden staging directory inside the
/// target and moved into place only once complete: an interrupted restore leaves the target
/// as it was, and a rerun completes it.
#[derive(Parser, Debug)]
#[command(name = "wsr-restore", version, after_help = EXIT_CODES, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    restore: RestoreArgs,
    #[command(flatten)]
    cluster: in_cluster::ClusterArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args, Debug, Clone)]
struct Common {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Progress display: bars on a terminal, periodic log lines otherwise.
    #[arg(long, value_enum, default_value = "auto", global = true)]
    progress: ProgressMode,
    /// Print the result as one JSON object on the last line of stdout.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Args, Debug, Clone)]
struct RestoreArgs {
    /// Backup to restore: HOST[:PORT]/PATH[:TAG|@DIGEST] or oci:DIR[:TAG|@DIGEST].
    #[arg(long, value_name = "REF", conflicts_with_all = ["registry"])]
    from: Option<String>,
    /// Registry path for the DWO convention <registry>/<namespace>/<workspace> (with --namespace, --workspace).
    #[arg(long, value_name = "PATH")]
    registry: Option<String>,
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    #[arg(long, value_name = "NAME")]
    workspace: Option<String>,
    /// Tag to restore with --registry (default latest).
    #[arg(long, value_name = "TAG", conflicts_with = "digest")]
    tag: Option<String>,
    /// Digest to restore with --registry.
    #[arg(long, value_name = "DIGEST")]
    digest: Option<String>,
    /// Target directory (created if missing; must be empty unless --force).
    #[arg(long, value_name = "DIR")]
    to: Option<PathBuf>,
    /// Restore only these paths (relative to the workspace root).
    #[arg(long, value_name = "PATH", num_args = 1..)]
    paths: Option<Vec<String>>,
    /// Move the target's existing content to a time-stamped sibling, then restore. Nothing is deleted.
    #[arg(long)]
    force: bool,
    /// Refuse backups that would expand beyond this many bytes (free space always bounds it).
    #[arg(long, value_name = "BYTES")]
    max_size: Option<u64>,
    /// Layers unpacked in parallel (default: one per core, at most 4); as many more, and at
    /// least 8, are requested ahead, so round trips overlap the unpacking.
    #[arg(long, value_name = "N", default_value_t = wsr_restore::default_parallel(), hide_default_value = true)]
    parallel: usize,
    /// Do not flush the restored files to disk before marking the restore complete. Only for
    /// restores you throw away: after a power loss such a tree may hold empty files.
    #[arg(long)]
    no_sync: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List backups below a registry path: workspace, namespace, tags, created, size, format.
    /// With --in-cluster: the namespace's DevWorkspaces, their last backup and their backups.
    List {
        /// Registry path (HOST[:PORT][/PREFIX] or oci:DIR); with --in-cluster, optional (default:
        /// where each workspace's last backup went).
        #[arg(long, value_name = "PATH", required_unless_present = "in_cluster")]
        registry: Option<String>,
        /// List the namespace's DevWorkspaces through the API server (needs --namespace).
        #[arg(long, requires = "namespace")]
        in_cluster: bool,
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
        #[arg(long, value_name = "NAME")]
        workspace: Option<String>,
    },
    /// Show a backup's manifest, config and totals.
    Inspect {
        /// HOST[:PORT]/PATH[:TAG|@DIGEST] or oci:DIR[:TAG|@DIGEST].
        reference: String,
    },
    /// Download and verify a backup completely (blobs, layers, every file) without writing files.
    Verify {
        reference: String,
        /// Layers verified in parallel (default: one per core, at most 4).
        #[arg(long, value_name = "N", default_value_t = wsr_restore::default_parallel(), hide_default_value = true)]
        parallel: usize,
    },
    /// Disaster-recovery drill: restore every backup below a registry path into a scratch
    /// directory, check it file by file, and report status, age and restore time of each.
    Drill(drill_cli::DrillArgs),
    /// Init-container mode with upstream DWO's environment (BACKUP_IMAGE, PROJECTS_ROOT,
    /// REGISTRY_AUTH_FILE, ORAS_EXTRA_ARGS; WSR_RESTORE_OPTIONAL=true to start empty on failure).
    /// A non-empty PROJECTS_ROOT is left alone without contacting the registry.
    Init,
}

fn main() {
    let cli = Cli::parse();
    init_process();
    let json = cli.common.json;
    let code = match run(cli) {
        Ok(Output::Json(value, text)) => {
            if json {
                println!("{value}");
            } else {
                println!("{text}");
            }
            0
        }
        Ok(Output::Failed(value, text, code)) => {
            if json {
                println!("{value}");
            } else {
                println!("{text}");
                let summary = text.lines().last().unwrap_or_default();
                write_termination_log(summary);
            }
            code
        }
        Err(e) => {
            report_error("wsr-restore", &e, step(&e));
            exit_code(&e)
        }
    };
    std::process::exit(code);
}

enum Output {
    Json(serde_json::Value, String),
    /// A result to print that still fails the command (a drill that found bad backups).
    Failed(serde_json::Value, String, i32),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<Output> {
    let connect = cli.common.connect.options();
    match cli.command {
        None if cli.cluster.in_cluster || cli.cluster.on_next_start || cli.cluster.clear => {
            cluster_mode(&cli.restore, &cli.cluster, &connect)
        }
        None => {
            let options = restore_options(&cli.restore, connect)?;
            do_restore(&options, cli.common.progress)
        }
        Some(Command::Init) => init(connect, cli.common.progress),
        Some(Command::Drill(args)) => {
            let (value, text, summary, code) = drill_cli::run(args, connect, cli.common.progress)?;
            if cli.common.json {
                // Passed or failed, the drill's counts and reasons as the termination
                // message: the operator reads a scheduled drill's result from the pod status.
                wsr_cli::write_termination_message(&summary);
            }
            Ok(match code {
                0 => Output::Json(value, text),
                _ => Output::Failed(value, text, code),
            })
        }
        Some(Command::List {
            registry,
            in_cluster: true,
            namespace,
            ..
        }) => {
            let namespace = namespace.unwrap_or_default();
            let (value, text) = runtime()?.block_on(async {
                let client = in_cluster::client(&cli.cluster).await?;
                in_cluster::list(&client, &namespace, registry.as_deref(), &connect).await
            })?;
            Ok(Output::Json(value, text))
        }
        Some(Command::List {
            registry,
            namespace,
            workspace,
            ..
        }) => {
            let registry = registry.unwrap_or_default();
            let path = parse_registry_path(&registry)?;
            let rows = runtime()?.block_on(wsr_restore::list(
                &path,
                namespace.as_deref(),
                workspace.as_deref(),
                &connect,
            ))?;
            let mut text = format!(
                "{:<20} {:<28} {:>5} {:<21} {:>10} {:>10} {:<7}\n",
                "NAMESPACE", "WORKSPACE", "TAGS", "CREATED", "SIZE", "DATA", "FORMAT"
            );
            for r in &rows {
                text.push_str(&format!(
                    "{:<20} {:<28} {:>5} {:<21} {:>10} {:>10} {:<7}{}\n",
                    r.namespace,
                    r.workspace,
                    r.tags.len(),
                    r.created.as_deref().unwrap_or("-"),
                    r.size.map(human).unwrap_or_else(|| "-".into()),
                    r.bytes.map(human).unwrap_or_else(|| "-".into()),
                    r.format.as_deref().unwrap_or("-"),
                    r.error
                        .as_ref()
                        .map(|e| format!("  error: {e}"))
                        .unwrap_or_default()
                ));
            }
            if rows.is_empty() {
                text.push_str("(no backups found)\n");
            }
            Ok(Output::Json(
                serde_json::json!({ "backups": rows }),
                text.trim_end().to_owned(),
            ))
        }
        Some(Command::Inspect { reference }) => {
            let reference: Reference = reference.parse()?;
            let inspection = runtime()?.block_on(wsr_restore::inspect(&reference, &connect))?;
            let value = serde_json::to_value(&inspection)?;
            Ok(Output::Json(
                value.clone(),
                serde_json::to_string_pretty(&value)?,
            ))
        }
        Some(Command::Verify {
            reference,
            parallel,
        }) => {
            let reference: Reference = reference.parse()?;
            let progress = Arc::new(Progress::default());
            let reporter = spawn_progress(progress.clone(), cli.common.progress);
            let report = runtime()?.block_on(wsr_restore::verify(
                &reference, &connect, parallel, progress,
            ));
            reporter.finish();
            let report = report?;
            let text = format!(
                "verified {} ({} format): {} files, {} dirs, {} symlinks, {} hard links, {}; {} layers, file index {}",
                report.reference,
                report.format,
                report.files,
                report.dirs,
                report.symlinks,
                report.hardlinks,
                human(report.bytes),
                report.layers,
                if report.verified_index {
                    "checked"
                } else {
                    "not present (tarball format: blob digest checked)"
                }
            );
            Ok(Output::Json(serde_json::to_value(&report)?, text))
        }
    }
}

/// `--in-cluster`, `--on-next-start` and `--clear`: need --namespace and --workspace.
fn cluster_mode(
    args: &RestoreArgs,
    cluster: &in_cluster::ClusterArgs,
    connect: &ConnectOptions,
) -> anyhow::Result<Output> {
    let (Some(namespace), Some(workspace)) = (&args.namespace, &args.workspace) else {
        anyhow::bail!(UsageError(
            "--in-cluster, --on-next-start and --clear need --namespace and --workspace".into()
        ));
    };
    if args.paths.is_some() {
        anyhow::bail!(UsageError(
            "--paths is not supported in the cluster modes".into()
        ));
    }
    let request = in_cluster::Request {
        namespace,
        workspace,
        from: args.from.as_deref(),
        registry: args.registry.as_deref(),
        tag: args.tag.as_deref(),
        digest: args.digest.as_deref(),
        force: args.force,
        connect,
    };
    let (value, text) = runtime()?.block_on(async {
        let client = in_cluster::client(cluster).await?;
        if cluster.in_cluster {
            in_cluster::restore(&client, &request, cluster).await
        } else {
            in_cluster::set_attributes(&client, &request, cluster.on_next_start).await
        }
    })?;
    Ok(Output::Json(value, text))
}

fn restore_options(args: &RestoreArgs, connect: ConnectOptions) -> anyhow::Result<RestoreOptions> {
    let from = match (&args.from, &args.registry) {
        (Some(from), _) => from.parse::<Reference>()?,
        (None, Some(registry)) => {
            let (Some(ns), Some(ws)) = (&args.namespace, &args.workspace) else {
                anyhow::bail!(UsageError("--registry needs --namespace and --workspace".into()));
            };
            let mut r = workspace_reference(&parse_registry_path(registry)?, ns, ws)?;
            if let Some(tag) = &args.tag {
                r.target = Target::Tag(tag.clone());
            }
            if let Some(digest) = &args.digest {
                r.target = Target::Digest(digest.parse()?);
            }
            r
        }
        (None, None) => anyhow::bail!(UsageError("give --from REF (or --registry with --namespace and --workspace) and --to DIR; see --help".into())),
    };
    let to = args
        .to
        .clone()
        .ok_or_else(|| UsageError("--to DIR is required".into()))?;
    Ok(RestoreOptions {
        from,
        to,
        paths: args.paths.clone(),
        force: args.force,
        max_size: args.max_size,
        parallel: args.parallel,
        sync: !args.no_sync,
        connect,
    })
}

fn do_restore(options: &RestoreOptions, progress_mode: ProgressMode) -> anyhow::Result<Output> {
    let progress = Arc::new(Progress::default());
    let reporter = spawn_progress(progress.clone(), progress_mode);
    let result = runtime()?.block_on(wsr_restore::restore(options, progress));
    reporter.finish();
    let report = result?;
    if options.paths.is_none() {
        termination_report(&report);
    }
    restored(&report)
}

/// A complete restore's report as the termination message (one JSON line, the format in
/// `wsr_workload::restored`): the operator reads it from the pod status and records where the
/// workspace was restored from. Partial (`--paths`) and failed restores never write it.
fn termination_report(report: &RestoreReport) {
    let restored = wsr_workload::restored::Restored {
        restored: report.reference.clone(),
        digest: report.digest.clone(),
        files: report.files,
        bytes: report.bytes,
    };
    write_termination_log(&restored.message());
}

fn restored(report: &RestoreReport) -> anyhow::Result<Output> {
    let mut text = format!(
        "restored {} ({} format) into {}: {} files, {} dirs, {} symlinks, {} hard links, {} in {:.1}s (downloaded {})",
        report.reference,
        report.format,
        report.target.as_deref().unwrap_or("-"),
        report.files,
        report.dirs,
        report.symlinks,
        report.hardlinks,
        human(report.bytes),
        report.duration_s,
        human(report.downloaded_bytes)
    );
    if let Some(aside) = &report.moved_aside {
        text.push_str(&format!("\nprevious content moved to {aside}"));
    }
    for s in &report.skipped {
        text.push_str(&format!("\nskipped: {s}"));
    }
    Ok(Output::Json(serde_json::to_value(report)?, text))
}

/// The init container (`wsr_restore::init` holds the contract).
fn init(connect: ConnectOptions, mode: ProgressMode) -> anyhow::Result<Output> {
    let progress = Arc::new(Progress::default());
    let reporter = spawn_progress(progress.clone(), mode);
    let lookup = |name: &str| std::env::var(name).ok();
    let outcome = runtime()?.block_on(wsr_restore::init::init(&lookup, connect, progress));
    reporter.finish();
    match outcome? {
        InitOutcome::NotEmpty { target, entries } => {
            let text = format!(
                "PROJECTS_ROOT '{}' is not empty ({entries} entries); skipping restore",
                target.display()
            );
            tracing::info!("{text}");
            Ok(Output::Json(
                serde_json::json!({ "skipped": true, "reason": "target not empty", "target": target }),
                text,
            ))
        }
        InitOutcome::Restored(report) => {
            termination_report(&report);
            restored(&report)
        }
        InitOutcome::FailedOptional { target, error } => {
            let error = anyhow::Error::from(error);
            tracing::warn!(
                "RESTORE FAILED; starting with an empty {} because WSR_RESTORE_OPTIONAL=true: {error:#}",
                target.display()
            );
            Ok(Output::Json(
                serde_json::json!({ "skipped": true, "reason": format!("{error:#}"), "target": target }),
                format!("WARNING: restore failed, workspace starts empty: {error:#}"),
            ))
        }
    }
}

/// The step that failed, named in the error message and the termination message.
fn step(e: &anyhow::Error) -> Option<&'static str> {
    use wsr_format::unpack::UnpackError;
    if is_usage_error(e.as_ref()) {
        return Some("arguments");
    }
    let restore = match (
        e.downcast_ref::<RestoreError>(),
        e.downcast_ref::<InitError>(),
    ) {
        (Some(e), _) | (None, Some(InitError::Restore(e))) => e,
        (None, Some(InitError::Env(_))) => return Some("arguments"),
        (None, None) => return None,
    };
    Some(match restore {
        RestoreError::Paths(_)
        | RestoreError::Unmatched { .. }
        | RestoreError::TargetName { .. } => "arguments",
        RestoreError::NotEmpty { .. }
        | RestoreError::Target { .. }
        | RestoreError::MoveAside { .. }
        | RestoreError::NoSpace { .. }
        | RestoreError::Unpack(UnpackError::Io { .. }) => "write",
        RestoreError::Transport(t) => t.step().unwrap_or("download"),
        RestoreError::Unpack(_)
        | RestoreError::Unsupported(_)
        | RestoreError::Config(_)
        | RestoreError::Corrupt(_) => "verify",
    })
}

fn exit_code(e: &anyhow::Error) -> i32 {
    if is_usage_error(e.as_ref()) {
        return 2;
    }
    if let Some(failed) = e.downcast_ref::<in_cluster::JobFailed>() {
        // The pod's own exit code when it is one of ours, so scripts see the same codes.
        return if (2..=6).contains(&failed.exit_code) {
            failed.exit_code
        } else {
            1
        };
    }
    if e.downcast_ref::<in_cluster::Refused>().is_some() {
        return 3;
    }
    match (
        e.downcast_ref::<RestoreError>(),
        e.downcast_ref::<InitError>(),
    ) {
        (Some(e), _) | (None, Some(InitError::Restore(e))) => restore_exit_code(e),
        (None, Some(InitError::Env(_))) => 2,
        (None, None) => 1,
    }
}

/// The documented exit code (see `EXIT_CODES`) for a restore engine error.
fn restore_exit_code(e: &RestoreError) -> i32 {
    use wsr_format::unpack::UnpackError;
    match e {
        RestoreError::Paths(_)
        | RestoreError::Unmatched { .. }
        | RestoreError::TargetName { .. } => 2,
        RestoreError::NotEmpty { .. }
        | RestoreError::Target { .. }
        | RestoreError::MoveAside { .. }
        | RestoreError::NoSpace { .. } => 3,
        RestoreError::Transport(t) => transport_exit_code(t),
        // A name the target cannot hold is the archive's problem, not the target's.
        RestoreError::Unpack(UnpackError::Io { source, .. })
            if source.raw_os_error() == Some(libc::ENAMETOOLONG) =>
        {
            6
        }
        RestoreError::Unpack(
            UnpackError::Io { .. }
            | UnpackError::TooLarge { .. }
            | UnpackError::TooManyEntries { .. },
        ) => 3,
        RestoreError::Unpack(_)
        | RestoreError::Unsupported(_)
        | RestoreError::Config(_)
        | RestoreError::Corrupt(_) => 6,
    }
}

fn spawn_progress(progress: Arc<Progress>, mode: ProgressMode) -> Reporter {
    Reporter::spawn(mode, move || Sample {
        entries: progress.entries.load(Ordering::Relaxed),
        total_entries: progress.total_entries.load(Ordering::Relaxed),
        bytes: progress.bytes.load(Ordering::Relaxed),
        total_bytes: progress.total_bytes.load(Ordering::Relaxed),
        transfer: ("downloaded", progress.downloaded.load(Ordering::Relaxed)),
    })
}
