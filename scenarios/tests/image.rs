//! The recovery image (`images/build.sh`) run with podman exactly as upstream DevWorkspace
//! Operator runs its `project-backup` image: as the backup Job (`args: ["/workspace-recovery.sh",
//! "--backup"]` through the `/entrypoint.sh` ENTRYPOINT, the whole PVC at `/workspace`, the
//! auth Secret at `/tmp/.docker`) and as the `workspace-restore` init container
//! (`command: ["/workspace-recovery.sh"]`, `args: ["--restore"]`, the `<id>/projects` subPath
//! at `/projects`). Both run as an arbitrary uid with gid 0, on a read-only root filesystem
//! with no writable tmpfs at all, every capability dropped and no privilege escalation, like
//! OpenShift's `restricted-v2`. A third run logs in with the pod's service-account token
//! mounted where Kubernetes mounts it, as upstream's script does for OpenShift's registry.
//!
//! Needs podman, buildah and runc (`scripts/test.sh` installs them) and fails, rather than
//! skips, without them. The image packages the binaries of this test run's own build (found
//! next to this test executable; `scripts/test.sh` builds them static), so it costs about a
//! second and no extra compilation.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wsr_transport::testing::{CLUSTER_REGISTRY_NAME, Grant, RegistryKind, TestRegistry};
use wsr_transport::{DEFAULT_SERVICE_ACCOUNT_DIR, SERVICE_ACCOUNT_USER};

/// An arbitrary non-root uid, as OpenShift assigns; group 0 as in upstream's image.
const USER: &str = "12345:0";
const WORKSPACE_ID: &str = "workspace7f3c1e2a9b8d4c05";
const NAMESPACE: &str = "jdoe-devspaces";
const NAME: &str = "my-workspace";
/// How long one container may run before the test gives up on it.
const CONTAINER_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `command` to completion or kills it after `timeout`; output is captured.
fn run(mut command: Command, timeout: Duration) -> Output {
    let what = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Fails the test with a clear message when a container tool is missing or unusable.
fn require_container_tools() {
    for tool in ["podman", "buildah"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "the image test needs `{tool}` (and runc): apt-get install -y podman buildah runc \
             (scripts/test.sh installs them when run as root)"
        );
    }
    let runc = ["/usr/sbin/runc", "/usr/bin/runc", "/sbin/runc"]
        .iter()
        .any(|p| Path::new(p).exists())
        || Command::new("runc")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    assert!(
        runc,
        "the image test needs runc (podman's default crun fails in this kind of container): apt-get install -y runc"
    );
}

/// Podman on the image storage `images/build.sh` writes to, with the flags this machine needs
/// (see shared/reference/environment.md §3: vfs storage, runc, cgroupfs, explicit ulimits).
struct Podman {
    storage: PathBuf,
}

impl Podman {
    fn command(&self) -> Command {
        scenarios::podman::command(&self.storage)
    }

    fn output(&self, args: &[&str]) -> Output {
        let mut command = self.command();
        command.args(args);
        let output = run(command, CONTAINER_TIMEOUT);
        assert!(
            output.status.success(),
            "podman {args:?}: {}",
            describe(&output)
        );
        output
    }

