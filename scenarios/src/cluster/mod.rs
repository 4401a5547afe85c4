//! A real Kubernetes control plane for tests and for `scenarios cluster up|down`: etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler built from the pinned Go modules in
//! `scenarios/cluster/` (by `scenarios/cluster/build.sh`), started on 127.0.0.1 with random
//! free ports, TLS from certificates made at start, RBAC and Node authorization, PodSecurity
//! admission and ServiceAccount token signing. The node agent (the one stand-in, for the kubelet)
//! runs as `scenarios node-agent`. Everything lives under one run directory:
//! `pki/`, `etcd/`, `logs/<component>.log`, `pids/<component>.pid`, `kubeconfig` (admin).
//!
//! Nothing here imitates the API server: when a binary is missing, starting fails.

mod pki;
mod process;

pub mod fixtures;
pub mod node_agent;

use anyhow::{Context as _, Result, bail};
use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The one Node the node agent registers.
pub const NODE_NAME: &str = "wsr-node";

/// Binaries `scenarios/cluster/build.sh` produces.
const BINARIES: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "oras",
];

/// The Service range; its first address is the `kubernetes` Service's (no traffic goes there).
const SERVICE_RANGE: &str = "10.96.0.0/24";
const SERVICE_IP: &str = "10.96.0.1";
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Stop order: clients of the API server first, etcd last.
const COMPONENTS: &[&str] = &[
    "node-agent",
    "kube-scheduler",
    "kube-controller-manager",
    "kube-apiserver",
    "etcd",
];

/// How to start a cluster.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// Directory with the binaries; default `$WSR_CLUSTER_BIN`, else what `build.sh` prints.
    pub bin_dir: Option<PathBuf>,
    /// The `scenarios` executable, to run `scenarios node-agent`; `None` starts no node.
    pub node_agent: Option<PathBuf>,
}

/// A running cluster. Dropping it stops every component (see [`Cluster::detach`]).
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    server: String,
    /// Children this process started, reaped after stopping so none is left a zombie.
    children: Mutex<Vec<Child>>,
    /// Held by [`Cluster::shared`]: the guard process stops the cluster when this closes.
    _guard: Option<Child>,
    attached: bool,
}

/// The directory holding the cluster binaries: `$WSR_CLUSTER_BIN` if set, else the cache that
/// `scenarios/cluster/build.sh` fills (built on first use, which takes tens of minutes).
pub fn bin_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("WSR_CLUSTER_BIN") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/build.sh");
            eprintln!("WSR_CLUSTER_BIN is not set; running {}", script.display());
            let out = Command::new("bash")
                .arg(&script)
                .stderr(Stdio::inherit())
                .output()
                .with_context(|| format!("running {}", script.display()))?;
            if !out.status.success() {
                bail!("{} failed ({})", script.display(), out.status);
            }
            let stdout = String::from_utf8_lossy(&out.stdout);
            PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
        }
    };
    for name in BINARIES {
        if !dir.join(name).is_file() {
            bail!(
                "{} has no {name}: build the cluster binaries with scenarios/cluster/build.sh \
                 and point WSR_CLUSTER_BIN at the directory it prints",
                dir.display()
            );
        }
    }
    Ok(dir)
}

impl Cluster {
    /// Starts a fresh cluster in `dir` (created if missing; a cluster still running there is
    /// an error; etcd data and logs of an earlier run there are removed). Returns once the API
    /// server is ready, the controller manager has made the `default` ServiceAccount and, with
    /// a node agent, Node `wsr-node` is Ready.
    pub fn start(dir: &Path, options: &StartOptions) -> Result<Cluster> {
        // The ports are free when picked but released before the components bind them, so a
        // process starting at the same moment may take one; then start again on new ports.
        for _ in 1..3 {
            match Cluster::start_once(dir, options) {
                Err(e) if format!("{e:#}").contains("address already in use") => {
                    eprintln!("a port was taken while the cluster started; starting again");
                }
                result => return result,
            }
        }
        Cluster::start_once(dir, options)
    }

