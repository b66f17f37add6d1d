//! Loopback tests (127.0.0.1 only; every wait bounded by socket timeouts).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, PublicKeyData,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use super::*;

const TIMEOUT: Duration = Duration::from_secs(10);

fn d(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

/// A unique temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "dialbackd-tls-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SHA-256 of the SPKI of the key in a PEM key file, computed with rcgen + ring only.
fn key_spki_sha256(key_path: &Path) -> [u8; 32] {
    let pem = std::fs::read_to_string(key_path).unwrap();
    let key = KeyPair::from_pem(&pem).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info());
    digest.as_ref().try_into().unwrap()
}

/// Self-signed certificates for a.test and b.test, loaded in that order.
fn two_domains(dir: &TempDir) -> (ServerCerts, [(PathBuf, PathBuf); 2]) {
    let a = gen_cert(&d("a.test"), &dir.0).unwrap();
    let b = gen_cert(&d("b.test"), &dir.0).unwrap();
    let certs = ServerCerts::load(
        &[
            (d("a.test"), a.0.clone(), a.1.clone()),
            (d("b.test"), b.0.clone(), b.1.clone()),
        ],
        None,
    )
    .unwrap();
    (certs, [a, b])
}

/// A connected pair of loopback sockets with timeouts: (client, server).
fn socket_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    for sock in [&c, &s] {
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        sock.set_write_timeout(Some(TIMEOUT)).unwrap();
    }
    (c, s)
}

/// Run a client on a thread and a server here; the server's first read drives its handshake.
/// Returns (client info, server info, what the server read).
fn handshake_pair(
    ccfg: Arc<rustls::ClientConfig>,
    scfg: Arc<rustls::ServerConfig>,
    sni: &Domain,
) -> (HandshakeInfo, HandshakeInfo, Vec<u8>) {
    let (c, s) = socket_pair();
    let sni = sni.clone();
    let client = thread::spawn(move || {
        let mut tls = TlsStream::connect(c, ccfg, &sni).unwrap();
        let info = tls.handshake().unwrap();
        tls.writer.write_all(b"<stream>").unwrap();
        // Wait for the server's answer so the socket outlives the server's reads.
        let mut buf = [0u8; 2];
        tls.reader.read_exact(&mut buf).unwrap();
        info
    });
    let mut tls = TlsStream::accept(s, scfg).unwrap();
    assert!(
        tls.reader.info().is_none(),
        "no handshake before the first read"
    );
    let mut got = vec![0u8; 8];
    tls.reader.read_exact(&mut got).unwrap();
    let sinfo = tls.reader.info().expect("handshake complete after a read");
    tls.writer.write_all(b"ok").unwrap();
    let cinfo = client.join().unwrap();
    (cinfo, sinfo, got)
}

#[test]
fn halves_are_send() {
    fn send<T: Send>() {}
    fn send_sync_clone<T: Send + Sync + Clone>() {}
    send::<TlsReader>();
    send_sync_clone::<TlsWriter>();
    send::<TlsStream>();
    send_sync_clone::<PeerCert>();
    send_sync_clone::<ServerCerts>();
}

#[test]
fn gen_cert_and_load() {
    let dir = TempDir::new("load");
    let (crt, key) = gen_cert(&d("a.test"), &dir.0).unwrap();
    assert_eq!(crt, dir.0.join("a.test.crt"));
    assert_eq!(key, dir.0.join("a.test.key"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let certs = ServerCerts::load(&[(d("a.test"), crt.clone(), key.clone())], None).unwrap();
    assert!(format!("{certs:?}").contains("a.test"));
    // The loaded certificate carries the generated key, and is valid for its name.
    let chain: Vec<_> = CertificateDer::pem_file_iter(&crt)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let pc = PeerCert::from_chain(chain).unwrap();
    assert_eq!(pc.spki_sha256(), Some(key_spki_sha256(&key)));
    assert_eq!(pc.spki_sha256_hex().len(), 64);

    // Refuses to overwrite, and leaves the files alone.
    let before = std::fs::read(&crt).unwrap();
    let e = gen_cert(&d("a.test"), &dir.0).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(std::fs::read(&crt).unwrap(), before);

    // A key that belongs to another certificate.
    let (_, bkey) = gen_cert(&d("b.test"), &dir.0).unwrap();
    let e = ServerCerts::load(&[(d("a.test"), crt.clone(), bkey.clone())], None).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&bkey.display().to_string()), "{msg}");
    assert!(msg.contains("does not match certificate"), "{msg}");
    assert!(msg.contains("a.test"), "{msg}");

    // Missing files are named.
    let missing = dir.0.join("missing.crt");
    let e = ServerCerts::load(&[(d("a.test"), missing.clone(), key.clone())], None).unwrap_err();
    assert!(e.to_string().starts_with("certificate "), "{e}");
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );
    let e = ServerCerts::load(&[], Some((&crt, &missing))).unwrap_err();
    assert!(e.to_string().starts_with("key "), "{e}");
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );

    // Files without PEM.
    let junk = dir.0.join("junk.pem");
    std::fs::write(&junk, "not pem at all\n").unwrap();
    let e = ServerCerts::load(&[(d("a.test"), junk.clone(), key.clone())], None).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("certificate {}: no PEM certificate found", junk.display())
    );
    let e = ServerCerts::load(&[(d("a.test"), crt.clone(), junk.clone())], None).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("key {}: no PEM private key found", junk.display())
    );

    // Nothing configured at all.
    assert!(ServerCerts::load(&[], None).is_err());
    // The default pair alone is enough.
    assert!(ServerCerts::load(&[], Some((&crt, &key))).is_ok());
    // IP literals cannot get a generated certificate.
    assert!(gen_cert(&d("[::1]"), &dir.0).is_err());
}

