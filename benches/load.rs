//! dialbackd's load generator (`cargo bench --bench load -- WORKLOAD [options]`).
//!
//! One process plays every remote party a server-to-server daemon talks to, so the same load can
//! be run against dialbackd and against Prosody (the server under test, "SUT"):
//!
//! - **gen servers** (`gen.test`, `*.gen.test`) on `--gen` (127.0.50.2:5269): Initiating Server
//!   (connects to the SUT, sends `<db:result/>` with an XEP-0185 key made from our own secret),
//!   Authoritative Server (accepts the SUT's callback and answers `<db:verify/>` by recomputing the
//!   key) and Receiving Server (accepts the SUT's outbound stream; its `<db:result/>` is answered
//!   `valid` directly: XEP-0220 lets a Receiving Server verify out of band, and we trust loopback).
//! - **component** `sink.sut.test` (XEP-0114) on the SUT's component port: the far end that
//!   receives the messages.
//!
//! The generator parses what it receives with a byte scanner that only finds element
//! boundaries and a few attributes (it is a load tool, not an XMPP implementation); it never
//! uses dialbackd's own parser on the hot path, so it is not slowed down by what it measures.
//! `selftest` measures the generator alone.
//!
//! Every workload prints one `RESULT workload key=value ...` line on stdout; benches/run.sh
//! collects them. Every wait is bounded (`--timeout`, default 60 s).

use dialbackd::keys::DialbackSecret;
use dialbackd::stream::component::handshake_digest;
use dialbackd::xml::{Limits, StreamEvent, StreamReader};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring as ring_provider, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig, ServerConnection,
    SignatureScheme, StreamOwned,
};
use std::collections::HashMap;
use std::io::{self, Cursor, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const GEN_SECRET: &str = "dialbackd-bench-generator-secret";
const STREAM_NS: &str = "http://etherx.jabber.org/streams";
const STACK: usize = 128 * 1024;

// ------------------------------------------------------------------------------------------
// Options

struct Opts {
    map: HashMap<String, String>,
}

impl Opts {
    fn parse(args: &[String]) -> Opts {
        let mut map = HashMap::new();
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            if let Some(k) = a.strip_prefix("--") {
                if k == "bench" {
                    i += 1;
                    continue; // cargo bench passes --bench
                }
                let v = args.get(i + 1).cloned().unwrap_or_default();
                map.insert(k.to_string(), v);
                i += 2;
            } else {
                i += 1;
            }
        }
        Opts { map }
    }
    fn s(&self, k: &str, d: &str) -> String {
        self.map.get(k).cloned().unwrap_or_else(|| d.to_string())
    }
    fn n(&self, k: &str, d: u64) -> u64 {
        self.map
            .get(k)
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| die(&format!("--{k}: not a number: {v}")))
            })
            .unwrap_or(d)
    }
    fn addr(&self, k: &str, d: &str) -> SocketAddr {
        let v = self.s(k, d);
        v.parse()
            .unwrap_or_else(|_| die(&format!("--{k}: not IP:PORT: {v}")))
    }
}

fn die(msg: &str) -> ! {
    eprintln!("load: {msg}");
    std::process::exit(2)
}

// ------------------------------------------------------------------------------------------
// A byte scanner that splits an XML stream into the header and first-level elements. It relies
// on what servers send (no comments, CDATA or DTD; '>' inside attribute values only in quotes).

enum Item {
    Header(usize, usize),
    Elem(usize, usize),
    Close,
}

struct Scanner {
    buf: Vec<u8>,
    pos: usize,
    estart: usize,
    depth: u32,
    got_header: bool,
}

impl Scanner {
    fn new() -> Scanner {
        Scanner {
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
            estart: 0,
            depth: 0,
            got_header: false,
        }
    }

    fn next(&mut self) -> Option<Item> {
        let buf = &self.buf;
        loop {
            let lt = self.pos + buf[self.pos..].iter().position(|&c| c == b'<')?;
            let mut i = lt + 1;
            let mut q = 0u8;
            while i < buf.len() {
                let c = buf[i];
                if q != 0 {
                    if c == q {
                        q = 0;
                    }
                } else if c == b'\'' || c == b'"' {
                    q = c;
                } else if c == b'>' {
                    break;
                }
                i += 1;
            }
            if i >= buf.len() {
                self.pos = lt; // incomplete tag: rescan it when more bytes came
                return None;
            }
            self.pos = i + 1;
            let tag = &buf[lt..=i];
            if tag.starts_with(b"<?") {
                continue;
            }
            if !self.got_header {
                self.got_header = true;
                return Some(Item::Header(lt, i + 1));
            }
            if tag[1] == b'/' {
                if self.depth == 0 {
                    return Some(Item::Close);
                }
                self.depth -= 1;
                if self.depth == 0 {
                    return Some(Item::Elem(self.estart, i + 1));
                }
                continue;
            }
            let self_closing = tag[tag.len() - 2] == b'/';
            if self.depth == 0 {
                self.estart = lt;
                if self_closing {
                    return Some(Item::Elem(lt, i + 1));
                }
            }
            if !self_closing {
                self.depth += 1;
            }
        }
    }

    /// Drop consumed bytes (invalidates ranges handed out before).
    fn compact(&mut self) {
        let keep = if self.depth > 0 {
            self.estart.min(self.pos)
        } else {
            self.pos
        };
        if keep > 0 {
            self.buf.drain(..keep);
            self.pos -= keep;
            self.estart = self.estart.saturating_sub(keep);
        }
    }
}

fn name_of(el: &[u8]) -> &[u8] {
    let end = el[1..]
        .iter()
        .position(|&c| {
            c == b' ' || c == b'>' || c == b'/' || c == b'\t' || c == b'\n' || c == b'\r'
        })
        .map(|p| p + 1)
        .unwrap_or(el.len());
    &el[1..end]
}

/// The value of attribute `name` in the first start tag of `el` (no entity decoding).
fn attr(el: &[u8], name: &str) -> Option<String> {
    let tag_end = el.iter().position(|&c| c == b'>').unwrap_or(el.len());
    let tag = &el[..tag_end];
    let n = name.as_bytes();
    let mut i = 0;
    while i + n.len() + 2 < tag.len() {
        if (tag[i] == b' ' || tag[i] == b'\t' || tag[i] == b'\n' || tag[i] == b'\r')
            && tag[i + 1..].starts_with(n)
            && tag[i + 1 + n.len()] == b'='
        {
            let q = tag[i + 2 + n.len()];
            let start = i + 3 + n.len();
            let len = tag[start..].iter().position(|&c| c == q)?;
            return Some(String::from_utf8_lossy(&tag[start..start + len]).into_owned());
        }
        i += 1;
    }
    None
}

