//! Enumerating the backups below a registry path and drilling each one: resolve, restore into
//! a fresh scratch directory, check the tree, time it, remove the scratch directory.

use super::check::{check_tree, listed_from_index, listing_from_tarball, make_removable};
use super::{BackupResult, DrillReport, Ignored, Status, Summary, human_duration, status_of};
use crate::open::scan_indexes;
use crate::{Progress, RestoreError, RestoreOptions, open_artifact};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use wsr_format::artifact::{self, Artifact, ArtifactError};
use wsr_format::manifest::Manifest;
use wsr_format::media::{self, annotation};
use wsr_format::reference::{Reference, Repository, Target};
use wsr_transport::{Access, ConnectOptions, Store, list_repositories};

/// What to drill and how.
#[derive(Clone, Debug)]
pub struct DrillOptions {
    /// A registry path (`HOST[:PORT][/PREFIX]`) or a layout tree (`oci:DIR`).
    pub source: Repository,
    /// Only these namespaces / workspaces (all when empty).
    pub namespaces: Vec<String>,
    pub workspaces: Vec<String>,
    /// Every tag instead of `latest` (or the newest tag when there is no `latest`).
    pub all_tags: bool,
    /// Backups drilled at once; each holds one scratch tree.
    pub parallel: usize,
    /// Backups older than this many seconds are `stale`.
    pub max_age_s: Option<u64>,
    /// Where scratch trees are made (one per backup in flight, removed after each).
    pub scratch: PathBuf,
    /// Refuse to restore a backup expanding beyond this many bytes (free space bounds it too).
    pub max_size: Option<u64>,
    pub connect: ConnectOptions,
}

/// Live counters over every restore of the drill, for the progress display.
#[derive(Debug, Default)]
pub struct DrillProgress {
    pub backups_total: AtomicU64,
    pub backups_done: AtomicU64,
    done: Progress,
    active: Mutex<Vec<Arc<Progress>>>,
}

/// A reading of [`DrillProgress`].
pub struct DrillSample {
    pub entries: u64,
    pub total_entries: u64,
    pub bytes: u64,
    pub total_bytes: u64,
    pub downloaded: u64,
}

impl DrillProgress {
    pub fn sample(&self) -> DrillSample {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = DrillSample {
            entries: get(&self.done.entries),
            total_entries: get(&self.done.total_entries),
            bytes: get(&self.done.bytes),
            total_bytes: get(&self.done.total_bytes),
            downloaded: get(&self.done.downloaded),
        };
        for p in self.active.lock().unwrap().iter() {
            s.entries += get(&p.entries);
            s.total_entries += get(&p.total_entries);
            s.bytes += get(&p.bytes);
            s.total_bytes += get(&p.total_bytes);
            s.downloaded += get(&p.downloaded);
        }
        s
    }

    fn start(&self) -> Arc<Progress> {
        let p = Arc::new(Progress::default());
        self.active.lock().unwrap().push(p.clone());
        p
    }

    fn finish(&self, p: &Arc<Progress>) {
        self.active.lock().unwrap().retain(|a| !Arc::ptr_eq(a, p));
        let add = |to: &AtomicU64, from: &AtomicU64| {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        };
        add(&self.done.entries, &p.entries);
        add(&self.done.total_entries, &p.total_entries);
        add(&self.done.bytes, &p.bytes);
        add(&self.done.total_bytes, &p.total_bytes);
        add(&self.done.downloaded, &p.downloaded);
        self.backups_done.fetch_add(1, Ordering::Relaxed);
    }
}

/// The (namespace, workspace) a repository below `root` stands for, if it is exactly two
/// levels below it.
fn workspace_of(root: &Repository, repo: &Repository) -> Option<(String, String)> {
    let parts: Vec<String> = match (root, repo) {
        (Repository::Registry { path: prefix, .. }, Repository::Registry { path, .. }) => {
            let skip = prefix.split('/').filter(|s| !s.is_empty()).count();
            path.split('/').skip(skip).map(str::to_owned).collect()
        }
        (Repository::Layout { dir: prefix }, Repository::Layout { dir }) => dir
            .strip_prefix(prefix)
            .ok()?
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect(),
        _ => return None,
    };
    match <[String; 2]>::try_from(parts) {
        Ok([ns, ws]) => Some((ns, ws)),
        Err(_) => None,
    }
}

