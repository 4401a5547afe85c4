//! Upstream DWO's backup Job contract: the environment `workspace-recovery.sh --backup` reads
//! (`BACKUP_SOURCE_PATH`, `DEVWORKSPACE_BACKUP_REGISTRY`, `DEVWORKSPACE_NAMESPACE`,
//! `DEVWORKSPACE_NAME`, `WORKSPACE_ID`, `REGISTRY_AUTH_FILE`, `ORAS_EXTRA_ARGS`) plus
//! `WSR_FORMAT`, turned into [`BackupOptions`]. The environment is passed in as a lookup, so
//! the contract is tested without a process.

use crate::{BackupOptions, Format, Tuning};
use std::path::PathBuf;
use wsr_format::reference::{InvalidReference, parse_registry_path, workspace_reference};
use wsr_transport::{ConnectOptions, OrasArgsError, apply_oras_extra_args};

/// Time-stamped backups kept in `--dwo-env` mode unless `--keep` or `WSR_KEEP` says otherwise:
/// an unmodified DWO cannot pass `--keep`, and tags must not pile up for ever.
pub const DEFAULT_DWO_KEEP: usize = 5;

/// Why the environment does not describe a backup. All are the caller's input at fault.
#[derive(Debug, thiserror::Error)]
pub enum DwoEnvError {
    #[error("environment variable {0} is required with --dwo-env")]
    Missing(&'static str),
    #[error("WSR_FORMAT={0:?}: expected native or dwo")]
    Format(String),
    #[error("WSR_KEEP={0:?}: expected a number of backups, at least 1")]
    Keep(String),
    #[error(transparent)]
    OrasExtraArgs(#[from] OrasArgsError),
    #[error(transparent)]
    Reference(#[from] InvalidReference),
}

/// The backup the environment asks for. `lookup` returns a variable's value (empty values
/// count as unset); `connect` holds the connection flags, which the environment extends.
pub fn backup_options(
    lookup: &dyn Fn(&str) -> Option<String>,
    tuning: Tuning,
    mut connect: ConnectOptions,
) -> Result<BackupOptions, DwoEnvError> {
    let var = |name: &str| lookup(name).filter(|v| !v.is_empty());
    let required = |name: &'static str| var(name).ok_or(DwoEnvError::Missing(name));
    let source = PathBuf::from(required("BACKUP_SOURCE_PATH")?);
    let registry = required("DEVWORKSPACE_BACKUP_REGISTRY")?;
    let namespace = required("DEVWORKSPACE_NAMESPACE")?;
    let name = required("DEVWORKSPACE_NAME")?;
    connect.auth_file = var("REGISTRY_AUTH_FILE")
        .map(PathBuf::from)
        .or(connect.auth_file);
    if let Some(extra) = var("ORAS_EXTRA_ARGS") {
        let ignored = apply_oras_extra_args(&mut connect, &extra)?;
        if !ignored.is_empty() {
            tracing::info!(
                "ORAS_EXTRA_ARGS: accepted without effect: {}",
                ignored.join(" ")
            );
        }
    }
    let format = match var("WSR_FORMAT").as_deref() {
        None | Some("dwo") => Format::Dwo,
        Some("native") => Format::Native,
        Some(other) => return Err(DwoEnvError::Format(other.to_owned())),
    };
    let env_keep = match var("WSR_KEEP") {
        Some(v) => Some(
            v.parse::<usize>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or(DwoEnvError::Keep(v))?,
        ),
        None => None,
    };
    let keep = tuning.keep.or(env_keep).unwrap_or(DEFAULT_DWO_KEEP);
    let to = workspace_reference(&parse_registry_path(&registry)?, &namespace, &name)?;
    let mut options = BackupOptions::new(source, to, format, tuning, connect);
    options.keep = Some(keep);
    options.workspace = Some(name);
    options.namespace = Some(namespace);
    options.workspace_id = var("WORKSPACE_ID");
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn tuning() -> Tuning {
        Tuning {
            level: None,
            workers: None,
            keep: None,
            skip_unreadable: false,
            full: false,
        }
    }

    fn options(vars: &[(&str, &str)]) -> Result<BackupOptions, DwoEnvError> {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        backup_options(
            &|name| env.get(name).cloned(),
            tuning(),
            ConnectOptions::default(),
        )
    }

    const JOB: [(&str, &str); 4] = [
        ("BACKUP_SOURCE_PATH", "/projects"),
        (
            "DEVWORKSPACE_BACKUP_REGISTRY",
            "registry.example:5000/backups",
        ),
        ("DEVWORKSPACE_NAMESPACE", "user1-che"),
        ("DEVWORKSPACE_NAME", "my-ws"),
    ];

    #[test]
    fn upstream_job_environment_backs_up_in_dwo_format_to_the_workspace_reference() {
        let mut vars = JOB.to_vec();
        vars.extend([
            ("WORKSPACE_ID", "workspace123"),
            ("REGISTRY_AUTH_FILE", "/auth/config.json"),
            ("ORAS_EXTRA_ARGS", "--plain-http"),
        ]);
        let o = options(&vars).unwrap();
        assert_eq!(o.source, PathBuf::from("/projects"));
        assert_eq!(
            o.to.to_string(),
            "registry.example:5000/backups/user1-che/my-ws:latest"
        );
        assert_eq!((o.format, o.level), (Format::Dwo, 1));
        assert_eq!(o.workers, crate::default_workers());
        assert_eq!(o.workspace.as_deref(), Some("my-ws"));
        assert_eq!(o.namespace.as_deref(), Some("user1-che"));
        assert_eq!(o.workspace_id.as_deref(), Some("workspace123"));
        assert!(o.connect.plain_http);
        assert_eq!(
            o.connect.auth_file.as_deref(),
            Some(std::path::Path::new("/auth/config.json"))
        );
    }

    #[test]
    fn retention_is_bounded_by_default_and_set_by_wsr_keep_or_keep() {
        assert_eq!(options(&JOB).unwrap().keep, Some(DEFAULT_DWO_KEEP));
        let mut vars = JOB.to_vec();
        vars.push(("WSR_KEEP", "12"));
        assert_eq!(options(&vars).unwrap().keep, Some(12));
        let mut flag = tuning();
        flag.keep = Some(3);
        let env: HashMap<&str, &str> = vars.iter().copied().collect();
        let o = backup_options(
            &|name| env.get(name).map(|v| v.to_string()),
            flag,
            ConnectOptions::default(),
        )
        .unwrap();
        assert_eq!(o.keep, Some(3), "--keep wins over WSR_KEEP");
        for bad in ["0", "all", "-1"] {
            let mut vars = JOB.to_vec();
            vars.push(("WSR_KEEP", bad));
            assert!(matches!(options(&vars), Err(DwoEnvError::Keep(_))), "{bad}");
        }
    }

    #[test]
    fn wsr_format_native_switches_format_and_default_level() {
        let mut vars = JOB.to_vec();
        vars.push(("WSR_FORMAT", "native"));
        let o = options(&vars).unwrap();
        assert_eq!((o.format, o.level), (Format::Native, 3));
    }

    #[test]
    fn missing_empty_or_unknown_values_are_named() {
        for missing in JOB.map(|(k, _)| k) {
            let vars: Vec<_> = JOB
                .iter()
                .map(|&(k, v)| (k, if k == missing { "" } else { v }))
                .collect();
            let err = options(&vars).unwrap_err();
            assert!(
                matches!(err, DwoEnvError::Missing(name) if name == missing),
                "{err}"
            );
        }
        let mut vars = JOB.to_vec();
        vars.push(("WSR_FORMAT", "zip"));
        assert!(matches!(options(&vars), Err(DwoEnvError::Format(_))));
        let mut vars = JOB.to_vec();
        vars.push(("ORAS_EXTRA_ARGS", "--debug --oci-layout"));
        let err = options(&vars).unwrap_err();
        assert!(matches!(err, DwoEnvError::OrasExtraArgs(_)), "{err}");
        assert!(
            err.to_string().contains("--oci-layout is not supported"),
            "{err}"
        );
    }
}
