//! The `native` format's writer: layers planned by the layering rule, each either reused from
//! the previous backup (equal fingerprint and entry count: no file is read, no request made) or
//! archived and uploaded with its file index, `workers` at a time; then the config recording
//! what was backed up.

use crate::archive::Codec;
use crate::plan::{fingerprint, plan_layers, weight};
use crate::previous::{self, Previous};
use crate::publish::Prepared;
use crate::upload::{Uploaded, upload_layer};
use crate::walk::{SourceEntry, Tree};
use crate::{BackupError, BackupOptions, Progress};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::HashMap;
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
use wsr_transport::Store;

/// One layer of the new backup: its data and index descriptors, its config record, the index
/// bytes sent and whether it was reused.
struct StoredLayer {
    layer: Descriptor,
    index: Descriptor,
    info: LayerInfo,
    sent: u64,
    reused: bool,
}

/// Stores every new layer, its index and the config; returns the manifest to publish.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn backup(
    options: &BackupOptions,
    store: &Store,
    tree: Tree,
    totals: Totals,
    created: &str,
    moving_tag: &str,
    annotations: Annotations,
    progress: &Arc<Progress>,
) -> Result<Prepared, BackupError> {
    let previous = if options.full {
        None
    } else {
        previous::load(store, moving_tag).await
    };
    let total_weight: u64 = tree.entries.iter().map(weight).sum();
    let target = LayerCutter::choose_target(
        total_weight,
        previous.as_ref().map(|p| p.config.layer_target),
    );
    let ranges = plan_layers(&tree.entries, target);
    let skipped = tree.skipped;
    let entries: Arc<[SourceEntry]> = tree.entries.into();

    let reusable: HashMap<&Digest, usize> = previous
        .as_ref()
        .map(|p| {
            p.config
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| (&l.fingerprint, i))
                .collect()
        })
        .unwrap_or_default();

    // Reused layers cost nothing; new ones are archived, compressed (one thread each) and
    // uploaded `workers` at a time: that uses the cores and hides the registry's per-blob
    // latency. Results are reassembled in order.
    let jobs = ranges.iter().enumerate().map(|(i, range)| {
        let fp = fingerprint(&entries[range.clone()]);
        let reuse = previous
            .as_ref()
            .and_then(|prev| reusable_layer(prev, reusable.get(&fp).copied()?, range.len()));
        let (entries, range) = (entries.clone(), range.clone());
        async move {
            match reuse {
                Some(stored) => {
                    let bytes = entries[range.clone()].iter().map(|e| e.size).sum();
                    progress
                        .entries
                        .fetch_add(range.len() as u64, Ordering::Relaxed);
                    progress.bytes.fetch_add(bytes, Ordering::Relaxed);
                    Ok(stored)
                }
                None => new_layer(options, store, &entries, range, i as u32, fp, progress).await,
            }
        }
    });
    let mut results = futures_util::stream::iter(jobs).buffered(options.workers.max(1) as usize);
    let mut descriptors = Vec::with_capacity(ranges.len());
    let mut index_descriptors = Vec::with_capacity(ranges.len());
    let mut layer_infos = Vec::with_capacity(ranges.len());
    let (mut reused, mut small_uploaded) = (0, 0);
    while let Some(result) = results.next().await {
        let stored = result?;
        descriptors.push(stored.layer);
        index_descriptors.push(stored.index);
        layer_infos.push(stored.info);
        small_uploaded += stored.sent;
        reused += usize::from(stored.reused);
    }
    drop(results);

    let skipped = skipped
        .iter()
        .map(|(p, r)| SkippedEntry {
            path: RawPath(p.clone()),
            reason: r.clone(),
        })
        .collect();
    // FORMAT.md §4.1: version 2 only when a layer may hold a sparse entry, so readers that
    // know version 1 only keep reading everything else.
    let sparse = entries.iter().any(|e| e.sparse)
        || (reused > 0 && previous.as_ref().is_some_and(|p| p.config.major() >= 2));
    let mut config = backup_config(options, created, totals, target, layer_infos, skipped);
    if sparse {
        config.format_version = native::FORMAT_VERSION_SPARSE.into();
    }
    let config_bytes = Bytes::from(config.to_bytes());
    let config_desc = Descriptor::new(
        media::NATIVE_CONFIG,
        Digest::of(&config_bytes),
        config_bytes.len() as u64,
    );
    if store.push_blob_bytes(config_bytes.clone()).await? {
        small_uploaded += config_bytes.len() as u64;
    }
    let stored_bytes = descriptors.iter().map(|d| d.size).sum();
    let layers = descriptors.len();
    Ok(Prepared {
        manifest: artifact::native_manifest(
            config.major(),
            config_desc,
            descriptors,
            index_descriptors,
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
        index: previous.indexes[j].clone(),
        info: info.clone(),
        sent: 0,
        reused: true,
    })
}

/// Archives and uploads one new layer, then its file index.
async fn new_layer(
    options: &BackupOptions,
    store: &Store,
    entries: &Arc<[SourceEntry]>,
    range: Range<usize>,
    position: u32,
    fingerprint: Digest,
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
    } = upload_layer(
        store,
        &options.source,
        entries,
        range,
        position,
        codec,
        progress,
    )
    .await?;
    let index_bytes =
        Bytes::from(native::write_index(&archived.index).map_err(BackupError::Archive)?);
    let index = Descriptor::new(
        media::NATIVE_INDEX,
        Digest::of(&index_bytes),
        index_bytes.len() as u64,
    );
    let sent = if store.push_blob_bytes(index_bytes.clone()).await? {
        index_bytes.len() as u64
    } else {
        0
    };
    let layer = Descriptor::new(media::LAYER_TAR_ZSTD, compressed.clone(), compressed_size);
    let info = LayerInfo {
        digest: compressed,
        diff_id: archived.diff_id,
        tar_size: archived.tar_size,
        entries: count,
        index: index.digest.clone(),
        fingerprint,
    };
    Ok(StoredLayer {
        layer,
        index,
        info,
        sent,
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
