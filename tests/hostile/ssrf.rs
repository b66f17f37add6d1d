//! Dialling on a stranger's say-so (issue 8, item 3). Anyone can make the daemon connect where
//! they like: a `<db:result/>` claiming a domain sends a verify connection wherever that domain's
//! SRV and A/AAAA records point. The private-network guard keeps those connections off loopback,
//! private and link-local networks and IP-literal domains unless `[dns] allow_networks` allows
//! them, and the claimant gets one answer, `remote-connection-failed` (XEP-0220 §2.5), whatever
//! happened on the way, so that it cannot use us to tell open, closed and filtered ports apart.
//!
//! Every address here is on 127.0.0.0/8: a "private" address (10.0.0.5) only appears in DNS
//! answers, and the tests assert the daemon never tried to connect to it (the guard runs before
//! `connect`). A listener proves "no connection" by its kernel accept queue: connections the
//! daemon made are queued there whether or not anyone accepted them, and the daemon answers the
//! claimant only after it gave up dialling, so looking after the answer needs no waiting.

use crate::common::dns_server::TestDns;
use crate::common::*;
use dialbackd::xml::{Element, DIALBACK_NS};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::mpsc;
use std::thread;

/// The dialback secret of the real a.test, so the test can mint its keys.
const SECRET: &str = "ssrf-known-secret";

/// A listener that only counts the connections made to it (it never accepts until asked).
struct Recorder {
    listener: TcpListener,
}

impl Recorder {
    fn bind(addr: SocketAddr) -> Option<Recorder> {
        TcpListener::bind(addr)
            .ok()
            .map(|listener| Recorder { listener })
    }

    fn on(ip: Ipv4Addr) -> Recorder {
        Recorder::bind(SocketAddr::from((ip, 0))).expect("bind a recorder")
    }

    fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    /// Connections made to it so far (drained from the accept queue; bounded).
    fn connections(&self) -> usize {
        self.listener.set_nonblocking(true).unwrap();
        (0..1000)
            .take_while(|_| self.listener.accept().is_ok())
            .count()
    }
}

/// b.test with `allow_networks = allow`, a static route to a.test when `route`, and its config
/// text passed through `tweak`; a.test is a real daemon (the Authoritative Server of the
/// legitimate peer). Both are published in DNS.
fn net(allow: &[&str], route: bool, tweak: impl Fn(String) -> String) -> AandB {
    AandB::start(SECRET, |dns, a| {
        let extra = if route {
            format!("[routes]\n\"a.test\" = \"{a}\"\n")
        } else {
            String::new()
        };
        tweak(config_allowing(
            &["b.test"],
            &[("b.test", "sb")],
            dns,
            allow,
            &extra,
        ))
    })
}

/// Open a stream to `d` as `from` and claim it with a made-up key; the daemon's answer.
fn claim(d: &Daemon, from: &str) -> Element {
    let (mut c, _) = open_s2s(d, from, "b.test");
    c.send(&format!(
        "<db:result from='{from}' to='b.test'>{}</db:result>",
        "ab".repeat(32)
    ));
    c.element_where(WAIT, |e| e.name == "result" && e.ns == DIALBACK_NS)
        .unwrap_or_else(|| panic!("no dialback answer for {from}\n{}", d.log_text()))
}

/// The condition of a `type='error'` answer, and its `<error/>` as bytes (what the claimant
/// can compare).
fn dialback_error(r: &Element) -> (String, Vec<u8>) {
    assert_eq!(r.attr("type"), Some("error"), "{r:?}");
    let e = error_child(r).unwrap_or_else(|| panic!("DB-27: no <error/> in {r:?}"));
    (error_condition(r).unwrap_or_default(), e.to_bytes())
}

fn assert_connection_failed(r: &Element) {
    assert_eq!(dialback_error(r).0, "remote-connection-failed", "{r:?}");
}

/// Make `name` resolve through an SRV record to `host` (port `port`) with an A and/or AAAA.
fn publish_at(
    dns: &TestDns,
    name: &str,
    host: &str,
    port: u16,
    a: Option<Ipv4Addr>,
    aaaa: Option<&str>,
) {
    dns.add_srv(&format!("_xmpp-server._tcp.{name}"), 10, 0, port, host);
    if let Some(ip) = a {
        dns.add_a(host, ip);
    }
    if let Some(ip) = aaaa {
        dns.add_aaaa(host, ip.parse().unwrap());
    }
}

fn ip4(addr: SocketAddr) -> Ipv4Addr {
    match addr.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => unreachable!("test servers are on IPv4 loopback"),
    }
}