/// The text between the first start tag and the last end tag.
fn text_of(el: &[u8]) -> String {
    let a = el
        .iter()
        .position(|&c| c == b'>')
        .map(|p| p + 1)
        .unwrap_or(0);
    let b = el.iter().rposition(|&c| c == b'<').unwrap_or(el.len());
    if a >= b || el[a - 2] == b'/' {
        return String::new();
    }
    String::from_utf8_lossy(&el[a..b]).trim().to_string()
}

/// A connection's byte stream: plain TCP, or TLS after STARTTLS (we are the client towards the
/// SUT, the server when the SUT dials our gen servers).
enum Sock {
    Plain(TcpStream),
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Sock {
    fn tcp(&self) -> &TcpStream {
        match self {
            Sock::Plain(s) => s,
            Sock::Client(t) => t.get_ref(),
            Sock::Server(t) => t.get_ref(),
        }
    }
    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(d)
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Plain(s) => s.read(buf),
            Sock::Client(t) => t.read(buf),
            Sock::Server(t) => t.read(buf),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Plain(s) => s.write(buf),
            Sock::Client(t) => t.write(buf),
            Sock::Server(t) => t.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sock::Plain(s) => s.flush(),
            Sock::Client(t) => t.flush(),
            Sock::Server(t) => t.flush(),
        }
    }
}

struct Conn {
    s: Sock,
    sc: Scanner,
}

impl Conn {
    fn new(s: TcpStream) -> Conn {
        let _ = s.set_nodelay(true);
        Conn {
            s: Sock::Plain(s),
            sc: Scanner::new(),
        }
    }

    /// The plain TCP stream, for STARTTLS; bytes after `<proceed/>` would be lost, so there
    /// must be none (the peer waits for our handshake).
    fn into_tcp(self) -> io::Result<TcpStream> {
        if self.sc.pos < self.sc.buf.len() {
            return Err(io::Error::other("bytes after the STARTTLS answer"));
        }
        match self.s {
            Sock::Plain(s) => Ok(s),
            _ => Err(io::Error::other("STARTTLS on a TLS stream")),
        }
    }

    /// STARTTLS as the client (after `<proceed/>`): the TLS handshake, then a fresh scanner for
    /// the restarted stream.
    fn tls_client(self, cfg: &Arc<ClientConfig>, name: &str) -> io::Result<Conn> {
        let mut tcp = self.into_tcp()?;
        let name = ServerName::try_from(name.to_string()).map_err(io::Error::other)?;
        let mut tls = ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?;
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp)?;
        }
        Ok(Conn {
            s: Sock::Client(Box::new(StreamOwned::new(tls, tcp))),
            sc: Scanner::new(),
        })
    }

    /// STARTTLS as the server (after we sent `<proceed/>`).
    fn tls_server(self, cfg: &Arc<ServerConfig>) -> io::Result<Conn> {
        let mut tcp = self.into_tcp()?;
        let mut tls = ServerConnection::new(cfg.clone()).map_err(io::Error::other)?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp)?;
        }
        tcp.set_read_timeout(None)?;
        Ok(Conn {
            s: Sock::Server(Box::new(StreamOwned::new(tls, tcp))),
            sc: Scanner::new(),
        })
    }

    fn fill(&mut self) -> io::Result<usize> {
        self.sc.compact();
        let len = self.sc.buf.len();
        if self.sc.buf.capacity() - len < 16 * 1024 {
            self.sc.buf.reserve(64 * 1024);
        }
        let cap = self.sc.buf.capacity();
        self.sc.buf.resize(cap, 0);
        let r = self.s.read(&mut self.sc.buf[len..]);
        let n = *r.as_ref().unwrap_or(&0);
        self.sc.buf.truncate(len + n);
        match r {
            Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed")),
            Ok(n) => Ok(n),
            Err(e) => Err(e),
        }
    }

    fn next(&mut self) -> io::Result<Item> {
        loop {
            if let Some(it) = self.sc.next() {
                return Ok(it);
            }
            self.fill()?;
        }
    }

    /// The next header or element as owned bytes (`None` for the stream close).
    fn next_owned(&mut self) -> io::Result<Option<Vec<u8>>> {
        match self.next()? {
            Item::Header(a, b) | Item::Elem(a, b) => Ok(Some(self.sc.buf[a..b].to_vec())),
            Item::Close => Ok(None),
        }
    }

    fn expect(&mut self, what: &str) -> io::Result<Vec<u8>> {
        match self.next_owned()? {
            Some(el) => Ok(el),
            None => Err(io::Error::other(format!(
                "stream closed waiting for {what}"
            ))),
        }
    }
}

fn s2s_header(from: &str, to: &str, id: Option<&str>) -> String {
    let id = id.map(|i| format!(" id='{i}'")).unwrap_or_default();
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='{STREAM_NS}' \
         xmlns:db='jabber:server:dialback' from='{from}' to='{to}'{id} version='1.0'>"
    )
}

fn is_dialback(el: &[u8], local: &str) -> bool {
    let n = name_of(el);
    n == b"db:"
        .iter()
        .chain(local.as_bytes())
        .copied()
        .collect::<Vec<u8>>()
        .as_slice()
        || (n == local.as_bytes() && attr(el, "xmlns").as_deref() == Some("jabber:server:dialback"))
}

fn err_text(el: &[u8]) -> String {
    String::from_utf8_lossy(&el[..el.len().min(400)]).into_owned()
}

// ------------------------------------------------------------------------------------------
// TLS (`--tls 1`): STARTTLS towards the SUT and on our gen servers

const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";