    fn start_once(dir: &Path, options: &StartOptions) -> Result<Cluster> {
        let started = Instant::now();
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        if process::any_running(&dir) {
            bail!(
                "a cluster is still running in {}; stop it with `scenarios cluster down --dir {0}`",
                dir.display()
            );
        }
        // Every start is a fresh cluster: state and logs of an earlier run in `dir` go.
        for stale in ["etcd", "logs", "pids", "kubectl-cache"] {
            let path = dir.join(stale);
            if path.exists() {
                fs::remove_dir_all(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
        let bin = match &options.bin_dir {
            Some(b) => b.clone(),
            None => bin_dir()?,
        };
        let pki = pki::generate(&dir.join("pki"), SERVICE_IP)?;
        let [etcd_port, peer_port, api_port, kcm_port, sched_port] = free_ports()?;
        let server = format!("https://127.0.0.1:{api_port}");
        let cluster = Cluster {
            dir,
            bin,
            server,
            children: Mutex::new(Vec::new()),
            _guard: None,
            attached: true,
        };
        for id in pki::IDENTITIES {
            cluster.write_cert_kubeconfig(&pki, id.name)?;
        }
        let result = cluster.boot(
            &pki,
            [etcd_port, peer_port, api_port, kcm_port, sched_port],
            options,
        );
        if let Err(e) = result {
            let logs = cluster.logs(40);
            return Err(e.context(format!("cluster start failed; component logs:\n{logs}")));
        }
        eprintln!(
            "cluster ready in {:.1} s ({})",
            started.elapsed().as_secs_f64(),
            cluster.dir.display()
        );
        Ok(cluster)
    }

    fn boot(&self, pki: &pki::Pki, ports: [u16; 5], options: &StartOptions) -> Result<()> {
        let [etcd_port, peer_port, api_port, kcm_port, sched_port] = ports;
        self.spawn("etcd", None, etcd_args(&self.dir, etcd_port, peer_port))?;
        self.spawn(
            "kube-apiserver",
            None,
            apiserver_args(pki, etcd_port, api_port),
        )?;
        self.wait("the API server's /readyz", Duration::from_secs(90), || {
            self.kubectl(["get", "--raw", "/readyz"])
                .is_ok_and(|s| s.trim() == "ok")
        })?;
        let kcm = self.dir.join("controller-manager.kubeconfig");
        self.spawn(
            "kube-controller-manager",
            None,
            controller_manager_args(pki, &kcm, kcm_port),
        )?;
        let sched = self.dir.join("scheduler.kubeconfig");
        self.spawn("kube-scheduler", None, scheduler_args(&sched, sched_port))?;
        if let Some(exe) = &options.node_agent {
            let args = os_args([
                "node-agent".as_ref(),
                "--kubeconfig".as_ref(),
                self.kubeconfig().as_os_str(),
                "--dir".as_ref(),
                self.dir.join("node").as_os_str(),
            ]);
            self.spawn("node-agent", Some(exe), args)?;
        }
        self.wait(
            "the default ServiceAccount",
            Duration::from_secs(60),
            || {
                self.kubectl(["get", "serviceaccount", "default", "-n", "default"])
                    .is_ok()
            },
        )?;
        if options.node_agent.is_some() {
            let ready = "-o=jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
            self.wait("Node wsr-node to be Ready", Duration::from_secs(90), || {
                self.kubectl(["get", "node", NODE_NAME, ready])
                    .is_ok_and(|s| s.trim() == "True")
            })?;
        }
        Ok(())
    }

    /// Starts component `name`: `program`, or the cluster binary of that name.
    fn spawn(&self, name: &str, program: Option<&Path>, args: Vec<OsString>) -> Result<()> {
        let program = program.map_or_else(|| self.bin.join(name), Path::to_owned);
        let child = process::spawn(&self.dir, name, &program, args)?;
        self.children.lock().expect("children lock").push(child);
        Ok(())
    }

    /// Polls `ready` every 200 ms until it holds; fails after `limit` or as soon as a component
    /// this process started has exited.
    fn wait(&self, what: &str, limit: Duration, ready: impl Fn() -> bool) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(exited) = self.exited_component() {
                bail!("waiting for {what}: {exited}");
            }
            if Instant::now() > deadline {
                bail!("{what} not reached within {} s", limit.as_secs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A component started by this process that has already exited, described.
    fn exited_component(&self) -> Option<String> {
        let mut children = self.children.lock().expect("children lock");
        children.iter_mut().find_map(|c| {
            let status = c.try_wait().ok()??;
            Some(format!("process {} exited ({status})", c.id()))
        })
    }

    /// The cluster that `scenarios cluster up --dir DIR` started and left running, to use
    /// without owning it: dropping the value leaves it running.
    pub fn attach(dir: &Path) -> Result<Cluster> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("no cluster directory {}", dir.display()))?;
        let kubeconfig = dir.join("kubeconfig");
        let config: serde_json::Value = serde_json::from_slice(
            &fs::read(&kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?,
        )
        .with_context(|| {
            format!(
                "{} is not a kubeconfig written by `scenarios cluster up`",
                kubeconfig.display()
            )
        })?;
        let server = config["clusters"][0]["cluster"]["server"]
            .as_str()
            .with_context(|| format!("{} names no server", kubeconfig.display()))?
            .to_owned();
        if !process::any_running(&dir) {
            bail!(
                "no cluster is running in {}; start one with `scenarios cluster up --dir {0}`",
                dir.display()
            );
        }
        Ok(Cluster {
            dir,
            bin: bin_dir()?,
            server,
            children: Mutex::new(Vec::new()),
            _guard: None,
            attached: false,
        })
    }

    /// Stops every component and waits for them (idempotent).
    pub fn stop(&self) -> Result<()> {
        stop(&self.dir)?;
        for mut child in self.children.lock().expect("children lock").drain(..) {
            let _ = child.wait();
        }
        Ok(())
    }

    /// Leaves the cluster running when this value is dropped (for `cluster up`).
    pub fn detach(mut self) -> PathBuf {
        self.attached = false;
        self.dir.clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin kubeconfig (client certificate in group `system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The directory holding kubectl, oras and the control-plane binaries.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// A kube client with the admin kubeconfig. Call it from the runtime that will use it.
    pub async fn client(&self) -> Result<kube::Client> {
        client_for(&self.kubeconfig()).await
    }

    /// Runs kubectl as admin; its stdout, or an error with its stderr.
    pub fn kubectl<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.kubectl_as(&self.kubeconfig(), args, None)
    }

    /// Waits up to 30 s until the CRD `name` is Established. Not `kubectl wait
    /// --for=condition=Established`: on a CRD applied a moment ago, whose status has no
    /// conditions yet, that fails at once (".status.conditions accessor error") instead of
    /// waiting.
    pub fn wait_crd_established(&self, name: &str) -> Result<()> {
        let crd = format!("crd/{name}");
        let established = r#"-o=jsonpath={.status.conditions[?(@.type=="Established")].status}"#;
        self.wait(
            &format!("the CRD {name} to be Established"),
            Duration::from_secs(30),
            || {
                self.kubectl(["get", &crd, established])
                    .is_ok_and(|s| s.trim() == "True")
            },
        )
    }

    /// Runs kubectl as admin with `stdin` as its input (e.g. `apply -f -`).
    pub fn kubectl_stdin<I, S>(&self, args: I, stdin: &str) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.kubectl_as(&self.kubeconfig(), args, Some(stdin))
    }

    /// Runs kubectl with `kubeconfig`.
    pub fn kubectl_as<I, S>(
        &self,
        kubeconfig: &Path,
        args: I,
        stdin: Option<&str>,
    ) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.join("kubectl-cache"))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting kubectl")?;
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates namespace `name` with `labels` and waits until its `default` ServiceAccount exists
    /// (the ServiceAccount admission rejects pods until then).
    pub fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) -> Result<()> {
        let labels: serde_json::Map<_, _> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        let ns = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": name, "labels": labels },
        });
        self.kubectl_stdin(["create", "-f", "-"], &ns.to_string())?;
        self.wait(
            &format!("ServiceAccount default in {name}"),
            Duration::from_secs(60),
            || {
                self.kubectl(["get", "serviceaccount", "default", "-n", name])
                    .is_ok()
            },
        )
    }

    /// Writes a kubeconfig that authenticates as ServiceAccount `ns/sa` with a token from the
    /// TokenRequest API (valid 24 h), so a client runs with exactly the RBAC granted to it.
    pub fn service_account_kubeconfig(&self, ns: &str, sa: &str) -> Result<PathBuf> {
        let token = self.kubectl(["create", "token", sa, "-n", ns, "--duration=24h"])?;
        let path = self.dir.join(format!("sa-{ns}-{sa}.kubeconfig"));
        let user = serde_json::json!({ "token": token.trim() });
        write_kubeconfig(&path, &self.server, &self.dir.join("pki/ca.crt"), user)?;
        Ok(path)
    }

    /// The last `lines` lines of each component's log, headed by its name.
    pub fn logs(&self, lines: usize) -> String {
        logs(&self.dir, lines)
    }

    /// A guard that prints the components' log tails to stderr if the test holding it panics.
    pub fn logs_on_failure(&self) -> LogsOnFailure<'_> {
        LogsOnFailure(self)
    }

