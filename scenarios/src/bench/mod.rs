//! `scenarios bench`: wsr against the upstream DWO pipeline, `tar | zstd`, restic and the
//! machine's floors, in one invocation, on the same corpus, and `docs/BENCHMARKS.md` from it.
//!
//! Phases per corpus, each repeated `--reps` times with the peer order rotated every
//! repetition (so no tool always runs first, on the coldest or warmest state):
//! 1. full backup: every peer reads the pristine corpus; each repetition pushes into its own
//!    fresh registry, so storage growth equals bytes uploaded;
//! 2. restore: every peer restores what it wrote in the same repetition into an empty target,
//!    timed until the tree is on disk (each ends with a measured `sync -f`), and the result is
//!    compared with the corpus;
//! 3. incremental (wsr and restic): on a copy of the corpus, back up, back up again unchanged,
//!    after one edited file, and after rewriting 10% of the files.
//!
//! Every measured command is a child process ([`measure`]); nothing is dropped: a skipped or
//! failed run is recorded with the reason and shown in the report. Between runs the harness
//! calls `sync` (unmeasured) so one run's dirty pages are not flushed on the next run's clock.

mod machine;
mod measure;
mod network;
mod peers;
mod report;
mod sparse;

use std::env;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use sha2::{Digest, Sha256};
use wsr_transport::testing::TestRegistry;

use crate::corpus::{self, CorpusStats, Mutation, Profile, Scale, TreeSummary};
use measure::{Step, Usage, run_step};
use network::{Network, ShapingProxy};
use peers::{Peer, Plan, Slot, Tools};

/// `scenarios shape`: the benchmark's shaping proxy alone, in front of a registry the caller
/// runs, for measuring one tool under a profile by hand.
#[derive(Args, Debug)]
pub struct ShapeArgs {
    /// The registry to forward to, `HOST:PORT`.
    #[arg(long)]
    pub to: std::net::SocketAddr,
    /// cluster | region | remote
    #[arg(long)]
    pub network: Network,
}

/// Runs the proxy until the process is stopped; prints the address tools should use.
pub fn shape(args: ShapeArgs) -> Result<()> {
    let proxy = ShapingProxy::start(args.to, args.network)?;
    println!(
        "{} -> {} ({})",
        proxy.host(),
        args.to,
        args.network.describe()
    );
    loop {
        std::thread::park();
    }
}

#[derive(Args)]
pub struct BenchArgs {
    /// Corpus sizes, comma-separated: tiny, small, large, huge, huge:N, NNNm, NNg.
    #[arg(long, value_delimiter = ',', default_value = "small")]
    size: Vec<Scale>,
    /// Corpus profiles, comma-separated: workspace, many-files.
    #[arg(long, value_delimiter = ',', default_value = "workspace")]
    profile: Vec<Profile>,
    /// Network profiles, comma-separated: loopback (direct), cluster (1 ms each way,
    /// 10 Gbit/s), region (10 ms, 1 Gbit/s), remote (40 ms, 200 Mbit/s). Every tool that talks
    /// to the registry goes through the same shaping proxy.
    #[arg(long, value_delimiter = ',', default_value = "loopback")]
    network: Vec<Network>,
    /// Corpora as profile/size pairs, comma-separated (e.g. `workspace/large,many-files/small`),
    /// instead of every --profile at every --size.
    #[arg(long, value_delimiter = ',')]
    corpus: Vec<String>,
    /// Repetitions per measurement; the report shows medians.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Report to write [default: <workspace>/docs/BENCHMARKS.md].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Working directory for corpora (kept between invocations), registries and restores
    /// [default: <workspace>/target/bench].
    #[arg(long)]
    work: Option<PathBuf>,
    /// Only these peers, comma-separated: wsr, wsr-dwo, upstream, zstd, restic, floors.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Do not run `cargo build --release -p wsr-backup -p wsr-restore` first.
    #[arg(long)]
    no_build: bool,
    /// Where the trees the harness creates and deletes go: restores, upstream's extracted
    /// copy, the incremental copy [default: the work dir]. On ext4 without a journal, put it on
    /// a filesystem with one (`scenarios/bench-scratch.sh`): there, deleting a tree slows every
    /// file created in the next six minutes (`machine::wait_for_freed_inodes`).
    #[arg(long)]
    scratch_dir: Option<PathBuf>,
    /// Size in GiB of the sparse file (a few KiB of data) backed up and restored once by wsr
    /// and upstream, on loopback; 0 skips it.
    #[arg(long, default_value_t = 4)]
    sparse_gib: u64,
    /// Kill a measured command after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_s: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Backup,
    Restore,
    Incremental,
}

