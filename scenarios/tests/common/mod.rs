//! Helpers shared by the scenario tests: running the engines in-process against a registry or
//! layout, and comparing trees.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use wsr_backup::{BackupOptions, BackupReport, Format};
use wsr_format::reference::Reference;
use wsr_restore::{RestoreOptions, RestoreReport};
use wsr_transport::ConnectOptions;
use wsr_transport::testing::TestRegistry;

pub fn connect_for(registry: &TestRegistry) -> ConnectOptions {
    scenarios::cluster_demo::connect_for(registry)
}

pub fn backup_options(
    source: &Path,
    to: &str,
    format: Format,
    connect: ConnectOptions,
) -> BackupOptions {
    BackupOptions {
        source: source.to_owned(),
        to: to.parse().expect("valid reference"),
        format,
        workspace: Some("ws".into()),
        namespace: Some("ns".into()),
        workspace_id: Some("workspace0123".into()),
        level: if format == Format::Native { 3 } else { 1 },
        workers: 4,
        keep: None,
        skip_unreadable: false,
        full: false,
        connect,
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn backup(options: &BackupOptions) -> Result<BackupReport, wsr_backup::BackupError> {
    runtime().block_on(wsr_backup::run(options, Arc::default()))
}

pub fn restore(
    from: &str,
    to: &Path,
    connect: ConnectOptions,
) -> Result<RestoreReport, wsr_restore::RestoreError> {
    let options = RestoreOptions {
        from: from.parse::<Reference>().expect("valid reference"),
        to: to.to_owned(),
        paths: None,
        force: false,
        max_size: None,
        parallel: 4,
        sync: true,
        connect,
    };
    runtime().block_on(wsr_restore::restore(&options, Arc::default()))
}

/// The snapshot of a source tree as a restore should reproduce it: special files are not backed up.
pub fn expected_snapshot(source: &Path) -> Vec<String> {
    scenarios::sample::snapshot(source)
        .expect("snapshot")
        .into_iter()
        .filter(|l| !l.contains(" special "))
        .collect()
}

pub fn assert_same_tree(source: &Path, restored: &Path) {
    let want = expected_snapshot(source);
    let got = scenarios::sample::snapshot(restored).expect("snapshot");
    if want != got {
        let missing: Vec<_> = want.iter().filter(|l| !got.contains(l)).collect();
        let extra: Vec<_> = got.iter().filter(|l| !want.contains(l)).collect();
        panic!(
            "trees differ\nmissing from restore: {missing:#?}\nunexpected in restore: {extra:#?}"
        );
    }
}

/// A temp dir whose read-only subdirectories are made removable on drop.
pub struct Dir(pub tempfile::TempDir);

impl Dir {
    pub fn new() -> Dir {
        Dir(tempfile::tempdir().expect("tempdir"))
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        scenarios::sample::make_removable(self.0.path());
    }
}

/// The sample workspace in a fresh temp dir.
pub fn sample(with_fifo: bool) -> Dir {
    let dir = Dir::new();
    let src = dir.path().join("projects");
    std::fs::create_dir(&src).unwrap();
    scenarios::sample::write_sample(&src, with_fifo).expect("sample tree");
    dir
}

/// Whether the slow scenarios run: `scripts/test.sh` sets `WSR_SLOW_TESTS=1`, so a plain
/// `cargo test` stays fast (as rust-analyzer gates its heavy tests on `RUN_SLOW_TESTS`).
/// A skipped test says so on stderr.
pub fn slow_tests_enabled(test: &str) -> bool {
    let enabled = std::env::var_os("WSR_SLOW_TESTS").is_some_and(|v| v == "1");
    if !enabled {
        eprintln!("{test}: skipped (slow; set WSR_SLOW_TESTS=1, as scripts/test.sh does)");
    }
    enabled
}

/// The `wsr-backup` and `wsr-restore` binaries under test: `WSR_TEST_BIN_DIR` if set (a copy
/// taken right after building, safe from other builds sharing the target directory), else
/// this build's.
pub fn binaries() -> std::path::PathBuf {
    std::env::var_os("WSR_TEST_BIN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(scenarios::podman::test_build_binaries)
}

pub const RESTRICTED: (&str, &str) = scenarios::cluster::fixtures::RESTRICTED;

/// The cluster this test binary shares (one per binary: start-up costs seconds), with the node
/// agent of this build.
pub fn cluster() -> &'static scenarios::cluster::Cluster {
    // A copy of the binaries (see `scenarios::podman::test_build_binaries`) may hold it too.
    let copy = std::env::var_os("WSR_TEST_BINARIES").map(|d| Path::new(&d).join("scenarios"));
    let exe = match &copy {
        Some(copy) if copy.is_file() => copy.as_path(),
        _ => Path::new(env!("CARGO_BIN_EXE_scenarios")),
    };
    let options = scenarios::cluster::StartOptions {
        node_agent: Some(exe.to_owned()),
        ..Default::default()
    };
    scenarios::cluster::Cluster::shared(&options, exe)
}

/// The recovery image, built once per test binary from this run's static binaries.
pub fn image() -> &'static str {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        scenarios::podman::recovery_image(&scenarios::podman::test_build_binaries())
            .expect("images/build.sh")
    })
}
