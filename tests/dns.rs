//! Integration tests of `dialbackd::dns` against the loopback test DNS server.
//! Requirement IDs refer to /work/shared/reference/standards.md (RFC 6120 §3.2,
//! XEP-0368).

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use common::dns_server::TestDns;
use common::{config, next_ip, publish, ComponentClient, Daemon, WAIT};
use dialbackd::dns::{CacheLimits, DnsError, Resolver, SrvRecord, Target};
use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn setup() -> (TestDns, Resolver) {
    let dns = TestDns::start(LOCAL);
    let r = Resolver::new(vec![dns.addr()], Duration::from_millis(500));
    (dns, r)
}

fn t(host: &str, port: u16, direct_tls: bool) -> Target {
    Target {
        host: host.into(),
        port,
        direct_tls,
    }
}

/// SRV-01: targets come back ordered by priority (weights 0 → list order kept).
#[test]
fn srv01_priority_order_through_resolve_s2s() {
    let (dns, r) = setup();
    dns.add_srv(
        "_xmpp-server._tcp.example.test",
        30,
        0,
        5271,
        "c.example.test",
    );
    dns.add_srv(
        "_xmpp-server._tcp.example.test",
        10,
        0,
        5269,
        "A.Example.Test",
    );
    dns.add_srv(
        "_xmpp-server._tcp.example.test",
        20,
        0,
        5270,
        "b.example.test",
    );
    let got = r.resolve_s2s("example.test").unwrap();
    assert_eq!(
        got,
        vec![
            t("a.example.test", 5269, false),
            t("b.example.test", 5270, false),
            t("c.example.test", 5271, false),
        ]
    );
}

/// SRV-01: srv() returns the raw records, lowercased, no trailing dot.
#[test]
fn srv01_raw_records() {
    let (dns, r) = setup();
    dns.add_srv(
        "_xmpp-server._tcp.example.test",
        5,
        7,
        5269,
        "XMPP.example.test.",
    );
    let got = r.srv("_XMPP-server._tcp.Example.TEST.").unwrap();
    assert_eq!(
        got,
        vec![SrvRecord {
            priority: 5,
            weight: 7,
            port: 5269,
            target: "xmpp.example.test".into()
        }]
    );
}

/// SRV-02: a single "." target → NoService (bounce remote-server-not-found).
#[test]
fn srv02_dot_target_is_no_service() {
    let (dns, r) = setup();
    dns.add_srv("_xmpp-server._tcp.example.test", 0, 0, 0, ".");
    let raw = r.srv("_xmpp-server._tcp.example.test").unwrap();
    assert_eq!(raw[0].target, ".");
    let err = r.resolve_s2s("example.test").unwrap_err();
    assert!(matches!(err, DnsError::NoService), "{err:?}");
    assert!(err.is_not_found());
}

/// SRV-03/SRV-04: NXDOMAIN for both SRV names → fallback domain:5269, plain.
#[test]
fn srv04_nxdomain_falls_back_to_domain_5269() {
    let (_dns, r) = setup();
    assert!(r.srv("_xmpp-server._tcp.nowhere.test").unwrap().is_empty());
    let got = r.resolve_s2s("Nowhere.Test.").unwrap();
    assert_eq!(got, vec![t("nowhere.test", 5269, false)]);
}

/// SRV-03/SRV-04: NODATA (name exists, no SRV) → same fallback.
#[test]
fn srv04_nodata_falls_back() {
    let (dns, r) = setup();
    dns.add_a("_xmpp-server._tcp.odd.test", Ipv4Addr::new(192, 0, 2, 1));
    assert!(r.srv("_xmpp-server._tcp.odd.test").unwrap().is_empty());
    assert_eq!(
        r.resolve_s2s("odd.test").unwrap(),
        vec![t("odd.test", 5269, false)]
    );
}

