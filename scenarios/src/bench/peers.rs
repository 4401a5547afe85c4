//! What each benchmarked tool runs, as plain command lines.
//!
//! A [`Plan`] is the measured command sequence of one run plus its unmeasured preparation
//! and what to read afterwards (storage growth, restored tree). Every peer gets the same
//! corpus, the same registry kind and the same disk; each repetition gets its own registry,
//! restic repository and output files, so no run can reuse another's bytes.

use std::path::{Path, PathBuf};

use scenarios::oras::{self, ARCHIVE_NAME};

use super::measure::Step;

/// Everything a plan may refer to, resolved by the harness.
pub struct Tools {
    /// (wsr-backup, wsr-restore), or why wsr cannot be measured.
    pub wsr: Result<(PathBuf, PathBuf), String>,
    /// The Go `oras` CLI upstream's recovery image ships.
    pub oras: Result<PathBuf, String>,
    pub restic: Result<PathBuf, String>,
    pub restic_cache: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Wsr,
    WsrDwo,
    Upstream,
    Zstd,
    Restic,
    ReadFloor,
    WalkFloor,
    TarFloor,
    BlobFloor,
    CopyFloor,
}

pub const BACKUP_PEERS: &[Peer] = &[
    Peer::Wsr,
    Peer::WsrDwo,
    Peer::Upstream,
    Peer::Zstd,
    Peer::Restic,
    Peer::ReadFloor,
    Peer::WalkFloor,
    Peer::TarFloor,
    Peer::BlobFloor,
];
pub const RESTORE_PEERS: &[Peer] = &[
    Peer::Wsr,
    Peer::WsrDwo,
    Peer::Upstream,
    Peer::Zstd,
    Peer::Restic,
    Peer::BlobFloor,
    Peer::CopyFloor,
];
pub const INCREMENTAL_PEERS: &[Peer] = &[Peer::Wsr, Peer::Restic];

/// Names accepted by `--peers`.
pub const PEER_GROUPS: &[&str] = &["wsr", "wsr-dwo", "upstream", "zstd", "restic", "floors"];

impl Peer {
    /// Stable key used in results and for `--peers`.
    pub fn group(self) -> &'static str {
        match self {
            Peer::Wsr => "wsr",
            Peer::WsrDwo => "wsr-dwo",
            Peer::Upstream => "upstream",
            Peer::Zstd => "zstd",
            Peer::Restic => "restic",
            Peer::ReadFloor
            | Peer::WalkFloor
            | Peer::TarFloor
            | Peer::BlobFloor
            | Peer::CopyFloor => "floors",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Peer::ReadFloor => "floor-read",
            Peer::WalkFloor => "floor-walk",
            Peer::TarFloor => "floor-tar",
            Peer::BlobFloor => "floor-blob",
            Peer::CopyFloor => "floor-copy",
            other => other.group(),
        }
    }

    pub fn label(self, restore: bool) -> &'static str {
        match (self, restore) {
            (Peer::Wsr, _) => "wsr",
            (Peer::WsrDwo, _) => "wsr --format dwo",
            (Peer::Upstream, false) => "upstream DWO: tar -czf + oras push",
            (Peer::Upstream, true) => "upstream DWO: oras pull + tar -xzf + cp -r",
            (Peer::Zstd, false) => "tar | zstd -T0 > local file",
            (Peer::Zstd, true) => "zstd -d < local file | tar -x",
            (Peer::Restic, false) => "restic backup (local repo)",
            (Peer::Restic, true) => "restic restore (local repo)",
            (Peer::ReadFloor, _) => "floor: read all files (cat)",
            (Peer::WalkFloor, _) => "floor: stat every entry (find, one thread)",
            (Peer::TarFloor, _) => "floor: tar, no compression",
            (Peer::BlobFloor, false) => "floor: raw blob upload (curl POST+PUT)",
            (Peer::BlobFloor, true) => "floor: raw blob download (curl GET)",
            (Peer::CopyFloor, _) => "floor: local copy (cp -a)",
        }
    }

    pub fn is_floor(self) -> bool {
        self.group() == "floors"
    }
}

/// Where one repetition's outputs go.
pub struct Slot<'a> {
    pub host: &'a str,
    pub registry_data: &'a Path,
    pub restic_repo: PathBuf,
    pub zstd_file: PathBuf,
    /// Upstream's `/tmp`.
    pub upstream_tmp: PathBuf,
    /// The `tar | zstd` archive of the corpus and its digest, for the raw blob floors.
    pub blob: (&'a Path, &'a str),
}

