//! Round trips through the real registry (plain, TLS, TLS+htpasswd) and an OCI layout, in both
//! formats, on the sample tree with every entry kind; plus the transport's security defaults.

mod common;

use common::*;
use wsr_backup::Format;
use wsr_transport::testing::{RegistryKind, TestRegistry};
use wsr_transport::{ConnectOptions, TransportError};

#[test]
fn oci_layout_round_trip_in_both_formats() {
    let work = sample(true);
    let src = work.path().join("projects");
    for format in [Format::Native, Format::Dwo] {
        let layout = format!("oci:{}/layout-{format:?}:latest", work.path().display());
        let report = backup(&backup_options(
            &src,
            &layout,
            format,
            ConnectOptions::default(),
        ))
        .expect("backup");
        assert_eq!(report.skipped, vec!["pipe: FIFO not backed up".to_string()]);
        assert_eq!(
            (report.files, report.symlinks, report.hardlinks),
            (17, 5, 1),
            "{report:?}"
        );
        let out = work.path().join(format!("restored-{format:?}"));
        let restored = restore(&layout, &out, ConnectOptions::default()).expect("restore");
        assert_eq!(restored.verified_index, format == Format::Native);
        assert_same_tree(&src, &out);
    }
}

#[test]
fn registry_round_trips_in_every_variant_and_format() {
    let work = sample(false);
    let src = work.path().join("projects");
    for kind in [
        RegistryKind::Plain,
        RegistryKind::Tls,
        RegistryKind::TlsAuth,
    ] {
        let registry = TestRegistry::start(kind).expect("registry");
        for format in [Format::Native, Format::Dwo] {
            let reference = format!(
                "{}/ns/ws-{}:latest",
                registry.host(),
                format!("{format:?}").to_lowercase()
            );
            let report = backup(&backup_options(
                &src,
                &reference,
                format,
                connect_for(&registry),
            ))
            .unwrap_or_else(|e| {
                panic!("{kind:?} {format:?} backup: {e}\n{}", registry.log_tail(20))
            });
            assert!(report.uploaded_bytes > 0);
            let out = work.path().join(format!("out-{kind:?}-{format:?}"));
            let restored = restore(&reference, &out, connect_for(&registry))
                .unwrap_or_else(|e| panic!("{kind:?} {format:?} restore: {e}"));
            assert_same_tree(&src, &out);
            // Every byte of every layer blob counts as downloaded; a native layer's file index
            // is requested once more on its own.
            match format {
                Format::Dwo => assert_eq!(restored.downloaded_bytes, report.stored_bytes),
                Format::Native => assert!(
                    restored.downloaded_bytes > report.stored_bytes,
                    "{} downloaded, {} stored",
                    restored.downloaded_bytes,
                    report.stored_bytes
                ),
            }
            // By digest too.
            let out2 = work.path().join(format!("out-digest-{kind:?}-{format:?}"));
            let by_digest = format!(
                "{}/ns/ws-{}@{}",
                registry.host(),
                format!("{format:?}").to_lowercase(),
                report.digest
            );
            restore(&by_digest, &out2, connect_for(&registry)).expect("restore by digest");
            assert_same_tree(&src, &out2);
        }
    }
}

