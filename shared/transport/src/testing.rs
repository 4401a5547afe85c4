//! Test harness that runs a real CNCF distribution registry (Debian's `docker-registry`)
//! on a free loopback port, optionally with TLS (a self-signed `CA:FALSE` leaf that rustls
//! accepts) and htpasswd (bcrypt) basic auth. It owns the registry child process, its
//! config, certificates, credentials and storage, all inside one tempdir per instance so
//! tests can run in parallel threads and processes. A token-auth registry gets its own
//! [`TokenIssuer`] (distribution's bearer-token flow, with a read-write and a read-only user).
//! [`FaultProxy`] stands between a client and such a registry to inject network and server
//! faults; [`TestDns`] serves names on loopback for the resolver's tests. Compiled only with
//! the `test-support` feature.

mod dns;
mod proxy;
mod token;
pub use dns::TestDns;
pub use proxy::{Fault, FaultProxy, Rule, Seen};
pub use token::{Grant, TOKEN_ISSUER, TOKEN_SERVICE, TokenIssuer, TokenRequest};

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// How long a registry may take to log its listening address and accept a connection.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop` waits after SIGTERM before it falls back to SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// User name in the htpasswd file of a [`RegistryKind::TlsAuth`] registry, and the read-write
/// user of a [`RegistryKind::TlsToken`] registry's issuer.
pub const TEST_USER: &str = "tester";
/// The read-only user of a [`RegistryKind::TlsToken`] registry's issuer.
pub const READER_USER: &str = "reader";
/// A cluster-internal registry name the TLS registries' certificate also carries (reach it with
/// a `--resolve` rule to 127.0.0.1), as OpenShift's integrated registry is named.
pub const CLUSTER_REGISTRY_NAME: &str = "image-registry.openshift-image-registry.svc.cluster.local";
const REALM: &str = "wsr-test";
const LISTENING: &str = "listening on 127.0.0.1:";

/// Which flavour of registry to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegistryKind {
    /// Plain HTTP, no auth.
    Plain,
    /// HTTPS with a self-signed `CA:FALSE` leaf (SAN `IP:127.0.0.1`, `DNS:localhost`), no auth.
    Tls,
    /// HTTPS as [`RegistryKind::Tls`] plus htpasswd (bcrypt) basic auth.
    TlsAuth,
    /// HTTPS as [`RegistryKind::Tls`] that requires a client certificate signed by its own
    /// client CA ([`TestRegistry::client_cert`]), no other auth.
    MutualTls,
    /// HTTPS as [`RegistryKind::Tls`] with distribution's bearer-token auth (`auth: token`):
    /// its [`TokenIssuer`] grants [`TEST_USER`] pull, push, delete and the catalog, and
    /// [`READER_USER`] pull and the catalog only.
    TlsToken,
}

impl RegistryKind {
    /// Whether the registry speaks HTTPS.
    pub fn is_tls(self) -> bool {
        !matches!(self, RegistryKind::Plain)
    }
}

/// A running (or stopped, restartable) registry. The process is stopped and all files are
/// removed when this is dropped.
pub struct TestRegistry {
    kind: RegistryKind,
    binary: PathBuf,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    ca: Option<PathBuf>,
    credentials: Option<(String, String)>,
    auth_file: Option<PathBuf>,
    reader: Option<(String, String)>,
    reader_auth_file: Option<PathBuf>,
    issuer: Option<TokenIssuer>,
    client_cert: Option<(PathBuf, PathBuf)>,
    port: u16,
    child: Option<Child>,
    // Declared last so it is removed after everything that points into it.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hand-written so the password never ends up in test output.
        f.debug_struct("TestRegistry")
            .field("kind", &self.kind)
            .field("host", &self.host())
            .field("dir", &self.dir.path())
            .field("running", &self.child.is_some())
            .finish()
    }
}

impl TestRegistry {
    /// Starts a registry of `kind` on a free port of 127.0.0.1 and waits until it accepts
    /// connections. Fails with a message naming the Debian package if a tool is missing.
    pub fn start(kind: RegistryKind) -> io::Result<TestRegistry> {
        TestRegistry::start_configured(kind, false)
    }

