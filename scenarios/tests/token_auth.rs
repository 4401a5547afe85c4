//! The binaries against a bearer-token registry (distribution's `auth: token`, with the test
//! token issuer): backup with `--keep` (push, then delete), restore, `wsr-restore list` (the
//! catalog) each ask for the scopes they need and work; a read-only user restores and lists
//! but cannot back up (exit 5, a reason naming the missing permission, nothing published).

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};
use wsr_transport::testing::{READER_USER, RegistryKind, TEST_USER, TestRegistry, TokenRequest};

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The scopes `user` was granted, one entry per token.
fn granted(requests: &[TokenRequest], user: &str) -> Vec<Vec<String>> {
    requests
        .iter()
        .filter(|r| r.user.as_deref() == Some(user) && r.status == 200)
        .map(|r| r.granted.clone())
        .collect()
}

/// The registry's tags for `repo`, read from its storage (curl would need a token).
fn tags(registry: &TestRegistry, repo: &str) -> Vec<String> {
    let manifests = registry
        .data_dir()
        .join("docker/registry/v2/repositories")
        .join(repo)
        .join("_manifests/tags");
    let mut tags: Vec<String> = std::fs::read_dir(manifests)
        .map(|dir| {
            dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags
}

#[test]
fn binaries_ask_for_the_scopes_they_need_and_a_read_only_user_cannot_back_up() {
    let bin = binaries();
    let registry = TestRegistry::start(RegistryKind::TlsToken).unwrap();
    let issuer = registry.token_issuer().unwrap();
    let work = sample(false);
    let src = work.path().join("projects");
    let ca = registry.ca_file().unwrap().to_owned();
    let writer = registry.auth_file().unwrap().to_owned();
    let reader = registry.reader_auth_file().unwrap().to_owned();
    let reference = format!("{}/ns/ws:latest", registry.host());
    let run = |program: &str, auth: &Path, args: &[&str]| -> Output {
        Command::new(bin.join(program))
            .args(args)
            .arg("--ca-file")
            .arg(&ca)
            .arg("--auth-file")
            .arg(auth)
            .args(["--progress", "never"])
            .env("WSR_LOG", "info")
            .output()
            .unwrap()
    };
    let source = src.to_str().unwrap();

    // Two backups with --keep 1: the second deletes the first's time-stamped manifest.
    for round in 0..2 {
        std::fs::write(src.join("round.txt"), format!("{round}\n")).unwrap();
        let out = run(
            "wsr-backup",
            &writer,
            &["--source", source, "--to", &reference, "--keep", "1"],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let after_writes = tags(&registry, "ns/ws");
    assert_eq!(after_writes.len(), 2, "{after_writes:?}");
    assert!(after_writes.contains(&"latest".to_owned()));
    let writes = granted(&issuer.requests(), TEST_USER);
    assert!(
        writes
            .iter()
            .any(|g| g == &["repository:ns/ws:pull,push".to_owned()]),
        "{writes:?}"
    );
    assert!(
        writes
            .iter()
            .any(|g| g == &["repository:ns/ws:pull,push,delete".to_owned()]),
        "retention asked for delete: {writes:?}"
    );

    // The read-only user restores and lists.
    let restored = work.path().join("restored");
    let to = restored.to_str().unwrap();
    let out = run("wsr-restore", &reader, &["--from", &reference, "--to", to]);
    assert!(out.status.success(), "{}", text(&out));
    assert_same_tree(&src, &restored);
    let out = run(
        "wsr-restore",
        &reader,
        &["list", "--registry", &registry.host()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["ns", "ws"])),
        "{}",
        text(&out)
    );
    let reads = granted(&issuer.requests(), READER_USER);
    assert!(
        reads.contains(&vec!["registry:catalog:*".to_owned()]),
        "{reads:?}"
    );
    assert!(
        reads.contains(&vec!["repository:ns/ws:pull".to_owned()]),
        "{reads:?}"
    );

    // ... but cannot back up: exit 5 (authorisation), the reason, and nothing changed.
    std::fs::write(src.join("round.txt"), "reader\n").unwrap();
    let out = run(
        "wsr-backup",
        &reader,
        &["--source", source, "--to", &reference, "--keep", "1"],
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("access denied")
            && stderr.contains("did not grant repository:ns/ws:")
            && stderr.contains("push"),
        "{}",
        text(&out)
    );
    let (_, password) = registry.reader_credentials().unwrap();
    assert!(!text(&out).contains(password));
    assert_eq!(tags(&registry, "ns/ws"), after_writes);
    for grant in granted(&issuer.requests(), READER_USER) {
        assert!(grant.iter().all(|g| !g.contains("push")), "{grant:?}");
    }
}
