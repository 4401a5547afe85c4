//! The sparse-file row: one file of several GiB with a few KiB of data (a VM disk image as a
//! workspace holds it), backed up and restored by wsr in both formats and by upstream's
//! pipeline, on loopback. What matters besides time is what the restore allocates on disk.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use super::measure::{Usage, run_step};
use super::peers::{self, Peer, Plan, Slot, Tools};
use super::{Served, network, remove, size_of};

/// Data written into the sparse file: (offset in the file, bytes).
const DATA: [(u64, usize); 2] = [(0, 4096), (1 << 30, 4096)];

/// One tool's backup and restore of the sparse file.
#[derive(Serialize)]
pub struct SparseRow {
    pub label: &'static str,
    pub backup: Option<Usage>,
    pub restore: Option<Usage>,
    pub stored_bytes: Option<u64>,
    /// Apparent and allocated size of the restored file.
    pub restored: Option<(u64, u64)>,
    pub identical: Option<bool>,
    pub failure: Option<String>,
}

#[derive(Serialize)]
pub struct SparseRun {
    /// Apparent and allocated size of the source file.
    pub source: (u64, u64),
    pub rows: Vec<SparseRow>,
}

/// Backs up and restores a `gib` GiB sparse file with each peer, once.
pub fn run(work: &Path, tools: &Tools, gib: u64, timeout: Duration) -> Result<SparseRun> {
    let dir = work.join("run-sparse");
    remove(&dir)?;
    let corpus = dir.join("corpus");
    fs::create_dir_all(corpus.join("vm"))?;
    let file = corpus.join("vm/disk.img");
    let size = gib << 30;
    let f = fs::File::create(&file)?;
    f.set_len(size)?;
    for (offset, len) in DATA {
        f.write_all_at(&vec![0x5a; len], offset.min(size - len as u64))?;
    }
    drop(f);
    let meta = fs::metadata(&file)?;
    let source = (meta.len(), meta.blocks() * 512);
    eprintln!(
        "bench: sparse file of {} bytes, {} allocated",
        source.0, source.1
    );

    let logs = dir.join("logs");
    let mut rows = Vec::new();
    for peer in [Peer::Wsr, Peer::WsrDwo, Peer::Upstream] {
        let reg = Served::start(network::PROFILES[0])?;
        let host = reg.host();
        let slot = Slot {
            host: &host,
            registry_data: reg.registry.data_dir(),
            restic_repo: dir.join("restic"),
            zstd_file: dir.join("zstd"),
            upstream_tmp: dir.join("upstream-tmp"),
            blob: (&file, "sha256:unused"),
        };
        let mut row = SparseRow {
            label: match peer {
                Peer::Upstream => "upstream DWO (tar -czf, oras push / oras pull, tar -xzf, cp -r)",
                other => other.label(false),
            },
            backup: None,
            restore: None,
            stored_bytes: None,
            restored: None,
            identical: None,
            failure: None,
        };
        let target = dir.join(format!("restored-{}", peer.key()));
        let outcome = (|| -> Result<Result<(), String>> {
            let plan = match peers::backup(tools, peer, &corpus, &slot) {
                Ok(plan) => plan,
                Err(why) => return Ok(Err(why)),
            };
            let before = size_of(reg.registry.data_dir())?;
            row.backup = Some(match execute(&plan, &logs, timeout)? {
                Ok(usage) => usage,
                Err(why) => return Ok(Err(format!("backup: {why}"))),
            });
            row.stored_bytes = Some(size_of(reg.registry.data_dir())?.saturating_sub(before));
            let slot = Slot {
                upstream_tmp: dir.join("upstream-tmp-r"),
                ..slot
            };
            let plan = match peers::restore(tools, peer, &corpus, &target, &slot) {
                Ok(plan) => plan,
                Err(why) => return Ok(Err(why)),
            };
            row.restore = Some(match execute(&plan, &logs, timeout)? {
                Ok(usage) => usage,
                Err(why) => return Ok(Err(format!("restore: {why}"))),
            });
            let restored = target.join("vm/disk.img");
            let meta = fs::metadata(&restored).context("restored file")?;
            row.restored = Some((meta.len(), meta.blocks() * 512));
            row.identical = Some(same_data(&file, &restored, source.0)?);
            Ok(Ok(()))
        })()?;
        row.failure = outcome.err();
        eprintln!(
            "  sparse      {:<44} backup {:>7.2} s  restore {:>7.2} s  {}",
            row.label,
            row.backup.as_ref().map_or(f64::NAN, |u| u.wall_s),
            row.restore.as_ref().map_or(f64::NAN, |u| u.wall_s),
            row.failure.as_deref().unwrap_or("ok")
        );
        remove(&target)?;
        remove(&dir.join("upstream-tmp"))?;
        remove(&dir.join("upstream-tmp-r"))?;
        rows.push(row);
    }
    remove(&dir)?;
    Ok(SparseRun { source, rows })
}

/// Runs a plan's preparation (unmeasured) and steps (measured, summed); `Ok(Err)` when a
/// command failed.
fn execute(plan: &Plan, logs: &Path, timeout: Duration) -> Result<Result<Usage, String>> {
    for step in &plan.prepare {
        if let Some(f) = run_step(step, logs, timeout)?.failure {
            return Ok(Err(format!("{}: {f}", step.name)));
        }
    }
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let mut usage = Usage::default();
    for step in &plan.steps {
        let r = run_step(step, logs, timeout)?;
        usage.add(&r.usage);
        if let Some(f) = r.failure {
            return Ok(Err(format!("{}: {f}: {}", r.name, r.stderr_tail.trim())));
        }
    }
    for path in &plan.cleanup {
        remove(path)?;
    }
    Ok(Ok(usage))
}

/// Whether the restored file has the source's data at the source's offsets and zeros
/// elsewhere, read only where the data and a sample of the holes are (not all GiBs).
fn same_data(source: &Path, restored: &Path, size: u64) -> Result<bool> {
    let (a, b) = (fs::File::open(source)?, fs::File::open(restored)?);
    if b.metadata()?.len() != size {
        return Ok(false);
    }
    let mut offsets: Vec<u64> = DATA.iter().map(|&(o, _)| o.min(size - 4096)).collect();
    offsets.extend([size / 3, size / 2, size - 4096]);
    let (mut x, mut y) = (vec![0u8; 4096], vec![0u8; 4096]);
    for offset in offsets {
        a.read_exact_at(&mut x, offset)?;
        b.read_exact_at(&mut y, offset)?;
        if x != y {
            return Ok(false);
        }
    }
    Ok(true)
}