    /// One cluster for the whole test binary, started on first use in a fresh temporary
    /// directory with `options` (later callers get the same cluster whatever they pass). A guard
    /// process stops it and removes the directory when the test binary exits, however it exits.
    pub fn shared(options: &StartOptions, scenarios_exe: &Path) -> &'static Cluster {
        static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
        let started = SHARED.get_or_init(|| {
            let options = options.clone();
            let exe = scenarios_exe.to_owned();
            // A thread of its own: the caller may be inside an async runtime.
            std::thread::spawn(move || start_shared(&options, &exe).map_err(|e| format!("{e:#}")))
                .join()
                .unwrap_or_else(|_| Err("cluster start panicked".into()))
        });
        match started {
            Ok(cluster) => cluster,
            Err(e) => panic!("{e}"),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.attached
            && let Err(e) = self.stop()
        {
            eprintln!("stopping the cluster in {}: {e:#}", self.dir.display());
        }
    }
}

/// See [`Cluster::logs_on_failure`].
pub struct LogsOnFailure<'a>(&'a Cluster);

impl Drop for LogsOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- cluster logs ---\n{}", self.0.logs(30));
        }
    }
}

fn start_shared(options: &StartOptions, exe: &Path) -> Result<Cluster> {
    Cluster::start_guarded(options, exe)
}

