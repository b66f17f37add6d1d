//! STARTTLS, direct TLS and the TLS policy between real daemons on loopback, with
//! certificates made in the test. Each test cites the rule it proves.

mod common;

use common::dns_server::TestDns;
use common::*;
use dialbackd::domain::Domain;
use dialbackd::tls::{client_config, PeerCert, ServerCerts};
use dialbackd::xml::{Limits, StreamEvent, StreamReader};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::io::Write;
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A directory for this test's certificates, removed when dropped.
struct Certs(PathBuf);

impl Certs {
    fn new(name: &str) -> Certs {
        let dir =
            std::env::temp_dir().join(format!("dialbackd-certs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Certs(dir)
    }

    /// A self-signed certificate for `domain`, made by the daemon's own gen-cert code.
    fn self_signed(&self, domain: &str) -> (PathBuf, PathBuf) {
        dialbackd::tls::gen_cert(&Domain::parse(domain).unwrap(), &self.0).unwrap()
    }

    /// A daemon hosting `domain` with component `(component, secret)`, presenting `domain`'s
    /// self-signed certificate; `more` is added to its `[tls]` section.
    fn daemon(
        &self,
        name: &str,
        ip: std::net::Ipv4Addr,
        (domain, component, secret): (&str, &str, &str),
        dns: std::net::SocketAddr,
        more: &str,
    ) -> Daemon {
        let tls = self.tls_section(domain, more);
        Daemon::start(
            name,
            ip,
            &config(&[domain], &[(component, secret)], dns, &tls),
        )
    }

    /// `[tls]` for a daemon presenting `domain`'s self-signed certificate.
    fn tls_section(&self, domain: &str, more: &str) -> String {
        let (c, k) = self.self_signed(domain);
        format!(
            "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\n{more}",
            c.display(),
            k.display()
        )
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn tls01_federation_over_starttls_with_self_signed_certificates() {
    let certs = Certs::new("fed");
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let (ia, ib) = (next_ip(), next_ip());
    let mut a = certs.daemon("a", ia, ("a.test", "echo.a.test", "sa"), dns.addr(), "");
    let b = certs.daemon("b", ib, ("b.test", "b.test", "sb"), dns.addr(), "");
    for (name, d) in [("a.test", &a), ("echo.a.test", &a), ("b.test", &b)] {
        publish(&dns, name, d.s2s());
    }
    let mut ca = ComponentClient::connect(a.component_addr(), "echo.a.test", "sa");
    let mut cb = ComponentClient::connect(b.component_addr(), "b.test", "sb");
    ca.send(
        "<message from='bot@echo.a.test' to='u@b.test' id='t1'><body>over tls</body></message>",
    );
    let m = cb.recv(WAIT).expect("delivered over TLS");
    assert_eq!(m.attr("id"), Some("t1"));
    cb.send("<message from='u@b.test' to='bot@echo.a.test' id='t2'/>");
    assert_eq!(
        ca.recv(WAIT)
            .and_then(|m| m.attr("id").map(str::to_string))
            .as_deref(),
        Some("t2")
    );
    // The operator can see what was accepted and why.
    a.wait_log("accepted under dialback mode");
    assert!(
        a.log_text().contains("self-signed"),
        "the log names the certificate's problem"
    );
}

#[test]
fn sec12_plaintext_peer_refused_when_encryption_required_accepted_otherwise() {
    let certs = Certs::new("plain");
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let (ib, ic, id) = (next_ip(), next_ip(), next_ip());
    let mut b = certs.daemon("b", ib, ("b.test", "b.test", "sb"), dns.addr(), "");
    let d = certs.daemon(
        "d",
        id,
        ("d.test", "d.test", "sd"),
        dns.addr(),
        "require_encryption = false\n",
    );
    // c.test has no TLS at all.
    let c = Daemon::start(
        "c",
        ic,
        &config(&["c.test"], &[("c.test", "sc")], dns.addr(), ""),
    );
    for (name, daemon) in [("b.test", &b), ("c.test", &c), ("d.test", &d)] {
        publish(&dns, name, daemon.s2s());
    }
    let mut cc = ComponentClient::connect(c.component_addr(), "c.test", "sc");
    let cb = ComponentClient::connect(b.component_addr(), "b.test", "sb");
    let cd = ComponentClient::connect(d.component_addr(), "d.test", "sd");
    cc.send("<message from='x@c.test' to='u@b.test' id='p1'/>");
    let bounce = cc.recv(WAIT).expect("refused by b.test");
    assert_eq!(
        (bounce.attr("id"), bounce.attr("type")),
        (Some("p1"), Some("error"))
    );
    b.wait_log("tried dialback without TLS and require_encryption is on");
    assert!(cb.recv(Duration::from_millis(500)).is_none());
    cc.send("<message from='x@c.test' to='u@d.test' id='p2'/>");
    let m = cd
        .recv(WAIT)
        .expect("accepted by d.test, which does not require encryption");
    assert_eq!(m.attr("id"), Some("p2"));
}

#[test]
fn dtls01_direct_tls_through_xmpps_server_records() {
    let certs = Certs::new("direct");
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let (ia, ib) = (next_ip(), next_ip());
    let mut a = certs.daemon("a", ia, ("a.test", "echo.a.test", "sa"), dns.addr(), "");
    let extra = certs.tls_section("b.test", "");
    let cfg = config(&["b.test"], &[("b.test", "sb")], dns.addr(), &extra).replace(
        "s2s = [\"{ip}:0\"]",
        "s2s = [\"{ip}:0\"]\ndirect_tls = [\"{ip}:0\"]",
    );
    let b = Daemon::start("b", ib, &cfg);
    publish(&dns, "a.test", a.s2s());
    publish(&dns, "echo.a.test", a.s2s());
    // Only a direct-TLS record for b.test (XEP-0368).
    dns.add_srv(
        "_xmpps-server._tcp.b.test",
        5,
        0,
        b.direct_tls().port(),
        "tls.b.test",
    );
    dns.add_a("tls.b.test", ib);
    let mut ca = ComponentClient::connect(a.component_addr(), "echo.a.test", "sa");
    let cb = ComponentClient::connect(b.component_addr(), "b.test", "sb");
    ca.send("<message from='bot@echo.a.test' to='u@b.test' id='d1'/>");
    assert_eq!(
        cb.recv(WAIT)
            .and_then(|m| m.attr("id").map(str::to_string))
            .as_deref(),
        Some("d1")
    );
    let line = a.wait_log("connected to");
    assert!(
        line.contains(&b.direct_tls().to_string()),
        "went to the xmpps-server target: {line}"
    );
    // DTLS-02: no STARTTLS inside direct TLS.
    assert_eq!(a.log_count("<starttls"), 0);
}

/// The PEM of a CA, and a certificate + key for `name` signed by it.
fn ca_and_leaf(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (ca_path, cert, key_path) = (
        dir.join("ca.pem"),
        dir.join(format!("{name}-ca.crt")),
        dir.join(format!("{name}-ca.key")),
    );
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca_path, cert, key_path)
}

/// Open a stream to `addr` as `from`, do STARTTLS presenting `certs`' certificate for `from`,
/// and return the stream after the restarted header and features.
fn starttls_as(addr: std::net::SocketAddr, from: &str, to: &str, certs: &ServerCerts) -> XmlConn {
    let mut sock = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.write_all(s2s_header(from, to, None).as_bytes())
        .unwrap();
    let mut r = StreamReader::new(sock.try_clone().unwrap(), Limits::default());
    assert!(matches!(r.next_event(), Ok(StreamEvent::Header(_))));
    let Ok(StreamEvent::Element(f)) = r.next_event() else {
        panic!("no features")
    };
    assert!(f.child("starttls", dialbackd::xml::TLS_NS).is_some());
    sock.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .unwrap();
    let Ok(StreamEvent::Element(p)) = r.next_event() else {
        panic!("no proceed")
    };
    assert_eq!(p.name, "proceed");
    let (_, leftover) = r.into_inner();
    assert!(leftover.is_empty());
    let cfg = client_config(certs, &Domain::parse(from).unwrap(), false).unwrap();
    let (_, mut conn) = XmlConn::over_tls(sock, cfg, to);
    conn.send(&s2s_header(from, to, None));
    let _ = conn.header();
    let _ = conn.element();
    conn
}

/// SEC-04 (CVE-2021-32919), XEP-0344: under pkix a certificate valid for a.test verifies
/// a.test without a callback, but authorises nothing for a piggybacked c.test.
#[test]
fn sec04_pkix_certificate_for_a_does_not_authorise_piggybacked_c() {
    let certs = Certs::new("pkix");
    let (ca, a_cert, a_key) = ca_and_leaf(&certs.0, "a.test");
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let ib = next_ip();
    let tls = certs.tls_section(
        "b.test",
        &format!("verify = \"pkix\"\nca_file = \"{}\"\n", ca.display()),
    );
    let mut b = Daemon::start(
        "b",
        ib,
        &config(&["b.test"], &[("b.test", "sb")], dns.addr(), &tls),
    );
    let cb = ComponentClient::connect(b.component_addr(), "b.test", "sb");
    let a_certs =
        ServerCerts::load(&[(Domain::parse("a.test").unwrap(), a_cert, a_key)], None).unwrap();
    let mut c = starttls_as(b.s2s(), "a.test", "b.test", &a_certs);
    // No a.test exists in DNS: a valid answer can only come from the certificate.
    c.send(&format!(
        "<db:result from='a.test' to='b.test'>{}</db:result>",
        "0".repeat(64)
    ));
    let r = c
        .element_where(WAIT, |e| e.name == "result")
        .expect("answer for a.test");
    assert_eq!(r.attr("type"), Some("valid"), "{r:?}");
    b.wait_log("verified without a callback");
    c.send(&format!(
        "<db:result from='c.test' to='b.test'>{}</db:result>",
        "0".repeat(64)
    ));
    let r = c
        .element_where(WAIT, |e| e.name == "result")
        .expect("answer for c.test");
    assert_ne!(
        r.attr("type"),
        Some("valid"),
        "a.test's certificate authorised c.test: {r:?}"
    );
    assert_eq!(r.attr("from"), Some("b.test"));
    assert_eq!(r.attr("to"), Some("c.test"));
    c.send("<message from='m@c.test' to='u@b.test' id='evil'/>");
    assert!(
        cb.recv(Duration::from_secs(1)).is_none(),
        "c.test's stanza was delivered"
    );
}

#[test]
fn tls01_plaintext_injected_after_starttls_is_policy_violation() {
    let certs = Certs::new("inject");
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let ib = next_ip();
    let b = Daemon::start(
        "b",
        ib,
        &config(
            &["b.test"],
            &[],
            dns.addr(),
            &certs.tls_section("b.test", ""),
        ),
    );
    let mut c = XmlConn::connect(b.s2s());
    c.send(&s2s_header("a.test", "b.test", None));
    let _ = c.header();
    let _ = c.element();
    c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message from='x@a.test' to='y@b.test'/>");
    let e = c.element();
    assert_eq!(e.name, "error", "no <proceed/>: {e:?}");
    assert!(
        e.child("policy-violation", "urn:ietf:params:xml:ns:xmpp-streams")
            .is_some(),
        "{e:?}"
    );
}

/// SEC-12: a man in the middle strips STARTTLS from the features; we require encryption,
/// so we refuse and send nothing (no key in the clear).
#[test]
fn sec12_stripped_starttls_is_refused_and_nothing_is_sent() {
    let certs = Certs::new("strip");
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let (ia, ic) = (next_ip(), next_ip());
    let fake = FakeServer::bind(ic);
    publish(&dns, "c.test", fake.addr());
    let mut a = certs.daemon("a", ia, ("a.test", "echo.a.test", "sa"), dns.addr(), "");
    let mut ca = ComponentClient::connect(a.component_addr(), "echo.a.test", "sa");
    ca.send("<message from='bot@echo.a.test' to='u@c.test' id='s1'/>");
    let mut c = fake.accept();
    let _ = c.header();
    c.send(&s2s_header("c.test", "echo.a.test", Some("mitm")));
    c.send("<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>");
    let e = c.element();
    assert_eq!(e.name, "error", "expected a stream error, got {e:?}");
    assert!(e
        .child("policy-violation", "urn:ietf:params:xml:ns:xmpp-streams")
        .is_some());
    assert!(
        c.element_where(Duration::from_millis(500), |e| e.name == "result")
            .is_none(),
        "a key went out in the clear"
    );
    let b = ca.recv(WAIT).expect("bounce");
    assert_eq!((b.attr("id"), b.attr("type")), (Some("s1"), Some("error")));
    a.wait_log("offered no STARTTLS and require_encryption is on");
}

#[test]
fn fingerprint_pins_refuse_a_mismatch_and_accept_the_pinned_key() {
    let certs = Certs::new("pin");
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let (ia, ib) = (next_ip(), next_ip());
    let (b_cert, b_key) = certs.self_signed("b.test");
    let b_tls = format!(
        "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\n",
        b_cert.display(),
        b_key.display()
    );
    let b = Daemon::start(
        "b",
        ib,
        &config(&["b.test"], &[("b.test", "sb")], dns.addr(), &b_tls),
    );
    publish(&dns, "b.test", b.s2s());
    let pem = std::fs::read(&b_cert).unwrap();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    let right = PeerCert::from_chain(vec![der]).unwrap().spki_sha256_hex();
    let wrong = "ab".repeat(32);
    let (a_cert, a_key) = certs.self_signed("a.test");
    for (pin, delivered) in [(wrong.as_str(), false), (right.as_str(), true)] {
        let tls = format!(
            "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\n[tls.peers.\"b.test\"]\nfingerprints = [\"sha256:{pin}\"]\n",
            a_cert.display(),
            a_key.display()
        );
        let mut a = Daemon::start(
            "a",
            ia,
            &config(&["a.test"], &[("echo.a.test", "sa")], dns.addr(), &tls),
        );
        if delivered {
            // Only this instance ever completes dialback, so only it needs to be found
            // (the refused one never reaches the callback).
            publish(&dns, "echo.a.test", a.s2s());
        }
        let mut ca = ComponentClient::connect(a.component_addr(), "echo.a.test", "sa");
        ca.send("<message from='bot@echo.a.test' to='u@b.test' id='f1'/>");
        if delivered {
            let cb = ComponentClient::connect(b.component_addr(), "b.test", "sb");
            ca.send("<message from='bot@echo.a.test' to='u@b.test' id='f2'/>");
            assert!(cb.element_ids(2).contains(&"f2".to_string()));
        } else {
            let r = ca.recv(WAIT).expect("bounce");
            assert_eq!((r.attr("id"), r.attr("type")), (Some("f1"), Some("error")));
            assert_eq!(
                error_condition(&r).as_deref(),
                Some("remote-server-timeout"),
                "{r:?}"
            );
            a.wait_log("does not match its pinned fingerprint");
        }
        drop(a);
    }
}

use rustls::pki_types::pem::PemObject;

trait Ids {
    fn element_ids(&self, n: usize) -> Vec<String>;
}

impl Ids for ComponentClient {
    fn element_ids(&self, n: usize) -> Vec<String> {
        (0..n)
            .filter_map(|_| self.recv(WAIT))
            .filter_map(|e| e.attr("id").map(str::to_string))
            .collect()
    }
}
