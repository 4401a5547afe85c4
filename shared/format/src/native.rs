//! The `native` format's documents: the config blob, the file index, and the layering rule that
//! decides which entries share a layer. FORMAT.md §Native is the normative text.

use crate::codec::{EntryKind, ZstdContext};
use crate::digest::Digest;
use crate::manifest::Descriptor;
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest config blob a reader accepts (its descriptor size), like the 4 MiB registries
/// accept for manifests.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Largest compressed file-index blob a reader accepts (its descriptor size).
pub const MAX_INDEX_BLOB_BYTES: u64 = 64 << 20;
/// Most bytes all file indexes of one backup may hold uncompressed: [`MAX_ENTRIES`] lines of
/// 1 KiB (a line with an 80-byte name is about 230 bytes). Indexes are read line by line, so
/// this bounds the work of reading them, not memory.
pub const MAX_INDEX_BYTES: u64 = MAX_ENTRIES << 10;
/// Most entries a backup may have: 2^21, since a 10 GB workspace of the benchmark's `workspace`
/// profile has about 1.4 M (readers before 2026-11-26 accept 2^20 and refuse a larger backup by
/// its declared count). Memory grows with it (RELIABILITY.md): the unpacker's model, a hash
/// table of 16-byte slots, takes up to 68 MiB at this limit; a backup of 1.2 M entries peaked
/// at 228 MiB, so one at the limit stays well within the backup Job's 1 GiB memory limit.
pub const MAX_ENTRIES: u64 = 1 << 21;

/// The format version this code writes (FORMAT.md §4.1): each data layer's blob ends with its
/// file index.
pub const FORMAT_VERSION: &str = "3.0";
/// Version 1: file indexes in blobs of their own, no sparse entries. Read, no longer written.
pub const FORMAT_VERSION_1: &str = "1.0";
/// Version 2: as 1, and data layers may hold sparse entries (FORMAT.md §3.2). Read, no longer
/// written.
pub const FORMAT_VERSION_2: &str = "2.0";
/// The majors this code reads; any minor of them is accepted.
const KNOWN_MAJORS: [u32; 3] = [1, 2, 3];
/// The highest major this code reads (for messages).
const FORMAT_MAJOR: u32 = 3;
/// The first major whose data layers hold their own file index (FORMAT.md §4.4).
pub const INDEX_IN_LAYER_MAJOR: u32 = 3;

/// The magic number of the zstd skippable frame that holds a data layer's file index (version
/// 3; RFC 8878 §3.1.2 reserves `0x184D2A50` to `0x184D2A5F`; zstd decoders skip such frames, so
/// the blob stays a plain tar+zstd stream to every other tool).
pub const INDEX_FRAME_MAGIC: u32 = 0x184D_2A57;
/// Bytes of a skippable frame's header: the magic number and the payload's length, both u32
/// little-endian.
pub const INDEX_FRAME_HEADER: u64 = 8;

/// The config blob (`application/vnd.wsr.backup.config.v1+json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupConfig {
    /// `MAJOR.MINOR`. A reader must refuse an unknown major.
    pub format_version: String,
    /// RFC 3339 UTC time the backup started.
    pub created: String,
    /// The program that wrote it, e.g. `wsr-backup 0.1.0`.
    pub tool: String,
    /// Which workspace was backed up, when known.
    pub workspace: WorkspaceInfo,
    /// The directory that was backed up, as seen by the backup process.
    pub source_path: String,
    /// What the backup holds.
    pub totals: Totals,
    /// The layering target size in bytes (see [`LayerCutter`]); kept so a re-backup cuts at the
    /// same places.
    pub layer_target: u64,
    /// One record per data layer, in manifest order.
    pub layers: Vec<LayerInfo>,
    /// Entries that were not backed up, and why (`--skip-unreadable`, sockets, devices).
    #[serde(default)]
    pub skipped: Vec<SkippedEntry>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
