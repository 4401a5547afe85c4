//! Running one measured command as a child process and reading its cost from the kernel.
//!
//! A process's rusage on Linux includes every descendant it waited for (a shell's pipeline
//! members, python's subprocesses): user and system time are summed over that tree and
//! `ru_maxrss` is the largest single process in it, not the sum of concurrent ones. But a
//! process spawned by this harness starts its `ru_maxrss` at the harness's own peak (exec
//! records the high-water mark of the memory it replaces, which for a vfork-style spawn is
//! the parent's), which at `huge` sizes is above 100 MiB. So the command runs under GNU
//! `time`, itself started by the harness, which forks it from its own small process and
//! reports the rusage of that tree. Wall time is taken around spawn and reap. The command
//! runs in its own process group so a watchdog can kill the whole tree on timeout; stdout and
//! stderr go to files, never pipes, so a chatty child cannot block on a full pipe.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

/// One command to measure.
#[derive(Clone, Debug)]
pub struct Step {
    /// Short name shown in the report ("tar -czf", "oras push", ...).
    pub name: String,
    pub program: OsString,
    pub args: Vec<OsString>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, OsString)>,
    /// For shell steps, the script as written (what the report shows instead of `bash -c`).
    pub script: Option<String>,
}

impl Step {
    pub fn exec<I, S>(name: &str, program: impl Into<OsString>, args: I) -> Step
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Step {
            name: name.to_string(),
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            cwd: None,
            env: Vec::new(),
            script: None,
        }
    }

    /// A bash script with `set -euo pipefail`, so a failing pipeline member fails the step.
    pub fn shell(name: &str, script: &str) -> Step {
        let mut step = Step::exec(
            name,
            "bash",
            ["-c".to_string(), format!("set -euo pipefail\n{script}")],
        );
        step.script = Some(script.to_string());
        step
    }

    pub fn cwd(mut self, dir: &Path) -> Step {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Step {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// The command line as a reader could paste it (for the report).
    pub fn display(&self) -> String {
        let cd = self
            .cwd
            .as_ref()
            .map_or(String::new(), |d| format!("cd {} && ", d.display()));
        if let Some(script) = &self.script {
            return format!("{cd}{script}");
        }
        let mut parts = vec![self.program.to_string_lossy().into_owned()];
        for a in &self.args {
            let a = a.to_string_lossy();
            if a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '|' || c == '$') {
                parts.push(format!("'{}'", a.replace('\'', r"'\''")));
            } else {
                parts.push(a.into_owned());
            }
        }
        format!("{cd}{}", parts.join(" "))
    }
}

/// The cost of one step.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Usage {
    pub wall_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    pub max_rss_kib: u64,
}

impl Usage {
    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.sys_s
    }

    /// Steps of one run happen one after another: times add up, RSS peaks don't.
    pub fn add(&mut self, other: &Usage) {
        self.wall_s += other.wall_s;
        self.user_s += other.user_s;
        self.sys_s += other.sys_s;
        self.max_rss_kib = self.max_rss_kib.max(other.max_rss_kib);
    }
}

/// A finished step: its cost, whether it succeeded, and the tails of its output.
#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub name: String,
    pub usage: Usage,
    /// `None` on success, else what went wrong (exit code / signal / timeout).
    pub failure: Option<String>,
    pub stdout_tail: String,
    pub stderr_tail: String,
}

/// Runs `step` to completion (or kills its process group after `timeout`).
/// `scratch` holds the stdout/stderr files.
pub fn run_step(step: &Step, scratch: &Path, timeout: Duration) -> Result<StepResult> {
    fs::create_dir_all(scratch)?;
    let out_path = scratch.join("step.stdout");
    let err_path = scratch.join("step.stderr");
    let rusage_path = scratch.join("step.rusage");
    let _ = fs::remove_file(&rusage_path);
    let mut cmd = Command::new(GNU_TIME);
    cmd.args(["-f", "%U %S %M", "-o"])
        .arg(&rusage_path)
        .arg("--")
        .arg(&step.program)
        .args(&step.args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .process_group(0);
    if let Some(dir) = &step.cwd {
        cmd.current_dir(dir);
    }
    for (k, v) in &step.env {
        cmd.env(k, v);
    }

    let start = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("spawn {}", step.display()))?;
    let pid = child.id() as libc::pid_t;

    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(timeout) {
            // SAFETY: plain syscall; a negative pid addresses the child's process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            return true;
        }
        false
    });

    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value that wait4 overwrites.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our unreaped child; `status` and `ru` are valid for writes.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if rc == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err).context("wait4");
        }
    }
    let wall = start.elapsed();
    let _ = done_tx.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    // `child` was reaped by wait4 above; dropping the handle neither waits nor kills.
    drop(child);

    let (mut usage, killed_by) = match fs::read_to_string(&rusage_path) {
        Ok(report) if !report.trim().is_empty() => {
            command_usage(&report).with_context(|| format!("{GNU_TIME}'s report {report:?}"))?
        }
        // `time` itself was killed (the watchdog) before reporting: only the harness's view
        // is left.
        _ => (harness_view(&ru), None),
    };
    usage.wall_s = wall.as_secs_f64();
    let exit = ExitStatus::from_raw(status);
    let failure = if timed_out {
        Some(format!("timed out after {} s", timeout.as_secs()))
    } else if let Some(signal) = killed_by {
        Some(format!("killed by signal {signal}"))
    } else if exit.success() {
        None
    } else if let Some(code) = exit.code() {
        Some(format!("exit code {code}"))
    } else {
        Some(format!("killed by signal {}", exit.signal().unwrap_or(0)))
    };
    Ok(StepResult {
        name: step.name.clone(),
        usage,
        failure,
        stdout_tail: tail(&out_path, 16 * 1024)?,
        stderr_tail: tail(&err_path, 2 * 1024)?,
    })
}

