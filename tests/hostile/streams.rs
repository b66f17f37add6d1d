//! Stream-level correctness on the wire (issue 8, item 5): our header precedes every stream
//! error, versions per RFC 6120 §4.7.5, pre-1.0 peers federating in both directions, the
//! STARTTLS restart discarding what was verified in plaintext, and the certificate chosen by
//! the stream header's `to`. Each test also shows the daemon alive afterwards: a legitimate
//! dialback (a.test → b.test, a.test's Authoritative Server played by a raw peer) succeeds.

use crate::common::dns_server::TestDns;
use crate::common::*;
use dialbackd::domain::Domain;
use dialbackd::keys::DialbackSecret;
use dialbackd::tls::{client_config, gen_cert, PeerCert, ServerCerts};
use dialbackd::xml::{Element, Limits, StreamEvent, StreamReader, TLS_NS};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::io::Write;
use std::net::{IpAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

/// a.test's dialback secret (the raw Authoritative Server checks keys with it).
const A_SECRET: &str = "a-secret";
/// old.test's dialback secret (the pre-1.0 peer).
const OLD_SECRET: &str = "old-secret";
const FEATURES: &str = "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>";

/// The stream header of a pre-1.0 server: no `version`, no `from`, no `to` (as a deployed
/// server without a certificate sends it); `id` on answers.
fn legacy_header(id: Option<&str>) -> String {
    let id = id.map(|i| format!(" id='{i}'")).unwrap_or_default();
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'{id}>"
    )
}

/// b.test (its component serves b.test itself, secret "sb") with a DNS server, and a raw
/// listener that plays a.test's Authoritative Server.
struct World {
    dns: TestDns,
    d: Daemon,
    a_as: FakeServer,
}

impl World {
    /// A raw listener playing the pre-1.0 server old.test, published in DNS.
    fn old_peer(&self) -> FakeServer {
        let old = FakeServer::bind(next_ip());
        publish(&self.dns, "old.test", old.addr());
        old
    }

    /// Our component, serving b.test.
    fn component(&self) -> ComponentClient {
        ComponentClient::connect(self.d.component_addr(), "b.test", "sb")
    }
}

fn world(extra: &str) -> World {
    world_with(|cfg| cfg, extra)
}

fn world_with(edit: impl FnOnce(String) -> String, extra: &str) -> World {
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let cfg = edit(config(&["b.test"], &[("b.test", "sb")], dns.addr(), extra));
    let d = Daemon::start("b", next_ip(), &cfg);
    let a_as = FakeServer::bind(next_ip());
    publish(&dns, "a.test", a_as.addr());
    publish(&dns, "b.test", d.s2s());
    World { dns, d, a_as }
}

/// Play an Authoritative Server on `conn` (the daemon's verify connection): answer its header
/// with ours (`legacy`: pre-1.0, no features), check the db:verify's key with `secret` and
/// answer it. Returns the db:verify received.
fn answer_verify(conn: &mut XmlConn, me: &str, secret: &str, legacy: bool) -> Element {
    let h = conn.header();
    assert_eq!(h.version.as_deref(), Some("1.0"), "we always open with 1.0");
    assert_eq!(h.to.as_deref(), Some(me));
    if legacy {
        conn.send(&legacy_header(Some("as-1")));
    } else {
        conn.send(&s2s_header(
            me,
            h.from.as_deref().unwrap_or(""),
            Some("as-1"),
        ));
        conn.send(FEATURES);
    }
    let v = conn
        .element_where(WAIT, |e| e.name == "verify")
        .expect("a db:verify");
    let (from, to, id) = (
        v.attr("from").unwrap(),
        v.attr("to").unwrap(),
        v.attr("id").unwrap(),
    );
    assert_eq!(to, me);
    let ok = DialbackSecret::from_secret(secret).verify(from, to, id, &v.text());
    let ty = if ok { "valid" } else { "invalid" };
    conn.send(&format!(
        "<db:verify from='{to}' to='{from}' id='{id}' type='{ty}'/>"
    ));
    v
}

