//! The OCI image layout transport (`oci:DIR`), as the image-layout spec defines it and skopeo's
//! `oci:` transport reads it: `oci-layout`, `index.json` (tags as `org.opencontainers.image.ref.name`
//! annotations) and `blobs/sha256/<hex>`.
//!
//! Blobs are written to a temporary file in `blobs/sha256/` and renamed once their digest is
//! known, so a blob file is never partial. `index.json` is replaced atomically (write + rename)
//! under an exclusive lock, so concurrent writers don't lose tags.

use crate::{BlobStream, Result, TransportError};
use bytes::Bytes;
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use wsr_format::digest::{Digest, Hasher};
use wsr_format::manifest::{Descriptor, Index};
use wsr_format::media;
use wsr_format::reference::{Repository, Target};

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

    pub async fn push_blob_stream(
        &self,
        mut chunks: mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> Result<(Digest, u64)> {
        let tmp = tempfile::Builder::new()
            .prefix(".upload-")
            .tempfile_in(self.dir.join("blobs/sha256"))
            .map_err(io_error("create upload file"))?;
        let (file, tmp_path) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let mut hasher = Hasher::new();
        while let Some(chunk) = chunks.recv().await {
            let chunk = chunk.map_err(TransportError::Source)?;
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(io_error("write blob"))?;
        }
        file.sync_all().await.map_err(io_error("sync blob"))?;
        let (digest, size) = hasher.finish();
        let dest = self.blob_path(&digest);
        // persist() renames; the TempPath deletes the file on every error path before this.
        tmp_path.persist(&dest).map_err(|e| TransportError::Io {
            what: format!("store blob {digest}"),
            source: e.error,
        })?;
        Ok((digest, size))
    }

    pub async fn fetch_blob(&self, digest: &Digest) -> Result<BlobStream> {
        let path = self.blob_path(digest);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => TransportError::NotFound {
                    what: format!("blob {digest} in {}", self.dir.display()),
                },
                _ => TransportError::Io {
                    what: format!("open {}", path.display()),
                    source: e,
                },
            })?;
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
        tokio::fs::read(self.blob_path(&digest))
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => TransportError::NotFound {
                    what: format!("manifest {digest} in {}", self.dir.display()),
                },
                _ => TransportError::Io {
                    what: format!("read manifest {digest}"),
                    source: e,
                },
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
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(io_error(format!("read {}", path.display())))?;
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
            let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io_error("write index"))?;
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

async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("file in a directory").to_owned();
    let (path, bytes) = (path.to_owned(), bytes.to_vec());
    tokio::task::spawn_blocking(move || {
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .map_err(io_error(format!("write {}", path.display())))?;
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
