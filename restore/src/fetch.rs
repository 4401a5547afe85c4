//! Reading artifacts: resolving a manifest, loading the native config and file index, streaming
//! layers through digest checks and decompression into the unpacker (several at once), and the
//! `list` / `inspect` reports.

use crate::{Progress, RestoreError};
use futures_util::StreamExt;
use std::io::{self, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use wsr_format::artifact::{self, Artifact};
use wsr_format::codec::Compression;
use wsr_format::digest::{Digest, HashingReader};
use wsr_format::manifest::{Descriptor, Manifest};
use wsr_format::media::{self, annotation};
use wsr_format::native::{self, BackupConfig, IndexEntry};
use wsr_format::reference::{Repository, Target};
use wsr_format::unpack::{Unpacker, path_selected};
use wsr_transport::{Access, BlobReader, ConnectOptions, Store, list_repositories};

/// A resolved artifact with its native documents loaded.
pub struct Opened {
    pub digest: Digest,
    pub manifest: Manifest,
    pub artifact: Artifact,
    pub config: Option<BackupConfig>,
    /// The file index of every layer, concatenated in layer order (native only).
    pub index: Option<Vec<IndexEntry>>,
    /// For each index entry, the position of its layer.
    pub layer_of: Vec<usize>,
}

impl Opened {
    pub fn format_name(&self) -> &'static str {
        match &self.artifact {
            Artifact::Native { .. } => "native",
            Artifact::Tarball { dwo: true, .. } => "dwo",
            Artifact::Tarball { dwo: false, .. } => "tarball",
        }
    }

    fn data_layers(&self) -> Vec<&Descriptor> {
        match &self.artifact {
            Artifact::Native { layers, .. } => layers.iter().collect(),
            Artifact::Tarball { layer, .. } => vec![layer],
        }
    }
}

/// Fetches the manifest at `target` and, for native artifacts, the config and file index.
pub async fn open_artifact(store: &Store, target: &Target) -> Result<Opened, RestoreError> {
    let (digest, bytes) = store.fetch_manifest(target).await?;
    let manifest = Manifest::from_bytes(&bytes).map_err(|e| {
        RestoreError::Corrupt(format!(
            "manifest {digest} is not a valid OCI manifest: {e}"
        ))
    })?;
    let artifact =
        artifact::classify(&manifest).map_err(|e| RestoreError::Invalid(e.to_string()))?;
    let (config, index) = match &artifact {
        Artifact::Native {
            config,
            layers,
            indexes,
        } => {
            let config_bytes = fetch_document(store, config, native::MAX_CONFIG_BYTES).await?;
            let config = BackupConfig::from_bytes(&config_bytes)
                .map_err(|e| RestoreError::Invalid(e.to_string()))?;
            drop(config_bytes);
            let consistent = config.layers.len() == layers.len()
                && config
                    .layers
                    .iter()
                    .zip(layers)
                    .zip(indexes)
                    .all(|((c, l), i)| c.digest == l.digest && c.index == i.digest);
            if !consistent {
                return Err(RestoreError::Corrupt(format!(
                    "manifest {digest}: config and manifest list different layers"
                )));
            }
            check_declared_counts(&digest, &config)?;
            // Counts come from the (digest-valid, but untrusted) config: they bound what is
            // read, they never size an allocation up front.
            let mut entries = Vec::new();
            let mut layer_of = Vec::new();
            let mut bytes_total = 0u64;
            let mut index_budget = native::MAX_INDEX_BYTES;
            for (position, (index, info)) in indexes.iter().zip(&config.layers).enumerate() {
                let bytes = fetch_document(store, index, native::MAX_INDEX_BLOB_BYTES).await?;
                let layer_entries = native::read_index(&bytes[..], info.entries, &mut index_budget)
                    .map_err(|e| {
                        RestoreError::Corrupt(format!("file index {}: {e}", index.digest))
                    })?;
                bytes_total = layer_entries
                    .iter()
                    .try_fold(bytes_total, |t, e| t.checked_add(e.size))
                    .ok_or_else(|| {
                        RestoreError::Corrupt(format!(
                            "file index {}: sizes add up beyond 2^64",
                            index.digest
                        ))
                    })?;
                layer_of.extend(std::iter::repeat_n(position, layer_entries.len()));
                entries.extend(layer_entries);
            }
            if bytes_total != config.totals.bytes {
                return Err(RestoreError::Corrupt(format!(
                    "manifest {digest}: the file index holds {bytes_total} bytes of files, the config says {}",
                    config.totals.bytes
                )));
            }
            (Some(config), Some((entries, layer_of)))
        }
        Artifact::Tarball { .. } => (None, None),
    };
    let (index, layer_of) = index.unzip();
    Ok(Opened {
        digest,
        manifest,
        artifact,
        config,
        index,
        layer_of: layer_of.unwrap_or_default(),
    })
}

