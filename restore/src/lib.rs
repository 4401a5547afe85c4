//! wsr-restore: the restore engine. It fetches a backup (native or any single-tarball artifact,
//! upstream DWO's included), verifies every blob, layer and file against their digests, and
//! unpacks it safely and atomically into a target directory; it also lists, inspects and
//! verifies backups.
//!
//! It owns the fetch → decompress → unpack pipeline (layers in parallel, bounded memory), the
//! target's safety rules (never write into a non-empty target unless forced, and then only after
//! moving the old content aside; stage, verify, then move into place) and the read-side reports.
//! It must not write to registries, decide what gets backed up, talk to Kubernetes, or print.

pub mod drill;
mod fetch;
pub mod target;
pub mod test_hooks;

pub use fetch::{Inspection, ListRow, inspect, list, open_artifact};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use wsr_format::reference::Reference;
use wsr_format::unpack::{DeferredDir, UnpackError, UnpackOptions, Unpacker};
use wsr_transport::{Access, ConnectOptions, Store, TransportError};

/// Everything a restore needs.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub from: Reference,
    pub to: PathBuf,
    /// Restore only these paths (relative to the archive root).
    pub paths: Option<Vec<String>>,
    /// Write into a non-empty target after moving its content aside.
    pub force: bool,
    /// Refuse archives that expand beyond this many bytes (free space always bounds it too).
    pub max_size: Option<u64>,
    /// Layers fetched and unpacked at once.
    pub parallel: usize,
    pub connect: ConnectOptions,
}

/// Live counters for progress display.
#[derive(Debug, Default)]
pub struct Progress {
    pub total_entries: AtomicU64,
    pub total_bytes: AtomicU64,
    pub entries: AtomicU64,
    pub bytes: AtomicU64,
    pub downloaded: AtomicU64,
}

