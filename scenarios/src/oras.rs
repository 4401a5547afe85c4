//! The Go `oras` CLI as upstream DWO's `workspace-recovery.sh` calls it, shared by the interop
//! tests and the benchmark's upstream peer so both run the same command lines.

use std::path::{Path, PathBuf};

/// `--artifact-type` of upstream's `oras push`.
pub const ARTIFACT_TYPE: &str = "application/vnd.devworkspace.backup.artifact.v1+json";

/// The tarball upstream writes in `/tmp` and pushes (its name is the layer title `oras pull`
/// writes back).
pub const ARCHIVE_NAME: &str = "devworkspace-backup.tar.gz";

/// The oras CLI at `$WSR_ORAS`, which `scripts/test.sh` sets to the one
/// `scenarios/cluster/build.sh` builds; `Err` says how to get it.
pub fn cli() -> Result<PathBuf, String> {
    let path = std::env::var_os("WSR_ORAS").map(PathBuf::from).ok_or(
        "WSR_ORAS is not set: build the oras CLI with scenarios/cluster/build.sh and set \
         WSR_ORAS=<the directory it prints>/oras (scripts/test.sh does both)",
    )?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "WSR_ORAS={} is not a file; run scenarios/cluster/build.sh",
            path.display()
        ))
    }
}

/// Upstream's backup push, run in the directory holding [`ARCHIVE_NAME`]:
/// `oras push REF --artifact-type … --annotation devworkspace.name=NAME --annotation
/// devworkspace.namespace=NS --disable-path-validation <ORAS_EXTRA_ARGS…> devworkspace-backup.tar.gz`.
pub fn push_args(reference: &str, name: &str, namespace: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["push", reference, "--artifact-type", ARTIFACT_TYPE]
        .map(String::from)
        .into();
    args.extend([
        "--annotation".into(),
        format!("devworkspace.name={name}"),
        "--annotation".into(),
        format!("devworkspace.namespace={namespace}"),
        "--disable-path-validation".into(),
    ]);
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push(ARCHIVE_NAME.into());
    args
}

/// Upstream's restore pull: `oras pull REF --output DIR <ORAS_EXTRA_ARGS…>`, which writes
/// `DIR/devworkspace-backup.tar.gz`.
pub fn pull_args(reference: &str, output: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "pull".into(),
        reference.into(),
        "--output".into(),
        output.display().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}
