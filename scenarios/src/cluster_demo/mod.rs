//! `scenarios cluster-demo`: the whole product path a DevWorkspace admin lives, on the local
//! control plane with the node agent (`crate::cluster`). It installs wsr-operator
//! ([`operator::install`]), creates two running workspaces holding the sample workspace plus a
//! large binary, stops `alpha` and triggers its backup with the policy's `wsr.dev/run-now`
//! annotation (while running `beta` is left alone), then stops and backs up `beta` the same
//! way. A disaster deletes both workspaces' data from the namespace's common claim. `alpha` is
//! started again as DWO starts a workspace marked for restore, through the `workspace-restore`
//! init container of the recovery image ([`manifests::RESTORE_POD`]); `beta` is restored with
//! `wsr-restore --in-cluster`. Both trees are compared entry by entry with what was backed up
//! (`crate::sample::snapshot`) and a summary table is printed.
//!
//! The objects the demo applies as YAML are the files of `scenarios/kind/manifests/`, which
//! `scenarios/kind/demo.sh` applies on a kind cluster.

pub mod manifests;
pub mod operator;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DynamicObject, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use wsr_transport::ConnectOptions;
use wsr_transport::testing::{RegistryKind, TestRegistry};

use crate::cluster::fixtures::{self, Phase, RESTRICTED, Workspace};
use crate::cluster::{Cluster, StartOptions};

/// The Secret holding the registry's CA (`ca.crt`) in the workspace namespace: the policy's
/// `caSecret`, `wsr-restore --ca-secret`, and the restore pod's optional `/tmp/.ca`.
pub const CA_SECRET: &str = "registry-ca";
/// DWO's registry Secret in workspace namespaces.
pub const AUTH_SECRET: &str = "devworkspace-backup-registry-auth";
/// `ORAS_EXTRA_ARGS` for the restore pod when the registry's CA is in [`CA_SECRET`].
pub const CA_ORAS_EXTRA_ARGS: &str = "--ca-file /tmp/.ca/ca.crt";
/// How long one backup or restore may take before the demo gives up.
const STEP_LIMIT: Duration = Duration::from_secs(600);

/// `scenarios cluster-demo` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Start the cluster in this directory (default: a temporary one, stopped and removed at
    /// the end however the demo ends).
    #[arg(long, conflicts_with = "kubeconfig")]
    pub dir: Option<PathBuf>,
    /// Use the running cluster whose kubeconfig `scenarios cluster up` printed instead.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Directory holding static wsr-backup, wsr-restore, workspace-recovery and wsr-operator
    /// (default: build them with cargo, static, for the host target).
    #[arg(long)]
    pub binaries: Option<PathBuf>,
    /// Size of the large binary file in each workspace, MiB.
    #[arg(long, default_value_t = 32)]
    pub large_mib: usize,
    /// Leave the cluster running afterwards (with --dir).
    #[arg(long, requires = "dir")]
    pub keep: bool,
    /// Print the DevWorkspace CRD as scenarios/kind/manifests/devworkspace-crd.yaml holds it.
    #[arg(long, hide = true)]
    pub print_devworkspace_crd: bool,
}

/// One workspace's result.
#[derive(Debug, Clone)]
pub struct Row {
    pub workspace: String,
    pub restored_by: &'static str,
    pub digest: String,
    /// Bytes of regular files in the workspace (hard links once).
    pub data_bytes: u64,
    /// Compressed bytes of the backup's data layers.
    pub stored_bytes: u64,
    /// The backup Job's duration (start to completion, whole seconds as the Job records them).
    pub backup_s: f64,
    /// From creating the restoring pod or running wsr-restore to a restored tree.
    pub restore_s: f64,
    /// Entries compared.
    pub entries: usize,
    /// `None` when the restored tree is identical; else what differs.
    pub difference: Option<String>,
}

/// What the demo found.
#[derive(Debug, Clone)]
pub struct Report {
    pub namespace: String,
    pub rows: Vec<Row>,
    pub total_s: f64,
}

