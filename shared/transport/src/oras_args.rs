//! Upstream's `ORAS_EXTRA_ARGS`: the oras flags a DWO admin appends to `oras push` and `oras
//! pull` (DWOC `config.workspace.backupCronJob.oras.extraArgs`), read into [`ConnectOptions`].
//!
//! Words are split as a POSIX shell splits them, quotes honoured (upstream's bash splits the
//! unquoted variable without honouring quotes, so a quoted value only works here). Flags with a
//! meaning for a connection are applied; flags that only change oras' output are accepted and
//! reported back for logging; flags that would change the artifact, or cannot work in a Job,
//! are refused by name. The table in README.md lists them all.

use crate::{ClientCert, ConnectOptions, Credentials, RequestHeader, Resolve};
use std::net::IpAddr;
use std::path::PathBuf;

/// `ORAS_EXTRA_ARGS` does not describe a connection wsr can make. The message names the flag.
#[derive(Debug, thiserror::Error)]
#[error("ORAS_EXTRA_ARGS: {0}")]
pub struct OrasArgsError(String);

/// What one oras flag means to wsr.
#[derive(Clone, Copy)]
enum Meaning {
    /// A boolean applied to the connection.
    Switch(fn(&mut ConnectOptions, bool)),
    /// A flag with a value applied to the connection.
    Set(fn(&mut Parsed, String)),
    /// A flag with a value applied to the connection once it is checked.
    Check(fn(&mut Parsed, String) -> Result<(), OrasArgsError>),
    /// A boolean that only changes oras' own output or local files.
    IgnoredSwitch,
    /// A flag with a value that only changes oras' own output.
    IgnoredValue,
    /// Cannot work, or would make an artifact upstream's restore does not read; why.
    Refused {
        takes_value: bool,
        why: &'static str,
    },
}

/// The oras 1.3 `push` and `pull` flags: (long name, short name, meaning).
const FLAGS: &[(&str, Option<char>, Meaning)] = {
    use Meaning::*;
    &[
        ("insecure", None, Switch(|o, on| o.insecure = on)),
        ("plain-http", None, Switch(|o, on| o.plain_http = on)),
        (
            "ca-file",
            None,
            Set(|p, v| p.options.ca_file = Some(v.into())),
        ),
        ("cert-file", None, Set(|p, v| p.cert_file = Some(v.into()))),
        ("key-file", None, Set(|p, v| p.key_file = Some(v.into()))),
        (
            "registry-config",
            None,
            Set(|p, v| p.options.auth_file = Some(v.into())),
        ),
        ("username", Some('u'), Set(|p, v| p.username = Some(v))),
        ("password", Some('p'), Set(|p, v| p.password = Some(v))),
        ("identity-token", None, Set(|p, v| p.token = Some(v))),
        (
            "resolve",
            None,
            Check(|p, v| parse_resolve(&v).map(|r| p.options.resolve.push(r))),
        ),
        (
            "header",
            Some('H'),
            Check(|p, v| parse_header(&v).map(|h| p.options.headers.push(h))),
        ),
        ("concurrency", None, IgnoredValue),
        ("format", None, IgnoredValue),
        ("template", None, IgnoredValue),
        ("debug", Some('d'), IgnoredSwitch),
        ("verbose", Some('v'), IgnoredSwitch),
        ("no-tty", None, IgnoredSwitch),
        ("disable-path-validation", None, IgnoredSwitch),
        ("force", None, IgnoredSwitch),
        ("include-subject", None, IgnoredSwitch),
        ("keep-old-files", Some('k'), IgnoredSwitch),
        ("allow-path-traversal", Some('T'), IgnoredSwitch),
        (
            "image-spec",
            None,
            Check(|_, v| match v.as_str() {
                "v1.1" => Ok(()),
                _ => Err(OrasArgsError(format!(
                    "--image-spec {v:?}: wsr writes image-spec v1.1 manifests, as oras does by default"
                ))),
            }),
        ),
        (
            "artifact-type",
            None,
            Refused {
                takes_value: true,
                why: "wsr sets upstream's artifact type; another would not be restored",
            },
        ),
        (
            "annotation",
            Some('a'),
            Refused {
                takes_value: true,
                why: "wsr writes upstream's manifest annotations",
            },
        ),
        (
            "annotation-file",
            None,
            Refused {
                takes_value: true,
                why: "wsr writes upstream's manifest annotations",
            },
        ),
        (
            "config",
            None,
            Refused {
                takes_value: true,
                why: "wsr writes the artifact's config itself",
            },
        ),
        (
            "export-manifest",
            None,
            Refused {
                takes_value: true,
                why: "wsr does not write the manifest to a file",
            },
        ),
        (
            "output",
            Some('o'),
            Refused {
                takes_value: true,
                why: "the restore target is PROJECTS_ROOT",
            },
        ),
        (
            "oci-layout",
            None,
            Refused {
                takes_value: false,
                why: "the destination comes from DEVWORKSPACE_BACKUP_REGISTRY / BACKUP_IMAGE",
            },
        ),
        (
            "oci-layout-path",
            None,
            Refused {
                takes_value: true,
                why: "the destination comes from DEVWORKSPACE_BACKUP_REGISTRY / BACKUP_IMAGE",
            },
        ),
        (
            "platform",
            None,
            Refused {
                takes_value: true,
                why: "backups are platform-independent artifacts",
            },
        ),
        (
            "artifact-platform",
            None,
            Refused {
                takes_value: true,
                why: "backups are platform-independent artifacts",
            },
        ),
        (
            "password-stdin",
            None,
            Refused {
                takes_value: false,
                why: "a Job has no stdin; put the credentials in REGISTRY_AUTH_FILE",
            },
        ),
        (
            "identity-token-stdin",
            None,
            Refused {
                takes_value: false,
                why: "a Job has no stdin; put the token in REGISTRY_AUTH_FILE",
            },
        ),
        (
            "help",
            Some('h'),
            Refused {
                takes_value: false,
                why: "it would only print oras' help",
            },
        ),
    ]
};

