//! Credentials never appear in what wsr prints: every command of both binaries, succeeding and
//! failing (wrong password, unreachable host, TLS verification failure), with `--json` and
//! without, with progress on and off and debug logging, against the real registry with htpasswd
//! auth. The password and its base64 form must be absent from stdout and stderr (the
//! termination message is the first line of the error on stderr).

use scenarios::podman::test_build_binaries;
use std::path::Path;
use std::process::{Command, Output};
use wsr_transport::testing::{RegistryKind, TestRegistry};

const WRONG_PASSWORD: &str = "Wr0ng-pa55word-4-wsr";

/// Standard base64 with padding (as docker config.json stores `user:password`).
fn base64(text: &str) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn auth_file(path: &Path, hosts: &[String], user: &str, password: &str) {
    let auths: serde_json::Map<String, serde_json::Value> = hosts
        .iter()
        .map(|h| {
            let auth = base64(&format!("{user}:{password}"));
            (h.clone(), serde_json::json!({ "auth": auth }))
        })
        .collect();
    std::fs::write(path, serde_json::json!({ "auths": auths }).to_string()).unwrap();
}

/// Runs one command; asserts its outcome and that no secret is in its output.
fn check(what: &str, c: &mut Command, succeed: bool, secrets: &[String]) -> Output {
    let out = c.env("WSR_LOG", "debug").output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.success(), succeed, "{what}: {text}");
    for secret in secrets {
        assert!(!text.contains(secret.as_str()), "{what} printed a secret");
    }
    out
}

#[test]
fn credentials_never_appear_in_any_output() {
    assert_eq!(
        base64("tester:not-the-password"),
        "dGVzdGVyOm5vdC10aGUtcGFzc3dvcmQ="
    );
    let bin = test_build_binaries();
    let registry = TestRegistry::start(RegistryKind::TlsAuth).unwrap();
    let (user, password) = registry.credentials().unwrap();
    let work = tempfile::tempdir().unwrap();
    let ws = work.path().join("ws");
    std::fs::create_dir_all(ws.join("src")).unwrap();
    std::fs::write(ws.join("src/main.rs"), "fn main() {}\n").unwrap();
    let down = "127.0.0.1:1".to_owned();
    let hosts = [registry.host(), down.clone()];
    let good = work.path().join("good.json");
    let wrong = work.path().join("wrong.json");
    auth_file(&good, &hosts, user, password);
    auth_file(&wrong, &hosts, user, WRONG_PASSWORD);
    let secrets = [
        password.to_owned(),
        base64(&format!("{user}:{password}")),
        WRONG_PASSWORD.to_owned(),
        base64(&format!("{user}:{WRONG_PASSWORD}")),
    ];
    let ca = registry.ca_file().unwrap().to_str().unwrap().to_owned();
    let reference = format!("{}/ns/ws:latest", registry.host());
    let backup = || {
        let mut c = Command::new(bin.join("wsr-backup"));
        // The unreachable-host runs: retry for seconds, not the production minute.
        c.env("WSR_RETRY_SECONDS", "4");
        c.arg("--source").arg(&ws);
        c
    };
    let restore = || {
        let mut c = Command::new(bin.join("wsr-restore"));
        c.env("WSR_RETRY_SECONDS", "4");
        c
    };
    // (what, auth file, CA given, reference, should succeed)
    let variants = [
        ("good", &good, true, reference.clone(), true),
        ("wrong password", &wrong, true, reference.clone(), false),
        (
            "unreachable host",
            &good,
            true,
            format!("{down}/ns/ws:latest"),
            false,
        ),
        ("TLS failure", &good, false, reference.clone(), false),
    ];
    let mut runs = 0;
    for (what, auth, with_ca, reference, ok) in &variants {
        for (json, progress) in [(false, "never"), (true, "always"), (false, "auto")] {
            let connect = |c: &mut Command| {
                c.arg("--auth-file")
                    .arg(auth)
                    .args(["--progress", progress]);
                if *with_ca {
                    c.args(["--ca-file", &ca]);
                }
                if json {
                    c.arg("--json");
                }
            };
            let case = |cmd: &str| format!("{cmd} ({what}, json {json}, progress {progress})");
            let mut c = backup();
            c.args(["--to", reference]);
            connect(&mut c);
            check(&case("backup"), &mut c, *ok, &secrets);
            let mut c = restore();
            c.args(["--from", reference, "--to"])
                .arg(work.path().join(format!("r{runs}")));
            connect(&mut c);
            check(&case("restore"), &mut c, *ok, &secrets);
            for sub in [vec!["inspect", reference], vec!["verify", reference]] {
                let mut c = restore();
                c.args(&sub);
                connect(&mut c);
                check(&case(sub[0]), &mut c, *ok, &secrets);
            }
            // `list` reports per-repository errors in its rows and exits 0 when the catalog
            // answered; only its output matters here.
            let host = reference.split('/').next().unwrap();
            let mut c = restore();
            c.args(["list", "--registry", host]);
            connect(&mut c);
            let _ = c.env("WSR_LOG", "debug").output().map(|out| {
                let text = String::from_utf8_lossy(&out.stdout).to_string()
                    + &String::from_utf8_lossy(&out.stderr);
                for s in &secrets {
                    assert!(
                        !text.contains(s.as_str()),
                        "{} printed a secret",
                        case("list")
                    );
                }
            });
            let mut c = restore();
            c.arg("init")
                .env("BACKUP_IMAGE", reference)
                .env("PROJECTS_ROOT", work.path().join(format!("i{runs}")))
                .env("REGISTRY_AUTH_FILE", auth)
                .env(
                    "ORAS_EXTRA_ARGS",
                    if *with_ca {
                        format!("--ca-file {ca}")
                    } else {
                        String::new()
                    },
                )
                .args(["--progress", progress]);
            if json {
                c.arg("--json");
            }
            check(&case("init"), &mut c, *ok, &secrets);
            runs += 1;
        }
    }
    assert_eq!(runs, 12);
}