impl Report {
    /// The summary table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<9} {:<26} {:<21} {:>10} {:>10} {:>8} {:>8}  VERDICT\n",
            "WORKSPACE", "RESTORED BY", "BACKUP DIGEST", "DATA", "STORED", "BACKUP", "RESTORE"
        );
        for r in &self.rows {
            let verdict = match &r.difference {
                None => format!("identical ({} entries)", r.entries),
                Some(_) => "MISMATCH".to_owned(),
            };
            out.push_str(&format!(
                "{:<9} {:<26} {:<21} {:>10} {:>10} {:>7.1}s {:>7.1}s  {verdict}\n",
                r.workspace,
                r.restored_by,
                short_digest(&r.digest),
                mib(r.data_bytes),
                mib(r.stored_bytes),
                r.backup_s,
                r.restore_s,
            ));
        }
        out
    }

    /// `Err` naming every workspace whose restored tree differs.
    pub fn ensure_identical(&self) -> Result<()> {
        let bad: Vec<String> = self
            .rows
            .iter()
            .filter_map(|r| Some(format!("{}: {}", r.workspace, r.difference.as_ref()?)))
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            bail!("restored trees differ:\n{}", bad.join("\n"))
        }
    }
}

fn short_digest(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 12).collect()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// The CLI: resolves the binaries and the cluster, runs [`run_on`], prints the table; `Err`
/// (a non-zero exit) on any failure or mismatch.
pub fn main(args: Args) -> Result<()> {
    if args.print_devworkspace_crd {
        print!("{}", manifests::devworkspace_crd_yaml());
        return Ok(());
    }
    let started = Instant::now();
    let binaries = match &args.binaries {
        Some(dir) => dir.clone(),
        None => build_binaries()?,
    };
    let cluster = match (&args.kubeconfig, &args.dir) {
        (Some(kubeconfig), _) => {
            let dir = kubeconfig
                .parent()
                .context("--kubeconfig names no directory")?;
            Cluster::attach(dir)?
        }
        (None, dir) => {
            let exe = std::env::current_exe()?;
            let options = StartOptions {
                bin_dir: None,
                node_agent: Some(exe.clone()),
            };
            match dir {
                Some(dir) => Cluster::start(dir, &options)?,
                // Stopped and removed however this process ends (Ctrl-C included).
                None => Cluster::start_guarded(&options, &exe)?,
            }
        }
    };
    let result = run_on(&cluster, &binaries, args.large_mib);
    if args.keep {
        let kubeconfig = cluster.kubeconfig();
        cluster.detach();
        eprintln!("cluster left running; kubeconfig {}", kubeconfig.display());
    } else {
        drop(cluster);
    }
    let report = result?;
    println!("\n{}", report.table());
    println!(
        "namespace {}; the story {:.0} s, {:.0} s in all",
        report.namespace,
        report.total_s,
        started.elapsed().as_secs_f64()
    );
    report.ensure_identical()
}

/// Builds static wsr-backup, wsr-restore (with workspace-recovery) and wsr-operator for the
/// host target, as `scripts/test.sh` does (so they share its build cache); returns their
/// directory.
fn build_binaries() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let rustc = Command::new("rustc").arg("-vV").output()?;
    let triple = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV names no host")?;
    let flags_var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        triple.to_uppercase().replace('-', "_")
    );
    eprintln!("building static wsr-backup, wsr-restore and wsr-operator for {triple}");
    let root = crate::podman::repo_root();
    let status = Command::new(&cargo)
        .args(["build", "--locked", "--target", &triple])
        .args([
            "-p",
            "wsr-backup",
            "-p",
            "wsr-restore",
            "-p",
            "wsr-operator",
        ])
        .env(&flags_var, "-C target-feature=+crt-static")
        .current_dir(&root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed ({status})");
    }
    let metadata = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&root)
        .output()?;
    let metadata: Value = serde_json::from_slice(&metadata.stdout)?;
    let target = metadata["target_directory"]
        .as_str()
        .context("cargo metadata names no target directory")?;
    Ok(Path::new(target).join(triple).join("debug"))
}

/// Prints a step with the time since the demo started.
struct Steps(Instant);

