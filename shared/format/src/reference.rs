//! Where an artifact lives: `HOST[:PORT]/PATH[:TAG|@DIGEST]` in a registry, or `oci:DIR[:TAG|@DIGEST]`
//! in an OCI image layout on disk; plus the DWO naming convention
//! `<registry path>/<namespace>/<workspace>:latest`.

use crate::digest::Digest;
use std::fmt;
use std::path::PathBuf;

/// Which manifest of a repository is meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A tag: the manifest it currently points at.
    Tag(String),
    /// A manifest digest: exactly that manifest.
    Digest(Digest),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tag(t) => write!(f, ":{t}"),
            Target::Digest(d) => write!(f, "@{d}"),
        }
    }
}

/// A repository: a place holding tagged manifests and their blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repository {
    /// `HOST[:PORT]/PATH` in an OCI distribution registry.
    Registry {
        /// `HOST[:PORT]`.
        host: String,
        /// The repository path below the host, without leading or trailing `/`.
        path: String,
    },
    /// An OCI image layout directory.
    Layout {
        /// The layout's root (holding `oci-layout` and `index.json`).
        dir: PathBuf,
    },
}

impl Repository {
    /// This repository with `target`.
    pub fn at(&self, target: Target) -> Reference {
        Reference {
            repository: self.clone(),
            target,
        }
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Repository::Registry { host, path } => write!(f, "{host}/{path}"),
            Repository::Layout { dir } => write!(f, "oci:{}", dir.display()),
        }
    }
}

/// A repository plus a tag or digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Where the manifest lives.
    pub repository: Repository,
    /// Which manifest.
    pub target: Target,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.repository, self.target)
    }
}

/// Why a reference did not parse; the message says what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid reference {input:?}: {reason}")]
pub struct InvalidReference {
    /// The text as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(input: &str, reason: impl Into<String>) -> InvalidReference {
    InvalidReference {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

impl std::str::FromStr for Reference {
    type Err = InvalidReference;

    /// Parses a reference. A missing tag means `latest`.
    fn from_str(input: &str) -> Result<Reference, InvalidReference> {
        if let Some(rest) = input.strip_prefix("oci:") {
            return parse_layout(input, rest);
        }
        let (name, target) = split_target(input)?;
        let (host, path) = split_host(input, name)?;
        Ok(Reference {
            repository: Repository::Registry { host, path },
            target,
        })
    }
}

/// Parses a *registry path*: the prefix under which DWO stores `<namespace>/<workspace>`
/// (`HOST[:PORT][/PREFIX]` or `oci:DIR`). Trailing slashes are trimmed, as upstream does.
pub fn parse_registry_path(input: &str) -> Result<Repository, InvalidReference> {
    let trimmed = input.trim_end_matches('/');
    if let Some(dir) = trimmed.strip_prefix("oci:") {
        if dir.is_empty() {
            return Err(invalid(input, "oci: needs a directory, e.g. oci:/backups"));
        }
        if dir.contains('@') {
            // References name a digest after '@', so such a directory could not be named.
            return Err(invalid(input, "an OCI layout directory cannot contain '@'"));
        }
        return Ok(Repository::Layout {
            dir: PathBuf::from(dir),
        });
    }
    if trimmed.contains('@')
        || trimmed
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':') && trimmed.contains('/'))
    {
        return Err(invalid(
            input,
            "a registry path has no tag or digest; give HOST[:PORT][/PREFIX]",
        ));
    }
    let (host, path) = match trimmed.split_once('/') {
        Some((host, path)) => (host, path),
        None => (trimmed, ""),
    };
    check_host(input, host)?;
    if !path.is_empty() {
        check_path(input, path)?;
    }
    Ok(Repository::Registry {
        host: host.to_owned(),
        path: path.to_owned(),
    })
}

/// The DWO convention: `<registry path>/<namespace>/<workspace>:latest`. For an OCI-layout
/// registry path the repository is the directory `<DIR>/<namespace>/<workspace>`.
pub fn workspace_reference(
    registry_path: &Repository,
    namespace: &str,
    workspace: &str,
) -> Result<Reference, InvalidReference> {
    for (what, value) in [("namespace", namespace), ("workspace name", workspace)] {
        if !is_path_component(value) {
            return Err(invalid(
                value,
                format!(
                    "{what} must be lowercase letters, digits and single '.', '_' or '-' separators"
                ),
            ));
        }
    }
    let repository = match registry_path {
        Repository::Registry { host, path } => {
            let path = if path.is_empty() {
                format!("{namespace}/{workspace}")
            } else {
                format!("{path}/{namespace}/{workspace}")
            };
            // Each part is valid alone; together they may exceed the length limit, and a
            // reference that does not parse back would fail later, inside a Job.
            check_path(&path, &path)?;
            Repository::Registry {
                host: host.clone(),
                path,
            }
        }
        Repository::Layout { dir } => Repository::Layout {
            dir: dir.join(namespace).join(workspace),
        },
    };
    Ok(repository.at(Target::Tag(crate::media::LATEST_TAG.to_owned())))
}