    /// A plain registry as the Debian package's own configuration runs it: with distribution's
    /// in-memory blob descriptor cache, so a blob it has seen is described without a look at
    /// its storage. The benchmark runs every tool against this one, as a real deployment would
    /// (distribution recommends a descriptor cache). Tests use [`TestRegistry::start`]: some
    /// change the storage behind the registry's back, which a cache would hide.
    pub fn start_cached() -> io::Result<TestRegistry> {
        TestRegistry::start_configured(RegistryKind::Plain, true)
    }

    fn start_configured(kind: RegistryKind, cached: bool) -> io::Result<TestRegistry> {
        let binary = registry_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("wsr-test-registry-")
            .tempdir()?;
        let data = dir.path().join("data");
        fs::create_dir(&data)?;

        let mut http = serde_json::json!({
            // Overridden per launch through REGISTRY_HTTP_ADDR; kept valid for humans.
            "addr": "127.0.0.1:0",
            // A fixed secret silences the "No HTTP secret provided" warning; it only signs
            // upload state, which must survive `restart`.
            "secret": "wsr-test-registry-secret",
        });
        let mut config = serde_json::json!({
            "version": "0.1",
            "log": { "level": "info", "accesslog": { "disabled": true } },
            "storage": {
                "filesystem": { "rootdirectory": data },
                "delete": { "enabled": true },
                // Tests look at half-finished uploads; never let the registry reap them.
                "maintenance": { "uploadpurging": { "enabled": false } },
            },
        });
        if cached {
            config["storage"]["cache"] = serde_json::json!({ "blobdescriptor": "inmemory" });
        }

        let leaf = if kind.is_tls() {
            let (cert, key) = generate_leaf_cert(dir.path())?;
            http["tls"] = serde_json::json!({ "certificate": cert, "key": key });
            Some((cert, key))
        } else {
            None
        };
        let client_cert = if kind == RegistryKind::MutualTls {
            let (client_ca, cert, key) = generate_client_cert(dir.path())?;
            // With client CAs set, the registry's Go TLS requires and verifies a client cert.
            http["tls"]["clientcas"] = serde_json::json!([client_ca]);
            Some((cert, key))
        } else {
            None
        };

        let mut credentials = None;
        let mut reader = None;
        let mut issuer = None;
        match kind {
            RegistryKind::TlsAuth => {
                let password = random_hex(12)?;
                let htpasswd = dir.path().join("htpasswd");
                write_htpasswd(&htpasswd, TEST_USER, &password)?;
                config["auth"] =
                    serde_json::json!({ "htpasswd": { "realm": REALM, "path": htpasswd } });
                credentials = Some((TEST_USER.to_owned(), password));
            }
            RegistryKind::TlsToken => {
                let (cert, key) = generate_signer_cert(dir.path())?;
                let (tls_cert, tls_key) = leaf.as_ref().expect("TlsToken is TLS");
                let started = TokenIssuer::start(&cert, &key, (tls_cert, tls_key))?;
                let (password, reader_password) = (random_hex(12)?, random_hex(12)?);
                started.add_user(TEST_USER, &password, Grant::ReadWrite);
                started.add_user(READER_USER, &reader_password, Grant::ReadOnly);
                config["auth"] = serde_json::json!({ "token": {
                    "realm": started.realm(),
                    "service": TOKEN_SERVICE,
                    "issuer": TOKEN_ISSUER,
                    "rootcertbundle": cert,
                } });
                credentials = Some((TEST_USER.to_owned(), password));
                reader = Some((READER_USER.to_owned(), reader_password));
                issuer = Some(started);
            }
            _ => {}
        }
        config["http"] = http;

        // YAML is a superset of JSON, so serde_json gives correctly quoted paths for free.
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;

        let mut registry = TestRegistry {
            kind,
            binary,
            config: config_path,
            data,
            log: dir.path().join("registry.log"),
            ca: leaf.map(|(cert, _)| cert),
            credentials,
            auth_file: None,
            reader,
            reader_auth_file: None,
            issuer,
            client_cert,
            port: 0,
            child: None,
            dir,
        };
        registry.launch(0)?;

        if let Some((user, password)) = &registry.credentials {
            let path = registry.dir.path().join("config.json");
            write_auth_file(&path, &registry.host(), user, password)?;
            registry.auth_file = Some(path);
        }
        if let Some((user, password)) = &registry.reader {
            let path = registry.dir.path().join("reader.json");
            write_auth_file(&path, &registry.host(), user, password)?;
            registry.reader_auth_file = Some(path);
        }
        Ok(registry)
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        let scheme = if self.kind.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// The kind this registry was started as.
    pub fn kind(&self) -> RegistryKind {
        self.kind
    }

    /// The server's leaf certificate (PEM); trust it as the only anchor. `None` for `Plain`.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// `(user, password)` accepted by a `TlsAuth` registry; the read-write user of a
    /// `TlsToken` registry.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    /// `(user, password)` of the read-only user (`TlsToken` only).
    pub fn reader_credentials(&self) -> Option<(&str, &str)> {
        self.reader
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    /// A docker `config.json` holding the read-only user's credentials (`TlsToken` only).
    pub fn reader_auth_file(&self) -> Option<&Path> {
        self.reader_auth_file.as_deref()
    }

    /// The token issuer (`TlsToken` only): add users to it, read the requests it answered.
    pub fn token_issuer(&self) -> Option<&TokenIssuer> {
        self.issuer.as_ref()
    }

    /// `(certificate, key)` PEM files of a client certificate the registry accepts
    /// (`MutualTls` only).
    pub fn client_cert(&self) -> Option<(&Path, &Path)> {
        self.client_cert
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path()))
    }

