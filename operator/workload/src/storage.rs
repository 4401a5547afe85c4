//! Where a workspace's `/projects` lives: the PVC and the path inside it, decided from the
//! storage-type attribute and the PVCs that exist (not from the raw template's volumes, which
//! miss components that come from parents or plugins: upstream #1580).

use crate::names::LEGACY_COMMON_PVC;

/// What the operator knows about an existing PVC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvcInfo {
    pub access_modes: Vec<String>,
}

impl PvcInfo {
    /// A volume only one node can mount at a time.
    pub fn single_node(&self) -> bool {
        self.access_modes
            .iter()
            .all(|m| m == "ReadWriteOnce" || m == "ReadWriteOncePod")
    }
}

/// The part of a PVC that holds one workspace's `/projects`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceVolume {
    pub claim: String,
    /// Path inside the claim, mounted alone.
    pub sub_path: String,
    /// Shared by every workspace of the namespace (common / per-user storage).
    pub shared: bool,
    /// Only one node can mount it (ReadWriteOnce).
    pub single_node: bool,
}

/// Why a workspace has nothing to back up.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoStorage {
    #[error("{0} storage keeps no data between starts")]
    Ephemeral(String),
    #[error("storage type {0:?} is not supported")]
    Unsupported(String),
    #[error("PVC {0} does not exist")]
    MissingPvc(String),
}

impl NoStorage {
    /// The policy status's count key.
    pub fn as_str(&self) -> &'static str {
        match self {
            NoStorage::Ephemeral(_) => "ephemeralStorage",
            NoStorage::Unsupported(_) => "unsupportedStorage",
            NoStorage::MissingPvc(_) => "noPVC",
        }
    }
}

/// Resolves a workspace's volume. `storage_type` is the `controller.devfile.io/storage-type`
/// attribute ("" when unset), `pvc` looks a PVC up by name in the workspace's namespace.
///
/// | storage type               | PVC                                                   | sub path            |
/// |----------------------------|-------------------------------------------------------|---------------------|
/// | unset, common, per-user    | `claim-che-workspace` if it exists, else `common_pvc`  | `<id>/projects`     |
/// | per-workspace              | `storage-<id>`                                        | `projects`          |
/// | ephemeral, async           | none: skipped                                         |                     |
pub fn resolve_volume(
    storage_type: &str,
    workspace_id: &str,
    common_pvc: &str,
    pvc: impl Fn(&str) -> Option<PvcInfo>,
) -> Result<WorkspaceVolume, NoStorage> {
    let (candidates, sub_path, shared) = match storage_type {
        "" | "common" | "per-user" => (
            vec![LEGACY_COMMON_PVC.to_owned(), common_pvc.to_owned()],
            format!("{workspace_id}/projects"),
            true,
        ),
        "per-workspace" => (
            vec![format!("storage-{workspace_id}")],
            "projects".to_owned(),
            false,
        ),
        // async keeps data on a sync sidecar's volume, outside any PVC a Job could mount.
        "ephemeral" | "async" => return Err(NoStorage::Ephemeral(storage_type.to_owned())),
        other => return Err(NoStorage::Unsupported(other.to_owned())),
    };
    for claim in &candidates {
        if let Some(info) = pvc(claim) {
            return Ok(WorkspaceVolume {
                claim: claim.clone(),
                sub_path,
                shared,
                single_node: info.single_node(),
            });
        }
    }
    Err(NoStorage::MissingPvc(
        candidates.last().cloned().unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Case<'a> = (
        &'a str,
        Vec<(&'a str, PvcInfo)>,
        &'a str,
        Result<WorkspaceVolume, NoStorage>,
    );

    #[test]
    fn storage_mapping_table() {
        let rwo = || PvcInfo {
            access_modes: vec!["ReadWriteOnce".into()],
        };
        let rwx = || PvcInfo {
            access_modes: vec!["ReadWriteMany".into()],
        };
        let id = "workspace0123abcd";
        let vol = |claim: &str, sub: &str, shared, single_node| {
            Ok(WorkspaceVolume {
                claim: claim.into(),
                sub_path: sub.into(),
                shared,
                single_node,
            })
        };
        // (storage type, PVCs that exist, common PVC name, expected)
        let cases: Vec<Case> = vec![
            (
                "",
                vec![("claim-devworkspace", rwo())],
                "claim-devworkspace",
                vol(
                    "claim-devworkspace",
                    "workspace0123abcd/projects",
                    true,
                    true,
                ),
            ),
            (
                "common",
                vec![("claim-devworkspace", rwx())],
                "claim-devworkspace",
                vol(
                    "claim-devworkspace",
                    "workspace0123abcd/projects",
                    true,
                    false,
                ),
            ),
            (
                "per-user",
                vec![("claim-devworkspace", rwo())],
                "claim-devworkspace",
                vol(
                    "claim-devworkspace",
                    "workspace0123abcd/projects",
                    true,
                    true,
                ),
            ),
            (
                "common",
                vec![
                    ("claim-devworkspace", rwo()),
                    ("claim-che-workspace", rwx()),
                ],
                "claim-devworkspace",
                vol(
                    "claim-che-workspace",
                    "workspace0123abcd/projects",
                    true,
                    false,
                ),
            ),
            (
                "common",
                vec![("my-claim", rwo())],
                "my-claim",
                vol("my-claim", "workspace0123abcd/projects", true, true),
            ),
            (
                "common",
                vec![("storage-workspace0123abcd", rwo())],
                "claim-devworkspace",
                Err(NoStorage::MissingPvc("claim-devworkspace".into())),
            ),
            (
                "per-workspace",
                vec![
                    ("storage-workspace0123abcd", rwo()),
                    ("claim-devworkspace", rwo()),
                ],
                "claim-devworkspace",
                vol("storage-workspace0123abcd", "projects", false, true),
            ),
            (
                "per-workspace",
                vec![("claim-devworkspace", rwo())],
                "claim-devworkspace",
                Err(NoStorage::MissingPvc("storage-workspace0123abcd".into())),
            ),
            (
                "ephemeral",
                vec![("claim-devworkspace", rwo())],
                "claim-devworkspace",
                Err(NoStorage::Ephemeral("ephemeral".into())),
            ),
            (
                "async",
                vec![("claim-devworkspace", rwo())],
                "claim-devworkspace",
                Err(NoStorage::Ephemeral("async".into())),
            ),
            (
                "tmpfs",
                vec![("claim-devworkspace", rwo())],
                "claim-devworkspace",
                Err(NoStorage::Unsupported("tmpfs".into())),
            ),
        ];
        for (kind, pvcs, common, want) in cases {
            let lookup = |name: &str| {
                pvcs.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, i)| i.clone())
            };
            assert_eq!(
                resolve_volume(kind, id, common, lookup),
                want,
                "{kind:?} {pvcs:?}"
            );
        }
    }

    #[test]
    fn reasons_have_count_keys() {
        assert_eq!(NoStorage::MissingPvc("x".into()).as_str(), "noPVC");
        assert_eq!(
            NoStorage::Ephemeral("async".into()).to_string(),
            "async storage keeps no data between starts"
        );
    }
}
