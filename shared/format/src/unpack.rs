//! Safe unpacking of tar streams into a directory the caller created empty (a staging dir).
//!
//! Threat model: the archive is hostile; the staging directory is private to this process.
//! Nothing outside the root is ever created or modified: every path is checked lexically (no
//! absolute paths, no `..`), and an in-memory model of everything this unpacker created is
//! consulted before touching the disk, so no entry is ever written through a symlink or a file
//! that an earlier entry planted, and no entry replaces another. Files are opened with
//! `O_CREAT|O_EXCL|O_NOFOLLOW`. Hard links may only point at regular files restored by this
//! same unpacker. Device nodes, FIFOs and sockets are never created. setuid/setgid bits are
//! dropped. The total expansion is bounded before each write, with checked arithmetic (a size
//! that would overflow is refused). Sparse files are written as holes. The metadata that precedes
//! an entry (GNU long-name/long-link records, PAX headers, sparse maps) is bounded while it is
//! read ([`MAX_ENTRY_METADATA`]), so a hostile stream cannot make the tar reader buffer it.
//! Top-level names starting with a caller-reserved prefix (the restore's staging directory) are
//! never created. Several tar streams (the layers of one artifact) may be unpacked concurrently
//! into the same root.

use crate::codec::EntryKind;
use crate::digest::{Digest, Hasher};
use crate::native::{IndexEntry, IndexReader};
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Most bytes the tar reader may read to reach one entry: its header plus the GNU long-name and
/// long-link records, PAX headers and sparse-map blocks that describe it. Go's `archive/tar`
/// caps each such record at 1 MiB; a longer name would be refused anyway (4095 bytes at most).
pub const MAX_ENTRY_METADATA: u64 = 1 << 20;

/// Subtrees the directory modes are shared out by ([`Unpacker::finish`]): the walk goes down
/// until a level holds this many directories, or [`DIR_MODE_SPLIT_DEPTH`] levels.
const DIR_MODE_SUBTREES: usize = 64;

/// Deepest level the subtrees are looked for at: the levels above are listed whole, so their
/// paths are held at once.
const DIR_MODE_SPLIT_DEPTH: usize = 8;

/// Most threads applying directory modes.
const MAX_DIR_MODE_THREADS: usize = 4;

/// Entries listed one by one in [`UnpackReport::skipped`]; further ones are only counted.
pub const MAX_SKIPPED_LISTED: usize = 1000;

/// Most bytes of names of hard links (link and target) held until the end of the unpack.
pub const MAX_HARDLINK_NAME_BYTES: u64 = 32 << 20;

/// Longest part of an archive name repeated in a message.
const SHOWN_NAME_BYTES: usize = 256;

/// Why unpacking stopped. Every variant names the entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry that would escape the root, replace something, or is malformed.
    #[error("refusing archive entry {path:?}: {reason}")]
    Unsafe {
        /// The entry's name (shortened when long).
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    #[error(
        "archive expands beyond the limit of {limit} bytes at entry {path:?}; free space or --max-size bounds it"
    )]
    /// The content would exceed `UnpackOptions::max_bytes`.
    TooLarge {
        /// The entry at which the limit was reached.
        path: String,
        /// The limit in bytes.
        limit: u64,
    },
    #[error(
        "archive has more than {limit} entries (at most {} are restored, and no more than the target's free inodes)",
        crate::native::MAX_ENTRIES
    )]
    /// More entries than `UnpackOptions::max_entries`.
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    #[error(
        "corrupt archive: the headers, long-name and PAX records of one entry exceed {limit} bytes"
    )]
    /// One entry's headers and long-name/PAX records exceed the metadata bound (FORMAT.md §8.1).
    MetadataTooLarge {
        /// The bound in bytes.
        limit: u64,
    },
    /// An entry differs from the file index, or the index lists entries the archive lacks.
    #[error("verification failed for {path:?}: {what}")]
    Mismatch {
        /// The entry (empty for missing entries).
        path: String,
        /// What differs.
        what: String,
    },
    /// The tar stream itself cannot be read (bad header, truncated, decompression failed).
    #[error("corrupt archive: {0}")]
    Corrupt(io::Error),
    /// The layer's file index cannot be read within its limits (FORMAT.md §8.1).
    #[error("{0}")]
    Index(io::Error),
    /// Creating or writing an entry below the root failed.
    #[error("cannot write {path}")]
    Io {
        /// The entry.
        path: String,
        /// The operating system's error.
        source: io::Error,
    },
}

impl UnpackError {
    fn unsafe_entry(path: &[u8], reason: impl Into<String>) -> UnpackError {
        UnpackError::Unsafe {
            path: show(path),
            reason: reason.into(),
        }
    }
}

/// An archive name for a message: at most [`SHOWN_NAME_BYTES`] of it, so a hostile name of
/// megabytes is not repeated in logs.
fn show(path: &[u8]) -> String {
    if path.len() <= SHOWN_NAME_BYTES {
        String::from_utf8_lossy(path).into_owned()
    } else {
        format!(
            "{}… ({} bytes)",
            String::from_utf8_lossy(&path[..SHOWN_NAME_BYTES]),
            path.len()
        )
    }
}

/// Limits and choices for one unpack.
#[derive(Clone, Debug)]
pub struct UnpackOptions {
    /// Maximum bytes of file content to write.
    pub max_bytes: u64,
    /// Maximum number of entries.
    pub max_entries: u64,
    /// Only entries equal to or below these (normalised) paths; `None` means everything.
    pub select: Option<Vec<Vec<u8>>>,
    /// With `select`: for a selected hard link whose file is not selected, file path → the
    /// link's path. The file's content is restored at the link's path instead (so a partial
    /// restore never loses a file because its other name was not selected).
    pub aliases: HashMap<Vec<u8>, Vec<u8>>,
    /// Top-level names starting with this are never created (reported as skipped): the caller's
    /// own bookkeeping lives under such names.
    pub reserved_prefix: Option<Vec<u8>>,
    /// Hash each regular file's content and compare it with its index line's digest (native
    /// layers). A caller that writes the tree and verifies each layer blob against its digest
    /// may leave it off: that digest already fixes every byte written (FORMAT.md §6 rule 5). A
    /// check that writes nothing needs it, as the index is then its only measure.
    pub content_digests: bool,
}

/// What was restored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// Regular files.
    pub files: u64,
    /// Directories (explicit entries).
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Hard links created.
    pub hardlinks: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Entries deliberately not created, with the reason (device nodes, FIFOs, …); at most
    /// [`MAX_SKIPPED_LISTED`], then one line counting the rest.
    pub skipped: Vec<(String, String)>,
    /// Top-level directories whose own mode would forbid moving them (no owner write
    /// permission): they were left `mode | 0o700`, and the caller applies `mode` and `mtime`
    /// once they are in their final place.
    pub deferred_dirs: Vec<DeferredDir>,
    /// With `select`: the selected paths that matched no entry of the archive.
    pub unmatched: Vec<Vec<u8>>,
}

/// A directory whose final mode and mtime are applied by the caller (see
/// [`UnpackReport::deferred_dirs`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeferredDir {
    /// The top-level directory's name.
    pub name: crate::native::RawPath,
    /// Its mode from the archive.
    pub mode: u32,
    /// Its mtime from the archive.
    pub mtime: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File,
    Symlink,
}

/// A path's key in the model: a keyed 64-bit hash (SipHash, random keys per unpacker), so the
/// model costs the same per entry whatever the length of its name. A collision, which an
/// archive cannot aim for, can only make an entry be refused: every creation is exclusive
/// (`O_EXCL`, `mkdir`, `symlink` fail on an existing name), a second path with a known key is
/// refused as a duplicate, and a hard link's target is checked on disk (no symlink on the way,
/// a regular file at the end) before it is linked.
type PathKey = u64;

fn path_key(keys: &std::hash::RandomState, path: &[u8]) -> PathKey {
    use std::hash::BuildHasher;
    keys.hash_one(path)
}

/// One created path in one word: its kind (bits 0–1) and, for a directory with its own entry,
/// a flag (bit 2), its mode (bits 3–14) and mtime (bits 15–63, clamped to 0..2^49 seconds).
#[derive(Clone, Copy)]
struct Slot(u64);

impl Slot {
    fn new(node: Node) -> Slot {
        Slot(match node {
            Node::Dir => 0,
            Node::File => 1,
            Node::Symlink => 2,
        })
    }
    fn node(self) -> Node {
        match self.0 & 3 {
            0 => Node::Dir,
            1 => Node::File,
            _ => Node::Symlink,
        }
    }
    fn with_meta(self, mode: u32, mtime: i64) -> Slot {
        let mtime = mtime.clamp(0, (1 << 49) - 1) as u64;
        Slot((self.0 & 3) | 4 | u64::from(mode & 0o7777) << 3 | mtime << 15)
    }
    fn meta(self) -> Option<(u32, i64)> {
        let (mode, mtime) = (((self.0 >> 3) & 0o7777) as u32, (self.0 >> 15) as i64);
        (self.0 & 4 != 0).then_some((mode, mtime))
    }
}

