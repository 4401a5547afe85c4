//! Hand-made tar streams (nothing sanitises them) and native artifacts with honest digests but
//! arbitrary, possibly hostile, documents.

use std::io::Write;
use std::path::Path;
use wsr_format::digest::Digest;
use wsr_format::manifest::Descriptor;
use wsr_format::media;
use wsr_format::reference::Repository;
use wsr_transport::{Access, ConnectOptions, Store};

pub const MTIME: u64 = 1_700_000_000;

/// A tar stream written header by header.
#[derive(Default)]
pub struct Tar {
    pub bytes: Vec<u8>,
}

/// A GNU header; `name` and `link` are cut to the 100-byte fields.
pub fn header(kind: u8, name: &[u8], link: &[u8], size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let n = name.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    let l = link.len().min(100);
    h.as_old_mut().linkname[..l].copy_from_slice(&link[..l]);
    h.set_mode(mode);
    h.set_mtime(MTIME);
    h.set_size(size);
    h.set_entry_type(tar::EntryType::new(kind));
    h
}

impl Tar {
    pub fn raw(mut self, mut h: tar::Header, data: &[u8]) -> Tar {
        h.set_cksum();
        self.bytes.extend_from_slice(h.as_bytes());
        self.bytes.extend_from_slice(data);
        let padded = data.len().div_ceil(512) * 512;
        self.bytes.resize(self.bytes.len() + padded - data.len(), 0);
        self
    }
    pub fn file(self, name: &str, data: &[u8]) -> Tar {
        self.file_mode(name, data, 0o644)
    }
    pub fn file_mode(self, name: &str, data: &[u8], mode: u32) -> Tar {
        let h = header(b'0', name.as_bytes(), b"", data.len() as u64, mode);
        self.raw(h, data)
    }
    pub fn dir(self, name: &str, mode: u32) -> Tar {
        self.raw(header(b'5', name.as_bytes(), b"", 0, mode), b"")
    }
    pub fn symlink(self, name: &str, target: &str) -> Tar {
        let h = header(b'2', name.as_bytes(), target.as_bytes(), 0, 0o777);
        self.raw(h, b"")
    }
    /// A GNU long-name (`L`) / long-link (`K`) record or a PAX (`x`, `g`) header.
    pub fn record(self, kind: u8, data: &[u8]) -> Tar {
        self.raw(
            header(kind, b"././@LongLink", b"", data.len() as u64, 0o644),
            data,
        )
    }
    /// A GNU sparse file of `real_size` bytes holding `data` at `offset` (holes elsewhere).
    pub fn sparse(self, name: &str, real_size: u64, offset: u64, data: &[u8]) -> Tar {
        let mut h = header(b'S', name.as_bytes(), b"", data.len() as u64, 0o644);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.sparse[0].set_offset(offset);
        gnu.sparse[0].set_length(data.len() as u64);
        if offset + (data.len() as u64) < real_size {
            // A trailing hole is a last, empty chunk at the end (as GNU tar writes it).
            gnu.sparse[1].set_offset(real_size);
            gnu.sparse[1].set_length(0);
        }
        gnu.set_real_size(real_size);
        self.raw(h, data)
    }
    /// The end-of-archive marker (two zero blocks).
    pub fn end(mut self) -> Vec<u8> {
        self.bytes.resize(self.bytes.len() + 1024, 0);
        self.bytes
    }
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = wsr_format::codec::gzip_encoder(Vec::new(), 1);
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// One line of a file index for a tar entry made by [`Tar`].
pub fn index_line(kind: &str, path: &str, mode: u32, data: &[u8], link: Option<&str>) -> String {
    let mut v = serde_json::json!({
        "path": path, "type": kind, "mode": mode, "mtime": MTIME,
        "size": if kind == "file" { data.len() } else { 0 },
    });
    if kind == "file" {
        v["sha256"] = Digest::of(data).to_string().into();
    }
    if let Some(link) = link {
        v["link"] = link.into();
    }
    v.to_string()
}

/// The parts of a one-layer native artifact, to be tampered with before [`Native::publish`].
pub struct Native {
    pub tar: Vec<u8>,
    pub index: Vec<u8>,
    pub config: serde_json::Value,
    /// Added to the config descriptor's size in the manifest.
    pub config_size_lie: i64,
    /// Format version 3: the index at the end of the layer's blob (FORMAT.md §4.4), with these
    /// parts of it; `None`: version 1, the index in a blob of its own.
    pub in_layer: Option<InLayer>,
}

/// How a version 3 layer's blob ends: the index frame, as written or tampered with.
pub struct InLayer {
    /// The frame's magic number.
    pub magic: u32,
    /// Added to the payload length the frame header declares.
    pub length_lie: i64,
    /// Added to the `index_at` the config records.
    pub index_at_lie: i64,
    /// The payload stored in the blob instead of `index` (whose digest the config keeps).
    pub payload: Option<Vec<u8>>,
}

impl InLayer {
    /// The frame as a writer writes it.
    pub fn honest() -> InLayer {
        InLayer {
            magic: wsr_format::native::INDEX_FRAME_MAGIC,
            length_lie: 0,
            index_at_lie: 0,
            payload: None,
        }
    }
}

impl Native {
    /// An honest artifact for `tar` whose index lines are `lines`, with `totals` files/dirs/bytes.
    pub fn new(tar: Vec<u8>, lines: &[String], files: u64, dirs: u64, bytes: u64) -> Native {
        let mut index = lines.join("\n");
        index.push('\n');
        Native {
            config: serde_json::json!({
                "format_version": "1.0",
                "created": "2026-11-25T00:00:00Z",
                "tool": "hand-made",
                "workspace": {},
                "source_path": "/projects",
                "totals": {"files": files, "dirs": dirs, "symlinks": 0, "hardlinks": 0, "bytes": bytes},
                "layer_target": 1048576,
                "layers": [{
                    "digest": "", "diff_id": Digest::of(&tar).to_string(),
                    "tar_size": tar.len(), "entries": lines.len(), "index": "",
                    "fingerprint": Digest::of(b"").to_string(),
                }],
            }),
            index: zstd(index.as_bytes()),
            tar,
            config_size_lie: 0,
            in_layer: None,
        }
    }