/// The daemon is alive and a legitimate dialback still succeeds: a.test opens a 1.0 stream
/// to b.test with the right key, b.test calls a.test's Authoritative Server back, valid.
fn legit_dialback(w: &World) {
    w.d.assert_alive();
    let c = send_db_result(&w.d, A_SECRET);
    answer_verify(&mut w.a_as.accept(), "a.test", A_SECRET, false);
    expect_valid(&c, &w.d);
}

/// Half a stream header: the start tag never completes.
const HALF_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' to='b.test' version='1.0'";

/// The next event must be our stream header, then (with nothing between) a stream error with
/// `cond`.
fn header_then_error(c: &XmlConn, cond: &str) {
    c.our_header("b.test");
    assert_eq!(stream_condition(&c.element()), cond);
}

/// ERR-01 (RFC 6120 §4.9.1.1): the negotiation timeout hits while the peer's header is half
/// written; our header still precedes the `connection-timeout` error.
#[test]
fn err01_negotiation_timeout_on_a_half_header_sends_our_header_first() {
    let w = world_with(|c| c.replace("negotiation = 15", "negotiation = 3"), "");
    let mut c = XmlConn::connect(w.d.s2s());
    c.send(HALF_HEADER);
    header_then_error(&c, "connection-timeout");
    legit_dialback(&w);
}

/// ERR-01 on SIGTERM: a peer whose header is half written gets our header, then
/// `system-shutdown`; the daemon (which served a legitimate dialback meanwhile) exits 0.
#[test]
fn err01_sigterm_on_a_half_header_sends_our_header_first() {
    let mut w = world("");
    let mut c = XmlConn::connect(w.d.s2s());
    c.send(HALF_HEADER);
    legit_dialback(&w);
    let status = w.d.terminate().expect("exited in time");
    assert!(status.success(), "{status:?}");
    header_then_error(&c, "system-shutdown");
}

/// STR-01, RFC 6120 §4.7.5: `version='2.0'` is answered with our highest version, 1.0, and
/// the stream goes on (features, dialback) instead of `unsupported-version`.
#[test]
fn str01_version_2_0_is_answered_1_0_and_dialback_proceeds() {
    let w = world("");
    let mut c = XmlConn::connect(w.d.s2s());
    c.send(
        &s2s_header("a.test", "b.test", None)
            .replace("to='b.test' version='1.0'", "to='b.test' version='2.0'"),
    );
    let h = c.header();
    assert_eq!(h.version.as_deref(), Some("1.0"));
    let f = c.element();
    assert_eq!(f.name, "features");
    c.send(&db_result("a.test", "b.test", &h.id.unwrap(), A_SECRET));
    answer_verify(&mut w.a_as.accept(), "a.test", A_SECRET, false);
    expect_valid(&c, &w.d);
    legit_dialback(&w);
}

/// STR-01, DB-25 (a): a pre-1.0 server connects with no version, no from, no to and sends
/// db:result at once; we answer without version and without features, call its
/// Authoritative Server back (which answers pre-1.0 too), and its user's stanza reaches our
/// component.
#[test]
fn str01_db25_pre_1_0_peer_connects_to_us_and_its_stanza_is_delivered() {
    let w = world("");
    let old = w.old_peer();
    let comp = w.component();
    let mut c = XmlConn::connect(w.d.s2s());
    c.send(&legacy_header(None));
    let h = c.header();
    assert_eq!(h.version, None, "RFC 6120 §4.7.5: no version in the answer");
    let id = h.id.expect("a stream id: the key depends on it");
    c.send(&db_result("old.test", "b.test", &id, OLD_SECRET));
    let mut back = old.accept();
    let v = answer_verify(&mut back, "old.test", OLD_SECRET, true);
    assert_eq!(v.attr("id"), Some(id.as_str()), "DB-10");
    // The very next element is the answer: no features were sent on this stream.
    let r = c.element();
    assert_eq!(
        (r.name.as_str(), r.attr("type")),
        ("result", Some("valid")),
        "{r:?}"
    );
    c.send("<message from='u@old.test' to='someone@b.test' id='old1'><body>hi</body></message>");
    let m = comp.recv(WAIT).expect("delivered to the component");
    assert_eq!(
        (m.attr("id"), m.attr("from")),
        (Some("old1"), Some("u@old.test"))
    );
    legit_dialback(&w);
}

