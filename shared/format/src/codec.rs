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
    /// A directory.
    Dir,
    /// A regular file with content.
    File,
    /// A symbolic link (its target in `link`).
    Symlink,
    /// A hard link to a regular file stored earlier in the same artifact.
    Hardlink,
}

/// One entry to write. `path` is relative, `/`-separated, without `./` or a trailing slash.
#[derive(Clone, Debug)]
pub struct EntryHeader<'a> {
    /// Relative, `/`-separated, without `./` or a trailing slash.
    pub path: &'a [u8],
    /// What the entry is.
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
    /// A writer into `out`; `dot_prefix` names entries `./path` (the `dwo` layout).
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

    /// Appends a regular file stored sparse, as PAX GNU sparse format 1.0 (what GNU tar writes
    /// with `--format=posix --sparse`): a PAX header naming the real path and size, then an
    /// entry under `GNUSparseFile.0/` whose data is the map (decimal lines: the number of data
    /// runs, then each run's offset and length), padded to 512 bytes, followed by the runs.
    /// `map` lists the data runs (offset, length), ascending and non-overlapping, within
    /// `entry.size`; `data` yields exactly their bytes back to back.
    pub fn append_sparse(
        &mut self,
        entry: &EntryHeader<'_>,
        map: &[(u64, u64)],
        data: impl Read,
    ) -> io::Result<()> {
        let mut name = Vec::with_capacity(entry.path.len() + 2);
        if self.dot_prefix {
            name.extend_from_slice(b"./");
        }
        name.extend_from_slice(entry.path);
        let (dir, base) = match name.iter().rposition(|&b| b == b'/') {
            Some(i) => (&name[..=i], &name[i + 1..]),
            None => (&b""[..], &name[..]),
        };
        // Both names are placeholders (readers take the real one from `GNU.sparse.name`), so
        // they are cut to the header's field rather than given long-name records.
        let mut stored_name = [dir, b"GNUSparseFile.0/", base].concat();
        stored_name.truncate(NAME_FIELD);
        let mut pax_name = [dir, b"PaxHeaders/", base].concat();
        pax_name.truncate(NAME_FIELD);

        let mut records = Vec::new();
        for (key, value) in [
            ("GNU.sparse.major", b"1".to_vec()),
            ("GNU.sparse.minor", b"0".to_vec()),
            ("GNU.sparse.name", name.clone()),
            ("GNU.sparse.realsize", entry.size.to_string().into_bytes()),
        ] {
            records.extend_from_slice(&pax_record(key, &value));
        }
        let mut pax = posix_header(tar::EntryType::XHeader, 0o644, entry.mtime, 0);
        pax.set_size(records.len() as u64);
        self.write_named(&mut pax, pax_name, None, &records[..])?;

        let mut map_text = format!("{}\n", map.len());
        for (offset, len) in map {
            map_text.push_str(&format!("{offset}\n{len}\n"));
        }
        let mut map_block = map_text.into_bytes();
        map_block.resize(map_block.len().div_ceil(512) * 512, 0);
        let data_len: u64 = map.iter().map(|(_, len)| len).sum();
        let stored = map_block.len() as u64 + data_len;
        let mut header = posix_header(tar::EntryType::Regular, entry.mode, entry.mtime, stored);
        self.write_named(
            &mut header,
            stored_name,
            None,
            (&map_block[..]).chain(data.take(data_len)),
        )
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

    /// The writer underneath (e.g. to flush a compressor).
    pub fn get_mut(&mut self) -> &mut W {
        self.out.get_mut()
    }
}

/// One PAX extended-header record: `"<len> <key>=<value>\n"`, where `len` counts the whole
/// record including its own digits.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // space, '=', newline
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

fn base_header(kind: tar::EntryType, mode: u32, mtime: i64, size: u64) -> tar::Header {
    normalised(tar::Header::new_gnu(), kind, mode, mtime, size)
}

/// A POSIX (`ustar\0` `00`) header: GNU tar decodes sparse PAX records only on these.
fn posix_header(kind: tar::EntryType, mode: u32, mtime: i64, size: u64) -> tar::Header {
    normalised(tar::Header::new_ustar(), kind, mode, mtime, size)
}

fn normalised(
    mut h: tar::Header,
    kind: tar::EntryType,
    mode: u32,
    mtime: i64,
    size: u64,
) -> tar::Header {
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
    /// A plain tar stream.
    None,
    /// gzip (RFC 1952).
    Gzip,
    /// zstd (RFC 8878).
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
            Compression::Zstd => Box::new(zstd_decoder(input)?),
            // Multi-member gzip is valid (pigz, concatenated streams).
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
            Compression::None => Box::new(input),
        })
    }
}