    /// The same artifact in format version 3.
    pub fn v3(mut self) -> Native {
        self.config["format_version"] = wsr_format::native::FORMAT_VERSION.into();
        self.in_layer = Some(InLayer::honest());
        self
    }

    /// Stores the artifact in the layout `layout` as `latest`; returns the reference.
    pub fn publish(mut self, layout: &Path) -> String {
        let mut layer = zstd(&self.tar);
        let mut blobs = Vec::new();
        let mut indexes = Vec::new();
        match &self.in_layer {
            Some(frame) => {
                let index_at = layer.len() as i64 + frame.index_at_lie;
                self.config["layers"][0]["index_at"] = index_at.into();
                let payload = frame.payload.as_ref().unwrap_or(&self.index);
                let length = payload.len() as i64 + frame.length_lie;
                layer.extend_from_slice(&frame.magic.to_le_bytes());
                layer.extend_from_slice(&(length as u32).to_le_bytes());
                layer.extend_from_slice(payload);
            }
            None => {
                indexes.push(Descriptor::new(
                    media::NATIVE_INDEX,
                    Digest::of(&self.index),
                    self.index.len() as u64,
                ));
                blobs.push(std::mem::take(&mut self.index));
            }
        }
        let layer_desc = Descriptor::new(
            media::LAYER_TAR_ZSTD,
            Digest::of(&layer),
            layer.len() as u64,
        );
        self.config["layers"][0]["digest"] = layer_desc.digest.to_string().into();
        let index_digest = indexes
            .first()
            .map_or(Digest::of(&self.index), |i| i.digest.clone());
        self.config["layers"][0]["index"] = index_digest.to_string().into();
        let config = serde_json::to_vec(&self.config).unwrap();
        let (major, config_type) = match self.in_layer {
            Some(_) => (3, media::NATIVE_CONFIG_V3),
            None => (1, media::NATIVE_CONFIG),
        };
        let config_desc = Descriptor::new(
            config_type,
            Digest::of(&config),
            (config.len() as i64 + self.config_size_lie) as u64,
        );
        let manifest = wsr_format::artifact::native_manifest(
            major,
            config_desc,
            vec![layer_desc],
            indexes,
            Default::default(),
        )
        .to_bytes();
        blobs.extend([layer, config]);
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let repo = Repository::Layout {
                dir: layout.to_owned(),
            };
            let store = Store::open(&repo, &ConnectOptions::default(), Access::Push)
                .await
                .unwrap();
            for blob in blobs {
                store.push_blob_bytes(blob.into()).await.unwrap();
            }
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
}
