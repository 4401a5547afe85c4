//! wsr-transport: where artifacts live. One `Store` API over an OCI distribution registry and
//! an OCI image layout directory (the embedded default, no server needed), with docker
//! `config.json` credentials.
//!
//! A `Store` is bound to one repository. Blobs are pushed as streams with the digest computed
//! on the fly; manifests are pushed by digest or by tag, so callers can publish in the safe
//! order (blobs, then the manifest under its first tag, then other tags). Transient failures
//! (connect errors, resets, stalls, 5xx, 429) are retried under one policy ([`retry`]) for
//! idempotent requests, and interrupted blob downloads resume where they stopped; streamed
//! uploads report them via [`TransportError::is_transient`] so the caller can write the blob
//! again under the same policy. Blob bytes move through one interface, a blocking
//! [`BlobWriter`] and [`BlobReader`], which hash them once.
//!
//! It moves bytes and names; it must not interpret layer contents, decide what to back up or
//! print to the terminal. The wire documents it stores are defined in `wsr-format`. With the
//! `test-support` feature, [`testing`] starts real registries for tests.

mod auth;
mod blob;
mod challenge;
pub mod dns;
mod layout;
mod oras_args;
pub mod read;
mod registry;
pub mod retry;
mod service_account;
#[cfg(feature = "test-support")]
pub mod testing;

pub use auth::{Credentials, resolve_auth_file};
pub use blob::{BlobReader, BlobWriter};
pub use layout::LayoutStore;
pub use oras_args::{OrasArgsError, apply_oras_extra_args};
pub use registry::RegistryStore;
pub use service_account::{DEFAULT_SERVICE_ACCOUNT_DIR, SERVICE_ACCOUNT_USER};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use std::net::IpAddr;
use std::path::PathBuf;
use wsr_format::digest::Digest;
use wsr_format::reference::{Repository, Target};

/// Connection options, named as oras names them.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// Use plain HTTP instead of HTTPS.
    pub plain_http: bool,
    /// Skip TLS certificate verification.
    pub insecure: bool,
    /// An extra trusted CA certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// A docker `config.json`; when `None`, `REGISTRY_AUTH_FILE`, then `DOCKER_CONFIG`, then
    /// `~/.docker/config.json` are consulted.
    pub auth_file: Option<PathBuf>,
    /// A client certificate for registries that require mutual TLS.
    pub client_cert: Option<ClientCert>,
    /// Credentials that take precedence over the auth file (oras' `--username`/`--password`
    /// or `--identity-token`).
    pub credentials: Option<Credentials>,
    /// Addresses to use instead of DNS for `host:port` (oras' and curl's `--resolve`).
    pub resolve: Vec<Resolve>,
    /// Extra headers sent with every registry request (oras' `--header`).
    pub headers: Vec<RequestHeader>,
    /// The pod's service-account directory (`token`, `service-ca.crt`, `ca.crt`), as upstream's
    /// script uses it: for a registry whose host contains `openshift` or `svc.cluster.local`,
    /// its CA certificates are trusted and, when no other credentials for the host are given,
    /// its token logs in as `serviceaccount`. `None`: not used.
    pub service_account: Option<PathBuf>,
}

/// A client certificate and its private key, both PEM files.
#[derive(Clone, Debug)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Connect to `address` whenever the registry is `host:port`.
#[derive(Clone, Debug)]
pub struct Resolve {
    pub host: String,
    pub port: u16,
    pub address: IpAddr,
}

/// An extra request header. `Debug` shows only its name: a header may carry a secret.
#[derive(Clone)]
pub struct RequestHeader {
    pub name: String,
    pub value: String,
}

impl std::fmt::Debug for RequestHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: <redacted>", self.name)
    }
}

/// What a store will be used for (decides the token scope).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Pull,
    Push,
}

/// A stream of blob bytes. Not yet verified: consumers hash what they read.
type BlobStream = BoxStream<'static, Result<Bytes, TransportError>>;

