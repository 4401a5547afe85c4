//! A corpus of hostile archives. Each is published as a single-layer tarball artifact in an OCI
//! layout and restored; each test asserts the restore is refused (or the entry dropped) and that
//! nothing was written outside the target, which is left as it was.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wsr_format::codec::gzip_encoder;
use wsr_restore::{RestoreError, RestoreOptions};
use wsr_transport::ConnectOptions;

/// One raw tar entry, written byte by byte so that nothing sanitises it.
struct Raw<'a> {
    kind: u8,
    name: &'a [u8],
    link: &'a [u8],
    data: &'a [u8],
    mode: u32,
    /// Declared size when it differs from `data.len()` (zero-filled).
    size: Option<u64>,
}

fn raw(kind: u8, name: &'static [u8]) -> Raw<'static> {
    Raw {
        kind,
        name,
        link: b"",
        data: b"",
        mode: 0o644,
        size: None,
    }
}

fn tar_of(entries: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..e.name.len()].copy_from_slice(e.name);
        h.as_old_mut().linkname[..e.link.len()].copy_from_slice(e.link);
        h.set_mode(e.mode);
        h.set_mtime(1_700_000_000);
        let size = e.size.unwrap_or(e.data.len() as u64);
        h.set_size(size);
        h.set_entry_type(tar::EntryType::new(e.kind));
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(e.data);
        // Pad the data actually present; a lying `size` is left unbacked, as an attacker would.
        let padded = e.data.len().div_ceil(512) * 512;
        out.resize(out.len() + padded - e.data.len(), 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

struct Jail {
    dir: tempfile::TempDir,
}

impl Jail {
    fn new() -> Jail {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sentinel"), b"outside").unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        Jail { dir }
    }
    fn target(&self) -> PathBuf {
        self.dir.path().join("target")
    }
    /// Everything in the jail except the target: must not change.
    fn outside(&self) -> Vec<String> {
        let mut out = Vec::new();
        list(self.dir.path(), self.dir.path(), &self.target(), &mut out);
        out.sort();
        out
    }
}

fn list(root: &Path, dir: &Path, skip: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p == skip || p.starts_with("/proc") {
            continue;
        }
        let meta = std::fs::symlink_metadata(&p).unwrap();
        out.push(format!(
            "{} {:?} {}",
            p.strip_prefix(root).unwrap().display(),
            meta.file_type(),
            meta.len()
        ));
        if meta.is_dir() {
            list(root, &p, skip, out);
        }
    }
}

fn publish(layout: &Path, tar: &[u8], gzip: bool) -> String {
    let blob = if gzip {
        let mut enc = gzip_encoder(Vec::new(), 6);
        enc.write_all(tar).unwrap();
        enc.finish().unwrap()
    } else {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.write_all(tar).unwrap();
        enc.finish().unwrap()
    };
    common::publish_blob(layout, blob)
}

fn restore(
    reference: &str,
    target: &Path,
    max_size: Option<u64>,
) -> Result<wsr_restore::RestoreReport, RestoreError> {
    let options = RestoreOptions {
        from: reference.parse().unwrap(),
        to: target.to_owned(),
        paths: None,
        force: false,
        max_size,
        parallel: 2,
        sync: true,
        connect: ConnectOptions::default(),
    };
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(wsr_restore::restore(&options, Arc::default()))
}

/// Restores `entries` in a fresh jail; asserts the outside is untouched and the target holds no
/// user entries when the restore failed. Returns the error message (or the report).
fn attempt(
    entries: &[Raw],
    max_size: Option<u64>,
) -> (Result<wsr_restore::RestoreReport, String>, Jail) {
    let jail = Jail::new();
    let reference = publish(&jail.dir.path().join("layout"), &tar_of(entries), true);
    let before = jail.outside();
    let result = restore(&reference, &jail.target(), max_size).map_err(|e| {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg = format!("{msg}: {s}");
            source = s.source();
        }
        msg
    });
    assert_eq!(
        jail.outside(),
        before,
        "something outside the target changed"
    );
    if result.is_err() {
        let left: Vec<_> = std::fs::read_dir(jail.target())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "a failed restore left {left:?} in the target"
        );
    }
    (result, jail)
}

fn assert_refused(entries: &[Raw], want: &str) {
    let (result, _jail) = attempt(entries, None);
    let err = result.expect_err("hostile archive must be refused");
    assert!(err.contains(want), "expected {want:?} in: {err}");
}

const FILE: u8 = b'0';
const HARDLINK: u8 = b'1';
const SYMLINK: u8 = b'2';
const CHAR: u8 = b'3';
const BLOCK: u8 = b'4';
const DIR: u8 = b'5';
const FIFO: u8 = b'6';

#[test]
fn parent_directory_traversal() {
    assert_refused(
        &[Raw {
            data: b"x",
            ..raw(FILE, b"../sentinel")
        }],
        "`..`",
    );
    assert_refused(
        &[Raw {
            data: b"x",
            ..raw(FILE, b"./a/../../sentinel")
        }],
        "`..`",
    );
}

#[test]
fn absolute_paths() {
    assert_refused(
        &[Raw {
            data: b"x",
            ..raw(FILE, b"/tmp/wsr-hostile-absolute")
        }],
        "absolute path",
    );
    assert!(!Path::new("/tmp/wsr-hostile-absolute").exists());
}

#[test]
fn writing_through_a_symlink_to_outside() {
    let outside = Jail::new();
    let target = outside.dir.path().join("outside");
    let link = target.to_str().unwrap().as_bytes().to_vec();
    let entries = [
        Raw {
            link: &link,
            ..raw(SYMLINK, b"escape")
        },
        Raw {
            data: b"pwned",
            ..raw(FILE, b"escape/pwned")
        },
    ];
    assert_refused(&entries, "through symlink");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
}