/// Options being built, with the pieces that are only complete in pairs.
struct Parsed<'a> {
    options: &'a mut ConnectOptions,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
}

/// Splits `extra` as a shell would and applies each flag to `options`. Returns the flags that
/// were accepted without effect (names only, never values), for the caller to log.
pub fn apply_oras_extra_args(
    options: &mut ConnectOptions,
    extra: &str,
) -> Result<Vec<String>, OrasArgsError> {
    let words = shlex::split(extra)
        .ok_or_else(|| OrasArgsError("unbalanced quotes or a trailing backslash".into()))?;
    let mut parsed = Parsed {
        options,
        cert_file: None,
        key_file: None,
        username: None,
        password: None,
        token: None,
    };
    let mut ignored = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let (name, inline) = split_flag(&word)?;
        let (long, short, meaning) = FLAGS
            .iter()
            .find(|(long, short, _)| match &name {
                FlagName::Long(n) => n == long,
                FlagName::Short(c) => Some(*c) == *short,
            })
            .ok_or_else(|| {
                OrasArgsError(format!(
                    "unknown oras flag {word:?}; see the ORAS_EXTRA_ARGS table in README.md"
                ))
            })?;
        let shown = match short {
            Some(c) if matches!(name, FlagName::Short(_)) => format!("-{c}"),
            _ => format!("--{long}"),
        };
        let mut value = || -> Result<String, OrasArgsError> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => words
                    .next()
                    .ok_or_else(|| OrasArgsError(format!("{shown} needs a value"))),
            }
        };
        match *meaning {
            Meaning::Switch(apply) => apply(parsed.options, switch_value(&shown, &inline)?),
            Meaning::Set(apply) => apply(&mut parsed, value()?),
            Meaning::Check(apply) => apply(&mut parsed, value()?)?,
            Meaning::IgnoredSwitch => {
                switch_value(&shown, &inline)?;
                ignored.push(shown);
            }
            Meaning::IgnoredValue => {
                value()?;
                ignored.push(shown);
            }
            Meaning::Refused { takes_value, why } => {
                if takes_value {
                    value()?;
                }
                return Err(OrasArgsError(format!("{shown} is not supported: {why}")));
            }
        }
    }
    parsed.finish()?;
    Ok(ignored)
}