#[test]
fn loopback_sni_and_client_certificate() {
    let dir = TempDir::new("loop");
    let (certs, [(_, akey), (_, bkey)]) = two_domains(&dir);
    let scfg = server_config(&certs).unwrap();
    let ccfg = client_config(&certs, &d("a.test"), false).unwrap();
    let (cinfo, sinfo, got) = handshake_pair(ccfg, scfg, &d("b.test"));
    assert_eq!(got, b"<stream>");
    // The client asked for b.test and got b.test's certificate.
    assert_eq!(sinfo.sni.as_deref(), Some("b.test"));
    assert_eq!(cinfo.sni.as_deref(), Some("b.test"));
    let server_cert = cinfo.peer_cert.expect("server certificate");
    assert_eq!(server_cert.chain_len(), 1);
    assert_eq!(server_cert.spki_sha256(), Some(key_spki_sha256(&bkey)));
    // The server saw the client's a.test certificate.
    let client_cert = sinfo.peer_cert.expect("client certificate");
    assert_eq!(client_cert.spki_sha256(), Some(key_spki_sha256(&akey)));
    assert_eq!(sinfo.version, "TLSv1.3");
    assert_eq!(cinfo.version, "TLSv1.3");
    assert_eq!(sinfo.alpn, None);
}

#[test]
fn no_sni_falls_back_to_hint_then_first_domain() {
    let dir = TempDir::new("nosni");
    let (certs, [(_, akey), (_, bkey)]) = two_domains(&dir);
    // An IP literal as the peer's name: rustls sends no SNI.
    let ip = d("[::1]");
    let ccfg = client_config(&certs, &d("a.test"), false).unwrap();
    let (cinfo, sinfo, _) = handshake_pair(ccfg.clone(), server_config(&certs).unwrap(), &ip);
    assert_eq!(sinfo.sni, None);
    assert_eq!(cinfo.sni, None);
    let spki = cinfo.peer_cert.unwrap().spki_sha256();
    assert_eq!(
        spki,
        Some(key_spki_sha256(&akey)),
        "first configured domain"
    );

    let scfg = server_config_for(&certs, Some(&d("b.test"))).unwrap();
    let (cinfo, _, _) = handshake_pair(ccfg.clone(), scfg, &ip);
    let spki = cinfo.peer_cert.unwrap().spki_sha256();
    assert_eq!(spki, Some(key_spki_sha256(&bkey)), "the stream's `to`");

    // An SNI we do not host gets the first domain's certificate too (no default).
    let (cinfo, sinfo, _) = handshake_pair(ccfg, server_config(&certs).unwrap(), &d("c.test"));
    assert_eq!(sinfo.sni.as_deref(), Some("c.test"));
    let spki = cinfo.peer_cert.unwrap().spki_sha256();
    assert_eq!(spki, Some(key_spki_sha256(&akey)));
}

