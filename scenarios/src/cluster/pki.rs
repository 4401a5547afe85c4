//! Certificates and keys for one cluster run, made fresh at every start with the `openssl` CLI:
//! a CA, the API server's serving certificate, one client certificate per identity, and the
//! ServiceAccount token signing key pair. EC P-256 keys: fast to make, accepted by every party.

use anyhow::{Context as _, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A client identity: the CN is the user name and each O a group, as the API server reads them.
pub struct Identity {
    /// File stem under the pki directory (`<name>.crt`, `<name>.key`).
    pub name: &'static str,
    pub user: &'static str,
    pub groups: &'static [&'static str],
}

/// Everyone that talks to the API server with a client certificate.
pub const IDENTITIES: &[Identity] = &[
    Identity {
        name: "admin",
        user: "wsr-admin",
        groups: &["system:masters"],
    },
    Identity {
        name: "controller-manager",
        user: "system:kube-controller-manager",
        groups: &[],
    },
    Identity {
        name: "scheduler",
        user: "system:kube-scheduler",
        groups: &[],
    },
    Identity {
        name: "node",
        user: "system:node:wsr-node",
        groups: &["system:nodes"],
    },
];

/// Paths of what [`generate`] wrote.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }
    /// The ServiceAccount token signing key (private) and its public half.
    pub fn sa_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }
    pub fn sa_pub(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }
}

/// Writes a fresh CA, the API server's serving certificate (for 127.0.0.1 and the in-cluster
/// names of the `kubernetes` Service), the client certificates of [`IDENTITIES`] and the
/// ServiceAccount key pair into `dir`, replacing any from an earlier run.
pub fn generate(dir: &Path, service_ip: &str) -> Result<Pki> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pki = Pki {
        dir: dir.to_owned(),
    };
    let ca_cnf = config(
        "CN = wsr-cluster-ca",
        "basicConstraints = critical,CA:TRUE\n\
         keyUsage = critical,keyCertSign,cRLSign,digitalSignature\n\
         subjectKeyIdentifier = hash",
    );
    openssl_req(&pki, "ca", &ca_cnf, None)?;

    let san = format!(
        "IP:127.0.0.1,IP:{service_ip},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,\
         DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    );
    let server_cnf = config(
        "CN = kube-apiserver",
        &format!("{LEAF}\nextendedKeyUsage = serverAuth\nsubjectAltName = {san}"),
    );
    openssl_req(&pki, "apiserver", &server_cnf, Some(2))?;

    for (n, id) in IDENTITIES.iter().enumerate() {
        let mut subject: Vec<String> = id.groups.iter().map(|g| format!("O = {g}")).collect();
        subject.push(format!("CN = {}", id.user));
        let cnf = config(
            &subject.join("\n"),
            &format!("{LEAF}\nextendedKeyUsage = clientAuth"),
        );
        openssl_req(&pki, id.name, &cnf, Some(3 + n))?;
    }

    run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(pki.sa_key()))?;
    run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(pki.sa_key())
        .arg("-out")
        .arg(pki.sa_pub()))?;
    Ok(pki)
}

const LEAF: &str = "basicConstraints = critical,CA:FALSE\n\
                    keyUsage = critical,digitalSignature,keyEncipherment\n\
                    authorityKeyIdentifier = keyid";

/// An openssl `req` config: the subject lines and the extensions of section `ext`.
fn config(subject: &str, extensions: &str) -> String {
    format!("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n{subject}\n[ext]\n{extensions}\n")
}

/// Makes key `<name>.key` and certificate `<name>.crt`: self-signed without a serial (the CA),
/// otherwise signed by the CA with that serial.
fn openssl_req(pki: &Pki, name: &str, cnf: &str, serial: Option<usize>) -> Result<()> {
    let cnf_path = pki.dir.join(format!("{name}.cnf"));
    fs::write(&cnf_path, cnf)?;
    let mut cmd = Command::new("openssl");
    cmd.args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ])
    .args(["-nodes", "-days", "3650", "-extensions", "ext", "-config"])
    .arg(&cnf_path)
    .arg("-keyout")
    .arg(pki.key(name))
    .arg("-out")
    .arg(pki.cert(name));
    if let Some(serial) = serial {
        cmd.arg("-CA")
            .arg(pki.ca_cert())
            .arg("-CAkey")
            .arg(pki.ca_key())
            .args(["-set_serial", &serial.to_string()]);
    }
    run(&mut cmd)
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (is openssl installed?)"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