/// One unit of work: a tag of a workspace repository, or a repository that failed before any
/// tag was known.
enum Job {
    Tag {
        repo: Repository,
        ns: String,
        ws: String,
        tag: String,
    },
    Done(BackupResult),
}

enum Outcome {
    Backup(Box<BackupResult>),
    Ignored(Ignored),
}

/// Runs the drill. Fails only when the registry path itself cannot be listed; every problem
/// with a backup is a row of the report.
pub async fn drill(
    options: &DrillOptions,
    progress: Arc<DrillProgress>,
) -> Result<DrillReport, RestoreError> {
    let started = Utc::now();
    let clock = std::time::Instant::now();
    let mut ignored = Vec::new();
    let mut selected = Vec::new();
    for repo in list_repositories(&options.source, &options.connect).await? {
        match workspace_of(&options.source, &repo) {
            None => ignored.push(Ignored {
                repository: repo.to_string(),
                reason: "not NAMESPACE/WORKSPACE directly below the path".into(),
            }),
            Some((ns, ws)) => {
                let wanted = (options.namespaces.is_empty() || options.namespaces.contains(&ns))
                    && (options.workspaces.is_empty() || options.workspaces.contains(&ws));
                if wanted {
                    selected.push((repo, ns, ws));
                }
            }
        }
    }
    let parallel = options.parallel.max(1);
    let tag_lists: Vec<(Vec<Job>, Option<Ignored>)> = futures_util::stream::iter(selected)
        .map(|(repo, ns, ws)| jobs_for(repo, ns, ws, options))
        .buffered(parallel)
        .collect()
        .await;
    let mut jobs = Vec::new();
    for (j, i) in tag_lists {
        jobs.extend(j);
        ignored.extend(i);
    }
    progress
        .backups_total
        .store(jobs.len() as u64, Ordering::Relaxed);
    let outcomes: Vec<Outcome> = futures_util::stream::iter(jobs)
        .map(|job| {
            let progress = progress.clone();
            async move {
                let outcome = match job {
                    Job::Done(result) => Outcome::Backup(Box::new(result)),
                    Job::Tag { repo, ns, ws, tag } => {
                        drill_one(options, started, &repo, ns, ws, tag, &progress).await
                    }
                };
                if let Outcome::Backup(b) = &outcome {
                    tracing::debug!(backup = %b.name(), status = b.status.label(), "drilled");
                }
                outcome
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let mut backups = Vec::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Backup(b) => backups.push(*b),
            Outcome::Ignored(i) => ignored.push(i),
        }
    }
    backups.sort_by(|a, b| {
        (&a.namespace, &a.workspace, &a.tag).cmp(&(&b.namespace, &b.workspace, &b.tag))
    });
    ignored.sort_by(|a, b| a.repository.cmp(&b.repository));
    Ok(DrillReport {
        source: options.source.to_string(),
        started: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        duration_s: clock.elapsed().as_secs_f64(),
        max_age_s: options.max_age_s,
        summary: Summary::of(&backups),
        backups,
        ignored,
    })
}

fn failed(repo: &Repository, ns: &str, ws: &str, tag: &str, error: &RestoreError) -> BackupResult {
    BackupResult {
        namespace: ns.into(),
        workspace: ws.into(),
        tag: tag.into(),
        repository: repo.to_string(),
        status: status_of(error),
        reason: Some(reason(error)),
        ..BackupResult::default()
    }
}

/// The error and its causes on one line, with registry error bodies made readable.
fn reason(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = tidy_registry_errors(&error.to_string());
    let mut source = error.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

/// Replaces a registry's JSON error body (`{"errors":[{"code":"DENIED","message":"…"}]}`) in
/// `text` by `DENIED: …`.
fn tidy_registry_errors(text: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: String,
        #[serde(default)]
        message: String,
    }
    let Some(start) = text.find("{\"errors\"") else {
        return text.to_owned();
    };
    let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Body>();
    match stream.next() {
        Some(Ok(body)) => {
            let end = start + stream.byte_offset();
            let errors: Vec<String> = body
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.code, e.message))
                .collect();
            format!("{}{}{}", &text[..start], errors.join("; "), &text[end..])
        }
        _ => text.to_owned(),
    }
}

