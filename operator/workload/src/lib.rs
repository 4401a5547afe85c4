//! wsr-workload: what any wsr Job needs to touch a workspace's data, independent of what the
//! Job does: the workspace's PVC and sub path ([`storage`]), the hardened pod around it
//! ([`pod`]) and the upstream names both need ([`names`]).
//!
//! Shared by the operator (backup Jobs) and `wsr-restore --in-cluster` (restore Jobs). It must
//! stay pure: Kubernetes types only (k8s-openapi), no API client, no async runtime, so the
//! restore engine library never links kube through it.

pub mod names;
pub mod pod;
pub mod storage;
