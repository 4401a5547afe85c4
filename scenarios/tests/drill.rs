//! `wsr-restore drill` over a real registry and over an OCI layout tree holding good, stale,
//! corrupted (a blob's bytes altered in storage), missing-blob (a blob file deleted) and
//! auth-denied backups in both formats: the drill must flag exactly the bad ones with the right
//! status and reason, pass the good ones, exit non-zero, remove its scratch trees and never
//! write to the registry. Access control per namespace comes from nginx in front of the
//! registry (as sites front registries with path rules); the registry itself only has
//! all-or-nothing htpasswd. The HTML report is rendered by headless Chromium.

mod common;

use common::{Dir, backup, backup_options, runtime};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wsr_backup::Format;
use wsr_format::manifest::Manifest;
use wsr_format::media::{self, annotation};
use wsr_format::reference::Repository;
use wsr_transport::testing::{RegistryKind, TestRegistry};
use wsr_transport::{Access, ConnectOptions, Store};

const DAY: u64 = 86_400;

/// One backup of the test set: where it goes, its format, its age, and what is done to it.
struct Case {
    ns: &'static str,
    ws: &'static str,
    format: Format,
    age_s: u64,
    damage: Damage,
    /// The status the drill must report, as in its JSON.
    expect: &'static str,
    /// A phrase its reason must contain (none for `ok`).
    reason: Option<&'static str>,
}

#[derive(Clone, Copy, PartialEq)]
enum Damage {
    None,
    FlipByte,
    DeleteBlob,
    Denied,
}

const fn case(
    ns: &'static str,
    ws: &'static str,
    format: Format,
    age_h: u64,
    damage: Damage,
    expect: &'static str,
    reason: Option<&'static str>,
) -> Case {
    Case {
        ns,
        ws,
        format,
        age_s: age_h * 3600,
        damage,
        expect,
        reason,
    }
}

/// The test set. `--max-age 1d` makes the two old ones stale.
fn cases(with_denied: bool) -> Vec<Case> {
    use Damage::*;
    use Format::{Dwo, Native};
    let mut all = vec![
        case("team-a", "api-gateway", Native, 2, None, "ok", Option::None),
        case("team-a", "web-frontend", Dwo, 5, None, "ok", Option::None),
        case(
            "team-a",
            "legacy-batch",
            Native,
            80,
            None,
            "stale",
            Some("older than the maximum age 1d"),
        ),
        case(
            "team-b",
            "ml-notebooks",
            Dwo,
            50,
            None,
            "stale",
            Some("older than the maximum age 1d"),
        ),
        case(
            "team-b",
            "payments",
            Native,
            9,
            FlipByte,
            "corrupt",
            Some("corrupt|digest"),
        ),
        case(
            "team-b",
            "search",
            Dwo,
            14,
            FlipByte,
            "corrupt",
            Some("corrupt|digest"),
        ),
        case(
            "team-c",
            "mobile-app",
            Native,
            20,
            DeleteBlob,
            "missing_blob",
            Some("not found"),
        ),
        case(
            "team-c",
            "docs-site",
            Dwo,
            7,
            DeleteBlob,
            "missing_blob",
            Some("not found"),
        ),
    ];
    if with_denied {
        all.push(case(
            "restricted",
            "hr-portal",
            Native,
            3,
            Denied,
            "auth_denied",
            Some("denied"),
        ));
        all.push(case(
            "restricted",
            "audit-tools",
            Dwo,
            30,
            Denied,
            "auth_denied",
            Some("denied"),
        ));
    }
    all
}

/// A small workspace whose every blob is unique to `name` (so damaging one backup's blob cannot
/// touch another's), with a subdirectory, a symlink and a hard link.
fn workspace(root: &Path, name: &str) {
    std::fs::create_dir_all(root.join("src/nested")).unwrap();
    std::fs::write(root.join("README.md"), format!("# {name}\n")).unwrap();
    std::fs::write(
        root.join("src/main.rs"),
        format!("fn main() {{ println!(\"{name}\"); }}\n"),
    )
    .unwrap();
    let data: Vec<u8> = (0..48 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ name.len() as u8)
        .chain(name.bytes())
        .collect();
    std::fs::write(root.join("src/nested/data.bin"), data).unwrap();
    std::os::unix::fs::symlink("src/main.rs", root.join("main-link")).unwrap();
    std::fs::hard_link(root.join("README.md"), root.join("README.copy")).unwrap();
}

