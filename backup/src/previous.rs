//! The previous backup at the moving tag, read for incremental reuse with the same code restore
//! reads backups with (`wsr_transport::read`).

use wsr_format::artifact::Artifact;
use wsr_format::manifest::Descriptor;
use wsr_format::native::BackupConfig;
use wsr_format::reference::Target;
use wsr_transport::Store;
use wsr_transport::read::{self, ReadError};

/// The previous native backup at the moving tag, if any and readable: its config and the
/// descriptors of its data layers.
pub(crate) struct Previous {
    pub(crate) config: BackupConfig,
    pub(crate) layers: Vec<Descriptor>,
}

/// Reads the previous backup with the same code restore reads backups with: `None` when there
/// is none or it is in another format; an error for one that cannot be read, which the caller
/// reports with [`unusable`] and answers with a full backup.
pub(crate) async fn load(store: &Store, tag: &str) -> Result<Option<Previous>, ReadError> {
    async {
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
        Ok(Some(Previous { config, layers }))
    }
    .await
}

/// Any problem with the previous backup means a full backup, not a failure.
pub(crate) fn unusable(tag: &str, error: &ReadError) {
    tracing::warn!(
        "previous backup at :{tag} is not usable for incremental reuse ({error}); doing a full backup"
    );
}