/// Incremental scenarios, in the order they are applied to the copy of the corpus.
pub const INCREMENTAL: [&str; 4] = ["full", "unchanged", "one file", "10%"];

/// One measured (or skipped, or failed) run.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub phase: Phase,
    /// One of [`INCREMENTAL`] for incremental runs, else empty.
    pub scenario: &'static str,
    pub peer: &'static str,
    pub label: &'static str,
    pub floor: bool,
    pub rep: usize,
    /// Sum over steps (RSS: the largest).
    pub usage: Usage,
    pub steps: Vec<(String, Usage)>,
    /// The measured command lines, with `$CORPUS`, `$WORK`, `$REGISTRY` placeholders.
    pub commands: Vec<String>,
    pub failure: Option<String>,
    pub skipped: Option<String>,
    /// Growth of the registry storage, restic repository or output file.
    pub stored_bytes: Option<u64>,
    /// wsr's `--json` summary.
    pub wsr: Option<serde_json::Value>,
    /// Restores: how the restored tree compares with the source.
    pub check: Option<String>,
    /// CPU time the registry process spent during the run: server-side work on the same cores.
    pub registry_cpu_s: Option<f64>,
    /// CPU time the whole machine spent during the run beyond this run and its registry:
    /// other processes and kernel threads (reclaim, writeback). High values mark noisy runs.
    pub background_cpu_s: Option<f64>,
    /// Page-cache pages evicted and read back during the run (`workingset_refault_file`).
    pub refaults: Option<u64>,
    /// How long the run waited, before its clock started, after the harness deleted a tree
    /// (`machine::wait_for_freed_inodes`).
    pub freed_inodes_wait_s: Option<f64>,
}

impl Record {
    pub fn ok(&self) -> bool {
        self.failure.is_none() && self.skipped.is_none()
    }
}

/// Everything measured on one corpus.
#[derive(Serialize)]
pub struct CorpusRun {
    /// What lies between the tools and the registry.
    pub network: Network,
    pub profile: String,
    pub size: String,
    pub stats: CorpusStats,
    pub summary: TreeSummary,
    /// Size of `tar | zstd -T0` of the corpus (level 3).
    pub zstd_bytes: u64,
    pub mutations: Vec<(String, Mutation)>,
    /// The filesystem of the scratch trees (restores, the incremental copy).
    pub scratch_fs: String,
    /// When restored trees were deleted.
    pub restores_deleted: RestoreCleanup,
    pub records: Vec<Record>,
}

/// When restored trees are deleted: as late as the disk allows (see `bench_corpus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreCleanup {
    AtPhaseEnd,
    PerRepetition,
    PerRestore,
}

/// Bytes and inodes: what a filesystem has free, or what restores need.
#[derive(Clone, Copy, Default)]
struct Room {
    bytes: u64,
    inodes: u64,
}

impl RestoreCleanup {
    /// The latest cleanup that both the free bytes and the free inodes allow, one repetition's
    /// restores needing `one_rep` of each.
    fn for_room(free: Room, one_rep: Room, reps: usize) -> RestoreCleanup {
        let bytes = Self::for_disk(free.bytes, one_rep.bytes, reps, 5 << 30);
        let inodes = Self::for_disk(free.inodes, one_rep.inodes, reps, 100_000);
        bytes.max(inodes)
    }

    /// The latest cleanup that `free` units (bytes or inodes) allow, one repetition's restores
    /// needing `one_rep` and `margin` kept free.
    fn for_disk(free: u64, one_rep: u64, reps: usize, margin: u64) -> RestoreCleanup {
        if free > one_rep * reps as u64 + margin {
            RestoreCleanup::AtPhaseEnd
        } else if free > one_rep + margin {
            RestoreCleanup::PerRepetition
        } else {
            RestoreCleanup::PerRestore
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            RestoreCleanup::AtPhaseEnd => "after the restore phase",
            RestoreCleanup::PerRepetition => "after each repetition",
            RestoreCleanup::PerRestore => "right after each restore's check",
        }
    }
}

