//! The init-container contract (`wsr_restore::init`), through the library: the environment is
//! a lookup, so no binary is spawned. Backups are hand-made `dwo` artifacts in an OCI layout.

mod common;

use common::archive::{Tar, gzip};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use wsr_restore::RestoreError;
use wsr_restore::init::{InitEnvError, InitError, InitOutcome, init};
use wsr_transport::ConnectOptions;

/// Nothing listens on port 1 of loopback: any network access fails.
const UNREACHABLE: &str = "127.0.0.1:1/ns/ws:latest";

fn run(vars: &[(&str, &str)]) -> Result<InitOutcome, InitError> {
    // UNREACHABLE is tried on purpose: retry for seconds, not the production minute.
    let _ = wsr_transport::retry::RetryPolicy {
        budget: std::time::Duration::from_secs(4),
        idle_timeout: wsr_transport::retry::DEFAULT_IDLE_TIMEOUT,
    }
    .install();
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |name: &str| env.get(name).cloned();
    tokio::runtime::Runtime::new().unwrap().block_on(init(
        &lookup,
        ConnectOptions::default(),
        Arc::new(wsr_restore::Progress::default()),
    ))
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_non_empty_target_is_left_alone_before_any_network_access() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("projects");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("work.rs"), "fn main() {}\n").unwrap();
    let root_text = root.to_str().unwrap();
    // Even a reference that cannot be parsed is never looked at.
    for image in [UNREACHABLE, "Not A Ref"] {
        let outcome = run(&[("PROJECTS_ROOT", root_text), ("BACKUP_IMAGE", image)]).unwrap();
        let InitOutcome::NotEmpty { target, entries } = outcome else {
            panic!("{image}: {outcome:?}");
        };
        assert_eq!((target.as_path(), entries), (root.as_path(), 1));
    }
    assert_eq!(names(&root), ["work.rs"]);
    assert_eq!(
        std::fs::read_to_string(root.join("work.rs")).unwrap(),
        "fn main() {}\n"
    );
}

#[test]
fn an_empty_target_is_restored() {
    let work = tempfile::tempdir().unwrap();
    let tar = Tar::default()
        .dir("./", 0o755)
        .file("./.hidden", b"dotfile\n")
        .dir("./src", 0o755)
        .file_mode("./src/run.sh", b"#!/bin/sh\n", 0o755)
        .end();
    let reference = common::publish_blob(&work.path().join("layout"), gzip(&tar));
    let root = work.path().join("projects");
    std::fs::create_dir(&root).unwrap();
    let outcome = run(&[
        ("PROJECTS_ROOT", root.to_str().unwrap()),
        ("BACKUP_IMAGE", &reference),
    ])
    .unwrap();
    let InitOutcome::Restored(report) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!((report.files, report.format.as_str()), (2, "dwo"));
    assert_eq!(names(&root), [".hidden", "src"]);
    let mode = std::fs::metadata(root.join("src/run.sh")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o755
    );
}

#[test]
fn a_failed_restore_fails_init_unless_optional() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("projects");
    std::fs::create_dir(&root).unwrap();
    // A layout that does not exist fails at once (an unreachable registry is retried for a
    // while; tests/cli.rs covers that path through the binary).
    let missing = format!("oci:{}:latest", work.path().join("no-layout").display());
    let base = [
        ("PROJECTS_ROOT", root.to_str().unwrap()),
        ("BACKUP_IMAGE", missing.as_str()),
    ];
    match run(&base) {
        Err(InitError::Restore(RestoreError::Transport(_))) => {}
        other => panic!("{other:?}"),
    }
    for optional in ["", "false", "yes"] {
        let mut vars = base.to_vec();
        vars.push(("WSR_RESTORE_OPTIONAL", optional));
        assert!(run(&vars).is_err(), "WSR_RESTORE_OPTIONAL={optional:?}");
    }
    let mut vars = base.to_vec();
    vars.push(("WSR_RESTORE_OPTIONAL", "true"));
    match run(&vars) {
        Ok(InitOutcome::FailedOptional {
            target,
            error: RestoreError::Transport(_),
        }) => assert_eq!(target, root),
        other => panic!("{other:?}"),
    }
    assert!(names(&root).is_empty(), "{:?}", names(&root));
}

#[test]
fn environment_errors_name_the_variable() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().to_str().unwrap();
    let env_error = |vars: &[(&str, &str)]| match run(vars) {
        Err(InitError::Env(e)) => e,
        other => panic!("{vars:?}: {other:?}"),
    };
    assert!(matches!(
        env_error(&[("BACKUP_IMAGE", UNREACHABLE)]),
        InitEnvError::Missing("PROJECTS_ROOT")
    ));
    assert!(matches!(
        env_error(&[("PROJECTS_ROOT", root), ("BACKUP_IMAGE", "")]),
        InitEnvError::Missing("BACKUP_IMAGE")
    ));
    let oras = env_error(&[
        ("PROJECTS_ROOT", root),
        ("BACKUP_IMAGE", UNREACHABLE),
        ("ORAS_EXTRA_ARGS", "--no-such-flag"),
    ]);
    assert!(matches!(&oras, InitEnvError::OrasExtraArgs(_)), "{oras:?}");
    assert!(oras.to_string().contains("--no-such-flag"), "{oras}");
    assert!(matches!(
        env_error(&[("PROJECTS_ROOT", root), ("BACKUP_IMAGE", "Not A Ref")]),
        InitEnvError::Reference(_)
    ));
}
