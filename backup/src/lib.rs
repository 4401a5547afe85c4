//! wsr-backup: the backup engine. It walks a workspace directory, archives it deterministically,
//! and publishes it to a registry or OCI layout in the `native` (incremental tar+zstd layers) or
//! `dwo` (one gzip tarball, as upstream DWO writes) format.
//!
//! It owns the walk, the layering and reuse decisions, the streaming archive-and-upload
//! pipeline, the publish order (blobs, the manifest under its time-stamped tag, the moving tag
//! last) and retention. It must not unpack or restore anything, talk to Kubernetes, or print:
//! the binary renders progress from [`Progress`] and the [`BackupReport`].

mod archive;
mod beneath;
mod dwo;
pub mod dwo_env;
mod incremental;
mod plan;
mod previous;
mod publish;
mod retention;
mod upload;
pub mod walk;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use wsr_format::reference::Reference;
use wsr_transport::{ConnectOptions, TransportError};

pub use publish::run;

/// Artifact format to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Native,
    Dwo,
}

/// Everything a backup needs. No `Default`: every choice is explicit at the call site.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    pub source: PathBuf,
    /// Repository and moving tag (usually `latest`).
    pub to: Reference,
    pub format: Format,
    pub workspace: Option<String>,
    pub namespace: Option<String>,
    pub workspace_id: Option<String>,
    /// Compression level (zstd 1–19 for native, gzip 1–9 for dwo).
    pub level: i32,
    /// Layers archived and compressed at once (≥ 1; the output does not depend on it).
    pub workers: u32,
    /// Keep this many time-stamped backups; older ones are deleted after a successful publish.
    pub keep: Option<usize>,
    pub skip_unreadable: bool,
    /// Ignore the previous backup: archive every layer again.
    pub full: bool,
    pub connect: ConnectOptions,
}

/// The choices both ways of describing a backup (flags, `--dwo-env`) share; `None` means the
/// default.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Compression level; default 3 (zstd) for native, 1 (gzip) for dwo.
    pub level: Option<i32>,
    /// Layers at once; default [`default_workers`].
    pub workers: Option<u32>,
    pub keep: Option<usize>,
    pub skip_unreadable: bool,
    pub full: bool,
}

/// Most layers compressed at once by default: each holds a compression context, its file index
/// and its upload's buffers, so more would raise the memory a backup needs.
const MAX_DEFAULT_WORKERS: u32 = 4;

/// Layers compressed at once unless told: one per core this process may use (its CPU quota
/// included), at most [`MAX_DEFAULT_WORKERS`]. Each layer is compressed on one thread, so more
/// layers than cores only share them and hold more memory: on 2 cores, 1.32 M small files
/// took as long with 2 workers as with 4 (18-26 s either way) and peaked at 110-113 MiB, not
/// 126-132.
pub fn default_workers() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cores).map_or(MAX_DEFAULT_WORKERS, |n| n.min(MAX_DEFAULT_WORKERS))
}

impl BackupOptions {
    /// Options with the tuning's defaults applied and no workspace identity.
    pub fn new(
        source: PathBuf,
        to: Reference,
        format: Format,
        tuning: Tuning,
        connect: ConnectOptions,
    ) -> BackupOptions {
        let default_level = match format {
            Format::Native => 3,
            Format::Dwo => 1,
        };
        BackupOptions {
            source,
            to,
            format,
            workspace: None,
            namespace: None,
            workspace_id: None,
            level: tuning.level.unwrap_or(default_level),
            workers: tuning.workers.unwrap_or_else(default_workers),
            keep: tuning.keep,
            skip_unreadable: tuning.skip_unreadable,
            full: tuning.full,
            connect,
        }
    }
}

/// Live counters for progress display.
#[derive(Debug, Default)]
pub struct Progress {
    pub total_entries: AtomicU64,
    pub total_bytes: AtomicU64,
    pub entries: AtomicU64,
    pub bytes: AtomicU64,
    pub uploaded: AtomicU64,
}

/// What a backup did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BackupReport {
    /// `repository@digest` of the published manifest.
    pub reference: String,
    pub digest: String,
    pub format: Format,
    /// Tags written, moving tag last.
    pub tags: Vec<String>,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Bytes of regular-file content.
    pub bytes: u64,
    /// Compressed size of the data layers.
    pub stored_bytes: u64,
    /// Bytes actually sent (new blobs, config, manifest).
    pub uploaded_bytes: u64,
    /// The part of `uploaded_bytes` that is data-layer content.
    pub uploaded_layer_bytes: u64,
    pub layers: usize,
    pub reused_layers: usize,
    pub skipped: Vec<String>,
    /// Manifests deleted by `--keep`.
    pub pruned: Vec<String>,
    pub duration_s: f64,
}

/// Why a backup failed. Each variant maps to a documented exit code in the binary.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot read source {path}")]
    Source {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not readable by this user (uid {uid}); fix its permissions or pass --skip-unreadable", uid = unsafe_uid())]
    Unreadable { path: PathBuf },
    #[error(
        "{path} changed while being backed up (its size, or what it is); back up a stopped workspace, or retry"
    )]
    Changed { path: PathBuf },
    /// More entries than a restore accepts (FORMAT.md §8.1), refused before anything is sent.
    #[error(
        "{path} holds more than {max} entries, more than a restore accepts; back up fewer files"
    )]
    TooManyEntries { path: PathBuf, max: u64 },
    #[error("archiving failed: {0}")]
    Archive(std::io::Error),
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The destination names a digest: a backup needs a tag to publish.
    #[error("--to {0}: back up to a tag (e.g. :latest), not a digest")]
    DigestDestination(Reference),
}

fn unsafe_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}
