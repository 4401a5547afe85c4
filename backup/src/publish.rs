//! The backup flow: walk (while connecting and reading the previous backup), let the format's
//! writer store the layers (with their file indexes) and config (`incremental.rs` for native, `dwo.rs` for dwo),
//! then publish in the safe order: the manifest under its time-stamped tag, and the moving tag
//! last. Nothing is tagged until everything it references exists, so a failure at any point
//! leaves the previous moving tag intact. Retention (`--keep`) runs only after a successful
//! publish.

use crate::walk::walk;
use crate::{BackupError, BackupOptions, BackupReport, Format, Progress};
use crate::{dwo, incremental, plan, retention};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use wsr_format::artifact;
use wsr_format::digest::Digest;
use wsr_format::manifest::Manifest;
use wsr_format::media::{self, annotation};
use wsr_format::reference::{Repository, Target};
use wsr_transport::{Access, Store, TransportError};

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
    let walking = async {
        tokio::task::spawn_blocking(move || walk(&source, skip))
            .await
            .expect("walk task")
    };
    // A registry's round trips (connecting, reading the previous backup) overlap the walk. A
    // layout is opened (created) only after the walk succeeded, as nothing is to be written
    // for a source that cannot be read.
    let connecting = async {
        let begin = async |store: &Store| {
            Ok::<_, BackupError>(match options.format {
                Format::Native => Some(incremental::begin(options, store, moving_tag).await),
                Format::Dwo => None,
            })
        };
        let repository = &options.to.repository;
        Store::open_then(repository, &options.connect, Access::Push, begin).await
    };
    let (tree, (store, begun)) = match options.to.repository {
        Repository::Layout { .. } => (walking.await?, connecting.await?),
        Repository::Registry { .. } => tokio::try_join!(walking, connecting)?,
    };
    let totals = plan::totals(&tree);
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

    let created_text = created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut annotations = artifact::workspace_annotations(
        options.workspace.as_deref(),
        options.namespace.as_deref(),
        options.workspace_id.as_deref(),
        &created_text,
    );
    let mut uploaded = 0u64;
    let prepared = match options.format {
        Format::Native => {
            annotations.insert(annotation::WSR_BYTES.into(), totals.bytes.to_string());
            annotations.insert(annotation::WSR_FILES.into(), totals.entries().to_string());
            incremental::backup(
                options,
                &store,
                begun.expect("begun for the native format"),
                tree,
                totals,
                &created_text,
                annotations,
                &progress,
            )
            .await?
        }
        Format::Dwo => dwo::backup(options, &store, tree, annotations, &progress).await?,
    };
    let uploaded_layer_bytes = progress.uploaded.load(Ordering::Relaxed);
    uploaded += uploaded_layer_bytes;

    let manifest_bytes = prepared.manifest.to_bytes();
    let (digest, stamp) = publish(&store, &manifest_bytes, created, moving_tag).await?;
    uploaded += manifest_bytes.len() as u64;
    let pruned = match options.keep {
        // The backup is published and `latest` moved: a registry that refuses deletes must
        // not turn that into a failed backup.
        Some(keep) => match retention::prune(&store, keep, &digest).await {
            Ok(pruned) => pruned,
            Err(error) => {
                tracing::warn!(%error, "backup published; deleting older backups failed");
                Vec::new()
            }
        },
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
        stored_bytes: prepared.stored_bytes,
        uploaded_bytes: uploaded + prepared.small_uploaded,
        uploaded_layer_bytes,
        layers: prepared.layers,
        reused_layers: prepared.reused,
        skipped,
        pruned,
        duration_s: started.elapsed().as_secs_f64(),
    })
}

/// Publishes in the safe order: the manifest under its immutable time-stamped tag, then the
/// moving tag. Returns the manifest's digest and the time-stamped tag.
///
/// The time-stamped tag names this backup alone, so storing the manifest under it is as safe
/// as storing it by digest first, one round trip less, and no manifest is ever left without a
/// tag (registries' garbage collectors may delete those; OpenShift's integrated registry
/// refuses them). The digest the registry says it stored must be this manifest's; a registry
/// that says none is asked, by reading the tag back, before the moving tag is written.
async fn publish(
    store: &Store,
    manifest_bytes: &[u8],
    created: chrono::DateTime<chrono::Utc>,
    moving_tag: &str,
) -> Result<(Digest, String), BackupError> {
    let stamp = media::timestamp_tag(created);
    let expected = Digest::of(manifest_bytes);
    let reported = store
        .tag_manifest(manifest_bytes, media::MANIFEST_V1, &stamp)
        .await?;
    let stored = match reported {
        Some(digest) => digest,
        None => store.fetch_manifest(&Target::Tag(stamp.clone())).await?.0,
    };
    if stored != expected {
        return Err(TransportError::DigestMismatch {
            what: format!("the manifest the registry stored under {stamp}"),
            expected,
            actual: stored,
        }
        .into());
    }
    store
        .tag_manifest(manifest_bytes, media::MANIFEST_V1, moving_tag)
        .await?;
    tracing::info!(digest = %expected, tags = %format!("{stamp}, {moving_tag}"), "published");
    Ok((expected, stamp))
}

/// What a format's writer stored: the manifest to publish and what it cost.
pub(crate) struct Prepared {
    pub(crate) manifest: Manifest,
    pub(crate) layers: usize,
    pub(crate) reused: usize,
    pub(crate) stored_bytes: u64,
    /// Config bytes sent (a layer's file index is part of its blob).
    pub(crate) small_uploaded: u64,
}
