//! The OCI image layout transport (`oci:DIR`), as the image-layout spec defines it and skopeo's
//! `oci:` transport reads it: `oci-layout`, `index.json` (tags as `org.opencontainers.image.ref.name`
//! annotations) and `blobs/sha256/<hex>`.
//!
//! Blobs are written to a temporary file in `blobs/sha256/` and renamed once their digest is
//! known, so a blob file is never partial. `index.json` is replaced atomically (write + rename)
//! under an exclusive lock, so concurrent writers don't lose tags.
//!
//! Every temporary file is named `.wsr-tmp-*` and holds an exclusive `flock` for as long as its
//! writer lives. A writer killed part-way leaves its file behind, unlocked; opening the layout
//! for a push removes such files (a live writer's file stays locked and is left alone).

use crate::blob::{BlobReader, BlobWriter, LayoutUpload, Source};
use crate::{BlobStream, Result, TransportError};
use bytes::Bytes;
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use tokio::io::AsyncReadExt;
use wsr_format::digest::Digest;
use wsr_format::manifest::{Descriptor, Index};
use wsr_format::media;
use wsr_format::reference::{Repository, Target};

/// Prefix of the layout's temporary files.
const TEMP_PREFIX: &str = ".wsr-tmp-";

/// A temporary file in `dir`, locked until it is dropped or persisted and closed.
fn locked_temp(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)?;
    tmp.as_file().lock()?;
    Ok(tmp)
}