/// STR-01, DB-25 (b): our component writes to the pre-1.0 server's domain; we connect, it
/// answers without version (no features will come); our db:result goes out at once; it calls
/// us back on a pre-1.0 verify connection; valid; the stanza is delivered.
#[test]
fn str01_db25_we_federate_out_to_a_pre_1_0_peer() {
    let w = world("");
    let old = w.old_peer();
    let mut comp = w.component();
    comp.send("<message from='someone@b.test' to='u@old.test' id='out1'><body>hi</body></message>");
    let mut out = old.accept();
    let h = out.header();
    assert_eq!(
        (h.from.as_deref(), h.to.as_deref()),
        (Some("b.test"), Some("old.test"))
    );
    out.send(&legacy_header(Some("old-in-1")));
    let r = out.element();
    assert_eq!(
        r.name, "result",
        "db:result without waiting for features: {r:?}"
    );
    assert_eq!(
        (r.attr("from"), r.attr("to")),
        (Some("b.test"), Some("old.test"))
    );
    // The pre-1.0 peer verifies the key with b.test's Authoritative Server: us.
    let mut verify = XmlConn::connect(w.d.s2s());
    verify.send(&legacy_header(None));
    assert_eq!(verify.header().version, None);
    verify.send(&format!(
        "<db:verify from='old.test' to='b.test' id='old-in-1'>{}</db:verify>",
        r.text().trim()
    ));
    let v = verify.element();
    assert_eq!(
        (v.name.as_str(), v.attr("type")),
        ("verify", Some("valid")),
        "no features, then the answer: {v:?}"
    );
    out.send("<db:result from='old.test' to='b.test' type='valid'/>");
    let m = out
        .element_where(WAIT, |e| e.name == "message")
        .expect("the queued stanza");
    assert_eq!(m.attr("id"), Some("out1"));
    legit_dialback(&w);
}

/// A daemon hosting b.test with its self-signed certificate (`more` goes into `[tls]`).
fn tls_world(name: &str, more: &str) -> (World, PathBuf) {
    tls_world_with(name, |c| c, more)
}

