//! Determinism, incremental re-backups (upload byte counts), retention, and the registry dying
//! mid-upload: the previous `latest` must stay intact and restorable.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use wsr_backup::Format;
use wsr_format::manifest::Manifest;
use wsr_format::reference::{Reference, Target};
use wsr_transport::testing::{RegistryKind, TestRegistry};
use wsr_transport::{Access, ConnectOptions, Store};

/// A workspace of `files` source-like text files (about 2 KiB on average, compressing about
/// 3:1 like real code) spread over directories, deterministic.
fn many_files(root: &Path, files: usize) {
    const WORDS: [&str; 24] = [
        "let", "const", "function", "return", "value", "index", "export", "import", "from", "if",
        "else", "for", "while", "await", "async", "match", "self", "config", "result", "error",
        "string", "number", "=>", "{}",
    ];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..files {
        let dir = root.join(format!("pkg{:03}/mod{:02}", i % 500, (i / 500) % 20));
        std::fs::create_dir_all(&dir).unwrap();
        let len = 200 + (next() % 3800) as usize;
        let mut body = format!("// file {i}\n");
        while body.len() < len {
            let r = next();
            body.push_str(WORDS[(r % 24) as usize]);
            body.push_str(&format!("{} ", (r >> 8) % 1000));
            if r % 9 == 0 {
                body.push('\n');
            }
        }
        std::fs::write(dir.join(format!("f{i}.js")), body).unwrap();
    }
}

fn layer_digests(store_ref: &str) -> Vec<String> {
    let reference: Reference = store_ref.parse().unwrap();
    runtime().block_on(async {
        let store = Store::open(
            &reference.repository,
            &ConnectOptions::default(),
            Access::Pull,
        )
        .await
        .unwrap();
        let (_, bytes) = store.fetch_manifest(&reference.target).await.unwrap();
        Manifest::from_bytes(&bytes)
            .unwrap()
            .layers
            .iter()
            .map(|l| l.digest.to_string())
            .collect()
    })
}

#[test]
fn same_tree_gives_same_layer_digests() {
    if !common::slow_tests_enabled("same_tree_gives_same_layer_digests") {
        return;
    }
    let work = sample(false);
    let src = work.path().join("projects");
    for format in [Format::Native, Format::Dwo] {
        let a = format!("oci:{}/a-{format:?}:latest", work.path().display());
        let b = format!("oci:{}/b-{format:?}:latest", work.path().display());
        let mut options = backup_options(&src, &a, format, ConnectOptions::default());
        backup(&options).unwrap();
        options.to = b.parse().unwrap();
        options.workers = 1; // the parallelism must not change the bytes
        backup(&options).unwrap();
        assert_eq!(layer_digests(&a), layer_digests(&b), "{format:?}");
    }
}

#[test]
fn re_backups_upload_only_what_changed() {
    if !common::slow_tests_enabled("re_backups_upload_only_what_changed") {
        return;
    }
    let work = Dir::new();
    let src = work.path().join("projects");
    many_files(&src, 50_000);
    let registry = TestRegistry::start(RegistryKind::Plain).unwrap();
    let reference = format!("{}/ns/big:latest", registry.host());
    let options = backup_options(&src, &reference, Format::Native, connect_for(&registry));
    let full = backup(&options).unwrap();
    assert_eq!(full.reused_layers, 0);
    assert!(full.layers >= 16, "{} layers", full.layers);

    let unchanged = backup(&options).unwrap();
    assert_eq!(unchanged.reused_layers, unchanged.layers);
    // Only the config and manifest (a few KiB) change: no layer or index bytes.
    assert_eq!(unchanged.uploaded_layer_bytes, 0, "{unchanged:?}");
    assert!(
        unchanged.uploaded_bytes < 64 * 1024,
        "metadata only: {} bytes",
        unchanged.uploaded_bytes
    );

    std::fs::write(src.join("pkg250/mod10/f5250.js"), "changed\n").unwrap();
    let one = backup(&options).unwrap();
    let share = one.uploaded_bytes as f64 / full.stored_bytes as f64;
    assert!(
        share < 0.05,
        "one changed file uploaded {} of {} bytes ({:.1}%)",
        one.uploaded_bytes,
        full.stored_bytes,
        share * 100.0
    );
    assert_eq!(one.reused_layers, one.layers - 1);

    for i in (0..50_000).step_by(10) {
        let path = src.join(format!(
            "pkg{:03}/mod{:02}/f{i}.js",
            i % 500,
            (i / 500) % 20
        ));
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(b"// edited\n")
            .unwrap();
    }
    let tenth = backup(&options).unwrap();
    eprintln!(
        "50k files: full stored {} B in {} layers; unchanged uploaded {} B; one file {} B ({:.2}%); 10% of files {} B ({:.1}%, {} layers reused)",
        full.stored_bytes,
        full.layers,
        unchanged.uploaded_bytes,
        one.uploaded_bytes,
        share * 100.0,
        tenth.uploaded_bytes,
        tenth.uploaded_bytes as f64 / full.stored_bytes as f64 * 100.0,
        tenth.reused_layers
    );
    let out = work.path().join("restored");
    let report = restore(&reference, &out, connect_for(&registry)).unwrap();
    assert!(report.verified_index);
    assert_same_tree(&src, &out);
}

