//! Opening an artifact: resolving the manifest, classifying it, and for native backups loading
//! the config and every file index within their documented limits, checked against each other
//! before anything is unpacked.

use crate::RestoreError;
use wsr_format::artifact::{self, Artifact};
use wsr_format::digest::Digest;
use wsr_format::manifest::{Descriptor, Manifest};
use wsr_format::native::{self, BackupConfig, IndexEntry};
use wsr_format::reference::Target;
use wsr_transport::Store;

/// A resolved artifact with its native documents loaded.
pub struct Opened {
    pub digest: Digest,
    pub manifest: Manifest,
    pub artifact: Artifact,
    pub config: Option<BackupConfig>,
    /// The file index of every layer, concatenated in layer order (native only).
    pub index: Option<Vec<IndexEntry>>,
    /// For each index entry, the position of its layer.
    pub layer_of: Vec<usize>,
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
}

/// Fetches the manifest at `target` and, for native artifacts, the config and file index.
pub async fn open_artifact(store: &Store, target: &Target) -> Result<Opened, RestoreError> {
    let (digest, bytes) = store.fetch_manifest(target).await?;
    let manifest = Manifest::from_bytes(&bytes).map_err(|e| {
        RestoreError::Corrupt(format!(
            "manifest {digest} is not a valid OCI manifest: {e}"
        ))
    })?;
    let artifact = artifact::classify(&manifest)?;
    let (config, index) = match &artifact {
        Artifact::Native {
            config,
            layers,
            indexes,
        } => {
            let (config, index) = load_native(store, &digest, config, layers, indexes).await?;
            (Some(config), Some(index))
        }
        Artifact::Tarball { .. } => (None, None),
    };
    let (index, layer_of) = index.unzip();
    Ok(Opened {
        digest,
        manifest,
        artifact,
        config,
        index,
        layer_of: layer_of.unwrap_or_default(),
    })
}

/// A native backup's config and file index (with each entry's layer position), each checked
/// against the manifest and the other.
async fn load_native(
    store: &Store,
    digest: &Digest,
    config: &Descriptor,
    layers: &[Descriptor],
    indexes: &[Descriptor],
) -> Result<(BackupConfig, (Vec<IndexEntry>, Vec<usize>)), RestoreError> {
    let config_bytes = fetch_document(store, config, native::MAX_CONFIG_BYTES).await?;
    let config = BackupConfig::from_bytes(&config_bytes)?;
    drop(config_bytes);
    let consistent = config.layers.len() == layers.len()
        && config
            .layers
            .iter()
            .zip(layers)
            .zip(indexes)
            .all(|((c, l), i)| c.digest == l.digest && c.index == i.digest);
    if !consistent {
        return Err(RestoreError::Corrupt(format!(
            "manifest {digest}: config and manifest list different layers"
        )));
    }
    check_declared_counts(digest, &config)?;
    // Counts come from the (digest-valid, but untrusted) config: they bound what is
    // read, they never size an allocation up front.
    let mut entries = Vec::new();
    let mut layer_of = Vec::new();
    let mut bytes_total = 0u64;
    let mut index_budget = native::MAX_INDEX_BYTES;
    for (position, (index, info)) in indexes.iter().zip(&config.layers).enumerate() {
        let bytes = fetch_document(store, index, native::MAX_INDEX_BLOB_BYTES).await?;
        let layer_entries = native::read_index(&bytes[..], info.entries, &mut index_budget)
            .map_err(|e| RestoreError::Corrupt(format!("file index {}: {e}", index.digest)))?;
        bytes_total = layer_entries
            .iter()
            .try_fold(bytes_total, |t, e| t.checked_add(e.size))
            .ok_or_else(|| {
                RestoreError::Corrupt(format!(
                    "file index {}: sizes add up beyond 2^64",
                    index.digest
                ))
            })?;
        layer_of.extend(std::iter::repeat_n(position, layer_entries.len()));
        entries.extend(layer_entries);
    }
    if bytes_total != config.totals.bytes {
        return Err(RestoreError::Corrupt(format!(
            "manifest {digest}: the file index holds {bytes_total} bytes of files, the config says {}",
            config.totals.bytes
        )));
    }
    Ok((config, (entries, layer_of)))
}

/// Fetches a config or index blob: its descriptor size must be within `limit`, and the blob
/// must have exactly that size and digest (FORMAT.md §6.5).
async fn fetch_document(
    store: &Store,
    descriptor: &Descriptor,
    limit: u64,
) -> Result<Vec<u8>, RestoreError> {
    if descriptor.size > limit {
        return Err(RestoreError::Corrupt(format!(
            "{} blob {} declares {} bytes; at most {limit} are accepted",
            descriptor.media_type, descriptor.digest, descriptor.size
        )));
    }
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