    /// A docker `config.json` holding [`TestRegistry::credentials`] (`TlsAuth`, `TlsToken`).
    pub fn auth_file(&self) -> Option<&Path> {
        self.auth_file.as_deref()
    }

    /// The registry's storage root (`storage.filesystem.rootdirectory`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The file the registry's stdout and stderr go to (appended across restarts).
    pub fn log_file(&self) -> &Path {
        &self.log
    }

    /// Whether the registry process is (still) running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the registry: SIGTERM, then SIGKILL if it has not exited after a few seconds,
    /// and reaps it. Idempotent; also runs on drop.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            terminate(&child);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(None) => thread::sleep(Duration::from_millis(10)),
                    _ => return,
                }
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Stops the registry if it runs, then starts it again on the same port with the same
    /// config, certificate, credentials and storage.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.launch(self.port)
    }

    /// The last `lines` lines of the registry log, for assertion messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, 0, lines)
    }

    /// Spawns the registry on `port` (0 = any free one) and waits until it is ready.
    fn launch(&mut self, port: u16) -> io::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        // Only look at what this launch logs, not at an earlier run's "listening on".
        let offset = log.metadata()?.len();
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .arg(&self.config)
            .env("REGISTRY_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Every config key can be overridden from the environment; a stray REGISTRY_* in the
        // developer's shell must not change the test registry.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGISTRY_") {
                command.env_remove(key);
            }
        }
        let mut child = spawn_tied_to_this_process(command).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run {}: {e}", self.binary.display()),
            )
        })?;
        match wait_ready(&mut child, &self.log, offset, port) {
            Ok(actual) => {
                self.port = actual;
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(io::Error::new(
                    e.kind(),
                    format!(
                        "docker-registry ({:?}) did not become ready: {e}\n--- registry log ---\n{}",
                        self.kind,
                        tail(&self.log, offset, 30)
                    ),
                ))
            }
        }
    }
}

/// Spawns `command` so that its process is killed when this one dies, even by SIGKILL, which
/// runs no destructor (a killed benchmark used to leave its registries running). The kernel's
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process,
/// and tests start registries from short-lived threads (tokio's blocking pool), so every child
/// is forked by one thread that lives as long as the process.
pub(crate) fn spawn_tied_to_this_process(mut command: Command) -> io::Result<Child> {
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("wsr-test-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("the spawner thread starts");
        requests
    });
    let parent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe and touch no memory of the parent.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Had the parent died before the prctl, nothing would signal the child.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::other("the test process exited"));
            }
            Ok(())
        });
    }
    let gone = || io::Error::other("the spawner thread is gone");
    let (reply, answer) = mpsc::channel();
    spawner.send((command, reply)).map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls the log (from `offset`) for the listening line and then a TCP connect.
