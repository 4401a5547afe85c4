//! The `wsr-operator` binary's offline subcommands, run as a user would. (This also makes
//! `cargo test --workspace` build the binary that the cluster scenarios start.)

use std::io::Write as _;
use std::process::{Command, Stdio};

fn operator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wsr-operator"))
}

#[test]
fn crd_prints_the_committed_manifest() {
    let out = operator().arg("crd").output().unwrap();
    assert!(out.status.success());
    let committed = include_str!("../deploy/crd.yaml");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
}

#[test]
fn import_dwoc_reads_stdin_and_refuses_what_is_not_a_dwoc() {
    let run = |input: &str| {
        let mut child = operator()
            .args(["import-dwoc", "-", "--name", "migrated"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(
        "kind: DevWorkspaceOperatorConfig\nconfig:\n  workspace:\n    backupCronJob:\n      enable: true\n      registry: {path: quay.io/org}\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let policy = String::from_utf8(out.stdout).unwrap();
    assert!(policy.contains("kind: BackupPolicy"), "{policy}");
    assert!(policy.contains("name: migrated"), "{policy}");
    assert!(policy.contains("path: quay.io/org"), "{policy}");

    let out = run("kind: Pod\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a DevWorkspaceOperatorConfig"));
}
