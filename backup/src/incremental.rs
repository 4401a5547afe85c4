//! The `native` format's writer: layers planned by the layering rule, each either reused from
//! the previous backup (equal fingerprint and entry count: no file is read, no request made) or
//! archived and uploaded with its file index at the end of its blob, `workers` at a time; then the config recording
//! what was backed up.

use crate::archive::Codec;
use crate::plan::{fingerprints, plan_layers, weight};
use crate::previous::{self, Previous};
use crate::publish::Prepared;
use crate::upload::{Uploaded, upload_layer};
use crate::walk::Tree;
use crate::{BackupError, BackupOptions, Progress};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use wsr_format::artifact;
use wsr_format::digest::Digest;
use wsr_format::manifest::{Annotations, Descriptor};
use wsr_format::media;
use wsr_format::native::{
    self, BackupConfig, LayerCutter, LayerInfo, RawPath, SkippedEntry, Totals, WorkspaceInfo,
};
use wsr_transport::read::ReadError;
use wsr_transport::{BlobWriter, Store, TransportError};

/// Layer bytes (by the layer target) that may wait on the registry at once, whatever the
/// cores: how many layers should wait depends on how far the registry is, not on how many can
/// compress. Small layers are the ones whose round trips, not their bytes, decide the time, and
/// a small layer waits holding at most its request body and its compressed file index. On 2
/// cores, 40 ms from the registry, the 100 MB benchmark corpus took 4.31 s with 4 layers in
/// flight and 3.25 s with 8 when its layers were 2 MiB; at 4 MiB (28 layers), 3.65 s with 4
/// and 3.01 s with 8.
const LAYER_BYTES_IN_FLIGHT: u64 = 32 << 20;

/// New layers in flight: twice the workers (a finished layer waits for the registry's answer
/// while the next ones compress), and more when layers are small, up to
/// [`LAYER_BYTES_IN_FLIGHT`] of them.
fn layers_in_flight(workers: usize, target: u64) -> usize {
    let by_bytes = usize::try_from(LAYER_BYTES_IN_FLIGHT / target.max(1)).unwrap_or(usize::MAX);
    (2 * workers).max(by_bytes)
}

/// One layer of the new backup: its descriptor (its blob ends with its file index), its config
/// record and whether it was reused.
struct StoredLayer {
    layer: Descriptor,
    info: LayerInfo,
    reused: bool,
}

/// Stores the config, which is new by construction (it records this backup's time), so
/// nothing asks first whether it exists. Its upload was opened while the tree was walked
/// (`early`), so that request's round trip is not added after the last layer's; should that
/// upload have failed (a registry that dropped it while the layers took their time), the
/// config is sent again on its own. Returns the bytes sent.
async fn push_config(
    store: &Store,
    early: Result<BlobWriter, TransportError>,
    bytes: Bytes,
) -> Result<u64, BackupError> {
    let len = bytes.len() as u64;
    if let Ok(mut writer) = early {
        let body = bytes.clone();
        let sent = tokio::task::spawn_blocking(move || match writer.write_all(&body) {
            Ok(()) => writer.finish(),
            Err(e) => Err(writer.abort().unwrap_or(TransportError::Io {
                what: "config upload".into(),
                source: e,
            })),
        });
        match sent.await.expect("config upload task") {
            Ok(_) => return Ok(len),
            Err(e) => tracing::debug!("the config's upload failed ({e}); sending it again"),
        }
    }
    store.put_blob_bytes(bytes).await?;
    Ok(len)
}

/// What a native backup starts while the tree is walked: the previous backup read, and the
/// config's upload opened (see [`push_config`]).
pub(crate) struct Begun {
    /// The moving tag the previous backup was read at.
    tag: String,
    previous: Result<Option<Previous>, ReadError>,
    config_upload: Result<BlobWriter, TransportError>,
}

