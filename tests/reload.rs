//! Reloading the configuration on SIGHUP, against real daemons: established streams keep
//! flowing while new ones get the new certificate; a configuration that fails is refused with
//! the start-up error and the one in force keeps serving; a new component secret applies to
//! the next component connection.

mod common;

use common::dns_server::TestDns;
use common::*;
use dialbackd::domain::Domain;
use dialbackd::tls::{client_config_without_cert, PeerCert};
use dialbackd::xml::{Limits, StreamEvent, StreamReader, TLS_NS};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

/// A directory for this test's certificates, removed when dropped.
struct Certs(PathBuf);

impl Certs {
    fn new(name: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!(
            "dialbackd-reload-certs-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Certs(dir)
    }

    /// A new self-signed certificate and key for `domain`, in the subdirectory `sub`.
    fn make(&self, domain: &str, sub: &str) -> (PathBuf, PathBuf) {
        dialbackd::tls::gen_cert(&Domain::parse(domain).unwrap(), &self.0.join(sub)).unwrap()
    }

    /// Copy `pair` to the files the daemon's configuration names (`live/`), as a certificate
    /// renewal does; returns those files.
    fn install(&self, pair: &(PathBuf, PathBuf)) -> (PathBuf, PathBuf) {
        let live = self.0.join("live");
        std::fs::create_dir_all(&live).unwrap();
        let (cert, key) = (live.join("server.crt"), live.join("server.key"));
        std::fs::copy(&pair.0, &cert).unwrap();
        std::fs::copy(&pair.1, &key).unwrap();
        (cert, key)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `[tls]` presenting this certificate and key.
fn tls_section((cert, key): &(PathBuf, PathBuf)) -> String {
    format!(
        "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// The SHA-256 of the public key of the certificate in the PEM file `cert`.
fn spki_of(cert: &Path) -> String {
    let der = CertificateDer::from_pem_file(cert).unwrap();
    PeerCert::from_chain(vec![der]).unwrap().spki_sha256_hex()
}

/// Open a new stream to `addr` for `to`, do STARTTLS, and return the SHA-256 of the public
/// key of the certificate the daemon presented.
fn presented(addr: SocketAddr, to: &str) -> String {
    let mut sock = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.write_all(s2s_header("x.test", to, None).as_bytes())
        .unwrap();
    let mut r = StreamReader::new(sock.try_clone().unwrap(), Limits::default());
    assert!(matches!(r.next_event(), Ok(StreamEvent::Header(_))));
    let Ok(StreamEvent::Element(f)) = r.next_event() else {
        panic!("no features")
    };
    assert!(f.child("starttls", TLS_NS).is_some(), "{f:?}");
    sock.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .unwrap();
    let Ok(StreamEvent::Element(p)) = r.next_event() else {
        panic!("no proceed")
    };
    assert_eq!(p.name, "proceed");
    let (_, leftover) = r.into_inner();
    assert!(leftover.is_empty());
    let (cert, _conn) = XmlConn::over_tls(sock, client_config_without_cert(false).unwrap(), to);
    cert.expect("a certificate").spki_sha256_hex()
}

/// Send SIGHUP to `d`.
fn hup(d: &Daemon) {
    let pid = libc::pid_t::try_from(d.pid()).unwrap();
    // SAFETY: kill(2) with a PID this test started and still owns; it reads no memory of ours.
    let rc = unsafe { libc::kill(pid, libc::SIGHUP) };
    assert_eq!(rc, 0, "kill -HUP {pid}");
}

/// Rewrite `d`'s configuration file with `f` applied to its text.
fn rewrite(d: &Daemon, f: impl FnOnce(String) -> String) {
    let path = d.dir.join("dialbackd.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, f(text)).unwrap();
}

/// `from` sends a message with `id` to `to`'s domain; `to` receives it.
fn deliver(from: &mut ComponentClient, sender: &str, to: &ComponentClient, rcpt: &str, id: &str) {
    from.send(&format!(
        "<message from='{sender}' to='{rcpt}' id='{id}'><body>{id}</body></message>"
    ));
    let m = to
        .recv(WAIT)
        .unwrap_or_else(|| panic!("{id} not delivered"));
    assert_eq!(m.attr("id"), Some(id), "{m:?}");
}

/// Outbound connections both daemons made so far (pair streams and verify connections).
fn dials(a: &Daemon, b: &Daemon) -> usize {
    a.log_count(": connecting to ") + b.log_count(": connecting to ")
}

#[test]
fn a_reload_swaps_the_certificate_for_new_streams_and_established_ones_keep_flowing() {
    let certs = Certs::new("swap");
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let a_pair = certs.make("a.test", "a");
    let (one, two) = (certs.make("b.test", "one"), certs.make("b.test", "two"));
    let b_pair = certs.install(&one);
    let mut a = Daemon::start(
        "a",
        next_ip(),
        &config(
            &["a.test"],
            &[("echo.a.test", "sa")],
            dns.addr(),
            &tls_section(&a_pair),
        ),
    );
    let mut b = Daemon::start(
        "b",
        next_ip(),
        &config(
            &["b.test"],
            &[("b.test", "sb")],
            dns.addr(),
            &tls_section(&b_pair),
        ),
    );
    for (name, d) in [("a.test", &a), ("echo.a.test", &a), ("b.test", &b)] {
        publish(&dns, name, d.s2s());
    }
    let mut ca = ComponentClient::connect(a.component_addr(), "echo.a.test", "sa");
    let mut cb = ComponentClient::connect(b.component_addr(), "b.test", "sb");
    // Both directions up, over STARTTLS.
    deliver(&mut ca, "bot@echo.a.test", &cb, "u@b.test", "m1");
    deliver(&mut cb, "u@b.test", &ca, "bot@echo.a.test", "r1");
    a.wait_log("accepted under dialback mode");
    let before = dials(&a, &b);
    assert!(before >= 2, "a→b and b→a were dialled");
    assert_eq!(presented(b.s2s(), "b.test"), spki_of(&one.0));

    // The certificate is renewed under the same file names.
    certs.install(&two);
    hup(&b);
    b.wait_log("configuration reloaded");
    // Established streams keep flowing: nothing was dialled again.
    deliver(&mut ca, "bot@echo.a.test", &cb, "u@b.test", "m2");
    deliver(&mut cb, "u@b.test", &ca, "bot@echo.a.test", "r2");
    assert_eq!(
        dials(&a, &b),
        before,
        "a stream was opened again\n{}\n{}",
        a.log_text(),
        b.log_text()
    );
    // The next new stream gets the new certificate.
    let now = presented(b.s2s(), "b.test");
    assert_eq!(now, spki_of(&two.0));
    assert_ne!(now, spki_of(&one.0));
}

#[test]
fn a_configuration_that_fails_is_refused_and_the_one_in_force_keeps_serving() {
    let certs = Certs::new("broken");
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let one = certs.make("b.test", "one");
    let b_pair = certs.install(&one);
    let mut b = Daemon::start(
        "b",
        next_ip(),
        &config(
            &["b.test"],
            &[("b.test", "sb")],
            dns.addr(),
            &tls_section(&b_pair),
        ),
    );
    let file = b.dir.join("dialbackd.toml").display().to_string();
    let fingerprint = presented(b.s2s(), "b.test");

    // A value start-up refuses: the same error, naming the file and the key, at error level.
    rewrite(&b, |t| format!("{t}[limits]\nstanza_size = 500\n"));
    hup(&b);
    let line = b.wait_log("configuration not reloaded");
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&format!(
            "{file}: limits.stanza_size: must be at least 10000"
        )),
        "{line}"
    );

    // A valid file, but the certificate it names cannot be loaded.
    rewrite(&b, |t| t.replace("[limits]\nstanza_size = 500\n", ""));
    std::fs::write(&b_pair.0, "not a certificate").unwrap();
    hup(&b);
    let line = b.wait_log("configuration not reloaded");
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&file) && line.contains(&b_pair.0.display().to_string()),
        "{line}"
    );

    // The configuration in force serves on: the same certificate (the file on disk is
    // broken now), the component with its secret.
    assert_eq!(presented(b.s2s(), "b.test"), fingerprint);
    let mut c = ComponentClient::connect(b.component_addr(), "b.test", "sb");
    c.send("<iq type='get' id='p1' from='b.test' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>");
    let r = c.recv(WAIT).expect("ping answered");
    assert_eq!((r.attr("id"), r.attr("type")), (Some("p1"), Some("result")));
    assert_eq!(b.log_count("configuration reloaded"), 0);
    b.assert_alive();
}

/// Connect a component for `domain` with `secret`; the stream error it gets, if any.
fn component_refusal(addr: SocketAddr, domain: &str, secret: &str) -> Option<String> {
    let mut conn = XmlConn::connect(addr);
    conn.send(&format!(
        "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
    ));
    let id = conn.header().id.expect("stream id");
    let digest = dialbackd::stream::component::handshake_digest(&id, secret);
    conn.send(&format!("<handshake>{digest}</handshake>"));
    let e = conn.element();
    (e.name == "error").then(|| stream_condition(&e))
}

/// A ping from `c` (component `domain`) to the hosted domain `host` is answered.
fn ping(c: &mut ComponentClient, domain: &str, host: &str, id: &str) {
    c.send(&format!(
        "<iq type='get' id='{id}' from='{domain}' to='{host}'><ping xmlns='urn:xmpp:ping'/></iq>"
    ));
    let r = c.recv(WAIT).expect("ping answered");
    assert_eq!((r.attr("id"), r.attr("type")), (Some(id), Some("result")));
}

#[test]
fn a_new_component_secret_applies_to_the_next_component_connection() {
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let mut b = Daemon::start(
        "b",
        next_ip(),
        &format!(
            "dialback_secret = \"first\"\n{}",
            config(&["b.test"], &[("echo.b.test", "old")], dns.addr(), "")
        ),
    );
    let mut c1 = ComponentClient::connect(b.component_addr(), "echo.b.test", "old");
    let c1_addr = c1.conn.socket().unwrap().local_addr().unwrap();
    rewrite(&b, |t| {
        t.replace("secret = \"old\"", "secret = \"new\"").replace(
            "dialback_secret = \"first\"",
            "dialback_secret = \"second\"",
        )
    });
    hup(&b);
    let line = b.wait_log("configuration reloaded");
    assert!(line.contains("changed: components"), "{line}");
    // The dialback secret in force stays (keys in flight must still verify), and the log
    // says so.
    b.wait_log_count("needs a restart: dialback_secret", 1);

    // The component already connected keeps its stream.
    ping(&mut c1, "echo.b.test", "b.test", "p1");
    // A new connection with the old secret is refused, with the new one accepted.
    assert_eq!(
        component_refusal(b.component_addr(), "echo.b.test", "old").as_deref(),
        Some("not-authorized")
    );
    drop(c1);
    b.wait_until("the first component's stream ended", |log| {
        log.iter()
            .any(|l| l.contains(&format!("component {c1_addr} ")) && l.contains("stream ended"))
    });
    let mut c2 = ComponentClient::connect(b.component_addr(), "echo.b.test", "new");
    ping(&mut c2, "echo.b.test", "b.test", "p2");
}
