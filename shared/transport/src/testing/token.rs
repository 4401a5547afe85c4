//! A bearer-token issuer for the token-auth test registry ([`super::RegistryKind::TlsToken`]):
//! the "authorization service" of distribution's token specification, on 127.0.0.1 over HTTPS
//! with the registry's own certificate (clients such as oras refuse a plain-HTTP realm for an
//! HTTPS registry, and so does wsr). It checks Basic credentials (a `GET` with `service` and `scope` query
//! parameters, or a `POST` form with `grant_type=password`), grants each user only the actions
//! its [`Grant`] allows, and returns a JWT signed with ES256.
//!
//! How distribution 2.8 (`registry/auth/token`) verifies the JWT decides its shape: `iss` must
//! equal the configured `issuer`, `aud` (a single string) the configured `service`, `exp` and
//! `nbf` hold within 60 s, and the signing key is found by the header's `x5c` chain (verified up
//! to the `rootcertbundle` with any key usage), its `jwk`, or a `kid` that is the libtrust key
//! id of a root certificate's key. This issuer sends `x5c` with its self-signed certificate,
//! which is also the whole root bundle. The signature is the JWS `r || s` form (64 bytes).
//!
//! Every request is recorded ([`TokenIssuer::requests`]) so tests can check which scopes a
//! client asked for and what it was given.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The `issuer` the registry trusts and this issuer writes into `iss`.
pub const TOKEN_ISSUER: &str = "wsr-test-issuer";
/// The registry's `service` name: the `aud` of every token.
pub const TOKEN_SERVICE: &str = "wsr-test-registry";
/// How long a token is valid.
const TOKEN_SECONDS: u64 = 300;
/// Longest request head or body read.
const MAX_REQUEST: usize = 64 << 10;

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// `pull`, `push` and `delete` on every repository, and the catalog.
    ReadWrite,
    /// `pull` on every repository, and the catalog.
    ReadOnly,
}

impl Grant {
    fn allows(self, kind: &str, name: &str, action: &str) -> bool {
        match (kind, name, action) {
            ("registry", "catalog", "*") => true,
            ("repository", _, "pull") => true,
            ("repository", _, "push" | "delete") => self == Grant::ReadWrite,
            _ => false,
        }
    }
}

/// One request to the issuer, as it saw it.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// The Basic user name, if any was sent (the password is never recorded).
    pub user: Option<String>,
    /// The `scope` values asked for, as sent.
    pub scopes: Vec<String>,
    /// The scopes granted (`type:name:actions`, actions in the order asked); empty if refused.
    pub granted: Vec<String>,
    /// The HTTP status answered: 200, 401 for missing or wrong credentials, 400 for a bad
    /// request.
    pub status: u16,
}

struct User {
    password: String,
    grant: Grant,
}

struct State {
    users: HashMap<String, User>,
    requests: Vec<TokenRequest>,
}

/// A running token issuer; stops accepting when dropped.
pub struct TokenIssuer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("addr", &self.addr)
            .finish()
    }
}

/// The signing key and the certificate the registry trusts for it.
struct Signer {
    key: EcdsaKeyPair,
    /// Standard base64 of the certificate's DER, the `x5c` entry.
    certificate: String,
}

impl TokenIssuer {
    /// Starts an issuer signing with the P-256 key `key` (PKCS#8 PEM) whose self-signed
    /// certificate is `cert` (PEM), serving HTTPS with `tls` (certificate and PKCS#8 key PEM).
    pub fn start(cert: &Path, key: &Path, tls: (&Path, &Path)) -> io::Result<TokenIssuer> {
        let tls = Arc::new(tls_config(tls.0, tls.1)?);
        let signer = Arc::new(Signer {
            key: EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &pem_der(key, "PRIVATE KEY")?,
            )
            .map_err(|e| io::Error::other(format!("token signing key: {e}")))?,
            certificate: base64::engine::general_purpose::STANDARD
                .encode(pem_der(cert, "CERTIFICATE")?),
        });
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            users: HashMap::new(),
            requests: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (state2, stop2) = (state.clone(), stop.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let (state, signer, tls) = (state2.clone(), signer.clone(), tls.clone());
                thread::spawn(move || {
                    let _ = serve(client, tls, &state, &signer);
                });
            }
        });
        Ok(TokenIssuer { addr, state, stop })
    }

    /// The token endpoint, the registry's `realm`.
    pub fn realm(&self) -> String {
        format!("https://{}/token", self.addr)
    }

    /// Accepts `user` with `password` (a service-account token is a password here too).
    pub fn add_user(&self, user: &str, password: &str, grant: Grant) {
        self.state.lock().unwrap().users.insert(
            user.to_owned(),
            User {
                password: password.to_owned(),
                grant,
            },
        );
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn tls_config(cert: &Path, key: &Path) -> io::Result<rustls::ServerConfig> {
    let chain = vec![CertificateDer::from(pem_der(cert, "CERTIFICATE")?)];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pem_der(key, "PRIVATE KEY")?));
    rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
    .map_err(|e| io::Error::other(format!("token issuer TLS: {e}")))
}

