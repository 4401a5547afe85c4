#!/usr/bin/env bash
# The cluster demo (`cargo run -p scenarios -- cluster-demo`) on kind, for machines with Docker:
#
#   scenarios/kind/demo.sh [--dry-run] [--keep] [--name NAME] [--large-mib N]
#
# 1. creates kind cluster NAME (default wsr-demo) and a registry container `kind-registry`
#    (registry:2) on kind's Docker network, published on 127.0.0.1:5001;
# 2. builds the recovery image with images/build.sh (buildah) and loads it and busybox into kind;
# 3. installs the minimal DevWorkspace CRD (manifests/devworkspace-crd.yaml) and wsr-operator with
#    `kubectl apply -k` of the base operator/deploy with the loaded image (a Deployment running
#    `wsr-operator run` from the recovery image as its ServiceAccount), and waits until it is
#    Available (its log: `kubectl logs -n wsr-system deployment/wsr-operator`);
# 4. creates running workspaces alpha and beta (manifests/claim.yaml, manifests/workspace.yaml),
#    writes data into them with `kubectl exec` (sources, .git, dotfiles, an executable, symlinks,
#    a hard link, a large random binary) and records a listing of each tree;
# 5. stops alpha, applies manifests/policy.yaml and triggers a backup with the policy's
#    wsr.dev/run-now annotation (beta, still running, is left alone); then stops and backs up beta;
# 6. deletes the common claim as a disaster would (after the finished backup Jobs, whose pods keep
#    it in use), recreates it, starts alpha with DWO's
#    workspace-restore init container (manifests/restore-pod.yaml) and restores beta with
#    `wsr-restore --in-cluster`; compares each restored tree's listing with the recorded one and
#    prints a summary table. Exits non-zero on any mismatch.
#
# --dry-run prints every step and command without running anything (no tool is needed).
# --keep leaves the cluster and the registry running; otherwise both are removed at the end.
# Needs docker, kind, kubectl (1.24 or newer), buildah, cargo, and network access for registry:2
# and busybox. The YAML files in manifests/ are the ones the local demo and its tests apply.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MANIFESTS=$ROOT/scenarios/kind/manifests

DRY_RUN=false
KEEP=false
NAME=wsr-demo
LARGE_MIB=32
while (($#)); do
    case $1 in
    --dry-run) DRY_RUN=true; shift ;;
    --keep) KEEP=true; shift ;;
    --name) NAME=$2; shift 2 ;;
    --large-mib) LARGE_MIB=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

NS=wsr-demo
OPERATOR_NS=wsr-system
REGISTRY=kind-registry
REGISTRY_PORT=5001
REGISTRY_PATH=$REGISTRY:5000/backups # as pods reach it, by container name on kind's network
BUSYBOX=docker.io/library/busybox:1.37
WORKSPACES=(alpha:workspace0de000000000a1a1 beta:workspace0de000000000b2b2)
KUBE_CONTEXT=kind-$NAME
WORK=$(mktemp -d "${TMPDIR:-/tmp}/wsr-kind-demo.XXXXXX")

step() { printf '\n==> %s\n' "$*"; }
show() { printf '+ %s\n' "$*"; }
# Runs a command, or only prints it with --dry-run.
run() {
    show "$*"
    if ! $DRY_RUN; then "$@"; fi
}
kc() { run kubectl --context "$KUBE_CONTEXT" "$@"; }
# kubectl for reading: prints nothing with --dry-run.
kq() {
    if $DRY_RUN; then return 0; fi
    kubectl --context "$KUBE_CONTEXT" "$@"
}
die() { printf 'demo.sh: %s\n' "$*" >&2; exit 1; }

