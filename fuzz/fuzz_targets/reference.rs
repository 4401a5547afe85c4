//! References and registry paths: any text either parses or is refused (no panic), and what
//! parses prints back to text that parses to the same reference.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wsr_format::digest::Digest;
use wsr_format::reference::{Reference, parse_registry_path, workspace_reference};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(reference) = text.parse::<Reference>() {
        let again: Reference = reference
            .to_string()
            .parse()
            .expect("a printed reference parses");
        assert_eq!(again, reference, "{text:?}");
    }
    let _ = text.parse::<Digest>();
    // `registry path|namespace|workspace`, as the DWO convention combines them.
    let mut parts = text.splitn(3, '|');
    let (path, namespace, workspace) = (parts.next(), parts.next(), parts.next());
    if let Some(Ok(repository)) = path.map(parse_registry_path)
        && let (Some(namespace), Some(workspace)) = (namespace, workspace)
        && let Ok(reference) = workspace_reference(&repository, namespace, workspace)
    {
        let again: Reference = reference.to_string().parse().expect("parses");
        assert_eq!(again, reference, "{text:?}");
    }
});