/// Accepts the SUT's certificate without checking it (a test certificate on loopback; the SUT
/// is authenticated by dialback), but still checks the handshake signatures, so the SUT does
/// the same work as with a peer that verifies.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The gen servers' certificate: self-signed, ECDSA P-256, for `gen.test` and `*.gen.test`,
/// made at start. It does not verify, so both SUTs authenticate us by dialback.
fn gen_cert() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["gen.test".into(), "*.gen.test".into()])
        .unwrap_or_else(|e| die(&format!("gen certificate: {e}")));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    (ck.cert.der().clone(), key)
}

/// TLS client and server configurations for `--tls 1`. Client: any server certificate, our
/// certificate presented (servers present theirs on s2s, and both SUTs ask for it), no session
/// resumption (every handshake is a full one, as between distinct servers). Server (our gen
/// servers): the same certificate, no client certificate asked for, no session tickets.
fn tls_configs() -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    let (cert, key) = gen_cert();
    let provider = Arc::new(ring_provider::default_provider());
    let mut client = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| die(&format!("TLS client: {e}")))
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider.clone())))
        .with_client_auth_cert(vec![cert.clone()], key.clone_key())
        .unwrap_or_else(|e| die(&format!("TLS client: {e}")));
    client.resumption = rustls::client::Resumption::disabled();
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| die(&format!("TLS server: {e}")))
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap_or_else(|e| die(&format!("TLS server: {e}")));
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    (Arc::new(client), Arc::new(server))
}

/// Client side of STARTTLS on a stream whose features `feats` were just read: ask, wait for
/// `<proceed/>`, handshake with `name`, restart the stream; returns the new stream's id.
fn starttls(
    c: Conn,
    feats: &[u8],
    cfg: &Arc<ClientConfig>,
    hdr: &str,
    name: &str,
) -> io::Result<(Conn, String)> {
    if !feats.windows(NS_TLS.len()).any(|w| w == NS_TLS.as_bytes()) {
        return Err(io::Error::other(format!(
            "no STARTTLS offered: {}",
            err_text(feats)
        )));
    }
    let mut c = c;
    write!(c.s, "<starttls xmlns='{NS_TLS}'/>")?;
    let el = c.expect("STARTTLS answer")?;
    if name_of(&el) != b"proceed" {
        return Err(io::Error::other(format!(
            "STARTTLS refused: {}",
            err_text(&el)
        )));
    }
    let mut c = c.tls_client(cfg, name)?;
    c.s.write_all(hdr.as_bytes())?;
    let hdr = c.expect("stream header after TLS")?;
    let id = attr(&hdr, "id").ok_or_else(|| io::Error::other("no stream id after TLS"))?;
    let feats = c.expect("stream features after TLS")?;
    if name_of(&feats) != b"stream:features" {
        return Err(io::Error::other(format!(
            "expected features after TLS, got {}",
            err_text(&feats)
        )));
    }
    Ok((c, id))
}

// ------------------------------------------------------------------------------------------
// Shared state between the generator's roles

#[derive(Default)]
struct Shared {
    /// iq results received (ping replies), with a condvar for the window.
    pings: Mutex<u64>,
    ping_cv: Condvar,
    iq_errors: AtomicU64,
    bounced: AtomicU64,
    verifies: AtomicU64,
    verify_bad: AtomicU64,
    inbound: AtomicUsize,
    /// Streams the SUT opened to our gen servers (callbacks, outbound), and how many of them
    /// it encrypted with STARTTLS.
    streams_in: AtomicU64,
    tls_in: AtomicU64,
    stop: AtomicBool,
    /// `--tls 1`: the gen servers offer (and require) STARTTLS with this configuration.
    tls: Option<Arc<ServerConfig>>,
}

fn secret() -> DialbackSecret {
    DialbackSecret::from_secret(GEN_SECRET)
}

/// The gen servers' listener: Authoritative Server and Receiving Server for every *.gen.test.
fn start_gen_listener(addr: SocketAddr, shared: Arc<Shared>) -> io::Result<()> {
    let l = TcpListener::bind(addr)?;
    thread::Builder::new()
        .name("gen-accept".into())
        .stack_size(STACK)
        .spawn(move || {
            for s in l.incoming() {
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(s) = s else { continue };
                let sh = shared.clone();
                let _ = thread::Builder::new()
                    .name("gen-in".into())
                    .stack_size(STACK)
                    .spawn(move || {
                        sh.inbound.fetch_add(1, Ordering::Relaxed);
                        let _ = serve_gen(Conn::new(s), &sh);
                        sh.inbound.fetch_sub(1, Ordering::Relaxed);
                    });
            }
        })?;
    Ok(())
}

/// Read the peer's stream header and answer it: our header and features (only STARTTLS,
/// required, when `offer_tls`; dialback otherwise). Returns the peer's domain.
fn gen_open(c: &mut Conn, offer_tls: bool) -> io::Result<String> {
    let hdr = c.expect("stream header")?;
    let peer = attr(&hdr, "from").unwrap_or_default();
    let me = attr(&hdr, "to").unwrap_or_else(|| "gen.test".into());
    let id = format!("gen-{:x}", nanos());
    let mut out = s2s_header(&me, &peer, Some(&id)).into_bytes();
    if offer_tls {
        write!(
            out,
            "<stream:features><starttls xmlns='{NS_TLS}'><required/></starttls></stream:features>"
        )?;
    } else {
        out.extend_from_slice(
            b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>",
        );
    }
    c.s.write_all(&out)?;
    Ok(peer)
}

