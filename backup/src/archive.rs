//! Archiving: entries → deterministic tar → zstd or gzip → the upload's writer, with the file
//! digests and the uncompressed (diff id) digest computed on the way. The writer (a
//! `BlobWriter`) hashes the compressed stream.
//!
//! Runs on a blocking thread; the writer applies back-pressure, so memory stays bounded
//! whatever the size of the layer.

use crate::BackupError;
use crate::walk::{SourceEntry, full_path};
use std::io::{self, Read, Write};
use std::path::Path;
use wsr_format::codec::{EntryHeader, EntryKind, TarWriter, gzip_encoder, zstd_encoder};
use wsr_format::digest::{Digest, Hasher, HashingWriter};
use wsr_format::native::{IndexEntry, RawPath};

/// Which codec and archive flavour to produce.
#[derive(Clone, Copy, Debug)]
pub enum Codec {
    /// Native layers: plain relative names, zstd.
    Zstd { level: i32 },
    /// `dwo`: `./` names with a root entry, gzip.
    Gzip {
        level: u32,
        root_mode: u32,
        root_mtime: i64,
    },
}

/// What archiving one layer produced (the compressed digest and size are the writer's).
pub struct Archived {
    pub diff_id: Digest,
    pub tar_size: u64,
    pub index: Vec<IndexEntry>,
}

/// Archives `entries` (read from `root`) and writes the compressed bytes into `out`. A failed
/// write is reported as [`BackupError::Archive`]; the writer knows whether it was its fault.
pub fn archive(
    root: &Path,
    entries: &[SourceEntry],
    codec: Codec,
    out: &mut dyn Write,
    on_entry: &dyn Fn(u64),
) -> Result<Archived, BackupError> {
    let (diff_id, tar_size, index) = match codec {
        Codec::Zstd { level } => {
            let enc = zstd_encoder(out, level).map_err(BackupError::Archive)?;
            let (tar, index) = write_tar(root, entries, HashingWriter::new(enc), None, on_entry)?;
            let (enc, diff_id, tar_size) = tar.finish();
            enc.finish().map_err(BackupError::Archive)?;
            (diff_id, tar_size, index)
        }
        Codec::Gzip {
            level,
            root_mode,
            root_mtime,
        } => {
            let enc = gzip_encoder(out, level);
            let root_entry = Some((root_mode, root_mtime));
            let (tar, index) =
                write_tar(root, entries, HashingWriter::new(enc), root_entry, on_entry)?;
            let (enc, diff_id, tar_size) = tar.finish();
            enc.finish().map_err(BackupError::Archive)?;
            (diff_id, tar_size, index)
        }
    };
    Ok(Archived {
        diff_id,
        tar_size,
        index,
    })
}

/// Writes the tar stream; `root_entry` (mode, mtime) marks the `dwo` flavour: `./` names
/// after a root entry.
fn write_tar<W: Write>(
    root: &Path,
    entries: &[SourceEntry],
    out: HashingWriter<W>,
    root_entry: Option<(u32, i64)>,
    on_entry: &dyn Fn(u64),
) -> Result<(HashingWriter<W>, Vec<IndexEntry>), BackupError> {
    let mut tar = TarWriter::new(out, root_entry.is_some());
    if let Some((mode, mtime)) = root_entry {
        tar.append_root(mode, mtime).map_err(BackupError::Archive)?;
    }
    let mut index = Vec::with_capacity(entries.len());
    for e in entries {
        let header = EntryHeader {
            path: &e.rel,
            kind: e.kind,
            mode: e.mode,
            mtime: e.mtime,
            size: e.size,
            link: e.link.as_deref(),
        };
        let sha256 = if e.kind == EntryKind::File {
            let path = full_path(root, &e.rel);
            let file = std::fs::File::open(&path).map_err(|source| match source.kind() {
                io::ErrorKind::PermissionDenied => BackupError::Unreadable { path: path.clone() },
                _ => BackupError::Source {
                    path: path.clone(),
                    source,
                },
            })?;
            let mut reader = FileReader {
                file,
                hasher: Hasher::new(),
                remaining: e.size,
                changed: false,
            };
            let appended = tar.append(&header, &mut reader);
            if reader.changed || (appended.is_ok() && reader.remaining != 0) {
                return Err(BackupError::Changed { path });
            }
            appended.map_err(BackupError::Archive)?;
            Some(reader.hasher.finish().0)
        } else {
            tar.append(&header, io::empty())
                .map_err(BackupError::Archive)?;
            None
        };
        on_entry(if e.kind == EntryKind::File { e.size } else { 0 });
        index.push(IndexEntry {
            path: RawPath(e.rel.clone()),
            kind: e.kind,
            mode: e.mode,
            mtime: e.mtime.max(0),
            size: e.size,
            sha256,
            link: e.link.clone().map(RawPath),
        });
    }
    Ok((tar.finish().map_err(BackupError::Archive)?, index))
}

/// Reads exactly the size recorded by the walk, hashing it. A file that shrank since sets
/// `changed`: a tar header cannot be corrected after the fact.
struct FileReader {
    file: std::fs::File,
    hasher: Hasher,
    remaining: u64,
    changed: bool,
}

impl Read for FileReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = out
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.file.read(&mut out[..want])?;
        if n == 0 {
            self.changed = true;
            return Err(io::Error::other("file shrank while being read"));
        }
        self.hasher.update(&out[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}
