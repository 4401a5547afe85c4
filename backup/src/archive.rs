//! Archiving: entries → deterministic tar → zstd or gzip → the upload's writer, with the file
//! digests and the uncompressed (diff id) digest computed on the way. The writer (a
//! `BlobWriter`) hashes the compressed stream.
//!
//! Runs on a blocking thread; the writer applies back-pressure, so memory stays bounded
//! whatever the size of the layer.

use crate::BackupError;
use crate::beneath::{self, Root};
use crate::walk::{MIN_HOLES, Tree, full_path};
use rustix::fd::OwnedFd;
use rustix::fs::OFlags;
use rustix::io::Errno;
use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use wsr_format::codec::{EntryHeader, EntryKind, TarWriter, ZstdContext, gzip_encoder};
use wsr_format::digest::{Digest, Hasher, HashingWriter};
use wsr_format::native::{IndexEntry, IndexLines, RawPath};

/// Which codec and archive flavour to produce.
#[derive(Clone, Copy, Debug)]
pub enum Codec {
    /// Native layers: plain relative names, zstd.
    Zstd { level: i32 },
    /// `dwo`: `./` names with a root entry, gzip.
    Gzip {
        level: u32,
        root_mode: u32,
        root_mtime: i64,
    },
}

/// What archiving one layer produced (the compressed digest and size are the writer's).
pub struct Archived {
    pub diff_id: Digest,
    pub tar_size: u64,
    /// The layer's compressed file index; `None` for `dwo`, which has none. Built only
    /// when it is kept: a `dwo` backup is one layer of the whole tree, and its index would be
    /// the largest thing the backup holds (448 MiB at 1.29 M entries).
    pub index: Option<Vec<u8>>,
}

/// Archives the entries of `tree` in `layer` (read from `root`) and writes the compressed bytes
/// into `out`. A failed write is reported as [`BackupError::Archive`]; the writer knows
/// whether it was its fault.
pub fn archive(
    root: &Path,
    tree: &Tree,
    layer: Range<usize>,
    codec: Codec,
    out: &mut dyn Write,
    on_entry: &dyn Fn(u64),
) -> Result<Archived, BackupError> {
    let (diff_id, tar_size, index) = match codec {
        Codec::Zstd { level } => {
            let mut context = ZstdContext::take(level).map_err(BackupError::Archive)?;
            let enc = context.encoder(out);
            let (tar, lines) =
                write_tar(root, tree, layer, HashingWriter::new(enc), None, on_entry)?;
            let (enc, diff_id, tar_size) = tar.finish();
            enc.finish().map_err(BackupError::Archive)?;
            // The layer's context is back in the pool: the index takes it.
            drop(context);
            let index = lines.compress().map_err(BackupError::Archive)?;
            (diff_id, tar_size, Some(index))
        }
        Codec::Gzip {
            level,
            root_mode,
            root_mtime,
        } => {
            let enc = gzip_encoder(out, level);
            let root_entry = Some((root_mode, root_mtime));
            let (tar, _) = write_tar(
                root,
                tree,
                layer,
                HashingWriter::new(enc),
                root_entry,
                on_entry,
            )?;
            let (enc, diff_id, tar_size) = tar.finish();
            enc.finish().map_err(BackupError::Archive)?;
            (diff_id, tar_size, None)
        }
    };
    Ok(Archived {
        diff_id,
        tar_size,
        index,
    })
}