/// The workspace a backup belongs to (each field absent when unknown).
pub struct WorkspaceInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The DevWorkspace's name.
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Its namespace.
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Its id (`DEVWORKSPACE_ID`, upstream's `WORKSPACE_ID`).
    pub id: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
/// Counts of what a backup holds.
pub struct Totals {
    /// Regular files.
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Hard links (each name after a file's first).
    pub hardlinks: u64,
    /// Sum of regular file sizes.
    pub bytes: u64,
}

impl Totals {
    /// The number of entries (saturating: the counts come from untrusted documents).
    pub fn entries(&self) -> u64 {
        self.checked_entries().unwrap_or(u64::MAX)
    }

    /// The number of entries, or `None` if the counts overflow.
    pub fn checked_entries(&self) -> Option<u64> {
        self.files
            .checked_add(self.dirs)?
            .checked_add(self.symlinks)?
            .checked_add(self.hardlinks)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// The config's record of one data layer.
pub struct LayerInfo {
    /// Digest of the compressed blob (as in the manifest).
    pub digest: Digest,
    /// Digest of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Length of the uncompressed tar stream.
    pub tar_size: u64,
    /// Number of entries in the layer.
    pub entries: u64,
    /// Digest of the layer's compressed file index: the index layer at the same position
    /// (versions 1 and 2), or the payload of the skippable frame the layer's blob ends with
    /// (version 3).
    pub index: Digest,
    /// Version 3: the offset in the layer's blob of the skippable frame holding its file index
    /// (the compressed tar ends there). Absent in versions 1 and 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_at: Option<u64>,
    /// Digest over the metadata of the layer's entries (see FORMAT.md); equal fingerprints let a
    /// re-backup reuse the layer without reading file contents.
    pub fingerprint: Digest,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// An entry that was not backed up.
pub struct SkippedEntry {
    /// Its path, relative to the source root.
    pub path: RawPath,
    /// Why (e.g. `socket`, `permission denied`).
    pub reason: String,
}

/// Why a config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "backup was written in format {found}, but this wsr reads formats 1.x to {FORMAT_MAJOR}.x only; upgrade wsr to restore it"
    )]
    /// The config's `format_version` has a major this wsr does not read.
    UnsupportedVersion {
        /// The config's `format_version`.
        found: String,
    },
    #[error("backup config is not valid JSON: {0}")]
    /// The config is not valid JSON or lacks a field.
    Json(#[from] serde_json::Error),
}

/// Where a data layer's compressed file index is: bytes `offset..` of blob `blob`, which must
/// be `size` bytes with digest `digest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexLocation {
    /// The blob holding the index: an index blob (versions 1 and 2) or the data layer's.
    pub blob: Digest,
    /// Where in that blob the index starts: 0, or just past the skippable frame's header.
    pub offset: u64,
    /// The index bytes' digest (the config's `index`).
    pub digest: Digest,
    /// The index bytes' length (to the end of the blob).
    pub size: u64,
}

impl BackupConfig {
    /// Whether this config describes exactly these data layers and file indexes, in order
    /// (as a manifest lists them): from version 3 on the manifest lists no index blobs and
    /// each layer record says where in its blob the index frame is.
    pub fn lists(&self, layers: &[Descriptor], indexes: &[Descriptor]) -> bool {
        let same_layers = self.layers.len() == layers.len()
            && self
                .layers
                .iter()
                .zip(layers)
                .all(|(c, l)| c.digest == l.digest);
        if self.major() >= INDEX_IN_LAYER_MAJOR {
            return same_layers
                && indexes.is_empty()
                && self.layers.iter().zip(layers).all(|(c, l)| {
                    c.index_at.is_some_and(|at| {
                        at.checked_add(INDEX_FRAME_HEADER)
                            .is_some_and(|end| end <= l.size)
                    })
                });
        }
        same_layers
            && self.layers.len() == indexes.len()
            && self
                .layers
                .iter()
                .zip(indexes)
                .all(|(c, i)| c.index == i.digest && c.index_at.is_none())
    }

    /// Where data layer `position`'s file index is, in a config that [`lists`](Self::lists)
    /// `layers` and `indexes`.
    pub fn index_location(
        &self,
        position: usize,
        layers: &[Descriptor],
        indexes: &[Descriptor],
    ) -> IndexLocation {
        let info = &self.layers[position];
        match info.index_at {
            Some(at) => {
                let offset = at + INDEX_FRAME_HEADER;
                IndexLocation {
                    blob: info.digest.clone(),
                    offset,
                    digest: info.index.clone(),
                    size: layers[position].size - offset,
                }
            }
            None => IndexLocation {
                blob: indexes[position].digest.clone(),
                offset: 0,
                digest: indexes[position].digest.clone(),
                size: indexes[position].size,
            },
        }
    }

    /// The config's canonical encoding (its digest is the config blob's).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("config serialises")
    }

    /// The major of `format_version` (checked by [`BackupConfig::from_bytes`]; 0 if a config
    /// built in memory has none).
    pub fn major(&self) -> u32 {
        self.format_version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }

    /// Parses a config, checking the version first so that a future major with a different
    /// shape gets the version error, not a JSON one.
    pub fn from_bytes(bytes: &[u8]) -> Result<BackupConfig, ConfigError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            format_version: String,
        }
        let v: VersionOnly = serde_json::from_slice(bytes)?;
        let major = v
            .format_version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        if !major.is_some_and(|m| KNOWN_MAJORS.contains(&m)) {
            return Err(ConfigError::UnsupportedVersion {
                found: v.format_version,
            });
        }
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// A file name as bytes. Serialised as a JSON string when it is UTF-8, and as `{"b64": …}`
/// otherwise, so non-UTF-8 names survive the index.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RawPath(pub Vec<u8>);

impl Serialize for RawPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use base64::Engine;
                let mut m = std::collections::BTreeMap::new();
                m.insert(
                    "b64",
                    base64::engine::general_purpose::STANDARD.encode(&self.0),
                );
                m.serialize(s)
            }
        }
    }
}

