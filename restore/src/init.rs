//! Upstream DWO's restore init-container contract (`wsr-restore init`): the environment
//! `workspace-recovery.sh --restore` reads (`PROJECTS_ROOT`, `BACKUP_IMAGE`,
//! `REGISTRY_AUTH_FILE`, `ORAS_EXTRA_ARGS`) plus `WSR_RESTORE_OPTIONAL`. A non-empty
//! `PROJECTS_ROOT` is left alone before any network access; a failed restore with
//! `WSR_RESTORE_OPTIONAL=true` lets the workspace start empty. The environment is passed in as
//! a lookup, so the contract is tested without a process.

use crate::{Progress, RestoreError, RestoreOptions, RestoreReport, restore, target};
use std::path::PathBuf;
use std::sync::Arc;
use wsr_format::reference::{InvalidReference, Reference};
use wsr_transport::{ConnectOptions, OrasArgsError, apply_oras_extra_args};

/// Why the environment does not describe a restore. All are the caller's input at fault.
#[derive(Debug, thiserror::Error)]
pub enum InitEnvError {
    #[error("environment variable {0} is required in init mode")]
    Missing(&'static str),
    #[error(transparent)]
    OrasExtraArgs(#[from] OrasArgsError),
    #[error("BACKUP_IMAGE: {0}")]
    Reference(#[from] InvalidReference),
}

/// Why `init` failed (and the workspace should not start).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Env(#[from] InitEnvError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
}

/// What `init` did.
#[derive(Debug)]
pub enum InitOutcome {
    /// `PROJECTS_ROOT` held this many entries: left alone, nothing fetched.
    NotEmpty {
        target: PathBuf,
        entries: usize,
    },
    Restored(RestoreReport),
    /// The restore failed and `WSR_RESTORE_OPTIONAL=true`: the workspace starts empty.
    FailedOptional {
        target: PathBuf,
        error: RestoreError,
    },
}

/// Runs the init container's restore. `lookup` returns a variable's value (empty values count
/// as unset); `connect` holds the connection flags, which the environment extends.
pub async fn init(
    lookup: &dyn Fn(&str) -> Option<String>,
    mut connect: ConnectOptions,
    progress: Arc<Progress>,
) -> Result<InitOutcome, InitError> {
    let var = |name: &str| lookup(name).filter(|v| !v.is_empty());
    let root = PathBuf::from(var("PROJECTS_ROOT").ok_or(InitEnvError::Missing("PROJECTS_ROOT"))?);
    // The target first, without any network access. An interrupted restore's staging
    // directory does not count as content: the restore below completes it.
    let existing = target::user_entries(&root)?;
    if !existing.is_empty() && target::completed_staging(&root)?.is_none() {
        return Ok(InitOutcome::NotEmpty {
            target: root,
            entries: existing.len(),
        });
    }
    let image = var("BACKUP_IMAGE").ok_or(InitEnvError::Missing("BACKUP_IMAGE"))?;
    if let Some(file) = var("REGISTRY_AUTH_FILE") {
        connect.auth_file = Some(file.into());
    }
    if let Some(extra) = var("ORAS_EXTRA_ARGS") {
        let ignored = apply_oras_extra_args(&mut connect, &extra).map_err(InitEnvError::from)?;
        if !ignored.is_empty() {
            tracing::info!(
                "ORAS_EXTRA_ARGS: accepted without effect: {}",
                ignored.join(" ")
            );
        }
    }
    let options = RestoreOptions {
        from: image.parse::<Reference>().map_err(InitEnvError::from)?,
        to: root.clone(),
        paths: None,
        force: false,
        max_size: None,
        parallel: crate::default_parallel(),
        sync: true,
        connect,
    };
    match restore(&options, progress).await {
        Ok(report) => Ok(InitOutcome::Restored(report)),
        Err(error) if var("WSR_RESTORE_OPTIONAL").as_deref() == Some("true") => {
            Ok(InitOutcome::FailedOptional {
                target: root,
                error,
            })
        }
        Err(error) => Err(error.into()),
    }
}