/// The stream header's `to` (known before STARTTLS) chooses our certificate even when the
/// client's SNI names another of our domains (RFC 7590 §3.2: with STARTTLS the stream `to`
/// names the domain); a `to` without a certificate of its own leaves the choice to SNI.
#[test]
fn stream_to_beats_a_different_sni() {
    let dir = TempDir::new("tobeatsni");
    let (certs, [(_, akey), (_, bkey)]) = two_domains(&dir);
    let ccfg = client_config(&certs, &d("a.test"), false).unwrap();
    let scfg = server_config_for(&certs, Some(&d("b.test"))).unwrap();
    let (cinfo, sinfo, _) = handshake_pair(ccfg.clone(), scfg, &d("a.test"));
    assert_eq!(sinfo.sni.as_deref(), Some("a.test"));
    let spki = cinfo.peer_cert.unwrap().spki_sha256();
    assert_eq!(
        spki,
        Some(key_spki_sha256(&bkey)),
        "b.test's, as the header said"
    );
    let scfg = server_config_for(&certs, Some(&d("c.test"))).unwrap();
    let (cinfo, _, _) = handshake_pair(ccfg, scfg, &d("a.test"));
    let spki = cinfo.peer_cert.unwrap().spki_sha256();
    assert_eq!(spki, Some(key_spki_sha256(&akey)), "SNI when `to` has none");
}

#[test]
fn client_without_certificate() {
    let dir = TempDir::new("nocert");
    let (certs, _) = two_domains(&dir);
    // We host no certificate for z.test and have no default: no client certificate is sent.
    let ccfg = client_config(&certs, &d("z.test"), false).unwrap();
    let (_, sinfo, _) = handshake_pair(ccfg, server_config(&certs).unwrap(), &d("a.test"));
    assert!(sinfo.peer_cert.is_none());
}

#[test]
fn alpn_for_direct_tls() {
    let dir = TempDir::new("alpn");
    let (certs, _) = two_domains(&dir);
    let ccfg = client_config(&certs, &d("a.test"), true).unwrap();
    let (cinfo, sinfo, _) = handshake_pair(ccfg, server_config(&certs).unwrap(), &d("b.test"));
    assert_eq!(cinfo.alpn.as_deref(), Some(ALPN_XMPP_SERVER));
    assert_eq!(sinfo.alpn.as_deref(), Some(&b"xmpp-server"[..]));
}

#[test]
fn version_policy() {
    let dir = TempDir::new("ver");
    let (certs, [(_, akey), _]) = two_domains(&dir);
    // Nothing below TLS 1.2 is enabled.
    assert_eq!(PROTOCOL_VERSIONS.len(), 2);
    for v in PROTOCOL_VERSIONS {
        assert!(matches!(
            v.version,
            rustls::ProtocolVersion::TLSv1_2 | rustls::ProtocolVersion::TLSv1_3
        ));
    }
    let scfg = server_config(&certs).unwrap();
    for suite in &scfg.crypto_provider().cipher_suites {
        assert!(matches!(
            suite.version().version,
            rustls::ProtocolVersion::TLSv1_2 | rustls::ProtocolVersion::TLSv1_3
        ));
    }
    // A client limited to TLS 1.2 connects, with its certificate.
    let ccfg =
        client_config_versions(&certs, &d("a.test"), false, &[&rustls::version::TLS12]).unwrap();
    let (cinfo, sinfo, got) = handshake_pair(ccfg, scfg, &d("b.test"));
    assert_eq!(got, b"<stream>");
    assert_eq!(cinfo.version, "TLSv1.2");
    assert_eq!(sinfo.version, "TLSv1.2");
    let spki = sinfo.peer_cert.unwrap().spki_sha256();
    assert_eq!(spki, Some(key_spki_sha256(&akey)));
}

