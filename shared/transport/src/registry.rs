//! The OCI distribution registry transport.
//!
//! Every request, the auth handshake included (`challenge.rs`: Basic, or the Bearer token flow
//! with realm, service and scopes), goes through one reqwest client, so client certificates,
//! `--resolve` and extra headers apply to all of them. oci-client is not used: it has no
//! DELETE, no client certificates and no DNS overrides, cuts streamed uploads into fixed 4 MiB
//! PATCH requests (measurably slower) and silently falls back to default settings on a bad
//! config. Blobs are uploaded as POST, then one PUT `?digest=` carrying a small blob, or one
//! streaming PATCH and a PUT `?digest=` for a larger one.
//!
//! Every request runs under the one retry policy ([`crate::retry`]): idempotent requests are
//! sent again after transient failures, an interrupted blob download resumes with a `Range`
//! request from the byte it stopped at, and a quiet connection fails after the idle timeout
//! (a streamed upload has its own watchdog, because it may legitimately take longer than that
//! before the registry answers).

use crate::auth::{Credentials, credentials_for};
use crate::blob::{
    BlobReader, BlobWriter, DOWNLOAD_PIECE, DOWNLOAD_QUEUE, Piece, RegistryUpload, Source,
};
use crate::challenge::{
    Challenge, TokenFailure, basic, check_realm, fetch_token, merge_scopes, parse_challenge,
    repository_scope,
};
use crate::dns::{LookupError, SystemResolver};
use crate::retry::{Backoff, RetryPolicy, parse_retry_after};
use crate::service_account;
use crate::{Access, BlobStream, ConnectOptions, Result, TransportError};
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{Method, RequestBuilder, Response, StatusCode, header};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use wsr_format::digest::Digest;
use wsr_format::reference::{Repository, Target};

/// Accepted manifest types: OCI first; Docker v2 so foreign single-layer artifacts still read.
/// A blob whose bytes end within this many is uploaded in one PUT instead of PATCH and PUT:
/// one round trip fewer and less work for the registry. The pieces held meanwhile (the
/// writer's own, not copies) are this upload's memory besides the writer's queue.
pub(crate) const MONOLITHIC_LIMIT: usize = 2 << 20;

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json;q=0.9";

#[derive(Clone)]
pub struct RegistryStore {
    /// For every request but the streamed upload body: no byte for the idle timeout fails it.
    http: reqwest::Client,
    /// For the streamed upload (PATCH), watched by [`upload_watchdog`] instead.
    upload_http: reqwest::Client,
    policy: RetryPolicy,
    base: String,
    host: String,
    path: String,
    credentials: Arc<Credentials>,
    auth: Arc<Mutex<AuthState>>,
    /// Held while a challenge is answered: requests that met the same challenge wait, then
    /// use its answer instead of asking for another token.
    answering: Arc<tokio::sync::Mutex<()>>,
}

/// What the store sends as `Authorization`, and the token scopes asked for so far.
struct AuthState {
    header: Option<String>,
    scopes: Vec<String>,
}

fn read_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| TransportError::Io {
        what: format!("{what} {}", path.display()),
        source,
    })
}

/// `read_timeout` in reqwest also bounds the wait for the response head, so a client with one
/// cannot carry a long streamed upload: `idle` is `None` for the upload client. `cluster_cas`
/// are the service account's CA files, trusted besides `--ca-file`. Names resolve through
/// `resolver` (glibc's rules without NSS, `dns.rs`), except IP literals and the `--resolve`
/// rules.
fn http_client(
    options: &ConnectOptions,
    cluster_cas: &[PathBuf],
    idle: Option<Duration>,
    resolver: &Arc<SystemResolver>,
) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("wsr/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(15))
        .dns_resolver(resolver.clone())
        .tls_danger_accept_invalid_certs(options.insecure);
    if let Some(idle) = idle {
        builder = builder.read_timeout(idle);
    }
    for ca in options.ca_file.iter().chain(cluster_cas) {
        let pem = read_file(ca, "CA file")?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            TransportError::Config(format!(
                "CA file {}: not a PEM certificate: {e}",
                ca.display()
            ))
        })? {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(client) = &options.client_cert {
        let mut pem = read_file(&client.cert, "client certificate")?;
        pem.push(b'\n');
        pem.extend(read_file(&client.key, "client key")?);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
            TransportError::Config(format!(
                "client certificate {} with key {}: {e}",
                client.cert.display(),
                client.key.display()
            ))
        })?;
        builder = builder.identity(identity);
    }
    for rule in &options.resolve {
        builder = builder.resolve(&rule.host, SocketAddr::new(rule.address, rule.port));
    }
    let mut headers = header::HeaderMap::new();
    for h in &options.headers {
        let bad = || TransportError::Config(format!("header {:?} is not valid", h.name));
        let name = header::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad())?;
        headers.append(name, h.value.parse().map_err(|_| bad())?);
    }
    builder
        .default_headers(headers)
        .build()
        .map_err(|e| TransportError::Config(format!("cannot set up HTTP client: {e}")))
}

