//! Pod volumes as host directories: a bound PVC is its hostPath PV's directory; secret,
//! configMap, downwardAPI and projected volumes are files written under the pod's directory
//! (mounted read-only, as the kubelet does); emptyDir is a fresh directory. `fsGroup` is
//! applied to every writable volume the way the kubelet applies it to volumes that support
//! ownership management (block devices, most CSI drivers): group set, group rw, setgid dirs.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod,
    ServiceAccount, Volume,
};
use kube::Api;
use kube::api::PostParams;

use super::spec::{self, Mount, ObjectData};
use super::status::POD_IP;

/// Why volumes could not be set up: `Retry` is what the kubelet keeps retrying (a missing
/// Secret, an unbound claim); `Fatal` cannot get better.
#[derive(Debug)]
pub enum VolumeError {
    Retry(String),
    Fatal(String),
}

impl VolumeError {
    fn io(what: &Path, e: std::io::Error) -> VolumeError {
        VolumeError::Fatal(format!("{}: {e}", what.display()))
    }
}

/// One volume on the host.
#[derive(Debug, Clone)]
pub struct HostVolume {
    pub path: PathBuf,
    /// Read-only whatever the mount says (API data volumes, read-only claims).
    pub read_only: bool,
}

pub type Volumes = BTreeMap<String, HostVolume>;

/// Sets up every volume of `pod` under `pod_dir`.
pub async fn prepare(
    client: &kube::Client,
    pod: &Pod,
    pod_dir: &Path,
    data: &ObjectData,
) -> Result<Volumes, VolumeError> {
    let spec = pod.spec.as_ref().expect("pods have a spec");
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let fs_group = spec.security_context.as_ref().and_then(|s| s.fs_group);
    let on_root_mismatch = spec
        .security_context
        .as_ref()
        .and_then(|s| s.fs_group_change_policy.as_deref())
        == Some("OnRootMismatch");
    let mut volumes = Volumes::new();
    for v in spec.volumes.iter().flatten() {
        let dir = pod_dir.join("volumes").join(&v.name);
        let volume = if let Some(claim) = &v.persistent_volume_claim {
            let path = claim_path(client, &ns, &claim.claim_name).await?;
            let read_only = claim.read_only == Some(true);
            if let (Some(gid), false) = (fs_group, read_only) {
                apply_fs_group(&path, gid as u32, on_root_mismatch)
                    .map_err(|e| VolumeError::io(&path, e))?;
            }
            HostVolume { path, read_only }
        } else if v.empty_dir.is_some() {
            fs::create_dir_all(&dir).map_err(|e| VolumeError::io(&dir, e))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))
                .map_err(|e| VolumeError::io(&dir, e))?;
            if let Some(gid) = fs_group {
                apply_fs_group(&dir, gid as u32, false).map_err(|e| VolumeError::io(&dir, e))?;
            }
            HostVolume {
                path: dir,
                read_only: false,
            }
        } else {
            let files = api_files(client, pod, v, data).await?;
            write_files(&dir, &files, fs_group).map_err(|e| VolumeError::io(&dir, e))?;
            HostVolume {
                path: dir,
                read_only: true,
            }
        };
        volumes.insert(v.name.clone(), volume);
    }
    Ok(volumes)
}

/// The host directory of a bound claim: its PV's `hostPath`.
async fn claim_path(client: &kube::Client, ns: &str, claim: &str) -> Result<PathBuf, VolumeError> {
    let api_error = |e: kube::Error| VolumeError::Retry(e.to_string());
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get_opt(claim)
        .await
        .map_err(api_error)?
        .ok_or_else(|| {
            VolumeError::Retry(format!("persistentvolumeclaim \"{claim}\" not found"))
        })?;
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let Some(pv_name) = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|_| bound)
    else {
        return Err(VolumeError::Retry(format!(
            "persistentvolumeclaim \"{claim}\" is not bound"
        )));
    };
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv_name)
        .await
        .map_err(api_error)?;
    let path = pv
        .spec
        .and_then(|s| s.host_path)
        .map(|h| PathBuf::from(h.path))
        .ok_or_else(|| {
            VolumeError::Fatal(format!(
                "persistentvolume \"{pv_name}\" is not a hostPath volume"
            ))
        })?;
    fs::create_dir_all(&path).map_err(|e| VolumeError::io(&path, e))?;
    Ok(path)
}

