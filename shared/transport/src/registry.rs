//! The OCI distribution registry transport.
//!
//! oci-client performs the auth handshake (Basic, or the Bearer token flow with realm, service
//! and scope). The HTTP calls themselves are made directly with reqwest on the same TLS
//! settings, because oci-client has no DELETE, cuts streamed uploads into fixed 4 MiB PATCH
//! requests (measurably slower, and broken on registries that answer 201) and silently falls
//! back to default settings on a bad config. Blobs are uploaded as POST, one streaming PATCH,
//! PUT `?digest=`.

use crate::auth::{Credentials, credentials_for};
use crate::blob::{BlobReader, BlobWriter, DOWNLOAD_QUEUE, Piece, RegistryUpload, Source};
use crate::{Access, BlobStream, ConnectOptions, Result, TransportError};
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{Method, RequestBuilder, Response, StatusCode, header};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use wsr_format::digest::Digest;
use wsr_format::reference::{Repository, Target};

/// Accepted manifest types: OCI first; Docker v2 so foreign single-layer artifacts still read.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json;q=0.9";

const RETRIES: u32 = 4;

#[derive(Clone)]
pub struct RegistryStore {
    http: reqwest::Client,
    base: String,
    host: String,
    path: String,
    /// The `Authorization` header value, if any (Basic, or a Bearer token from the handshake).
    authorization: Arc<Mutex<Option<String>>>,
}

fn http_client(options: &ConnectOptions) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("wsr/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(300))
        .hickory_dns(true)
        .tls_danger_accept_invalid_certs(options.insecure);
    if let Some(ca) = &options.ca_file {
        let pem = std::fs::read(ca).map_err(|source| TransportError::Io {
            what: format!("CA file {}", ca.display()),
            source,
        })?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            TransportError::Config(format!(
                "CA file {}: not a PEM certificate: {e}",
                ca.display()
            ))
        })? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| TransportError::Config(format!("cannot set up HTTP client: {e}")))
}

impl RegistryStore {
    pub(super) async fn connect(
        host: &str,
        path: &str,
        options: &ConnectOptions,
        access: Access,
    ) -> Result<RegistryStore> {
        let credentials = credentials_for(host, options.auth_file.as_deref())?;
        let store = RegistryStore {
            http: http_client(options)?,
            base: format!(
                "{}://{host}",
                if options.plain_http { "http" } else { "https" }
            ),
            host: host.to_owned(),
            path: path.to_owned(),
            authorization: Arc::new(Mutex::new(None)),
        };
        let authorization = store.handshake(options, &credentials, access).await?;
        *store.authorization.lock().unwrap() = authorization;
        store.ping(&credentials).await?;
        Ok(store)
    }

    async fn handshake(
        &self,
        options: &ConnectOptions,
        credentials: &Credentials,
        access: Access,
    ) -> Result<Option<String>> {
        use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
        use oci_client::secrets::RegistryAuth;
        let mut extra_root_certificates = Vec::new();
        if let Some(ca) = &options.ca_file {
            let data = std::fs::read(ca).map_err(|source| TransportError::Io {
                what: format!("CA file {}", ca.display()),
                source,
            })?;
            extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let config = ClientConfig {
            protocol: if options.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: options.insecure,
            extra_root_certificates,
            ..Default::default()
        };
        let client = oci_client::Client::try_from(config)
            .map_err(|e| TransportError::Config(format!("cannot set up registry client: {e}")))?;
        let reference = oci_client::Reference::with_tag(
            self.host.clone(),
            self.path_or_probe(),
            "latest".into(),
        );
        let auth = match credentials {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credentials::Token(t) => RegistryAuth::Bearer(t.clone()),
        };
        let op = match access {
            Access::Pull => oci_client::RegistryOperation::Pull,
            Access::Push => oci_client::RegistryOperation::Push,
        };
        match client.auth(&reference, &auth, op).await {
            Ok(Some(token)) => Ok(Some(format!("Bearer {token}"))),
            Ok(None) => Ok(match credentials {
                Credentials::Basic { username, password } => {
                    use base64::Engine;
                    Some(format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD
                            .encode(format!("{username}:{password}"))
                    ))
                }
                Credentials::Token(t) => Some(format!("Bearer {t}")),
                Credentials::Anonymous => None,
            }),
            Err(oci_client::errors::OciDistributionError::AuthenticationFailure(detail)) => {
                Err(TransportError::Unauthorized {
                    registry: self.host.clone(),
                    detail: detail.chars().take(200).collect(),
                })
            }
            Err(oci_client::errors::OciDistributionError::RequestError(e)) => {
                Err(self.request_error(e, "GET /v2/"))
            }
            Err(e) => Err(TransportError::Protocol {
                registry: self.host.clone(),
                status: 0,
                what: "auth".into(),
                detail: e.to_string(),
            }),
        }
    }