/// Largest manifest (or layout `index.json`) read, as registries and containerd cap manifests.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Transport failures. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{registry}: authentication failed ({detail}); check the credentials in the auth file")]
    Unauthorized { registry: String, detail: String },
    #[error(
        "{registry}: the registry requires authentication; give --auth-file (or set REGISTRY_AUTH_FILE) with credentials for it"
    )]
    AuthRequired { registry: String },
    #[error("{registry}: access denied ({detail})")]
    Forbidden { registry: String, detail: String },
    #[error("not found: {what}")]
    NotFound { what: String },
    #[error(
        "{registry}: TLS verification failed ({detail}); pass --ca-file with the registry's CA certificate, or --insecure to skip verification"
    )]
    Tls { registry: String, detail: String },
    /// The registry's host name did not resolve (`dns.rs`); `detail` names what was tried.
    #[error("{registry}: {detail}")]
    Resolve {
        registry: String,
        detail: String,
        /// The DNS servers failed or did not answer (a missing name is not transient).
        transient: bool,
    },
    #[error(
        "{registry}: cannot connect ({detail}); is the registry running and reachable? (use --plain-http for an HTTP-only registry)"
    )]
    Connect { registry: String, detail: String },
    #[error("{registry}: server error {status} on {what}: {detail}")]
    Server {
        registry: String,
        status: u16,
        what: String,
        detail: String,
        /// The response's `Retry-After`, when given in seconds.
        retry_after: Option<std::time::Duration>,
    },
    #[error(
        "{registry}: no progress for {idle:?} on {what}; the registry stalled (WSR_IDLE_TIMEOUT_SECONDS sets this limit)"
    )]
    Stalled {
        registry: String,
        what: String,
        idle: std::time::Duration,
    },
    #[error("{registry}: unexpected response {status} on {what}: {detail}")]
    Protocol {
        registry: String,
        status: u16,
        what: String,
        detail: String,
    },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("blob {digest} is {found} bytes, its descriptor says {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        found: String,
    },
    /// Display is `what`; the cause is the error's `source()` (printed by error chains).
    #[error("{what}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    /// A document or blob beyond its limit (FORMAT.md §8.1); nothing more of it was read.
    #[error("{what} is larger than {limit} bytes; refusing it")]
    Oversized { what: String, limit: u64 },
}

impl TransportError {
    /// Worth retrying: the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        match self {
            TransportError::Connect { .. } | TransportError::Stalled { .. } => true,
            TransportError::Resolve { transient, .. } => *transient,
            TransportError::Server { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// How long the registry asked to wait before retrying (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            TransportError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The step of talking to a registry that failed, for logs and termination messages:
    /// `resolve` (DNS), `connect`, `tls`, `auth`, or `verify` for bytes that failed their
    /// digest, size or limit; `None` for failures of the request itself.
    pub fn step(&self) -> Option<&'static str> {
        match self {
            TransportError::Resolve { .. } => Some("resolve"),
            TransportError::Connect { .. } => Some("connect"),
            TransportError::Tls { .. } => Some("tls"),
            e if e.is_auth() => Some("auth"),
            TransportError::DigestMismatch { .. }
            | TransportError::SizeMismatch { .. }
            | TransportError::Oversized { .. } => Some("verify"),
            _ => None,
        }
    }

    /// A missing manifest, tag or blob.
    pub fn is_not_found(&self) -> bool {
        matches!(self, TransportError::NotFound { .. })
    }

    /// An authentication or authorisation failure.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            TransportError::Unauthorized { .. }
                | TransportError::AuthRequired { .. }
                | TransportError::Forbidden { .. }
        )
    }
}

pub type Result<T, E = TransportError> = std::result::Result<T, E>;

/// A repository's storage, remote or on disk.
pub enum Store {
    Registry(RegistryStore),
    Layout(LayoutStore),
}

