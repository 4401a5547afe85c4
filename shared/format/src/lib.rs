//! wsr-format: the wire format of wsr backups.
//!
//! This crate owns everything a second implementation would need to read or write a wsr or
//! upstream-DWO backup: media types and annotations ([`media`]), references ([`reference`]),
//! digests ([`digest`]), manifests ([`manifest`]), the two artifact shapes ([`artifact`]), the
//! native config, file index and layering rule ([`native`]), the deterministic tar+zstd/gzip codec
//! ([`codec`]) and safe unpacking ([`unpack`]). `docs/FORMAT.md` is its specification; the
//! transport that carries artifacts is `wsr-transport`.
//!
//! It must not know about Kubernetes, walk source trees, decide what to back up, print to the
//! terminal, touch the network, or depend on the engines: it is the shared vocabulary, not a
//! policy. It links no HTTP client and no async runtime, so the operator can use it alone.

#![deny(missing_docs)]

pub mod artifact;
pub mod codec;
pub mod digest;
pub mod manifest;
pub mod media;
pub mod native;
pub mod reference;
pub mod unpack;