struct Ctx<'a> {
    timeout: Duration,
    /// This corpus's run directory (`$RUN` in the report), inside `work` (`$WORK`).
    dir: PathBuf,
    /// Where this corpus's restores and incremental copy go (`$SCRATCH`; `dir` by default).
    scratch: PathBuf,
    work: PathBuf,
    corpus: PathBuf,
    summary: TreeSummary,
    peers: &'a [String],
    reps: usize,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let root = workspace_root();
    let target = env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let work = args.work.clone().unwrap_or_else(|| target.join("bench"));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("docs/BENCHMARKS.md"));
    for p in &args.peers {
        if !peers::PEER_GROUPS.contains(&p.as_str()) {
            bail!(
                "unknown peer {p:?}; expected one of {}",
                peers::PEER_GROUPS.join(", ")
            );
        }
    }
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    fs::create_dir_all(&work)?;
    let timeout = Duration::from_secs(args.timeout_s);

    let tools = setup_tools(&root, &target, &work, !args.no_build)?;
    if let Err(why) = &tools.wsr {
        eprintln!("bench: wsr rows will be skipped: {why}");
    }
    if let Err(why) = &tools.oras {
        eprintln!("bench: upstream rows will be skipped: {why}");
    }
    let machine = machine::describe(&work, &tools);

    let corpora = corpora(&args)?;
    let mut runs = Vec::new();
    for network in &args.network {
        for (profile, scale) in &corpora {
            runs.push(bench_corpus(
                &work, &tools, *profile, scale, *network, &args, timeout,
            )?);
        }
    }

    let sparse = if args.sparse_gib > 0 && tools.wsr.is_ok() {
        Some(sparse::run(&work, &tools, args.sparse_gib, timeout)?)
    } else {
        None
    };

    fs::write(work.join("results.json"), serde_json::to_vec_pretty(&runs)?)?;
    // The command as given (what a reader reruns), not rebuilt from the runs.
    let command: Vec<String> = env::args().skip_while(|a| a != "bench").collect();
    let command = format!("cargo run --release -p scenarios -- {}", command.join(" "));
    let md = report::render(&machine, &runs, sparse.as_ref(), args.reps, &command);
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(&out, md).with_context(|| format!("write {}", out.display()))?;
    eprintln!(
        "bench: wrote {} (raw results: {})",
        out.display(),
        work.join("results.json").display()
    );
    Ok(())
}

/// The corpora to measure: the `--corpus` pairs, or every `--profile` at every `--size`.
fn corpora(args: &BenchArgs) -> Result<Vec<(Profile, Scale)>> {
    if args.corpus.is_empty() {
        let pairs = args
            .profile
            .iter()
            .flat_map(|p| args.size.iter().map(|s| (*p, s.clone())));
        return Ok(pairs.collect());
    }
    args.corpus
        .iter()
        .map(|pair| {
            let (profile, size) = pair
                .split_once('/')
                .with_context(|| format!("--corpus {pair:?}: expected profile/size"))?;
            Ok((profile.parse()?, size.parse()?))
        })
        .collect()
}

