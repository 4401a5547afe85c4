//! wsr-cli: the binaries' shared edge. The connection flags, logging setup, the async runtime,
//! progress rendering, the end of `main` (output, error message, termination message, exit
//! code) and exit codes for transport errors. Libraries never use it; only the `wsr-backup`
//! and `wsr-restore` binaries do, so both behave alike at the terminal and in pods. A binary is
//! then: parse flags, run, [`finish`].

use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use wsr_transport::{ConnectOptions, TransportError};

/// The registry connection flags, named as oras names them.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Use plain HTTP instead of HTTPS.
    #[arg(long, global = true)]
    pub plain_http: bool,
    /// Skip TLS certificate verification.
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Trust this CA certificate (PEM) in addition to the system roots.
    #[arg(long, value_name = "FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Docker config.json with credentials (default: REGISTRY_AUTH_FILE, then DOCKER_CONFIG, then ~/.docker).
    #[arg(long, value_name = "FILE", global = true)]
    pub auth_file: Option<PathBuf>,
    /// Client certificate (PEM) for registries that require mutual TLS; needs --key-file.
    #[arg(long, value_name = "FILE", global = true, requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long, value_name = "FILE", global = true, requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// The pod's service-account directory. For a registry whose host contains `openshift` or
    /// `svc.cluster.local`, its `service-ca.crt` and `ca.crt` are trusted and, when no other
    /// credentials for the host are given, its `token` logs in as user `serviceaccount`.
    #[arg(
        long,
        value_name = "DIR",
        global = true,
        env = "WSR_SERVICE_ACCOUNT_DIR",
        default_value = wsr_transport::DEFAULT_SERVICE_ACCOUNT_DIR
    )]
    pub service_account_dir: PathBuf,
}

impl ConnectArgs {
    /// The transport's options for these flags.
    pub fn options(&self) -> ConnectOptions {
        ConnectOptions {
            plain_http: self.plain_http,
            insecure: self.insecure,
            ca_file: self.ca_file.clone(),
            auth_file: self.auth_file.clone(),
            client_cert: self
                .cert_file
                .clone()
                .zip(self.key_file.clone())
                .map(|(cert, key)| wsr_transport::ClientCert { cert, key }),
            service_account: Some(self.service_account_dir.clone()),
            ..Default::default()
        }
    }
}

/// Runs `work` to completion on a multi-threaded runtime.
pub fn block_on<F: Future>(work: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::format_err!("starting the async runtime: {e}"))?;
    Ok(runtime.block_on(work))
}

/// Runs `work` like [`block_on`] while a [`Reporter`] renders `sample`.
pub fn block_on_with_progress<F: Future>(
    mode: ProgressMode,
    sample: impl Fn() -> Sample + Send + 'static,
    work: F,
) -> anyhow::Result<F::Output> {
    let reporter = Reporter::spawn(mode, sample);
    let result = block_on(work);
    reporter.finish();
    result
}

/// The end of `main`: prints `result`'s output to stdout and exits 0, or reports the error
/// ([`report_error`], with the step `step` names) and exits with `exit_code(error)`.
pub fn finish(
    program: &str,
    result: anyhow::Result<String>,
    exit_code: impl Fn(&anyhow::Error) -> i32,
    step: impl Fn(&anyhow::Error) -> Option<&'static str>,
) -> ! {
    let code = match result {
        Ok(output) => {
            println!("{output}");
            0
        }
        Err(e) => {
            report_error(program, &e, step(&e));
            exit_code(&e)
        }
    };
    std::process::exit(code)
}

/// Prints the error chain to stderr as `PROGRAM: error: STEP: chain` and writes `STEP: chain`
/// (its first line) as the termination message, so a failed pod says where it failed
/// (`resolve`, `auth`, `upload`, `verify`, ...).
pub fn report_error(program: &str, error: &anyhow::Error, step: Option<&str>) {
    let message = match step {
        Some(step) => format!("{step}: {error:#}"),
        None => format!("{error:#}"),
    };
    eprintln!("{program}: error: {message}");
    write_termination_log(&message);
}

/// Sets the process up: glibc's allocator tuned to hand memory back ([`tune_malloc`]) and
/// logging to stderr, filtered by `WSR_LOG` (default `info`), coloured only on a terminal.
pub fn init_process() {
    tune_malloc();
    init_logging();
}

/// Blocks of at least this size get their own mapping, unmapped when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 256 << 10;