impl RegistryStore {
    /// Sets up the client for the repository; nothing is sent until the first request
    /// ([`RegistryStore::check_access`] checks the credentials).
    pub(super) fn connect(
        host: &str,
        path: &str,
        options: &ConnectOptions,
        access: Access,
    ) -> Result<RegistryStore> {
        let scopes = repository_scope(path, access == Access::Push)
            .into_iter()
            .collect();
        RegistryStore::connect_for(host, path, options, scopes)
    }

    /// Sets up the client, asking for `scopes` when the registry wants a token.
    fn connect_for(
        host: &str,
        path: &str,
        options: &ConnectOptions,
        scopes: Vec<String>,
    ) -> Result<RegistryStore> {
        let mut credentials = match &options.credentials {
            Some(explicit) => explicit.clone(),
            None => credentials_for(host, options.auth_file.as_deref())?,
        };
        let mut cluster_cas = Vec::new();
        if let Some(dir) = options
            .service_account
            .as_deref()
            .filter(|_| service_account::is_cluster_registry(host))
        {
            cluster_cas = service_account::ca_files(dir);
            if options.credentials.is_none()
                && matches!(credentials, Credentials::Anonymous)
                && let Some(login) = service_account::login(dir)?
            {
                tracing::info!(
                    "{host}: logging in as {} with the token in {}",
                    service_account::SERVICE_ACCOUNT_USER,
                    dir.display()
                );
                credentials = login;
            }
        }
        let policy = RetryPolicy::current();
        let resolver = Arc::new(SystemResolver::from_env());
        let store = RegistryStore {
            http: http_client(options, &cluster_cas, Some(policy.idle_timeout), &resolver)?,
            upload_http: http_client(options, &cluster_cas, None, &resolver)?,
            policy,
            base: format!(
                "{}://{host}",
                if options.plain_http { "http" } else { "https" }
            ),
            host: host.to_owned(),
            path: path.to_owned(),
            credentials: Arc::new(credentials),
            auth: Arc::new(Mutex::new(AuthState {
                header: None,
                scopes,
            })),
            answering: Arc::default(),
        };
        Ok(store)
    }

    /// `GET /v2/`, answering the registry's challenge: turns a wrong password into an error
    /// before any work.
    pub(super) async fn check_access(&self) -> Result<()> {
        let url = format!("{}/v2/", self.base);
        let response = self.send(Method::GET, &url, "GET /v2/", |r| r).await?;
        match response.status() {
            s if s.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED if matches!(*self.credentials, Credentials::Anonymous) => {
                Err(TransportError::AuthRequired {
                    registry: self.host.clone(),
                })
            }
            StatusCode::UNAUTHORIZED => Err(TransportError::Unauthorized {
                registry: self.host.clone(),
                detail: "the registry rejected the credentials".into(),
            }),
            _ => Err(self.status_error(response, "GET /v2/").await),
        }
    }

