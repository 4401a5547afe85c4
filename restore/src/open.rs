//! Opening an artifact: resolving the manifest, classifying it, and for native backups loading
//! the config within its documented limits, checked against the manifest before anything is
//! unpacked; reading file indexes line by line within theirs.

use crate::RestoreError;
use std::sync::Arc;
use wsr_format::artifact::{self, Artifact};
use wsr_format::digest::Digest;
use wsr_format::manifest::{Descriptor, Manifest};
use wsr_format::native::{self, BackupConfig, IndexBudget, IndexEntry, IndexLocation, IndexReader};
use wsr_format::reference::Target;
use wsr_transport::{BlobReader, Store};

/// A resolved artifact with its native config loaded. File indexes are not held: they are
/// streamed, each layer's beside its data (`pipeline.rs`), or once through [`scan_indexes`].
pub struct Opened {
    pub digest: Digest,
    pub manifest: Manifest,
    pub artifact: Artifact,
    pub config: Option<BackupConfig>,
}

impl Opened {
    pub fn format_name(&self) -> &'static str {
        match &self.artifact {
            Artifact::Native { .. } => "native",
            Artifact::Tarball { dwo: true, .. } => "dwo",
            Artifact::Tarball { dwo: false, .. } => "tarball",
        }
    }

    pub(crate) fn data_layers(&self) -> Vec<&Descriptor> {
        match &self.artifact {
            Artifact::Native { layers, .. } => layers.iter().collect(),
            Artifact::Tarball { layer, .. } => vec![layer],
        }
    }

    /// For a native artifact: where data layer `position`'s file index is, and the number of
    /// lines its config declares.
    pub(crate) fn index_of(&self, position: usize) -> Option<(IndexLocation, u64)> {
        match (&self.artifact, &self.config) {
            (
                Artifact::Native {
                    layers, indexes, ..
                },
                Some(config),
            ) => Some((
                config.index_location(position, layers, indexes),
                config.layers[position].entries,
            )),
            _ => None,
        }
    }
}

/// Fetches the manifest at `target` and, for native artifacts, the config, checked against the
/// manifest and within the entry limit.
pub async fn open_artifact(store: &Store, target: &Target) -> Result<Opened, RestoreError> {
    let (digest, bytes) = store.fetch_manifest(target).await?;
    let manifest = Manifest::from_bytes(&bytes).map_err(|e| {
        RestoreError::Corrupt(format!(
            "manifest {digest} is not a valid OCI manifest: {e}"
        ))
    })?;
    let artifact = artifact::classify(&manifest)?;
    let config = match &artifact {
        Artifact::Native {
            config,
            layers,
            indexes,
        } => Some(load_config(store, &digest, config, layers, indexes).await?),
        Artifact::Tarball { .. } => None,
    };
    Ok(Opened {
        digest,
        manifest,
        artifact,
        config,
    })
}

/// A native backup's config, checked against the manifest and its own counts.
async fn load_config(
    store: &Store,
    digest: &Digest,
    config: &Descriptor,
    layers: &[Descriptor],
    indexes: &[Descriptor],
) -> Result<BackupConfig, RestoreError> {
    let config_bytes = fetch_document(store, config, native::MAX_CONFIG_BYTES).await?;
    let config = BackupConfig::from_bytes(&config_bytes)?;
    drop(config_bytes);
    if !config.lists(layers, indexes) {
        return Err(RestoreError::Corrupt(format!(
            "manifest {digest}: config and manifest list different layers"
        )));
    }
    check_declared_counts(digest, &config)?;
    Ok(config)
}

/// Opens the download of a file index (its own blob, or the end of its layer's) whose size is
/// within its limit.
pub(crate) async fn index_reader(
    store: &Store,
    index: &IndexLocation,
) -> Result<BlobReader, RestoreError> {
    check_declared_size(
        "file index",
        &index.digest,
        index.size,
        native::MAX_INDEX_BLOB_BYTES,
    )?;
    Ok(store
        .blob_part_reader(&index.blob, index.offset, &index.digest, index.size)
        .await?)
}

/// Runs `read` over an index blob's bytes, then checks the blob's size and digest. When
/// `read` fails, the rest of the blob (at most its descriptor size) is still read: a blob
/// that fails its digest check or its download is reported as such, not by what its
/// tampered lines happened to say.
pub(crate) fn read_index_blob<T>(
    mut blob: BlobReader,
    read: impl FnOnce(&mut BlobReader) -> Result<T, RestoreError>,
) -> Result<T, RestoreError> {
    match read(&mut blob) {
        Ok(value) => {
            blob.finish()?;
            Ok(value)
        }
        Err(e) => Err(blob.finish().err().map_or(e, RestoreError::from)),
    }
}

/// An index reader's error, naming the index.
pub(crate) fn index_error(digest: &Digest) -> impl Fn(std::io::Error) -> RestoreError + '_ {
    move |e| RestoreError::Corrupt(format!("file index {digest}: {e}"))
}

/// Adds one layer's index sizes to the sum over all layers, refusing a sum beyond 2^64.
pub(crate) fn add_index_bytes(
    total: u64,
    layer: u64,
    digest: &Digest,
) -> Result<u64, RestoreError> {
    total.checked_add(layer).ok_or_else(|| {
        RestoreError::Corrupt(format!("file index {digest}: sizes add up beyond 2^64"))
    })
}

/// The sum of the sizes in all file indexes must be the config's `totals.bytes`.
pub(crate) fn check_index_bytes(opened: &Opened, bytes_total: u64) -> Result<(), RestoreError> {
    match &opened.config {
        Some(config) if config.totals.bytes != bytes_total => Err(RestoreError::Corrupt(format!(
            "manifest {}: the file index holds {bytes_total} bytes of files, the config says {}",
            opened.digest, config.totals.bytes
        ))),
        _ => Ok(()),
    }
}