/// Writes the tar stream; `root_entry` (mode, mtime) marks the `dwo` flavour: `./` names
/// after a root entry, and no file index.
fn write_tar<W: Write>(
    root: &Path,
    tree: &Tree,
    layer: Range<usize>,
    out: HashingWriter<W>,
    root_entry: Option<(u32, i64)>,
    on_entry: &dyn Fn(u64),
) -> Result<(HashingWriter<W>, IndexLines), BackupError> {
    let mut tar = TarWriter::new(out, root_entry.is_some());
    if let Some((mode, mtime)) = root_entry {
        tar.append_root(mode, mtime).map_err(BackupError::Archive)?;
    }
    // The index records each file's digest: without one, no file is hashed either.
    let with_index = root_entry.is_none();
    let mut index = IndexLines::default();
    let mut paths = tree.paths();
    let root_dir = Root::open(root).map_err(|source| BackupError::Source {
        path: root.to_owned(),
        source: source.into(),
    })?;
    let mut opener = Opener {
        root: root_dir,
        dir: None,
    };
    for i in layer {
        let (e, rel, link) = (tree.meta(i), paths.get(i), tree.link(i));
        let header = EntryHeader {
            path: rel,
            kind: e.kind,
            mode: e.mode,
            mtime: e.mtime,
            size: e.size,
            link,
        };
        let sha256 = if e.kind == EntryKind::File {
            let path = full_path(root, rel);
            let file = opener.open(tree, i, rel).map_err(|source| match source {
                Errno::ACCESS | Errno::PERM => BackupError::Unreadable { path: path.clone() },
                _ if beneath::is_swapped(source) => BackupError::Changed { path: path.clone() },
                _ => BackupError::Source {
                    path: path.clone(),
                    source: source.into(),
                },
            })?;
            let runs = if e.sparse {
                data_runs(&file, e.size).map_err(|source| BackupError::Source {
                    path: path.clone(),
                    source,
                })?
            } else {
                None
            };
            if let Some(runs) = runs {
                let mut reader = SparseReader::new(file, runs, e.size, with_index);
                let appended = tar.append_sparse(&header, &reader.runs.clone(), &mut reader);
                if reader.changed || (appended.is_ok() && !reader.done()) {
                    return Err(BackupError::Changed { path });
                }
                appended.map_err(BackupError::Archive)?;
                reader.finish()
            } else {
                let mut reader = FileReader {
                    file,
                    hasher: with_index.then(Hasher::new),
                    remaining: e.size,
                    changed: false,
                };
                let appended = tar.append(&header, &mut reader);
                if reader.changed || (appended.is_ok() && reader.remaining != 0) {
                    return Err(BackupError::Changed { path });
                }
                appended.map_err(BackupError::Archive)?;
                reader.hasher.map(|h| h.finish().0)
            }
        } else {
            tar.append(&header, io::empty())
                .map_err(BackupError::Archive)?;
            None
        };
        on_entry(if e.kind == EntryKind::File { e.size } else { 0 });
        if !with_index {
            continue;
        }
        let entry = IndexEntry {
            path: RawPath(rel.to_vec()),
            kind: e.kind,
            mode: e.mode,
            mtime: e.mtime.max(0),
            size: e.size,
            sha256,
            link: link.map(|l| RawPath(l.to_vec())),
        };
        index.push(&entry).map_err(BackupError::Archive)?;
    }
    Ok((tar.finish().map_err(BackupError::Archive)?, index))
}

/// Opens a layer's files beneath the source root, through no symlink (`beneath.rs`).
struct Opener {
    root: Root,
    /// Without `openat2`: the directory of the last file opened and its descriptor, as a
    /// layer's files come directory by directory.
    dir: Option<(u32, OwnedFd)>,
}

impl Opener {
    /// Opens file `i` of `tree`, at `rel`, for reading.
    fn open(&mut self, tree: &Tree, i: usize, rel: &[u8]) -> Result<File, Errno> {
        if self.root.has_openat2() {
            return self.root.open_beneath(rel, OFlags::RDONLY).map(File::from);
        }
        let parent = tree.parent(i);
        let dir = match self.dir.take() {
            Some((at, fd)) if at == parent => fd,
            _ => {
                let name_at = rel.len() - tree.name(i).len();
                (self.root).open_dir_by_components(&rel[..name_at.saturating_sub(1)])?
            }
        };
        let file = beneath::open_child(&dir, tree.name(i), OFlags::RDONLY);
        self.dir = Some((parent, dir));
        Ok(File::from(file?))
    }
}

/// Reads exactly the size recorded by the walk, hashing it when there is a hasher. A file that
/// shrank since sets `changed`: a tar header cannot be corrected after the fact.
struct FileReader {
    file: std::fs::File,
    hasher: Option<Hasher>,
    remaining: u64,
    changed: bool,
}

impl Read for FileReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = out
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.file.read(&mut out[..want])?;
        if n == 0 {
            self.changed = true;
            return Err(io::Error::other("file shrank while being read"));
        }
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&out[..n]);
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Most data runs a sparse entry may list; a file with more is stored whole (FORMAT.md §3.2).
const MAX_RUNS: usize = 16384;

/// The data runs (offset, length) of a file of `size` bytes, found with `SEEK_DATA` and
/// `SEEK_HOLE`, or `None` when it should be stored whole: its holes add up to less than
/// [`MIN_HOLES`], it has more than [`MAX_RUNS`] runs, or the filesystem cannot tell.
fn data_runs(file: &std::fs::File, size: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
    let fd = file.as_raw_fd();
    let seek = |offset: u64, whence| -> io::Result<Option<u64>> {
        let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        // SAFETY: lseek on a descriptor we own; it only moves the file offset.
        match unsafe { libc::lseek(fd, offset, whence) } {
            -1 => match io::Error::last_os_error() {
                // ENXIO: no data at or after `offset`.
                e if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
                e => Err(e),
            },
            at => Ok(Some(at as u64)),
        }
    };
    let mut runs = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Some(start) = seek(pos, libc::SEEK_DATA)? else {
            break;
        };
        if start >= size {
            break;
        }
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        runs.push((start, end - start));
        if runs.len() > MAX_RUNS {
            return Ok(None);
        }
        pos = end;
    }
    // Reads use positioned I/O; the offset lseek moved is not used again.
    let data: u64 = runs.iter().map(|(_, len)| len).sum();
    Ok((size - data >= MIN_HOLES).then_some(runs))
}

