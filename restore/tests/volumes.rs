//! Restores into small filesystems the test mounts (tmpfs; needs root, else skipped with a
//! message): `--force` on a mount point, a full disk, exhausted inodes and a read-only target.
//! Each runs as root and as `nobody`; the target must be left as it was, with no staging
//! directory behind, and the exit code must be 3 (a target problem).

mod common;

use common::archive::{Tar, gzip};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, options: &str, owner: Option<u32>) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir));
        if let Some(uid) = owner {
            run(Command::new("chown").arg(format!("{uid}:{uid}")).arg(dir));
        }
        Tmpfs {
            dir: dir.to_owned(),
        }
    }
    fn read_only(&self) {
        run(Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.dir));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn run(c: &mut Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn restore(uid: Option<u32>, reference: &str, target: &Path, extra: &[&str]) -> Output {
    let mut c = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg(env!("CARGO_BIN_EXE_wsr-restore"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_wsr-restore")),
    };
    c.env_remove("WSR_TEST_ABORT_AT")
        .env("WSR_LOG", "warn")
        .args(["--progress", "never", "--json", "--from", reference, "--to"])
        .arg(target)
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A world-readable layout holding `tar` as a tarball artifact.
fn publish(work: &Path, name: &str, tar: Vec<u8>) -> String {
    let layout = work.join(name);
    let reference = common::publish_blob(&layout, gzip(&tar));
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(&layout));
    reference
}

/// Root and `nobody`, or nothing (with a message) when the tests do not run as root.
fn runners() -> Vec<Option<u32>> {
    if is_root() {
        vec![None, Some(NOBODY)]
    } else {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        vec![]
    }
}

fn work() -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    work
}

fn precious(target: &Path, uid: Option<u32>) {
    std::fs::write(target.join("precious"), b"mine").unwrap();
    if let Some(uid) = uid {
        run(Command::new("chown")
            .arg(format!("{uid}:{uid}"))
            .arg(target.join("precious")));
    }
}

#[test]
fn force_on_a_mount_point_moves_content_aside_inside_it() {
    for uid in runners() {
        let work = work();
        let reference = publish(
            work.path(),
            "layout",
            Tar::default().file("new", b"n").end(),
        );
        let target = work.path().join("projects");
        let _mount = Tmpfs::mount(&target, "size=16m", uid);
        precious(&target, uid);
        let out = restore(uid, &reference, &target, &["--force"]);
        assert!(out.status.success(), "{uid:?}: {}", stderr(&out));
        let report: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap())
                .unwrap();
        let aside = PathBuf::from(report["moved_aside"].as_str().unwrap());
        assert_eq!(aside.parent(), Some(target.as_path()), "{uid:?}: {aside:?}");
        assert_eq!(std::fs::read(aside.join("precious")).unwrap(), b"mine");
        assert_eq!(std::fs::read(target.join("new")).unwrap(), b"n");
        assert_eq!(
            names(work.path()),
            ["layout", "projects"],
            "{uid:?}: no sibling"
        );
    }
}

/// The target is left exactly as it was: its one file, no staging directory.
fn assert_untouched(target: &Path, case: &str) {
    assert_eq!(names(target), ["precious"], "{case}");
    assert_eq!(
        std::fs::read(target.join("precious")).unwrap(),
        b"mine",
        "{case}"
    );
}

#[test]
fn a_full_disk_or_no_inodes_fail_cleanly() {
    for uid in runners() {
        let work = work();
        // 400 files of 4100 bytes: 1.6 MB declared (within the free space), but each takes two
        // 4 KiB pages, so the 2 MiB filesystem fills up part-way.
        let mut pages = Tar::default();
        for i in 0..400 {
            pages = pages.file(&format!("f{i:03}"), &[b'x'; 4100]);
        }
        let full = publish(work.path(), "full", pages.end());
        let mut empties = Tar::default();
        for i in 0..200 {
            empties = empties.file(&format!("e{i:03}"), b"");
        }
        let inodes = publish(work.path(), "inodes", empties.end());
        for (case, reference, options, want) in [
            ("disk full", &full, "size=2m", "No space left on device"),
            ("no inodes", &inodes, "size=16m,nr_inodes=64", "entries"),
        ] {
            let target = work.path().join(case.replace(' ', "-"));
            let _mount = Tmpfs::mount(&target, options, uid);
            precious(&target, uid);
            for extra in [&[][..], &["--force"][..]] {
                let out = restore(uid, reference, &target, extra);
                let case = format!("{case} {extra:?} as {uid:?}");
                if extra.is_empty() {
                    assert_eq!(out.status.code(), Some(3), "{case}: {}", stderr(&out));
                    assert!(stderr(&out).contains("not empty"), "{case}");
                    continue;
                }
                assert_eq!(out.status.code(), Some(3), "{case}: {}", stderr(&out));
                assert!(stderr(&out).contains(want), "{case}: {}", stderr(&out));
                assert_untouched(&target, &case);
            }
        }
    }
}

#[test]
fn a_read_only_target_fails_cleanly() {
    for uid in runners() {
        let work = work();
        let reference = publish(
            work.path(),
            "layout",
            Tar::default().file("new", b"n").end(),
        );
        let target = work.path().join("projects");
        let mount = Tmpfs::mount(&target, "size=4m", uid);
        precious(&target, uid);
        mount.read_only();
        let out = restore(uid, &reference, &target, &["--force"]);
        assert_eq!(out.status.code(), Some(3), "{uid:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("Read-only file system"),
            "{}",
            stderr(&out)
        );
        assert_untouched(&target, "read-only mount");
        // Not writable for this user (only meaningful for nobody: root writes anyway).
        if uid.is_some() {
            let other = work.path().join("root-owned");
            std::fs::create_dir(&other).unwrap();
            precious(&other, None);
            let out = restore(uid, &reference, &other, &["--force"]);
            assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
            assert_untouched(&other, "not writable");
        }
    }
}