/// GNU time (Debian's `time` package): `-f` and `-o` as in its manual.
const GNU_TIME: &str = "/usr/bin/time";

/// The command's CPU and peak RSS from GNU time's `-f "%U %S %M"` report (its last line;
/// a line before it says if the command was killed by a signal), and that signal.
fn command_usage(report: &str) -> Result<(Usage, Option<i32>)> {
    let mut lines = report.lines().filter(|l| !l.trim().is_empty());
    let last = lines.next_back().context("empty")?;
    let signal = lines
        .filter_map(|l| l.trim().strip_prefix("Command terminated by signal "))
        .find_map(|n| n.trim().parse().ok());
    let fields: Vec<&str> = last.split_whitespace().collect();
    let [user, sys, rss] = fields[..] else {
        anyhow::bail!("not three fields");
    };
    let usage = Usage {
        wall_s: 0.0,
        user_s: user.parse()?,
        sys_s: sys.parse()?,
        max_rss_kib: rss.parse()?,
    };
    Ok((usage, signal))
}

fn harness_view(ru: &libc::rusage) -> Usage {
    Usage {
        wall_s: 0.0,
        user_s: ru.ru_utime.tv_sec as f64 + ru.ru_utime.tv_usec as f64 / 1e6,
        sys_s: ru.ru_stime.tv_sec as f64 + ru.ru_stime.tv_usec as f64 / 1e6,
        max_rss_kib: ru.ru_maxrss.max(0) as u64,
    }
}

/// The last `max` bytes of a file, as text.
fn tail(path: &Path, max: u64) -> Result<String> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_pipeline_and_reports_failures() {
        let t = tempfile::tempdir().unwrap();
        let ok = run_step(
            &Step::shell("burn", "head -c 20000000 /dev/zero | sha256sum; echo done"),
            t.path(),
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(ok.failure.is_none(), "{ok:?}");
        assert!(ok.stdout_tail.ends_with("done\n"));
        assert!(ok.usage.cpu_s() > 0.0 && ok.usage.max_rss_kib > 0, "{ok:?}");

        let bad = run_step(
            &Step::shell("fail", "echo oops >&2; exit 3"),
            t.path(),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(bad.failure.as_deref(), Some("exit code 3"));
        assert_eq!(bad.stderr_tail, "oops\n");

        let slow = run_step(
            &Step::shell("slow", "sleep 30"),
            t.path(),
            Duration::from_millis(200),
        )
        .unwrap();
        assert!(slow.failure.unwrap().starts_with("timed out"));
        assert!(slow.usage.wall_s < 5.0);

        let killed = run_step(
            &Step::shell("killed", "kill -TERM $$"),
            t.path(),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(killed.failure.as_deref(), Some("killed by signal 15"));
    }

    /// A small command's peak RSS is its own, not the harness's: a process spawned from a big
    /// one would otherwise report the big one's high-water mark.
    #[test]
    fn a_commands_peak_rss_is_not_the_harnesss() {
        let mut ballast = vec![0u8; 256 << 20];
        for page in ballast.chunks_mut(4096) {
            page[0] = 1;
        }
        let t = tempfile::tempdir().unwrap();
        let small = run_step(
            &Step::exec("true", "true", [""; 0]),
            t.path(),
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(small.failure.is_none(), "{small:?}");
        assert!(small.usage.max_rss_kib < 64 << 10, "{small:?}");
        let big = run_step(
            &Step::shell(
                "big",
                "head -c 200000000 /dev/zero | tail -c 150000000 > /dev/null",
            ),
            t.path(),
            Duration::from_secs(30),
        )
        .unwrap();
        // `tail -c N` of a pipe holds the last N bytes: its RSS is at least that.
        assert!(big.usage.max_rss_kib > 140_000, "{big:?}");
        std::hint::black_box(&ballast);
    }
}