/// Fetches a config or index blob: its descriptor size must be within `limit`, and the blob
/// must have exactly that size and digest (FORMAT.md §6.5).
async fn fetch_document(
    store: &Store,
    descriptor: &Descriptor,
    limit: u64,
) -> Result<Vec<u8>, RestoreError> {
    if descriptor.size > limit {
        return Err(RestoreError::Corrupt(format!(
            "{} blob {} declares {} bytes; at most {limit} are accepted",
            descriptor.media_type, descriptor.digest, descriptor.size
        )));
    }
    let bytes = store
        .fetch_blob_bytes(&descriptor.digest, descriptor.size)
        .await?;
    if bytes.len() as u64 != descriptor.size {
        return Err(RestoreError::Corrupt(format!(
            "{} blob {} is {} bytes, its descriptor says {}",
            descriptor.media_type,
            descriptor.digest,
            bytes.len(),
            descriptor.size
        )));
    }
    Ok(bytes)
}

/// The config's counts must agree with each other and stay within [`native::MAX_ENTRIES`]
/// before any index is read.
fn check_declared_counts(digest: &Digest, config: &BackupConfig) -> Result<(), RestoreError> {
    let per_layer = config
        .layers
        .iter()
        .try_fold(0u64, |t, l| t.checked_add(l.entries));
    let totals = config.totals.checked_entries();
    let corrupt = |what: String| Err(RestoreError::Corrupt(format!("manifest {digest}: {what}")));
    match (per_layer, totals) {
        (Some(layers), Some(totals)) if layers != totals => corrupt(format!(
            "the config's layers hold {layers} entries, its totals say {totals}"
        )),
        (Some(n), Some(_)) if n > native::MAX_ENTRIES => corrupt(format!(
            "the backup has {n} entries; at most {} are accepted",
            native::MAX_ENTRIES
        )),
        (Some(_), Some(_)) => Ok(()),
        _ => corrupt("the config's entry counts add up beyond 2^64".into()),
    }
}

/// Layer positions to fetch: all, or (with a selection and an index) those holding a selected
/// entry or the target of a selected hard link.
pub fn layers_to_fetch(opened: &Opened, selection: Option<&[Vec<u8>]>) -> Vec<usize> {
    let all: Vec<usize> = (0..opened.data_layers().len()).collect();
    let (Some(selection), Some(index)) = (selection, &opened.index) else {
        return all;
    };
    let selected = |p: &[u8]| path_selected(selection, p);
    let layer_by_path: std::collections::HashMap<&[u8], usize> = index
        .iter()
        .zip(&opened.layer_of)
        .map(|(e, &l)| (e.path.0.as_slice(), l))
        .collect();
    let mut wanted = std::collections::BTreeSet::new();
    for (e, &layer) in index
        .iter()
        .zip(&opened.layer_of)
        .filter(|(e, _)| selected(&e.path.0))
    {
        wanted.insert(layer);
        if e.kind == wsr_format::codec::EntryKind::Hardlink
            && let Some(&l) = e
                .link
                .as_ref()
                .and_then(|t| layer_by_path.get(t.0.as_slice()))
        {
            wanted.insert(l);
        }
    }
    wanted.into_iter().collect()
}

/// For a partial restore: each selected hard link whose file is outside the selection, as
/// file path → the first such link's path (see `UnpackOptions::aliases`).
pub fn hard_link_aliases(
    index: &[IndexEntry],
    selection: &[Vec<u8>],
) -> std::collections::HashMap<Vec<u8>, Vec<u8>> {
    let mut aliases = std::collections::HashMap::new();
    for e in index.iter().filter(|e| {
        e.kind == wsr_format::codec::EntryKind::Hardlink && path_selected(selection, &e.path.0)
    }) {
        if let Some(target) = &e.link
            && !path_selected(selection, &target.0)
        {
            aliases
                .entry(target.0.clone())
                .or_insert_with(|| e.path.0.clone());
        }
    }
    aliases
}

