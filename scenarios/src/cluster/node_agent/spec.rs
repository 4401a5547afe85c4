//! Pure translation of a Pod spec into what the agent does: which fields it cannot honour,
//! each container's environment, user, capabilities and mounts, and the `podman create`
//! arguments. No I/O here, so every rule is unit-tested.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, ObjectFieldSelector, Pod, PodSecurityContext, SecurityContext,
};
use serde_json::Value;

/// The capabilities containerd grants a container unless told otherwise; podman's default
/// set is smaller, so the agent always passes the full set explicitly.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Where the kubelet bind-mounts the termination message file unless the container says.
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";

/// The podman label naming the agent directory a container belongs to.
pub const OWNER_LABEL: &str = "wsr.node-agent.dir";

/// What the agent found in a pod spec: `unsupported` makes the pod fail with reason
/// [`UNSUPPORTED_REASON`]; `notes` are honoured only in part and are reported as a pod
/// condition of type [`NOTES_CONDITION`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Review {
    pub unsupported: Vec<String>,
    pub notes: Vec<String>,
}

pub const UNSUPPORTED_REASON: &str = "NodeAgentUnsupported";
pub const NOTES_CONDITION: &str = "wsr.io/NodeAgentNotes";

/// Checks a pod against what the agent can run. Works on the JSON form so that a field the
/// agent has never heard of (a newer API) is reported rather than skipped.
pub fn review(pod: &Pod) -> Review {
    let mut r = Review::default();
    let spec = serde_json::to_value(pod.spec.clone().unwrap_or_default()).unwrap_or_default();
    for (key, value) in spec.as_object().into_iter().flatten() {
        review_pod_field(key, value, &mut r);
    }
    if spec["hostNetwork"] != Value::Bool(true) {
        r.notes.push(
            "no pod network: the pod shares the host's network namespace and IP 127.0.0.1".into(),
        );
    }
    for (kind, list) in [
        ("initContainer", &spec["initContainers"]),
        ("container", &spec["containers"]),
    ] {
        for c in list.as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or("?");
            for (key, value) in c.as_object().into_iter().flatten() {
                review_container_field(kind, name, key, value, &mut r);
            }
        }
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        review_volume(v, &mut r);
    }
    r.notes.sort();
    r.notes.dedup();
    r
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Number(_) => true,
    }
}

fn review_pod_field(key: &str, value: &Value, r: &mut Review) {
    match key {
        // Run as described, or only the scheduler's business.
        "containers"
        | "initContainers"
        | "volumes"
        | "restartPolicy"
        | "nodeName"
        | "terminationGracePeriodSeconds"
        | "activeDeadlineSeconds"
        | "serviceAccountName"
        | "serviceAccount"
        | "automountServiceAccountToken"
        | "schedulerName"
        | "priority"
        | "priorityClassName"
        | "preemptionPolicy"
        | "tolerations"
        | "nodeSelector"
        | "affinity"
        | "topologySpreadConstraints"
        | "imagePullSecrets"
        | "schedulingGates"
        | "schedulingGroup"
        | "overhead"
        | "hostname"
        | "subdomain"
        | "setHostnameAsFQDN" => {}
        "securityContext" => review_pod_security_context(value, r),
        // Every pod gets the host's network namespace, so asking for it is honoured.
        "hostNetwork" => {}
        "dnsPolicy" => r
            .notes
            .push("no cluster DNS: containers use the host's resolver".into()),
        "enableServiceLinks" => {}
        "os" => {
            if value["name"] != "linux" {
                r.unsupported
                    .push(format!("spec.os.name {}", value["name"]));
            }
        }
        "resources" => {
            if truthy(value) {
                r.notes.push("resources are scheduled, not enforced".into());
            }
        }
        "hostPID" | "hostIPC" | "shareProcessNamespace" => {
            if truthy(value) {
                r.unsupported.push(format!("spec.{key}"));
            }
        }
        "hostUsers" => {
            if value == &Value::Bool(false) {
                r.unsupported
                    .push("spec.hostUsers: false (user namespaces)".into());
            }
        }
        _ => {
            if truthy(value) {
                r.unsupported.push(format!("spec.{key}"));
            }
        }
    }
}

fn review_seccomp(at: &str, value: &Value, r: &mut Review) {
    match value["type"].as_str() {
        Some("RuntimeDefault") | Some("Unconfined") | None => {}
        Some(other) => r
            .unsupported
            .push(format!("{at}.seccompProfile.type {other}")),
    }
}

fn review_apparmor(at: &str, value: &Value, r: &mut Review) {
    match value["type"].as_str() {
        Some("RuntimeDefault") | Some("Unconfined") | None => r
            .notes
            .push("appArmorProfile: this host has no AppArmor; podman's default applies".into()),
        Some(other) => r
            .unsupported
            .push(format!("{at}.appArmorProfile.type {other}")),
    }
}