#[derive(Default)]
struct State {
    nodes: HashMap<PathKey, Slot>,
    hardlinks: Vec<(Vec<u8>, Vec<u8>)>,
    /// Bytes of names held in `hardlinks` (bounded by [`MAX_HARDLINK_NAME_BYTES`]).
    hardlink_bytes: u64,
    /// With a selection: which selected paths matched an entry.
    matched: Vec<bool>,
    report: UnpackReport,
    skipped_unlisted: u64,
    /// Reserved top-level names already reported as skipped.
    reserved_reported: std::collections::HashSet<Vec<u8>>,
    entries: u64,
}

impl State {
    fn skip(&mut self, path: &[u8], reason: String) {
        if self.report.skipped.len() < MAX_SKIPPED_LISTED {
            self.report.skipped.push((show(path), reason));
        } else {
            self.skipped_unlisted += 1;
        }
    }
}

/// Unpacks tar streams into `root`, or only checks them; see the module docs for the guarantees.
pub struct Unpacker {
    /// Where entries are written; `None` checks and hashes everything but creates nothing.
    root: Option<PathBuf>,
    keys: std::hash::RandomState,
    options: UnpackOptions,
    state: Mutex<State>,
    on_entry: Option<EntryCallback>,
}

/// Called after each restored entry with its content size (for progress display).
pub type EntryCallback = Box<dyn Fn(u64) + Send + Sync>;

/// Normalises an archive path: strips `./` and redundant slashes; rejects absolute paths, `..`,
/// NUL and over-long names. `Ok(None)` is the archive root itself.
pub fn normalize(raw: &[u8]) -> Result<Option<Vec<u8>>, String> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path".into());
    }
    if raw.contains(&0) {
        return Err("NUL byte in name".into());
    }
    let mut out = Vec::with_capacity(raw.len());
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => continue,
            b".." => return Err("parent-directory (`..`) component".into()),
            c if c.len() > 255 => return Err("name component longer than 255 bytes".into()),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    if out.len() > 4095 {
        return Err("path longer than 4095 bytes".into());
    }
    Ok(if out.is_empty() { None } else { Some(out) })
}

fn parents(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'/')
        .map(move |(i, _)| &path[..i])
}

fn selected(select: &Option<Vec<Vec<u8>>>, path: &[u8]) -> bool {
    select
        .as_deref()
        .is_none_or(|list| path_selected(list, path))
}

/// Whether `path` is one of `selection` or below one of them (component-wise).
pub fn path_selected(selection: &[Vec<u8>], path: &[u8]) -> bool {
    selection.iter().any(|s| {
        path == s.as_slice()
            || (path.len() > s.len() && path.starts_with(s) && path[s.len()] == b'/')
    })
}