impl<'de> Deserialize<'de> for RawPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Bytes { b64: String },
        }
        match Repr::deserialize(d)? {
            Repr::Text(t) => Ok(RawPath(t.into_bytes())),
            Repr::Bytes { b64 } => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map(RawPath)
                    .map_err(serde::de::Error::custom)
            }
        }
    }
}

impl std::fmt::Display for RawPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(&self.0))
    }
}

/// One line of the file index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Relative to the archive root, as in the tar stream.
    pub path: RawPath,
    #[serde(rename = "type")]
    /// What the entry is.
    pub kind: EntryKind,
    /// Permission bits as stored in the archive.
    pub mode: u32,
    /// Seconds since the epoch, as stored in the archive.
    pub mtime: i64,
    /// Content length of regular files; 0 otherwise.
    pub size: u64,
    /// `sha256:` digest of a regular file's content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Digest>,
    /// Symlink target or hard-link source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<RawPath>,
}

/// zstd level of every file index, whatever the layers' level.
const INDEX_LEVEL: i32 = 3;

/// A layer's file index while it is built: JSON lines in one allocation that grows (not an
/// entry and a path allocation per line), compressed once complete, so a finished layer
/// waiting for the registry holds only the compressed bytes.
#[derive(Debug, Default)]
pub struct IndexLines(Vec<u8>);

impl IndexLines {
    /// Appends one entry's line.
    pub fn push(&mut self, entry: &IndexEntry) -> io::Result<()> {
        serde_json::to_writer(&mut self.0, entry)?;
        self.0.push(b'\n');
        Ok(())
    }

    /// The index blob: the lines zstd-compressed, single-threaded at level 3 on a pooled
    /// context. Deterministic: an unchanged layer's index blob is reused as is.
    pub fn compress(&self) -> io::Result<Vec<u8>> {
        let mut context = ZstdContext::take(INDEX_LEVEL)?;
        // Written, not given whole to the end of the frame: zstd would then record the
        // content size in the frame header, and the bytes would differ from earlier indexes.
        let mut enc = context.encoder(Vec::new());
        enc.write_all(&self.0)?;
        enc.finish()
    }
}

/// The header of the skippable frame that holds a compressed file index of `len` bytes at the
/// end of a data layer's blob (version 3); `None` when `len` does not fit the frame's u32.
pub fn index_frame_header(len: usize) -> Option<[u8; 8]> {
    let len = u32::try_from(len).ok()?;
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&INDEX_FRAME_MAGIC.to_le_bytes());
    header[4..].copy_from_slice(&len.to_le_bytes());
    Some(header)
}

/// Checks the header of a layer's index frame against the length the config implies (the rest
/// of the blob); the error says what is wrong.
pub fn check_index_frame_header(header: &[u8; 8], len: u64) -> Result<(), String> {
    let magic = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let found = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if magic != INDEX_FRAME_MAGIC {
        return Err(format!(
            "the file index frame starts with {magic:#010x}, not the magic number {INDEX_FRAME_MAGIC:#010x}"
        ));
    }
    if u64::from(found) != len {
        return Err(format!(
            "the file index frame declares {found} bytes, the rest of the blob is {len}"
        ));
    }
    Ok(())
}

/// Writes one layer's file index (see [`IndexLines::compress`]).
pub fn write_index(entries: &[IndexEntry]) -> io::Result<Vec<u8>> {
    let mut lines = IndexLines::default();
    for e in entries {
        lines.push(e)?;
    }
    lines.compress()
}

/// Longest line a file index may have: a 4095-byte path and link, JSON-escaped, fit easily.
pub const MAX_INDEX_LINE: usize = 64 << 10;

