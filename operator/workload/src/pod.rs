//! The hardened pod every wsr Job runs: the Kubernetes "restricted" Pod Security Standard
//! (and OpenShift restricted-v2: no fixed UID), a read-only root filesystem with a `/tmp`
//! emptyDir, no service-account token, and only the workspace's sub path of its PVC mounted
//! ([`hardened_pod_spec`]) or no workspace at all, only a scratch emptyDir
//! ([`scratch_pod_spec`], the drill).
//! [`restricted_violations`] checks a pod spec against every rule of that profile, and
//! [`openshift_restricted_v2_violations`] against OpenShift's restricted-v2 SCC.

use super::storage::WorkspaceVolume;
use k8s_openapi::api::batch::v1::JobSpec;
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EmptyDirVolumeSource, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// Where the workspace's files appear in the pod.
pub const PROJECTS_MOUNT: &str = "/projects";
const WORKSPACE_VOLUME: &str = "workspace-data";
const TMP_VOLUME: &str = "tmp";
const SCRATCH_VOLUME: &str = "scratch";

/// A Secret mounted read-only into the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretMount {
    pub volume: String,
    pub secret: String,
    pub path: String,
}

/// Everything a caller chooses about the pod; the hardening is not optional.
#[derive(Clone, Debug, Default)]
pub struct PodOptions {
    pub image: String,
    pub image_pull_policy: Option<String>,
    pub resources: Option<ResourceRequirements>,
    pub tolerations: Vec<Toleration>,
    pub node_selector: BTreeMap<String, String>,
    /// Fields set here (e.g. `runAsUser`, `fsGroup`) override the defaults; the result must
    /// still pass [`restricted_violations`].
    pub pod_security_context: Option<PodSecurityContext>,
    /// Pin the pod to this node (the node of a running pod that holds a single-node PVC).
    pub node: Option<String>,
}

/// The pod spec: one container `name` running `command`, the workspace volume's sub path at
/// `/projects` (read-only unless `writable`), plus `secrets`.
pub fn hardened_pod_spec(
    name: &str,
    command: Vec<String>,
    volume: &WorkspaceVolume,
    writable: bool,
    secrets: &[SecretMount],
    options: &PodOptions,
) -> PodSpec {
    let mounts = vec![
        VolumeMount {
            name: WORKSPACE_VOLUME.into(),
            mount_path: PROJECTS_MOUNT.into(),
            sub_path: Some(volume.sub_path.clone()),
            read_only: Some(!writable),
            ..Default::default()
        },
        VolumeMount {
            name: TMP_VOLUME.into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    let volumes = vec![
        Volume {
            name: WORKSPACE_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: volume.claim.clone(),
                read_only: Some(!writable),
            }),
            ..Default::default()
        },
        tmp_volume(),
    ];
    pod_spec(name, command, mounts, volumes, secrets, options)
}

/// A pod that touches no workspace: one container `name` running `command` with a writable
/// `emptyDir` of at most `scratch_size` (e.g. `20Gi`) at `scratch_path`, plus `secrets`. The
/// operator's drill Job restores backups into it.
pub fn scratch_pod_spec(
    name: &str,
    command: Vec<String>,
    scratch_path: &str,
    scratch_size: &str,
    secrets: &[SecretMount],
    options: &PodOptions,
) -> PodSpec {
    let mounts = vec![
        VolumeMount {
            name: SCRATCH_VOLUME.into(),
            mount_path: scratch_path.into(),
            ..Default::default()
        },
        VolumeMount {
            name: TMP_VOLUME.into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    let volumes = vec![
        Volume {
            name: SCRATCH_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(scratch_size.into())),
                ..Default::default()
            }),
            ..Default::default()
        },
        tmp_volume(),
    ];
    pod_spec(name, command, mounts, volumes, secrets, options)
}

