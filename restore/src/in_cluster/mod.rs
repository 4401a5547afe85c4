//! `wsr-restore --in-cluster`, `--on-next-start` / `--clear` and `list --in-cluster`: restores
//! driven through the Kubernetes API with the user's kubeconfig. Binary-only: declared by
//! `main.rs`, never by the library, so the restore engine does not depend on kube. The PVC
//! resolution and the hardened pod come from `wsr-workload`, shared with the operator.

mod follow;
pub mod job;
mod workspace;

use anyhow::{Context as _, bail};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PodSecurityContext, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Config};
use serde_json::{Value, json};
use std::path::PathBuf;
use wsr_format::reference::{Reference, Target, parse_registry_path, workspace_reference};
use wsr_transport::ConnectOptions;
use wsr_workload::names::{
    DEFAULT_COMMON_PVC, DEFAULT_IMAGE, REGISTRY_AUTH_SECRET, annotation, wsr_annotation,
};
use wsr_workload::pod::PodOptions;

pub use workspace::{RESTORE_SOURCE_IMAGE, RESTORE_WORKSPACE};

/// Flags of the in-cluster modes (`--kubeconfig` is global, so `list` takes it too).
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Restore into the workspace's PVC through a Job in the cluster (with --workspace, --namespace).
    #[arg(long, conflicts_with_all = ["to", "on_next_start", "clear"])]
    pub in_cluster: bool,
    /// Set DWO's restore attributes on the DevWorkspace: its next start restores (init container).
    #[arg(long, conflicts_with_all = ["to", "clear", "force"])]
    pub on_next_start: bool,
    /// Remove DWO's restore attributes from the DevWorkspace.
    #[arg(long, conflicts_with_all = ["to", "from", "registry", "digest", "tag", "force"])]
    pub clear: bool,
    /// Kubeconfig to use (default: KUBECONFIG, then ~/.kube/config, then the in-pod account).
    #[arg(long, value_name = "FILE", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Recovery image the restore Job runs.
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// imagePullPolicy of the restore Job (default: the cluster's).
    #[arg(long, value_name = "POLICY")]
    pub image_pull_policy: Option<String>,
    /// Secret in the namespace whose `ca.crt` the restore Job trusts for the registry.
    #[arg(long, value_name = "SECRET")]
    pub ca_secret: Option<String>,
    /// DWO's common PVC name (DWOC `config.workspace.pvcName`).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_COMMON_PVC)]
    pub common_pvc: String,
    /// runAsUser of the restore Job (default: the image's user, or the namespace's range on OpenShift).
    #[arg(long, value_name = "UID")]
    pub run_as_user: Option<i64>,
    /// fsGroup of the restore Job (give the workspace's, e.g. 1234 on Kubernetes).
    #[arg(long, value_name = "GID")]
    pub fs_group: Option<i64>,
}

/// What an in-cluster restore or attribute change is about.
pub struct Request<'a> {
    pub namespace: &'a str,
    pub workspace: &'a str,
    pub from: Option<&'a str>,
    pub registry: Option<&'a str>,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
    pub force: bool,
    /// How the Job reaches the registry (`--plain-http`, `--insecure`).
    pub connect: &'a ConnectOptions,
}

/// Refused because the workspace is in use (exit code 3, like a non-empty target).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The restore Job failed: the container's termination message and exit code.
#[derive(Debug, thiserror::Error)]
#[error("restore Job {job} failed: {message}")]
pub struct JobFailed {
    pub job: String,
    pub message: String,
    pub exit_code: i32,
}

pub async fn client(args: &ClusterArgs) -> anyhow::Result<Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => Config::infer().await.context("finding a kubeconfig")?,
    };
    Client::try_from(config).context("connecting to the API server")
}

/// The backup to restore: `--from`, else `--registry` with the DWO convention, else the
/// repository of the workspace's last recorded backup (at `--digest` when given). `None`
/// when nothing names one (on-next-start then leaves the choice to DWO's configuration).
pub fn choose_reference(
    req: &Request,
    last_backup: Option<&str>,
) -> anyhow::Result<Option<Reference>> {
    let digest = req.digest.map(str::parse).transpose()?;
    let mut reference = match (req.from, req.registry, last_backup) {
        (Some(from), _, _) => return Ok(Some(from.parse()?)),
        (None, Some(registry), _) => workspace_reference(
            &parse_registry_path(registry)?,
            req.namespace,
            req.workspace,
        )?,
        (None, None, Some(last)) if req.tag.is_none() => last.parse()?,
        _ => return Ok(None),
    };
    if let Some(tag) = req.tag {
        reference.target = Target::Tag(tag.into());
    }
    if let Some(digest) = digest {
        reference.target = Target::Digest(digest);
    }
    Ok(Some(reference))
}

