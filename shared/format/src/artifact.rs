//! The two artifact shapes: building their manifests, and recognising what a manifest holds.

use crate::manifest::{Annotations, Descriptor, Manifest};
use crate::media::{self, annotation};

/// What a manifest is, as far as restore is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Artifact {
    /// wsr's own format: config, data layers (in order), and in versions 1 and 2 one
    /// file-index blob per data layer (same order); from version 3 on each data layer's blob
    /// ends with its index, and `indexes` is empty.
    Native {
        /// The native config blob.
        config: Descriptor,
        /// The data layers, in order.
        layers: Vec<Descriptor>,
        /// Versions 1 and 2: one file-index blob per data layer, in the same order.
        indexes: Vec<Descriptor>,
    },
    /// One tar layer (gzip, zstd or plain): upstream DWO backups and compatible artifacts.
    /// `dwo` is set when the manifest carries upstream's artifact type.
    Tarball {
        /// The one data layer.
        layer: Descriptor,
        /// Whether the manifest carries upstream DWO's artifact type.
        dwo: bool,
    },
}

/// Why a manifest is not a backup we can read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArtifactError {
    #[error(
        "artifact has type {0:?}, a newer wsr format than this wsr reads (application/vnd.wsr.backup.v1 to v3); upgrade wsr"
    )]
    /// The manifest's artifact type is a later wsr major version.
    UnsupportedVersion(String),
    #[error("not a workspace backup: {0}")]
    /// The manifest is neither a native backup nor a single-tarball artifact; the text says why.
    Unrecognised(String),
}

const TAR_LAYER_TYPES: [&str; 3] = [
    media::LAYER_TAR,
    media::LAYER_TAR_GZIP,
    media::LAYER_TAR_ZSTD,
];
const TAR_TITLE_SUFFIXES: [&str; 5] = [".tar.gz", ".tgz", ".tar.zst", ".tar", ".tar.zstd"];

/// Classifies a manifest.
pub fn classify(manifest: &Manifest) -> Result<Artifact, ArtifactError> {
    let artifact_type = manifest
        .artifact_type
        .as_deref()
        .unwrap_or(&manifest.config.media_type);
    if artifact_type == media::NATIVE_ARTIFACT_TYPE_V3
        || manifest.config.media_type == media::NATIVE_CONFIG_V3
    {
        let well_formed = manifest.config.media_type == media::NATIVE_CONFIG_V3
            && !manifest.layers.is_empty()
            && manifest
                .layers
                .iter()
                .all(|l| l.media_type == media::LAYER_TAR_ZSTD);
        if !well_formed {
            return Err(ArtifactError::Unrecognised(format!(
                "native artifact version 3 must have a {} config and only tar+zstd data layers",
                media::NATIVE_CONFIG_V3
            )));
        }
        return Ok(Artifact::Native {
            config: manifest.config.clone(),
            layers: manifest.layers.clone(),
            indexes: Vec::new(),
        });
    }
    if artifact_type == media::NATIVE_ARTIFACT_TYPE
        || artifact_type == media::NATIVE_ARTIFACT_TYPE_V2
        || manifest.config.media_type == media::NATIVE_CONFIG
    {
        let n = manifest.layers.len() / 2;
        let (layers, indexes) = manifest.layers.split_at(n);
        let well_formed = manifest.layers.len().is_multiple_of(2)
            && layers.iter().all(|l| l.media_type == media::LAYER_TAR_ZSTD)
            && indexes.iter().all(|l| l.media_type == media::NATIVE_INDEX);
        if !well_formed {
            return Err(ArtifactError::Unrecognised(
                "native artifact must list N tar+zstd data layers followed by their N file-index blobs".into(),
            ));
        }
        return Ok(Artifact::Native {
            config: manifest.config.clone(),
            layers: layers.to_vec(),
            indexes: indexes.to_vec(),
        });
    }
    if artifact_type.starts_with("application/vnd.wsr.backup.v") {
        return Err(ArtifactError::UnsupportedVersion(artifact_type.to_owned()));
    }
    match manifest.layers.as_slice() {
        [layer]
            if TAR_LAYER_TYPES.contains(&layer.media_type.as_str())
                || layer
                    .annotation(annotation::TITLE)
                    .is_some_and(|t| TAR_TITLE_SUFFIXES.iter().any(|s| t.ends_with(s))) =>
        {
            Ok(Artifact::Tarball {
                layer: layer.clone(),
                dwo: artifact_type == media::DWO_ARTIFACT_TYPE,
            })
        }
        layers => Err(ArtifactError::Unrecognised(format!(
            "expected one tar layer or a wsr native artifact, found {} layer(s) of type(s) {:?} (artifactType {:?})",
            layers.len(),
            layers
                .iter()
                .map(|l| l.media_type.as_str())
                .collect::<Vec<_>>(),
            artifact_type
        ))),
    }
}