/// Streams the chosen layers into the unpacker, `parallel` at a time.
pub async fn unpack_layers(
    store: &Arc<Store>,
    opened: &Opened,
    positions: &[usize],
    unpacker: Arc<Unpacker>,
    parallel: usize,
    progress: &Arc<Progress>,
) -> Result<(), RestoreError> {
    let layers = opened.data_layers();
    let jobs = positions.iter().map(|&i| {
        let descriptor = layers[i].clone();
        let diff_id = opened
            .config
            .as_ref()
            .map(|c| (c.layers[i].diff_id.clone(), c.layers[i].tar_size));
        let (store, unpacker, progress) = (store.clone(), unpacker.clone(), progress.clone());
        async move { unpack_layer(&store, descriptor, diff_id, unpacker, progress).await }
    });
    let mut results = futures_util::stream::iter(jobs).buffer_unordered(parallel);
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(())
}

/// Most bytes accepted after a native layer's end-of-archive marker.
const MAX_TRAILER: u64 = 1 << 20;

async fn unpack_layer(
    store: &Store,
    descriptor: Descriptor,
    diff_id: Option<(Digest, u64)>,
    unpacker: Arc<Unpacker>,
    progress: Arc<Progress>,
) -> Result<(), RestoreError> {
    let blob = store
        .blob_reader(&descriptor.digest, descriptor.size)
        .await?;
    tokio::task::spawn_blocking(move || {
        unpack_blob(blob, &descriptor, diff_id, &unpacker, &progress)
    })
    .await
    .expect("unpack task")
}

/// Decompresses and unpacks one layer blob, then checks the blob (size, then digest: the
/// reader never reads more than one byte past the declared size) and the tar's digest.
fn unpack_blob(
    mut blob: BlobReader,
    desc: &Descriptor,
    diff_id: Option<(Digest, u64)>,
    unpacker: &Unpacker,
    progress: &Progress,
) -> Result<(), RestoreError> {
    let unpacked = (|| {
        let counted = Counted {
            inner: &mut blob,
            count: &progress.downloaded,
        };
        let decoder = Compression::decoder(BufReader::with_capacity(256 * 1024, counted))
            .map_err(corrupt(desc))?;
        // A native layer's uncompressed length is declared too (`tar_size`).
        let tar_limit = diff_id
            .as_ref()
            .map_or(u64::MAX, |(_, size)| size.saturating_add(1));
        let mut tar = HashingReader::new(decoder.take(tar_limit));
        unpacker.unpack_tar(&mut tar)?;
        if diff_id.is_some() {
            // The padding after the end-of-archive marker belongs to `diff_id`; wsr writes
            // 1 KiB, GNU tar pads to 10 KiB. Anything longer is refused, not decompressed.
            let trailer = io::copy(&mut (&mut tar).take(MAX_TRAILER + 1), &mut io::sink())
                .map_err(corrupt(desc))?;
            if trailer > MAX_TRAILER {
                return Err(RestoreError::Corrupt(format!(
                    "layer {}: more than {MAX_TRAILER} bytes follow the end-of-archive marker",
                    desc.digest
                )));
            }
        }
        let (_, tar_digest, tar_size) = tar.finish();
        Ok::<_, RestoreError>((tar_digest, tar_size))
    })();
    let (tar_digest, tar_size) = match unpacked {
        Ok(tar) => tar,
        // A read that failed because the download did is reported as the download's failure.
        Err(e) => return Err(blob.into_failure().map_or(e, RestoreError::from)),
    };
    blob.finish()?;
    if let Some((want, want_size)) = diff_id
        && (want != tar_digest || want_size != tar_size)
    {
        return Err(RestoreError::Corrupt(format!(
            "layer {}: uncompressed digest {tar_digest} ({tar_size} bytes) differs from the config's {want} ({want_size} bytes)",
            desc.digest
        )));
    }
    Ok(())
}

/// Counts the bytes read through it into a progress counter.
struct Counted<'a, R> {
    inner: R,
    count: &'a AtomicU64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn corrupt(desc: &Descriptor) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |e| RestoreError::Corrupt(format!("layer {}: {e}", desc.digest))
}

/// Everything `inspect` shows.
#[derive(Debug, serde::Serialize)]
pub struct Inspection {
    pub reference: String,
    pub digest: String,
    pub format: String,
    pub manifest: serde_json::Value,
    pub config: Option<serde_json::Value>,
    pub layers: usize,
    pub stored_bytes: u64,
    pub index_entries: Option<usize>,
}