    /// Builds the image with `images/build.sh` from this run's binaries; returns its reference.
    fn build_image(&self) -> String {
        let binaries = scenarios::podman::test_build_binaries();
        scenarios::podman::build_recovery_image(&binaries, &self.storage)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
}

/// One container as a Kubernetes pod spec describes it, rendered as `podman run` arguments.
#[derive(Default)]
struct Container<'a> {
    image: &'a str,
    /// `command`: replaces the image ENTRYPOINT.
    command: Option<&'a str>,
    args: Vec<&'a str>,
    env: Vec<(&'a str, String)>,
    /// (host path, container path, read-only)
    mounts: Vec<(PathBuf, &'a str, bool)>,
    network: &'a str,
}

impl Container<'_> {
    /// Runs the container and fails the test, with the registry's log, unless it exits 0.
    fn run_ok(&self, podman: &Podman, what: &str, registry: &TestRegistry) -> Output {
        let out = self.run(podman);
        assert!(
            out.status.success(),
            "{what} failed: {}\nregistry log:\n{}",
            describe(&out),
            registry.log_tail(20)
        );
        out
    }

    fn run(&self, podman: &Podman) -> Output {
        let mut command = podman.command();
        command.args(["run", "--rm", "--pull", "never"]);
        command.args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ]);
        // OpenShift restricted-v2: arbitrary uid in group 0, no capabilities, no escalation.
        command.args([
            "--user",
            USER,
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
        ]);
        // readOnlyRootFilesystem without even a /tmp emptyDir: only the mounts are writable.
        command.args(["--read-only", "--read-only-tmpfs=false"]);
        command.args(["--network", self.network]);
        for (host, path, read_only) in &self.mounts {
            let mut spec = format!("{}:{path}", host.display());
            if *read_only {
                spec.push_str(":ro");
            }
            command.arg("--volume").arg(spec);
        }
        for (name, value) in &self.env {
            command.arg("--env").arg(format!("{name}={value}"));
        }
        if let Some(entrypoint) = self.command {
            command.arg("--entrypoint").arg(entrypoint);
        }
        command.arg(self.image).args(&self.args);
        run(command, CONTAINER_TIMEOUT)
    }
}

/// Sets the mtime (and atime) of `path` itself, not of a symlink's target, to whole `seconds`:
/// the archive's mtime resolution, so restored times must match exactly.
fn set_mtime(path: &Path, seconds: i64) {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let time = libc::timespec {
        tv_sec: seconds as libc::time_t,
        tv_nsec: 0,
    };
    let times = [time, time];
    // SAFETY: a valid NUL-terminated path and a two-element timespec array, as utimensat requires.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "utimensat {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn write(path: &Path, contents: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Deterministic incompressible bytes (xorshift64).
fn noise(len: usize, mut state: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A small project tree owned by root:root, as the test runs it, that the container's uid can
/// read only through group 0 in places: dotfiles at the top level (which upstream's restore
/// loses), a `.git` with read-only objects, exec bits, group-only files, an empty directory,
/// relative, absolute, directory and dangling symlinks, a hard link, a non-ASCII name, a path
/// longer than 100 bytes, an empty file and 3 MiB of incompressible data; every entry with its
/// own whole-second mtime.
fn populate(root: &Path) {
    write(&root.join("README.md"), b"# my project\n", 0o644);
    write(&root.join(".gitignore"), b"target/\n", 0o644);
    write(&root.join(".env"), b"TOKEN=not-a-secret\n", 0o640);
    write(&root.join(".git/HEAD"), b"ref: refs/heads/main\n", 0o644);
    write(
        &root.join(".git/config"),
        b"[core]\n\tbare = false\n",
        0o644,
    );
    write(
        &root.join(".git/objects/ab/cdef0123456789"),
        &noise(517, 1),
        0o444,
    );
    write(
        &root.join("src/main.rs"),
        b"fn main() { println!(\"hello\"); }\n",
        0o644,
    );
    write(&root.join("src/util/mod.rs"), b"pub fn util() {}\n", 0o644);
    write(
        &root.join("scripts/run.sh"),
        b"#!/bin/sh\necho run\n",
        0o755,
    );
    write(
        &root.join("scripts/group-exec.sh"),
        b"#!/bin/sh\necho group\n",
        0o750,
    );
    write(
        &root.join("private/notes.txt"),
        b"readable through gid 0 only\n",
        0o640,
    );
    write(&root.join("empty.txt"), b"", 0o644);
    write(
        &root.join("docs/na\u{ef}ve r\u{e9}sum\u{e9} \u{1f680}.txt"),
        "unicode name\n".as_bytes(),
        0o644,
    );
    let long = format!("deep/{}/{}.txt", "d".repeat(60), "f".repeat(70));
    write(&root.join(long), b"long path\n", 0o644);
    write(
        &root.join("data/blob.bin"),
        &noise(3 << 20, 0x9e37_79b9_7f4a_7c15),
        0o644,
    );
    fs::create_dir(root.join("empty-dir")).unwrap();
    fs::hard_link(root.join("src/main.rs"), root.join("src/main-hardlink.rs")).unwrap();
    symlink("README.md", root.join("readme-link")).unwrap();
    symlink("../src", root.join("docs/src-link")).unwrap();
    symlink("/etc/hostname", root.join("absolute-link")).unwrap();
    symlink("does/not/exist", root.join("dangling-link")).unwrap();
    for (dir, mode) in [
        (".git", 0o755),
        ("private", 0o750),
        ("empty-dir", 0o750),
        ("scripts", 0o755),
    ] {
        fs::set_permissions(root.join(dir), fs::Permissions::from_mode(mode)).unwrap();
    }

    // Distinct times, children before parents so creating entries does not touch them again.
    let mut entries = Vec::new();
    collect(root, root, &mut entries);
    entries.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, path) in entries.iter().enumerate() {
        set_mtime(&root.join(path), 1_600_000_000 + 86_400 * i as i64 + 7);
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.push(path.strip_prefix(root).unwrap().to_path_buf());
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            collect(root, &path, out);
        }
    }
}

