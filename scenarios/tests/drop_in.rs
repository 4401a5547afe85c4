//! Drop-in fidelity: what upstream's `workspace-recovery.sh` accepts, wsr accepts too. The
//! binaries run as the recovery image runs them (`wsr-backup --dwo-env`, `wsr-restore init`,
//! upstream's environment) against real registries, and the Go `oras` CLI, upstream's client,
//! gets the same `ORAS_EXTRA_ARGS` against the same registry: each pulls what the other pushed.

mod common;

use common::*;
use scenarios::oras;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use wsr_transport::SERVICE_ACCOUNT_USER;
use wsr_transport::testing::{
    CLUSTER_REGISTRY_NAME, Grant, READER_USER, RegistryKind, TestRegistry, write_auth_file,
};

/// Runs the binaries and the oras CLI with a clean environment of upstream's variables.
struct DropIn {
    bin: PathBuf,
    oras: PathBuf,
    work: Dir,
}

impl DropIn {
    fn new() -> DropIn {
        let work = sample(false);
        std::fs::create_dir(work.path().join("home")).unwrap();
        DropIn {
            bin: scenarios::podman::test_build_binaries(),
            oras: oras::cli().unwrap_or_else(|why| panic!("{why}")),
            work,
        }
    }

    fn src(&self) -> PathBuf {
        self.work.path().join("projects")
    }

    /// A command with no credentials from the developer's home.
    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.work.path().join("home"))
            .env("WSR_LOG", "info")
            // The unreachable-registry case: retry for seconds, not the production minute.
            .env("WSR_RETRY_SECONDS", "4");
        c
    }

    /// `/workspace-recovery.sh --backup` as DWO's Job runs it, to `<registry>/ns/<name>:latest`.
    fn backup(&self, registry: &str, name: &str, extra: &str, auth: Option<&Path>) -> Output {
        let mut c = self.backup_command(registry, name, extra);
        if let Some(auth) = auth {
            c.env("REGISTRY_AUTH_FILE", auth);
        }
        c.output().unwrap()
    }

    fn backup_command(&self, registry: &str, name: &str, extra: &str) -> Command {
        let mut c = self.command(&self.bin.join("wsr-backup"));
        c.arg("--dwo-env")
            .env("BACKUP_SOURCE_PATH", self.src())
            .env("DEVWORKSPACE_BACKUP_REGISTRY", registry)
            .env("DEVWORKSPACE_NAMESPACE", "ns")
            .env("DEVWORKSPACE_NAME", name)
            .env("ORAS_EXTRA_ARGS", extra);
        c
    }

    /// `/workspace-recovery.sh --restore` as DWO's init container runs it, into a new directory.
    fn restore(&self, image: &str, into: &str, extra: &str, auth: Option<&Path>) -> Output {
        let mut c = self.restore_command(image, into, extra);
        if let Some(auth) = auth {
            c.env("REGISTRY_AUTH_FILE", auth);
        }
        c.output().unwrap()
    }

    fn restore_command(&self, image: &str, into: &str, extra: &str) -> Command {
        let projects = self.work.path().join(into);
        std::fs::create_dir(&projects).unwrap();
        let mut c = self.command(&self.bin.join("wsr-restore"));
        c.arg("init")
            .env("BACKUP_IMAGE", image)
            .env("PROJECTS_ROOT", &projects)
            .env("ORAS_EXTRA_ARGS", extra);
        c
    }

    /// Upstream's backup: `tar -czf` of the source, then `oras push … <ORAS_EXTRA_ARGS…>`.
    fn oras_push(&self, image: &str, name: &str, extra: &[&str]) -> Output {
        let dir = self.work.path().join(format!("push-{name}"));
        std::fs::create_dir(&dir).unwrap();
        let tar = Command::new("tar")
            .args(["-czf", oras::ARCHIVE_NAME, "-C"])
            .arg(self.src())
            .arg(".")
            .current_dir(&dir)
            .status()
            .unwrap();
        assert!(tar.success());
        self.command(&self.oras)
            .args(oras::push_args(image, name, "ns", extra))
            .current_dir(&dir)
            .output()
            .unwrap()
    }

    /// Upstream's restore: `oras pull … <ORAS_EXTRA_ARGS…>`, then `tar -xzf` into `into`.
    fn oras_pull(&self, image: &str, into: &str, extra: &[&str]) -> Output {
        let pulled = self.work.path().join(format!("{into}-pulled"));
        let out = self
            .command(&self.oras)
            .args(oras::pull_args(image, &pulled, extra))
            .output()
            .unwrap();
        if out.status.success() {
            let extracted = self.work.path().join(into);
            std::fs::create_dir(&extracted).unwrap();
            let tar = Command::new("tar")
                .arg("-xzf")
                .arg(pulled.join(oras::ARCHIVE_NAME))
                .arg("-C")
                .arg(&extracted)
                .status()
                .unwrap();
            assert!(tar.success());
        }
        out
    }

    fn restored(&self, into: &str) -> PathBuf {
        self.work.path().join(into)
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{}", text(&out));
    out
}