    /// Answers a 401's challenge: Basic credentials, or a token for every scope asked so far
    /// plus the one the challenge names. `false` when there is nothing new to try; an error
    /// when a token for every scope asked was still short of the one needed (the credentials
    /// lack that permission).
    async fn answer_challenge(&self, response: &Response) -> Result<bool> {
        let Some(challenge) = challenge_of(response) else {
            return Ok(false);
        };
        match challenge {
            Challenge::Basic => {
                let Credentials::Basic { username, password } = &*self.credentials else {
                    return Ok(false);
                };
                let value = basic(username, password);
                let mut auth = self.auth.lock().unwrap();
                if auth.header.as_deref() == Some(value.as_str()) {
                    return Ok(false);
                }
                auth.header = Some(value);
                Ok(true)
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
                error,
            } => {
                check_realm(&self.base, &realm).map_err(|detail| TransportError::Protocol {
                    registry: self.host.clone(),
                    status: 401,
                    what: "token realm".into(),
                    detail,
                })?;
                let scopes = {
                    let mut auth = self.auth.lock().unwrap();
                    let grew = scope
                        .as_deref()
                        .is_some_and(|s| merge_scopes(&mut auth.scopes, s));
                    let had_token = auth
                        .header
                        .as_deref()
                        .is_some_and(|h| h.starts_with("Bearer "));
                    if error.as_deref() == Some("insufficient_scope") && had_token && !grew {
                        return Err(self.not_granted(scope.as_deref()));
                    }
                    auth.scopes.clone()
                };
                tracing::debug!(%realm, ?scopes, "fetching a registry token");
                let token = fetch_token(
                    &self.http,
                    &realm,
                    service.as_deref(),
                    &scopes,
                    &self.credentials,
                )
                .await
                .map_err(|failure| self.token_error(&realm, failure))?;
                self.auth.lock().unwrap().header = Some(format!("Bearer {token}"));
                Ok(true)
            }
        }
    }

    /// The token service gave a token without an action the request needs.
    fn not_granted(&self, scope: Option<&str>) -> TransportError {
        TransportError::Forbidden {
            registry: self.host.clone(),
            detail: format!(
                "the registry's token service did not grant {}; these credentials lack that permission",
                scope.unwrap_or("the scope this request needs")
            ),
        }
    }

    fn token_error(&self, realm: &str, failure: TokenFailure) -> TransportError {
        if let Some(e) = failure.request {
            return self.request_error(e, &format!("token request to {realm}"));
        }
        match failure.status {
            401 | 403 if matches!(*self.credentials, Credentials::Anonymous) => {
                TransportError::AuthRequired {
                    registry: self.host.clone(),
                }
            }
            401 | 403 => TransportError::Unauthorized {
                registry: self.host.clone(),
                detail: format!(
                    "the token service {realm} answered {}: {}",
                    failure.status, failure.detail
                ),
            },
            status => TransportError::Protocol {
                registry: self.host.clone(),
                status,
                what: format!("token request to {realm}"),
                detail: failure.detail,
            },
        }
    }

