//! Walking the source tree into the canonical entry list: depth-first, children sorted by name
//! bytes, symlinks never followed, hard links detected by (device, inode); a restore's staging
//! directories at the top are left out. Directories are listed by several threads, then the
//! listings are put together in canonical order, so the result does not depend on scheduling.

use crate::BackupError;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use wsr_format::codec::EntryKind;
use wsr_format::{media, native};

/// One entry of the source tree.
#[derive(Clone, Debug)]
pub struct SourceEntry {
    /// Path relative to the source root, `/`-separated.
    pub rel: Vec<u8>,
    pub kind: EntryKind,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_nsec: i64,
    /// Content length of regular files; 0 otherwise.
    pub size: u64,
    /// Symlink target, or the first path of the hard-link group.
    pub link: Option<Vec<u8>>,
    /// A regular file whose allocated size is at least [`MIN_HOLES`] below its size: the
    /// archiver looks for its holes (FORMAT.md §3.2).
    pub sparse: bool,
}

/// Holes smaller than this in total are not worth a sparse entry's map and headers.
pub const MIN_HOLES: u64 = 64 << 10;

/// The walk's result.
#[derive(Debug, Default)]
pub struct Tree {
    pub entries: Vec<SourceEntry>,
    /// Entries left out, with the reason (special files; unreadable ones with `--skip-unreadable`).
    pub skipped: Vec<(Vec<u8>, String)>,
}

pub fn full_path(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(OsStr::from_bytes(rel))
}

fn readable(path: &Path, dir: bool) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mode = if dir {
        libc::R_OK | libc::X_OK
    } else {
        libc::R_OK
    };
    // SAFETY: `c` is a valid NUL-terminated path.
    unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), mode, libc::AT_EACCESS) == 0 }
}

/// Walks `root`. Unreadable files and directories are an error naming them, unless
/// `skip_unreadable`, which records them in [`Tree::skipped`] instead. A tree of more entries
/// than a restore accepts ([`native::MAX_ENTRIES`], FORMAT.md §8.1) is refused while walking:
/// publishing it would make a backup no restore can read.
pub fn walk(root: &Path, skip_unreadable: bool) -> Result<Tree, BackupError> {
    walk_at_most(root, skip_unreadable, native::MAX_ENTRIES)
}