fn review_pod_security_context(sc: &Value, r: &mut Review) {
    let at = "spec.securityContext";
    for (key, value) in sc.as_object().into_iter().flatten() {
        match key.as_str() {
            "runAsUser"
            | "runAsGroup"
            | "runAsNonRoot"
            | "fsGroup"
            | "fsGroupChangePolicy"
            | "supplementalGroups"
            | "windowsOptions"
            | "seLinuxChangePolicy" => {}
            "supplementalGroupsPolicy" => {
                if value != "Merge" {
                    r.unsupported
                        .push(format!("{at}.supplementalGroupsPolicy {value}"));
                }
            }
            "seccompProfile" => review_seccomp(at, value, r),
            "appArmorProfile" => review_apparmor(at, value, r),
            _ => {
                if truthy(value) {
                    r.unsupported.push(format!("{at}.{key}"));
                }
            }
        }
    }
}

fn review_container_field(kind: &str, name: &str, key: &str, value: &Value, r: &mut Review) {
    let at = format!("{kind} {name}");
    match key {
        "name"
        | "image"
        | "command"
        | "args"
        | "env"
        | "envFrom"
        | "workingDir"
        | "terminationMessagePath"
        | "terminationMessagePolicy"
        | "resizePolicy" => {}
        "volumeMounts" => {
            for m in value.as_array().into_iter().flatten() {
                review_mount(&at, m, r);
            }
        }
        "imagePullPolicy" => {
            if value == "Always" {
                r.notes.push(
                    "images are never pulled: imagePullPolicy Always uses the local image".into(),
                );
            }
        }
        "resources" => {
            if truthy(value) {
                r.notes.push("resources are scheduled, not enforced".into());
            }
        }
        "ports" => {
            if truthy(value) {
                r.notes
                    .push("container ports are not published: pods share the host network".into());
            }
        }
        "securityContext" => review_container_security_context(&at, value, r),
        "livenessProbe" | "readinessProbe" if kind == "container" => {
            for wrong in super::probe::review(value) {
                r.unsupported.push(format!("{at}: {key}.{wrong}"));
            }
        }
        "stdin" | "stdinOnce" | "tty" => {
            if truthy(value) {
                r.unsupported.push(format!("{at}: {key}"));
            }
        }
        // A restartable init container is a sidecar.
        "restartPolicy" if kind == "initContainer" => {
            r.unsupported
                .push(format!("{at}: restartPolicy {value} (sidecar containers)"));
        }
        _ => {
            if truthy(value) {
                r.unsupported.push(format!("{at}: {key}"));
            }
        }
    }
}

fn review_container_security_context(at: &str, sc: &Value, r: &mut Review) {
    for (key, value) in sc.as_object().into_iter().flatten() {
        match key.as_str() {
            "runAsUser"
            | "runAsGroup"
            | "runAsNonRoot"
            | "readOnlyRootFilesystem"
            | "allowPrivilegeEscalation"
            | "capabilities"
            | "windowsOptions" => {}
            "seccompProfile" => review_seccomp(&format!("{at}: securityContext"), value, r),
            "appArmorProfile" => review_apparmor(&format!("{at}: securityContext"), value, r),
            "procMount" => {
                if value != "Default" {
                    r.unsupported
                        .push(format!("{at}: securityContext.procMount {value}"));
                }
            }
            _ => {
                if truthy(value) {
                    r.unsupported.push(format!("{at}: securityContext.{key}"));
                }
            }
        }
    }
}

fn review_mount(at: &str, m: &Value, r: &mut Review) {
    for (key, value) in m.as_object().into_iter().flatten() {
        match key.as_str() {
            "name" | "mountPath" | "subPath" | "readOnly" => {}
            "mountPropagation" => {
                if value != "None" {
                    r.unsupported
                        .push(format!("{at}: mountPropagation {value}"));
                }
            }
            "recursiveReadOnly" => {
                if value != "Disabled" {
                    r.unsupported
                        .push(format!("{at}: recursiveReadOnly {value}"));
                }
            }
            _ => {
                if truthy(value) {
                    r.unsupported.push(format!("{at}: volumeMount.{key}"));
                }
            }
        }
    }
}