fn tmp_volume() -> Volume {
    Volume {
        name: TMP_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("256Mi".into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The hardening every wsr pod shares, around the caller's mounts and volumes.
fn pod_spec(
    name: &str,
    command: Vec<String>,
    mut mounts: Vec<VolumeMount>,
    mut volumes: Vec<Volume>,
    secrets: &[SecretMount],
    options: &PodOptions,
) -> PodSpec {
    for s in secrets {
        mounts.push(VolumeMount {
            name: s.volume.clone(),
            mount_path: s.path.clone(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: s.volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(s.secret.clone()),
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(pod_security_context(options.pod_security_context.as_ref())),
        affinity: options.node.as_ref().map(|node| node_affinity(node)),
        node_selector: (!options.node_selector.is_empty()).then(|| options.node_selector.clone()),
        tolerations: (!options.tolerations.is_empty()).then(|| options.tolerations.clone()),
        containers: vec![Container {
            name: name.into(),
            image: Some(options.image.clone()),
            image_pull_policy: options.image_pull_policy.clone(),
            command: Some(command),
            resources: Some(options.resources.clone().unwrap_or_else(default_resources)),
            security_context: Some(container_security_context()),
            volume_mounts: Some(mounts),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Default::default()
        }],
        volumes: Some(volumes),
        ..Default::default()
    }
}

fn pod_security_context(overrides: Option<&PodSecurityContext>) -> PodSecurityContext {
    let mut ctx = overrides.cloned().unwrap_or_default();
    ctx.run_as_non_root.get_or_insert(true);
    ctx.seccomp_profile.get_or_insert_with(runtime_default);
    ctx
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default()),
        ..Default::default()
    }
}

fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.into());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), q("100m")),
            ("memory".into(), q("128Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".into(), q("1Gi"))])),
        ..Default::default()
    }
}

/// Required affinity to one node by name (avoids Multi-Attach of a single-node PVC).
fn node_affinity(node: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.into()]),
                    }]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Every rule of the "restricted" Pod Security Standard (baseline included) that `spec`
/// breaks, one line each; empty when the pod is admitted.
pub fn restricted_violations(spec: &PodSpec) -> Vec<String> {
    let mut bad = Vec::new();
    let pod = spec.security_context.clone().unwrap_or_default();
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true)
    {
        bad.push("host namespaces".to_owned());
    }
    if pod.run_as_user == Some(0) {
        bad.push("pod runAsUser 0".to_owned());
    }
    let seccomp_ok = |p: &Option<SeccompProfile>| {
        p.as_ref()
            .is_some_and(|p| p.type_ == "RuntimeDefault" || p.type_ == "Localhost")
    };
    let pod_seccomp = seccomp_ok(&pod.seccomp_profile);
    if pod
        .seccomp_profile
        .as_ref()
        .is_some_and(|p| p.type_ == "Unconfined")
    {
        bad.push("pod seccompProfile Unconfined".to_owned());
    }
    if pod.sysctls.as_ref().is_some_and(|s| !s.is_empty()) {
        bad.push("sysctls".to_owned());
    }
    for v in spec.volumes.iter().flatten() {
        if !allowed_volume_type(v) {
            bad.push(format!("volume {} has a disallowed type", v.name));
        }
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        let sc = c.security_context.clone().unwrap_or_default();
        let who = format!("container {}", c.name);
        if sc.privileged == Some(true) {
            bad.push(format!("{who}: privileged"));
        }
        if sc.allow_privilege_escalation != Some(false) {
            bad.push(format!("{who}: allowPrivilegeEscalation is not false"));
        }
        let non_root = sc.run_as_non_root.or(pod.run_as_non_root);
        if non_root != Some(true) {
            bad.push(format!("{who}: runAsNonRoot is not true"));
        }
        if sc.run_as_user == Some(0) {
            bad.push(format!("{who}: runAsUser 0"));
        }
        if !(seccomp_ok(&sc.seccomp_profile) || (sc.seccomp_profile.is_none() && pod_seccomp)) {
            bad.push(format!(
                "{who}: seccompProfile is not RuntimeDefault or Localhost"
            ));
        }
        let caps = sc.capabilities.unwrap_or_default();
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            bad.push(format!("{who}: capabilities do not drop ALL"));
        }
        if caps.add.iter().flatten().any(|a| a != "NET_BIND_SERVICE") {
            bad.push(format!("{who}: adds capabilities"));
        }
        if c.ports
            .iter()
            .flatten()
            .any(|p| p.host_port.is_some_and(|h| h != 0))
        {
            bad.push(format!("{who}: hostPort"));
        }
        if sc.se_linux_options.as_ref().is_some_and(|o| {
            o.user.is_some()
                || o.role.is_some()
                || o.type_.as_deref().is_some_and(|t| {
                    ![
                        "container_t",
                        "container_init_t",
                        "container_kvm_t",
                        "container_engine_t",
                    ]
                    .contains(&t)
                })
        }) {
            bad.push(format!("{who}: seLinuxOptions"));
        }
        if sc.proc_mount.as_deref().is_some_and(|p| p != "Default") {
            bad.push(format!("{who}: procMount"));
        }
    }
    bad
}