/// RFC 3339 UTC text for `secs` since the epoch (civil-from-days, to avoid a time crate here).
fn rfc3339(secs: u64) -> String {
    let days = (secs / DAY) as i64;
    let rem = secs % DAY;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Rewrites the `latest` manifest's creation time to `age_s` ago (as if taken then) and returns
/// the digest of its first data layer.
async fn age_backup(store: &Store, age_s: u64) -> String {
    let (_, bytes) = store
        .fetch_manifest(&wsr_format::reference::Target::Tag("latest".into()))
        .await
        .unwrap();
    let mut manifest = Manifest::from_bytes(&bytes).unwrap();
    manifest
        .annotations
        .get_or_insert_default()
        .insert(annotation::CREATED.into(), rfc3339(now() - age_s));
    let bytes = manifest.to_bytes();
    store
        .push_manifest(&bytes, media::MANIFEST_V1)
        .await
        .unwrap();
    store
        .tag_manifest(&bytes, media::MANIFEST_V1, "latest")
        .await
        .unwrap();
    manifest.layers[0].digest.hex().to_owned()
}

/// Backs up every case below `registry_path` (a `HOST/PREFIX` or `oci:DIR`), plus one unrelated
/// repository, ages them; returns each case's first data-layer digest (hex).
fn publish(
    registry_path: &str,
    cases: &[Case],
    connect: &ConnectOptions,
    work: &Path,
) -> Vec<String> {
    let mut layers = Vec::new();
    for c in cases {
        let src = work.join("src").join(c.ns).join(c.ws);
        workspace(&src, &format!("{}/{}", c.ns, c.ws));
        let to = format!("{registry_path}/{}/{}:latest", c.ns, c.ws);
        let mut options = backup_options(&src, &to, c.format, connect.clone());
        options.namespace = Some(c.ns.into());
        options.workspace = Some(c.ws.into());
        backup(&options).expect("backup");
        let repo: Repository = to
            .parse::<wsr_format::reference::Reference>()
            .unwrap()
            .repository;
        layers.push(runtime().block_on(async {
            let store = Store::open(&repo, connect, Access::Push).await.unwrap();
            age_backup(&store, c.age_s).await
        }));
    }
    let unique: std::collections::HashSet<&String> = layers.iter().collect();
    assert_eq!(
        unique.len(),
        layers.len(),
        "every case has its own data layer"
    );
    // Not NAMESPACE/WORKSPACE: must be ignored and counted, not drilled.
    let src = work.join("src/tools");
    workspace(&src, "tools");
    let to = format!("{registry_path}/tools:latest");
    backup(&backup_options(&src, &to, Format::Dwo, connect.clone())).expect("backup");
    layers
}

/// Applies each case's damage to the blob files under `blob_file(hex)`.
fn damage(cases: &[Case], layers: &[String], blob_file: impl Fn(&str, &Case) -> PathBuf) {
    for (c, hex) in cases.iter().zip(layers) {
        let file = blob_file(hex, c);
        match c.damage {
            Damage::FlipByte => {
                let mut bytes = std::fs::read(&file).unwrap();
                let at = bytes.len() / 2;
                bytes[at] ^= 0x5a;
                std::fs::write(&file, bytes).unwrap();
            }
            Damage::DeleteBlob => std::fs::remove_file(&file).unwrap(),
            Damage::None | Damage::Denied => assert!(file.is_file(), "{}", file.display()),
        }
    }
}

/// Every file below `root` with its size and content digest: to prove nothing was written.
fn storage_snapshot(root: &Path) -> BTreeMap<PathBuf, (u64, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let meta = e.path().symlink_metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                out.insert(
                    e.path(),
                    (
                        meta.len(),
                        wsr_format::digest::Digest::of(&bytes).to_string(),
                    ),
                );
            }
        }
    }
    out
}