impl Parsed<'_> {
    /// Checks and stores the flags that only make sense together.
    fn finish(self) -> Result<(), OrasArgsError> {
        match (self.cert_file, self.key_file) {
            (Some(cert), Some(key)) => self.options.client_cert = Some(ClientCert { cert, key }),
            (None, None) => {}
            _ => {
                return Err(OrasArgsError(
                    "--cert-file and --key-file must be given together".into(),
                ));
            }
        }
        self.options.credentials = match (self.username, self.password, self.token) {
            (None, None, None) => return Ok(()),
            (None, Some(token), None) | (None, None, Some(token)) => {
                Some(Credentials::Token(token))
            }
            (Some(username), Some(password), None) => {
                Some(Credentials::Basic { username, password })
            }
            (Some(_), None, None) => {
                return Err(OrasArgsError(
                    "--username needs --password (oras would prompt for it; a Job cannot answer)"
                        .into(),
                ));
            }
            _ => {
                return Err(OrasArgsError(
                    "give either --username with --password or --identity-token, not both".into(),
                ));
            }
        };
        Ok(())
    }
}

enum FlagName {
    Long(String),
    Short(char),
}

/// `--name`, `--name=value`, `-x`, `-x=value` or `-xvalue`. Anything else is a positional
/// argument, which oras would take as a file to push.
fn split_flag(word: &str) -> Result<(FlagName, Option<String>), OrasArgsError> {
    if let Some(rest) = word.strip_prefix("--").filter(|r| !r.is_empty()) {
        return Ok(match rest.split_once('=') {
            Some((name, value)) => (FlagName::Long(name.into()), Some(value.into())),
            None => (FlagName::Long(rest.into()), None),
        });
    }
    let mut chars = word.strip_prefix('-').unwrap_or_default().chars();
    match chars.next() {
        Some(c) if c != '-' => {
            let rest = chars.as_str();
            let value = rest.strip_prefix('=').unwrap_or(rest);
            Ok((FlagName::Short(c), (!rest.is_empty()).then(|| value.into())))
        }
        _ => Err(OrasArgsError(format!(
            "{word:?} is not a flag; oras would push it as a file, wsr backs up BACKUP_SOURCE_PATH"
        ))),
    }
}

/// The value of a boolean flag: bare means true; `=true`/`=false` as Go's strconv.ParseBool.
fn switch_value(shown: &str, inline: &Option<String>) -> Result<bool, OrasArgsError> {
    match inline.as_deref() {
        None | Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(OrasArgsError(format!(
            "{shown}={other:?}: expected true or false"
        ))),
    }
}

/// `host:port:address[:address_port]`, as oras and curl take it.
fn parse_resolve(spec: &str) -> Result<Resolve, OrasArgsError> {
    let bad = |why: &str| OrasArgsError(format!("--resolve {spec:?}: {why}"));
    let mut parts = spec.splitn(3, ':');
    let (Some(host), Some(port), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("expected host:port:address[:address_port]"));
    };
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
    let (address, address_port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (address, tail) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in the address"))?;
            (address, tail.strip_prefix(':'))
        }
        None => match rest.split_once(':') {
            Some((a, p)) if !a.contains(':') => (a, Some(p)),
            _ => (rest, None),
        },
    };
    let address: IpAddr = address
        .parse()
        .map_err(|_| bad("the address is not an IP address"))?;
    if let Some(p) = address_port {
        let p: u16 = p
            .parse()
            .map_err(|_| bad("the address port is not a number"))?;
        if p != port {
            return Err(bad(
                "a different address port is not supported; wsr connects to the registry's own port",
            ));
        }
    }
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    Ok(Resolve {
        host: host.to_owned(),
        port,
        address,
    })
}