fn review_volume(v: &Value, r: &mut Review) {
    let name = v["name"].as_str().unwrap_or("?");
    for (key, value) in v.as_object().into_iter().flatten() {
        match key.as_str() {
            "name" | "persistentVolumeClaim" | "secret" | "configMap" | "downwardAPI" => {}
            "emptyDir" => {
                if value["medium"] == "Memory" {
                    r.notes
                        .push("emptyDir medium Memory is a host directory".into());
                }
                if truthy(&value["sizeLimit"]) {
                    r.notes.push("emptyDir sizeLimit is not enforced".into());
                }
            }
            "projected" => {
                for source in value["sources"].as_array().into_iter().flatten() {
                    for kind in source.as_object().into_iter().flatten().map(|(k, _)| k) {
                        if !matches!(
                            kind.as_str(),
                            "secret" | "configMap" | "downwardAPI" | "serviceAccountToken"
                        ) {
                            r.unsupported
                                .push(format!("volume {name}: projected source {kind}"));
                        }
                    }
                }
            }
            _ => r.unsupported.push(format!("volume {name}: type {key}")),
        }
        for item in items_of(v) {
            if truthy(&item["resourceFieldRef"]) {
                r.unsupported
                    .push(format!("volume {name}: downwardAPI resourceFieldRef"));
            }
        }
    }
}

/// The downwardAPI items of a volume, also inside a projected volume.
fn items_of(v: &Value) -> Vec<&Value> {
    let mut items: Vec<&Value> = v["downwardAPI"]["items"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    for source in v["projected"]["sources"].as_array().into_iter().flatten() {
        items.extend(
            source["downwardAPI"]["items"]
                .as_array()
                .into_iter()
                .flatten(),
        );
    }
    items
}

// ---------------------------------------------------------------------------------------------
// Environment

/// The Secrets and ConfigMaps a pod refers to, fetched before its containers start.
#[derive(Debug, Default, Clone)]
pub struct ObjectData {
    /// Secret name -> key -> bytes. A missing entry means the Secret does not exist.
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// ConfigMap name -> key -> bytes (`data` and `binaryData`).
    pub config_maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

/// Names of the Secrets and ConfigMaps the pod's env, envFrom and volumes refer to.
pub fn referenced_objects(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut secrets = BTreeSet::new();
    let mut config_maps = BTreeSet::new();
    let Some(spec) = &pod.spec else {
        return (secrets, config_maps);
    };
    for c in all_containers(pod) {
        for e in c.env.iter().flatten() {
            if let Some(from) = &e.value_from {
                if let Some(s) = &from.secret_key_ref {
                    secrets.insert(s.name.clone());
                }
                if let Some(m) = &from.config_map_key_ref {
                    config_maps.insert(m.name.clone());
                }
            }
        }
        for from in c.env_from.iter().flatten() {
            if let Some(s) = &from.secret_ref {
                secrets.insert(s.name.clone());
            }
            if let Some(m) = &from.config_map_ref {
                config_maps.insert(m.name.clone());
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.insert(s);
        }
        if let Some(m) = &v.config_map {
            config_maps.insert(m.name.clone());
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(s) = &source.secret {
                secrets.insert(s.name.clone());
            }
            if let Some(m) = &source.config_map {
                config_maps.insert(m.name.clone());
            }
        }
    }
    (secrets, config_maps)
}

pub fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.into_iter().flat_map(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
    })
}

/// The value of a downward-API field path for this pod, as the kubelet resolves it.
pub fn field_value(pod: &Pod, field: &ObjectFieldSelector, pod_ip: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let path = field.field_path.as_str();
    let map_value = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.podIP" | "status.hostIPs" | "status.podIPs" => pod_ip.to_owned(),
        _ => {
            if let Some(v) = map_value(&meta.labels, "metadata.labels['") {
                v
            } else if let Some(v) = map_value(&meta.annotations, "metadata.annotations['") {
                v
            } else {
                return Err(format!("unsupported fieldRef {path}"));
            }
        }
    };
    Ok(value)
}

/// A container's environment in the kubelet's order: the `base` variables (KUBERNETES_SERVICE_*),
/// then `envFrom`, then `env`; later entries win, and `$(VAR)` in values refers to earlier ones.
/// An error is what the kubelet reports as `CreateContainerConfigError`.
pub fn container_env(
    pod: &Pod,
    c: &Container,
    data: &ObjectData,
    base: &[(String, String)],
    pod_ip: &str,
) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(name, _)| name != &k);
        env.push((k, v));
    };
    for (k, v) in base {
        set(&mut env, k.clone(), v.clone());
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional, source) = if let Some(s) = &from.secret_ref {
            ("secret", &s.name, s.optional, data.secrets.get(&s.name))
        } else if let Some(m) = &from.config_map_ref {
            (
                "configmap",
                &m.name,
                m.optional,
                data.config_maps.get(&m.name),
            )
        } else {
            continue;
        };
        match source {
            Some(values) => {
                for (k, v) in values {
                    set(
                        &mut env,
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(v).into_owned(),
                    );
                }
            }
            None if optional == Some(true) => {}
            None => return Err(format!("{kind} \"{name}\" not found")),
        }
    }
    for e in c.env.iter().flatten() {
        if let Some(value) = env_var_value(pod, e, data, pod_ip, &env)? {
            set(&mut env, e.name.clone(), value);
        }
    }
    Ok(env)
}

