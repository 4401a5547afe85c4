//! Shared by the restore tests: publishing a compressed tarball as a single-layer `dwo`
//! artifact in an OCI layout, without the backup engine.

#[allow(dead_code)]
pub mod archive;

use std::path::Path;
use wsr_format::artifact;
use wsr_format::digest::Digest;
use wsr_format::manifest::Descriptor;
use wsr_format::media;
use wsr_format::reference::Repository;
use wsr_transport::{Access, ConnectOptions, Store};

/// Stores `blob` (a gzip or zstd tar stream) as the layer of a `dwo` artifact tagged `latest`
/// in the layout `layout`; returns the reference.
pub fn publish_blob(layout: &Path, blob: Vec<u8>) -> String {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let repo = Repository::Layout {
            dir: layout.to_owned(),
        };
        let store = Store::open(&repo, &ConnectOptions::default(), Access::Push)
            .await
            .unwrap();
        store.push_blob_bytes(blob.clone().into()).await.unwrap();
        store
            .push_blob_bytes(bytes::Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let layer = Descriptor::new(media::LAYER_TAR, Digest::of(&blob), blob.len() as u64);
        let manifest = artifact::dwo_manifest(layer, Default::default()).to_bytes();
        store
            .push_manifest(&manifest, media::MANIFEST_V1)
            .await
            .unwrap();
        store
            .tag_manifest(&manifest, media::MANIFEST_V1, "latest")
            .await
            .unwrap();
    });
    format!("oci:{}:latest", layout.display())
}
