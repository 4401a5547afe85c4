//! Walking the source tree into the canonical entry list: depth-first, children sorted by name
//! bytes, symlinks never followed, hard links detected by (device, inode); a restore's staging
//! directories at the top are left out.

use crate::BackupError;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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
    let mut tree = Tree::default();
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    walk_dir(root, &[], skip_unreadable, max, &mut tree, &mut links)?;
    Ok(tree)
}

fn walk_dir(
    root: &Path,
    rel_dir: &[u8],
    skip_unreadable: bool,
    max: u64,
    tree: &mut Tree,
    links: &mut HashMap<(u64, u64), Vec<u8>>,
) -> Result<(), BackupError> {
    let dir = full_path(root, rel_dir);
    let io = |source| BackupError::Source {
        path: dir.clone(),
        source,
    };
    // Entries are kept (not just names) so each lstat is relative to this directory's open
    // descriptor: no path lookup from the root per entry, which dominated a re-backup's walk.
    let mut found: Vec<(Vec<u8>, fs::DirEntry)> = fs::read_dir(&dir)
        .map_err(io)?
        .map(|e| e.map(|e| (e.file_name().as_bytes().to_vec(), e)))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (name, dir_entry) in found {
        // An interrupted restore's leftovers are wsr's bookkeeping, not the workspace's; a
        // restore would never restore them either (FORMAT.md §8.2).
        if rel_dir.is_empty() && name.starts_with(media::STAGING_PREFIX.as_bytes()) {
            tree.skipped
                .push((name, "a restore's staging directory, not backed up".into()));
            continue;
        }
        if tree.entries.len() as u64 >= max {
            return Err(BackupError::TooManyEntries {
                path: root.to_owned(),
                max,
            });
        }
        let rel = if rel_dir.is_empty() {
            name
        } else {
            [rel_dir, b"/", &name].concat()
        };
        let path = full_path(root, &rel);
        let meta = match dir_entry.metadata() {
            Ok(m) => m,
            // Vanished between readdir and lstat: it is simply not part of the backup.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(BackupError::Source { path, source }),
        };
        let ft = meta.file_type();
        let mut entry = SourceEntry {
            rel: rel.clone(),
            kind: EntryKind::File,
            mode: meta.mode() & 0o7777,
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            size: 0,
            link: None,
            sparse: false,
        };
        if ft.is_dir() {
            if !readable(&path, true) {
                if skip_unreadable {
                    tree.skipped.push((rel, "unreadable directory".into()));
                    continue;
                }
                return Err(BackupError::Unreadable { path });
            }
            entry.kind = EntryKind::Dir;
            tree.entries.push(entry);
            walk_dir(root, &rel, skip_unreadable, max, tree, links)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(|source| BackupError::Source {
                path: path.clone(),
                source,
            })?;
            entry.kind = EntryKind::Symlink;
            entry.link = Some(target.as_os_str().as_bytes().to_vec());
            tree.entries.push(entry);
        } else if ft.is_file() {
            // Without --skip-unreadable, opening the file while archiving reports it by name;
            // checking here too would double the system calls of a re-backup's walk.
            if skip_unreadable && !readable(&path, false) {
                if skip_unreadable {
                    tree.skipped.push((rel, "unreadable file".into()));
                    continue;
                }
                return Err(BackupError::Unreadable { path });
            }
            if meta.nlink() > 1 {
                if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                    entry.kind = EntryKind::Hardlink;
                    entry.link = Some(first.clone());
                    tree.entries.push(entry);
                    continue;
                }
                links.insert((meta.dev(), meta.ino()), rel.clone());
            }
            entry.size = meta.len();
            entry.sparse =
                meta.blocks().saturating_mul(512).saturating_add(MIN_HOLES) <= meta.len();
            tree.entries.push(entry);
        } else {
            let what = if ft_is(&meta, libc::S_IFSOCK) {
                "socket"
            } else if ft_is(&meta, libc::S_IFIFO) {
                "FIFO"
            } else {
                "device node"
            };
            tracing::warn!(path = %String::from_utf8_lossy(&rel), "skipping {what}");
            tree.skipped.push((rel, format!("{what} not backed up")));
        }
    }
    Ok(())
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