#[test]
fn concurrent_writer_while_reader_blocks() {
    const N: usize = 1000;
    let dir = TempDir::new("conc");
    let (certs, _) = two_domains(&dir);
    let scfg = server_config(&certs).unwrap();
    let ccfg = client_config(&certs, &d("a.test"), false).unwrap();
    let (c, s) = socket_pair();
    let msg = |i: usize| format!("<m{i:04}/>");
    let expected: Vec<u8> = (0..N).flat_map(|i| msg(i).into_bytes()).collect();
    let total = expected.len();
    let started = Instant::now();

    // The client echoes everything it reads.
    let client = thread::spawn(move || {
        let mut tls = TlsStream::connect(c, ccfg, &d("b.test")).unwrap();
        tls.handshake().unwrap();
        let mut buf = [0u8; 4096];
        let mut echoed = 0;
        while echoed < total {
            let n = tls.reader.read(&mut buf).unwrap();
            assert!(n > 0, "early EOF");
            tls.writer.write_all(&buf[..n]).unwrap();
            echoed += n;
        }
        tls.writer.close();
        // The server closes too.
        let n = tls.reader.read(&mut buf).unwrap();
        assert_eq!(n, 0);
    });

    let TlsStream { mut reader, writer } = TlsStream::accept(s, scfg).unwrap();
    // The server's reader thread blocks in read() (and drives the handshake).
    let server_reader = thread::spawn(move || {
        let mut got = Vec::with_capacity(total);
        let mut buf = [0u8; 1000];
        while got.len() < total {
            let n = reader.read(&mut buf).unwrap();
            assert!(n > 0, "early EOF after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        // The client's close_notify.
        assert_eq!(reader.read(&mut buf).unwrap(), 0);
        (got, reader.info())
    });
    // Another thread writes through a clone of the writer, some before the handshake is done.
    let w = writer.clone();
    let router = thread::spawn(move || {
        let mut w = w;
        for i in 0..N {
            w.write_all(msg(i).as_bytes()).unwrap();
        }
        w.flush().unwrap();
    });
    router.join().unwrap();
    let (got, info) = server_reader.join().unwrap();
    assert_eq!(got, expected, "all arrive, in order");
    assert!(info.is_some());
    let winfo = writer.info().expect("the writer sees the handshake too");
    assert_eq!(winfo.sni.as_deref(), Some("b.test"));
    writer.close();
    client.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn shutdown_unblocks_the_reader() {
    let dir = TempDir::new("shut");
    let (certs, _) = two_domains(&dir);
    let (c, s) = socket_pair();
    let ccfg = client_config(&certs, &d("a.test"), false).unwrap();
    let client = thread::spawn(move || {
        let mut tls = TlsStream::connect(c, ccfg, &d("b.test")).unwrap();
        tls.handshake().unwrap();
        tls.writer.write_all(b"x").unwrap();
        // Wait, bounded by the socket timeout, until the server goes away.
        let mut buf = [0u8; 8];
        let _ = tls.reader.read(&mut buf);
    });
    let mut tls = TlsStream::accept(s, server_config(&certs).unwrap()).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(tls.reader.read(&mut buf).unwrap(), 1);
    let TlsStream { mut reader, writer } = tls;
    let blocked = thread::spawn(move || reader.read(&mut buf));
    // No close_notify: the reader sees plain EOF once the socket is shut down.
    writer.shutdown();
    assert_eq!(blocked.join().unwrap().unwrap(), 0);
    assert!(format!("{writer:?}").contains("TlsWriter"));
    client.join().unwrap();
}

#[test]
fn garbage_and_early_close_are_errors_not_panics() {
    let dir = TempDir::new("junk");
    let (certs, _) = two_domains(&dir);
    let scfg = server_config(&certs).unwrap();

    // Plaintext XML where a ClientHello should be.
    let (mut c, s) = socket_pair();
    c.write_all(b"<stream:stream xmlns='jabber:server'>")
        .unwrap();
    let mut tls = TlsStream::accept(s, scfg.clone()).unwrap();
    let mut buf = [0u8; 16];
    let e = tls.reader.read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    // The failure sticks; the client got an alert.
    let e = tls.reader.read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    assert!(tls.reader.info().is_none());
    let mut alert = [0u8; 16];
    let n = c.read(&mut alert).unwrap();
    assert!(
        n >= 7 && alert[0] == 21,
        "a TLS alert record: {:?}",
        &alert[..n]
    );

    // The peer goes away during the handshake.
    let (c, s) = socket_pair();
    drop(c);
    let mut tls = TlsStream::accept(s, scfg.clone()).unwrap();
    let e = tls.handshake().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");

    // Half a ClientHello, then EOF.
    let (c, s) = socket_pair();
    let ccfg = client_config(&certs, &d("a.test"), false).unwrap();
    let mut conn = rustls::ClientConnection::new(ccfg, server_name(&d("b.test")).unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    (&c).write_all(&hello[..hello.len() / 2]).unwrap();
    drop(c);
    let mut tls = TlsStream::accept(s, scfg).unwrap();
    let e = tls.reader.read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
}

/// A CA, and a leaf signed by it for `names`.
fn ca_and_leaf(
    ca_name: &str,
    names: &[&str],
) -> (CertificateDer<'static>, CertificateDer<'static>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let leaf = CertificateParams::new(names)
        .unwrap()
        .signed_by(&KeyPair::generate().unwrap(), &ca)
        .unwrap();
    (ca.der().clone(), leaf.der().clone())
}

fn roots_with(ca: CertificateDer<'static>) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(ca).unwrap();
    Arc::new(roots)
}

#[test]
fn pkix_verification() {
    let (ca, leaf) = ca_and_leaf("Test CA", &["a.test"]);
    let roots = roots_with(ca);
    let pc = PeerCert::from_chain(vec![leaf]).unwrap();
    assert_eq!(pc.verify_pkix(&d("a.test"), &roots), Ok(()));
    assert_eq!(pc.verify_pkix(&d("A.Test."), &roots), Ok(()));
    assert_eq!(
        pc.verify_pkix(&d("b.test"), &roots),
        Err("not valid for b.test".to_owned())
    );

    // Self-signed: gen_cert's output.
    let dir = TempDir::new("pkix");
    let (crt, _) = gen_cert(&d("a.test"), &dir.0).unwrap();
    let self_signed = CertificateDer::from_pem_file(&crt).unwrap();
    let ss = PeerCert::from_chain(vec![self_signed]).unwrap();
    assert_eq!(
        ss.verify_pkix(&d("a.test"), &roots),
        Err("self-signed".to_owned())
    );

    // Signed by a CA we do not trust.
    let (_, other_leaf) = ca_and_leaf("Other CA", &["a.test"]);
    let other = PeerCert::from_chain(vec![other_leaf]).unwrap();
    assert_eq!(
        other.verify_pkix(&d("a.test"), &roots),
        Err("unknown issuer".to_owned())
    );
    // Signed by an impostor with the trusted CA's name.
    let (_, fake_leaf) = ca_and_leaf("Test CA", &["a.test"]);
    let fake = PeerCert::from_chain(vec![fake_leaf]).unwrap();
    assert!(fake.verify_pkix(&d("a.test"), &roots).is_err());

    // Wildcards: left-most label only, one label deep.
    let (ca, wild) = ca_and_leaf("Wild CA", &["*.c.test"]);
    let roots = roots_with(ca);
    let wc = PeerCert::from_chain(vec![wild]).unwrap();
    assert_eq!(wc.verify_pkix(&d("x.c.test"), &roots), Ok(()));
    assert!(wc.verify_pkix(&d("c.test"), &roots).is_err());
    assert!(wc.verify_pkix(&d("y.x.c.test"), &roots).is_err());

    // Expired.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut p = CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
    p.not_before = rcgen::date_time_ymd(2000, 1, 1);
    p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let old = p.signed_by(&KeyPair::generate().unwrap(), &ca).unwrap();
    let old = PeerCert::from_chain(vec![old.der().clone()]).unwrap();
    let roots = roots_with(ca.der().clone());
    assert_eq!(
        old.verify_pkix(&d("a.test"), &roots),
        Err("expired".to_owned())
    );

    // Garbage.
    let junk = PeerCert::from_chain(vec![CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])]).unwrap();
    assert!(junk.verify_pkix(&d("a.test"), &roots).is_err());
    assert_eq!(junk.spki_sha256(), None);
    assert!(!junk.matches_pin(&[[0; 32]]));
    assert!(PeerCert::from_chain(Vec::new()).is_none());
}

#[test]
fn pins() {
    let (_, leaf) = ca_and_leaf("Pin CA", &["a.test"]);
    let pc = PeerCert::from_chain(vec![leaf]).unwrap();
    let pin = pc.spki_sha256().unwrap();
    assert!(pc.matches_pin(&[[7; 32], pin]));
    assert!(!pc.matches_pin(&[[7; 32]]));
    assert!(!pc.matches_pin(&[]));
}

#[test]
fn roots_from_file() {
    let dir = TempDir::new("roots");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let path = dir.0.join("ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    let roots = load_roots(Some(&path)).unwrap();
    assert_eq!(roots.len(), 1);
    let missing = dir.0.join("nope.pem");
    let e = load_roots(Some(&missing)).unwrap_err();
    assert!(e.to_string().contains("nope.pem"), "{e}");
    let empty = dir.0.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let e = load_roots(Some(&empty)).unwrap_err();
    assert!(e.to_string().contains("no usable PEM certificate"), "{e}");
    // The system bundle, or an empty store when it is absent: never an error here.
    assert!(load_roots(None).is_ok());
}

/// Both peers send large bursts at once while their readers read: a writer blocked on a full
/// socket must not keep its own reader from decrypting (crates.md §4, "known edge").
#[test]
fn simultaneous_bursts_both_ways() {
    const TOTAL: usize = 16 * 1024 * 1024;
    let dir = TempDir::new("burst");
    let (certs, _) = two_domains(&dir);
    let scfg = server_config(&certs).unwrap();
    let ccfg = client_config(&certs, &d("a.test"), false).unwrap();
    let (c, s) = socket_pair();
    let started = Instant::now();

    fn run(tls: TlsStream) -> thread::JoinHandle<usize> {
        let TlsStream { mut reader, writer } = tls;
        let w = thread::spawn(move || {
            let chunk = vec![b'x'; 16 * 1024];
            let mut w = writer;
            for _ in 0..TOTAL / chunk.len() {
                w.write_all(&chunk).unwrap();
            }
            w
        });
        thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            while got < TOTAL {
                let n = reader.read(&mut buf).unwrap();
                assert!(n > 0, "early EOF after {got}");
                got += n;
            }
            let writer = w.join().unwrap();
            writer.close();
            assert_eq!(reader.read(&mut buf).unwrap(), 0);
            got
        })
    }
    let client = thread::spawn(move || {
        let mut tls = TlsStream::connect(c, ccfg, &d("b.test")).unwrap();
        tls.handshake().unwrap();
        run(tls).join().unwrap()
    });
    let mut tls = TlsStream::accept(s, scfg).unwrap();
    tls.handshake().unwrap();
    assert_eq!(run(tls).join().unwrap(), TOTAL);
    assert_eq!(client.join().unwrap(), TOTAL);
    // A writer holding the connection while blocked on a full socket stalls both sides until
    // the send timeout (TIMEOUT) cuts a write short; without that edge this takes well under 1 s.
    assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
}

/// The certificate policy (`judge`): pins first, then the mode, always against the domain
/// asked about (SEC-04).
#[test]
fn policy_judgement() {
    use crate::config::{CertMode, PeerPolicy, TlsPolicy};
    let (ca, leaf) = ca_and_leaf("Test CA", &["a.test"]);
    let roots = roots_with(ca);
    let cert = PeerCert::from_chain(vec![leaf]).unwrap();
    let pin = cert.spki_sha256().unwrap();
    let mut policy = TlsPolicy::default();

    // dialback mode: anything goes, the log says what it was.
    let j = judge(&policy, Some(&roots), &d("a.test"), Some(&cert));
    assert!(
        matches!(&j, CertJudgement::Accepted(t) if t.contains("valid")),
        "{j:?}"
    );
    let j = judge(&policy, None, &d("a.test"), None);
    assert!(matches!(j, CertJudgement::Accepted(_)));

    // pkix: valid for a.test only.
    policy.verify = CertMode::Pkix;
    assert_eq!(
        judge(&policy, Some(&roots), &d("a.test"), Some(&cert)),
        CertJudgement::Trusted
    );
    let j = judge(&policy, Some(&roots), &d("c.test"), Some(&cert));
    assert!(
        matches!(&j, CertJudgement::Refused(t) if t.contains("c.test")),
        "{j:?}"
    );
    assert!(matches!(
        judge(&policy, Some(&roots), &d("a.test"), None),
        CertJudgement::Refused(_)
    ));
    assert!(matches!(
        judge(&policy, None, &d("a.test"), Some(&cert)),
        CertJudgement::Refused(_)
    ));

    // pins: a wrong pin refuses even a pkix-valid certificate; the right one passes.
    policy.verify = CertMode::Dialback;
    let peer = |fingerprints| PeerPolicy {
        require_encryption: None,
        verify: None,
        fingerprints,
    };
    policy.peers.insert(d("a.test"), peer(vec![[7u8; 32]]));
    let j = judge(&policy, Some(&roots), &d("a.test"), Some(&cert));
    assert!(
        matches!(&j, CertJudgement::Refused(t) if t.contains("pinned")),
        "{j:?}"
    );
    policy.peers.insert(d("a.test"), peer(vec![[7u8; 32], pin]));
    assert!(matches!(
        judge(&policy, Some(&roots), &d("a.test"), Some(&cert)),
        CertJudgement::Accepted(_)
    ));
    assert!(matches!(
        judge(&policy, Some(&roots), &d("a.test"), None),
        CertJudgement::Refused(_)
    ));
    // Pins and pkix imply encryption for that peer only.
    assert!(policy.require_encryption_for(&d("a.test")));
    assert!(!policy.require_encryption_for(&d("b.test")));
}