fn system_time(mtime: i64) -> SystemTime {
    if mtime >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(mtime as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

impl Unpacker {
    /// Unpacks into `root`, which must exist.
    pub fn new(root: &Path, options: UnpackOptions) -> Unpacker {
        Unpacker::with_root(Some(root.to_owned()), options)
    }

    /// Checks every entry as [`Unpacker::new`] does (content digests as the options ask), but
    /// creates nothing (verify).
    pub fn verify_only(options: UnpackOptions) -> Unpacker {
        Unpacker::with_root(None, options)
    }

    fn with_root(root: Option<PathBuf>, options: UnpackOptions) -> Unpacker {
        let keys = std::hash::RandomState::new();
        let mut state = State::default();
        state
            .nodes
            .insert(path_key(&keys, b""), Slot::new(Node::Dir));
        state.matched = vec![false; options.select.as_ref().map_or(0, Vec::len)];
        Unpacker {
            root,
            keys,
            options,
            state: Mutex::new(state),
            on_entry: None,
        }
    }

    /// Makes room in the model for `entries` paths up front (at most `max_entries`, so a
    /// declared count never sizes more than the limit): a model that grows by doubling briefly
    /// holds its old and its new table at once, a third more memory at a million entries.
    /// Room that is never filled costs its address space and one control byte per slot.
    pub fn expecting(self, entries: u64) -> Unpacker {
        let room = entries.min(self.options.max_entries).saturating_add(1);
        self.state
            .lock()
            .unwrap()
            .nodes
            .reserve(usize::try_from(room).unwrap_or(0));
        self
    }

    /// Reports each restored entry to `callback`.
    pub fn on_entry(mut self, callback: EntryCallback) -> Unpacker {
        self.on_entry = Some(callback);
        self
    }

    /// Where `path` is written; `None` when verifying only.
    fn full(&self, path: &[u8]) -> Option<PathBuf> {
        Some(at(self.root.as_ref()?, path))
    }

    /// The error for an I/O failure at `path`; the name is rendered only if one happens
    /// (rendering it for every call was a visible share of a restore's own CPU).
    fn io_err<'a>(&self, path: &'a [u8]) -> impl FnOnce(io::Error) -> UnpackError + 'a {
        move |source| UnpackError::Io {
            path: show(path),
            source,
        }
    }

    /// Unpacks every entry of one tar stream, up to its end-of-archive marker.
    /// The reader is borrowed so the caller can decide what to do with what follows the marker
    /// (padding, which still counts towards the stream's digest).
    pub fn unpack_tar<R: Read>(&self, reader: &mut R) -> Result<(), UnpackError> {
        self.unpack_stream(reader, None)
    }

    /// Unpacks one native data layer as [`Unpacker::unpack_tar`] does, checking each entry
    /// (type, mode, size, mtime, link, and with [`UnpackOptions::content_digests`] the content
    /// digest) against the next line of the layer's file index, which lists the layer's entries
    /// in the same order (FORMAT.md §4.4): one line is held at a time, whatever the number of
    /// entries. An entry that is not the index's next line, and lines left over at the end of
    /// the layer, fail the layer. The caller checks the line count with [`IndexReader::finish`].
    pub fn unpack_layer<R: Read>(
        &self,
        reader: &mut R,
        index: &mut IndexReader<'_>,
    ) -> Result<(), UnpackError> {
        self.unpack_stream(reader, Some(&mut *index))?;
        let Some(first) = index.next_entry().map_err(UnpackError::Index)? else {
            return Ok(());
        };
        let mut more = 0u64;
        while index.next_entry().map_err(UnpackError::Index)?.is_some() {
            more += 1;
        }
        let what = match more {
            0 => "listed in the file index but missing from the archive".to_owned(),
            n => format!(
                "listed in the file index but missing from the archive (and {n} more after it)"
            ),
        };
        Err(UnpackError::Mismatch {
            path: show(&first.path.0),
            what,
        })
    }

    fn unpack_stream<R: Read>(
        &self,
        reader: &mut R,
        mut index: Option<&mut IndexReader<'_>>,
    ) -> Result<(), UnpackError> {
        let allowance = Rc::new(Cell::new(None));
        let exceeded = Rc::new(Cell::new(false));
        let guard = MetadataGuard {
            inner: reader,
            allowance: allowance.clone(),
            exceeded: exceeded.clone(),
        };
        let mut archive = tar::Archive::new(guard);
        let mut entries = archive.entries().map_err(UnpackError::Corrupt)?;
        // Stored bytes of the previous entry left for the tar reader to skip (never read by us).
        let mut unread = 0u64;
        loop {
            allowance.set(Some(MAX_ENTRY_METADATA.saturating_add(unread)));
            let next = entries.next();
            allowance.set(None);
            let mut entry = match next {
                None => return Ok(()),
                Some(Ok(entry)) => entry,
                Some(Err(_)) if exceeded.get() => {
                    return Err(UnpackError::MetadataTooLarge {
                        limit: MAX_ENTRY_METADATA,
                    });
                }
                Some(Err(e)) => return Err(UnpackError::Corrupt(e)),
            };
            let size = entry.size();
            if entry.header().entry_type() == tar::EntryType::XGlobalHeader
                && size > MAX_ENTRY_METADATA
            {
                // Not buffered by the tar reader, but capped like every other PAX header.
                return Err(UnpackError::MetadataTooLarge {
                    limit: MAX_ENTRY_METADATA,
                });
            }
            let consumed = self.unpack_entry(&mut entry, index.as_deref_mut())?;
            unread = 0;
            if !consumed {
                if entry.header().entry_type() == tar::EntryType::GNUSparse {
                    // Reading it would produce its holes as zeros: let the reader skip the
                    // stored chunks instead.
                    unread = stored_size(&mut entry).saturating_add(511) & !511;
                } else {
                    io::copy(&mut entry, &mut io::sink()).map_err(UnpackError::Corrupt)?;
                }
            }
            if let Some(callback) = &self.on_entry {
                callback(size);
            }
        }
    }

    /// Restores one entry, checked against the next line of `index` (native layers). Returns
    /// whether its data was read to the end.
    fn unpack_entry<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        mut index: Option<&mut IndexReader<'_>>,
    ) -> Result<bool, UnpackError> {
        let sparse = pax_sparse(entry)
            .map_err(|reason| UnpackError::unsafe_entry(&entry.path_bytes(), reason))?;
        let raw = match &sparse {
            Some(s) => s.name.clone(),
            None => entry.path_bytes().into_owned(),
        };
        let header = entry.header();
        let kind = header.entry_type();
        if sparse.is_some() && !matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous)
        {
            return Err(UnpackError::unsafe_entry(
                &raw,
                "GNU sparse PAX records on an entry that is not a regular file",
            ));
        }
        let mode = header.mode().map_err(UnpackError::Corrupt)? & 0o1777; // setuid/setgid dropped
        let mtime = header
            .mtime()
            .map_err(UnpackError::Corrupt)?
            .min(i64::MAX as u64) as i64;
        // A sparse file counts at its full size, like any other (its holes are not written).
        let size = sparse.as_ref().map_or(entry.size(), |s| s.realsize);
        let link = entry.link_name_bytes().map(|l| l.into_owned());

        let Some(path) = normalize(&raw).map_err(|r| UnpackError::unsafe_entry(&raw, r))? else {
            // The archive root (`./`): the target directory itself keeps its own mode.
            return Ok(false);
        };
        let native = index.is_some();
        if kind == tar::EntryType::GNUSparse && native {
            return Err(UnpackError::unsafe_entry(
                &path,
                "GNU sparse entries are not part of the native format",
            ));
        }
        let kind = match kind {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                EntryKind::File
            }
            tar::EntryType::Symlink => EntryKind::Symlink,
            tar::EntryType::Link => EntryKind::Hardlink,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => return Ok(false),
            other => {
                let what = match other {
                    tar::EntryType::Char => "character device",
                    tar::EntryType::Block => "block device",
                    tar::EntryType::Fifo => "FIFO",
                    _ => "unsupported entry type",
                };
                self.state
                    .lock()
                    .unwrap()
                    .skip(&path, format!("{what} not restored"));
                return Ok(false);
            }
        };
        if self.is_reserved(&path) {
            // Not restored, and not checked: its index line (if the index lists it) is passed.
            if let Some(index) = index.as_deref_mut()
                && index
                    .peek()
                    .map_err(UnpackError::Index)?
                    .is_some_and(|e| e.path.0 == path)
            {
                index.next_entry().map_err(UnpackError::Index)?;
            }
            let mut st = self.state.lock().unwrap();
            let top = path.split(|&b| b == b'/').next().unwrap_or_default();
            if st.reserved_reported.insert(top.to_vec()) {
                st.skip(top, "name reserved for wsr's staging directory".into());
            }
            return Ok(false);
        }
        // Unselected entries are skipped (their data is drained; their header is still checked
        // against the index, which keeps the two in step), except files that are restored
        // under an alias.
        let (path, aliased_from) = if selected(&self.options.select, &path) {
            (path, None)
        } else {
            match self.options.aliases.get(&path) {
                Some(alias) if kind == EntryKind::File => (alias.clone(), Some(path)),
                _ => {
                    check_against_index(index, &path, kind, mode, mtime, size, link.as_deref())?;
                    return Ok(false);
                }
            }
        };
        let expected = check_against_index(
            index,
            aliased_from.as_deref().unwrap_or(&path),
            kind,
            mode,
            mtime,
            size,
            link.as_deref(),
        )?;
        let link_target = match kind {
            EntryKind::Hardlink => Some(
                link.as_deref()
                    .map(normalize)
                    .and_then(Result::ok)
                    .flatten()
                    .ok_or_else(|| {
                        UnpackError::unsafe_entry(&path, "hard link with an invalid target")
                    })?,
            ),
            _ => None,
        };
        if let Some(target) = &link_target
            && self.options.aliases.get(target) == Some(&path)
        {
            // This link is where its file's content is restored (from the file's own entry).
            return Ok(false);
        }

        // The model is updated under the lock; the disk is written after it is released, so
        // layers unpacking at once do not wait for each other's system calls.
        let made = {
            let mut st = self.state.lock().unwrap();
            st.entries += 1;
            if st.entries > self.options.max_entries {
                return Err(UnpackError::TooManyEntries {
                    limit: self.options.max_entries,
                });
            }
            let total = st.report.bytes.checked_add(size);
            if kind == EntryKind::File && total.is_none() {
                return Err(UnpackError::unsafe_entry(
                    &path,
                    "file sizes add up beyond 2^64 bytes",
                ));
            }
            if kind == EntryKind::File && total.is_some_and(|t| t > self.options.max_bytes) {
                return Err(UnpackError::TooLarge {
                    path: show(&path),
                    limit: self.options.max_bytes,
                });
            }
            let made = self.claim(&mut st, &path, kind)?;
            match kind {
                EntryKind::Dir => {
                    if let Some(slot) = st.nodes.get_mut(&self.key(&path)) {
                        // A tarball may list a directory twice; a native backup holds every
                        // entry once (FORMAT.md §4.3), whichever layers the two copies are in.
                        if native && slot.meta().is_some() {
                            return Err(UnpackError::unsafe_entry(
                                &path,
                                "duplicate entry: the backup lists this directory twice",
                            ));
                        }
                        *slot = slot.with_meta(mode, mtime);
                    }
                    st.report.dirs += 1;
                }
                EntryKind::Symlink => {
                    if !link
                        .as_ref()
                        .is_some_and(|t| !t.is_empty() && !t.contains(&0))
                    {
                        return Err(UnpackError::unsafe_entry(
                            &path,
                            "symlink without a valid target",
                        ));
                    }
                    st.report.symlinks += 1;
                }
                EntryKind::Hardlink => {
                    let target = link_target.clone().expect("hard links have a target");
                    let target = self.options.aliases.get(&target).cloned().unwrap_or(target);
                    st.hardlink_bytes += (path.len() + target.len()) as u64;
                    if st.hardlink_bytes > MAX_HARDLINK_NAME_BYTES {
                        return Err(UnpackError::unsafe_entry(
                            &path,
                            format!("the hard links' names exceed {MAX_HARDLINK_NAME_BYTES} bytes"),
                        ));
                    }
                    st.hardlinks.push((path.clone(), target));
                }
                EntryKind::File => {
                    st.report.files += 1;
                    st.report.bytes += size;
                }
            }
            made
        };
        for dir in &made {
            self.make_dir(dir).map_err(self.io_err(dir))?;
        }
        if kind == EntryKind::Symlink
            && let (Some(full), Some(target)) = (self.full(&path), &link)
        {
            let target = std::ffi::OsStr::from_bytes(target);
            self.with_parents(&path, || std::os::unix::fs::symlink(target, &full))
                .and_then(|()| set_symlink_mtime(&full, mtime))
                .map_err(self.io_err(&path))?;
        }
        if kind != EntryKind::File {
            return Ok(false);
        }
        let want = expected
            .and_then(|e| e.sha256)
            .filter(|_| self.options.content_digests);
        if self.root.is_none() && want.is_none() {
            // Nothing to write and nothing to compare the content with.
            return Ok(false);
        }
        let digest = match sparse {
            None => self.write_file(&path, entry, size, mode, mtime, want.is_some())?,
            Some(sparse) => {
                let mut content = SparseContent::new(entry, sparse.realsize)
                    .map_err(|reason| UnpackError::unsafe_entry(&path, reason))?;
                let digest =
                    self.write_file(&path, &mut content, size, mode, mtime, want.is_some())?;
                content
                    .finish()
                    .map_err(|reason| UnpackError::unsafe_entry(&path, reason))?;
                digest
            }
        };
        if let (Some(want), Some(digest)) = (want, digest)
            && want != digest
        {
            return Err(UnpackError::Mismatch {
                path: show(&path),
                what: format!("content digest {digest}, index says {want}"),
            });
        }
        Ok(true)
    }

    fn key(&self, path: &[u8]) -> PathKey {
        path_key(&self.keys, path)
    }

    fn node(&self, st: &State, path: &[u8]) -> Option<Node> {
        st.nodes.get(&self.key(path)).map(|slot| slot.node())
    }

    fn is_reserved(&self, path: &[u8]) -> bool {
        let top = path.split(|&b| b == b'/').next().unwrap_or_default();
        self.options
            .reserved_prefix
            .as_deref()
            .is_some_and(|prefix| top.starts_with(prefix))
    }

    /// Records `path` as created by us, with its missing parents. Fails if the path or any
    /// parent is something other than a directory we made. Returns the directories the caller
    /// must create (parents first), once the lock is released.
    fn claim(
        &self,
        st: &mut State,
        path: &[u8],
        kind: EntryKind,
    ) -> Result<Vec<Vec<u8>>, UnpackError> {
        let mut made = Vec::new();
        for parent in parents(path) {
            match self.node(st, parent) {
                Some(Node::Dir) => {}
                Some(Node::Symlink) => {
                    return Err(UnpackError::unsafe_entry(
                        path,
                        format!("would be written through symlink {:?}", show(parent)),
                    ));
                }
                Some(Node::File) => {
                    return Err(UnpackError::unsafe_entry(
                        path,
                        format!("parent {:?} is not a directory", show(parent)),
                    ));
                }
                None => {
                    made.push(parent.to_vec());
                    st.nodes.insert(self.key(parent), Slot::new(Node::Dir));
                }
            }
        }
        let node = match kind {
            EntryKind::Dir => Node::Dir,
            EntryKind::Symlink => Node::Symlink,
            EntryKind::File | EntryKind::Hardlink => Node::File,
        };
        if let Some(select) = &self.options.select {
            for (matched, wanted) in st.matched.iter_mut().zip(select) {
                *matched |= path_selected(std::slice::from_ref(wanted), path);
            }
        }
        match self.node(st, path) {
            // A directory entry for a directory created implicitly (or listed twice) only updates metadata.
            Some(Node::Dir) if node == Node::Dir => Ok(made),
            Some(_) => Err(UnpackError::unsafe_entry(
                path,
                "duplicate entry would replace an earlier one",
            )),
            None => {
                if node == Node::Dir {
                    made.push(path.to_vec());
                }
                st.nodes.insert(self.key(path), Slot::new(node));
                Ok(made)
            }
        }
    }

    /// Creates a directory the model holds as ours. Another layer's thread may have created it
    /// first: an existing entry there can only be that directory, because the staging tree is
    /// private to this process and the model gave the path to no other kind of entry.
    fn make_dir(&self, path: &[u8]) -> io::Result<()> {
        let Some(full) = self.full(path) else {
            return Ok(());
        };
        match self.with_parents(path, || fs::create_dir(&full)) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            made => made,
        }
    }

    /// Runs `create`, which creates `path`. When the parent is missing, another layer's thread
    /// has claimed it in the model but not created it yet: the parents are created here (each
    /// is a directory of ours, or [`Unpacker::claim`] would have refused `path`) and `create`
    /// runs once more.
    fn with_parents<T>(&self, path: &[u8], create: impl Fn() -> io::Result<T>) -> io::Result<T> {
        match create() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let Some(slash) = path.iter().rposition(|&b| b == b'/') else {
                    return Err(e);
                };
                self.make_dir(&path[..slash])?;
                create()
            }
            created => created,
        }
    }

    /// Writes a file's content (holes a sparse entry declares, and all-zero stretches, become
    /// holes) and returns its digest when `hash` is set. The content must be exactly `size`.
    fn write_file(
        &self,
        path: &[u8],
        data: &mut impl FileContent,
        size: u64,
        mode: u32,
        mtime: i64,
        hash: bool,
    ) -> Result<Option<Digest>, UnpackError> {
        let mut hasher = hash.then(Hasher::new);
        // Most files are small: a buffer of their size, not of the largest read, saves zeroing
        // 256 KiB per file (25 GB of memset for 100k files).
        let mut buf = vec![0u8; size.clamp(1, 256 * 1024) as usize];
        let mut ends_in_hole = false;
        let mut file = match self.full(path) {
            Some(full) => Some(
                self.with_parents(path, || {
                    fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                        .open(&full)
                })
                .map_err(self.io_err(path))?,
            ),
            None => None,
        };
        let mut total = 0u64;
        loop {
            let hole = data.hole_ahead();
            if hole > 0 {
                // Declared zeros are skipped, not produced and scanned; the digest still
                // covers them.
                data.pass_hole(hole);
                total += hole;
                if let Some(h) = hasher.as_mut() {
                    h.update_zeros(hole);
                }
                if let Some(f) = file.as_mut() {
                    let hole = i64::try_from(hole).map_err(|_| {
                        UnpackError::unsafe_entry(path, "hole longer than 2^63 bytes")
                    })?;
                    f.seek(io::SeekFrom::Current(hole))
                        .map_err(self.io_err(path))?;
                    ends_in_hole = true;
                }
                continue;
            }
            let n = data.read(&mut buf).map_err(UnpackError::Corrupt)?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if let Some(h) = hasher.as_mut() {
                h.update(&buf[..n]);
            }
            if let Some(f) = file.as_mut() {
                ends_in_hole = buf[..n].iter().all(|&b| b == 0);
                if ends_in_hole {
                    f.seek(io::SeekFrom::Current(n as i64))
                        .map(drop)
                        .map_err(self.io_err(path))?;
                } else {
                    f.write_all(&buf[..n]).map_err(self.io_err(path))?;
                }
            }
        }
        if total != size {
            return Err(UnpackError::Corrupt(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: {total} bytes of content, the header says {size}",
                    show(path)
                ),
            )));
        }
        if let Some(f) = file {
            // A trailing hole exists only once the length is set.
            if ends_in_hole {
                f.set_len(total).map_err(self.io_err(path))?;
            }
            f.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(self.io_err(path))?;
            let t = system_time(mtime);
            f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
                .map_err(self.io_err(path))?;
        }
        Ok(hasher.map(|h| h.finish().0))
    }

    /// Creates hard links and applies directory modes and times (deepest first, after all their
    /// children exist).
    pub fn finish(self) -> Result<UnpackReport, UnpackError> {
        let mut st = std::mem::take(&mut *self.state.lock().unwrap());
        let hardlinks = std::mem::take(&mut st.hardlinks);
        let link_paths: std::collections::HashSet<&[u8]> =
            hardlinks.iter().map(|(p, _)| p.as_slice()).collect();
        for (path, target) in &hardlinks {
            let (path, target) = (path.as_slice(), target.as_slice());
            match self.node(&st, target) {
                // A link to another link entry (a chain) is not something wsr or GNU tar writes.
                Some(Node::File) if !link_paths.contains(target) => {
                    if let Some(root) = &self.root {
                        self.check_link_target(root, target)?;
                        fs::hard_link(at(root, target), at(root, path)).map_err(|source| {
                            UnpackError::Io {
                                path: show(path),
                                source,
                            }
                        })?;
                    }
                    st.report.hardlinks += 1;
                }
                None if self.options.select.is_some() => {
                    let reason = format!(
                        "hard-link target {:?} is outside the selected paths",
                        show(target)
                    );
                    if st.report.skipped.len() < MAX_SKIPPED_LISTED {
                        st.report.skipped.push((show(path), reason));
                    } else {
                        st.skipped_unlisted += 1;
                    }
                }
                _ => {
                    return Err(UnpackError::unsafe_entry(
                        path,
                        format!(
                            "hard link to {:?}, which is not a regular file of this archive",
                            show(target)
                        ),
                    ));
                }
            }
        }
        if let Some(root) = &self.root {
            self.apply_dir_modes(root, &mut st)?;
        }
        if let Some(selection) = &self.options.select {
            st.report.unmatched = selection
                .iter()
                .zip(&st.matched)
                .filter(|(_, matched)| !**matched)
                .map(|(s, _)| s.clone())
                .collect();
        }
        if st.skipped_unlisted > 0 {
            let more = format!("and {} more skipped entries", st.skipped_unlisted);
            st.report.skipped.push(("…".into(), more));
        }
        Ok(st.report)
    }
}

