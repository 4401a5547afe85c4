//! The backup flow: walk, plan layers (reusing unchanged ones), stream new layers to the store,
//! then publish in the safe order: blobs, index and config, manifest by digest, the time-stamped
//! tag, and the moving tag last. Nothing is tagged until everything it references exists, so a
//! failure at any point leaves the previous moving tag intact.

use crate::archive::{Archived, Codec, archive};
use crate::walk::{SourceEntry, Tree, walk};
use crate::{BackupError, BackupOptions, BackupReport, Format, Progress};
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::Digest as _;
use std::collections::HashMap;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use wsr_format::artifact::{self, Artifact};
use wsr_format::codec::EntryKind;
use wsr_format::digest::Digest;
use wsr_format::manifest::{Descriptor, Manifest};
use wsr_format::media::{self, annotation};
use wsr_format::native::{
    self, BackupConfig, LayerCutter, LayerInfo, RawPath, SkippedEntry, Totals, WorkspaceInfo,
};
use wsr_format::reference::Target;
use wsr_transport::read::{self, ReadError};
use wsr_transport::{Access, Store};

/// Attempts per layer upload when the registry fails transiently.
const UPLOAD_ATTEMPTS: u32 = 3;

/// Runs one backup.
pub async fn run(
    options: &BackupOptions,
    progress: Arc<Progress>,
) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    let created = chrono::Utc::now();
    let Target::Tag(moving_tag) = &options.to.target else {
        return Err(BackupError::DigestDestination(options.to.clone()));
    };
    let source = options.source.clone();
    let skip = options.skip_unreadable;
    let tree = tokio::task::spawn_blocking(move || walk(&source, skip))
        .await
        .expect("walk task")?;
    let totals = totals(&tree.entries);
    progress
        .total_entries
        .store(totals.entries(), Ordering::Relaxed);
    progress.total_bytes.store(totals.bytes, Ordering::Relaxed);
    let mut skipped: Vec<String> = tree
        .skipped
        .iter()
        .map(|(p, r)| format!("{}: {r}", String::from_utf8_lossy(p)))
        .collect();
    skipped.sort();

    let store = Store::open(&options.to.repository, &options.connect, Access::Push).await?;
    let created_text = created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut annotations = artifact::workspace_annotations(
        options.workspace.as_deref(),
        options.namespace.as_deref(),
        options.workspace_id.as_deref(),
        &created_text,
    );
    let mut uploaded = 0u64;
    let plan = match options.format {
        Format::Native => {
            annotations.insert(annotation::WSR_BYTES.into(), totals.bytes.to_string());
            annotations.insert(annotation::WSR_FILES.into(), totals.entries().to_string());
            native_backup(
                options,
                &store,
                tree,
                totals,
                &created_text,
                moving_tag,
                annotations,
                &progress,
            )
            .await?
        }
        Format::Dwo => dwo_backup(options, &store, tree.entries, annotations, &progress).await?,
    };
    let uploaded_layer_bytes = progress.uploaded.load(Ordering::Relaxed);
    uploaded += uploaded_layer_bytes;

    // Publish: manifest by digest, then the immutable tag, then the moving tag.
    let manifest_bytes = plan.manifest.to_bytes();
    let digest = store
        .push_manifest(&manifest_bytes, media::MANIFEST_V1)
        .await?;
    uploaded += manifest_bytes.len() as u64;
    let stamp = media::timestamp_tag(created);
    store
        .tag_manifest(&manifest_bytes, media::MANIFEST_V1, &stamp)
        .await?;
    store
        .tag_manifest(&manifest_bytes, media::MANIFEST_V1, moving_tag)
        .await?;
    tracing::info!(%digest, tags = %format!("{stamp}, {moving_tag}"), "published");

    let pruned = match options.keep {
        Some(keep) => prune(&store, keep, &digest).await?,
        None => Vec::new(),
    };
    Ok(BackupReport {
        reference: format!("{}@{digest}", store.repository()),
        digest: digest.to_string(),
        format: options.format,
        tags: vec![stamp, moving_tag.clone()],
        files: totals.files,
        dirs: totals.dirs,
        symlinks: totals.symlinks,
        hardlinks: totals.hardlinks,
        bytes: totals.bytes,
        stored_bytes: plan.stored_bytes,
        uploaded_bytes: uploaded + plan.small_uploaded,
        uploaded_layer_bytes,
        layers: plan.layers,
        reused_layers: plan.reused,
        skipped,
        pruned,
        duration_s: started.elapsed().as_secs_f64(),
    })
}