#[track_caller]
fn fails(out: Output, code: i32, says: &str) -> Output {
    assert_eq!(out.status.code(), Some(code), "{}", text(&out));
    assert!(
        text(&out).contains(says),
        "expected {says:?} in {}",
        text(&out)
    );
    out
}

/// Both clients with the same arguments, both directions: wsr pushes and oras pulls, oras
/// pushes and wsr restores.
fn both_ways(t: &DropIn, registry: &str, case: &str, extra: &[&str], auth: Option<&Path>) {
    let joined = extra.join(" ");
    let by_wsr = format!("{registry}/ns/{case}-wsr:latest");
    ok(t.backup(registry, &format!("{case}-wsr"), &joined, auth));
    let mut oras_extra = extra.to_vec();
    let config;
    if let Some(auth) = auth {
        config = auth.display().to_string();
        oras_extra.extend(["--registry-config", &config]);
    }
    ok(t.oras_pull(&by_wsr, &format!("{case}-oras-pulled"), &oras_extra));
    assert_same_tree(&t.src(), &t.restored(&format!("{case}-oras-pulled")));

    let by_oras = format!("{registry}/ns/{case}-oras:latest");
    ok(t.oras_push(&by_oras, &format!("{case}-oras"), &oras_extra));
    ok(t.restore(&by_oras, &format!("{case}-wsr-restored"), &joined, auth));
    assert_same_tree(&t.src(), &t.restored(&format!("{case}-wsr-restored")));
}

#[test]
fn mutual_tls_client_certificates_from_oras_extra_args() {
    let t = DropIn::new();
    let registry = TestRegistry::start(RegistryKind::MutualTls).unwrap();
    let ca = registry.ca_file().unwrap().display().to_string();
    let (cert, key) = registry.client_cert().unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let host = registry.host();
    let args = ["--ca-file", &ca, "--cert-file", &cert, "--key-file", &key];
    both_ways(&t, &host, "mtls", &args, None);

    // Without the client certificate the registry refuses both clients.
    let without = format!("--ca-file {ca}");
    fails(t.backup(&host, "no-cert", &without, None), 4, "TLS");
    let image = format!("{host}/ns/no-cert:latest");
    assert!(
        !t.oras_push(&image, "no-cert", &["--ca-file", &ca])
            .status
            .success()
    );
    // Half a pair is refused before any network access.
    let half = format!("--ca-file {ca} --cert-file {cert}");
    fails(t.backup(&host, "half", &half, None), 2, "--key-file");
}

#[test]
fn credentials_and_registry_config_from_oras_extra_args() {
    let t = DropIn::new();
    let registry = TestRegistry::start(RegistryKind::TlsAuth).unwrap();
    let host = registry.host();
    let ca = registry.ca_file().unwrap().display().to_string();
    let (user, password) = registry.credentials().unwrap();
    both_ways(
        &t,
        &host,
        "userpass",
        &["--ca-file", &ca, "-u", user, "--password", password],
        None,
    );
    both_ways(
        &t,
        &host,
        "config",
        &["--insecure=true"],
        registry.auth_file(),
    );

    // A quoted path with a space: upstream's bash would split it, wsr keeps it whole.
    let spaced = t.work.path().join("auth dir");
    std::fs::create_dir(&spaced).unwrap();
    std::fs::copy(registry.auth_file().unwrap(), spaced.join("config.json")).unwrap();
    let quoted = format!(
        "--ca-file {ca} --registry-config '{}'",
        spaced.join("config.json").display()
    );
    ok(t.backup(&host, "quoted", &quoted, None));

    let wrong = format!("--ca-file {ca} -u {user} -p wrong-password");
    let out = fails(
        t.backup(&host, "wrong", &wrong, None),
        5,
        "authentication failed",
    );
    assert!(!text(&out).contains(password));
}

