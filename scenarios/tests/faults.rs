//! Registry faults (issue #16 item 4): the `wsr-backup` and `wsr-restore` binaries against the
//! real registry behind `wsr_transport::testing::FaultProxy`, which refuses, resets mid-blob,
//! stalls, trickles and answers 500/503/429 (with and without `Retry-After`) or a registry's
//! own refusal on the requests each test selects. Transient faults must be survived (the artifact published is complete and
//! verifies; the restored tree is the source); persistent ones must fail clearly, leaving
//! `latest` as it was and the restore target as it was. Every test prints a `FAULTS <test>
//! injected=N` line (the figures in docs/RELIABILITY.md).

mod common;

use common::{Dir, assert_same_tree, binaries, slow_tests_enabled};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use wsr_format::artifact::{self, Artifact};
use wsr_format::manifest::Manifest;
use wsr_format::reference::{Repository, Target};
use wsr_transport::testing::{Fault, FaultProxy, RegistryKind, Rule, TestRegistry};
use wsr_transport::{Access, ConnectOptions, Store};

/// The retry budget and idle timeout the binaries run with here, in seconds (small, so that
/// persistent faults fail quickly; the defaults are 60 and 60).
const BUDGET: &str = "6";
const IDLE: &str = "2";
const REPO: &str = "ns/ws";

