//! The resolver (`dns.rs`) against a real DNS server (`dnsmasq` on loopback, through
//! `wsr_transport::testing::TestDns`): the search list and `ndots` decide which names are asked
//! for and in what order, as glibc does; the hosts file comes first; a missing name fails at
//! once with a message naming what was tried; a server that does not answer is transient.

use std::net::{IpAddr, Ipv4Addr};
use wsr_transport::dns::SystemResolver;
use wsr_transport::testing::TestDns;

const HERE: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// An address no test registry listens on: a lookup that answers it picked the wrong name.
const DECOY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn ips(list: &[Ipv4Addr]) -> Vec<IpAddr> {
    list.iter().map(|ip| IpAddr::V4(*ip)).collect()
}

#[test]
fn names_resolve_through_the_search_list_and_ndots_as_glibc_does() {
    let dns = TestDns::start(&[
        ("registry.ns.svc.cluster.local", HERE),
        // Found only if the short name were asked for before the search list.
        ("registry.ns", DECOY),
        ("far.a.b.c.d.example", HERE),
        // Found only if the search list came before a name with enough dots.
        ("far.a.b.c.d.example.ns.svc.cluster.local", DECOY),
    ])
    .unwrap();
    let conf = dns
        .resolv_conf(
            "resolv.conf",
            "search ns.svc.cluster.local svc.cluster.local\noptions ndots:5 timeout:1 attempts:1",
        )
        .unwrap();
    let hosts = dns.dir().join("hosts");
    std::fs::write(&hosts, "127.0.0.9 pinned.ns pinned-alias\n").unwrap();
    let resolver = SystemResolver::from_files(&conf, &hosts);
    let rt = runtime();

    // 1 dot < ndots: each search domain, then the name itself.
    assert_eq!(
        rt.block_on(resolver.lookup("registry.ns")).unwrap(),
        ips(&[HERE])
    );
    assert_eq!(
        dns.queries(),
        [
            "registry.ns.ns.svc.cluster.local",
            "registry.ns.svc.cluster.local"
        ]
    );

    // 5 dots >= ndots: the name itself first.
    let before = dns.queries().len();
    assert_eq!(
        rt.block_on(resolver.lookup("far.a.b.c.d.example")).unwrap(),
        ips(&[HERE])
    );
    assert_eq!(dns.queries()[before..], ["far.a.b.c.d.example"]);

    // A trailing dot: the name alone.
    let before = dns.queries().len();
    let absolute = rt.block_on(resolver.lookup("registry.ns."));
    assert_eq!(absolute.unwrap(), ips(&[DECOY]));
    assert_eq!(dns.queries()[before..], ["registry.ns"]);

    // The hosts file first, names as given, no DNS query.
    let before = dns.queries().len();
    let pinned = Ipv4Addr::new(127, 0, 0, 9);
    assert_eq!(
        rt.block_on(resolver.lookup("pinned.ns")).unwrap(),
        ips(&[pinned])
    );
    assert_eq!(
        rt.block_on(resolver.lookup("PINNED-alias")).unwrap(),
        ips(&[pinned])
    );
    assert_eq!(dns.queries().len(), before);

    // A name nobody knows: every candidate asked once, a permanent error naming them.
    let error = rt.block_on(resolver.lookup("nosuch")).unwrap_err();
    assert!(!error.transient);
    assert_eq!(
        error.tried,
        [
            "nosuch.ns.svc.cluster.local",
            "nosuch.svc.cluster.local",
            "nosuch"
        ]
    );
    let message = error.to_string();
    for part in [
        "cannot resolve nosuch: no such host",
        "nosuch.ns.svc.cluster.local, nosuch.svc.cluster.local, nosuch",
        &dns.address().to_string(),
        conf.to_str().unwrap(),
    ] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
}

#[test]
fn a_dns_server_that_does_not_answer_is_a_transient_failure() {
    // A server that is up answers for the file's address; the resolver is pointed at another
    // loopback address where nothing listens.
    let dns = TestDns::start(&[("registry.ns.svc.cluster.local", HERE)]).unwrap();
    let silent = dns.dir().join("silent.conf");
    std::fs::write(
        &silent,
        "nameserver 127.53.0.254\nsearch ns.svc.cluster.local\noptions ndots:5 timeout:1 attempts:1\n",
    )
    .unwrap();
    let resolver = SystemResolver::from_files(&silent, &dns.dir().join("no-hosts"));
    let error = runtime().block_on(resolver.lookup("registry")).unwrap_err();
    assert!(error.transient, "{error}");
    assert!(error.to_string().contains("did not answer"), "{error}");
    // It stopped at the first name, as glibc stops on a timeout.
    assert_eq!(error.tried, ["registry.ns.svc.cluster.local"]);
}