struct Plan {
    manifest: Manifest,
    layers: usize,
    reused: usize,
    stored_bytes: u64,
    /// Config and index bytes sent.
    small_uploaded: u64,
}

fn totals(entries: &[SourceEntry]) -> Totals {
    let mut t = Totals::default();
    for e in entries {
        match e.kind {
            EntryKind::Dir => t.dirs += 1,
            EntryKind::File => {
                t.files += 1;
                t.bytes += e.size;
            }
            EntryKind::Symlink => t.symlinks += 1,
            EntryKind::Hardlink => t.hardlinks += 1,
        }
    }
    t
}

fn weight(e: &SourceEntry) -> u64 {
    native::tar_weight(if e.kind == EntryKind::File { e.size } else { 0 })
}

/// Splits the canonical entry list into layers with the [`LayerCutter`] rule.
fn plan_layers(entries: &[SourceEntry], target: u64) -> Vec<Range<usize>> {
    let mut cutter = LayerCutter::new(target);
    let mut ranges = Vec::new();
    let mut start = 0;
    for (i, e) in entries.iter().enumerate() {
        if cutter.push(&e.rel, weight(e)) {
            ranges.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < entries.len() || ranges.is_empty() {
        ranges.push(start..entries.len());
    }
    ranges
}

/// Digest over everything that determines a layer's bytes, plus the nanosecond mtime, read
/// from metadata only. Equal fingerprints mean the layer can be reused without reading files.
fn fingerprint(entries: &[SourceEntry]) -> Digest {
    let mut h = sha2::Sha256::new();
    h.update(b"wsr-fingerprint-1\n");
    for e in entries {
        h.update([e.kind as u8]);
        h.update(&e.rel);
        h.update([0]);
        h.update(e.mode.to_be_bytes());
        h.update(e.size.to_be_bytes());
        h.update(e.mtime.to_be_bytes());
        h.update(e.mtime_nsec.to_be_bytes());
        h.update(e.link.as_deref().unwrap_or_default());
        h.update([0]);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
        .parse()
        .expect("valid digest")
}

/// The previous native backup at the moving tag, if any and readable: its config and the
/// descriptors of its data and index layers.
struct Previous {
    config: BackupConfig,
    layers: Vec<Descriptor>,
    indexes: Vec<Descriptor>,
}

/// Reads the previous backup with the same code restore reads backups with. Any problem
/// (including a previous backup in another format) means a full backup, not a failure.
async fn load_previous(store: &Store, tag: &str) -> Option<Previous> {
    let result: Result<Option<Previous>, ReadError> = async {
        let read = match read::read_manifest(store, &Target::Tag(tag.to_owned())).await {
            Ok(read) => read,
            Err(ReadError::Transport(e)) if e.is_not_found() => return Ok(None),
            Err(ReadError::Shape(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Artifact::Native {
            config,
            layers,
            indexes,
        } = read.artifact
        else {
            return Ok(None);
        };
        let config = read::read_config(store, &read.digest, &config, &layers, &indexes).await?;
        Ok(Some(Previous {
            config,
            layers,
            indexes,
        }))
    }
    .await;
    match result {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(
                "previous backup at :{tag} is not usable for incremental reuse ({e}); doing a full backup"
            );
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn native_backup(
    options: &BackupOptions,
    store: &Store,
    tree: Tree,
    totals: Totals,
    created: &str,
    moving_tag: &str,
    annotations: wsr_format::manifest::Annotations,
    progress: &Arc<Progress>,
) -> Result<Plan, BackupError> {
    let previous = if options.full {
        None
    } else {
        load_previous(store, moving_tag).await
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
            .zip(reusable.get(&fp))
            .and_then(|(prev, &j)| {
                // The blobs of the manifest the moving tag points at are kept by the registry, so
                // reuse needs no request at all.
                (prev.config.layers[j].entries == range.len() as u64).then(|| {
                    (
                        prev.layers[j].clone(),
                        prev.indexes[j].clone(),
                        prev.config.layers[j].clone(),
                    )
                })
            });
        let entries = entries.clone();
        let range = range.clone();
        async move {
            if let Some((layer, index, info)) = reuse {
                progress
                    .entries
                    .fetch_add(range.len() as u64, Ordering::Relaxed);
                progress.bytes.fetch_add(
                    entries[range].iter().map(|e| e.size).sum(),
                    Ordering::Relaxed,
                );
                return Ok::<_, BackupError>((layer, index, info, 0, true));
            }
            let codec = Codec::Zstd {
                level: options.level,
            };
            let Uploaded {
                archived,
                compressed,
                compressed_size,
            } = upload_layer(
                store,
                &options.source,
                &entries,
                range.clone(),
                i as u32,
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
                entries: range.len() as u64,
                index: index.digest.clone(),
                fingerprint: fp,
            };
            Ok((layer, index, info, sent, false))
        }
    });
    let mut results = futures_util::stream::iter(jobs).buffered(options.workers.max(1) as usize);
    let mut descriptors = Vec::with_capacity(ranges.len());
    let mut index_descriptors = Vec::with_capacity(ranges.len());
    let mut layer_infos = Vec::with_capacity(ranges.len());
    let (mut reused, mut small_uploaded) = (0, 0);
    while let Some(result) = results.next().await {
        let (layer, index, info, sent, was_reused) = result?;
        descriptors.push(layer);
        index_descriptors.push(index);
        layer_infos.push(info);
        small_uploaded += sent;
        reused += usize::from(was_reused);
    }
    drop(results);

    let config = BackupConfig {
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
        layer_target: target,
        layers: layer_infos,
        skipped: skipped
            .iter()
            .map(|(p, r)| SkippedEntry {
                path: RawPath(p.clone()),
                reason: r.clone(),
            })
            .collect(),
    };
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
    Ok(Plan {
        manifest: artifact::native_manifest(
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

async fn dwo_backup(
    options: &BackupOptions,
    store: &Store,
    entries: Vec<SourceEntry>,
    annotations: wsr_format::manifest::Annotations,
    progress: &Arc<Progress>,
) -> Result<Plan, BackupError> {
    let root_meta = std::fs::metadata(&options.source).map_err(|source| BackupError::Source {
        path: options.source.clone(),
        source,
    })?;
    let codec = Codec::Gzip {
        level: options.level.clamp(1, 9) as u32,
        root_mode: root_meta.mode() & 0o7777,
        root_mtime: root_meta.mtime(),
    };
    let n = entries.len();
    let entries: Arc<[SourceEntry]> = entries.into();
    let uploaded = upload_layer(store, &options.source, &entries, 0..n, 0, codec, progress).await?;
    let layer = Descriptor::new(
        media::LAYER_TAR,
        uploaded.compressed,
        uploaded.compressed_size,
    );
    let small_uploaded = if store.push_blob_bytes(Bytes::from_static(b"{}")).await? {
        2
    } else {
        0
    };
    Ok(Plan {
        manifest: artifact::dwo_manifest(layer, annotations),
        layers: 1,
        reused: 0,
        stored_bytes: uploaded.compressed_size,
        small_uploaded,
    })
}

/// A layer as stored: what archiving produced, and the compressed blob's digest and size.
struct Uploaded {
    archived: Archived,
    compressed: Digest,
    compressed_size: u64,
}

/// Archives and uploads one layer, writing it again on transient registry failures.
async fn upload_layer(
    store: &Store,
    root: &std::path::Path,
    entries: &Arc<[SourceEntry]>,
    range: Range<usize>,
    layer: u32,
    codec: Codec,
    progress: &Arc<Progress>,
) -> Result<Uploaded, BackupError> {
    let mut delay = Duration::from_millis(500);
    // What this attempt added to the shared progress, taken back if it has to be retried.
    let attempt = Arc::new(Progress::default());
    for attempt_no in 1..=UPLOAD_ATTEMPTS {
        let mut blob = store.blob_writer().await?;
        let (root2, entries2, range2, progress2, attempt2): (PathBuf, _, _, _, _) = (
            root.to_owned(),
            entries.clone(),
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
            match archive(&root2, &entries2[range2], codec, &mut blob, &count) {
                Ok(archived) => blob
                    .finish()
                    .map(|stored| (archived, stored))
                    .map_err(BackupError::from),
                // A failed write is the upload's doing when the upload says so.
                Err(e) => Err(blob.abort().map_or(e, BackupError::from)),
            }
        });
        let error = match archiving.await.expect("archive task") {
            Ok((archived, (compressed, compressed_size))) => {
                progress
                    .uploaded
                    .fetch_add(compressed_size, Ordering::Relaxed);
                return Ok(Uploaded {
                    archived,
                    compressed,
                    compressed_size,
                });
            }
            Err(e) => e,
        };
        let transient = matches!(&error, BackupError::Transport(t) if t.is_transient());
        if !transient || attempt_no == UPLOAD_ATTEMPTS {
            return Err(error);
        }
        tracing::warn!(%error, attempt = attempt_no, "layer {layer} upload failed; retrying in {delay:?}");
        progress.entries.fetch_sub(
            attempt.entries.swap(0, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        progress
            .bytes
            .fetch_sub(attempt.bytes.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    unreachable!("the loop returns on its last attempt")
}

/// Deletes the manifests of time-stamped tags beyond the newest `keep`, never the one just
/// published (which the moving tag points at) nor one a kept tag shares.
async fn prune(store: &Store, keep: usize, current: &Digest) -> Result<Vec<String>, BackupError> {
    let mut stamps: Vec<String> = store
        .list_tags()
        .await?
        .into_iter()
        .filter(|t| media::is_timestamp_tag(t))
        .collect();
    stamps.sort_unstable_by(|a, b| b.cmp(a));
    let mut kept = vec![current.clone()];
    for tag in stamps.iter().take(keep) {
        kept.push(store.fetch_manifest(&Target::Tag(tag.clone())).await?.0);
    }
    let mut pruned = Vec::new();
    for tag in stamps.iter().skip(keep) {
        let digest = match store.fetch_manifest(&Target::Tag(tag.clone())).await {
            Ok((d, _)) => d,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        if kept.contains(&digest) {
            continue;
        }
        store.delete_manifest(&digest).await?;
        tracing::info!(%tag, %digest, "pruned");
        pruned.push(tag.clone());
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rel: &str, size: u64) -> SourceEntry {
        SourceEntry {
            rel: rel.as_bytes().to_vec(),
            kind: EntryKind::File,
            mode: 0o644,
            mtime: 1,
            mtime_nsec: 0,
            size,
            link: None,
        }
    }

    #[test]
    fn layers_cover_every_entry_once_in_order() {
        let entries: Vec<_> = (0..3000).map(|i| file(&format!("f{i:05}"), 5000)).collect();
        let ranges = plan_layers(&entries, native::MIN_LAYER_TARGET);
        assert!(ranges.len() > 3, "{}", ranges.len());
        assert_eq!(ranges.first().unwrap().start, 0);
        assert_eq!(ranges.last().unwrap().end, entries.len());
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(plan_layers(&[], native::MIN_LAYER_TARGET), vec![0..0]);
    }

    #[test]
    fn fingerprint_sees_metadata_changes_only() {
        let a = vec![file("a", 10), file("b", 20)];
        let mut b = a.clone();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b[1].mtime_nsec = 1;
        assert_ne!(fingerprint(&a), fingerprint(&b));
        let mut c = a.clone();
        c[0].mode = 0o755;
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }
}
