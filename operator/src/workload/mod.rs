//! What any wsr Job needs to touch a workspace's data, independent of what the Job does:
//! the workspace's PVC and sub path ([`storage`]) and the hardened pod around it ([`pod`]).
//! The backup Jobs use it today; the in-cluster restore (issue 14) is meant to reuse it, so
//! it depends on nothing else in this crate but the names.

pub mod pod;
pub mod storage;