/// What must survive a round trip: type, permission bits, mtime to the nanosecond, size,
/// content and link target. Owners are not compared: an unprivileged restore owns its files.
#[derive(Debug, PartialEq, Eq)]
struct Meta {
    kind: &'static str,
    mode: u32,
    mtime: (i64, i64),
    size: u64,
    sha256: Option<String>,
    link: Option<PathBuf>,
    nlink: u64,
}

/// Every entry below `root` (not `root` itself), plus the groups of hard-linked paths.
fn snapshot(root: &Path) -> (BTreeMap<PathBuf, Meta>, BTreeSet<Vec<PathBuf>>) {
    let mut paths = Vec::new();
    collect(root, root, &mut paths);
    let mut entries = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    for path in paths {
        let full = root.join(&path);
        let md = fs::symlink_metadata(&full).unwrap();
        let file_type = md.file_type();
        let kind = if file_type.is_dir() {
            "dir"
        } else if file_type.is_symlink() {
            "symlink"
        } else if file_type.is_file() {
            "file"
        } else {
            "other"
        };
        if file_type.is_file() {
            inodes.entry(md.ino()).or_default().push(path.clone());
        }
        let meta = Meta {
            kind,
            mode: md.mode() & 0o7777,
            mtime: (md.mtime(), md.mtime_nsec()),
            size: if file_type.is_dir() { 0 } else { md.size() },
            sha256: file_type
                .is_file()
                .then(|| hex::encode(Sha256::digest(fs::read(&full).unwrap()))),
            link: file_type
                .is_symlink()
                .then(|| fs::read_link(&full).unwrap()),
            nlink: if file_type.is_file() { md.nlink() } else { 0 },
        };
        entries.insert(path, meta);
    }
    let links = inodes
        .into_values()
        .filter(|group| group.len() > 1)
        .map(|mut group| {
            group.sort();
            group
        })
        .collect();
    (entries, links)
}