/// SRV-03: records present → no fallback target is added.
#[test]
fn srv03_records_present_no_fallback() {
    let (dns, r) = setup();
    dns.add_srv(
        "_xmpp-server._tcp.example.test",
        10,
        0,
        5299,
        "xmpp.example.test",
    );
    let got = r.resolve_s2s("example.test").unwrap();
    assert_eq!(got, vec![t("xmpp.example.test", 5299, false)]);
}

/// SRV-03: SERVFAIL on _xmpp-server → fallback (logged at warn).
#[test]
fn srv03_servfail_falls_back() {
    let (dns, r) = setup();
    dns.servfail("_xmpp-server._tcp.broken.test");
    let got = r.resolve_s2s("broken.test").unwrap();
    assert_eq!(got, vec![t("broken.test", 5269, false)]);
}

/// DTLS-01/DTLS-02: _xmpps-server records merge into one set with direct_tls.
#[test]
fn dtls01_xmpps_merged_with_direct_tls() {
    let (dns, r) = setup();
    dns.add_srv(
        "_xmpp-server._tcp.example.test",
        20,
        0,
        5269,
        "plain.example.test",
    );
    dns.add_srv(
        "_xmpps-server._tcp.example.test",
        10,
        0,
        5270,
        "tls.example.test",
    );
    dns.add_srv(
        "_xmpps-server._tcp.example.test",
        30,
        0,
        443,
        "tls2.example.test",
    );
    let got = r.resolve_s2s("example.test").unwrap();
    assert_eq!(
        got,
        vec![
            t("tls.example.test", 5270, true),
            t("plain.example.test", 5269, false),
            t("tls2.example.test", 443, true),
        ]
    );
}

/// DTLS-04: "." in _xmpps-server only means "no direct TLS".
#[test]
fn dtls04_xmpps_dot_ignored() {
    let (dns, r) = setup();
    dns.add_srv("_xmpps-server._tcp.example.test", 0, 0, 0, ".");
    dns.add_srv(
        "_xmpp-server._tcp.example.test",
        10,
        0,
        5269,
        "xmpp.example.test",
    );
    assert_eq!(
        r.resolve_s2s("example.test").unwrap(),
        vec![t("xmpp.example.test", 5269, false)]
    );
    // Without _xmpp-server records the plain fallback is used, never direct TLS.
    let (dns2, r2) = setup();
    dns2.add_srv("_xmpps-server._tcp.other.test", 0, 0, 0, ".");
    assert_eq!(
        r2.resolve_s2s("other.test").unwrap(),
        vec![t("other.test", 5269, false)]
    );
}

/// SRV-01: every address of a target, IPv4 first then IPv6.
#[test]
fn srv01_a_and_aaaa() {
    let (dns, r) = setup();
    dns.add_aaaa("host.example.test", Ipv6Addr::LOCALHOST);
    dns.add_a("host.example.test", Ipv4Addr::new(127, 0, 0, 2));
    dns.add_a("host.example.test", Ipv4Addr::new(127, 0, 0, 3));
    let got = r.ips("Host.Example.Test").unwrap();
    let want: Vec<IpAddr> = vec![
        Ipv4Addr::new(127, 0, 0, 2).into(),
        Ipv4Addr::new(127, 0, 0, 3).into(),
        Ipv6Addr::LOCALHOST.into(),
    ];
    assert_eq!(got, want);
    assert!(r.ips("missing.example.test").unwrap().is_empty());
}

/// IP literals are returned without any query.
#[test]
fn ip_literal_not_queried() {
    let (dns, r) = setup();
    assert_eq!(
        r.ips("192.0.2.5").unwrap(),
        vec![IpAddr::from([192, 0, 2, 5])]
    );
    assert_eq!(
        r.ips("[::1]").unwrap(),
        vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]
    );
    assert_eq!(dns.query_count(), 0);
}