fn bench_corpus(
    work: &Path,
    tools: &Tools,
    profile: Profile,
    scale: &Scale,
    network: Network,
    args: &BenchArgs,
    timeout: Duration,
) -> Result<CorpusRun> {
    let (corpus, stats, summary) = ensure_corpus(&work.join("corpus"), profile, scale)?;
    let dir = work.join(format!("run-{profile}-{}-{network}", scale.bytes));
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    let scratch = match &args.scratch_dir {
        Some(root) => root.join(dir.file_name().expect("named")),
        None => dir.clone(),
    };
    if scratch != dir && scratch.exists() {
        remove(&scratch)?;
    }
    fs::create_dir_all(&scratch)?;
    let scratch_fs = machine::filesystem(&scratch);
    let ctx = Ctx {
        timeout,
        dir: dir.clone(),
        scratch: scratch.clone(),
        work: work.to_path_buf(),
        corpus: corpus.clone(),
        summary: summary.clone(),
        peers: &args.peers,
        reps: args.reps,
    };

    // The raw-blob floors push the `tar | zstd` bytes; making them also warms the page cache,
    // so every measured run reads the corpus from memory, not from disk.
    eprintln!(
        "bench: {profile}/{scale} over {network}: {} files, {} bytes; preparing archive",
        stats.files, stats.bytes
    );
    let archive = dir.join("prep.tar.zst");
    quiet(
        &Step::shell(
            "prep",
            &format!(
                "tar -cf - -C '{}' . | zstd -T0 -q -f -o '{}'",
                corpus.display(),
                archive.display()
            ),
        ),
        &dir,
    )?;
    let digest = format!("sha256:{}", sha256_file(&archive)?);
    let zstd_bytes = fs::metadata(&archive)?.len();
    if !ctx.selected(Peer::BlobFloor) {
        // Only the raw-blob floors read it; on a short disk (`huge`) its space is needed.
        remove(&archive)?;
    }

    let mut records = Vec::new();
    let slot = |rep: usize, reg: &Served| -> (String, PathBuf, PathBuf, PathBuf, PathBuf) {
        (
            reg.host(),
            reg.registry.data_dir().to_path_buf(),
            dir.join(format!("restic-{rep}")),
            dir.join(format!("zstd-{rep}.tar.zst")),
            dir.join("upstream-tmp"),
        )
    };

    // 1. Full backups.
    let mut registries = Vec::new();
    for rep in 0..args.reps {
        let reg = Served::start(network)?;
        let (host, data, restic_repo, zstd_file, upstream_tmp) = slot(rep, &reg);
        let s = Slot {
            host: &host,
            registry_data: &data,
            restic_repo,
            zstd_file,
            upstream_tmp,
            blob: (&archive, &digest),
        };
        for peer in rotated(peers::BACKUP_PEERS, rep) {
            let plan = peers::backup(tools, peer, &corpus, &s);
            records.push(ctx.execute(
                plan,
                RunId {
                    phase: Phase::Backup,
                    scenario: "",
                    peer,
                    rep,
                },
                &reg,
                None,
            )?);
        }
        registries.push(reg);
    }

    // 2. Restores of what each repetition wrote, each into its own new directory. Restored
    // trees are deleted only after the phase (or after each repetition, or each restore, if the
    // disk is short): ext4 does not reuse inodes freed in the last minutes and searches past
    // them, which made every restore after a deleted one several times slower in kernel time.
    let restore_root = scratch.join("restore");
    fs::create_dir_all(&restore_root)?;
    // Upstream holds its archive and extracted copy besides the restored tree: allow 2x.
    let copies = 2 * peers::RESTORE_PEERS.len() as u64;
    let one_rep = Room {
        bytes: copies * stats.bytes,
        inodes: copies * (stats.files + stats.dirs + stats.symlinks),
    };
    let free = free_room(&restore_root);
    // One restore: upstream's archive and extracted copy, beside a gigabyte for everything else.
    let one_restore = 2 * stats.bytes + (1 << 30);
    if free.bytes < one_restore {
        bail!(
            "{} has {} MB free (counting the disk under its image file, if any); one restore \
             of this corpus needs {} MB",
            restore_root.display(),
            free.bytes / 1_000_000,
            one_restore / 1_000_000
        );
    }
    let cleanup = RestoreCleanup::for_room(free, one_rep, args.reps);
    if cleanup != RestoreCleanup::AtPhaseEnd {
        eprintln!(
            "bench: short of disk: restored trees are deleted {}",
            cleanup.describe()
        );
    }
    let mut deferred = Vec::new();
    for (rep, reg) in registries.iter().enumerate() {
        let (host, data, restic_repo, zstd_file, _) = slot(rep, reg);
        let s = Slot {
            host: &host,
            registry_data: &data,
            restic_repo,
            zstd_file,
            upstream_tmp: scratch.join(format!("upstream-tmp-r{rep}")),
            blob: (&archive, &digest),
        };
        for peer in rotated(peers::RESTORE_PEERS, rep) {
            let target = restore_root.join(format!("r{rep}-{}", peer.key()));
            let plan = peers::restore(tools, peer, &corpus, &target, &s);
            let id = RunId {
                phase: Phase::Restore,
                scenario: "",
                peer,
                rep,
            };
            records.push(ctx.execute(plan, id, reg, Some(&mut deferred))?);
            deferred.push(target);
            if cleanup == RestoreCleanup::PerRestore {
                deferred.drain(..).try_for_each(|p| remove(&p))?;
            }
        }
        if cleanup != RestoreCleanup::AtPhaseEnd {
            deferred.drain(..).try_for_each(|p| remove(&p))?;
        }
    }
    deferred.drain(..).try_for_each(|p| remove(&p))?;
    remove(&restore_root)?;
    drop(registries);
    for rep in 0..args.reps {
        remove(&dir.join(format!("restic-{rep}")))?;
        remove(&dir.join(format!("zstd-{rep}.tar.zst")))?;
    }

    // 3. Incremental backups on a copy, so the cached corpus stays pristine.
    let mut mutations = Vec::new();
    let copy = scratch.join("inc-src");
    for rep in 0..args.reps {
        if !rotated(peers::INCREMENTAL_PEERS, rep)
            .iter()
            .any(|p| ctx.selected(*p))
        {
            break;
        }
        remove(&copy)?;
        quiet(
            &Step::exec(
                "cp",
                "cp",
                [
                    "-a".to_string(),
                    corpus.display().to_string(),
                    copy.display().to_string(),
                ],
            ),
            &dir,
        )?;
        let reg = Served::start(network)?;
        let (host, data, _, zstd_file, upstream_tmp) = slot(rep, &reg);
        let restic_repo = dir.join(format!("inc-restic-{rep}"));
        remove(&restic_repo)?;
        let s = Slot {
            host: &host,
            registry_data: &data,
            restic_repo,
            zstd_file,
            upstream_tmp,
            blob: (&archive, &digest),
        };
        for scenario in INCREMENTAL {
            let seed = rep as u64 + 1;
            match scenario {
                "one file" => mutations.push((
                    format!("rep {rep}: {scenario}"),
                    corpus::touch_one_file(&copy, seed)?,
                )),
                "10%" => mutations.push((
                    format!("rep {rep}: {scenario}"),
                    corpus::change_fraction(&copy, 0.10, seed)?,
                )),
                _ => {}
            }
            for peer in rotated(peers::INCREMENTAL_PEERS, rep) {
                let plan = peers::backup(tools, peer, &copy, &s);
                records.push(ctx.execute(
                    plan,
                    RunId {
                        phase: Phase::Incremental,
                        scenario,
                        peer,
                        rep,
                    },
                    &reg,
                    None,
                )?);
            }
        }
        remove(&s.restic_repo)?;
    }
    remove(&copy)?;
    if scratch != dir {
        remove(&scratch)?;
    }

    Ok(CorpusRun {
        network,
        profile: profile.to_string(),
        size: scale.label.clone(),
        stats,
        summary,
        zstd_bytes,
        mutations,
        scratch_fs,
        restores_deleted: cleanup,
        records,
    })
}