    pub fn repository(&self) -> Repository {
        Repository::Registry {
            host: self.host.clone(),
            path: self.path.clone(),
        }
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.path)
    }

    fn authorize(&self, r: RequestBuilder) -> RequestBuilder {
        with_auth(r, self.auth_header().as_deref())
    }

    fn auth_header(&self) -> Option<String> {
        self.auth.lock().unwrap().header.clone()
    }

    /// Sends an idempotent request, answering one auth challenge and retrying transient
    /// failures under the retry policy.
    async fn send(
        &self,
        method: Method,
        url: &str,
        what: &str,
        customize: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response> {
        let mut backoff = self.policy.backoff();
        let mut answered = false;
        loop {
            let sent_auth = self.auth_header();
            let request = with_auth(self.http.request(method.clone(), url), sent_auth.as_deref());
            let result = customize(request).send().await;
            let error = match result {
                Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {
                    if !answered {
                        answered = true;
                        // Requests sent at once (the credential check beside the first
                        // requests) meet the same challenge: the first answers it, the others
                        // wait for that answer and try again with it.
                        let _answering = self.answering.lock().await;
                        if self.auth_header() != sent_auth
                            || self.answer_challenge(&response).await?
                        {
                            continue;
                        }
                    } else if let Some(Challenge::Bearer {
                        scope,
                        error: Some(error),
                        ..
                    }) = challenge_of(&response)
                        && error == "insufficient_scope"
                    {
                        return Err(self.not_granted(scope.as_deref()));
                    }
                    return Ok(response);
                }
                Ok(response)
                    if response.status().is_server_error()
                        || response.status() == StatusCode::TOO_MANY_REQUESTS =>
                {
                    self.status_error(response, what).await
                }
                Ok(response) => return Ok(response),
                Err(e) => self.request_error(e, what),
            };
            let Some(delay) = backoff.delay_after(&error) else {
                return Err(error);
            };
            tracing::warn!(%error, failures = backoff.failures(), "transient registry error; retrying in {delay:?}");
            tokio::time::sleep(delay).await;
        }
    }

    fn request_error(&self, e: reqwest::Error, what: &str) -> TransportError {
        // What went wrong is read from the causes only: the top error's text holds the URL,
        // and an upload's URL carries a random base64 state that can spell "tls".
        let mut causes = String::new();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            if let Some(lookup) = s.downcast_ref::<LookupError>() {
                return TransportError::Resolve {
                    registry: self.host.clone(),
                    detail: lookup.to_string(),
                    transient: lookup.transient,
                };
            }
            causes = format!("{causes}: {s}");
            source = s.source();
        }
        let detail = format!("{e}{causes}");
        let lower = causes.to_ascii_lowercase();
        if e.is_timeout() && !e.is_connect() {
            TransportError::Stalled {
                registry: self.host.clone(),
                what: what.to_owned(),
                idle: self.policy.idle_timeout,
            }
        } else if lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("handshake")
        {
            TransportError::Tls {
                registry: self.host.clone(),
                detail,
            }
        } else if e.is_connect() || e.is_timeout() || e.is_body() || lower.contains("connection") {
            TransportError::Connect {
                registry: self.host.clone(),
                detail,
            }
        } else {
            TransportError::Protocol {
                registry: self.host.clone(),
                status: 0,
                what: what.to_owned(),
                detail,
            }
        }
    }

    async fn status_error(&self, response: Response, what: &str) -> TransportError {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let detail: String = response
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        let registry = self.host.clone();
        match status {
            401 => TransportError::Unauthorized { registry, detail },
            403 => TransportError::Forbidden { registry, detail },
            404 => TransportError::NotFound {
                what: format!("{what} in {}/{}", self.host, self.path),
            },
            s if s >= 500 || s == 429 => TransportError::Server {
                registry,
                status: s,
                what: what.to_owned(),
                detail,
                retry_after,
            },
            s => TransportError::Protocol {
                registry,
                status: s,
                what: what.to_owned(),
                detail,
            },
        }
    }

    pub async fn blob_exists(&self, digest: &Digest) -> Result<bool> {
        let what = format!("HEAD blob {digest}");
        let response = self
            .send(
                Method::HEAD,
                &self.url(&format!("blobs/{digest}")),
                &what,
                |r| r,
            )
            .await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(response, &what).await),
        }
    }

    async fn start_upload(&self) -> Result<String> {
        let response = self
            .send(
                Method::POST,
                &self.url("blobs/uploads/"),
                "start upload",
                |r| r,
            )
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(response, "start upload").await);
        }
        self.location(&response, "start upload")
    }

    fn location(&self, response: &Response, what: &str) -> Result<String> {
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| TransportError::Protocol {
                registry: self.host.clone(),
                status: response.status().as_u16(),
                what: what.to_owned(),
                detail: "no Location header".into(),
            })?;
        Ok(
            if location.starts_with("http://") || location.starts_with("https://") {
                location.to_owned()
            } else {
                format!("{}{location}", self.base)
            },
        )
    }

    async fn finish_upload(
        &self,
        location: &str,
        digest: &Digest,
        body: Option<Bytes>,
    ) -> Result<()> {
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        let what = format!("finish upload of {digest}");
        let response = self
            .send(Method::PUT, &url, &what, |r| {
                let r = r.header(header::CONTENT_TYPE, "application/octet-stream");
                match &body {
                    Some(b) => r.body(b.clone()),
                    None => r.header(header::CONTENT_LENGTH, 0),
                }
            })
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(self.status_error(response, &what).await);
        }
        Ok(())
    }

    pub async fn push_blob_bytes(&self, bytes: Bytes, digest: &Digest) -> Result<()> {
        let location = self.start_upload().await?;
        self.finish_upload(&location, digest, Some(bytes)).await
    }

    /// Returns a writer for a new blob; the requests run in a task fed by the writer: the POST
    /// that starts the upload runs while the writer produces its first pieces, then a blob that
    /// ends within [`MONOLITHIC_LIMIT`] is sent as one PUT `?digest=` (retried like any
    /// idempotent request) and a longer one as one streaming PATCH and a PUT `?digest=`.
    pub async fn blob_writer(&self) -> Result<BlobWriter> {
        let (pieces, pieces_rx) = RegistryUpload::channel();
        let (digest, digest_rx) = oneshot::channel();
        let (outcome_tx, outcome) = oneshot::channel();
        let store = self.clone();
        tokio::spawn(async move {
            let outcome = store.upload(pieces_rx, digest_rx).await;
            let _ = outcome_tx.send(outcome);
        });
        Ok(BlobWriter::registry(RegistryUpload::new(
            pieces, digest, outcome,
        )))
    }

    async fn upload(
        &self,
        mut pieces: mpsc::Receiver<Piece>,
        digest: oneshot::Receiver<Digest>,
    ) -> Result<()> {
        let abandoned = || TransportError::Protocol {
            registry: self.host.clone(),
            status: 0,
            what: "upload blob".into(),
            detail: "the upload was abandoned".into(),
        };
        let location = self.start_upload().await?;
        // Hold the first pieces: a blob that ends within them goes in one request. They are
        // kept as sent, not copied: each is the writer's own buffer.
        let mut held = Vec::new();
        let mut held_len = 0;
        while held_len < MONOLITHIC_LIMIT {
            match pieces.recv().await {
                Some(Piece::Data(bytes)) => {
                    held_len += bytes.len();
                    held.push(bytes);
                }
                Some(Piece::End) => {
                    let digest = digest.await.map_err(|_| abandoned())?;
                    let body = match held.as_slice() {
                        [one] => one.clone(),
                        many => Bytes::from(many.concat()),
                    };
                    return self.finish_upload(&location, &digest, Some(body)).await;
                }
                // The writer went away: nothing is completed.
                None => return Err(abandoned()),
            }
        }
        let location = self.stream_upload(&location, held, pieces).await?;
        let digest = digest.await.map_err(|_| abandoned())?;
        self.finish_upload(&location, &digest, None).await
    }

    /// Sends the held bytes and then the rest from the writer as one PATCH; returns the
    /// location to finish the upload at.
    async fn stream_upload(
        &self,
        location: &str,
        held: Vec<Bytes>,
        pieces: mpsc::Receiver<Piece>,
    ) -> Result<String> {
        // A body that ends only at `End`: a writer that went away fails the request, so the
        // registry never completes a truncated blob.
        let activity = Arc::new(UploadActivity::new());
        let watched = activity.clone();
        let rest = futures_util::stream::unfold(Some(pieces), move |pieces| {
            let activity = watched.clone();
            async move {
                let mut pieces = pieces?;
                activity.waiting_for_writer.store(true, Ordering::Relaxed);
                let piece = pieces.recv().await;
                activity.taken();
                match piece {
                    Some(Piece::Data(bytes)) => Some((Ok(bytes), Some(pieces))),
                    Some(Piece::End) => None,
                    None => Some((Err(std::io::Error::other("upload abandoned")), None)),
                }
            }
        });
        let body = futures_util::stream::iter(held.into_iter().map(Ok)).chain(rest);
        // Not retried here: the body is consumed. The caller writes it again on a transient error.
        let request = self
            .authorize(self.upload_http.request(Method::PATCH, location))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body))
            .send();
        let response = tokio::select! {
            response = request => response.map_err(|e| self.request_error(e, "upload blob"))?,
            () = upload_watchdog(&activity, self.policy.idle_timeout) => {
                return Err(TransportError::Stalled {
                    registry: self.host.clone(),
                    what: "upload blob".into(),
                    idle: self.policy.idle_timeout,
                });
            }
        };
        if response.status() != StatusCode::ACCEPTED && response.status() != StatusCode::NO_CONTENT
        {
            return Err(self.status_error(response, "upload blob").await);
        }
        self.location(&response, "upload blob")
    }

    /// Opens blob `blob` from `offset` on for reading, checked against `digest` and `size`
    /// (the blob's own, when `offset` is 0); a task reads ahead while the reader consumes. An
    /// interrupted download resumes where it stopped (see [`RegistryStore::fetch_blob`]).
    pub async fn blob_reader(
        &self,
        blob: &Digest,
        offset: u64,
        digest: &Digest,
        size: u64,
    ) -> Result<BlobReader> {
        let mut stream = self.fetch_blob(blob, offset).await?;
        let (pieces, pieces_rx) = mpsc::channel(DOWNLOAD_QUEUE);
        tokio::spawn(async move {
            while let Some(piece) = stream.next().await {
                let bytes = match piece {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        let _ = pieces.send(Err(e)).await;
                        return;
                    }
                };
                // Copied out, so the HTTP client's read buffer is free again at once and is
                // reused: a piece that shared it kept it alive, and the client allocated a new
                // buffer of a few hundred KiB (a fresh mapping, zeroed page by page) for every
                // such read.
                let parts: Vec<Bytes> = bytes
                    .chunks(DOWNLOAD_PIECE)
                    .map(Bytes::copy_from_slice)
                    .collect();
                drop(bytes);
                for part in parts {
                    if pieces.send(Ok(part)).await.is_err() {
                        return;
                    }
                }
            }
        });
        let source = Source::Registry {
            pieces: pieces_rx,
            current: Bytes::new(),
        };
        Ok(BlobReader::new(source, digest, size))
    }

    /// The blob's bytes from `offset` on (`Range: bytes=N-` when not 0). When the body fails
    /// part-way (reset, stall), the rest is requested with `Range: bytes=N-` under the retry
    /// policy, whose budget starts again after a request that delivered at least
    /// [`RESUME_PROGRESS`] bytes (so a long download survives sporadic failures, and one cut
    /// every few KiB still fails within the budget); the caller's digest check covers the
    /// joined stream.
    pub(crate) async fn fetch_blob(&self, digest: &Digest, offset: u64) -> Result<BlobStream> {
        let first = self.blob_body(digest, offset).await?;
        let download = Download {
            store: self.clone(),
            digest: digest.clone(),
            body: Some(first),
            offset,
            backoff: self.policy.backoff(),
            progressed: 0,
            failed: false,
        };
        Ok(futures_util::stream::unfold(download, Download::next_piece).boxed())
    }

    /// GET of a blob from byte `offset` on; the body is the bytes from there.
    async fn blob_body(&self, digest: &Digest, offset: u64) -> Result<BodyStream> {
        let what = format!("blob {digest}");
        let response = self
            .send(
                Method::GET,
                &self.url(&format!("blobs/{digest}")),
                &what,
                |r| match offset {
                    0 => r,
                    n => r.header(header::RANGE, format!("bytes={n}-")),
                },
            )
            .await?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.status_error(response, &what).await);
        }
        // A registry that ignores `Range` sends the whole blob again: skip what we have.
        let skip = if status == StatusCode::PARTIAL_CONTENT {
            let from = response
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if from != Some(offset) {
                return Err(TransportError::Protocol {
                    registry: self.host.clone(),
                    status: 206,
                    what,
                    detail: format!("asked for bytes from {offset}, got Content-Range {from:?}"),
                });
            }
            0
        } else {
            offset
        };
        let host = self.host.clone();
        let idle = self.policy.idle_timeout;
        let body = response.bytes_stream().map(move |r| {
            r.map_err(|e| {
                if e.is_timeout() {
                    TransportError::Stalled {
                        registry: host.clone(),
                        what: "download".into(),
                        idle,
                    }
                } else {
                    TransportError::Connect {
                        registry: host.clone(),
                        detail: format!("download interrupted: {e}"),
                    }
                }
            })
        });
        Ok(skip_bytes(body.boxed(), skip))
    }

    /// Stores a manifest under `target`; returns the digest the registry says it stored
    /// (`Docker-Content-Digest`), if it says one.
    pub async fn put_manifest(
        &self,
        manifest: &[u8],
        media_type: &str,
        target: &Target,
    ) -> Result<Option<Digest>> {
        let reference = match target {
            Target::Tag(t) => t.clone(),
            Target::Digest(d) => d.to_string(),
        };
        let what = format!("push manifest {reference}");
        let body = Bytes::copy_from_slice(manifest);
        let response = self
            .send(
                Method::PUT,
                &self.url(&format!("manifests/{reference}")),
                &what,
                |r| {
                    r.header(header::CONTENT_TYPE, media_type)
                        .body(body.clone())
                },
            )
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(self.status_error(response, &what).await);
        }
        let reported = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(reported)
    }

    /// A manifest's bytes, bounded while reading; a body that fails part-way (reset, stall) is
    /// fetched again under the retry policy.
    pub async fn get_manifest(&self, target: &Target) -> Result<Vec<u8>> {
        let reference = match target {
            Target::Tag(t) => t.clone(),
            Target::Digest(d) => d.to_string(),
        };
        let what = format!("manifest {reference}");
        let mut backoff = self.policy.backoff();
        loop {
            let response = self
                .send(
                    Method::GET,
                    &self.url(&format!("manifests/{reference}")),
                    &what,
                    |r| r.header(header::ACCEPT, MANIFEST_ACCEPT),
                )
                .await?;
            let error = match self.manifest_body(response, &what).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) => e,
            };
            let Some(delay) = backoff.delay_after(&error) else {
                return Err(error);
            };
            tracing::warn!(%error, failures = backoff.failures(), "reading {what} failed; retrying in {delay:?}");
            tokio::time::sleep(delay).await;
        }
    }

    async fn manifest_body(&self, mut response: Response, what: &str) -> Result<Vec<u8>> {
        if !response.status().is_success() {
            return Err(self.status_error(response, what).await);
        }
        // Bounded while reading: a hostile registry may send (or announce) any length.
        let oversized = || TransportError::Oversized {
            what: what.to_owned(),
            limit: super::MAX_MANIFEST_BYTES,
        };
        if response
            .content_length()
            .is_some_and(|n| n > super::MAX_MANIFEST_BYTES)
        {
            return Err(oversized());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.request_error(e, what))?
        {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > super::MAX_MANIFEST_BYTES {
                return Err(oversized());
            }
        }
        Ok(bytes)
    }

    pub async fn list_tags(&self) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut out = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let mut url = self.url("tags/list?n=1000");
            if let Some(l) = &last {
                url.push_str(&format!("&last={l}"));
            }
            let response = self.send(Method::GET, &url, "list tags", |r| r).await?;
            if response.status() == StatusCode::NOT_FOUND {
                return Ok(out);
            }
            if !response.status().is_success() {
                return Err(self.status_error(response, "list tags").await);
            }
            let more = response.headers().contains_key(header::LINK);
            let page: Tags = response
                .json()
                .await
                .map_err(|e| self.request_error(e, "list tags"))?;
            let page = page.tags.unwrap_or_default();
            last = page.last().cloned();
            let done = page.is_empty() || !more;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    pub async fn delete_manifest(&self, digest: &Digest) -> Result<()> {
        let what = format!("delete manifest {digest}");
        let response = self
            .send(
                Method::DELETE,
                &self.url(&format!("manifests/{digest}")),
                &what,
                |r| r,
            )
            .await?;
        match response.status() {
            StatusCode::ACCEPTED | StatusCode::OK | StatusCode::NOT_FOUND => Ok(()),
            StatusCode::METHOD_NOT_ALLOWED => Err(TransportError::Protocol {
                registry: self.host.clone(),
                status: 405,
                what,
                detail: "the registry does not allow deleting manifests (for distribution, set storage.delete.enabled)".into(),
            }),
            _ => Err(self.status_error(response, &what).await),
        }
    }
}