impl Cluster {
    /// Starts a cluster in a fresh temporary directory with a guard process (`exe cluster
    /// guard`) that stops it and removes the directory when this process exits, however it
    /// exits.
    pub fn start_guarded(options: &StartOptions, exe: &Path) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("wsr-cluster-")
            .tempdir()?
            .keep();
        let mut cluster = Cluster::start(&dir, options)?;
        // The guard waits for its stdin to close: when this process exits, the kernel closes the
        // pipe and the guard runs `cluster down` and removes the directory.
        let mut guard = Command::new(exe);
        guard
            .args(["cluster", "guard", "--dir"])
            .arg(cluster.dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe; a session of its own keeps the guard alive through
        // a Ctrl-C that kills the test binary.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            guard.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        cluster._guard = Some(guard.spawn().context("starting the cluster guard")?);
        Ok(cluster)
    }
}

/// A kube client for `kubeconfig`.
pub async fn client_for(kubeconfig: &Path) -> Result<kube::Client> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

/// Stops every component recorded in `dir` (idempotent; nothing recorded is success).
pub fn stop(dir: &Path) -> Result<()> {
    let dir = match dir.canonicalize() {
        Ok(d) => d,
        Err(_) => return Ok(()),
    };
    let mut names: Vec<String> = COMPONENTS.iter().map(|s| s.to_string()).collect();
    for name in process::recorded(&dir) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    for name in &names {
        process::stop(&dir, name, Duration::from_secs(10))?;
    }
    Ok(())
}