/// A bearer-token registry (the auth of quay, Harbor and OpenShift's registry): both clients
/// push and pull with the read-write user's config, each reading what the other pushed; the
/// read-only user restores with either client but backs up with neither.
#[test]
fn token_registry_with_oras_as_the_peer() {
    let t = DropIn::new();
    let registry = TestRegistry::start(RegistryKind::TlsToken).unwrap();
    let host = registry.host();
    let ca = registry.ca_file().unwrap().display().to_string();
    both_ways(
        &t,
        &host,
        "token",
        &["--ca-file", &ca],
        registry.auth_file(),
    );

    let reader = registry.reader_auth_file();
    let reader_config = reader.unwrap().display().to_string();
    let as_reader = ["--ca-file", &ca, "--registry-config", &reader_config];
    let by_wsr = format!("{host}/ns/token-wsr:latest");
    ok(t.restore(&by_wsr, "reader-wsr", &format!("--ca-file {ca}"), reader));
    assert_same_tree(&t.src(), &t.restored("reader-wsr"));
    ok(t.oras_pull(&by_wsr, "reader-oras", &as_reader));
    assert_same_tree(&t.src(), &t.restored("reader-oras"));

    fails(
        t.backup(&host, "reader", &format!("--ca-file {ca}"), reader),
        5,
        "did not grant repository:ns/reader:",
    );
    let image = format!("{host}/ns/reader:latest");
    assert!(!t.oras_push(&image, "reader", &as_reader).status.success());
}

/// OpenShift's integrated registry without a Secret, as upstream's script logs in to it: with
/// no `REGISTRY_AUTH_FILE`, a registry named `…svc.cluster.local` gets user `serviceaccount`
/// with the pod's token (here exchanged for bearer tokens), and the service account's CA is
/// trusted. The name reaches 127.0.0.1 through `--resolve`; the issuer knows the token as the
/// service account's password. `WSR_SERVICE_ACCOUNT_DIR` stands for the pod's mount.
#[test]
fn service_account_token_logs_in_to_a_cluster_registry() {
    let t = DropIn::new();
    let registry = TestRegistry::start(RegistryKind::TlsToken).unwrap();
    let issuer = registry.token_issuer().unwrap();
    let port = registry.host().rsplit(':').next().unwrap().to_owned();
    let host = format!("{CLUSTER_REGISTRY_NAME}:{port}");
    let rule = format!("{host}:127.0.0.1");
    let resolve = format!("--resolve {rule}");
    let token = format!("sa-token-{}-{port}", std::process::id());
    issuer.add_user(SERVICE_ACCOUNT_USER, &token, Grant::ReadWrite);
    let ca = registry.ca_file().unwrap();
    let account = |name: &str, ca_name: Option<&str>, with_token: bool| {
        let dir = t.work.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        if with_token {
            std::fs::write(dir.join("token"), format!("{token}\n")).unwrap();
        }
        if let Some(ca_name) = ca_name {
            std::fs::copy(ca, dir.join(ca_name)).unwrap();
        }
        dir
    };
    // The backup Job's account with OpenShift's service CA; the workspace pod's with ca.crt,
    // the one upstream's script trusts.
    let job = account("job-sa", Some("service-ca.crt"), true);
    let pod = account("pod-sa", Some("ca.crt"), true);

    let mut backup = t.backup_command(&host, "sa", &resolve);
    backup
        .env("WSR_SERVICE_ACCOUNT_DIR", &job)
        .env("WSR_LOG", "debug");
    let out = ok(backup.output().unwrap());
    assert!(!text(&out).contains(&token), "the token was logged");
    let image = format!("{host}/ns/sa:latest");
    let mut restore = t.restore_command(&image, "sa-restored", &resolve);
    restore
        .env("WSR_SERVICE_ACCOUNT_DIR", &pod)
        .env("WSR_LOG", "debug");
    let out = ok(restore.output().unwrap());
    assert!(!text(&out).contains(&token), "the token was logged");
    assert_same_tree(&t.src(), &t.restored("sa-restored"));
    let by_account: Vec<_> = issuer
        .requests()
        .into_iter()
        .filter(|r| r.user.as_deref() == Some(SERVICE_ACCOUNT_USER) && r.status == 200)
        .map(|r| r.granted)
        .collect();
    assert!(
        by_account.contains(&vec!["repository:ns/sa:pull,push".to_owned()])
            && by_account.contains(&vec!["repository:ns/sa:pull".to_owned()]),
        "{by_account:?}"
    );
    // oras, logged in as upstream's script logs in, reads the backup. By the loopback address:
    // oras refuses a loopback token realm (the issuer's) for a registry named otherwise.
    let ca_arg = ca.display().to_string();
    let login = [
        "--ca-file",
        &ca_arg,
        "-u",
        SERVICE_ACCOUNT_USER,
        "-p",
        &token,
    ];
    let by_address = format!("{}/ns/sa:latest", registry.host());
    ok(t.oras_pull(&by_address, "sa-oras", &login));
    assert_same_tree(&t.src(), &t.restored("sa-oras"));

    // Without the account's CA the name is not trusted; without its token nobody logs in.
    let mut c = t.backup_command(&host, "sa-none", &resolve);
    let nothing = account("no-sa", None, false);
    fails(
        c.env("WSR_SERVICE_ACCOUNT_DIR", &nothing).output().unwrap(),
        4,
        "TLS",
    );
    let mut c = t.backup_command(&host, "sa-none", &resolve);
    let ca_only = account("ca-only-sa", Some("service-ca.crt"), false);
    fails(
        c.env("WSR_SERVICE_ACCOUNT_DIR", &ca_only).output().unwrap(),
        5,
        "requires authentication",
    );
    // A REGISTRY_AUTH_FILE wins over the token (here the read-only user's: refused to push).
    let reader_auth = t.work.path().join("reader.json");
    let (_, reader_password) = registry.reader_credentials().unwrap();
    write_auth_file(&reader_auth, &host, READER_USER, reader_password).unwrap();
    let mut c = t.backup_command(&host, "sa-reader", &resolve);
    c.env("WSR_SERVICE_ACCOUNT_DIR", &job)
        .env("REGISTRY_AUTH_FILE", &reader_auth);
    fails(c.output().unwrap(), 5, "did not grant");
    // Other registries never get the token.
    let mut c = t.backup_command(
        &registry.host(),
        "sa-other",
        &format!("--ca-file {}", ca.display()),
    );
    fails(
        c.env("WSR_SERVICE_ACCOUNT_DIR", &job).output().unwrap(),
        5,
        "requires authentication",
    );
}