struct Setup {
    registry: TestRegistry,
    work: Dir,
    bin: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let registry = TestRegistry::start(RegistryKind::Plain).unwrap();
        let work = Dir::new();
        let src = work.path().join("projects");
        std::fs::create_dir_all(src.join("src/nested")).unwrap();
        std::fs::write(src.join("README.md"), "faults\n").unwrap();
        std::fs::write(src.join("src/nested/lib.rs"), "pub fn f() {}\n").unwrap();
        // Incompressible, so the layer blob is large enough to be cut part-way.
        std::fs::write(src.join("big.bin"), scenarios::sample::noise(3 << 20, 16)).unwrap();
        Setup {
            registry,
            work,
            bin: binaries(),
        }
    }

    fn src(&self) -> PathBuf {
        self.work.path().join("projects")
    }

    /// Changes the source so the next backup uploads a new layer.
    fn change(&self, seed: u64) {
        std::fs::write(
            self.src().join("big.bin"),
            scenarios::sample::noise(3 << 20, seed),
        )
        .unwrap();
    }

    fn run(&self, binary: &str, host: &str, args: &[&str]) -> Output {
        let output = Command::new(self.bin.join(binary))
            .args(args)
            .args(["--plain-http", "--progress", "never"])
            .env("WSR_RETRY_SECONDS", BUDGET)
            .env("WSR_IDLE_TIMEOUT_SECONDS", IDLE)
            .env("WSR_LOG", "warn")
            .env_remove("REGISTRY_AUTH_FILE")
            .env("DOCKER_CONFIG", self.work.path())
            .output()
            .unwrap();
        eprintln!(
            "{binary} {args:?} via {host}: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn backup(&self, host: &str) -> Output {
        self.backup_as(host, "native")
    }

    fn backup_as(&self, host: &str, format: &str) -> Output {
        let to = format!("{host}/{REPO}:latest");
        let src = self.src();
        self.run(
            "wsr-backup",
            host,
            &[
                "--source",
                src.to_str().unwrap(),
                "--to",
                &to,
                "--format",
                format,
            ],
        )
    }

    fn restore(&self, host: &str, to: &Path, extra: &[&str]) -> Output {
        let from = format!("{host}/{REPO}:latest");
        let mut args = vec!["--from", &from, "--to", to.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.run("wsr-restore", host, &args)
    }

    /// A backup straight to the registry (no proxy); returns `latest`'s digest.
    fn direct_backup(&self) -> String {
        assert!(self.backup(&self.registry.host()).status.success());
        self.latest().expect("latest after a backup")
    }

    /// `latest`'s digest, read straight from the registry.
    fn latest(&self) -> Option<String> {
        let store = self.store();
        common::runtime().block_on(async {
            match store
                .await
                .fetch_manifest(&Target::Tag("latest".into()))
                .await
            {
                Ok((digest, _)) => Some(digest.to_string()),
                Err(e) if e.is_not_found() => None,
                Err(e) => panic!("{e}"),
            }
        })
    }

    /// The repository's tags, sorted, read straight from the registry.
    fn tags(&self) -> Vec<String> {
        let store = self.store();
        let mut tags = common::runtime().block_on(async { store.await.list_tags().await.unwrap() });
        tags.sort();
        tags
    }

    /// The digest `tag` names, read straight from the registry.
    fn digest_of(&self, tag: &str) -> String {
        let store = self.store();
        common::runtime().block_on(async {
            let (digest, _) = store
                .await
                .fetch_manifest(&Target::Tag(tag.into()))
                .await
                .unwrap();
            digest.to_string()
        })
    }

    fn store(&self) -> impl Future<Output = Store> + use<> {
        let repository = Repository::Registry {
            host: self.registry.host(),
            path: REPO.into(),
        };
        async move {
            let options = ConnectOptions {
                plain_http: true,
                ..Default::default()
            };
            Store::open(&repository, &options, Access::Pull)
                .await
                .unwrap()
        }
    }

    /// The digests of `latest`'s data layers.
    fn layer_digests_largest_first(&self) -> Vec<String> {
        let store = self.store();
        common::runtime().block_on(async {
            let store = store.await;
            let (_, bytes) = store
                .fetch_manifest(&Target::Tag("latest".into()))
                .await
                .unwrap();
            match artifact::classify(&Manifest::from_bytes(&bytes).unwrap()).unwrap() {
                Artifact::Native { mut layers, .. } => {
                    // Largest first: the faults below fire after some bytes of `layers[0]`,
                    // and the first layer in order may be a small one.
                    layers.sort_by_key(|l| std::cmp::Reverse(l.size));
                    layers.iter().map(|l| l.digest.to_string()).collect()
                }
                Artifact::Tarball { layer, .. } => vec![layer.digest.to_string()],
            }
        })
    }

    /// `latest` is complete: `wsr-restore verify` (straight to the registry) passes and a
    /// restore reproduces the source.
    fn assert_latest_complete(&self, label: &str) {
        let out = self.verify_and_restore_latest(label);
        assert_same_tree(&self.src(), &out);
    }

    fn verify_and_restore_latest(&self, label: &str) -> PathBuf {
        let host = self.registry.host();
        let from = format!("{host}/{REPO}:latest");
        let verify = self.run("wsr-restore", &host, &["verify", &from]);
        assert!(verify.status.success(), "{label}: verify failed");
        let out = self.work.path().join(format!("check-{label}"));
        assert!(self.restore(&host, &out, &[]).status.success(), "{label}");
        out
    }

    /// A backup through a proxy with `rules` must succeed with a complete artifact; returns
    /// the faults injected.
    fn backup_survives(&self, label: &str, seed: u64, rules: Vec<Rule>) -> usize {
        self.change(seed);
        let proxy = FaultProxy::start(&self.registry.host(), rules).unwrap();
        let out = self.backup(&proxy.host());
        assert!(
            out.status.success(),
            "{label}: backup through faults failed"
        );
        let injected = proxy.injected();
        assert!(
            injected > 0,
            "{label}: no fault was injected: {:?}",
            proxy.seen()
        );
        self.assert_latest_complete(label);
        injected
    }

    /// A restore of `latest` through a proxy with the rules `make` gives (from the layer
    /// digests) must reproduce the source; returns the faults injected.
    fn restore_survives(&self, label: &str, make: impl Fn(&[String]) -> Vec<Rule>) -> usize {
        let proxy = FaultProxy::start(
            &self.registry.host(),
            make(&self.layer_digests_largest_first()),
        )
        .unwrap();
        let out = self.work.path().join(format!("restored-{label}"));
        let result = self.restore(&proxy.host(), &out, &[]);
        assert!(
            result.status.success(),
            "{label}: restore through faults failed"
        );
        let injected = proxy.injected();
        assert!(
            injected > 0,
            "{label}: no fault was injected: {:?}",
            proxy.seen()
        );
        assert_same_tree(&self.src(), &out);
        injected
    }
}

fn figures(test: &str, injected: usize) {
    println!("FAULTS {test} injected={injected}");
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn refused_connections_are_retried() {
    if !slow_tests_enabled("refused_connections_are_retried") {
        return;
    }
    let s = Setup::new();
    s.direct_backup();
    let mut injected = s.backup_survives(
        "refuse-backup",
        1,
        vec![
            Rule::new("POST", "/blobs/uploads/", Fault::Refuse).times(2),
            Rule::new("PUT", "/manifests/latest", Fault::Refuse),
        ],
    );
    injected += s.restore_survives("refuse-restore", |layers| {
        vec![
            Rule::new("GET", "/manifests/latest", Fault::Refuse),
            Rule::new("GET", &layers[0], Fault::Refuse).times(2),
        ]
    });
    figures("refused_connections_are_retried", injected);
}

#[test]
fn resets_mid_blob_are_retried_or_resumed() {
    if !slow_tests_enabled("resets_mid_blob_are_retried_or_resumed") {
        return;
    }
    let s = Setup::new();
    s.direct_backup();
    // The upload is written again; the download resumes with a Range request, twice.
    let mut injected = s.backup_survives(
        "reset-backup",
        2,
        vec![Rule::new(
            "PATCH",
            "/blobs/uploads/",
            Fault::Reset { after: 256 << 10 },
        )],
    );
    injected += s.restore_survives("reset-restore", |layers| {
        vec![Rule::new("GET", &layers[0], Fault::Reset { after: 512 << 10 }).times(2)]
    });
    figures("resets_mid_blob_are_retried_or_resumed", injected);
}

/// The config's upload is opened beside the layers and finished after them: a registry that
/// dropped it meanwhile (its upload unknown at the PUT) gets the config sent again, and the
/// backup completes.
#[test]
fn a_config_upload_the_registry_dropped_is_sent_again() {
    let s = Setup::new();
    s.direct_backup();
    // Unchanged, so every layer is reused: the one blob upload is the config's.
    let unknown = Fault::Answer {
        code: 404,
        body: r#"{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN","message":"blob upload unknown to registry"}]}"#.into(),
    };
    let proxy = FaultProxy::start(
        &s.registry.host(),
        vec![Rule::new("PUT", "/blobs/uploads/", unknown)],
    )
    .unwrap();
    let out = s.backup(&proxy.host());
    assert!(out.status.success(), "{}", stderr(&out));
    let uploads: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|r| r.path.contains("/blobs/uploads/"))
        .map(|r| r.method)
        .collect();
    assert_eq!(
        uploads,
        ["POST", "PUT", "POST", "PUT"],
        "{:?}",
        proxy.seen()
    );
    s.assert_latest_complete("config-upload-dropped");
    figures(
        "a_config_upload_the_registry_dropped_is_sent_again",
        proxy.injected(),
    );
}

/// A registry that ignores `Range` answers a version 3 layer's index request with the whole
/// blob: the restore skips to the index and still verifies and restores everything.
#[test]
fn a_registry_that_ignores_range_still_serves_the_file_index() {
    if !slow_tests_enabled("a_registry_that_ignores_range_still_serves_the_file_index") {
        return;
    }
    let s = Setup::new();
    s.direct_backup();
    let injected = s.restore_survives("ignore-range", |layers| {
        let drop_range = Fault::DropRequestHeader {
            name: "range".into(),
        };
        vec![Rule::new("GET", &layers[0], drop_range).always()]
    });
    figures(
        "a_registry_that_ignores_range_still_serves_the_file_index",
        injected,
    );
}

#[test]
fn stalls_are_detected_by_the_idle_timeout_and_retried() {
    if !slow_tests_enabled("stalls_are_detected_by_the_idle_timeout_and_retried") {
        return;
    }
    let s = Setup::new();
    s.direct_backup();
    let mut injected = s.backup_survives(
        "stall-backup",
        3,
        vec![
            Rule::new(
                "PATCH",
                "/blobs/uploads/",
                Fault::Stall { after: 128 << 10 },
            ),
            Rule::new("PUT", "/manifests/wsr-", Fault::Stall { after: 0 }),
        ],
    );
    injected += s.restore_survives("stall-restore", |layers| {
        vec![
            Rule::new("GET", "/manifests/latest", Fault::Stall { after: 0 }),
            Rule::new("GET", &layers[0], Fault::Stall { after: 256 << 10 }),
        ]
    });
    figures(
        "stalls_are_detected_by_the_idle_timeout_and_retried",
        injected,
    );
}

#[test]
fn a_trickle_is_slow_but_not_a_stall() {
    if !slow_tests_enabled("a_trickle_is_slow_but_not_a_stall") {
        return;
    }
    let s = Setup::new();
    s.direct_backup();
    // 3 MiB at 1 MiB/s: longer than the idle timeout in total, never idle for it.
    let trickle = Fault::Trickle {
        bytes_per_second: 1 << 20,
    };
    let proxy_rules = vec![Rule::new("PATCH", "/blobs/uploads/", trickle.clone())];
    let mut injected = s.backup_survives("trickle-backup", 4, proxy_rules);
    injected += s.restore_survives("trickle-restore", |layers| {
        vec![Rule::new("GET", &layers[0], trickle.clone())]
    });
    figures("a_trickle_is_slow_but_not_a_stall", injected);
}

#[test]
fn error_statuses_are_retried_honouring_retry_after() {
    if !slow_tests_enabled("error_statuses_are_retried_honouring_retry_after") {
        return;
    }
    let s = Setup::new();
    s.direct_backup();
    let status = |code, retry_after| Fault::Status { code, retry_after };
    let mut injected = s.backup_survives(
        "status-backup",
        5,
        vec![
            Rule::new("HEAD", "/blobs/", status(500, None)),
            Rule::new("POST", "/blobs/uploads/", status(429, Some(1))),
            Rule::new("PATCH", "/blobs/uploads/", status(503, None)),
            Rule::new("PUT", "/blobs/uploads/", status(503, Some(1))),
            Rule::new("PUT", "/manifests/latest", status(429, None)).times(2),
        ],
    );
    injected += s.restore_survives("status-restore", |layers| {
        vec![
            Rule::new("GET", "/manifests/latest", status(500, None)),
            Rule::new("GET", &layers[0], status(429, Some(1))),
            Rule::new("GET", &layers[0], status(503, None)).nth(2),
        ]
    });
    figures("error_statuses_are_retried_honouring_retry_after", injected);
}

#[test]
fn persistent_faults_fail_clearly_and_change_nothing() {
    if !slow_tests_enabled("persistent_faults_fail_clearly_and_change_nothing") {
        return;
    }
    let s = Setup::new();
    let first = s.direct_backup();
    let first_tree = scenarios::sample::snapshot(&s.src()).unwrap();
    let mut injected = 0;
    // Backup: each fault persists past the retry budget at one step of the publish order.
    let cases = [
        (
            "upload reset",
            Rule::new("PATCH", "/blobs/uploads/", Fault::Reset { after: 64 << 10 }),
            "cannot connect",
        ),
        (
            "upload stalled",
            Rule::new("PATCH", "/blobs/uploads/", Fault::Stall { after: 64 << 10 }),
            "stalled",
        ),
        (
            "manifest 503",
            Rule::new(
                "PUT",
                "/manifests/wsr-",
                Fault::Status {
                    code: 503,
                    retry_after: None,
                },
            ),
            "server error 503",
        ),
        (
            "latest 429",
            Rule::new(
                "PUT",
                "/manifests/latest",
                Fault::Status {
                    code: 429,
                    retry_after: Some(1),
                },
            ),
            "server error 429",
        ),
        (
            "latest refused",
            Rule::new("PUT", "/manifests/latest", Fault::Refuse),
            "cannot connect",
        ),
    ];
    for (seed, (label, rule, message)) in (10..).zip(cases) {
        s.change(seed);
        let proxy = FaultProxy::start(&s.registry.host(), vec![rule.always()]).unwrap();
        let out = s.backup(&proxy.host());
        assert!(!out.status.success(), "{label}: the backup must fail");
        assert!(stderr(&out).contains(message), "{label}: {}", stderr(&out));
        assert_eq!(
            s.latest().as_deref(),
            Some(first.as_str()),
            "{label}: latest moved"
        );
        injected += proxy.injected();
    }
    // The artifact `latest` still names is the first backup's, complete.
    let out = s.verify_and_restore_latest("after-failed-backups");
    assert_eq!(scenarios::sample::snapshot(&out).unwrap(), first_tree);
    s.change(16);
    assert!(s.backup(&s.registry.host()).status.success());

    // Restore: into an empty target and over existing content with --force.
    let layers = s.layer_digests_largest_first();
    let cases = [
        (
            "layer reset",
            Rule::new("GET", &layers[0], Fault::Reset { after: 64 << 10 }),
            "interrupted",
        ),
        (
            "layer stalled",
            Rule::new("GET", &layers[0], Fault::Stall { after: 64 << 10 }),
            "stalled",
        ),
        (
            "layer 503",
            Rule::new(
                "GET",
                &layers[0],
                Fault::Status {
                    code: 503,
                    retry_after: None,
                },
            ),
            "server error 503",
        ),
        (
            "manifest 429",
            Rule::new(
                "GET",
                "/manifests/latest",
                Fault::Status {
                    code: 429,
                    retry_after: Some(1),
                },
            ),
            "server error 429",
        ),
    ];
    for (label, rule, message) in cases {
        for force in [false, true] {
            let target = s.work.path().join(format!("target-{label}-{force}"));
            std::fs::create_dir_all(&target).unwrap();
            if force {
                std::fs::write(target.join("mine.txt"), "the user's").unwrap();
            }
            let before = scenarios::sample::snapshot(&target).unwrap();
            let proxy = FaultProxy::start(&s.registry.host(), vec![rule.clone().always()]).unwrap();
            let extra: &[&str] = if force { &["--force"] } else { &[] };
            let out = s.restore(&proxy.host(), &target, extra);
            assert!(!out.status.success(), "{label}: the restore must fail");
            assert!(stderr(&out).contains(message), "{label}: {}", stderr(&out));
            assert_eq!(
                scenarios::sample::snapshot(&target).unwrap(),
                before,
                "{label} (force {force}): the target changed"
            );
            assert_eq!(
                std::fs::read_dir(&target).unwrap().count(),
                usize::from(force),
                "{label}: something was left in the target"
            );
            injected += proxy.injected();
        }
    }
    figures(
        "persistent_faults_fail_clearly_and_change_nothing",
        injected,
    );
}

#[test]
fn an_unreachable_registry_fails_within_the_budget() {
    if !slow_tests_enabled("an_unreachable_registry_fails_within_the_budget") {
        return;
    }
    let s = Setup::new();
    // A port nothing listens on: every connection is refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let out = s.backup(&closed);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
    let target = s.work.path().join("unreachable");
    let out = s.restore(&closed, &target, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(!target.exists() || std::fs::read_dir(&target).unwrap().count() == 0);
}

/// A backup stores its manifest under the time-stamped tag, never by digest alone, so a
/// registry that refuses manifests without a tag (OpenShift's integrated registry: a 500 whose
/// detail is the API server's "tag: Required value") gets complete backups. The digest the
/// registry reports must be the manifest's; where it reports none (native here), the tag is
/// read back. `latest` moves last, and restores and the oras CLI read the result. A registry
/// that refuses the tag, or answers 201 without storing it, fails the backup clearly and
/// leaves `latest` and the tags as they were. Both formats.
#[test]
fn a_registry_refusing_untagged_manifests_gets_the_time_stamped_tag_first() {
    if !slow_tests_enabled("a_registry_refusing_untagged_manifests_gets_the_time_stamped_tag_first")
    {
        return;
    }
    let oras = scenarios::oras::cli().unwrap_or_else(|why| panic!("{why}"));
    let mut injected = 0;
    for format in ["native", "dwo"] {
        let s = Setup::new();
        let refuse_untagged = Rule::new(
            "PUT",
            "/manifests/sha256:",
            Fault::openshift_untagged_refusal(),
        )
        .always();
        let mut rules = vec![refuse_untagged.clone()];
        let says_no_digest = format == "native";
        if says_no_digest {
            let no_digest = Fault::DropHeader {
                name: "Docker-Content-Digest".into(),
            };
            rules.push(Rule::new("PUT", "/manifests/wsr-", no_digest));
        }
        let proxy = FaultProxy::start(&s.registry.host(), rules).unwrap();
        let out = s.backup_as(&proxy.host(), format);
        assert!(
            out.status.success(),
            "{format}: backup failed: {}",
            stderr(&out)
        );
        // After reading the previous `latest`: the time-stamped tag, its read-back where the
        // registry did not say what it stored, and `latest` as the last write. No digest push.
        let manifests: Vec<(String, String)> = proxy
            .seen()
            .into_iter()
            .filter(|r| r.path.contains("/manifests/"))
            .skip_while(|r| r.method == "GET")
            .map(|r| (r.method, r.path.rsplit('/').next().unwrap().to_owned()))
            .collect();
        let shape: Vec<(&str, &str)> = manifests
            .iter()
            .map(|(m, r)| {
                let r = if r.starts_with("sha256:") {
                    "DIGEST"
                } else if r.starts_with("wsr-") {
                    "STAMP"
                } else {
                    r.as_str()
                };
                (m.as_str(), r)
            })
            .collect();
        let expected: &[(&str, &str)] = if says_no_digest {
            &[("PUT", "STAMP"), ("GET", "STAMP"), ("PUT", "latest")]
        } else {
            &[("PUT", "STAMP"), ("PUT", "latest")]
        };
        assert_eq!(shape, expected, "{format}: {manifests:?}");
        injected += proxy.injected();
        drop(proxy);

        // The tags, read straight from the registry: the stamp and `latest`, one manifest.
        let latest = s.latest().expect("latest");
        let stamp = manifests[0].1.clone();
        let tags = s.tags();
        assert_eq!(tags, ["latest".to_owned(), stamp.clone()], "{format}");
        assert_eq!(s.digest_of(&stamp), latest, "{format}");

        // wsr restores it (and verifies the native index); the oras CLI reads it.
        let restored = s.verify_and_restore_latest(&format!("untagged-{format}"));
        assert_same_tree(&s.src(), &restored);
        let reference = format!("{}/{REPO}:{stamp}", s.registry.host());
        let fetched = Command::new(&oras)
            .args(["manifest", "fetch", "--plain-http", &reference])
            .output()
            .unwrap();
        assert!(fetched.status.success(), "{}", stderr(&fetched));
        assert_eq!(
            wsr_format::digest::Digest::of(&fetched.stdout).to_string(),
            latest,
            "{format}: oras read another manifest"
        );
        if format == "dwo" {
            let pulled = s.work.path().join("oras-pulled");
            let pull = Command::new(&oras)
                .args(scenarios::oras::pull_args(
                    &reference,
                    &pulled,
                    &["--plain-http"],
                ))
                .output()
                .unwrap();
            assert!(pull.status.success(), "{}", stderr(&pull));
            let extracted = s.work.path().join("oras-extracted");
            std::fs::create_dir(&extracted).unwrap();
            let tar = Command::new("tar")
                .arg("-xzf")
                .arg(pulled.join(scenarios::oras::ARCHIVE_NAME))
                .arg("-C")
                .arg(&extracted)
                .output()
                .unwrap();
            assert!(tar.status.success(), "{}", stderr(&tar));
            assert_same_tree(&s.src(), &extracted);
        }

        // The registry refuses the time-stamped tag too: the backup fails, nothing moves.
        for (label, refusal, message) in [
            (
                "tag 500",
                Fault::openshift_untagged_refusal(),
                "server error 500",
            ),
            (
                "tag denied",
                Fault::Answer {
                    code: 403,
                    body: r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#.into(),
                },
                "access denied",
            ),
            (
                "tag answered, not stored",
                Fault::Answer {
                    code: 201,
                    body: String::new(),
                },
                "not found",
            ),
        ] {
            s.change(20);
            let rules = vec![
                refuse_untagged.clone(),
                Rule::new("PUT", "/manifests/wsr-", refusal).always(),
            ];
            let proxy = FaultProxy::start(&s.registry.host(), rules).unwrap();
            let out = s.backup_as(&proxy.host(), format);
            assert!(!out.status.success(), "{format} {label}: the backup must fail");
            assert!(stderr(&out).contains(message), "{format} {label}: {}", stderr(&out));
            assert!(
                !proxy
                    .seen()
                    .iter()
                    .any(|r| r.method == "PUT" && r.path.ends_with("/manifests/latest")),
                "{format} {label}: latest was written"
            );
            assert_eq!(s.latest().as_deref(), Some(latest.as_str()), "{format} {label}");
            assert_eq!(s.tags(), tags, "{format} {label}: the tags changed");
            injected += proxy.injected();
        }
    }
    figures(
        "a_registry_refusing_untagged_manifests_gets_the_time_stamped_tag_first",
        injected,
    );
}
