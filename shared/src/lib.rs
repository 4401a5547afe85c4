//! wsr-format: the wire format of wsr backups and the transports that carry them.
//!
//! This crate owns everything a second implementation would need to read or write a wsr or
//! upstream-DWO backup: media types and annotations ([`media`]), references ([`reference`]),
//! digests ([`digest`]), manifests ([`manifest`]), the two artifact shapes ([`artifact`]), the
//! native config, file index and layering rule ([`native`]), the deterministic tar+zstd/gzip codec
//! ([`codec`]), safe unpacking ([`unpack`]) and the registry / OCI-layout transport
//! ([`transport`]). `docs/FORMAT.md` is its specification.
//!
//! It must not know about Kubernetes, walk source trees, decide what to back up, print to the
//! terminal, or depend on the engines: it is the shared vocabulary, not a policy. The one
//! exception is [`cli`] (feature `cli`), the binaries' shared edge, which libraries never use.

pub mod artifact;
#[cfg(feature = "cli")]
pub mod cli;
pub mod codec;
pub mod digest;
pub mod manifest;
pub mod media;
pub mod native;
pub mod reference;
pub mod transport;
pub mod unpack;

#[cfg(feature = "test-support")]
pub mod testing;
