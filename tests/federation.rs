//! Two and three real daemons on loopback federating by dialback, with components at both
//! ends and DNS from a test server. Each test cites the rule it proves.

mod common;

use common::dns_server::TestDns;
use common::*;
use dialbackd::xml::StreamEvent;
use std::net::IpAddr;
use std::time::Duration;

/// The dialback secret of the real a.test, so that a test can mint its keys.
const A_SECRET: &str = "known-secret";

/// A (a.test + component echo.a.test) and B (b.test, whose component serves b.test itself),
/// both resolved through SRV records.
struct Pair {
    dns: TestDns,
    a: Daemon,
    b: Daemon,
}

fn pair() -> Pair {
    pair_extra("")
}

/// [`pair`] with `extra` TOML in both configurations.
fn pair_extra(extra: &str) -> Pair {
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let (ia, ib) = (next_ip(), next_ip());
    let a = Daemon::start(
        "a",
        ia,
        &config(&["a.test"], &[("echo.a.test", "sa")], dns.addr(), extra),
    );
    let b = Daemon::start(
        "b",
        ib,
        &config(&["b.test"], &[("b.test", "sb")], dns.addr(), extra),
    );
    for (name, addr) in [
        ("a.test", a.s2s()),
        ("echo.a.test", a.s2s()),
        ("b.test", b.s2s()),
    ] {
        publish(&dns, name, addr);
    }
    Pair { dns, a, b }
}

#[test]
fn components_exchange_messages_both_ways_over_dialback() {
    let p = pair();
    let mut ca = ComponentClient::connect(p.a.component_addr(), "echo.a.test", "sa");
    let mut cb = ComponentClient::connect(p.b.component_addr(), "b.test", "sb");
    ca.send("<message from='bot@echo.a.test' to='someone@b.test' id='m1'><body>hello b</body></message>");
    let m = cb.recv(WAIT).expect("B's component got the message");
    assert_eq!(m.attr("from"), Some("bot@echo.a.test"));
    assert_eq!(m.attr("to"), Some("someone@b.test"));
    assert_eq!(
        m.child("body", "jabber:component:accept").map(|b| b.text()),
        Some("hello b".into())
    );
    cb.send("<message from='someone@b.test' to='bot@echo.a.test' id='m2'><body>hello a</body></message>");
    let r = ca.recv(WAIT).expect("A's component got the reply");
    assert_eq!(r.attr("from"), Some("someone@b.test"));
    assert_eq!(r.attr("id"), Some("m2"));
    drop(p.dns);
}