/// Truncated UDP answer → the full answer over TCP.
#[test]
fn truncated_udp_retries_over_tcp() {
    let (dns, r) = setup();
    let name = "_xmpp-server._tcp.big.test";
    for i in 0..5u16 {
        dns.add_srv(name, 10 + i, 0, 5269 + i, &format!("s{i}.big.test"));
    }
    dns.truncate_udp(name);
    let got = r.srv(name).unwrap();
    assert_eq!(got.len(), 5);
    assert_eq!(dns.query_count(), 2, "one UDP query, one TCP query");
}

/// A nameserver that ignores our EDNS payload and sends a UDP answer larger than the read
/// buffer: the cut datagram is not used; the query is asked again over TCP and every record
/// arrives.
#[test]
fn oversized_udp_answer_is_asked_again_over_tcp() {
    let (dns, r) = setup();
    let name = "_xmpp-server._tcp.huge.test";
    for i in 0..200u16 {
        dns.add_srv(
            name,
            10,
            1,
            5269,
            &format!("target-number-{i:03}.huge.test"),
        );
    }
    let got = r.srv(name).unwrap();
    assert_eq!(got.len(), 200);
    assert_eq!(dns.query_count(), 2, "one UDP query, one TCP query");
}

/// SERVFAIL → ServerFailure from srv(), a transient (not "not found") error.
#[test]
fn servfail_is_server_failure() {
    let (dns, r) = setup();
    dns.servfail("_xmpp-server._tcp.broken.test");
    let err = r.srv("_xmpp-server._tcp.broken.test").unwrap_err();
    assert!(matches!(err, DnsError::ServerFailure(_)), "{err:?}");
    assert!(!err.is_not_found());
}

/// A nameserver that never answers → Timeout, within a generous bound.
#[test]
fn black_hole_times_out_within_bound() {
    let (dns, r) = setup();
    dns.drop_queries("_xmpp-server._tcp.slow.test");
    let start = Instant::now();
    let err = r.srv("_xmpp-server._tcp.slow.test").unwrap_err();
    let elapsed = start.elapsed();
    assert!(matches!(err, DnsError::Timeout), "{err:?}");
    assert!(!err.is_not_found());
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert_eq!(dns.query_count(), 2, "two attempts");
}

/// Invalid names are rejected before any query.
#[test]
fn bad_name() {
    let (dns, r) = setup();
    assert!(matches!(r.resolve_s2s("a..b"), Err(DnsError::BadName(_))));
    assert!(matches!(r.ips("bad name"), Err(DnsError::BadName(_))));
    assert_eq!(dns.query_count(), 0);
}

/// Answers with a wrong id, wrong question, or garbage are ignored; the
/// matching answer that follows is used (spoofing resistance, SEC-15: random ids and source
/// ports, answers validated against the question).
#[test]
fn wrong_id_answers_are_ignored() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = sock.local_addr().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let responder = thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let (n, peer) = sock.recv_from(&mut buf).unwrap();
        let q = Message::from_vec(&buf[..n]).unwrap();
        let query = q.queries[0].clone();
        let reply = |id: u16, qname: &Name, ip: [u8; 4]| {
            let mut m = Message::response(id, OpCode::Query);
            m.metadata.message_type = MessageType::Response;
            let mut qq = query.clone();
            qq.set_name(qname.clone());
            m.add_query(qq);
            m.add_answer(Record::from_rdata(
                qname.clone(),
                60,
                RData::A(A(Ipv4Addr::from(ip))),
            ));
            m.to_vec().unwrap()
        };
        let id = q.metadata.id;
        let other = Name::from_ascii("evil.test.").unwrap();
        sock.send_to(b"\xff\x00garbage", peer).unwrap();
        sock.send_to(&[], peer).unwrap();
        sock.send_to(
            &reply(id.wrapping_add(1), query.name(), [10, 0, 0, 1]),
            peer,
        )
        .unwrap();
        sock.send_to(&reply(id, &other, [10, 0, 0, 2]), peer)
            .unwrap();
        sock.send_to(&reply(id, query.name(), [127, 0, 0, 9]), peer)
            .unwrap();
        // The AAAA query: NODATA.
        let (n, peer) = sock.recv_from(&mut buf).unwrap();
        let q = Message::from_vec(&buf[..n]).unwrap();
        let mut m = Message::response(q.metadata.id, OpCode::Query);
        m.add_query(q.queries[0].clone());
        sock.send_to(&m.to_vec().unwrap(), peer).unwrap();
    });
    let r = Resolver::new(vec![addr], Duration::from_secs(2));
    let got = r.ips("host.example.test");
    responder.join().unwrap();
    assert_eq!(got.unwrap(), vec![IpAddr::from([127, 0, 0, 9])]);
}