# Renders manifests/FILE with NAME=VALUE pairs (the ${NAME} placeholders) and applies it.
apply_manifest() {
    local file=$1 script=(-e '') pair
    shift
    for pair in "$@"; do
        local value=${pair#*=}
        value=${value//\\/\\\\}
        value=${value//|/\\|}
        value=${value//&/\\&}
        script+=(-e "s|\${${pair%%=*}}|$value|g")
    done
    show "kubectl apply -f manifests/$file, rendered with: ${*:-(nothing to replace)}"
    if ! $DRY_RUN; then
        sed "${script[@]}" "$MANIFESTS/$file" | kubectl --context "$KUBE_CONTEXT" apply -f -
    fi
}

# Polls `kubectl get ... -o jsonpath` until it prints WANT (a regex) or LIMIT seconds pass.
wait_for() {
    local what=$1 want=$2 limit=$3 got='' i
    shift 3
    show "wait for $what"
    if $DRY_RUN; then return 0; fi
    for ((i = 0; i < limit; i += 2)); do
        got=$(kubectl --context "$KUBE_CONTEXT" "$@" 2>/dev/null || true)
        if [[ $got =~ $want ]]; then return 0; fi
        sleep 2
    done
    die "$what: not reached within $limit s (last: '$got')"
}

# `kubectl wait --for=condition=Established` on a CRD applied a moment ago fails at once
# ("status.conditions accessor error") while the CRD has no conditions yet, instead of waiting.
wait_crd() {
    wait_for "CRD $1 to be Established" '^True$' 30 get "crd/$1" \
        -o 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
}

cleanup() {
    if ! $KEEP && ! $DRY_RUN; then
        kind delete cluster --name "$NAME" >/dev/null 2>&1 || true
        docker rm -f "$REGISTRY" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

check_tools() {
    step "Checking tools"
    local tool missing=()
    for tool in docker kind kubectl buildah cargo; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        if $DRY_RUN; then
            echo "(missing, needed for a real run: ${missing[*]})"
        else
            die "missing tools: ${missing[*]}"
        fi
    fi
}

create_cluster() {
    step "kind cluster $NAME and registry $REGISTRY (127.0.0.1:$REGISTRY_PORT)"
    run kind create cluster --name "$NAME" --wait 120s
    run docker run -d --restart=always --name "$REGISTRY" -p "127.0.0.1:$REGISTRY_PORT:5000" registry:2
    run docker network connect kind "$REGISTRY"
}

load_images() {
    step "Building the recovery image and loading it and busybox into kind"
    local archive=$WORK/wsr-recovery.tar tag
    tag=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml")
    IMAGE=localhost/wsr-recovery:$tag
    run "$ROOT/images/build.sh" --tag "$tag" --push "docker-archive:$archive:$IMAGE"
    run kind load image-archive "$archive" --name "$NAME"
    run docker pull "$BUSYBOX"
    run kind load docker-image "$BUSYBOX" --name "$NAME"
}

build_binaries() {
    step "Building wsr-restore"
    run cargo build --manifest-path "$ROOT/Cargo.toml" -p wsr-restore
    BIN=target/debug
    if ! $DRY_RUN; then
        BIN=$(cargo metadata --manifest-path "$ROOT/Cargo.toml" --format-version 1 --no-deps |
            sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug
    fi
}

install_operator() {
    step "Installing the DevWorkspace CRD and wsr-operator"
    apply_manifest devworkspace-crd.yaml
    wait_crd devworkspaces.workspace.devfile.io
    # The base operator/deploy as it is (two replicas: kind pods have their own network), with
    # the image loaded above, through a kustomization in $WORK (kustomize takes only relative
    # paths to other kustomizations).
    local overlay=$WORK/operator up
    up=$(printf '../%.0s' $(seq "$(tr -cd / <<<"$overlay" | wc -c)"))
    show "kustomization $overlay: resources [operator/deploy], images [$IMAGE]"
    mkdir -p "$overlay"
    printf 'resources: [%s]\nimages: [{name: localhost/wsr-recovery, newName: %s, newTag: "%s"}]\n' \
        "$up${ROOT#/}/operator/deploy" "${IMAGE%:*}" "${IMAGE##*:}" >"$overlay/kustomization.yaml"
    kc apply -k "$overlay"
    wait_crd backuppolicies.wsr.dev
    kc rollout status -n "$OPERATOR_NS" deployment/wsr-operator --timeout=180s
    kc wait --for=condition=Available -n "$OPERATOR_NS" deployment/wsr-operator --timeout=60s
    # Anonymous push: the registry container has no auth, but the policy's Secret is what DWO's
    # workspace-restore init container mounts, so it exists (empty).
    kc create secret generic demo-push -n "$OPERATOR_NS" --type=kubernetes.io/dockerconfigjson \
        --from-literal=.dockerconfigjson='{"auths":{}}'
}

# Writes a workspace's data inside its pod (sh -c GENERATE sh NAME MIB) and records its listing
# in $WORK/NAME.before. Expanded by the pod's shell, not here:
# shellcheck disable=SC2016
GENERATE='set -e; cd /projects
mkdir -p src/app bin .git/objects/pack data docs empty-dir
printf "# %s\n" "$1" > README.md
for i in 1 2 3 4 5 6 7 8; do printf "package app\n\nfunc F%s() int { return %s }\n" $i $i > src/app/f$i.go; done
printf "[core]\n\tbare = false\n" > .git/config
printf "ref: refs/heads/main\n" > .git/HEAD
dd if=/dev/urandom of=.git/objects/pack/pack-1.pack bs=1k count=300 2>/dev/null
printf "TOKEN=abc\n" > .env; chmod 640 .env
printf "set -o vi\n" > .bashrc
printf "#!/bin/sh\necho run\n" > bin/run.sh; chmod 755 bin/run.sh
printf "private\n" > secret.key; chmod 600 secret.key
ln -s ../src/app/f1.go bin/f1.link; ln -s does/not/exist dangling
ln src/app/f2.go docs/f2-hardlink.go
dd if=/dev/urandom of=data/large.bin bs=1M count="$2" 2>/dev/null'
# shellcheck disable=SC2016
LIST='cd /projects && find . -mindepth 1 -exec stat -c "%n %F %a %Y %s %h" {} + | sort && find . -type f -exec sha256sum {} + | sort'

fill_workspace() {
    local name=$1 id=$2
    show "kubectl exec deploy/$id -- (write the workspace's data, $LARGE_MIB MiB binary)"
    kq exec -n "$NS" "deploy/$id" -- /bin/busybox sh -c "$GENERATE" sh "$name" "$LARGE_MIB"
    show "kubectl exec deploy/$id -- (list /projects) > $WORK/$name.before"
    kq exec -n "$NS" "deploy/$id" -- /bin/busybox sh -c "$LIST" >"$WORK/$name.before"
}

create_workspaces() {
    step "Namespace $NS with running workspaces alpha and beta"
    kc create namespace "$NS"
    kc label namespace "$NS" pod-security.kubernetes.io/enforce=restricted "wsr-demo=$NS"
    apply_manifest claim.yaml "NAMESPACE=$NS"
    local entry name id now
    for entry in "${WORKSPACES[@]}"; do
        name=${entry%%:*} id=${entry#*:}
        apply_manifest workspace.yaml "NAMESPACE=$NS" "WORKSPACE=$name" "WORKSPACE_ID=$id" "WORKSPACE_IMAGE=$BUSYBOX"
        now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
        kc patch devworkspace "$name" -n "$NS" --subresource=status --type=merge -p \
            "{\"status\":{\"devworkspaceId\":\"$id\",\"phase\":\"Running\",\"conditions\":[{\"type\":\"Started\",\"status\":\"True\",\"lastTransitionTime\":\"$now\"}]}}"
        kc rollout status -n "$NS" "deploy/$id" --timeout=180s
    done
    # Once both pods run: a pod start may give the whole claim its fsGroup (volume types with
    # ownership management), which would change the modes of data written before.
    for entry in "${WORKSPACES[@]}"; do
        fill_workspace "${entry%%:*}" "${entry#*:}"
    done
}

# Stops a workspace as DWO does: started false, Deployment at 0, status Stopped.
stop_workspace() {
    local name=$1 id=$2 now
    kc patch devworkspace "$name" -n "$NS" --type=merge -p '{"spec":{"started":false}}'
    kc scale -n "$NS" "deploy/$id" --replicas=0
    wait_for "$name's pods to be gone" '^$' 120 get pods -n "$NS" -l "controller.devfile.io/devworkspace_id=$id" -o name
    now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    kc patch devworkspace "$name" -n "$NS" --subresource=status --type=merge -p \
        "{\"status\":{\"phase\":\"Stopped\",\"conditions\":[{\"type\":\"Started\",\"status\":\"False\",\"lastTransitionTime\":\"$now\"}]}}"
}

backup_workspaces() {
    step "Backups: stop a workspace, then run-now on the policy"
    apply_manifest policy.yaml "NAMESPACE=$NS" "RECOVERY_IMAGE=$IMAGE" \
        "REGISTRY={path: \"$REGISTRY_PATH\", plainHTTP: true, authSecret: demo-push}"
    local entry name id round=0
    for entry in "${WORKSPACES[@]}"; do
        name=${entry%%:*} id=${entry#*:}
        round=$((round + 1))
        stop_workspace "$name" "$id"
        kc annotate backuppolicy "$NS" "wsr.dev/run-now=$round" --overwrite
        wait_for "the backup of $name" '^(true|false)$' 600 \
            get devworkspace "$name" -n "$NS" -o 'jsonpath={.metadata.annotations.controller\.devfile\.io/last-backup-successful}'
        if [[ $(kq get devworkspace "$name" -n "$NS" -o 'jsonpath={.metadata.annotations.controller\.devfile\.io/last-backup-successful}') == false ]]; then
            die "the backup of $name failed: $(kq get devworkspace "$name" -n "$NS" -o 'jsonpath={.metadata.annotations.controller\.devfile\.io/last-backup-error}')"
        fi
        if ((round == 1)) && [[ -n $(kq get jobs -n "$NS" -l controller.devfile.io/devworkspace_name=beta -o name) ]]; then
            die "the running workspace beta got a backup Job"
        fi
        record_backup "$name"
    done
}

# The backup's digest and its Job's duration, for the summary (the Job goes with the disaster).
declare -A DIGEST BACKUP_S
record_backup() {
    local name=$1 job start='' end=''
    DIGEST[$name]=$(kq get devworkspace "$name" -n "$NS" -o 'jsonpath={.metadata.annotations.wsr\.dev/last-backup-digest}')
    job=$(kq get devworkspace "$name" -n "$NS" -o 'jsonpath={.metadata.annotations.wsr\.dev/last-backup-job}')
    BACKUP_S[$name]=-
    if [[ -n $job ]]; then
        start=$(kq get job "$job" -n "$NS" -o 'jsonpath={.status.startTime}' || true)
        end=$(kq get job "$job" -n "$NS" -o 'jsonpath={.status.completionTime}' || true)
    fi
    if [[ -n ${start:-} && -n ${end:-} ]]; then
        BACKUP_S[$name]=$(($(date -d "$end" +%s) - $(date -d "$start" +%s)))
    fi
}

disaster() {
    step "Disaster: the common claim and both workspaces' data are lost"
    # The finished backup pods still name the claim, which keeps it in use; they go first.
    kc delete jobs -n "$NS" -l controller.devfile.io/backup-job=true --cascade=foreground --wait=true
    kc delete pvc claim-devworkspace -n "$NS" --wait=true --timeout=120s
    apply_manifest claim.yaml "NAMESPACE=$NS"
}

# Records how long restoring NAME took and compares its listing with the one before.
declare -A RESTORE_S VERDICT
verify() {
    local name=$1 pod=$2 container=$3 seconds=$4
    RESTORE_S[$name]=$seconds
    show "kubectl exec $pod -c $container -- (list /projects) | diff $WORK/$name.before -"
    if $DRY_RUN; then VERDICT[$name]=dry-run; return; fi
    kubectl --context "$KUBE_CONTEXT" exec -n "$NS" "$pod" -c "$container" -- /bin/busybox sh -c "$LIST" >"$WORK/$name.after"
    if diff -u "$WORK/$name.before" "$WORK/$name.after"; then
        VERDICT[$name]="identical ($(wc -l <"$WORK/$name.before") lines)"
    else
        VERDICT[$name]=MISMATCH
    fi
}

restore_workspaces() {
    step "alpha: started with DWO's workspace-restore init container"
    local started id=${WORKSPACES[0]#*:}
    started=$(date +%s)
    apply_manifest restore-pod.yaml "NAMESPACE=$NS" WORKSPACE=alpha "WORKSPACE_ID=$id" \
        "RECOVERY_IMAGE=$IMAGE" "WORKSPACE_IMAGE=$BUSYBOX" ORAS_EXTRA_ARGS=--plain-http \
        "BACKUP_IMAGE=$REGISTRY_PATH/$NS/alpha:latest"
    kc wait -n "$NS" --for=condition=Ready "pod/$id-restored" --timeout=600s
    verify alpha "pod/$id-restored" tools $(($(date +%s) - started))

    step "beta: restored with wsr-restore --in-cluster"
    id=${WORKSPACES[1]#*:}
    started=$(date +%s)
    run "$BIN/wsr-restore" --kubeconfig "$WORK/admin.kubeconfig" --in-cluster --namespace "$NS" --workspace beta \
        --image "$IMAGE" --image-pull-policy IfNotPresent --plain-http --run-as-user 1234 --fs-group 1234
    local seconds=$(($(date +%s) - started))
    kc scale -n "$NS" "deploy/$id" --replicas=1
    kc rollout status -n "$NS" "deploy/$id" --timeout=180s
    verify beta "deploy/$id" tools "$seconds"
}

summary() {
    step "Summary"
    local entry name by
    printf '%-9s %-26s %-21s %8s %8s  %s\n' WORKSPACE "RESTORED BY" "BACKUP DIGEST" BACKUP RESTORE VERDICT
    for entry in "${WORKSPACES[@]}"; do
        name=${entry%%:*}
        by="wsr-restore --in-cluster"
        if [[ $name == alpha ]]; then by="workspace-restore init"; fi
        printf '%-9s %-26s %-21s %7ss %7ss  %s\n' "$name" "$by" "$(printf %.19s "${DIGEST[$name]:-}")" \
            "${BACKUP_S[$name]:--}" "${RESTORE_S[$name]:--}" "${VERDICT[$name]:--}"
    done
    for entry in "${WORKSPACES[@]}"; do
        if [[ ${VERDICT[${entry%%:*}]:-} == MISMATCH ]]; then die "a restored tree differs"; fi
    done
}

check_tools
create_cluster
show "kind get kubeconfig --name $NAME > $WORK/admin.kubeconfig"
if ! $DRY_RUN; then kind get kubeconfig --name "$NAME" >"$WORK/admin.kubeconfig"; fi
build_binaries
load_images
install_operator
create_workspaces
backup_workspaces
disaster
restore_workspaces
summary
