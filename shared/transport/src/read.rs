//! Reading a backup's documents from a store: the manifest at a tag or digest and its shape,
//! and for native backups the config, checked against the manifest.
//!
//! Restore reads a backup with this code, and backup reads the previous backup (for reuse)
//! with the same code, so both agree on what a readable backup is.

use crate::{Store, TransportError};
use wsr_format::artifact::{self, Artifact, ArtifactError};
use wsr_format::digest::Digest;
use wsr_format::manifest::{Descriptor, Manifest};
use wsr_format::native::{BackupConfig, ConfigError};
use wsr_format::reference::Target;

/// The most a config blob may hold.
const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// Why a backup's documents cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("manifest {digest} is not a valid OCI manifest: {source}")]
    Manifest {
        digest: Digest,
        source: serde_json::Error,
    },
    /// Not a backup this wsr reads (unknown shape or a newer format).
    #[error(transparent)]
    Shape(#[from] ArtifactError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("manifest {digest}: config and manifest list different layers")]
    Inconsistent { digest: Digest },
}

/// A manifest as read: its digest, the document and its shape.
pub struct ReadManifest {
    pub digest: Digest,
    pub manifest: Manifest,
    pub artifact: Artifact,
}

/// Fetches the manifest at `target` and classifies it.
pub async fn read_manifest(store: &Store, target: &Target) -> Result<ReadManifest, ReadError> {
    let (digest, bytes) = store.fetch_manifest(target).await?;
    let manifest = match Manifest::from_bytes(&bytes) {
        Ok(manifest) => manifest,
        Err(source) => return Err(ReadError::Manifest { digest, source }),
    };
    let artifact = artifact::classify(&manifest)?;
    Ok(ReadManifest {
        digest,
        manifest,
        artifact,
    })
}

/// Fetches a native backup's config and checks that it lists the manifest's layers and
/// indexes, in order.
pub async fn read_config(
    store: &Store,
    manifest_digest: &Digest,
    config: &Descriptor,
    layers: &[Descriptor],
    indexes: &[Descriptor],
) -> Result<BackupConfig, ReadError> {
    let bytes = store
        .fetch_blob_bytes(&config.digest, MAX_CONFIG_BYTES)
        .await?;
    let config = BackupConfig::from_bytes(&bytes)?;
    if !config.lists(layers, indexes) {
        return Err(ReadError::Inconsistent {
            digest: manifest_digest.clone(),
        });
    }
    Ok(config)
}

impl ReadError {
    /// The transport's error, when the store failed rather than the documents.
    pub fn transport(&self) -> Option<&TransportError> {
        match self {
            ReadError::Transport(t) => Some(t),
            _ => None,
        }
    }
}
