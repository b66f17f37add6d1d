//! Scale-out without a cluster: two dialbackd instances serve a.test behind its SRV records and
//! share `dialback_secret`. XEP-0185 keys are stateless (a key is an HMAC of the secret, the two
//! domains and the stream id: XEP-0185 §3, DB-04), so the instance a peer's verify connection
//! lands on answers the `<db:verify/>` for a key another instance minted (XEP-0220 §2.2.2,
//! DB-23); an instance with another secret answers `invalid` and the peer refuses the pair
//! (DB-08).

mod common;

use common::dns_server::TestDns;
use common::*;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};

const SHARED_SECRET: &str = "shared-by-every-instance";
const VERIFICATIONS: &str = "dialbackd_dialback_verifications_total";

/// The body of `GET /metrics` from a status listener.
fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).expect("connect to the status listener");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("a whole response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    body.to_string()
}

/// The value of the sample `series` (name and labels exactly as rendered); 0 when absent.
fn sample(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// How many dialback verdicts of `role` and `outcome` the daemon behind `status` gave or got.
fn verdicts(status: SocketAddr, role: &str, outcome: &str) -> u64 {
    sample(
        &metrics(status),
        &format!("{VERIFICATIONS}{{role=\"{role}\",outcome=\"{outcome}\"}}"),
    )
}

/// One a.test instance with dialback secret `secret`, a component for a.test itself, and its
/// status listener; returns it and the listener's address.
fn a_instance(name: &str, secret: &str, dns: SocketAddr) -> (Daemon, SocketAddr) {
    let ip = next_ip();
    let status = SocketAddr::from((ip, free_port(ip)));
    let cfg = format!(
        "dialback_secret = \"{secret}\"\n{}",
        config(
            &["a.test"],
            &[("a.test", "sa")],
            dns,
            &format!("[status]\nlisten = \"{status}\"\n"),
        )
    );
    (Daemon::start(name, ip, &cfg), status)
}

/// a.test served by two instances (`a1` with `SHARED_SECRET`, `a2` with `a2_secret`), published
/// as a weighted SRV set whose best priority is a2's (so a peer's callbacks land there), and
/// b.test as a third daemon whose component serves b.test.
struct ScaleOut {
    dns: TestDns,
    a1: (Daemon, SocketAddr),
    a2: (Daemon, SocketAddr),
    b: Daemon,
}

fn scale_out(a2_secret: &str) -> ScaleOut {
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let a1 = a_instance("a1", SHARED_SECRET, dns.addr());
    let a2 = a_instance("a2", a2_secret, dns.addr());
    // b.test without XEP-0288: its replies to a.test then take a connection of its own, to
    // the instance the SRV set picks (with bidi they would come back over a1's stream, to a1).
    let b = Daemon::start(
        "b",
        next_ip(),
        &config(
            &["b.test"],
            &[("b.test", "sb")],
            dns.addr(),
            "[s2s]\nbidi = false\n",
        ),
    );
    // RFC 2782: the lowest priority is tried first; weights share out a priority's traffic.
    let srv = "_xmpp-server._tcp.a.test";
    for (prio, weight, host, addr) in [
        (10, 60, "a2.a.test", a2.0.s2s()),
        (20, 40, "a1.a.test", a1.0.s2s()),
    ] {
        dns.add_srv(srv, prio, weight, addr.port(), host);
        if let IpAddr::V4(ip) = addr.ip() {
            dns.add_a(host, ip);
        }
    }
    publish(&dns, "b.test", b.s2s());
    ScaleOut { dns, a1, a2, b }
}

/// XEP-0220 §2.2.2 (DB-23) with XEP-0185 keys: a1 mints the db:result for a.test→b.test; b.test
/// checks it with a.test's Authoritative Server found by SRV, which is a2; a2, sharing the
/// secret, answers valid, and the stanza from a1's component reaches b.test. Traffic from b.test
/// back to a.test lands on a2 and reaches a2's component.
#[test]
fn a_key_minted_by_one_instance_is_verified_by_another() {
    let s = scale_out(SHARED_SECRET);
    let ((a1, st1), (a2, st2)) = (&s.a1, &s.a2);
    let mut c1 = ComponentClient::connect(a1.component_addr(), "a.test", "sa");
    let c2 = ComponentClient::connect(a2.component_addr(), "a.test", "sa");
    let mut cb = ComponentClient::connect(s.b.component_addr(), "b.test", "sb");

    c1.send("<message from='alice@a.test' to='bob@b.test' id='m1'><body>from a1</body></message>");
    let m = cb.recv(WAIT).expect("b.test got a1's message");
    assert_eq!(
        (m.attr("from"), m.attr("id")),
        (Some("alice@a.test"), Some("m1"))
    );
    // a1 originated the db:result (and was told valid); a2 answered the db:verify.
    assert_eq!(verdicts(*st1, "initiating", "valid"), 1);
    assert_eq!(
        verdicts(*st1, "authoritative", "valid"),
        0,
        "a1 was not asked"
    );
    assert_eq!(
        verdicts(*st2, "authoritative", "valid"),
        1,
        "{}",
        a2.log_text()
    );
    assert_eq!(verdicts(*st2, "initiating", "valid"), 0, "a2 sent nothing");

    cb.send("<message from='bob@b.test' to='alice@a.test' id='m2'><body>to a</body></message>");
    let r = c2.recv(WAIT).expect("a2's component got b.test's reply");
    assert_eq!(
        (r.attr("from"), r.attr("id")),
        (Some("bob@b.test"), Some("m2"))
    );
    assert_eq!(
        verdicts(*st2, "receiving", "valid"),
        1,
        "a2 took b.test's stream"
    );
    assert!(c1.recv(std::time::Duration::ZERO).is_none());
    drop(s.dns);
}

/// DB-08, DB-23: an instance whose secret differs does not recognise the key another minted:
/// it answers invalid, b.test refuses the pair, and the component's stanza bounces with
/// internal-server-error; nothing reaches b.test.
#[test]
fn an_instance_with_another_secret_answers_invalid() {
    let s = scale_out("a-different-secret");
    let ((a1, st1), (a2, st2)) = (&s.a1, &s.a2);
    let mut c1 = ComponentClient::connect(a1.component_addr(), "a.test", "sa");
    let cb = ComponentClient::connect(s.b.component_addr(), "b.test", "sb");

    c1.send("<message from='alice@a.test' to='bob@b.test' id='m1'><body>x</body></message>");
    let bounce = c1.recv(WAIT).expect("the bounce");
    assert_eq!(
        (bounce.attr("type"), bounce.attr("id")),
        (Some("error"), Some("m1")),
        "{bounce:?}"
    );
    assert_eq!(
        error_condition(&bounce).as_deref(),
        Some("internal-server-error")
    );
    assert_eq!(
        verdicts(*st2, "authoritative", "invalid"),
        1,
        "{}",
        a2.log_text()
    );
    assert_eq!(verdicts(*st1, "initiating", "invalid"), 1);
    assert!(cb.recv(std::time::Duration::ZERO).is_none());
    drop(s.dns);
}