/// `Name: value`, as oras' `--header`.
fn parse_header(spec: &str) -> Result<RequestHeader, OrasArgsError> {
    let (name, value) = spec
        .split_once(':')
        .ok_or_else(|| OrasArgsError("--header: expected \"Name: value\"".into()))?;
    let name = name.trim();
    let value = value.trim();
    let valid = reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
        && reqwest::header::HeaderValue::from_str(value).is_ok();
    if !valid {
        return Err(OrasArgsError(format!(
            "--header: {name:?} is not a valid header"
        )));
    }
    Ok(RequestHeader {
        name: name.to_owned(),
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn apply(extra: &str) -> Result<(ConnectOptions, Vec<String>), OrasArgsError> {
        let mut o = ConnectOptions::default();
        let ignored = apply_oras_extra_args(&mut o, extra)?;
        Ok((o, ignored))
    }

    fn error(extra: &str) -> String {
        apply(extra).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn connection_flags_are_applied_in_every_form() {
        let (o, ignored) = apply(
            "  --insecure --plain-http --ca-file /c.pem --cert-file=/t.crt --key-file /t.key \
             --registry-config '/auth dir/config.json' --resolve reg.example:5000:127.0.0.1 \
             -H 'X-Trace: a b'",
        )
        .unwrap();
        assert!(o.insecure && o.plain_http && ignored.is_empty());
        assert_eq!(o.ca_file.as_deref(), Some(Path::new("/c.pem")));
        let cert = o.client_cert.unwrap();
        assert_eq!(
            (cert.cert.to_str(), cert.key.to_str()),
            (Some("/t.crt"), Some("/t.key"))
        );
        assert_eq!(
            o.auth_file.as_deref(),
            Some(Path::new("/auth dir/config.json"))
        );
        assert_eq!(o.resolve.len(), 1);
        assert_eq!(
            (
                o.resolve[0].host.as_str(),
                o.resolve[0].port,
                o.resolve[0].address.to_string()
            ),
            ("reg.example", 5000, "127.0.0.1".into())
        );
        assert_eq!(
            (o.headers[0].name.as_str(), o.headers[0].value.as_str()),
            ("X-Trace", "a b")
        );

        let (o, _) = apply("--insecure=true --plain-http=false --ca-file=/x").unwrap();
        assert!(o.insecure && !o.plain_http);
        assert_eq!(o.ca_file.as_deref(), Some(Path::new("/x")));
        let (o, _) = apply("--insecure=0").unwrap();
        assert!(!o.insecure);
        assert!(apply("").unwrap().1.is_empty());
    }

    #[test]
    fn credentials_come_in_pairs_and_are_never_shown() {
        let (o, _) = apply("-u tester --password 's3 cret'").unwrap();
        match o.credentials {
            Some(Credentials::Basic { username, password }) => {
                assert_eq!(
                    (username.as_str(), password.as_str()),
                    ("tester", "s3 cret")
                )
            }
            other => panic!("{other:?}"),
        }
        let (o, _) = apply("--identity-token=tok").unwrap();
        assert!(matches!(&o.credentials, Some(Credentials::Token(t)) if t == "tok"));
        assert!(!format!("{o:?}").contains("tok\""));
        assert!(error("--username tester").contains("--password"));
        assert!(error("-u a -p b --identity-token c").contains("not both"));
        let err = error("-u a -p hunter2 --debug=maybe");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(error("--cert-file /c").contains("together"));
    }

    #[test]
    fn harmless_flags_are_accepted_and_reported_by_name() {
        let (o, ignored) = apply(
            "--concurrency 3 --verbose -d --debug=false --no-tty --disable-path-validation \
             --format=json --image-spec v1.1 -k",
        )
        .unwrap();
        assert_eq!(
            ignored,
            [
                "--concurrency",
                "--verbose",
                "-d",
                "--debug",
                "--no-tty",
                "--disable-path-validation",
                "--format",
                "-k"
            ]
        );
        assert!(!o.insecure);
    }

    #[test]
    fn what_cannot_work_is_refused_by_name() {
        for (extra, named) in [
            ("--artifact-type x/y", "--artifact-type"),
            ("-a k=v", "-a"),
            ("--oci-layout", "--oci-layout"),
            ("--password-stdin", "--password-stdin"),
            ("--image-spec v1.0", "--image-spec"),
            ("--frobnicate", "--frobnicate"),
            ("--insecure extra.tar.gz", "extra.tar.gz"),
            ("--ca-file", "--ca-file needs a value"),
            ("--insecure=maybe", "--insecure"),
            ("--resolve reg:5000", "--resolve"),
            ("--resolve reg:5000:127.0.0.1:6000", "address port"),
            ("--resolve reg:5000:not-an-ip", "IP address"),
            ("-H NoColon", "--header"),
            ("--ca-file 'unbalanced", "quotes"),
        ] {
            let err = error(extra);
            assert!(err.contains(named), "{extra}: {err}");
            assert!(err.starts_with("ORAS_EXTRA_ARGS: "), "{err}");
        }
    }

    #[test]
    fn resolve_takes_ipv6_and_a_matching_address_port() {
        let (o, _) = apply("--resolve reg:443:[::1]:443 --resolve other:80:10.0.0.1:80").unwrap();
        assert_eq!(o.resolve[0].address.to_string(), "::1");
        assert_eq!(o.resolve[1].address.to_string(), "10.0.0.1");
    }
}
