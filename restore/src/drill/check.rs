//! Checking a restored tree against what the backup recorded: the native file index, or the
//! listing of a tarball artifact's archive (read in a second, digest-checked pass over the
//! blob). Type, size, content digest, symlink target and hard-link identity of every entry, and
//! nothing extra.

use crate::RestoreError;
use std::collections::HashMap;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use wsr_format::codec::{Compression, EntryKind};
use wsr_format::digest::{Digest, HashingReader};
use wsr_format::manifest::Descriptor;
use wsr_format::native::IndexEntry;
use wsr_format::unpack::normalize;
use wsr_transport::{BlobReader, Store};

/// One entry as the backup recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub size: u64,
    pub sha256: Option<Digest>,
    /// Symlink target (verbatim) or hard-link source (an entry path).
    pub link: Option<Vec<u8>>,
}

/// One line of a native file index as the check needs it.
pub(crate) fn listed_from_index(line: IndexEntry) -> Listed {
    Listed {
        path: line.path.0,
        kind: line.kind,
        size: line.size,
        sha256: line.sha256,
        link: line.link.map(|l| l.0),
    }
}

/// Lists a tarball layer's archive: streams the blob again, checks its digest and size, and
/// hashes every regular file. Entries the unpacker does not create (the root, devices, FIFOs)
/// are left out.
pub(crate) async fn listing_from_tarball(
    store: &Store,
    layer: &Descriptor,
) -> Result<Vec<Listed>, RestoreError> {
    let blob = store.blob_reader(&layer.digest, layer.size).await?;
    let desc = layer.clone();
    tokio::task::spawn_blocking(move || list_blob(blob, &desc))
        .await
        .expect("listing task")
}

fn list_blob(mut blob: BlobReader, desc: &Descriptor) -> Result<Vec<Listed>, RestoreError> {
    let listed = (|| {
        let corrupt = |e: io::Error| RestoreError::Corrupt(format!("layer {}: {e}", desc.digest));
        let decoder = Compression::decoder(BufReader::with_capacity(256 * 1024, &mut blob))
            .map_err(corrupt)?;
        let mut archive = tar::Archive::new(decoder);
        let mut out = Vec::new();
        for entry in archive.entries().map_err(corrupt)? {
            let mut entry = entry.map_err(corrupt)?;
            if let Some(listed) = list_entry(&mut entry).map_err(corrupt)? {
                out.push(listed);
            }
        }
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(corrupt)?;
        Ok::<_, RestoreError>(out)
    })();
    let listed = match listed {
        Ok(listed) => listed,
        // A read that failed because the download did is reported as the download's failure.
        Err(e) => return Err(blob.into_failure().map_or(e, RestoreError::from)),
    };
    blob.finish()?;
    Ok(listed)
}

fn list_entry<R: Read>(entry: &mut tar::Entry<R>) -> io::Result<Option<Listed>> {
    let kind = entry.header().entry_type();
    let kind = if kind.is_dir() {
        EntryKind::Dir
    } else if kind.is_file() {
        EntryKind::File
    } else if kind.is_symlink() {
        EntryKind::Symlink
    } else if kind.is_hard_link() {
        EntryKind::Hardlink
    } else {
        return Ok(None);
    };
    let Some(path) = normalize(&entry.path_bytes()).map_err(io::Error::other)? else {
        return Ok(None);
    };
    let link = match kind {
        EntryKind::Symlink => entry.link_name_bytes().map(|l| l.into_owned()),
        EntryKind::Hardlink => match entry.link_name_bytes() {
            Some(l) => normalize(&l).map_err(io::Error::other)?,
            None => None,
        },
        _ => None,
    };
    let (size, sha256) = if kind == EntryKind::File {
        let mut hashing = HashingReader::new(&mut *entry);
        io::copy(&mut hashing, &mut io::sink())?;
        let (_, digest, size) = hashing.finish();
        (size, Some(digest))
    } else {
        (0, None)
    };
    Ok(Some(Listed {
        path,
        kind,
        size,
        sha256,
        link,
    }))
}

/// Compares the tree under `root` with `listing`. Returns the number of entries checked, or
/// the first difference.
pub(crate) fn check_tree(root: &Path, listing: &[Listed]) -> Result<u64, String> {
    let mut found = HashMap::new();
    walk(root, &mut Vec::new(), &mut found)
        .map_err(|e| format!("cannot read the restored tree: {e}"))?;
    let mut matched = std::collections::HashSet::new();
    for want in listing {
        let shown = String::from_utf8_lossy(&want.path);
        let differs = |what: String| format!("restored {shown:?} differs from the backup: {what}");
        let Some(meta) = found.get(&want.path) else {
            return Err(format!("{shown:?} is in the backup but was not restored"));
        };
        matched.insert(want.path.as_slice());
        let full = root.join(std::ffi::OsStr::from_bytes(&want.path));
        match want.kind {
            EntryKind::Dir if !meta.is_dir() => return Err(differs("not a directory".into())),
            EntryKind::Symlink => {
                let target = std::fs::read_link(&full)
                    .map_err(|e| differs(format!("not a symlink ({e})")))?;
                if Some(target.as_os_str().as_bytes()) != want.link.as_deref() {
                    return Err(differs(format!("symlink points at {}", target.display())));
                }
            }
            EntryKind::File => {
                if !meta.is_file() {
                    return Err(differs("not a regular file".into()));
                }
                if meta.len() != want.size {
                    return Err(differs(format!(
                        "{} bytes, backup has {}",
                        meta.len(),
                        want.size
                    )));
                }
                if let Some(digest) = &want.sha256 {
                    let actual =
                        hash_file(&full).map_err(|e| differs(format!("unreadable: {e}")))?;
                    if &actual != digest {
                        return Err(differs(format!(
                            "content digest {actual}, backup has {digest}"
                        )));
                    }
                }
            }
            EntryKind::Hardlink => {
                let source = want.link.as_deref().unwrap_or_default();
                let same = found
                    .get(source)
                    .is_some_and(|s| s.ino() == meta.ino() && s.dev() == meta.dev());
                if !meta.is_file() || !same {
                    return Err(differs(format!(
                        "not a hard link of {:?}",
                        String::from_utf8_lossy(source)
                    )));
                }
            }
            EntryKind::Dir => {}
        }
    }
    if let Some(path) = found.keys().find(|p| !matched.contains(p.as_slice())) {
        return Err(format!(
            "restored tree has {:?}, which the backup does not list",
            String::from_utf8_lossy(path)
        ));
    }
    Ok(listing.len() as u64)
}