/// The DER bytes of the first PEM block labelled `label` in `path`.
fn pem_der(path: &Path, label: &str) -> io::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text
        .split_once(&begin)
        .and_then(|(_, rest)| rest.split_once(&end))
        .map(|(body, _)| body)
        .ok_or_else(|| io::Error::other(format!("{}: no {label} block", path.display())))?;
    let joined: String = body.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(joined)
        .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))
}

/// Answers one request on `client` and closes the connection.
fn serve(
    client: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    state: &Mutex<State>,
    signer: &Signer,
) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let connection = rustls::ServerConnection::new(tls).map_err(io::Error::other)?;
    let mut client = rustls::StreamOwned::new(connection, client);
    let (head, body) = read_request(&mut client)?;
    let answer = answer(Ask::parse(&head, &body), state, signer)?;
    client.write_all(answer.as_bytes())?;
    client.conn.send_close_notify();
    client.flush()
}

/// What one token request asks for.
struct Ask {
    /// A `GET` or `POST` of `/token`: anything else is refused.
    supported: bool,
    /// (user, password): HTTP basic for `GET`, the password grant's form for `POST`.
    login: Option<(String, String)>,
    scopes: Vec<String>,
}

impl Ask {
    fn parse(head: &[u8], body: &[u8]) -> Ask {
        let head = String::from_utf8_lossy(head);
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default();
        let target = request_line.next().unwrap_or_default();
        let authorization = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.trim().to_owned());
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let params = match method {
            "GET" => form_pairs(query),
            "POST" => form_pairs(&String::from_utf8_lossy(body)),
            _ => Vec::new(),
        };
        let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let login = match method {
            "GET" => authorization.as_deref().and_then(basic_login),
            "POST" if param("grant_type").map(String::as_str) == Some("password") => {
                param("username").cloned().zip(param("password").cloned())
            }
            _ => None,
        };
        let scopes = params
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split(' '))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        Ask {
            supported: path == "/token" && matches!(method, "GET" | "POST"),
            login,
            scopes,
        }
    }
}

/// The HTTP response to `ask`; a supported request is recorded in `state`.
fn answer(ask: Ask, state: &Mutex<State>, signer: &Signer) -> io::Result<String> {
    if !ask.supported {
        return Ok(error_response(400, "unsupported request"));
    }
    let mut record = TokenRequest {
        user: ask.login.as_ref().map(|(user, _)| user.clone()),
        scopes: ask.scopes,
        granted: Vec::new(),
        status: 200,
    };
    let mut state = state.lock().unwrap();
    let grant = ask.login.as_ref().and_then(|(user, password)| {
        (state.users.get(user))
            .filter(|u| u.password == *password)
            .map(|u| u.grant)
    });
    let answer = match grant {
        None => {
            record.status = 401;
            error_response(401, "missing or wrong credentials")
        }
        Some(grant) => {
            record.granted = (record.scopes.iter())
                .filter_map(|s| granted(grant, s))
                .collect();
            let subject = record.user.clone().unwrap_or_default();
            let token = sign(signer, &subject, &record.granted)?;
            let json = serde_json::json!({
                "token": token,
                "access_token": token,
                "expires_in": TOKEN_SECONDS,
            });
            response(200, &json.to_string())
        }
    };
    state.requests.push(record);
    Ok(answer)
}