/// A file of an API data volume: relative path, content, mode.
type File = (String, Vec<u8>, u32);

fn key_files(
    kind: &str,
    name: &str,
    values: Option<&BTreeMap<String, Vec<u8>>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    optional: bool,
) -> Result<Vec<File>, VolumeError> {
    let Some(values) = values else {
        return if optional {
            Ok(Vec::new())
        } else {
            Err(VolumeError::Retry(format!("{kind} \"{name}\" not found")))
        };
    };
    match items {
        None => Ok(values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), default_mode))
            .collect()),
        Some(items) => items
            .iter()
            .filter_map(|item| match values.get(&item.key) {
                Some(v) => Some(Ok((
                    item.path.clone(),
                    v.clone(),
                    item.mode.map_or(default_mode, |m| m as u32),
                ))),
                None if optional => None,
                None => Some(Err(VolumeError::Retry(format!(
                    "couldn't find key {} in {kind} {name}",
                    item.key
                )))),
            })
            .collect(),
    }
}

fn downward_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
) -> Result<Vec<File>, VolumeError> {
    items
        .iter()
        .map(|item| {
            let field = item.field_ref.as_ref().ok_or_else(|| {
                VolumeError::Fatal(format!(
                    "downwardAPI {}: only fieldRef is supported",
                    item.path
                ))
            })?;
            let map = |m: &Option<BTreeMap<String, String>>| {
                m.iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={v:?}\n"))
                    .collect::<String>()
            };
            let value = match field.field_path.as_str() {
                "metadata.labels" => map(&pod.metadata.labels),
                "metadata.annotations" => map(&pod.metadata.annotations),
                _ => spec::field_value(pod, field, POD_IP).map_err(VolumeError::Fatal)?,
            };
            Ok((
                item.path.clone(),
                value.into_bytes(),
                item.mode.map_or(default_mode, |m| m as u32),
            ))
        })
        .collect()
}

/// The files of a secret, configMap, downwardAPI or projected volume.
async fn api_files(
    client: &kube::Client,
    pod: &Pod,
    v: &Volume,
    data: &ObjectData,
) -> Result<Vec<File>, VolumeError> {
    let mode = |m: Option<i32>| m.map_or(0o644, |m| m as u32);
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        return key_files(
            "secret",
            &name,
            data.secrets.get(&name),
            s.items.as_ref(),
            mode(s.default_mode),
            s.optional == Some(true),
        );
    }
    if let Some(m) = &v.config_map {
        return key_files(
            "configmap",
            &m.name,
            data.config_maps.get(&m.name),
            m.items.as_ref(),
            mode(m.default_mode),
            m.optional == Some(true),
        );
    }
    if let Some(d) = &v.downward_api {
        return downward_files(
            pod,
            d.items.as_deref().unwrap_or_default(),
            mode(d.default_mode),
        );
    }
    let Some(projected) = &v.projected else {
        return Err(VolumeError::Fatal(format!(
            "volume {}: unsupported type",
            v.name
        )));
    };
    let default_mode = mode(projected.default_mode);
    let mut files = Vec::new();
    for source in projected.sources.iter().flatten() {
        if let Some(s) = &source.secret {
            files.extend(key_files(
                "secret",
                &s.name,
                data.secrets.get(&s.name),
                s.items.as_ref(),
                default_mode,
                s.optional == Some(true),
            )?);
        }
        if let Some(m) = &source.config_map {
            files.extend(key_files(
                "configmap",
                &m.name,
                data.config_maps.get(&m.name),
                m.items.as_ref(),
                default_mode,
                m.optional == Some(true),
            )?);
        }
        if let Some(d) = &source.downward_api {
            files.extend(downward_files(
                pod,
                d.items.as_deref().unwrap_or_default(),
                default_mode,
            )?);
        }
        if let Some(t) = &source.service_account_token {
            let token =
                service_account_token(client, pod, t.audience.clone(), t.expiration_seconds)
                    .await?;
            files.push((t.path.clone(), token.into_bytes(), default_mode));
        }
    }
    Ok(files)
}