impl Unpacker {
    /// A hard link's target, checked on disk: every parent a real directory (never a symlink),
    /// the target itself a regular file. Only what this unpacker created is below the root.
    fn check_link_target(&self, root: &Path, target: &[u8]) -> Result<(), UnpackError> {
        let refuse =
            |why: &str| UnpackError::unsafe_entry(target, format!("hard-link target {why}"));
        for parent in parents(target) {
            let meta = fs::symlink_metadata(at(root, parent)).map_err(self.io_err(parent))?;
            if !meta.is_dir() {
                return Err(refuse("is below something that is not a directory"));
            }
        }
        let meta = fs::symlink_metadata(at(root, target)).map_err(self.io_err(target))?;
        if !meta.is_file() {
            return Err(refuse("is not a regular file"));
        }
        Ok(())
    }

    /// Applies the directories' own modes and times, children before their parent (a
    /// read-only directory is filled first), by walking what this unpacker created. Top-level
    /// directories without owner rwx are left writable and reported in `deferred_dirs`.
    ///
    /// It is a `chmod` and a `utimes` in the kernel for every directory, about 10 µs each on one
    /// core (0.35 s of a 1 GB restore, 2.5 s at 10 GB), after the last layer: so the walk goes
    /// down level by level until one holds [`DIR_MODE_SUBTREES`] directories, threads take
    /// those subtrees one at a time, and the levels above are done last, deepest first.
    fn apply_dir_modes(&self, root: &Path, st: &mut State) -> Result<(), UnpackError> {
        let split = self.split_into_subtrees(root)?;
        let nodes = &st.nodes;
        let mut deferred = self.apply_subtrees(root, &split.subtrees, nodes)?;
        for rel in split.above.iter().rev() {
            deferred.extend(self.apply_own(root, rel, nodes)?);
        }
        deferred.sort_by(|a, b| a.name.0.cmp(&b.name.0));
        st.report.deferred_dirs = deferred;
        Ok(())
    }

