//! The byte interface: a blocking [`BlobWriter`] (`std::io::Write`) for uploads and a blocking
//! [`BlobReader`] (`std::io::Read`) for downloads, the same for a registry and an OCI layout.
//!
//! Both hash the bytes that pass through them, so the compressed stream is hashed exactly once:
//! the writer names the blob by the digest of what was written, the reader checks what it read
//! against the digest it was opened for. Both are used from blocking threads (the archiver and
//! the unpacker run there), never from async code.
//!
//! `Write` and `Read` can only return `io::Error`s. When a write or read fails because the
//! transport failed, the error returned says so, and the transport's own error stays in the
//! writer or reader: [`BlobWriter::abort`] and [`BlobReader::finish`] hand it back, typed.

use crate::{Result, TransportError};
use bytes::{Bytes, BytesMut};
use std::io::{self, Read, Write};
use tokio::sync::{mpsc, oneshot};
use wsr_format::digest::{Digest, Hasher};

/// Size of the pieces a registry upload is sent in.
const CHUNK: usize = 1 << 20;
/// Pieces in flight between the writer and the upload request (bounded memory, back-pressure).
const UPLOAD_QUEUE: usize = 4;
/// Pieces read ahead of the reader by a registry download.
pub(crate) const DOWNLOAD_QUEUE: usize = 8;
/// Longest piece queued by a registry download: the HTTP client reads in pieces of up to a few
/// hundred KiB, and a restore keeps several downloads open ahead of the one it reads, so the
/// read-ahead is bounded in bytes (about `DOWNLOAD_QUEUE` × this), not only in pieces.
pub(crate) const DOWNLOAD_PIECE: usize = 64 << 10;

/// An upload in progress. Write the blob's bytes, then [`finish`](BlobWriter::finish) to store
/// it under their digest, or [`abort`](BlobWriter::abort) (or drop) to store nothing.
pub struct BlobWriter {
    sink: Sink,
    hasher: Hasher,
}

enum Sink {
    Registry(RegistryUpload),
    Layout(LayoutUpload),
}

impl BlobWriter {
    pub(crate) fn registry(upload: RegistryUpload) -> BlobWriter {
        BlobWriter {
            sink: Sink::Registry(upload),
            hasher: Hasher::new(),
        }
    }

    pub(crate) fn layout(upload: LayoutUpload) -> BlobWriter {
        BlobWriter {
            sink: Sink::Layout(upload),
            hasher: Hasher::new(),
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.hasher.len()
    }

    /// Completes the upload: the blob is stored under the digest of everything written.
    /// Returns that digest and the size. Blocks until the store confirms.
    pub fn finish(self) -> Result<(Digest, u64)> {
        let (digest, size) = self.hasher.finish();
        match self.sink {
            Sink::Registry(upload) => upload.finish(digest.clone())?,
            Sink::Layout(upload) => upload.finish(&digest)?,
        }
        Ok((digest, size))
    }

    /// Abandons the upload; nothing is stored. Returns the transport's own failure when there
    /// was one (then it is why a write failed), `None` when the upload was still healthy.
    pub fn abort(self) -> Option<TransportError> {
        match self.sink {
            Sink::Registry(upload) => upload.abort(),
            Sink::Layout(upload) => upload.failure,
        }
    }
}

impl Write for BlobWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = match &mut self.sink {
            Sink::Registry(upload) => upload.write(data)?,
            Sink::Layout(upload) => upload.write(data)?,
        };
        self.hasher.update(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The error a write returns when the upload itself failed; the cause is kept for `abort`.
fn upload_failed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the upload failed")
}

/// What the writer sends to a registry upload request.
pub(crate) enum Piece {
    Data(Bytes),
    /// Everything was written: end the request body normally.
    End,
}

/// The writer's side of a registry upload: the body goes to the request task through a bounded
/// channel; the digest goes once the body is complete; the task's outcome comes back.
pub(crate) struct RegistryUpload {
    buf: BytesMut,
    pieces: mpsc::Sender<Piece>,
    digest: oneshot::Sender<Digest>,
    outcome: oneshot::Receiver<Result<()>>,
    /// A send failed: the request task has stopped, and its outcome is an error.
    gone: bool,
}

impl RegistryUpload {
    pub(crate) fn new(
        pieces: mpsc::Sender<Piece>,
        digest: oneshot::Sender<Digest>,
        outcome: oneshot::Receiver<Result<()>>,
    ) -> RegistryUpload {
        RegistryUpload {
            buf: BytesMut::new(),
            pieces,
            digest,
            outcome,
            gone: false,
        }
    }

    /// A channel sized for one upload.
    pub(crate) fn channel() -> (mpsc::Sender<Piece>, mpsc::Receiver<Piece>) {
        mpsc::channel(UPLOAD_QUEUE)
    }

    fn send(&mut self, piece: Piece) -> io::Result<()> {
        if self.gone || self.pieces.blocking_send(piece).is_err() {
            self.gone = true;
            return Err(upload_failed());
        }
        Ok(())
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // The whole buffer goes; the next write allocates the next piece's.
        let chunk = std::mem::take(&mut self.buf).freeze();
        self.send(Piece::Data(chunk))
    }

    /// Takes what fits in the current piece: pieces are exactly [`CHUNK`] bytes, so a buffer
    /// never grows past its capacity (growing one doubles it, and the queue then holds
    /// buffers twice the size of their bytes).
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.capacity() == 0 {
            self.buf = BytesMut::with_capacity(CHUNK);
        }
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn outcome(self) -> Result<()> {
        self.outcome
            .blocking_recv()
            .unwrap_or_else(|_| panic!("the upload task ends by sending its outcome"))
    }

