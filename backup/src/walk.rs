//! Walking the source tree into the canonical entry list: depth-first, children sorted by name
//! bytes, symlinks never followed, hard links detected by (device, inode); a restore's staging
//! directories at the top are left out. Directories are listed by several threads, a bounded
//! number of entries ahead of one assembly that takes the listings in canonical order: the
//! result does not depend on scheduling, and the listings never add up to a second copy of the
//! entry list.

use crate::BackupError;
use crate::beneath::{self, Root};
use rustix::fd::OwnedFd;
use rustix::fs::{Access, AtFlags, FileType, OFlags, RawDir};
use rustix::io::Errno;
use std::cmp::Reverse;
use std::collections::binary_heap::PeekMut;
use std::collections::{BinaryHeap, HashMap};
use std::ffi::CStr;
use std::ffi::OsStr;
use std::fs;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};
use wsr_format::codec::EntryKind;
use wsr_format::{media, native};

/// What the walk found about one entry, besides its path and link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: EntryKind,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Content length of regular files; 0 otherwise.
    pub size: u64,
    /// A regular file whose allocated size is at least [`MIN_HOLES`] below its size: the
    /// archiver looks for its holes (FORMAT.md §3.2).
    pub sparse: bool,
}

/// Holes smaller than this in total are not worth a sparse entry's map and headers.
pub const MIN_HOLES: u64 = 64 << 10;

/// The walk's result: the canonical entry list, held compactly because a backup holds all of
/// it while it uploads. An entry keeps its own name and its parent's position, not its whole
/// path, and names and link targets share a buffer: 32 bytes plus the name per entry,
/// against about 170 for a path allocation each. Entries are stored in chunks allocated once
/// at their full size, so the list never moves as it grows (a growing `Vec` copies itself,
/// holding both copies for a moment). A million entries cost tens of MiB. A [`Paths`] cursor
/// gives the full paths back.
#[derive(Debug, Default)]
pub struct Tree {
    chunks: Vec<Chunk>,
    len: usize,
    /// Entries left out, with the reason (special files; unreadable ones with `--skip-unreadable`).
    pub skipped: Vec<(Vec<u8>, String)>,
}

/// Entries per [`Chunk`] (2 MiB of nodes).
const CHUNK: usize = 1 << 16;

#[derive(Debug)]
struct Chunk {
    /// At most [`CHUNK`], allocated at once.
    nodes: Vec<Node>,
    /// Each node's name, followed by its link (symlink target, or hard-link group's first path).
    bytes: Vec<u8>,
}

/// One entry in [`Tree`] (32 bytes): the fields of [`Meta`], the small ones packed in `bits`.
/// The link has no length of its own: it ends where the next node's name starts.
#[derive(Debug)]
struct Node {
    mtime: i64,
    size: u64,
    /// Where the name starts in its chunk's bytes; the link follows it.
    at: u32,
    /// The parent directory's position, or [`TOP`].
    parent: u32,
    mtime_nsec: u32,
    /// Permission bits (12), kind (2), sparse (1), and from bit 16 the name's length.
    bits: u32,
}

const KIND_SHIFT: u32 = 12;
const SPARSE_BIT: u32 = 1 << 14;
const NAME_LEN_SHIFT: u32 = 16;

impl Node {
    fn mode(&self) -> u32 {
        self.bits & 0o7777
    }

    fn kind(&self) -> EntryKind {
        match (self.bits >> KIND_SHIFT) & 3 {
            0 => EntryKind::Dir,
            1 => EntryKind::File,
            2 => EntryKind::Symlink,
            _ => EntryKind::Hardlink,
        }
    }

    fn name_len(&self) -> usize {
        (self.bits >> NAME_LEN_SHIFT) as usize
    }

    fn pack(meta: &Meta, name_len: usize) -> u32 {
        let kind = match meta.kind {
            EntryKind::Dir => 0,
            EntryKind::File => 1,
            EntryKind::Symlink => 2,
            EntryKind::Hardlink => 3,
        };
        // Linux names are at most NAME_MAX (255) bytes; getdents could not return 64 KiB.
        let name_len = u32::from(u16::try_from(name_len).expect("a name is shorter than 64 KiB"));
        assert!(meta.mode <= 0o7777, "permission bits only");
        meta.mode
            | kind << KIND_SHIFT
            | if meta.sparse { SPARSE_BIT } else { 0 }
            | name_len << NAME_LEN_SHIFT
    }
}

/// The parent of the entries directly under the source root.
pub(crate) const TOP: u32 = u32::MAX;

impl Tree {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn node(&self, i: usize) -> (&Node, &Chunk) {
        let chunk = &self.chunks[i / CHUNK];
        (&chunk.nodes[i % CHUNK], chunk)
    }

