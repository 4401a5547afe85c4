//! The download pipeline: each chosen layer streams from a `BlobReader` through decompression
//! into the shared unpacker on a blocking thread, `parallel` layers at once; a native layer's
//! file index streams beside it, one line per entry, so memory does not grow with the number of
//! entries; a layer is read only up to its end-of-archive (plus bounded padding).
//!
//! Each byte is hashed once on its way in: the compressed blob against its descriptor, which
//! fixes every byte decompressed from it. Entries are checked against their index lines (type,
//! mode, size, mtime, link), but a restore does not hash each file's content against its line,
//! nor the uncompressed stream against `diff_id` (FORMAT.md §6 rule 5): either would hash the
//! data a second time, and could only catch a writer whose index or config contradicts the
//! layer it wrote, never a byte that differs from what was backed up. A check that writes
//! nothing (`wsr-restore verify`) does hash content against the index, its only measure of a
//! writer's consistency; the drill also re-reads every restored file against it.
//!
//! Up to `parallel` more layers, and at least [`MIN_AHEAD`], are requested ahead of the ones
//! unpacking (their blob and index requests at once), so each layer's round trips overlap the
//! unpacking of the ones before it instead of adding to it; a layer opened ahead holds only its
//! reader's bounded read-ahead.

use crate::open::{self, Opened};
use crate::{Progress, RestoreError};
use futures_util::StreamExt;
use std::io::{self, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Semaphore;
use wsr_format::codec::Compression;
use wsr_format::manifest::Descriptor;
use wsr_format::native::{self, IndexBudget, IndexLocation, IndexReader};
use wsr_format::unpack::{UnpackError, Unpacker};
use wsr_transport::{BlobReader, Store};

/// What a native data layer is checked against: its config record and its file index, read
/// line by line beside the layer.
struct NativeLayer {
    tar_size: u64,
    /// Version 3: where the layer's blob holds its index frame (the compressed tar ends there).
    index_at: Option<u64>,
    index: IndexLocation,
    /// The index's line count in the config.
    entries: u64,
    /// Decompressed index bytes all layers may still read.
    budget: Arc<IndexBudget>,
}

/// Layers requested ahead however few unpack at once: how many round trips should overlap
/// depends on how far the registry is, not on the cores. Under the benchmark's `region`
/// profile (10 ms each way, 1 Gbit/s) the 100 MB corpus restored in 0.90-0.96 s with 8, in
/// 1.00-1.09 s with 4 (each layer ahead holds its bounded read-ahead: the 1.3 M-entry restore
/// peaked at 80.5 MiB instead of 74.2).
const MIN_AHEAD: usize = 8;

/// Streams the chosen layers into the unpacker, `parallel` at a time and `parallel` more (at
/// least [`MIN_AHEAD`]) opened ahead, each native layer beside its file index. Returns the sum
/// of the file sizes the layers' indexes list.
pub(crate) async fn unpack_layers(
    store: &Arc<Store>,
    opened: &Opened,
    positions: &[usize],
    unpacker: Arc<Unpacker>,
    parallel: usize,
    progress: &Arc<Progress>,
) -> Result<u64, RestoreError> {
    let layers = opened.data_layers();
    let budget = Arc::new(IndexBudget::default());
    // Permits go first come, first served to layers whose requests were answered: roughly in
    // order, and never to a layer still waiting for its registry.
    let unpacking = Arc::new(Semaphore::new(parallel));
    let jobs = positions.iter().map(|&i| {
        let descriptor = layers[i].clone();
        let native =
            opened
                .config
                .as_ref()
                .zip(opened.index_of(i))
                .map(|(config, (index, entries))| NativeLayer {
                    tar_size: config.layers[i].tar_size,
                    index_at: config.layers[i].index_at,
                    index,
                    entries,
                    budget: budget.clone(),
                });
        let (store, unpacker, progress) = (store.clone(), unpacker.clone(), progress.clone());
        let unpacking = unpacking.clone();
        async move {
            let readers = open_layer(&store, &descriptor, native.as_ref()).await?;
            let _slot = unpacking.acquire().await.expect("semaphore never closed");
            unpack_layer(readers, descriptor, native, unpacker, progress).await
        }
    });
    let ahead = parallel.max(MIN_AHEAD);
    let mut results = futures_util::stream::iter(jobs).buffer_unordered(parallel + ahead);
    let mut index_bytes = 0u64;
    while let Some(result) = results.next().await {
        let (bytes, index) = result?;
        if let Some(index) = index {
            index_bytes = crate::open::add_index_bytes(index_bytes, bytes, &index.digest)?;
        }
    }
    Ok(index_bytes)
}

/// Most bytes accepted after a native layer's end-of-archive marker.
const MAX_TRAILER: u64 = 1 << 20;

/// Requests a layer's blob and, for a native layer, its file index (from version 3 on, the end
/// of the same blob, requested by range), both at once.
async fn open_layer(
    store: &Store,
    descriptor: &Descriptor,
    native: Option<&NativeLayer>,
) -> Result<(BlobReader, Option<BlobReader>), RestoreError> {
    let blob = async {
        let reader = store.blob_reader(&descriptor.digest, descriptor.size);
        reader.await.map_err(RestoreError::from)
    };
    let index = async {
        match native {
            Some(native) => open::index_reader(store, &native.index).await.map(Some),
            None => Ok(None),
        }
    };
    tokio::try_join!(blob, index)
}

async fn unpack_layer(
    (blob, index_blob): (BlobReader, Option<BlobReader>),
    descriptor: Descriptor,
    native: Option<NativeLayer>,
    unpacker: Arc<Unpacker>,
    progress: Arc<Progress>,
) -> Result<(u64, Option<IndexLocation>), RestoreError> {
    tokio::task::spawn_blocking(move || {
        let bytes = unpack_blob(
            blob,
            index_blob,
            &descriptor,
            native.as_ref(),
            &unpacker,
            &progress,
        )?;
        Ok((bytes, native.map(|n| n.index)))
    })
    .await
    .expect("unpack task")
}

/// Decompresses and unpacks one layer blob (a native one checked against its index), then
/// checks the blobs (size, then digest: a reader never reads more than one byte past the
/// declared size) and a native tar's length. Returns the sum of the file sizes the index lists.
fn unpack_blob(
    mut blob: BlobReader,
    mut index_blob: Option<BlobReader>,
    desc: &Descriptor,
    native: Option<&NativeLayer>,
    unpacker: &Unpacker,
    progress: &Progress,
) -> Result<u64, RestoreError> {
    let unpacked = (|| {
        // Version 3: the compressed tar ends where the index frame starts.
        let compressed_tar = native.and_then(|n| n.index_at).unwrap_or(u64::MAX);
        let counted = Counted {
            inner: (&mut blob).take(compressed_tar),
            count: &progress.downloaded,
        };
        let decoder = Compression::decoder(BufReader::with_capacity(256 * 1024, counted))
            .map_err(corrupt(desc))?;
        // A native layer's uncompressed length is declared too (`tar_size`).
        let tar_limit = native.map_or(u64::MAX, |n| n.tar_size.saturating_add(1));
        let mut tar = decoder.take(tar_limit);
        let index_bytes = match (native, index_blob.as_mut()) {
            (Some(native), Some(index_blob)) => {
                let index_error = open::index_error(&native.index.digest);
                let mut lines = IndexReader::new(index_blob, native.entries, &native.budget)
                    .map_err(&index_error)?;
                unpacker
                    .unpack_layer(&mut tar, &mut lines)
                    .map_err(|e| match e {
                        UnpackError::Index(e) => index_error(e),
                        e => RestoreError::Unpack(e),
                    })?;
                lines.finish().map_err(&index_error)?
            }
            _ => {
                unpacker.unpack_tar(&mut tar)?;
                0
            }
        };
        if native.is_some() {
            // The padding after the end-of-archive marker counts in `tar_size`; wsr writes
            // 1 KiB, GNU tar pads to 10 KiB. Anything longer is refused, not decompressed.
            let trailer = io::copy(&mut (&mut tar).take(MAX_TRAILER + 1), &mut io::sink())
                .map_err(corrupt(desc))?;
            if trailer > MAX_TRAILER {
                return Err(RestoreError::Corrupt(format!(
                    "layer {}: more than {MAX_TRAILER} bytes follow the end-of-archive marker",
                    desc.digest
                )));
            }
        }
        let tar_size = tar_limit - tar.limit();
        drop(tar);
        // What progress has counted: every byte so far went through `counted`.
        let streamed = blob.read_so_far();
        if let Some(index_at) = native.and_then(|n| n.index_at) {
            check_index_frame(&mut blob, desc, index_at)?;
        }
        Ok::<_, RestoreError>((tar_size, index_bytes, streamed))
    })();
    let (tar_size, index_bytes, streamed) = match unpacked {
        Ok(tar) => tar,
        Err(e) => {
            // A read that failed because the download did is reported as the download's
            // failure, and an index that fails its digest check as such (the rest of the
            // index blob, at most its descriptor size, is read to find out).
            if let Some(failure) = blob.into_failure() {
                return Err(failure.into());
            }
            return match index_blob.map(BlobReader::finish) {
                Some(Err(failure)) => Err(failure.into()),
                _ => Err(e),
            };
        }
    };
    // Progress counted what streamed into the decoder; the rest of the blob (a version 3
    // index frame, padding) and the index's own request count once read.
    let mut read = blob.finish()? - streamed;
    if let Some(index_blob) = index_blob {
        read += index_blob.finish()?;
    }
    progress.downloaded.fetch_add(read, Ordering::Relaxed);
    if let Some(native) = native
        && native.tar_size != tar_size
    {
        // The limit stops a reader one byte past the declared length.
        let length = if tar_size > native.tar_size {
            format!("more than {}", native.tar_size)
        } else {
            tar_size.to_string()
        };
        return Err(RestoreError::Corrupt(format!(
            "layer {}: the uncompressed stream is {length} bytes, the config says {}",
            desc.digest, native.tar_size
        )));
    }
    Ok(index_bytes)
}

/// Version 3: the layer's compressed tar was read to its end at `index_at`; the skippable
/// frame that follows must be the one the config implies, so that every zstd decoder skips it
/// (its payload, the index, is checked by its own digest).
fn check_index_frame(
    blob: &mut BlobReader,
    desc: &Descriptor,
    index_at: u64,
) -> Result<(), RestoreError> {
    let mut header = [0u8; native::INDEX_FRAME_HEADER as usize];
    blob.read_exact(&mut header).map_err(corrupt(desc))?;
    let payload = desc.size - index_at - native::INDEX_FRAME_HEADER;
    native::check_index_frame_header(&header, payload)
        .map_err(|e| RestoreError::Corrupt(format!("layer {}: {e}", desc.digest)))
}

/// Counts the bytes read through it into a progress counter.
struct Counted<'a, R> {
    inner: R,
    count: &'a AtomicU64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn corrupt(desc: &Descriptor) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |e| RestoreError::Corrupt(format!("layer {}: {e}", desc.digest))
}