/// The directory of this run's binaries (`target/[TRIPLE/]debug`).
fn wsr_restore_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("wsr-restore");
    assert!(
        bin.is_file(),
        "{} is missing: run the suite with scripts/test.sh (or `cargo build -p wsr-restore` with the same flags first)",
        bin.display()
    );
    bin
}

fn drill(args: &[&str]) -> Output {
    run_drill(Command::new(wsr_restore_bin()), args)
}

fn run_drill(mut command: Command, args: &[&str]) -> Output {
    let output = command
        .arg("drill")
        .args(args)
        .args(["--progress", "never"])
        .env("WSR_LOG", "warn")
        .output()
        .unwrap();
    eprintln!("drill stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    output
}

fn json_of(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().expect("JSON line")).expect("JSON")
}

/// Checks the drill's JSON against the cases: exactly the bad ones flagged, with the reason.
fn assert_verdicts(report: &serde_json::Value, cases: &[Case]) {
    let backups = report["backups"].as_array().unwrap();
    let got: BTreeMap<String, &serde_json::Value> = backups
        .iter()
        .map(|b| {
            (
                format!(
                    "{}/{}",
                    b["namespace"].as_str().unwrap(),
                    b["workspace"].as_str().unwrap()
                ),
                b,
            )
        })
        .collect();
    assert_eq!(got.len(), cases.len(), "one row per backup: {report:#}");
    for c in cases {
        let b = got[&format!("{}/{}", c.ns, c.ws)];
        let status = b["status"].as_str().unwrap();
        let reason = b["reason"].as_str().unwrap_or("");
        assert_eq!(status, c.expect, "{}/{}: {reason}", c.ns, c.ws);
        match c.reason {
            Some(phrase) => assert!(
                phrase.split('|').any(|p| reason.contains(p)),
                "{}/{}: {reason:?} lacks {phrase:?}",
                c.ns,
                c.ws
            ),
            None => assert!(b["reason"].is_null(), "{}/{}: {reason}", c.ns, c.ws),
        }
        if matches!(c.expect, "ok" | "stale") {
            // Restored and checked entry by entry: README, README.copy, main-link, src,
            // src/main.rs, src/nested, src/nested/data.bin.
            assert_eq!(b["entries_checked"], 7, "{b:#}");
            assert_eq!(b["files"], 3, "{b:#}");
            let age = b["age_s"].as_f64().unwrap();
            assert!(
                (age - c.age_s as f64).abs() < 600.0,
                "{}/{}: age {age}",
                c.ns,
                c.ws
            );
            assert!(b["restore_s"].as_f64().unwrap() > 0.0);
        } else {
            assert!(b["entries_checked"].is_null(), "{b:#}");
        }
    }
    let ignored = report["ignored"].as_array().unwrap();
    assert_eq!(ignored.len(), 1, "{ignored:#?}");
    assert!(
        ignored[0]["repository"]
            .as_str()
            .unwrap()
            .ends_with("tools"),
        "{ignored:#?}"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx in front of the registry, answering 403 DENIED (as a registry does for a repository
/// the credentials may not read) for `/v2/backups/restricted/…`, and logging every request.
struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstream: &str) -> Nginx {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect("nginx not found: apt-get install -y --no-install-recommends nginx (scripts/test.sh does)");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let config = format!(
            r#"daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location /v2/backups/restricted/ {{
      default_type application/json;
      return 403 '{{"errors":[{{"code":"DENIED","message":"requested access to the resource is denied"}}]}}';
    }}
    location / {{
      proxy_pass http://{upstream};
      proxy_set_header Host $http_host;
      proxy_buffering off;
    }}
  }}
}}
"#
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { child, port, dir }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its worker; SIGKILL would orphan it.
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let _ = self.child.wait();
    }
}

