//! Choosing what a partial restore (`--paths`) fetches: the layers holding a selected entry (or
//! the file of a selected hard link), and the hard links whose file lies outside the selection.

use crate::RestoreError;
use crate::open::Opened;
use std::collections::{BTreeSet, HashMap};
use wsr_format::codec::EntryKind;
use wsr_format::native::IndexEntry;
use wsr_format::unpack::path_selected;

/// Layer positions to fetch: all, or (with a selection and an index) those holding a selected
/// entry or the target of a selected hard link.
pub(crate) fn layers_to_fetch(opened: &Opened, selection: Option<&[Vec<u8>]>) -> Vec<usize> {
    let all: Vec<usize> = (0..opened.data_layers().len()).collect();
    let (Some(selection), Some(index)) = (selection, &opened.index) else {
        return all;
    };
    let selected = |p: &[u8]| path_selected(selection, p);
    let layer_by_path: HashMap<&[u8], usize> = index
        .iter()
        .zip(&opened.layer_of)
        .map(|(e, &l)| (e.path.0.as_slice(), l))
        .collect();
    let mut wanted = BTreeSet::new();
    for (e, &layer) in index
        .iter()
        .zip(&opened.layer_of)
        .filter(|(e, _)| selected(&e.path.0))
    {
        wanted.insert(layer);
        if e.kind == EntryKind::Hardlink
            && let Some(&l) = e
                .link
                .as_ref()
                .and_then(|t| layer_by_path.get(t.0.as_slice()))
        {
            wanted.insert(l);
        }
    }
    wanted.into_iter().collect()
}

/// For a partial restore: each selected hard link whose file is outside the selection, as
/// file path → the first such link's path (see `UnpackOptions::aliases`).
pub(crate) fn hard_link_aliases(
    index: &[IndexEntry],
    selection: &[Vec<u8>],
) -> HashMap<Vec<u8>, Vec<u8>> {
    let mut aliases = HashMap::new();
    for e in index
        .iter()
        .filter(|e| e.kind == EntryKind::Hardlink && path_selected(selection, &e.path.0))
    {
        if let Some(target) = &e.link
            && !path_selected(selection, &target.0)
        {
            aliases
                .entry(target.0.clone())
                .or_insert_with(|| e.path.0.clone());
        }
    }
    aliases
}

/// A `--paths` entry that names nothing in the backup is an error (caught before any layer is
/// downloaded when there is an index).
pub(crate) fn check_selection_in_index(
    selection: &[Vec<u8>],
    index: &[IndexEntry],
) -> Result<(), RestoreError> {
    for wanted in selection {
        let one = std::slice::from_ref(wanted);
        if !index.iter().any(|e| path_selected(one, &e.path.0)) {
            return Err(unmatched(wanted));
        }
    }
    Ok(())
}

pub(crate) fn unmatched(path: &[u8]) -> RestoreError {
    RestoreError::Unmatched {
        path: String::from_utf8_lossy(path).into_owned(),
    }
}
