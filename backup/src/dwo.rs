//! The `dwo` format's writer: the whole tree as one tar.gz layer (upstream's layout, with the
//! source root's own mode and time), an empty `{}` config, and the manifest upstream tools read.

use crate::archive::Codec;
use crate::publish::Prepared;
use crate::upload::upload_layer;
use crate::walk::Tree;
use crate::{BackupError, BackupOptions, Progress};
use bytes::Bytes;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use wsr_format::artifact;
use wsr_format::manifest::{Annotations, Descriptor};
use wsr_format::media;
use wsr_transport::Store;

/// Stores the layer and the empty config; returns the manifest to publish.
pub(crate) async fn backup(
    options: &BackupOptions,
    store: &Store,
    tree: Tree,
    annotations: Annotations,
    progress: &Arc<Progress>,
) -> Result<Prepared, BackupError> {
    let root_meta = std::fs::metadata(&options.source).map_err(|source| BackupError::Source {
        path: options.source.clone(),
        source,
    })?;
    let codec = Codec::Gzip {
        level: options.level.clamp(1, 9) as u32,
        root_mode: root_meta.mode() & 0o7777,
        root_mtime: root_meta.mtime(),
    };
    let n = tree.len();
    let tree = Arc::new(tree);
    let compressing = Arc::new(tokio::sync::Semaphore::new(1));
    let layer = upload_layer(
        store,
        &compressing,
        &options.source,
        &tree,
        0..n,
        0,
        codec,
        progress,
    );
    // The config is the same in every dwo backup: stored (or found) beside the layer, its
    // round trips are not added to the backup's.
    let config = async {
        let sent = store.push_blob_bytes(Bytes::from_static(b"{}")).await?;
        Ok::<_, BackupError>(if sent { 2 } else { 0 })
    };
    let (uploaded, small_uploaded) = tokio::try_join!(layer, config)?;
    let layer = Descriptor::new(
        media::LAYER_TAR,
        uploaded.compressed,
        uploaded.compressed_size,
    );
    Ok(Prepared {
        manifest: artifact::dwo_manifest(layer, annotations),
        layers: 1,
        reused: 0,
        stored_bytes: uploaded.compressed_size,
        small_uploaded,
    })
}