fn hash_file(path: &Path) -> io::Result<Digest> {
    let mut reader = HashingReader::new(std::fs::File::open(path)?);
    io::copy(&mut reader, &mut io::sink())?;
    Ok(reader.finish().1)
}

/// Records every entry below `dir` by its path relative to the root (`prefix`), without
/// following symlinks.
fn walk(
    dir: &Path,
    prefix: &mut Vec<u8>,
    found: &mut HashMap<Vec<u8>, std::fs::Metadata>,
) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        let len = prefix.len();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        prefix.extend_from_slice(entry.file_name().as_bytes());
        if meta.is_dir() {
            walk(&entry.path(), prefix, found)?;
        }
        found.insert(prefix.clone(), meta);
        prefix.truncate(len);
    }
    Ok(())
}

/// Makes every directory below `root` writable by its owner so the scratch tree can be
/// removed even when the backup restored read-only directories.
pub(crate) fn make_removable(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = root.symlink_metadata() else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            make_removable(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn listed(path: &str, kind: EntryKind, content: Option<&[u8]>, link: Option<&str>) -> Listed {
        Listed {
            path: path.as_bytes().to_vec(),
            kind,
            size: content.map_or(0, |c| c.len() as u64),
            sha256: content.map(Digest::of),
            link: link.map(|l| l.as_bytes().to_vec()),
        }
    }

    fn tree() -> (tempfile::TempDir, Vec<Listed>) {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir(r.join("src")).unwrap();
        std::fs::write(r.join("src/main.rs"), b"fn main() {}\n").unwrap();
        std::fs::hard_link(r.join("src/main.rs"), r.join("main-link.rs")).unwrap();
        symlink("src/main.rs", r.join("link")).unwrap();
        let listing = vec![
            listed("src", EntryKind::Dir, None, None),
            listed(
                "src/main.rs",
                EntryKind::File,
                Some(b"fn main() {}\n"),
                None,
            ),
            listed("link", EntryKind::Symlink, None, Some("src/main.rs")),
            listed(
                "main-link.rs",
                EntryKind::Hardlink,
                None,
                Some("src/main.rs"),
            ),
        ];
        (dir, listing)
    }

    #[test]
    fn a_faithful_tree_passes() {
        let (dir, listing) = tree();
        assert_eq!(check_tree(dir.path(), &listing), Ok(4));
    }

    #[test]
    fn every_kind_of_difference_is_named() {
        let (dir, listing) = tree();
        let r = dir.path();
        std::fs::write(r.join("extra"), b"").unwrap();
        let err = check_tree(r, &listing).unwrap_err();
        assert!(
            err.contains("\"extra\"") && err.contains("does not list"),
            "{err}"
        );
        std::fs::remove_file(r.join("extra")).unwrap();

        let mut changed = listing.clone();
        changed[1].sha256 = Some(Digest::of(b"other"));
        let err = check_tree(r, &changed).unwrap_err();
        assert!(
            err.contains("src/main.rs") && err.contains("content digest"),
            "{err}"
        );

        let mut changed = listing.clone();
        changed[1].size = 1;
        assert!(
            check_tree(r, &changed)
                .unwrap_err()
                .contains("bytes, backup has 1")
        );

        let mut changed = listing.clone();
        changed[2].link = Some(b"elsewhere".to_vec());
        assert!(
            check_tree(r, &changed)
                .unwrap_err()
                .contains("symlink points at src/main.rs")
        );

        let mut changed = listing.clone();
        changed.push(listed("gone", EntryKind::Dir, None, None));
        assert!(
            check_tree(r, &changed)
                .unwrap_err()
                .contains("was not restored")
        );

        std::fs::remove_file(r.join("main-link.rs")).unwrap();
        std::fs::write(r.join("main-link.rs"), b"fn main() {}\n").unwrap();
        let err = check_tree(r, &listing).unwrap_err();
        assert!(err.contains("not a hard link"), "{err}");
    }

    #[test]
    fn read_only_directories_become_removable() {
        let (dir, _) = tree();
        let src = dir.path().join("src");
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o500)).unwrap();
        make_removable(dir.path());
        let mode = src.metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o700, 0o700);
    }
}
