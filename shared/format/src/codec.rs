//! The tar codec: deterministic tar entries (normalised headers, GNU long names) and the
//! zstd / gzip stream wrappers both formats use.
//!
//! Headers carry only what a restore needs: path, type, permission bits, mtime in whole seconds,
//! size and link target. Owner ids and names are zeroed, so the same tree always yields the
//! same bytes, whoever archived it.

use std::io::{self, Read, Write};

/// What an archive entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    /// A hard link to a regular file stored earlier in the same artifact.
    Hardlink,
}

/// One entry to write. `path` is relative, `/`-separated, without `./` or a trailing slash.
#[derive(Clone, Debug)]
pub struct EntryHeader<'a> {
    pub path: &'a [u8],
    pub kind: EntryKind,
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// Seconds since the epoch; negative times are stored as 0.
    pub mtime: i64,
    /// Content length; 0 for everything but files.
    pub size: u64,
    /// Symlink target, or the path of the file a hard link points to.
    pub link: Option<&'a [u8]>,
}

/// Writes tar entries with normalised headers.
pub struct TarWriter<W: Write> {
    out: tar::Builder<W>,
    /// `dwo` archives name entries `./path` like `tar -C dir .` does.
    dot_prefix: bool,
}

const NAME_FIELD: usize = 100;

impl<W: Write> TarWriter<W> {
    pub fn new(out: W, dot_prefix: bool) -> Self {
        let mut out = tar::Builder::new(out);
        out.mode(tar::HeaderMode::Deterministic);
        TarWriter { out, dot_prefix }
    }

    /// The `./` entry for the archive root (`dwo` only).
    pub fn append_root(&mut self, mode: u32, mtime: i64) -> io::Result<()> {
        let mut header = base_header(tar::EntryType::Directory, mode, mtime, 0);
        self.write_named(&mut header, b"./".to_vec(), None, io::empty())
    }

    /// Appends one entry; `data` must yield exactly `entry.size` bytes for files.
    pub fn append(&mut self, entry: &EntryHeader<'_>, data: impl Read) -> io::Result<()> {
        let kind = match entry.kind {
            EntryKind::Dir => tar::EntryType::Directory,
            EntryKind::File => tar::EntryType::Regular,
            EntryKind::Symlink => tar::EntryType::Symlink,
            EntryKind::Hardlink => tar::EntryType::Link,
        };
        let size = if entry.kind == EntryKind::File {
            entry.size
        } else {
            0
        };
        let mut header = base_header(kind, entry.mode, entry.mtime, size);
        let mut name = Vec::with_capacity(entry.path.len() + 3);
        if self.dot_prefix {
            name.extend_from_slice(b"./");
        }
        name.extend_from_slice(entry.path);
        if entry.kind == EntryKind::Dir {
            name.push(b'/');
        }
        let link = entry.link.map(|l| {
            if self.dot_prefix && entry.kind == EntryKind::Hardlink {
                [b"./".as_slice(), l].concat()
            } else {
                l.to_vec()
            }
        });
        self.write_named(&mut header, name, link, data.take(size))
    }

    fn write_named(
        &mut self,
        header: &mut tar::Header,
        name: Vec<u8>,
        link: Option<Vec<u8>>,
        data: impl Read,
    ) -> io::Result<()> {
        // GNU long-name records ('L', 'K') precede the entry when a field overflows, as GNU tar does.
        if name.len() > NAME_FIELD {
            self.long_record(b'L', &name)?;
        }
        let old = header.as_old_mut();
        let n = name.len().min(NAME_FIELD);
        old.name[..n].copy_from_slice(&name[..n]);
        if let Some(link) = link {
            if link.len() > NAME_FIELD {
                self.long_record(b'K', &link)?;
            }
            let n = link.len().min(NAME_FIELD);
            header.as_old_mut().linkname[..n].copy_from_slice(&link[..n]);
        }
        header.set_cksum();
        self.out.append(header, data)
    }

    fn long_record(&mut self, kind: u8, value: &[u8]) -> io::Result<()> {
        let mut header = base_header(tar::EntryType::new(kind), 0, 0, value.len() as u64 + 1);
        header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        header.set_cksum();
        self.out.append(&header, value.chain(&[0u8][..]))
    }

    /// Writes the end-of-archive marker and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        self.out.into_inner()
    }

    pub fn get_mut(&mut self) -> &mut W {
        self.out.get_mut()
    }
}

fn base_header(kind: tar::EntryType, mode: u32, mtime: i64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o7777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime.max(0) as u64);
    h.set_size(size);
    h
}

