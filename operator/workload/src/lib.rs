//! wsr-workload: what any wsr Job needs to touch a workspace's data, independent of what the
//! Job does: the workspace's PVC and sub path ([`storage`]), the hardened pod around it
//! ([`pod`]) with its registry Secrets and flags ([`registry`]), and the upstream names both
//! need ([`names`]); and the termination message of a successful restore ([`restored`]), which
//! `wsr-restore` writes and the operator reads.
//!
//! Shared by the operator (backup Jobs) and `wsr-restore --in-cluster` (restore Jobs). It must
//! stay pure: Kubernetes types (k8s-openapi) and serde only, no API client, no async runtime, so the
//! restore engine library never links kube through it.

pub mod names;
pub mod pod;
pub mod registry;
pub mod restored;
pub mod storage;
