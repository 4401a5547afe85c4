//! FORMAT.md's examples are the format: every ```json block in it is decoded with this crate's
//! types and re-encoded byte for byte (encoding must be deterministic for digests to repeat),
//! and the native examples are checked to be one consistent backup.

use std::io::Write;
use wsr_format::artifact::{self, Artifact};
use wsr_format::digest::Digest;
use wsr_format::manifest::Manifest;
use wsr_format::native::{self, BackupConfig, IndexEntry};

/// Every fenced block whose info string starts with `json`: (kind, body without the last
/// newline). The kind is the info string's second word.
fn json_examples() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/FORMAT.md");
    let text = std::fs::read_to_string(path).expect("docs/FORMAT.md");
    let mut examples = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```json") else {
            continue;
        };
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        examples.push((info.trim().to_owned(), body.join("\n")));
    }
    examples
}

fn decode_index(text: &str) -> Vec<IndexEntry> {
    let lines = text.lines().count() as u64;
    let mut compressed = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    compressed.write_all(text.as_bytes()).unwrap();
    compressed.write_all(b"\n").unwrap();
    let compressed = compressed.finish().unwrap();
    let mut budget = native::MAX_INDEX_BYTES;
    native::read_index(&compressed[..], lines, &mut budget).expect("index example decodes")
}

fn encode_index(entries: &[IndexEntry]) -> String {
    let compressed = native::write_index(entries).unwrap();
    let lines = zstd::stream::decode_all(&compressed[..]).unwrap();
    String::from_utf8(lines)
        .unwrap()
        .trim_end_matches('\n')
        .to_owned()
}

#[test]
fn every_json_example_decodes_and_re_encodes_byte_for_byte() {
    let examples = json_examples();
    let mut seen = std::collections::BTreeMap::new();
    for (kind, body) in &examples {
        let again = match kind.as_str() {
            "oci-manifest" => {
                let manifest = Manifest::from_bytes(body.as_bytes()).expect("manifest example");
                artifact::classify(&manifest).expect("a backup's manifest");
                String::from_utf8(manifest.to_bytes()).unwrap()
            }
            "wsr-config" => {
                let config = BackupConfig::from_bytes(body.as_bytes()).expect("config example");
                String::from_utf8(config.to_bytes()).unwrap()
            }
            "wsr-index" => encode_index(&decode_index(body)),
            other => panic!("FORMAT.md has a ```json {other} block this test cannot check"),
        };
        assert_eq!(&again, body, "a ```json {kind} example of FORMAT.md");
        *seen.entry(kind.as_str()).or_insert(0) += 1;
    }
    let seen: Vec<_> = seen.into_iter().collect();
    assert_eq!(
        seen,
        [("oci-manifest", 2), ("wsr-config", 1), ("wsr-index", 1)]
    );
}

#[test]
fn the_native_examples_are_one_backup() {
    let examples = json_examples();
    let find = |kind: &str| {
        examples
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, body)| body.as_str())
            .unwrap()
    };
    let manifest = Manifest::from_bytes(find("oci-manifest").as_bytes()).unwrap();
    let config_bytes = find("wsr-config").as_bytes();
    let config = BackupConfig::from_bytes(config_bytes).unwrap();
    let index = decode_index(find("wsr-index"));
    let Ok(Artifact::Native {
        config: config_desc,
        layers,
        indexes,
    }) = artifact::classify(&manifest)
    else {
        panic!("the first manifest example is native");
    };
    assert_eq!(config_desc.digest, Digest::of(config_bytes));
    assert_eq!(config_desc.size, config_bytes.len() as u64);
    assert!(config.lists(&layers, &indexes));
    assert_eq!(config.layers[0].entries, index.len() as u64);
    // Version 3: the index is the end of the layer's blob, right after the frame header.
    let compressed = native::write_index(&index).unwrap();
    assert_eq!(config.layers[0].index, Digest::of(&compressed));
    let located = config.index_location(0, &layers, &indexes);
    assert_eq!(located.size, compressed.len() as u64);
    assert_eq!(located.offset + located.size, layers[0].size);
    assert_eq!(
        config.totals.entries(),
        index.len() as u64,
        "one layer holds every entry"
    );
    let file_bytes: u64 = index.iter().map(|e| e.size).sum();
    assert_eq!(config.totals.bytes, file_bytes);
    let wanted = |key: &str| manifest.annotation(key).map(str::to_owned);
    assert_eq!(
        wanted(wsr_format::media::annotation::WSR_BYTES),
        Some(config.totals.bytes.to_string())
    );
    assert_eq!(
        wanted(wsr_format::media::annotation::WSR_FILES),
        Some(config.totals.entries().to_string())
    );
}