fn assert_same_tree(expected: &Path, actual: &Path) {
    let (want, want_links) = snapshot(expected);
    let (got, got_links) = snapshot(actual);
    let mut problems = Vec::new();
    for (path, meta) in &want {
        match got.get(path) {
            None => problems.push(format!("missing {}", path.display())),
            Some(m) if m != meta => {
                problems.push(format!("{}: expected {meta:?}, got {m:?}", path.display()))
            }
            Some(_) => {}
        }
    }
    for path in got.keys().filter(|p| !want.contains_key(*p)) {
        problems.push(format!("unexpected {}", path.display()));
    }
    if want_links != got_links {
        problems.push(format!(
            "hard links: expected {want_links:?}, got {got_links:?}"
        ));
    }
    assert!(
        problems.is_empty(),
        "restored tree differs from the source:\n{}",
        problems.join("\n")
    );
    assert!(
        want.len() > 20 && want_links.len() == 1,
        "the source tree is not what populate() builds"
    );
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The registry's docker config with its entry also under `localhost:PORT`, the second name
/// the test reaches it by.
fn docker_config(registry: &TestRegistry) -> Vec<u8> {
    let mut json: serde_json::Value =
        serde_json::from_slice(&fs::read(registry.auth_file().unwrap()).unwrap()).unwrap();
    let entry = json["auths"][registry.host()].clone();
    assert!(entry["auth"].is_string(), "unexpected auth file: {json}");
    let port = registry.host().rsplit_once(':').unwrap().1.to_owned();
    json["auths"][format!("localhost:{port}")] = entry;
    serde_json::to_vec_pretty(&json).unwrap()
}

/// The image holds exactly the files the README lists (no shell, no package manager), and
/// its config is upstream's: ENTRYPOINT /entrypoint.sh, uid 1000 in group 0.
fn check_image_contents(podman: &Podman, image: &str) {
    let config = podman.output(&["image", "inspect", "--format", "{{json .Config}}", image]);
    let config: serde_json::Value = serde_json::from_slice(&config.stdout).unwrap();
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/entrypoint.sh"]),
        "{config}"
    );
    assert_eq!(config["User"], "1000:0", "{config}");
    assert!(
        config["Cmd"].is_null(),
        "upstream's image has no CMD: {config}"
    );

    let created = podman.output(&["create", "--pull", "never", image]);
    let id = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("rootfs.tar");
    podman.output(&["export", "--output", archive.to_str().unwrap(), &id]);
    podman.output(&["rm", &id]);
    let mut tar = Command::new("tar");
    tar.arg("--numeric-owner").arg("-tvf").arg(&archive);
    let listing = run(tar, CONTAINER_TIMEOUT);
    assert!(listing.status.success(), "tar -tvf: {}", describe(&listing));
    // "mode owner size date time path[ -> target]" -> "mode owner path[ -> target]"
    let entries: Vec<String> = String::from_utf8(listing.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            format!("{} {} {}", fields[0], fields[1], fields[5..].join(" "))
        })
        .collect();
    let expected = [
        "lrwxrwxrwx 0/0 entrypoint.sh -> usr/local/bin/workspace-recovery",
        "drwxr-xr-x 0/0 etc/",
        "-rw-r--r-- 0/0 etc/group",
        "-rw-r--r-- 0/0 etc/passwd",
        "drwxr-xr-x 0/0 etc/ssl/",
        "drwxr-xr-x 0/0 etc/ssl/certs/",
        "-rw-r--r-- 0/0 etc/ssl/certs/ca-certificates.crt",
        "drwxr-xr-x 0/0 projects/",
        "drwxrwxrwt 0/0 tmp/",
        "drwxr-xr-x 0/0 usr/",
        "drwxr-xr-x 0/0 usr/local/",
        "drwxr-xr-x 0/0 usr/local/bin/",
        "-rwxr-xr-x 0/0 usr/local/bin/workspace-recovery",
        "-rwxr-xr-x 0/0 usr/local/bin/wsr-backup",
        "-rwxr-xr-x 0/0 usr/local/bin/wsr-operator",
        "-rwxr-xr-x 0/0 usr/local/bin/wsr-restore",
        "drwxr-xr-x 0/0 workspace/",
        "lrwxrwxrwx 0/0 workspace-recovery.sh -> usr/local/bin/workspace-recovery",
    ];
    assert_eq!(
        entries, expected,
        "image contents changed; update images/README.md too"
    );
}

