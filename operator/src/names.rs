//! Names shared with upstream DWO and the Che dashboard (kept exactly), and wsr's own. The
//! names `wsr-restore` needs too (upstream's, and wsr's own annotations) live in
//! `wsr_workload::names` and are re-exported.

pub use wsr_workload::names::{
    LEGACY_COMMON_PVC, REGISTRY_AUTH_SECRET, annotation, label, wsr_annotation,
};

/// Upstream's Job name prefix (`generateName`).
pub const JOB_NAME_PREFIX: &str = "devworkspace-backup-";
/// Field manager and event reporter name.
pub const MANAGER: &str = "wsr-operator";
