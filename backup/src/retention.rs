//! Retention (`--keep`): after a successful publish, the manifests of time-stamped tags beyond
//! the newest N are deleted.

use crate::BackupError;
use wsr_format::digest::Digest;
use wsr_format::media;
use wsr_format::reference::Target;
use wsr_transport::Store;

/// Deletes the manifests of time-stamped tags beyond the newest `keep`, never the one just
/// published (which the moving tag points at) nor one a kept tag shares.
pub(crate) async fn prune(
    store: &Store,
    keep: usize,
    current: &Digest,
) -> Result<Vec<String>, BackupError> {
    let mut stamps: Vec<String> = store
        .list_tags()
        .await?
        .into_iter()
        .filter(|t| media::is_timestamp_tag(t))
        .collect();
    stamps.sort_unstable_by(|a, b| b.cmp(a));
    let mut kept = vec![current.clone()];
    for tag in stamps.iter().take(keep) {
        kept.push(store.fetch_manifest(&Target::Tag(tag.clone())).await?.0);
    }
    let mut pruned = Vec::new();
    for tag in stamps.iter().skip(keep) {
        let digest = match store.fetch_manifest(&Target::Tag(tag.clone())).await {
            Ok((d, _)) => d,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        if kept.contains(&digest) {
            continue;
        }
        store.delete_manifest(&digest).await?;
        tracing::info!(%tag, %digest, "pruned");
        pruned.push(tag.clone());
    }
    Ok(pruned)
}