/// Every rule of OpenShift's `restricted-v2` SecurityContextConstraints that `spec` breaks, one
/// line each; empty when the pod is admitted under it in any namespace. The SCC's strategies
/// are checked as a pod that cannot know its namespace's ranges must meet them:
///
/// - `runAsUser: MustRunAsRange`: no `runAsUser` on the pod or any container (a fixed UID is
///   outside most namespaces' `openshift.io/sa.scc.uid-range`; unset, OpenShift assigns one).
/// - `fsGroup: MustRunAs`: no `fsGroup` (the namespace's supplemental-groups range assigns it).
/// - `supplementalGroups: RunAsAny` in the SCC; wsr is stricter and sets none, so a pod that
///   sets some is flagged too.
/// - `seLinuxContext: MustRunAs`: no `seLinuxOptions` on the pod or any container.
/// - `allowPrivilegedContainer: false`, `allowPrivilegeEscalation: false`: no container
///   `privileged: true`, and `allowPrivilegeEscalation` set to `false` (restricted-v2 defaults
///   it to false; wsr states it).
/// - `requiredDropCapabilities: [ALL]`, `allowedCapabilities: [NET_BIND_SERVICE]`: every
///   container drops `ALL` (OpenShift would add the drop; wsr states it) and adds nothing
///   but `NET_BIND_SERVICE`.
/// - `seccompProfiles: [runtime/default]`: every seccomp profile, where set, is
///   `RuntimeDefault` (`Localhost` and `Unconfined` are refused).
/// - `allowHostNetwork/PID/IPC/Ports: false`, `allowHostDirVolumePlugin: false`, `volumes:
///   [configMap, csi, downwardAPI, emptyDir, ephemeral, persistentVolumeClaim, projected,
///   secret]`: no host namespaces, host ports or other volume types.
pub fn openshift_restricted_v2_violations(spec: &PodSpec) -> Vec<String> {
    let mut bad = Vec::new();
    let pod = spec.security_context.clone().unwrap_or_default();
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true)
    {
        bad.push("host namespaces".to_owned());
    }
    if pod.run_as_user.is_some() {
        bad.push("pod runAsUser is set (MustRunAsRange assigns it)".to_owned());
    }
    if pod.fs_group.is_some() {
        bad.push("pod fsGroup is set (MustRunAs assigns it)".to_owned());
    }
    if pod
        .supplemental_groups
        .as_ref()
        .is_some_and(|g| !g.is_empty())
    {
        bad.push("pod supplementalGroups are set".to_owned());
    }
    if pod.se_linux_options.is_some() {
        bad.push("pod seLinuxOptions are set (MustRunAs assigns them)".to_owned());
    }
    let runtime_default_or_unset =
        |p: &Option<SeccompProfile>| p.as_ref().is_none_or(|p| p.type_ == "RuntimeDefault");
    if !runtime_default_or_unset(&pod.seccomp_profile) {
        bad.push("pod seccompProfile is not RuntimeDefault".to_owned());
    }
    for v in spec.volumes.iter().flatten() {
        if !allowed_volume_type(v) {
            bad.push(format!(
                "volume {} has a type restricted-v2 does not allow",
                v.name
            ));
        }
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        let sc = c.security_context.clone().unwrap_or_default();
        let who = format!("container {}", c.name);
        if sc.privileged == Some(true) {
            bad.push(format!("{who}: privileged"));
        }
        if sc.allow_privilege_escalation != Some(false) {
            bad.push(format!("{who}: allowPrivilegeEscalation is not false"));
        }
        if sc.run_as_user.is_some() {
            bad.push(format!(
                "{who}: runAsUser is set (MustRunAsRange assigns it)"
            ));
        }
        if sc.se_linux_options.is_some() {
            bad.push(format!("{who}: seLinuxOptions are set"));
        }
        if !runtime_default_or_unset(&sc.seccomp_profile) {
            bad.push(format!("{who}: seccompProfile is not RuntimeDefault"));
        }
        let caps = sc.capabilities.unwrap_or_default();
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            bad.push(format!("{who}: capabilities do not drop ALL"));
        }
        if let Some(extra) = caps.add.iter().flatten().find(|a| *a != "NET_BIND_SERVICE") {
            bad.push(format!("{who}: adds capability {extra}"));
        }
        if c.ports
            .iter()
            .flatten()
            .any(|p| p.host_port.is_some_and(|h| h != 0))
        {
            bad.push(format!("{who}: hostPort"));
        }
    }
    bad
}