/// SEC-11 (dialback as SSRF), ERR-04. The measured attack: a claimed domain whose SRV record
/// points at a loopback service. No
/// connection reaches it (nor its IPv4-mapped IPv6 form, nor an RFC 1918 address); the claimant
/// learns only `remote-connection-failed`; the one log line names the domain and the addresses.
#[test]
fn srv_pointing_at_loopback_or_a_private_network_is_not_dialled() {
    let mut n = net(&[], true, |c| c);
    let rec = Recorder::on(next_ip());
    let port = rec.addr().port();
    publish_at(
        &n.dns,
        "internal.test",
        "ssh.internal.test",
        port,
        Some(ip4(rec.addr())),
        None,
    );
    let r = claim(&n.b, "internal.test");
    assert_connection_failed(&r);
    assert_eq!(
        rec.connections(),
        0,
        "the daemon connected to the loopback target"
    );
    let line = n.b.wait_log("verification failed");
    assert!(
        line.contains("internal.test")
            && line.contains(&format!(
                "{} (ssh.internal.test): not dialled, loopback",
                rec.addr()
            )),
        "{line}"
    );
    assert!(n.b.log_text().contains(&format!(
        "not dialling {} (ssh.internal.test) for internal.test: loopback",
        rec.addr()
    )));

    // The same listener as an IPv4-mapped IPv6 address (which would reach it on Linux).
    let mapped = format!("::ffff:{}", rec.addr().ip());
    publish_at(
        &n.dns,
        "mapped.test",
        "v6.mapped.test",
        port,
        None,
        Some(&mapped),
    );
    assert_connection_failed(&claim(&n.b, "mapped.test"));
    assert_eq!(rec.connections(), 0, "the daemon connected through ::ffff:");
    assert!(n
        .b
        .log_text()
        .contains("loopback (IPv4-mapped IPv6 address)"));

    // RFC 1918 (only ever in a DNS answer: refused before any packet is sent), next to the
    // loopback recorder on a second SRV record: both skipped, nothing left, one answer.
    publish_at(
        &n.dns,
        "private.test",
        "db.private.test",
        5269,
        Some(Ipv4Addr::new(10, 0, 0, 5)),
        None,
    );
    n.dns.add_srv(
        "_xmpp-server._tcp.private.test",
        20,
        0,
        port,
        "ssh.internal.test",
    );
    assert_connection_failed(&claim(&n.b, "private.test"));
    assert_eq!(rec.connections(), 0);
    let log = n.b.log_text();
    assert!(
        log.contains("not dialling 10.0.0.5:5269 (db.private.test) for private.test: private network (RFC 1918)"),
        "{log}"
    );
    assert!(!log.contains("connecting to 10.0.0.5"), "{log}");

    dialback_as_a(&n.b, SECRET);
    drop(n.a);
}

/// SEC-11: IP-literal domains, and numeric names a resolver might read as IPv4, are never dialled nor
/// even looked up; the claimant gets the same `remote-connection-failed`.
#[test]
fn ip_literal_domains_are_not_dialled() {
    let n = net(&[], true, |c| c);
    // A listener where `from='IP'` would go (port 5269, if this address has it free).
    let lit_ip = next_ip();
    let rec = Recorder::bind(SocketAddr::from((lit_ip, 5269)));
    let literal = lit_ip.to_string();
    let queries = n.dns.query_count();
    for from in [
        literal.as_str(),
        "10.0.0.5",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "127.1",
        "2130706433",
    ] {
        let r = claim(&n.b, from);
        assert_connection_failed(&r);
    }
    if let Some(rec) = &rec {
        assert_eq!(
            rec.connections(),
            0,
            "the daemon dialled an IP-literal domain"
        );
    }
    assert_eq!(
        n.dns.query_count(),
        queries,
        "IP-literal and numeric domains must not be looked up"
    );
    let log = n.b.log_text();
    for needle in [
        format!("not dialling {literal}: IP-literal domain"),
        "not dialling 10.0.0.5: IP-literal domain".to_string(),
        "not dialling [::1]: IP-literal domain".to_string(),
        "not dialling 127.1: numeric name".to_string(),
        "not dialling 2130706433: numeric name".to_string(),
    ] {
        assert!(log.contains(&needle), "no {needle:?} in\n{log}");
    }
    dialback_as_a(&n.b, SECRET);
}