fn parse_layout(input: &str, rest: &str) -> Result<Reference, InvalidReference> {
    let (dir, target) = if let Some((dir, digest)) = rest.rsplit_once('@') {
        let digest = digest
            .parse()
            .map_err(|e: crate::digest::InvalidDigest| invalid(input, e.to_string()))?;
        (dir, Target::Digest(digest))
    } else {
        match rest.rsplit_once(':') {
            // A colon followed by a valid tag (no '/') separates the tag; otherwise it is part of the path.
            Some((dir, tag)) if is_tag(tag) => (dir, Target::Tag(tag.to_owned())),
            _ => (rest, Target::Tag(crate::media::LATEST_TAG.to_owned())),
        }
    };
    if dir.is_empty() {
        return Err(invalid(
            input,
            "oci: needs a directory, e.g. oci:./backup:latest",
        ));
    }
    Ok(Reference {
        repository: Repository::Layout {
            dir: PathBuf::from(dir),
        },
        target,
    })
}

fn split_target(input: &str) -> Result<(&str, Target), InvalidReference> {
    if let Some((name, digest)) = input.split_once('@') {
        let digest = digest
            .parse()
            .map_err(|e: crate::digest::InvalidDigest| invalid(input, e.to_string()))?;
        return Ok((name, Target::Digest(digest)));
    }
    // The tag separator is a colon after the last slash (a colon before it is the port).
    let last_slash = input.rfind('/').unwrap_or(0);
    match input[last_slash..].rfind(':') {
        Some(i) if last_slash > 0 => {
            let (name, tag) = (&input[..last_slash + i], &input[last_slash + i + 1..]);
            if !is_tag(tag) {
                return Err(invalid(
                    input,
                    format!("tag {tag:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"),
                ));
            }
            Ok((name, Target::Tag(tag.to_owned())))
        }
        _ => Ok((input, Target::Tag(crate::media::LATEST_TAG.to_owned()))),
    }
}

fn split_host(input: &str, name: &str) -> Result<(String, String), InvalidReference> {
    let Some((host, path)) = name.split_once('/') else {
        return Err(invalid(
            input,
            "expected HOST[:PORT]/PATH[:TAG|@DIGEST] (e.g. quay.io/org/ns/ws:latest) or oci:DIR[:TAG]",
        ));
    };
    check_host(input, host)?;
    check_path(input, path)?;
    Ok((host.to_owned(), path.to_owned()))
}

fn check_host(input: &str, host: &str) -> Result<(), InvalidReference> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(']') || host.starts_with('[') => (name, Some(port)),
        _ => (host, None),
    };
    let name_ok = !name.is_empty()
        && (name.starts_with('[') && name.ends_with(']')
            || name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            }));
    if !name_ok {
        return Err(invalid(
            input,
            format!("registry host {host:?} is not a valid host name"),
        ));
    }
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(invalid(
            input,
            format!("port {port:?} must be a number from 1 to 65535"),
        ));
    }
    Ok(())
}

