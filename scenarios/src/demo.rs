//! `scenarios demo`: the main job end to end on the embedded default, with no server: a sample
//! workspace is backed up into an OCI layout directory, backed up again (incrementally),
//! restored into a fresh directory and compared entry by entry with the source.

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use wsr_backup::{BackupOptions, Format};
use wsr_restore::RestoreOptions;
use wsr_transport::ConnectOptions;

/// Runs the demo in `dir` (a fresh temporary directory when `None`, removed afterwards).
pub fn run(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let temp;
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            d
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    let result = demo(&dir);
    crate::sample::make_removable(&dir);
    result
}

fn demo(dir: &Path) -> anyhow::Result<()> {
    let source = dir.join("projects");
    if source.exists() {
        bail!("{} already exists; give an empty --dir", source.display());
    }
    std::fs::create_dir(&source)?;
    crate::sample::write_sample(&source, true).context("writing the sample workspace")?;
    let layout = dir.join("backups");
    let reference = format!("oci:{}:latest", layout.join("demo-ns/demo-ws").display());
    println!("sample workspace: {}", source.display());

    let runtime = tokio::runtime::Runtime::new()?;
    let options = BackupOptions {
        source: source.clone(),
        to: reference.parse()?,
        format: Format::Native,
        workspace: Some("demo-ws".into()),
        namespace: Some("demo-ns".into()),
        workspace_id: None,
        level: 3,
        workers: 4,
        keep: None,
        skip_unreadable: false,
        full: false,
        connect: ConnectOptions::default(),
    };
    let first = runtime.block_on(wsr_backup::run(&options, Arc::default()))?;
    println!(
        "backup:   {} entries, {} bytes -> {} bytes in {} layers, {:.3}s\n          {}",
        first.files + first.dirs + first.symlinks + first.hardlinks,
        first.bytes,
        first.stored_bytes,
        first.layers,
        first.duration_s,
        first.reference
    );
    for s in &first.skipped {
        println!("          skipped {s}");
    }
    let second = runtime.block_on(wsr_backup::run(&options, Arc::default()))?;
    println!(
        "again:    {} of {} layers reused, {} layer bytes uploaded, {:.3}s",
        second.reused_layers, second.layers, second.uploaded_layer_bytes, second.duration_s
    );

    let target = dir.join("restored");
    let started = Instant::now();
    let restore = RestoreOptions {
        from: reference.parse()?,
        to: target.clone(),
        paths: None,
        force: false,
        max_size: None,
        parallel: wsr_restore::default_parallel(),
        sync: true,
        connect: ConnectOptions::default(),
    };
    let restored = runtime.block_on(wsr_restore::restore(&restore, Arc::default()))?;
    println!(
        "restore:  {} files, {} dirs, {} symlinks, {} hard links, {} bytes, verified against the file index, {:.3}s\n          into {}",
        restored.files,
        restored.dirs,
        restored.symlinks,
        restored.hardlinks,
        restored.bytes,
        started.elapsed().as_secs_f64(),
        target.display()
    );

    let want: Vec<String> = crate::sample::snapshot(&source)?
        .into_iter()
        .filter(|l| !l.contains(" special "))
        .collect();
    let got = crate::sample::snapshot(&target)?;
    if want != got {
        let missing: Vec<_> = want.iter().filter(|l| !got.contains(l)).collect();
        let extra: Vec<_> = got.iter().filter(|l| !want.contains(l)).collect();
        bail!(
            "restored tree differs from the source\nmissing: {missing:#?}\nunexpected: {extra:#?}"
        );
    }
    println!(
        "identical: {} entries compared (paths, types, modes, mtimes, contents, links)",
        want.len()
    );
    println!("digest:   {}", second.digest);
    Ok(())
}