#[test]
fn recovery_image_is_a_drop_in_for_upstream_project_backup() {
    require_container_tools();
    let started = Instant::now();
    let podman = Podman {
        storage: scenarios::podman::image_storage(),
    };
    let image = podman.build_image();
    eprintln!("built {image} in {:?}", started.elapsed());
    check_image_contents(&podman, &image);

    let mut registry = TestRegistry::start(RegistryKind::TlsAuth).unwrap();
    let port = registry.host().rsplit_once(':').unwrap().1.to_owned();
    let scratch = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let path = scratch.path().join(name);
        fs::create_dir_all(&path).unwrap();
        path
    };

    // The common PVC, mounted whole at /workspace; the workspace's files at <id>/projects.
    // Made 0750 root:root, so the container's uid gets in only through group 0.
    let pvc = dir("pvc");
    let projects = dir(&format!("pvc/{WORKSPACE_ID}/projects"));
    populate(&projects);
    for path in [scratch.path(), &pvc, &pvc.join(WORKSPACE_ID)] {
        chmod(path, 0o750);
    }

    // The registry auth Secret (`.dockerconfigjson`, default mode 0644 in the Job) plus the
    // registry's CA, which DWOC `oras.extraArgs: --ca-file ...` points at.
    let backup_secret = dir("backup-secret");
    write(
        &backup_secret.join(".dockerconfigjson"),
        &docker_config(&registry),
        0o644,
    );
    write(
        &backup_secret.join("ca.crt"),
        &fs::read(registry.ca_file().unwrap()).unwrap(),
        0o644,
    );

    // §2.4: the backup Job's only container, `args` only, so the ENTRYPOINT runs them.
    let backup = Container {
        image: &image,
        command: None,
        args: vec!["/workspace-recovery.sh", "--backup"],
        env: vec![
            ("DEVWORKSPACE_NAME", NAME.into()),
            ("DEVWORKSPACE_NAMESPACE", NAMESPACE.into()),
            ("WORKSPACE_ID", WORKSPACE_ID.into()),
            (
                "BACKUP_SOURCE_PATH",
                format!("/workspace/{WORKSPACE_ID}/projects"),
            ),
            // Untrimmed, as DWO passes `registry.path`.
            (
                "DEVWORKSPACE_BACKUP_REGISTRY",
                format!("{}/backups/", registry.host()),
            ),
            ("ORAS_EXTRA_ARGS", "--ca-file /tmp/.docker/ca.crt".into()),
            (
                "REGISTRY_AUTH_FILE",
                "/tmp/.docker/.dockerconfigjson".into(),
            ),
        ],
        mounts: vec![
            (pvc.clone(), "/workspace", false),
            (dir("build-storage"), "/var/lib/containers", false),
            (backup_secret, "/tmp/.docker", true),
        ],
        network: "host",
    };
    let t = Instant::now();
    backup.run_ok(&podman, "backup Job", &registry);
    eprintln!("backup container: {:?}", t.elapsed());

    // §4.3: the workspace-restore init container on a fresh, empty PVC. The Secret is mounted
    // with DWO's defaultMode 0640 (readable through gid 0). This time the registry is reached
    // by name (`localhost`, resolved from /etc/hosts without NSS) and trusted through the
    // image's system trust store directories instead of --ca-file.
    let new_pvc = dir("new-pvc");
    let target = dir(&format!("new-pvc/{WORKSPACE_ID}/projects"));
    chmod(&target, 0o770);
    let restore_secret = dir("restore-secret");
    write(
        &restore_secret.join(".dockerconfigjson"),
        &docker_config(&registry),
        0o640,
    );
    let mut restore = Container {
        image: &image,
        command: Some("/workspace-recovery.sh"),
        args: vec!["--restore"],
        env: vec![
            ("DEVWORKSPACE_NAMESPACE", NAMESPACE.into()),
            ("DEVWORKSPACE_NAME", NAME.into()),
            ("DEVWORKSPACE_ID", WORKSPACE_ID.into()),
            (
                "DEVWORKSPACE_CREATOR",
                "5f0e6c1a-1234-4c2b-9d4e-000000000000".into(),
            ),
            ("DEVWORKSPACE_IDLE_TIMEOUT", "1800".into()),
            ("PROJECTS_ROOT", "/projects".into()),
            (
                "BACKUP_IMAGE",
                format!("localhost:{port}/backups/{NAMESPACE}/{NAME}:latest"),
            ),
            (
                "REGISTRY_AUTH_FILE",
                "/tmp/.docker/.dockerconfigjson".into(),
            ),
        ],
        mounts: vec![
            (target.clone(), "/projects", false),
            (restore_secret, "/tmp/.docker", true),
            // The common-PVC workaround mount the first init container gets.
            (new_pvc.join(WORKSPACE_ID), "/tmp/workspace-storage", false),
            (
                registry.ca_file().unwrap().to_path_buf(),
                "/etc/pki/tls/certs/wsr-test-registry.crt",
                true,
            ),
        ],
        network: "host",
    };
    let t = Instant::now();
    restore.run_ok(&podman, "workspace-restore", &registry);
    eprintln!("restore container: {:?}", t.elapsed());
    assert_same_tree(&projects, &target);
    let restored_uid = fs::symlink_metadata(target.join("README.md"))
        .unwrap()
        .uid();
    assert_eq!(
        restored_uid, 12345,
        "restored files belong to the container's uid"
    );

    // Restarting the workspace: /projects is no longer empty, so the init container must
    // succeed without touching the network; the registry is gone and so is the network.
    registry.stop();
    restore.network = "none";
    let out = restore.run(&podman);
    assert!(
        out.status.success(),
        "restore on a non-empty /projects must exit 0: {}",
        describe(&out)
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("not empty"),
        "expected a skip message: {}",
        describe(&out)
    );
    assert_same_tree(&projects, &target);
    eprintln!("total: {:?}", started.elapsed());
}