#[test]
fn writing_through_a_relative_symlink_and_a_symlinked_directory() {
    assert_refused(
        &[
            Raw {
                link: b"..",
                ..raw(SYMLINK, b"up")
            },
            Raw {
                data: b"x",
                ..raw(FILE, b"up/sentinel")
            },
        ],
        "through symlink",
    );
    assert_refused(
        &[
            raw(DIR, b"d/"),
            Raw {
                link: b".",
                ..raw(SYMLINK, b"d/self")
            },
            Raw {
                data: b"x",
                ..raw(FILE, b"d/self/f")
            },
        ],
        "through symlink",
    );
}

#[test]
fn hard_links_to_outside_or_to_nothing() {
    assert_refused(
        &[Raw {
            link: b"/etc/passwd",
            ..raw(HARDLINK, b"pw")
        }],
        "hard link",
    );
    assert_refused(
        &[Raw {
            link: b"../sentinel",
            ..raw(HARDLINK, b"s")
        }],
        "hard link",
    );
    assert_refused(
        &[Raw {
            link: b"missing",
            ..raw(HARDLINK, b"h")
        }],
        "not a regular file of this archive",
    );
    assert_refused(
        &[
            Raw {
                link: b"/etc/passwd",
                ..raw(SYMLINK, b"sym")
            },
            Raw {
                link: b"sym",
                ..raw(HARDLINK, b"h")
            },
        ],
        "not a regular file of this archive",
    );
}

#[test]
fn replacing_an_earlier_entry() {
    assert_refused(
        &[
            Raw {
                data: b"a",
                ..raw(FILE, b"a")
            },
            Raw {
                link: b"/etc/passwd",
                ..raw(SYMLINK, b"a")
            },
        ],
        "duplicate entry",
    );
    assert_refused(
        &[
            Raw {
                data: b"a",
                ..raw(FILE, b"a")
            },
            Raw {
                data: b"b",
                ..raw(FILE, b"a/b")
            },
        ],
        "not a directory",
    );
}

#[test]
fn device_nodes_and_fifos_are_never_created() {
    let (result, jail) = attempt(
        &[
            raw(CHAR, b"null2"),
            raw(BLOCK, b"sda2"),
            raw(FIFO, b"fifo"),
            Raw {
                data: b"ok",
                ..raw(FILE, b"ok")
            },
        ],
        None,
    );
    let report = result.expect("specials are dropped, the rest restores");
    assert_eq!(report.skipped.len(), 3, "{:?}", report.skipped);
    let names: Vec<_> = std::fs::read_dir(jail.target())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("ok")]);
}

#[test]
fn setuid_and_setgid_bits_are_stripped() {
    use std::os::unix::fs::PermissionsExt;
    let (result, jail) = attempt(
        &[Raw {
            data: b"#!/bin/sh\n",
            mode: 0o6755,
            ..raw(FILE, b"suid")
        }],
        None,
    );
    result.unwrap();
    let mode = std::fs::metadata(jail.target().join("suid"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755);
}

#[test]
fn expansion_beyond_the_limit_is_refused_before_filling_the_disk() {
    // A 64 MiB file of zeros compresses to a few KiB: a classic bomb against a 1 MiB budget.
    let zeros = vec![0u8; 64 << 20];
    let (result, jail) = attempt(
        &[Raw {
            data: &zeros,
            ..raw(FILE, b"bomb")
        }],
        Some(1 << 20),
    );
    let err = result.unwrap_err();
    assert!(err.contains("expands beyond the limit"), "{err}");
    drop(jail);
    // A header that lies about a huge size is refused by the same check, before any data is read.
    let (result, _jail) = attempt(
        &[Raw {
            size: Some(1 << 40),
            ..raw(FILE, b"huge")
        }],
        None,
    );
    let err = result.unwrap_err();
    assert!(
        err.contains("expands beyond the limit") || err.contains("corrupt"),
        "{err}"
    );
}

#[test]
fn corrupt_and_truncated_archives() {
    let jail = Jail::new();
    let mut tar = tar_of(&[Raw {
        data: &[7u8; 5000],
        ..raw(FILE, b"f")
    }]);
    tar.truncate(1500);
    let reference = publish(&jail.dir.path().join("layout"), &tar, false);
    let err = restore(&reference, &jail.target(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("corrupt") || err.contains("layer"), "{err}");
    assert_eq!(std::fs::read_dir(jail.target()).unwrap().count(), 0);
}

#[test]
fn a_tampered_blob_fails_its_digest_check() {
    let jail = Jail::new();
    let layout = jail.dir.path().join("layout");
    let reference = publish(
        &layout,
        &tar_of(&[Raw {
            data: b"original",
            ..raw(FILE, b"f")
        }]),
        true,
    );
    // Swap the layer blob's bytes on disk for another valid archive.
    let blobs = layout.join("blobs/sha256");
    let other = {
        let mut enc = gzip_encoder(Vec::new(), 6);
        enc.write_all(&tar_of(&[Raw {
            data: b"tampered",
            ..raw(FILE, b"f")
        }]))
        .unwrap();
        enc.finish().unwrap()
    };
    for e in std::fs::read_dir(&blobs).unwrap().flatten() {
        if std::fs::read(e.path()).unwrap().starts_with(&[0x1f, 0x8b]) {
            std::fs::write(e.path(), &other).unwrap();
        }
    }
    let err = restore(&reference, &jail.target(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("digest mismatch") || err.contains("its descriptor says"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(jail.target()).unwrap().count(), 0);
}
