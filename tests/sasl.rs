//! SASL EXTERNAL (XEP-0178) between two real daemons on loopback, with a CA and certificates
//! made by the test (standards.md SASL-01): federation by EXTERNAL in both directions, the
//! fallback to dialback on the same stream when EXTERNAL fails, and `auth = "external"`.

mod common;

use common::dns_server::TestDns;
use common::*;
use dialbackd::domain::Domain;
use dialbackd::tls::{client_config, client_config_without_cert, ServerCerts};
use dialbackd::xml::{Element, Limits, StreamEvent, StreamReader, TLS_NS};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SASL_NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

/// A directory for this test's certificates, removed when dropped.
struct Certs(PathBuf);

impl Certs {
    fn new(name: &str) -> Certs {
        let dir =
            std::env::temp_dir().join(format!("dialbackd-sasl-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Certs(dir)
    }

    /// A test CA (written to `ca.pem`) and a certificate + key it signs for each of `names`.
    fn ca_and_leaves(&self, names: &[&str]) -> (PathBuf, Vec<(PathBuf, PathBuf)>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_path = self.0.join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let leaves = names
            .iter()
            .map(|name| {
                let key = KeyPair::generate().unwrap();
                let leaf = CertificateParams::new(vec![name.to_string()])
                    .unwrap()
                    .signed_by(&key, &ca)
                    .unwrap();
                let (c, k) = (
                    self.0.join(format!("{name}.crt")),
                    self.0.join(format!("{name}.key")),
                );
                std::fs::write(&c, leaf.pem()).unwrap();
                std::fs::write(&k, key.serialize_pem()).unwrap();
                (c, k)
            })
            .collect();
        (ca_path, leaves)
    }

    /// A self-signed certificate for `domain` (`dialbackd gen-cert`), in its own directory.
    fn self_signed(&self, domain: &str) -> (PathBuf, PathBuf) {
        let dir = self.0.join("self-signed");
        dialbackd::tls::gen_cert(&Domain::parse(domain).unwrap(), &dir).unwrap()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `[tls]` presenting `(cert, key)`, trusting `ca`, with `more` lines.
fn tls(cert: &Path, key: &Path, ca: &Path, more: &str) -> String {
    format!(
        "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\nca_file = \"{}\"\n{more}",
        cert.display(),
        key.display(),
        ca.display()
    )
}

/// A daemon hosting `domain`, whose component is `domain` itself (secret "s"), with `tls`.
fn daemon(name: &str, domain: &str, dns: &TestDns, tls: &str) -> Daemon {
    let d = Daemon::start(
        name,
        next_ip(),
        &config(&[domain], &[(domain, "s")], dns.addr(), tls),
    );
    publish(dns, domain, d.s2s());
    d
}

/// Send a message from `from`'s component to `to`'s and return what `to`'s component got.
fn exchange(from: &mut ComponentClient, to: &ComponentClient, id: &str) -> Option<String> {
    from.send(&format!(
        "<message from='u@{}' to='v@{}' id='{id}'><body>hi</body></message>",
        from.domain, to.domain
    ));
    to.recv(WAIT).and_then(|m| m.attr("id").map(str::to_string))
}

#[test]
fn sasl01_two_daemons_federate_by_sasl_external_in_both_directions() {
    let certs = Certs::new("both");
    let (ca, leaves) = certs.ca_and_leaves(&["a.test", "b.test"]);
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let pkix = "verify = \"pkix\"\n";
    let a = daemon(
        "a",
        "a.test",
        &dns,
        &(tls(&leaves[0].0, &leaves[0].1, &ca, pkix) + STATUS),
    );
    let b = daemon(
        "b",
        "b.test",
        &dns,
        &(tls(&leaves[1].0, &leaves[1].1, &ca, pkix) + STATUS),
    );
    let mut ca_ = ComponentClient::connect(a.component_addr(), "a.test", "s");
    let mut cb = ComponentClient::connect(b.component_addr(), "b.test", "s");
    assert_eq!(exchange(&mut ca_, &cb, "ab").as_deref(), Some("ab"));
    assert_eq!(exchange(&mut cb, &ca_, "ba").as_deref(), Some("ba"));
    // Each side authenticated its outbound stream by EXTERNAL, and accepted the other's.
    for (d, local, remote) in [(&a, "a.test", "b.test"), (&b, "b.test", "a.test")] {
        d.wait_log_count(
            &format!("{local}→{remote} authenticated by SASL EXTERNAL, "),
            1,
        );
        d.wait_log_count(
            &format!("{remote}→{local} authenticated by SASL EXTERNAL"),
            1,
        );
    }
    for d in [&a, &b] {
        assert_eq!(
            d.log_count("authenticated by dialback") + d.log_count("verified by dialback"),
            0,
            "{}: dialback was used:\n{}",
            d.name,
            d.log_text()
        );
    }
    // What the operator sees: one EXTERNAL success each way on each side, no failure, and
    // both streams' rows say EXTERNAL.
    for d in [&a, &b] {
        for way in ["inbound", "outbound"] {
            let series = |outcome| {
                format!(
                    "dialbackd_sasl_external_total{{direction=\"{way}\",outcome=\"{outcome}\"}}"
                )
            };
            assert_eq!(
                d.wait_metric(&series("success"), |n| n >= 1),
                1,
                "{}",
                d.name
            );
            assert_eq!(d.wait_metric(&series("failure"), |_| true), 0, "{}", d.name);
        }
        for direction in ["s2s_in", "s2s_out"] {
            d.wait_status_row(&[
                ("direction", direction),
                ("state", "open"),
                ("auth", "external"),
            ]);
        }
    }
}

#[test]
fn sasl01_failed_external_falls_back_to_dialback_on_the_same_stream() {
    let certs = Certs::new("fallback");
    let (ca, leaves) = certs.ca_and_leaves(&["a.test"]);
    let (b_cert, b_key) = certs.self_signed("b.test");
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    // a.test has a CA-signed certificate and tries EXTERNAL; b.test checks certificates in
    // dialback mode, where a certificate proves nothing: EXTERNAL fails, dialback follows.
    let a = daemon(
        "a",
        "a.test",
        &dns,
        &(tls(&leaves[0].0, &leaves[0].1, &ca, "") + STATUS),
    );
    let b = daemon(
        "b",
        "b.test",
        &dns,
        &(tls(&b_cert, &b_key, &ca, "") + STATUS),
    );
    let mut ca_ = ComponentClient::connect(a.component_addr(), "a.test", "s");
    let cb = ComponentClient::connect(b.component_addr(), "b.test", "s");
    assert_eq!(exchange(&mut ca_, &cb, "fb").as_deref(), Some("fb"));
    b.wait_log_count("SASL EXTERNAL for a.test failed", 1);
    a.wait_log_count("SASL EXTERNAL with b.test failed (not-authorized", 1);
    a.wait_log_count("a.test→b.test authenticated by dialback", 1);
    b.wait_log_count("a.test→b.test verified by dialback", 1);
    // The fallback ran on the stream EXTERNAL failed on: the same stream label in both lines.
    let label = |needle: &str| {
        let text = b.log_text();
        let line = text
            .lines()
            .find(|l| l.contains(needle))
            .unwrap()
            .to_string();
        let after = line.split_once("] ").map_or(line.as_str(), |(_, r)| r);
        after.split_once(": ").unwrap().0.to_string()
    };
    assert_eq!(
        label("SASL EXTERNAL for a.test failed"),
        label("a.test→b.test verified by dialback")
    );
    // What the operator sees: the failure counted on both sides, and the pair's rows say
    // dialback.
    let series = |way, outcome| {
        format!("dialbackd_sasl_external_total{{direction=\"{way}\",outcome=\"{outcome}\"}}")
    };
    assert_eq!(b.wait_metric(&series("inbound", "failure"), |n| n >= 1), 1);
    assert_eq!(b.wait_metric(&series("inbound", "success"), |_| true), 0);
    assert_eq!(a.wait_metric(&series("outbound", "failure"), |n| n >= 1), 1);
    assert_eq!(a.wait_metric(&series("outbound", "success"), |_| true), 0);
    a.wait_status_row(&[("direction", "s2s_out"), ("auth", "dialback")]);
    b.wait_status_row(&[("direction", "s2s_in"), ("auth", "dialback")]);
}

#[test]
fn sasl01_external_required_refuses_dialback_and_the_stanza_bounces() {
    let certs = Certs::new("required");
    let (ca, leaves) = certs.ca_and_leaves(&["b.test"]);
    let (a_cert, a_key) = certs.self_signed("a.test");
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let a = daemon("a", "a.test", &dns, &tls(&a_cert, &a_key, &ca, ""));
    let required = "[tls.peers.\"a.test\"]\nverify = \"pkix\"\nauth = \"external\"\n";
    let b = daemon(
        "b",
        "b.test",
        &dns,
        &tls(&leaves[0].0, &leaves[0].1, &ca, required),
    );
    let mut ca_ = ComponentClient::connect(a.component_addr(), "a.test", "s");
    let cb = ComponentClient::connect(b.component_addr(), "b.test", "s");
    ca_.send("<message from='u@a.test' to='v@b.test' id='r1'><body>hi</body></message>");
    let bounce = ca_.recv(WAIT).expect("the message bounces");
    assert_eq!(
        (bounce.attr("id"), bounce.attr("type")),
        (Some("r1"), Some("error")),
        "{bounce:?}"
    );
    assert!(cb.recv(std::time::Duration::from_millis(300)).is_none());
    b.wait_log_count("SASL EXTERNAL for a.test failed", 1);
    b.wait_log_count("SASL EXTERNAL is required of it", 1);
    assert_eq!(b.log_count("verifying a.test"), 0, "no callback was made");
}

/// Open a stream to `addr` as `from`, do STARTTLS with the client configuration `cfg`, and
/// return the stream and the features after the restart.
fn starttls_with(
    addr: SocketAddr,
    from: &str,
    to: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> (XmlConn, Element) {
    let mut sock = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.write_all(s2s_header(from, to, None).as_bytes())
        .unwrap();
    let mut r = StreamReader::new(sock.try_clone().unwrap(), Limits::default());
    assert!(matches!(r.next_event(), Ok(StreamEvent::Header(_))));
    let Ok(StreamEvent::Element(f)) = r.next_event() else {
        panic!("no features")
    };
    assert!(
        f.child("mechanisms", SASL_NS).is_none(),
        "SASL before TLS: {f:?}"
    );
    sock.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .unwrap();
    let Ok(StreamEvent::Element(p)) = r.next_event() else {
        panic!("no proceed")
    };
    assert!(p.is("proceed", TLS_NS));
    let (_, mut conn) = XmlConn::over_tls(sock, cfg, to);
    conn.send(&s2s_header(from, to, None));
    let _ = conn.header();
    let features = conn.element();
    (conn, features)
}

fn offers_external(f: &Element) -> bool {
    f.child("mechanisms", SASL_NS).is_some_and(|m| {
        m.elements()
            .any(|c| c.name == "mechanism" && c.text() == "EXTERNAL")
    })
}

/// The next SASL answer on `c`: its name and its condition.
fn sasl_answer(c: &XmlConn) -> (String, Option<String>) {
    let e = c
        .element_where(WAIT, |e| e.ns == SASL_NS)
        .expect("a SASL answer");
    let cond = e
        .elements()
        .find(|c| c.name != "text")
        .map(|c| c.name.clone());
    (e.name.clone(), cond)
}

#[test]
fn sasl01_wire_offer_only_with_a_client_certificate_and_clear_failures() {
    let certs = Certs::new("wire");
    let (ca, leaves) = certs.ca_and_leaves(&["a.test", "b.test"]);
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let b = daemon(
        "b",
        "b.test",
        &dns,
        &tls(&leaves[1].0, &leaves[1].1, &ca, "verify = \"pkix\"\n"),
    );
    // No client certificate: no EXTERNAL, dialback only.
    let (_, f) = starttls_with(
        b.s2s(),
        "a.test",
        "b.test",
        client_config_without_cert(false).unwrap(),
    );
    assert!(!offers_external(&f), "{f:?}");
    assert!(f.child("dialback", "urn:xmpp:features:dialback").is_some());

    let a = Domain::parse("a.test").unwrap();
    let a_certs = ServerCerts::load(
        &[(a.clone(), leaves[0].0.clone(), leaves[0].1.clone())],
        None,
    )
    .unwrap();
    let (mut c, f) = starttls_with(
        b.s2s(),
        "a.test",
        "b.test",
        client_config(&a_certs, &a, false).unwrap(),
    );
    assert!(offers_external(&f), "{f:?}");
    let auth = |body: &str| format!("<auth xmlns='{SASL_NS}' mechanism='EXTERNAL'>{body}</auth>");
    c.send(&auth("not base64!"));
    assert_eq!(
        sasl_answer(&c),
        ("failure".into(), Some("incorrect-encoding".into()))
    );
    // base64("c.test"): not the stream's from.
    c.send(&auth("Yy50ZXN0"));
    assert_eq!(
        sasl_answer(&c),
        ("failure".into(), Some("invalid-authzid".into()))
    );
    c.send(&auth("="));
    assert_eq!(sasl_answer(&c), ("success".into(), None));
    b.wait_log_count("a.test→b.test authenticated by SASL EXTERNAL", 1);
}