/// A token for the pod's ServiceAccount, bound to the pod (the TokenRequest API, as the
/// kubelet uses it).
async fn service_account_token(
    client: &kube::Client,
    pod: &Pod,
    audience: Option<String>,
    expiration: Option<i64>,
) -> Result<String, VolumeError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(audience.into_iter().collect()),
            expiration_seconds: expiration.or(Some(3600)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..Default::default()
    };
    let answer = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create_token_request(&sa, &PostParams::default(), &request)
        .await
        .map_err(|e| VolumeError::Retry(format!("serviceaccount token for {sa}: {e}")))?;
    answer
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| VolumeError::Retry("TokenRequest answered without a token".into()))
}

fn write_files(dir: &Path, files: &[File], fs_group: Option<i64>) -> std::io::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for (rel, content, mode) in files {
        spec::check_sub_path(rel).map_err(std::io::Error::other)?;
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, content)?;
        let mut mode = *mode & 0o7777;
        if let Some(gid) = fs_group {
            lchown(&path, None, Some(gid as u32))?;
            mode |= 0o440;
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    if let Some(gid) = fs_group {
        lchown(dir, None, Some(gid as u32))?;
    }
    Ok(())
}

/// The kubelet's volume ownership change: group `gid`, group read/write, setgid directories.
/// With `on_root_mismatch`, nothing is done when the root already has them.
pub fn apply_fs_group(root: &Path, gid: u32, on_root_mismatch: bool) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let md = fs::symlink_metadata(root)?;
    if on_root_mismatch && md.gid() == gid && md.mode() & 0o2070 == 0o2070 {
        return Ok(());
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let md = fs::symlink_metadata(&path)?;
        lchown(&path, None, Some(gid))?;
        if md.file_type().is_symlink() {
            continue;
        }
        let mut mode = md.mode() & 0o7777;
        if md.is_dir() {
            mode |= 0o2070;
            for entry in fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        } else {
            mode |= 0o060;
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// A container's bind mounts; a missing subPath directory is created with its volume root's
/// mode, and a subPath that leaves the volume through a symlink is refused.
pub fn container_mounts(c: &Container, volumes: &Volumes) -> Result<Vec<Mount>, VolumeError> {
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let volume = volumes
            .get(&m.name)
            .ok_or_else(|| VolumeError::Fatal(format!("volumeMount {}: no such volume", m.name)))?;
        let mut source = volume.path.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            spec::check_sub_path(sub).map_err(VolumeError::Fatal)?;
            source = volume.path.join(sub);
            if !source.exists() && !volume.read_only {
                let root_mode =
                    fs::metadata(&volume.path).map_err(|e| VolumeError::io(&volume.path, e))?;
                fs::create_dir_all(&source).map_err(|e| VolumeError::io(&source, e))?;
                fs::set_permissions(
                    &source,
                    fs::Permissions::from_mode(root_mode.permissions().mode() & 0o7777),
                )
                .map_err(|e| VolumeError::io(&source, e))?;
            }
            let real = source
                .canonicalize()
                .map_err(|e| VolumeError::io(&source, e))?;
            let root = volume
                .path
                .canonicalize()
                .map_err(|e| VolumeError::io(&volume.path, e))?;
            if !real.starts_with(&root) {
                return Err(VolumeError::Fatal(format!(
                    "subPath {sub:?} leaves volume {}",
                    m.name
                )));
            }
        }
        mounts.push(Mount {
            source,
            target: m.mount_path.clone(),
            read_only: volume.read_only || m.read_only == Some(true),
        });
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, symlink};

    #[test]
    fn fs_group_sets_group_and_setgid() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("v");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/f"), b"x").unwrap();
        fs::set_permissions(root.join("a/b/f"), fs::Permissions::from_mode(0o600)).unwrap();
        symlink("/etc/passwd", root.join("link")).unwrap();
        apply_fs_group(&root, 4321, false).unwrap();
        let md = fs::metadata(root.join("a/b/f")).unwrap();
        assert_eq!((md.gid(), md.mode() & 0o7777), (4321, 0o660));
        let md = fs::metadata(root.join("a")).unwrap();
        assert_eq!(md.mode() & 0o2070, 0o2070);
        assert_eq!(fs::symlink_metadata(root.join("link")).unwrap().gid(), 4321);
        assert_ne!(
            fs::metadata("/etc/passwd").unwrap().gid(),
            4321,
            "symlink target untouched"
        );
    }

    #[test]
    fn mounts_create_sub_paths_and_refuse_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pvc");
        fs::create_dir_all(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o770)).unwrap();
        symlink("/etc", root.join("escape")).unwrap();
        let volumes = Volumes::from([
            (
                "data".to_string(),
                HostVolume {
                    path: root.clone(),
                    read_only: false,
                },
            ),
            (
                "secret".to_string(),
                HostVolume {
                    path: dir.path().join("s"),
                    read_only: true,
                },
            ),
        ]);
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "volumeMounts": [
                {"name": "data", "mountPath": "/projects", "subPath": "ws1/projects"},
                {"name": "data", "mountPath": "/workspace", "readOnly": true},
                {"name": "secret", "mountPath": "/tmp/.docker"}
            ]
        }))
        .unwrap();
        let mounts = container_mounts(&c, &volumes).unwrap();
        assert_eq!(mounts[0].source, root.join("ws1/projects"));
        assert!(!mounts[0].read_only);
        assert_eq!(
            fs::metadata(root.join("ws1/projects")).unwrap().mode() & 0o777,
            0o770
        );
        assert!(mounts[1].read_only && mounts[2].read_only);

        let bad: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "volumeMounts": [{"name": "data", "mountPath": "/x", "subPath": "escape"}]
        }))
        .unwrap();
        match container_mounts(&bad, &volumes) {
            Err(VolumeError::Fatal(m)) => assert!(m.contains("leaves volume"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn secret_files_honour_items_modes_and_fs_group() {
        let values = BTreeMap::from([
            (".dockerconfigjson".to_string(), b"{}".to_vec()),
            ("ca.crt".to_string(), b"pem".to_vec()),
        ]);
        let all = key_files("secret", "s", Some(&values), None, 0o640, false).unwrap();
        assert_eq!(all.len(), 2);
        let items = vec![KeyToPath {
            key: "ca.crt".into(),
            path: "certs/ca.pem".into(),
            mode: Some(0o400),
        }];
        let some = key_files("secret", "s", Some(&values), Some(&items), 0o644, false).unwrap();
        assert_eq!(
            some,
            vec![("certs/ca.pem".to_string(), b"pem".to_vec(), 0o400)]
        );
        assert!(matches!(
            key_files("secret", "gone", None, None, 0o644, false),
            Err(VolumeError::Retry(_))
        ));
        assert!(
            key_files("secret", "gone", None, None, 0o644, true)
                .unwrap()
                .is_empty()
        );

        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("vol");
        write_files(&out, &some, Some(2000)).unwrap();
        let md = fs::metadata(out.join("certs/ca.pem")).unwrap();
        assert_eq!((md.gid(), md.mode() & 0o777), (2000, 0o440));
        assert!(write_files(&out, &[("../x".into(), vec![], 0o644)], None).is_err());
    }
}
