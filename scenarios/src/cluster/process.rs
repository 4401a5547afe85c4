//! The cluster's processes: each runs detached in a session of its own (so it outlives the
//! command that started it and can be stopped as a group), with stdout and stderr appended to
//! `DIR/logs/<name>.log` and its pid in `DIR/pids/<name>.pid`.

use anyhow::{Context as _, Result};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("logs").join(format!("{name}.log"))
}

fn pid_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("pids").join(format!("{name}.pid"))
}

/// Starts `program args` as component `name` of the cluster in `dir`.
pub fn spawn<I, S>(dir: &Path, name: &str, program: &Path, args: I) -> Result<Child>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    fs::create_dir_all(dir.join("logs"))?;
    fs::create_dir_all(dir.join("pids"))?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(dir, name))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    fs::write(pid_path(dir, name), format!("{}\n", child.id()))?;
    Ok(child)
}

/// Whether `pid` is a running (not zombie) process whose command line mentions `dir`: every
/// component is given paths inside its run directory, so this tells our process from an
/// unrelated one that got the same pid later.
fn ours(pid: i32, dir: &Path) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = fs::read_to_string(proc.join("stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself contain spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, s)| s.split_whitespace().next());
    if state == Some("Z") {
        return false;
    }
    let cmdline = fs::read(proc.join("cmdline")).unwrap_or_default();
    let needle = dir.as_os_str().as_encoded_bytes();
    cmdline.windows(needle.len()).any(|w| w == needle)
}

/// Stops component `name` of the cluster in `dir`: SIGTERM to its process group, SIGKILL after
/// `grace`. Idempotent: a missing pid file or a process already gone is success.
pub fn stop(dir: &Path, name: &str, grace: Duration) -> Result<()> {
    let path = pid_path(dir, name);
    let Ok(text) = fs::read_to_string(&path) else {
        return Ok(());
    };
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("bad pid file {}", path.display()))?;
    if pid > 1 && ours(pid, dir) {
        signal_group(pid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while ours(pid, dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if ours(pid, dir) {
            signal_group(pid, libc::SIGKILL);
        }
    }
    fs::remove_file(&path).or_else(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(e),
    })?;
    Ok(())
}

/// Signals the process group `pid` leads (it called setsid), or just `pid` if it has none.
fn signal_group(pid: i32, signal: i32) {
    // SAFETY: kill has no memory effects; errors (ESRCH) are expected and ignored.
    unsafe {
        if libc::kill(-pid, signal) != 0 {
            libc::kill(pid, signal);
        }
    }
}

/// Names of components with a pid file in `dir`.
pub fn recorded(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir.join("pids")) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".pid").map(str::to_owned)
        })
        .collect()
}

/// Whether any recorded component of `dir` is still running.
pub fn any_running(dir: &Path) -> bool {
    recorded(dir).iter().any(|name| {
        fs::read_to_string(pid_path(dir, name))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .is_some_and(|pid| ours(pid, dir))
    })
}

/// The last `lines` lines of component `name`'s log.
pub fn log_tail(dir: &Path, name: &str, lines: usize) -> String {
    let text = fs::read_to_string(log_path(dir, name)).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
