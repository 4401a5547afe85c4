//! Interop with independent clients: skopeo copies a wsr OCI layout into the registry and wsr
//! restores it; the `oras` Python SDK pushes a backup exactly as upstream's script lays it out
//! and wsr restores it; and oras-py pulls wsr's `dwo` artifact for GNU tar, as upstream's
//! restore script would.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use wsr_backup::Format;
use wsr_format::testing::{RegistryKind, TestRegistry};

/// The Python with oras-py that `scripts/test.sh` prepares (`WSR_PYTHON`, or `target/pyenv`).
fn python() -> PathBuf {
    let path = std::env::var_os("WSR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python")
        });
    let ok = Command::new(&path)
        .args(["-c", "import oras"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "oras-py is not available at {}; run scripts/test.sh, which installs it",
        path.display()
    );
    path
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

const ORAS_PUSH: &str = r#"
import json, os, sys
import oras.client
host, target, workdir, name, ns = sys.argv[1:6]
os.chdir(workdir)
# oras-py cannot set artifactType; image-spec v1.0 clients (oras CLI < 1.2) express
# --artifact-type as the config media type, which is what this does.
with open("config.json", "w") as f:
    f.write("{}")
client = oras.client.OrasClient(hostname=host, insecure=True)
client.push(
    target=target,
    files=["devworkspace-backup.tar.gz"],
    manifest_config="config.json:application/vnd.devworkspace.backup.artifact.v1+json",
    manifest_annotations={"devworkspace.name": name, "devworkspace.namespace": ns},
)
"#;

#[test]
fn a_backup_pushed_by_oras_py_like_upstream_restores_completely() {
    let py = python();
    let work = sample(false);
    let src = work.path().join("projects");
    let registry = TestRegistry::start(RegistryKind::Plain).unwrap();
    // Upstream: `tar -czvf devworkspace-backup.tar.gz -C "$BACKUP_SOURCE_PATH" .`
    let push_dir = work.path().join("push");
    std::fs::create_dir(&push_dir).unwrap();
    run(Command::new("tar")
        .arg("-czf")
        .arg(push_dir.join("devworkspace-backup.tar.gz"))
        .arg("-C")
        .arg(&src)
        .arg("."));
    let target = format!("{}/ns/upstream:latest", registry.host());
    run(Command::new(&py)
        .args(["-c", ORAS_PUSH, &registry.host(), &target])
        .arg(&push_dir)
        .args(["upstream", "ns"]));

    let out = work.path().join("restored");
    let report = restore(&target, &out, connect_for(&registry)).unwrap();
    assert_eq!(report.format, "dwo");
    // Top-level dotfiles, exec bits, read-only files and directories, mtimes: all kept.
    assert!(out.join(".env").exists() && out.join(".git/config").exists());
    assert_same_tree(&src, &out);
}

const ORAS_PULL: &str = r#"
import sys
import oras.client
host, target, outdir = sys.argv[1:4]
client = oras.client.OrasClient(hostname=host, insecure=True)
print("\n".join(client.pull(target=target, outdir=outdir)))
"#;

#[test]
fn oras_py_pulls_a_wsr_dwo_backup_that_gnu_tar_extracts() {
    let py = python();
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
    let pulled = work.path().join("pulled");
    let files = run(Command::new(&py)
        .args(["-c", ORAS_PULL, &registry.host(), &target])
        .arg(&pulled));
    assert!(
        files.trim().ends_with("devworkspace-backup.tar.gz"),
        "{files}"
    );
    let extracted = work.path().join("extracted");
    std::fs::create_dir(&extracted).unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(pulled.join("devworkspace-backup.tar.gz"))
        .arg("-C")
        .arg(&extracted));
    assert_same_tree(&src, &extracted);
}