impl Store {
    /// Connects to (or, for a layout pushed to, creates) the repository. For registries this
    /// authenticates and checks the credentials once, so auth errors surface here.
    pub async fn open(
        repository: &Repository,
        options: &ConnectOptions,
        access: Access,
    ) -> Result<Store> {
        let opened = Store::open_then(repository, options, access, async |_| Ok(())).await;
        opened.map(|(store, ())| store)
    }

    /// [`Store::open`], with the caller's first requests (`first`) sent while the registry's
    /// credential check (`GET /v2/`) is under way instead of after it: one round trip less
    /// before any data moves, 80 ms on a registry 40 ms away. The check's error comes first:
    /// wrong credentials are reported as such, not as whatever `first` made of them.
    pub async fn open_then<T, E: From<TransportError>>(
        repository: &Repository,
        options: &ConnectOptions,
        access: Access,
        first: impl AsyncFnOnce(&Store) -> Result<T, E>,
    ) -> Result<(Store, T), E> {
        let store = match repository {
            Repository::Registry { host, path } => {
                Store::Registry(RegistryStore::connect(host, path, options, access)?)
            }
            Repository::Layout { dir } => {
                Store::Layout(LayoutStore::open(dir, access == Access::Push).await?)
            }
        };
        let checked = async {
            match &store {
                Store::Registry(r) => r.check_access().await,
                Store::Layout(_) => Ok(()),
            }
        };
        let (checked, first) = tokio::join!(checked, first(&store));
        checked?;
        Ok((store, first?))
    }

    pub fn repository(&self) -> Repository {
        match self {
            Store::Registry(r) => r.repository(),
            Store::Layout(l) => l.repository(),
        }
    }

    pub async fn blob_exists(&self, digest: &Digest) -> Result<bool> {
        match self {
            Store::Registry(r) => r.blob_exists(digest).await,
            Store::Layout(l) => l.blob_exists(digest).await,
        }
    }

    /// Pushes a small blob held in memory, unless it already exists. Returns whether bytes were sent.
    pub async fn push_blob_bytes(&self, bytes: Bytes) -> Result<bool> {
        let digest = Digest::of(&bytes);
        if self.blob_exists(&digest).await? {
            return Ok(false);
        }
        self.put_blob_bytes(bytes).await?;
        Ok(true)
    }

    /// Stores a small blob held in memory without asking first whether it exists: for a blob
    /// the caller knows is new, where the check costs a round trip and finds nothing. Storing
    /// a blob that exists is harmless.
    pub async fn put_blob_bytes(&self, bytes: Bytes) -> Result<()> {
        let digest = Digest::of(&bytes);
        match self {
            Store::Registry(r) => r.push_blob_bytes(bytes, &digest).await,
            Store::Layout(l) => l.push_blob_bytes(bytes, &digest).await,
        }
    }

    /// Starts uploading a blob whose digest is not known yet: write its bytes to the returned
    /// [`BlobWriter`] (on a blocking thread), then `finish` it to store the blob under the
    /// digest of what was written.
    pub async fn blob_writer(&self) -> Result<BlobWriter> {
        match self {
            Store::Registry(r) => r.blob_writer().await,
            Store::Layout(l) => l.blob_writer(),
        }
    }

    /// Opens the blob `digest` of `size` bytes for reading (on a blocking thread); the
    /// [`BlobReader`] checks both when it is finished.
    pub async fn blob_reader(&self, digest: &Digest, size: u64) -> Result<BlobReader> {
        self.blob_part_reader(digest, 0, digest, size).await
    }

    /// Opens blob `blob` from byte `offset` to its end, a part with a digest of its own (a
    /// native layer's file index, FORMAT.md §4.4): the [`BlobReader`] checks that part against
    /// `digest` and `size`. A registry is asked for the part alone (`Range`).
    pub async fn blob_part_reader(
        &self,
        blob: &Digest,
        offset: u64,
        digest: &Digest,
        size: u64,
    ) -> Result<BlobReader> {
        match self {
            Store::Registry(r) => r.blob_reader(blob, offset, digest, size).await,
            Store::Layout(l) => l.blob_reader(blob, offset, digest, size),
        }
    }