/// The decompressed bytes the file indexes of one artifact may still use ([`MAX_INDEX_BYTES`]
/// for all of them), shared by the readers of its layers, which may run on several threads.
#[derive(Debug)]
pub struct IndexBudget(AtomicU64);

impl IndexBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> IndexBudget {
        IndexBudget(AtomicU64::new(bytes))
    }

    /// What is left.
    pub fn left(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Takes `bytes` from the budget; `false` (taking nothing) when fewer are left.
    fn take(&self, bytes: u64) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }
}

impl Default for IndexBudget {
    fn default() -> IndexBudget {
        IndexBudget::new(MAX_INDEX_BYTES)
    }
}

/// Reads one layer's file index (as [`write_index`] writes it) line by line, holding one line
/// at a time, so a reader can check a layer against its index while both stream (the lines
/// are in the layer's order, FORMAT.md §4.4). The limits are enforced while decompressing: at
/// most `expected` lines (the config's count: a small blob cannot expand into millions of
/// entries before a count check), each at most [`MAX_INDEX_LINE`] bytes, no more than the
/// shared [`IndexBudget`]; [`IndexReader::finish`] checks that the count was exact.
pub struct IndexReader<'a> {
    lines: io::BufReader<crate::codec::ZstdReader<io::BufReader<Box<dyn Read + 'a>>>>,
    expected: u64,
    /// Lines read so far.
    read: u64,
    /// Sum of the `size`s read so far.
    bytes: u64,
    budget: &'a IndexBudget,
    line: Vec<u8>,
    peeked: Option<IndexEntry>,
}

impl<'a> IndexReader<'a> {
    /// A reader of the compressed index `compressed` that the config says has `expected` lines.
    pub fn new(
        compressed: impl Read + 'a,
        expected: u64,
        budget: &'a IndexBudget,
    ) -> io::Result<IndexReader<'a>> {
        let compressed: Box<dyn Read + 'a> = Box::new(compressed);
        Ok(IndexReader {
            lines: io::BufReader::new(crate::codec::zstd_decoder(io::BufReader::new(compressed))?),
            expected,
            read: 0,
            bytes: 0,
            budget,
            line: Vec::new(),
            peeked: None,
        })
    }

    /// The next line without consuming it.
    pub fn peek(&mut self) -> io::Result<Option<&IndexEntry>> {
        if self.peeked.is_none() {
            self.peeked = self.read_line()?;
        }
        Ok(self.peeked.as_ref())
    }

    /// The next line; `None` at the end of the index.
    pub fn next_entry(&mut self) -> io::Result<Option<IndexEntry>> {
        match self.peeked.take() {
            Some(entry) => Ok(Some(entry)),
            None => self.read_line(),
        }
    }

    /// Lines read so far (a peeked line included).
    pub fn lines_read(&self) -> u64 {
        self.read
    }

    /// The sum of the `size`s of the lines read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Reads what is left (with the same limits) and checks that the index had exactly the
    /// expected number of lines. Returns the sum of all lines' `size`s.
    pub fn finish(mut self) -> io::Result<u64> {
        while self.next_entry()?.is_some() {}
        if self.read != self.expected {
            return Err(invalid(format!(
                "file index lists {} entries, the config says {}",
                self.read, self.expected
            )));
        }
        Ok(self.bytes)
    }

    fn read_line(&mut self) -> io::Result<Option<IndexEntry>> {
        let n = self.read + 1;
        self.line.clear();
        let read = (&mut self.lines)
            .take(MAX_INDEX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.line)?;
        if read == 0 {
            return Ok(None);
        }
        if !self.budget.take(read as u64) {
            return Err(invalid(format!(
                "the file indexes exceed {MAX_INDEX_BYTES} bytes uncompressed"
            )));
        }
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
        } else if self.line.len() > MAX_INDEX_LINE {
            return Err(invalid(format!(
                "file index line {n} is longer than {MAX_INDEX_LINE} bytes"
            )));
        }
        if self.line.is_empty() {
            return Err(invalid(format!("file index line {n} is empty")));
        }
        if self.read >= self.expected {
            return Err(invalid(format!(
                "file index has more than the {} entries the config lists",
                self.expected
            )));
        }
        let entry: IndexEntry = serde_json::from_slice(&self.line)
            .map_err(|e| invalid(format!("file index line {n}: {e}")))?;
        self.bytes = self
            .bytes
            .checked_add(entry.size)
            .ok_or_else(|| invalid(format!("file index line {n}: sizes add up beyond 2^64")))?;
        self.read = n;
        Ok(Some(entry))
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Reads a whole index written by [`write_index`] that the config says has `expected` lines,
/// with the limits of [`IndexReader`]. `budget` is the most decompressed bytes that may still
/// be read; it is reduced by what was read.
pub fn read_index(
    compressed: impl Read,
    expected: u64,
    budget: &mut u64,
) -> io::Result<Vec<IndexEntry>> {
    let shared = IndexBudget::new(*budget);
    let result = (|| {
        let mut reader = IndexReader::new(compressed, expected, &shared)?;
        // Capacity from a declared count is a promise, not a fact: grow as lines arrive.
        let mut out = Vec::with_capacity(expected.min(4096) as usize);
        while let Some(entry) = reader.next_entry()? {
            out.push(entry);
        }
        reader.finish()?;
        Ok(out)
    })();
    *budget = shared.left();
    result
}

