//! The safe unpacker: tar bytes in, a fresh root out. Whatever the bytes, nothing outside the
//! root is created or changed (a sentinel file and the root's parent are checked), what is
//! written stays within the byte and entry limits, and verify-only mode writes nothing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use wsr_format::unpack::{UnpackOptions, Unpacker};

const MAX_BYTES: u64 = 1 << 20;
const MAX_ENTRIES: u64 = 256;

fn options() -> UnpackOptions {
    UnpackOptions {
        max_bytes: MAX_BYTES,
        max_entries: MAX_ENTRIES,
        select: None,
        aliases: Default::default(),
        reserved_prefix: Some(b".wsr-restore-".to_vec()),
        content_digests: true,
    }
}

/// Entries below `dir` (not following symlinks) and the sum of their sizes.
fn usage(dir: &Path) -> (u64, u64) {
    let (mut entries, mut bytes) = (0, 0);
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        entries += 1;
        if meta.is_dir() {
            let (n, b) = usage(&e.path());
            entries += n;
            bytes += b;
        } else if meta.is_file() {
            // Hard links count once per name: an upper bound of what was written.
            bytes += meta.size() / meta.nlink().max(1);
        }
    }
    (entries, bytes)
}

fuzz_target!(|data: &[u8]| {
    let verifier = Unpacker::verify_only(options());
    if verifier.unpack_tar(&mut &data[..]).is_ok() {
        let _ = verifier.finish();
    }

    let jail = tempfile::tempdir().unwrap();
    let root = jail.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let sentinel = jail.path().join("sentinel");
    std::fs::write(&sentinel, b"outside").unwrap();
    let unpacker = Unpacker::new(&root, options());
    if unpacker.unpack_tar(&mut &data[..]).is_ok() {
        let _ = unpacker.finish();
    }

    let mut names: Vec<_> = std::fs::read_dir(jail.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["root", "sentinel"],
        "something was created beside the root"
    );
    assert_eq!(std::fs::read(&sentinel).unwrap(), b"outside");
    assert!(std::fs::symlink_metadata(&root).unwrap().is_dir());
    let (entries, bytes) = usage(&root);
    assert!(entries <= MAX_ENTRIES, "{entries} entries");
    assert!(bytes <= MAX_BYTES, "{bytes} bytes");
});