#[test]
fn resolve_and_harmless_flags_from_oras_extra_args() {
    let t = DropIn::new();
    let registry = TestRegistry::start(RegistryKind::Plain).unwrap();
    let port = registry.host().rsplit(':').next().unwrap().to_owned();
    // A name no DNS knows: only --resolve makes it reachable.
    let host = format!("wsr-resolve.invalid:{port}");
    let rule = format!("{host}:127.0.0.1");
    let args = [
        "--plain-http",
        "--resolve",
        &rule,
        "--concurrency",
        "2",
        "--no-tty",
    ];
    both_ways(&t, &host, "resolve", &args, None);
    let out = ok(t.backup(&host, "logged", &args.join(" "), None));
    assert!(
        text(&out).contains("accepted without effect: --concurrency --no-tty"),
        "{}",
        text(&out)
    );
    // Without the rule the name does not resolve.
    fails(
        t.backup(&host, "unresolved", "--plain-http", None),
        4,
        "cannot resolve wsr-resolve.invalid: no such host",
    );
}

#[test]
fn flags_that_cannot_work_are_refused_by_name_before_any_network_access() {
    let t = DropIn::new();
    // Nothing listens on port 1: a refusal must come before any connection attempt.
    let host = "127.0.0.1:1";
    for (i, (extra, says)) in [
        ("--oci-layout", "--oci-layout is not supported"),
        (
            "--artifact-type application/x",
            "--artifact-type is not supported",
        ),
        ("--password-stdin", "a Job has no stdin"),
        ("--frobnicate", "unknown oras flag \"--frobnicate\""),
        ("--plain-http extra.tar.gz", "is not a flag"),
    ]
    .into_iter()
    .enumerate()
    {
        fails(t.backup(host, "refused", extra, None), 2, says);
        let image = format!("{host}/ns/refused:latest");
        fails(t.restore(&image, &format!("r{i}"), extra, None), 2, says);
    }
}

