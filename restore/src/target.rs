//! The restore target: emptiness checks, moving existing content aside (`--force`), the staging
//! directory inside the target, and the final moves into place.
//!
//! The staging directory lives *inside* the target (`<target>/.wsr-staging-<id>`) because the
//! target is often a mount point (a PVC subPath at `/projects`) whose parent is read-only, so
//! neither a sibling nor a rename of the target itself is possible. Until the tree is complete
//! and verified the target shows only that hidden directory; then a marker file is written and
//! each top-level entry is renamed into place. A crash before the marker leaves the target
//! effectively empty (a rerun discards the stale staging); a crash after it is completed by the
//! rerun, which finds the marker and finishes the moves.

use crate::RestoreError;
use std::fs;
use std::path::{Path, PathBuf};

const STAGING_PREFIX: &str = ".wsr-staging-";
const COMPLETE_MARKER: &str = ".wsr-complete";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Target {
        path: path.to_owned(),
        source,
    }
}

fn is_staging(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with(STAGING_PREFIX))
}

/// Entries of `target` other than wsr's own staging directories. A missing target is empty.
pub fn user_entries(target: &Path) -> Result<Vec<PathBuf>, RestoreError> {
    match fs::read_dir(target) {
        Ok(entries) => {
            let mut out = Vec::new();
            for e in entries {
                let e = e.map_err(io(target))?;
                if !is_staging(&e.file_name()) {
                    out.push(e.path());
                }
            }
            Ok(out)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(RestoreError::Target {
            path: target.to_owned(),
            source: e,
        }),
    }
}

/// A staging directory whose tree is complete, left by an interrupted restore.
pub fn completed_staging(target: &Path) -> Result<Option<PathBuf>, RestoreError> {
    let Ok(entries) = fs::read_dir(target) else {
        return Ok(None);
    };
    for e in entries {
        let e = e.map_err(io(target))?;
        if is_staging(&e.file_name()) && e.path().join(COMPLETE_MARKER).exists() {
            return Ok(Some(e.path()));
        }
    }
    Ok(None)
}

/// Moves the target's current content into a time-stamped sibling `<target>.wsr-aside-<time>`;
/// nothing is deleted. Returns the sibling.
pub fn move_aside(target: &Path, entries: &[PathBuf]) -> Result<PathBuf, RestoreError> {
    let name = target.file_name().ok_or_else(|| {
        RestoreError::Invalid(format!("{} has no directory name", target.display()))
    })?;
    let stamp = chrono::Utc::now()
        .format("%Y%m%dT%H%M%S%.3fZ")
        .to_string()
        .replace('.', "");
    let aside = target.with_file_name(format!("{}.wsr-aside-{stamp}", name.to_string_lossy()));
    fs::create_dir(&aside).map_err(|source| RestoreError::Target {
        path: aside.clone(),
        source,
    })?;
    for entry in entries {
        let dest = aside.join(entry.file_name().expect("directory entry has a name"));
        fs::rename(entry, &dest).map_err(|source| RestoreError::MoveAside {
            from: entry.clone(),
            to: dest,
            source,
        })?;
    }
    Ok(aside)
}

/// Removes stale (incomplete) staging directories and creates a fresh one.
pub fn create_staging(target: &Path) -> Result<PathBuf, RestoreError> {
    fs::create_dir_all(target).map_err(io(target))?;
    for e in fs::read_dir(target).map_err(io(target))? {
        let e = e.map_err(io(target))?;
        if is_staging(&e.file_name()) {
            tracing::info!(path = %e.path().display(), "removing an interrupted restore's staging directory");
            // Our own directory, below the target, never a symlink (created with create_dir).
            if e.file_type().map_err(io(target))?.is_dir() {
                make_writable(&e.path());
                fs::remove_dir_all(e.path()).map_err(io(&e.path()))?;
            }
        }
    }
    let staging = target.join(format!("{STAGING_PREFIX}{}", std::process::id()));
    fs::create_dir(&staging).map_err(io(&staging))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&staging, fs::Permissions::from_mode(0o700)).map_err(io(&staging))?;
    Ok(staging)
}

/// Removes a staging directory after a failed restore (best effort: a rerun removes it too).
pub fn discard_staging(staging: &Path) {
    make_writable(staging);
    if let Err(e) = fs::remove_dir_all(staging) {
        tracing::warn!(staging = %staging.display(), "could not remove the staging directory: {e}");
    }
}

/// Restored directories may be read-only (mode 0o555); removal needs write permission on them.
fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
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
    staging: &Path,
    report: &crate::RestoreReport,
) -> Result<(), RestoreError> {
    let marker = staging.join(COMPLETE_MARKER);
    let json = serde_json::to_vec(report).expect("report serialises");
    fs::write(&marker, json)
        .and_then(|()| fs::File::open(&marker)?.sync_all())
        .map_err(io(&marker))?;
    fs::File::open(staging)
        .and_then(|d| d.sync_all())
        .map_err(io(staging))?;
    crate::test_hooks::maybe_abort("after-marker");
    finish_moves(target, staging)
}

/// The report stored in a completed staging directory's marker.
pub fn read_marker(staging: &Path) -> Result<crate::RestoreReport, RestoreError> {
    let marker = staging.join(COMPLETE_MARKER);
    let bytes = fs::read(&marker).map_err(io(&marker))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| RestoreError::Corrupt(format!("{}: {e}", marker.display())))
}

/// Moves every staged entry into the target, then removes the staging directory.
pub fn finish_moves(target: &Path, staging: &Path) -> Result<(), RestoreError> {
    for e in fs::read_dir(staging).map_err(io(staging))? {
        let e = e.map_err(io(staging))?;
        if e.file_name() == COMPLETE_MARKER {
            continue;
        }
        let dest = target.join(e.file_name());
        fs::rename(e.path(), &dest).map_err(io(&dest))?;
    }
    fs::remove_file(staging.join(COMPLETE_MARKER)).map_err(io(staging))?;
    fs::remove_dir(staging).map_err(io(staging))?;
    fs::File::open(target)
        .and_then(|d| d.sync_all())
        .map_err(io(target))?;
    Ok(())
}

/// Free bytes and inodes on the filesystem holding `path`.
pub fn free_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
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