fn check_path(input: &str, path: &str) -> Result<(), InvalidReference> {
    if path.is_empty() {
        return Err(invalid(input, "repository path is empty"));
    }
    for component in path.split('/') {
        if !is_path_component(component) {
            return Err(invalid(
                input,
                format!(
                    "repository path component {component:?} must be lowercase letters and digits, \
                     separated by single '.', '_', '__' or runs of '-'"
                ),
            ));
        }
    }
    if path.len() > 255 {
        return Err(invalid(
            input,
            "repository path is longer than 255 characters",
        ));
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` from the distribution spec.
fn is_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(host: &str, path: &str, target: Target) -> Reference {
        Reference {
            repository: Repository::Registry {
                host: host.into(),
                path: path.into(),
            },
            target,
        }
    }
    fn tag(t: &str) -> Target {
        Target::Tag(t.into())
    }

    #[test]
    fn good_references() {
        let d = format!("sha256:{}", "0".repeat(64));
        let cases: Vec<(String, Reference)> = vec![
            (
                "quay.io/org/ns/ws:latest".into(),
                reg("quay.io", "org/ns/ws", tag("latest")),
            ),
            (
                "quay.io/org/ws".into(),
                reg("quay.io", "org/ws", tag("latest")),
            ),
            (
                "127.0.0.1:5000/ns/ws:v1.2_3-x".into(),
                reg("127.0.0.1:5000", "ns/ws", tag("v1.2_3-x")),
            ),
            (
                "localhost:5000/a".into(),
                reg("localhost:5000", "a", tag("latest")),
            ),
            (
                "image-registry.openshift-image-registry.svc:5000/ns/ws:latest".into(),
                reg(
                    "image-registry.openshift-image-registry.svc:5000",
                    "ns/ws",
                    tag("latest"),
                ),
            ),
            (
                format!("r.io/a/b@{d}"),
                reg("r.io", "a/b", Target::Digest(d.parse().unwrap())),
            ),
            (
                "r.io/a__b/c--d/e.f".into(),
                reg("r.io", "a__b/c--d/e.f", tag("latest")),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Reference>(), Ok(want), "{input}");
        }
        assert_eq!(
            "oci:/tmp/x:v1".parse::<Reference>().unwrap(),
            Repository::Layout {
                dir: "/tmp/x".into()
            }
            .at(tag("v1"))
        );
        assert_eq!(
            "oci:rel/dir".parse::<Reference>().unwrap(),
            Repository::Layout {
                dir: "rel/dir".into()
            }
            .at(tag("latest"))
        );
        assert_eq!(
            format!("oci:/a:b/c@{d}").parse::<Reference>().unwrap(),
            Repository::Layout {
                dir: "/a:b/c".into()
            }
            .at(Target::Digest(d.parse().unwrap()))
        );
        // Round trip through Display.
        for s in [
            "quay.io/org/ns/ws:latest",
            "127.0.0.1:5000/ns/ws:x",
            "oci:/tmp/x:v1",
        ] {
            assert_eq!(s.parse::<Reference>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        let cases = [
            ("ws", "expected HOST[:PORT]/PATH"),
            ("", "expected HOST[:PORT]/PATH"),
            ("quay.io/", "repository path is empty"),
            ("quay.io/Org/ws", "must be lowercase"),
            ("quay.io/a//b", "must be lowercase"),
            ("quay.io/a/b:", "tag \"\""),
            ("quay.io/a/b:-x", "tag \"-x\""),
            ("quay.io/a/b@sha256:xyz", "invalid digest"),
            ("quay.io:99999/a", "port \"99999\""),
            ("quay..io/a", "not a valid host name"),
            ("-bad.io/a", "not a valid host name"),
            ("oci:", "needs a directory"),
            ("quay.io/a-/b", "must be lowercase"),
            ("quay.io/a/e..f", "must be lowercase"),
        ];
        for (input, want) in cases {
            let err = input.parse::<Reference>().expect_err(input).to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    /// Found by `fuzz/fuzz_targets/reference.rs` (fuzz/regressions/reference/): a layout
    /// registry path with '@' gave workspace references that did not parse back, so a Job
    /// passed such a reference as text would fail.
    #[test]
    fn every_workspace_reference_parses_back() {
        let err = parse_registry_path("oci:/backups@2026").expect_err("'@' in a layout dir");
        assert!(err.to_string().contains("cannot contain '@'"), "{err}");
        for path in [
            "oci:/b",
            "oci:/b:c",
            "oci:./x:1",
            "quay.io/org",
            "127.0.0.1:5000",
        ] {
            let repo = parse_registry_path(path).unwrap();
            let r = workspace_reference(&repo, "n", "w").unwrap();
            assert_eq!(r.to_string().parse::<Reference>().unwrap(), r, "{path}");
        }
    }

    #[test]
    fn dwo_convention_trims_trailing_slashes() {
        for path in ["quay.io/org", "quay.io/org/", "quay.io/org//"] {
            let repo = parse_registry_path(path).unwrap();
            let r = workspace_reference(&repo, "user-ns", "my-ws").unwrap();
            assert_eq!(r.to_string(), "quay.io/org/user-ns/my-ws:latest");
        }
        let bare = parse_registry_path("127.0.0.1:5000").unwrap();
        assert_eq!(
            workspace_reference(&bare, "n", "w").unwrap().to_string(),
            "127.0.0.1:5000/n/w:latest"
        );
        let layout = parse_registry_path("oci:/b/").unwrap();
        assert_eq!(
            workspace_reference(&layout, "n", "w").unwrap().to_string(),
            "oci:/b/n/w:latest"
        );
        assert!(workspace_reference(&bare, "N", "w").is_err());
        assert!(workspace_reference(&bare, "n", "a/b").is_err());
        let long = "p".repeat(200);
        let deep = parse_registry_path(&format!("quay.io/{long}")).unwrap();
        let too_long = workspace_reference(&deep, "user-ns", &long).unwrap_err();
        assert!(
            too_long.to_string().contains("longer than 255"),
            "{too_long}"
        );
        assert!(parse_registry_path("quay.io/org/ws:latest").is_err());
        assert!(parse_registry_path("Quay.io!/x").is_err());
    }
}