/// Reads a sparse file's data runs back to back (what a sparse entry stores), hashing the
/// file's whole content on the way: zeros for the holes, so the index digest is the same as
/// for a file stored whole. A file that shrank sets `changed`.
struct SparseReader {
    file: std::fs::File,
    runs: Vec<(u64, u64)>,
    /// The run being read, and how far into it.
    run: usize,
    done_in_run: u64,
    /// How much of the whole content has been hashed (passed over, without a hasher).
    hashed: u64,
    size: u64,
    hasher: Option<Hasher>,
    changed: bool,
}

impl SparseReader {
    /// Without `hash`, nothing is hashed and [`SparseReader::finish`] gives no digest.
    fn new(file: std::fs::File, runs: Vec<(u64, u64)>, size: u64, hash: bool) -> SparseReader {
        SparseReader {
            file,
            runs,
            run: 0,
            done_in_run: 0,
            hashed: 0,
            size,
            hasher: hash.then(Hasher::new),
            changed: false,
        }
    }

    /// Whether every run was read to its end.
    fn done(&self) -> bool {
        match self.runs.get(self.run) {
            None => true,
            Some(&(_, len)) => self.run + 1 == self.runs.len() && self.done_in_run == len,
        }
    }

    fn hash_zeros_to(&mut self, end: u64) {
        if let Some(hasher) = &mut self.hasher {
            hasher.update_zeros(end.saturating_sub(self.hashed));
        }
        self.hashed = self.hashed.max(end);
    }

    /// The digest of the whole content, trailing hole included.
    fn finish(mut self) -> Option<Digest> {
        self.hash_zeros_to(self.size);
        self.hasher.map(|h| h.finish().0)
    }
}

impl Read for SparseReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while let Some(&(offset, len)) = self.runs.get(self.run) {
            if self.done_in_run < len {
                self.hash_zeros_to(offset);
                let at = offset + self.done_in_run;
                let want = out
                    .len()
                    .min(usize::try_from(len - self.done_in_run).unwrap_or(usize::MAX));
                let n = self.file.read_at(&mut out[..want], at)?;
                if n == 0 {
                    self.changed = true;
                    return Err(io::Error::other("file shrank while being read"));
                }
                if let Some(hasher) = &mut self.hasher {
                    hasher.update(&out[..n]);
                }
                self.hashed += n as u64;
                self.done_in_run += n as u64;
                return Ok(n);
            }
            self.run += 1;
            self.done_in_run = 0;
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::beneath::tests::{root_and_outside, swap_for_symlink};

