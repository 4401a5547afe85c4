//! The pod's Kubernetes service account as registry login, as upstream's
//! `workspace-recovery.sh` uses it for OpenShift's integrated registry: for a registry whose
//! host contains `openshift` or `svc.cluster.local`, the token file of the service-account
//! directory (`/var/run/secrets/kubernetes.io/serviceaccount` in a pod) is the password of user
//! `serviceaccount` when no other credentials for the host are given, and the directory's
//! `service-ca.crt` and `ca.crt` are trusted. Whether the registry then takes Basic auth or
//! exchanges the login for a bearer token is the challenge's business (`challenge.rs`).
//!
//! The token is a credential: it is never logged (`Credentials` redacts it).

use crate::auth::Credentials;
use crate::{Result, TransportError};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where Kubernetes mounts a pod's service-account token and CA certificates.
pub const DEFAULT_SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The user name the token logs in as (OpenShift's registry ignores it; upstream sends this).
pub const SERVICE_ACCOUNT_USER: &str = "serviceaccount";
/// Longest token file read (projected tokens are about 1 KiB).
const MAX_TOKEN_BYTES: u64 = 64 << 10;

/// Whether upstream logs in to `host` (`HOST[:PORT]`) with the service account.
pub(crate) fn is_cluster_registry(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    host.contains("openshift") || host.contains("svc.cluster.local")
}

/// The directory's CA certificates that exist: `service-ca.crt` (OpenShift's service serving
/// CA, which signs the integrated registry's certificate) and `ca.crt` (the API server's CA,
/// which upstream's script trusts).
pub(crate) fn ca_files(dir: &Path) -> Vec<PathBuf> {
    ["service-ca.crt", "ca.crt"]
        .iter()
        .map(|name| dir.join(name))
        .filter(|path| path.is_file())
        .collect()
}

/// `serviceaccount` with the directory's token, or `None` when there is no token file or it is
/// empty. A token file that exists but cannot be read is an error.
pub(crate) fn login(dir: &Path) -> Result<Option<Credentials>> {
    let path = dir.join("token");
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io_error(&path, source)),
    };
    let mut token = String::new();
    file.take(MAX_TOKEN_BYTES + 1)
        .read_to_string(&mut token)
        .map_err(|source| io_error(&path, source))?;
    if token.len() as u64 > MAX_TOKEN_BYTES {
        return Err(TransportError::Oversized {
            what: format!("service-account token {}", path.display()),
            limit: MAX_TOKEN_BYTES,
        });
    }
    let token = token.trim();
    Ok((!token.is_empty()).then(|| Credentials::Basic {
        username: SERVICE_ACCOUNT_USER.to_owned(),
        password: token.to_owned(),
    }))
}

fn io_error(path: &Path, source: std::io::Error) -> TransportError {
    TransportError::Io {
        what: format!("service-account token {}", path.display()),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_registries_are_named_as_upstream_matches_them() {
        for host in [
            "image-registry.openshift-image-registry.svc:5000",
            "default-route-openshift-image-registry.apps.example.com",
            "registry.ns.svc.cluster.local:5000",
            "Registry.NS.SVC.Cluster.Local",
        ] {
            assert!(is_cluster_registry(host), "{host}");
        }
        for host in ["quay.io", "127.0.0.1:5000", "registry.svc:5000"] {
            assert!(!is_cluster_registry(host), "{host}");
        }
    }

    #[test]
    fn the_token_file_is_the_password_of_serviceaccount() {
        let dir = tempfile::tempdir().unwrap();
        assert!(login(dir.path()).unwrap().is_none());
        assert!(ca_files(dir.path()).is_empty());
        std::fs::write(dir.path().join("token"), " \n").unwrap();
        assert!(login(dir.path()).unwrap().is_none());
        std::fs::write(dir.path().join("token"), "eyJhbGc.sa-token.sig\n").unwrap();
        match login(dir.path()).unwrap() {
            Some(Credentials::Basic { username, password }) => {
                assert_eq!(username, "serviceaccount");
                assert_eq!(password, "eyJhbGc.sa-token.sig");
            }
            other => panic!("{other:?}"),
        }
        let shown = format!("{:?}", login(dir.path()).unwrap());
        assert!(!shown.contains("sa-token"), "{shown}");
        std::fs::write(dir.path().join("ca.crt"), "x").unwrap();
        std::fs::write(dir.path().join("service-ca.crt"), "x").unwrap();
        assert_eq!(
            ca_files(dir.path()),
            [dir.path().join("service-ca.crt"), dir.path().join("ca.crt")]
        );
        let huge = "t".repeat(MAX_TOKEN_BYTES as usize + 1);
        std::fs::write(dir.path().join("token"), huge).unwrap();
        assert!(matches!(
            login(dir.path()),
            Err(TransportError::Oversized { .. })
        ));
    }
}
