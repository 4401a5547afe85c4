//! Round trips through the real registry (plain, TLS, TLS+htpasswd) and an OCI layout, in both
//! formats, on the sample tree with every entry kind; plus the transport's security defaults.

mod common;

use common::*;
use wsr_backup::Format;
use wsr_format::testing::{RegistryKind, TestRegistry};
use wsr_format::transport::{ConnectOptions, TransportError};

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
            restore(&reference, &out, connect_for(&registry))
                .unwrap_or_else(|e| panic!("{kind:?} {format:?} restore: {e}"));
            assert_same_tree(&src, &out);
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