fn walk_at_most(root: &Path, skip_unreadable: bool, max: u64) -> Result<Tree, BackupError> {
    let meta = fs::metadata(root).map_err(|source| BackupError::Source {
        path: root.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(BackupError::Source {
            path: root.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    if !readable(root, true) {
        return Err(BackupError::Unreadable {
            path: root.to_owned(),
        });
    }
    let (listings, found) = list_all(root, skip_unreadable, max);
    let mut assembly = Assembly {
        root,
        skip_unreadable,
        max,
        listings,
        tree: Tree {
            // Sized once: growing it by doubling while the listings are still held would
            // need up to twice its memory.
            entries: Vec::with_capacity(found.min(max) as usize),
            skipped: Vec::new(),
        },
        links: HashMap::new(),
    };
    assembly.dir(&[])?;
    Ok(assembly.tree)
}

/// What listing a directory found, in name order.
enum Found {
    /// With the (device, inode) of a regular file of more than one link.
    Entry(SourceEntry, Option<(u64, u64)>),
    Skipped(Vec<u8>, String),
}

enum ListError {
    /// The directory could not be opened, or its children could not be looked up.
    Unreadable,
    Failed(BackupError),
}

type Listing = Result<Vec<Found>, ListError>;

/// Directories are listed by several threads: a re-backup's walk is little but `statx` and
/// `getdents` in the kernel, one directory after another on one core otherwise.
const MAX_WALKERS: usize = 8;

/// Directories still to list, and every listing so far, keyed by the directory's path.
struct Queue {
    todo: Vec<Vec<u8>>,
    /// Directories taken from `todo` and not yet listed.
    busy: usize,
    listings: HashMap<Vec<u8>, Listing>,
    /// Entries found so far. Past `max` no further directory is listed: the walk fails anyway.
    found: u64,
}

/// Lists every directory under `root` (and `root`), in no particular order; with the number
/// of entries found.
fn list_all(root: &Path, skip_unreadable: bool, max: u64) -> (HashMap<Vec<u8>, Listing>, u64) {
    let walkers = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WALKERS));
    let queue = Mutex::new(Queue {
        todo: vec![Vec::new()],
        busy: 0,
        listings: HashMap::new(),
        found: 0,
    });
    let changed = Condvar::new();
    std::thread::scope(|s| {
        for _ in 0..walkers {
            s.spawn(|| list_from_queue(&queue, &changed, root, skip_unreadable, max));
        }
    });
    let queue = queue.into_inner().expect("no walker panics");
    (queue.listings, queue.found)
}

fn list_from_queue(
    queue: &Mutex<Queue>,
    changed: &Condvar,
    root: &Path,
    skip_unreadable: bool,
    max: u64,
) {
    let mut q = queue.lock().expect("no walker panics");
    loop {
        let Some(rel) = q.todo.pop() else {
            if q.busy == 0 {
                changed.notify_all();
                return;
            }
            q = changed.wait(q).expect("no walker panics");
            continue;
        };
        q.busy += 1;
        drop(q);
        let listing = list_dir(root, &rel, skip_unreadable);
        q = queue.lock().expect("no walker panics");
        q.busy -= 1;
        if let Ok(found) = &listing {
            let entries = found.iter().filter(|f| matches!(f, Found::Entry(..)));
            q.found += entries.clone().count() as u64;
            if q.found <= max {
                let dirs = entries.filter_map(|f| match f {
                    Found::Entry(e, _) if e.kind == EntryKind::Dir => Some(e.rel.clone()),
                    _ => None,
                });
                q.todo.extend(dirs);
            }
        }
        q.listings.insert(rel, listing);
        changed.notify_all();
    }
}

/// Puts the listings together in canonical order, resolving hard links to the first path of
/// each group in that order, so the result is the same whichever thread listed what.
struct Assembly<'a> {
    root: &'a Path,
    skip_unreadable: bool,
    max: u64,
    listings: HashMap<Vec<u8>, Listing>,
    tree: Tree,
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl Assembly<'_> {
    fn too_many(&self) -> BackupError {
        BackupError::TooManyEntries {
            path: self.root.to_owned(),
            max: self.max,
        }
    }

    fn dir(&mut self, rel_dir: &[u8]) -> Result<(), BackupError> {
        let found = match self.listings.remove(rel_dir) {
            Some(Ok(found)) => found,
            Some(Err(ListError::Failed(e))) => return Err(e),
            Some(Err(ListError::Unreadable)) => {
                return Err(BackupError::Unreadable {
                    path: full_path(self.root, rel_dir),
                });
            }
            // Only directories past the entry limit are left unlisted.
            None => return Err(self.too_many()),
        };
        for f in found {
            let (mut entry, inode) = match f {
                Found::Skipped(rel, why) => {
                    self.tree.skipped.push((rel, why));
                    continue;
                }
                Found::Entry(entry, inode) => (entry, inode),
            };
            if self.tree.entries.len() as u64 >= self.max {
                return Err(self.too_many());
            }
            if entry.kind == EntryKind::Dir {
                if let Some(Err(ListError::Unreadable)) = self.listings.get(&entry.rel) {
                    if !self.skip_unreadable {
                        let path = full_path(self.root, &entry.rel);
                        return Err(BackupError::Unreadable { path });
                    }
                    self.listings.remove(&entry.rel);
                    (self.tree.skipped).push((entry.rel, "unreadable directory".into()));
                    continue;
                }
                let rel = entry.rel.clone();
                self.tree.entries.push(entry);
                self.dir(&rel)?;
                continue;
            }
            if let Some(inode) = inode {
                if let Some(first) = self.links.get(&inode) {
                    entry.kind = EntryKind::Hardlink;
                    entry.link = Some(first.clone());
                    entry.size = 0;
                    entry.sparse = false;
                } else {
                    self.links.insert(inode, entry.rel.clone());
                }
            }
            self.tree.entries.push(entry);
        }
        Ok(())
    }
}

/// Lists one directory: its children in name order, each looked up (never followed).
fn list_dir(root: &Path, rel_dir: &[u8], skip_unreadable: bool) -> Listing {
    let dir = full_path(root, rel_dir);
    let failed = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::PermissionDenied => ListError::Unreadable,
        _ => ListError::Failed(BackupError::Source {
            path: dir.clone(),
            source,
        }),
    };
    // Entries are kept (not just names) so each lstat is relative to this directory's open
    // descriptor: no path lookup from the root per entry, which dominated a re-backup's walk.
    let mut children: Vec<(Vec<u8>, fs::DirEntry)> = fs::read_dir(&dir)
        .map_err(failed)?
        .map(|e| e.map(|e| (e.file_name().as_bytes().to_vec(), e)))
        .collect::<Result<_, _>>()
        .map_err(failed)?;
    children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut found = Vec::with_capacity(children.len());
    for (name, dir_entry) in children {
        // An interrupted restore's leftovers are wsr's bookkeeping, not the workspace's; a
        // restore would never restore them either (FORMAT.md §8.2).
        if rel_dir.is_empty() && name.starts_with(media::STAGING_PREFIX.as_bytes()) {
            let why = "a restore's staging directory, not backed up";
            found.push(Found::Skipped(name, why.into()));
            continue;
        }
        let rel = if rel_dir.is_empty() {
            name
        } else {
            [rel_dir, b"/", &name].concat()
        };
        let meta = match dir_entry.metadata() {
            Ok(m) => m,
            // Vanished between readdir and lstat: it is simply not part of the backup.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            // Listable but not searchable (no x bit): the directory is unreadable, not its child.
            Err(e) => return Err(failed(e)),
        };
        if let Some(f) = child(root, rel, &meta, skip_unreadable).map_err(ListError::Failed)? {
            found.push(f);
        }
    }
    Ok(found)
}