    fn path_or_probe(&self) -> String {
        if self.path.is_empty() {
            "library/probe".into()
        } else {
            self.path.clone()
        }
    }

    /// `GET /v2/` with our credentials: turns a wrong password into an error before any work.
    async fn ping(&self, credentials: &Credentials) -> Result<()> {
        let url = format!("{}/v2/", self.base);
        let response = self.send(Method::GET, &url, "GET /v2/", |r| r).await?;
        match response.status() {
            s if s.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED if matches!(credentials, Credentials::Anonymous) => {
                Err(TransportError::AuthRequired {
                    registry: self.host.clone(),
                })
            }
            StatusCode::UNAUTHORIZED => Err(TransportError::Unauthorized {
                registry: self.host.clone(),
                detail: "the registry rejected the user name or password".into(),
            }),
            _ => Err(self.status_error(response, "GET /v2/").await),
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

    fn request(&self, method: Method, url: &str) -> RequestBuilder {
        let mut r = self.http.request(method, url);
        if let Some(value) = self.authorization.lock().unwrap().as_ref() {
            r = r.header(header::AUTHORIZATION, value);
        }
        r
    }

    /// Sends an idempotent request, retrying transient failures with exponential backoff.
    async fn send(
        &self,
        method: Method,
        url: &str,
        what: &str,
        customize: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response> {
        let mut delay = Duration::from_millis(250);
        let mut attempt = 0;
        loop {
            let result = customize(self.request(method.clone(), url)).send().await;
            let error = match result {
                Ok(response)
                    if response.status().is_server_error()
                        || response.status() == StatusCode::TOO_MANY_REQUESTS =>
                {
                    self.status_error(response, what).await
                }
                Ok(response) => return Ok(response),
                Err(e) => self.request_error(e, what),
            };
            attempt += 1;
            if !error.is_transient() || attempt > RETRIES {
                return Err(error);
            }
            tracing::warn!(%error, attempt, "transient registry error; retrying in {delay:?}");
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }

    fn request_error(&self, e: reqwest::Error, what: &str) -> TransportError {
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            source = s.source();
        }
        let lower = detail.to_ascii_lowercase();
        if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
            TransportError::Tls {
                registry: self.host.clone(),
                detail,
            }
        } else if e.is_connect() || e.is_timeout() || lower.contains("connection") {
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

    /// Starts an upload (POST) and returns its writer; the body (one streaming PATCH) and the
    /// final PUT `?digest=` run in a task fed by the writer.
    pub async fn blob_writer(&self) -> Result<BlobWriter> {
        let location = self.start_upload().await?;
        let (pieces, pieces_rx) = RegistryUpload::channel();
        let (digest, digest_rx) = oneshot::channel();
        let (outcome_tx, outcome) = oneshot::channel();
        let store = self.clone();
        tokio::spawn(async move {
            let outcome = store.upload(&location, pieces_rx, digest_rx).await;
            let _ = outcome_tx.send(outcome);
        });
        Ok(BlobWriter::registry(RegistryUpload::new(
            pieces, digest, outcome,
        )))
    }

    async fn upload(
        &self,
        location: &str,
        pieces: mpsc::Receiver<Piece>,
        digest: oneshot::Receiver<Digest>,
    ) -> Result<()> {
        // A body that ends only at `End`: a writer that went away fails the request, so the
        // registry never completes a truncated blob.
        let body = futures_util::stream::unfold(Some(pieces), |pieces| async move {
            let mut pieces = pieces?;
            match pieces.recv().await {
                Some(Piece::Data(bytes)) => Some((Ok(bytes), Some(pieces))),
                Some(Piece::End) => None,
                None => Some((Err(std::io::Error::other("upload abandoned")), None)),
            }
        });
        // Not retried here: the body is consumed. The caller writes it again on a transient error.
        let response = self
            .request(Method::PATCH, location)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(|e| self.request_error(e, "upload blob"))?;
        if response.status() != StatusCode::ACCEPTED && response.status() != StatusCode::NO_CONTENT
        {
            return Err(self.status_error(response, "upload blob").await);
        }
        let location = self.location(&response, "upload blob")?;
        let digest = digest.await.map_err(|_| TransportError::Protocol {
            registry: self.host.clone(),
            status: 0,
            what: "upload blob".into(),
            detail: "the upload was abandoned".into(),
        })?;
        self.finish_upload(&location, &digest, None).await
    }

    /// Opens a blob for reading; a task reads ahead while the reader consumes.
    pub async fn blob_reader(&self, digest: &Digest, size: u64) -> Result<BlobReader> {
        let mut stream = self.fetch_blob(digest).await?;
        let (pieces, pieces_rx) = mpsc::channel(DOWNLOAD_QUEUE);
        tokio::spawn(async move {
            while let Some(piece) = stream.next().await {
                let failed = piece.is_err();
                if pieces.send(piece).await.is_err() || failed {
                    return;
                }
            }
        });
        let source = Source::Registry {
            pieces: pieces_rx,
            current: Bytes::new(),
        };
        Ok(BlobReader::new(source, digest, size))
    }

    pub(crate) async fn fetch_blob(&self, digest: &Digest) -> Result<BlobStream> {
        let what = format!("blob {digest}");
        let response = self
            .send(
                Method::GET,
                &self.url(&format!("blobs/{digest}")),
                &what,
                |r| r,
            )
            .await?;
        if !response.status().is_success() {
            return Err(self.status_error(response, &what).await);
        }
        let host = self.host.clone();
        Ok(response
            .bytes_stream()
            .map(move |r| {
                r.map_err(|e| TransportError::Connect {
                    registry: host.clone(),
                    detail: format!("download interrupted: {e}"),
                })
            })
            .boxed())
    }

    pub async fn put_manifest(
        &self,
        manifest: &[u8],
        media_type: &str,
        target: &Target,
    ) -> Result<()> {
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
        Ok(())
    }

    pub async fn get_manifest(&self, target: &Target) -> Result<Vec<u8>> {
        let reference = match target {
            Target::Tag(t) => t.clone(),
            Target::Digest(d) => d.to_string(),
        };
        let what = format!("manifest {reference}");
        let response = self
            .send(
                Method::GET,
                &self.url(&format!("manifests/{reference}")),
                &what,
                |r| r.header(header::ACCEPT, MANIFEST_ACCEPT),
            )
            .await?;
        if !response.status().is_success() {
            return Err(self.status_error(response, &what).await);
        }
        // Bounded while reading: a hostile registry may send (or announce) any length.
        let oversized = || TransportError::Oversized {
            what: what.clone(),
            limit: super::MAX_MANIFEST_BYTES,
        };
        if response
            .content_length()
            .is_some_and(|n| n > super::MAX_MANIFEST_BYTES)
        {
            return Err(oversized());
        }
        let mut response = response;
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.request_error(e, &what))?
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
    let store = RegistryStore::connect(host, prefix, options, Access::Pull).await?;
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
