//! Podman and the recovery image as this machine needs them (shared/reference/environment.md
//! §3): the image storage `images/build.sh` writes to, vfs storage, runc, cgroupfs and explicit
//! ulimits. Shared by the image tests and the node agent so both run containers the same way.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The repository root (scenarios is one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("scenarios lives in the repository root")
        .to_path_buf()
}

/// Podman storage holding the images `images/build.sh` builds: `WSR_IMAGE_STORAGE`, default
/// `<repo>/target/image/containers`.
pub fn image_storage() -> PathBuf {
    std::env::var_os("WSR_IMAGE_STORAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/image/containers"))
}

/// The flags every podman call needs here, before the subcommand.
pub fn global_args(storage: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--root".into(), storage.join("root").into()];
    args.extend([
        "--runroot".into(),
        storage.join("run").into(),
        "--storage-driver".into(),
        "vfs".into(),
        "--runtime".into(),
        "runc".into(),
        "--cgroup-manager".into(),
        "cgroupfs".into(),
    ]);
    args
}

/// A podman command on `storage` with [`global_args`].
pub fn command(storage: &Path) -> Command {
    let mut command = Command::new("podman");
    command.args(global_args(storage));
    command
}

/// The most a container is given of any limit: runc fails to set an nproc hard limit of
/// 65536 here even where this process has 96365 (measured), while 32768 works.
pub const RLIMIT_CAP: u64 = 32768;

/// This process's (soft, hard) limit for `resource`, capped at [`RLIMIT_CAP`]: what a container
/// may be given here (podman's own defaults exceed it and runc then fails to set them).
pub fn rlimit(resource: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct through the valid pointer.
    let rc = unsafe { libc::getrlimit(resource, &mut limit) };
    if rc != 0 {
        return (1024, 1024);
    }
    let clamp = |v: libc::rlim_t| v.min(RLIMIT_CAP);
    (clamp(limit.rlim_cur), clamp(limit.rlim_max))
}

/// Builds the recovery image with `images/build.sh --binaries DIR` into `storage` and returns
/// its reference. `binaries` holds static wsr-backup, wsr-restore and workspace-recovery.
pub fn build_recovery_image(binaries: &Path, storage: &Path) -> Result<String> {
    let root = repo_root();
    let output = Command::new(root.join("images/build.sh"))
        .arg("--binaries")
        .arg(binaries)
        .env("WSR_IMAGE_STORAGE", storage)
        .current_dir(&root)
        .output()
        .context("cannot run images/build.sh")?;
    if !output.status.success() {
        bail!(
            "images/build.sh failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8(output.stdout)?;
    Ok(stdout
        .lines()
        .last()
        .context("images/build.sh printed no image reference")?
        .trim()
        .to_owned())
}

/// The recovery image built from `binaries` into [`image_storage`], where the node agent runs
/// it from; built once per process (a second call returns the first reference).
pub fn recovery_image(binaries: &Path) -> Result<String> {
    static IMAGE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let mut image = IMAGE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(reference) = image.as_ref() {
        return Ok(reference.clone());
    }
    let reference = build_recovery_image(binaries, &image_storage())?;
    *image = Some(reference.clone());
    Ok(reference)
}

/// The directory of a test run's binaries (`target/[TRIPLE/]debug`), found from the running
/// test executable in its `deps/` subdirectory; fails with the command that builds them.
/// `WSR_TEST_BINARIES` overrides it (a copy made right after building, when several
/// checkouts share one target directory and may rebuild the binaries meanwhile).
pub fn test_build_binaries() -> PathBuf {
    let dir = match std::env::var_os("WSR_TEST_BINARIES") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            exe.parent()
                .and_then(Path::parent)
                .expect("target/<profile>/deps")
                .to_owned()
        }
    };
    for b in [
        "wsr-backup",
        "wsr-restore",
        "workspace-recovery",
        "wsr-operator",
    ] {
        assert!(
            dir.join(b).is_file(),
            "{} is missing: run the suite with scripts/test.sh (or `cargo build -p wsr-backup -p wsr-restore -p wsr-operator` \
             with the same flags first)",
            dir.join(b).display()
        );
    }
    dir
}