/// Reads every file index of a native artifact, layer after layer, one line at a time, with
/// the limits of FORMAT.md §8.1 (counts, line length, bytes in all, each blob's size and
/// digest, the sizes' sum against the config), calling `visit(state, layer, line)` for each
/// line. Nothing is held but what `visit` keeps in `state`. A tarball artifact has no index:
/// `state` comes back untouched.
pub(crate) async fn scan_indexes<S, F>(
    store: &Store,
    opened: &Opened,
    mut state: S,
    mut visit: F,
) -> Result<S, RestoreError>
where
    S: Send + 'static,
    F: FnMut(&mut S, usize, IndexEntry) -> Result<(), RestoreError> + Send + 'static,
{
    let budget = Arc::new(IndexBudget::default());
    let mut bytes_total = 0u64;
    for position in 0..opened.data_layers().len() {
        let Some((index, entries)) = opened.index_of(position) else {
            return Ok(state);
        };
        let blob = index_reader(store, &index).await?;
        let (digest, budget) = (index.digest, budget.clone());
        let (back, back_visit, bytes) = tokio::task::spawn_blocking(move || {
            let bytes = read_index_blob(blob, |blob| {
                let mut lines =
                    IndexReader::new(blob, entries, &budget).map_err(index_error(&digest))?;
                while let Some(line) = lines.next_entry().map_err(index_error(&digest))? {
                    visit(&mut state, position, line)?;
                }
                lines.finish().map_err(index_error(&digest))
            })
            .map(|bytes| (bytes, digest));
            (state, visit, bytes)
        })
        .await
        .expect("index task");
        (state, visit) = (back, back_visit);
        let (bytes, digest) = bytes?;
        bytes_total = add_index_bytes(bytes_total, bytes, &digest)?;
    }
    check_index_bytes(opened, bytes_total)?;
    Ok(state)
}

/// A document's declared size (a config's descriptor, a file index's) must be within `limit`,
/// checked before anything is downloaded.
fn check_declared_size(
    what: &str,
    digest: &Digest,
    size: u64,
    limit: u64,
) -> Result<(), RestoreError> {
    if size > limit {
        return Err(RestoreError::Corrupt(format!(
            "{what} {digest} declares {size} bytes; at most {limit} are accepted"
        )));
    }
    Ok(())
}

/// Fetches a config blob: its descriptor size must be within `limit`, and the blob must have
/// exactly that size and digest (FORMAT.md §6.5).
async fn fetch_document(
    store: &Store,
    descriptor: &Descriptor,
    limit: u64,
) -> Result<Vec<u8>, RestoreError> {
    let what = format!("{} blob", descriptor.media_type);
    check_declared_size(&what, &descriptor.digest, descriptor.size, limit)?;
    let bytes = store
        .fetch_blob_bytes(&descriptor.digest, descriptor.size)
        .await?;
    if bytes.len() as u64 != descriptor.size {
        return Err(RestoreError::Corrupt(format!(
            "{} blob {} is {} bytes, its descriptor says {}",
            descriptor.media_type,
            descriptor.digest,
            bytes.len(),
            descriptor.size
        )));
    }
    Ok(bytes)
}

/// The config's counts must agree with each other and stay within [`native::MAX_ENTRIES`]
/// before any index is read.
fn check_declared_counts(digest: &Digest, config: &BackupConfig) -> Result<(), RestoreError> {
    let per_layer = config
        .layers
        .iter()
        .try_fold(0u64, |t, l| t.checked_add(l.entries));
    let totals = config.totals.checked_entries();
    let corrupt = |what: String| Err(RestoreError::Corrupt(format!("manifest {digest}: {what}")));
    match (per_layer, totals) {
        (Some(layers), Some(totals)) if layers != totals => corrupt(format!(
            "the config's layers hold {layers} entries, its totals say {totals}"
        )),
        (Some(n), Some(_)) if n > native::MAX_ENTRIES => corrupt(format!(
            "the backup has {n} entries; at most {} are accepted",
            native::MAX_ENTRIES
        )),
        (Some(_), Some(_)) => Ok(()),
        _ => corrupt("the config's entry counts add up beyond 2^64".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal config with `entries` files in one layer.
    fn config_with(entries: u64) -> BackupConfig {
        let digest = format!("sha256:{}", "0".repeat(64));
        let json = serde_json::json!({
            "format_version": "1.0", "created": "2026-11-26T00:00:00Z", "tool": "test",
            "workspace": {}, "source_path": "/projects",
            "totals": {"files": entries, "dirs": 0, "symlinks": 0, "hardlinks": 0, "bytes": 0},
            "layer_target": 1048576,
            "layers": [{"digest": digest, "diff_id": digest, "tar_size": 1024,
                        "entries": entries, "index": digest, "fingerprint": digest}],
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_backup_of_up_to_max_entries_is_accepted_and_one_more_is_refused_before_any_index() {
        let digest = Digest::of(b"manifest");
        // A 10 GB workspace of the benchmark's profile: over the limit of earlier readers.
        assert!(check_declared_counts(&digest, &config_with(1_400_000)).is_ok());
        assert!(check_declared_counts(&digest, &config_with(native::MAX_ENTRIES)).is_ok());
        let refused = check_declared_counts(&digest, &config_with(native::MAX_ENTRIES + 1));
        let message = refused.unwrap_err().to_string();
        assert!(
            message.contains("at most 2097152 are accepted"),
            "{message}"
        );
    }
}