#[test]
fn keep_deletes_old_backups_but_never_latest() {
    if !common::slow_tests_enabled("keep_deletes_old_backups_but_never_latest") {
        return;
    }
    let work = sample(false);
    let src = work.path().join("projects");
    let registry = TestRegistry::start(RegistryKind::Plain).unwrap();
    let reference = format!("{}/ns/keep:latest", registry.host());
    let mut options = backup_options(&src, &reference, Format::Native, connect_for(&registry));
    options.keep = Some(2);
    let mut digests = Vec::new();
    for i in 0..4 {
        std::fs::write(src.join("README.md"), format!("version {i}\n")).unwrap();
        let r = backup(&options).unwrap();
        digests.push(r.digest.clone());
        assert_eq!(r.pruned.len(), if i >= 2 { 1 } else { 0 }, "{r:?}");
        std::thread::sleep(std::time::Duration::from_millis(1100)); // distinct created seconds
    }
    let repo: Reference = reference.parse().unwrap();
    let (tags, latest) = runtime().block_on(async {
        let store = Store::open(&repo.repository, &connect_for(&registry), Access::Pull)
            .await
            .unwrap();
        let tags = store.list_tags().await.unwrap();
        let (latest, _) = store
            .fetch_manifest(&Target::Tag("latest".into()))
            .await
            .unwrap();
        for old in &digests[..2] {
            let gone = store
                .fetch_manifest(&Target::Digest(old.parse().unwrap()))
                .await
                .unwrap_err();
            assert!(gone.is_not_found(), "{gone}");
        }
        (tags, latest)
    });
    assert_eq!(
        tags.iter()
            .filter(|t| wsr_format::media::is_timestamp_tag(t))
            .count(),
        2,
        "{tags:?}"
    );
    assert_eq!(latest.to_string(), digests[3]);
    let out = work.path().join("out");
    restore(&reference, &out, connect_for(&registry)).unwrap();
    assert_same_tree(&src, &out);
}

/// Forwards loopback TCP to `upstream`; once `limit` bytes went upstream, it fires `on_limit`
/// (which stops the registry) and cuts every connection.
fn cutting_proxy(upstream: String, limit: u64, on_limit: Box<dyn Fn() + Send + Sync>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let sent = Arc::new(AtomicU64::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    let on_limit = Arc::new(Mutex::new(Some(on_limit)));
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            if cut.load(Ordering::SeqCst) {
                continue; // refused from now on: the registry is "down"
            }
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut &s2, &mut &c2);
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
            let (sent, cut, on_limit) = (sent.clone(), cut.clone(), on_limit.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 64 * 1024];
                loop {
                    let n = match (&client).read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > limit {
                        cut.store(true, Ordering::SeqCst);
                        if let Some(f) = on_limit.lock().unwrap().take() {
                            f();
                        }
                        break;
                    }
                    if (&server).write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = server.shutdown(std::net::Shutdown::Both);
                let _ = client.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

#[test]
fn registry_stopped_mid_upload_leaves_previous_latest_restorable() {
    if !common::slow_tests_enabled("registry_stopped_mid_upload_leaves_previous_latest_restorable")
    {
        return;
    }
    // The stopped registry stays down: give up after a few seconds, not the default minute
    // (unless another test of this binary already connected with the default).
    let _ = wsr_transport::retry::RetryPolicy {
        budget: std::time::Duration::from_secs(4),
        idle_timeout: wsr_transport::retry::DEFAULT_IDLE_TIMEOUT,
    }
    .install();
    let work = sample(false);
    let src = work.path().join("projects");
    let registry = Arc::new(Mutex::new(
        TestRegistry::start(RegistryKind::Plain).unwrap(),
    ));
    let host = registry.lock().unwrap().host();
    let plain = ConnectOptions {
        plain_http: true,
        ..Default::default()
    };
    let first = backup(&backup_options(
        &src,
        &format!("{host}/ns/crash:latest"),
        Format::Native,
        plain.clone(),
    ))
    .unwrap();

    // A second, different backup through a proxy that stops the registry 1 MiB into the upload.
    let before = scenarios::sample::snapshot(&src).unwrap();
    std::fs::write(src.join("new.bin"), scenarios::sample::noise(8 << 20, 9)).unwrap();
    let r2 = registry.clone();
    let proxy = cutting_proxy(
        host.clone(),
        1 << 20,
        Box::new(move || r2.lock().unwrap().stop()),
    );
    let err = backup(&backup_options(
        &src,
        &format!("{proxy}/ns/crash:latest"),
        Format::Native,
        plain.clone(),
    ))
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("cannot connect")
            || message.contains("server error")
            || message.contains("interrupted"),
        "{message}"
    );

    registry.lock().unwrap().restart().unwrap();
    let latest = format!("{host}/ns/crash:latest");
    let out = work.path().join("out");
    let report = restore(&latest, &out, plain).unwrap();
    assert_eq!(
        report.digest, first.digest,
        "latest must still be the first backup"
    );
    std::fs::remove_file(src.join("new.bin")).unwrap();
    assert_eq!(
        scenarios::sample::snapshot(&src).unwrap().len(),
        before.len()
    );
    assert_same_tree(&src, &out);
}
