//! Host names resolved as glibc's stub resolver resolves them, without NSS: the binaries are
//! statically linked and run in images that have no NSS modules, and in a cluster the registry
//! is often a short Service name (`image-registry.openshift-image-registry.svc:5000`) that
//! only the search list of `/etc/resolv.conf` completes.
//!
//! A name is looked up in the hosts file first (as given), then over DNS: with fewer dots than
//! `ndots` each search domain is tried before the name itself, with at least as many the name
//! itself first, and a name ending in `.` alone, as glibc's `res_search` does. "No such name"
//! moves on to the next candidate; so does a server failure (SERVFAIL), which makes the final
//! answer transient; a server that does not answer stops the search (transient too). The
//! nameservers (at most 3, 127.0.0.1 when none), search list (the last `search` or `domain`
//! line, else the host name's domain), `ndots`, `timeout` and `attempts` are read from
//! [`RESOLV_CONF_ENV`] (default `/etc/resolv.conf`), the hosts from [`HOSTS_FILE_ENV`]
//! (default `/etc/hosts`), once per store. IP literals and `--resolve` rules never get here:
//! reqwest answers those itself.

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::{Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{Hosts, TokioResolver};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Names the resolv.conf read instead of `/etc/resolv.conf` (for tests).
pub const RESOLV_CONF_ENV: &str = "WSR_RESOLV_CONF";
/// Names the hosts file read instead of `/etc/hosts` (for tests).
pub const HOSTS_FILE_ENV: &str = "WSR_HOSTS_FILE";

/// What resolv.conf says, as glibc reads it.
#[derive(Clone, Debug)]
struct DnsConfig {
    nameservers: Vec<IpAddr>,
    search: Vec<String>,
    ndots: usize,
    timeout: Duration,
    attempts: usize,
    source: PathBuf,
}

impl DnsConfig {
    /// A missing file means glibc's defaults, as for glibc.
    fn read(path: &Path) -> DnsConfig {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(error) => {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(%error, "cannot read {}; using resolver defaults", path.display());
                }
                Vec::new()
            }
        };
        DnsConfig::parse(&text, path)
    }

    fn parse(text: &[u8], source: &Path) -> DnsConfig {
        let (mut conf, errors) = resolv_conf::Config::parse_with_errors(text);
        for error in errors {
            tracing::warn!(%error, "{}: line ignored", source.display());
        }
        conf.glibc_normalize();
        let mut search: Vec<String> = conf.get_last_search_or_domain().cloned().collect();
        if search.is_empty() {
            search.extend(conf.get_system_domain());
        }
        let search = search
            .iter()
            .map(|d| d.trim_end_matches('.').to_owned())
            .filter(|d| !d.is_empty())
            .collect();
        let mut nameservers: Vec<IpAddr> = conf.nameservers.iter().map(|ip| ip.into()).collect();
        if nameservers.is_empty() {
            nameservers.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        DnsConfig {
            nameservers,
            search,
            // glibc's caps: RES_MAXNDOTS, RES_MAXRETRANS, RES_MAXRETRY.
            ndots: (conf.ndots as usize).min(15),
            timeout: Duration::from_secs(u64::from(conf.timeout.clamp(1, 30))),
            attempts: (conf.attempts as usize).clamp(1, 5),
            source: source.to_owned(),
        }
    }

    /// The names `res_search` asks for, in order.
    fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(absolute) = name.strip_suffix('.') {
            return vec![absolute.to_owned()];
        }
        let dots = name.matches('.').count();
        let mut out = Vec::new();
        if dots >= self.ndots {
            out.push(name.to_owned());
        }
        for domain in &self.search {
            let candidate = format!("{name}.{domain}");
            if !out.contains(&candidate) {
                out.push(candidate);
            }
        }
        if dots < self.ndots && !out.iter().any(|c| c == name) {
            out.push(name.to_owned());
        }
        out
    }
}

/// Why a name did not resolve. Its message names every name tried and where the settings
/// came from.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {name}: {reason} (tried {tried} with nameserver {servers} from {source_file}; not in {hosts})",
    tried = .tried.join(", "),
    servers = .servers.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "),
    source_file = .resolv_conf.display(),
    hosts = .hosts.display())]
pub struct LookupError {
    pub name: String,
    pub reason: String,
    pub tried: Vec<String>,
    pub servers: Vec<IpAddr>,
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
    /// The DNS servers failed or did not answer; asking again later may succeed. A name that
    /// does not exist is not transient.
    pub transient: bool,
}

/// The resolver every registry request goes through (reqwest's [`reqwest::dns::Resolve`]).
#[derive(Clone)]
pub struct SystemResolver {
    config: Arc<DnsConfig>,
    hosts: Arc<Hosts>,
    hosts_path: PathBuf,
    /// Built on first use, inside the runtime that uses it.
    dns: Arc<OnceLock<Result<TokioResolver, String>>>,
}

