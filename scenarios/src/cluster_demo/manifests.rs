//! The YAML files in `scenarios/kind/manifests/`, shared by `scenarios/kind/demo.sh` and the
//! local cluster demo so both apply the same objects: templates with `${NAME}` placeholders,
//! rendered here as the script renders them with `sed`.

use anyhow::{Result, bail};

/// BackupPolicy `${NAMESPACE}` selecting namespaces labelled `wsr-demo=${NAMESPACE}`.
pub const POLICY: &str = include_str!("../../kind/manifests/policy.yaml");
/// DWO's workspace pod with the `workspace-restore` init container.
pub const RESTORE_POD: &str = include_str!("../../kind/manifests/restore-pod.yaml");
/// A running workspace: DevWorkspace and Deployment (for clusters without DWO).
pub const WORKSPACE: &str = include_str!("../../kind/manifests/workspace.yaml");
/// DWO's common claim.
pub const CLAIM: &str = include_str!("../../kind/manifests/claim.yaml");
/// The minimal DevWorkspace CRD ([`crate::cluster::fixtures::devworkspace_crd`] as YAML; a
/// test keeps the two equal).
pub const DEVWORKSPACE_CRD: &str = include_str!("../../kind/manifests/devworkspace-crd.yaml");

/// `template` with every `${KEY}` replaced by its value; a placeholder left unreplaced is an
/// error naming it (a typo would otherwise reach the API server as a literal).
pub fn render(template: &str, vars: &[(&str, &str)]) -> Result<String> {
    let mut out = template.to_owned();
    for (key, value) in vars {
        out = out.replace(&format!("${{{key}}}"), value);
    }
    // Comments may mention placeholders; only the YAML itself must be complete.
    let body: Vec<&str> = out
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    if let Some(line) = body.iter().find(|l| l.contains("${")) {
        bail!("unreplaced placeholder in: {line}");
    }
    Ok(out)
}

/// The DevWorkspace CRD as `devworkspace-crd.yaml` holds it.
pub fn devworkspace_crd_yaml() -> String {
    serde_saphyr::to_string(&crate::cluster::fixtures::devworkspace_crd()).expect("CRD to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_crd_file_is_the_fixture_crd() {
        assert!(
            DEVWORKSPACE_CRD == devworkspace_crd_yaml(),
            "scenarios/kind/manifests/devworkspace-crd.yaml is stale: run \
             `cargo run -p scenarios -- cluster-demo --print-devworkspace-crd > scenarios/kind/manifests/devworkspace-crd.yaml`"
        );
    }

    #[test]
    fn render_replaces_every_placeholder_and_refuses_leftovers() {
        let t = "# ${COMMENT} is fine\na: ${A}\nb: ${B}-${A}\n";
        assert_eq!(
            render(t, &[("A", "1"), ("B", "2")]).unwrap(),
            "# ${COMMENT} is fine\na: 1\nb: 2-1\n"
        );
        let err = render(t, &[("A", "1")]).unwrap_err().to_string();
        assert!(err.contains("${B}"), "{err}");
    }
}