/// The tags of one repository to drill.
async fn jobs_for(
    repo: Repository,
    ns: String,
    ws: String,
    options: &DrillOptions,
) -> (Vec<Job>, Option<Ignored>) {
    let tags = async {
        let list_tags = async |store: &Store| store.list_tags().await;
        let (_, tags) = Store::open_then(&repo, &options.connect, Access::Pull, list_tags).await?;
        Ok::<_, RestoreError>(tags)
    }
    .await;
    let mut tags = match tags {
        Ok(tags) => tags,
        Err(e) => {
            let result = failed(&repo, &ns, &ws, media::LATEST_TAG, &e);
            return (vec![Job::Done(result)], None);
        }
    };
    if tags.is_empty() {
        let ignored = Ignored {
            repository: repo.to_string(),
            reason: "no tags".into(),
        };
        return (vec![], Some(ignored));
    }
    tags.sort();
    if !options.all_tags {
        let newest = if tags.iter().any(|t| t == media::LATEST_TAG) {
            media::LATEST_TAG.to_owned()
        } else {
            tags.last().cloned().expect("not empty")
        };
        tags = vec![newest];
    }
    let jobs = tags
        .into_iter()
        .map(|tag| Job::Tag {
            repo: repo.clone(),
            ns: ns.clone(),
            ws: ws.clone(),
            tag,
        })
        .collect();
    (jobs, None)
}

async fn drill_one(
    options: &DrillOptions,
    started: DateTime<Utc>,
    repo: &Repository,
    ns: String,
    ws: String,
    tag: String,
    progress: &Arc<DrillProgress>,
) -> Outcome {
    let p = progress.start();
    let mut result = BackupResult {
        namespace: ns,
        workspace: ws,
        tag,
        repository: repo.to_string(),
        ..BackupResult::default()
    };
    let outcome = match restore_and_check(options, started, repo, &mut result, &p).await {
        Ok(None) => Outcome::Backup(Box::new(result)),
        Ok(Some(ignored)) => Outcome::Ignored(ignored),
        Err(e) => {
            result.status = status_of(&e);
            result.reason = Some(reason(&e));
            Outcome::Backup(Box::new(result))
        }
    };
    progress.finish(&p);
    outcome
}

/// Fills `result` for one tag; `Ok(Some(_))` when the tag is not a workspace backup at all.
async fn restore_and_check(
    options: &DrillOptions,
    started: DateTime<Utc>,
    repo: &Repository,
    result: &mut BackupResult,
    progress: &Arc<Progress>,
) -> Result<Option<Ignored>, RestoreError> {
    // Resolve the tag once; everything after is by digest.
    let tag = Target::Tag(result.tag.clone());
    let read_manifest = async |store: &Store| store.fetch_manifest(&tag).await;
    let (store, (digest, bytes)) =
        Store::open_then(repo, &options.connect, Access::Pull, read_manifest).await?;
    let manifest = Manifest::from_bytes(&bytes)
        .map_err(|e| RestoreError::Corrupt(format!("manifest {digest} is not valid: {e}")))?;
    if let Err(ArtifactError::Unrecognised(why)) = artifact::classify(&manifest) {
        return Ok(Some(Ignored {
            repository: format!("{repo}:{}", result.tag),
            reason: format!("not a workspace backup: {why}"),
        }));
    }
    result.digest = Some(digest.to_string());
    let opened = open_artifact(&store, &Target::Digest(digest.clone())).await?;
    result.format = Some(opened.format_name().into());
    result.stored_bytes = Some(match &opened.artifact {
        Artifact::Native { layers, .. } => layers.iter().map(|l| l.size).sum(),
        Artifact::Tarball { layer, .. } => layer.size,
    });
    result.created = manifest
        .annotation(annotation::CREATED)
        .map(str::to_owned)
        .or_else(|| opened.config.as_ref().map(|c| c.created.clone()));
    result.age_s = result
        .created
        .as_deref()
        .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
        .map(|c| (started - c.with_timezone(&Utc)).as_seconds_f64());

    let scratch = tempfile::Builder::new()
        .prefix("wsr-drill-")
        .tempdir_in(&options.scratch)
        .map_err(|source| RestoreError::Target {
            path: options.scratch.clone(),
            source,
        })?;
    let checked = restore_into(
        options,
        repo,
        &store,
        &digest,
        opened,
        scratch.path(),
        result,
        progress,
    )
    .await;
    make_removable(scratch.path());
    if let Err(e) = scratch.close() {
        tracing::warn!("cannot remove the drill's scratch directory: {e}");
    }
    checked?;

    result.status = Status::Ok;
    result.reason = None;
    if let Some(max) = options.max_age_s {
        match result.age_s {
            Some(age) if age > max as f64 => {
                result.status = Status::Stale;
                result.reason = Some(format!(
                    "taken {} ago, older than the maximum age {}",
                    human_duration(age),
                    human_duration(max as f64)
                ));
            }
            Some(_) => {}
            None => {
                result.status = Status::Stale;
                result.reason =
                    Some("the backup records no creation time, so its age is unknown".into());
            }
        }
    }
    Ok(None)
}