/// The largest zstd window a reader accepts, as a power of two: 8 MiB, what zstd's levels 1-19
/// use at most (wsr writes 1-19). zstd's own default limit is 128 MiB per stream, and a restore
/// decodes several layers and their indexes at once, so a hostile layer asking for the default
/// maximum would push one restore past its memory bound (FORMAT.md §8.1).
pub const ZSTD_MAX_WINDOW_LOG: u32 = 23;

/// A zstd decoder of `input` that refuses frames whose window exceeds [`ZSTD_MAX_WINDOW_LOG`]
/// (the read fails with zstd's "Frame requires too much memory for decoding").
pub fn zstd_decoder<R: io::BufRead>(input: R) -> io::Result<ZstdReader<R>> {
    use zstd::zstd_safe::{DCtx, DParameter, ResetDirective};
    let mut dctx = ZSTD_DECODERS.take().unwrap_or_else(DCtx::create);
    dctx.reset(ResetDirective::SessionAndParameters)
        .map_err(zstd_error)?;
    dctx.set_parameter(DParameter::WindowLogMax(ZSTD_MAX_WINDOW_LOG))
        .map_err(zstd_error)?;
    Ok(ZstdReader {
        input,
        dctx: Some(dctx),
        in_frame: false,
    })
}

fn zstd_error(code: usize) -> io::Error {
    io::Error::other(zstd::zstd_safe::get_error_name(code))
}

/// Contexts kept by the process for the next user: at most as many as were in use at once.
struct Pool<T>(std::sync::Mutex<Vec<T>>);

impl<T> Pool<T> {
    const fn new() -> Pool<T> {
        Pool(std::sync::Mutex::new(Vec::new()))
    }
    fn take(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }
    fn give_back(&self, context: T) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(context);
    }
}

/// Decompression contexts of finished readers, kept for the next ones: a context's window
/// buffer (2 MiB and more at the default level) is above glibc's mmap threshold, so a fresh
/// one per layer and per index was a new mapping, zeroed page by page as it filled (a 1 GB
/// restore paid about 0.7 GB of page faults for them). At most as many as were in use at once.
static ZSTD_DECODERS: Pool<zstd::zstd_safe::DCtx<'static>> = Pool::new();

/// A streaming zstd decoder on a pooled context (see [`zstd_decoder`]). It reads frame after
/// frame to the end of its input; input that ends inside a frame is an `UnexpectedEof` error.
pub struct ZstdReader<R> {
    input: R,
    dctx: Option<zstd::zstd_safe::DCtx<'static>>,
    /// A frame is begun and not yet completely decoded and flushed.
    in_frame: bool,
}

impl<R: io::BufRead> Read for ZstdReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        use zstd::zstd_safe::{InBuffer, OutBuffer};
        if out.is_empty() {
            return Ok(0);
        }
        let dctx = self.dctx.as_mut().expect("a context until dropped");
        loop {
            let input = self.input.fill_buf()?;
            let ended = input.is_empty();
            let mut src = InBuffer::around(input);
            let mut dst = OutBuffer::around(&mut *out);
            // With no input left, the context still flushes what it holds.
            let hint = dctx
                .decompress_stream(&mut dst, &mut src)
                .map_err(zstd_error)?;
            let (consumed, produced) = (src.pos(), dst.pos());
            self.input.consume(consumed);
            // The hint is 0 once a frame is decoded and flushed. A call that did nothing
            // (no input, nothing to flush) asks for the next frame's header: not a frame begun.
            if consumed > 0 || produced > 0 {
                self.in_frame = hint != 0;
            }
            if produced > 0 {
                return Ok(produced);
            }
            if ended {
                if self.in_frame {
                    let truncated = "zstd stream ends inside a frame";
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, truncated));
                }
                return Ok(0);
            }
        }
    }
}

impl<R> Drop for ZstdReader<R> {
    fn drop(&mut self) {
        if let Some(dctx) = self.dctx.take() {
            ZSTD_DECODERS.give_back(dctx);
        }
    }
}

/// A zstd compression context, taken from the process's pool and returned to it on drop.
///
/// At the default level a context's window and tables take about 3.5 MiB. Allocating them
/// afresh for every layer fragmented the heap: a 1 GB backup's peak RSS was 40 MiB above its
/// peak live memory. The pool never holds more contexts than were in use at once.
pub struct ZstdContext(Option<zstd::zstd_safe::CCtx<'static>>);

static ZSTD_CONTEXTS: Pool<zstd::zstd_safe::CCtx<'static>> = Pool::new();

impl ZstdContext {
    /// A context set to `level` without a frame checksum, whatever its last user set.
    pub fn take(level: i32) -> io::Result<ZstdContext> {
        let pooled = ZSTD_CONTEXTS.take();
        Self::prepared(pooled.unwrap_or_else(zstd::zstd_safe::CCtx::create), level)
    }

    fn prepared(mut cctx: zstd::zstd_safe::CCtx<'static>, level: i32) -> io::Result<ZstdContext> {
        use zstd::zstd_safe::{CParameter, ResetDirective};
        cctx.reset(ResetDirective::SessionAndParameters)
            .map_err(zstd_error)?;
        cctx.set_parameter(CParameter::CompressionLevel(level))
            .map_err(zstd_error)?;
        cctx.set_parameter(CParameter::ChecksumFlag(false))
            .map_err(zstd_error)?;
        Ok(ZstdContext(Some(cctx)))
    }

    /// A deterministic zstd encoder on this context: single-threaded, because zstd's
    /// multi-threaded mode writes different bytes than its single-threaded mode, and
    /// identical input must give identical layers on every machine. Parallelism comes from
    /// compressing several layers at once.
    pub fn encoder<W: Write>(&mut self, out: W) -> zstd::stream::write::Encoder<'_, W> {
        let cctx = self.0.as_mut().expect("a context until dropped");
        zstd::stream::write::Encoder::with_context(out, cctx)
    }
}