/// Starts what needs no tree, so its round trips overlap the walk.
pub(crate) async fn begin(options: &BackupOptions, store: &Store, tag: &str) -> Begun {
    let config_upload = store.blob_writer().await;
    let previous = if options.full {
        Ok(None)
    } else {
        previous::load(store, tag).await
    };
    Begun {
        tag: tag.to_owned(),
        previous,
        config_upload,
    }
}

/// Stores every new layer (with its index) and the config; returns the manifest to publish.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn backup(
    options: &BackupOptions,
    store: &Store,
    begun: Begun,
    mut tree: Tree,
    totals: Totals,
    created: &str,
    annotations: Annotations,
    progress: &Arc<Progress>,
) -> Result<Prepared, BackupError> {
    // Reported only now: with wrong credentials, the credential check's error is the one that
    // counts, and it came first.
    let previous = begun.previous.unwrap_or_else(|e| {
        previous::unusable(&begun.tag, &e);
        None
    });
    let total_weight: u64 = tree.metas().map(weight).sum();
    let target = LayerCutter::choose_target(
        total_weight,
        previous.as_ref().map(|p| p.config.layer_target),
    );
    let ranges = plan_layers(&tree, target);
    let workers = options.workers.max(1) as usize;
    let fingerprints = fingerprints(&tree, &ranges, workers);
    let skipped = std::mem::take(&mut tree.skipped);
    // Moved, not copied: the entry list is the largest thing a backup holds.
    let tree = Arc::new(tree);

    // Layers of a version 1 or 2 backup have their index in a blob of their own: a version 3
    // backup cannot list them, so the first backup after the upgrade is a full one.
    let reusable: HashMap<&Digest, usize> = previous
        .as_ref()
        .filter(|p| p.config.major() >= native::INDEX_IN_LAYER_MAJOR)
        .map(|p| {
            p.config
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| (&l.fingerprint, i))
                .collect()
        })
        .unwrap_or_default();

    // Reused layers cost nothing; new ones are archived and compressed (one thread each)
    // `workers` at a time, which uses the cores; more are in flight, so the registry's round
    // trips at the start and end of each upload overlap other layers' compression. Layers
    // finish in any order and are put back in order.
    let compressing = &Arc::new(tokio::sync::Semaphore::new(workers));
    let in_flight = layers_in_flight(workers, target);
    let jobs = ranges
        .iter()
        .zip(fingerprints)
        .enumerate()
        .map(|(i, (range, fp))| {
            let reuse = previous
                .as_ref()
                .and_then(|prev| reusable_layer(prev, reusable.get(&fp).copied()?, range.len()));
            let (tree, range) = (tree.clone(), range.clone());
            async move {
                let result = match reuse {
                    Some(stored) => {
                        let bytes = range.clone().map(|i| tree.meta(i).size).sum();
                        progress
                            .entries
                            .fetch_add(range.len() as u64, Ordering::Relaxed);
                        progress.bytes.fetch_add(bytes, Ordering::Relaxed);
                        Ok(stored)
                    }
                    None => {
                        let layer = (range, i as u32, fp);
                        new_layer(options, store, compressing, &tree, layer, progress).await
                    }
                };
                (i, result)
            }
        });
    let mut layers = futures_util::stream::iter(jobs).buffer_unordered(in_flight);
    let mut stored: Vec<Option<StoredLayer>> = ranges.iter().map(|_| None).collect();
    while let Some((i, result)) = layers.next().await {
        stored[i] = Some(result?);
    }
    drop(layers);
    let mut descriptors = Vec::with_capacity(ranges.len());
    let mut layer_infos = Vec::with_capacity(ranges.len());
    let mut reused = 0;
    for layer in stored.into_iter().map(|s| s.expect("every layer stored")) {
        descriptors.push(layer.layer);
        layer_infos.push(layer.info);
        reused += usize::from(layer.reused);
    }

    let skipped = skipped
        .iter()
        .map(|(p, r)| SkippedEntry {
            path: RawPath(p.clone()),
            reason: r.clone(),
        })
        .collect();
    let config = backup_config(options, created, totals, target, layer_infos, skipped);
    let config_bytes = Bytes::from(config.to_bytes());
    let config_desc = Descriptor::new(
        media::NATIVE_CONFIG_V3,
        Digest::of(&config_bytes),
        config_bytes.len() as u64,
    );
    let small_uploaded = push_config(store, begun.config_upload, config_bytes).await?;
    let stored_bytes = descriptors.iter().map(|d| d.size).sum();
    let layers = descriptors.len();
    Ok(Prepared {
        manifest: artifact::native_manifest(
            config.major(),
            config_desc,
            descriptors,
            Vec::new(),
            annotations,
        ),
        layers,
        reused,
        stored_bytes,
        small_uploaded,
    })
}

