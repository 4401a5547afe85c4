//! Safe unpacking of tar streams into a directory the caller created empty (a staging dir).
//!
//! Threat model: the archive is hostile; the staging directory is private to this process.
//! Nothing outside the root is ever created or modified: every path is checked lexically (no
//! absolute paths, no `..`), and an in-memory model of everything this unpacker created is
//! consulted before touching the disk, so no entry is ever written through a symlink or a file
//! that an earlier entry planted, and no entry replaces another. Files are opened with
//! `O_CREAT|O_EXCL|O_NOFOLLOW`. Hard links may only point at regular files restored by this
//! same unpacker. Device nodes, FIFOs and sockets are never created. setuid/setgid bits are
//! dropped. The total expansion is bounded before each write. Several tar streams (the layers of
//! one artifact) may be unpacked concurrently into the same root.

use crate::codec::EntryKind;
use crate::digest::{Digest, Hasher};
use crate::native::IndexEntry;
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Why unpacking stopped. Every variant names the entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("refusing archive entry {path:?}: {reason}")]
    Unsafe { path: String, reason: String },
    #[error(
        "archive expands beyond the limit of {limit} bytes at entry {path:?}; free space or --max-size bounds it"
    )]
    TooLarge { path: String, limit: u64 },
    #[error("archive has more than {limit} entries (free inodes or --max-entries bound it)")]
    TooManyEntries { limit: u64 },
    #[error("verification failed for {path:?}: {what}")]
    Mismatch { path: String, what: String },
    #[error("corrupt archive: {0}")]
    Corrupt(io::Error),
    #[error("cannot write {path}")]
    Io { path: String, source: io::Error },
}

impl UnpackError {
    fn unsafe_entry(path: &[u8], reason: impl Into<String>) -> UnpackError {
        UnpackError::Unsafe {
            path: show(path),
            reason: reason.into(),
        }
    }
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
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
    /// Write to disk. `false` checks and hashes everything but creates nothing (verify mode).
    pub write: bool,
}

/// What was restored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub bytes: u64,
    /// Entries deliberately not created, with the reason (device nodes, FIFOs, …).
    pub skipped: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File,
    Symlink,
}

#[derive(Default)]
struct State {
    nodes: HashMap<Vec<u8>, Node>,
    dir_meta: Vec<(Vec<u8>, u32, i64)>,
    hardlinks: Vec<(Vec<u8>, Vec<u8>)>,
    seen_expected: u64,
    report: UnpackReport,
    entries: u64,
}

/// Unpacks tar streams into `root`; see the module docs for the guarantees.
pub struct Unpacker {
    root: PathBuf,
    options: UnpackOptions,
    expected: Option<HashMap<Vec<u8>, IndexEntry>>,
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
    /// `root` must exist; `expected` is the native file index, when there is one, against which
    /// every entry (type, mode, size, mtime, link, content hash) is checked.
    pub fn new(root: &Path, options: UnpackOptions, expected: Option<Vec<IndexEntry>>) -> Unpacker {
        let expected = expected.map(|entries| {
            entries
                .into_iter()
                .filter(|e| {
                    selected(&options.select, &e.path.0) || options.aliases.contains_key(&e.path.0)
                })
                .map(|mut e| (std::mem::take(&mut e.path.0), e))
                .collect()
        });
        let mut state = State::default();
        state.nodes.insert(Vec::new(), Node::Dir);
        Unpacker {
            root: root.to_owned(),
            options,
            expected,
            state: Mutex::new(state),
            on_entry: None,
        }
    }

    /// Reports each restored entry to `callback`.
    pub fn on_entry(mut self, callback: EntryCallback) -> Unpacker {
        self.on_entry = Some(callback);
        self
    }

    fn full(&self, path: &[u8]) -> PathBuf {
        self.root.join(std::ffi::OsStr::from_bytes(path))
    }