/// The response's parsed `WWW-Authenticate` challenge, if it has one wsr can answer.
fn challenge_of(response: &Response) -> Option<Challenge> {
    response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_challenge)
}

type BodyStream = BlobStream;

/// Bytes a download must have delivered since its last failure for the retry budget to start
/// again.
const RESUME_PROGRESS: u64 = 1 << 20;

/// Drops the first `skip` bytes of `body`.
fn skip_bytes(body: BodyStream, skip: u64) -> BodyStream {
    if skip == 0 {
        return body;
    }
    body.scan(skip, |left, piece| {
        let piece = piece.map(|mut bytes| {
            let cut = (*left).min(bytes.len() as u64) as usize;
            *left -= cut as u64;
            bytes.split_off(cut)
        });
        std::future::ready(Some(piece))
    })
    .filter(|piece| std::future::ready(!matches!(piece, Ok(b) if b.is_empty())))
    .boxed()
}

/// One blob download that resumes after transient failures.
struct Download {
    store: RegistryStore,
    digest: Digest,
    body: Option<BodyStream>,
    offset: u64,
    backoff: Backoff,
    /// Bytes arrived since the last failure.
    progressed: u64,
    failed: bool,
}

impl Download {
    async fn next_piece(mut self) -> Option<(Result<Bytes>, Download)> {
        loop {
            if self.failed {
                return None;
            }
            let next = match &mut self.body {
                Some(body) => body.next().await,
                None => Some(
                    match self.store.blob_body(&self.digest, self.offset).await {
                        Ok(body) => {
                            self.body = Some(body);
                            continue;
                        }
                        Err(e) => Err(e),
                    },
                ),
            };
            let error = match next {
                None => return None,
                Some(Ok(bytes)) => {
                    self.offset += bytes.len() as u64;
                    self.progressed += bytes.len() as u64;
                    return Some((Ok(bytes), self));
                }
                Some(Err(e)) => e,
            };
            self.body = None;
            if std::mem::take(&mut self.progressed) >= RESUME_PROGRESS {
                self.backoff = self.store.policy.backoff();
            }
            match self.backoff.delay_after(&error) {
                Some(delay) => {
                    tracing::warn!(%error, offset = self.offset, "blob {} download interrupted; resuming in {delay:?}", self.digest);
                    tokio::time::sleep(delay).await;
                }
                None => {
                    self.failed = true;
                    return Some((Err(error), self));
                }
            }
        }
    }
}