/// A second nameserver is tried when the first one is silent.
#[test]
fn second_nameserver_used() {
    let dead = UdpSocket::bind("127.0.0.1:0").unwrap(); // never read
    let dns = TestDns::start(LOCAL);
    dns.add_a("host.example.test", Ipv4Addr::new(127, 0, 0, 7));
    let r = Resolver::new(
        vec![dead.local_addr().unwrap(), dns.addr()],
        Duration::from_millis(300),
    );
    assert_eq!(
        r.ips("host.example.test").unwrap(),
        vec![IpAddr::from([127, 0, 0, 7])]
    );
}

/// SRV-02 + DTLS-01: "." as the only _xmpp-server record but usable
/// _xmpps-server records: the direct-TLS targets are used (the domain offers
/// XMPP, just not over plain TCP).
#[test]
fn srv02_dot_with_xmpps_records_uses_direct_tls() {
    let (dns, r) = setup();
    dns.add_srv("_xmpp-server._tcp.example.test", 0, 0, 0, ".");
    dns.add_srv(
        "_xmpps-server._tcp.example.test",
        5,
        0,
        5223,
        "tls.example.test",
    );
    assert_eq!(
        r.resolve_s2s("example.test").unwrap(),
        vec![t("tls.example.test", 5223, true)]
    );
}

// --- The answer cache ([dns] cache_*) ---------------------------------------------------------

fn cached(dns: &TestDns, limits: CacheLimits) -> Resolver {
    Resolver::new(vec![dns.addr()], Duration::from_millis(500)).with_cache(limits)
}

/// The second and later lookups of a name are answered from the cache: SRV (both services),
/// A, AAAA, NXDOMAIN and NODATA each reach the server once, and a clone of the resolver (the
/// router hands clones to every stream) shares the cache. A negative answer is kept for the
/// SOA's TTL (RFC 2308 §5): a name published meanwhile is not seen before it expires.
#[test]
fn cache_second_lookup_does_not_reach_the_server() {
    let dns = TestDns::start(LOCAL);
    dns.set_negative_ttl(600);
    dns.add_srv(
        "_xmpp-server._tcp.example.test",
        10,
        0,
        5270,
        "xmpp.example.test",
    );
    dns.add_a("xmpp.example.test", Ipv4Addr::new(127, 0, 0, 2)); // and no AAAA: NODATA
    let r = cached(&dns, CacheLimits::default());
    let stream = r.clone();
    for lookup in [&r, &stream, &r] {
        assert_eq!(
            lookup.resolve_s2s("example.test").unwrap(),
            vec![t("xmpp.example.test", 5270, false)]
        );
        assert_eq!(
            lookup.ips("xmpp.example.test").unwrap(),
            vec![IpAddr::from([127, 0, 0, 2])]
        );
        assert!(lookup.ips("nx.example.test").unwrap().is_empty());
    }
    for (name, rtype) in [
        ("_xmpp-server._tcp.example.test", RecordType::SRV),
        ("_xmpps-server._tcp.example.test", RecordType::SRV),
        ("xmpp.example.test", RecordType::A),
        ("xmpp.example.test", RecordType::AAAA),
        ("nx.example.test", RecordType::A),
        ("nx.example.test", RecordType::AAAA),
    ] {
        assert_eq!(dns.queries_for(name, rtype), 1, "{name} {rtype}");
    }
    assert_eq!(dns.query_count(), 6);
    let st = r.cache_stats();
    assert_eq!((st.queries, st.hits, st.entries), (6, 12, 6), "{st:?}");

    dns.add_a("nx.example.test", Ipv4Addr::new(127, 0, 0, 3));
    assert!(
        r.ips("nx.example.test").unwrap().is_empty(),
        "negative answer kept"
    );
    assert_eq!(dns.query_count(), 6);
}