/// Which run a plan is: phase, incremental scenario, tool and repetition.
struct RunId {
    phase: Phase,
    scenario: &'static str,
    peer: Peer,
    rep: usize,
}

impl Ctx<'_> {
    fn selected(&self, peer: Peer) -> bool {
        self.peers.is_empty() || self.peers.iter().any(|p| p == peer.group())
    }

    /// Runs one plan and records it; `Err` only for failures of the harness itself.
    fn execute(
        &self,
        plan: Result<Plan, String>,
        id: RunId,
        reg: &Served,
        defer_cleanup: Option<&mut Vec<PathBuf>>,
    ) -> Result<Record> {
        let RunId {
            phase,
            scenario,
            peer,
            rep,
        } = id;
        let host = reg.host();
        let mut rec = Record {
            phase,
            scenario,
            peer: peer.key(),
            label: peer.label(phase == Phase::Restore),
            floor: peer.is_floor(),
            rep,
            usage: Usage::default(),
            steps: Vec::new(),
            commands: Vec::new(),
            failure: None,
            skipped: None,
            stored_bytes: None,
            wsr: None,
            check: None,
            registry_cpu_s: None,
            background_cpu_s: None,
            refaults: None,
            freed_inodes_wait_s: None,
        };
        if !self.selected(peer) {
            rec.skipped = Some("not selected (--peers)".into());
            return Ok(rec);
        }
        let plan = match plan {
            Ok(plan) => plan,
            Err(why) => {
                rec.skipped = Some(why);
                return Ok(rec);
            }
        };
        let root = format!("{}/", workspace_root().display());
        let oras = scenarios::oras::cli().map_or(String::new(), |p| p.display().to_string());
        let redact = |s: String| {
            let s = if oras.is_empty() {
                s
            } else {
                s.replace(&oras, "$WSR_ORAS")
            };
            let s = s.replace(&self.corpus.display().to_string(), "$CORPUS");
            let s = if self.scratch == self.dir {
                s
            } else {
                s.replace(&self.scratch.display().to_string(), "$SCRATCH")
            };
            s.replace(&self.dir.display().to_string(), "$RUN")
                .replace(&self.work.display().to_string(), "$WORK")
                .replace(&root, "")
                .replace(&host, "$REGISTRY")
                .replace(&reg.registry.host(), "$REGISTRY")
        };
        rec.commands = plan.steps.iter().map(|s| redact(s.display())).collect();
        let logs = self.dir.join("logs");

        for step in &plan.prepare {
            let r = run_step(step, &logs, self.timeout)?;
            if let Some(f) = r.failure {
                rec.failure = Some(format!(
                    "preparation `{}` failed ({f}): {}",
                    step.display(),
                    r.stderr_tail.trim()
                ));
                return Ok(rec);
            }
        }
        let before = plan.growth.as_deref().map(size_of).transpose()?;
        // Flush what the harness itself left dirty (removed targets, earlier runs) now, not
        // on this run's clock.
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        let waited = machine::wait_for_freed_inodes();
        if !waited.is_zero() {
            rec.freed_inodes_wait_s = Some(waited.as_secs_f64());
            eprintln!(
                "  (waited {:.0} s for freed inodes to be reusable)",
                waited.as_secs_f64()
            );
        }
        machine::warm(&plan.inputs);
        let registry_pid = registry_pid(reg);
        let cpu_before = registry_pid.and_then(process_cpu_s);
        let machine_before = machine_cpu_s();
        let refaults_before = refaults();
        let mut last_stdout = String::new();
        for step in &plan.steps {
            let r = run_step(step, &logs, self.timeout)?;
            rec.usage.add(&r.usage);
            rec.steps.push((r.name.clone(), r.usage.clone()));
            // The restores' `sync -f` after wsr prints nothing: keep wsr's summary.
            if !r.stdout_tail.trim().is_empty() {
                last_stdout = r.stdout_tail;
            }
            if let Some(f) = r.failure {
                rec.failure = Some(format!(
                    "{}: {f}; stderr: {}",
                    r.name,
                    tail_lines(&r.stderr_tail, 12)
                ));
                break;
            }
        }
        if let (Some(a), Some(b)) = (cpu_before, registry_pid.and_then(process_cpu_s)) {
            rec.registry_cpu_s = Some(b - a);
        }
        if let (Some(a), Some(b)) = (machine_before, machine_cpu_s()) {
            let ours = rec.usage.cpu_s() + rec.registry_cpu_s.unwrap_or(0.0);
            rec.background_cpu_s = Some((b - a - ours).max(0.0));
        }
        if let (Some(a), Some(b)) = (refaults_before, refaults()) {
            rec.refaults = Some(b.saturating_sub(a));
        }
        if let (Some(path), Some(before)) = (plan.growth.as_deref(), before) {
            rec.stored_bytes = Some(size_of(path)?.saturating_sub(before));
        }
        if plan.wsr_json && rec.failure.is_none() {
            let line = last_stdout
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) if v.is_object() => rec.wsr = Some(v),
                _ => {
                    rec.failure = Some(format!(
                        "no JSON summary on the last line of stdout: {:?}",
                        tail_lines(&last_stdout, 3)
                    ))
                }
            }
        }
        if let (Some(target), true) = (plan.check.as_deref(), rec.failure.is_none()) {
            rec.check = Some(compare_trees(&self.corpus, &self.summary, target)?);
        }
        match defer_cleanup {
            Some(later) => later.extend(plan.cleanup.iter().cloned()),
            None => plan.cleanup.iter().try_for_each(|p| remove(p))?,
        }
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };

        let status = match (&rec.failure, &rec.check) {
            (Some(f), _) => format!("FAILED: {}", f.lines().next().unwrap_or("")),
            (None, Some(c)) => c.clone(),
            (None, None) => "ok".into(),
        };
        eprintln!(
            "  {:<11} {:<9} rep {}/{}  {:<44} {:>8.2} s  {}",
            format!("{phase:?}").to_lowercase(),
            scenario,
            rep + 1,
            self.reps,
            rec.label,
            rec.usage.wall_s,
            status
        );
        Ok(rec)
    }
}

