//! The restore target: emptiness checks, moving existing content aside (`--force`), the staging
//! directory inside the target, and the final moves into place.
//!
//! The staging directory lives *inside* the target (`<target>/.wsr-restore-<token>`) because the
//! target is often a mount point (a PVC subPath at `/projects`) whose parent is read-only, so
//! neither a sibling nor a rename of the target itself is possible. Layout:
//!
//! ```text
//! <target>/.wsr-restore-<token>/   mode 0700, owned by the restoring user
//!     identity                     {token, dev, ino, uid}: written O_EXCL|O_NOFOLLOW at creation
//!     tree/                        the unpacker's root: everything from the archive, nothing else
//!     complete                     the completion marker (the report), written once verified
//!                                  (as `complete.partial`, then renamed: never seen half-written)
//! ```
//!
//! The archive cannot reach this bookkeeping: its entries live below `tree/`, and the unpacker
//! never creates a top-level name starting with [`STAGING_PREFIX`] (so no restored tree contains
//! one). Leftover state is trusted only after an identity check: a directory (not a symlink)
//! owned by us with mode 0700, whose `identity` file (a regular file owned by us, opened without
//! following symlinks) names the directory's own token, device and inode. Anything else with
//! such a name is the user's, like every other entry. Entries are moved with
//! `renameat2(RENAME_NOREPLACE)`, so nothing existing is ever replaced.
//!
//! A crash before `complete` is written leaves the target showing only that hidden directory (a
//! rerun discards it); a crash after it is finished by the rerun. Before `complete` is written
//! the tree's filesystem is flushed ([`TreeFlush`]): the marker is durable, and a marker
//! over files whose contents were still in the page cache would, after a power loss, vouch for
//! empty files that no rerun redoes. `complete` carries the same
//! identity as `identity`, and the final clean-up removes `identity` first, then `complete`, so
//! a kill at any instant leaves a directory a rerun recognises: one holding nothing (killed
//! before `identity` was written, or after `complete` was removed) is ours to remove, whoever
//! it looks like, because there is nothing in it to lose.

use crate::{RestoreError, RestoreReport};
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;
use wsr_format::unpack::DeferredDir;

/// Names starting with this, at the top of a target, may be wsr's staging directories.
pub const STAGING_PREFIX: &str = wsr_format::media::STAGING_PREFIX;
const IDENTITY: &str = "identity";
const COMPLETE: &str = "complete";
/// The marker while it is written; renamed to [`COMPLETE`] once whole and durable.
const COMPLETE_PARTIAL: &str = "complete.partial";
const TREE: &str = "tree";
/// Largest completion marker read back (the report lists at most 1000 skipped entries).
const MAX_MARKER_BYTES: u64 = 16 << 20;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Target {
        path: path.to_owned(),
        source,
    }
}

/// A staging directory of ours (created by this run, or a leftover that passed the identity
/// check).
#[derive(Debug)]
pub struct Staging {
    pub dir: PathBuf,
    token: String,
}