#[test]
fn tls_verification_is_on_by_default() {
    let work = sample(false);
    let src = work.path().join("projects");
    let registry = TestRegistry::start(RegistryKind::Tls).unwrap();
    let reference = format!("{}/ns/tls:latest", registry.host());
    let no_ca = ConnectOptions::default();
    let err = backup(&backup_options(&src, &reference, Format::Native, no_ca)).unwrap_err();
    assert!(
        matches!(
            err,
            wsr_backup::BackupError::Transport(TransportError::Tls { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("--ca-file"), "{err}");
    let insecure = ConnectOptions {
        insecure: true,
        ..Default::default()
    };
    backup(&backup_options(
        &src,
        &reference,
        Format::Native,
        insecure.clone(),
    ))
    .expect("--insecure skips verification");
    let with_ca = ConnectOptions {
        ca_file: registry.ca_file().map(Into::into),
        ..Default::default()
    };
    backup(&backup_options(&src, &reference, Format::Native, with_ca))
        .expect("--ca-file trusts the registry");
}

#[test]
fn wrong_or_missing_credentials_are_clear_auth_errors() {
    let work = sample(false);
    let src = work.path().join("projects");
    let registry = TestRegistry::start(RegistryKind::TlsAuth).unwrap();
    let reference = format!("{}/ns/auth:latest", registry.host());
    let wrong = work.path().join("wrong.json");
    // base64("tester:not-the-password")
    std::fs::write(
        &wrong,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"dGVzdGVyOm5vdC10aGUtcGFzc3dvcmQ="}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let base = ConnectOptions {
        ca_file: registry.ca_file().map(Into::into),
        ..Default::default()
    };
    let err = backup(&backup_options(
        &src,
        &reference,
        Format::Native,
        ConnectOptions {
            auth_file: Some(wrong.clone()),
            ..base.clone()
        },
    ))
    .unwrap_err();
    assert!(
        matches!(
            err,
            wsr_backup::BackupError::Transport(TransportError::Unauthorized { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("authentication failed"), "{err}");
    assert!(!err.to_string().contains("not-the-password"));
    let empty = work.path().join("empty.json");
    std::fs::write(&empty, "{}").unwrap();
    let err = backup(&backup_options(
        &src,
        &reference,
        Format::Native,
        ConnectOptions {
            auth_file: Some(empty),
            ..base.clone()
        },
    ))
    .unwrap_err();
    assert!(
        matches!(
            err,
            wsr_backup::BackupError::Transport(TransportError::AuthRequired { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("--auth-file"), "{err}");
    // Restore sees the same errors.
    let err = restore(
        &reference,
        &work.path().join("o"),
        ConnectOptions {
            auth_file: Some(wrong),
            ..base
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("authentication failed"), "{err}");
}

#[test]
fn partial_restore_of_selected_paths() {
    let work = sample(false);
    let src = work.path().join("projects");
    let layout = format!("oci:{}/layout:latest", work.path().display());
    backup(&backup_options(
        &src,
        &layout,
        Format::Native,
        ConnectOptions::default(),
    ))
    .unwrap();
    let out = work.path().join("partial");
    let options = wsr_restore::RestoreOptions {
        from: layout.parse().unwrap(),
        to: out.clone(),
        paths: Some(vec!["src".into(), "data/text.log".into()]),
        force: false,
        max_size: None,
        parallel: 4,
        sync: true,
        connect: ConnectOptions::default(),
    };
    let report = runtime()
        .block_on(wsr_restore::restore(&options, Default::default()))
        .unwrap();
    let got = scenarios::sample::snapshot(&out).unwrap();
    let want: Vec<String> = expected_snapshot(&src)
        .into_iter()
        .filter(|l| {
            l.starts_with("src ") || l.starts_with("src/") || l.starts_with("data/text.log ")
        })
        // src/main.rs is the second name of bin/main-link.rs: restored as a file of its own.
        .map(|l| l.replace(" nlink=2 group=bin/main-link.rs", " nlink=1 group="))
        .collect();
    assert!(report.skipped.is_empty(), "{report:?}");
    // `data` itself is created implicitly (as a parent), so only compare selected entries.
    let got_selected: Vec<String> = got
        .into_iter()
        .filter(|l| !l.starts_with("data "))
        .collect();
    assert_eq!(got_selected, want, "{report:?}");
    assert!(!out.join("bin").exists() && !out.join("README.md").exists());
}

#[test]
fn list_shows_every_workspace_below_a_registry_path() {
    let work = sample(false);
    let src = work.path().join("projects");
    let registry = TestRegistry::start(RegistryKind::TlsAuth).unwrap();
    let connect = connect_for(&registry);
    for (ws, format) in [("alpha", Format::Native), ("beta", Format::Dwo)] {
        let reference = format!("{}/team/user-ns/{ws}:latest", registry.host());
        backup(&backup_options(&src, &reference, format, connect.clone())).unwrap();
    }
    backup(&backup_options(
        &src,
        &format!("{}/elsewhere/ns/gamma:latest", registry.host()),
        Format::Native,
        connect.clone(),
    ))
    .unwrap();
    let path =
        wsr_format::reference::parse_registry_path(&format!("{}/team", registry.host())).unwrap();
    let rows = runtime()
        .block_on(wsr_restore::list(&path, None, None, &connect))
        .unwrap();
    let summary: Vec<(String, String, Option<String>, usize)> = rows
        .iter()
        .map(|r| {
            (
                r.namespace.clone(),
                r.workspace.clone(),
                r.format.clone(),
                r.tags.len(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("user-ns".into(), "alpha".into(), Some("native".into()), 2),
            ("user-ns".into(), "beta".into(), Some("dwo".into()), 2)
        ]
    );
    assert!(
        rows.iter()
            .all(|r| r.created.is_some() && r.size.is_some_and(|s| s > 0) && r.error.is_none()),
        "{rows:?}"
    );
    assert_eq!(
        rows[0].bytes,
        Some(2_778_930),
        "native records the uncompressed size"
    );
    let only_beta = runtime()
        .block_on(wsr_restore::list(
            &path,
            Some("user-ns"),
            Some("beta"),
            &connect,
        ))
        .unwrap();
    assert_eq!(only_beta.len(), 1);
}

/// A sparse file of `size` bytes with `data` written at each offset.
fn sparse_file(path: &std::path::Path, size: u64, data: &[(u64, &[u8])]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(path).unwrap();
    file.set_len(size).unwrap();
    for (offset, bytes) in data {
        file.write_all_at(bytes, *offset).unwrap();
    }
}

fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn same_content(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::io::Read;
    let (mut a, mut b) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut x).unwrap();
        if n == 0 {
            return b.read(&mut y).unwrap() == 0;
        }
        if b.read_exact(&mut y[..n]).is_err() || x[..n] != y[..n] {
            return false;
        }
    }
}

/// Sparse files keep their holes through backup and restore in both formats (and through
/// GNU tar, which is how upstream restores a `dwo` backup); a native backup is format version 3
/// (FORMAT.md §4.1).
#[test]
fn sparse_files_round_trip_with_their_holes() {
    let work = Dir::new();
    let src = work.path().join("projects");
    std::fs::create_dir_all(src.join("vm")).unwrap();
    std::fs::write(src.join("README.md"), b"hello\n").unwrap();
    let size = 256u64 << 20;
    let disk = src.join("vm/disk.img");
    sparse_file(
        &disk,
        size,
        &[
            (0, &[1u8; 4096]),
            (100 << 20, b"middle"),
            (size - 3, b"end"),
        ],
    );
    // Holes smaller than the threshold: stored whole, restored with the same content.
    let small = src.join("vm/small-hole");
    let dense_part = vec![2u8; (1 << 20) - (32 << 10)];
    sparse_file(
        &small,
        1 << 20,
        &[(0, dense_part.as_slice()), ((1 << 20) - 1, b"z")],
    );
    let before = allocated(&disk);
    assert!(before <= 1 << 20, "the filesystem must support holes");

    for format in [Format::Native, Format::Dwo] {
        let dir = work.path().join(format!("layout-{format:?}"));
        let layout = format!("oci:{}:latest", dir.display());
        backup(&backup_options(
            &src,
            &layout,
            format,
            ConnectOptions::default(),
        ))
        .expect("backup");
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        let blob = |digest: &str| dir.join("blobs/sha256").join(&digest["sha256:".len()..]);
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
        )
        .unwrap();
        let stored: u64 = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["size"].as_u64().unwrap())
            .sum();
        assert!(
            stored < 4 << 20,
            "{format:?}: holes were stored ({stored} bytes)"
        );

        let out = work.path().join(format!("restored-{format:?}"));
        restore(&layout, &out, ConnectOptions::default()).expect("restore");
        assert_same_tree(&src, &out);
        for name in ["vm/disk.img", "vm/small-hole"] {
            let (a, b) = (src.join(name), out.join(name));
            assert_eq!(
                std::fs::metadata(&b).unwrap().len(),
                std::fs::metadata(&a).unwrap().len()
            );
            assert!(same_content(&a, &b), "{format:?} {name}: content differs");
        }
        let after = allocated(&out.join("vm/disk.img"));
        assert!(
            after <= before + (64 << 10),
            "{format:?}: restored with {after} bytes allocated, the source had {before}"
        );

        match format {
            Format::Native => {
                assert_eq!(
                    manifest["artifactType"],
                    wsr_format::media::NATIVE_ARTIFACT_TYPE_V3
                );
                let config: serde_json::Value = serde_json::from_slice(
                    &std::fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap(),
                )
                .unwrap();
                assert_eq!(config["format_version"], wsr_format::native::FORMAT_VERSION);
            }
            Format::Dwo => {
                // Upstream's restore: GNU tar extracts the layer.
                let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
                let gnu = work.path().join("gnu-tar");
                std::fs::create_dir(&gnu).unwrap();
                let status = std::process::Command::new("tar")
                    .arg("-xzf")
                    .arg(&layer)
                    .arg("-C")
                    .arg(&gnu)
                    .status()
                    .unwrap();
                assert!(status.success());
                assert!(same_content(&disk, &gnu.join("vm/disk.img")));
                assert!(allocated(&gnu.join("vm/disk.img")) <= before + (64 << 10));
            }
        }
    }
}