/// Removes the temporary files killed writers left in `dir` (those nobody holds locked).
fn remove_abandoned_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(TEMP_PREFIX.as_bytes())
        {
            continue;
        }
        let Ok(file) = open_regular(&entry.path()) else {
            continue;
        };
        if file.try_lock().is_ok() {
            tracing::info!(path = %entry.path().display(), "removing a killed writer's temporary file");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

pub struct LayoutStore {
    dir: PathBuf,
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TransportError {
    let what = what.into();
    move |source| TransportError::Io { what, source }
}

impl LayoutStore {
    /// Opens a layout; `create` makes it if missing (for pushes).
    pub(super) async fn open(dir: &Path, create: bool) -> Result<LayoutStore> {
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            if !create {
                return Err(TransportError::NotFound {
                    what: format!("OCI layout {} (no oci-layout file)", dir.display()),
                });
            }
            tokio::fs::create_dir_all(dir.join("blobs/sha256"))
                .await
                .map_err(io_error(format!("create {}", dir.display())))?;
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).await?;
            if !dir.join("index.json").exists() {
                let index = Index {
                    schema_version: 2,
                    media_type: Some(media::INDEX_V1.into()),
                    manifests: vec![],
                };
                write_atomic(
                    &dir.join("index.json"),
                    &serde_json::to_vec(&index).expect("index serialises"),
                )
                .await?;
            }
        }
        if create {
            let dir = dir.to_owned();
            tokio::task::spawn_blocking(move || {
                remove_abandoned_temps(&dir);
                remove_abandoned_temps(&dir.join("blobs/sha256"));
            })
            .await
            .expect("cleanup task");
        }
        Ok(LayoutStore {
            dir: dir.to_owned(),
        })
    }

    pub fn repository(&self) -> Repository {
        Repository::Layout {
            dir: self.dir.clone(),
        }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    pub async fn blob_exists(&self, digest: &Digest) -> Result<bool> {
        Ok(tokio::fs::try_exists(self.blob_path(digest))
            .await
            .unwrap_or(false))
    }

    pub async fn push_blob_bytes(&self, bytes: Bytes, digest: &Digest) -> Result<()> {
        write_atomic(&self.blob_path(digest), &bytes).await
    }

    /// Starts an upload into a temporary file beside the blobs.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let blobs = self.dir.join("blobs/sha256");
        let (file, path) = locked_temp(&blobs)
            .map_err(io_error("create upload file"))?
            .into_parts();
        Ok(BlobWriter::layout(LayoutUpload {
            file: std::io::BufWriter::with_capacity(256 * 1024, file),
            path,
            blobs,
            failure: None,
        }))
    }

    /// Opens blob file `blob` for reading from `offset` on, checked against `digest` and
    /// `size` (the blob's own, when `offset` is 0).
    pub fn blob_reader(
        &self,
        blob: &Digest,
        offset: u64,
        digest: &Digest,
        size: u64,
    ) -> Result<BlobReader> {
        use std::io::{Seek, SeekFrom};
        let mut file = open_regular(&self.blob_path(blob)).map_err(|e| self.open_error(blob, e))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|source| TransportError::Io {
                what: format!("read blob {blob}"),
                source,
            })?;
        Ok(BlobReader::new(Source::Layout(file), digest, size))
    }

    fn open_error(&self, digest: &Digest, e: std::io::Error) -> TransportError {
        match e.kind() {
            std::io::ErrorKind::NotFound => TransportError::NotFound {
                what: format!("blob {digest} in {}", self.dir.display()),
            },
            _ => TransportError::Io {
                what: format!("open {}", self.blob_path(digest).display()),
                source: e,
            },
        }
    }

    pub(crate) async fn fetch_blob(&self, digest: &Digest) -> Result<BlobStream> {
        let file = open_regular(&self.blob_path(digest)).map_err(|e| self.open_error(digest, e))?;
        let file = tokio::fs::File::from_std(file);
        Ok(futures_util::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), Some(file)))
                }
                Err(e) => Some((
                    Err(TransportError::Io {
                        what: "read blob".into(),
                        source: e,
                    }),
                    None,
                )),
            }
        })
        .boxed())
    }

    pub async fn put_manifest(
        &self,
        manifest: &[u8],
        media_type: &str,
        tag: Option<&str>,
    ) -> Result<()> {
        let digest = Digest::of(manifest);
        if !self.blob_exists(&digest).await? {
            write_atomic(&self.blob_path(&digest), manifest).await?;
        }
        let Some(tag) = tag.map(str::to_owned) else {
            return Ok(());
        };
        let mut descriptor = Descriptor::new(media_type, digest, manifest.len() as u64);
        descriptor.annotations =
            Some([(media::annotation::REF_NAME.to_owned(), tag.clone())].into());
        self.update_index(move |index| {
            index
                .manifests
                .retain(|d| d.annotation(media::annotation::REF_NAME) != Some(tag.as_str()));
            index.manifests.push(descriptor);
        })
        .await
    }

    pub async fn get_manifest(&self, target: &Target) -> Result<Vec<u8>> {
        let digest = match target {
            Target::Digest(d) => d.clone(),
            Target::Tag(tag) => {
                let index = self.read_index().await?;
                index
                    .manifests
                    .iter()
                    .find(|d| d.annotation(media::annotation::REF_NAME) == Some(tag.as_str()))
                    .map(|d| d.digest.clone())
                    .ok_or_else(|| TransportError::NotFound {
                        what: format!("tag {tag:?} in {}", self.dir.display()),
                    })?
            }
        };
        read_small(&self.blob_path(&digest), &format!("manifest {digest}"))
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => TransportError::NotFound {
                    what: format!("manifest {digest} in {}", self.dir.display()),
                },
                _ => oversized_or(e, format!("read manifest {digest}")),
            })
    }

    pub async fn list_tags(&self) -> Result<Vec<String>> {
        Ok(self
            .read_index()
            .await?
            .manifests
            .iter()
            .filter_map(|d| d.annotation(media::annotation::REF_NAME).map(str::to_owned))
            .collect())
    }

    /// Removes every index entry for the manifest, then its blob. Layer blobs stay, as in a
    /// registry before garbage collection.
    pub async fn delete_manifest(&self, digest: &Digest) -> Result<()> {
        let digest2 = digest.clone();
        self.update_index(move |index| index.manifests.retain(|d| d.digest != digest2))
            .await?;
        match tokio::fs::remove_file(self.blob_path(digest)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(TransportError::Io {
                what: format!("delete manifest {digest}"),
                source: e,
            }),
        }
    }

    async fn read_index(&self) -> Result<Index> {
        let path = self.dir.join("index.json");
        let bytes = read_small(&path, &path.display().to_string())
            .await
            .map_err(|e| oversized_or(e, format!("read {}", path.display())))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            TransportError::Config(format!("{} is not a valid OCI index: {e}", path.display()))
        })
    }

    async fn update_index(&self, change: impl FnOnce(&mut Index) + Send + 'static) -> Result<()> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let lock = std::fs::File::create(dir.join(".index.lock"))
                .map_err(io_error("create index lock"))?;
            lock.lock().map_err(io_error("lock index"))?;
            let path = dir.join("index.json");
            let bytes =
                std::fs::read(&path).map_err(io_error(format!("read {}", path.display())))?;
            let mut index: Index = serde_json::from_slice(&bytes).map_err(|e| {
                TransportError::Config(format!("{} is not a valid OCI index: {e}", path.display()))
            })?;
            change(&mut index);
            let mut tmp = locked_temp(&dir).map_err(io_error("write index"))?;
            std::io::Write::write_all(
                &mut tmp,
                &serde_json::to_vec(&index).expect("index serialises"),
            )
            .map_err(io_error("write index"))?;
            tmp.as_file().sync_all().map_err(io_error("sync index"))?;
            tmp.persist(&path).map_err(|e| TransportError::Io {
                what: "replace index.json".into(),
                source: e.error,
            })?;
            Ok(())
        })
        .await
        .expect("index update task")
    }
}

