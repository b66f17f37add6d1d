//! Loopback and socket-pair tests (127.0.0.1 only; every loop bounded in steps and time, every
//! wait by a poll(2) deadline or a socket timeout).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
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

/// The bound on every loop that drives a connection: steps, and time.
const MAX_STEPS: usize = 1_000_000;
const BOUND: Duration = Duration::from_secs(60);

/// A connected pair of loopback sockets with timeouts (for a raw peer that blocks): (client,
/// server).
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

/// A socket a test drives a [`Session`] over.
trait Sock: Read + Write + AsRawFd + Send {}
impl<T: Read + Write + AsRawFd + Send> Sock for T {}

/// A slow non-blocking socket: every other read (and write) fails with `WouldBlock`, the
/// others move at most `max` bytes.
struct Trickle<S> {
    inner: S,
    max: usize,
    refuse_read: bool,
    refuse_write: bool,
}

fn would_block_every_other(refuse: &mut bool) -> io::Result<()> {
    *refuse = !*refuse;
    if *refuse {
        Err(io::ErrorKind::WouldBlock.into())
    } else {
        Ok(())
    }
}

impl<S: Sock> Read for Trickle<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        would_block_every_other(&mut self.refuse_read)?;
        let n = buf.len().min(self.max);
        self.inner.read(&mut buf[..n])
    }
}

impl<S: Sock> Write for Trickle<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        would_block_every_other(&mut self.refuse_write)?;
        let n = buf.len().min(self.max);
        self.inner.write(&buf[..n])
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<S: AsRawFd> AsRawFd for Trickle<S> {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

fn trickle<S: Sock>(inner: S, max: usize) -> Trickle<S> {
    Trickle {
        inner,
        max,
        refuse_read: false,
        refuse_write: false,
    }
}

/// One end of a TLS connection under test, driven as its owner drives it: a [`Session`] over a
/// non-blocking socket, what it has read, and how its input ended.
struct End {
    name: &'static str,
    tls: Session,
    sock: Box<dyn Sock>,
    got: Vec<u8>,
    end: Option<ReadEnd>,
    /// Steps whose read stopped at `WouldBlock`.
    read_blocked: usize,
    /// Steps that could not send all that was queued.
    write_blocked: usize,
}

impl End {
    /// `sock` is made non-blocking.
    fn new(name: &'static str, tls: Session, sock: impl Sock + 'static) -> End {
        set_nonblocking(sock.as_raw_fd());
        End {
            name,
            tls,
            sock: Box::new(sock),
            got: Vec::new(),
            end: None,
            read_blocked: 0,
            write_blocked: 0,
        }
    }

    /// One step: send what is queued, then read what has arrived (until the input ends).
    fn step(&mut self) -> io::Result<()> {
        let name = self.name;
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{name}: {e}"));
        if !self.tls.write_to(&mut self.sock).map_err(named)? {
            self.write_blocked += 1;
        }
        if self.end.is_none() {
            match self.tls.read_from(&mut self.sock, &mut self.got) {
                Ok(ReadEnd::WouldBlock) => self.read_blocked += 1,
                Ok(end) => self.end = Some(end),
                Err(e) => return Err(named(e)),
            }
        }
        Ok(())
    }

    /// Step until a step fails, and return its error.
    fn until_error(&mut self) -> io::Error {
        let deadline = Instant::now() + BOUND;
        for _ in 0..MAX_STEPS {
            if let Err(e) = self.step() {
                return e;
            }
            assert!(
                wait(&[&*self], deadline),
                "{}: no error before the deadline",
                self.name
            );
        }
        panic!("{}: no error after {MAX_STEPS} steps", self.name)
    }

    /// The poll(2) events that would let this end make progress.
    fn interest(&self) -> i16 {
        let mut events = 0;
        if self.end.is_none() {
            events |= libc::POLLIN;
        }
        if self.tls.wants_write() {
            events |= libc::POLLOUT;
        }
        events
    }
}

/// `fd` stops blocking: a read or write that cannot go on fails with `WouldBlock`.
fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor the caller owns; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    assert!(flags >= 0, "F_GETFL: {}", io::Error::last_os_error());
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    assert_eq!(rc, 0, "F_SETFL: {}", io::Error::last_os_error());
}

/// Wait in poll(2) until one of `ends` can make progress; false when none can before
/// `deadline`.
fn wait(ends: &[&End], deadline: Instant) -> bool {
    let mut fds: Vec<libc::pollfd> = ends
        .iter()
        .map(|e| libc::pollfd {
            fd: e.sock.as_raw_fd(),
            events: e.interest(),
            revents: 0,
        })
        .collect();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures for the whole call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        match rc {
            n if n > 0 => return true,
            0 => return false,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => panic!("poll: {}", io::Error::last_os_error()),
        }
    }
}