impl Steps {
    fn say(&self, what: &str) {
        eprintln!("[{:6.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

/// Runs the demo on `cluster` with the binaries in `binaries` in a new namespace; returns the
/// report (a mismatch is in the report, not an `Err`).
pub fn run_on(cluster: &Cluster, binaries: &Path, large_mib: usize) -> Result<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(story(cluster, binaries, large_mib))
}

/// The demo's two workspaces: (name, id).
const WORKSPACES: [(&str, &str); 2] = [
    ("alpha", "workspace0de000000000a1a1"),
    ("beta", "workspace0de000000000b2b2"),
];

async fn story(cluster: &Cluster, binaries: &Path, large_mib: usize) -> Result<Report> {
    let steps = Steps(Instant::now());
    let ns = format!("wsr-demo-{}", chrono::Utc::now().format("%H%M%S"));
    steps.say("building the recovery image and the workspace image");
    let image = tokio::task::block_in_place(|| crate::podman::recovery_image(binaries))?;
    tokio::task::block_in_place(fixtures::build_workspace_image)?;
    let client = cluster.client().await?;
    fixtures::install_devworkspace_crd(&client).await?;
    steps.say("starting a registry with TLS and basic auth on 127.0.0.1");
    let registry = TestRegistry::start(RegistryKind::TlsAuth)?;
    steps.say(&format!("installing wsr-operator; namespace {ns}"));
    let operator = tokio::task::block_in_place(|| operator::install(cluster, &image))?;
    cluster.create_namespace(&ns, &[RESTRICTED, ("wsr-demo", &ns)])?;
    let push_secret = format!("demo-push-{ns}");
    registry_secrets(&client, &ns, &registry, Some(&push_secret)).await?;
    let policy = manifests::render(
        manifests::POLICY,
        &[
            ("NAMESPACE", &ns),
            (
                "REGISTRY",
                &format!(
                    "{{path: \"{}/backups\", authSecret: {push_secret}, caSecret: {CA_SECRET}}}",
                    registry.host()
                ),
            ),
            ("RECOVERY_IMAGE", &image),
        ],
    )?;
    cluster.kubectl_stdin(["apply", "-f", "-"], &policy)?;

    let mut projects = Vec::new();
    for (name, id) in WORKSPACES {
        steps.say(&format!("creating running workspace {name}"));
        let ws = Workspace::new(&ns, name, id);
        projects.push(ws.create(&client, Phase::Running).await?.projects_dir);
    }
    // Written once both pods run: each pod start gives the whole claim (every workspace on it)
    // the pod's fsGroup, as the kubelet does, which would change the modes of data written
    // before it.
    let mut expected = Vec::new();
    for (seed, ((name, _), projects)) in (1..).zip(WORKSPACES.iter().zip(&projects)) {
        steps.say(&format!("writing {name}'s data"));
        tokio::task::block_in_place(|| write_workspace(projects, name, seed, large_mib))?;
        expected.push(expected_snapshot(projects)?);
    }
    let demo = Demo {
        cluster,
        client: &client,
        ns: &ns,
        operator: &operator,
    };
    let mut backups = Vec::new();
    for (round, (name, _)) in (1..).zip(WORKSPACES) {
        steps.say(&format!("stopping {name}; run-now on policy {ns}"));
        Workspace::new(&ns, name, WORKSPACES[round - 1].1)
            .stop(&client)
            .await?;
        demo.run_now(&round.to_string())?;
        let backup = demo.backed_up(name, &registry).await?;
        steps.say(&format!(
            "{name} backed up: {} in {:.0} s",
            backup.reference, backup.seconds
        ));
        if round == 1 {
            let beta_jobs = demo.backup_jobs(WORKSPACES[1].0).await?;
            if !beta_jobs.is_empty() {
                bail!("the running workspace beta got a backup Job");
            }
        }
        backups.push(backup);
    }

    steps.say("disaster: the data of both workspaces on the common claim is lost");
    let claim_dir = fixtures::claim_dir(&client, &ns, fixtures::COMMON_PVC).await?;
    for (_, id) in WORKSPACES {
        std::fs::remove_dir_all(claim_dir.join(id))?;
    }

    let mut rows = Vec::new();
    let (name, id) = WORKSPACES[0];
    steps.say(&format!(
        "starting {name} with DWO's workspace-restore init container"
    ));
    let started = Instant::now();
    let pod = restore_pod(
        &ns,
        name,
        id,
        &image,
        &format!("{}/backups/{ns}/{name}:latest", registry.host()),
        CA_ORAS_EXTRA_ARGS,
    )?;
    cluster.kubectl_stdin(["create", "-f", "-"], &pod)?;
    let start = workspace_start(&client, &ns, &format!("{id}-restored")).await?;
    if start.init_exit_code != 0 {
        bail!("workspace-restore failed: {}", start.init_message);
    }
    let seconds = started.elapsed().as_secs_f64();
    rows.push(demo.row(
        name,
        "workspace-restore init",
        &backups[0],
        &expected[0],
        &claim_dir.join(id).join("projects"),
        seconds,
    )?);

    let (name, id) = WORKSPACES[1];
    steps.say(&format!("restoring {name} with wsr-restore --in-cluster"));
    let started = Instant::now();
    let uid = fixtures::WORKSPACE_UID.to_string();
    let args = [
        "--in-cluster",
        "--namespace",
        &ns,
        "--workspace",
        name,
        "--image",
        &image,
        "--image-pull-policy",
        "IfNotPresent",
        "--ca-secret",
        CA_SECRET,
        "--run-as-user",
        &uid,
        "--fs-group",
        &uid,
    ];
    let kubeconfig = cluster.kubeconfig();
    let out = tokio::task::block_in_place(|| wsr_restore(binaries, &kubeconfig, &args))?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("  | {}", out.lines().last().unwrap_or_default());
    rows.push(demo.row(
        name,
        "wsr-restore --in-cluster",
        &backups[1],
        &expected[1],
        &claim_dir.join(id).join("projects"),
        seconds,
    )?);
    steps.say("done");
    Ok(Report {
        namespace: ns,
        rows,
        total_s: steps.0.elapsed().as_secs_f64(),
    })
}

/// The demo's cluster, namespace and operator.
struct Demo<'a> {
    cluster: &'a Cluster,
    client: &'a Client,
    ns: &'a str,
    operator: &'a operator::Operator<'a>,
}

/// A backup the operator recorded.
struct Backup {
    reference: String,
    digest: String,
    stored_bytes: u64,
    seconds: f64,
}

impl Demo<'_> {
    fn run_now(&self, token: &str) -> Result<()> {
        let annotation = format!("wsr.dev/run-now={token}");
        self.cluster.kubectl([
            "annotate",
            "backuppolicy",
            self.ns,
            &annotation,
            "--overwrite",
        ])?;
        Ok(())
    }

