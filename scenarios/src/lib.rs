//! scenarios: end-to-end round trips and benchmarks over the real binaries, engines, registry
//! and peers. The library part holds what tests and the `scenarios` binary share: the sample
//! workspace with every entry kind, and tree snapshots for byte- and metadata-exact comparison.

pub mod cluster;
pub mod cluster_demo;
pub mod demo;
pub mod oras;
pub mod podman;
pub mod sample;