/// Decides layer boundaries over the canonical entry order.
///
/// An entry of tar weight `w` (512-byte header plus padded data) of at least `target / 2` is a
/// layer of its own. A smaller one ends a layer when the layer has reached
/// `max = target + target / 4`, or when it has reached `min = target / 2` and
/// `H(path) * target < c * odds * 2^64`, where `H` is the first 8 bytes of SHA-256(path) read
/// big-endian, `c` is `w` rounded up to a power of two (so that editing a file rarely changes
/// whether it ends a layer) and `odds` is 1 below `target` and 8 from it on. Boundaries
/// therefore depend only on the entries near them: adding, removing or changing one file moves
/// at most the boundaries of its own layer, and every other layer keeps its bytes and so its
/// digest. A one-file change uploads the file's whole layer, so layers are kept near the target
/// (a file is more likely to sit in a large layer than in a small one), and large files, often
/// incompressible, do not share one.
#[derive(Clone, Debug)]
pub struct LayerCutter {
    target: u64,
    current: u64,
}

/// Smallest layering target a cutter accepts, in bytes (what the earliest wsr chose for trees
/// under 128 MiB).
pub const MIN_LAYER_TARGET: u64 = 1 << 20;
/// Smallest target wsr chooses, and keeps from a previous backup. Every blob costs a fixed few
/// requests and milliseconds of registry CPU whatever its size (distribution 2.8 on the
/// benchmark machine: about 5 ms to serve a blob of a few MB or less, 9 ms to receive one), so
/// small trees are not cut finer than this; a one-file change still uploads 1-2 MB compressed.
/// Earlier wsr chose 1 MiB, then 2 MiB: a previous target below this one is replaced, which
/// costs one full upload of a tree under 512 MiB, once.
pub const MIN_CHOSEN_TARGET: u64 = 4 << 20;
/// Largest layering target, in bytes.
pub const MAX_LAYER_TARGET: u64 = 64 << 20;

impl LayerCutter {
    /// A cutter for `target` bytes per layer (clamped to the bounds above).
    pub fn new(target: u64) -> LayerCutter {
        LayerCutter {
            target: target.clamp(MIN_LAYER_TARGET, MAX_LAYER_TARGET),
            current: 0,
        }
    }

    /// The target it cuts at, after clamping.
    pub fn target(&self) -> u64 {
        self.target
    }

    /// The target for a tree of `total_weight` bytes: 64 to 128 layers, a power of two, at
    /// least [`MIN_CHOSEN_TARGET`]. A previous target of at least that is kept while it still
    /// gives 8 to 512 layers (or fewer, when it is already the smallest), so boundaries don't
    /// move when the workspace merely grows a little.
    pub fn choose_target(total_weight: u64, previous: Option<u64>) -> u64 {
        if let Some(prev) = previous
            && (MIN_CHOSEN_TARGET..=MAX_LAYER_TARGET).contains(&prev)
            && prev.is_power_of_two()
        {
            let layers = total_weight / prev;
            if (8..=512).contains(&layers)
                || (prev == MIN_CHOSEN_TARGET && layers < 8)
                || (prev == MAX_LAYER_TARGET && layers > 512)
            {
                return prev;
            }
        }
        (total_weight / 128)
            .next_power_of_two()
            .clamp(MIN_CHOSEN_TARGET, MAX_LAYER_TARGET)
    }