/// Step both ends, waiting in poll(2) whenever neither can go on, until `done` (which may
/// queue more data). Errors name the end that failed; a stall fails the test.
fn drive(
    a: &mut End,
    b: &mut End,
    mut done: impl FnMut(&mut End, &mut End) -> bool,
) -> io::Result<()> {
    let deadline = Instant::now() + BOUND;
    for _ in 0..MAX_STEPS {
        a.step()?;
        b.step()?;
        if done(a, b) {
            return Ok(());
        }
        assert!(
            wait(&[&*a, &*b], deadline),
            "no progress before the deadline: {} read {} bytes ({:?}), {} read {} bytes ({:?})",
            a.name,
            a.got.len(),
            a.end,
            b.name,
            b.got.len(),
            b.end
        );
    }
    panic!("not done after {MAX_STEPS} steps")
}

/// A client and a server session over a loopback socket pair, nothing sent yet.
fn session_pair(
    ccfg: Arc<rustls::ClientConfig>,
    scfg: Arc<rustls::ServerConfig>,
    sni: &Domain,
) -> (End, End) {
    let (c, s) = socket_pair();
    let client = End::new("client", Session::connect(ccfg, sni).unwrap(), c);
    let server = End::new("server", Session::accept(scfg).unwrap(), s);
    (client, server)
}

/// The client queues `<stream>` at once, before the handshake; the server answers `ok` once it
/// has it. Returns (client info, server info, what the server read).
fn handshake_pair(
    ccfg: Arc<rustls::ClientConfig>,
    scfg: Arc<rustls::ServerConfig>,
    sni: &Domain,
) -> (HandshakeInfo, HandshakeInfo, Vec<u8>) {
    let (mut client, mut server) = session_pair(ccfg, scfg, sni);
    assert!(client.tls.info().is_none() && client.tls.is_handshaking());
    assert!(server.tls.info().is_none() && server.tls.is_handshaking());
    assert!(
        client.tls.wants_write(),
        "the ClientHello is queued at once"
    );
    assert!(
        !server.tls.wants_write(),
        "the server waits for the ClientHello"
    );
    client.tls.write_plain(b"<stream>").unwrap();
    drive(&mut client, &mut server, |_, s| s.got.len() >= 8).unwrap();
    let sinfo = server
        .tls
        .info()
        .expect("handshake complete once data came");
    server.tls.write_plain(b"ok").unwrap();
    drive(&mut client, &mut server, |c, _| c.got.len() >= 2).unwrap();
    assert_eq!(client.got, b"ok");
    let cinfo = client.tls.info().expect("handshake complete");
    (cinfo, sinfo, server.got)
}