fn wait_ready(child: &mut Child, log: &Path, offset: u64, want_port: u16) -> io::Result<u16> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!("it exited early with {status}")));
        }
        if let Some(port) = listening_port(&read_from(log, offset)?) {
            if want_port != 0 && port != want_port {
                return Err(io::Error::other(format!(
                    "it listens on port {port}, expected {want_port}"
                )));
            }
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(port);
            }
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {READY_TIMEOUT:?}"),
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Parses `msg="listening on 127.0.0.1:PORT"` (or `..., tls"`) from registry log text.
fn listening_port(log: &str) -> Option<u16> {
    let start = log.find(LISTENING)? + LISTENING.len();
    let digits: String = log[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|&p| p != 0)
}

fn read_from(path: &Path, offset: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn tail(path: &Path, offset: u64, lines: usize) -> String {
    match read_from(path, offset) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Sends SIGTERM, which is how the registry is stopped in production too.
fn terminate(child: &Child) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own unreaped
    // child, so it cannot have been recycled for another process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

fn registry_binary() -> io::Result<PathBuf> {
    let debian = Path::new("/usr/bin/docker-registry");
    if debian.is_file() {
        return Ok(debian.to_path_buf());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("docker-registry"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| missing_tool("docker-registry", "docker-registry"))
}

fn missing_tool(binary: &str, package: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "`{binary}` not found: install the Debian package `{package}` \
             (apt-get install -y --no-install-recommends {package}), or run scripts/test.sh as root"
        ),
    )
}

/// Runs a helper tool, mapping "not found" to an install hint and failure to its stderr.
fn run_tool(command: &mut Command, binary: &str, package: &str) -> io::Result<Vec<u8>> {
    let output = command.stdin(Stdio::null()).output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            missing_tool(binary, package)
        } else {
            io::Error::new(e.kind(), format!("cannot run {binary}: {e}"))
        }
    })?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{binary} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output.stdout)
}