/// One run: unmeasured preparation, measured steps, and what to read afterwards.
#[derive(Default)]
pub struct Plan {
    pub prepare: Vec<Step>,
    pub steps: Vec<Step>,
    /// A directory or file whose growth is the bytes this run uploaded or wrote.
    pub growth: Option<PathBuf>,
    /// A restored tree to compare with the source.
    pub check: Option<PathBuf>,
    /// A step is wsr: read its JSON summary from the last stdout line (of the last step that
    /// printed any).
    pub wsr_json: bool,
    /// Removed after the run (unmeasured).
    pub cleanup: Vec<PathBuf>,
    /// What the run reads: read once more, untimed, just before its clock starts.
    pub inputs: Vec<PathBuf>,
}

fn restic_step(tools: &Tools, name: &str, repo: &Path, args: &[&str]) -> Result<Step, String> {
    let restic = tools.restic.clone()?;
    let mut all = vec!["-r".to_string(), repo.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    Ok(Step::exec(name, restic, all)
        // A fixed password: restic 0.14 has no --insecure-no-password.
        .env("RESTIC_PASSWORD", "wsr-bench")
        .env("RESTIC_CACHE_DIR", &tools.restic_cache))
}

fn wsr_ref(slot: &Slot, peer: Peer) -> String {
    format!("{}/bench/{}:latest", slot.host, peer.key())
}

fn upstream_ref(slot: &Slot) -> String {
    format!("{}/bench/upstream:latest", slot.host)
}

/// A backup of `source` by `peer` into `slot`. `Err` says why the peer cannot run here.
pub fn backup(tools: &Tools, peer: Peer, source: &Path, slot: &Slot) -> Result<Plan, String> {
    let src = source.display().to_string();
    let mut plan = Plan {
        inputs: vec![source.to_path_buf()],
        ..Plan::default()
    };
    match peer {
        Peer::Wsr | Peer::WsrDwo => {
            let (backup, _) = tools.wsr.clone()?;
            let mut args = vec!["--source", &src, "--to"];
            let reference = wsr_ref(slot, peer);
            args.push(&reference);
            if peer == Peer::WsrDwo {
                args.extend(["--format", "dwo"]);
            }
            args.extend(["--plain-http", "--json", "--progress", "never"]);
            plan.steps.push(Step::exec("wsr-backup", backup, args));
            plan.growth = Some(slot.registry_data.to_path_buf());
            plan.wsr_json = true;
        }
        Peer::Upstream => {
            let oras = tools.oras.clone()?;
            let tmp = &slot.upstream_tmp;
            plan.prepare.push(Step::exec(
                "mkdir",
                "mkdir",
                ["-p".into(), tmp.display().to_string()],
            ));
            // workspace-recovery.sh: `cd /tmp; tar -czvf devworkspace-backup.tar.gz -C "$SRC" .`
            // (without -v: listing every file would only add noise to upstream's time).
            plan.steps.push(
                Step::shell("tar -czf", &format!("tar -czf {ARCHIVE_NAME} -C '{src}' .")).cwd(tmp),
            );
            // `--plain-http` is the `ORAS_EXTRA_ARGS` a plain-HTTP registry needs.
            let args = oras::push_args(&upstream_ref(slot), "upstream", "bench", &["--plain-http"]);
            plan.steps
                .push(Step::exec("oras push", oras, args).cwd(tmp));
            plan.growth = Some(slot.registry_data.to_path_buf());
            plan.cleanup.push(tmp.clone());
        }
        Peer::Zstd => {
            let out = slot.zstd_file.display();
            plan.steps.push(Step::shell(
                "tar | zstd -T0",
                &format!("tar -cf - -C '{src}' . | zstd -T0 -q -f -o '{out}'"),
            ));
            plan.growth = Some(slot.zstd_file.clone());
        }
        Peer::Restic => {
            if !slot.restic_repo.exists() {
                plan.prepare.push(restic_step(
                    tools,
                    "restic init",
                    &slot.restic_repo,
                    &["init", "-q"],
                )?);
            }
            // From inside the source with `.`, so a restore lands directly in the target.
            plan.steps.push(
                restic_step(
                    tools,
                    "restic backup",
                    &slot.restic_repo,
                    &["backup", "-q", "--host", "bench", "."],
                )?
                .cwd(source),
            );
            plan.growth = Some(slot.restic_repo.clone());
        }
        Peer::ReadFloor => {
            plan.steps.push(Step::shell(
                "cat",
                &format!("find '{src}' -type f -print0 | xargs -0 cat > /dev/null"),
            ));
        }
        Peer::WalkFloor => {
            // What any re-backup that trusts metadata must do: the size and mtime of every entry.
            plan.steps.push(Step::shell(
                "find",
                &format!("find '{src}' -printf '%s %T@\\n' > /dev/null"),
            ));
        }
        Peer::TarFloor => {
            // Through `cat`: GNU tar writing straight to /dev/null skips reading file contents.
            plan.steps.push(Step::shell(
                "tar",
                &format!("tar -cf - -C '{src}' . | cat > /dev/null"),
            ));
        }
        Peer::BlobFloor => {
            let (file, digest) = slot.blob;
            let host = slot.host;
            // distribution 2.8 ignores a body on POST: open a session, then one monolithic PUT.
            // `Expect:` off, so curl does not wait for a 100-continue before sending.
            let script = format!(
                r#"loc=$(curl -sSf -X POST -D - -o /dev/null "http://{host}/v2/bench/raw/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{{print $2}}')
case "$loc" in http*) ;; *) loc="http://{host}$loc" ;; esac
case "$loc" in *\?*) sep='&' ;; *) sep='?' ;; esac
curl -sSf -o /dev/null -H 'Expect:' -H 'Content-Type: application/octet-stream' -T '{}' "$loc${{sep}}digest={digest}""#,
                file.display()
            );
            plan.steps.push(Step::shell("curl POST+PUT", &script));
            plan.growth = Some(slot.registry_data.to_path_buf());
        }
        Peer::CopyFloor => return Err("not a backup peer".into()),
    }
    Ok(plan)
}