    async fn backup_jobs(&self, ws: &str) -> Result<Vec<Job>> {
        let selector = format!(
            "controller.devfile.io/backup-job=true,controller.devfile.io/devworkspace_name={ws}"
        );
        Ok(Api::<Job>::namespaced(self.client.clone(), self.ns)
            .list(&ListParams::default().labels(&selector))
            .await?
            .items)
    }

    /// Waits for the operator to record `ws`'s backup; its reference, digest, size and the
    /// Job's duration.
    async fn backed_up(&self, ws: &str, registry: &TestRegistry) -> Result<Backup> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            self.ns,
            &fixtures::devworkspace_resource(),
        );
        let recorded = fixtures::poll_for(&format!("{ws}'s backup"), STEP_LIMIT, || async {
            if let Err(exited) = self.operator.ensure_running() {
                return Ok(Some(Err(exited)));
            }
            let a = api.get(ws).await?.metadata.annotations.unwrap_or_default();
            Ok(
                a.contains_key("controller.devfile.io/last-backup-successful")
                    .then_some(Ok(a)),
            )
        })
        .await
        .with_context(|| format!("operator log:\n{}", self.operator.log_tail(30)))??;
        if recorded["controller.devfile.io/last-backup-successful"] != "true" {
            bail!(
                "the backup of {ws} failed: {}",
                recorded
                    .get("controller.devfile.io/last-backup-error")
                    .map_or("", String::as_str)
            );
        }
        let reference = recorded["wsr.dev/last-backup-reference"].clone();
        let job = Api::<Job>::namespaced(self.client.clone(), self.ns)
            .get(&recorded["wsr.dev/last-backup-job"])
            .await?;
        let status = serde_json::to_value(job.status)?;
        let time = |key: &str| {
            chrono::DateTime::parse_from_rfc3339(status[key].as_str().unwrap_or_default())
                .with_context(|| format!("the backup Job's {key}"))
        };
        let seconds = (time("completionTime")? - time("startTime")?).as_seconds_f64();
        let connect = connect_for(registry);
        let inspection = wsr_restore::inspect(&reference.parse()?, &connect).await?;
        Ok(Backup {
            reference,
            digest: inspection.digest,
            stored_bytes: inspection.stored_bytes,
            seconds,
        })
    }

    fn row(
        &self,
        ws: &str,
        restored_by: &'static str,
        backup: &Backup,
        expected: &[String],
        restored: &Path,
        restore_s: f64,
    ) -> Result<Row> {
        let got = crate::sample::snapshot(restored)?;
        Ok(Row {
            workspace: ws.into(),
            restored_by,
            digest: backup.digest.clone(),
            data_bytes: tree_bytes(restored)?,
            stored_bytes: backup.stored_bytes,
            backup_s: backup.seconds,
            restore_s,
            entries: expected.len(),
            difference: difference(expected, &got),
        })
    }
}