impl Staging {
    /// The unpacker's root.
    pub fn tree(&self) -> PathBuf {
        self.dir.join(TREE)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Identity {
    token: String,
    dev: u64,
    ino: u64,
    uid: u32,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Completed {
    token: String,
    /// The staging directory's identity again, so the marker alone is enough to trust it.
    #[serde(default)]
    identity: Option<Identity>,
    report: RestoreReport,
    deferred_dirs: Vec<DeferredDir>,
}

/// What a target holds.
struct Scan {
    /// Everything that is not a trusted staging directory.
    user: Vec<PathBuf>,
    /// Trusted staging directories, with the completion marker of those that are complete.
    ours: Vec<(Staging, Option<Completed>)>,
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn scan(target: &Path) -> Result<Scan, RestoreError> {
    let mut scan = Scan {
        user: Vec::new(),
        ours: Vec::new(),
    };
    let entries = match fs::read_dir(target) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(scan),
        Err(e) => return Err(io(target)(e)),
    };
    for e in entries {
        let e = e.map_err(io(target))?;
        match recognise(&e.path()) {
            Some(ours) => scan.ours.push(ours),
            None => scan.user.push(e.path()),
        }
    }
    Ok(scan)
}

/// The identity check: `Some` only for a staging directory this user created (see the module
/// docs), with its completion marker when it is complete.
fn recognise(dir: &Path) -> Option<(Staging, Option<Completed>)> {
    let token = dir.file_name()?.to_str()?.strip_prefix(STAGING_PREFIX)?;
    if token.len() != 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let meta = fs::symlink_metadata(dir).ok()?;
    if !meta.is_dir() || meta.uid() != euid() || meta.mode() & 0o7777 != 0o700 {
        return None;
    }
    let staging = Staging {
        dir: dir.to_owned(),
        token: token.to_owned(),
    };
    if holds_nothing(dir) {
        return Some((staging, None));
    }
    let matches = |identity: &Identity| {
        identity.token == token
            && identity.dev == meta.dev()
            && identity.ino == meta.ino()
            && identity.uid == meta.uid()
    };
    let identity = read_own_file(&dir.join(IDENTITY), 4096)
        .and_then(|bytes| serde_json::from_slice::<Identity>(&bytes).ok());
    // Only a marker that reads back whole counts (one torn by an older wsr's crash does not:
    // the tree is then redone rather than the target wedged).
    let marker = read_own_file(&dir.join(COMPLETE), MAX_MARKER_BYTES)
        .and_then(|bytes| serde_json::from_slice::<Completed>(&bytes).ok())
        .filter(|marker| marker.token == token);
    if let Some(identity) = identity {
        return matches(&identity).then_some((staging, marker));
    }
    // Killed between removing `identity` and `complete`: the marker vouches for itself.
    let marker = marker?;
    let trusted = marker.identity.as_ref().is_some_and(matches);
    trusted.then_some((staging, Some(marker)))
}

/// Whether a staging-named directory holds nothing worth keeping: no entry at all, or only an
/// empty `identity` (a restore killed while creating it).
fn holds_nothing(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    for entry in entries {
        let Ok(entry) = entry else { return false };
        let empty_identity = entry.file_name() == IDENTITY
            && entry.metadata().is_ok_and(|m| m.is_file() && m.len() == 0);
        if !empty_identity {
            return false;
        }
    }
    true
}

/// Reads a small regular file we wrote: not through a symlink, owned by us, at most `limit`.
fn read_own_file(path: &Path, limit: u64) -> Option<Vec<u8>> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.uid() != euid() || meta.len() > limit {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// Entries of `target` other than wsr's own (trusted) staging directories. A missing target is
/// empty.
pub fn user_entries(target: &Path) -> Result<Vec<PathBuf>, RestoreError> {
    Ok(scan(target)?.user)
}

/// Fails, before any download, when this process cannot create entries in an existing
/// `target`, saying who owns it and who the restore runs as (upstream #1636: a volume owned
/// by the workspace's uid, a restore running as another). A target that does not exist yet
/// passes: creating it is checked when it happens.
pub fn check_writable(target: &Path) -> Result<(), RestoreError> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let failed = |source| RestoreError::Target {
        path: target.to_owned(),
        source,
    };
    let meta = match fs::metadata(target) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(failed(e)),
    };
    let path = std::ffi::CString::new(target.as_os_str().as_bytes())
        .map_err(|e| failed(std::io::Error::other(e)))?;
    // SAFETY: access(2) only reads the NUL-terminated path.
    if unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EACCES) {
        return Err(failed(error));
    }
    // SAFETY: getuid and getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    Err(failed(std::io::Error::new(
        error.kind(),
        format!(
            "{error}: it is owned by uid {} gid {} with mode {:04o}, and this restore runs as uid \
             {uid} gid {gid}; run the restore as the directory's owner (the workspace's \
             runAsUser), or make it writable by group {gid} (fsGroup, or mode g+w with group {gid})",
            meta.uid(),
            meta.gid(),
            meta.mode() & 0o7777
        ),
    )))
}

