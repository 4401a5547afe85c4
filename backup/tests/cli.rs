//! The `wsr-backup` binary: the JSON report, upstream DWO's environment contract
//! (`--dwo-env`), ORAS_EXTRA_ARGS handling, unreadable files, and exit codes.

use std::path::Path;
use std::process::{Command, Output};
use wsr_format::manifest::Manifest;
use wsr_format::reference::Repository;
use wsr_transport::{Access, ConnectOptions, Store};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wsr-backup"));
    for var in [
        "BACKUP_SOURCE_PATH",
        "DEVWORKSPACE_BACKUP_REGISTRY",
        "DEVWORKSPACE_NAMESPACE",
        "DEVWORKSPACE_NAME",
        "WORKSPACE_ID",
        "REGISTRY_AUTH_FILE",
        "ORAS_EXTRA_ARGS",
        "WSR_FORMAT",
    ] {
        c.env_remove(var);
    }
    // Unreachable registries are tried here on purpose: retry for seconds, not a minute.
    c.env("WSR_LOG", "warn")
        .env("WSR_RETRY_SECONDS", "4")
        .arg("--progress")
        .arg("never");
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn source(root: &Path) {
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(root.join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(root.join(".gitignore"), "target\n").unwrap();
}

fn manifest(layout: &Path) -> Manifest {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Store::open(
            &Repository::Layout {
                dir: layout.to_owned(),
            },
            &ConnectOptions::default(),
            Access::Pull,
        )
        .await
        .unwrap();
        let (_, bytes) = store
            .fetch_manifest(&wsr_format::reference::Target::Tag("latest".into()))
            .await
            .unwrap();
        Manifest::from_bytes(&bytes).unwrap()
    })
}