/// A repetition's registry, and the shaping proxy in front of it unless the network profile
/// is plain loopback.
struct Served {
    registry: TestRegistry,
    proxy: Option<ShapingProxy>,
}

impl Served {
    fn start(network: Network) -> Result<Served> {
        let registry = TestRegistry::start_cached().context("start registry")?;
        let proxy = if network.is_direct() {
            None
        } else {
            let addr = registry.host().parse().context("registry address")?;
            Some(ShapingProxy::start(addr, network)?)
        };
        Ok(Served { registry, proxy })
    }

    /// Where tools connect: the proxy if there is one.
    fn host(&self) -> String {
        self.proxy
            .as_ref()
            .map_or_else(|| self.registry.host(), ShapingProxy::host)
    }
}

/// The pid of `reg`'s registry process: the one whose command line names its config file.
fn registry_pid(reg: &Served) -> Option<u32> {
    let config = reg.registry.data_dir().parent()?.join("config.yml");
    let config = config.to_string_lossy();
    fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(config.as_ref())
                .then_some(pid)
        })
}

/// User+system CPU seconds a live process has used, from /proc/PID/stat.
fn process_cpu_s(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

/// Busy CPU seconds of the whole machine so far (all cores), from /proc/stat.
fn machine_cpu_s() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7)?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| busy as f64 / hz as f64)
}