    async fn fetch_blob(&self, digest: &Digest) -> Result<BlobStream> {
        match self {
            Store::Registry(r) => r.fetch_blob(digest, 0).await,
            Store::Layout(l) => l.fetch_blob(digest).await,
        }
    }

    /// Fetches a small blob into memory and verifies its digest.
    pub async fn fetch_blob_bytes(&self, digest: &Digest, max_size: u64) -> Result<Vec<u8>> {
        use futures_util::StreamExt;
        let mut stream = self.fetch_blob(digest).await?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
            if out.len() as u64 > max_size {
                return Err(TransportError::Oversized {
                    what: format!("blob {digest}"),
                    limit: max_size,
                });
            }
        }
        let actual = Digest::of(&out);
        if &actual != digest {
            return Err(TransportError::DigestMismatch {
                what: format!("blob {digest}"),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(out)
    }

    /// Stores a manifest under its digest (no tag). Returns the digest. Some registries refuse
    /// manifests without a tag (OpenShift's integrated registry); a backup stores its manifest
    /// under a tag with [`Store::tag_manifest`].
    pub async fn push_manifest(&self, manifest: &[u8], media_type: &str) -> Result<Digest> {
        let digest = Digest::of(manifest);
        match self {
            Store::Registry(r) => {
                r.put_manifest(manifest, media_type, &Target::Digest(digest.clone()))
                    .await?;
            }
            Store::Layout(l) => l.put_manifest(manifest, media_type, None).await?,
        }
        Ok(digest)
    }

    /// Stores a manifest under `tag` (sending the bytes of one already stored only moves the
    /// tag). Returns the digest the store says it stored: a registry's `Docker-Content-Digest`,
    /// `None` if it sent none; a layout's, which wsr computes.
    pub async fn tag_manifest(
        &self,
        manifest: &[u8],
        media_type: &str,
        tag: &str,
    ) -> Result<Option<Digest>> {
        match self {
            Store::Registry(r) => {
                r.put_manifest(manifest, media_type, &Target::Tag(tag.to_owned()))
                    .await
            }
            Store::Layout(l) => {
                l.put_manifest(manifest, media_type, Some(tag)).await?;
                Ok(Some(Digest::of(manifest)))
            }
        }
    }

    /// Fetches a manifest by tag or digest; returns its digest (computed from the bytes, and
    /// checked against the requested digest) and bytes.
    pub async fn fetch_manifest(&self, target: &Target) -> Result<(Digest, Vec<u8>)> {
        let bytes = match self {
            Store::Registry(r) => r.get_manifest(target).await?,
            Store::Layout(l) => l.get_manifest(target).await?,
        };
        let digest = Digest::of(&bytes);
        if let Target::Digest(want) = target
            && want != &digest
        {
            return Err(TransportError::DigestMismatch {
                what: "manifest".into(),
                expected: want.clone(),
                actual: digest,
            });
        }
        Ok((digest, bytes))
    }

    pub async fn list_tags(&self) -> Result<Vec<String>> {
        match self {
            Store::Registry(r) => r.list_tags().await,
            Store::Layout(l) => l.list_tags().await,
        }
    }

    /// Deletes a manifest (and so every tag pointing at it) by digest.
    pub async fn delete_manifest(&self, digest: &Digest) -> Result<()> {
        match self {
            Store::Registry(r) => r.delete_manifest(digest).await,
            Store::Layout(l) => l.delete_manifest(digest).await,
        }
    }
}

/// Lists the repositories below a registry path (`HOST[/PREFIX]` via the catalog API, or every
/// layout directory below `oci:DIR`).
pub async fn list_repositories(
    registry_path: &Repository,
    options: &ConnectOptions,
) -> Result<Vec<Repository>> {
    match registry_path {
        Repository::Registry { host, path } => {
            registry::list_repositories(host, path, options).await
        }
        Repository::Layout { dir } => layout::list_layouts(dir).await,
    }
}