/// Reads a request head and its `Content-Length` body.
fn read_request(stream: &mut impl Read) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if buf.len() > MAX_REQUEST {
            return Err(io::Error::other("request head too long"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::other(
                "connection closed before the request head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = buf[..head_end].to_vec();
    let mut body = buf[head_end + 4..].to_vec();
    let length = String::from_utf8_lossy(&head)
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_REQUEST);
    while body.len() < length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok((head, body))
}

/// `user` and `password` of a `Basic` Authorization value.
fn basic_login(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// `key=value&…` pairs of a query string or form body, percent-decoded (`+` is a space).
fn form_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The part of `scope` (`type:name:actions`) that `grant` allows, or `None` if nothing.
fn granted(grant: Grant, scope: &str) -> Option<String> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let allowed: Vec<&str> = actions
        .split(',')
        .filter(|a| grant.allows(kind, name, a))
        .collect();
    (!allowed.is_empty()).then(|| format!("{kind}:{name}:{}", allowed.join(",")))
}

/// The ES256 JWT for `subject` with `access` (granted scopes) that the registry accepts.
fn sign(signer: &Signer, subject: &str, access: &[String]) -> io::Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(io::Error::other)?
        .as_secs();
    let access: Vec<serde_json::Value> = access
        .iter()
        .filter_map(|scope| {
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(serde_json::json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }))
        })
        .collect();
    let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "x5c": [signer.certificate] });
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER,
        "sub": subject,
        "aud": TOKEN_SERVICE,
        "exp": now + TOKEN_SECONDS,
        "nbf": now,
        "iat": now,
        "jti": format!("{now}-{}", hex::encode(rand_bytes()?)),
        "access": access,
    });
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!(
        "{}.{}",
        url.encode(header.to_string()),
        url.encode(claims.to_string())
    );
    let signature = signer
        .key
        .sign(&SystemRandom::new(), signing_input.as_bytes())
        .map_err(|e| io::Error::other(format!("signing a token: {e}")))?;
    Ok(format!(
        "{signing_input}.{}",
        url.encode(signature.as_ref())
    ))
}

fn rand_bytes() -> io::Result<[u8; 8]> {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(bytes)
}

fn response(code: u16, json: &str) -> String {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        _ => "Unauthorized",
    };
    let challenge = if code == 401 {
        "WWW-Authenticate: Basic realm=\"wsr-test-token\"\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n{challenge}Content-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    )
}

fn error_response(code: u16, message: &str) -> String {
    let json = serde_json::json!({ "errors": [{ "code": "UNAUTHORIZED", "message": message }] });
    response(code, &json.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_only_what_the_user_may_do() {
        let scope = "repository:ns/ws:pull,push";
        assert_eq!(granted(Grant::ReadWrite, scope).as_deref(), Some(scope));
        assert_eq!(
            granted(Grant::ReadOnly, scope).as_deref(),
            Some("repository:ns/ws:pull")
        );
        assert_eq!(granted(Grant::ReadOnly, "repository:ns/ws:delete"), None);
        assert_eq!(
            granted(Grant::ReadWrite, "repository:ns/ws:delete").as_deref(),
            Some("repository:ns/ws:delete")
        );
        assert_eq!(
            granted(Grant::ReadOnly, "registry:catalog:*").as_deref(),
            Some("registry:catalog:*")
        );
        assert_eq!(granted(Grant::ReadWrite, "garbage"), None);
    }

    #[test]
    fn decodes_queries_and_basic_logins() {
        assert_eq!(
            form_pairs("service=wsr&scope=repository%3Ans%2Fws%3Apull%2Cpush&scope=a+b"),
            vec![
                ("service".to_owned(), "wsr".to_owned()),
                ("scope".to_owned(), "repository:ns/ws:pull,push".to_owned()),
                ("scope".to_owned(), "a b".to_owned()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        // base64("reader:pw:with:colons")
        assert_eq!(
            basic_login("Basic cmVhZGVyOnB3OndpdGg6Y29sb25z"),
            Some(("reader".to_owned(), "pw:with:colons".to_owned()))
        );
        assert_eq!(basic_login("Bearer x"), None);
    }
}