/// Connection options for a test registry (its CA and credentials).
pub fn connect_for(registry: &TestRegistry) -> ConnectOptions {
    ConnectOptions {
        plain_http: registry.kind() == RegistryKind::Plain,
        insecure: false,
        ca_file: registry.ca_file().map(Path::to_owned),
        auth_file: registry.auth_file().map(Path::to_owned),
        ..Default::default()
    }
}

/// The registry's CA as [`CA_SECRET`] and its credentials as DWO's [`AUTH_SECRET`] in `ns`;
/// with `push_secret`, the credentials instead go to that Secret in the operator namespace
/// (the policy's `authSecret`, which the operator copies into `ns` as DWO's Secret).
pub async fn registry_secrets(
    client: &Client,
    ns: &str,
    registry: &TestRegistry,
    push_secret: Option<&str>,
) -> Result<()> {
    let config = std::fs::read_to_string(registry.auth_file().context("auth registry")?)?;
    let ca = std::fs::read_to_string(registry.ca_file().context("TLS registry")?)?;
    let (auth_ns, auth_name) = match push_secret {
        Some(name) => (operator::OPERATOR_NS, name),
        None => (ns, AUTH_SECRET),
    };
    let secrets = [
        (
            auth_ns,
            auth_name,
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            config,
        ),
        (ns, CA_SECRET, "Opaque", "ca.crt", ca),
    ];
    for (ns, name, type_, key, value) in secrets {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns}, "type": type_,
            "stringData": {key: value}}))?;
        Api::<Secret>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &secret)
            .await
            .with_context(|| format!("creating Secret {ns}/{name}"))?;
    }
    Ok(())
}

/// [`manifests::RESTORE_POD`] for workspace `name` (`id`) restoring `backup_image`.
pub fn restore_pod(
    ns: &str,
    name: &str,
    id: &str,
    recovery_image: &str,
    backup_image: &str,
    oras_extra_args: &str,
) -> Result<String> {
    manifests::render(
        manifests::RESTORE_POD,
        &[
            ("NAMESPACE", ns),
            ("WORKSPACE", name),
            ("WORKSPACE_ID", id),
            ("RECOVERY_IMAGE", recovery_image),
            ("WORKSPACE_IMAGE", fixtures::WORKSPACE_IMAGE),
            ("BACKUP_IMAGE", backup_image),
            ("ORAS_EXTRA_ARGS", oras_extra_args),
        ],
    )
}

/// How a workspace pod's start went: its `workspace-restore` init container's exit code and
/// message, once the pod runs or the init container failed.
#[derive(Debug)]
pub struct Start {
    pub init_exit_code: i64,
    pub init_message: String,
    pub phase: String,
}

/// Waits until pod `ns/name` is Running after its init container, or the init container
/// failed.
pub async fn workspace_start(client: &Client, ns: &str, name: &str) -> Result<Start> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    fixtures::poll_for(
        &format!("workspace pod {name} to start"),
        STEP_LIMIT,
        || async {
            let pod = serde_json::to_value(pods.get(name).await?)?;
            let phase = pod["status"]["phase"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let init = &pod["status"]["initContainerStatuses"][0];
            let terminated = init["state"]["terminated"]
                .as_object()
                .or(init["lastState"]["terminated"].as_object());
            let Some(terminated) = terminated else {
                return Ok(None);
            };
            let code = terminated["exitCode"].as_i64().unwrap_or(-1);
            let done = phase == "Running" || phase == "Failed" || code != 0;
            Ok(done.then(|| Start {
                init_exit_code: code,
                init_message: terminated
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                phase,
            }))
        },
    )
    .await
}