#[test]
fn session_and_what_it_learns_are_send() {
    fn send<T: Send>() {}
    fn send_sync_clone<T: Send + Sync + Clone>() {}
    // One thread owns a stream and its session; the session may be built elsewhere.
    send::<Session>();
    send_sync_clone::<HandshakeInfo>();
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
        auth: None,
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

/// The server queues data before the handshake has begun and more while it runs; the client
/// echoes all it reads. Everything arrives once and in order, and close_notify ends each
/// direction cleanly (`ReadEnd::Closed`, not `Eof`).
#[test]
fn echo_with_data_queued_before_and_during_the_handshake() {
    const N: usize = 1000;
    let dir = TempDir::new("echo");
    let (certs, _) = two_domains(&dir);
    let scfg = server_config(&certs).unwrap();
    let ccfg = client_config(&certs, &d("a.test"), false).unwrap();
    let (mut client, mut server) = session_pair(ccfg, scfg, &d("b.test"));
    let msg = |i: usize| format!("<m{i:04}/>");
    let expected: Vec<u8> = (0..N).flat_map(|i| msg(i).into_bytes()).collect();
    for i in 0..N / 2 {
        server.tls.write_plain(msg(i).as_bytes()).unwrap();
    }
    let (mut next, mut echoed, mut while_handshaking) = (N / 2, 0, 0);
    drive(&mut client, &mut server, |c, s| {
        if c.got.len() > echoed {
            c.tls.write_plain(&c.got[echoed..]).unwrap();
            echoed = c.got.len();
            if echoed == expected.len() {
                c.tls.close_notify();
            }
        }
        if next < N {
            while_handshaking += usize::from(s.tls.is_handshaking());
            s.tls.write_plain(msg(next).as_bytes()).unwrap();
            next += 1;
        }
        s.end.is_some()
    })
    .unwrap();
    assert!(while_handshaking > 0, "some data was queued mid-handshake");
    assert_eq!(server.got, expected, "all echoed back, in order");
    assert_eq!(server.end, Some(ReadEnd::Closed));
    let info = server.tls.info().expect("handshake done");
    assert_eq!(info.sni.as_deref(), Some("b.test"));
    // The other direction is still open until the server closes it too.
    assert_eq!(client.end, None);
    server.tls.close_notify();
    drive(&mut client, &mut server, |c, _| c.end.is_some()).unwrap();
    assert_eq!(client.end, Some(ReadEnd::Closed));
    assert_eq!(client.got, expected);
}

/// close_notify after data: the peer gets the data, then `Closed`, while the socket itself
/// stays open (so it is the TLS alert that ended the stream, not EOF).
#[test]
fn close_notify_is_closed_at_the_peer() {
    let dir = TempDir::new("close");
    let (certs, _) = two_domains(&dir);
    let ccfg = client_config(&certs, &d("a.test"), false).unwrap();
    let (mut client, mut server) = session_pair(ccfg, server_config(&certs).unwrap(), &d("b.test"));
    // Queued during the handshake, sent when it is done; close_notify only after that (during
    // the handshake it would be a handshake failure at the peer, RFC 8446 §6.1).
    client.tls.write_plain(b"</stream:stream>").unwrap();
    drive(&mut client, &mut server, |c, _| !c.tls.is_handshaking()).unwrap();
    client.tls.close_notify();
    drive(&mut client, &mut server, |_, s| s.end.is_some()).unwrap();
    assert_eq!(server.got, b"</stream:stream>");
    assert_eq!(server.end, Some(ReadEnd::Closed));
    // The server may still answer, then close in turn.
    server.tls.write_plain(b"</stream:stream>").unwrap();
    server.tls.close_notify();
    drive(&mut client, &mut server, |c, _| c.end.is_some()).unwrap();
    assert_eq!(client.got, b"</stream:stream>");
    assert_eq!(client.end, Some(ReadEnd::Closed));
}

/// shutdown(2) on a session's socket, by the owner (`how` = SHUT_WR, SHUT_RDWR, ...).
fn shut(end: &End, how: libc::c_int) {
    // SAFETY: shutdown on a descriptor `end` owns; no memory is passed.
    let rc = unsafe { libc::shutdown(end.sock.as_raw_fd(), how) };
    assert_eq!(rc, 0, "shutdown: {}", io::Error::last_os_error());
}

/// The socket ends without close_notify after the handshake: the data before it still comes
/// out, then `ReadEnd::Eof` (not an error). An owner that shuts its own socket down also reads
/// `Eof` at once (this is how a stream that is torn down stops reading).
#[test]
fn eof_without_close_notify_is_eof() {
    let dir = TempDir::new("eof");
    let (certs, _) = two_domains(&dir);
    let ccfg = client_config(&certs, &d("a.test"), false).unwrap();
    let (mut client, mut server) = session_pair(ccfg, server_config(&certs).unwrap(), &d("b.test"));
    client.tls.write_plain(b"last words").unwrap();
    drive(&mut client, &mut server, |c, _| {
        !c.tls.is_handshaking() && !c.tls.wants_write()
    })
    .unwrap();
    shut(&client, libc::SHUT_WR);
    drive(&mut client, &mut server, |_, s| s.end.is_some()).unwrap();
    assert_eq!(server.got, b"last words");
    assert_eq!(server.end, Some(ReadEnd::Eof));
    // The client shuts its own socket down: its next read ends with Eof, without an error.
    assert_eq!(client.end, None);
    shut(&client, libc::SHUT_RDWR);
    let mut got = Vec::new();
    let end = client.tls.read_from(&mut client.sock, &mut got).unwrap();
    assert_eq!((end, got.len()), (ReadEnd::Eof, 0));
    assert!(format!("{:?}", client.tls).contains("Session"));
}

/// A TLS failure (plaintext where a ClientHello belongs) is `InvalidData`, sticks for every
/// later step, and the alert rustls queued goes out with the next `write_to`. EOF during the
/// handshake, on either side, is `UnexpectedEof`. Errors, never panics.
#[test]
fn garbage_and_early_close_are_errors_not_panics() {
    let dir = TempDir::new("junk");
    let (certs, _) = two_domains(&dir);
    let scfg = server_config(&certs).unwrap();

    // Plaintext XML where a ClientHello should be.
    let (mut c, s) = socket_pair();
    c.write_all(b"<stream:stream xmlns='jabber:server'>")
        .unwrap();
    let mut server = End::new("server", Session::accept(scfg.clone()).unwrap(), s);
    let e = server.until_error();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    // The failure sticks: the same error again, for reads and for writes.
    let mut plain = Vec::new();
    let again = server
        .tls
        .read_from(&mut server.sock, &mut plain)
        .unwrap_err();
    assert_eq!(again.kind(), io::ErrorKind::InvalidData);
    assert_eq!(format!("server: {again}"), e.to_string());
    assert!(plain.is_empty());
    let w = server.tls.write_plain(b"<x/>").unwrap_err();
    assert_eq!(w.to_string(), again.to_string());
    assert!(server.tls.info().is_none());
    // The alert waits for the next write_to, and reaches the client.
    assert!(server.tls.wants_write(), "an alert is queued");
    assert!(server.tls.write_to(&mut server.sock).unwrap());
    let mut alert = [0u8; 16];
    let n = c.read(&mut alert).unwrap();
    assert!(
        n >= 7 && alert[0] == 21,
        "a TLS alert record: {:?}",
        &alert[..n]
    );

    // The peer goes away before the handshake.
    let (c, s) = socket_pair();
    drop(c);
    let mut server = End::new("server", Session::accept(scfg.clone()).unwrap(), s);
    let e = server.until_error();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");

    // Half a ClientHello, then EOF.
    let (c, s) = socket_pair();
    let ccfg = client_config(&certs, &d("a.test"), false).unwrap();
    let mut conn =
        rustls::ClientConnection::new(ccfg.clone(), server_name(&d("b.test")).unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    (&c).write_all(&hello[..hello.len() / 2]).unwrap();
    drop(c);
    let mut server = End::new("server", Session::accept(scfg).unwrap(), s);
    let e = server.until_error();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");

    // Client side: the server reads the ClientHello and hangs up.
    let (c, mut s) = socket_pair();
    let mut client = End::new("client", Session::connect(ccfg, &d("b.test")).unwrap(), c);
    client.step().unwrap();
    let mut header = [0u8; 5];
    s.read_exact(&mut header).unwrap();
    assert_eq!(header[0], 22, "a handshake record");
    let mut body = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
    s.read_exact(&mut body).unwrap();
    drop(s);
    let e = client.until_error();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
}

/// Sockets that move one byte (or a few) per call, with `WouldBlock` between any two calls:
/// the handshake and data both ways still complete, driven only by `read_from`/`write_to`;
/// `info()` is None at every step of the handshake and carries what it established after.
#[test]
fn tiny_chunks_with_would_block_in_between() {
    let dir = TempDir::new("tiny");
    let (certs, [(_, akey), (_, bkey)]) = two_domains(&dir);
    let scfg = server_config(&certs).unwrap();
    let ccfg = client_config(&certs, &d("a.test"), true).unwrap();
    for (cmax, smax) in [(1, 1), (1, 4096), (4096, 1), (3, 7)] {
        let (c, s) = UnixStream::pair().unwrap();
        let tls = Session::connect(ccfg.clone(), &d("b.test")).unwrap();
        let mut client = End::new("client", tls, trickle(c, cmax));
        let tls = Session::accept(scfg.clone()).unwrap();
        let mut server = End::new("server", tls, trickle(s, smax));
        let header = b"<stream:stream to='b.test'>";
        client.tls.write_plain(header).unwrap();
        let mut handshaking = [0usize; 2];
        drive(&mut client, &mut server, |c, s| {
            for (n, e) in handshaking.iter_mut().zip([&*c, &*s]) {
                if e.tls.is_handshaking() {
                    assert!(e.tls.info().is_none(), "{}: info mid-handshake", e.name);
                    *n += 1;
                }
            }
            s.got.len() >= header.len()
        })
        .unwrap();
        let case = format!("client {cmax} bytes a call, server {smax}");
        assert!(
            handshaking.iter().all(|&n| n > 1),
            "{case}: {handshaking:?}"
        );
        assert_eq!(server.got, header, "{case}");
        server
            .tls
            .write_plain(b"<stream:stream from='b.test'>")
            .unwrap();
        server.tls.close_notify();
        client.tls.close_notify();
        drive(&mut client, &mut server, |c, s| {
            c.end.is_some() && s.end.is_some()
        })
        .unwrap();
        assert_eq!(client.got, b"<stream:stream from='b.test'>", "{case}");
        assert_eq!(
            (client.end, server.end),
            (Some(ReadEnd::Closed), Some(ReadEnd::Closed)),
            "{case}"
        );
        for e in [&client, &server] {
            assert!(
                e.read_blocked > 0 && e.write_blocked > 0,
                "{case}: {}",
                e.name
            );
        }
        let (ci, si) = (client.tls.info().unwrap(), server.tls.info().unwrap());
        assert_eq!(
            (ci.sni.as_deref(), si.sni.as_deref()),
            (Some("b.test"), Some("b.test"))
        );
        assert_eq!(
            (ci.version.as_str(), si.version.as_str()),
            ("TLSv1.3", "TLSv1.3")
        );
        assert_eq!(ci.alpn.as_deref(), Some(ALPN_XMPP_SERVER), "{case}");
        assert_eq!(si.alpn.as_deref(), Some(ALPN_XMPP_SERVER), "{case}");
        let spki = |i: HandshakeInfo| i.peer_cert.and_then(|p| p.spki_sha256());
        assert_eq!(spki(ci), Some(key_spki_sha256(&bkey)), "{case}");
        assert_eq!(spki(si), Some(key_spki_sha256(&akey)), "{case}");
    }
}

/// Run `end` alone on this thread, as a stream's owner does: queue `out` a chunk at a time
/// once the handshake is done (never more than one chunk waiting to be sent), send and read in
/// turn, wait in poll(2) between steps; close once all is sent and `want` bytes came; return
/// when the peer has closed too.
fn run_alone(mut end: End, out: &[u8], want: usize) -> End {
    const CHUNK: usize = 16 * 1024;
    let deadline = Instant::now() + BOUND;
    let (mut sent, mut closing) = (0, false);
    let room = |end: &End, sent: usize| {
        sent < out.len() && !end.tls.is_handshaking() && !end.tls.wants_write()
    };
    for _ in 0..MAX_STEPS {
        if room(&end, sent) {
            let n = CHUNK.min(out.len() - sent);
            end.tls.write_plain(&out[sent..sent + n]).unwrap();
            sent += n;
        }
        if !closing && sent == out.len() && end.got.len() >= want {
            end.tls.close_notify();
            closing = true;
        }
        end.step().unwrap();
        if closing && !end.tls.wants_write() && end.end.is_some() {
            return end;
        }
        // The step may have made room (the handshake ended, the queue drained).
        let more = room(&end, sent) || (!closing && sent == out.len() && end.got.len() >= want);
        assert!(
            more || wait(&[&end], deadline),
            "{}: no progress before the deadline, after sending {sent} and reading {} bytes ({:?})",
            end.name,
            end.got.len(),
            end.end
        );
    }
    panic!("{}: not done after {MAX_STEPS} steps", end.name)
}

/// setsockopt(2) at SOL_SOCKET for an int option.
fn set_sockopt(end: &End, opt: libc::c_int, value: libc::c_int) {
    // SAFETY: `value` outlives the call and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            end.sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", io::Error::last_os_error());
}

/// Both peers, each on its own thread, send large bursts at once while reading: an end whose
/// socket is full of unsent ciphertext still reads and decrypts (no deadlock when both send
/// buffers fill), and every byte arrives in order.
#[test]
fn simultaneous_bursts_both_ways() {
    const TOTAL: usize = 16 * 1024 * 1024;
    let dir = TempDir::new("burst");
    let (certs, _) = two_domains(&dir);
    let scfg = server_config(&certs).unwrap();
    let ccfg = client_config(&certs, &d("a.test"), false).unwrap();
    // Small socket buffers: both ends find their socket full, again and again. (A Unix socket
    // pair: TCP with tiny windows crawls on its persist timers.)
    let (c, s) = UnixStream::pair().unwrap();
    let client = End::new("client", Session::connect(ccfg, &d("b.test")).unwrap(), c);
    let server = End::new("server", Session::accept(scfg).unwrap(), s);
    for end in [&client, &server] {
        set_sockopt(end, libc::SO_SNDBUF, 4096);
    }
    let data: Arc<Vec<u8>> = Arc::new((0..TOTAL).map(|i| (i % 251) as u8).collect());
    let run = |end: End| {
        let data = data.clone();
        thread::spawn(move || run_alone(end, &data, TOTAL))
    };
    let (client, server) = (run(client), run(server));
    for end in [client.join().unwrap(), server.join().unwrap()] {
        assert_eq!(end.end, Some(ReadEnd::Closed), "{}", end.name);
        assert!(end.got == *data, "{}: the bytes differ", end.name);
        assert!(
            end.write_blocked > 0,
            "{}: its socket never filled",
            end.name
        );
    }
}