/// Writes `cert.pem`/`key.pem` into `dir`: a self-signed P-256 leaf with `CA:FALSE`, because
/// rustls/webpki rejects a CA certificate used as an end entity (`CaUsedAsEndEntity`) and the
/// registry's Go TLS stack needs the IP SAN. EC keygen takes milliseconds (RSA about 2 s), so
/// each instance gets its own and nothing is shared between tests.
fn generate_leaf_cert(dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    run_tool(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
            // Not CN=localhost: Debian's ssl-cert-snakeoil.pem in the system store has that
            // subject, and webpki would then report a confusing signature-algorithm error
            // instead of UnknownIssuer for clients that lack this certificate.
            .args(["-nodes", "-days", "2", "-subj", "/CN=wsr-test-registry"])
            .args([
                "-addext",
                &format!("subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:{CLUSTER_REGISTRY_NAME}"),
            ])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-addext", "keyUsage=critical,digitalSignature"])
            .args(["-addext", "extendedKeyUsage=serverAuth"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        "openssl",
        "openssl",
    )?;
    Ok((cert, key))
}

/// Writes a client CA and a client certificate it signed into `dir`; returns
/// `(ca, cert, key)`.
fn generate_client_cert(dir: &Path) -> io::Result<(PathBuf, PathBuf, PathBuf)> {
    let ca = dir.join("client-ca.pem");
    let ca_key = dir.join("client-ca-key.pem");
    let cert = dir.join("client.pem");
    let key = dir.join("client-key.pem");
    run_tool(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-nodes", "-days", "2", "-subj", "/CN=wsr-test-client-ca"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca),
        "openssl",
        "openssl",
    )?;
    run_tool(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-nodes", "-days", "2", "-subj", "/CN=wsr-test-client"])
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-addext", "keyUsage=critical,digitalSignature"])
            .args(["-addext", "extendedKeyUsage=clientAuth"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        "openssl",
        "openssl",
    )?;
    Ok((ca, cert, key))
}

/// Writes the token issuer's signing key and its self-signed certificate into `dir`; returns
/// `(cert, key)`. The certificate is the registry's whole `rootcertbundle`, and tokens carry it
/// in their `x5c` header.
fn generate_signer_cert(dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let cert = dir.join("token-signer.pem");
    let key = dir.join("token-signer-key.pem");
    run_tool(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-nodes", "-days", "2", "-subj", "/CN=wsr-test-token-signer"])
            .args(["-addext", "keyUsage=critical,digitalSignature"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        "openssl",
        "openssl",
    )?;
    Ok((cert, key))
}

/// Writes a docker `config.json` with `user`'s credentials for `host`.
pub fn write_auth_file(path: &Path, host: &str, user: &str, password: &str) -> io::Result<()> {
    let json = serde_json::json!({ "auths": { host: { "auth": basic_auth(user, password) } } });
    fs::write(path, serde_json::to_vec_pretty(&json)?)
}

/// bcrypt (`-B`) is required: the registry rejects apr1/MD5 entries with a plain 401.
fn write_htpasswd(path: &Path, user: &str, password: &str) -> io::Result<()> {
    let line = run_tool(
        Command::new("htpasswd").args(["-Bbn", user, password]),
        "htpasswd",
        "apache2-utils",
    )?;
    if !line.starts_with(format!("{user}:$2").as_bytes()) {
        return Err(io::Error::other(format!(
            "htpasswd did not produce a bcrypt entry: {}",
            String::from_utf8_lossy(&line).trim()
        )));
    }
    fs::write(path, line)
}

fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex::encode(buf))
}

/// The `auth` value of a docker config.json entry.
fn basic_auth(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    /// Runs curl and returns (HTTP status, response headers). Status 0 = no HTTP response.
    fn curl(registry: &TestRegistry, args: &[&str]) -> (u16, String) {
        let output = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-D", "-", "-w", "%{http_code}"])
            .args(["--max-time", "10"])
            .args(args)
            .output()
            .expect("curl (Debian package `curl`) must be installed");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let status = stdout[stdout.len().saturating_sub(3)..]
            .parse()
            .unwrap_or(0);
        let headers = stdout[..stdout.len().saturating_sub(3)].to_owned();
        if status == 0 {
            eprintln!(
                "curl {args:?}: {}\nregistry log:\n{}",
                String::from_utf8_lossy(&output.stderr),
                registry.log_tail(10)
            );
        }
        (status, headers)
    }

    fn header(headers: &str, name: &str) -> Option<String> {
        headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }

    /// curl arguments that make a request trusted and authenticated as needed.
    fn client_args(registry: &TestRegistry) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(ca) = registry.ca_file() {
            args.push("--cacert".to_owned());
            args.push(ca.display().to_string());
        }
        if let Some((user, password)) = registry.credentials() {
            args.push("-u".to_owned());
            args.push(format!("{user}:{password}"));
        }
        args
    }

    fn request(registry: &TestRegistry, extra: &[&str]) -> (u16, String) {
        let base = client_args(registry);
        let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        curl(registry, &args)
    }

    /// Monolithic blob push: POST opens an upload, PUT `?digest=` with the body completes it.
    fn push_blob(registry: &TestRegistry, repo: &str, data: &[u8]) -> String {
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)));
        let url = format!("{}/v2/{repo}/blobs/uploads/", registry.base_url());
        let (status, headers) = request(registry, &["-X", "POST", &url]);
        assert_eq!(status, 202, "POST upload: {headers}");
        let location = header(&headers, "Location").expect("upload Location");
        let location = if location.starts_with('/') {
            format!("{}{location}", registry.base_url())
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={digest}");
        let body = registry.dir.path().join("blob.bin");
        fs::write(&body, data).unwrap();
        let body_arg = format!("@{}", body.display());
        let (status, headers) = request(
            registry,
            &[
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &body_arg,
                &put,
            ],
        );
        assert_eq!(status, 201, "PUT blob: {headers}");
        digest
    }

    fn v2(registry: &TestRegistry) -> String {
        format!("{}/v2/", registry.base_url())
    }

    #[test]
    fn plain_answers_v2() {
        let registry = TestRegistry::start(RegistryKind::Plain).unwrap();
        assert!(registry.host().starts_with("127.0.0.1:"));
        assert!(registry.ca_file().is_none());
        assert!(registry.credentials().is_none());
        assert!(registry.auth_file().is_none());
        let (status, headers) = curl(&registry, &[&v2(&registry)]);
        assert_eq!(status, 200, "{headers}");
        assert!(headers.contains("registry/2.0"), "{headers}");
    }

    #[test]
    fn tls_needs_its_certificate() {
        let registry = TestRegistry::start(RegistryKind::Tls).unwrap();
        let ca = registry.ca_file().unwrap().display().to_string();
        assert_eq!(curl(&registry, &["--cacert", &ca, &v2(&registry)]).0, 200);
        // The SAN also names localhost.
        let by_name = format!("https://localhost:{}/v2/", registry.port);
        assert_eq!(curl(&registry, &["--cacert", &ca, &by_name]).0, 200);
        // Without the anchor verification must fail (no HTTP status at all).
        assert_eq!(curl(&registry, &[&v2(&registry)]).0, 0);
        // Plain HTTP to the TLS port is refused by the registry.
        let http = format!("http://{}/v2/", registry.host());
        assert_eq!(curl(&registry, &[&http]).0, 400);
    }

    #[test]
    fn tls_auth_requires_credentials() {
        let registry = TestRegistry::start(RegistryKind::TlsAuth).unwrap();
        let ca = registry.ca_file().unwrap().display().to_string();
        let (user, password) = registry.credentials().unwrap();
        assert_eq!(user, TEST_USER);
        let (status, headers) = curl(&registry, &["--cacert", &ca, &v2(&registry)]);
        assert_eq!(status, 401);
        assert!(
            headers.contains(&format!("Basic realm=\"{REALM}\"")),
            "{headers}"
        );
        let good = format!("{user}:{password}");
        assert_eq!(
            curl(&registry, &["--cacert", &ca, "-u", &good, &v2(&registry)]).0,
            200
        );
        let bad = format!("{user}:wrong");
        assert_eq!(
            curl(&registry, &["--cacert", &ca, "-u", &bad, &v2(&registry)]).0,
            401
        );
        assert_eq!(curl(&registry, &["-u", &good, &v2(&registry)]).0, 0);

        // The docker config.json carries the same credentials for this host.
        let auth: serde_json::Value =
            serde_json::from_slice(&fs::read(registry.auth_file().unwrap()).unwrap()).unwrap();
        let encoded = auth["auths"][registry.host()]["auth"].as_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(decoded, good.as_bytes());
    }

    /// Distribution 2.8 accepts the issuer's JWTs and enforces the scopes it granted: the
    /// read-only user's token pulls but cannot open an upload.
    #[test]
    fn token_registry_enforces_the_issued_scopes() {
        let registry = TestRegistry::start(RegistryKind::TlsToken).unwrap();
        let issuer = registry.token_issuer().unwrap();
        let ca = registry.ca_file().unwrap().display().to_string();
        let (status, headers) = curl(&registry, &["--cacert", &ca, &v2(&registry)]);
        assert_eq!(status, 401);
        let challenge = header(&headers, "WWW-Authenticate").unwrap();
        assert!(
            challenge.starts_with(&format!("Bearer realm=\"{}\"", issuer.realm())),
            "{challenge}"
        );
        assert!(
            challenge.contains(&format!("service=\"{TOKEN_SERVICE}\"")),
            "{challenge}"
        );

        let token = |user: &str, password: &str, scope: &str| -> Option<String> {
            let out = Command::new("curl")
                .args([
                    "-sSf",
                    "--cacert",
                    &ca,
                    "-u",
                    &format!("{user}:{password}"),
                    "-G",
                ])
                .args(["--data-urlencode", &format!("service={TOKEN_SERVICE}")])
                .args(["--data-urlencode", &format!("scope={scope}")])
                .arg(issuer.realm())
                .output()
                .unwrap();
            let body: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            body["token"].as_str().map(str::to_owned)
        };
        let scope = "repository:wsr/token:pull,push";
        let upload = format!("{}/v2/wsr/token/blobs/uploads/", registry.base_url());
        let (user, password) = registry.credentials().unwrap();
        let writer = token(user, password, scope).expect("a token for the read-write user");
        let bearer = format!("Authorization: Bearer {writer}");
        let (status, headers) = curl(
            &registry,
            &["--cacert", &ca, "-H", &bearer, "-X", "POST", &upload],
        );
        assert_eq!(status, 202, "{headers}\n{}", registry.log_tail(5));
        assert_eq!(
            curl(&registry, &["--cacert", &ca, "-H", &bearer, &v2(&registry)]).0,
            200
        );

        let (reader, reader_password) = registry.reader_credentials().unwrap();
        let read_only = token(reader, reader_password, scope).expect("a token for the reader");
        let bearer = format!("Authorization: Bearer {read_only}");
        let tags = format!("{}/v2/wsr/token/tags/list", registry.base_url());
        // Pull is granted: the repository does not exist yet, so 404 (not 401).
        assert_eq!(
            curl(&registry, &["--cacert", &ca, "-H", &bearer, &tags]).0,
            404
        );
        let (status, headers) = curl(
            &registry,
            &["--cacert", &ca, "-H", &bearer, "-X", "POST", &upload],
        );
        assert_eq!(status, 401, "{headers}");
        let challenge = header(&headers, "WWW-Authenticate").unwrap();
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{challenge}"
        );

        assert_eq!(token(reader, "wrong", scope), None);
        let seen = issuer.requests();
        let granted: Vec<_> = seen.iter().map(|r| (r.status, r.granted.clone())).collect();
        assert_eq!(
            granted,
            [
                (200, vec![scope.to_owned()]),
                (200, vec!["repository:wsr/token:pull".to_owned()]),
                (401, vec![]),
            ]
        );
        assert_eq!(seen[2].user.as_deref(), Some(reader));
    }

    #[test]
    fn mutual_tls_requires_the_client_certificate() {
        let registry = TestRegistry::start(RegistryKind::MutualTls).unwrap();
        let ca = registry.ca_file().unwrap().display().to_string();
        let (cert, key) = registry.client_cert().unwrap();
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let with = [
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            &v2(&registry),
        ];
        assert_eq!(curl(&registry, &with).0, 200);
        // Without a client certificate the handshake fails: no HTTP status at all.
        assert_eq!(curl(&registry, &["--cacert", &ca, &v2(&registry)]).0, 0);
        assert!(registry.credentials().is_none());
    }

    #[test]
    fn restart_keeps_port_and_blobs() {
        let mut registry = TestRegistry::start(RegistryKind::TlsAuth).unwrap();
        let host = registry.host();
        let digest = push_blob(&registry, "wsr/harness", b"kept across restarts");
        let blob = format!("{}/v2/wsr/harness/blobs/{digest}", registry.base_url());

        registry.stop();
        registry.stop(); // idempotent
        assert!(!registry.is_running());
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, registry.port));
        assert!(
            TcpStream::connect(addr).is_err(),
            "port still open after stop"
        );

        registry.restart().unwrap();
        assert!(registry.is_running());
        assert_eq!(registry.host(), host);
        let (status, headers) = request(&registry, &["-I", &blob]);
        assert_eq!(status, 200, "{headers}");
        assert_eq!(header(&headers, "Content-Length").as_deref(), Some("20"));

        // Restart while running works too.
        registry.restart().unwrap();
        assert_eq!(request(&registry, &["-I", &blob]).0, 200);
    }

    /// The cache is what tells the two apart: a blob whose storage is removed behind the
    /// registry's back is still described by the cached registry, and no longer by the other.
    #[test]
    fn the_cached_registry_describes_blobs_from_its_cache() {
        for (registry, still_found) in [
            (TestRegistry::start_cached().unwrap(), 200),
            (TestRegistry::start(RegistryKind::Plain).unwrap(), 404),
        ] {
            let digest = push_blob(&registry, "wsr/cache", b"described once");
            let blob = format!("{}/v2/wsr/cache/blobs/{digest}", registry.base_url());
            assert_eq!(request(&registry, &["-I", &blob]).0, 200);
            let hex = digest.strip_prefix("sha256:").unwrap();
            let stored = registry.data_dir().join(format!(
                "docker/registry/v2/blobs/sha256/{}/{hex}",
                &hex[..2]
            ));
            fs::remove_dir_all(&stored).unwrap();
            let (status, headers) = request(&registry, &["-I", &blob]);
            assert_eq!(status, still_found, "{headers}");
        }
    }

    #[test]
    fn drop_stops_the_process_and_removes_files() {
        let registry = TestRegistry::start(RegistryKind::Plain).unwrap();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, registry.port));
        let dir = registry.dir.path().to_path_buf();
        drop(registry);
        assert!(TcpStream::connect(addr).is_err());
        assert!(!dir.exists());
    }

    /// A registry outlives the thread that started it and dies with its process, even a
    /// process killed by SIGKILL. The test runs itself again as that process.
    #[test]
    fn a_killed_test_process_takes_its_registry_with_it() {
        const CHILD: &str = "WSR_TEST_TIED_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let started = thread::spawn(|| TestRegistry::start(RegistryKind::Plain).unwrap());
            let registry = started.join().unwrap();
            // The kernel signals a dead thread's children a moment after `join` returns.
            thread::sleep(Duration::from_millis(500));
            println!("registry port {}", registry.port);
            thread::sleep(Duration::from_secs(120));
            return;
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "--nocapture", "--test-threads=1"])
            .arg("testing::tests::a_killed_test_process_takes_its_registry_with_it")
            .env(CHILD, "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = io::BufReader::new(child.stdout.take().unwrap());
        let port: u16 = io::BufRead::lines(stdout)
            .map_while(Result::ok)
            // libtest prints the test's name on the same line first.
            .find_map(|l| l.split("registry port ").nth(1)?.trim().parse().ok())
            .expect("the child reports its registry's port");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        assert!(
            TcpStream::connect(addr).is_ok(),
            "the registry died with the thread that started it"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_ok() {
            assert!(
                Instant::now() < deadline,
                "the registry outlived its killed process"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn parses_listening_line() {
        let line =
            r#"time="x" level=info msg="listening on 127.0.0.1:40195, tls" go.version=go1.19.8"#;
        assert_eq!(listening_port(line), Some(40195));
        let line = r#"level=info msg="listening on 127.0.0.1:46577" go.version=go1.19.8"#;
        assert_eq!(listening_port(line), Some(46577));
        assert_eq!(listening_port("listening on 127.0.0.1:0"), None);
        assert_eq!(listening_port("redis not configured"), None);
    }

    #[test]
    fn missing_tool_names_the_package() {
        let err = run_tool(
            &mut Command::new("wsr-no-such-binary"),
            "htpasswd",
            "apache2-utils",
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("apache2-utils"), "{err}");
    }

    /// The point of the CA:FALSE EC leaf: rustls (through oci-client, as the crates use it)
    /// must accept it, and must reject the server without it.
    #[tokio::test]
    async fn rustls_client_accepts_the_leaf() {
        use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
        use oci_client::secrets::RegistryAuth;
        use oci_client::{Client, Reference};

        let registry = tokio::task::spawn_blocking(|| TestRegistry::start(RegistryKind::TlsAuth))
            .await
            .unwrap()
            .unwrap();
        let (user, password) = registry.credentials().unwrap();
        let auth = RegistryAuth::Basic(user.to_owned(), password.to_owned());
        let reference: Reference = format!("{}/wsr/rustls:latest", registry.host())
            .parse()
            .unwrap();
        let data = b"hello rustls".to_vec();
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&data)));

        let trusted = Client::new(ClientConfig {
            protocol: ClientProtocol::Https,
            extra_root_certificates: vec![Certificate {
                encoding: CertificateEncoding::Pem,
                data: fs::read(registry.ca_file().unwrap()).unwrap(),
            }],
            ..Default::default()
        });
        trusted
            .auth(&reference, &auth, oci_client::RegistryOperation::Push)
            .await
            .unwrap();
        trusted
            .push_blob(&reference, data.clone(), &digest)
            .await
            .unwrap();
        assert!(trusted.blob_exists(&reference, &digest).await.unwrap());

        let untrusted = Client::new(ClientConfig {
            protocol: ClientProtocol::Https,
            ..Default::default()
        });
        // auth() sends GET /v2/, so the TLS handshake has to fail right there.
        let err = untrusted
            .auth(&reference, &auth, oci_client::RegistryOperation::Push)
            .await
            .expect_err("a client without the anchor must not talk to the registry");
        assert!(
            format!("{err:?}").contains("InvalidCertificate"),
            "expected a certificate error, got {err:?}"
        );
    }
}