fn serve_gen(c: Conn, sh: &Shared) -> io::Result<()> {
    let sec = secret();
    let mut c = c;
    let mut peer = gen_open(&mut c, sh.tls.is_some())?;
    sh.streams_in.fetch_add(1, Ordering::Relaxed);
    let mut reply = Vec::with_capacity(4096);
    loop {
        let (a, b) = match c.next()? {
            Item::Close => {
                let _ = c.s.write_all(b"</stream:stream>");
                return Ok(());
            }
            Item::Header(..) => continue,
            Item::Elem(a, b) => (a, b),
        };
        if name_of(&c.sc.buf[a..b]) == b"starttls" {
            let Some(cfg) = &sh.tls else {
                return Err(io::Error::other("STARTTLS asked but not offered"));
            };
            write!(c.s, "<proceed xmlns='{NS_TLS}'/>")?;
            c = c.tls_server(cfg)?;
            sh.tls_in.fetch_add(1, Ordering::Relaxed);
            peer = gen_open(&mut c, false)?;
            continue;
        }
        let el = &c.sc.buf[a..b];
        let name = name_of(el);
        reply.clear();
        if name == b"iq" {
            match attr(el, "type").as_deref() {
                Some("result") => {}
                _ => {
                    sh.iq_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            let mut n = sh.pings.lock().unwrap();
            *n += 1;
            sh.ping_cv.notify_all();
        } else if name == b"message" {
            if attr(el, "type").as_deref() == Some("error") {
                let k = sh.bounced.fetch_add(1, Ordering::Relaxed);
                if k == 0 {
                    eprintln!("load: first bounce: {}", err_text(el));
                }
            }
        } else if is_dialback(el, "result") {
            if attr(el, "type").is_none() {
                // Receiving Server: verified out of band (loopback test network).
                let from = attr(el, "from").unwrap_or_default();
                let to = attr(el, "to").unwrap_or_default();
                write!(reply, "<db:result from='{to}' to='{from}' type='valid'/>")?;
            }
        } else if is_dialback(el, "verify") {
            if attr(el, "type").is_none() {
                // Authoritative Server: recompute the key we (as Initiating Server) sent.
                let from = attr(el, "from").unwrap_or_default(); // the SUT (receiving)
                let to = attr(el, "to").unwrap_or_default(); // us (originating)
                let vid = attr(el, "id").unwrap_or_default();
                let key = text_of(el);
                let ok = sec.verify(&from, &to, &vid, &key);
                sh.verifies.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    sh.verify_bad.fetch_add(1, Ordering::Relaxed);
                }
                let t = if ok { "valid" } else { "invalid" };
                write!(
                    reply,
                    "<db:verify from='{to}' to='{from}' id='{vid}' type='{t}'/>"
                )?;
            }
        } else if name == b"stream:error" {
            eprintln!("load: stream error from {peer}: {}", err_text(el));
        }
        if !reply.is_empty() {
            c.s.write_all(&reply)?;
        }
    }
}

/// Initiating Server: open a stream `from` → `to` (with STARTTLS first when `tls` is given),
/// run dialback for every domain in `tos` (the first is the stream's `to`). Returns the
/// connection and the time from each `<db:result/>` to its `type='valid'`.
fn initiate(
    sut: SocketAddr,
    from: &str,
    tos: &[&str],
    deadline: Instant,
    tls: Option<&Arc<ClientConfig>>,
) -> io::Result<(Conn, Duration)> {
    let s = TcpStream::connect_timeout(&sut, Duration::from_secs(10))?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(10));
    s.set_read_timeout(Some(left))?;
    let mut c = Conn::new(s);
    let header = s2s_header(from, tos[0], None);
    c.s.write_all(header.as_bytes())?;
    let hdr = c.expect("stream header")?;
    let id = attr(&hdr, "id").ok_or_else(|| io::Error::other("no stream id"))?;
    let feats = c.expect("stream features")?;
    if name_of(&feats) != b"stream:features" {
        return Err(io::Error::other(format!(
            "expected features, got {}",
            err_text(&feats)
        )));
    }
    let (mut c, id) = match tls {
        Some(cfg) => starttls(c, &feats, cfg, &header, tos[0])?,
        None => (c, id),
    };
    let sec = secret();
    let t0 = Instant::now();
    let mut req = String::new();
    for to in tos {
        let key = sec.key(to, from, &id);
        req.push_str(&format!(
            "<db:result from='{from}' to='{to}'>{key}</db:result>"
        ));
    }
    c.s.write_all(req.as_bytes())?;
    let mut valid = 0;
    while valid < tos.len() {
        let el = c.expect("db:result")?;
        if is_dialback(&el, "result") {
            match attr(&el, "type").as_deref() {
                Some("valid") => valid += 1,
                _ => {
                    return Err(io::Error::other(format!(
                        "dialback failed: {}",
                        err_text(&el)
                    )))
                }
            }
        } else if name_of(&el) == b"stream:error" {
            return Err(io::Error::other(format!("stream error: {}", err_text(&el))));
        }
    }
    let took = t0.elapsed();
    c.s.set_read_timeout(None)?;
    Ok((c, took))
}

/// The component `domain` on the SUT's component port, after the XEP-0114 handshake.
fn component(addr: SocketAddr, domain: &str, secret: &str) -> io::Result<Conn> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut c = Conn::new(s);
    write!(
        c.s,
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' xmlns:stream='{STREAM_NS}' to='{domain}'>"
    )?;
    let hdr = c.expect("component stream header")?;
    let id = attr(&hdr, "id").ok_or_else(|| io::Error::other("no component stream id"))?;
    write!(
        c.s,
        "<handshake>{}</handshake>",
        handshake_digest(&id, secret)
    )?;
    let el = c.expect("handshake")?;
    if name_of(&el) != b"handshake" {
        return Err(io::Error::other(format!(
            "component handshake failed: {}",
            err_text(&el)
        )));
    }
    Ok(c)
}

// ------------------------------------------------------------------------------------------
// Measurement helpers

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// user+system CPU seconds of a process (all threads) from /proc/PID/stat.
fn cpu_secs(pid: &str) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let rest = &s[s.rfind(')').map(|p| p + 2).unwrap_or(0)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / 100.0
}