#[test]
fn json_report_is_the_last_stdout_line() {
    let work = tempfile::tempdir().unwrap();
    source(&work.path().join("ws"));
    let out = bin()
        .arg("--json")
        .arg("--source")
        .arg(work.path().join("ws"))
        .arg("--to")
        .arg(format!("oci:{}/l:latest", work.path().display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    for key in [
        "reference",
        "digest",
        "format",
        "files",
        "bytes",
        "uploaded_bytes",
        "reused_layers",
        "duration_s",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {last}");
    }
    assert_eq!(v["files"], 2);
    assert_eq!(v["format"], "native");
}

#[test]
fn dwo_environment_contract_pushes_the_upstream_layout() {
    let work = tempfile::tempdir().unwrap();
    let projects = work.path().join("workspace/abc123/projects");
    source(&projects);
    let out = bin()
        .arg("--dwo-env")
        .env("BACKUP_SOURCE_PATH", &projects)
        .env(
            "DEVWORKSPACE_BACKUP_REGISTRY",
            format!("oci:{}/registry/", work.path().display()),
        )
        .env("DEVWORKSPACE_NAMESPACE", "user-ns")
        .env("DEVWORKSPACE_NAME", "my-ws")
        .env("WORKSPACE_ID", "abc123")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let m = manifest(&work.path().join("registry/user-ns/my-ws"));
    assert_eq!(
        m.artifact_type.as_deref(),
        Some(wsr_format::media::DWO_ARTIFACT_TYPE)
    );
    assert_eq!(m.annotation("devworkspace.name"), Some("my-ws"));
    assert_eq!(m.annotation("devworkspace.namespace"), Some("user-ns"));
    assert_eq!(
        m.layers[0].annotation("org.opencontainers.image.title"),
        Some("devworkspace-backup.tar.gz")
    );

    let native = bin()
        .arg("--dwo-env")
        .env("BACKUP_SOURCE_PATH", &projects)
        .env(
            "DEVWORKSPACE_BACKUP_REGISTRY",
            format!("oci:{}/native", work.path().display()),
        )
        .env("DEVWORKSPACE_NAMESPACE", "user-ns")
        .env("DEVWORKSPACE_NAME", "my-ws")
        .env("WSR_FORMAT", "native")
        .output()
        .unwrap();
    assert!(native.status.success(), "{}", stderr(&native));
    assert_eq!(
        manifest(&work.path().join("native/user-ns/my-ws"))
            .artifact_type
            .as_deref(),
        Some(wsr_format::media::NATIVE_ARTIFACT_TYPE_V3)
    );
}

#[test]
fn bad_environment_and_arguments_exit_2_with_the_reason() {
    let work = tempfile::tempdir().unwrap();
    source(&work.path().join("ws"));
    let missing = bin()
        .arg("--dwo-env")
        .env("BACKUP_SOURCE_PATH", work.path().join("ws"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("DEVWORKSPACE_BACKUP_REGISTRY"),
        "{}",
        stderr(&missing)
    );
    let extra = bin()
        .arg("--dwo-env")
        .env("BACKUP_SOURCE_PATH", work.path().join("ws"))
        .env("DEVWORKSPACE_BACKUP_REGISTRY", "127.0.0.1:1")
        .env("DEVWORKSPACE_NAMESPACE", "n")
        .env("DEVWORKSPACE_NAME", "w")
        .env("ORAS_EXTRA_ARGS", "--insecure --artifact-type x/y")
        .output()
        .unwrap();
    assert_eq!(extra.status.code(), Some(2));
    assert!(
        stderr(&extra).contains("--artifact-type"),
        "{}",
        stderr(&extra)
    );
    let bad_ref = bin()
        .arg("--source")
        .arg(work.path().join("ws"))
        .args(["--to", "quay.io/UPPER/case"])
        .output()
        .unwrap();
    assert_eq!(bad_ref.status.code(), Some(2), "{}", stderr(&bad_ref));
}

#[test]
fn source_problems_exit_3_and_unreachable_registries_exit_4() {
    let work = tempfile::tempdir().unwrap();
    let gone = bin()
        .arg("--source")
        .arg(work.path().join("nope"))
        .arg("--to")
        .arg(format!("oci:{}/l", work.path().display()))
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(3), "{}", stderr(&gone));
    assert!(stderr(&gone).contains("nope"));
    source(&work.path().join("ws"));
    let down = bin()
        .arg("--source")
        .arg(work.path().join("ws"))
        .args(["--plain-http", "--to", "127.0.0.1:1/ns/ws:latest"])
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(4), "{}", stderr(&down));
    assert!(
        stderr(&down).contains("cannot connect"),
        "{}",
        stderr(&down)
    );
}

#[test]
fn an_empty_source_is_a_valid_empty_backup() {
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(work.path().join("empty")).unwrap();
    for format in ["native", "dwo"] {
        let out = bin()
            .args(["--json", "--format", format])
            .arg("--source")
            .arg(work.path().join("empty"))
            .arg("--to")
            .arg(format!("oci:{}/{format}", work.path().display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{format}: {}", stderr(&out));
    }
}

/// Root reads everything, so as root the binary runs as `nobody` through setpriv.
#[test]
fn unreadable_files_fail_by_name_unless_skipped() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let ws = work.path().join("ws");
    source(&ws);
    std::fs::write(ws.join("secret"), "x").unwrap();
    std::fs::set_permissions(ws.join("secret"), std::fs::Permissions::from_mode(0o000)).unwrap();
    // A directory that cannot be opened, and one that can be listed but not searched (no x
    // bit, so its children cannot be looked up): both are unreadable directories.
    for (dir, mode) in [("locked", 0o000), ("listonly", 0o444)] {
        std::fs::create_dir(ws.join(dir)).unwrap();
        std::fs::write(ws.join(dir).join("inside"), "x").unwrap();
        std::fs::set_permissions(ws.join(dir), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    for d in [work.path().to_owned(), ws.clone(), ws.join("src")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let as_nobody = |extra: &[&str], layout: &str| {
        let mut c = if root {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                env!("CARGO_BIN_EXE_wsr-backup"),
            ]);
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_wsr-backup"))
        };
        c.args(["--progress", "never"]);
        c.args(extra)
            .arg("--source")
            .arg(&ws)
            .arg("--to")
            .arg(format!("oci:{}/{layout}", work.path().display()));
        c.env("WSR_LOG", "warn").output().unwrap()
    };
    let failed = as_nobody(&[], "a");
    assert_eq!(failed.status.code(), Some(3), "{}", stderr(&failed));
    assert!(
        // The first unreadable entry in canonical order is named.
        stderr(&failed).contains("listonly") && stderr(&failed).contains("--skip-unreadable"),
        "{}",
        stderr(&failed)
    );
    let skipped = as_nobody(&["--skip-unreadable", "--json"], "b");
    assert!(skipped.status.success(), "{}", stderr(&skipped));
    let v: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&skipped.stdout)
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        v["skipped"],
        serde_json::json!([
            "listonly: unreadable directory",
            "locked: unreadable directory",
            "secret: unreadable file"
        ])
    );
}