/// `--in-cluster`: checks, creates the restore Job, follows it; returns the summary line.
pub async fn restore(
    client: &Client,
    req: &Request<'_>,
    args: &ClusterArgs,
) -> anyhow::Result<(Value, String)> {
    let (ns, name) = (req.namespace, req.workspace);
    let ws = workspace::get(client, ns, name).await?;
    let id = ws
        .id()
        .with_context(|| {
            format!("DevWorkspace {ns}/{name} has no status.devworkspaceId (never started?)")
        })?
        .to_owned();
    if let Some(why) = ws.running_reason() {
        bail!(Refused(format!(
            "refusing to restore into {ns}/{name}: {why}; stop the workspace first \
             (or use --on-next-start to restore when it next starts)"
        )));
    }
    let pods = workspace::live_pods(client, ns, &id).await?;
    if !pods.is_empty() {
        bail!(Refused(format!(
            "refusing to restore into {ns}/{name}: its pods are still there ({})",
            pods.join(", ")
        )));
    }
    refuse_active_jobs(client, ns, &id).await?;
    let reference = choose_reference(req, ws.annotation(wsr_annotation::LAST_BACKUP_REFERENCE))?
        .with_context(|| {
            format!("no backup recorded on {ns}/{name}; give --from REF or --registry PATH")
        })?;
    let volume = workspace::volume(client, ns, &ws, &id, &args.common_pvc).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let registry = job::RegistryAccess {
        plain_http: req.connect.plain_http,
        insecure: req.connect.insecure,
        auth_secret: (secrets.get_opt(REGISTRY_AUTH_SECRET).await?)
            .map(|_| REGISTRY_AUTH_SECRET.into()),
        ca_secret: args.ca_secret.clone(),
    };
    let pod = pod_options(args);
    let reference_text = reference.to_string();
    let object = job::RestoreJob {
        namespace: ns,
        workspace: name,
        workspace_id: &id,
        owner: ws.owner_reference(),
        reference: &reference_text,
        volume: &volume,
        force: req.force,
        registry: &registry,
        pod: &pod,
    }
    .build();
    let created = Api::<Job>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &object)
        .await
        .context("creating the restore Job")?;
    let job_name = created.metadata.name.unwrap_or_default();
    eprintln!(
        "wsr-restore: restoring {reference_text} into PVC {} at {} through Job {ns}/{job_name}",
        volume.claim, volume.sub_path
    );
    match follow::follow(client, ns, &job_name).await? {
        follow::Outcome::Complete => Ok((
            json!({"restored": reference_text, "namespace": ns, "workspace": name,
                   "claim": volume.claim, "subPath": volume.sub_path, "job": job_name}),
            format!(
                "restored {reference_text} into {ns}/{name} (PVC {}, {}) through Job {job_name}",
                volume.claim, volume.sub_path
            ),
        )),
        follow::Outcome::Failed { message, exit_code } => Err(JobFailed {
            job: job_name,
            message,
            exit_code,
        }
        .into()),
    }
}

async fn refuse_active_jobs(client: &Client, ns: &str, id: &str) -> anyhow::Result<()> {
    let selector = format!("{}={id}", wsr_workload::names::label::DEVWORKSPACE_ID);
    let jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .context("listing the workspace's Jobs")?;
    let active: Vec<String> = jobs
        .items
        .into_iter()
        .filter(|j| j.status.as_ref().and_then(|s| s.active).unwrap_or(0) > 0)
        .filter_map(|j| j.metadata.name)
        .collect();
    if !active.is_empty() {
        bail!(Refused(format!(
            "refusing to restore: a backup or restore Job of this workspace is running ({})",
            active.join(", ")
        )));
    }
    Ok(())
}

fn pod_options(args: &ClusterArgs) -> PodOptions {
    let security =
        (args.run_as_user.is_some() || args.fs_group.is_some()).then(|| PodSecurityContext {
            run_as_user: args.run_as_user,
            fs_group: args.fs_group,
            ..Default::default()
        });
    PodOptions {
        image: args.image.clone(),
        image_pull_policy: args.image_pull_policy.clone(),
        pod_security_context: security,
        ..Default::default()
    }
}