/// The last `lines` lines of each component's log in `dir`.
pub fn logs(dir: &Path, lines: usize) -> String {
    COMPONENTS
        .iter()
        .rev()
        .map(|name| format!("== {name} ==\n{}", process::log_tail(dir, name, lines)))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Cluster {
    /// Writes `<identity>.kubeconfig` for a client certificate; the admin's is `kubeconfig`.
    fn write_cert_kubeconfig(&self, pki: &pki::Pki, name: &str) -> Result<()> {
        let path = if name == "admin" {
            self.kubeconfig()
        } else {
            self.dir.join(format!("{name}.kubeconfig"))
        };
        let user = serde_json::json!({
            "client-certificate": pki.cert(name),
            "client-key": pki.key(name),
        });
        write_kubeconfig(&path, &self.server, &pki.ca_cert(), user)
    }
}

/// A kubeconfig (JSON, which is YAML) with one cluster, one user and a context selecting both.
fn write_kubeconfig(path: &Path, server: &str, ca: &Path, user: serde_json::Value) -> Result<()> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "wsr", "cluster": { "server": server, "certificate-authority": ca } }],
        "users": [{ "name": "wsr", "user": user }],
        "contexts": [{ "name": "wsr", "context": { "cluster": "wsr", "user": "wsr", "namespace": "default" } }],
        "current-context": "wsr",
    });
    fs::write(path, serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Five distinct free ports on 127.0.0.1 (held together while picking, so they differ).
fn free_ports() -> Result<[u16; 5]> {
    let listeners = (0..5)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?;
    Ok(ports.try_into().expect("five ports"))
}

fn os_args<'a>(args: impl IntoIterator<Item = &'a std::ffi::OsStr>) -> Vec<OsString> {
    args.into_iter().map(OsString::from).collect()
}

/// `--flag=value` arguments from pairs whose value is a string or a path.
fn flags(pairs: &[(&str, &dyn AsRef<std::ffi::OsStr>)]) -> Vec<OsString> {
    pairs
        .iter()
        .map(|(flag, value)| {
            let mut arg = OsString::from(format!("--{flag}="));
            arg.push(value.as_ref());
            arg
        })
        .collect()
}

fn etcd_args(dir: &Path, port: u16, peer_port: u16) -> Vec<OsString> {
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let cluster = format!("default={peer}");
    // Plain HTTP on loopback: only the API server talks to etcd. No fsync: the data is
    // thrown away with the run directory.
    flags(&[
        ("name", &"default"),
        ("data-dir", &dir.join("etcd")),
        ("listen-client-urls", &client),
        ("advertise-client-urls", &client),
        ("listen-peer-urls", &peer),
        ("initial-advertise-peer-urls", &peer),
        ("initial-cluster", &cluster),
        ("unsafe-no-fsync", &"true"),
        ("log-level", &"warn"),
    ])
}

