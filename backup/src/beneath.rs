//! Opening entries of the source tree beneath its root without following a symlink anywhere
//! in their paths.
//!
//! A backup reads a live tree its user controls, often from a pod that also holds the
//! registry credentials. An entry the walk found as a directory or a file may be swapped for a
//! symlink before it is opened; following it could reach the pod's own files, and a backup
//! that stored them would hand them to whoever restores it. So nothing below the root is
//! opened by its whole path: `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` where the
//! kernel has it (Linux 5.6), otherwise one component at a time with `O_NOFOLLOW`. A swapped
//! entry then fails with `ELOOP`, `ENOTDIR` or `EXDEV` ([`is_swapped`]).

use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The source root, held open.
#[derive(Debug)]
pub(crate) struct Root {
    fd: OwnedFd,
    /// Whether the kernel has `openat2` (one call per open, resolving no more than a whole
    /// path would).
    openat2: bool,
}

/// How directories on the way to an entry are opened without `openat2`.
const THROUGH: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Root {
    pub(crate) fn open(root: &Path) -> Result<Root, Errno> {
        // The root itself may be a symlink the user named on the command line.
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(root, flags, Mode::empty())?;
        // Linux before 5.6 has no openat2; a seccomp profile may refuse what it does not
        // know with EPERM.
        let probe = openat2_beneath(&fd, OsStr::new("."), THROUGH);
        let openat2 = !matches!(probe, Err(Errno::NOSYS | Errno::PERM));
        Ok(Root { fd, openat2 })
    }

    /// Opens `rel` (`/`-separated, below the root; empty for the root itself) with `flags`,
    /// following no symlink.
    pub(crate) fn open_beneath(&self, rel: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if rel.is_empty() {
            return rustix::fs::openat(&self.fd, c".", flags, Mode::empty());
        }
        if self.openat2 {
            return openat2_beneath(&self.fd, OsStr::from_bytes(rel), flags);
        }
        let (dir, name) = match rel.iter().rposition(|&c| c == b'/') {
            Some(slash) => (&rel[..slash], &rel[slash + 1..]),
            None => (&b""[..], rel),
        };
        open_child(&self.open_dir_by_components(dir)?, name, flags)
    }

    /// Whether opening by components is needed, for callers that keep a directory open
    /// across several entries instead of paying each component per entry.
    pub(crate) fn has_openat2(&self) -> bool {
        self.openat2
    }

    /// The directory `rel` (empty for the root), opened one component at a time, none
    /// followed, for `openat` of its children.
    pub(crate) fn open_dir_by_components(&self, rel: &[u8]) -> Result<OwnedFd, Errno> {
        let mut dir = rustix::fs::openat(&self.fd, c".", THROUGH, Mode::empty())?;
        for name in rel.split(|&c| c == b'/').filter(|name| !name.is_empty()) {
            dir = rustix::fs::openat(&dir, OsStr::from_bytes(name), THROUGH, Mode::empty())?;
        }
        Ok(dir)
    }

    #[cfg(test)]
    pub(crate) fn without_openat2(mut self) -> Root {
        self.openat2 = false;
        self
    }
}

/// Opens `name` in `dir` (a directory from [`Root::open_dir_by_components`]) with `flags`,
/// not following it if it is a symlink.
pub(crate) fn open_child(dir: &OwnedFd, name: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, OsStr::from_bytes(name), flags, Mode::empty())
}

fn openat2_beneath(root: &OwnedFd, rel: &OsStr, flags: OFlags) -> Result<OwnedFd, Errno> {
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
    rustix::fs::openat2(root, rel, flags, Mode::empty(), resolve)
}

/// Whether an open failed because a symlink stands where the walk found a file or directory
/// (or above it).
pub(crate) fn is_swapped(errno: Errno) -> bool {
    matches!(errno, Errno::LOOP | Errno::NOTDIR | Errno::XDEV)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `src/deep/a.rs` in a root, and the same paths with other content outside it.
    pub(crate) fn root_and_outside() -> (tempfile::TempDir, tempfile::TempDir) {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for (dir, content) in [(&dirs.0, "fn main() {}"), (&dirs.1, "secret: 1234")] {
            std::fs::create_dir_all(dir.path().join("src/deep")).unwrap();
            std::fs::write(dir.path().join("src/deep/a.rs"), content).unwrap();
        }
        dirs
    }

    /// Replaces `rel` in `dir` by a symlink to the same path in `outside`.
    pub(crate) fn swap_for_symlink(dir: &Path, outside: &Path, rel: &str) {
        let at = dir.join(rel);
        if at.is_dir() {
            std::fs::remove_dir_all(&at).unwrap();
        } else {
            std::fs::remove_file(&at).unwrap();
        }
        std::os::unix::fs::symlink(outside.join(rel), &at).unwrap();
    }

    /// With `openat2` and without it, a file and a directory open as they are, and a swap of
    /// either (or of a directory above) is refused as one.
    #[test]
    fn nothing_is_opened_through_a_symlink() {
        let read = OFlags::RDONLY;
        let list = OFlags::RDONLY | OFlags::DIRECTORY;
        for openat2 in [true, false] {
            for swapped in [None, Some("src/deep/a.rs"), Some("src/deep"), Some("src")] {
                let (dir, outside) = root_and_outside();
                if let Some(swapped) = swapped {
                    swap_for_symlink(dir.path(), outside.path(), swapped);
                }
                let root = Root::open(dir.path()).unwrap();
                assert!(root.has_openat2(), "this kernel has openat2");
                let root = if openat2 {
                    root
                } else {
                    root.without_openat2()
                };
                let case = format!("openat2 {openat2}, {swapped:?} swapped");
                let file = root.open_beneath(b"src/deep/a.rs", read);
                let listed = root.open_beneath(b"src/deep", list);
                match swapped {
                    None => {
                        let content = std::io::read_to_string(std::fs::File::from(file.unwrap()));
                        assert_eq!(content.unwrap(), "fn main() {}", "{case}");
                        assert!(listed.is_ok(), "{case}");
                    }
                    Some(swapped) => {
                        let refused = file.unwrap_err();
                        assert!(is_swapped(refused), "{case}: {refused}");
                        if swapped != "src/deep/a.rs" {
                            let refused = listed.unwrap_err();
                            assert!(is_swapped(refused), "{case}: listing: {refused}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_root_itself_opens_and_may_be_a_symlink() {
        let (dir, _) = root_and_outside();
        let link = dir.path().join("link-to-src");
        std::os::unix::fs::symlink(dir.path().join("src"), &link).unwrap();
        let root = Root::open(&link).unwrap();
        assert!(
            root.open_beneath(b"", OFlags::RDONLY | OFlags::DIRECTORY)
                .is_ok()
        );
        assert!(root.open_beneath(b"deep/a.rs", OFlags::RDONLY).is_ok());
    }
}