/// A trusted staging directory whose tree is complete, left by an interrupted restore, with
/// the report and the deferred directory modes its marker holds.
pub fn completed_staging(
    target: &Path,
) -> Result<Option<(Staging, RestoreReport, Vec<DeferredDir>)>, RestoreError> {
    Ok(scan(target)?
        .ours
        .into_iter()
        .find_map(|(s, marker)| marker.map(|m| (s, m.report, m.deferred_dirs))))
}

/// Moves the target's current content aside; nothing is deleted. The content goes to a
/// time-stamped sibling `<target>.wsr-aside-<time>` when the target's parent is on the same
/// filesystem and writable, and otherwise (a mount point, a read-only parent) to
/// `<target>/.wsr-aside-<time>`, which a rename can always reach. Returns where it went.
pub fn move_aside(target: &Path, entries: &[PathBuf]) -> Result<PathBuf, RestoreError> {
    let name = target.file_name().ok_or_else(|| RestoreError::TargetName {
        path: target.to_owned(),
    })?;
    let stamp = chrono::Utc::now()
        .format("%Y%m%dT%H%M%S%.3fZ")
        .to_string()
        .replace('.', "");
    let sibling = target.with_file_name(format!("{}.wsr-aside-{stamp}", name.to_string_lossy()));
    let same_fs = match (target.parent().map(fs::metadata), fs::metadata(target)) {
        (Some(Ok(parent)), Ok(t)) => parent.dev() == t.dev(),
        _ => false,
    };
    check_movable(entries)?;
    let aside = if same_fs && fs::create_dir(&sibling).is_ok() {
        sibling
    } else {
        // A random suffix: an archive cannot guess the name and collide with it.
        let suffix = &random_token().map_err(io(target))?[..8];
        let inside = target.join(format!(".wsr-aside-{stamp}-{suffix}"));
        fs::create_dir(&inside).map_err(io(&inside))?;
        inside
    };
    for entry in entries {
        let dest = aside.join(entry.file_name().expect("directory entry has a name"));
        move_entry(entry, &dest).map_err(|source| RestoreError::MoveAside {
            from: entry.clone(),
            to: dest,
            source,
        })?;
    }
    Ok(aside)
}

