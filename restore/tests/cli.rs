//! The `wsr-restore` binary: crash atomicity (killed mid-way, then rerun), the init-container
//! mode's output, and exit codes. Backups are made with GNU tar in upstream's
//! layout (`tar -czf … -C dir .`), so these tests need no backup engine.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use wsr_format::media;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wsr-restore"));
    // Unreachable registries are tried here on purpose: retry for seconds, not a minute.
    c.env_remove("WSR_TEST_ABORT_AT")
        .env("WSR_LOG", "warn")
        .env("WSR_RETRY_SECONDS", "4");
    c
}

fn tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!("d{}", i % 20));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("f{i}.txt")),
            format!("file {i}\n").repeat(i % 50 + 1),
        )
        .unwrap();
    }
    std::fs::write(root.join(".hidden"), "dotfile\n").unwrap();
}

/// Publishes `dir` as an upstream-style artifact (GNU tar, gzip, `./` entries) in a layout.
fn publish(dir: &Path, layout: &Path) -> String {
    let tgz = layout.with_extension("tgz");
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .status()
        .expect("GNU tar");
    assert!(status.success());
    common::publish_blob(layout, std::fs::read(&tgz).unwrap())
}

fn listing(root: &Path) -> Vec<String> {
    let out = Command::new("find")
        .arg(root)
        .arg("-printf")
        .arg("%P %y %m %s\n")
        .output()
        .unwrap();
    let mut lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(' '))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

fn user_entries(target: &Path) -> Vec<PathBuf> {
    wsr_restore::target::user_entries(target).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn killed_mid_unpack_then_rerun_completes_and_target_is_never_half_filled() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    tree(&src, 3000);
    let reference = publish(&src, &work.path().join("layout"));
    let target = work.path().join("projects");
    for point in ["after-entries:1000", "before-marker-rename", "after-marker"] {
        let _ = std::fs::remove_dir_all(&target);
        let crashed = bin()
            .args(["--from", &reference, "--to"])
            .arg(&target)
            .env("WSR_TEST_ABORT_AT", point)
            .output()
            .unwrap();
        assert!(!crashed.status.success(), "{point}: the hook must abort");
        assert!(
            stderr(&crashed).contains("test hook: aborting"),
            "{}",
            stderr(&crashed)
        );
        // Whatever the crash point, the user sees an empty target (only wsr's hidden staging dir).
        assert!(
            user_entries(&target).is_empty(),
            "{point}: target half-filled: {:?}",
            user_entries(&target)
        );
        let rerun = bin()
            .args(["--from", &reference, "--to"])
            .arg(&target)
            .output()
            .unwrap();
        assert!(
            rerun.status.success(),
            "{point}: rerun failed: {}",
            stderr(&rerun)
        );
        assert_eq!(listing(&target), listing(&src), "{point}");
        let leftovers: Vec<_> = std::fs::read_dir(&target)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".wsr-"))
            .collect();
        assert!(leftovers.is_empty(), "{point}: staging left behind");
    }
}

