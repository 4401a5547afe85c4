//! The machine and tool versions a benchmark ran on, read from /proc and `--version` outputs,
//! so the report says where its numbers come from.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use super::peers::Tools;

#[derive(Serialize)]
pub struct Machine {
    pub date: String,
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub disk: String,
    pub kernel: String,
    pub os: String,
    pub wsr_commit: String,
    /// (tool, version line)
    pub tools: Vec<(String, String)>,
}

/// First non-empty line of a command's stdout (or stderr), or "unavailable".
fn first_line(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        }
        _ => "unavailable".into(),
    }
}

fn proc_field(file: &str, key: &str) -> Option<String> {
    let text = fs::read_to_string(file).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once([':', '=']))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
}

/// `df -hT`'s row for the filesystem holding `path` (or its nearest existing parent): device,
/// type, size, used, available, use%, mount point.
fn df_row(path: &Path) -> Option<Vec<String>> {
    let mut probe = path.to_path_buf();
    while !probe.exists() && probe.pop() {}
    let out = Command::new("df").arg("-hT").arg(&probe).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let row: Vec<String> = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .map(String::from)
        .collect();
    (row.len() >= 7).then_some(row)
}

/// "device (type, no journal, mount options) at mount, size total, free" of the filesystem
/// holding `path`.
pub fn filesystem(path: &Path) -> String {
    let Some(f) = df_row(path) else {
        return "unknown".into();
    };
    let mount = &f[6];
    // Mount options matter here (e.g. online `discard` makes file creation slower).
    let opts = fs::read_to_string("/proc/mounts")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.split_whitespace().nth(1) == Some(mount))
                .and_then(|l| l.split_whitespace().nth(3).map(String::from))
        })
        .unwrap_or_default();
    let image = backing_file(&f[0])
        .and_then(|image| Some((df_row(&image)?, image)))
        .map_or(String::new(), |(disk, image)| {
            format!(
                " (an image file, {}, on {} with {} free)",
                image.display(),
                disk[0],
                disk[4]
            )
        });
    format!(
        "{} at {mount} ({}{}, {opts}), {} total, {} free{image}",
        f[0],
        f[1],
        journal_note(&f[0]),
        f[2],
        f[4]
    )
}

/// The image file behind the loop device that holds `path`, if any (`bench-scratch.sh` puts the
/// scratch filesystem in a sparse one on the work disk).
pub fn loop_image(path: &Path) -> Option<PathBuf> {
    backing_file(&df_row(path)?[0])
}

/// The image file behind `device`, if it is a loop device.
fn backing_file(device: &str) -> Option<PathBuf> {
    let name = device
        .strip_prefix("/dev/")
        .filter(|n| n.starts_with("loop"))?;
    let image = fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(image.trim_end()))
}

/// ", no journal" for an ext4 filesystem mounted without one (see [`wait_for_freed_inodes`]).
fn journal_note(device: &str) -> &'static str {
    let name = device.rsplit('/').next().unwrap_or(device);
    match fs::read_to_string(format!("/sys/fs/ext4/{name}/journal_task")) {
        Ok(task) if task.trim() == "<none>" => ", no journal",
        _ => "",
    }
}

/// Whether `path` is on ext4 without a journal, where freed inodes slow later file creation.
fn without_journal(path: &Path) -> bool {
    df_row(path).is_some_and(|f| !journal_note(&f[0]).is_empty())
}