    fn finish(mut self, digest: Digest) -> Result<()> {
        let sent = self.send_buffered().and_then(|()| self.send(Piece::End));
        let RegistryUpload {
            digest: digest_tx,
            outcome,
            ..
        } = self;
        if sent.is_ok() {
            // The task waits for the digest once the body ended; it may have failed since.
            let _ = digest_tx.send(digest);
        }
        outcome
            .blocking_recv()
            .unwrap_or_else(|_| panic!("the upload task ends by sending its outcome"))
    }

    fn abort(self) -> Option<TransportError> {
        if self.gone {
            return self.outcome().err();
        }
        // Dropping the channel without `End` makes the request body fail, so the registry
        // never completes the upload; the task's outcome then only reports that.
        let RegistryUpload {
            pieces, outcome, ..
        } = self;
        drop(pieces);
        let _ = outcome.blocking_recv();
        None
    }
}

/// The writer's side of an OCI-layout upload: a temporary file beside the blobs, renamed to its
/// digest on `finish` and deleted otherwise.
pub(crate) struct LayoutUpload {
    pub(crate) file: io::BufWriter<std::fs::File>,
    pub(crate) path: tempfile::TempPath,
    pub(crate) blobs: std::path::PathBuf,
    pub(crate) failure: Option<TransportError>,
}

impl LayoutUpload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(upload_failed());
        }
        match self.file.write(data) {
            Ok(n) => Ok(n),
            Err(source) => {
                self.failure = Some(TransportError::Io {
                    what: "write blob".into(),
                    source,
                });
                Err(upload_failed())
            }
        }
    }

    fn finish(self, digest: &Digest) -> Result<()> {
        if let Some(failure) = self.failure {
            return Err(failure);
        }
        let io_error = |what: &str| {
            let what = what.to_owned();
            move |source| TransportError::Io { what, source }
        };
        let file = self
            .file
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(io_error("write blob"))?;
        file.sync_all().map_err(io_error("sync blob"))?;
        // persist() renames; the TempPath deletes the file on every path that does not get here.
        self.path
            .persist(self.blobs.join(digest.hex()))
            .map_err(|e| TransportError::Io {
                what: format!("store blob {digest}"),
                source: e.error,
            })
    }
}

/// A download: read the blob's bytes, then [`finish`](BlobReader::finish) to check them
/// against the digest and size it was opened for.
pub struct BlobReader {
    source: Source,
    hasher: Hasher,
    digest: Digest,
    size: u64,
    /// The transport's failure behind a failed read, or the blob's excess over its size.
    failure: Option<TransportError>,
}

pub(crate) enum Source {
    /// Pieces read ahead by the download task.
    Registry {
        pieces: mpsc::Receiver<Result<Bytes>>,
        current: Bytes,
    },
    Layout(std::fs::File),
}

impl BlobReader {
    pub(crate) fn new(source: Source, digest: &Digest, size: u64) -> BlobReader {
        BlobReader {
            source,
            hasher: Hasher::new(),
            digest: digest.clone(),
            size,
            failure: None,
        }
    }

    /// Bytes read so far.
    pub fn read_so_far(&self) -> u64 {
        self.hasher.len()
    }

    /// Reads what is left and checks the digest and size of the whole blob. Returns the
    /// transport's failure when a read failed because of it.
    pub fn finish(mut self) -> Result<u64> {
        let drained = io::copy(&mut self, &mut io::sink());
        if let Some(failure) = self.failure {
            return Err(failure);
        }
        if let Err(source) = drained {
            return Err(TransportError::Io {
                what: format!("read blob {}", self.digest),
                source,
            });
        }
        let (actual, size) = self.hasher.finish();
        if size != self.size {
            return Err(TransportError::SizeMismatch {
                digest: self.digest,
                expected: self.size,
                found: size.to_string(),
            });
        }
        if actual != self.digest {
            return Err(TransportError::DigestMismatch {
                what: format!("{size} bytes downloaded"),
                expected: self.digest,
                actual,
            });
        }
        Ok(size)
    }

    /// The transport's failure, if a read failed because of it (a read error that is not the
    /// transport's, e.g. a decoder's, leaves this `None`).
    pub fn into_failure(self) -> Option<TransportError> {
        self.failure
    }

    fn read_source(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match &mut self.source {
            Source::Layout(file) => file.read(out).map_err(|source| {
                self.failure = Some(TransportError::Io {
                    what: format!("read blob {}", self.digest),
                    source,
                });
                io::Error::other("the download failed")
            }),
            Source::Registry { pieces, current } => {
                while current.is_empty() {
                    match pieces.blocking_recv() {
                        None => return Ok(0),
                        Some(Ok(piece)) => *current = piece,
                        Some(Err(e)) => {
                            self.failure = Some(e);
                            return Err(io::Error::other("the download failed"));
                        }
                    }
                }
                let n = out.len().min(current.len());
                out[..n].copy_from_slice(&current.split_to(n));
                Ok(n)
            }
        }
    }
}

impl Read for BlobReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::other("the download failed"));
        }
        let n = self.read_source(out)?;
        self.hasher.update(&out[..n]);
        if self.hasher.len() > self.size {
            // A blob longer than its descriptor cannot match it: stop reading now.
            self.failure = Some(TransportError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                found: format!("more than {}", self.size),
            });
            return Err(io::Error::other("the blob is larger than its descriptor"));
        }
        Ok(n)
    }
}
