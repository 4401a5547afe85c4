//! wsr-cli: the binaries' shared edge. Logging setup, progress rendering, the termination
//! message, and exit codes for transport errors. Libraries never use it; only the `wsr-backup`
//! and `wsr-restore` binaries do, so both behave alike at the terminal and in pods.

use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use wsr_transport::TransportError;

/// Logs to stderr, filtered by `WSR_LOG` (default `info`), coloured only on a terminal.
pub fn init_logging() {
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
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open("/dev/termination-log")
        .and_then(|mut f| {
            use std::io::Write;
            writeln!(f, "{line}")
        });
}

/// A problem with the command line or environment (exit code 2), carrying its message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Whether `error` is the user's input at fault: a [`UsageError`], or a reference or digest
/// that does not parse. Binaries exit with 2 for these.
pub fn is_usage_error(error: &(dyn std::error::Error + 'static)) -> bool {
    error.is::<UsageError>()
        || error.is::<wsr_format::reference::InvalidReference>()
        || error.is::<wsr_format::digest::InvalidDigest>()
}

/// Exit code for a transport failure: 4 unreachable or TLS, 5 auth, 2 configuration, 6 other.
pub fn transport_exit_code(error: &TransportError) -> i32 {
    match error {
        TransportError::Connect { .. } | TransportError::Tls { .. } => 4,
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
