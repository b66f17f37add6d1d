//! Target multiplexing outbound (XEP-0220 §2.6.2, DB-29): a.test's daemon sends to b.test and
//! c.test, both hosted by one daemon at one address (their SRV records name the same host and
//! port) that advertises dialback errors; one TCP connection carries both pairs.

mod common;

use common::dns_server::TestDns;
use common::*;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};

/// How many outbound pair streams of `d` connected.
fn dialled(d: &Daemon) -> usize {
    d.log_text()
        .lines()
        .filter(|l| l.contains("s2s-out") && l.contains(": connected to"))
        .count()
}

/// Where a test daemon on `ip` has its status listener (a port free on `ip` now; the
/// address is this test's own).
fn status_addr(ip: Ipv4Addr) -> SocketAddr {
    let port = TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    SocketAddr::from((ip, port))
}

/// The domains column of each outbound pair stream in `d`'s `GET /status` (see
/// `dialbackd::status::status_text`).
fn outbound_rows(d: &Daemon) -> Vec<String> {
    let addr = status_addr_of(d);
    let mut s = TcpStream::connect_timeout(&addr, WAIT).expect("connect to the status listener");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let req = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("a whole response");
    let body = raw.split_once("\r\n\r\n").expect("an HTTP response").1;
    body.lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|f| f.len() == dialbackd::status::COLUMNS.len() && f[1] == "s2s_out")
        .map(|f| f[8].to_string())
        .collect()
}

/// The status listener `d`'s configuration names.
fn status_addr_of(d: &Daemon) -> SocketAddr {
    let cfg = std::fs::read_to_string(d.dir.join("dialbackd.toml")).unwrap();
    let line = cfg
        .lines()
        .find(|l| l.starts_with("listen = "))
        .expect("a status listener");
    line.trim_start_matches("listen = ")
        .trim_matches('"')
        .parse()
        .unwrap()
}

/// a.test's daemon with a component for a.test, and `bc` hosting `hosted` (each with its
/// component) at the address b.test and c.test both resolve to.
/// a's status listener is at [`status_addr`] of its address.
fn sender_and_receiver(hosted: &[(&str, &str)]) -> (TestDns, Daemon, Daemon) {
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let ip = next_ip();
    let status = format!("[status]\nlisten = \"{}\"\n", status_addr(ip));
    let a = Daemon::start(
        "a",
        ip,
        &config(&["a.test"], &[("a.test", "sa")], dns.addr(), &status),
    );
    let domains: Vec<&str> = hosted.iter().map(|(d, _)| *d).collect();
    let bc = Daemon::start("bc", next_ip(), &config(&domains, hosted, dns.addr(), ""));
    publish(&dns, "a.test", a.s2s());
    publish(&dns, "b.test", bc.s2s());
    publish(&dns, "c.test", bc.s2s());
    (dns, a, bc)
}

