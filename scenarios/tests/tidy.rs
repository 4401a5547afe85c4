//! Tidy checks over the repository, in the spirit of rust-analyzer's `tidy.rs`: every Rust
//! file opens with a `//!` line saying what it is, and every file or directory that
//! `docs/ARCHITECTURE.md` names exists, so the map cannot drift from the code unnoticed.

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("scenarios/ is inside the repository")
        .to_owned()
}

/// Every `.rs` file below `dir`, skipping build output and hidden directories.
fn rust_files(dir: &Path, acc: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, acc);
            }
        } else if name.ends_with(".rs") {
            acc.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_doc_line() {
    let root = repo_root();
    let mut files = Vec::new();
    for top in ["shared", "backup", "restore", "operator", "scenarios"] {
        rust_files(&root.join(top), &mut files);
    }
    assert!(files.len() > 20, "found only {} Rust files", files.len());
    let undocumented: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            !text.starts_with("//!")
        })
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(
        undocumented.is_empty(),
        "these files do not open with a `//!` line saying what they are: {undocumented:#?}"
    );
}

/// Whether a backticked token names a file or directory of the repository (rather than a
/// type, a command, an API group, an absolute path in a container or a pattern): a relative
/// path with a directory part, or a file name with a source or document extension.
fn is_repo_path(token: &str) -> bool {
    const EXTENSIONS: [&str; 5] = [".rs", ".md", ".sh", ".toml", ".yaml"];
    let has_dir = token.trim_end_matches('/').contains('/');
    let domain_like = has_dir && token.split('/').next().unwrap_or_default().contains('.');
    !token.starts_with('/')
        && !token.starts_with('.')
        && !domain_like
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
        && (has_dir || EXTENSIONS.iter().any(|e| token.ends_with(e)))
}

/// Whether a file or directory called `name` exists anywhere below `dir` (prose often names
/// a file of a subdirectory it has just introduced).
fn exists_below(dir: &Path, name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let file_name = entry.file_name();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        file_name.to_string_lossy() == name.trim_end_matches('/')
            || (is_dir && file_name != "target" && exists_below(&entry.path(), name))
    })
}

#[test]
fn every_path_architecture_md_names_exists() {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    // Paths in a `### `dir/`` section may be relative to that directory, its `src/`, or (a
    // bare file name) anywhere below it.
    let mut section = root.clone();
    let mut checked = 0;
    let mut missing = Vec::new();
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("### `") {
            let dir = heading.split('`').next().unwrap_or_default();
            section = root.join(dir);
        } else if line.starts_with("## ") {
            section = root.clone();
        }
        for token in line.split('`').skip(1).step_by(2) {
            if !is_repo_path(token) {
                continue;
            }
            checked += 1;
            let has_dir = token.trim_end_matches('/').contains('/');
            let found = [
                root.join(token),
                section.join(token),
                section.join("src").join(token),
            ]
            .iter()
            .any(|candidate| candidate.exists())
                || (!has_dir && exists_below(&section, token));
            if !found {
                missing.push(token.to_owned());
            }
        }
    }
    assert!(
        checked > 20,
        "found only {checked} paths in ARCHITECTURE.md"
    );
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}