fn env_var_value(
    pod: &Pod,
    e: &EnvVar,
    data: &ObjectData,
    pod_ip: &str,
    earlier: &[(String, String)],
) -> Result<Option<String>, String> {
    let Some(from) = &e.value_from else {
        return Ok(Some(expand(e.value.as_deref().unwrap_or(""), earlier)));
    };
    let lookup = |kind: &str,
                  objects: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
                  name: &str,
                  key: &str,
                  optional: Option<bool>| {
        match objects.get(name).map(|o| o.get(key)) {
            Some(Some(v)) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
            _ if optional == Some(true) => Ok(None),
            None => Err(format!("{kind} \"{name}\" not found")),
            Some(None) => Err(format!("couldn't find key {key} in {kind} {name}")),
        }
    };
    if let Some(s) = &from.secret_key_ref {
        lookup("secret", &data.secrets, &s.name, &s.key, s.optional)
    } else if let Some(m) = &from.config_map_key_ref {
        lookup("configmap", &data.config_maps, &m.name, &m.key, m.optional)
    } else if let Some(f) = &from.field_ref {
        field_value(pod, f, pod_ip).map(Some)
    } else {
        Err(format!("env {}: unsupported valueFrom", e.name))
    }
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an undefined reference is
/// kept as written, and `$$` is an escaped `$`.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// Security context

/// The effective capability set: containerd's defaults minus `drop` plus `add` (`ALL` in
/// `drop` empties it first). Names are upper case without `CAP_`.
pub fn capabilities(sc: Option<&SecurityContext>) -> BTreeSet<String> {
    let norm = |s: &String| s.trim_start_matches("CAP_").to_ascii_uppercase();
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    let drop: BTreeSet<String> = caps
        .and_then(|c| c.drop.as_ref())
        .into_iter()
        .flatten()
        .map(norm)
        .collect();
    let add: BTreeSet<String> = caps
        .and_then(|c| c.add.as_ref())
        .into_iter()
        .flatten()
        .map(norm)
        .collect();
    let mut set: BTreeSet<String> = if drop.contains("ALL") {
        BTreeSet::new()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .map(|s| s.to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    set.extend(add);
    set
}

/// `--user` for podman, after the `runAsNonRoot` check the kubelet makes. `image_user` is the
/// image config's `User` (`""`, `name`, `uid` or `uid:gid`).
pub fn user(
    pod_sc: Option<&PodSecurityContext>,
    sc: Option<&SecurityContext>,
    image_user: &str,
) -> Result<Option<String>, String> {
    let run_as_user = sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user));
    let run_as_group = sc
        .and_then(|s| s.run_as_group)
        .or(pod_sc.and_then(|s| s.run_as_group));
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    let image_uid = image_user.split(':').next().unwrap_or("");
    if non_root {
        match run_as_user {
            Some(0) => return Err("container's runAsUser breaks non-root policy".into()),
            Some(_) => {}
            None => match image_uid.parse::<u32>() {
                Ok(0) => return Err("container has runAsNonRoot and image will run as root".into()),
                Ok(_) => {}
                Err(_) if image_uid.is_empty() || image_uid == "root" => {
                    return Err("container has runAsNonRoot and image will run as root".into());
                }
                Err(_) => {
                    return Err(format!(
                        "container has runAsNonRoot and image has non-numeric user ({image_uid}), cannot verify user is non-root"
                    ));
                }
            },
        }
    }
    Ok(match (run_as_user, run_as_group) {
        (Some(u), Some(g)) => Some(format!("{u}:{g}")),
        (Some(u), None) => Some(u.to_string()),
        (None, Some(g)) => {
            let u = if image_uid.is_empty() { "0" } else { image_uid };
            Some(format!("{u}:{g}"))
        }
        (None, None) => None,
    })
}

/// Supplemental groups: the pod's `supplementalGroups` plus `fsGroup`.
pub fn extra_groups(pod_sc: Option<&PodSecurityContext>) -> Vec<i64> {
    let mut groups: Vec<i64> = pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default();
    groups.extend(pod_sc.and_then(|s| s.fs_group));
    groups.sort();
    groups.dedup();
    groups
}

// ---------------------------------------------------------------------------------------------
// Mounts and podman arguments

/// One bind mount: `source` on the host at `target` in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// A subPath must stay inside its volume: relative, without `..`.
pub fn check_sub_path(sub_path: &str) -> Result<(), String> {
    if sub_path.starts_with('/') {
        return Err(format!("subPath {sub_path:?} must be a relative path"));
    }
    if sub_path.split('/').any(|c| c == "..") {
        return Err(format!("subPath {sub_path:?} must not contain '..'"));
    }
    Ok(())
}

/// Resource limits passed explicitly: podman's defaults exceed what this host allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ulimits {
    pub nofile: (u64, u64),
    pub nproc: (u64, u64),
}

