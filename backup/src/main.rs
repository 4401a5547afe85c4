//! `wsr-backup`: back up a workspace directory to an OCI registry or an OCI layout.
//!
//! A thin shell over the `wsr_backup` library: parse flags (or upstream DWO's environment with
//! `--dwo-env`), render progress, print the report, map errors to exit codes.

use anyhow::Context as _;
use clap::Parser;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use wsr_backup::{BackupError, BackupOptions, Format, Progress};
use wsr_format::reference::{Reference, parse_registry_path, workspace_reference};
use wsr_format::transport::{ConnectOptions, TransportError, apply_oras_extra_args};

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
    /// zstd worker threads (default: number of CPUs). The output is identical for any value.
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
    progress: ProgressArg,
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

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ProgressArg {
    Auto,
    Always,
    Never,
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
    Ok(BackupOptions {
        source: cli.source.clone().expect("clap requires --source"),
        to,
        format,
        workspace: cli.workspace.clone(),
        namespace: cli.namespace.clone(),
        workspace_id: cli.workspace_id.clone(),
        level: cli
            .level
            .unwrap_or(if format == Format::Native { 3 } else { 1 }),
        workers: cli
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32)),
        keep: cli.keep.map(|k| k as usize),
        skip_unreadable: cli.skip_unreadable,
        full: cli.full,
        connect: connect_options(&cli.connect),
    })
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
    Ok(BackupOptions {
        source,
        to,
        format,
        workspace: Some(name),
        namespace: Some(namespace),
        workspace_id: var("WORKSPACE_ID"),
        level: cli
            .level
            .unwrap_or(if format == Format::Native { 3 } else { 1 }),
        workers: cli
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32)),
        keep: cli.keep.map(|k| k as usize),
        skip_unreadable: cli.skip_unreadable,
        full: cli.full,
        connect,
    })
}

#[derive(Debug)]
struct UsageError(String);
impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

fn exit_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<UsageError>().is_some()
        || e.downcast_ref::<wsr_format::reference::InvalidReference>()
            .is_some()
    {
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

fn transport_exit_code(t: &TransportError) -> i32 {
    match t {
        TransportError::Connect { .. } | TransportError::Tls { .. } => 4,
        t if t.is_auth() => 5,
        TransportError::Config(_) => 2,
        _ => 6,
    }
}

/// Kubernetes shows `/dev/termination-log` as the container's termination message; the
/// operator copies it into `last-backup-error`.
fn write_termination_log(message: &str) {
    let line: String = message
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(1024)
        .collect();
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open("/dev/termination-log")
        .and_then(|mut f| {
            use std::io::Write;
            writeln!(f, "{line}")
        });
}

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("WSR_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

/// Renders [`Progress`]: an indicatif bar on a terminal, a log line every 10 s otherwise.
struct Reporter {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reporter {
    fn finish(mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn spawn_progress(progress: Arc<Progress>, mode: ProgressArg) -> Reporter {
    if mode == ProgressArg::Never {
        return Reporter {
            stop: None,
            thread: None,
        };
    }
    let tty = mode == ProgressArg::Always || std::io::stderr().is_terminal();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let bar = tty.then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("valid template"),
            );
            bar
        });
        let tick = if tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(10)
        };
        let started = std::time::Instant::now();
        loop {
            let done =
                stopped.recv_timeout(tick) != Err(std::sync::mpsc::RecvTimeoutError::Timeout);
            let (entries, total_entries) = (
                progress.entries.load(Ordering::Relaxed),
                progress.total_entries.load(Ordering::Relaxed),
            );
            let (bytes, total_bytes) = (
                progress.bytes.load(Ordering::Relaxed),
                progress.total_bytes.load(Ordering::Relaxed),
            );
            match &bar {
                Some(bar) => {
                    bar.set_length(total_bytes);
                    bar.set_position(bytes);
                    bar.set_message(format!(
                        "{entries}/{total_entries} files, uploaded {}",
                        human(progress.uploaded.load(Ordering::Relaxed))
                    ));
                }
                None if !done => {
                    let rate = bytes as f64 / started.elapsed().as_secs_f64().max(0.001);
                    tracing::info!(
                        "progress: {entries}/{total_entries} entries, {}/{} ({}/s), uploaded {}",
                        human(bytes),
                        human(total_bytes),
                        human(rate as u64),
                        human(progress.uploaded.load(Ordering::Relaxed))
                    );
                }
                None => {}
            }
            if done {
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
                return;
            }
        }
    });
    Reporter {
        stop: Some(stop),
        thread: Some(thread),
    }
}