/// The previous backup's layer `j`, when it holds as many entries as the new layer. The blobs
/// of the manifest the moving tag points at are kept by the registry, so reuse needs no request.
fn reusable_layer(previous: &Previous, j: usize, entries: usize) -> Option<StoredLayer> {
    let info = &previous.config.layers[j];
    (info.entries == entries as u64).then(|| StoredLayer {
        layer: previous.layers[j].clone(),
        info: info.clone(),
        reused: true,
    })
}

/// Archives and uploads one new layer, its file index at the end of its blob.
async fn new_layer(
    options: &BackupOptions,
    store: &Store,
    compressing: &Arc<tokio::sync::Semaphore>,
    tree: &Arc<Tree>,
    (range, position, fingerprint): (Range<usize>, u32, Digest),
    progress: &Arc<Progress>,
) -> Result<StoredLayer, BackupError> {
    let codec = Codec::Zstd {
        level: options.level,
    };
    let count = range.len() as u64;
    let Uploaded {
        archived,
        compressed,
        compressed_size,
        index_at,
    } = upload_layer(
        store,
        compressing,
        &options.source,
        tree,
        range,
        position,
        codec,
        progress,
    )
    .await?;
    let index = archived.index.expect("native layers have an index");
    let layer = Descriptor::new(media::LAYER_TAR_ZSTD, compressed.clone(), compressed_size);
    let info = LayerInfo {
        digest: compressed,
        diff_id: archived.diff_id,
        tar_size: archived.tar_size,
        entries: count,
        index: Digest::of(&index),
        index_at,
        fingerprint,
    };
    Ok(StoredLayer {
        layer,
        info,
        reused: false,
    })
}

/// The config recording what was backed up (FORMAT.md's native config).
fn backup_config(
    options: &BackupOptions,
    created: &str,
    totals: Totals,
    layer_target: u64,
    layers: Vec<LayerInfo>,
    skipped: Vec<SkippedEntry>,
) -> BackupConfig {
    BackupConfig {
        format_version: native::FORMAT_VERSION.into(),
        created: created.into(),
        tool: concat!("wsr-backup ", env!("CARGO_PKG_VERSION")).into(),
        workspace: WorkspaceInfo {
            name: options.workspace.clone(),
            namespace: options.namespace.clone(),
            id: options.workspace_id.clone(),
        },
        source_path: options.source.display().to_string(),
        totals,
        layer_target,
        layers,
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::layers_in_flight;

    #[test]
    fn small_layers_keep_more_uploads_in_flight_than_the_workers_alone() {
        const MIB: u64 = 1 << 20;
        // Small layers: enough of them to make 32 MiB, whatever the cores.
        assert_eq!(layers_in_flight(1, 4 * MIB), 8);
        assert_eq!(layers_in_flight(2, 4 * MIB), 8);
        assert_eq!(layers_in_flight(4, 4 * MIB), 8);
        assert_eq!(layers_in_flight(2, MIB), 32);
        // Large layers: twice the workers, as their bytes decide the time.
        assert_eq!(layers_in_flight(2, 8 * MIB), 4);
        assert_eq!(layers_in_flight(4, 64 * MIB), 8);
        assert_eq!(layers_in_flight(1, 64 * MIB), 2);
    }
}