fn refaults() -> Option<u64> {
    let vmstat = fs::read_to_string("/proc/vmstat").ok()?;
    vmstat.lines().find_map(|l| {
        l.strip_prefix("workingset_refault_file ")?
            .trim()
            .parse()
            .ok()
    })
}

/// `peers` in the order for repetition `rep`: rotated by one each time.
fn rotated(peers: &[Peer], rep: usize) -> Vec<Peer> {
    let mut v = peers.to_vec();
    let n = v.len();
    v.rotate_left(rep % n);
    v
}

/// The corpus under `dir`, generated once per (profile, size) and reused afterwards.
fn ensure_corpus(
    dir: &Path,
    profile: Profile,
    scale: &Scale,
) -> Result<(PathBuf, CorpusStats, TreeSummary)> {
    #[derive(Serialize, serde::Deserialize)]
    struct Meta {
        seed: u64,
        stats: CorpusStats,
        summary: TreeSummary,
    }
    let path = dir.join(format!("{profile}-{}", scale.bytes));
    let meta_path = dir.join(format!("{profile}-{}.json", scale.bytes));
    if let Ok(text) = fs::read_to_string(&meta_path)
        && let Ok(meta) = serde_json::from_str::<Meta>(&text)
        && meta.seed == corpus::DEFAULT_SEED
        && path.is_dir()
    {
        return Ok((path, meta.stats, meta.summary));
    }
    remove(&meta_path)?;
    remove(&path)?;
    eprintln!(
        "bench: generating {profile}/{scale} corpus in {}",
        path.display()
    );
    let t = Instant::now();
    let stats = corpus::generate(&path, profile, scale)?;
    let summary = corpus::tree_summary(&path)?;
    eprintln!(
        "bench: generated {} files, {} bytes in {:.1} s",
        stats.files,
        stats.bytes,
        t.elapsed().as_secs_f64()
    );
    let meta = Meta {
        seed: corpus::DEFAULT_SEED,
        stats,
        summary,
    };
    fs::write(&meta_path, serde_json::to_vec_pretty(&meta)?)?;
    Ok((path, meta.stats, meta.summary))
}

/// "identical", or what differs between the source and a restored tree.
fn compare_trees(source: &Path, want: &TreeSummary, restored: &Path) -> Result<String> {
    let got = corpus::tree_summary(restored)?;
    if got.hash == want.hash {
        return Ok("identical".into());
    }
    let names = |p: &Path| -> Result<Vec<String>> {
        let mut v: Vec<String> = fs::read_dir(p)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<_>>()?;
        v.sort();
        Ok(v)
    };
    let have = names(restored)?;
    let missing: Vec<String> = names(source)?
        .into_iter()
        .filter(|n| !have.contains(n))
        .collect();
    let mut s = format!(
        "DIFFERS: {}/{} files, {}/{} bytes, {}/{} symlinks",
        got.files, want.files, got.bytes, want.bytes, got.symlinks, want.symlinks
    );
    if !missing.is_empty() {
        s.push_str(&format!("; missing top-level: {}", missing.join(" ")));
    }
    Ok(s)
}

fn setup_tools(root: &Path, target: &Path, work: &Path, build: bool) -> Result<Tools> {
    Ok(Tools {
        wsr: find_wsr(root, target, build, work),
        oras: scenarios::oras::cli(),
        restic: which("restic")
            .ok_or_else(|| "restic not found on PATH (Debian package `restic`)".to_string()),
        restic_cache: work.join("restic-cache"),
    })
}

/// Release builds of wsr-backup and wsr-restore that look like the real thing.
fn find_wsr(
    root: &Path,
    target: &Path,
    build: bool,
    work: &Path,
) -> Result<(PathBuf, PathBuf), String> {
    // With a build target configured (as scripts/test.sh does), cargo puts binaries under it.
    let release = match env::var("CARGO_BUILD_TARGET") {
        Ok(triple) if !triple.is_empty() => target.join(triple).join("release"),
        _ => target.join("release"),
    };
    let bin_dir = env::var_os("WSR_BIN_DIR").map_or(release, PathBuf::from);
    if build {
        eprintln!("bench: cargo build --release -p wsr-backup -p wsr-restore");
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let step = Step::exec(
            "cargo build",
            cargo,
            [
                "build",
                "--release",
                "-p",
                "wsr-backup",
                "-p",
                "wsr-restore",
            ],
        )
        .cwd(root);
        let r = run_step(&step, &work.join("logs"), Duration::from_secs(3600))
            .map_err(|e| e.to_string())?;
        if let Some(f) = r.failure {
            return Err(format!(
                "`cargo build --release -p wsr-backup -p wsr-restore` failed ({f}): {}",
                tail_lines(&r.stderr_tail, 8)
            ));
        }
    }
    let mut found = Vec::new();
    for (name, flag) in [("wsr-backup", "--source"), ("wsr-restore", "--from")] {
        let path = bin_dir.join(name);
        let out = Command::new(&path)
            .arg("--help")
            .output()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let help = String::from_utf8_lossy(&out.stdout);
        if !help.contains(flag) {
            return Err(format!(
                "`{} --help` does not mention {flag}: not the real binary yet",
                path.display()
            ));
        }
        found.push(path);
    }
    Ok((found.remove(0), found.remove(0)))
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("scenarios sits in the workspace")
        .to_path_buf()
}

