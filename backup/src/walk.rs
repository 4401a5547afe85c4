//! Walking the source tree into the canonical entry list: depth-first, children sorted by name
//! bytes, symlinks never followed, hard links detected by (device, inode); a restore's staging
//! directories at the top are left out. Directories are listed by several threads, a bounded
//! number of entries ahead of one assembly that takes the listings in canonical order: the
//! result does not depend on scheduling, and the listings never add up to a second copy of the
//! entry list.

use crate::BackupError;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};
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
    walk_at_most(root, skip_unreadable, native::MAX_ENTRIES, LOOKAHEAD)
}

fn walk_at_most(
    root: &Path,
    skip_unreadable: bool,
    max: u64,
    lookahead: u64,
) -> Result<Tree, BackupError> {
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
    let walkers = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WALKERS));
    let prefetch = Prefetch::new(max, lookahead);
    std::thread::scope(|s| {
        for _ in 0..walkers {
            s.spawn(|| prefetch.list_ahead(root, skip_unreadable));
        }
        // Walkers stop however the assembly ends, so the scope's join cannot hang.
        let _stop = StopOnDrop(&prefetch);
        let mut assembly = Assembly {
            root,
            skip_unreadable,
            max,
            prefetch: &prefetch,
            tree: Tree::default(),
            links: HashMap::new(),
        };
        assembly.dir(&[]).map(|()| assembly.tree)
    })
}

struct StopOnDrop<'a>(&'a Prefetch);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let mut q = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        q.finished = true;
        self.0.work.notify_all();
    }
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

/// How many listed entries the walkers may hold before the assembly takes them: the listings
/// must not add up to a second copy of the tree's entry list.
const LOOKAHEAD: u64 = 32_768;

/// A directory's path, ordered as the canonical walk meets directories (by components).
#[derive(PartialEq, Eq)]
struct InWalkOrder(Vec<u8>);

impl Ord for InWalkOrder {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .split(|&c| c == b'/')
            .cmp(other.0.split(|&c| c == b'/'))
    }
}