/// A compression codec of a tar layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Recognises a stream by its first bytes. Media types are not trusted for this: upstream
    /// labels gzip data as plain `tar`.
    pub fn sniff(prefix: &[u8]) -> Compression {
        match prefix {
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            [0x1f, 0x8b, ..] => Compression::Gzip,
            _ => Compression::None,
        }
    }

    /// A decoder reading from `input`. The input is sniffed, so a mislabelled layer still decodes.
    pub fn decoder<'a, R: io::BufRead + Send + 'a>(
        mut input: R,
    ) -> io::Result<Box<dyn Read + Send + 'a>> {
        let kind = Compression::sniff(input.fill_buf()?);
        Ok(match kind {
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
            // Multi-member gzip is valid (pigz, concatenated streams).
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
            Compression::None => Box::new(input),
        })
    }
}

/// A deterministic zstd encoder: single-threaded, because zstd's multi-threaded mode writes
/// different bytes than its single-threaded mode, and identical input must give identical
/// layers on every machine. Parallelism comes from compressing several layers at once.
pub fn zstd_encoder<W: Write>(
    out: W,
    level: i32,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut enc = zstd::stream::write::Encoder::new(out, level)?;
    enc.include_checksum(false)?;
    Ok(enc)
}

/// A deterministic gzip encoder (no name, mtime 0), as used for `dwo` layers.
pub fn gzip_encoder<W: Write>(out: W, level: u32) -> flate2::write::GzEncoder<W> {
    flate2::GzBuilder::new()
        .mtime(0)
        .write(out, flate2::Compression::new(level.min(9)))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Listed = (Vec<u8>, tar::EntryType, Option<Vec<u8>>, u32, Vec<u8>);

    fn entries_of(bytes: &[u8]) -> Vec<Listed> {
        let mut ar = tar::Archive::new(bytes);
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (
                    e.path_bytes().into_owned(),
                    e.header().entry_type(),
                    e.link_name_bytes().map(|l| l.into_owned()),
                    e.header().mode().unwrap(),
                    data,
                )
            })
            .collect()
    }

    #[test]
    fn long_names_and_targets_round_trip_through_gnu_records() {
        let long = vec![b'a'; 300];
        let target = [b"../".repeat(50).as_slice(), b"t"].concat();
        let mut w = TarWriter::new(Vec::new(), false);
        let h = |path, kind, link| EntryHeader {
            path,
            kind,
            mode: 0o755,
            mtime: 1,
            size: 3,
            link,
        };
        w.append(&h(&long, EntryKind::File, None), &b"abc"[..])
            .unwrap();
        w.append(&h(b"l", EntryKind::Symlink, Some(&target)), io::empty())
            .unwrap();
        w.append(&h(b"d", EntryKind::Dir, None), io::empty())
            .unwrap();
        w.append(&h(b"nonutf8-\xff", EntryKind::File, None), &b"xyz"[..])
            .unwrap();
        let got = entries_of(&w.finish().unwrap());
        assert_eq!(got[0].0, long);
        assert_eq!(got[0].4, b"abc");
        assert_eq!(
            (got[1].1, got[1].2.clone()),
            (tar::EntryType::Symlink, Some(target))
        );
        assert_eq!(got[2].0, b"d/");
        assert_eq!(got[3].0, b"nonutf8-\xff");
    }

    #[test]
    fn dot_prefix_matches_tar_dash_c_layout() {
        let mut w = TarWriter::new(Vec::new(), true);
        w.append_root(0o755, 5).unwrap();
        let h = EntryHeader {
            path: b"src/main.rs",
            kind: EntryKind::File,
            mode: 0o644,
            mtime: 5,
            size: 1,
            link: None,
        };
        w.append(&h, &b"x"[..]).unwrap();
        let names: Vec<_> = entries_of(&w.finish().unwrap())
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(names, vec![b"./".to_vec(), b"./src/main.rs".to_vec()]);
    }

    #[test]
    fn same_entries_give_identical_bytes() {
        let build = || {
            let enc = zstd_encoder(Vec::new(), 3).unwrap();
            let mut w = TarWriter::new(enc, false);
            for i in 0..200u32 {
                let path = format!("dir/file-{i}");
                let data = format!("content {i}\n").repeat(1000);
                let h = EntryHeader {
                    path: path.as_bytes(),
                    kind: EntryKind::File,
                    mode: 0o644,
                    mtime: 1_700_000_000,
                    size: data.len() as u64,
                    link: None,
                };
                w.append(&h, data.as_bytes()).unwrap();
            }
            w.finish().unwrap().finish().unwrap()
        };
        let one = build();
        assert_eq!(one, build());
        let mut plain = Vec::new();
        Compression::decoder(&one[..])
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(entries_of(&plain).len(), 200);
    }

    #[test]
    fn sniffing_ignores_media_types() {
        let mut gz = gzip_encoder(Vec::new(), 6);
        gz.write_all(b"hello").unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(Compression::sniff(&gz), Compression::Gzip);
        let mut out = String::new();
        Compression::decoder(&gz[..])
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello");
        assert_eq!(Compression::sniff(b"plain"), Compression::None);
    }
}