/// OpenShift's integrated registry without a Secret: the pod's service account is mounted
/// where Kubernetes mounts it (`token`, `service-ca.crt`), and the backup Job and the
/// workspace-restore init container log in with it, with no `REGISTRY_AUTH_FILE` and no
/// `--ca-file`. The registry is the token registry under a `svc.cluster.local` name, which
/// `ORAS_EXTRA_ARGS --resolve` maps to 127.0.0.1.
#[test]
fn recovery_image_logs_in_with_the_pods_service_account() {
    require_container_tools();
    let podman = Podman {
        storage: scenarios::podman::image_storage(),
    };
    let image = podman.build_image();
    let registry = TestRegistry::start(RegistryKind::TlsToken).unwrap();
    let port = registry.host().rsplit_once(':').unwrap().1.to_owned();
    let host = format!("{CLUSTER_REGISTRY_NAME}:{port}");
    let token = format!("image-sa-token-{port}-{}", std::process::id());
    let issuer = registry.token_issuer().unwrap();
    issuer.add_user(SERVICE_ACCOUNT_USER, &token, Grant::ReadWrite);

    let scratch = tempfile::tempdir().unwrap();
    chmod(scratch.path(), 0o750);
    let dir = |name: &str| {
        let path = scratch.path().join(name);
        fs::create_dir_all(&path).unwrap();
        path
    };
    let account = dir("serviceaccount");
    write(&account.join("token"), token.as_bytes(), 0o644);
    let ca = fs::read(registry.ca_file().unwrap()).unwrap();
    write(&account.join("service-ca.crt"), &ca, 0o644);
    let workspace = dir("pvc");
    let projects = dir("pvc/projects");
    populate(&projects);
    chmod(&workspace, 0o750);
    let extra = format!("--resolve {host}:127.0.0.1");
    let backup = Container {
        image: &image,
        command: None,
        args: vec!["/workspace-recovery.sh", "--backup"],
        env: vec![
            ("DEVWORKSPACE_NAME", NAME.into()),
            ("DEVWORKSPACE_NAMESPACE", NAMESPACE.into()),
            ("BACKUP_SOURCE_PATH", "/workspace/projects".into()),
            ("DEVWORKSPACE_BACKUP_REGISTRY", host.clone()),
            ("ORAS_EXTRA_ARGS", extra.clone()),
        ],
        mounts: vec![
            (workspace, "/workspace", false),
            (account.clone(), DEFAULT_SERVICE_ACCOUNT_DIR, true),
        ],
        network: "host",
    };
    let out = backup.run_ok(&podman, "backup Job", &registry);
    assert!(!describe(&out).contains(&token), "the token was logged");

    let target = dir("new-pvc/projects");
    chmod(&target, 0o770);
    let restore = Container {
        image: &image,
        command: Some("/workspace-recovery.sh"),
        args: vec!["--restore"],
        env: vec![
            ("PROJECTS_ROOT", "/projects".into()),
            ("BACKUP_IMAGE", format!("{host}/{NAMESPACE}/{NAME}:latest")),
            ("ORAS_EXTRA_ARGS", extra),
        ],
        mounts: vec![
            (target.clone(), "/projects", false),
            (account, DEFAULT_SERVICE_ACCOUNT_DIR, true),
        ],
        network: "host",
    };
    restore.run_ok(&podman, "workspace-restore", &registry);
    assert_same_tree(&projects, &target);
    let logins = issuer
        .requests()
        .iter()
        .filter(|r| r.user.as_deref() == Some(SERVICE_ACCOUNT_USER) && r.status == 200)
        .count();
    assert!(logins >= 2, "{:?}", issuer.requests());
}

