//! Choosing what a partial restore (`--paths`) fetches: the layers holding a selected entry (or
//! the file of a selected hard link), and the hard links whose file lies outside the selection.
//! Worked out from the file indexes, streamed line by line, before any data layer is fetched.

use crate::RestoreError;
use crate::open::{Opened, scan_indexes};
use std::collections::{BTreeSet, HashMap};
use wsr_format::codec::EntryKind;
use wsr_format::unpack::{MAX_HARDLINK_NAME_BYTES, path_selected};
use wsr_transport::Store;

/// What to fetch and how to restore it.
pub(crate) struct Plan {
    /// Layer positions to fetch, ascending.
    pub layers: Vec<usize>,
    /// For a partial restore: each selected hard link whose file is outside the selection, as
    /// file path → the first such link's path (see `UnpackOptions::aliases`).
    pub aliases: HashMap<Vec<u8>, Vec<u8>>,
    /// Whether every layer is fetched (so the indexes' sums can be checked as they stream).
    pub all_layers: bool,
}

/// Everything, for a full restore, a verify, or an artifact without an index (whose
/// `--paths` are checked after unpacking). With a selection and an index: the layers holding a
/// selected entry or the file of a selected hard link; a `--paths` entry that names nothing
/// in the index is an error here, before any data layer is downloaded.
pub(crate) async fn plan(
    store: &Store,
    opened: &Opened,
    selection: Option<&[Vec<u8>]>,
) -> Result<Plan, RestoreError> {
    let count = opened.data_layers().len();
    let everything = Plan {
        layers: (0..count).collect(),
        aliases: HashMap::new(),
        all_layers: true,
    };
    let (Some(selection), Some(_)) = (selection, &opened.config) else {
        return Ok(everything);
    };
    let chosen = Chosen {
        selection: selection.to_vec(),
        matched: vec![false; selection.len()],
        ..Chosen::default()
    };
    let mut chosen = scan_indexes(store, opened, chosen, Chosen::visit).await?;
    if let Some((wanted, _)) = chosen
        .selection
        .iter()
        .zip(&chosen.matched)
        .find(|(_, matched)| !**matched)
    {
        return Err(unmatched(wanted));
    }
    if !chosen.aliases.is_empty() {
        // A hard link's file precedes it, possibly in a layer nothing selected: a second pass
        // finds the layers of the files restored under an alias.
        let aliases = std::mem::take(&mut chosen.aliases);
        let found = scan_indexes(
            store,
            opened,
            (aliases, BTreeSet::new()),
            |(aliases, layers), layer, line| {
                if aliases.contains_key(&line.path.0) {
                    layers.insert(layer);
                }
                Ok(())
            },
        )
        .await?;
        chosen.aliases = found.0;
        chosen.layers.extend(found.1);
    }
    Ok(Plan {
        all_layers: chosen.layers.len() == count,
        layers: chosen.layers.into_iter().collect(),
        aliases: chosen.aliases,
    })
}

/// What the first pass over the indexes keeps: the selection, which of its paths matched,
/// the layers holding selected entries, and the aliases (names bounded like the unpacker's).
#[derive(Default)]
struct Chosen {
    selection: Vec<Vec<u8>>,
    matched: Vec<bool>,
    layers: BTreeSet<usize>,
    aliases: HashMap<Vec<u8>, Vec<u8>>,
    alias_bytes: u64,
}

impl Chosen {
    fn visit(
        &mut self,
        layer: usize,
        line: wsr_format::native::IndexEntry,
    ) -> Result<(), RestoreError> {
        let path = line.path.0;
        if !path_selected(&self.selection, &path) {
            return Ok(());
        }
        self.layers.insert(layer);
        for (matched, wanted) in self.matched.iter_mut().zip(&self.selection) {
            *matched |= path_selected(std::slice::from_ref(wanted), &path);
        }
        if line.kind == EntryKind::Hardlink
            && let Some(target) = line.link
            && !path_selected(&self.selection, &target.0)
            && !self.aliases.contains_key(&target.0)
        {
            self.alias_bytes += (path.len() + target.0.len()) as u64;
            if self.alias_bytes > MAX_HARDLINK_NAME_BYTES {
                return Err(RestoreError::Corrupt(format!(
                    "the selected hard links' names exceed {MAX_HARDLINK_NAME_BYTES} bytes"
                )));
            }
            self.aliases.insert(target.0, path);
        }
        Ok(())
    }
}

pub(crate) fn unmatched(path: &[u8]) -> RestoreError {
    RestoreError::Unmatched {
        path: String::from_utf8_lossy(path).into_owned(),
    }
}