fn tls_world_with(name: &str, edit: impl FnOnce(String) -> String, more: &str) -> (World, PathBuf) {
    let dir = std::env::temp_dir().join(format!("dialbackd-streams-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (c, k) = gen_cert(&Domain::parse("b.test").unwrap(), &dir).unwrap();
    let extra = format!(
        "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\n{more}",
        c.display(),
        k.display()
    );
    (world_with(edit, &extra), dir)
}

/// SEC-12 with pre-1.0 peers: encryption is required (a.test alone is exempt). Inbound, the
/// db:result gets the `policy-violation` dialback error (XEP-0220 §2.5) and, since the stream
/// cannot do STARTTLS, the `policy-violation` stream error; nobody is called back. Outbound,
/// the pre-1.0 answer gets `policy-violation`, no key goes out, and our stanza bounces with
/// `remote-server-timeout`.
#[test]
fn sec12_pre_1_0_peer_refused_both_ways_when_encryption_is_required() {
    let (w, dir) = tls_world(
        "legacy-tls",
        "[tls.peers.\"a.test\"]\nrequire_encryption = false\n",
    );
    let old = w.old_peer();
    let mut c = XmlConn::connect(w.d.s2s());
    c.send(&legacy_header(None));
    let id = c.header().id.unwrap();
    c.send(&db_result("old.test", "b.test", &id, OLD_SECRET));
    let r = c.element();
    assert_eq!((r.name.as_str(), r.attr("type")), ("result", Some("error")));
    assert_eq!(error_condition(&r).as_deref(), Some("policy-violation"));
    assert_eq!(stream_condition(&c.element()), "policy-violation");

    let mut comp = w.component();
    comp.send("<message from='someone@b.test' to='u@old.test' id='enc1'/>");
    let mut out = old.accept();
    let _ = out.header();
    out.send(&legacy_header(Some("old-in-2")));
    let e = out.element();
    assert_eq!(
        stream_condition(&e),
        "policy-violation",
        "no key in the clear"
    );
    let b = comp.recv(WAIT).expect("bounce");
    assert_eq!(
        (b.attr("id"), b.attr("type")),
        (Some("enc1"), Some("error"))
    );
    assert_eq!(
        error_condition(&b).as_deref(),
        Some("remote-server-timeout"),
        "{b:?}"
    );
    // Nobody was called back for the refused inbound db:result.
    old.listener.set_nonblocking(true).unwrap();
    assert!(old.listener.accept().is_err(), "a callback was made");
    legit_dialback(&w);
    let _ = std::fs::remove_dir_all(dir);
}

/// A plaintext stream from a.test to `addr` (header `to`), read synchronously so that it
/// can stop reading at `<proceed/>` before the TLS bytes arrive.
struct Plain {
    sock: TcpStream,
    reader: StreamReader<TcpStream>,
    id: String,
}

impl Plain {
    fn open(addr: std::net::SocketAddr, to: &str) -> Plain {
        let mut sock = TcpStream::connect_timeout(&addr, WAIT).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        sock.write_all(s2s_header("a.test", to, None).as_bytes())
            .unwrap();
        let mut reader = StreamReader::new(sock.try_clone().unwrap(), Limits::default());
        let Ok(StreamEvent::Header(h)) = reader.next_event() else {
            panic!("no header")
        };
        let mut p = Plain {
            sock,
            reader,
            id: h.id.expect("stream id"),
        };
        let f = p.element();
        assert!(f.child("starttls", TLS_NS).is_some(), "{f:?}");
        p
    }

    fn send(&mut self, xml: &str) {
        self.sock.write_all(xml.as_bytes()).unwrap();
    }

    fn element(&mut self) -> Element {
        match self.reader.next_event() {
            Ok(StreamEvent::Element(e)) => e,
            other => panic!("expected an element, got {other:?}"),
        }
    }

    /// STARTTLS as a.test presenting `certs`' certificate, TLS name `sni` (an IP literal
    /// sends no SNI); returns the server's certificate and the restarted stream (past its
    /// header and features).
    fn starttls(self, to: &str, sni: &str, certs: &ServerCerts) -> (Option<PeerCert>, XmlConn) {
        let (cert, mut conn) = self.tls_only(sni, certs);
        conn.send(&s2s_header("a.test", to, None));
        let _ = conn.header();
        let f = conn.element();
        assert_eq!(f.name, "features");
        (cert, conn)
    }

    /// STARTTLS and the TLS handshake, without the restarted stream's header.
    fn tls_only(mut self, sni: &str, certs: &ServerCerts) -> (Option<PeerCert>, XmlConn) {
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        assert_eq!(self.element().name, "proceed");
        let (_, leftover) = self.reader.into_inner();
        assert!(leftover.is_empty());
        let cfg = client_config(certs, &Domain::parse("a.test").unwrap(), false).unwrap();
        XmlConn::over_tls(self.sock, cfg, sni)
    }
}

/// a.test's certificates (what the raw peer presents as a TLS client).
fn a_certs(dir: &std::path::Path) -> ServerCerts {
    let a_dir = dir.join("a");
    std::fs::create_dir_all(&a_dir).unwrap();
    let a = Domain::parse("a.test").unwrap();
    let (c, k) = gen_cert(&a, &a_dir).unwrap();
    ServerCerts::load(&[(a, c, k)], None).unwrap()
}

fn spki_of(cert: &std::path::Path) -> String {
    let pem = std::fs::read(cert).unwrap();
    let der = CertificateDer::from_pem_slice(&pem).unwrap();
    PeerCert::from_chain(vec![der]).unwrap().spki_sha256_hex()
}

/// TLS-01 (RFC 6120 §5.4.3.3): a.test is verified by dialback in plaintext, then STARTTLS;
/// the restarted stream has forgotten the pair, so a.test's stanza is `not-authorized` and
/// never reaches the component.
#[test]
fn tls01_starttls_restart_forgets_pairs_verified_in_plaintext() {
    let (w, dir) = tls_world("restart", "require_encryption = false\n");
    let certs = a_certs(&dir);
    let comp = w.component();
    let mut p = Plain::open(w.d.s2s(), "b.test");
    p.send(&db_result("a.test", "b.test", &p.id, A_SECRET));
    answer_verify(&mut w.a_as.accept(), "a.test", A_SECRET, false);
    let r = p.element();
    assert_eq!(
        (r.name.as_str(), r.attr("type")),
        ("result", Some("valid")),
        "verified in plaintext"
    );
    let (_, mut c) = p.starttls("b.test", "b.test", &certs);
    c.send("<message from='u@a.test' to='someone@b.test' id='pre-tls'/>");
    let e = c
        .element_where(WAIT, |e| e.name == "error")
        .expect("a stream error");
    assert_eq!(stream_condition(&e), "not-authorized");
    assert!(
        comp.recv(Duration::from_millis(500)).is_none(),
        "a stanza got through on a pair verified before TLS"
    );
    legit_dialback(&w);
    let _ = std::fs::remove_dir_all(dir);
}

/// TLS-01 and ERR-01 after the restart: a peer verified in plaintext upgrades to TLS and
/// then says nothing. Its plaintext pair no longer counts, so the negotiation deadline applies
/// again (it had been disarmed by the verification), and the timeout on the new stream sends
/// a new header of ours before `connection-timeout`.
#[test]
fn tls01_err01_silent_peer_after_the_restart_times_out_with_our_header_first() {
    let (w, dir) = tls_world_with(
        "restart-idle",
        |c| c.replace("negotiation = 15", "negotiation = 3"),
        "require_encryption = false\n",
    );
    let certs = a_certs(&dir);
    let mut p = Plain::open(w.d.s2s(), "b.test");
    p.send(&db_result("a.test", "b.test", &p.id, A_SECRET));
    answer_verify(&mut w.a_as.accept(), "a.test", A_SECRET, false);
    assert_eq!(p.element().attr("type"), Some("valid"));
    let (_, c) = p.tls_only("b.test", &certs);
    header_then_error(&c, "connection-timeout");
    legit_dialback(&w);
    let _ = std::fs::remove_dir_all(dir);
}

/// The certificate we present on an inbound STARTTLS is the one of the domain the stream
/// header's `to` named (known before the handshake), whether the client sends no SNI or an
/// SNI naming our other domain.
#[test]
fn inbound_certificate_follows_the_header_to_not_the_sni() {
    let dir = std::env::temp_dir().join(format!("dialbackd-streams-{}-byto", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (bc, bk) = gen_cert(&Domain::parse("b.test").unwrap(), &dir).unwrap();
    let (cc, ck) = gen_cert(&Domain::parse("c.test").unwrap(), &dir).unwrap();
    let certs = a_certs(&dir);
    let tls = format!(
        "[tls]\nrequire_encryption = false\n[tls.domains.\"b.test\"]\ncertificate = \"{}\"\nkey = \"{}\"\n\
         [tls.domains.\"c.test\"]\ncertificate = \"{}\"\nkey = \"{}\"\n",
        bc.display(),
        bk.display(),
        cc.display(),
        ck.display()
    );
    let w = world_with(
        |c| {
            c.replace(
                "domains = [\"b.test\"]",
                "domains = [\"b.test\", \"c.test\"]",
            )
        },
        &tls,
    );
    let (b_spki, c_spki) = (spki_of(&bc), spki_of(&cc));
    assert_ne!(b_spki, c_spki);
    for (to, sni, want) in [
        ("c.test", "[::1]", &c_spki),
        ("c.test", "b.test", &c_spki),
        ("b.test", "c.test", &b_spki),
    ] {
        let (cert, _conn) = Plain::open(w.d.s2s(), to).starttls(to, sni, &certs);
        let got = cert.expect("a server certificate").spki_sha256_hex();
        assert_eq!(&got, want, "header to={to}, SNI {sni}");
    }
    legit_dialback(&w);
    let _ = std::fs::remove_dir_all(dir);
}