/// The merge patch setting (`Some`) or removing (`None`) DWO's restore attributes. Without a
/// source the attribute is removed, so DWO uses its configured registry path.
pub fn attributes_patch(restore: Option<Option<&str>>) -> Value {
    let (flag, source) = match restore {
        Some(source) => (json!("true"), source.map_or(Value::Null, |s| json!(s))),
        None => (Value::Null, Value::Null),
    };
    json!({"spec": {"template": {"attributes": {
        RESTORE_WORKSPACE: flag,
        RESTORE_SOURCE_IMAGE: source,
    }}}})
}

/// `--on-next-start` (`set`) or `--clear`.
pub async fn set_attributes(
    client: &Client,
    req: &Request<'_>,
    set: bool,
) -> anyhow::Result<(Value, String)> {
    let (ns, name) = (req.namespace, req.workspace);
    let ws = workspace::get(client, ns, name).await?;
    let patch = if set {
        let source = choose_reference(req, None)?.map(|r| r.to_string());
        attributes_patch(Some(source.as_deref()))
    } else {
        attributes_patch(None)
    };
    workspace::api(client, ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("updating DevWorkspace {ns}/{name}"))?;
    let attributes = &patch["spec"]["template"]["attributes"];
    let text = match (set, attributes[RESTORE_SOURCE_IMAGE].as_str()) {
        (false, _) => format!(
            "{ns}/{name}: restore attributes removed; the next start clones projects as usual"
        ),
        (true, Some(source)) => format!(
            "{ns}/{name}: the next start restores {source} into an empty /projects{}",
            if ws.started() {
                " (the workspace is running: stop and start it)"
            } else {
                ""
            }
        ),
        (true, None) => format!(
            "{ns}/{name}: the next start restores <DWOC registry path>/{ns}/{name}:latest into an empty /projects"
        ),
    };
    Ok((
        json!({"namespace": ns, "workspace": name, "attributes": attributes}),
        text,
    ))
}

/// `list --in-cluster`: each workspace with its phase, last backup and restore request, and the
/// backups of it found in the registry (`--registry`, else the repository of its last backup).
pub async fn list(
    client: &Client,
    namespace: &str,
    registry: Option<&str>,
    connect: &ConnectOptions,
) -> anyhow::Result<(Value, String)> {
    let workspaces = workspace::api(client, namespace)
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing DevWorkspaces in {namespace}"))?;
    let mut rows = Vec::new();
    let mut text = format!(
        "{:<28} {:<9} {:<21} {:<7} {:>5} {:<21} {}\n",
        "WORKSPACE",
        "PHASE",
        "LAST BACKUP",
        "RESULT",
        "TAGS",
        "NEWEST IN REGISTRY",
        "RESTORE ON START"
    );
    for object in workspaces.items {
        let ws = workspace::Workspace(object);
        let name = ws.name().to_owned();
        let backups = registry_backups(&ws, namespace, registry, connect).await;
        let (tags, newest, registry_error) = match &backups {
            Ok(Some(row)) => (row.tags.len(), row.created.clone(), row.error.clone()),
            Ok(None) => (0, None, None),
            Err(e) => (0, None, Some(format!("{e:#}"))),
        };
        let result = match ws.annotation(annotation::LAST_BACKUP_SUCCESSFUL) {
            Some("true") => "ok",
            Some(_) => "failed",
            None => "-",
        };
        let restore = match ws.attribute(RESTORE_WORKSPACE).as_deref() {
            Some("true") => ws
                .attribute(RESTORE_SOURCE_IMAGE)
                .unwrap_or_else(|| "yes (DWOC path)".into()),
            _ => "-".into(),
        };
        let finished = ws.annotation(annotation::LAST_BACKUP_FINISHED_AT);
        text.push_str(&format!(
            "{:<28} {:<9} {:<21} {:<7} {:>5} {:<21} {}{}\n",
            name,
            if ws.phase().is_empty() {
                "-"
            } else {
                ws.phase()
            },
            finished.unwrap_or("-"),
            result,
            tags,
            newest.as_deref().unwrap_or("-"),
            restore,
            registry_error
                .as_ref()
                .map(|e| format!("  registry: {e}"))
                .unwrap_or_default(),
        ));
        if let Some(from) = ws.annotation(wsr_annotation::RESTORED_FROM) {
            let at = ws.annotation(wsr_annotation::RESTORED_AT).unwrap_or("-");
            text.push_str(&format!("{:<28} restored from {from} at {at}\n", ""));
        }
        rows.push(json!({
            "workspace": name, "phase": ws.phase(), "lastBackupFinishedAt": finished,
            "lastBackupSuccessful": ws.annotation(annotation::LAST_BACKUP_SUCCESSFUL),
            "lastBackupError": ws.annotation(annotation::LAST_BACKUP_ERROR),
            "lastBackupReference": ws.annotation(wsr_annotation::LAST_BACKUP_REFERENCE),
            "restoreOnNextStart": ws.attribute(RESTORE_WORKSPACE).as_deref() == Some("true"),
            "restoreSourceImage": ws.attribute(RESTORE_SOURCE_IMAGE),
            "restoredFrom": ws.annotation(wsr_annotation::RESTORED_FROM),
            "restoredAt": ws.annotation(wsr_annotation::RESTORED_AT),
            "restoredBy": ws.annotation(wsr_annotation::RESTORED_BY),
            "backups": backups.as_ref().ok().and_then(|b| b.as_ref()).map(|row| json!(row)),
            "registryError": registry_error,
        }));
    }
    if rows.is_empty() {
        text.push_str("(no DevWorkspaces)\n");
    }
    Ok((
        json!({"namespace": namespace, "workspaces": rows}),
        text.trim_end().to_owned(),
    ))
}