/// What the upload watchdog sees of a streamed upload body.
struct UploadActivity {
    /// When the registry last took a piece (or the writer last gave one).
    last: Mutex<Instant>,
    /// The body waits for the writer (the archiver), not for the registry.
    waiting_for_writer: AtomicBool,
}

impl UploadActivity {
    fn new() -> UploadActivity {
        UploadActivity {
            last: Mutex::new(Instant::now()),
            waiting_for_writer: AtomicBool::new(false),
        }
    }

    fn taken(&self) {
        *self.last.lock().unwrap() = Instant::now();
        self.waiting_for_writer.store(false, Ordering::Relaxed);
    }
}

/// Returns once the registry has neither taken a piece of the upload body nor answered for
/// `idle` while the body was ready for it. A slow writer never counts as a stall.
async fn upload_watchdog(activity: &UploadActivity, idle: Duration) {
    let tick = (idle / 4).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(tick).await;
        if activity.waiting_for_writer.load(Ordering::Relaxed) {
            continue;
        }
        if activity.last.lock().unwrap().elapsed() >= idle {
            return;
        }
    }
}

fn with_auth(r: RequestBuilder, authorization: Option<&str>) -> RequestBuilder {
    match authorization {
        Some(value) => r.header(header::AUTHORIZATION, value),
        None => r,
    }
}