pub async fn inspect(
    reference: &wsr_format::reference::Reference,
    connect: &ConnectOptions,
) -> Result<Inspection, RestoreError> {
    let store = Store::open(&reference.repository, connect, Access::Pull).await?;
    let opened = open_artifact(&store, &reference.target).await?;
    Ok(Inspection {
        reference: format!("{}@{}", reference.repository, opened.digest),
        digest: opened.digest.to_string(),
        format: opened.format_name().into(),
        manifest: serde_json::to_value(&opened.manifest).expect("manifest to JSON"),
        config: opened
            .config
            .as_ref()
            .map(|c| serde_json::to_value(c).expect("config to JSON")),
        layers: opened.data_layers().len(),
        stored_bytes: opened.data_layers().iter().map(|l| l.size).sum(),
        index_entries: opened.index.as_ref().map(Vec::len),
    })
}

/// One row of `list`.
#[derive(Debug, serde::Serialize)]
pub struct ListRow {
    pub repository: String,
    pub namespace: String,
    pub workspace: String,
    pub tags: Vec<String>,
    /// Creation time of the newest backup (the `latest` tag, else the newest tag).
    pub created: Option<String>,
    /// Compressed size of its layers.
    pub size: Option<u64>,
    /// Uncompressed size, when recorded (native).
    pub bytes: Option<u64>,
    pub format: Option<String>,
    pub error: Option<String>,
}

/// Lists backups below a registry path, optionally only one namespace and/or workspace.
pub async fn list(
    registry_path: &Repository,
    namespace: Option<&str>,
    workspace: Option<&str>,
    connect: &ConnectOptions,
) -> Result<Vec<ListRow>, RestoreError> {
    let prefix_len = match registry_path {
        Repository::Registry { path, .. } => path.split('/').filter(|s| !s.is_empty()).count(),
        Repository::Layout { dir } => dir.components().count(),
    };
    let mut rows = Vec::new();
    for repo in list_repositories(registry_path, connect).await? {
        let parts: Vec<String> = match &repo {
            Repository::Registry { path, .. } => path
                .split('/')
                .skip(prefix_len)
                .map(str::to_owned)
                .collect(),
            Repository::Layout { dir } => dir
                .components()
                .skip(prefix_len)
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect(),
        };
        let [ns, ws] = parts.as_slice() else { continue };
        if namespace.is_some_and(|n| n != ns) || workspace.is_some_and(|w| w != ws) {
            continue;
        }
        rows.push(describe(&repo, ns, ws, connect).await);
    }
    rows.sort_by(|a, b| (&a.namespace, &a.workspace).cmp(&(&b.namespace, &b.workspace)));
    Ok(rows)
}

async fn describe(repo: &Repository, ns: &str, ws: &str, connect: &ConnectOptions) -> ListRow {
    let mut row = ListRow {
        repository: repo.to_string(),
        namespace: ns.into(),
        workspace: ws.into(),
        tags: vec![],
        created: None,
        size: None,
        bytes: None,
        format: None,
        error: None,
    };
    let result: Result<(), RestoreError> = async {
        let store = Store::open(repo, connect, Access::Pull).await?;
        let mut tags = store.list_tags().await?;
        tags.sort();
        let newest = if tags.iter().any(|t| t == media::LATEST_TAG) {
            Some(media::LATEST_TAG.to_owned())
        } else {
            tags.last().cloned()
        };
        row.tags = tags;
        if let Some(tag) = newest {
            let (_, bytes) = store.fetch_manifest(&Target::Tag(tag)).await?;
            let manifest =
                Manifest::from_bytes(&bytes).map_err(|e| RestoreError::Corrupt(e.to_string()))?;
            row.created = manifest.annotation(annotation::CREATED).map(str::to_owned);
            row.bytes = manifest
                .annotation(annotation::WSR_BYTES)
                .and_then(|b| b.parse().ok());
            match artifact::classify(&manifest) {
                Ok(Artifact::Native { layers, .. }) => {
                    row.size = Some(layers.iter().map(|l| l.size).sum());
                    row.format = Some("native".into());
                }
                Ok(Artifact::Tarball { layer, dwo }) => {
                    row.size = Some(layer.size);
                    row.format = Some(if dwo { "dwo" } else { "tarball" }.into());
                }
                Err(e) => row.error = Some(e.to_string()),
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        row.error = Some(e.to_string());
    }
    row
}