/// What one looked-up child of a directory is; `None` if it vanished.
fn child(
    root: &Path,
    rel: Vec<u8>,
    meta: &fs::Metadata,
    skip_unreadable: bool,
) -> Result<Option<Found>, BackupError> {
    let ft = meta.file_type();
    let mut entry = SourceEntry {
        rel,
        kind: EntryKind::File,
        mode: meta.mode() & 0o7777,
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
        size: 0,
        link: None,
        sparse: false,
    };
    if ft.is_dir() {
        entry.kind = EntryKind::Dir;
        return Ok(Some(Found::Entry(entry, None)));
    }
    let path = full_path(root, &entry.rel);
    if ft.is_symlink() {
        let target = match fs::read_link(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(BackupError::Source { path, source }),
        };
        entry.kind = EntryKind::Symlink;
        entry.link = Some(target.as_os_str().as_bytes().to_vec());
        return Ok(Some(Found::Entry(entry, None)));
    }
    if ft.is_file() {
        // Without --skip-unreadable, opening the file while archiving reports it by name;
        // checking here too would double the system calls of a re-backup's walk.
        if skip_unreadable && !readable(&path, false) {
            return Ok(Some(Found::Skipped(entry.rel, "unreadable file".into())));
        }
        entry.size = meta.len();
        entry.sparse = meta.blocks().saturating_mul(512).saturating_add(MIN_HOLES) <= meta.len();
        let inode = (meta.nlink() > 1).then(|| (meta.dev(), meta.ino()));
        return Ok(Some(Found::Entry(entry, inode)));
    }
    let what = if ft_is(meta, libc::S_IFSOCK) {
        "socket"
    } else if ft_is(meta, libc::S_IFIFO) {
        "FIFO"
    } else {
        "device node"
    };
    tracing::warn!(path = %String::from_utf8_lossy(&entry.rel), "skipping {what}");
    Ok(Some(Found::Skipped(
        entry.rel,
        format!("{what} not backed up"),
    )))
}