    fn io_err(&self, path: &[u8]) -> impl FnOnce(io::Error) -> UnpackError + '_ {
        let p = show(path);
        move |source| UnpackError::Io { path: p, source }
    }

    /// Unpacks every entry of one tar stream.
    /// The reader is borrowed so the caller can drain what follows the end-of-archive marker
    /// (padding), which still counts towards the stream's digest.
    pub fn unpack_tar<R: Read>(&self, reader: &mut R) -> Result<(), UnpackError> {
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(UnpackError::Corrupt)? {
            let entry = entry.map_err(UnpackError::Corrupt)?;
            let size = entry.size();
            self.unpack_entry(entry)?;
            if let Some(callback) = &self.on_entry {
                callback(size);
            }
        }
        Ok(())
    }

    fn unpack_entry<R: Read>(&self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().map_err(UnpackError::Corrupt)? & 0o1777; // setuid/setgid dropped
        let mtime = header
            .mtime()
            .map_err(UnpackError::Corrupt)?
            .min(i64::MAX as u64) as i64;
        let size = entry.size();
        let link = entry.link_name_bytes().map(|l| l.into_owned());

        let Some(path) = normalize(&raw).map_err(|r| UnpackError::unsafe_entry(&raw, r))? else {
            // The archive root (`./`): the target directory itself keeps its own mode.
            return Ok(());
        };
        let kind = match kind {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                EntryKind::File
            }
            tar::EntryType::Symlink => EntryKind::Symlink,
            tar::EntryType::Link => EntryKind::Hardlink,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => return Ok(()),
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
                    .report
                    .skipped
                    .push((show(&path), format!("{what} not restored")));
                return Ok(());
            }
        };
        // Unselected entries are skipped (the tar reader skips their data), except files that
        // are restored under an alias.
        let (path, aliased_from) = if selected(&self.options.select, &path) {
            (path, None)
        } else {
            match self.options.aliases.get(&path) {
                Some(alias) if kind == EntryKind::File => (alias.clone(), Some(path)),
                _ => return Ok(()),
            }
        };
        let expected = self.check_expected(
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
            if expected.is_some() {
                self.state.lock().unwrap().seen_expected += 1;
            }
            return Ok(());
        }

        {
            let mut st = self.state.lock().unwrap();
            st.entries += 1;
            if st.entries > self.options.max_entries {
                return Err(UnpackError::TooManyEntries {
                    limit: self.options.max_entries,
                });
            }
            if kind == EntryKind::File && st.report.bytes + size > self.options.max_bytes {
                return Err(UnpackError::TooLarge {
                    path: show(&path),
                    limit: self.options.max_bytes,
                });
            }
            self.claim(&mut st, &path, kind)?;
            if expected.is_some() {
                st.seen_expected += 1;
            }
            match kind {
                EntryKind::Dir => {
                    st.dir_meta.push((path.clone(), mode, mtime));
                    st.report.dirs += 1;
                }
                EntryKind::Symlink => {
                    let target = link
                        .clone()
                        .filter(|t| !t.is_empty() && !t.contains(&0))
                        .ok_or_else(|| {
                            UnpackError::unsafe_entry(&path, "symlink without a valid target")
                        })?;
                    if self.options.write {
                        let full = self.full(&path);
                        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &full)
                            .map_err(self.io_err(&path))?;
                        set_symlink_mtime(&full, mtime).map_err(self.io_err(&path))?;
                    }
                    st.report.symlinks += 1;
                }
                EntryKind::Hardlink => {
                    let target = link_target.clone().expect("hard links have a target");
                    let target = self.options.aliases.get(&target).cloned().unwrap_or(target);
                    st.hardlinks.push((path.clone(), target));
                }
                EntryKind::File => {
                    st.report.files += 1;
                    st.report.bytes += size;
                }
            }
        }
        if kind == EntryKind::File {
            let digest = self.write_file(&path, &mut entry, mode, mtime)?;
            if let Some(want) = expected.and_then(|e| e.sha256)
                && want != digest
            {
                return Err(UnpackError::Mismatch {
                    path: show(&path),
                    what: format!("content digest {digest}, index says {want}"),
                });
            }
        }
        Ok(())
    }

    /// Records `path` as created by us, creating missing parents. Fails if the path or any
    /// parent is something other than a directory we made.
    fn claim(&self, st: &mut State, path: &[u8], kind: EntryKind) -> Result<(), UnpackError> {
        for parent in parents(path) {
            match st.nodes.get(parent) {
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
                    if self.options.write {
                        fs::create_dir(self.full(parent)).map_err(self.io_err(parent))?;
                    }
                    st.nodes.insert(parent.to_vec(), Node::Dir);
                }
            }
        }
        let node = match kind {
            EntryKind::Dir => Node::Dir,
            EntryKind::Symlink => Node::Symlink,
            EntryKind::File | EntryKind::Hardlink => Node::File,
        };
        match st.nodes.get(path) {
            // A directory entry for a directory created implicitly (or listed twice) only updates metadata.
            Some(Node::Dir) if node == Node::Dir => Ok(()),
            Some(_) => Err(UnpackError::unsafe_entry(
                path,
                "duplicate entry would replace an earlier one",
            )),
            None => {
                if node == Node::Dir && self.options.write {
                    fs::create_dir(self.full(path)).map_err(self.io_err(path))?;
                }
                st.nodes.insert(path.to_vec(), node);
                Ok(())
            }
        }
    }

    fn write_file(
        &self,
        path: &[u8],
        data: &mut impl Read,
        mode: u32,
        mtime: i64,
    ) -> Result<Digest, UnpackError> {
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut file = if self.options.write {
            Some(
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(self.full(path))
                    .map_err(self.io_err(path))?,
            )
        } else {
            None
        };
        loop {
            let n = data.read(&mut buf).map_err(UnpackError::Corrupt)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if let Some(f) = file.as_mut() {
                f.write_all(&buf[..n]).map_err(self.io_err(path))?;
            }
        }
        if let Some(f) = file {
            f.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(self.io_err(path))?;
            let t = system_time(mtime);
            f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
                .map_err(self.io_err(path))?;
        }
        Ok(hasher.finish().0)
    }

    fn check_expected(
        &self,
        path: &[u8],
        kind: EntryKind,
        mode: u32,
        mtime: i64,
        size: u64,
        link: Option<&[u8]>,
    ) -> Result<Option<IndexEntry>, UnpackError> {
        let Some(expected) = &self.expected else {
            return Ok(None);
        };
        let Some(want) = expected.get(path) else {
            return Err(UnpackError::Mismatch {
                path: show(path),
                what: "entry is not in the file index".into(),
            });
        };
        let size = if kind == EntryKind::File { size } else { 0 };
        let mismatch = if want.kind != kind {
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
        match mismatch {
            Some(what) => Err(UnpackError::Mismatch {
                path: show(path),
                what,
            }),
            None => Ok(Some(want.clone())),
        }
    }

    /// Creates hard links, applies directory modes and times (deepest first, after all their
    /// children exist), and checks that every indexed entry arrived.
    pub fn finish(self) -> Result<UnpackReport, UnpackError> {
        let mut st = std::mem::take(&mut *self.state.lock().unwrap());
        let hardlinks = std::mem::take(&mut st.hardlinks);
        let link_paths: std::collections::HashSet<&[u8]> =
            hardlinks.iter().map(|(p, _)| p.as_slice()).collect();
        for (path, target) in &hardlinks {
            let (path, target) = (path.as_slice(), target.as_slice());
            match st.nodes.get(target) {
                // A link to another link entry (a chain) is not something wsr or GNU tar writes.
                Some(Node::File) if !link_paths.contains(target) => {
                    if self.options.write {
                        fs::hard_link(self.full(target), self.full(path)).map_err(|source| {
                            UnpackError::Io {
                                path: show(path),
                                source,
                            }
                        })?;
                    }
                    st.report.hardlinks += 1;
                }
                None if self.options.select.is_some() => {
                    st.report.skipped.push((
                        show(path),
                        format!(
                            "hard-link target {:?} is outside the selected paths",
                            show(target)
                        ),
                    ));
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
        if self.options.write {
            st.dir_meta.sort_by_key(|(p, _, _)| {
                std::cmp::Reverse(p.iter().filter(|&&b| b == b'/').count())
            });
            for (path, mode, mtime) in &st.dir_meta {
                let full = self.full(path);
                fs::set_permissions(&full, fs::Permissions::from_mode(*mode))
                    .map_err(self.io_err(path))?;
                let t = system_time(*mtime);
                let dir = fs::File::open(&full).map_err(self.io_err(path))?;
                dir.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
                    .map_err(self.io_err(path))?;
            }
        }
        if let Some(expected) = &self.expected
            && st.seen_expected != expected.len() as u64
        {
            let missing = expected.len() as u64 - st.seen_expected;
            return Err(UnpackError::Mismatch {
                path: String::new(),
                what: format!("{missing} entries of the file index are missing from the archive"),
            });
        }
        Ok(st.report)
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
pub fn normalize_selection(paths: &[String]) -> Result<Vec<Vec<u8>>, String> {
    paths
        .iter()
        .map(|p| match normalize(p.as_bytes()) {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Err(format!(
                "--paths {p:?} names the root; omit --paths to restore everything"
            )),
            Err(reason) => Err(format!("--paths {p:?}: {reason}")),
        })
        .collect()
}
