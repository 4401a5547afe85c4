//! Layer planning: the entry list's totals, its split into layers by the format's
//! [`LayerCutter`] rule, and the metadata fingerprint that decides whether a layer of the
//! previous backup can be reused without reading any file.

use crate::walk::SourceEntry;
use sha2::Digest as _;
use std::ops::Range;
use wsr_format::codec::EntryKind;
use wsr_format::digest::Digest;
use wsr_format::native::{self, Cut, LayerCutter, Totals};

pub(crate) fn totals(entries: &[SourceEntry]) -> Totals {
    let mut t = Totals::default();
    for e in entries {
        match e.kind {
            EntryKind::Dir => t.dirs += 1,
            EntryKind::File => {
                t.files += 1;
                t.bytes += e.size;
            }
            EntryKind::Symlink => t.symlinks += 1,
            EntryKind::Hardlink => t.hardlinks += 1,
        }
    }
    t
}

pub(crate) fn weight(e: &SourceEntry) -> u64 {
    native::tar_weight(if e.kind == EntryKind::File { e.size } else { 0 })
}

/// Splits the canonical entry list into layers with the [`LayerCutter`] rule.
pub(crate) fn plan_layers(entries: &[SourceEntry], target: u64) -> Vec<Range<usize>> {
    let mut cutter = LayerCutter::new(target);
    let mut ranges = Vec::new();
    let mut start = 0;
    for (i, e) in entries.iter().enumerate() {
        match cutter.push(&e.rel, weight(e)) {
            Cut::None => continue,
            Cut::After => ranges.push(start..i + 1),
            Cut::BeforeAndAfter => ranges.extend([start..i, i..i + 1]),
        }
        start = i + 1;
    }
    if start < entries.len() || ranges.is_empty() {
        ranges.push(start..entries.len());
    }
    ranges
}

/// Digest over everything that determines a layer's bytes, plus the nanosecond mtime, read
/// from metadata only. Equal fingerprints mean the layer can be reused without reading files.
pub(crate) fn fingerprint(entries: &[SourceEntry]) -> Digest {
    let mut h = sha2::Sha256::new();
    h.update(b"wsr-fingerprint-1\n");
    for e in entries {
        h.update([e.kind as u8]);
        h.update(&e.rel);
        h.update([0]);
        h.update(e.mode.to_be_bytes());
        h.update(e.size.to_be_bytes());
        h.update(e.mtime.to_be_bytes());
        h.update(e.mtime_nsec.to_be_bytes());
        h.update(e.link.as_deref().unwrap_or_default());
        h.update([0]);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
        .parse()
        .expect("valid digest")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rel: &str, size: u64) -> SourceEntry {
        SourceEntry {
            rel: rel.as_bytes().to_vec(),
            kind: EntryKind::File,
            mode: 0o644,
            mtime: 1,
            mtime_nsec: 0,
            size,
            link: None,
            sparse: false,
        }
    }

    #[test]
    fn layers_cover_every_entry_once_in_order() {
        let entries: Vec<_> = (0..3000).map(|i| file(&format!("f{i:05}"), 5000)).collect();
        let ranges = plan_layers(&entries, native::MIN_LAYER_TARGET);
        assert!(ranges.len() > 3, "{}", ranges.len());
        assert_eq!(ranges.first().unwrap().start, 0);
        assert_eq!(ranges.last().unwrap().end, entries.len());
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(plan_layers(&[], native::MIN_LAYER_TARGET), vec![0..0]);
    }

    #[test]
    fn fingerprint_sees_metadata_changes_only() {
        let a = vec![file("a", 10), file("b", 20)];
        let mut b = a.clone();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b[1].mtime_nsec = 1;
        assert_ne!(fingerprint(&a), fingerprint(&b));
        let mut c = a.clone();
        c[0].mode = 0o755;
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }
}