/// The registry's row for one workspace: below `--registry`, else below the registry path
/// its last recorded backup came from; `None` when neither is known.
async fn registry_backups(
    ws: &workspace::Workspace,
    namespace: &str,
    registry: Option<&str>,
    connect: &ConnectOptions,
) -> anyhow::Result<Option<wsr_restore::ListRow>> {
    let path = match registry {
        Some(path) => path.to_owned(),
        None => {
            let Some(last) = ws.annotation(wsr_annotation::LAST_BACKUP_REFERENCE) else {
                return Ok(None);
            };
            let reference: Reference = last.parse()?;
            let repository = reference.repository.to_string();
            let suffix = format!("/{namespace}/{}", ws.name());
            match repository.strip_suffix(&suffix) {
                Some(path) => path.to_owned(),
                None => return Ok(None),
            }
        }
    };
    let rows = wsr_restore::list(
        &parse_registry_path(&path)?,
        Some(namespace),
        Some(ws.name()),
        connect,
    )
    .await?;
    Ok(rows.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(connect: &'a ConnectOptions) -> Request<'a> {
        Request {
            namespace: "ns",
            workspace: "ws",
            from: None,
            registry: None,
            tag: None,
            digest: None,
            force: false,
            connect,
        }
    }

    #[test]
    fn the_reference_comes_from_the_flags_then_the_last_backup() {
        let connect = ConnectOptions::default();
        let last = "reg.example/backups/ns/ws@sha256:0000000000000000000000000000000000000000000000000000000000000001";
        let digest = "sha256:0000000000000000000000000000000000000000000000000000000000000002";
        let pick = |req: Request, last: Option<&str>| {
            choose_reference(&req, last).unwrap().map(|r| r.to_string())
        };
        assert_eq!(pick(request(&connect), None), None);
        assert_eq!(pick(request(&connect), Some(last)).as_deref(), Some(last));
        let with_digest = Request {
            digest: Some(digest),
            ..request(&connect)
        };
        assert_eq!(
            pick(with_digest, Some(last)),
            Some(format!("reg.example/backups/ns/ws@{digest}"))
        );
        let with_registry = Request {
            registry: Some("other.example/b/"),
            ..request(&connect)
        };
        assert_eq!(
            pick(with_registry, Some(last)).as_deref(),
            Some("other.example/b/ns/ws:latest")
        );
        let with_from = Request {
            from: Some("x.example/a/b:t"),
            ..request(&connect)
        };
        assert_eq!(
            pick(with_from, Some(last)).as_deref(),
            Some("x.example/a/b:t")
        );
    }

    #[test]
    fn attribute_patches_set_and_remove_dwo_template_attributes() {
        assert_eq!(
            attributes_patch(Some(Some("r.example/a/ns/ws:latest"))),
            json!({"spec": {"template": {"attributes": {
                "controller.devfile.io/restore-workspace": "true",
                "controller.devfile.io/restore-source-image": "r.example/a/ns/ws:latest"}}}})
        );
        assert_eq!(
            attributes_patch(Some(None))["spec"]["template"]["attributes"],
            json!({"controller.devfile.io/restore-workspace": "true",
                   "controller.devfile.io/restore-source-image": null})
        );
        assert_eq!(
            attributes_patch(None)["spec"]["template"]["attributes"],
            json!({"controller.devfile.io/restore-workspace": null,
                   "controller.devfile.io/restore-source-image": null})
        );
    }
}