/// A restore into `target` (absent when the plan starts) of what [`backup`] wrote to `slot`.
pub fn restore(
    tools: &Tools,
    peer: Peer,
    source: &Path,
    target: &Path,
    slot: &Slot,
) -> Result<Plan, String> {
    let dst = target.display().to_string();
    // Every restore peer gets the same inputs warmed: what any of them reads (the `cp -a`
    // floor reads the source).
    let inputs = [
        slot.registry_data,
        &slot.restic_repo,
        &slot.zstd_file,
        slot.blob.0,
        source,
    ];
    let mut plan = Plan {
        check: Some(target.to_path_buf()),
        inputs: inputs.iter().map(|p| p.to_path_buf()).collect(),
        ..Plan::default()
    };
    match peer {
        Peer::Wsr | Peer::WsrDwo => {
            let (_, restore) = tools.wsr.clone()?;
            let reference = wsr_ref(slot, peer);
            plan.steps.push(Step::exec(
                "wsr-restore",
                restore,
                [
                    "--from",
                    &reference,
                    "--to",
                    &dst,
                    "--plain-http",
                    "--json",
                    "--progress",
                    "never",
                ],
            ));
            plan.wsr_json = true;
        }
        Peer::Upstream => {
            let oras = tools.oras.clone()?;
            let tmp = slot.upstream_tmp.display().to_string();
            // PROJECTS_ROOT exists (it is the mounted volume) and is empty.
            plan.prepare
                .push(Step::exec("mkdir", "mkdir", ["-p", &dst, &tmp]));
            let args = oras::pull_args(&upstream_ref(slot), &slot.upstream_tmp, &["--plain-http"]);
            plan.steps.push(Step::exec("oras pull", oras, args));
            plan.steps.push(Step::shell(
                "tar -xzf",
                &format!("mkdir '{tmp}/extracted-backup' && tar -xzf '{tmp}/{ARCHIVE_NAME}' -C '{tmp}/extracted-backup'"),
            ));
            // Upstream's glob: top-level dotfiles are not restored.
            plan.steps.push(Step::shell(
                "cp -r",
                &format!("cp -r '{tmp}'/extracted-backup/* '{dst}'"),
            ));
            plan.cleanup.push(slot.upstream_tmp.clone());
        }
        Peer::Zstd => {
            let file = slot.zstd_file.display();
            plan.steps.push(Step::shell(
                "zstd -d | tar -x",
                &format!("mkdir -p '{dst}' && zstd -d -q -c '{file}' | tar -xf - -C '{dst}'"),
            ));
        }
        Peer::Restic => {
            plan.steps.push(restic_step(
                tools,
                "restic restore",
                &slot.restic_repo,
                &["restore", "latest", "-q", "--target", &dst],
            )?);
        }
        Peer::BlobFloor => {
            let (_, digest) = slot.blob;
            plan.steps.push(Step::shell(
                "curl GET",
                &format!(
                    "curl -sSf -o /dev/null 'http://{}/v2/bench/raw/blobs/{digest}'",
                    slot.host
                ),
            ));
            plan.check = None;
        }
        Peer::CopyFloor => {
            plan.steps.push(Step::exec(
                "cp -a",
                "cp",
                ["-a".to_string(), source.display().to_string(), dst.clone()],
            ));
        }
        Peer::ReadFloor | Peer::WalkFloor | Peer::TarFloor => {
            return Err("not a restore peer".into());
        }
    }
    // A restore is timed until its tree is on disk. wsr flushes before it marks a restore
    // complete; the others leave dirty pages, which this step writes on their clock, not on
    // the unmeasured `sync` after the run.
    if plan.check.is_some() {
        plan.steps
            .push(Step::exec("sync -f", "sync", ["-f".to_string(), dst]));
    }
    Ok(plan)
}