impl Drop for ZstdContext {
    fn drop(&mut self) {
        if let Some(cctx) = self.0.take() {
            ZSTD_CONTEXTS.give_back(cctx);
        }
    }
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
            let mut context = ZstdContext::take(3).unwrap();
            let mut w = TarWriter::new(context.encoder(Vec::new()), false);
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

    fn zstd_with_window_log(level: i32, window_log: Option<u32>) -> Vec<u8> {
        let mut context = ZstdContext::take(level).unwrap();
        let mut enc = context.encoder(Vec::new());
        if let Some(log) = window_log {
            enc.window_log(log).unwrap();
        }
        enc.write_all(&[7u8; 4096]).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn a_reused_context_writes_the_bytes_a_fresh_encoder_writes() {
        let data = b"the same bytes on every machine ".repeat(20_000);
        let mut fresh = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        fresh.include_checksum(false).unwrap();
        fresh.write_all(&data).unwrap();
        let fresh = fresh.finish().unwrap();
        // A context its last user left on another level, window and checksum, mid-frame.
        let mut cctx = zstd::zstd_safe::CCtx::create();
        let mut used = zstd::stream::write::Encoder::with_context(Vec::new(), &mut cctx);
        used.set_parameter(zstd::stream::raw::CParameter::CompressionLevel(19))
            .unwrap();
        used.window_log(27).unwrap();
        used.include_checksum(true).unwrap();
        used.write_all(&data[..5000]).unwrap();
        drop(used);
        let mut context = ZstdContext::prepared(cctx, 3).unwrap();
        let mut reused = context.encoder(Vec::new());
        reused.write_all(&data).unwrap();
        assert_eq!(reused.finish().unwrap(), fresh);
    }

    fn decode(bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Compression::decoder(bytes)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn the_zstd_reader_reads_every_frame_and_refuses_a_cut_one() {
        let first: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let second = b"a second frame".to_vec();
        let mut frames = zstd::bulk::compress(&first, 3).unwrap();
        let first_len = frames.len();
        frames.extend(zstd::bulk::compress(&second, 3).unwrap());
        // Input handed over a few bytes at a time, output taken `chunk` bytes at a time.
        let read_all = |compressed: &[u8], chunk: usize| -> io::Result<Vec<u8>> {
            let mut reader = zstd_decoder(io::BufReader::with_capacity(7, compressed))?;
            let (mut out, mut buf) = (Vec::new(), vec![0; chunk]);
            loop {
                match reader.read(&mut buf)? {
                    0 => return Ok(out),
                    n => out.extend_from_slice(&buf[..n]),
                }
            }
        };
        let whole = [first.clone(), second].concat();
        assert_eq!(read_all(&frames, 1).unwrap(), whole);
        assert_eq!(read_all(&frames, 64 << 10).unwrap(), whole);
        assert_eq!(read_all(&frames[..first_len], 4096).unwrap(), first);
        assert_eq!(read_all(&[], 16).unwrap(), Vec::<u8>::new());
        // Cut inside either frame: an error, never a short stream passed off as complete.
        for cut in [
            1,
            4,
            first_len / 2,
            first_len - 1,
            first_len + 3,
            frames.len() - 1,
        ] {
            let error = read_all(&frames[..cut], 4096).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
        // The contexts those readers returned to the pool decode the next stream whole.
        assert_eq!(read_all(&frames, 4096).unwrap(), whole);
    }

    #[test]
    fn zstd_windows_beyond_the_cap_are_refused_before_allocating() {
        // Every level wsr writes stays within the cap, the highest included.
        for level in [1, 3, 19] {
            assert_eq!(
                decode(&zstd_with_window_log(level, None)).unwrap().len(),
                4096
            );
        }
        let at_cap = zstd_with_window_log(3, Some(ZSTD_MAX_WINDOW_LOG));
        assert_eq!(decode(&at_cap).unwrap().len(), 4096);
        // zstd's own default would allocate 128 MiB for this stream's window.
        let hostile = zstd_with_window_log(3, Some(27));
        let err = decode(&hostile).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
    }
}