/// What a restore or verify did.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RestoreReport {
    pub reference: String,
    pub digest: String,
    pub format: String,
    pub target: Option<String>,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub bytes: u64,
    pub downloaded_bytes: u64,
    pub layers: usize,
    /// Whether a file index was checked entry by entry (native format).
    pub verified_index: bool,
    pub skipped: Vec<String>,
    /// Where `--force` moved the previous content.
    pub moved_aside: Option<String>,
    /// This run only completed the final moves of an interrupted restore.
    #[serde(default)]
    pub resumed: bool,
    pub duration_s: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "target {path} is not empty; restore into an empty directory, or pass --force to move its content aside first"
    )]
    NotEmpty { path: PathBuf },
    #[error("cannot use target {path}")]
    Target {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot move {from} aside to {to}")]
    MoveAside {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    #[error("backup needs {needed} bytes but only {available} are free at {path}")]
    NoSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Invalid(String),
    /// The caller's arguments cannot work (e.g. `--paths` outside the backup).
    #[error("{0}")]
    Usage(String),
}

/// Restores `options.from` into `options.to`.
pub async fn restore(
    options: &RestoreOptions,
    progress: Arc<Progress>,
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    let target = options.to.as_path();
    // Arguments first: nothing is touched for a restore that cannot run.
    let selection = match &options.paths {
        Some(p) => Some(wsr_format::unpack::normalize_selection(p).map_err(RestoreError::Usage)?),
        None => None,
    };
    // An interrupted restore whose tree was already complete and verified: finish it.
    if let Some(staging) = target::completed_staging(target)? {
        tracing::info!(staging = %staging.dir.display(), "completing an interrupted restore");
        let (mut report, deferred) = target::read_marker(&staging)?;
        target::finish_moves(target, &staging, &deferred)?;
        report.resumed = true;
        report.duration_s = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let existing = target::user_entries(target)?;
    if !existing.is_empty() && !options.force {
        return Err(RestoreError::NotEmpty {
            path: target.to_owned(),
        });
    }
    let (store, opened) = open(options).await?;
    if let (Some(selection), Some(index)) = (&selection, &opened.index) {
        check_selection_in_index(selection, index)?;
    }
    let staging = target::create_staging(target)?;
    let tree = staging.tree();
    let unpacked = run_unpack(options, store, opened, &tree, selection, true, &progress).await;
    // The existing content is moved aside only once the new tree is complete and verified.
    let aside = match unpacked {
        Ok(done) if existing.is_empty() => Ok((done, None)),
        Ok(done) => target::move_aside(target, &existing).map(|aside| (done, Some(aside))),
        Err(e) => Err(e),
    };
    let ((mut report, deferred), moved_aside) = match aside {
        Ok(done) => done,
        Err(e) => {
            // Leave the target as it was: drop what was staged (ours, inside the target).
            target::discard_staging(&staging);
            return Err(e);
        }
    };
    let moved_aside = moved_aside.map(|aside| {
        tracing::warn!(aside = %aside.display(), "moved the target's existing content aside");
        aside.display().to_string()
    });
    report.target = Some(target.display().to_string());
    report.moved_aside = moved_aside;
    report.duration_s = started.elapsed().as_secs_f64();
    target::commit(target, &staging, &report, deferred)?;
    Ok(report)
}

/// A `--paths` entry that names nothing in the backup is an error (caught before any layer is
/// downloaded when there is an index).
fn check_selection_in_index(
    selection: &[Vec<u8>],
    index: &[wsr_format::native::IndexEntry],
) -> Result<(), RestoreError> {
    for wanted in selection {
        let one = std::slice::from_ref(wanted);
        if !index
            .iter()
            .any(|e| wsr_format::unpack::path_selected(one, &e.path.0))
        {
            return Err(unmatched(wanted));
        }
    }
    Ok(())
}

fn unmatched(path: &[u8]) -> RestoreError {
    RestoreError::Usage(format!(
        "--paths {:?} matches nothing in the backup",
        String::from_utf8_lossy(path)
    ))
}

async fn open(options: &RestoreOptions) -> Result<(Arc<Store>, fetch::Opened), RestoreError> {
    let store =
        Arc::new(Store::open(&options.from.repository, &options.connect, Access::Pull).await?);
    let opened = open_artifact(&store, &options.from.target).await?;
    Ok((store, opened))
}

/// Downloads and verifies everything (blob digests, layer digests, every file against the
/// index) without writing any file.
pub async fn verify(
    from: &Reference,
    connect: &ConnectOptions,
    parallel: usize,
    progress: Arc<Progress>,
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    let options = RestoreOptions {
        from: from.clone(),
        to: PathBuf::new(),
        paths: None,
        force: false,
        max_size: None,
        parallel,
        connect: connect.clone(),
    };
    let (store, opened) = open(&options).await?;
    let (mut report, _) = run_unpack(
        &options,
        store,
        opened,
        Path::new("/nonexistent-verify-only"),
        None,
        false,
        &progress,
    )
    .await?;
    report.duration_s = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn run_unpack(
    options: &RestoreOptions,
    store: Arc<Store>,
    mut opened: fetch::Opened,
    root: &Path,
    selection: Option<Vec<Vec<u8>>>,
    write: bool,
    progress: &Arc<Progress>,
) -> Result<(RestoreReport, Vec<DeferredDir>), RestoreError> {
    let mut max_bytes = options.max_size.unwrap_or(u64::MAX);
    let mut max_entries = wsr_format::native::MAX_ENTRIES;
    if write && let Some((free_bytes, free_inodes)) = target::free_space(root) {
        // Keep 1% (at most 64 MiB) for everything else on the volume.
        let reserve = (free_bytes / 100).min(64 << 20);
        max_bytes = max_bytes.min(free_bytes.saturating_sub(reserve));
        max_entries = max_entries.min(free_inodes);
        if let Some(config) = &opened.config
            && selection.is_none()
            && config.totals.bytes > max_bytes
        {
            return Err(RestoreError::NoSpace {
                path: options.to.clone(),
                needed: config.totals.bytes,
                available: max_bytes,
            });
        }
    }
    if let Some(config) = &opened.config {
        progress
            .total_entries
            .store(config.totals.entries(), Ordering::Relaxed);
        progress
            .total_bytes
            .store(config.totals.bytes, Ordering::Relaxed);
    }
    let aliases = match (&selection, &opened.index) {
        (Some(selection), Some(index)) => fetch::hard_link_aliases(index, selection),
        _ => Default::default(),
    };
    let unpack_options = UnpackOptions {
        max_bytes,
        max_entries,
        select: selection.clone(),
        aliases,
        write,
        reserved_prefix: Some(target::STAGING_PREFIX.as_bytes().to_vec()),
    };
    let layers = fetch::layers_to_fetch(&opened, selection.as_deref());
    // The unpacker takes the index over: one copy in memory, not two.
    let verified_index = opened.index.is_some();
    let index = opened.index.take();
    let p = progress.clone();
    let unpacker = Unpacker::new(root, unpack_options, index).on_entry(Box::new(move |size| {
        p.entries.fetch_add(1, Ordering::Relaxed);
        p.bytes.fetch_add(size, Ordering::Relaxed);
        test_hooks::count_entries(1);
    }));
    let unpacker = Arc::new(unpacker);
    fetch::unpack_layers(
        &store,
        &opened,
        &layers,
        unpacker.clone(),
        options.parallel.max(1),
        progress,
    )
    .await?;
    let unpacker = Arc::into_inner(unpacker).expect("all layer tasks finished");
    let result = tokio::task::spawn_blocking(move || unpacker.finish())
        .await
        .expect("finish task")?;
    if let Some(wanted) = result.unmatched.first() {
        return Err(unmatched(wanted));
    }
    let report = RestoreReport {
        reference: format!("{}@{}", options.from.repository, opened.digest),
        digest: opened.digest.to_string(),
        format: opened.format_name().into(),
        target: None,
        files: result.files,
        dirs: result.dirs,
        symlinks: result.symlinks,
        hardlinks: result.hardlinks,
        bytes: result.bytes,
        downloaded_bytes: progress.downloaded.load(Ordering::Relaxed),
        layers: layers.len(),
        verified_index,
        skipped: result
            .skipped
            .iter()
            .map(|(p, r)| format!("{p}: {r}"))
            .collect(),
        moved_aside: None,
        resumed: false,
        duration_s: 0.0,
    };
    Ok((report, result.deferred_dirs))
}
