//! Kill loops (issue #16 item 5): `wsr-backup` and `wsr-restore` killed with SIGKILL at random
//! points, against the real registry and an OCI layout. After every kill the invariants hold
//! (`latest` is the previous artifact or a new complete one; a restore target is as it was, or
//! holds a completed staging directory the rerun finishes, or is already complete), and a rerun
//! succeeds and leaves nothing behind (no staging directory, no temporary file in the layout).
//!
//! The kill points are drawn from a seeded generator (`WSR_KILL_SEED`, default below; printed on
//! failure) uniformly over the duration of an uninterrupted run measured first, so they spread
//! over every phase (a run that finishes before its kill point counts as a run, not a kill;
//! each test prints `KILLS <binary> killed=K runs=R`). [`ITERATIONS`] runs per store and
//! binary: 2 × 15 for `wsr-backup`, 2 × 15 for `wsr-restore`.

mod common;

use common::{Dir, binaries, slow_tests_enabled};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use wsr_format::reference::{Reference, Target};
use wsr_transport::testing::{RegistryKind, TestRegistry};
use wsr_transport::{Access, ConnectOptions, Store};

/// Kills per store (registry, layout) and binary.
const ITERATIONS: u64 = 15;
const DEFAULT_SEED: u64 = 0x16_05;

/// splitmix64: enough to spread kill points, and reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}

fn seed() -> u64 {
    std::env::var("WSR_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

fn command(binary: &str, args: &[&str]) -> Command {
    let mut c = Command::new(binaries().join(binary));
    c.args(args)
        .args(["--plain-http", "--progress", "never"])
        .env("WSR_LOG", "warn")
        .env_remove("WSR_TEST_ABORT_AT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn run(binary: &str, args: &[&str]) -> Output {
    command(binary, args).output().unwrap()
}

/// Runs the command and kills it (SIGKILL) after `delay`, unless it finished first. Returns
/// whether it was killed.
fn run_killed(binary: &str, args: &[&str], delay: Duration) -> bool {
    let mut child = command(binary, args).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    killed
}

fn timed(f: impl FnOnce() -> Output) -> Duration {
    let started = Instant::now();
    let out = f();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

/// The digest `latest` names, if any.
fn latest(reference: &str) -> Option<String> {
    let reference: Reference = reference.parse().unwrap();
    common::runtime().block_on(async {
        let options = ConnectOptions {
            plain_http: true,
            ..Default::default()
        };
        let store = match Store::open(&reference.repository, &options, Access::Pull).await {
            Ok(store) => store,
            Err(e) if e.is_not_found() => return None,
            Err(e) => panic!("{e}"),
        };
        match store.fetch_manifest(&Target::Tag("latest".into())).await {
            Ok((digest, _)) => Some(digest.to_string()),
            Err(e) if e.is_not_found() => None,
            Err(e) => panic!("{e}"),
        }
    })
}

/// Temporary files a writer left in a layout (none may remain after a run).
fn layout_temps(layout: &Path) -> Vec<PathBuf> {
    [layout.to_owned(), layout.join("blobs/sha256")]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with('.') && name != ".index.lock"
        })
        .collect()
}

/// The source snapshot without what the walk leaves out.
fn snapshot(root: &Path) -> Vec<String> {
    scenarios::sample::snapshot(root)
        .unwrap()
        .into_iter()
        .filter(|l| !l.starts_with(".wsr-restore-"))
        .collect()
}

fn has_completed_staging(target: &Path) -> bool {
    std::fs::read_dir(target)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.file_name().to_string_lossy().starts_with(".wsr-restore-")
                && e.path().join("complete").exists()
        })
}

fn stagings(target: &Path) -> usize {
    std::fs::read_dir(target)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".wsr-"))
        .count()
}

/// The sample workspace plus a few MiB of noise, so that every phase takes some time.
fn workspace() -> (Dir, PathBuf) {
    let work = common::sample(false);
    let src = work.path().join("projects");
    std::fs::write(src.join("noise.bin"), scenarios::sample::noise(6 << 20, 5)).unwrap();
    (work, src)
}