/// Opens a file of the layout for reading. Only a regular file is accepted (a FIFO, device or
/// directory in its place, even behind a symlink, is an error, and opening never blocks).
fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// Reads a manifest or `index.json`: a regular file of at most [`super::MAX_MANIFEST_BYTES`],
/// bounded while reading. An oversized one is an `InvalidData` error wrapping
/// [`TransportError::Oversized`].
async fn read_small(path: &Path, what: &str) -> std::io::Result<Vec<u8>> {
    let limit = super::MAX_MANIFEST_BYTES;
    let mut bytes = Vec::new();
    tokio::fs::File::from_std(open_regular(path)?)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .await?;
    if bytes.len() as u64 > limit {
        let what = what.to_owned();
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            TransportError::Oversized { what, limit },
        ));
    }
    Ok(bytes)
}

/// The `Oversized` error inside `e`, or `e` as an I/O error about `what`.
fn oversized_or(e: std::io::Error, what: String) -> TransportError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TransportError>())
    {
        Some(TransportError::Oversized { what, limit }) => TransportError::Oversized {
            what: what.clone(),
            limit: *limit,
        },
        _ => TransportError::Io { what, source: e },
    }
}

async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("file in a directory").to_owned();
    let (path, bytes) = (path.to_owned(), bytes.to_vec());
    tokio::task::spawn_blocking(move || {
        let mut tmp = locked_temp(&dir).map_err(io_error(format!("write {}", path.display())))?;
        std::io::Write::write_all(&mut tmp, &bytes)
            .map_err(io_error(format!("write {}", path.display())))?;
        tmp.persist(&path).map_err(|e| TransportError::Io {
            what: format!("write {}", path.display()),
            source: e.error,
        })?;
        Ok(())
    })
    .await
    .expect("write task")
}

/// Every OCI layout directory at or below `root` (depth ≤ 4), sorted.
pub(super) async fn list_layouts(root: &Path) -> Result<Vec<Repository>> {
    let root = root.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut stack = vec![(root.clone(), 0)];
        while let Some((dir, depth)) = stack.pop() {
            if dir.join("oci-layout").is_file() {
                out.push(Repository::Layout { dir });
                continue;
            }
            if depth >= 4 {
                continue;
            }
            let entries =
                std::fs::read_dir(&dir).map_err(io_error(format!("list {}", dir.display())))?;
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
        out.sort_by_key(|r| r.to_string());
        Ok(out)
    })
    .await
    .expect("list task")
}