    /// Adds an entry; says where layers end around it.
    pub fn push(&mut self, path: &[u8], weight: u64) -> Cut {
        let target = self.target;
        if weight >= target / 2 {
            let cut = if self.current > 0 {
                Cut::BeforeAndAfter
            } else {
                Cut::After
            };
            self.current = 0;
            return cut;
        }
        self.current += weight;
        let odds: u128 = if self.current >= target { 8 } else { 1 };
        let chance = u128::from(weight.next_power_of_two()) * odds;
        let cut = self.current >= target + target / 4
            || (self.current >= target / 2
                && u128::from(path_hash(path)) * u128::from(target) < chance << 64);
        if cut {
            self.current = 0;
            Cut::After
        } else {
            Cut::None
        }
    }
}

/// Where layers end around an entry pushed into a [`LayerCutter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The entry continues the current layer.
    None,
    /// The current layer ends after the entry.
    After,
    /// The entry is a layer of its own: the layer before it ends before it.
    BeforeAndAfter,
}

/// Tar weight of an entry: its 512-byte header plus its data padded to 512 bytes.
pub fn tar_weight(size: u64) -> u64 {
    512 + size.div_ceil(512) * 512
}

fn path_hash(path: &[u8]) -> u64 {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(path);
    u64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_config() -> BackupConfig {
        BackupConfig {
            format_version: FORMAT_VERSION.into(),
            created: "2026-11-25T00:00:00Z".into(),
            tool: "wsr-backup test".into(),
            workspace: WorkspaceInfo {
                name: Some("ws".into()),
                namespace: Some("ns".into()),
                id: None,
            },
            source_path: "/projects".into(),
            totals: Totals {
                files: 1,
                dirs: 1,
                symlinks: 0,
                hardlinks: 0,
                bytes: 3,
            },
            layer_target: MIN_LAYER_TARGET,
            layers: vec![],
            skipped: vec![SkippedEntry {
                path: RawPath(b"sock\xff".to_vec()),
                reason: "socket".into(),
            }],
        }
    }

    #[test]
    fn config_round_trips_and_rejects_unknown_major() {
        let c = sample_config();
        assert_eq!(BackupConfig::from_bytes(&c.to_bytes()).unwrap(), c);
        let with_version = |v: &str| {
            String::from_utf8(c.to_bytes())
                .unwrap()
                .replace(&format!("\"{FORMAT_VERSION}\""), &format!("\"{v}\""))
        };
        assert!(BackupConfig::from_bytes(with_version("3.7").as_bytes()).is_ok());
        // Versions 1 and 2 (written before) are read too.
        let v1 = BackupConfig::from_bytes(with_version(FORMAT_VERSION_1).as_bytes()).unwrap();
        let v2 = BackupConfig::from_bytes(with_version(FORMAT_VERSION_2).as_bytes()).unwrap();
        assert_eq!((v1.major(), v2.major(), c.major()), (1, 2, 3));
        // A major this code does not know is refused with the upgrade message, as version-2
        // readers refuse "3.0" (this very check, with KNOWN_MAJORS = [1, 2]).
        let err =
            BackupConfig::from_bytes(br#"{"format_version":"4.0","whatever":1}"#).unwrap_err();
        assert!(
            err.to_string().contains("format 4.0") && err.to_string().contains("upgrade wsr"),
            "{err}"
        );
        assert!(matches!(
            BackupConfig::from_bytes(br#"{"format_version":"x"}"#),
            Err(ConfigError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn a_version_3_config_locates_each_index_in_its_layer_and_earlier_ones_in_index_blobs() {
        let layer =
            |data: &[u8]| Descriptor::new(crate::media::LAYER_TAR_ZSTD, Digest::of(data), 1000);
        let index = Descriptor::new(crate::media::NATIVE_INDEX, Digest::of(b"index"), 40);
        let record = |index_at| LayerInfo {
            digest: Digest::of(b"layer"),
            diff_id: Digest::of(b"tar"),
            tar_size: 4096,
            entries: 3,
            index: Digest::of(b"index"),
            index_at,
            fingerprint: Digest::of(b"fp"),
        };
        let mut v3 = sample_config();
        v3.layers = vec![record(Some(900))];
        let layers = [layer(b"layer")];
        assert!(v3.lists(&layers, &[]));
        assert_eq!(
            v3.index_location(0, &layers, &[]),
            IndexLocation {
                blob: Digest::of(b"layer"),
                offset: 908,
                digest: Digest::of(b"index"),
                size: 92,
            }
        );
        // The frame's header must fit in the blob; an index blob or a missing offset is not
        // version 3.
        v3.layers = vec![record(Some(993))];
        assert!(!v3.lists(&layers, &[]));
        v3.layers = vec![record(Some(992))];
        assert!(v3.lists(&layers, &[]));
        v3.layers = vec![record(Some(u64::MAX))];
        assert!(!v3.lists(&layers, &[]));
        v3.layers = vec![record(Some(900))];
        assert!(!v3.lists(&layers, std::slice::from_ref(&index)));
        v3.layers = vec![record(None)];
        assert!(!v3.lists(&layers, &[]));

        let mut v2 = v3.clone();
        v2.format_version = FORMAT_VERSION_2.into();
        assert!(v2.lists(&layers, std::slice::from_ref(&index)));
        assert_eq!(
            v2.index_location(0, &layers, std::slice::from_ref(&index)),
            IndexLocation {
                blob: Digest::of(b"index"),
                offset: 0,
                digest: Digest::of(b"index"),
                size: 40,
            }
        );
        assert!(!v2.lists(&layers, &[]));
        v2.layers = vec![record(Some(900))];
        assert!(!v2.lists(&layers, std::slice::from_ref(&index)));
    }

    #[test]
    fn the_index_frame_header_is_a_skippable_frame_of_the_payload_length() {
        let header = index_frame_header(300).unwrap();
        assert_eq!(header, [0x57, 0x2A, 0x4D, 0x18, 44, 1, 0, 0]);
        assert!(check_index_frame_header(&header, 300).is_ok());
        let err = check_index_frame_header(&header, 301).unwrap_err();
        assert!(
            err.contains("declares 300 bytes, the rest of the blob is 301"),
            "{err}"
        );
        let mut bad = header;
        bad[0] = 0x50;
        assert!(
            check_index_frame_header(&bad, 300)
                .unwrap_err()
                .contains("magic")
        );
        assert!(index_frame_header(u32::MAX as usize + 1).is_none());
        // zstd skips it: a blob of a compressed stream followed by the frame decodes to the
        // stream's content alone.
        let mut blob = zstd::encode_all(&b"tar bytes"[..], 3).unwrap();
        blob.extend_from_slice(&index_frame_header(5).unwrap());
        blob.extend_from_slice(b"index");
        assert_eq!(zstd::decode_all(&blob[..]).unwrap(), b"tar bytes");
    }

    #[test]
    fn index_round_trips_non_utf8_names() {
        let entries = vec![
            IndexEntry {
                path: RawPath(b"caf\xe9".to_vec()),
                kind: EntryKind::File,
                mode: 0o644,
                mtime: 1,
                size: 2,
                sha256: Some(Digest::of(b"hi")),
                link: None,
            },
            IndexEntry {
                path: RawPath(b"ln".to_vec()),
                kind: EntryKind::Symlink,
                mode: 0o777,
                mtime: 1,
                size: 0,
                sha256: None,
                link: Some(RawPath(b"caf\xe9".to_vec())),
            },
        ];
        let bytes = write_index(&entries).unwrap();
        assert_eq!(write_index(&entries).unwrap(), bytes, "deterministic");
        // The bytes earlier versions wrote: a fresh level-3 encoder fed line by line.
        let mut fresh = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        for e in &entries {
            serde_json::to_writer(&mut fresh, e).unwrap();
            fresh.write_all(b"\n").unwrap();
        }
        assert_eq!(fresh.finish().unwrap(), bytes, "as earlier versions wrote");
        let budget = &mut MAX_INDEX_BYTES.clone();
        assert_eq!(read_index(&bytes[..], 2, budget).unwrap(), entries);
        assert!(*budget < MAX_INDEX_BYTES);
        let fewer = read_index(&bytes[..], 1, budget).unwrap_err().to_string();
        assert!(fewer.contains("more than the 1 entries"), "{fewer}");
        let tight = read_index(&bytes[..], 2, &mut 10).unwrap_err().to_string();
        assert!(tight.contains("exceed"), "{tight}");
        let more = read_index(&bytes[..], 3, budget).unwrap_err().to_string();
        assert!(
            more.contains("lists 2 entries, the config says 3"),
            "{more}"
        );
    }

    fn cuts(paths: &[String], target: u64) -> Vec<usize> {
        let mut c = LayerCutter::new(target);
        paths
            .iter()
            .enumerate()
            .filter(|(_, p)| c.push(p.as_bytes(), tar_weight(10_000)) == Cut::After)
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn boundaries_are_local_to_a_change() {
        let paths: Vec<String> = (0..5000)
            .map(|i| format!("src/module{:05}/file.rs", i))
            .collect();
        let before = cuts(&paths, MIN_LAYER_TARGET);
        // ~10.5 KB per entry, 1 MiB target: about 100 entries per layer.
        assert!((25..=100).contains(&before.len()), "{}", before.len());
        // Insert one file in the middle: boundaries before it are unchanged, after it shift by one.
        let mut inserted = paths.clone();
        inserted.insert(2500, "src/module02499/new.rs".into());
        let after = cuts(&inserted, MIN_LAYER_TARGET);
        let same_before = before.iter().filter(|&&i| i < 2400).count();
        assert_eq!(&after[..same_before], &before[..same_before]);
        let shifted: Vec<usize> = before
            .iter()
            .filter(|&&i| i > 2600)
            .map(|i| i + 1)
            .collect();
        assert!(after.ends_with(&shifted));
    }

    #[test]
    fn layers_stay_between_half_and_five_quarters_of_the_target() {
        // Weights from 512 B to 256 KiB, as a source tree's files vary.
        let sizes = |i: u64| (i * 7919 % 512) * 512;
        let target = MIN_LAYER_TARGET;
        let mut c = LayerCutter::new(target);
        let (mut acc, mut layers) = (0, Vec::new());
        for i in 0..20_000u64 {
            acc += tar_weight(sizes(i));
            let cut = c.push(format!("src/f{i:06}.rs").as_bytes(), tar_weight(sizes(i)));
            if cut == Cut::After {
                layers.push(acc);
                acc = 0;
            }
        }
        let biggest = tar_weight(511 * 512);
        assert!(layers.len() > 100, "{}", layers.len());
        for &l in &layers {
            assert!(l >= target / 2 && l < target + target / 4 + biggest, "{l}");
        }
        // Most layers end on the path hash, past the target, not at the hard maximum.
        let at_max = layers.iter().filter(|&&l| l >= target + target / 4).count();
        assert!(at_max * 4 < layers.len(), "{at_max} of {}", layers.len());
    }

    #[test]
    fn a_large_entry_is_a_layer_of_its_own() {
        let mut c = LayerCutter::new(MIN_LAYER_TARGET);
        assert_eq!(c.push(b"a", 512), Cut::None);
        assert_eq!(c.push(b"big", MIN_LAYER_TARGET / 2), Cut::BeforeAndAfter);
        assert_eq!(c.push(b"bigger", 10 * MIN_LAYER_TARGET), Cut::After);
        assert_eq!(c.push(b"b", 512), Cut::None);
    }

    #[test]
    fn target_is_sticky_within_a_range() {
        assert_eq!(LayerCutter::choose_target(100 << 20, None), 4 << 20);
        assert_eq!(LayerCutter::choose_target(1 << 30, None), 8 << 20);
        assert_eq!(
            LayerCutter::choose_target(10 << 20, None),
            MIN_CHOSEN_TARGET
        );
        assert_eq!(LayerCutter::choose_target(1 << 20, None), MIN_CHOSEN_TARGET);
        // Earlier backups' 1 MiB and 2 MiB targets are replaced, however many layers they give.
        for earlier in [MIN_LAYER_TARGET, 2 << 20] {
            assert_eq!(
                LayerCutter::choose_target(100 << 20, Some(earlier)),
                MIN_CHOSEN_TARGET
            );
            assert_eq!(
                LayerCutter::choose_target(3 << 20, Some(earlier)),
                MIN_CHOSEN_TARGET
            );
        }
        // The smallest target is kept however small the tree becomes.
        assert_eq!(
            LayerCutter::choose_target(3 << 20, Some(MIN_CHOSEN_TARGET)),
            MIN_CHOSEN_TARGET
        );
        assert_eq!(LayerCutter::choose_target(1 << 40, None), MAX_LAYER_TARGET);
        // 600 MB would choose 8 MiB fresh, but 4 MiB from the previous backup still gives 150 layers.
        assert_eq!(
            LayerCutter::choose_target(600 << 20, Some(4 << 20)),
            4 << 20
        );
        assert_eq!(LayerCutter::choose_target(600 << 20, None), 8 << 20);
        // Grown 50x: re-chosen.
        assert_eq!(
            LayerCutter::choose_target(20 << 30, Some(4 << 20)),
            64 << 20
        );
        // Not a power of two: re-chosen.
        assert_eq!(
            LayerCutter::choose_target(100 << 20, Some(5 << 20)),
            4 << 20
        );
        // A larger target than the tree calls for is kept while it gives 8 layers.
        assert_eq!(
            LayerCutter::choose_target(300 << 20, Some(32 << 20)),
            32 << 20
        );
    }
}