/// A restore of `reference` reproduces `src`.
fn assert_restores(reference: &str, src: &Path, scratch: &Path, label: &str) {
    let _ = std::fs::remove_dir_all(scratch);
    let out = run(
        "wsr-restore",
        &["--from", reference, "--to", scratch.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{label}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshot(scratch), snapshot(src), "{label}");
    scenarios::sample::make_removable(scratch);
    std::fs::remove_dir_all(scratch).unwrap();
}

#[test]
fn backup_killed_at_random_points_keeps_latest_whole() {
    if !slow_tests_enabled("backup_killed_at_random_points_keeps_latest_whole") {
        return;
    }
    let seed = seed();
    let mut rng = Rng(seed);
    let registry = TestRegistry::start(RegistryKind::Plain).unwrap();
    let (work, src) = workspace();
    let layout = work.path().join("layout");
    let stores = [
        format!("{}/ns/ws:latest", registry.host()),
        format!("oci:{}:latest", layout.display()),
    ];
    let mut kills = 0;
    for reference in &stores {
        let args = ["--source", src.to_str().unwrap(), "--to", reference];
        timed(|| run("wsr-backup", &args));
        // Later runs reuse the unchanged layers: time one of those.
        std::fs::write(src.join("noise.bin"), scenarios::sample::noise(6 << 20, 99)).unwrap();
        let full = timed(|| run("wsr-backup", &args));
        let mut previous = latest(reference).expect("a first backup");
        for i in 0..ITERATIONS {
            let label = format!("seed {seed}, {reference}, iteration {i}");
            // Something new to upload, and an entry that changes every time.
            std::fs::write(src.join("noise.bin"), scenarios::sample::noise(6 << 20, i)).unwrap();
            std::fs::write(src.join("iteration.txt"), format!("{i}\n")).unwrap();
            let delay = Duration::from_millis(rng.below(full.as_millis() as u64));
            kills += u32::from(run_killed("wsr-backup", &args, delay));
            let scratch = work.path().join("scratch");
            let after_kill = latest(reference).expect("latest never disappears");
            if after_kill != previous {
                // A new artifact was tagged before the kill: it must be complete.
                assert_restores(reference, &src, &scratch, &label);
            }
            let rerun = run("wsr-backup", &args);
            assert!(
                rerun.status.success(),
                "{label}: rerun failed: {}",
                String::from_utf8_lossy(&rerun.stderr)
            );
            previous = latest(reference).unwrap();
            assert_restores(reference, &src, &scratch, &label);
            if reference.starts_with("oci:") {
                assert_eq!(layout_temps(&layout), Vec::<PathBuf>::new(), "{label}");
            }
        }
    }
    println!("KILLS wsr-backup killed={kills} runs={}", 2 * ITERATIONS);
}

#[test]
fn restore_killed_at_random_points_leaves_the_target_whole() {
    if !slow_tests_enabled("restore_killed_at_random_points_leaves_the_target_whole") {
        return;
    }
    let seed = seed();
    let mut rng = Rng(seed ^ 0xbac0);
    let registry = TestRegistry::start(RegistryKind::Plain).unwrap();
    let (work, src) = workspace();
    let layout = work.path().join("layout");
    let stores = [
        format!("{}/ns/ws:latest", registry.host()),
        format!("oci:{}:latest", layout.display()),
    ];
    let mut kills = 0;
    for (n, reference) in stores.iter().enumerate() {
        let backup = run(
            "wsr-backup",
            &["--source", src.to_str().unwrap(), "--to", reference],
        );
        assert!(backup.status.success());
        let probe = work.path().join(format!("probe{n}"));
        let full = timed(|| {
            run(
                "wsr-restore",
                &["--from", reference, "--to", probe.to_str().unwrap()],
            )
        });
        for i in 0..ITERATIONS {
            let label = format!("seed {seed}, {reference}, iteration {i}");
            let parent = work.path().join(format!("t{n}-{i}"));
            let target = parent.join("projects");
            std::fs::create_dir_all(&target).unwrap();
            // Every other run restores over the user's content with --force.
            let force = i % 2 == 1;
            if force {
                std::fs::create_dir(target.join("old")).unwrap();
                std::fs::write(target.join("old/notes.txt"), "the user's notes\n").unwrap();
            }
            let before = snapshot(&target);
            let mut args = vec!["--from", reference, "--to", target.to_str().unwrap()];
            if force {
                args.push("--force");
            }
            let delay = Duration::from_millis(rng.below(full.as_millis() as u64));
            kills += u32::from(run_killed("wsr-restore", &args, delay));

            // Untouched; or finishable (a completed staging directory); or already complete; or,
            // with --force, part of the user's content already moved aside (to be checked below).
            let visible = snapshot(&target);
            let complete_before_rerun = visible == snapshot(&src);
            let partly_aside = force && visible.iter().all(|l| before.contains(l));
            assert!(
                visible == before
                    || has_completed_staging(&target)
                    || complete_before_rerun
                    || partly_aside,
                "{label}: the target is neither as it was nor completable: {visible:#?}"
            );
            let rerun = run("wsr-restore", &args);
            let code = rerun.status.code();
            // A kill after the last move leaves a complete target; a plain rerun calls that
            // "not empty" (exit 3), a forced one restores again.
            assert!(
                code == Some(0) || (code == Some(3) && complete_before_rerun && !force),
                "{label}: rerun exit {code:?}: {}",
                String::from_utf8_lossy(&rerun.stderr)
            );
            assert_eq!(snapshot(&target), snapshot(&src), "{label}");
            assert_eq!(stagings(&target), 0, "{label}: bookkeeping left behind");
            if force {
                // The user's content was moved aside, not lost (perhaps in two steps).
                let kept = std::fs::read_dir(&parent)
                    .unwrap()
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().contains(".wsr-aside-"))
                    .any(|e| e.path().join("old/notes.txt").is_file());
                assert!(kept, "{label}: the user's content is gone");
            }
            scenarios::sample::make_removable(&parent);
            std::fs::remove_dir_all(&parent).unwrap();
        }
    }
    println!("KILLS wsr-restore killed={kills} runs={}", 2 * ITERATIONS);
}