/// SEC-11, ERR-04: a refused port, a listener that never answers, one that speaks another protocol, and a
/// domain with no DNS records give the claimant byte-identical answers (loopback allowed here,
/// so each is really tried: the silent listener proves a connection was made).
#[test]
fn refused_silent_and_foreign_listeners_give_the_same_answer() {
    let n = net(&["127.0.0.0/8"], true, |c| {
        c.replace("dialback = 15", "dialback = 2")
    });
    let host = next_ip();
    // Refused: a port that was just bound and released on an address nobody else uses.
    let closed = Recorder::on(host).addr().port();
    publish_at(
        &n.dns,
        "refused.test",
        "x.refused.test",
        closed,
        Some(host),
        None,
    );
    // Silent: the kernel completes the handshake, nobody ever reads or writes.
    let silent = Recorder::on(host);
    publish_at(
        &n.dns,
        "silent.test",
        "x.silent.test",
        silent.addr().port(),
        Some(host),
        None,
    );
    // Foreign: an SSH-like banner, then nothing.
    let foreign = TcpListener::bind((host, 0)).unwrap();
    let foreign_port = foreign.local_addr().unwrap().port();
    let banner = thread::spawn(move || {
        // One accept, bounded: a blocking accept on a thread of its own, waited for until
        // `WAIT` (left blocked if nobody ever connects, like `FakeServer::accept`).
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(foreign.accept());
        });
        let Ok(Ok((mut s, _))) = rx.recv_timeout(WAIT) else {
            return Vec::new();
        };
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n");
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 || got.len() > 65536 {
                break;
            }
            got.extend_from_slice(&buf[..k]);
        }
        got
    });
    publish_at(
        &n.dns,
        "foreign.test",
        "x.foreign.test",
        foreign_port,
        Some(host),
        None,
    );

    let answers: Vec<(String, Vec<u8>)> = [
        "refused.test",
        "silent.test",
        "foreign.test",
        "nxdomain.test",
    ]
    .iter()
    .map(|from| dialback_error(&claim(&n.b, from)))
    .collect();
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.0, "remote-connection-failed", "answer {i}");
        assert_eq!(
            a.1, answers[0].1,
            "answer {i} differs from the refused port's"
        );
    }
    assert_eq!(
        silent.connections(),
        1,
        "the silent listener was really dialled"
    );
    let sent = banner.join().unwrap();
    assert!(
        String::from_utf8_lossy(&sent).contains("<stream:stream"),
        "the foreign listener was really dialled and got our header"
    );
    // The log keeps the difference for the operator, naming what was dialled.
    let log = n.b.log_text();
    assert!(
        log.contains(&format!("{host}:{closed} (x.refused.test)")),
        "{log}"
    );
    assert!(log.contains(&format!("[{host}:{foreign_port}]")), "{log}");
    dialback_as_a(&n.b, SECRET);
}

/// SEC-11: allow_networks lifts the refusal for exactly the networks listed: the real a.test, found
/// through DNS on loopback, authenticates (no static route here), while another loopback
/// address stays refused. The connection lines name the address and the SRV target.
#[test]
fn allow_networks_lets_dialback_reach_the_listed_networks_only() {
    let n = AandB::start(SECRET, |dns, a| {
        let allow = format!("{}/32", a.ip());
        config_allowing(&["b.test"], &[], dns, &[&allow], "")
    });
    dialback_as_a(&n.b, SECRET);
    // The line is written before the answer, but read from the daemon's stderr by another
    // thread: wait for it (bounded).
    let line = format!("connected to {} (host.a.test)", n.a.s2s());
    n.b.wait_until("the verify connection's line", |log| {
        log.iter().any(|l| l.contains(&line))
    });
    let rec = Recorder::on(next_ip());
    publish(&n.dns, "other.test", rec.addr());
    assert_connection_failed(&claim(&n.b, "other.test"));
    assert_eq!(rec.connections(), 0);
    dialback_as_a(&n.b, SECRET);
}

/// SRV-05 and the guard: a static route to loopback is the operator's choice and works without
/// allow_networks, for an outbound pair (a ping from our component to a.test, answered) as for
/// the verify connections; the outbound connection's line names the address.
#[test]
fn static_route_to_loopback_needs_no_allow_networks() {
    let mut n = net(&[], true, |c| c);
    let mut cb = ComponentClient::connect(n.b.component_addr(), "b.test", "sb");
    cb.send(
        "<iq type='get' id='p1' from='u@b.test/r' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
    let r = cb.recv(WAIT).expect("a pong through the static route");
    assert_eq!(
        (r.attr("type"), r.attr("id"), r.attr("from")),
        (Some("result"), Some("p1"), Some("a.test")),
        "{r:?}"
    );
    let line = n.b.wait_log(&format!("connected to {}", n.a.s2s()));
    assert!(line.contains("s2s-out") && line.contains("INFO"), "{line}");
    assert!(
        n.b.log_text()
            .contains(&format!("[{}]: b.test→a.test authenticated", n.a.s2s())),
        "later lines of the stream carry the address\n{}",
        n.b.log_text()
    );
    dialback_as_a(&n.b, SECRET);
}
