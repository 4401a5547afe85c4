//! The read-side reports: `inspect` (one artifact's manifest, config and sizes) and `list` (the
//! backups below a registry path, one row per workspace repository).

use crate::RestoreError;
use crate::open::{open_artifact, scan_indexes};
use wsr_format::artifact::{self, Artifact};
use wsr_format::manifest::Manifest;
use wsr_format::media::{self, annotation};
use wsr_format::reference::{Repository, Target};
use wsr_transport::{Access, ConnectOptions, Store, list_repositories};

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
    let read_manifest = async |store: &Store| open_artifact(store, &reference.target).await;
    let (store, opened) =
        Store::open_then(&reference.repository, connect, Access::Pull, read_manifest).await?;
    // The indexes are read (and checked) line by line, only to count them.
    let index_entries = match &opened.config {
        Some(_) => {
            let count = |n: &mut usize, _, _| {
                *n += 1;
                Ok(())
            };
            Some(scan_indexes(&store, &opened, 0, count).await?)
        }
        None => None,
    };
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
        index_entries,
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
        let list_tags = async |store: &Store| store.list_tags().await;
        let (store, mut tags) = Store::open_then(repo, connect, Access::Pull, list_tags).await?;
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