    /// Lists the staged tree level by level, down to the first level with
    /// [`DIR_MODE_SUBTREES`] directories (see [`Split`]).
    fn split_into_subtrees(&self, root: &Path) -> Result<Split, UnpackError> {
        let mut above = Vec::new();
        let mut level = self.subdirs(root, &[])?;
        for _ in 1..DIR_MODE_SPLIT_DEPTH {
            if level.len() >= DIR_MODE_SUBTREES {
                break;
            }
            let mut next = Vec::new();
            for rel in &level {
                next.extend(self.subdirs(root, rel)?);
            }
            if next.is_empty() {
                break;
            }
            above.append(&mut level);
            level = next;
        }
        Ok(Split {
            above,
            subtrees: level,
        })
    }

    /// Applies the modes of every subtree (its root last), the subtrees taken one at a time by
    /// up to [`MAX_DIR_MODE_THREADS`] threads; returns the top-level directories deferred.
    fn apply_subtrees(
        &self,
        root: &Path,
        subtrees: &[Vec<u8>],
        nodes: &HashMap<PathKey, Slot>,
    ) -> Result<Vec<DeferredDir>, UnpackError> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
        let (next, failed) = (AtomicUsize::new(0), AtomicBool::new(false));
        let take_subtrees = || -> Result<Vec<DeferredDir>, UnpackError> {
            let mut deferred = Vec::new();
            while let Some(rel) = subtrees.get(next.fetch_add(1, Relaxed)) {
                if failed.load(Relaxed) {
                    break;
                }
                let done = self
                    .apply_below(root, &mut rel.clone(), nodes)
                    .and_then(|()| self.apply_own(root, rel, nodes));
                match done {
                    Ok(own) => deferred.extend(own),
                    Err(e) => {
                        failed.store(true, Relaxed);
                        return Err(e);
                    }
                }
            }
            Ok(deferred)
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_DIR_MODE_THREADS)
            .min(subtrees.len());
        if threads <= 1 {
            return take_subtrees();
        }
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads).map(|_| s.spawn(take_subtrees)).collect();
            let mut deferred = Vec::new();
            for worker in workers {
                deferred.extend(worker.join().expect("directory-mode thread")?);
            }
            Ok(deferred)
        })
    }

    /// The names of the subdirectories of `rel` (a directory this unpacker created).
    fn subdir_names(&self, root: &Path, rel: &[u8]) -> Result<Vec<OsString>, UnpackError> {
        let mut names = Vec::new();
        for e in fs::read_dir(at(root, rel)).map_err(self.io_err(rel))? {
            let e = e.map_err(self.io_err(rel))?;
            if e.file_type().map_err(self.io_err(rel))?.is_dir() {
                names.push(e.file_name());
            }
        }
        Ok(names)
    }

    /// The subdirectories of `rel`, as paths relative to the root.
    fn subdirs(&self, root: &Path, rel: &[u8]) -> Result<Vec<Vec<u8>>, UnpackError> {
        let names = self.subdir_names(root, rel)?;
        Ok(names.iter().map(|name| child(rel, name)).collect())
    }

    /// Applies the modes and times of every directory below `rel`, children before their
    /// parent. Names first, then recursion: one open directory at a time, whatever the depth.
    fn apply_below(
        &self,
        root: &Path,
        rel: &mut Vec<u8>,
        nodes: &HashMap<PathKey, Slot>,
    ) -> Result<(), UnpackError> {
        for name in self.subdir_names(root, rel)? {
            let len = rel.len();
            rel.push(b'/');
            rel.extend_from_slice(name.as_bytes());
            self.apply_below(root, rel, nodes)?;
            // Only top-level directories are deferred, and this one is below one.
            self.apply_own(root, rel, nodes)?;
            rel.truncate(len);
        }
        Ok(())
    }

    /// Applies one directory's own mode and mtime, if it had an entry of its own. Moving a
    /// directory to another parent needs write permission on it: a top-level directory keeps
    /// owner rwx until the caller has moved it, and is returned for the caller to finish.
    fn apply_own(
        &self,
        root: &Path,
        rel: &[u8],
        nodes: &HashMap<PathKey, Slot>,
    ) -> Result<Option<DeferredDir>, UnpackError> {
        let Some((mode, mtime)) = nodes.get(&self.key(rel)).and_then(|s| s.meta()) else {
            return Ok(None);
        };
        let top_level = !rel.contains(&b'/');
        let deferred = (top_level && mode & 0o700 != 0o700).then(|| DeferredDir {
            name: crate::native::RawPath(rel.to_vec()),
            mode,
            mtime,
        });
        let applied = if deferred.is_some() {
            mode | 0o700
        } else {
            mode
        };
        let t = system_time(mtime);
        let opened = fs::File::open(at(root, rel)).map_err(self.io_err(rel))?;
        opened
            .set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
            .and_then(|()| opened.set_permissions(fs::Permissions::from_mode(applied)))
            .map_err(self.io_err(rel))?;
        Ok(deferred)
    }
}

/// Where an archive path (relative, normalised) is below `root`.
fn at(root: &Path, path: &[u8]) -> PathBuf {
    root.join(std::ffi::OsStr::from_bytes(path))
}

/// The path of `name` inside the directory `rel` (the root when `rel` is empty).
fn child(rel: &[u8], name: &std::ffi::OsStr) -> Vec<u8> {
    let mut path = rel.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name.as_bytes());
    path
}

/// The staged tree's directories as [`Unpacker::apply_dir_modes`] shares them out.
struct Split {
    /// The levels above the split, parents first, each under [`DIR_MODE_SUBTREES`] directories.
    above: Vec<Vec<u8>>,
    /// The roots of the subtrees below it: the first level with [`DIR_MODE_SUBTREES`]
    /// directories, [`DIR_MODE_SPLIT_DEPTH`] levels down, or the last level.
    subtrees: Vec<Vec<u8>>,
}

/// Checks an entry's header against the next line of its layer's file index (native layers;
/// without an index there is nothing to check) and returns that line.
fn check_against_index(
    index: Option<&mut IndexReader<'_>>,
    path: &[u8],
    kind: EntryKind,
    mode: u32,
    mtime: i64,
    size: u64,
    link: Option<&[u8]>,
) -> Result<Option<IndexEntry>, UnpackError> {
    let Some(index) = index else {
        return Ok(None);
    };
    let mismatch = |what: String| UnpackError::Mismatch {
        path: show(path),
        what,
    };
    let want = match index.next_entry().map_err(UnpackError::Index)? {
        None => {
            return Err(mismatch(
                "entry is not in the file index (the layer's index has no more lines)".into(),
            ));
        }
        Some(want) if want.path.0 != path => {
            return Err(mismatch(format!(
                "entry is not in the file index at this point (the layer's index lists {:?} next)",
                show(&want.path.0)
            )));
        }
        Some(want) => want,
    };
    let size = if kind == EntryKind::File { size } else { 0 };
    let differs = if want.kind != kind {
        Some(format!("type {kind:?}, index says {:?}", want.kind))
    } else if want.mode & 0o1777 != mode {
        Some(format!("mode {mode:o}, index says {:o}", want.mode))
    } else if want.size != size {
        Some(format!("size {size}, index says {}", want.size))
    } else if want.mtime.max(0) != mtime {
        Some(format!("mtime {mtime}, index says {}", want.mtime))
    } else if want.link.as_ref().map(|l| l.0.as_slice())
        != link.filter(|_| kind != EntryKind::Dir && kind != EntryKind::File)
    {
        Some("link target differs from the index".into())
    } else {
        None
    };
    match differs {
        Some(what) => Err(mismatch(what)),
        None => Ok(Some(want)),
    }
}

/// A PAX GNU sparse 1.0 entry's real name and size (FORMAT.md §3.2).
struct PaxSparse {
    name: Vec<u8>,
    realsize: u64,
}