impl SystemResolver {
    /// Reads the files [`RESOLV_CONF_ENV`] and [`HOSTS_FILE_ENV`] name (or the system's).
    pub fn from_env() -> SystemResolver {
        let path = |var: &str, default: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from(default), PathBuf::from)
        };
        SystemResolver::from_files(
            &path(RESOLV_CONF_ENV, "/etc/resolv.conf"),
            &path(HOSTS_FILE_ENV, "/etc/hosts"),
        )
    }

    /// Reads these files; a missing one counts as empty.
    pub fn from_files(resolv_conf: &Path, hosts: &Path) -> SystemResolver {
        let mut table = Hosts::default();
        match std::fs::File::open(hosts) {
            Ok(file) => {
                if let Err(error) = table.read_hosts_conf(file) {
                    tracing::warn!(%error, "cannot read {}", hosts.display());
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(%error, "cannot read {}", hosts.display()),
        }
        SystemResolver {
            config: Arc::new(DnsConfig::read(resolv_conf)),
            hosts: Arc::new(table),
            hosts_path: hosts.to_owned(),
            dns: Arc::new(OnceLock::new()),
        }
    }

    /// The names DNS is asked for `name`, in order.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        self.config.candidates(name)
    }

    fn dns(&self) -> Result<&TokioResolver, String> {
        self.dns
            .get_or_init(|| {
                let servers = self
                    .config
                    .nameservers
                    .iter()
                    .map(|ip| NameServerConfig::udp_and_tcp(*ip))
                    .collect();
                let config = ResolverConfig::from_parts(None, Vec::new(), servers);
                let mut builder =
                    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
                let options = builder.options_mut();
                options.ndots = 0;
                options.timeout = self.config.timeout;
                options.attempts = self.config.attempts;
                // Both families, IPv4 first: registries in clusters and tests listen on IPv4.
                options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
                options.use_hosts_file = ResolveHosts::Never;
                builder.build().map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The addresses of `name`: from the hosts file, else over DNS.
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        let found = self.in_hosts_file(name);
        if !found.is_empty() {
            return Ok(found);
        }
        let fail = |reason: String, tried: Vec<String>, transient: bool| LookupError {
            name: name.to_owned(),
            reason,
            tried,
            servers: self.config.nameservers.clone(),
            resolv_conf: self.config.source.clone(),
            hosts: self.hosts_path.clone(),
            transient,
        };
        let dns = self.dns().map_err(|e| fail(e, Vec::new(), false))?;
        let mut tried = Vec::new();
        let mut server_failed = None;
        for candidate in self.config.candidates(name) {
            tried.push(candidate.clone());
            match dns.lookup_ip(format!("{candidate}.")).await {
                Ok(lookup) => {
                    let ips: Vec<IpAddr> = lookup.iter().collect();
                    if !ips.is_empty() {
                        tracing::debug!(%name, %candidate, ?ips, "resolved");
                        return Ok(ips);
                    }
                }
                Err(e) if e.is_no_records_found() => {}
                Err(NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail))) => {
                    server_failed = Some("the DNS server failed (SERVFAIL)".to_owned());
                }
                Err(e) => {
                    return Err(fail(
                        format!("the DNS server did not answer ({e})"),
                        tried,
                        true,
                    ));
                }
            }
        }
        Err(match server_failed {
            Some(reason) => fail(reason, tried, true),
            None => fail("no such host".into(), tried, false),
        })
    }

    fn in_hosts_file(&self, name: &str) -> Vec<IpAddr> {
        let Ok(name) = Name::from_str(&name.to_ascii_lowercase()) else {
            return Vec::new();
        };
        [RecordType::A, RecordType::AAAA]
            .into_iter()
            .filter_map(|t| {
                self.hosts
                    .lookup_static_host(&Query::query(name.clone(), t))
            })
            .flat_map(|lookup| {
                lookup
                    .answers()
                    .iter()
                    .filter_map(|r| r.data.ip_addr())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl reqwest::dns::Resolve for SystemResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            let ips = resolver.lookup(name.as_str()).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> DnsConfig {
        DnsConfig::parse(text.as_bytes(), Path::new("resolv.conf"))
    }

    #[test]
    fn candidates_follow_ndots_and_the_search_list_as_glibc_does() {
        let c = config(
            "nameserver 10.0.0.10\nsearch ns.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        );
        assert_eq!(
            c.candidates("image-registry.openshift-image-registry.svc"),
            [
                "image-registry.openshift-image-registry.svc.ns.svc.cluster.local",
                "image-registry.openshift-image-registry.svc.svc.cluster.local",
                "image-registry.openshift-image-registry.svc.cluster.local",
                "image-registry.openshift-image-registry.svc",
            ]
        );
        // Enough dots: the name itself first.
        assert_eq!(
            c.candidates("a.b.c.d.e.f")[..2],
            ["a.b.c.d.e.f", "a.b.c.d.e.f.ns.svc.cluster.local"]
        );
        // A trailing dot: only the name.
        assert_eq!(c.candidates("registry.example."), ["registry.example"]);
        // The default ndots:1 tries a dotted name first, a bare one last.
        let d = config("nameserver 10.0.0.10\nsearch corp.example\n");
        assert_eq!(d.candidates("quay.io"), ["quay.io", "quay.io.corp.example"]);
        assert_eq!(
            d.candidates("registry"),
            ["registry.corp.example", "registry"]
        );
    }

    #[test]
    fn resolv_conf_is_read_with_glibc_defaults_and_limits() {
        let c = config(
            "domain a.example\nsearch b.example c.example.\nnameserver 10.0.0.1\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nnameserver 10.0.0.4\noptions ndots:40 timeout:0 attempts:9\n",
        );
        assert_eq!(
            c.search,
            ["b.example", "c.example"],
            "the last of search/domain wins"
        );
        assert_eq!(c.nameservers.len(), 3);
        assert_eq!(
            (c.ndots, c.timeout, c.attempts),
            (15, Duration::from_secs(1), 5)
        );
        let empty = config("");
        assert_eq!(empty.nameservers, [IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        assert_eq!(empty.ndots, 1);
        assert_eq!(
            config("search x.example\ndomain y.example\n").search,
            ["y.example"]
        );
    }
}
