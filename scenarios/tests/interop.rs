//! Interop with independent clients: skopeo copies a wsr OCI layout into the registry and wsr
//! restores it; the Go `oras` CLI pushes a backup exactly as upstream's `workspace-recovery.sh`
//! does and wsr restores it; and the oras CLI pulls wsr's `dwo` artifact for GNU tar, as
//! upstream's restore would.

mod common;

use common::*;
use scenarios::oras;
use std::path::PathBuf;
use std::process::Command;
use wsr_backup::Format;
use wsr_transport::testing::{RegistryKind, TestRegistry};

/// The Go `oras` CLI, the client upstream's recovery image ships.
fn oras() -> PathBuf {
    scenarios::oras::cli().unwrap_or_else(|why| panic!("{why}"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn skopeo_copies_a_wsr_layout_to_the_registry_and_wsr_restores_it() {
    let work = sample(false);
    let src = work.path().join("projects");
    let registry = TestRegistry::start(RegistryKind::Plain).unwrap();
    for format in [Format::Native, Format::Dwo] {
        let layout = work.path().join(format!("layout-{format:?}"));
        backup(&backup_options(
            &src,
            &format!("oci:{}:latest", layout.display()),
            format,
            Default::default(),
        ))
        .unwrap();
        let dest = format!(
            "{}/ns/skopeo-{}:latest",
            registry.host(),
            format!("{format:?}").to_lowercase()
        );
        run(Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker://{dest}")));
        let out = work.path().join(format!("out-{format:?}"));
        let report = restore(&dest, &out, connect_for(&registry)).unwrap();
        assert_eq!(report.verified_index, format == Format::Native);
        assert_same_tree(&src, &out);
    }
}

#[test]
fn a_backup_pushed_by_the_oras_cli_like_upstream_restores_completely() {
    let oras = oras();
    let work = sample(false);
    let src = work.path().join("projects");
    let registry = TestRegistry::start(RegistryKind::Plain).unwrap();
    // Upstream, in /tmp: `tar -czvf devworkspace-backup.tar.gz -C "$BACKUP_SOURCE_PATH" .`
    let push_dir = work.path().join("push");
    std::fs::create_dir(&push_dir).unwrap();
    run(Command::new("tar")
        .args(["-czf", oras::ARCHIVE_NAME, "-C"])
        .arg(&src)
        .arg(".")
        .current_dir(&push_dir));
    // Then `oras push` as upstream runs it, with `--plain-http` as the `ORAS_EXTRA_ARGS` this
    // plain-HTTP registry needs.
    let target = format!("{}/ns/upstream:latest", registry.host());
    run(Command::new(&oras)
        .args(oras::push_args(
            &target,
            "upstream",
            "ns",
            &["--plain-http"],
        ))
        .current_dir(&push_dir));

    let out = work.path().join("restored");
    let report = restore(&target, &out, connect_for(&registry)).unwrap();
    assert_eq!(report.format, "dwo");
    // Top-level dotfiles, exec bits, read-only files and directories, mtimes: all kept.
    assert!(out.join(".env").exists() && out.join(".git/config").exists());
    assert_same_tree(&src, &out);
}

#[test]
fn the_oras_cli_pulls_a_wsr_dwo_backup_that_gnu_tar_extracts() {
    let oras = oras();
    let work = sample(false);
    let src = work.path().join("projects");
    let registry = TestRegistry::start(RegistryKind::Plain).unwrap();
    let target = format!("{}/ns/ws:latest", registry.host());
    backup(&backup_options(
        &src,
        &target,
        Format::Dwo,
        connect_for(&registry),
    ))
    .unwrap();
    // The manifest carries what upstream's restore and the Che dashboard read.
    let manifest: serde_json::Value = serde_json::from_str(&run(Command::new(&oras).args([
        "manifest",
        "fetch",
        "--plain-http",
        &target,
    ])))
    .unwrap();
    assert_eq!(manifest["artifactType"], oras::ARTIFACT_TYPE, "{manifest}");
    assert_eq!(
        manifest["layers"][0]["annotations"]["org.opencontainers.image.title"],
        oras::ARCHIVE_NAME,
        "{manifest}"
    );

    // Upstream's restore: `oras pull "$BACKUP_IMAGE" --output /tmp`, then
    // `tar -xzvf /tmp/devworkspace-backup.tar.gz -C /tmp/extracted-backup`.
    let pulled = work.path().join("pulled");
    run(Command::new(&oras).args(oras::pull_args(&target, &pulled, &["--plain-http"])));
    let extracted = work.path().join("extracted");
    std::fs::create_dir(&extracted).unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(pulled.join(oras::ARCHIVE_NAME))
        .arg("-C")
        .arg(&extracted));
    assert_same_tree(&src, &extracted);
}
