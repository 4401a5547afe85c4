//! One layer archived and uploaded through a `BlobWriter` on a blocking thread, written again
//! when the registry fails transiently (under the transport's retry policy); progress from a
//! failed attempt is taken back. Archiving holds one of the compressing permits; waiting for
//! the registry to confirm the blob does not.

use crate::archive::{Archived, Codec, archive};
use crate::walk::Tree;
use crate::{BackupError, Progress};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::Semaphore;
use wsr_format::digest::Digest;
use wsr_format::native;
use wsr_transport::retry::RetryPolicy;
use wsr_transport::{BlobWriter, Store};

/// A layer as stored: what archiving produced, and the compressed blob's digest and size.
pub(crate) struct Uploaded {
    pub(crate) archived: Archived,
    pub(crate) compressed: Digest,
    pub(crate) compressed_size: u64,
    /// Where the skippable frame holding the layer's file index starts in the blob (native
    /// layers; the compressed tar ends there).
    pub(crate) index_at: Option<u64>,
}

/// Archives and uploads one layer, writing it again on transient registry failures.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn upload_layer(
    store: &Store,
    compressing: &Arc<Semaphore>,
    root: &Path,
    tree: &Arc<Tree>,
    range: Range<usize>,
    layer: u32,
    codec: Codec,
    progress: &Arc<Progress>,
) -> Result<Uploaded, BackupError> {
    let mut backoff = RetryPolicy::current().backoff();
    // What this attempt added to the shared progress, taken back if it has to be retried.
    let attempt = Arc::new(Progress::default());
    loop {
        let permit = compressing
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut blob = store.blob_writer().await?;
        let (root2, tree2, range2, progress2, attempt2): (PathBuf, _, _, _, _) = (
            root.to_owned(),
            tree.clone(),
            range.clone(),
            progress.clone(),
            attempt.clone(),
        );
        let archiving = tokio::task::spawn_blocking(move || {
            let count = |bytes: u64| {
                for p in [&progress2, &attempt2] {
                    p.entries.fetch_add(1, Ordering::Relaxed);
                    p.bytes.fetch_add(bytes, Ordering::Relaxed);
                }
            };
            let archived =
                archive(&root2, &tree2, range2, codec, &mut blob, &count).and_then(|archived| {
                    let index_at = match &archived.index {
                        Some(index) => Some(append_index(&mut blob, index)?),
                        None => None,
                    };
                    Ok((archived, index_at))
                });
            // Compressed and handed to the upload: the next layer may start compressing
            // while the registry confirms this one.
            drop(permit);
            match archived {
                Ok(archived) => blob
                    .finish()
                    .map(|stored| (archived, stored))
                    .map_err(BackupError::from),
                // A failed write is the upload's doing when the upload says so.
                Err(e) => Err(blob.abort().map_or(e, BackupError::from)),
            }
        });
        let error = match archiving.await.expect("archive task") {
            Ok(((archived, index_at), (compressed, compressed_size))) => {
                progress
                    .uploaded
                    .fetch_add(compressed_size, Ordering::Relaxed);
                return Ok(Uploaded {
                    archived,
                    compressed,
                    compressed_size,
                    index_at,
                });
            }
            Err(e) => e,
        };
        let delay = match &error {
            BackupError::Transport(t) => backoff.delay_after(t),
            _ => None,
        };
        let Some(delay) = delay else {
            return Err(error);
        };
        tracing::warn!(%error, failures = backoff.failures(), "layer {layer} upload failed; retrying in {delay:?}");
        progress.entries.fetch_sub(
            attempt.entries.swap(0, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        progress
            .bytes
            .fetch_sub(attempt.bytes.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        tokio::time::sleep(delay).await;
    }
}

/// Appends a native layer's compressed file index to its blob, after the compressed tar, in a
/// zstd skippable frame (FORMAT.md §4.4), and returns the frame's offset. One blob per layer
/// instead of two: every blob costs the registry a few requests and milliseconds of CPU.
fn append_index(blob: &mut BlobWriter, index: &[u8]) -> Result<u64, BackupError> {
    let index_at = blob.written();
    let header = native::index_frame_header(index.len()).ok_or_else(|| {
        BackupError::Archive(std::io::Error::other(format!(
            "a layer's file index of {} bytes does not fit a zstd skippable frame",
            index.len()
        )))
    })?;
    blob.write_all(&header).map_err(BackupError::Archive)?;
    blob.write_all(index).map_err(BackupError::Archive)?;
    Ok(index_at)
}