/// An interrupted restore's staging directory at the top of a workspace is wsr's bookkeeping:
/// a backup of that workspace leaves it out (and says so), and restoring that backup brings
/// back the workspace without it.
#[test]
fn an_interrupted_restores_leftovers_are_not_backed_up() {
    if !slow_tests_enabled("an_interrupted_restores_leftovers_are_not_backed_up") {
        return;
    }
    let (work, src) = workspace();
    let layout = work.path().join("layout");
    let first = format!("oci:{}:first", layout.display());
    let out = run(
        "wsr-backup",
        &["--source", src.to_str().unwrap(), "--to", &first],
    );
    assert!(out.status.success());
    // Interrupted part-way into the workspace itself (as an init container would be).
    std::fs::remove_dir_all(src.join("src")).unwrap();
    let crashed = command(
        "wsr-restore",
        &["--from", &first, "--to", src.to_str().unwrap(), "--force"],
    )
    .env("WSR_TEST_ABORT_AT", "after-entries:5")
    .output()
    .unwrap();
    assert!(!crashed.status.success());
    assert_eq!(
        stagings(&src),
        1,
        "the interrupted restore left its staging directory"
    );

    let second = format!("oci:{}:second", layout.display());
    let out = command(
        "wsr-backup",
        &["--source", src.to_str().unwrap(), "--to", &second, "--json"],
    )
    .stdout(Stdio::piped())
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(".wsr-restore-"),
        "not reported as skipped: {report}"
    );
    let restored = work.path().join("restored");
    let out = run(
        "wsr-restore",
        &["--from", &second, "--to", restored.to_str().unwrap()],
    );
    assert!(out.status.success());
    assert_eq!(stagings(&restored), 0);
    assert_eq!(snapshot(&restored), snapshot(&src));
}
