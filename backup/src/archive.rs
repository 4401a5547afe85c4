//! Archiving: entries → deterministic tar → zstd or gzip → chunks for the uploader, with the
//! file digests, the uncompressed (diff id) digest and the compressed digest computed on the way.
//!
//! Runs on a blocking thread; the chunks go through a bounded channel, so memory stays bounded
//! whatever the size of the layer.

use crate::BackupError;
use crate::walk::{SourceEntry, full_path};
use bytes::{Bytes, BytesMut};
use std::io::{self, Read, Write};
use std::path::Path;
use tokio::sync::mpsc;
use wsr_format::codec::{EntryHeader, EntryKind, TarWriter, gzip_encoder, zstd_encoder};
use wsr_format::digest::{Digest, Hasher, HashingWriter};
use wsr_format::native::{IndexEntry, RawPath};

/// Size of the chunks handed to the uploader.
const CHUNK: usize = 1 << 20;

/// A `Write` that cuts the stream into chunks and sends them to the uploader, blocking when it
/// falls behind (back-pressure).
pub struct ChunkSender {
    buf: BytesMut,
    tx: mpsc::Sender<io::Result<Bytes>>,
    finished: bool,
}

impl ChunkSender {
    pub fn new(tx: mpsc::Sender<io::Result<Bytes>>) -> Self {
        ChunkSender {
            buf: BytesMut::with_capacity(CHUNK),
            tx,
            finished: false,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(CHUNK);
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "upload stopped"))
    }

    /// Sends what is buffered; dropping the sender then ends the stream.
    pub fn finish(mut self) -> io::Result<()> {
        self.send()?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for ChunkSender {
    /// Dropped unfinished (archiving failed): the uploader must see an error, never a clean end
    /// of stream that would commit a truncated blob.
    fn drop(&mut self) {
        if !self.finished {
            let _ = self
                .tx
                .blocking_send(Err(io::Error::other("archiving stopped before the end")));
        }
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

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

/// What archiving one layer produced.
pub struct Archived {
    pub compressed: Digest,
    pub compressed_size: u64,
    pub diff_id: Digest,
    pub tar_size: u64,
    pub index: Vec<IndexEntry>,
}

/// Archives `entries` (read from `root`) and streams the compressed bytes into `out`.
pub fn archive(
    root: &Path,
    entries: &[SourceEntry],
    codec: Codec,
    out: ChunkSender,
    on_entry: &dyn Fn(u64),
) -> Result<Archived, BackupError> {
    let compressed = HashingWriter::new(out);
    let result = match codec {
        Codec::Zstd { level } => {
            let enc = zstd_encoder(compressed, level).map_err(BackupError::Archive)?;
            write_tar(
                root,
                entries,
                HashingWriter::new(enc),
                false,
                None,
                on_entry,
            )
            .and_then(|(tar, index)| {
                let (enc, diff_id, tar_size) = tar.finish();
                let compressed = enc.finish().map_err(BackupError::Archive)?;
                Ok((compressed, diff_id, tar_size, index))
            })
        }
        Codec::Gzip {
            level,
            root_mode,
            root_mtime,
        } => {
            let enc = gzip_encoder(compressed, level);
            write_tar(
                root,
                entries,
                HashingWriter::new(enc),
                true,
                Some((root_mode, root_mtime)),
                on_entry,
            )
            .and_then(|(tar, index)| {
                let (enc, diff_id, tar_size) = tar.finish();
                let compressed = enc.finish().map_err(BackupError::Archive)?;
                Ok((compressed, diff_id, tar_size, index))
            })
        }
    };
    match result {
        Ok((compressed, diff_id, tar_size, index)) => {
            let (out, digest, size) = compressed.finish();
            out.finish().map_err(BackupError::Archive)?;
            Ok(Archived {
                compressed: digest,
                compressed_size: size,
                diff_id,
                tar_size,
                index,
            })
        }
        Err(e) => Err(e),
    }
}

fn write_tar<W: Write>(
    root: &Path,
    entries: &[SourceEntry],
    out: HashingWriter<W>,
    dot_prefix: bool,
    root_entry: Option<(u32, i64)>,
    on_entry: &dyn Fn(u64),
) -> Result<(HashingWriter<W>, Vec<IndexEntry>), BackupError> {
    let mut tar = TarWriter::new(out, dot_prefix);
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
                path: &path,
            };
            tar.append(&header, &mut reader).map_err(|e| {
                match e.get_ref().and_then(|i| i.downcast_ref::<ChangedError>()) {
                    Some(changed) => BackupError::Changed {
                        path: changed.0.clone(),
                    },
                    None if e.kind() == io::ErrorKind::BrokenPipe => BackupError::UploadStopped,
                    None => BackupError::Archive(e),
                }
            })?;
            if reader.remaining != 0 {
                return Err(BackupError::Changed { path });
            }
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

#[derive(Debug)]
struct ChangedError(std::path::PathBuf);
impl std::fmt::Display for ChangedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} changed size while being backed up", self.0.display())
    }
}
impl std::error::Error for ChangedError {}

/// Reads exactly the size recorded by the walk, hashing it; a file that grew or shrank since
/// is an error (a tar header cannot be corrected after the fact).
struct FileReader<'a> {
    file: std::fs::File,
    hasher: Hasher,
    remaining: u64,
    path: &'a Path,
}

impl Read for FileReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = out
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.file.read(&mut out[..want])?;
        if n == 0 {
            return Err(io::Error::other(ChangedError(self.path.to_owned())));
        }
        self.hasher.update(&out[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}