/// Writes a workspace's data into `projects` as its user (uid/gid 1234, as DWO runs
/// workspaces on Kubernetes) would have left it: the sample workspace (sources, `.git`,
/// dotfiles, executables, symlinks, hard links, odd names) plus `NAME.txt` and a
/// `large_mib` MiB binary. Directories are made owner-writable: a non-root restore cannot
/// fill a read-only directory (docs/CLUSTER.md).
pub fn write_workspace(projects: &Path, name: &str, seed: u64, large_mib: usize) -> Result<()> {
    crate::sample::write_sample(projects, false)?;
    std::fs::write(projects.join(format!("{name}.txt")), format!("{name}\n"))?;
    let large = projects.join("data/large.bin");
    std::fs::write(&large, crate::sample::noise(large_mib << 20, seed))?;
    let id = fixtures::WORKSPACE_UID as u32;
    for (path, is_dir) in entries(projects)? {
        if is_dir {
            let mode = std::fs::symlink_metadata(&path)?.permissions().mode();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o200))?;
        }
        std::os::unix::fs::lchown(&path, Some(id), Some(id))?;
    }
    Ok(())
}

/// Every path below and including `root`, with whether it is a directory (symlinks not
/// followed).
fn entries(root: &Path) -> Result<Vec<(PathBuf, bool)>> {
    let mut out = vec![(root.to_owned(), true)];
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            out.extend(entries(&entry.path())?);
        } else {
            out.push((entry.path(), false));
        }
    }
    Ok(out)
}

/// The snapshot a restore of `source` should reproduce (special files are not backed up).
pub fn expected_snapshot(source: &Path) -> Result<Vec<String>> {
    Ok(crate::sample::snapshot(source)?
        .into_iter()
        .filter(|l| !l.contains(" special "))
        .collect())
}

/// `None` when equal; else the entries missing from and unexpected in `got`.
pub fn difference(want: &[String], got: &[String]) -> Option<String> {
    if want == got {
        return None;
    }
    let missing: Vec<_> = want.iter().filter(|l| !got.contains(l)).collect();
    let extra: Vec<_> = got.iter().filter(|l| !want.contains(l)).collect();
    Some(format!("missing: {missing:#?}\nunexpected: {extra:#?}"))
}

/// Bytes of the regular files below `root`, each inode once.
fn tree_bytes(root: &Path) -> Result<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for (path, is_dir) in entries(root)? {
        let meta = std::fs::symlink_metadata(&path)?;
        if !is_dir && meta.is_file() && seen.insert(meta.ino()) {
            total += meta.len();
        }
    }
    Ok(total)
}

/// `BINARIES/wsr-restore ARGS` with `kubeconfig`, bounded by `timeout(1)`; its stdout, or an
/// error with its output.
fn wsr_restore(binaries: &Path, kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("timeout")
        .arg(STEP_LIMIT.as_secs().to_string())
        .arg(binaries.join("wsr-restore"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .context("running wsr-restore")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "wsr-restore {} failed ({}):\n{stdout}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(workspace: &str, difference: Option<String>) -> Row {
        Row {
            workspace: workspace.into(),
            restored_by: "workspace-restore init",
            digest: format!("sha256:{}", "ab".repeat(32)),
            data_bytes: 3 << 20,
            stored_bytes: 1 << 20,
            backup_s: 2.0,
            restore_s: 1.5,
            entries: 67,
            difference,
        }
    }

    #[test]
    fn a_mismatch_is_shown_in_the_table_and_fails_the_demo() {
        let want = vec!["a file 644 1 x".to_owned(), "b dir 755 1 ".to_owned()];
        let got = vec!["a file 664 1 x".to_owned(), "b dir 755 1 ".to_owned()];
        assert_eq!(difference(&want, &want), None);
        let diff = difference(&want, &got).expect("differs");
        assert!(
            diff.contains("a file 644") && diff.contains("a file 664"),
            "{diff}"
        );
        let report = Report {
            namespace: "ns".into(),
            rows: vec![row("alpha", None), row("beta", Some(diff))],
            total_s: 1.0,
        };
        let table = report.table();
        assert!(table.contains("identical (67 entries)"), "{table}");
        assert!(table.contains("MISMATCH"), "{table}");
        assert!(table.contains("sha256:abababababab "), "{table}");
        let err = report.ensure_identical().unwrap_err().to_string();
        assert!(err.contains("beta:") && !err.contains("alpha:"), "{err}");
        let fine = Report {
            rows: vec![row("alpha", None)],
            ..report
        };
        assert!(fine.ensure_identical().is_ok());
    }
}