    #[test]
    fn native_layers_get_a_file_index_and_dwo_builds_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/a.rs"), "fn main() {}").unwrap();
        let tree = crate::walk::walk(dir.path(), false).unwrap();
        let native = Codec::Zstd { level: 3 };
        let dwo = Codec::Gzip {
            level: 1,
            root_mode: 0o755,
            root_mtime: 0,
        };
        let index = |codec| {
            let archived = archive(dir.path(), &tree, 0..2, codec, &mut Vec::new(), &|_| {});
            archived.unwrap().index
        };
        let blob = index(native).expect("a native layer has an index");
        let budget = &mut wsr_format::native::MAX_INDEX_BYTES.clone();
        let entries = wsr_format::native::read_index(&blob[..], 2, budget).unwrap();
        let paths: Vec<_> = entries.iter().map(|e| e.path.0.as_slice()).collect();
        assert_eq!(paths, [b"src".as_slice(), b"src/a.rs"]);
        assert_eq!(entries[1].sha256, Some(Digest::of(b"fn main() {}")));
        assert_eq!(index(dwo), None);
    }

    /// A file swapped for a symlink between the walk and the archiving, or a directory above
    /// it, fails the backup: no link is followed, so nothing outside the tree is read, even
    /// when what it points to has the size the walk recorded.
    #[test]
    fn a_file_or_directory_swapped_for_a_symlink_after_the_walk_is_not_followed() {
        for swapped in ["src/deep/a.rs", "src/deep", "src"] {
            let (dir, outside) = root_and_outside();
            let tree = crate::walk::walk(dir.path(), false).unwrap();
            swap_for_symlink(dir.path(), outside.path(), swapped);
            let codec = Codec::Zstd { level: 3 };
            let archived = archive(dir.path(), &tree, 0..3, codec, &mut Vec::new(), &|_| {});
            let error = archived.err().expect("the swap is refused");
            assert!(
                matches!(error, BackupError::Changed { .. }),
                "{swapped}: {error}"
            );
        }
    }

    /// Without `openat2` a layer's files are opened from their directory, kept open: it opens
    /// what is there, refuses every swap, and follows the files from directory to directory.
    #[test]
    fn without_openat2_files_open_from_their_directory_through_no_symlink() {
        for swapped in [None, Some("src/deep/a.rs"), Some("src/deep"), Some("src")] {
            let (dir, outside) = root_and_outside();
            std::fs::write(dir.path().join("src/z.rs"), "z").unwrap();
            let tree = crate::walk::walk(dir.path(), false).unwrap();
            if let Some(swapped) = swapped {
                swap_for_symlink(dir.path(), outside.path(), swapped);
            }
            let root = Root::open(dir.path()).unwrap().without_openat2();
            let mut opener = Opener { root, dir: None };
            let case = format!("{swapped:?} swapped");
            let mut paths = tree.paths();
            let rels: Vec<Vec<u8>> = (0..tree.len()).map(|i| paths.get(i).to_vec()).collect();
            assert_eq!(rels[2], b"src/deep/a.rs");
            let opened = opener.open(&tree, 2, &rels[2]);
            match swapped {
                None => {
                    let content = std::io::read_to_string(opened.unwrap()).unwrap();
                    assert_eq!(content, "fn main() {}", "{case}");
                    // Next, a file of another directory.
                    assert_eq!(rels[3], b"src/z.rs");
                    let z = std::io::read_to_string(opener.open(&tree, 3, &rels[3]).unwrap());
                    assert_eq!(z.unwrap(), "z");
                }
                Some(_) => {
                    let refused = opened.unwrap_err();
                    assert!(beneath::is_swapped(refused), "{case}: {refused}");
                }
            }
        }
    }

    /// The tar header holds the walk's size: a file that shrank since fails the backup, one
    /// that grew is read up to that size, so the header, the bytes and their digest agree.
    #[test]
    fn a_file_is_read_exactly_to_the_size_the_walk_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "0123456789").unwrap();
        let reader = |remaining| FileReader {
            file: File::open(&path).unwrap(),
            hasher: Some(Hasher::new()),
            remaining,
            changed: false,
        };
        let mut grew = reader(4);
        let mut read = Vec::new();
        grew.read_to_end(&mut read).unwrap();
        assert_eq!(read, b"0123");
        assert_eq!(grew.hasher.unwrap().finish().0, Digest::of(b"0123"));

        let mut shrank = reader(11);
        assert!(shrank.read_to_end(&mut Vec::new()).is_err());
        assert!(shrank.changed);
    }

    #[test]
    fn holes_are_found_and_the_digest_covers_the_whole_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let size = 64u64 << 20;
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(size).unwrap();
        file.write_all_at(&[7u8; 4096], 1 << 20).unwrap();
        file.write_all_at(&[9u8; 4096], size - 4096).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let runs = data_runs(&file, size).unwrap().expect("holes found");
        let data: u64 = runs.iter().map(|r| r.1).sum();
        assert!((8192..1 << 20).contains(&data), "{runs:?}");

        let mut reader = SparseReader::new(file, runs.clone(), size, true);
        let mut stored = Vec::new();
        reader.read_to_end(&mut stored).unwrap();
        assert_eq!(stored.len() as u64, data);
        assert!(reader.done());
        assert_eq!(
            reader.finish(),
            Some(Digest::of(&std::fs::read(&path).unwrap()))
        );
        // Unhashed (`dwo`): the same bytes, no digest.
        let file = std::fs::File::open(&path).unwrap();
        let mut unhashed = SparseReader::new(file, runs, size, false);
        let mut same = Vec::new();
        unhashed.read_to_end(&mut same).unwrap();
        assert!(same == stored && unhashed.done());
        assert_eq!(unhashed.finish(), None);

        // A file without enough holes is stored whole.
        let dense = dir.path().join("dense");
        std::fs::write(&dense, vec![1u8; 1 << 20]).unwrap();
        let dense = std::fs::File::open(&dense).unwrap();
        assert_eq!(data_runs(&dense, 1 << 20).unwrap(), None);
    }
}