fn assert_scratch_empty(scratch: &Path) {
    let left: Vec<_> = std::fs::read_dir(scratch)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "scratch trees left behind: {left:?}");
}

#[test]
fn drill_flags_exactly_the_bad_backups_in_a_registry_and_never_writes_to_it() {
    let work = Dir::new();
    let registry = TestRegistry::start(RegistryKind::Plain).unwrap();
    let connect = common::connect_for(&registry);
    let cases = cases(true);
    let layers = publish(
        &format!("{}/backups", registry.host()),
        &cases,
        &connect,
        work.path(),
    );
    let blobs = registry.data_dir().join("docker/registry/v2/blobs/sha256");
    damage(&cases, &layers, |hex, _| {
        blobs.join(&hex[..2]).join(hex).join("data")
    });
    let nginx = Nginx::start(&registry.host());
    let before = storage_snapshot(registry.data_dir());
    let scratch = work.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let (html, md) = (
        work.path().join("report.html"),
        work.path().join("report.md"),
    );
    let path = format!("{}/backups", nginx.host());

    let output = drill(&[
        "--registry",
        &path,
        "--plain-http",
        "--max-age",
        "1d",
        "--parallel",
        "3",
        "--json",
        "--scratch",
        scratch.to_str().unwrap(),
        "--report",
        html.to_str().unwrap(),
        "--markdown",
        md.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(6), "a failed drill exits 6");
    let report = json_of(&output);
    assert_verdicts(&report, &cases);
    assert_eq!(report["summary"]["ok"], 2);
    assert_eq!(report["summary"]["failed"], 8);

    // Read-only: the storage is byte for byte as before, and nothing but reads reached it.
    assert_eq!(
        storage_snapshot(registry.data_dir()),
        before,
        "the drill changed the registry's storage"
    );
    let log = nginx.access_log();
    assert!(log.contains("\"GET /v2/_catalog"), "{log}");
    for method in ["PUT", "POST", "PATCH", "DELETE"] {
        assert!(
            !log.contains(&format!("\"{method} ")),
            "{method} request in:\n{log}"
        );
    }
    assert_scratch_empty(&scratch);

    // The same verdicts, with reasons, in the Markdown and HTML reports.
    let md = std::fs::read_to_string(&md).unwrap();
    let html_text = std::fs::read_to_string(&html).unwrap();
    for b in report["backups"].as_array().unwrap() {
        let name = format!(
            "{}/{}:latest",
            b["namespace"].as_str().unwrap(),
            b["workspace"].as_str().unwrap()
        );
        assert!(md.contains(&name) && html_text.contains(&name), "{name}");
    }
    assert!(md.contains("**FAILED: 10 backups, 2 ok, 8 failed (2 stale, 2 corrupt, 2 missing blob, 2 auth denied)"), "{md}");
    assert!(html_text.contains("older than the maximum age 1d"));
    screenshot(&html, work.path());

    // The table: one line per backup with its status, then the summary line.
    let output = drill(&[
        "--registry",
        &path,
        "--plain-http",
        "--max-age",
        "1d",
        "--scratch",
        scratch.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(6));
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("missing blob") && l.contains("team-c/mobile-app:latest")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .last()
            .unwrap()
            .starts_with("FAILED: 10 backups, 2 ok, 8 failed"),
        "{table}"
    );

    // Only the good ones: the drill passes.
    let output = drill(&[
        "--registry",
        &path,
        "--plain-http",
        "--max-age",
        "1d",
        "--scratch",
        scratch.to_str().unwrap(),
        "--namespace",
        "team-a",
        "--workspace",
        "api-gateway",
        "--workspace",
        "web-frontend",
    ]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{table}");
    assert!(
        table
            .lines()
            .last()
            .unwrap()
            .starts_with("PASSED: 2 backups, all ok"),
        "{table}"
    );
    assert_scratch_empty(&scratch);
    assert_eq!(storage_snapshot(registry.data_dir()), before);
}

#[test]
fn drill_flags_exactly_the_bad_backups_in_an_oci_layout_tree() {
    let work = Dir::new();
    let root = work.path().join("layouts");
    let cases = cases(true);
    let layers = publish(
        &format!("oci:{}", root.display()),
        &cases,
        &ConnectOptions::default(),
        work.path(),
    );
    damage(&cases, &layers, |hex, c| {
        root.join(c.ns).join(c.ws).join("blobs/sha256").join(hex)
    });
    let before = storage_snapshot(&root);
    let scratch = work.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    // A layout the drill may not read is "auth denied": its blobs directory is closed to the
    // drill's user. Root reads everything, so as root the drill runs as nobody over a tree
    // everyone else may read.
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        let status = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(work.path())
            .status()
            .unwrap();
        assert!(status.success());
        set_mode(&scratch, 0o777);
    }
    let closed: Vec<PathBuf> = cases
        .iter()
        .filter(|c| c.damage == Damage::Denied)
        .map(|c| root.join(c.ns).join(c.ws).join("blobs"))
        .collect();
    for dir in &closed {
        set_mode(dir, 0o000);
    }
    let from = format!("oci:{}", root.display());
    let args = [
        "--from",
        &from,
        "--max-age",
        "1d",
        "--json",
        "--scratch",
        scratch.to_str().unwrap(),
    ];
    let output = if as_root {
        run_drill(setpriv_nobody(), &args)
    } else {
        drill(&args)
    };
    for dir in &closed {
        set_mode(dir, 0o755);
    }
    assert_eq!(output.status.code(), Some(6));
    assert_verdicts(&json_of(&output), &cases);
    assert_eq!(
        storage_snapshot(&root),
        before,
        "the drill changed the layouts"
    );
    assert_scratch_empty(&scratch);

    // --all-tags: the time-stamped tag wsr-backup wrote next to `latest` is drilled too.
    let output = drill(&[
        "--from",
        &from,
        "--all-tags",
        "--json",
        "--namespace",
        "team-a",
        "--workspace",
        "api-gateway",
        "--scratch",
        scratch.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0));
    let report = json_of(&output);
    let tags: Vec<&str> = report["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["tag"].as_str().unwrap())
        .collect();
    assert_eq!(tags.len(), 2, "{report:#}");
    assert_eq!(tags[0], "latest");
    assert!(tags[1].starts_with("wsr-"), "{tags:?}");
    assert_scratch_empty(&scratch);
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `wsr-restore` run as the unprivileged user nobody (util-linux `setpriv`).
fn setpriv_nobody() -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(wsr_restore_bin());
    c
}

#[test]
fn a_registry_that_refuses_the_credentials_fails_the_whole_drill_with_exit_5() {
    let registry = TestRegistry::start(RegistryKind::TlsAuth).unwrap();
    let ca = registry.ca_file().unwrap().to_str().unwrap().to_owned();
    let empty = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(empty.path(), "{}").unwrap();
    let path = format!("{}/backups", registry.host());
    let output = drill(&[
        "--registry",
        &path,
        "--ca-file",
        &ca,
        "--auth-file",
        empty.path().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&output.stderr).contains("requires authentication"));
}

/// Renders the report in headless Chromium (Debian's `chromium`). With
/// `WSR_DRILL_SCREENSHOT=FILE` the picture is kept there (how `docs/drill-report.png` is made).
fn screenshot(html: &Path, work: &Path) {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("chromium not found: apt-get install -y --no-install-recommends chromium (scripts/test.sh does)");
    let png = work.join("report.png");
    let profile = work.join("chromium-profile");
    let output = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,1640",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    // A blank page compresses to a few kilobytes; the report has text, charts and colour.
    assert!(
        bytes.len() > 40_000,
        "screenshot suspiciously small: {} bytes",
        bytes.len()
    );
    if let Some(keep) = std::env::var_os("WSR_DRILL_SCREENSHOT") {
        std::fs::copy(&png, keep).unwrap();
    }
}