/// Two settings of glibc's allocator, each unless its environment variable is set:
/// - At most two arenas (`MALLOC_ARENA_MAX`). glibc gives threads that contend for the
///   allocator their own arenas (up to 8 per core), and each arena keeps what it freed: a 1 GB
///   backup's peak RSS was 150 MiB with the default and 92 MiB with two arenas, in the same
///   time (one arena was slower).
/// - A fixed mmap threshold of 256 KiB (`MALLOC_MMAP_THRESHOLD_`). glibc raises its threshold
///   each time a mapped block is freed, so after the first upload piece (1 MiB) or download
///   buffer went back, the next ones came from the arenas and left them fragmented. At
///   1.32 M entries: backup 101-107 -> 86-89 MiB, restore 96.5 -> 80 MiB, in the same time.
///   The cost is for large blocks made over and over, each a fresh mapping faulted in page by
///   page: they are reused instead (zstd decoding contexts are pooled, downloads copy out of
///   the HTTP client's buffer). Before that, a 1 GB restore took 210k page faults, not 30k.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only adjusts allocator parameters; called before other threads.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: as above.
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        }
    }
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

/// Writes the first line of `message` (at most 1024 characters) to `/dev/termination-log`
/// when it is writable: Kubernetes shows it as the container's termination message.
pub fn write_termination_log(message: &str) {
    let line: String = message
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(1024)
        .collect();
    write_termination_message(&line);
}

/// Writes `text` (cut to the kubelet's 4096 bytes, on a character boundary, newline
/// included) to `/dev/termination-log` when it is writable: for a structured summary that a
/// controller reads back from the pod status.
pub fn write_termination_message(text: &str) {
    let mut end = text.len().min(4095);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open("/dev/termination-log")
        .and_then(|mut f| {
            use std::io::Write;
            writeln!(f, "{}", &text[..end])
        });
}

/// A problem with the command line or environment (exit code 2), carrying its message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Whether `error` is the user's input at fault: a [`UsageError`], `ORAS_EXTRA_ARGS` that
/// cannot be applied, or a reference or digest that does not parse. Binaries exit with 2 for these.
pub fn is_usage_error(error: &(dyn std::error::Error + 'static)) -> bool {
    error.is::<UsageError>()
        || error.is::<wsr_transport::OrasArgsError>()
        || error.is::<wsr_format::reference::InvalidReference>()
        || error.is::<wsr_format::digest::InvalidDigest>()
}

/// Exit code for a transport failure: 4 unreachable (name not resolved, no connection) or TLS,
/// 5 auth, 2 configuration, 6 other.
pub fn transport_exit_code(error: &TransportError) -> i32 {
    match error {
        TransportError::Connect { .. }
        | TransportError::Resolve { .. }
        | TransportError::Stalled { .. }
        | TransportError::Tls { .. } => 4,
        e if e.is_auth() => 5,
        TransportError::Config(_) => 2,
        _ => 6,
    }
}

pub fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

/// `--progress` choices.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    Auto,
    Always,
    Never,
}

/// One reading of a job's counters.
pub struct Sample {
    pub entries: u64,
    pub total_entries: u64,
    pub bytes: u64,
    pub total_bytes: u64,
    /// e.g. `"uploaded"` / `"downloaded"`, and the bytes so far.
    pub transfer: (&'static str, u64),
}

/// Renders progress until [`Reporter::finish`]: an indicatif bar on a terminal, a log line every
/// 10 s otherwise (indicatif hides itself off-terminal, and pods need to see progress).
pub struct Reporter {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reporter {
    pub fn spawn(mode: ProgressMode, sample: impl Fn() -> Sample + Send + 'static) -> Reporter {
        if mode == ProgressMode::Never {
            return Reporter {
                stop: None,
                thread: None,
            };
        }
        let tty = mode == ProgressMode::Always || std::io::stderr().is_terminal();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let bar = tty.then(|| {
                let bar = indicatif::ProgressBar::new(0);
                let style = indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("valid template");
                bar.set_style(style);
                bar
            });
            let tick = if tty {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(10)
            };
            let started = Instant::now();
            loop {
                let done = stopped.recv_timeout(tick) != Err(mpsc::RecvTimeoutError::Timeout);
                let s = sample();
                let (label, transferred) = s.transfer;
                match &bar {
                    Some(bar) => {
                        bar.set_length(s.total_bytes.max(s.bytes));
                        bar.set_position(s.bytes);
                        bar.set_message(format!(
                            "{}/{} entries, {label} {}",
                            s.entries,
                            s.total_entries,
                            human(transferred)
                        ));
                    }
                    None if !done => {
                        let rate = s.bytes as f64 / started.elapsed().as_secs_f64().max(0.001);
                        tracing::info!(
                            "progress: {}/{} entries, {}/{} ({}/s), {label} {}",
                            s.entries,
                            s.total_entries,
                            human(s.bytes),
                            human(s.total_bytes),
                            human(rate as u64),
                            human(transferred)
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

    pub fn finish(mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