/// A workspace with no files, and one with only dotfiles (which upstream's `cp -r …/*`
/// loses), back up and restore in both formats through the drop-in entry points.
#[test]
fn empty_and_dotfiles_only_workspaces_round_trip() {
    let t = DropIn::new();
    let registry = TestRegistry::start(RegistryKind::Plain).unwrap();
    let host = registry.host();
    let src = t.src();
    scenarios::sample::make_removable(&src);
    std::fs::remove_dir_all(&src).unwrap();
    std::fs::create_dir(&src).unwrap();
    for format in ["dwo", "native"] {
        let name = format!("empty-{format}");
        let mut backup = t.backup_command(&host, &name, "--plain-http");
        ok(backup.env("WSR_FORMAT", format).output().unwrap());
        let image = format!("{host}/ns/{name}:latest");
        ok(t.restore(&image, &name, "--plain-http", None));
        assert_eq!(std::fs::read_dir(t.restored(&name)).unwrap().count(), 0);
    }
    std::fs::write(src.join(".bashrc"), "export EDITOR=vi\n").unwrap();
    std::fs::create_dir_all(src.join(".config/git")).unwrap();
    std::fs::write(src.join(".config/git/config"), "[user]\n").unwrap();
    for format in ["dwo", "native"] {
        let name = format!("dotfiles-{format}");
        let mut backup = t.backup_command(&host, &name, "--plain-http");
        ok(backup.env("WSR_FORMAT", format).output().unwrap());
        let image = format!("{host}/ns/{name}:latest");
        ok(t.restore(&image, &name, "--plain-http", None));
        assert_same_tree(&src, &t.restored(&name));
    }
}

