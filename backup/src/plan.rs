//! Layer planning: the entry list's totals, its split into layers by the format's
//! [`LayerCutter`] rule, and the metadata fingerprint that decides whether a layer of the
//! previous backup can be reused without reading any file.

use crate::walk::{Meta, Tree};
use sha2::Digest as _;
use std::ops::Range;
use wsr_format::codec::EntryKind;
use wsr_format::digest::Digest;
use wsr_format::native::{self, Cut, LayerCutter, Totals};

pub(crate) fn totals(tree: &Tree) -> Totals {
    let mut t = Totals::default();
    for e in tree.metas() {
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

pub(crate) fn weight(e: Meta) -> u64 {
    native::tar_weight(if e.kind == EntryKind::File { e.size } else { 0 })
}

/// Splits the canonical entry list into layers with the [`LayerCutter`] rule.
pub(crate) fn plan_layers(tree: &Tree, target: u64) -> Vec<Range<usize>> {
    let mut cutter = LayerCutter::new(target);
    let mut paths = tree.paths();
    let mut ranges = Vec::new();
    let mut start = 0;
    for i in 0..tree.len() {
        match cutter.push(paths.get(i), weight(tree.meta(i))) {
            Cut::None => continue,
            Cut::After => ranges.push(start..i + 1),
            Cut::BeforeAndAfter => ranges.extend([start..i, i..i + 1]),
        }
        start = i + 1;
    }
    if start < tree.len() || ranges.is_empty() {
        ranges.push(start..tree.len());
    }
    ranges
}

/// The [`fingerprint`]s of `layers` (consecutive, from the first entry), by up to `threads`
/// threads, each taking consecutive layers of about as many entries: once the tree is walked,
/// hashing its metadata is most of what a re-backup of an unchanged tree does.
pub(crate) fn fingerprints(tree: &Tree, layers: &[Range<usize>], threads: usize) -> Vec<Digest> {
    let share = tree.len().div_ceil(threads.max(1)).max(1);
    let mut groups = Vec::new();
    let mut first = 0;
    for (i, layer) in layers.iter().enumerate() {
        if layer.end >= (groups.len() + 1) * share || i + 1 == layers.len() {
            groups.push(&layers[first..=i]);
            first = i + 1;
        }
    }
    std::thread::scope(|s| {
        let hashing: Vec<_> = (groups.iter())
            .map(|group| s.spawn(|| group.iter().map(|l| fingerprint(tree, l.clone())).collect()))
            .collect();
        (hashing.into_iter())
            .flat_map(|h| -> Vec<Digest> { h.join().expect("hashing does not panic") })
            .collect()
    })
}

/// Digest over everything that determines a layer's bytes, plus the nanosecond mtime, read
/// from metadata only. Equal fingerprints mean the layer can be reused without reading files.
/// Previous backups' configs hold these digests: the bytes hashed must not change.
pub(crate) fn fingerprint(tree: &Tree, layer: Range<usize>) -> Digest {
    let mut h = sha2::Sha256::new();
    h.update(b"wsr-fingerprint-1\n");
    let mut paths = tree.paths();
    for i in layer {
        let e = tree.meta(i);
        h.update([e.kind as u8]);
        h.update(paths.get(i));
        h.update([0]);
        h.update(e.mode.to_be_bytes());
        h.update(e.size.to_be_bytes());
        h.update(e.mtime.to_be_bytes());
        h.update(i64::from(e.mtime_nsec).to_be_bytes());
        h.update(tree.link(i).unwrap_or_default());
        h.update([0]);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
        .parse()
        .expect("valid digest")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::walk::TOP;

    fn file(size: u64) -> Meta {
        Meta {
            kind: EntryKind::File,
            mode: 0o644,
            mtime: 1,
            mtime_nsec: 0,
            size,
            sparse: false,
        }
    }

    fn tree(entries: &[(&str, Meta)]) -> Tree {
        let mut tree = Tree::default();
        for (name, meta) in entries {
            tree.push(TOP, name.as_bytes(), *meta, None);
        }
        tree
    }

    #[test]
    fn layers_cover_every_entry_once_in_order() {
        let names: Vec<String> = (0..3000).map(|i| format!("f{i:05}")).collect();
        let entries: Vec<_> = names.iter().map(|n| (n.as_str(), file(5000))).collect();
        let ranges = plan_layers(&tree(&entries), native::MIN_LAYER_TARGET);
        assert!(ranges.len() > 3, "{}", ranges.len());
        assert_eq!(ranges.first().unwrap().start, 0);
        assert_eq!(ranges.last().unwrap().end, entries.len());
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(
            plan_layers(&tree(&[]), native::MIN_LAYER_TARGET),
            vec![0..0]
        );
    }

    #[test]
    fn fingerprints_on_several_threads_are_each_layers_own_in_order() {
        let names: Vec<String> = (0..50).map(|i| format!("f{i:02}")).collect();
        let entries: Vec<_> = (names.iter().enumerate())
            .map(|(i, n)| (n.as_str(), file(i as u64)))
            .collect();
        let tree = tree(&entries);
        let layers = [0..1, 1..7, 7..8, 8..30, 30..31, 31..50];
        let each: Vec<Digest> = (layers.iter())
            .map(|l| fingerprint(&tree, l.clone()))
            .collect();
        assert!(each.windows(2).all(|w| w[0] != w[1]));
        for threads in 0..=8 {
            assert_eq!(
                fingerprints(&tree, &layers, threads),
                each,
                "{threads} threads"
            );
        }
        let (empty, nothing) = (Tree::default(), 0..0);
        assert_eq!(
            fingerprints(&empty, std::slice::from_ref(&nothing), 2),
            vec![fingerprint(&empty, nothing)]
        );
    }

    #[test]
    fn fingerprint_sees_metadata_changes_only() {
        let a = [("a", file(10)), ("b", file(20))];
        let fp = |entries: &[(&str, Meta)]| fingerprint(&tree(entries), 0..entries.len());
        assert_eq!(fp(&a), fp(&a.clone()));
        let mut b = a;
        b[1].1.mtime_nsec = 1;
        assert_ne!(fp(&a), fp(&b));
        let mut c = a;
        c[0].1.mode = 0o755;
        assert_ne!(fp(&a), fp(&c));
    }

    #[test]
    fn fingerprints_are_those_earlier_backups_recorded() {
        // Previous backups' configs hold fingerprints: a layer is reused only if the digest
        // comes out the same. This one was computed by the code before the compact tree
        // (a275fb9), which hashed a list of whole paths.
        let meta = |kind, mode, size, mtime_nsec| Meta {
            kind,
            mode,
            mtime: 1_700_000_000,
            mtime_nsec,
            size,
            sparse: false,
        };
        let mut tree = Tree::default();
        let dir = tree.push(TOP, b"dir", meta(EntryKind::Dir, 0o755, 0, 5), None);
        let file = meta(EntryKind::File, 0o644, 10, 123_456_789);
        tree.push(dir, b"a", file, None);
        let symlink = meta(EntryKind::Symlink, 0o777, 0, 0);
        tree.push(dir, b"link", symlink, Some(b"a"));
        let hardlink = meta(EntryKind::Hardlink, 0o644, 0, 0);
        tree.push(TOP, b"z", hardlink, Some(b"dir/a"));
        assert_eq!(
            fingerprint(&tree, 0..4).to_string(),
            "sha256:ca9db9f789227558c194a613061608a13c696803d3b78a8ea9ba3ed447749d20"
        );
    }
}
