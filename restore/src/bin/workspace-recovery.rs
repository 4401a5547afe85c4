//! `workspace-recovery`: the drop-in for upstream's `/workspace-recovery.sh` and
//! `/entrypoint.sh` in the recovery image, so no shell is needed.
//!
//! Installed under both names. As `entrypoint.sh` it execs its arguments (upstream's
//! `exec "$@"`; none: exit 0). As `workspace-recovery.sh`, `--backup` execs `wsr-backup --dwo-env` and
//! `--restore` execs `wsr-restore init`, found next to this binary or on PATH. It links no
//! engine: it only dispatches.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn exec(mut command: Command) -> ! {
    let err = command.exec();
    eprintln!(
        "workspace-recovery: cannot run {:?}: {err}",
        command.get_program()
    );
    std::process::exit(127);
}

fn main() {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let rest: Vec<_> = args.collect();
    if name == "entrypoint.sh" {
        // Upstream's `exec "$@"` with no arguments execs nothing and exits 0.
        let Some((program, arguments)) = rest.split_first() else {
            std::process::exit(0);
        };
        let mut command = Command::new(program);
        command.args(arguments);
        exec(command);
    }
    match rest.first().and_then(|a| a.to_str()) {
        Some("--backup") => {
            let mut command = Command::new(sibling("wsr-backup"));
            command.arg("--dwo-env").args(&rest[1..]);
            exec(command)
        }
        Some("--restore") => {
            let mut command = Command::new(sibling("wsr-restore"));
            command.arg("init").args(&rest[1..]);
            exec(command)
        }
        _ => {
            eprintln!("Usage: workspace-recovery.sh --backup | --restore");
            std::process::exit(1);
        }
    }
}
