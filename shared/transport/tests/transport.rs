//! The transport against the real registry (plain, TLS, TLS+htpasswd, TLS+bearer tokens) and
//! an OCI layout: blobs streamed and checked, manifests by digest then tag, tags listed,
//! manifests deleted, repositories listed; on the token registry, the scopes each operation
//! asks for and a read-only user refused what it may not do.

use bytes::Bytes;
use std::io::{Read, Write};
use wsr_format::digest::Digest;
use wsr_format::media;
use wsr_format::reference::{Repository, Target};
use wsr_transport::testing::{READER_USER, RegistryKind, TEST_USER, TestRegistry, TokenRequest};
use wsr_transport::{
    Access, BlobReader, ConnectOptions, Credentials, Store, TransportError, list_repositories,
};

/// Reads a whole blob on a blocking thread and checks it, as the restore engine does.
async fn read_blob(mut reader: BlobReader) -> Result<Vec<u8>, TransportError> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out);
        reader.finish().map(|_| out)
    })
    .await
    .unwrap()
}

async fn exercise(repo: &Repository, options: &ConnectOptions) {
    let store = Store::open(repo, options, Access::Push).await.unwrap();
    // A streamed blob: the digest is computed on the fly and must match the content.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut writer = store.blob_writer().await.unwrap();
    let written = data.clone();
    let (digest, size) = tokio::task::spawn_blocking(move || {
        for piece in written.chunks(700_000) {
            writer.write_all(piece).unwrap();
        }
        writer.finish()
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        (digest.clone(), size),
        (Digest::of(&data), data.len() as u64)
    );
    assert!(store.blob_exists(&digest).await.unwrap());
    assert!(!store.blob_exists(&Digest::of(b"absent")).await.unwrap());
    let reader = store.blob_reader(&digest, size).await.unwrap();
    let fetched = read_blob(reader).await.unwrap();
    assert_eq!(fetched, data);
    // The reader checks what it read against the size (and digest) it was opened for: a blob
    // longer than its descriptor says is cut off and refused, a shorter one refused.
    let reader = store.blob_reader(&digest, size - 1).await.unwrap();
    let err = read_blob(reader).await.unwrap_err();
    assert!(err.to_string().contains("more than"), "{err}");
    let reader = store.blob_reader(&digest, size + 1).await.unwrap();
    let err = read_blob(reader).await.unwrap_err();
    assert!(err.to_string().contains("its descriptor says"), "{err}");
    // The end of a blob, checked against its own digest (a version 3 layer's file index; a
    // registry is asked with `Range`), and refused against another one.
    let from = 2_999_000;
    let tail = &data[from..];
    let reader = store
        .blob_part_reader(&digest, from as u64, &Digest::of(tail), tail.len() as u64)
        .await
        .unwrap();
    assert_eq!(read_blob(reader).await.unwrap(), tail);
    let reader = store
        .blob_part_reader(
            &digest,
            from as u64 - 1,
            &Digest::of(tail),
            tail.len() as u64 + 1,
        )
        .await
        .unwrap();
    let err = read_blob(reader).await.unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    // Small blobs are skipped when present.
    assert!(
        store
            .push_blob_bytes(Bytes::from_static(b"{}"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .push_blob_bytes(Bytes::from_static(b"{}"))
            .await
            .unwrap()
    );

    // An abandoned upload stores nothing, instead of committing a truncated blob.
    let mut writer = store.blob_writer().await.unwrap();
    let healthy = tokio::task::spawn_blocking(move || {
        writer.write_all(b"partial").unwrap();
        writer.abort()
    })
    .await
    .unwrap();
    assert!(healthy.is_none(), "{healthy:?}");
    assert!(!store.blob_exists(&Digest::of(b"partial")).await.unwrap());

    let layer = wsr_format::manifest::Descriptor::new(media::LAYER_TAR_ZSTD, digest.clone(), size);
    let manifest = wsr_format::artifact::dwo_manifest(layer, Default::default()).to_bytes();
    let m_digest = store
        .push_manifest(&manifest, media::MANIFEST_V1)
        .await
        .unwrap();
    assert!(
        store.list_tags().await.unwrap().is_empty(),
        "pushed by digest: no tag yet"
    );
    store
        .tag_manifest(&manifest, media::MANIFEST_V1, "v1")
        .await
        .unwrap();
    store
        .tag_manifest(&manifest, media::MANIFEST_V1, "latest")
        .await
        .unwrap();
    let mut tags = store.list_tags().await.unwrap();
    tags.sort();
    assert_eq!(tags, ["latest", "v1"]);
    assert_eq!(
        store
            .fetch_manifest(&Target::Tag("v1".into()))
            .await
            .unwrap(),
        (m_digest.clone(), manifest.clone())
    );
    assert_eq!(
        store
            .fetch_manifest(&Target::Digest(m_digest.clone()))
            .await
            .unwrap()
            .1,
        manifest
    );
    assert!(
        store
            .fetch_manifest(&Target::Tag("nope".into()))
            .await
            .unwrap_err()
            .is_not_found()
    );
    store.delete_manifest(&m_digest).await.unwrap();
    assert!(
        store
            .fetch_manifest(&Target::Digest(m_digest))
            .await
            .unwrap_err()
            .is_not_found()
    );
}

fn connect(registry: &TestRegistry) -> ConnectOptions {
    ConnectOptions {
        plain_http: registry.kind() == RegistryKind::Plain,
        ca_file: registry.ca_file().map(Into::into),
        auth_file: registry.auth_file().map(Into::into),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_round_trips_in_every_variant() {
    for kind in [
        RegistryKind::Plain,
        RegistryKind::Tls,
        RegistryKind::TlsAuth,
        RegistryKind::TlsToken,
    ] {
        let registry = TestRegistry::start(kind).unwrap();
        let options = connect(&registry);
        for path in ["team/ns/a", "team/ns/b", "other/x"] {
            exercise(
                &Repository::Registry {
                    host: registry.host(),
                    path: path.into(),
                },
                &options,
            )
            .await;
        }
        let listed = list_repositories(
            &Repository::Registry {
                host: registry.host(),
                path: "team".into(),
            },
            &options,
        )
        .await
        .unwrap();
        let names: Vec<String> = listed.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            names,
            [
                format!("{}/team/ns/a", registry.host()),
                format!("{}/team/ns/b", registry.host())
            ],
            "{kind:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn first_requests_sent_beside_the_credential_check_share_its_answer() {
    for kind in [RegistryKind::TlsAuth, RegistryKind::TlsToken] {
        let registry = TestRegistry::start(kind).unwrap();
        let options = connect(&registry);
        let repo = Repository::Registry {
            host: registry.host(),
            path: "team/ns/ws".into(),
        };
        // Sent before any challenge is answered: each meets one, one answer serves them all.
        let absent = [1u8, 2, 3].map(|n| Digest::of(&[n]));
        let first = async |store: &Store| {
            let (a, b, c) = tokio::join!(
                store.blob_exists(&absent[0]),
                store.blob_exists(&absent[1]),
                store.blob_exists(&absent[2]),
            );
            Ok::<_, TransportError>([a?, b?, c?])
        };
        let (_, found) = Store::open_then(&repo, &options, Access::Pull, first)
            .await
            .unwrap();
        assert_eq!(found, [false; 3], "{kind:?}");
        if let Some(issuer) = registry.token_issuer() {
            // One token for the four requests, not one each.
            assert_eq!(asked(&issuer.requests(), TEST_USER).len(), 1);
        }

        // Wrong credentials: the check's error is the one reported.
        let wrong = ConnectOptions {
            credentials: Some(Credentials::Basic {
                username: TEST_USER.into(),
                password: "not-the-password".into(),
            }),
            ..options.clone()
        };
        let first = async |store: &Store| store.list_tags().await;
        let err = Store::open_then(&repo, &wrong, Access::Pull, first)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, TransportError::Unauthorized { .. }),
            "{kind:?}: {err:?}"
        );
    }
}

/// The scopes `user` asked the issuer for, request by request (successful requests only).
fn asked(requests: &[TokenRequest], user: &str) -> Vec<Vec<String>> {
    requests
        .iter()
        .filter(|r| r.user.as_deref() == Some(user) && r.status == 200)
        .map(|r| r.scopes.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_asks_for_the_scopes_each_operation_needs() {
    let registry = TestRegistry::start(RegistryKind::TlsToken).unwrap();
    let issuer = registry.token_issuer().unwrap();
    let options = connect(&registry);
    let repo = Repository::Registry {
        host: registry.host(),
        path: "team/ns/ws".into(),
    };
    exercise(&repo, &options).await;
    let writer = asked(&issuer.requests(), TEST_USER);
    // Push (pull,push) from the first request on; delete added when the delete asked for it.
    assert_eq!(writer[0], ["repository:team/ns/ws:pull,push"]);
    assert_eq!(
        writer.last().unwrap(),
        &["repository:team/ns/ws:pull,push,delete"]
    );
    // Delete was asked for only by the delete: one token before it, one for it.
    assert_eq!(writer.len(), 2, "{writer:?}");

    // The read-only user: pull only, and the catalog when listing.
    let (reader, password) = registry.reader_credentials().unwrap();
    let reader_options = ConnectOptions {
        credentials: Some(Credentials::Basic {
            username: reader.to_owned(),
            password: password.to_owned(),
        }),
        ..options.clone()
    };
    let store = Store::open(&repo, &reader_options, Access::Pull)
        .await
        .unwrap();
    store.list_tags().await.unwrap();
    let listed = list_repositories(
        &Repository::Registry {
            host: registry.host(),
            path: "team".into(),
        },
        &reader_options,
    )
    .await
    .unwrap();
    assert_eq!(listed, std::slice::from_ref(&repo));
    assert_eq!(
        asked(&issuer.requests(), READER_USER),
        [
            vec!["repository:team/ns/ws:pull".to_owned()],
            vec!["registry:catalog:*".to_owned()],
        ]
    );

    // Asking for push as the reader opens the store (any token answers /v2/), but the first
    // write is refused with the reason, and nothing is stored.
    let store = Store::open(&repo, &reader_options, Access::Push)
        .await
        .unwrap();
    let err = store
        .push_blob_bytes(Bytes::from_static(b"not allowed"))
        .await
        .unwrap_err();
    assert!(err.is_auth(), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("access denied")
            && message.contains("did not grant repository:team/ns/ws:")
            && message.contains("push"),
        "{message}"
    );
    assert!(!message.contains(password), "{message}");
    assert!(
        !store
            .blob_exists(&Digest::of(b"not allowed"))
            .await
            .unwrap()
    );
    let requests = issuer.requests();
    let reader_requests = requests
        .iter()
        .filter(|r| r.user.as_deref() == Some(READER_USER));
    for request in reader_requests {
        assert!(
            request.granted.iter().all(|g| !g.contains("push")),
            "{request:?}"
        );
    }

    // Anonymous: the registry needs credentials, and says so.
    let anonymous = ConnectOptions {
        credentials: Some(Credentials::Anonymous),
        ..options.clone()
    };
    let err = Store::open(&repo, &anonymous, Access::Pull)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, TransportError::AuthRequired { .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_layout_round_trip_and_listing() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["ns/a", "ns/b"] {
        exercise(
            &Repository::Layout {
                dir: dir.path().join(name),
            },
            &ConnectOptions::default(),
        )
        .await;
    }
    let listed = list_repositories(
        &Repository::Layout {
            dir: dir.path().to_owned(),
        },
        &ConnectOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(listed.len(), 2);
    // Pulling from a directory that is not a layout is a clear error, and creates nothing.
    let err = Store::open(
        &Repository::Layout {
            dir: dir.path().join("none"),
        },
        &ConnectOptions::default(),
        Access::Pull,
    )
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("no oci-layout file"), "{err}");
    assert!(!dir.path().join("none").exists());
}