pub(super) async fn list_repositories(
    host: &str,
    prefix: &str,
    options: &ConnectOptions,
) -> Result<Vec<Repository>> {
    #[derive(serde::Deserialize)]
    struct Catalog {
        #[serde(default)]
        repositories: Vec<String>,
    }
    // The catalog is all a listing reads: the token asks for it alone.
    let catalog = vec!["registry:catalog:*".to_owned()];
    let store = RegistryStore::connect_for(host, prefix, options, catalog)?;
    store.check_access().await?;
    let mut out = Vec::new();
    let mut last: Option<String> = None;
    loop {
        let mut url = format!("{}/v2/_catalog?n=1000", store.base);
        if let Some(l) = &last {
            url.push_str(&format!("&last={l}"));
        }
        let response = store.send(Method::GET, &url, "catalog", |r| r).await?;
        if !response.status().is_success() {
            return Err(store.status_error(response, "catalog").await);
        }
        let more = response.headers().contains_key(header::LINK);
        let page: Catalog = response
            .json()
            .await
            .map_err(|e| store.request_error(e, "catalog"))?;
        last = page.repositories.last().cloned();
        let done = page.repositories.is_empty() || !more;
        for path in page.repositories {
            if prefix.is_empty()
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
            {
                out.push(Repository::Registry {
                    host: host.to_owned(),
                    path,
                });
            }
        }
        if done {
            return Ok(out);
        }
    }
}
