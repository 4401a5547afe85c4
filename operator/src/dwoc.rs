//! `import-dwoc`: a DevWorkspaceOperatorConfig's `config.workspace.backupCronJob` (plus the
//! workspace settings upstream's backup reads) as a wsr `BackupPolicy`.

use crate::policy::{
    ArtifactFormat, BackupPolicy, BackupPolicySpec, FailureBackoff, JobTemplate, PullPolicy,
    RegistrySpec, StorageSpec, Trigger,
};
use serde::Deserialize;

/// Upstream's real default schedule (monthly; its docs say daily).
const UPSTREAM_DEFAULT_SCHEDULE: &str = "0 0 1 * *";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not a DevWorkspaceOperatorConfig document: {0}")]
    Parse(String),
    #[error("config.workspace.backupCronJob is missing")]
    NoBackupConfig,
    #[error("config.workspace.backupCronJob.registry.path is missing")]
    NoRegistry,
}

#[derive(Deserialize, Default)]
struct Dwoc {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    config: Config,
}

#[derive(Deserialize, Default)]
struct Config {
    #[serde(default)]
    workspace: Workspace,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Workspace {
    backup_cron_job: Option<BackupCronJob>,
    pvc_name: Option<String>,
    image_pull_policy: Option<PullPolicy>,
    pod_security_context: Option<k8s_openapi::api::core::v1::PodSecurityContext>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BackupCronJob {
    enable: Option<bool>,
    schedule: Option<String>,
    registry: Option<Registry>,
    oras: Option<Oras>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Registry {
    path: Option<String>,
    auth_secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Oras {
    extra_args: Option<String>,
}

/// The policy, plus warnings for settings with no equivalent.
pub fn import(document: &str, name: &str) -> Result<(BackupPolicy, Vec<String>), ImportError> {
    let dwoc: Dwoc =
        serde_saphyr::from_str(document).map_err(|e| ImportError::Parse(e.to_string()))?;
    if !dwoc.kind.is_empty() && dwoc.kind != "DevWorkspaceOperatorConfig" {
        return Err(ImportError::Parse(format!("kind is {}", dwoc.kind)));
    }
    let ws = dwoc.config.workspace;
    let cron = ws.backup_cron_job.ok_or(ImportError::NoBackupConfig)?;
    let registry = cron.registry.ok_or(ImportError::NoRegistry)?;
    let path = registry.path.ok_or(ImportError::NoRegistry)?;
    let mut warnings = Vec::new();
    let mut spec_registry = RegistrySpec {
        path,
        auth_secret: registry.auth_secret.filter(|s| !s.is_empty()),
        ..Default::default()
    };
    let extra = cron.oras.and_then(|o| o.extra_args).unwrap_or_default();
    for arg in extra.split_whitespace() {
        match arg {
            "--insecure" => spec_registry.insecure = true,
            "--plain-http" => spec_registry.plain_http = true,
            other => warnings.push(format!(
                "oras.extraArgs {other:?} has no equivalent; set the registry fields by hand"
            )),
        }
    }
    if cron.enable != Some(true) {
        warnings.push("backups were disabled (enable is not true): the policy is suspended".into());
    }
    let spec = BackupPolicySpec {
        schedule: cron
            .schedule
            .unwrap_or_else(|| UPSTREAM_DEFAULT_SCHEDULE.into()),
        time_zone: None,
        suspend: cron.enable != Some(true),
        trigger: Trigger::Schedule,
        on_stop_delay_seconds: 60,
        registry: spec_registry,
        // The stock DWO restore (`oras pull` of one tar.gz) keeps working on these backups.
        format: ArtifactFormat::Dwo,
        retention: None,
        max_concurrent_jobs: 10,
        failure_backoff: FailureBackoff::default(),
        namespace_selector: None,
        workspace_selector: None,
        storage: StorageSpec {
            common_pvc_name: ws
                .pvc_name
                .unwrap_or_else(|| crate::policy::DEFAULT_COMMON_PVC.into()),
        },
        job_template: JobTemplate {
            image_pull_policy: ws.image_pull_policy,
            pod_security_context: ws.pod_security_context,
            ..Default::default()
        },
        // Upstream has no drill.
        drill: None,
    };
    Ok((BackupPolicy::new(name, spec), warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_the_documented_example() {
        let dwoc = r#"
apiVersion: controller.devfile.io/v1alpha1
kind: DevWorkspaceOperatorConfig
metadata: {name: devworkspace-operator-config, namespace: openshift-operators}
config:
  workspace:
    pvcName: my-claim
    imagePullPolicy: IfNotPresent
    podSecurityContext: {runAsUser: 1234, fsGroup: 1234}
    backupCronJob:
      enable: true
      registry:
        path: quay.io/my-company-org
        authSecret: my-secret
      oras:
        extraArgs: "--insecure --ca-file /x"
      schedule: '0 */4 * * *'
      backoffLimit: 1
"#;
        let (policy, warnings) = import(dwoc, "from-dwoc").unwrap();
        let s = &policy.spec;
        assert_eq!(s.schedule, "0 */4 * * *");
        assert!(!s.suspend);
        assert_eq!(s.registry.path, "quay.io/my-company-org");
        assert_eq!(s.registry.auth_secret.as_deref(), Some("my-secret"));
        assert!(s.registry.insecure && !s.registry.plain_http);
        assert_eq!(s.format, ArtifactFormat::Dwo);
        assert_eq!(s.storage.common_pvc_name, "my-claim");
        assert_eq!(
            s.job_template.image_pull_policy,
            Some(PullPolicy::IfNotPresent)
        );
        assert_eq!(
            s.job_template
                .pod_security_context
                .as_ref()
                .unwrap()
                .fs_group,
            Some(1234)
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }

    #[test]
    fn defaults_and_refusals() {
        let (p, w) = import(
            "config: {workspace: {backupCronJob: {registry: {path: r.example}}}}",
            "x",
        )
        .unwrap();
        assert_eq!(p.spec.schedule, "0 0 1 * *");
        assert!(p.spec.suspend);
        assert_eq!(w.len(), 1);
        assert!(matches!(
            import("config: {workspace: {}}", "x"),
            Err(ImportError::NoBackupConfig)
        ));
        assert!(matches!(
            import("config: {workspace: {backupCronJob: {}}}", "x"),
            Err(ImportError::NoRegistry)
        ));
        assert!(matches!(
            import("kind: Pod", "x"),
            Err(ImportError::Parse(_))
        ));
        assert!(matches!(import(": : :", "x"), Err(ImportError::Parse(_))));
    }
}