/// Moving a directory to another parent needs write permission on it: one we own can be given
/// that for the move, another user's must already grant it. Checked for every entry before
/// the first one moves, so a refusal leaves the target as it was.
fn check_movable(entries: &[PathBuf]) -> Result<(), RestoreError> {
    for entry in entries {
        let meta = fs::symlink_metadata(entry).map_err(io(entry))?;
        if !meta.is_dir() || meta.uid() == euid() || euid() == 0 {
            continue;
        }
        let c = CString::new(entry.as_os_str().as_bytes()).map_err(std::io::Error::other);
        let c = c.map_err(io(entry))?;
        // SAFETY: `c` is a valid NUL-terminated path.
        let rc =
            unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::W_OK, libc::AT_EACCESS) };
        if rc != 0 {
            return Err(RestoreError::Target {
                path: entry.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// Renames without replacing; a directory of ours without owner write permission (which a
/// rename to another parent needs) gets it for the move and its mode back afterwards.
fn move_entry(from: &Path, to: &Path) -> std::io::Result<()> {
    match rename_noreplace(from, to) {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            let meta = fs::symlink_metadata(from)?;
            if !meta.is_dir() || meta.uid() != euid() {
                return Err(e);
            }
            let mode = meta.mode() & 0o7777;
            fs::set_permissions(from, fs::Permissions::from_mode(mode | 0o700))?;
            let moved = rename_noreplace(from, to);
            let at = if moved.is_ok() { to } else { from };
            fs::set_permissions(at, fs::Permissions::from_mode(mode))?;
            moved
        }
        other => other,
    }
}

/// Removes our stale (incomplete) staging directories: an interrupted restore's, whose tree
/// was not complete.
pub fn remove_stale_staging(target: &Path) -> Result<(), RestoreError> {
    for (stale, marker) in scan(target)?.ours {
        if marker.is_none() {
            tracing::info!(path = %stale.dir.display(), "removing an interrupted restore's staging directory");
            make_writable(&stale.dir);
            fs::remove_dir_all(&stale.dir).map_err(io(&stale.dir))?;
        }
    }
    Ok(())
}

/// Removes our stale staging directories and creates a fresh one.
pub fn create_staging(target: &Path) -> Result<Staging, RestoreError> {
    fs::create_dir_all(target).map_err(io(target))?;
    remove_stale_staging(target)?;
    let token = random_token().map_err(io(target))?;
    let dir = target.join(format!("{STAGING_PREFIX}{token}"));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(io(&dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
    let meta = fs::symlink_metadata(&dir).map_err(io(&dir))?;
    let identity = Identity {
        token: token.clone(),
        dev: meta.dev(),
        ino: meta.ino(),
        uid: meta.uid(),
    };
    write_new(
        &dir.join(IDENTITY),
        &serde_json::to_vec(&identity).expect("identity serialises"),
    )?;
    fs::create_dir(dir.join(TREE)).map_err(io(&dir))?;
    Ok(Staging { dir, token })
}

/// Creates `path` (never through a symlink, never over an existing file) with `bytes`, durably.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), RestoreError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io(path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io(path))
}

/// How often the tree's filesystem is flushed while a restore writes the tree.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// The restored tree's way to disk: its filesystem is flushed (`syncfs`) every [`FLUSH_EVERY`]
/// on a thread of its own while the restore writes, and once more when the tree is complete
/// ([`TreeFlush::finish`]). Files are not fsynced one by one: a restore creates tens of
/// thousands, and a flush writes them in the order the disk prefers. It flushes other writers'
/// data on that filesystem too; a workspace volume has no other writer during a restore.
///
/// Why along the way: writing back is kernel work (ext4 allocates the blocks of its
/// delayed-allocation files then) that a single flush at the end did alone, after the last
/// byte had arrived: 1.1 s of a 4.3 s restore of the benchmark's 1 GB corpus, while cores and
/// disk had waited on the download and the unpacking. Flushed every 200 ms, the final flush
/// found almost nothing left (0.05 s): by hand, 4.36-4.61 s became 4.09-4.52 s from a local
/// registry, 5.76-5.97 s became 4.73-4.86 s with the registry 10 ms away. A restore shorter
/// than the period never flushes along the way.
///
/// Why the final flush uses a descriptor opened before the tree was written: `syncfs` reports
/// a writeback error only to descriptors opened before it happened (the filesystem's error
/// sequence is sampled at open), and a flush along the way may be the one whose writeback
/// fails. Those flushes report to their own descriptor and are not acted on; the final one
/// reports every error since the restore began.
pub struct TreeFlush {
    from_start: fs::File,
    stop: Option<mpsc::Sender<()>>,
    flusher: Option<JoinHandle<()>>,
}

impl TreeFlush {
    /// Opens `tree`'s filesystem for the final flush and starts flushing it along the way.
    pub fn start(tree: &Path) -> Result<TreeFlush, RestoreError> {
        let from_start = fs::File::open(tree).map_err(io(tree))?;
        let along = fs::File::open(tree).map_err(io(tree))?;
        let (stop, stopped) = mpsc::channel::<()>();
        let flusher = std::thread::Builder::new()
            .name("wsr-flush".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(FLUSH_EVERY) {
                    let _ = syncfs(&along);
                }
            })
            .map_err(io(tree))?;
        Ok(TreeFlush {
            from_start,
            stop: Some(stop),
            flusher: Some(flusher),
        })
    }

    /// Stops the flushes along the way and flushes once more: returns any error writing back
    /// the filesystem's data since [`TreeFlush::start`].
    pub fn finish(mut self, tree: &Path) -> Result<(), RestoreError> {
        self.stop_along();
        syncfs(&self.from_start).map_err(io(tree))
    }

    /// Waits for at most the one flush under way.
    fn stop_along(&mut self) {
        drop(self.stop.take());
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

impl Drop for TreeFlush {
    fn drop(&mut self) {
        self.stop_along();
    }
}

fn syncfs(on: &fs::File) -> std::io::Result<()> {
    // SAFETY: syncfs only reads the descriptor, which `on` keeps open for the call.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(on)) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Removes a staging directory after a failed restore (best effort: a rerun removes it too).
pub fn discard_staging(staging: &Staging) {
    make_writable(&staging.dir);
    if let Err(e) = fs::remove_dir_all(&staging.dir) {
        tracing::warn!(staging = %staging.dir.display(), "could not remove the staging directory: {e}");
    }
}

/// Restored directories may be read-only (mode 0o555); removal needs write permission on them.
/// Only directories are changed, never through a symlink.
fn make_writable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&e.path());
            }
        }
    }
}