/// Manifest annotations shared by both formats.
pub fn workspace_annotations(
    name: Option<&str>,
    namespace: Option<&str>,
    id: Option<&str>,
    created: &str,
) -> Annotations {
    let mut a = Annotations::new();
    a.insert(annotation::CREATED.into(), created.into());
    if let Some(n) = name {
        a.insert(annotation::DW_NAME.into(), n.into());
    }
    if let Some(n) = namespace {
        a.insert(annotation::DW_NAMESPACE.into(), n.into());
    }
    if let Some(i) = id {
        a.insert(annotation::DW_ID.into(), i.into());
    }
    a
}

/// The `dwo` manifest: as `oras push --artifact-type … devworkspace-backup.tar.gz` writes it.
pub fn dwo_manifest(layer: Descriptor, annotations: Annotations) -> Manifest {
    let mut layer = layer;
    layer.media_type = media::LAYER_TAR.into();
    layer.annotations = Some(
        [(
            annotation::TITLE.to_owned(),
            media::DWO_LAYER_TITLE.to_owned(),
        )]
        .into(),
    );
    Manifest {
        schema_version: 2,
        media_type: Some(media::MANIFEST_V1.into()),
        artifact_type: Some(media::DWO_ARTIFACT_TYPE.into()),
        config: Descriptor::empty_config(),
        layers: vec![layer],
        annotations: Some(annotations),
    }
}

