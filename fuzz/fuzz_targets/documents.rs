//! Manifest, layout index, native config and file index decoding: any bytes either decode or
//! are refused (no panic, bounded memory), and what decodes re-encodes to bytes that decode to
//! the same document. The first byte picks the document.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;
use wsr_format::artifact;
use wsr_format::manifest::{Index, Manifest};
use wsr_format::native::{self, BackupConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(manifest) = Manifest::from_bytes(body) {
                let _ = artifact::classify(&manifest);
                let again = Manifest::from_bytes(&manifest.to_bytes()).expect("re-decodes");
                assert_eq!(again, manifest);
            }
        }
        1 => {
            if let Ok(index) = serde_json::from_slice::<Index>(body) {
                let bytes = serde_json::to_vec(&index).unwrap();
                assert_eq!(serde_json::from_slice::<Index>(&bytes).unwrap(), index);
            }
        }
        2 => {
            if let Ok(config) = BackupConfig::from_bytes(body) {
                let _ = config.totals.checked_entries();
                // Where each index is must be computable (no overflow) once the config lists
                // its layers: here, blobs of the config's digests and of the input's length.
                let layers: Vec<_> = config
                    .layers
                    .iter()
                    .map(|l| {
                        let media = wsr_format::media::LAYER_TAR_ZSTD;
                        wsr_format::manifest::Descriptor::new(
                            media,
                            l.digest.clone(),
                            body.len() as u64,
                        )
                    })
                    .collect();
                if config.lists(&layers, &[]) {
                    for i in 0..layers.len() {
                        let at = config.index_location(i, &layers, &[]);
                        assert_eq!(at.offset + at.size, body.len() as u64);
                    }
                }
                let again = BackupConfig::from_bytes(&config.to_bytes()).expect("re-decodes");
                assert_eq!(again, config);
            }
        }
        _ => {
            // The index as stored: JSON lines in a zstd stream, read against a declared count
            // taken from the input (it must bound the work, not size an allocation).
            let Some((&declared, lines)) = body.split_first() else {
                return;
            };
            let mut compressed = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
            compressed.write_all(lines).unwrap();
            let compressed = compressed.finish().unwrap();
            let mut budget = 1 << 20;
            let expected = if declared == 255 {
                u64::MAX
            } else {
                u64::from(declared)
            };
            if let Ok(entries) = native::read_index(&compressed[..], expected, &mut budget) {
                assert_eq!(entries.len() as u64, expected);
                let stored = native::write_index(&entries).unwrap();
                let mut budget = 1 << 20;
                let again = native::read_index(&stored[..], expected, &mut budget).unwrap();
                assert_eq!(again, entries);
            }
        }
    }
});