/// The error message (and so the termination message, its first line) starts with the step
/// that failed.
#[test]
fn failures_name_the_failing_step() {
    let t = DropIn::new();
    let registry = TestRegistry::start(RegistryKind::TlsAuth).unwrap();
    let host = registry.host();
    let ca = format!("--ca-file {}", registry.ca_file().unwrap().display());
    let auth = registry.auth_file();
    let port = host.rsplit(':').next().unwrap();
    let unknown = format!("wsr-no-such-host.invalid:{port}");
    fails(
        t.backup(&unknown, "x", &ca, auth),
        4,
        "wsr-backup: error: resolve: ",
    );
    fails(
        t.backup("127.0.0.1:1", "x", &ca, auth),
        4,
        "error: connect: ",
    );
    fails(t.backup(&host, "x", "", auth), 4, "error: tls: ");
    fails(t.backup(&host, "x", &ca, None), 5, "error: auth: ");
    fails(
        t.backup(&host, "x", "--oci-layout", auth),
        2,
        "error: arguments: ",
    );

    // A layer blob changed in the registry's storage (same size): the restore's digest check.
    ok(t.backup(&host, "corrupt", &ca, auth));
    let manifest = Command::new("curl")
        .args([
            "-sSf",
            "--cacert",
            &registry.ca_file().unwrap().display().to_string(),
        ])
        .args([
            "-u",
            &format!(
                "{}:{}",
                registry.credentials().unwrap().0,
                registry.credentials().unwrap().1
            ),
        ])
        .args(["-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
        .arg(format!("https://{host}/v2/ns/corrupt/manifests/latest"))
        .output()
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.stdout).unwrap();
    let digest = manifest["layers"][0]["digest"].as_str().unwrap();
    let hex = digest.strip_prefix("sha256:").unwrap();
    let blob = registry.data_dir().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let image = format!("{host}/ns/corrupt:latest");
    // The flipped byte shows as a digest mismatch or, if the unpacker meets it first, as a
    // corrupt archive: a verification failure either way.
    fails(
        t.restore(&image, "corrupt", &ca, auth),
        6,
        "wsr-restore: error: verify: ",
    );
    assert_eq!(std::fs::read_dir(t.restored("corrupt")).unwrap().count(), 0);
}

/// An unmodified DWO cannot pass `--keep`: the drop-in keeps a bounded number of time-stamped
/// backups (`WSR_KEEP`, default 5) and never the one `latest` points at.
#[test]
fn dwo_env_backups_keep_a_bounded_number_of_time_stamped_tags() {
    let t = DropIn::new();
    let registry = TestRegistry::start(RegistryKind::Plain).unwrap();
    let host = registry.host();
    for round in 0..4 {
        std::fs::write(t.src().join("round.txt"), format!("{round}\n")).unwrap();
        let mut backup = t.backup_command(&host, "keep", "--plain-http");
        ok(backup.env("WSR_KEEP", "2").output().unwrap());
    }
    let tags = Command::new("curl")
        .args(["-sSf", &format!("http://{host}/v2/ns/keep/tags/list")])
        .output()
        .unwrap();
    let tags: serde_json::Value = serde_json::from_slice(&tags.stdout).unwrap();
    let tags: Vec<&str> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let stamps = tags.iter().filter(|t| t.starts_with("wsr-")).count();
    assert_eq!(stamps, 2, "{tags:?}");
    assert!(tags.contains(&"latest"), "{tags:?}");
    let image = format!("{host}/ns/keep:latest");
    ok(t.restore(&image, "kept", "--plain-http", None));
    assert_same_tree(&t.src(), &t.restored("kept"));
}

/// In-cluster short names (issue 15 item 6): `DEVWORKSPACE_BACKUP_REGISTRY=registry.ns:PORT`
/// resolves as glibc resolves it, through resolv.conf's search list and `ndots`, against a
/// real DNS server (dnsmasq on loopback); the backup and the init container's restore both
/// work. A name nobody knows fails at once (exit 4, step `resolve`) naming every name tried.
/// IP literals and `localhost` never ask the DNS server.
#[test]
fn in_cluster_short_names_resolve_through_the_search_list() {
    use std::net::Ipv4Addr;
    use wsr_transport::testing::TestDns;
    let t = DropIn::new();
    let registry = TestRegistry::start(RegistryKind::Plain).unwrap();
    let port = registry.host().rsplit(':').next().unwrap().to_owned();
    let dns = TestDns::start(&[
        ("registry.ns.svc.cluster.local", Ipv4Addr::LOCALHOST),
        // An address nothing listens on: reached only if the short name were asked first.
        ("registry.ns", Ipv4Addr::new(127, 0, 0, 2)),
    ])
    .unwrap();
    let conf = dns
        .resolv_conf(
            "resolv.conf",
            "search ns.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5",
        )
        .unwrap();
    let hosts = dns.dir().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let with_dns = |mut c: Command| {
        c.env("WSR_RESOLV_CONF", &conf)
            .env("WSR_HOSTS_FILE", &hosts);
        c.output().unwrap()
    };

    let short = format!("registry.ns:{port}");
    ok(with_dns(t.backup_command(&short, "short", "--plain-http")));
    assert_eq!(
        dns.queries()[..2],
        [
            "registry.ns.ns.svc.cluster.local",
            "registry.ns.svc.cluster.local"
        ]
    );
    let image = format!("{short}/ns/short:latest");
    let projects = t.work.path().join("short-restored");
    std::fs::create_dir(&projects).unwrap();
    let mut restore = t.command(&t.bin.join("wsr-restore"));
    restore
        .arg("init")
        .env("BACKUP_IMAGE", &image)
        .env("PROJECTS_ROOT", &projects)
        .env("ORAS_EXTRA_ARGS", "--plain-http");
    ok(with_dns(restore));
    assert_same_tree(&t.src(), &projects);

    let before = dns.queries().len();
    let unknown = format!("nosuch.ns:{port}");
    let out = fails(
        with_dns(t.backup_command(&unknown, "x", "--plain-http")),
        4,
        "wsr-backup: error: resolve: ",
    );
    let says = text(&out);
    assert!(
        says.contains("cannot resolve nosuch.ns: no such host (tried nosuch.ns.ns.svc.cluster.local, nosuch.ns.svc.cluster.local, nosuch.ns.cluster.local, nosuch.ns "),
        "{says}"
    );
    assert!(says.contains(conf.to_str().unwrap()), "{says}");
    // Not retried: a name that does not exist is not a transient failure.
    assert_eq!(dns.queries().len() - before, 4, "{:?}", dns.queries());

    // Literal addresses and the hosts file's `localhost` never reach the DNS server.
    let before = dns.queries().len();
    ok(with_dns(t.backup_command(
        &registry.host(),
        "literal",
        "--plain-http",
    )));
    ok(with_dns(t.backup_command(
        &format!("localhost:{port}"),
        "local",
        "--plain-http",
    )));
    assert_eq!(dns.queries().len(), before, "{:?}", dns.queries());
}