/// The native manifest: data layers in order, then (versions 1 and 2) their file indexes in
/// the same order. `major` is the config's format major, which the `artifactType` repeats;
/// from version 3 on `indexes` is empty (each layer's blob ends with its index).
pub fn native_manifest(
    major: u32,
    config: Descriptor,
    layers: Vec<Descriptor>,
    indexes: Vec<Descriptor>,
    annotations: Annotations,
) -> Manifest {
    let mut all = layers;
    all.extend(indexes);
    Manifest {
        schema_version: 2,
        media_type: Some(media::MANIFEST_V1.into()),
        artifact_type: Some(
            match major {
                1 => media::NATIVE_ARTIFACT_TYPE,
                2 => media::NATIVE_ARTIFACT_TYPE_V2,
                _ => media::NATIVE_ARTIFACT_TYPE_V3,
            }
            .into(),
        ),
        config,
        layers: all,
        annotations: Some(annotations),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn desc(media_type: &str, data: &[u8]) -> Descriptor {
        Descriptor::new(media_type, Digest::of(data), data.len() as u64)
    }

    #[test]
    fn native_and_dwo_manifests_classify_as_built() {
        let config = desc(media::NATIVE_CONFIG, b"{}");
        let layers = vec![
            desc(media::LAYER_TAR_ZSTD, b"a"),
            desc(media::LAYER_TAR_ZSTD, b"b"),
        ];
        let indexes = vec![
            desc(media::NATIVE_INDEX, b"i"),
            desc(media::NATIVE_INDEX, b"j"),
        ];
        let m = native_manifest(
            1,
            config.clone(),
            layers.clone(),
            indexes.clone(),
            workspace_annotations(Some("w"), Some("n"), None, "t"),
        );
        let decoded = Manifest::from_bytes(&m.to_bytes()).unwrap();
        assert_eq!(
            classify(&decoded),
            Ok(Artifact::Native {
                config: config.clone(),
                layers: layers.clone(),
                indexes: indexes.clone()
            })
        );
        // Version 2 differs only in its artifactType (and config version).
        let v2 = native_manifest(
            2,
            config.clone(),
            layers.clone(),
            indexes.clone(),
            Annotations::new(),
        );
        assert_eq!(
            v2.artifact_type.as_deref(),
            Some(media::NATIVE_ARTIFACT_TYPE_V2)
        );
        assert!(matches!(classify(&v2), Ok(Artifact::Native { .. })));
        let mut odd = m.clone();
        odd.layers.pop();
        assert!(classify(&odd).is_err());

        let d = dwo_manifest(
            desc("ignored", b"tgz"),
            workspace_annotations(Some("w"), Some("n"), None, "t"),
        );
        let json: serde_json::Value = serde_json::from_slice(&d.to_bytes()).unwrap();
        assert_eq!(json["artifactType"], media::DWO_ARTIFACT_TYPE);
        assert_eq!(json["config"]["mediaType"], media::EMPTY_CONFIG);
        assert_eq!(json["config"]["digest"], media::EMPTY_CONFIG_DIGEST);
        assert_eq!(json["layers"][0]["mediaType"], media::LAYER_TAR);
        assert_eq!(
            json["layers"][0]["annotations"][annotation::TITLE],
            "devworkspace-backup.tar.gz"
        );
        assert_eq!(json["annotations"]["devworkspace.name"], "w");
        assert!(matches!(
            classify(&d),
            Ok(Artifact::Tarball { dwo: true, .. })
        ));
    }

    #[test]
    fn version_3_lists_data_layers_only_and_earlier_readers_refuse_it_with_their_upgrade_message() {
        let config = desc(media::NATIVE_CONFIG_V3, b"{}");
        let layers = vec![
            desc(media::LAYER_TAR_ZSTD, b"a"),
            desc(media::LAYER_TAR_ZSTD, b"b"),
            desc(media::LAYER_TAR_ZSTD, b"c"),
        ];
        let m = native_manifest(
            3,
            config.clone(),
            layers.clone(),
            vec![],
            Annotations::new(),
        );
        assert_eq!(
            m.artifact_type.as_deref(),
            Some(media::NATIVE_ARTIFACT_TYPE_V3)
        );
        assert_eq!(
            classify(&Manifest::from_bytes(&m.to_bytes()).unwrap()),
            Ok(Artifact::Native {
                config,
                layers,
                indexes: vec![]
            })
        );
        // Readers of versions 1 and 2 take a manifest for a native artifact when its
        // artifactType is v1 or v2 or its config has their config media type, and refuse
        // any other `application/vnd.wsr.backup.v…` type as a newer format (their rule,
        // spelled out here): version 3 meets none of the first and the last.
        let old_reader_takes_it_as_native = |m: &Manifest| {
            let t = m.artifact_type.as_deref().unwrap_or_default();
            t == media::NATIVE_ARTIFACT_TYPE
                || t == media::NATIVE_ARTIFACT_TYPE_V2
                || m.config.media_type == media::NATIVE_CONFIG
        };
        assert!(!old_reader_takes_it_as_native(&m));
        assert!(
            m.artifact_type
                .unwrap()
                .starts_with("application/vnd.wsr.backup.v")
        );
        // An index layer, another layer type or the old config type is not version 3.
        let mut with_index = native_manifest(
            3,
            desc(media::NATIVE_CONFIG_V3, b"{}"),
            vec![desc(media::LAYER_TAR_ZSTD, b"a")],
            vec![desc(media::NATIVE_INDEX, b"i")],
            Annotations::new(),
        );
        assert!(classify(&with_index).is_err());
        with_index.layers.pop();
        assert!(classify(&with_index).is_ok());
        with_index.config.media_type = media::NATIVE_CONFIG.into();
        assert!(classify(&with_index).is_err());
        with_index.layers.clear();
        with_index.config.media_type = media::NATIVE_CONFIG_V3.into();
        assert!(classify(&with_index).is_err());
    }

    #[test]
    fn foreign_single_layer_tarballs_are_accepted_and_others_rejected() {
        let mut m = dwo_manifest(desc("x", b"t"), Annotations::new());
        m.artifact_type = None;
        m.config = desc(media::UNKNOWN_CONFIG, b"{}");
        m.layers[0].media_type = "application/octet-stream".into(); // title still ends in .tar.gz
        assert!(matches!(
            classify(&m),
            Ok(Artifact::Tarball { dwo: false, .. })
        ));
        m.layers[0].annotations = None;
        assert!(
            classify(&m)
                .unwrap_err()
                .to_string()
                .contains("application/octet-stream")
        );
        m.layers[0].media_type = media::LAYER_TAR_ZSTD.into();
        assert!(classify(&m).is_ok());
        m.layers.push(m.layers[0].clone());
        assert!(matches!(classify(&m), Err(ArtifactError::Unrecognised(_))));
        m.artifact_type = Some("application/vnd.wsr.backup.v4".into());
        assert!(matches!(
            classify(&m),
            Err(ArtifactError::UnsupportedVersion(_))
        ));
    }
}