fn apiserver_args(pki: &pki::Pki, etcd_port: u16, port: u16) -> Vec<OsString> {
    let etcd = format!("http://127.0.0.1:{etcd_port}");
    let port = port.to_string();
    flags(&[
        ("etcd-servers", &etcd),
        ("bind-address", &"127.0.0.1"),
        ("advertise-address", &"127.0.0.1"),
        ("secure-port", &port),
        ("tls-cert-file", &pki.cert("apiserver")),
        ("tls-private-key-file", &pki.key("apiserver")),
        ("client-ca-file", &pki.ca_cert()),
        ("authorization-mode", &"Node,RBAC"),
        // Added to the default set, which already holds PodSecurity (default level privileged;
        // namespaces opt in with pod-security.kubernetes.io labels), ServiceAccount,
        // NamespaceLifecycle, LimitRanger, ResourceQuota, DefaultStorageClass and the webhooks.
        ("enable-admission-plugins", &"NodeRestriction"),
        ("service-account-issuer", &ISSUER),
        ("service-account-key-file", &pki.sa_pub()),
        ("service-account-signing-key-file", &pki.sa_key()),
        ("service-cluster-ip-range", &SERVICE_RANGE),
        // The `kubernetes` Service cannot point at a loopback address; nothing in a pod dials it.
        ("endpoint-reconciler-type", &"none"),
        // The aggregation-layer CA the controller manager and scheduler look up; no proxy
        // certificate is issued, so the headers are trusted from no one.
        ("requestheader-client-ca-file", &pki.ca_cert()),
        ("requestheader-allowed-names", &"wsr-front-proxy"),
        ("requestheader-username-headers", &"X-Remote-User"),
        ("requestheader-group-headers", &"X-Remote-Group"),
        ("requestheader-extra-headers-prefix", &"X-Remote-Extra-"),
        ("allow-privileged", &"true"),
        ("profiling", &"false"),
        ("v", &"1"),
    ])
}

fn controller_manager_args(pki: &pki::Pki, kubeconfig: &Path, port: u16) -> Vec<OsString> {
    let port = port.to_string();
    flags(&[
        ("kubeconfig", &kubeconfig),
        ("authentication-kubeconfig", &kubeconfig),
        ("authorization-kubeconfig", &kubeconfig),
        ("bind-address", &"127.0.0.1"),
        ("secure-port", &port),
        // Every default controller: job, garbage collector, ttl-after-finished, namespace,
        // serviceaccount, serviceaccount-token, persistentvolume-binder, node lifecycle, ...
        ("controllers", &"*"),
        // Each controller acts with its own ServiceAccount and bootstrap RBAC role.
        ("use-service-account-credentials", &"true"),
        ("service-account-private-key-file", &pki.sa_key()),
        ("root-ca-file", &pki.ca_cert()),
        ("cluster-signing-cert-file", &pki.ca_cert()),
        ("cluster-signing-key-file", &pki.ca_key()),
        ("cluster-name", &"wsr"),
        ("leader-elect", &"false"),
        ("profiling", &"false"),
    ])
}

fn scheduler_args(kubeconfig: &Path, port: u16) -> Vec<OsString> {
    let port = port.to_string();
    flags(&[
        ("kubeconfig", &kubeconfig),
        ("authentication-kubeconfig", &kubeconfig),
        ("authorization-kubeconfig", &kubeconfig),
        ("bind-address", &"127.0.0.1"),
        ("secure-port", &port),
        ("leader-elect", &"false"),
        ("profiling", &"false"),
    ])
}

/// `scenarios cluster ...`
#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Start a cluster in DIR and leave it running; prints the admin kubeconfig's path last.
    Up {
        #[arg(long)]
        dir: PathBuf,
        /// Start no node agent (the API works; pods stay Pending).
        #[arg(long)]
        no_node: bool,
        /// Directory with the cluster binaries (default: $WSR_CLUSTER_BIN, else build.sh's).
        #[arg(long)]
        bin: Option<PathBuf>,
    },
    /// Stop the cluster in DIR (idempotent).
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Wait for stdin to close, then stop the cluster in DIR and remove DIR (used by tests).
    #[command(hide = true)]
    Guard {
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Runs a `scenarios cluster` subcommand.
pub fn run(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Up { dir, no_node, bin } => {
            let options = StartOptions {
                bin_dir: bin,
                node_agent: if no_node {
                    None
                } else {
                    Some(std::env::current_exe()?)
                },
            };
            let cluster = Cluster::start(&dir, &options)?;
            let kubeconfig = cluster.kubeconfig();
            cluster.detach();
            println!("{}", kubeconfig.display());
            Ok(())
        }
        ClusterCommand::Down { dir } => stop(&dir),
        ClusterCommand::Guard { dir } => {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            stop(&dir)?;
            crate::sample::make_removable(&dir);
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))
        }
    }
}