fn status_kib(pid: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU use of the generator and of the SUT between `start` and `stop`, in % of one core.
struct CpuMeter {
    sut: String,
    t: Instant,
    me0: f64,
    sut0: f64,
}

impl CpuMeter {
    fn start(sut: &str) -> CpuMeter {
        CpuMeter {
            sut: sut.to_string(),
            t: Instant::now(),
            me0: cpu_secs("self"),
            sut0: cpu_secs(sut),
        }
    }
    fn stop(&self) -> String {
        let wall = self.t.elapsed().as_secs_f64().max(1e-9);
        let me = (cpu_secs("self") - self.me0) / wall * 100.0;
        let sut = (cpu_secs(&self.sut) - self.sut0) / wall * 100.0;
        format!("gen_cpu={me:.0} sut_cpu={sut:.0}")
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn message(size: usize, id: &str) -> Vec<u8> {
    let body: String = "abcdefghijklmnopqrstuvwxyz0123456789 "
        .chars()
        .cycle()
        .take(size)
        .collect();
    format!(
        "<message from='bench@gen.test/load' to='sink@sink.sut.test' type='chat' id='{id}'><body>{body}</body></message>"
    )
    .into_bytes()
}

struct Env {
    sut: SocketAddr,
    comp: SocketAddr,
    sut_pid: String,
    shared: Arc<Shared>,
    deadline: Instant,
    /// `--tls 1`: our streams to the SUT start with STARTTLS.
    tls: Option<Arc<ClientConfig>>,
}

impl Env {
    /// `tls=0|1 gen_streams_in=N gen_tls_in=M`: the TLS mode, and how many streams the SUT
    /// opened to our gen servers and encrypted (all of them in TLS mode).
    fn tls_summary(&self) -> String {
        format!(
            "tls={} gen_streams_in={} gen_tls_in={}",
            u8::from(self.tls.is_some()),
            self.shared.streams_in.load(Ordering::Relaxed),
            self.shared.tls_in.load(Ordering::Relaxed)
        )
    }

    /// `initiate` towards the SUT with this run's TLS mode.
    fn initiate(&self, from: &str, tos: &[&str]) -> io::Result<(Conn, Duration)> {
        initiate(self.sut, from, tos, self.deadline, self.tls.as_ref())
    }
}

fn setup(o: &Opts) -> Env {
    let sut = o.addr("sut", "127.0.50.1:5269");
    let comp = o.addr("component", &format!("{}:5347", sut.ip()));
    let (client, server) = match o.n("tls", 0) {
        0 => (None, None),
        _ => {
            let (c, s) = tls_configs();
            (Some(c), Some(s))
        }
    };
    let shared = Arc::new(Shared {
        tls: server,
        ..Shared::default()
    });
    let gen = o.addr("gen", "127.0.50.2:5269");
    if let Err(e) = start_gen_listener(gen, shared.clone()) {
        die(&format!("cannot listen on {gen}: {e}"));
    }
    Env {
        sut,
        comp,
        sut_pid: o.s("sut-pid", "0"),
        shared,
        deadline: Instant::now() + Duration::from_secs(o.n("timeout", 60)),
        tls: client,
    }
}

// ------------------------------------------------------------------------------------------
// Workloads

type SinkResult = (u64, Option<Instant>, Option<Instant>, Vec<f64>, u64, Conn);

/// Sink thread: counts `<message/>` arrivals on the component stream; with `latency`, reads
/// the send time (ns since UNIX epoch) from the id `t<nanos>` and records now − then.
fn spawn_sink(
    mut c: Conn,
    expect: u64,
    latency: bool,
    deadline: Instant,
) -> thread::JoinHandle<SinkResult> {
    thread::Builder::new()
        .name("sink".into())
        .spawn(move || {
            let mut count = 0u64;
            let mut errors = 0u64;
            let mut first = None;
            let mut last = None;
            let mut lat = Vec::new();
            let _ = c.s.set_read_timeout(Some(Duration::from_millis(500)));
            while count < expect && Instant::now() < deadline {
                let item = match c.next() {
                    Ok(it) => it,
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::TimedOut =>
                    {
                        continue
                    }
                    Err(e) => {
                        eprintln!("load: sink: {e}");
                        break;
                    }
                };
                let (a, b) = match item {
                    Item::Elem(a, b) => (a, b),
                    Item::Close => break,
                    Item::Header(..) => continue,
                };
                let el = &c.sc.buf[a..b];
                if name_of(el) != b"message" {
                    continue;
                }
                if el[..200.min(el.len())]
                    .windows(12)
                    .any(|w| w == b"type='error'")
                {
                    errors += 1;
                    continue;
                }
                let now = Instant::now();
                if first.is_none() {
                    first = Some(now);
                }
                last = Some(now);
                count += 1;
                if latency {
                    let t_recv = nanos();
                    if let Some(sent) = attr(el, "id")
                        .and_then(|i| i.strip_prefix('t').and_then(|n| n.parse::<u128>().ok()))
                    {
                        lat.push((t_recv.saturating_sub(sent)) as f64 / 1e6);
                    }
                }
            }
            (count, first, last, lat, errors, c)
        })
        .unwrap()
}

fn tput_setup(o: &Opts) -> (Env, Conn, Conn) {
    let env = setup(o);
    let sink = component(
        env.comp,
        "sink.sut.test",
        &o.s("component-secret", "sinksecret"),
    )
    .unwrap_or_else(|e| die(&format!("component: {e}")));
    let (stream, _) = env
        .initiate("gen.test", &["sink.sut.test"])
        .unwrap_or_else(|e| die(&format!("dialback gen.test→sink.sut.test: {e}")));
    (env, sink, stream)
}

/// N messages of `--size` body bytes over one verified stream, as fast as the socket takes them.
fn tput(o: &Opts) {
    let (env, sink, mut stream) = tput_setup(o);
    let size = o.n("size", 200) as usize;
    let n = o.n("n", 20000);
    // Warm-up: a few messages through the whole path before the clock starts.
    let warm = 200;
    let wmsg = message(size, "w");
    let mut wbuf = Vec::new();
    for _ in 0..warm {
        wbuf.extend_from_slice(&wmsg);
    }
    stream.s.write_all(&wbuf).unwrap();
    let h = spawn_sink(sink, warm, false, env.deadline);
    let (wc, _, _, _, _, sink) = h.join().unwrap();
    if wc < warm {
        die(&format!("warm-up: only {wc}/{warm} messages arrived"));
    }
    let msg = message(size, "m");
    let per_write = (64 * 1024 / msg.len()).max(1);
    let mut chunk = Vec::with_capacity(per_write * msg.len());
    for _ in 0..per_write {
        chunk.extend_from_slice(&msg);
    }
    let sink_h = spawn_sink(sink, n, false, env.deadline);
    let cpu = CpuMeter::start(&env.sut_pid);
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < n && Instant::now() < env.deadline {
        let k = (per_write as u64).min(n - sent) as usize;
        if stream.s.write_all(&chunk[..k * msg.len()]).is_err() {
            eprintln!("load: tput: the SUT closed the stream after {sent} messages");
            break;
        }
        sent += k as u64;
    }
    let t_sent = t0.elapsed();
    let (count, _first, last, _, errs, _) = sink_h.join().unwrap();
    let cpu = cpu.stop();
    let secs = last.map(|l| (l - t0).as_secs_f64()).unwrap_or(f64::NAN);
    let rate = count as f64 / secs;
    let mb = rate * msg.len() as f64 / 1e6;
    let bounced = env.shared.bounced.load(Ordering::Relaxed);
    println!(
        "RESULT tput size={size} n={n} sent={sent} received={count} bounced={bounced} sink_errors={errs} \
         secs={secs:.3} send_secs={:.3} msgs_per_s={rate:.0} mb_per_s={mb:.2} stanza_bytes={} {cpu} {}",
        t_sent.as_secs_f64(),
        msg.len(),
        env.tls_summary()
    );
    let _ = stream.s.write_all(b"</stream:stream>");
}

/// Messages at a fixed rate with the send time in the id; end-to-end latency percentiles.
fn latency(o: &Opts) {
    let (env, sink, mut stream) = tput_setup(o);
    let size = o.n("size", 200) as usize;
    let rate = o.n("rate", 2000);
    let secs = o.n("secs", 3);
    let n = rate * secs;
    let sink_h = spawn_sink(sink, n, true, env.deadline);
    let cpu = CpuMeter::start(&env.sut_pid);
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut buf = Vec::new();
    while sent < n && Instant::now() < env.deadline {
        let due = ((t0.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(n);
        if due <= sent {
            thread::sleep(Duration::from_micros(200));
            continue;
        }
        buf.clear();
        for _ in sent..due {
            buf.extend_from_slice(&message(size, &format!("t{}", nanos())));
        }
        if stream.s.write_all(&buf).is_err() {
            eprintln!("load: latency: the SUT closed the stream");
            break;
        }
        sent = due;
    }
    let (count, _, _, mut lat, _, _) = sink_h.join().unwrap();
    let cpu = cpu.stop();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "RESULT latency size={size} rate={rate} sent={sent} received={count} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} {cpu}",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    let _ = stream.s.write_all(b"</stream:stream>");
}

/// XEP-0199 pings gen.test → sut.test with `--window` outstanding; replies come back over the
/// SUT's own outbound stream to gen.test (our listener).
fn ping(o: &Opts) {
    let env = setup(o);
    let (mut stream, _) = env
        .initiate("gen.test", &["sut.test"])
        .unwrap_or_else(|e| die(&format!("dialback gen.test→sut.test: {e}")));
    let window = o.n("window", 500);
    let n = o.n("n", 20000);
    let warm = o.n("warmup", 1000);
    let sh = env.shared.clone();
    let run = |count: u64, base: u64, stream: &mut Conn| -> (u64, f64) {
        let t0 = Instant::now();
        let mut sent = 0u64;
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            let done = {
                let mut g = sh.pings.lock().unwrap();
                loop {
                    let d = *g - base;
                    if d >= count || sent - d < window || Instant::now() >= env.deadline {
                        break d;
                    }
                    g = sh
                        .ping_cv
                        .wait_timeout(g, Duration::from_millis(100))
                        .unwrap()
                        .0;
                }
            };
            if done >= count || Instant::now() >= env.deadline {
                return (done, t0.elapsed().as_secs_f64());
            }
            let k = (window - (sent - done)).min(count - sent);
            buf.clear();
            for i in 0..k {
                write!(
                    buf,
                    "<iq type='get' from='gen.test' to='sut.test' id='p{}'><ping xmlns='urn:xmpp:ping'/></iq>",
                    base + sent + i
                )
                .unwrap();
            }
            if k > 0 {
                if stream.s.write_all(&buf).is_err() {
                    eprintln!("load: ping: the SUT closed the stream");
                    return (done, t0.elapsed().as_secs_f64());
                }
                sent += k;
            }
        }
    };
    let (wd, _) = run(warm, 0, &mut stream);
    if wd < warm {
        die(&format!("ping warm-up: {wd}/{warm} replies"));
    }
    let cpu = CpuMeter::start(&env.sut_pid);
    let (done, secs) = run(n, warm, &mut stream);
    let cpu = cpu.stop();
    println!(
        "RESULT ping window={window} n={n} replies={done} errors={} secs={secs:.3} rtt_per_s={:.0} {cpu} {}",
        env.shared.iq_errors.load(Ordering::Relaxed),
        done as f64 / secs,
        env.tls_summary()
    );
    let _ = stream.s.write_all(b"</stream:stream>");
}

/// What `open_many` opened.
#[derive(Default)]
struct Opened {
    conns: Vec<Conn>,
    /// ms from our `<db:result/>` to `type='valid'`, sorted.
    times: Vec<f64>,
    /// ms from TCP connect to `type='valid'` (the whole handshake, STARTTLS included), sorted.
    totals: Vec<f64>,
    failed: u64,
}

/// Open `count` verified streams from distinct domains `{prefix}{i}.gen.test`, `conc` at a
/// time.
fn open_many(env: &Env, prefix: &str, from: u64, count: u64, conc: u64) -> Opened {
    let next = Arc::new(AtomicU64::new(from));
    let out = Arc::new(Mutex::new(Opened::default()));
    let mut hs = Vec::new();
    for _ in 0..conc {
        let next = next.clone();
        let out = out.clone();
        let (sut, deadline, tls) = (env.sut, env.deadline, env.tls.clone());
        let prefix = prefix.to_string();
        hs.push(
            thread::Builder::new()
                .stack_size(STACK)
                .spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= from + count || Instant::now() >= deadline {
                        return;
                    }
                    let dom = format!("{prefix}{i}.gen.test");
                    let t_open = Instant::now();
                    match initiate(sut, &dom, &["sut.test"], deadline, tls.as_ref()) {
                        Ok((c, t)) => {
                            let total = t_open.elapsed();
                            let mut g = out.lock().unwrap();
                            g.conns.push(c);
                            g.times.push(t.as_secs_f64() * 1e3);
                            g.totals.push(total.as_secs_f64() * 1e3);
                        }
                        Err(e) => {
                            let mut g = out.lock().unwrap();
                            if g.failed < 3 {
                                eprintln!("load: {dom}: {e}");
                            }
                            g.failed += 1;
                        }
                    }
                })
                .unwrap(),
        );
    }
    for h in hs {
        let _ = h.join();
    }
    let mut g = std::mem::take(&mut *out.lock().unwrap());
    g.times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    g.totals.sort_by(|a, b| a.partial_cmp(b).unwrap());
    g
}

/// Dialback handshakes from `--domains` distinct domains, `--concurrency` at a time.
fn handshake(o: &Opts) {
    let env = setup(o);
    let d = o.n("domains", 500);
    let conc = o.n("concurrency", 50);
    let prefix = o.s("prefix", "h");
    let cpu = CpuMeter::start(&env.sut_pid);
    let t0 = Instant::now();
    let got = open_many(&env, &prefix, 0, d, conc);
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu.stop();
    let (times, totals) = (&got.times, &got.totals);
    println!(
        "RESULT handshake domains={d} concurrency={conc} ok={} failed={} secs={secs:.3} hs_per_s={:.0} \
         p50_ms={:.2} p99_ms={:.2} total_p50_ms={:.2} total_p99_ms={:.2} total_max_ms={:.2} verifies={} bad_verifies={} {cpu} {}",
        times.len(),
        got.failed,
        times.len() as f64 / secs,
        pct(times, 0.5),
        pct(times, 0.99),
        pct(totals, 0.5),
        pct(totals, 0.99),
        totals.last().copied().unwrap_or(f64::NAN),
        env.shared.verifies.load(Ordering::Relaxed),
        env.shared.verify_bad.load(Ordering::Relaxed),
        env.tls_summary()
    );
    for mut c in got.conns {
        let _ = c.s.write_all(b"</stream:stream>");
    }
}

/// RSS of the SUT with 0, then `--steps` (e.g. 100,1000) idle verified inbound streams.
fn memory(o: &Opts) {
    let env = setup(o);
    let pid = env.sut_pid.clone();
    let steps: Vec<u64> = o
        .s("steps", "100,1000")
        .split(',')
        .map(|s| s.parse().unwrap_or_else(|_| die("--steps: numbers")))
        .collect();
    let settle = Duration::from_millis(o.n("settle-ms", 2000));
    thread::sleep(settle);
    let rss0 = status_kib(&pid, "VmRSS:");
    let thr0 = status_kib(&pid, "Threads:");
    let mut line = format!("RESULT memory rss0_kib={rss0} threads0={thr0}");
    let mut all = Vec::new();
    let mut have = 0;
    for &n in &steps {
        let got = open_many(&env, "m", have, n - have, 50);
        have = n;
        all.extend(got.conns);
        thread::sleep(settle);
        let rss = status_kib(&pid, "VmRSS:");
        let thr = status_kib(&pid, "Threads:");
        let open = all.len().max(1) as f64;
        let per = (rss as f64 - rss0 as f64) / open;
        let thr_per = (thr as f64 - thr0 as f64) / open;
        line.push_str(&format!(
            " n{n}_open={} n{n}_failed={} n{n}_rss_kib={rss} n{n}_threads={thr} n{n}_kib_per_stream={per:.1} \
             n{n}_threads_per_stream={thr_per:.3} n{n}_sut_outbound={}",
            all.len(),
            got.failed,
            env.shared.inbound.load(Ordering::Relaxed)
        ));
    }
    println!("{line} {}", env.tls_summary());
    // Keep the streams open for outside inspection (pmap, perf), bounded.
    let hold = o.n("hold-secs", 0).min(600);
    if hold > 0 {
        eprintln!("load: holding {} streams for {hold} s", all.len());
        thread::sleep(Duration::from_secs(hold));
    }
    for mut c in all {
        let _ = c.s.write_all(b"</stream:stream>");
    }
}

/// Raw parse rate of the same 200-byte messages in memory: the bare `xml` crate, dialbackd's
/// StreamReader (the `xml` crate plus policy and tree building), and the generator's scanner.
fn parse(o: &Opts) {
    let size = o.n("size", 200) as usize;
    let n = o.n("n", 100000);
    let mut doc = s2s_header("gen.test", "sut.test", Some("x")).into_bytes();
    let msg = message(size, "m");
    for _ in 0..n {
        doc.extend_from_slice(&msg);
    }
    doc.extend_from_slice(b"</stream:stream>");
    let mb = doc.len() as f64 / 1e6;

    // 1. The xml crate alone, default configuration.
    let t = Instant::now();
    let mut r = xml::reader::EventReader::new(Cursor::new(&doc[..]));
    let mut depth = 0;
    let mut count = 0u64;
    loop {
        match r.next() {
            Ok(xml::reader::XmlEvent::StartElement { .. }) => depth += 1,
            Ok(xml::reader::XmlEvent::EndElement { .. }) => {
                depth -= 1;
                if depth == 1 {
                    count += 1;
                }
            }
            Ok(xml::reader::XmlEvent::EndDocument) => break,
            Ok(_) => {}
            Err(e) => die(&format!("xml crate: {e}")),
        }
    }
    let xml_s = t.elapsed().as_secs_f64();
    assert_eq!(count, n);

    // 2. dialbackd::xml::StreamReader.
    let t = Instant::now();
    let mut sr = StreamReader::new(Cursor::new(&doc[..]), Limits::default());
    let mut count2 = 0u64;
    loop {
        match sr.next_event() {
            Ok(StreamEvent::Element(_)) => count2 += 1,
            Ok(StreamEvent::Header(_)) => {}
            Ok(StreamEvent::Close) => break,
            Err(e) => die(&format!("StreamReader: {e}")),
        }
    }
    let sr_s = t.elapsed().as_secs_f64();
    assert_eq!(count2, n);

    // 3. The generator's scanner (what the sink runs per received byte).
    let t = Instant::now();
    let mut sc = Scanner::new();
    let mut count3 = 0u64;
    for chunk in doc.chunks(64 * 1024) {
        sc.compact();
        sc.buf.extend_from_slice(chunk);
        while let Some(it) = sc.next() {
            if let Item::Elem(a, b) = it {
                if name_of(&sc.buf[a..b]) == b"message" {
                    count3 += 1;
                }
            }
        }
    }
    let sc_s = t.elapsed().as_secs_f64();
    assert_eq!(count3, n);
    println!(
        "RESULT parse size={size} n={n} doc_mb={mb:.1} xml_msgs_per_s={:.0} xml_mb_per_s={:.2} streamreader_msgs_per_s={:.0} streamreader_mb_per_s={:.2} scanner_msgs_per_s={:.0}",
        n as f64 / xml_s,
        mb / xml_s,
        n as f64 / sr_s,
        mb / sr_s,
        n as f64 / sc_s
    );
}

/// The generator alone: its sender into a socket that discards, and its window logic, so the
/// figures show it is not the bottleneck.
fn selftest(o: &Opts) {
    let size = o.n("size", 200) as usize;
    let n = o.n("n", 500000);
    let addr: SocketAddr = o.addr("discard", "127.0.50.4:5999");
    let l = TcpListener::bind(addr).unwrap_or_else(|e| die(&format!("bind {addr}: {e}")));
    let msg = message(size, "m");
    let total = msg.len() as u64 * n;
    let h = thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        // The discard end uses the same scanner as the sink, so this is sender + sink together.
        let mut c = Conn::new(s);
        let mut count = 0u64;
        while count < n {
            match c.next() {
                Ok(Item::Elem(..)) => count += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        count
    });
    let mut s = Conn::new(TcpStream::connect(addr).unwrap());
    s.s.write_all(s2s_header("gen.test", "x", None).as_bytes())
        .unwrap();
    let per_write = (64 * 1024 / msg.len()).max(1);
    let mut chunk = Vec::new();
    for _ in 0..per_write {
        chunk.extend_from_slice(&msg);
    }
    let cpu = CpuMeter::start("0");
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < n {
        let k = (per_write as u64).min(n - sent) as usize;
        s.s.write_all(&chunk[..k * msg.len()]).unwrap();
        sent += k as u64;
    }
    let got = h.join().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "RESULT selftest size={size} n={n} received={got} msgs_per_s={:.0} mb_per_s={:.1} {}",
        got as f64 / secs,
        total as f64 / secs / 1e6,
        cpu.stop()
    );
}

/// Poll until IP:PORT accepts; print the time since `--since-ns` (ns since the UNIX epoch).
fn waitport(o: &Opts, target: &str) {
    let addr: SocketAddr = target.parse().unwrap_or_else(|_| die("waitport IP:PORT"));
    let since: u128 = o.s("since-ns", "0").parse().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(o.n("timeout", 30));
    while Instant::now() < deadline {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let ms = (nanos() - since) as f64 / 1e6;
            drop(s);
            println!("RESULT waitport ms={ms:.1}");
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
    die(&format!("{addr} did not accept within the timeout"));
}

/// What `cargo test` runs: the scanner against a small stream, no network.
fn offline_check() {
    let mut sc = Scanner::new();
    let doc = b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' id=\"s1\" from='a'>\
        <db:result from='a' to='b' type='valid'/><message to='x' id='t5'><body>a&gt;b</body></message>\
        <iq type='result' id='p1'><ping xmlns='urn:xmpp:ping'/></iq></stream:stream>";
    let mut items = Vec::new();
    // Feed byte by byte: elements split across reads must come out whole.
    for &b in doc.iter() {
        sc.buf.push(b);
        while let Some(it) = sc.next() {
            items.push(match it {
                Item::Header(a, b) | Item::Elem(a, b) => sc.buf[a..b].to_vec(),
                Item::Close => b"CLOSE".to_vec(),
            });
        }
    }
    assert_eq!(items.len(), 5, "scanner items");
    assert_eq!(attr(&items[0], "id").as_deref(), Some("s1"));
    assert!(is_dialback(&items[1], "result"));
    assert_eq!(attr(&items[1], "type").as_deref(), Some("valid"));
    assert_eq!(name_of(&items[2]), b"message");
    assert_eq!(attr(&items[2], "id").as_deref(), Some("t5"));
    assert_eq!(name_of(&items[3]), b"iq");
    assert_eq!(items[4], b"CLOSE");
    let k = secret().key("sut.test", "gen.test", "id1");
    assert!(secret().verify("sut.test", "gen.test", "id1", &k));
    tls_offline_check();
    eprintln!("load: offline check passed (run workloads through benches/run.sh)");
}

/// The TLS pass's configurations complete a handshake with each other in memory (our client
/// accepts a self-signed server certificate and presents its own), and application data
/// written by the client reaches the server.
fn tls_offline_check() {
    let (client_cfg, server_cfg) = tls_configs();
    let name = ServerName::try_from("r1t1.gen.test").unwrap();
    let mut client = ClientConnection::new(client_cfg, name).unwrap();
    let mut server = ServerConnection::new(server_cfg).unwrap();
    let mut flights = 0;
    while client.is_handshaking() || server.is_handshaking() {
        flights += 1;
        assert!(flights < 10, "TLS handshake does not complete");
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        server.read_tls(&mut &wire[..]).unwrap();
        server.process_new_packets().unwrap();
        wire.clear();
        while server.wants_write() {
            server.write_tls(&mut wire).unwrap();
        }
        client.read_tls(&mut &wire[..]).unwrap();
        client.process_new_packets().unwrap();
    }
    client.writer().write_all(b"<stream:stream>").unwrap();
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    server.read_tls(&mut &wire[..]).unwrap();
    server.process_new_packets().unwrap();
    let mut got = [0u8; 15];
    server.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"<stream:stream>");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Skip option values when looking for the workload name.
    let mut workload = None;
    let mut i = 0;
    while i < args.len() {
        if args[i].starts_with("--") {
            i += if args[i] == "--bench" { 1 } else { 2 };
            continue;
        }
        workload = Some(args[i].clone());
        break;
    }
    let rest: Vec<String> = args.iter().skip(i + 1).cloned().collect();
    let o = Opts::parse(&rest);
    match workload.as_deref() {
        Some("tput") => tput(&o),
        Some("latency") => latency(&o),
        Some("ping") => ping(&o),
        Some("handshake") => handshake(&o),
        Some("memory") => memory(&o),
        Some("parse") => parse(&o),
        Some("selftest") => selftest(&o),
        Some("waitport") => {
            let t = rest.first().cloned().unwrap_or_default();
            let o = Opts::parse(&rest[1.min(rest.len())..]);
            waitport(&o, &t)
        }
        // `cargo test --all-targets` runs this binary without arguments: check the scanner
        // offline, quickly, and succeed.
        None => offline_check(),
        _ => die("usage: load tput|latency|ping|handshake|memory|parse|selftest|waitport IP:PORT [--opt value ...]"),
    }
    std::process::exit(0);
}