impl PartialOrd for InWalkOrder {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Directories listed ahead of the assembly, which takes them in canonical order. Walkers
/// always list the first directory in that order still to list, so the one the assembly
/// waits for is listed next, and they stop [`LOOKAHEAD`] entries ahead of it.
struct Prefetch {
    state: Mutex<Ahead>,
    /// Signalled for walkers: directories to list, room below the lookahead, or the end.
    work: Condvar,
    /// Signalled for the assembly: the directory it wants is listed.
    listed: Condvar,
    max: u64,
    lookahead: u64,
}

struct Ahead {
    todo: BinaryHeap<Reverse<InWalkOrder>>,
    /// Directories taken from `todo` and not yet listed.
    busy: usize,
    /// Listings not yet taken by the assembly, with their number of entries.
    ready: HashMap<Vec<u8>, (Listing, u64)>,
    ready_entries: u64,
    /// The directory the assembly waits for.
    wanted: Option<Vec<u8>>,
    /// Entries found so far. Past `max` no further directory is listed: the walk fails anyway.
    found: u64,
    /// The assembly is done (or failed): walkers stop.
    finished: bool,
}

impl Prefetch {
    fn new(max: u64, lookahead: u64) -> Prefetch {
        let mut todo = BinaryHeap::new();
        todo.push(Reverse(InWalkOrder(Vec::new())));
        let state = Mutex::new(Ahead {
            todo,
            busy: 0,
            ready: HashMap::new(),
            ready_entries: 0,
            wanted: None,
            found: 0,
            finished: false,
        });
        Prefetch {
            state,
            work: Condvar::new(),
            listed: Condvar::new(),
            max,
            lookahead,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ahead> {
        self.state.lock().expect("no walker panics")
    }

    /// A walker: lists directories until none is left or the assembly is done.
    fn list_ahead(&self, root: &Path, skip_unreadable: bool) {
        let mut q = self.lock();
        loop {
            if q.finished || q.all_listed() {
                self.work.notify_all();
                self.listed.notify_all();
                return;
            }
            let next_is_wanted = matches!(
                (q.todo.peek(), &q.wanted),
                (Some(Reverse(next)), Some(wanted)) if next.0 == *wanted
            );
            if q.todo.is_empty() || (q.ready_entries >= self.lookahead && !next_is_wanted) {
                q = self.work.wait(q).expect("no walker panics");
                continue;
            }
            let Reverse(InWalkOrder(rel)) = q.todo.pop().expect("not empty");
            q.busy += 1;
            drop(q);
            let listing = list_dir(root, &rel, skip_unreadable);
            q = self.lock();
            q.busy -= 1;
            let mut entries = 0;
            if let Ok(found) = &listing {
                entries = found
                    .iter()
                    .filter(|f| matches!(f, Found::Entry(..)))
                    .count() as u64;
                q.found += entries;
                if q.found <= self.max {
                    let before = q.todo.len();
                    let dirs = found.iter().filter_map(|f| match f {
                        Found::Entry(e, _) if e.kind == EntryKind::Dir => {
                            Some(Reverse(InWalkOrder(e.rel.clone())))
                        }
                        _ => None,
                    });
                    q.todo.extend(dirs);
                    if q.todo.len() > before {
                        self.work.notify_all();
                    }
                }
            }
            q.ready_entries += entries;
            q.ready.insert(rel, (listing, entries));
            if q.assembly_may_go_on(self) {
                self.listed.notify_one();
            }
        }
    }

    /// The listing of `rel`, once listed; `None` if it never will be (past the entry limit).
    fn take(&self, rel: &[u8]) -> Option<Listing> {
        let mut q = self.lock();
        if !q.ready.contains_key(rel) {
            q.wanted = Some(rel.to_vec());
            // Past the lookahead, walkers wait; the wanted directory is theirs to list.
            self.work.notify_all();
            while !(q.assembly_may_go_on(self) || q.all_listed()) {
                q = self.listed.wait(q).expect("no walker panics");
            }
            q.wanted = None;
        }
        let (listing, entries) = q.ready.remove(rel)?;
        let was_full = q.ready_entries >= self.lookahead;
        q.ready_entries -= entries;
        if was_full && q.ready_entries < self.lookahead {
            self.work.notify_all();
        }
        Some(listing)
    }
}

impl Ahead {
    fn all_listed(&self) -> bool {
        self.todo.is_empty() && self.busy == 0
    }

    /// Whether to wake the assembly: the directory it wants is listed and enough others are
    /// that it will not wait again at once (each wait is a sleep and a wake-up of a thread,
    /// per directory if it followed the walkers closely), or the walk cannot go further.
    fn assembly_may_go_on(&self, prefetch: &Prefetch) -> bool {
        let Some(wanted) = &self.wanted else {
            return false;
        };
        let batch = self.ready_entries >= prefetch.lookahead / 2 || self.all_listed();
        (batch && self.ready.contains_key(wanted)) || self.found > prefetch.max
    }
}

/// Puts the listings together in canonical order, resolving hard links to the first path of
/// each group in that order, so the result is the same whichever thread listed what.
struct Assembly<'a> {
    root: &'a Path,
    skip_unreadable: bool,
    max: u64,
    prefetch: &'a Prefetch,
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
        let listing = self.prefetch.take(rel_dir);
        self.add(rel_dir, listing)
    }

    /// Adds what `listing` found in `rel_dir`, and what is in its subdirectories.
    fn add(&mut self, rel_dir: &[u8], listing: Option<Listing>) -> Result<(), BackupError> {
        let found = match listing {
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
                self.subdir(entry)?;
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

    /// A directory that cannot be listed is left out (`--skip-unreadable`) or fails the walk;
    /// any other is kept, followed by what is in it.
    fn subdir(&mut self, entry: SourceEntry) -> Result<(), BackupError> {
        let listing = self.prefetch.take(&entry.rel);
        if self.skip_unreadable && matches!(listing, Some(Err(ListError::Unreadable))) {
            (self.tree.skipped).push((entry.rel, "unreadable directory".into()));
            return Ok(());
        }
        let rel = entry.rel.clone();
        self.tree.entries.push(entry);
        self.add(&rel, listing)
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
            walk_at_most(root.path(), false, 4, LOOKAHEAD)
                .unwrap()
                .entries
                .len(),
            4
        );
        let err = walk_at_most(root.path(), false, 3, LOOKAHEAD).unwrap_err();
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
        // Walkers held back to a few entries ahead: the same tree, whatever the lookahead.
        let held_back = walk_at_most(root.path(), false, native::MAX_ENTRIES, 3).unwrap();
        assert_eq!(
            format!("{:?}", held_back.entries),
            format!("{:?}", tree.entries)
        );
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
