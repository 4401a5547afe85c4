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
pub mod init;
mod open;
mod pipeline;
mod reports;
mod select;
pub mod target;
pub mod test_hooks;

pub use open::{Opened, open_artifact};
pub use reports::{Inspection, ListRow, inspect, list};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use wsr_format::artifact::ArtifactError;
use wsr_format::native::ConfigError;
use wsr_format::reference::Reference;
use wsr_format::unpack::{
    DeferredDir, EntryCallback, SelectionError, UnpackError, UnpackOptions, Unpacker,
};
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
    /// Layers unpacked at once ([`default_parallel`] unless told); as many more, and at least
    /// 8, are requested ahead.
    pub parallel: usize,
    /// Flush the restored tree's filesystem to disk while the tree is written and once more
    /// before marking the restore complete ([`target::TreeFlush`]). The marker is durable, so
    /// without the flush a power loss soon after could leave files with their names but not
    /// their contents, behind a marker that says the restore succeeded. Off only for restores
    /// that are thrown away (drills).
    pub sync: bool,
    pub connect: ConnectOptions,
}

/// Most layers unpacked at once by default: each holds a decompression context, its blob and
/// index readers and a file being written.
const MAX_DEFAULT_PARALLEL: usize = 4;

/// Layers unpacked at once unless told: one per core this process may use (its CPU quota
/// included), at most [`MAX_DEFAULT_PARALLEL`]. Unpacking a layer is one thread's work
/// (decompressing, hashing, creating files), so more layers than cores only share them and
/// hold more memory: on 2 cores, from a local registry with 4 layers requested ahead (then the
/// minimum) either way, 2 layers restored the 1 GB benchmark corpus as fast as 4 (medians 8.05 and 7.72 s over
/// 7 alternating rounds on a busy machine) with 35-37 MiB peak RSS instead of 45-46. Round
/// trips are overlapped by the layers requested ahead, whose number does not follow the cores.
pub fn default_parallel() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.min(MAX_DEFAULT_PARALLEL)
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
    /// The artifact is not a backup this wsr reads (not a workspace backup, or a newer format).
    #[error(transparent)]
    Unsupported(#[from] ArtifactError),
    /// The native config cannot be used (a newer major format version, or not valid JSON).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The backup contradicts itself or its descriptors (sizes, digests, counts, the file
    /// index); the message says where. Callers treat every such case alike.
    #[error("{0}")]
    Corrupt(String),
    /// A `--paths` entry that is not a relative path below the root.
    #[error(transparent)]
    Paths(#[from] SelectionError),
    /// A `--paths` entry that names nothing in the backup.
    #[error("--paths {path:?} matches nothing in the backup")]
    Unmatched { path: String },
    /// The target has no directory name (e.g. `/`), so its content cannot be moved aside.
    #[error("{path} has no directory name; restore into a named directory")]
    TargetName { path: PathBuf },
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
        Some(p) => Some(wsr_format::unpack::normalize_selection(p)?),
        None => None,
    };
    // An interrupted restore whose tree was already complete and verified: finish it.
    if let Some((staging, mut report, deferred)) = target::completed_staging(target)? {
        tracing::info!(staging = %staging.dir.display(), "completing an interrupted restore");
        target::finish_moves(target, &staging, &deferred)?;
        report.resumed = true;
        report.duration_s = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    // An interrupted restore's incomplete staging directory is ours to remove, even when the
    // target turns out not to be empty.
    target::remove_stale_staging(target)?;
    let existing = target::user_entries(target)?;
    if !existing.is_empty() && !options.force {
        return Err(RestoreError::NotEmpty {
            path: target.to_owned(),
        });
    }
    target::check_writable(target)?;
    let (store, opened) = open(&options.from, &options.connect).await?;
    let plan = select::plan(&store, &opened, selection.as_deref()).await?;
    let staging = target::create_staging(target)?;
    let tree = staging.tree();
    let flush = (options.sync)
        .then(|| target::TreeFlush::start(&tree))
        .transpose()?;
    let destination = Destination {
        target,
        tree: &tree,
        selection,
        max_size: options.max_size,
    };
    let unpacked = run_unpack(
        &options.from,
        store,
        opened,
        plan,
        Some(destination),
        options.parallel,
        &progress,
    )
    .await;
    let unpacked = unpacked.and_then(|done| {
        if let Some(flush) = flush {
            flush.finish(&tree)?;
        }
        Ok(done)
    });
    // The existing content is moved aside only once the new tree is complete, verified and
    // on disk.
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

async fn open(
    from: &Reference,
    connect: &ConnectOptions,
) -> Result<(Arc<Store>, Opened), RestoreError> {
    let read_manifest = async |store: &Store| open_artifact(store, &from.target).await;
    let (store, opened) =
        Store::open_then(&from.repository, connect, Access::Pull, read_manifest).await?;
    Ok((Arc::new(store), opened))
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
    let (store, opened) = open(from, connect).await?;
    let plan = select::plan(&store, &opened, None).await?;
    let (mut report, _) = run_unpack(from, store, opened, plan, None, parallel, &progress).await?;
    report.duration_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Where a restore writes and what it is allowed to write; a verify has none.
struct Destination<'a> {
    /// The user's target directory (what messages name).
    target: &'a Path,
    /// The staging tree the entries are written into.
    tree: &'a Path,
    selection: Option<Vec<Vec<u8>>>,
    max_size: Option<u64>,
}

/// Streams the layers of `plan` into an unpacker writing to `destination` (or only checking,
/// without one) and reports what the artifact holds.
async fn run_unpack(
    from: &Reference,
    store: Arc<Store>,
    opened: Opened,
    plan: select::Plan,
    destination: Option<Destination<'_>>,
    parallel: usize,
    progress: &Arc<Progress>,
) -> Result<(RestoreReport, Vec<DeferredDir>), RestoreError> {
    let (max_bytes, max_entries) = match &destination {
        Some(destination) => write_limits(destination, &opened)?,
        None => (u64::MAX, wsr_format::native::MAX_ENTRIES),
    };
    if let Some(config) = &opened.config {
        progress
            .total_entries
            .store(config.totals.entries(), Ordering::Relaxed);
        progress
            .total_bytes
            .store(config.totals.bytes, Ordering::Relaxed);
    }
    let selection = destination.as_ref().and_then(|d| d.selection.clone());
    let layers = plan.layers;
    let partial = selection.is_some();
    let unpack_options = UnpackOptions {
        max_bytes,
        max_entries,
        select: selection,
        aliases: plan.aliases,
        reserved_prefix: Some(target::STAGING_PREFIX.as_bytes().to_vec()),
        // Every layer blob is checked against its digest, which fixes every byte a restore
        // writes; a check that writes nothing has only the index to measure content by.
        content_digests: destination.is_none(),
    };
    // Native layers are checked against their file indexes as they stream.
    let verified_index = opened.config.is_some();
    let unpacker = match &destination {
        Some(destination) => Unpacker::new(destination.tree, unpack_options),
        None => Unpacker::verify_only(unpack_options),
    };
    // A full restore of a native backup creates as many paths as its config declares (checked
    // against the entry limit when opened).
    let expected_entries = match (&opened.config, partial) {
        (Some(config), false) => config.totals.entries(),
        _ => 0,
    };
    let unpacker = unpacker.expecting(expected_entries);
    let unpacker = Arc::new(unpacker.on_entry(entry_callback(progress)));
    let index_bytes = pipeline::unpack_layers(
        &store,
        &opened,
        &layers,
        unpacker.clone(),
        parallel.max(1),
        progress,
    )
    .await?;
    if plan.all_layers {
        open::check_index_bytes(&opened, index_bytes)?;
    }
    let unpacker = Arc::into_inner(unpacker).expect("all layer tasks finished");
    let result = tokio::task::spawn_blocking(move || unpacker.finish())
        .await
        .expect("finish task")?;
    if let Some(wanted) = result.unmatched.first() {
        return Err(select::unmatched(wanted));
    }
    let report = RestoreReport {
        reference: format!("{}@{}", from.repository, opened.digest),
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

/// The most bytes and entries a restore may write: `--max-size`, the free space (keeping 1%,
/// at most 64 MiB, for everything else on the volume) and free inodes. A backup whose config
/// declares more than fits is refused before any download.
fn write_limits(destination: &Destination, opened: &Opened) -> Result<(u64, u64), RestoreError> {
    let mut max_bytes = destination.max_size.unwrap_or(u64::MAX);
    let mut max_entries = wsr_format::native::MAX_ENTRIES;
    if let Some((free_bytes, free_inodes)) = target::free_space(destination.tree) {
        let reserve = (free_bytes / 100).min(64 << 20);
        max_bytes = max_bytes.min(free_bytes.saturating_sub(reserve));
        max_entries = max_entries.min(free_inodes);
        if let Some(config) = &opened.config
            && destination.selection.is_none()
            && config.totals.bytes > max_bytes
        {
            return Err(RestoreError::NoSpace {
                path: destination.target.to_owned(),
                needed: config.totals.bytes,
                available: max_bytes,
            });
        }
    }
    Ok((max_bytes, max_entries))
}

/// Counts each unpacked entry into the progress; with the crash-test hook set (and only then),
/// also into the hook's counter.
fn entry_callback(progress: &Arc<Progress>) -> EntryCallback {
    let p = progress.clone();
    let count = move |size| {
        p.entries.fetch_add(1, Ordering::Relaxed);
        p.bytes.fetch_add(size, Ordering::Relaxed);
    };
    match test_hooks::abort_after_entries() {
        None => Box::new(count),
        Some(limit) => Box::new(move |size| {
            count(size);
            test_hooks::entry_unpacked(limit);
        }),
    }
}
