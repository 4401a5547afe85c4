//! `wsr-backup`: back up a workspace directory to an OCI registry or an OCI layout.
//!
//! A thin shell over the `wsr_backup` library: parse flags (or upstream DWO's environment with
//! `--dwo-env`), render progress, print the report, map errors to exit codes.

use anyhow::Context as _;
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use wsr_backup::{BackupError, BackupOptions, Format, Progress};
use wsr_cli::{
    ProgressMode, Reporter, Sample, UsageError, human, init_logging, is_usage_error,
    transport_exit_code, write_termination_log,
};
use wsr_format::reference::{Reference, parse_registry_path, workspace_reference};
use wsr_transport::{ConnectOptions, apply_oras_extra_args};

const EXIT_CODES: &str = "\
Exit codes:
  0  backup published
  1  unexpected internal error
  2  invalid arguments or environment
  3  source problem (missing, unreadable, or changed during the backup)
  4  registry unreachable or TLS verification failed
  5  authentication or authorisation failed
  6  other registry error (after retries); nothing was tagged";

/// Back up a workspace directory as an OCI artifact.
///
/// Publishes in a safe order: layer blobs, file index and config, the manifest by digest, an
/// immutable time-stamped tag (wsr-YYYYMMDDTHHMMSSmmmZ), then the moving tag (usually
/// `latest`) last. A failure at any point leaves the previous `latest` intact.
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
    /// Layers archived, compressed and uploaded at once (default 4; each uses one core). The
    /// output is identical for any value.
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
    /// WSR_FORMAT) instead of flags. This is what `/workspace-recovery.sh --backup` runs.
    #[arg(long)]
    dwo_env: bool,
}

#[derive(clap::Args, Debug)]
struct ConnectArgs {
    /// Use plain HTTP instead of HTTPS.
    #[arg(long)]
    plain_http: bool,
    /// Skip TLS certificate verification.
    #[arg(long)]
    insecure: bool,
    /// Trust this CA certificate (PEM) in addition to the system roots.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Docker config.json with credentials (default: REGISTRY_AUTH_FILE, then DOCKER_CONFIG, then ~/.docker).
    #[arg(long, value_name = "FILE")]
    auth_file: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum FormatArg {
    Native,
    Dwo,
}

fn main() {
    let cli = Cli::parse();
    init_logging();
    let json = cli.json;
    let code = match run(cli) {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("report serialises")
                );
            } else {
                println!(
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
                    println!("skipped: {s}");
                }
            }
            0
        }
        Err(e) => {
            let code = exit_code(&e);
            let message = format!("{e:#}");
            eprintln!("wsr-backup: error: {message}");
            write_termination_log(&message);
            code
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<wsr_backup::BackupReport> {
    let options = if cli.dwo_env {
        options_from_env(&cli)?
    } else {
        options_from_flags(&cli)?
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let progress = Arc::new(Progress::default());
    let reporter = spawn_progress(progress.clone(), cli.progress);
    let result = runtime.block_on(wsr_backup::run(&options, progress));
    reporter.finish();
    Ok(result?)
}

fn connect_options(args: &ConnectArgs) -> ConnectOptions {
    ConnectOptions {
        plain_http: args.plain_http,
        insecure: args.insecure,
        ca_file: args.ca_file.clone(),
        auth_file: args.auth_file.clone(),
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
    let mut options = tuning_options(cli, source, to, format, connect_options(&cli.connect));
    options.workspace = cli.workspace.clone();
    options.namespace = cli.namespace.clone();
    options.workspace_id = cli.workspace_id.clone();
    Ok(options)
}

/// Options from the flags both modes share; the workspace identity is left for the caller.
fn tuning_options(
    cli: &Cli,
    source: PathBuf,
    to: Reference,
    format: Format,
    connect: ConnectOptions,
) -> BackupOptions {
    BackupOptions {
        source,
        to,
        format,
        workspace: None,
        namespace: None,
        workspace_id: None,
        level: cli
            .level
            .unwrap_or(if format == Format::Native { 3 } else { 1 }),
        workers: cli.workers.unwrap_or(4),
        keep: cli.keep.map(|k| k as usize),
        skip_unreadable: cli.skip_unreadable,
        full: cli.full,
        connect,
    }
}

/// The upstream `project-backup` contract: the same variables `workspace-recovery.sh --backup` reads.
fn options_from_env(cli: &Cli) -> anyhow::Result<BackupOptions> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let required = |name: &str| {
        var(name).ok_or_else(|| {
            UsageError(format!(
                "environment variable {name} is required with --dwo-env"
            ))
        })
    };
    let source = PathBuf::from(required("BACKUP_SOURCE_PATH")?);
    let registry = required("DEVWORKSPACE_BACKUP_REGISTRY")?;
    let namespace = required("DEVWORKSPACE_NAMESPACE")?;
    let name = required("DEVWORKSPACE_NAME")?;
    let mut connect = connect_options(&cli.connect);
    connect.auth_file = var("REGISTRY_AUTH_FILE")
        .map(PathBuf::from)
        .or(connect.auth_file);
    if let Some(extra) = var("ORAS_EXTRA_ARGS") {
        apply_oras_extra_args(&mut connect, &extra).map_err(UsageError)?;
    }
    let format = match var("WSR_FORMAT").as_deref() {
        None | Some("dwo") => Format::Dwo,
        Some("native") => Format::Native,
        Some(other) => anyhow::bail!(UsageError(format!(
            "WSR_FORMAT={other:?}: expected native or dwo"
        ))),
    };
    let to = workspace_reference(&parse_registry_path(&registry)?, &namespace, &name)?;
    tracing::info!(source = %source.display(), to = %to, ?format, "DWO backup");
    let mut options = tuning_options(cli, source, to, format, connect);
    options.workspace = Some(name);
    options.namespace = Some(namespace);
    options.workspace_id = var("WORKSPACE_ID");
    Ok(options)
}

fn exit_code(e: &anyhow::Error) -> i32 {
    if is_usage_error(e.as_ref()) {
        return 2;
    }
    match e.downcast_ref::<BackupError>() {
        Some(BackupError::Invalid(_)) => 2,
        Some(
            BackupError::Source { .. }
            | BackupError::Unreadable { .. }
            | BackupError::Changed { .. },
        ) => 3,
        Some(BackupError::Transport(t)) => transport_exit_code(t),
        _ => 1,
    }
}

fn spawn_progress(progress: Arc<Progress>, mode: ProgressMode) -> Reporter {
    Reporter::spawn(mode, move || Sample {
        entries: progress.entries.load(Ordering::Relaxed),
        total_entries: progress.total_entries.load(Ordering::Relaxed),
        bytes: progress.bytes.load(Ordering::Relaxed),
        total_bytes: progress.total_bytes.load(Ordering::Relaxed),
        transfer: ("uploaded", progress.uploaded.load(Ordering::Relaxed)),
    })
}