/// The spec of a Job that runs `pod` once: no Job-level retries (a backup is retried by the
/// operator's own backoff; a restore's second attempt would find a non-empty target), bounded
/// by `deadline_seconds` and removed `ttl_seconds` after it finishes.
pub fn run_once_job_spec(
    pod: PodSpec,
    labels: BTreeMap<String, String>,
    deadline_seconds: i64,
    ttl_seconds: i32,
) -> JobSpec {
    JobSpec {
        backoff_limit: Some(0),
        active_deadline_seconds: Some(deadline_seconds),
        ttl_seconds_after_finished: Some(ttl_seconds),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..Default::default()
            }),
            spec: Some(pod),
        },
        ..Default::default()
    }
}

/// The volume types both the "restricted" Pod Security Standard and OpenShift's restricted-v2
/// SCC allow.
fn allowed_volume_type(v: &Volume) -> bool {
    v.config_map.is_some()
        || v.csi.is_some()
        || v.downward_api.is_some()
        || v.empty_dir.is_some()
        || v.ephemeral.is_some()
        || v.persistent_volume_claim.is_some()
        || v.projected.is_some()
        || v.secret.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::SELinuxOptions;

    fn volume() -> WorkspaceVolume {
        WorkspaceVolume {
            claim: "claim-devworkspace".into(),
            sub_path: "ws1/projects".into(),
            shared: true,
            single_node: true,
        }
    }

    fn spec(options: &PodOptions) -> PodSpec {
        hardened_pod_spec("c", vec!["true".into()], &volume(), false, &[], options)
    }

    #[test]
    fn the_hardened_pod_passes_and_each_weakening_is_caught() {
        let good = spec(&PodOptions::default());
        assert_eq!(restricted_violations(&good), Vec::<String>::new());

        type Weaken = fn(&mut PodSpec);
        let weakenings: Vec<(&str, Weaken)> = vec![
            ("privileged", |s| {
                s.containers[0]
                    .security_context
                    .as_mut()
                    .unwrap()
                    .privileged = Some(true)
            }),
            ("escalation", |s| {
                s.containers[0]
                    .security_context
                    .as_mut()
                    .unwrap()
                    .allow_privilege_escalation = None
            }),
            ("root", |s| {
                s.containers[0]
                    .security_context
                    .as_mut()
                    .unwrap()
                    .run_as_non_root = None;
                s.security_context.as_mut().unwrap().run_as_non_root = Some(false);
            }),
            ("uid 0", |s| {
                s.security_context.as_mut().unwrap().run_as_user = Some(0)
            }),
            ("seccomp", |s| {
                s.containers[0]
                    .security_context
                    .as_mut()
                    .unwrap()
                    .seccomp_profile = None;
                s.security_context.as_mut().unwrap().seccomp_profile = None;
            }),
            ("caps kept", |s| {
                s.containers[0]
                    .security_context
                    .as_mut()
                    .unwrap()
                    .capabilities = None
            }),
            ("caps added", |s| {
                s.containers[0]
                    .security_context
                    .as_mut()
                    .unwrap()
                    .capabilities
                    .as_mut()
                    .unwrap()
                    .add = Some(vec!["SYS_ADMIN".into()])
            }),
            ("hostPath", |s| {
                s.volumes.as_mut().unwrap().push(Volume {
                    name: "h".into(),
                    host_path: Some(Default::default()),
                    ..Default::default()
                })
            }),
            ("host network", |s| s.host_network = Some(true)),
        ];
        for (name, weaken) in weakenings {
            let mut s = good.clone();
            weaken(&mut s);
            assert!(!restricted_violations(&s).is_empty(), "{name} not caught");
        }
    }

    fn container(s: &mut PodSpec) -> &mut SecurityContext {
        s.containers[0].security_context.as_mut().unwrap()
    }

    /// One case per restricted-v2 rule: the weakened pod must be refused, and (where the
    /// Kubernetes profile allows it) shows where restricted-v2 is stricter.
    #[test]
    fn restricted_v2_admits_the_hardened_pod_and_catches_each_weakening() {
        let secret = SecretMount {
            volume: "auth".into(),
            secret: "registry-auth".into(),
            path: "/auth".into(),
        };
        for (writable, node) in [(false, None), (true, Some("node-a".to_owned()))] {
            let options = PodOptions {
                node,
                ..Default::default()
            };
            let pod = hardened_pod_spec(
                "c",
                vec!["true".into()],
                &volume(),
                writable,
                std::slice::from_ref(&secret),
                &options,
            );
            assert_eq!(
                openshift_restricted_v2_violations(&pod),
                Vec::<String>::new()
            );
        }
        let good = spec(&PodOptions::default());
        type Weaken = Box<dyn Fn(&mut PodSpec)>;
        let cases: Vec<(&str, bool, Weaken)> = vec![
            // (rule, also refused by the Kubernetes restricted profile, weakening)
            (
                "pod runAsUser",
                false,
                Box::new(|s| s.security_context.as_mut().unwrap().run_as_user = Some(1000)),
            ),
            (
                "container runAsUser",
                false,
                Box::new(|s| container(s).run_as_user = Some(1000)),
            ),
            (
                "fsGroup",
                false,
                Box::new(|s| s.security_context.as_mut().unwrap().fs_group = Some(1000)),
            ),
            (
                "supplementalGroups",
                false,
                Box::new(|s| {
                    s.security_context.as_mut().unwrap().supplemental_groups = Some(vec![5])
                }),
            ),
            (
                "pod seLinuxOptions",
                false,
                Box::new(|s| {
                    s.security_context.as_mut().unwrap().se_linux_options = Some(SELinuxOptions {
                        level: Some("s0:c1,c2".into()),
                        ..Default::default()
                    })
                }),
            ),
            (
                "container seLinuxOptions",
                false,
                Box::new(move |s| {
                    container(s).se_linux_options = Some(SELinuxOptions {
                        type_: Some("container_t".into()),
                        ..Default::default()
                    })
                }),
            ),
            (
                "Localhost seccomp",
                false,
                Box::new(move |s| {
                    container(s).seccomp_profile = Some(SeccompProfile {
                        type_: "Localhost".into(),
                        localhost_profile: Some("profiles/wsr.json".into()),
                    })
                }),
            ),
            (
                "Unconfined pod seccomp",
                true,
                Box::new(|s| {
                    s.security_context.as_mut().unwrap().seccomp_profile = Some(SeccompProfile {
                        type_: "Unconfined".into(),
                        ..Default::default()
                    })
                }),
            ),
            (
                "privileged",
                true,
                Box::new(|s| container(s).privileged = Some(true)),
            ),
            (
                "escalation",
                true,
                Box::new(|s| container(s).allow_privilege_escalation = Some(true)),
            ),
            (
                "caps kept",
                true,
                Box::new(|s| container(s).capabilities.as_mut().unwrap().drop = None),
            ),
            (
                "caps added",
                true,
                Box::new(move |s| {
                    container(s).capabilities.as_mut().unwrap().add =
                        Some(vec!["NET_BIND_SERVICE".into(), "CHOWN".into()])
                }),
            ),
            (
                "hostPath",
                true,
                Box::new(|s| {
                    s.volumes.as_mut().unwrap().push(Volume {
                        name: "h".into(),
                        host_path: Some(Default::default()),
                        ..Default::default()
                    })
                }),
            ),
            ("host PID", true, Box::new(|s| s.host_pid = Some(true))),
            (
                "hostPort",
                true,
                Box::new(|s| {
                    s.containers[0].ports = Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                        container_port: 8080,
                        host_port: Some(8080),
                        ..Default::default()
                    }])
                }),
            ),
        ];
        for (rule, kubernetes_too, weaken) in cases {
            let mut s = good.clone();
            weaken(&mut s);
            assert!(
                !openshift_restricted_v2_violations(&s).is_empty(),
                "{rule} not caught"
            );
            assert_eq!(
                !restricted_violations(&s).is_empty(),
                kubernetes_too,
                "{rule}: the Kubernetes profile"
            );
        }
        // NET_BIND_SERVICE is the one capability restricted-v2 lets a pod add.
        let mut s = good.clone();
        container(&mut s).capabilities.as_mut().unwrap().add =
            Some(vec!["NET_BIND_SERVICE".into()]);
        assert_eq!(openshift_restricted_v2_violations(&s), Vec::<String>::new());
    }

    #[test]
    fn the_scratch_pod_mounts_no_claim_and_passes_both_profiles() {
        let secret = SecretMount {
            volume: "auth".into(),
            secret: "registry-auth".into(),
            path: "/auth".into(),
        };
        let s = scratch_pod_spec(
            "drill",
            vec!["true".into()],
            "/scratch",
            "20Gi",
            std::slice::from_ref(&secret),
            &PodOptions::default(),
        );
        assert_eq!(restricted_violations(&s), Vec::<String>::new());
        assert_eq!(openshift_restricted_v2_violations(&s), Vec::<String>::new());
        let volumes = s.volumes.as_ref().unwrap();
        assert!(volumes.iter().all(|v| v.persistent_volume_claim.is_none()));
        let scratch = volumes.iter().find(|v| v.name == "scratch").unwrap();
        assert_eq!(
            scratch.empty_dir.as_ref().unwrap().size_limit,
            Some(Quantity("20Gi".into()))
        );
        let mounts = s.containers[0].volume_mounts.as_ref().unwrap();
        let paths: Vec<&str> = mounts.iter().map(|m| m.mount_path.as_str()).collect();
        assert_eq!(paths, ["/scratch", "/tmp", "/auth"]);
    }

    #[test]
    fn only_the_sub_path_is_mounted_read_only_and_the_root_fs_is_read_only() {
        let s = spec(&PodOptions::default());
        let c = &s.containers[0];
        let m = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(m.mount_path, "/projects");
        assert_eq!(m.sub_path.as_deref(), Some("ws1/projects"));
        assert_eq!(m.read_only, Some(true));
        assert_eq!(
            c.security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
        assert_eq!(s.automount_service_account_token, Some(false));
        assert_eq!(
            s.security_context.as_ref().unwrap().run_as_user,
            None,
            "no fixed UID"
        );
    }

    #[test]
    fn overrides_keep_the_defaults_they_do_not_set() {
        let options = PodOptions {
            pod_security_context: Some(PodSecurityContext {
                run_as_user: Some(1234),
                fs_group: Some(1234),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = spec(&options);
        let ctx = s.security_context.as_ref().unwrap();
        assert_eq!((ctx.run_as_user, ctx.fs_group), (Some(1234), Some(1234)));
        assert_eq!(ctx.run_as_non_root, Some(true));
        assert_eq!(restricted_violations(&s), Vec::<String>::new());
    }
}