pub fn describe(work: &Path, tools: &Tools) -> Machine {
    let mem_kib: u64 = proc_field("/proc/meminfo", "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let disk = filesystem(work);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root_s = root.display().to_string();
    let mut commit = first_line("git", &["-C", &root_s, "rev-parse", "--short", "HEAD"]);
    let dirty = Command::new("git")
        .args(["-C", &root_s, "status", "--porcelain"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    if dirty {
        commit.push_str(" + uncommitted changes");
    }

    let mut versions = vec![
        ("GNU tar".to_string(), first_line("tar", &["--version"])),
        ("gzip".into(), first_line("gzip", &["--version"])),
        ("zstd".into(), first_line("zstd", &["--version"])),
        ("restic".into(), first_line("restic", &["version"])),
        (
            "registry".into(),
            first_line("/usr/bin/docker-registry", &["--version"]),
        ),
        ("curl".into(), first_line("curl", &["--version"])),
    ];
    versions.push((
        "oras CLI".into(),
        match &tools.oras {
            Ok(oras) => first_line(&oras.display().to_string(), &["version"]),
            Err(why) => format!("unavailable: {why}"),
        },
    ));
    versions.push(("rustc".into(), first_line("rustc", &["--version"])));

    Machine {
        date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        cpu: proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into()),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory: format!("{:.1} GiB", mem_kib as f64 / (1024.0 * 1024.0)),
        disk,
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        os: proc_field("/etc/os-release", "PRETTY_NAME").unwrap_or_else(|| "unknown".into()),
        wsr_commit: commit,
        tools: versions,
    }
}

/// When the harness last deleted a tree of many inodes.
static LAST_MASS_REMOVAL: std::sync::Mutex<Option<std::time::Instant>> =
    std::sync::Mutex::new(None);

/// Deleting fewer inodes than this is not worth waiting for.
const MASS_REMOVAL_INODES: u64 = 1000;

/// How long ext4 without a journal may skip a freed inode: 60 s after it was freed, or 360 s
/// while its inode table block is dirty (see [`wait_for_freed_inodes`]).
const RECENTLY_DELETED: std::time::Duration = std::time::Duration::from_secs(361);

/// Records that removing `path` freed `count` inodes.
pub fn inodes_freed(path: &Path, count: u64) {
    if count >= MASS_REMOVAL_INODES && without_journal(path) {
        *LAST_MASS_REMOVAL.lock().expect("not poisoned") = Some(std::time::Instant::now());
    }
}

/// Sleeps until six minutes have passed since the last mass removal on ext4 without a journal,
/// and returns how long it slept.
///
/// There, allocating an inode skips every inode freed in the last 60 s, or in the last 360 s
/// while the freed inode's table block is dirty, and checks each one it skips
/// (`recently_deleted` in fs/ext4/ialloc.c). A `sync` before the run does not shorten that:
/// the run's own new inodes dirty the same table blocks again. On this machine's work disk,
/// 65 s after `sync` and the deletion of 1.6 M inodes, a restore of the many-files corpus took
/// 35.0 s with wsr (54.0 s of kernel time; `perf -a` put 55% of the samples under
/// `recently_deleted`) and then 44.4 s with `tar -x` (43.3 s); 370 s after, `tar -x` took
/// 3.55 s. A run must not pay for the previous run's cleanup, so the bench keeps the trees it
/// creates and deletes on a scratch filesystem with a journal when it can (`--scratch-dir`),
/// and this wait is for the rest.
pub fn wait_for_freed_inodes() -> std::time::Duration {
    let last = *LAST_MASS_REMOVAL.lock().expect("not poisoned");
    let left = last.map_or(std::time::Duration::ZERO, |at| {
        RECENTLY_DELETED.saturating_sub(at.elapsed())
    });
    std::thread::sleep(left);
    left
}

/// Reads every file under `paths` (missing ones are skipped), so that a run reads its inputs
/// from the page cache.
///
/// Reading them once before the runs is not enough on a machine that evicts idle page cache:
/// this one runs a DAMON `pageout` scheme (`/sys/kernel/mm/damon/admin/kdamonds`) that pages out
/// memory not accessed for a minute, up to 128 MiB/s, so the minute waited for freed inodes
/// evicted the corpus and the stored backups, and the next runs read them from a disk that
/// answered in about 10 ms per read (`/proc/diskstats`; the report's `workingset_refault_file`
/// line per corpus counts those evictions).
pub fn warm(paths: &[PathBuf]) {
    fn read_tree(path: &Path, buf: &mut [u8]) {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return;
        };
        if meta.is_dir() {
            for entry in fs::read_dir(path).into_iter().flatten().flatten() {
                read_tree(&entry.path(), buf);
            }
        } else if meta.is_file()
            && let Ok(mut file) = fs::File::open(path)
        {
            while matches!(std::io::Read::read(&mut file, buf), Ok(n) if n > 0) {}
        }
    }
    let mut buf = vec![0u8; 1 << 20];
    for path in paths {
        read_tree(path, &mut buf);
    }
}