/// Reads the entry's PAX records for GNU sparse 1.0. `Ok(None)` when there are none; an error
/// for other sparse versions (0.x keeps its map in the PAX records; not supported) or
/// incomplete records.
fn pax_sparse<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Option<PaxSparse>, String> {
    let Some(pax) = entry.pax_extensions().map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let (mut major, mut minor, mut name, mut realsize, mut any) = (None, None, None, None, false);
    for record in pax {
        let record = record.map_err(|e| format!("bad PAX record: {e}"))?;
        let value = record.value_bytes();
        match record.key_bytes() {
            b"GNU.sparse.major" => major = Some(value.to_vec()),
            b"GNU.sparse.minor" => minor = Some(value.to_vec()),
            b"GNU.sparse.name" => name = Some(value.to_vec()),
            b"GNU.sparse.realsize" => {
                realsize = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok())
            }
            key if key.starts_with(b"GNU.sparse.") => any = true,
            _ => {}
        }
    }
    if major.is_none() && minor.is_none() && name.is_none() && realsize.is_none() && !any {
        return Ok(None);
    }
    if major.as_deref() != Some(b"1") || minor.as_deref() != Some(b"0") {
        return Err("GNU sparse format other than PAX 1.0 is not supported".into());
    }
    match (name, realsize) {
        (Some(name), Some(realsize)) => Ok(Some(PaxSparse { name, realsize })),
        _ => Err("GNU sparse 1.0 entry without a valid name or real size".into()),
    }
}

/// A PAX GNU sparse 1.0 entry's content as the file it stands for: the map at the start of
/// the stored data is read (at most [`MAX_ENTRY_METADATA`] bytes) and checked (data runs
/// ascending, not overlapping, within the real size), then reads yield zeros for the holes
/// and the stored bytes for the runs.
struct SparseContent<'a, R> {
    stored: &'a mut R,
    runs: Vec<(u64, u64)>,
    next: usize,
    pos: u64,
    size: u64,
}

impl<'a, R: Read> SparseContent<'a, R> {
    fn new(stored: &'a mut R, size: u64) -> Result<Self, String> {
        let mut numbers: Vec<u64> = Vec::new();
        let mut wanted = None;
        let mut digits: Option<u64> = None;
        let mut read = 0u64;
        let mut block = [0u8; 512];
        while wanted.is_none_or(|w| numbers.len() < w) {
            if read >= MAX_ENTRY_METADATA {
                return Err(format!("sparse map longer than {MAX_ENTRY_METADATA} bytes"));
            }
            stored
                .read_exact(&mut block)
                .map_err(|e| format!("truncated sparse map: {e}"))?;
            read += 512;
            for &b in &block {
                if wanted.is_some_and(|w| numbers.len() >= w) {
                    break; // the rest of the block is padding
                }
                match b {
                    b'0'..=b'9' => {
                        let d = u64::from(b - b'0');
                        digits = Some(
                            digits
                                .unwrap_or(0)
                                .checked_mul(10)
                                .and_then(|v| v.checked_add(d))
                                .ok_or("number in the sparse map overflows")?,
                        );
                    }
                    b'\n' => {
                        numbers.push(digits.take().ok_or("empty line in the sparse map")?);
                        if wanted.is_none() {
                            let runs = usize::try_from(numbers[0])
                                .ok()
                                .and_then(|n| n.checked_mul(2))
                                .ok_or("too many runs in the sparse map")?;
                            wanted = Some(1 + runs);
                        }
                    }
                    _ => return Err("sparse map holds something other than numbers".into()),
                }
            }
        }
        let mut runs = Vec::with_capacity(numbers.len() / 2);
        let mut end = 0u64;
        for pair in numbers[1..].chunks_exact(2) {
            let (offset, len) = (pair[0], pair[1]);
            let run_end = offset
                .checked_add(len)
                .filter(|&e| offset >= end && e <= size)
                .ok_or("sparse map runs overlap, go backwards or pass the real size")?;
            runs.push((offset, len));
            end = run_end;
        }
        Ok(SparseContent {
            stored,
            runs,
            next: 0,
            pos: 0,
            size,
        })
    }

    /// Checks that the stored data held exactly the map's runs.
    fn finish(self) -> Result<(), String> {
        let mut extra = [0u8; 1];
        match self.stored.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(_) => Err("sparse entry stores more data than its map lists".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A file's content as [`Unpacker::write_file`] reads it: bytes, and the holes declared ahead.
trait FileContent: Read {
    /// Zero bytes at the current position that the archive declares a hole (not stored).
    fn hole_ahead(&mut self) -> u64 {
        0
    }

    /// Moves past `len` bytes of [`FileContent::hole_ahead`].
    fn pass_hole(&mut self, len: u64) {
        debug_assert_eq!(len, 0, "only sparse content has holes");
    }
}

impl<R: Read> FileContent for tar::Entry<'_, R> {}

impl<R: Read> FileContent for SparseContent<'_, R> {
    fn hole_ahead(&mut self) -> u64 {
        let (hole_end, _) = self.around();
        hole_end - self.pos
    }

    fn pass_hole(&mut self, len: u64) {
        self.pos += len;
    }
}

impl<R: Read> SparseContent<'_, R> {
    /// Moves past the runs that end at or before the current position (each run once, so a
    /// map of many empty runs costs its length, not its square), then returns where the hole
    /// at the position ends and where the run after it ends (both the real size past the last
    /// run).
    fn around(&mut self) -> (u64, u64) {
        while let Some(&(offset, len)) = self.runs.get(self.next) {
            if self.pos < offset + len {
                return (offset.max(self.pos), offset + len);
            }
            self.next += 1;
        }
        (self.size, self.size)
    }
}

impl<R: Read> Read for SparseContent<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let (hole_end, run_end) = self.around();
        let (limit, zeros) = if self.pos < hole_end {
            (hole_end - self.pos, true)
        } else {
            (run_end - self.pos, false)
        };
        let n = out.len().min(usize::try_from(limit).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        let got = if zeros {
            out[..n].fill(0);
            n
        } else {
            match self.stored.read(&mut out[..n])? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                got => got,
            }
        };
        self.pos += got as u64;
        Ok(got)
    }
}

/// The bytes a GNU sparse entry occupies in the stream (its `size()` is the expanded size).
fn stored_size<R: Read>(entry: &mut tar::Entry<'_, R>) -> u64 {
    let from_pax = entry.pax_extensions().ok().flatten().and_then(|pax| {
        pax.filter_map(Result::ok)
            .find(|e| e.key_bytes() == b"size")
            .and_then(|e| std::str::from_utf8(e.value_bytes()).ok()?.parse().ok())
    });
    from_pax.unwrap_or_else(|| entry.header().entry_size().unwrap_or(u64::MAX))
}

/// Bounds what the tar reader reads while it looks for the next entry (see
/// [`MAX_ENTRY_METADATA`]): the tar crate buffers long names and PAX headers whole, so the
/// limit has to be enforced underneath it. `allowance` is `None` while entry data is read.
struct MetadataGuard<R> {
    inner: R,
    allowance: Rc<Cell<Option<u64>>>,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for MetadataGuard<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.allowance.get() else {
            return self.inner.read(out);
        };
        if left == 0 {
            self.exceeded.set(true);
            return Err(io::Error::other("entry metadata too large"));
        }
        let want = out.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut out[..want])?;
        self.allowance.set(Some(left - n as u64));
        Ok(n)
    }
}

