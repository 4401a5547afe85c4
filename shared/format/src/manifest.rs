//! OCI image manifest, descriptor and index, as serialised on the wire.
//!
//! Our own serde types (rather than a client crate's) so that the bytes we write are fixed by
//! this file: fields in spec order, `BTreeMap` annotations, no optional field emitted empty.
//! Manifests are content-addressed, so deterministic encoding is what makes digests repeatable.

use crate::digest::Digest;
use crate::media;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Annotations, sorted by key so that their encoding is deterministic.
pub type Annotations = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
/// An OCI content descriptor: what a blob or manifest is, its digest and size.
pub struct Descriptor {
    /// The referenced content's media type.
    pub media_type: String,
    /// The content's digest.
    pub digest: Digest,
    /// The content's length in bytes.
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The artifact type of a referenced manifest (absent for blobs).
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Annotations; absent (never `{}`) when there are none.
    pub annotations: Option<Annotations>,
}

impl Descriptor {
    /// A descriptor with no artifact type and no annotations.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size,
            artifact_type: None,
            annotations: None,
        }
    }

    /// The descriptor of the OCI empty config `{}`.
    pub fn empty_config() -> Descriptor {
        Descriptor::new(media::EMPTY_CONFIG, Digest::of(b"{}"), 2)
    }

    /// The value of annotation `key`.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
/// An OCI image manifest (`application/vnd.oci.image.manifest.v1+json`).
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The manifest's own media type (wsr always writes it).
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// What the artifact is: wsr's native type, upstream's `dwo` type, or absent.
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers, in order.
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Annotations; absent (never `{}`) when there are none.
    pub annotations: Option<Annotations>,
}

impl Manifest {
    /// Deterministic JSON encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifest serialises")
    }

    /// Decodes a manifest (unknown fields are ignored).
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The value of annotation `key`.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// An OCI image index (the `index.json` of an image layout).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The index's own media type.
    pub media_type: Option<String>,
    #[serde(default)]
    /// The manifests it lists (in a layout, with their tags as annotations).
    pub manifests: Vec<Descriptor>,
}