    pub fn meta(&self, i: usize) -> Meta {
        let (n, _) = self.node(i);
        Meta {
            kind: n.kind(),
            mode: n.mode(),
            mtime: n.mtime,
            mtime_nsec: n.mtime_nsec,
            size: n.size,
            sparse: n.bits & SPARSE_BIT != 0,
        }
    }

    /// Metadata of every entry, in order.
    pub fn metas(&self) -> impl Iterator<Item = Meta> + '_ {
        (0..self.len).map(|i| self.meta(i))
    }

    /// The symlink's target, or the first path of the hard link's group.
    pub fn link(&self, i: usize) -> Option<&[u8]> {
        let (n, chunk) = self.node(i);
        let start = n.at as usize + n.name_len();
        let end = chunk
            .nodes
            .get(i % CHUNK + 1)
            .map_or(chunk.bytes.len(), |next| next.at as usize);
        matches!(n.kind(), EntryKind::Symlink | EntryKind::Hardlink)
            .then(|| &chunk.bytes[start..end])
    }

    /// The position of the entry's directory, or [`TOP`].
    pub(crate) fn parent(&self, i: usize) -> u32 {
        self.node(i).0.parent
    }

    /// The entry's own name (its path's last component).
    pub(crate) fn name(&self, i: usize) -> &[u8] {
        let (n, chunk) = self.node(i);
        &chunk.bytes[n.at as usize..n.at as usize + n.name_len()]
    }

    /// A cursor over full paths; cheapest when entries are asked for in order.
    pub fn paths(&self) -> Paths<'_> {
        Paths {
            tree: self,
            path: Vec::new(),
            dirs: Vec::new(),
        }
    }

    /// Appends an entry named `name` under the directory at `parent` (an earlier position, or
    /// [`TOP`]); returns its position.
    pub(crate) fn push(
        &mut self,
        parent: u32,
        name: &[u8],
        meta: Meta,
        link: Option<&[u8]>,
    ) -> u32 {
        let link = link.unwrap_or_default();
        let position = u32::try_from(self.len).expect("at most MAX_ENTRIES entries");
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Chunk {
                nodes: Vec::with_capacity(CHUNK),
                bytes: Vec::new(),
            });
        }
        let chunk = self.chunks.last_mut().expect("a chunk with room");
        chunk.nodes.push(Node {
            mtime: meta.mtime,
            size: meta.size,
            // A chunk's names and links: at most CHUNK * (NAME_MAX + PATH_MAX) bytes.
            at: u32::try_from(chunk.bytes.len()).expect("a chunk holds under 4 GiB"),
            parent,
            mtime_nsec: meta.mtime_nsec,
            bits: Node::pack(&meta, name.len()),
        });
        chunk.bytes.extend_from_slice(name);
        chunk.bytes.extend_from_slice(link);
        self.len += 1;
        position
    }
}

/// Full paths of a [`Tree`]'s entries, `/`-separated and relative to the source root. It
/// keeps the path of the directory last asked about and of its ancestors, so asking in order
/// costs one name's copy per entry.
pub struct Paths<'a> {
    tree: &'a Tree,
    path: Vec<u8>,
    /// Directories whose path is a prefix of `path`, outermost first, with that prefix's length.
    dirs: Vec<(u32, usize)>,
}

impl Paths<'_> {
    /// The path of entry `i`.
    pub fn get(&mut self, i: usize) -> &[u8] {
        let parent = self.tree.node(i).0.parent;
        while self.dirs.last().is_some_and(|&(d, _)| d != parent) {
            self.dirs.pop();
        }
        if self.dirs.is_empty() && parent != TOP {
            // Recursion as deep as the tree, which PATH_MAX bounds.
            self.get(parent as usize);
        }
        let base = self.dirs.last().map_or(0, |&(_, len)| len);
        self.path.truncate(base);
        if base > 0 {
            self.path.push(b'/');
        }
        self.path.extend_from_slice(self.tree.name(i));
        if self.tree.node(i).0.kind() == EntryKind::Dir {
            self.dirs.push((i as u32, self.path.len()));
        }
        &self.path
    }
}

pub fn full_path(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(OsStr::from_bytes(rel))
}

/// Whether this process may list and search `dir` (with its effective ids, as opening will).
fn searchable(dir: &Path) -> bool {
    rustix::fs::accessat(
        rustix::fs::CWD,
        dir,
        Access::READ_OK | Access::EXEC_OK,
        AtFlags::EACCESS,
    )
    .is_ok()
}