/// Everything `podman create` needs for one container.
#[derive(Debug)]
pub struct ContainerRun<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    /// The podman container name.
    pub name: String,
    /// The agent's directory, as label `wsr.node-agent.dir`: what it removes when it stops.
    pub owner: String,
    pub env_file: PathBuf,
    pub mounts: Vec<Mount>,
    pub user: Option<String>,
    pub ulimits: Ulimits,
}

/// Environment variables go in a file (mode 0600) so that Secret values never appear on a
/// command line; a value with a newline cannot be written there and goes with `--env`.
pub fn env_file(env: &[(String, String)]) -> (String, Vec<String>) {
    let mut file = String::new();
    let mut inline = Vec::new();
    for (k, v) in env {
        if v.contains('\n') {
            inline.push("--env".to_owned());
            inline.push(format!("{k}={v}"));
        } else {
            file.push_str(&format!("{k}={v}\n"));
        }
    }
    (file, inline)
}

/// The arguments after `podman <storage flags>` that create the container.
pub fn create_args(
    run: &ContainerRun<'_>,
    env: &[(String, String)],
    inline_env: &[String],
) -> Result<Vec<String>, String> {
    let c = run.container;
    let pod_sc = run
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref());
    let sc = c.security_context.as_ref();
    let meta = &run.pod.metadata;
    let mut a: Vec<String> = vec!["create".into(), "--pull".into(), "never".into()];
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(&["--name", &run.name]);
    for (k, v) in [
        ("io.kubernetes.pod.uid", meta.uid.as_deref()),
        ("io.kubernetes.pod.name", meta.name.as_deref()),
        ("io.kubernetes.pod.namespace", meta.namespace.as_deref()),
        ("io.kubernetes.container.name", Some(c.name.as_str())),
        (OWNER_LABEL, Some(run.owner.as_str())),
    ] {
        push(&["--label", &format!("{k}={}", v.unwrap_or(""))]);
    }
    // The host's network namespace, but the pod's own host name as the kubelet gives it.
    let hostname = run
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or(meta.name.clone())
        .unwrap_or_default();
    push(&[
        "--network",
        "host",
        "--uts",
        "private",
        "--hostname",
        &hostname,
    ]);
    push(&[
        "--ulimit",
        &format!("nofile={}:{}", run.ulimits.nofile.0, run.ulimits.nofile.1),
    ]);
    push(&[
        "--ulimit",
        &format!("nproc={}:{}", run.ulimits.nproc.0, run.ulimits.nproc.1),
    ]);
    if let Some(user) = &run.user {
        push(&["--user", user]);
    }
    for g in extra_groups(pod_sc) {
        push(&["--group-add", &g.to_string()]);
    }
    push(&["--cap-drop", "all"]);
    for cap in capabilities(sc) {
        push(&["--cap-add", &cap]);
    }
    if sc.and_then(|s| s.allow_privilege_escalation) == Some(false) {
        push(&["--security-opt", "no-new-privileges"]);
    }
    // Kubernetes runs containers Unconfined unless RuntimeDefault is asked for (the kubelet's
    // --seccomp-default is off by default); podman's default profile is its RuntimeDefault.
    let seccomp = sc
        .and_then(|s| s.seccomp_profile.as_ref())
        .or(pod_sc.and_then(|s| s.seccomp_profile.as_ref()))
        .map(|p| p.type_.as_str());
    if seccomp != Some("RuntimeDefault") {
        push(&["--security-opt", "seccomp=unconfined"]);
    }
    if sc.and_then(|s| s.read_only_root_filesystem) == Some(true) {
        // Podman would add writable tmpfs at /tmp, /run and /var/tmp; a kubelet does not.
        push(&["--read-only", "--read-only-tmpfs=false"]);
    }
    if let Some(dir) = &c.working_dir {
        push(&["--workdir", dir]);
    }
    push(&["--env-file", &run.env_file.to_string_lossy()]);
    a.extend(inline_env.iter().cloned());
    for m in &run.mounts {
        let source = m.source.to_string_lossy();
        if source.contains(',') || m.target.contains(',') {
            return Err(format!(
                "mount {} -> {}: a comma in a path is not supported",
                source, m.target
            ));
        }
        let mut spec = format!("type=bind,source={source},destination={}", m.target);
        if m.read_only {
            spec.push_str(",ro=true");
        }
        a.push("--mount".into());
        a.push(spec);
    }
    if let Some(command) = &c.command {
        let command: Vec<String> = command.iter().map(|s| expand(s, env)).collect();
        a.push("--entrypoint".into());
        a.push(serde_json::to_string(&command).expect("strings serialise"));
    }
    a.push(c.image.clone().ok_or("container has no image")?);
    // `command` without `args` drops the image's CMD, as in Kubernetes.
    let args: Vec<String> = c.args.iter().flatten().map(|s| expand(s, env)).collect();
    a.extend(args);
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Capabilities;
    use serde_json::json;

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1",
                          "labels": {"app": "x"}, "annotations": {"a/b": "c"}},
            "spec": spec
        }))
        .unwrap()
    }

    fn restricted_job_pod() -> Pod {
        pod(json!({
            "restartPolicy": "Never",
            "nodeName": "wsr-node",
            "serviceAccountName": "default",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "fsGroup": 2000,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "backup", "image": "localhost/wsr-recovery:0.1.0",
                "args": ["/workspace-recovery.sh", "--backup"],
                "imagePullPolicy": "IfNotPresent",
                "securityContext": {"allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]},
                                    "readOnlyRootFilesystem": true},
                "volumeMounts": [{"name": "data", "mountPath": "/workspace"}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File"
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "claim-devworkspace"}},
                        {"name": "tmp", "emptyDir": {}}]
        }))
    }

    #[test]
    fn a_restricted_job_pod_is_fully_supported() {
        let r = review(&restricted_job_pod());
        assert_eq!(r.unsupported, Vec::<String>::new());
        assert_eq!(
            r.notes,
            vec![
                "no pod network: the pod shares the host's network namespace and IP 127.0.0.1"
                    .to_string()
            ]
        );
    }

    #[test]
    fn unknown_and_unsupported_fields_are_reported_by_name() {
        let p = pod(json!({
            "hostPID": true,
            "hostIPC": false,
            "hostNetwork": true,
            "dnsConfig": {"nameservers": ["1.1.1.1"]},
            "securityContext": {"sysctls": [{"name": "a", "value": "1"}]},
            "containers": [{"name": "c", "image": "i",
                            "readinessProbe": {"exec": {"command": ["true"]}},
                            "securityContext": {"privileged": true, "procMount": "Default"},
                            "volumeMounts": [{"name": "v", "mountPath": "/v", "mountPropagation": "Bidirectional"}]}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}},
                        {"name": "n", "nfs": {"server": "s", "path": "/"}},
                        {"name": "p", "projected": {"sources": [{"clusterTrustBundle": {"path": "x"}}]}}]
        }));
        let r = review(&p);
        assert_eq!(
            r.unsupported,
            vec![
                "spec.dnsConfig",
                "spec.hostPID",
                "spec.securityContext.sysctls",
                "container c: readinessProbe.exec",
                "container c: securityContext.privileged",
                "container c: mountPropagation \"Bidirectional\"",
                "volume h: type hostPath",
                "volume n: type nfs",
                "volume p: projected source clusterTrustBundle",
            ]
        );
        assert!(r.notes.is_empty(), "{:?}", r.notes);
    }

    #[test]
    fn sidecars_and_localhost_profiles_are_unsupported() {
        let p = pod(json!({
            "hostNetwork": true,
            "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "x"}},
            "initContainers": [{"name": "side", "image": "i", "restartPolicy": "Always"}],
            "containers": [{"name": "c", "image": "i", "resources": {"limits": {"memory": "1Gi"}}}]
        }));
        let r = review(&p);
        assert_eq!(
            r.unsupported,
            vec![
                "spec.securityContext.seccompProfile.type Localhost",
                "initContainer side: restartPolicy \"Always\" (sidecar containers)",
            ]
        );
        assert_eq!(r.notes, vec!["resources are scheduled, not enforced"]);
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "x$(A)".to_string()),
        ];
        assert_eq!(expand("$(A)-$(B)", &env), "1-x$(A)");
        assert_eq!(expand("$(MISSING)", &env), "$(MISSING)");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("cost $5 $(A", &env), "cost $5 $(A");
        assert_eq!(expand("", &env), "");
    }

    fn data() -> ObjectData {
        let mut d = ObjectData::default();
        d.secrets.insert(
            "auth".into(),
            BTreeMap::from([("token".to_string(), b"s3cret".to_vec())]),
        );
        d.config_maps.insert(
            "cfg".into(),
            BTreeMap::from([
                ("mode".to_string(), b"fast".to_vec()),
                ("level".to_string(), b"3".to_vec()),
            ]),
        );
        d
    }

    #[test]
    fn env_resolves_refs_in_kubelet_order() {
        let p = pod(json!({"nodeName": "wsr-node", "containers": [{
        "name": "c", "image": "i",
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
                    {"secretRef": {"name": "absent", "optional": true}}],
        "env": [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "auth", "key": "token"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "ANN", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['a/b']"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "auth", "key": "nope", "optional": true}}},
            {"name": "PATHY", "value": "$(NS)/$(POD)"},
            {"name": "CFG_level", "value": "override"}
        ]}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let base = vec![(
            "KUBERNETES_SERVICE_HOST".to_string(),
            "127.0.0.1".to_string(),
        )];
        let env = container_env(&p, c, &data(), &base, "127.0.0.1").unwrap();
        let got: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            got,
            vec![
                "KUBERNETES_SERVICE_HOST=127.0.0.1",
                "CFG_mode=fast",
                "TOKEN=s3cret",
                "MODE=fast",
                "POD=p",
                "NS=ns",
                "APP=x",
                "ANN=c",
                "NODE=wsr-node",
                "IP=127.0.0.1",
                "PATHY=ns/p",
                "CFG_level=override",
            ]
        );
    }

    #[test]
    fn missing_references_are_config_errors() {
        let with_env = |env: Value| {
            let p = pod(json!({"containers": [{"name": "c", "image": "i", "env": env}]}));
            let c = p.spec.as_ref().unwrap().containers[0].clone();
            container_env(&p, &c, &data(), &[], "127.0.0.1")
        };
        assert_eq!(
            with_env(
                json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}])
            ),
            Err("secret \"gone\" not found".into())
        );
        assert_eq!(
            with_env(
                json!([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}])
            ),
            Err("couldn't find key k in configmap cfg".into())
        );
        assert_eq!(
            with_env(
                json!([{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}])
            ),
            Err("unsupported fieldRef status.phase".into())
        );
    }

    #[test]
    fn referenced_objects_cover_env_and_volumes() {
        let p = pod(json!({"containers": [{"name": "c", "image": "i",
            "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}}],
            "envFrom": [{"configMapRef": {"name": "m1"}}]}],
            "volumes": [{"name": "a", "secret": {"secretName": "s2"}},
                        {"name": "b", "configMap": {"name": "m2"}},
                        {"name": "c", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}}]}}]}));
        let (s, m) = referenced_objects(&p);
        assert_eq!(s.into_iter().collect::<Vec<_>>(), vec!["s1", "s2"]);
        assert_eq!(
            m.into_iter().collect::<Vec<_>>(),
            vec!["kube-root-ca.crt", "m1", "m2"]
        );
    }

    fn sc(v: Value) -> SecurityContext {
        serde_json::from_value(v).unwrap()
    }
    fn psc(v: Value) -> PodSecurityContext {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn capabilities_start_from_containerds_defaults() {
        assert_eq!(capabilities(None).len(), DEFAULT_CAPABILITIES.len());
        let dropped = capabilities(Some(&sc(
            json!({"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}),
        )));
        assert_eq!(
            dropped.into_iter().collect::<Vec<_>>(),
            vec!["NET_BIND_SERVICE"]
        );
        let some = capabilities(Some(&SecurityContext {
            capabilities: Some(Capabilities {
                drop: Some(vec!["CAP_NET_RAW".into(), "mknod".into()]),
                add: Some(vec!["SYS_ADMIN".into()]),
            }),
            ..Default::default()
        }));
        assert!(!some.contains("NET_RAW") && !some.contains("MKNOD") && some.contains("SYS_ADMIN"));
        assert_eq!(some.len(), DEFAULT_CAPABILITIES.len() - 1);
    }

    #[test]
    fn user_follows_container_then_pod_then_image() {
        let pod_sc = psc(json!({"runAsUser": 1000, "runAsGroup": 3000}));
        assert_eq!(user(Some(&pod_sc), None, "0"), Ok(Some("1000:3000".into())));
        assert_eq!(
            user(Some(&pod_sc), Some(&sc(json!({"runAsUser": 7}))), ""),
            Ok(Some("7:3000".into()))
        );
        assert_eq!(
            user(None, Some(&sc(json!({"runAsGroup": 5}))), "1000:0"),
            Ok(Some("1000:5".into()))
        );
        assert_eq!(user(None, None, "1000:0"), Ok(None));
        assert_eq!(
            user(None, Some(&sc(json!({"runAsUser": 9}))), ""),
            Ok(Some("9".into()))
        );
    }

    #[test]
    fn run_as_non_root_is_checked_against_the_image_user() {
        let non_root = psc(json!({"runAsNonRoot": true}));
        assert_eq!(user(Some(&non_root), None, "1000:0"), Ok(None));
        assert_eq!(
            user(Some(&non_root), None, ""),
            Err("container has runAsNonRoot and image will run as root".into())
        );
        assert_eq!(
            user(Some(&non_root), None, "0:0"),
            Err("container has runAsNonRoot and image will run as root".into())
        );
        assert!(
            user(Some(&non_root), None, "wsr")
                .unwrap_err()
                .contains("non-numeric user (wsr)")
        );
        assert_eq!(
            user(Some(&non_root), Some(&sc(json!({"runAsUser": 0}))), "1000"),
            Err("container's runAsUser breaks non-root policy".into())
        );
        // The container may lift the pod's requirement.
        assert_eq!(
            user(
                Some(&non_root),
                Some(&sc(json!({"runAsNonRoot": false}))),
                ""
            ),
            Ok(None)
        );
    }

    #[test]
    fn groups_merge_supplemental_and_fs_group() {
        let p = psc(json!({"supplementalGroups": [5, 1], "fsGroup": 5}));
        assert_eq!(extra_groups(Some(&p)), vec![1, 5]);
        assert_eq!(extra_groups(None), Vec::<i64>::new());
    }

    #[test]
    fn sub_paths_stay_inside_the_volume() {
        assert!(check_sub_path("ws1/projects").is_ok());
        assert!(check_sub_path("a/../b").is_err());
        assert!(check_sub_path("..").is_err());
        assert!(check_sub_path("/etc").is_err());
        assert!(check_sub_path("a..b").is_ok());
    }

    #[test]
    fn env_with_newlines_is_passed_inline() {
        let (file, inline) = env_file(&[
            ("A".into(), "1".into()),
            ("PEM".into(), "line1\nline2".into()),
        ]);
        assert_eq!(file, "A=1\n");
        assert_eq!(inline, vec!["--env", "PEM=line1\nline2"]);
    }

    #[test]
    fn podman_arguments_for_a_restricted_container() {
        let p = restricted_job_pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let run = ContainerRun {
            pod: &p,
            container: c,
            name: "wsr_backup_p".into(),
            owner: "/d".into(),
            env_file: "/d/env".into(),
            mounts: vec![
                Mount {
                    source: "/d/pvc".into(),
                    target: "/workspace".into(),
                    read_only: false,
                },
                Mount {
                    source: "/d/secret".into(),
                    target: "/tmp/.docker".into(),
                    read_only: true,
                },
            ],
            user: Some("1000".into()),
            ulimits: Ulimits {
                nofile: (1024, 20000),
                nproc: (512, 4096),
            },
        };
        let args = create_args(&run, &[], &[]).unwrap().join(" ");
        assert_eq!(
            args,
            "create --pull never --name wsr_backup_p \
             --label io.kubernetes.pod.uid=u-1 --label io.kubernetes.pod.name=p \
             --label io.kubernetes.pod.namespace=ns --label io.kubernetes.container.name=backup \
             --label wsr.node-agent.dir=/d \
             --network host --uts private --hostname p \
             --ulimit nofile=1024:20000 --ulimit nproc=512:4096 --user 1000 --group-add 2000 \
             --cap-drop all --security-opt no-new-privileges --read-only --read-only-tmpfs=false \
             --env-file /d/env \
             --mount type=bind,source=/d/pvc,destination=/workspace \
             --mount type=bind,source=/d/secret,destination=/tmp/.docker,ro=true \
             localhost/wsr-recovery:0.1.0 /workspace-recovery.sh --backup"
        );
    }

    #[test]
    fn command_replaces_the_entrypoint_and_args_are_expanded() {
        let p = pod(json!({"containers": [{"name": "c", "image": "img",
            "command": ["/bin/sh", "-c"], "args": ["echo $(X) $$(X)"],
            "securityContext": {"seccompProfile": {"type": "Unconfined"}, "capabilities": {"add": ["SYS_TIME"]}}}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let run = ContainerRun {
            pod: &p,
            container: c,
            name: "n".into(),
            owner: "/o".into(),
            env_file: "/e".into(),
            mounts: vec![],
            user: None,
            ulimits: Ulimits {
                nofile: (1, 1),
                nproc: (1, 1),
            },
        };
        let env = vec![("X".to_string(), "v".to_string())];
        let args = create_args(&run, &env, &[]).unwrap();
        let tail: Vec<&str> = args
            .iter()
            .rev()
            .take(4)
            .rev()
            .map(String::as_str)
            .collect();
        assert_eq!(
            tail,
            vec!["--entrypoint", "[\"/bin/sh\",\"-c\"]", "img", "echo v $(X)"]
        );
        assert!(args.join(" ").contains("--cap-add SYS_TIME"));
        assert!(args.join(" ").contains("--security-opt seccomp=unconfined"));
        let bad = ContainerRun {
            mounts: vec![Mount {
                source: "/a,b".into(),
                target: "/x".into(),
                read_only: false,
            }],
            ..run
        };
        assert!(create_args(&bad, &env, &[]).is_err());
    }
}
