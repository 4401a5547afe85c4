//! The download pipeline: each chosen layer streams from a `BlobReader` through decompression
//! and the tar digest check into the shared unpacker on a blocking thread, `parallel` layers at
//! once; a layer is read only up to its end-of-archive (plus bounded padding).

use crate::open::Opened;
use crate::{Progress, RestoreError};
use futures_util::StreamExt;
use std::io::{self, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use wsr_format::codec::Compression;
use wsr_format::digest::{Digest, HashingReader};
use wsr_format::manifest::Descriptor;
use wsr_format::unpack::Unpacker;
use wsr_transport::{BlobReader, Store};

/// Streams the chosen layers into the unpacker, `parallel` at a time.
pub(crate) async fn unpack_layers(
    store: &Arc<Store>,
    opened: &Opened,
    positions: &[usize],
    unpacker: Arc<Unpacker>,
    parallel: usize,
    progress: &Arc<Progress>,
) -> Result<(), RestoreError> {
    let layers = opened.data_layers();
    let jobs = positions.iter().map(|&i| {
        let descriptor = layers[i].clone();
        let diff_id = opened
            .config
            .as_ref()
            .map(|c| (c.layers[i].diff_id.clone(), c.layers[i].tar_size));
        let (store, unpacker, progress) = (store.clone(), unpacker.clone(), progress.clone());
        async move { unpack_layer(&store, descriptor, diff_id, unpacker, progress).await }
    });
    let mut results = futures_util::stream::iter(jobs).buffer_unordered(parallel);
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(())
}

/// Most bytes accepted after a native layer's end-of-archive marker.
const MAX_TRAILER: u64 = 1 << 20;

async fn unpack_layer(
    store: &Store,
    descriptor: Descriptor,
    diff_id: Option<(Digest, u64)>,
    unpacker: Arc<Unpacker>,
    progress: Arc<Progress>,
) -> Result<(), RestoreError> {
    let blob = store
        .blob_reader(&descriptor.digest, descriptor.size)
        .await?;
    tokio::task::spawn_blocking(move || {
        unpack_blob(blob, &descriptor, diff_id, &unpacker, &progress)
    })
    .await
    .expect("unpack task")
}

/// Decompresses and unpacks one layer blob, then checks the blob (size, then digest: the
/// reader never reads more than one byte past the declared size) and the tar's digest.
fn unpack_blob(
    mut blob: BlobReader,
    desc: &Descriptor,
    diff_id: Option<(Digest, u64)>,
    unpacker: &Unpacker,
    progress: &Progress,
) -> Result<(), RestoreError> {
    let unpacked = (|| {
        let counted = Counted {
            inner: &mut blob,
            count: &progress.downloaded,
        };
        let decoder = Compression::decoder(BufReader::with_capacity(256 * 1024, counted))
            .map_err(corrupt(desc))?;
        // A native layer's uncompressed length is declared too (`tar_size`).
        let tar_limit = diff_id
            .as_ref()
            .map_or(u64::MAX, |(_, size)| size.saturating_add(1));
        let mut tar = HashingReader::new(decoder.take(tar_limit));
        unpacker.unpack_tar(&mut tar)?;
        if diff_id.is_some() {
            // The padding after the end-of-archive marker belongs to `diff_id`; wsr writes
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
        let (_, tar_digest, tar_size) = tar.finish();
        Ok::<_, RestoreError>((tar_digest, tar_size))
    })();
    let (tar_digest, tar_size) = match unpacked {
        Ok(tar) => tar,
        // A read that failed because the download did is reported as the download's failure.
        Err(e) => return Err(blob.into_failure().map_or(e, RestoreError::from)),
    };
    blob.finish()?;
    if let Some((want, want_size)) = diff_id
        && (want != tar_digest || want_size != tar_size)
    {
        return Err(RestoreError::Corrupt(format!(
            "layer {}: uncompressed digest {tar_digest} ({tar_size} bytes) differs from the config's {want} ({want_size} bytes)",
            desc.digest
        )));
    }
    Ok(())
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
