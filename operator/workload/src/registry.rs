//! How a wsr container reaches the registry: the Secrets its pod mounts and the flags that
//! point the binary at them, built together so that a mount and its flag cannot disagree.
//! Shared by the backup, drill and restore Jobs.

use super::pod::SecretMount;

/// Where a login Secret (`.dockerconfigjson`) is mounted.
const AUTH_DIR: &str = "/tmp/.docker";
/// Where a CA Secret (`ca.crt`) is mounted.
const CA_DIR: &str = "/tmp/.ca";

/// The registry connection of a wsr Job's container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryAccess {
    pub plain_http: bool,
    pub insecure: bool,
    /// A `kubernetes.io/dockerconfigjson` Secret in the Job's namespace to log in with.
    pub auth_secret: Option<String>,
    /// A Secret in the Job's namespace whose `ca.crt` the container trusts.
    pub ca_secret: Option<String>,
}

impl RegistryAccess {
    /// The binary's flags: `--plain-http`, `--insecure`, `--ca-file`, `--auth-file`, as needed.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.plain_http {
            args.push("--plain-http".into());
        }
        if self.insecure {
            args.push("--insecure".into());
        }
        if self.ca_secret.is_some() {
            args.extend(["--ca-file".into(), format!("{CA_DIR}/ca.crt")]);
        }
        if self.auth_secret.is_some() {
            args.extend([
                "--auth-file".into(),
                format!("{AUTH_DIR}/.dockerconfigjson"),
            ]);
        }
        args
    }

    /// The Secrets the pod mounts (read-only, under the pod's `/tmp`) for those flags.
    pub fn secrets(&self) -> Vec<SecretMount> {
        let auth = self.auth_secret.iter().map(|secret| SecretMount {
            volume: "registry-auth-secret".into(),
            secret: secret.clone(),
            path: AUTH_DIR.into(),
        });
        let ca = self.ca_secret.iter().map(|secret| SecretMount {
            volume: "registry-ca".into(),
            secret: secret.clone(),
            path: CA_DIR.into(),
        });
        auth.chain(ca).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_flag_points_into_a_mounted_secret() {
        let access = RegistryAccess {
            plain_http: false,
            insecure: true,
            auth_secret: Some("pull".into()),
            ca_secret: Some("ca".into()),
        };
        let args = access.args();
        let secrets = access.secrets();
        for flag in ["--ca-file", "--auth-file"] {
            let at = args.iter().position(|a| a == flag).expect(flag);
            let file = &args[at + 1];
            assert!(
                secrets
                    .iter()
                    .any(|s| file.starts_with(&format!("{}/", s.path))),
                "{flag} {file} is not in a mounted Secret: {secrets:?}"
            );
        }
        assert_eq!(args[0], "--insecure");
        let names: Vec<_> = secrets.iter().map(|s| s.secret.as_str()).collect();
        assert_eq!(names, ["pull", "ca"]);
        assert!(RegistryAccess::default().args().is_empty());
        assert!(RegistryAccess::default().secrets().is_empty());
    }
}