/// Restores the opened artifact by digest into `scratch/projects` and checks the tree.
#[allow(clippy::too_many_arguments)]
async fn restore_into(
    options: &DrillOptions,
    repo: &Repository,
    store: &Store,
    digest: &wsr_format::digest::Digest,
    opened: crate::Opened,
    scratch: &Path,
    result: &mut BackupResult,
    progress: &Arc<Progress>,
) -> Result<(), RestoreError> {
    let target = scratch.join("projects");
    let restore_options = RestoreOptions {
        from: Reference {
            repository: repo.clone(),
            target: Target::Digest(digest.clone()),
        },
        to: target.clone(),
        paths: None,
        force: false,
        max_size: options.max_size,
        parallel: crate::default_parallel(),
        // The scratch tree is checked, then deleted: nothing to keep after a crash.
        sync: false,
        connect: options.connect.clone(),
    };
    let report = crate::restore(&restore_options, progress.clone()).await?;
    result.restore_s = Some(report.duration_s);
    result.bytes = Some(report.bytes);
    result.files = Some(report.files);
    result.throughput_bps = Some(report.bytes as f64 / report.duration_s.max(1e-6));
    let listing = match &opened.artifact {
        Artifact::Native { .. } => {
            let listing = |listing: &mut Vec<_>, _, line| {
                listing.push(listed_from_index(line));
                Ok(())
            };
            scan_indexes(store, &opened, Vec::new(), listing).await?
        }
        Artifact::Tarball { layer, .. } => listing_from_tarball(store, layer).await?,
    };
    let checked = tokio::task::spawn_blocking(move || check_tree(&target, &listing))
        .await
        .expect("check task")
        .map_err(RestoreError::Corrupt)?;
    result.entries_checked = Some(checked);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_error_bodies_become_readable() {
        assert_eq!(
            tidy_registry_errors(
                r#"r:1: access denied ({"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]})"#
            ),
            "r:1: access denied (DENIED: requested access to the resource is denied)"
        );
        assert_eq!(
            tidy_registry_errors("plain {\"errors\": 1"),
            "plain {\"errors\": 1"
        );
    }

    #[test]
    fn workspaces_are_exactly_two_levels_below_the_path() {
        let reg = |p: &str| Repository::Registry {
            host: "r:5000".into(),
            path: p.into(),
        };
        assert_eq!(
            workspace_of(&reg("backups"), &reg("backups/ns/ws")),
            Some(("ns".into(), "ws".into()))
        );
        assert_eq!(workspace_of(&reg("backups"), &reg("backups/tools")), None);
        assert_eq!(workspace_of(&reg("backups"), &reg("backups/a/b/c")), None);
        assert_eq!(
            workspace_of(&reg(""), &reg("ns/ws")),
            Some(("ns".into(), "ws".into()))
        );
        let dir = |d: &str| Repository::Layout { dir: d.into() };
        assert_eq!(
            workspace_of(&dir("/b"), &dir("/b/ns/ws")),
            Some(("ns".into(), "ws".into()))
        );
        assert_eq!(workspace_of(&dir("/b"), &dir("/b/x")), None);
        assert_eq!(workspace_of(&dir("/b"), &dir("/b")), None);
    }
}
