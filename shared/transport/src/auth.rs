//! Registry credentials from a docker `config.json` (or podman `auth.json`, same format).
//!
//! Credentials never reach logs: `Credentials` redacts the password in `Debug`.

use crate::{Result, TransportError};
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Clone)]
pub enum Credentials {
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// An identity token from `config.json`, used as a bearer token.
    Token(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// The auth file to use: the explicit one, else `REGISTRY_AUTH_FILE`, else
/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json` (the last three only if present).
pub fn resolve_auth_file(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_owned());
    }
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let candidates = [
        std::env::var_os("DOCKER_CONFIG").map(|d| PathBuf::from(d).join("config.json")),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

/// Credentials for `host` from the auth file, or anonymous when the file has none for it.
/// An explicitly named file that can't be read or parsed is an error.
pub fn credentials_for(host: &str, explicit: Option<&Path>) -> Result<Credentials> {
    let Some(path) = resolve_auth_file(explicit) else {
        return Ok(Credentials::Anonymous);
    };
    let file = std::fs::File::open(&path).map_err(|source| TransportError::Io {
        what: format!("auth file {}", path.display()),
        source,
    })?;
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    match docker_credential::get_credential_from_reader(file, host) {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Credentials::Basic { username, password })
        }
        Ok(DockerCredential::IdentityToken(token)) => Ok(Credentials::Token(token)),
        Err(E::NoCredentialConfigured) => Ok(Credentials::Anonymous),
        Err(e) => Err(TransportError::Config(format!(
            "auth file {}: {e}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_basic_credentials_for_the_host_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.json");
        // base64("tester:s3cret")
        std::fs::write(
            &f,
            r#"{"auths":{"127.0.0.1:5000":{"auth":"dGVzdGVyOnMzY3JldA=="}}}"#,
        )
        .unwrap();
        match credentials_for("127.0.0.1:5000", Some(&f)).unwrap() {
            Credentials::Basic { username, password } => {
                assert_eq!((username.as_str(), password.as_str()), ("tester", "s3cret"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            credentials_for("other:1", Some(&f)).unwrap(),
            Credentials::Anonymous
        ));
        let shown = format!("{:?}", credentials_for("127.0.0.1:5000", Some(&f)).unwrap());
        assert!(!shown.contains("s3cret"), "{shown}");
        let err = credentials_for("h", Some(&dir.path().join("missing.json"))).unwrap_err();
        assert!(err.to_string().contains("missing.json"), "{err}");
    }
}