fn ft_is(meta: &fs::Metadata, kind: libc::mode_t) -> bool {
    meta.mode() & libc::S_IFMT == kind
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_beyond_the_entry_limit_is_refused_while_walking() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("d")).unwrap();
        for name in ["d/a", "d/b", "e"] {
            fs::write(root.path().join(name), "x").unwrap();
        }
        // Four entries: d, d/a, d/b, e.
        assert_eq!(
            walk_at_most(root.path(), false, 4).unwrap().entries.len(),
            4
        );
        let err = walk_at_most(root.path(), false, 3).unwrap_err();
        assert!(
            matches!(err, BackupError::TooManyEntries { max: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("more than 3 entries"), "{err}");
    }

    #[test]
    fn the_order_is_canonical_and_hard_links_point_to_the_first_path_in_it() {
        let root = tempfile::tempdir().unwrap();
        // Enough directories that several walkers take part.
        for d in 0..40 {
            for f in 0..5 {
                let dir = root.path().join(format!("d{d:02}/sub"));
                fs::create_dir_all(&dir).unwrap();
                fs::write(dir.join(format!("f{f}")), format!("{d} {f}")).unwrap();
            }
        }
        fs::write(root.path().join("z-first-made"), "shared").unwrap();
        // Made first, walked last: the group's first path is d07/link, whoever lists it.
        fs::hard_link(
            root.path().join("z-first-made"),
            root.path().join("d07/link"),
        )
        .unwrap();
        fs::hard_link(
            root.path().join("z-first-made"),
            root.path().join("d31/sub/link"),
        )
        .unwrap();
        std::os::unix::fs::symlink("d07", root.path().join("s")).unwrap();

        let tree = walk(root.path(), false).unwrap();
        let rels: Vec<&[u8]> = tree.entries.iter().map(|e| e.rel.as_slice()).collect();
        let mut canonical = rels.clone();
        // Depth-first with children by name bytes is the order of the paths' components.
        canonical.sort_by(|a, b| a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/')));
        assert_eq!(rels, canonical);
        assert_eq!(tree.entries.len(), 40 * (2 + 5) + 4);
        let kind_of = |rel: &[u8]| tree.entries.iter().find(|e| e.rel == rel).unwrap();
        let first = kind_of(b"d07/link");
        assert_eq!(
            (first.kind, first.size, first.link.as_deref()),
            (EntryKind::File, 6, None)
        );
        for later in [b"d31/sub/link".as_slice(), b"z-first-made"] {
            let e = kind_of(later);
            assert_eq!(e.kind, EntryKind::Hardlink);
            assert_eq!(
                (e.size, e.link.as_deref()),
                (0, Some(b"d07/link".as_slice()))
            );
        }
        assert_eq!(kind_of(b"s").kind, EntryKind::Symlink);
    }

    #[test]
    fn a_restores_staging_directories_at_the_top_are_left_out() {
        let root = tempfile::tempdir().unwrap();
        let staging = root
            .path()
            .join(".wsr-restore-0123456789abcdef0123456789abcdef");
        fs::create_dir_all(staging.join("tree/src")).unwrap();
        fs::write(staging.join("identity"), "{}").unwrap();
        fs::write(staging.join("tree/src/a.rs"), "x").unwrap();
        fs::write(root.path().join(".wsr-restore-file"), "x").unwrap();
        // Only the top level is the restore's: the same name deeper is the user's.
        fs::create_dir_all(root.path().join("sub/.wsr-restore-kept")).unwrap();
        fs::write(root.path().join(".wsr-restorex"), "kept").unwrap();
        let tree = walk(root.path(), false).unwrap();
        let names: Vec<String> = tree
            .entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.rel).into_owned())
            .collect();
        assert_eq!(names, [".wsr-restorex", "sub", "sub/.wsr-restore-kept"]);
        let skipped: Vec<&[u8]> = tree.skipped.iter().map(|(p, _)| p.as_slice()).collect();
        assert_eq!(
            skipped,
            [
                b".wsr-restore-0123456789abcdef0123456789abcdef".as_slice(),
                b".wsr-restore-file".as_slice()
            ]
        );
    }
}