/// Runs an unmeasured helper command; its failure is the harness's failure.
fn quiet(step: &Step, dir: &Path) -> Result<()> {
    let r = run_step(step, &dir.join("logs"), Duration::from_secs(3600))?;
    if let Some(f) = r.failure {
        bail!(
            "`{}` failed ({f}): {}",
            step.display(),
            r.stderr_tail.trim()
        );
    }
    Ok(())
}

/// Removes a file or tree; a tree of many inodes starts the wait of
/// [`machine::wait_for_freed_inodes`].
fn remove(path: &Path) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let free_before = statvfs(parent).map(|st| st.f_ffree);
    let r = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    let free_after = statvfs(parent).map(|st| st.f_ffree);
    if let (Some(a), Some(b)) = (free_before, free_after) {
        machine::inodes_freed(path, b.saturating_sub(a));
    }
    r.with_context(|| format!("remove {}", path.display()))
}

/// Apparent size of a file, or the sum of file sizes under a directory; 0 if absent.
fn size_of(path: &Path) -> Result<u64> {
    fn walk(path: &Path) -> io::Result<u64> {
        let meta = fs::symlink_metadata(path)?;
        if !meta.is_dir() {
            return Ok(if meta.is_file() { meta.len() } else { 0 });
        }
        let mut total = 0;
        for e in fs::read_dir(path)? {
            total += walk(&e?.path())?;
        }
        Ok(total)
    }
    match walk(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        r => r.with_context(|| format!("size of {}", path.display())),
    }
}

/// What the filesystem holding `path` has free. A filesystem in a sparse image file
/// (`bench-scratch.sh`) only has room while the disk under the image has: past that its writes
/// fail with I/O errors and ext4 remounts it read-only in the middle of a run (it did, once the
/// work disk had filled), so the smaller of the two free byte counts is what it has.
fn free_room(path: &Path) -> Room {
    let Some(st) = statvfs(path) else {
        return Room::default();
    };
    let disk = machine::loop_image(path)
        .and_then(|image| statvfs(image.parent()?))
        .map_or(u64::MAX, |disk| disk.f_bavail * disk.f_frsize);
    Room {
        bytes: (st.f_bavail * st.f_frsize).min(disk),
        inodes: st.f_favail,
    }
}

fn statvfs(path: &Path) -> Option<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; zeroed is valid and statvfs overwrites it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` is valid for writes.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then_some(st)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::RestoreCleanup::{self, AtPhaseEnd, PerRepetition, PerRestore};
    use super::Room;

    #[test]
    fn restored_trees_are_kept_as_long_as_the_scarcer_of_bytes_and_inodes_allows() {
        let cleanup = |free, one_rep| RestoreCleanup::for_disk(free, one_rep, 2, 10);
        assert_eq!(cleanup(100, 40), AtPhaseEnd);
        assert_eq!(cleanup(60, 40), PerRepetition);
        assert_eq!(cleanup(45, 40), PerRestore);
        // Plenty of bytes, too few inodes for two repetitions: the inodes decide, and the
        // other way round.
        const GIB: u64 = 1 << 30;
        let one_rep = Room {
            bytes: GIB,
            inodes: 100_000,
        };
        let room = |bytes, inodes| Room { bytes, inodes };
        let cleanup = |free| RestoreCleanup::for_room(free, one_rep, 2);
        assert_eq!(cleanup(room(100 * GIB, 10_000_000)), AtPhaseEnd);
        assert_eq!(cleanup(room(100 * GIB, 250_000)), PerRepetition);
        assert_eq!(cleanup(room(7 * GIB, 10_000_000)), PerRepetition);
        assert_eq!(cleanup(room(100 * GIB, 150_000)), PerRestore);
    }
}