/// Walks `root`. Unreadable files and directories are an error naming them, unless
/// `skip_unreadable`, which records them in [`Tree::skipped`] instead. A tree of more entries
/// than a restore accepts ([`native::MAX_ENTRIES`], FORMAT.md §8.1) is refused while walking:
/// publishing it would make a backup no restore can read.
pub fn walk(root: &Path, skip_unreadable: bool) -> Result<Tree, BackupError> {
    let tree = walk_at_most(root, skip_unreadable, native::MAX_ENTRIES, LOOKAHEAD);
    return_freed_memory();
    tree
}

/// Hands the memory the walk's listings used back to the system. glibc keeps freed memory in
/// its arenas, and the listings (made by the walkers, dropped by the assembly) leave it
/// scattered between live blocks, where the layers archived next did not reuse it: when
/// listings held a whole path per entry, 1.32 M entries left 11 MiB resident and free.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
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
    if !searchable(root) {
        return Err(BackupError::Unreadable {
            path: root.to_owned(),
        });
    }
    let root_dir = Root::open(root).map_err(|source| BackupError::Source {
        path: root.to_owned(),
        source: source.into(),
    })?;
    let walkers = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WALKERS));
    let prefetch = Prefetch::new(max, lookahead);
    std::thread::scope(|s| {
        for _ in 0..walkers {
            s.spawn(|| prefetch.list_ahead(root, &root_dir, skip_unreadable));
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

/// An entry as a walker lists it; its name and link are in its directory's [`DirListing`].
#[derive(Debug)]
struct Listed {
    meta: Meta,
    /// Where the name starts in the listing's bytes; the link (a symlink's target) follows it.
    /// (A directory's names and links are not bounded the way a `Tree` chunk's are: a million
    /// long symlinks make gigabytes.)
    name_at: usize,
    link_at: usize,
    link_end: usize,
    /// The (device, inode) of a regular file of more than one link.
    inode: Option<(u64, u64)>,
}

/// What listing a directory found, in name order.
enum Found {
    Entry(Listed),
    /// With its whole path and the reason.
    Skipped(Vec<u8>, String),
}

/// One directory's listing, in two allocations whatever its size: the entries, and their names
/// and links back to back. A path allocated per entry by a walker and freed by the assembly,
/// on another thread, took about a tenth of an unchanged re-backup's walk (glibc frees such
/// a block under a lock of the allocating thread's arena).
struct DirListing {
    found: Vec<Found>,
    bytes: Vec<u8>,
}

impl DirListing {
    fn name(&self, entry: &Listed) -> &[u8] {
        &self.bytes[entry.name_at..entry.link_at]
    }

    fn link(&self, entry: &Listed) -> Option<&[u8]> {
        (entry.meta.kind == EntryKind::Symlink).then(|| &self.bytes[entry.link_at..entry.link_end])
    }

    /// The subdirectories, in walk order, as keys of [`Todo`].
    fn subdirs(&self, rel_dir: &[u8]) -> Vec<InWalkOrder> {
        let dir = InWalkOrder::of(rel_dir);
        let subdirs = self.found.iter().filter_map(|f| match f {
            Found::Entry(e) if e.meta.kind == EntryKind::Dir => Some(dir.child(self.name(e))),
            _ => None,
        });
        subdirs.collect()
    }

    fn entries(&self) -> u64 {
        self.found
            .iter()
            .filter(|f| matches!(f, Found::Entry(..)))
            .count() as u64
    }
}

/// `rel_dir`'s child `name`, as a path relative to the root.
fn child_path(rel_dir: &[u8], name: &[u8]) -> Vec<u8> {
    if rel_dir.is_empty() {
        name.to_vec()
    } else {
        [rel_dir, b"/", name].concat()
    }
}

enum ListError {
    /// The directory could not be opened, or its children could not be looked up.
    Unreadable,
    Failed(BackupError),
}

type Listing = Result<DirListing, ListError>;

/// Directories are listed by several threads: a re-backup's walk is little but `fstatat` and
/// `getdents` in the kernel, one directory after another on one core otherwise.
const MAX_WALKERS: usize = 8;

/// How many listed entries the walkers may hold before the assembly takes them: the listings
/// must not add up to a second copy of the tree's entry list.
const LOOKAHEAD: u64 = 32_768;

/// A directory's path, ordered as the canonical walk meets directories: by components. It is
/// held with each `/` as a NUL, which no name contains and every other byte sorts after, so
/// comparing the bytes compares the components (`a/b` before `a-c`, as `a` is before `a-c`).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InWalkOrder(Vec<u8>);

impl InWalkOrder {
    fn of(rel: &[u8]) -> InWalkOrder {
        InWalkOrder(rel.iter().map(|&c| if c == b'/' { 0 } else { c }).collect())
    }

    /// This directory's child `name`.
    fn child(&self, name: &[u8]) -> InWalkOrder {
        let mut key = Vec::with_capacity(self.0.len() + 1 + name.len());
        key.extend_from_slice(&self.0);
        if !key.is_empty() {
            key.push(0);
        }
        key.extend_from_slice(name);
        InWalkOrder(key)
    }

    fn is(&self, rel: &[u8]) -> bool {
        self.0.len() == rel.len()
            && self
                .0
                .iter()
                .zip(rel)
                .all(|(&a, &b)| a == b || (a == 0 && b == b'/'))
    }

    fn into_rel(self) -> Vec<u8> {
        let mut rel = self.0;
        rel.iter_mut().filter(|c| **c == 0).for_each(|c| *c = b'/');
        rel
    }
}

/// Directories still to list, the first in walk order on top. A listing's subdirectories go in
/// as one run (in name order, so in walk order among themselves), and the heap orders the runs
/// by their first directory: it holds a run per directory with subdirectories left to list,
/// not every directory left, and a directory is taken with one sift of it.
#[derive(Default)]
struct Todo {
    runs: BinaryHeap<Reverse<Run>>,
}

/// Sibling directories in reverse walk order (the first is last); never empty.
struct Run(Vec<InWalkOrder>);

impl Run {
    fn first(&self) -> &InWalkOrder {
        self.0.last().expect("runs are not empty")
    }
}

impl Ord for Run {
    fn cmp(&self, other: &Run) -> std::cmp::Ordering {
        self.first().cmp(other.first())
    }
}

impl PartialOrd for Run {
    fn partial_cmp(&self, other: &Run) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Run {
    fn eq(&self, other: &Run) -> bool {
        self.first() == other.first()
    }
}

impl Eq for Run {}

impl Todo {
    /// Adds sibling directories, given in walk order.
    fn push(&mut self, mut siblings: Vec<InWalkOrder>) {
        if !siblings.is_empty() {
            siblings.reverse();
            self.runs.push(Reverse(Run(siblings)));
        }
    }

    fn peek(&self) -> Option<&InWalkOrder> {
        self.runs.peek().map(|run| run.0.first())
    }

    fn pop(&mut self) -> Option<InWalkOrder> {
        let mut top = self.runs.peek_mut()?;
        let first = top.0.0.pop().expect("runs are not empty");
        if top.0.0.is_empty() {
            PeekMut::pop(top);
        }
        // Otherwise dropping `top` sifts its run down to its new first directory's place.
        Some(first)
    }

    fn is_empty(&self) -> bool {
        self.runs.is_empty()
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
    todo: Todo,
    /// Directories taken from `todo` and not yet listed.
    busy: usize,
    /// Walkers waiting for `work`.
    idle: usize,
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
        let mut todo = Todo::default();
        todo.push(vec![InWalkOrder::of(b"")]);
        let state = Mutex::new(Ahead {
            todo,
            busy: 0,
            idle: 0,
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
    fn list_ahead(&self, root: &Path, root_dir: &Root, skip_unreadable: bool) {
        let mut lister = Lister::new();
        let mut q = self.lock();
        loop {
            if q.finished || q.all_listed() {
                self.work.notify_all();
                self.listed.notify_all();
                return;
            }
            let next_is_wanted = matches!(
                (q.todo.peek(), &q.wanted),
                (Some(next), Some(wanted)) if next.is(wanted)
            );
            if q.todo.is_empty() || (q.ready_entries >= self.lookahead && !next_is_wanted) {
                q.idle += 1;
                q = self.work.wait(q).expect("no walker panics");
                q.idle -= 1;
                continue;
            }
            let rel = q.todo.pop().expect("not empty").into_rel();
            q.busy += 1;
            drop(q);
            let listing = lister.list(root, root_dir, &rel, skip_unreadable);
            // Done before locking: the lock is what the walkers and the assembly wait for.
            let (entries, subdirs) = match &listing {
                Ok(listed) => (listed.entries(), listed.subdirs(&rel)),
                Err(_) => (0, Vec::new()),
            };
            q = self.lock();
            q.busy -= 1;
            q.found += entries;
            if q.found <= self.max && !subdirs.is_empty() {
                q.todo.push(subdirs);
                // Waking no one still costs a system call, once per directory.
                if q.idle > 0 {
                    self.work.notify_all();
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
        self.add(rel_dir, TOP, listing)
    }

    /// Adds what `listing` found in `rel_dir` (at `position` in the tree), and what is in its
    /// subdirectories.
    fn add(
        &mut self,
        rel_dir: &[u8],
        position: u32,
        listing: Option<Listing>,
    ) -> Result<(), BackupError> {
        let listed = match listing {
            Some(Ok(listed)) => listed,
            Some(Err(ListError::Failed(e))) => return Err(e),
            Some(Err(ListError::Unreadable)) => {
                return Err(BackupError::Unreadable {
                    path: full_path(self.root, rel_dir),
                });
            }
            // Only directories past the entry limit are left unlisted.
            None => return Err(self.too_many()),
        };
        for f in &listed.found {
            let entry = match f {
                Found::Skipped(rel, why) => {
                    self.tree.skipped.push((rel.clone(), why.clone()));
                    continue;
                }
                Found::Entry(entry) => entry,
            };
            if self.tree.len() as u64 >= self.max {
                return Err(self.too_many());
            }
            let name = listed.name(entry);
            if entry.meta.kind == EntryKind::Dir {
                self.subdir(position, rel_dir, name, entry.meta)?;
                continue;
            }
            if let Some(inode) = entry.inode {
                if let Some(first) = self.links.get(&inode) {
                    let meta = Meta {
                        kind: EntryKind::Hardlink,
                        size: 0,
                        sparse: false,
                        ..entry.meta
                    };
                    (self.tree).push(position, name, meta, Some(first));
                    continue;
                }
                self.links.insert(inode, child_path(rel_dir, name));
            }
            (self.tree).push(position, name, entry.meta, listed.link(entry));
        }
        Ok(())
    }

    /// A directory that cannot be listed is left out (`--skip-unreadable`) or fails the walk;
    /// any other is kept, followed by what is in it.
    fn subdir(
        &mut self,
        parent: u32,
        rel_dir: &[u8],
        name: &[u8],
        meta: Meta,
    ) -> Result<(), BackupError> {
        let rel = child_path(rel_dir, name);
        let listing = self.prefetch.take(&rel);
        if self.skip_unreadable && matches!(listing, Some(Err(ListError::Unreadable))) {
            (self.tree.skipped).push((rel, "unreadable directory".into()));
            return Ok(());
        }
        let position = (self.tree).push(parent, name, meta, None);
        self.add(&rel, position, listing)
    }
}

/// Bytes of `getdents` results read at once: most directories in one call.
const LISTING_BUFFER: usize = 32 << 10;

/// A walker's buffers, reused for every directory it lists: listing allocates only what it
/// returns.
struct Lister {
    getdents: Vec<MaybeUninit<u8>>,
    /// The names of the directory being listed, back to back, each with its NUL.
    names: Vec<u8>,
    /// Where each name starts in `names`, in name order once sorted.
    starts: Vec<usize>,
}

impl Lister {
    fn new() -> Lister {
        Lister {
            getdents: vec![MaybeUninit::uninit(); LISTING_BUFFER],
            names: Vec::new(),
            starts: Vec::new(),
        }
    }

    /// Lists one directory: its children in name order, each looked up (never followed)
    /// relative to the directory's descriptor, so no path is resolved from the root per entry.
    /// Names are read straight from `getdents`, not through `std::fs::read_dir`, whose
    /// allocations per name took a share of a re-backup's walk, which is little else.
    fn list(
        &mut self,
        root: &Path,
        root_dir: &Root,
        rel_dir: &[u8],
        skip_unreadable: bool,
    ) -> Listing {
        // Paths for errors only: most directories list without one.
        let dir_path = || full_path(root, rel_dir);
        let failed = |errno: Errno| match errno {
            Errno::ACCESS | Errno::PERM => ListError::Unreadable,
            _ => ListError::Failed(BackupError::Source {
                path: dir_path(),
                source: errno.into(),
            }),
        };
        // Opened beneath the root through no symlink: a directory swapped for one since its
        // parent was listed is not listed through it (`beneath.rs`).
        let dir = root_dir.open_beneath(rel_dir, OFlags::RDONLY | OFlags::DIRECTORY);
        let dir = dir.map_err(|errno| match errno {
            _ if beneath::is_swapped(errno) => {
                ListError::Failed(BackupError::Changed { path: dir_path() })
            }
            _ => failed(errno),
        })?;
        self.read_names(&dir).map_err(failed)?;
        let mut listed = DirListing {
            found: Vec::with_capacity(self.starts.len()),
            bytes: Vec::with_capacity(self.names.len()),
        };
        for &at in &self.starts {
            let name = CStr::from_bytes_until_nul(&self.names[at..]).expect("NUL-terminated");
            let name_bytes = name.to_bytes();
            // An interrupted restore's leftovers are wsr's bookkeeping, not the workspace's; a
            // restore would never restore them either (FORMAT.md §8.2).
            if rel_dir.is_empty() && name_bytes.starts_with(media::STAGING_PREFIX.as_bytes()) {
                let why = "a restore's staging directory, not backed up";
                (listed.found).push(Found::Skipped(name_bytes.to_vec(), why.into()));
                continue;
            }
            let stat = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                // Vanished between getdents and lstat: it is simply not part of the backup.
                Err(Errno::NOENT) => continue,
                // Listable but not searchable (no x bit): the directory is unreadable, not its
                // child.
                Err(errno) => return Err(failed(errno)),
            };
            let child = child(&dir, name, &LookedUp::from(&stat), skip_unreadable);
            let child = child.map_err(|errno| {
                ListError::Failed(BackupError::Source {
                    path: full_path(&dir_path(), name_bytes),
                    source: errno.into(),
                })
            })?;
            match child {
                None => {}
                Some(Child::Unreadable) => {
                    let rel = child_path(rel_dir, name_bytes);
                    (listed.found).push(Found::Skipped(rel, "unreadable file".into()));
                }
                Some(Child::Special(what)) => {
                    let rel = child_path(rel_dir, name_bytes);
                    tracing::warn!(path = %String::from_utf8_lossy(&rel), "skipping {what}");
                    let why = format!("{what} not backed up");
                    (listed.found).push(Found::Skipped(rel, why));
                }
                Some(Child::Entry { meta, link, inode }) => {
                    let name_at = listed.bytes.len();
                    listed.bytes.extend_from_slice(name_bytes);
                    let link_at = listed.bytes.len();
                    listed.bytes.extend_from_slice(&link.unwrap_or_default());
                    let link_end = listed.bytes.len();
                    (listed.found).push(Found::Entry(Listed {
                        meta,
                        name_at,
                        link_at,
                        link_end,
                        inode,
                    }));
                }
            }
        }
        Ok(listed)
    }

    /// Reads the names of `dir`'s children (without `.` and `..`) and sorts them by their
    /// bytes.
    fn read_names(&mut self, dir: &OwnedFd) -> Result<(), Errno> {
        self.names.clear();
        self.starts.clear();
        let mut entries = RawDir::new(dir, &mut self.getdents);
        while let Some(entry) = entries.next() {
            let entry = entry?;
            let name = entry.file_name().to_bytes_with_nul();
            if name != b".\0" && name != b"..\0" {
                self.starts.push(self.names.len());
                self.names.extend_from_slice(name);
            }
        }
        // Comparing from each start to the end of the buffer orders by name: names are
        // distinct, and the first NUL (before every other byte) ends the comparison.
        let names = &self.names;
        self.starts.sort_unstable_by_key(|&at| &names[at..]);
        Ok(())
    }
}

/// What `lstat` tells of a child, in fixed widths: `struct stat`'s fields differ in width and
/// sign across architectures.
struct LookedUp {
    mode: u32,
    size: u64,
    blocks: u64,
    mtime: i64,
    mtime_nsec: u32,
    nlink: u64,
    dev: u64,
    ino: u64,
}

impl From<&rustix::fs::Stat> for LookedUp {
    // A cast that is needless on one architecture converts on another.
    #[allow(clippy::unnecessary_cast)]
    fn from(stat: &rustix::fs::Stat) -> LookedUp {
        LookedUp {
            mode: stat.st_mode as u32,
            // Never negative for a file.
            size: stat.st_size as u64,
            blocks: stat.st_blocks as u64,
            mtime: stat.st_mtime as i64,
            // Always within 0..1e9.
            mtime_nsec: stat.st_mtime_nsec as u32,
            nlink: stat.st_nlink as u64,
            dev: stat.st_dev as u64,
            ino: stat.st_ino as u64,
        }
    }
}

/// What a looked-up child is.
enum Child {
    Entry {
        meta: Meta,
        /// A symlink's target.
        link: Option<Vec<u8>>,
        /// The (device, inode) of a regular file of more than one link.
        inode: Option<(u64, u64)>,
    },
    /// A regular file this process cannot read, with `--skip-unreadable`.
    Unreadable,
    /// A socket, FIFO or device node: what it is.
    Special(&'static str),
}

/// What one looked-up child of `dir` is; `None` if it vanished.
fn child(
    dir: &OwnedFd,
    name: &CStr,
    looked_up: &LookedUp,
    skip_unreadable: bool,
) -> Result<Option<Child>, Errno> {
    let mut meta = Meta {
        kind: EntryKind::File,
        mode: looked_up.mode & 0o7777,
        mtime: looked_up.mtime,
        mtime_nsec: looked_up.mtime_nsec,
        size: 0,
        sparse: false,
    };
    let (mut link, mut inode) = (None, None);
    match FileType::from_raw_mode(looked_up.mode) {
        FileType::Directory => meta.kind = EntryKind::Dir,
        FileType::Symlink => {
            let target = match rustix::fs::readlinkat(dir, name, Vec::new()) {
                Ok(target) => target,
                Err(Errno::NOENT) => return Ok(None),
                Err(errno) => return Err(errno),
            };
            meta.kind = EntryKind::Symlink;
            link = Some(target.into_bytes());
        }
        FileType::RegularFile => {
            // Without --skip-unreadable, opening the file while archiving reports it by name;
            // checking here too would double the system calls of a re-backup's walk.
            if skip_unreadable
                && rustix::fs::accessat(dir, name, Access::READ_OK, AtFlags::EACCESS).is_err()
            {
                return Ok(Some(Child::Unreadable));
            }
            meta.size = looked_up.size;
            meta.sparse =
                (looked_up.blocks.saturating_mul(512)).saturating_add(MIN_HOLES) <= looked_up.size;
            inode = (looked_up.nlink > 1).then_some((looked_up.dev, looked_up.ino));
        }
        FileType::Socket => return Ok(Some(Child::Special("socket"))),
        FileType::Fifo => return Ok(Some(Child::Special("FIFO"))),
        _ => return Ok(Some(Child::Special("device node"))),
    }
    Ok(Some(Child::Entry { meta, link, inode }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry's path, metadata and link, in order.
    fn listed(tree: &Tree) -> Vec<(Vec<u8>, Meta, Option<Vec<u8>>)> {
        let mut paths = tree.paths();
        (0..tree.len())
            .map(|i| {
                (
                    paths.get(i).to_vec(),
                    tree.meta(i),
                    tree.link(i).map(<[u8]>::to_vec),
                )
            })
            .collect()
    }

    #[test]
    fn directories_to_list_are_taken_in_walk_order_as_peeked() {
        let mut todo = Todo::default();
        let keys = |rels: &[&str]| rels.iter().map(|r| InWalkOrder::of(r.as_bytes())).collect();
        todo.push(keys(&["a", "a-c", "b"]));
        todo.push(keys(&["a/x", "a/y"]));
        todo.push(keys(&["a-c/z"]));
        todo.push(keys(&["a/x/1"]));
        let mut taken = Vec::new();
        while let Some(next) = todo.peek().map(|key| key.0.clone()) {
            let key = todo.pop().unwrap();
            assert_eq!(key.0, next);
            taken.push(String::from_utf8(key.into_rel()).unwrap());
        }
        assert_eq!(taken, ["a", "a/x", "a/x/1", "a/y", "a-c", "a-c/z", "b"]);
        assert!(todo.is_empty());
    }

    #[test]
    fn entries_past_the_first_chunk_keep_their_paths_links_and_metadata() {
        // Tree's comment counts 32 bytes a node.
        assert_eq!(std::mem::size_of::<Node>(), 32);
        let meta = |kind, size| Meta {
            kind,
            mode: 0o640,
            mtime: -7,
            mtime_nsec: 999_999_999,
            size,
            sparse: size == 3,
        };
        let mut tree = Tree::default();
        let a = tree.push(TOP, b"a", meta(EntryKind::Dir, 0), None);
        for i in 0..CHUNK as u64 {
            tree.push(
                a,
                format!("f{i}").as_bytes(),
                meta(EntryKind::File, i),
                None,
            );
        }
        // In the second chunk, under a directory of the first.
        let b = tree.push(a, b"b", meta(EntryKind::Dir, 0), None);
        let ln = tree.push(b, b"ln", meta(EntryKind::Symlink, 0), Some(b"../f3"));
        let hard = tree.push(TOP, b"z", meta(EntryKind::Hardlink, 0), Some(b"a/f3"));
        // Every packed field at its widest.
        let widest = Meta {
            kind: EntryKind::Hardlink,
            mode: 0o7777,
            mtime: i64::MIN,
            mtime_nsec: 999_999_999,
            size: u64::MAX,
            sparse: true,
        };
        let long = tree.push(TOP, &[b'n'; 255], widest, Some(b"x"));
        assert_eq!(tree.meta(long as usize), widest);
        assert_eq!(tree.name(long as usize), [b'n'; 255]);
        assert_eq!((tree.len(), tree.chunks.len()), (CHUNK + 5, 2));
        let mut paths = tree.paths();
        assert_eq!(paths.get(ln as usize), b"a/b/ln");
        assert_eq!(paths.get(4), b"a/f3");
        assert_eq!(paths.get(hard as usize), b"z");
        assert_eq!(tree.link(ln as usize), Some(b"../f3".as_slice()));
        assert_eq!(tree.link(hard as usize), Some(b"a/f3".as_slice()));
        assert_eq!(
            (tree.link(4), tree.meta(4)),
            (None, meta(EntryKind::File, 3))
        );
        assert_eq!(tree.meta(b as usize), meta(EntryKind::Dir, 0));
    }

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
        /// Names of 29 bytes: 56-byte `getdents` records, so 1,000 take more than one call.
        const BIG: usize = 1_000;
        const SIBLINGS: [&str; 6] = ["d07!x", "d07#x", "d07+x", "d07,x", "d07-x", "d07.x"];
        let root = tempfile::tempdir().unwrap();
        // Enough directories that several walkers take part.
        for d in 0..40 {
            for f in 0..5 {
                let dir = root.path().join(format!("d{d:02}/sub"));
                fs::create_dir_all(&dir).unwrap();
                fs::write(dir.join(format!("f{f}")), format!("{d} {f}")).unwrap();
            }
        }
        // Siblings whose names sort between a directory's and its children's paths by bytes
        // (these bytes are below '/'), and a directory longer than one `getdents` call. Each
        // sibling holds more entries than the held-back walk's lookahead: listed before
        // d07/sub, as a byte order would, two fill it and the next waits for the assembly,
        // which waits for d07/sub.
        for sibling in SIBLINGS {
            let dir = root.path().join(sibling);
            fs::create_dir(&dir).unwrap();
            for f in 0..5 {
                fs::write(dir.join(format!("f{f}")), "").unwrap();
            }
        }
        let big = root.path().join("d08/big");
        fs::create_dir(&big).unwrap();
        for f in (0..BIG).rev() {
            fs::write(big.join(format!("a-file-with-a-long-name-{f:05}")), "").unwrap();
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
        // Walkers list directories in the order the assembly takes them, or, held back, they
        // wait for it while it waits for them: a hang, reported as a failure.
        let (done, finished) = std::sync::mpsc::channel();
        let path = root.path().to_owned();
        std::thread::spawn(move || done.send(walk_at_most(&path, false, native::MAX_ENTRIES, 3)));
        let held_back = (finished.recv_timeout(std::time::Duration::from_secs(60)))
            .expect("the held-back walk finishes")
            .unwrap();
        let entries = listed(&tree);
        assert_eq!(listed(&held_back), entries);
        let rels: Vec<&[u8]> = entries.iter().map(|(rel, ..)| rel.as_slice()).collect();
        let mut canonical = rels.clone();
        // Depth-first with children by name bytes is the order of the paths' components.
        canonical.sort_by(|a, b| a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/')));
        assert_eq!(rels, canonical);
        assert_eq!(
            entries.len(),
            40 * (2 + 5) + 4 + SIBLINGS.len() * (1 + 5) + 1 + BIG
        );
        // Asked for out of order, and from the middle, the paths are the same.
        let mut paths = tree.paths();
        for i in (0..tree.len()).rev().chain(150..160) {
            assert_eq!(paths.get(i), entries[i].0.as_slice(), "entry {i}");
        }
        let find = |rel: &[u8]| entries.iter().find(|(r, ..)| r == rel).unwrap();
        let (_, first, link) = find(b"d07/link");
        assert_eq!((first.kind, first.size, link), (EntryKind::File, 6, &None));
        for later in [b"d31/sub/link".as_slice(), b"z-first-made"] {
            let (_, e, link) = find(later);
            assert_eq!(e.kind, EntryKind::Hardlink);
            assert_eq!((e.size, link.as_deref()), (0, Some(b"d07/link".as_slice())));
        }
        let (_, s, link) = find(b"s");
        assert_eq!(
            (s.kind, link.as_deref()),
            (EntryKind::Symlink, Some(b"d07".as_slice()))
        );
    }

    /// A directory swapped for a symlink after its parent was listed is not listed through
    /// the link: the walk fails naming it, rather than recording what lies outside the tree.
    #[test]
    fn a_directory_swapped_for_a_symlink_is_not_listed_through_it() {
        use crate::beneath::tests::{root_and_outside, swap_for_symlink};
        let (dir, outside) = root_and_outside();
        let root = Root::open(dir.path()).unwrap();
        let mut lister = Lister::new();
        assert!(lister.list(dir.path(), &root, b"src/deep", false).is_ok());
        swap_for_symlink(dir.path(), outside.path(), "src");
        for rel in [&b"src"[..], b"src/deep"] {
            match lister.list(dir.path(), &root, rel, false) {
                Err(ListError::Failed(BackupError::Changed { path })) => {
                    assert_eq!(path, full_path(dir.path(), rel));
                }
                Err(ListError::Failed(e)) => panic!("{e}"),
                Err(ListError::Unreadable) => panic!("unreadable"),
                Ok(listed) => panic!("listed {} entries through the link", listed.found.len()),
            }
        }
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
        let names: Vec<String> = listed(&tree)
            .iter()
            .map(|(rel, ..)| String::from_utf8_lossy(rel).into_owned())
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