/// What upstream's containers also meet: `/entrypoint.sh` with no arguments exits 0 (upstream's
/// `exec "$@"` execs nothing); a restore into a `/projects` owned by the workspace's uid (1234,
/// DWO's default on Kubernetes) while the init container runs as another uid fails before any
/// download, saying who owns what and naming the step (upstream #1636); with write access
/// through group 0 (OpenShift's arbitrary uid) it works.
#[test]
fn recovery_image_entrypoint_and_foreign_owned_projects() {
    require_container_tools();
    let podman = Podman {
        storage: scenarios::podman::image_storage(),
    };
    let image = podman.build_image();
    let bare = Container {
        image: &image,
        network: "none",
        ..Default::default()
    };
    let out = bare.run(&podman);
    assert!(
        out.status.success(),
        "/entrypoint.sh without arguments: {}",
        describe(&out)
    );

    let registry = TestRegistry::start(RegistryKind::Plain).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    chmod(scratch.path(), 0o755);
    let source = scratch.path().join("source");
    populate(&source);
    let reference = format!("{}/{NAMESPACE}/{NAME}:latest", registry.host());
    let binaries = scenarios::podman::test_build_binaries();
    let backup = Command::new(binaries.join("wsr-backup"))
        .arg("--source")
        .arg(&source)
        .args(["--to", &reference, "--format", "dwo", "--plain-http"])
        .output()
        .unwrap();
    assert!(backup.status.success(), "{}", describe(&backup));

    let restore_into = |projects: &Path| {
        Container {
            image: &image,
            command: Some("/workspace-recovery.sh"),
            args: vec!["--restore"],
            env: vec![
                ("PROJECTS_ROOT", "/projects".into()),
                ("BACKUP_IMAGE", reference.clone()),
                ("ORAS_EXTRA_ARGS", "--plain-http".into()),
            ],
            mounts: vec![(projects.to_owned(), "/projects", false)],
            network: "host",
        }
        .run(&podman)
    };
    let foreign = scratch.path().join("foreign");
    fs::create_dir(&foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(1234), Some(1234)).unwrap();
    chmod(&foreign, 0o755);
    let out = restore_into(&foreign);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for says in [
        "error: write: cannot use target /projects",
        "owned by uid 1234 gid 1234 with mode 0755",
        "runs as uid 12345 gid 0",
    ] {
        assert!(
            stderr.contains(says),
            "expected {says:?}: {}",
            describe(&out)
        );
    }
    assert_eq!(fs::read_dir(&foreign).unwrap().count(), 0);

    let shared = scratch.path().join("group-writable");
    fs::create_dir(&shared).unwrap();
    std::os::unix::fs::chown(&shared, Some(1234), Some(0)).unwrap();
    chmod(&shared, 0o775);
    let out = restore_into(&shared);
    assert!(out.status.success(), "{}", describe(&out));
    assert_same_tree(&source, &shared);
}