/// Marks the staged tree complete (durably, with the report a resumed run will return), then
/// moves it into place.
pub fn commit(
    target: &Path,
    staging: &Staging,
    report: &RestoreReport,
    deferred_dirs: Vec<DeferredDir>,
) -> Result<(), RestoreError> {
    let meta = fs::symlink_metadata(&staging.dir).map_err(io(&staging.dir))?;
    let completed = Completed {
        token: staging.token.clone(),
        identity: Some(Identity {
            token: staging.token.clone(),
            dev: meta.dev(),
            ino: meta.ino(),
            uid: meta.uid(),
        }),
        report: report.clone(),
        deferred_dirs,
    };
    // Written under another name and renamed: a kill mid-write must not leave a `complete`
    // that a rerun would trust and then fail to read.
    let partial = staging.dir.join(COMPLETE_PARTIAL);
    let marker = staging.dir.join(COMPLETE);
    write_new(
        &partial,
        &serde_json::to_vec(&completed).expect("marker serialises"),
    )?;
    crate::test_hooks::maybe_abort("before-marker-rename");
    rename_noreplace(&partial, &marker).map_err(io(&marker))?;
    fs::File::open(&staging.dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&staging.dir))?;
    crate::test_hooks::maybe_abort("after-marker");
    finish_moves(target, staging, &completed.deferred_dirs)
}

/// Moves every staged entry into the target (never replacing anything), applies the deferred
/// directory modes, then removes the staging directory.
pub fn finish_moves(
    target: &Path,
    staging: &Staging,
    deferred_dirs: &[DeferredDir],
) -> Result<(), RestoreError> {
    let tree = staging.tree();
    if let Ok(entries) = fs::read_dir(&tree) {
        for e in entries {
            let e = e.map_err(io(&tree))?;
            let dest = target.join(e.file_name());
            rename_noreplace(&e.path(), &dest).map_err(io(&dest))?;
        }
        fs::remove_dir(&tree).map_err(io(&tree))?;
    }
    for dir in deferred_dirs {
        let path = target.join(OsStr::from_bytes(&dir.name.0));
        apply_dir_mode(&path, dir.mode, dir.mtime).map_err(io(&path))?;
    }
    // `identity` first: the marker alone still identifies the directory (see the module docs).
    for name in [IDENTITY, COMPLETE] {
        let path = staging.dir.join(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
            _ => crate::test_hooks::maybe_abort(&format!("after-removing-{name}")),
        }
    }
    fs::remove_dir(&staging.dir).map_err(io(&staging.dir))?;
    fs::File::open(target)
        .and_then(|d| d.sync_all())
        .map_err(io(target))?;
    Ok(())
}

/// Sets a moved directory's final mode and mtime (opened without following a symlink).
fn apply_dir_mode(path: &Path, mode: u32, mtime: i64) -> std::io::Result<()> {
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.max(0) as u64);
    dir.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))?;
    dir.set_permissions(fs::Permissions::from_mode(mode))
}

/// `rename` that fails with `EEXIST` instead of replacing `to` (`renameat2(RENAME_NOREPLACE)`).
/// Filesystems without the flag get a check-then-rename (the target is not shared with anyone
/// during a restore).
pub fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD resolves them like rename(2).
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EINVAL) {
        return Err(err);
    }
    if fs::symlink_metadata(to).is_ok() {
        return Err(std::io::Error::from_raw_os_error(libc::EEXIST));
    }
    fs::rename(from, to)
}

/// Free bytes and inodes on the filesystem holding `path`.
pub fn free_space(path: &Path) -> Option<(u64, u64)> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let inodes = if st.f_files == 0 {
        u64::MAX
    } else {
        st.f_favail as u64
    };
    Some((st.f_bavail as u64 * st.f_frsize as u64, inodes))
}