/// A marker torn by a kill while it was written (possible before markers were written under
/// another name and renamed): the rerun redoes the tree instead of failing on it for ever.
#[test]
fn a_torn_completion_marker_is_redone_not_trusted() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    tree(&src, 50);
    let reference = publish(&src, &work.path().join("layout"));
    let target = work.path().join("projects");
    let crashed = bin()
        .args(["--from", &reference, "--to"])
        .arg(&target)
        .env("WSR_TEST_ABORT_AT", "before-marker-rename")
        .output()
        .unwrap();
    assert!(stderr(&crashed).contains("test hook: aborting"));
    let staging = std::fs::read_dir(&target)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::rename(staging.join("complete.partial"), staging.join("complete")).unwrap();
    std::fs::File::create(staging.join("complete")).unwrap();
    let rerun = bin()
        .args(["--json", "--from", &reference, "--to"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    let stdout = String::from_utf8_lossy(&rerun.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        report["resumed"], false,
        "a torn marker is not resumed from"
    );
    assert_eq!(listing(&target), listing(&src));
}

/// The last instants of a restore: everything moved into place, the staging directory being
/// removed. A kill there must leave a directory the rerun recognises and removes, never one
/// that wedges the target (a planted look-alike or a forged marker are `safety.rs`'s cases).
#[test]
fn killed_while_cleaning_up_leaves_nothing_a_rerun_cannot_finish() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    tree(&src, 50);
    let reference = publish(&src, &work.path().join("layout"));
    let target = work.path().join("projects");
    // (hook, what the rerun does: resume and succeed, or see the finished tree as not empty)
    for (point, rerun_code) in [
        ("after-removing-identity", 0),
        ("after-removing-complete", 3),
    ] {
        let _ = std::fs::remove_dir_all(&target);
        let crashed = bin()
            .args(["--from", &reference, "--to"])
            .arg(&target)
            .env("WSR_TEST_ABORT_AT", point)
            .output()
            .unwrap();
        assert!(
            stderr(&crashed).contains("test hook: aborting"),
            "{point}: {}",
            stderr(&crashed)
        );
        // Everything is already in place; only the staging directory is left.
        let visible: Vec<String> = listing(&target)
            .into_iter()
            .filter(|l| !l.starts_with(".wsr-restore-"))
            .collect();
        assert_eq!(visible, listing(&src), "{point}");
        assert!(user_entries(&target).len() < std::fs::read_dir(&target).unwrap().count());
        let rerun = bin()
            .args(["--from", &reference, "--to"])
            .arg(&target)
            .output()
            .unwrap();
        assert_eq!(
            rerun.status.code(),
            Some(rerun_code),
            "{point}: {}",
            stderr(&rerun)
        );
        assert_eq!(listing(&target), listing(&src), "{point}");
        let leftovers: Vec<_> = std::fs::read_dir(&target)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".wsr-"))
            .collect();
        assert!(leftovers.is_empty(), "{point}: staging left behind");
    }
    // Killed before `identity` was written: an empty staging directory does not count as
    // content, and the next restore removes it.
    let _ = std::fs::remove_dir_all(&target);
    let empty = target.join(".wsr-restore-0123456789abcdef0123456789abcdef");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::set_permissions(&empty, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    assert!(user_entries(&target).is_empty());
    let rerun = bin()
        .args(["--from", &reference, "--to"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    assert!(!empty.exists());
    assert_eq!(listing(&target), listing(&src));
}

#[test]
fn non_empty_target_is_refused_unless_forced_and_force_moves_content_aside() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    tree(&src, 10);
    let reference = publish(&src, &work.path().join("layout"));
    let target = work.path().join("projects");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("precious.txt"), "user data\n").unwrap();
    let refused = bin()
        .args(["--from", &reference, "--to"])
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(target.join("precious.txt")).unwrap(),
        "user data\n"
    );

    let forced = bin()
        .args(["--force", "--json", "--from", &reference, "--to"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(forced.status.success(), "{}", stderr(&forced));
    let report: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&forced.stdout)
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    let aside = PathBuf::from(report["moved_aside"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(aside.join("precious.txt")).unwrap(),
        "user data\n"
    );
    assert_eq!(listing(&target), listing(&src));
}

/// The contract itself is tested through the library (`tests/init.rs`); this checks the
/// binary's output and exit codes for it.
#[test]
fn init_mode_output_and_exit_codes() {
    let work = tempfile::tempdir().unwrap();
    let full = work.path().join("projects");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("work.rs"), "fn main() {}\n").unwrap();
    let init = |root: &Path, extra: &[(&str, &str)]| {
        let mut c = bin();
        c.arg("init")
            .env("BACKUP_IMAGE", "127.0.0.1:1/ns/ws:latest")
            .env("PROJECTS_ROOT", root)
            .env("ORAS_EXTRA_ARGS", "--plain-http");
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let skipped = init(&full, &[("WSR_LOG", "info")]);
    assert!(skipped.status.success(), "{}", stderr(&skipped));
    assert!(
        String::from_utf8_lossy(&skipped.stdout).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&skipped.stdout)
    );

    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let down = init(&empty, &[]);
    assert_eq!(down.status.code(), Some(4), "{}", stderr(&down));
    assert!(
        stderr(&down).contains("cannot connect"),
        "{}",
        stderr(&down)
    );
    let optional = init(&empty, &[("WSR_RESTORE_OPTIONAL", "true")]);
    assert!(optional.status.success(), "{}", stderr(&optional));
    assert!(
        stderr(&optional).contains("RESTORE FAILED"),
        "{}",
        stderr(&optional)
    );
    let bad_args = init(&empty, &[("ORAS_EXTRA_ARGS", "--no-such-flag")]);
    assert_eq!(bad_args.status.code(), Some(2), "{}", stderr(&bad_args));
    assert!(stderr(&bad_args).contains("--no-such-flag"));
}

#[test]
fn verify_inspect_and_bad_references() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    tree(&src, 5);
    let reference = publish(&src, &work.path().join("layout"));
    let verify = bin().args(["verify", &reference]).output().unwrap();
    assert!(verify.status.success(), "{}", stderr(&verify));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("dwo format"));
    let inspect = bin()
        .args(["inspect", &reference, "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["manifest"]["artifactType"], media::DWO_ARTIFACT_TYPE);
    let bad = bin()
        .args(["--from", "Not A Ref", "--to"])
        .arg(work.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("invalid reference"),
        "{}",
        stderr(&bad)
    );
    let missing = bin()
        .args([
            "--from",
            &format!("oci:{}:nope", work.path().join("layout").display()),
            "--to",
        ])
        .arg(work.path().join("y"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(6), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("not found"));
}
