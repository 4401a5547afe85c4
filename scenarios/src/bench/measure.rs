//! Running one measured command as a child process and reading its cost from the kernel.
//!
//! `wait4` returns the child's rusage, which on Linux includes every descendant the child
//! itself waited for (a shell's pipeline members, python's subprocesses): user and system
//! time are summed over that tree and `ru_maxrss` is the largest single process in it, not
//! the sum of concurrent ones. Wall time is taken around spawn and reap. The child runs in
//! its own process group so a watchdog can kill the whole tree on timeout; stdout and stderr
//! go to files, never pipes, so a chatty child cannot block on a full pipe.

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
    let mut cmd = Command::new(&step.program);
    cmd.args(&step.args)
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

    let usage = Usage {
        wall_s: wall.as_secs_f64(),
        user_s: ru.ru_utime.tv_sec as f64 + ru.ru_utime.tv_usec as f64 / 1e6,
        sys_s: ru.ru_stime.tv_sec as f64 + ru.ru_stime.tv_usec as f64 / 1e6,
        max_rss_kib: ru.ru_maxrss.max(0) as u64,
    };
    let exit = ExitStatus::from_raw(status);
    let failure = if timed_out {
        Some(format!("timed out after {} s", timeout.as_secs()))
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
    }
}