#[test]
fn ping_to_a_hosted_domain_is_answered_by_the_daemon() {
    let p = pair();
    let mut cb = ComponentClient::connect(p.b.component_addr(), "b.test", "sb");
    cb.send(
        "<iq type='get' id='p1' from='u@b.test/r' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
    let r = cb.recv(WAIT).expect("pong");
    assert_eq!(
        (
            r.name.as_str(),
            r.attr("type"),
            r.attr("id"),
            r.attr("from")
        ),
        ("iq", Some("result"), Some("p1"), Some("a.test"))
    );
}

/// XEP-0030 §3.1 across federation: b.test's component asks a.test (hosted, no component of
/// its own) for disco#info and a.test's daemon answers with server/im and the features it
/// answers; a JID of a.test with a node or resource gets service-unavailable. a.test's
/// component asking b.test, which its own component serves, reaches that component instead.
#[test]
fn disco_info_to_a_hosted_domain_is_answered_by_the_daemon() {
    let p = pair();
    let mut cb = ComponentClient::connect(p.b.component_addr(), "b.test", "sb");
    let query = "<query xmlns='http://jabber.org/protocol/disco#info'/>";
    cb.send(&format!(
        "<iq type='get' id='i1' from='u@b.test/r' to='a.test'>{query}</iq>"
    ));
    let r = cb.recv(WAIT).expect("the disco#info answer");
    assert_eq!(
        (r.attr("type"), r.attr("id"), r.attr("from"), r.attr("to")),
        (
            Some("result"),
            Some("i1"),
            Some("a.test"),
            Some("u@b.test/r")
        ),
        "{r:?}"
    );
    let disco = "http://jabber.org/protocol/disco#info";
    let q = r.child("query", disco).expect("<query/>");
    let identity = q.child("identity", disco).expect("<identity/>");
    assert_eq!(
        (
            identity.attr("category"),
            identity.attr("type"),
            identity.attr("name")
        ),
        (Some("server"), Some("im"), Some("dialbackd"))
    );
    let vars: Vec<&str> = q.elements().filter_map(|f| f.attr("var")).collect();
    assert_eq!(vars, [disco, "urn:xmpp:ping"]);
    for (id, to) in [("i2", "someone@a.test"), ("i3", "a.test/res")] {
        cb.send(&format!(
            "<iq type='get' id='{id}' from='u@b.test/r' to='{to}'>{query}</iq>"
        ));
        let r = cb.recv(WAIT).expect("an error");
        assert_eq!((r.attr("type"), r.attr("id")), (Some("error"), Some(id)));
        assert_eq!(error_condition(&r).as_deref(), Some("service-unavailable"));
    }
    let mut ca = ComponentClient::connect(p.a.component_addr(), "echo.a.test", "sa");
    ca.send(&format!(
        "<iq type='get' id='i4' from='bot@echo.a.test' to='b.test'>{query}</iq>"
    ));
    let got = cb.recv(WAIT).expect("b.test's component gets the query");
    assert_eq!(
        (got.attr("type"), got.attr("id")),
        (Some("get"), Some("i4"))
    );
}

/// XEP-0092 across federation, off by default and turned on by a reload: b.test's component
/// asks a.test (hosted, no component of its own) for its software version; first
/// service-unavailable and disco#info without `jabber:iq:version`, then, after `[handlers]
/// version = true` and SIGHUP, name and version (no `os`) and the feature listed.
#[test]
fn software_version_is_off_by_default_and_answered_once_turned_on() {
    let mut p = pair();
    let mut cb = ComponentClient::connect(p.b.component_addr(), "b.test", "sb");
    let ask = |cb: &mut ComponentClient, id: &str, ns: &str| {
        cb.send(&format!(
            "<iq type='get' id='{id}' from='u@b.test/r' to='a.test'><query xmlns='{ns}'/></iq>"
        ));
        let r = cb.recv(WAIT).expect("an answer");
        assert_eq!(r.attr("id"), Some(id), "{r:?}");
        r
    };
    let (version, disco) = ("jabber:iq:version", "http://jabber.org/protocol/disco#info");
    let features = |r: &dialbackd::xml::Element| -> Vec<String> {
        let q = r.child("query", disco).expect("<query/>");
        q.elements()
            .filter_map(|f| f.attr("var"))
            .map(String::from)
            .collect()
    };
    let r = ask(&mut cb, "v1", version);
    assert_eq!(r.attr("type"), Some("error"), "{r:?}");
    assert_eq!(error_condition(&r).as_deref(), Some("service-unavailable"));
    assert!(!features(&ask(&mut cb, "d1", disco)).contains(&version.to_string()));

    let on = config(
        &["a.test"],
        &[("echo.a.test", "sa")],
        p.dns.addr(),
        "[handlers]\nversion = true\n",
    )
    .replace("{ip}", &p.a.ip.to_string());
    std::fs::write(p.a.dir.join("dialbackd.toml"), on).unwrap();
    let st = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(p.a.pid().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let line = p.a.wait_log("configuration reloaded");
    assert!(line.contains("handlers"), "{line}");

    let r = ask(&mut cb, "v2", version);
    assert_eq!(
        (r.attr("type"), r.attr("from"), r.attr("to")),
        (Some("result"), Some("a.test"), Some("u@b.test/r")),
        "{r:?}"
    );
    let q = r.child("query", version).expect("<query/>");
    let fields: Vec<(String, String)> = q.elements().map(|e| (e.name.clone(), e.text())).collect();
    assert_eq!(
        fields,
        [
            ("name".to_string(), "dialbackd".to_string()),
            ("version".to_string(), env!("CARGO_PKG_VERSION").to_string())
        ],
        "name and version, no os"
    );
    assert!(features(&ask(&mut cb, "d2", disco)).contains(&version.to_string()));
}

#[test]
fn stanza_to_an_address_nobody_serves_gets_service_unavailable() {
    let p = pair();
    let mut cb = ComponentClient::connect(p.b.component_addr(), "b.test", "sb");
    cb.send("<message from='u@b.test' to='nobody@a.test' id='x1'><body>?</body></message>");
    let r = cb.recv(WAIT).expect("an error comes back");
    assert_eq!(r.attr("type"), Some("error"));
    assert_eq!(r.attr("id"), Some("x1"));
    let err = r
        .child("error", "jabber:component:accept")
        .or_else(|| r.child("error", "jabber:server"))
        .expect("<error/>");
    assert!(
        err.elements().any(|c| c.name == "service-unavailable"),
        "{r:?}"
    );
}

#[test]
fn route02_unknown_domain_bounces_remote_server_not_found() {
    let p = pair();
    let mut ca = ComponentClient::connect(p.a.component_addr(), "echo.a.test", "sa");
    ca.send("<message from='bot@echo.a.test' to='x@nosuch.test' id='n1'><body>?</body></message>");
    let r = ca.recv(WAIT).expect("bounce");
    assert_eq!(r.attr("type"), Some("error"));
    assert_eq!(r.attr("from"), Some("x@nosuch.test"));
    assert!(
        r.elements()
            .flat_map(|e| e.elements())
            .any(|c| c.name == "remote-server-not-found"),
        "{r:?}"
    );
    // SRV-02: a '.' target is the same: service decidedly not available.
    p.dns.add_srv("_xmpp-server._tcp.dot.test", 0, 0, 0, ".");
    ca.send("<message from='bot@echo.a.test' to='x@dot.test' id='n2'/>");
    let r = ca.recv(WAIT).expect("bounce");
    assert!(
        r.elements()
            .flat_map(|e| e.elements())
            .any(|c| c.name == "remote-server-not-found"),
        "{r:?}"
    );
}

/// The DomainA/DomainC scenario: a raw client claims to be a.test towards B with a made-up
/// key; B asks the real a.test, which says invalid; nothing the spoofer sends is delivered.
#[test]
fn spoofer_claiming_a_test_gets_invalid_and_delivers_nothing() {
    let mut p = pair();
    let cb = ComponentClient::connect(p.b.component_addr(), "b.test", "sb");
    let mut spoof = XmlConn::connect(p.b.s2s());
    spoof.send(&s2s_header("a.test", "b.test", None));
    let h = spoof.header();
    assert!(h.id.is_some());
    let _features = spoof.element();
    spoof.send(&format!(
        "<db:result from='a.test' to='b.test'>{}</db:result>",
        "ab".repeat(32)
    ));
    let r = spoof
        .element_where(WAIT, |e| e.name == "result")
        .expect("an answer to the db:result");
    assert_eq!(r.attr("type"), Some("invalid"), "{r:?}");
    assert_eq!(
        (r.attr("from"), r.attr("to")),
        (Some("b.test"), Some("a.test"))
    );
    // A answered B's db:verify as Authoritative Server, and said invalid.
    p.a.wait_log("is not ours: invalid");
    spoof.send("<message from='mallory@a.test' to='someone@b.test'><body>spoofed</body></message>");
    assert!(
        cb.recv(Duration::from_secs(2)).is_none(),
        "a spoofed stanza was delivered"
    );
}

/// KEY-01/SEC-14: a key minted by the real a.test for another stream id is worthless here.
#[test]
fn replayed_key_for_another_stream_is_invalid() {
    let p = AandB::start(A_SECRET, |dns, _| config(&["b.test"], &[], dns, ""));
    let (mut c, id) = open_s2s(&p.b, "a.test", "b.test");
    assert_ne!(id, "some-other-stream");
    c.send(&db_result(
        "a.test",
        "b.test",
        "some-other-stream",
        A_SECRET,
    ));
    let r = c
        .element_where(WAIT, |e| e.name == "result")
        .expect("answer");
    assert_eq!(r.attr("type"), Some("invalid"));
    // And the right key for this stream id is valid: the same daemons, the same secret.
    dialback_as_a(&p.b, A_SECRET);
}

/// DB-06: the peer vanishes after our db:result; the queued stanzas bounce, nothing is lost,
/// and the daemon keeps serving.
#[test]
fn db06_peer_vanishing_mid_dialback_bounces_queued_stanzas() {
    let p = pair();
    let ic = next_ip();
    let fake = FakeServer::bind(ic);
    publish(&p.dns, "c.test", fake.addr());
    let mut ca = ComponentClient::connect(p.a.component_addr(), "echo.a.test", "sa");
    for i in 0..3 {
        ca.send(&format!(
            "<message from='bot@echo.a.test' to='x@c.test' id='v{i}'><body>{i}</body></message>"
        ));
    }
    let mut c = fake.accept();
    let h = c.header();
    assert_eq!(
        (h.from.as_deref(), h.to.as_deref()),
        (Some("echo.a.test"), Some("c.test"))
    );
    c.send(&s2s_header("c.test", "echo.a.test", Some("fake-id")));
    c.send("<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>");
    let r = c.element();
    assert_eq!(r.name, "result");
    drop(c); // vanish
    let mut ids = Vec::new();
    for _ in 0..3 {
        let b = ca.recv(WAIT).expect("bounce");
        assert_eq!(b.attr("type"), Some("error"));
        assert!(
            b.elements()
                .flat_map(|e| e.elements())
                .any(|c| c.name == "remote-server-timeout"),
            "{b:?}"
        );
        ids.push(b.attr("id").unwrap().to_string());
    }
    assert_eq!(ids, ["v0", "v1", "v2"]);
    // Still serving.
    let cb = ComponentClient::connect(p.b.component_addr(), "b.test", "sb");
    ca.send("<message from='bot@echo.a.test' to='y@b.test' id='after'/>");
    assert_eq!(
        cb.recv(WAIT)
            .and_then(|m| m.attr("id").map(str::to_string))
            .as_deref(),
        Some("after")
    );
}

/// DB-02, DB-05, ROUTE-01: 1,000 stanzas queued during a slow dialback go out in order, after
/// exactly one db:result on one connection.
#[test]
fn thousand_stanzas_queued_during_slow_dialback_arrive_in_order() {
    let p = pair();
    let ic = next_ip();
    let fake = FakeServer::bind(ic);
    publish(&p.dns, "slow.test", fake.addr());
    let mut ca = ComponentClient::connect(p.a.component_addr(), "echo.a.test", "sa");
    let mut batch = String::new();
    for i in 0..1000 {
        batch.push_str(&format!(
            "<message from='bot@echo.a.test' to='u@slow.test' id='q{i}'><body>{i}</body></message>"
        ));
    }
    ca.send(&batch);
    let mut c = fake.accept();
    let _ = c.header();
    c.send(&s2s_header("slow.test", "echo.a.test", Some("slow-id")));
    c.send("<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>");
    let r = c.element();
    assert_eq!(r.name, "result");
    // Nothing but the key so far (DB-05): a ping through the component proves A processed
    // the whole batch before we answer.
    ca.send("<iq type='get' id='sync' from='bot@echo.a.test' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>");
    assert!(ca.recv(WAIT).is_some_and(|e| e.attr("id") == Some("sync")));
    assert!(
        c.next(Duration::from_millis(300)).is_none(),
        "stanzas sent before valid"
    );
    c.send("<db:result from='slow.test' to='echo.a.test' type='valid'/>");
    for i in 0..1000 {
        let m = c.element();
        assert_eq!(m.name, "message", "only stanzas after valid");
        assert_eq!(m.attr("id"), Some(format!("q{i}").as_str()), "in order");
    }
    // Exactly one connection: nobody else knocks.
    fake.listener.set_nonblocking(true).unwrap();
    assert!(fake.listener.accept().is_err());
}

/// Graceful shutdown: SIGTERM closes the streams, bounces what is queued, exits 0.
#[test]
fn sigterm_bounces_queued_stanzas_and_exits_zero() {
    let mut p = pair();
    let ic = next_ip();
    let fake = FakeServer::bind(ic);
    publish(&p.dns, "stuck.test", fake.addr());
    let mut ca = ComponentClient::connect(p.a.component_addr(), "echo.a.test", "sa");
    ca.send("<message from='bot@echo.a.test' to='u@stuck.test' id='s1'/>");
    let c = fake.accept();
    let _ = c.header();
    let status = p.a.terminate().expect("exited in time");
    assert!(status.success(), "exit status {status:?}");
    let b = ca.recv(WAIT).expect("the queued stanza bounced");
    assert_eq!((b.attr("id"), b.attr("type")), (Some("s1"), Some("error")));
}

/// One thread per stream: once the exchange settles (the verify connections have ended), each
/// daemon runs its accept loop plus exactly one thread per live stream, and idle streams wake
/// for the next stanza, in both directions. Without XEP-0288 bidi, so that the way back has
/// streams of its own (tests/bidi.rs counts the bidi case).
#[test]
fn one_thread_per_stream_and_idle_streams_wake_for_the_next_stanza() {
    let p = pair_extra("[s2s]\nbidi = false\n");
    let mut ca = ComponentClient::connect(p.a.component_addr(), "echo.a.test", "sa");
    let mut cb = ComponentClient::connect(p.b.component_addr(), "b.test", "sb");
    ca.send("<message from='bot@echo.a.test' to='u@b.test' id='w1'/>");
    assert!(cb.recv(WAIT).is_some_and(|m| m.attr("id") == Some("w1")));
    // a: its component and its stream to b; b: its component and a's stream to it.
    p.a.wait_threads(1 + 2);
    p.b.wait_threads(1 + 2);
    ca.send("<message from='bot@echo.a.test' to='u@b.test' id='w2'/>");
    assert!(cb.recv(WAIT).is_some_and(|m| m.attr("id") == Some("w2")));
    cb.send("<message from='u@b.test' to='bot@echo.a.test' id='w3'/>");
    assert!(ca.recv(WAIT).is_some_and(|m| m.attr("id") == Some("w3")));
    // And the streams of the way back: one more on each side.
    p.a.wait_threads(1 + 3);
    p.b.wait_threads(1 + 3);
}

/// An idle stream's deadline fires while its thread sleeps: an idle verified stream is closed
/// on time.
#[test]
fn idle_stream_is_closed_by_its_deadline() {
    let p = AandB::start(A_SECRET, |dns, _| {
        config(&["b.test"], &[], dns, "")
            .replace("[timeouts]\n", "[timeouts]\nidle = 3\nkeepalive = 2\n")
    });
    let c = dialback_as_a(&p.b, A_SECRET);
    // Nothing more is sent: the idle deadline (3 s) must close the stream.
    match c.next(WAIT) {
        Some(Ok(StreamEvent::Close)) => {}
        other => panic!("expected the stream to be closed for idleness, got {other:?}"),
    }
}

/// SRV-05: a static route is used instead of DNS (b.test has no DNS records at all here).
#[test]
fn srv05_static_route_replaces_dns() {
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let b = Daemon::start(
        "b",
        next_ip(),
        &config(&["b.test"], &[("b.test", "sb")], dns.addr(), ""),
    );
    let route = format!("[routes]\n\"b.test\" = \"{}\"\n", b.s2s());
    let a = Daemon::start(
        "a",
        next_ip(),
        &config(&["a.test"], &[("echo.a.test", "sa")], dns.addr(), &route),
    );
    // b.test calls echo.a.test back through DNS as usual.
    publish(&dns, "echo.a.test", a.s2s());
    let mut ca = ComponentClient::connect(a.component_addr(), "echo.a.test", "sa");
    let cb = ComponentClient::connect(b.component_addr(), "b.test", "sb");
    ca.send("<message from='bot@echo.a.test' to='u@b.test' id='r1'/>");
    assert_eq!(
        cb.recv(WAIT)
            .and_then(|m| m.attr("id").map(str::to_string))
            .as_deref(),
        Some("r1")
    );
}

/// The stanza error condition and type of the error `r` carries.
fn error_of(r: &dialbackd::xml::Element) -> (String, String) {
    let err = error_child(r).unwrap_or_else(|| panic!("no <error/> in {r:?}"));
    let cond = err
        .elements()
        .find(|c| c.name != "text")
        .map(|c| c.name.clone())
        .unwrap_or_default();
    (cond, err.attr("type").unwrap_or_default().to_string())
}

/// `[policy] deny` on b.test's daemon. Inbound: a db:result claiming a denied domain gets
/// the dialback error `forbidden` (XEP-0220 §2.5) with no verification asked (SEC-11), while a
/// domain that is not denied is verified on the same stream (DB-18, DB-28). Outbound: stanzas
/// for denied domains bounce `not-allowed`, type cancel (RFC 6120 §8.3.3.10), and nothing is
/// dialled.
#[test]
fn federation_deny_refuses_dialback_and_stanzas_without_connecting() {
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let a = Daemon::start(
        "a",
        next_ip(),
        &format!(
            "dialback_secret = \"{A_SECRET}\"\n{}",
            config(&["a.test", "c.test"], &[], dns.addr(), "")
        ),
    );
    let deny = "[policy]\ndeny = [\"c.test\", \"*.spam.test\"]\n";
    let b = Daemon::start(
        "b",
        next_ip(),
        &config(&["b.test"], &[("b.test", "sb")], dns.addr(), deny),
    );
    for (name, addr) in [
        ("a.test", a.s2s()),
        ("c.test", a.s2s()),
        ("b.test", b.s2s()),
    ] {
        publish(&dns, name, addr);
    }
    let (mut s, id) = open_s2s(&b, "c.test", "b.test");
    s.send(&db_result("c.test", "b.test", &id, A_SECRET));
    let r = s
        .element_where(WAIT, |e| e.name == "result")
        .expect("an answer");
    assert_eq!(r.attr("type"), Some("error"), "{r:?}");
    assert_eq!(error_of(&r).0, "forbidden", "{r:?}");
    s.send(&db_result("a.test", "b.test", &id, A_SECRET));
    expect_valid(&s, &b);
    b.wait_log_count(
        "refusing dialback from c.test: it is listed in policy.deny",
        1,
    );
    assert_eq!(b.log_count("verifying c.test"), 0, "{}", b.log_text());

    let mut cb = ComponentClient::connect(b.component_addr(), "b.test", "sb");
    for (id, to) in [("d1", "u@c.test"), ("d2", "u@x.spam.test")] {
        cb.send(&format!(
            "<message from='v@b.test' to='{to}' id='{id}'><body>spam?</body></message>"
        ));
        let r = cb.recv(WAIT).expect("a bounce");
        assert_eq!((r.attr("type"), r.attr("id")), (Some("error"), Some(id)));
        assert_eq!(
            error_of(&r),
            ("not-allowed".into(), "cancel".into()),
            "{r:?}"
        );
    }
    // The bounces are the router's refusal, made before any route or stream exists: no
    // outbound or verify stream of b's ever named a denied domain.
    for denied in ["→c.test", "→x.spam.test"] {
        assert_eq!(b.log_count(denied), 0, "{denied}\n{}", b.log_text());
    }
    drop(dns);
}

/// DB-29 (XEP-0220 §2.6.2 target multiplexing), DB-26: b.test's daemon also hosts d.test and
/// e.test and advertises dialback errors, so a.test multiplexes targets on one stream: its
/// db:results for b.test and for d.test are each verified by a callback to the real a.test and
/// answered valid, stanzas for both pairs reach their components, a target we do not host
/// gets `item-not-found` without losing the stream (DB-19), and a stanza for e.test, hosted
/// but never verified on this stream, is refused with `host-unknown`.
#[test]
fn db29_one_inbound_stream_verifies_two_of_our_domains() {
    let mut p = AandB::start(A_SECRET, |dns, _| {
        config(
            &["b.test", "d.test", "e.test"],
            &[("b.test", "sb"), ("d.test", "sd")],
            dns,
            "",
        )
    });
    let cb = ComponentClient::connect(p.b.component_addr(), "b.test", "sb");
    let cd = ComponentClient::connect(p.b.component_addr(), "d.test", "sd");
    let (mut s, id) = open_s2s(&p.b, "a.test", "b.test");
    for target in ["b.test", "d.test"] {
        s.send(&db_result("a.test", target, &id, A_SECRET));
        let r = s
            .element_where(WAIT, |e| e.name == "result")
            .expect("an answer to the db:result");
        assert_eq!(
            (r.attr("type"), r.attr("from"), r.attr("to")),
            (Some("valid"), Some(target), Some("a.test")),
            "{r:?}\n{}",
            p.b.log_text()
        );
    }
    p.b.wait_log("a.test→d.test verified by dialback");
    // Each target had its own callback, from that domain, to a.test's real daemon.
    for callback in ["b.test→a.test: stream ended", "d.test→a.test: stream ended"] {
        p.a.wait_log_count(callback, 1);
    }
    s.send(&db_result("a.test", "nosuch.test", &id, A_SECRET));
    let r = s
        .element_where(WAIT, |e| e.name == "result")
        .expect("a dialback error");
    assert_eq!(r.attr("type"), Some("error"), "{r:?}");
    assert_eq!(error_of(&r).0, "item-not-found", "{r:?}");
    for (c, to) in [(&cb, "u@b.test"), (&cd, "u@d.test")] {
        s.send(&format!(
            "<message from='v@a.test' to='{to}' id='m-{to}'><body>hi</body></message>"
        ));
        let m = c.recv(WAIT).expect("the message for its pair");
        assert_eq!((m.attr("to"), m.attr("from")), (Some(to), Some("v@a.test")));
    }
    s.send("<message from='v@a.test' to='u@e.test'><body>unverified</body></message>");
    assert_eq!(s.stream_error(), "host-unknown");
    p.b.assert_alive();
}