/// With no floor, a TTL of 0 and a negative answer without an SOA record keep nothing: a
/// name published or changed between two lookups is seen at once.
#[test]
fn cache_keeps_nothing_for_ttl_zero_without_a_floor() {
    let dns = TestDns::start(LOCAL);
    dns.set_ttl(0);
    let r = cached(
        &dns,
        CacheLimits {
            min_ttl: Duration::ZERO,
            ..CacheLimits::default()
        },
    );
    assert!(r.ips("late.test").unwrap().is_empty());
    dns.add_a("late.test", Ipv4Addr::new(127, 0, 0, 4));
    assert_eq!(
        r.ips("late.test").unwrap(),
        vec![IpAddr::from([127, 0, 0, 4])]
    );
    dns.add_a("late.test", Ipv4Addr::new(127, 0, 0, 5));
    assert_eq!(r.ips("late.test").unwrap().len(), 2);
    assert_eq!(dns.queries_for("late.test", RecordType::A), 3);
    assert_eq!(r.cache_stats().entries, 0);
}

/// A failure is never kept: SERVFAIL reaches the server again on the next lookup.
#[test]
fn cache_does_not_keep_failures() {
    let dns = TestDns::start(LOCAL);
    dns.servfail("_xmpp-server._tcp.broken.test");
    let r = cached(&dns, CacheLimits::default());
    for _ in 0..2 {
        assert!(matches!(
            r.srv("_xmpp-server._tcp.broken.test"),
            Err(DnsError::ServerFailure(_))
        ));
    }
    // Two attempts per lookup (one nameserver), for each of the two lookups.
    assert_eq!(
        dns.queries_for("_xmpp-server._tcp.broken.test", RecordType::SRV),
        4
    );
}

/// The daemon's cache is shared by every stream: two outbound streams to b.test (one per
/// domain pair) make one SRV query and one A query for it.
#[test]
fn daemon_streams_share_one_cache() {
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let comps = [("c1.a.test", "s1"), ("c2.a.test", "s2")];
    let a = Daemon::start("a", next_ip(), &config(&["a.test"], &comps, dns.addr(), ""));
    let b = Daemon::start(
        "b",
        next_ip(),
        &config(&["b.test"], &[("b.test", "sb")], dns.addr(), ""),
    );
    for (name, addr) in [
        ("c1.a.test", a.s2s()),
        ("c2.a.test", a.s2s()),
        ("b.test", b.s2s()),
    ] {
        publish(&dns, name, addr);
    }
    let cb = ComponentClient::connect(b.component_addr(), "b.test", "sb");
    for (domain, secret) in comps {
        let mut c = ComponentClient::connect(a.component_addr(), domain, secret);
        c.send(&format!(
            "<message from='x@{domain}' to='y@b.test'><body>hi</body></message>"
        ));
        let m = cb
            .recv(WAIT)
            .unwrap_or_else(|| panic!("{}\n{}", a.log_text(), b.log_text()));
        assert_eq!(m.attr("from"), Some(format!("x@{domain}").as_str()));
    }
    assert_eq!(
        b.log_count("→b.test verified by dialback"),
        2,
        "{}",
        b.log_text()
    );
    assert_eq!(
        dns.queries_for("_xmpp-server._tcp.b.test", RecordType::SRV),
        1
    );
    assert_eq!(dns.queries_for("host.b.test", RecordType::A), 1);
}