fn set_symlink_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let ts = libc::timespec {
        tv_sec: mtime.max(0) as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    // SAFETY: `c` is a valid NUL-terminated path and `times` points at two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Normalises user-given `--paths` selections with the same rules as archive paths.
pub fn normalize_selection(paths: &[String]) -> Result<Vec<Vec<u8>>, SelectionError> {
    paths
        .iter()
        .map(|p| match normalize(p.as_bytes()) {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Err(SelectionError::Root { path: p.clone() }),
            Err(reason) => Err(SelectionError::Unsafe {
                path: p.clone(),
                reason,
            }),
        })
        .collect()
}

/// Why a `--paths` entry cannot select part of a backup.
#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    /// The entry names the archive root itself.
    #[error("--paths {path:?} names the root; omit --paths to restore everything")]
    Root {
        /// The entry as given.
        path: String,
    },
    /// The entry is not a relative path below the root (absolute, `..`, NUL, too long).
    #[error("--paths {path:?}: {reason}")]
    Unsafe {
        /// The entry as given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_keeps_kind_mode_and_mtime() {
        for node in [Node::Dir, Node::File, Node::Symlink] {
            assert_eq!(Slot::new(node).node(), node);
            assert_eq!(Slot::new(node).meta(), None);
        }
        let slot = Slot::new(Node::Dir).with_meta(0o1755, 1_700_000_000);
        assert_eq!(slot.node(), Node::Dir);
        assert_eq!(slot.meta(), Some((0o1755, 1_700_000_000)));
        let clamped = Slot::new(Node::Dir).with_meta(0o7777, i64::MAX).meta();
        assert_eq!(clamped, Some((0o7777, (1 << 49) - 1)));
        assert_eq!(Slot::new(Node::Dir).with_meta(0, -5).meta(), Some((0, 0)));
    }

    use crate::codec::{EntryHeader, TarWriter};
    use std::os::unix::fs::MetadataExt;

    /// A tar stream holding one sparse file `disk.img` of `size` bytes with `runs` of data
    /// (each run's bytes are its index + 1), written by wsr's writer.
    fn sparse_tar(size: u64, runs: &[(u64, u64)]) -> (Vec<u8>, Vec<u8>) {
        let mut content = vec![0u8; size as usize];
        let mut stored = Vec::new();
        for (i, &(offset, len)) in runs.iter().enumerate() {
            let bytes = vec![i as u8 + 1; len as usize];
            content[offset as usize..(offset + len) as usize].copy_from_slice(&bytes);
            stored.extend_from_slice(&bytes);
        }
        let mut w = TarWriter::new(Vec::new(), false);
        let dir = EntryHeader {
            path: b"vm",
            kind: EntryKind::Dir,
            mode: 0o755,
            mtime: 1_700_000_000,
            size: 0,
            link: None,
        };
        w.append(&dir, io::empty()).unwrap();
        let header = EntryHeader {
            path: b"vm/disk.img",
            kind: EntryKind::File,
            mode: 0o640,
            mtime: 1_700_000_000,
            size,
            link: None,
        };
        w.append_sparse(&header, runs, &stored[..]).unwrap();
        (w.finish().unwrap(), content)
    }

    fn options() -> UnpackOptions {
        UnpackOptions {
            max_bytes: u64::MAX,
            max_entries: 1000,
            select: None,
            aliases: HashMap::new(),
            reserved_prefix: None,
            content_digests: true,
        }
    }

    fn index_line(content: &[u8]) -> IndexEntry {
        let mut h = Hasher::new();
        h.update(content);
        IndexEntry {
            path: crate::native::RawPath(b"vm/disk.img".to_vec()),
            kind: EntryKind::File,
            mode: 0o640,
            mtime: 1_700_000_000,
            size: content.len() as u64,
            sha256: Some(h.finish().0),
            link: None,
        }
    }

    #[test]
    fn pax_sparse_entries_round_trip_as_holes_and_match_the_index() {
        let size = 64 << 20;
        let runs = [(0, 4096), (32 << 20, 8192), (size - 512, 512)];
        let (tar, content) = sparse_tar(size, &runs);
        assert!(
            tar.len() < 64 << 10,
            "holes must not be stored: {} bytes",
            tar.len()
        );
        let dir = tempfile::tempdir().unwrap();
        let dir_line = IndexEntry {
            path: crate::native::RawPath(b"vm".to_vec()),
            kind: EntryKind::Dir,
            mode: 0o755,
            mtime: 1_700_000_000,
            size: 0,
            sha256: None,
            link: None,
        };
        let expected = vec![dir_line.clone(), index_line(&content)];
        let unpacker = Unpacker::new(dir.path(), options());
        unpack_indexed(&unpacker, &tar, &expected).unwrap();
        let path = dir.path().join("vm/disk.img");
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), size);
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert!(
            meta.blocks() * 512 <= 1 << 20,
            "{} blocks allocated",
            meta.blocks()
        );
        assert_eq!(fs::read(&path).unwrap(), content);

        // A different content digest in the index fails the entry.
        let mut wrong = content.clone();
        wrong[1] = 9;
        let dir = tempfile::tempdir().unwrap();
        let unpacker = Unpacker::new(dir.path(), options());
        let err = unpack_indexed(&unpacker, &tar, &[dir_line, index_line(&wrong)]).unwrap_err();
        assert!(matches!(err, UnpackError::Mismatch { .. }), "{err}");
    }

    /// Unpacks `tar` as a native layer whose file index is `lines`, and checks the line count.
    fn unpack_indexed(
        unpacker: &Unpacker,
        tar: &[u8],
        lines: &[IndexEntry],
    ) -> Result<(), UnpackError> {
        let compressed = crate::native::write_index(lines).unwrap();
        let budget = crate::native::IndexBudget::default();
        let mut index = IndexReader::new(&compressed[..], lines.len() as u64, &budget).unwrap();
        unpacker.unpack_layer(&mut &tar[..], &mut index)?;
        index.finish().map(drop).map_err(UnpackError::Index)
    }

    fn line(path: &str, kind: EntryKind, content: &[u8]) -> IndexEntry {
        let file = kind == EntryKind::File;
        IndexEntry {
            path: crate::native::RawPath(path.as_bytes().to_vec()),
            kind,
            mode: if file { 0o644 } else { 0o755 },
            mtime: 1_700_000_000,
            size: if file { content.len() as u64 } else { 0 },
            sha256: file.then(|| Digest::of(content)),
            link: None,
        }
    }

    fn tar_of(entries: &[(&str, EntryKind, &[u8])]) -> Vec<u8> {
        let mut w = TarWriter::new(Vec::new(), false);
        for &(path, kind, content) in entries {
            let header = EntryHeader {
                path: path.as_bytes(),
                kind,
                mode: if kind == EntryKind::File {
                    0o644
                } else {
                    0o755
                },
                mtime: 1_700_000_000,
                size: content.len() as u64,
                link: None,
            };
            w.append(&header, content).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn zero_runs_become_holes_and_every_file_keeps_its_length_and_bytes() {
        use EntryKind::File;
        let mut tail_zeros = vec![7u8; 10_000];
        tail_zeros.resize(600 << 10, 0);
        let mut head_zeros = vec![0u8; 600 << 10];
        head_zeros.extend_from_slice(b"end");
        let all_zeros = vec![0u8; 300 << 10];
        let files: [(&str, &[u8]); 5] = [
            ("empty", b""),
            ("small", b"hello"),
            ("tail-zeros", &tail_zeros),
            ("head-zeros", &head_zeros),
            ("all-zeros", &all_zeros),
        ];
        let entries: Vec<(&str, EntryKind, &[u8])> =
            files.iter().map(|&(p, c)| (p, File, c)).collect();
        let dir = tempfile::tempdir().unwrap();
        let unpacker = Unpacker::new(dir.path(), options());
        unpacker.unpack_tar(&mut &tar_of(&entries)[..]).unwrap();
        unpacker.finish().unwrap();
        for (path, content) in files {
            let restored = dir.path().join(path);
            assert_eq!(fs::read(&restored).unwrap(), content, "{path}");
            let meta = fs::metadata(&restored).unwrap();
            assert_eq!(meta.len(), content.len() as u64, "{path}");
        }
        let allocated = |p: &str| {
            std::os::unix::fs::MetadataExt::blocks(&fs::metadata(dir.path().join(p)).unwrap()) * 512
        };
        assert!(allocated("all-zeros") < 300 << 10, "all-zeros is a hole");
        assert!(
            allocated("tail-zeros") < 600 << 10,
            "the zero tail is a hole"
        );
    }

    #[test]
    fn each_layer_is_checked_against_its_index_in_order() {
        use EntryKind::{Dir, File};
        let entries: [(&str, EntryKind, &[u8]); 3] =
            [("d", Dir, b""), ("d/a", File, b"aa"), ("d/b", File, b"bbb")];
        let tar = tar_of(&entries);
        let honest: Vec<IndexEntry> = entries.iter().map(|&(p, k, c)| line(p, k, c)).collect();
        let run = |lines: &[IndexEntry], tar: &[u8]| {
            let unpacker = Unpacker::verify_only(options());
            unpack_indexed(&unpacker, tar, lines)
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(run(&honest, &tar), None);

        let swapped = [honest[0].clone(), honest[2].clone(), honest[1].clone()];
        let err = run(&swapped, &tar).unwrap();
        assert!(
            err.contains("\"d/a\": entry is not in the file index at this point"),
            "{err}"
        );
        assert!(err.contains("lists \"d/b\" next"), "{err}");

        let err = run(&honest[..2], &tar).unwrap();
        assert!(
            err.contains(
                "\"d/b\": entry is not in the file index (the layer's index has no more lines)"
            ),
            "{err}"
        );

        let mut extra = honest.clone();
        extra.push(line("d/c", File, b""));
        extra.push(line("d/d", File, b""));
        let err = run(&extra, &tar).unwrap();
        assert!(err.contains("\"d/c\": listed in the file index but missing from the archive (and 1 more after it)"), "{err}");

        let mut lying = honest.clone();
        lying[1].mode = 0o600;
        let err = run(&lying, &tar).unwrap();
        assert!(err.contains("\"d/a\": mode 644, index says 600"), "{err}");
    }

    /// Layers unpacking at once claim directories in the model under the lock and create them
    /// after it: a layer may find a directory claimed but not made yet, or made by another.
    #[test]
    fn a_layer_creates_directories_another_layer_claimed_or_already_made() {
        use EntryKind::{Dir, File};
        let root = tempfile::tempdir().unwrap();
        let unpacker = Unpacker::new(root.path(), options());
        unpacker
            .unpack_tar(&mut &tar_of(&[("a/b", Dir, b"")])[..])
            .unwrap();
        // Claimed, not made yet (the other layer has not run its mkdir).
        fs::remove_dir(root.path().join("a/b")).unwrap();
        fs::remove_dir(root.path().join("a")).unwrap();
        // Made by another layer between this one's claim and its mkdir.
        fs::create_dir(root.path().join("c")).unwrap();
        let mut w = TarWriter::new(Vec::new(), false);
        let link = EntryHeader {
            path: b"a/b/link",
            kind: EntryKind::Symlink,
            mode: 0o777,
            mtime: 1_700_000_000,
            size: 0,
            link: Some(b"f"),
        };
        w.append(&link, io::empty()).unwrap();
        let layer = [
            w.finish().unwrap(),
            tar_of(&[("a/b/f", File, b"x"), ("c/g", File, b"y")]),
        ];
        for tar in &layer {
            unpacker.unpack_tar(&mut &tar[..]).unwrap();
        }
        unpacker.finish().unwrap();
        let read = |p: &str| fs::read(root.path().join(p)).unwrap();
        assert_eq!(read("a/b/link"), b"x");
        assert_eq!(read("c/g"), b"y");
        // A file where a directory was claimed is still refused, parents or not.
        let unpacker = Unpacker::new(root.path(), options());
        let clash = tar_of(&[("d", File, b""), ("d/e", File, b"")]);
        let err = unpacker.unpack_tar(&mut &clash[..]).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
    }

    #[test]
    fn a_native_backup_lists_each_directory_once() {
        use EntryKind::Dir;
        let layer = tar_of(&[("d", Dir, b"")]);
        let lines = [line("d", Dir, b"")];
        let unpacker = Unpacker::verify_only(options());
        unpack_indexed(&unpacker, &layer, &lines).unwrap();
        let err = unpack_indexed(&unpacker, &layer, &lines).unwrap_err();
        assert!(
            err.to_string().contains("lists this directory twice"),
            "{err}"
        );
        // A tarball may.
        let unpacker = Unpacker::verify_only(options());
        unpacker.unpack_tar(&mut &layer[..]).unwrap();
        unpacker.unpack_tar(&mut &layer[..]).unwrap();
    }

    #[test]
    fn unselected_entries_are_still_checked_against_the_index() {
        use EntryKind::{Dir, File};
        let entries: [(&str, EntryKind, &[u8]); 3] =
            [("a", Dir, b""), ("a/f", File, b"x"), ("b", Dir, b"")];
        let tar = tar_of(&entries);
        let mut lines: Vec<IndexEntry> = entries.iter().map(|&(p, k, c)| line(p, k, c)).collect();
        let mut only_b = options();
        only_b.select = Some(vec![b"b".to_vec()]);
        let unpacker = Unpacker::verify_only(only_b.clone());
        unpack_indexed(&unpacker, &tar, &lines).unwrap();
        lines[1].size = 7;
        let unpacker = Unpacker::verify_only(only_b);
        let err = unpack_indexed(&unpacker, &tar, &lines).unwrap_err();
        assert!(err.to_string().contains("size 1, index says 7"), "{err}");
    }

    #[test]
    fn gnu_tar_reads_wsr_sparse_entries_and_wsr_reads_gnu_tar_ones() {
        let Ok(version) = std::process::Command::new("tar").arg("--version").output() else {
            panic!("GNU tar is needed for this test (Debian package `tar`)");
        };
        assert!(String::from_utf8_lossy(&version.stdout).contains("GNU tar"));
        let size = 16 << 20;
        let (tar, content) = sparse_tar(size, &[(1 << 20, 4096), (size, 0)]);
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.tar"), &tar).unwrap();
        fs::create_dir(dir.path().join("out")).unwrap();
        let out = std::process::Command::new("tar")
            .args(["-xf", "a.tar", "-C", "out"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let extracted = dir.path().join("out/vm/disk.img");
        assert_eq!(fs::read(&extracted).unwrap(), content);
        assert!(fs::metadata(&extracted).unwrap().blocks() * 512 <= 1 << 20);

        // GNU tar's own PAX sparse 1.0 archive of that file.
        let out = std::process::Command::new("tar")
            .args([
                "--format=posix",
                "--sparse",
                "-cf",
                "gnu.tar",
                "-C",
                "out",
                "vm",
            ])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let gnu = fs::read(dir.path().join("gnu.tar")).unwrap();
        let back = dir.path().join("back");
        fs::create_dir(&back).unwrap();
        Unpacker::new(&back, options())
            .unpack_tar(&mut &gnu[..])
            .unwrap();
        let restored = back.join("vm/disk.img");
        assert_eq!(fs::read(&restored).unwrap(), content);
        assert!(fs::metadata(&restored).unwrap().blocks() * 512 <= 1 << 20);
    }

    /// Replaces the sparse map of a one-entry archive from [`sparse_tar`] (same length).
    fn with_map(tar: &[u8], map: &[u8]) -> Vec<u8> {
        let mut tar = tar.to_vec();
        // The directory's header, the PAX header and its records, the entry's header, then
        // the map block.
        let at = 4 * 512;
        assert!(map.len() <= 512);
        tar[at..at + 512].fill(0);
        tar[at..at + map.len()].copy_from_slice(map);
        tar
    }

    /// Reads sparse content as `write_file` does: declared holes passed, the rest read.
    fn expand(content: &mut SparseContent<'_, &[u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let hole = content.hole_ahead();
            if hole > 0 {
                out.resize(out.len() + hole as usize, 0);
                content.pass_hole(hole);
                continue;
            }
            let mut buf = [0u8; 4096];
            match content.read(&mut buf).unwrap() {
                0 => return out,
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    #[test]
    fn a_map_of_many_empty_runs_is_walked_once() {
        // 50,000 empty runs, one a byte, then one with data: each is passed once (walking the
        // map again for every hole would be 10^9 steps).
        let empty = 50_000u64;
        let mut map = format!("{}\n", empty + 1);
        for offset in 0..empty {
            map.push_str(&format!("{offset}\n0\n"));
        }
        map.push_str(&format!("{empty}\n3\n"));
        let mut stored = map.into_bytes();
        stored.resize(stored.len().next_multiple_of(512), 0);
        stored.extend_from_slice(b"abc");
        let mut reader = &stored[..];
        let mut content = SparseContent::new(&mut reader, empty + 10).unwrap();
        let mut want = vec![0u8; empty as usize];
        want.extend_from_slice(b"abc");
        want.resize(want.len() + 7, 0);
        assert!(expand(&mut content) == want);
        content.finish().unwrap();
    }

    #[test]
    fn hostile_sparse_maps_are_refused() {
        let (tar, _) = sparse_tar(1 << 20, &[(0, 512), (4096, 512)]);
        assert_eq!(&tar[4 * 512..4 * 512 + 14], b"2\n0\n512\n4096\n5");
        let cases: [(&[u8], &str); 5] = [
            (b"2\n4096\n512\n0\n512\n", "overlap, go backwards"),
            (b"2\n0\n512\n1048400\n512\n", "pass the real size"),
            (b"2\n0\n512\n99999999999999999999999\n", "overflows"),
            (b"2\n0\n5x2\n4096\n512\n", "other than numbers"),
            (b"1\n0\n512\n", "more data than its map"),
        ];
        for (map, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let err = Unpacker::new(dir.path(), options())
                .unpack_tar(&mut &with_map(&tar, map)[..])
                .unwrap_err();
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
        // A map that never ends is cut at the metadata limit, not buffered.
        let mut endless = tar[..4 * 512].to_vec();
        let mut header = tar::Header::from_byte_slice(&tar[3 * 512..4 * 512]).clone();
        header.set_size(4 << 20);
        header.set_cksum();
        endless[3 * 512..4 * 512].copy_from_slice(header.as_bytes());
        endless.extend_from_slice(b"100000000\n");
        endless.extend(b"1\n".repeat(2 << 20));
        let dir = tempfile::tempdir().unwrap();
        let err = Unpacker::new(dir.path(), options())
            .unpack_tar(&mut &endless[..])
            .unwrap_err();
        assert!(err.to_string().contains("sparse map longer than"), "{err}");
    }
}
