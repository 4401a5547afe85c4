//! A DNS server for tests: Debian's `dnsmasq` on port 53 of a free loopback address (resolv.conf
//! has no port), answering the records a test gives and NXDOMAIN for every other name, with a
//! query log so tests can check which names a client asked for and in what order.

use std::io::{self, Read};
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `dnsmasq`; stopped when dropped.
pub struct TestDns {
    child: Child,
    address: Ipv4Addr,
    dir: tempfile::TempDir,
}

impl TestDns {
    /// Serves `records` (name → IPv4 address, exactly those names) and NXDOMAIN for the rest.
    pub fn start(records: &[(&str, Ipv4Addr)]) -> io::Result<TestDns> {
        let mut dir = tempfile::Builder::new().prefix("wsr-dns-").tempdir()?;
        let mut last_error = None;
        for _ in 0..20 {
            let address = free_loopback_address()?;
            let mut command = Command::new("dnsmasq");
            command
                .args(["--keep-in-foreground", "--no-resolv", "--no-hosts"])
                .args(["--conf-file=/dev/null", "--bind-interfaces", "--port=53"])
                .arg(format!("--listen-address={address}"))
                .arg("--pid-file=")
                // Only local data: every other name is NXDOMAIN, never forwarded.
                .arg("--local=/#/")
                .arg("--log-queries")
                .arg(format!(
                    "--log-facility={}",
                    dir.path().join("log").display()
                ))
                .args(
                    records
                        .iter()
                        .map(|(name, ip)| format!("--host-record={name},{ip}")),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let child = super::spawn_tied_to_this_process(command).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot run dnsmasq ({e}): apt-get install dnsmasq-base"),
                )
            })?;
            let mut dns = TestDns {
                child,
                address,
                dir,
            };
            match dns.wait_ready() {
                Ok(()) => return Ok(dns),
                Err(e) => {
                    last_error = Some(e);
                    dir = dns.take_dir()?;
                }
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("dnsmasq did not start")))
    }

    /// The loopback address it listens on (port 53).
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// Writes a resolv.conf naming this server, followed by `lines` (search, options); returns
    /// its path.
    pub fn resolv_conf(&self, name: &str, lines: &str) -> io::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("nameserver {}\n{lines}\n", self.address))?;
        Ok(path)
    }

    /// A directory that lives as long as the server, for a test's other files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The names asked for A records so far, in order.
    pub fn queries(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        log.lines()
            .filter_map(|line| line.split_once("query[A] "))
            .filter_map(|(_, rest)| rest.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let started = Instant::now();
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        // A query for the root's SOA; any answer means the server is up.
        let query = [
            0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 1,
        ];
        while started.elapsed() < READY_TIMEOUT {
            if let Some(status) = self.child.try_wait()? {
                let mut stderr = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                return Err(io::Error::other(format!(
                    "dnsmasq on {} exited ({status}): {stderr}",
                    self.address
                )));
            }
            let _ = socket.send_to(&query, (self.address, 53));
            let mut buf = [0u8; 512];
            if let Ok((n, _)) = socket.recv_from(&mut buf)
                && n >= 2
                && buf[..2] == query[..2]
            {
                return Ok(());
            }
        }
        Err(io::Error::other("dnsmasq did not answer in time"))
    }

    /// Stops this attempt's process and hands its directory to the next attempt.
    fn take_dir(mut self) -> io::Result<tempfile::TempDir> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let fresh = tempfile::Builder::new().prefix("wsr-dns-").tempdir()?;
        Ok(std::mem::replace(&mut self.dir, fresh))
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address (in 127.53.0.0/16) whose port 53 is free, from the clock and process id
/// so parallel tests rarely collide; `start` tries again when one does.
fn free_loopback_address() -> io::Result<Ipv4Addr> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().rotate_left(16);
    for i in 0..256u32 {
        let n = seed.wrapping_add(i.wrapping_mul(2654435761)) % (254 * 254);
        let address = Ipv4Addr::new(127, 53, (n / 254 + 1) as u8, (n % 254 + 1) as u8);
        if UdpSocket::bind((address, 53)).is_ok() {
            return Ok(address);
        }
    }
    Err(io::Error::other("no free loopback address for port 53"))
}