/// DB-29, DB-02: the second target's pair joins the established stream to the same address
/// instead of opening a connection: its own db:result on that stream is verified (DB-19 on
/// the receiving side: a hosted target), messages reach both domains' components in order,
/// and exactly one connection to the receiving daemon exists.
#[test]
fn db29_two_targets_at_one_address_share_one_connection() {
    let (dns, a, bc) = sender_and_receiver(&[("b.test", "sb"), ("c.test", "sc")]);
    let mut ca = ComponentClient::connect(a.component_addr(), "a.test", "sa");
    let cb = ComponentClient::connect(bc.component_addr(), "b.test", "sb");
    let mut cc = ComponentClient::connect(bc.component_addr(), "c.test", "sc");

    ca.send("<message from='x@a.test' to='u@b.test' id='b1'><body>b</body></message>");
    let m = cb.recv(WAIT).expect("b.test's component got its message");
    assert_eq!(m.attr("id"), Some("b1"));
    for n in 1..=5 {
        ca.send(&format!(
            "<message from='x@a.test' to='u@c.test' id='c{n}'><body>c</body></message>"
        ));
    }
    for n in 1..=5 {
        let m = cc.recv(WAIT).expect("c.test's component got its message");
        assert_eq!(m.attr("id"), Some(format!("c{n}").as_str()), "in order");
    }
    ca.send("<message from='x@a.test' to='u@b.test' id='b2'><body>b</body></message>");
    assert_eq!(cb.recv(WAIT).expect("b2").attr("id"), Some("b2"));
    // BIDI-03 with DB-29: the receiver routes c.test's reply back over the same stream (bidi is
    // on by default), and a takes it there for the joined pair, as for the stream's own pair.
    cc.send("<message from='u@c.test' to='x@a.test' id='r1'><body>r</body></message>");
    let r = ca
        .recv(WAIT)
        .expect("c.test's reply reached a.test's component");
    assert_eq!(
        (r.attr("from"), r.attr("id")),
        (Some("u@c.test"), Some("r1"))
    );

    // a dialled once; c.test's pair joined that stream.
    assert_eq!(dialled(&a), 1, "{}", a.log_text());
    assert_eq!(a.log_count("the pair joins it (target multiplexing"), 1);
    // bc verified both pairs on one inbound stream.
    let stream_of = |pair: &str| -> String {
        let line = bc
            .log_text()
            .lines()
            .find(|l| l.contains(&format!("{pair} verified by dialback")))
            .unwrap_or_else(|| panic!("{pair} not verified\n{}", bc.log_text()))
            .to_string();
        let from = line.find("s2s-in").expect("an inbound stream's line");
        line[from..]
            .split(' ')
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(stream_of("a.test→b.test"), stream_of("a.test→c.test"));
    assert_eq!(
        established_to(&[bc.s2s()]),
        1,
        "one connection to {}",
        bc.s2s()
    );
    // a's status: one outbound stream, carrying both pairs (each scrape logs a line).
    let want = vec!["a.test→b.test a.test→c.test".to_string()];
    a.wait_until("one outbound stream with both pairs", |_| {
        outbound_rows(&a) == want
    });
    drop(dns);
}

/// DB-09, DB-19 with DB-29: c.test resolves to the receiving daemon, which does not host it:
/// the joined pair's db:result is answered with a dialback error (item-not-found), its stanza
/// bounces with remote-server-timeout, the pair backs off (the next stanza bounces at once,
/// nothing dialled), and the stream keeps carrying b.test's stanzas.
#[test]
fn db09_db29_a_joined_pair_that_fails_does_not_poison_the_stream() {
    let (dns, a, bc) = sender_and_receiver(&[("b.test", "sb")]);
    let mut ca = ComponentClient::connect(a.component_addr(), "a.test", "sa");
    let cb = ComponentClient::connect(bc.component_addr(), "b.test", "sb");
    ca.send("<message from='x@a.test' to='u@b.test' id='b1'><body>b</body></message>");
    assert_eq!(cb.recv(WAIT).expect("b1").attr("id"), Some("b1"));
    for id in ["c1", "c2"] {
        ca.send(&format!(
            "<message from='x@a.test' to='u@c.test' id='{id}'><body>c</body></message>"
        ));
        let e = ca.recv(WAIT).expect("the bounce");
        assert_eq!((e.attr("type"), e.attr("id")), (Some("error"), Some(id)));
        assert_eq!(
            error_condition(&e).as_deref(),
            Some("remote-server-timeout"),
            "{e:?}"
        );
    }
    ca.send("<message from='x@a.test' to='u@b.test' id='b2'><body>b</body></message>");
    assert_eq!(cb.recv(WAIT).expect("b2").attr("id"), Some("b2"));
    assert_eq!(dialled(&a), 1, "{}", a.log_text());
    assert_eq!(a.log_count("the pair joins it (target multiplexing"), 1);
    assert_eq!(established_to(&[bc.s2s()]), 1);
    drop(dns);
}

/// The dialback secret of the sending daemon in the scripted-peer tests (to check its keys).
const A_SECRET: &str = "multiplex-secret";

/// a.test's daemon (dialback secret [`A_SECRET`], component a.test) and a scripted peer
/// hosting b.test and c.test at one address; the peer accepts a.test's first stream, answers
/// with stream id ID-1 and features whose dialback feature has `<errors/>` when `errors`,
/// says valid to the db:result for b.test without a callback (DB-04), and the first message
/// for b.test arrives. Returns the DNS server, the daemon, its component, the peer and the
/// stream.
fn scripted_peer(errors: bool) -> (TestDns, Daemon, ComponentClient, FakeServer, XmlConn) {
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let a = Daemon::start(
        "a",
        next_ip(),
        &format!(
            "dialback_secret = \"{A_SECRET}\"\n{}",
            config(&["a.test"], &[("a.test", "sa")], dns.addr(), "")
        ),
    );
    let peer = FakeServer::bind(next_ip());
    publish(&dns, "b.test", peer.addr());
    publish(&dns, "c.test", peer.addr());
    let mut ca = ComponentClient::connect(a.component_addr(), "a.test", "sa");
    ca.send("<message from='x@a.test' to='u@b.test' id='b1'><body>b</body></message>");
    let mut s = peer.accept();
    let h = s.header();
    assert_eq!(h.to.as_deref(), Some("b.test"));
    s.send(&s2s_header("b.test", "a.test", Some("ID-1")));
    let inner = if errors { "<errors/>" } else { "" };
    s.send(&format!(
        "<stream:features><dialback xmlns='urn:xmpp:features:dialback'>{inner}</dialback></stream:features>"
    ));
    let r = s
        .element_where(WAIT, |e| e.name == "result")
        .expect("the db:result for b.test");
    assert_eq!(
        (r.attr("from"), r.attr("to")),
        (Some("a.test"), Some("b.test"))
    );
    s.send("<db:result from='b.test' to='a.test' type='valid'/>");
    let m = s
        .element_where(WAIT, |e| e.name == "message")
        .expect("b1 on the stream");
    assert_eq!(m.attr("id"), Some("b1"));
    (dns, a, ca, peer, s)
}

/// DB-29, DB-03, XEP-0185: the peer advertised `<errors/>`: c.test's pair comes on the same
/// connection as its own db:result, from a.test to c.test, keyed with the stream's id; its
/// message follows only after valid (DB-05), and no second connection is made.
#[test]
fn db29_db03_second_target_db_result_on_the_stream_of_a_peer_with_errors() {
    let (dns, a, mut ca, peer, mut s) = scripted_peer(true);
    ca.send("<message from='x@a.test' to='u@c.test' id='c1'><body>c</body></message>");
    let r = s
        .element_where(WAIT, |e| e.name == "result")
        .expect("the db:result for c.test on the same stream");
    let key =
        dialbackd::keys::DialbackSecret::from_secret(A_SECRET).key("c.test", "a.test", "ID-1");
    assert_eq!(
        (r.attr("from"), r.attr("to"), r.text()),
        (Some("a.test"), Some("c.test"), key)
    );
    assert!(
        s.element_where(std::time::Duration::from_millis(200), |e| e.name
            == "message")
            .is_none(),
        "nothing for c.test before valid (DB-05)"
    );
    s.send("<db:result from='c.test' to='a.test' type='valid'/>");
    let m = s
        .element_where(WAIT, |e| e.name == "message")
        .expect("c1 on the stream");
    assert_eq!((m.attr("id"), m.attr("to")), (Some("c1"), Some("u@c.test")));
    peer.listener.set_nonblocking(true).unwrap();
    assert!(peer.listener.accept().is_err(), "no second connection");
    assert_eq!(dialled(&a), 1);
    drop(dns);
}

/// DB-29: without `<errors/>` in the peer's features, c.test at the same address gets a
/// connection of its own (no db:result for it on b.test's stream).
#[test]
fn db29_no_target_multiplexing_when_the_peer_did_not_offer_errors() {
    let (dns, a, mut ca, peer, s) = scripted_peer(false);
    ca.send("<message from='x@a.test' to='u@c.test' id='c1'><body>c</body></message>");
    let c = peer.accept();
    assert_eq!(
        c.header().to.as_deref(),
        Some("c.test"),
        "a new stream for c.test"
    );
    assert!(
        s.element_where(std::time::Duration::from_millis(200), |e| e.name
            == "result")
            .is_none(),
        "no db:result for c.test on b.test's stream"
    );
    assert_eq!(a.log_count("target multiplexing"), 0);
    drop(dns);
}
