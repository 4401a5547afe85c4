//! A small workspace holding every entry kind wsr must preserve, and a snapshot of a tree
//! (paths, types, modes, mtimes, sizes, content digests, link targets, hard-link groups) to
//! compare a restore against its source.

use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::time::{Duration, SystemTime};

const MTIME: u64 = 1_700_000_000;

fn set_mtime(path: &Path, secs: u64) -> io::Result<()> {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    fs::File::open(path)?.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
}

fn write(root: &Path, rel: &[u8], data: &[u8], mode: u32) -> io::Result<()> {
    let path = root.join(OsStr::from_bytes(rel));
    fs::create_dir_all(path.parent().expect("has parent"))?;
    fs::write(&path, data)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    set_mtime(&path, MTIME + rel.len() as u64)
}

/// Deterministic pseudo-random bytes (incompressible enough to exercise real compression).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes the sample workspace into `root` (which must exist and be empty): regular, empty,
/// executable, read-only and large files; empty, nested and read-only directories; relative,
/// absolute and dangling symlinks; hard links; dotfiles at the top level; a path over 100 bytes,
/// a 255-byte name, a non-UTF-8 name; and, when `with_fifo`, a FIFO (which backups skip).
pub fn write_sample(root: &Path, with_fifo: bool) -> io::Result<()> {
    write(root, b"README.md", b"# sample workspace\n", 0o644)?;
    write(
        root,
        b"src/main.rs",
        "fn main() { println!(\"hello\"); }\n".repeat(50).as_bytes(),
        0o644,
    )?;
    write(root, b"src/lib/empty.txt", b"", 0o644)?;
    write(root, b"bin/run.sh", b"#!/bin/sh\necho run\n", 0o755)?;
    write(root, b"secret.key", b"private\n", 0o600)?;
    write(root, b"readonly.txt", b"do not edit\n", 0o444)?;
    write(root, b".env", b"TOKEN=abc\n", 0o640)?;
    write(root, b".git/config", b"[core]\n\tbare = false\n", 0o644)?;
    write(
        root,
        b".git/objects/pack/pack-1.pack",
        &noise(300_000, 1),
        0o444,
    )?;
    write(root, b"data/big.bin", &noise(2 << 20, 2), 0o644)?;
    write(
        root,
        b"data/text.log",
        "line of a log file\n".repeat(20_000).as_bytes(),
        0o644,
    )?;
    write(
        root,
        b"names/with space & unicode \xc3\xa9\xe2\x9c\x93.txt",
        b"u\n",
        0o644,
    )?;
    write(
        root,
        b"names/latin1-\xe9\xff.bin",
        b"not utf-8 name\n",
        0o644,
    )?;
    let long_dir = b"deep/".repeat(30);
    write(
        root,
        &[long_dir.as_slice(), b"file-at-the-bottom.txt"].concat(),
        b"deep\n",
        0o644,
    )?;
    write(
        root,
        &[b"names/".as_slice(), &[b'n'; 255]].concat(),
        b"long name\n",
        0o644,
    )?;
    // Hard links: two names for one file, across directories.
    fs::hard_link(root.join("src/main.rs"), root.join("bin/main-link.rs"))?;
    // Symlinks: relative, absolute, dangling, to a directory, with a long target.
    symlink("../src/main.rs", root.join("bin/main.rs.link"))?;
    symlink("/usr/share/doc", root.join("abs-link"))?;
    symlink("does/not/exist", root.join("dangling"))?;
    symlink("src", root.join("src-dir-link"))?;
    symlink(
        OsStr::from_bytes(&[b"x/".repeat(80).as_slice(), b"target"].concat()),
        root.join("long-target-link"),
    )?;
    fs::create_dir_all(root.join("empty-dir"))?;
    fs::create_dir_all(root.join("private-dir/inner"))?;
    write(root, b"private-dir/inner/f", b"f\n", 0o644)?;
    fs::create_dir_all(root.join("locked-dir"))?;
    write(root, b"locked-dir/kept.txt", b"kept\n", 0o644)?;
    if with_fifo {
        let c = std::ffi::CString::new(root.join("pipe").as_os_str().as_bytes()).expect("path");
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o644) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // Directory modes and mtimes last, deepest first, since creating children changes them.
    let mut dirs = Vec::new();
    collect_dirs(root, &mut dirs)?;
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let mode = match d.strip_prefix(root).ok().and_then(|p| p.to_str()) {
            Some("private-dir") => 0o700,
            Some("locked-dir") => 0o555,
            _ => 0o755,
        };
        fs::set_permissions(&d, fs::Permissions::from_mode(mode))?;
        set_mtime(&d, MTIME - 1000)?;
    }
    Ok(())
}

fn collect_dirs(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            out.push(e.path());
            collect_dirs(&e.path(), out)?;
        }
    }
    Ok(())
}

/// One line per entry, sorted: path, type, mode, mtime (seconds), size, content digest or link
/// target, and the hard-link group (the first path sharing the inode). Two trees are identical
/// for wsr's purposes when their snapshots are equal. FIFOs are listed, so their absence shows.
pub fn snapshot(root: &Path) -> io::Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut inodes: HashMap<u64, String> = HashMap::new();
    walk(root, root, &mut lines, &mut inodes)?;
    lines.sort();
    Ok(lines)
}

fn walk(
    root: &Path,
    dir: &Path,
    lines: &mut Vec<String>,
    inodes: &mut HashMap<u64, String>,
) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = String::from_utf8_lossy(
            path.strip_prefix(root)
                .expect("below root")
                .as_os_str()
                .as_bytes(),
        )
        .into_owned();
        let meta = fs::symlink_metadata(&path)?;
        let ft = meta.file_type();
        let mode = meta.mode() & 0o7777;
        let (kind, detail) = if ft.is_symlink() {
            (
                "symlink",
                String::from_utf8_lossy(fs::read_link(&path)?.as_os_str().as_bytes()).into_owned(),
            )
        } else if ft.is_dir() {
            ("dir", String::new())
        } else if ft.is_file() {
            let group = if meta.nlink() > 1 {
                inodes
                    .entry(meta.ino())
                    .or_insert_with(|| rel.clone())
                    .clone()
            } else {
                String::new()
            };
            (
                "file",
                format!(
                    "{} {} nlink={} group={group}",
                    meta.len(),
                    hex::encode(Sha256::digest(fs::read(&path)?)),
                    meta.nlink()
                ),
            )
        } else {
            ("special", String::new())
        };
        let mode = if ft.is_symlink() { 0o777 } else { mode };
        lines.push(format!("{rel} {kind} {mode:o} {} {detail}", meta.mtime()));
        if ft.is_dir() {
            walk(root, &path, lines, inodes)?;
        }
    }
    Ok(())
}

/// Makes read-only directories writable again so a tempdir holding the tree can be removed.
pub fn make_removable(root: &Path) {
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = fs::set_permissions(e.path(), fs::Permissions::from_mode(0o755));
                make_removable(&e.path());
            }
        }
    }
}
