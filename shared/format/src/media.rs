//! Names on the wire: media types, artifact types, annotation keys and tag rules.
//!
//! Everything a second implementation must spell exactly lives here, so FORMAT.md and the code
//! can be checked against one list.

/// OCI image manifest (image-spec v1.1); both formats use it.
pub const MANIFEST_V1: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index; only used for the `index.json` of an OCI image layout.
pub const INDEX_V1: &str = "application/vnd.oci.image.index.v1+json";

/// `artifactType` of upstream DWO backups (`oras push --artifact-type …`).
pub const DWO_ARTIFACT_TYPE: &str = "application/vnd.devworkspace.backup.artifact.v1+json";
/// The layer title upstream's restore script depends on (`oras pull` writes a file of that name).
pub const DWO_LAYER_TITLE: &str = "devworkspace-backup.tar.gz";

/// `artifactType` of wsr's native format; the major version is part of the name. Version 1:
/// no sparse entries.
pub const NATIVE_ARTIFACT_TYPE: &str = "application/vnd.wsr.backup.v1";
/// `artifactType` of native format version 2: data layers may hold sparse entries.
pub const NATIVE_ARTIFACT_TYPE_V2: &str = "application/vnd.wsr.backup.v2";
/// `artifactType` of native format version 3: each data layer's blob ends with its file index.
pub const NATIVE_ARTIFACT_TYPE_V3: &str = "application/vnd.wsr.backup.v3";
/// Media type of the native config blob, versions 1 and 2.
pub const NATIVE_CONFIG: &str = "application/vnd.wsr.backup.config.v1+json";
/// Media type of the native config blob from version 3 on. A new name, because readers of
/// versions 1 and 2 also recognise a native artifact by its config's media type; with this one
/// they reach their check of the artifact type and ask the user to upgrade.
pub const NATIVE_CONFIG_V3: &str = "application/vnd.wsr.backup.config.v3+json";
/// Media type of the native file-index blob (zstd-compressed JSON lines), versions 1 and 2.
pub const NATIVE_INDEX: &str = "application/vnd.wsr.backup.index.v1+jsonl+zstd";

/// The empty config descriptor of image-spec v1.1 (`{}`), used by `dwo` artifacts.
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
/// Digest of the two bytes `{}`.
pub const EMPTY_CONFIG_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
/// The config media type oras-py writes when it is not told otherwise.
pub const UNKNOWN_CONFIG: &str = "application/vnd.unknown.config.v1+json";

/// Top-level names starting with this in a restore target are the restore's staging
/// directories (FORMAT.md §8.2): never restored from an archive, never backed up.
pub const STAGING_PREFIX: &str = ".wsr-restore-";

/// Plain tar layer. Upstream labels its gzip tarball with this type (oras's default).
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// gzip-compressed tar layer.
pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// zstd-compressed tar layer; every data layer of the native format.
pub const LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Annotation keys.
pub mod annotation {
    /// File name of a layer (oras uses it as the output file name on pull).
    pub const TITLE: &str = "org.opencontainers.image.title";
    /// RFC 3339 creation time of the artifact.
    pub const CREATED: &str = "org.opencontainers.image.created";
    /// Tag of a manifest inside an OCI image layout's `index.json`.
    pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
    /// DevWorkspace name (upstream, both formats).
    pub const DW_NAME: &str = "devworkspace.name";
    /// DevWorkspace namespace (upstream, both formats).
    pub const DW_NAMESPACE: &str = "devworkspace.namespace";
    /// DevWorkspace id (wsr; upstream does not record it).
    pub const DW_ID: &str = "devworkspace.id";
    /// Total uncompressed bytes of regular files (wsr, native only; lets `list` show sizes
    /// without fetching the config).
    pub const WSR_BYTES: &str = "io.wsr.backup.bytes";
    /// Number of entries (wsr, native only).
    pub const WSR_FILES: &str = "io.wsr.backup.files";
}

/// The moving tag every backup updates last; the only tag upstream and the Che dashboard know.
pub const LATEST_TAG: &str = "latest";

/// Prefix of wsr's immutable, time-stamped tags: `wsr-YYYYMMDDTHHMMSSZ` (UTC). They sort
/// lexically in time order, which retention relies on.
pub const TIMESTAMP_TAG_PREFIX: &str = "wsr-";

/// The immutable tag for a backup created at `at`.
pub fn timestamp_tag(at: chrono::DateTime<chrono::Utc>) -> String {
    format!("{TIMESTAMP_TAG_PREFIX}{}", at.format("%Y%m%dT%H%M%S%.3fZ")).replace('.', "")
}

/// Whether `tag` is one of wsr's time-stamped tags (and so subject to `--keep`).
pub fn is_timestamp_tag(tag: &str) -> bool {
    tag.strip_prefix(TIMESTAMP_TAG_PREFIX).is_some_and(|rest| {
        rest.len() == 19
            && rest.as_bytes()[8] == b'T'
            && rest.ends_with('Z')
            && rest[..8].bytes().all(|b| b.is_ascii_digit())
            && rest[9..18].bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamp_tags_are_valid_tags_that_sort_in_time_order() {
        let a = timestamp_tag(chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap());
        let b = timestamp_tag(
            chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
                + chrono::Duration::milliseconds(7),
        );
        assert_eq!(a, "wsr-20260102T030405000Z");
        assert_eq!(b, "wsr-20260102T030405007Z");
        assert!(a < b);
        assert!(is_timestamp_tag(&a) && is_timestamp_tag(&b));
        for bad in [
            "latest",
            "wsr-",
            "wsr-2026",
            "wsr-20260102X030405000Z",
            "v1",
        ] {
            assert!(!is_timestamp_tag(bad), "{bad}");
        }
    }
}
