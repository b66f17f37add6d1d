//! The stream thread, in memory: streams dial through a connector that hands out Unix socket
//! pairs (or ends that never connect), and the test plays the peer on the other end. The router
//! is real; the sender of every stanza is a component handle the test reads bounces from.
//!
//! Each test asserts what the issue "one thread per stream" promises: every wait is bounded
//! (dialling, negotiating, writing to a peer that reads nothing), shutdown ends every state
//! with everything bounced, a panic is contained, and nothing accepted is lost: each stanza is
//! delivered once or bounced once.

use crate::config::StaticRoute;
use crate::dns::Resolver;
use crate::domain::Domain;
use crate::inbox::{Handle, Input, StreamKind};
use crate::router::Router;
use crate::stream::testutil;
use crate::transport::{Connector, Transport};
use crate::xml::{Element, Limits, StreamEvent, StreamReader};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every wait in these tests is bounded by this.
const BOUND: Duration = Duration::from_secs(20);

/// What the connector hands out, in order.
enum Next {
    /// A connected pair: the stream gets this end.
    Connected(UnixStream),
    /// An end whose connect never completes (it never becomes writable).
    Never(UnixStream),
    /// The connect panics (a bug in the stream thread).
    Panic,
}

#[derive(Default)]
struct Pairs {
    next: Mutex<VecDeque<Next>>,
    calls: AtomicUsize,
}

impl Connector for Pairs {
    fn connect(&self, _addr: SocketAddr) -> io::Result<Box<dyn Transport>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let next = self.next.lock().unwrap().pop_front();
        match next {
            Some(Next::Connected(s) | Next::Never(s)) => Ok(Box::new(s)),
            Some(Next::Panic) => panic!("connector bug"),
            None => Err(io::ErrorKind::ConnectionRefused.into()),
        }
    }
}

impl Pairs {
    /// A connected pair: the stream's end is queued, the peer's returned (blocking, bounded).
    fn connected(&self) -> UnixStream {
        let (ours, peer) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        peer.set_read_timeout(Some(BOUND)).unwrap();
        peer.set_write_timeout(Some(BOUND)).unwrap();
        self.next.lock().unwrap().push_back(Next::Connected(ours));
        peer
    }

    /// An end that never connects: its send buffer is full and nobody reads the other end.
    fn never(&self) -> UnixStream {
        let (ours, peer) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let chunk = [0u8; 4096];
        while (&ours).write(&chunk).is_ok() {}
        self.next.lock().unwrap().push_back(Next::Never(ours));
        peer
    }
}

struct Setup {
    router: Arc<Router>,
    pairs: Arc<Pairs>,
    /// The component echo.a.test, the sender of every stanza and receiver of the bounces.
    comp: Handle,
}

/// A router whose b.test is reached through `pairs`; `negotiation` seconds to set a stream up.
fn setup(negotiation: u64) -> Setup {
    let ctx = testutil::ctx_with(|c| {
        c.timeouts.negotiation = Duration::from_secs(negotiation);
        c.timeouts.dialback = Duration::from_secs(negotiation);
        c.timeouts.retry = Duration::from_secs(60);
        c.routes.insert(
            Domain::parse("b.test").unwrap(),
            StaticRoute {
                host: "192.0.2.1".into(),
                port: 5269,
            },
        );
    });
    let pairs = Arc::new(Pairs::default());
    let resolver = Resolver::new(Vec::new(), Duration::from_secs(1));
    let router = Router::with_connector(ctx, resolver, None, pairs.clone());
    let comp = router.new_handle(StreamKind::Component, 100_000).unwrap();
    assert!(router.register_component(Domain::parse("echo.a.test").unwrap(), comp.clone()));
    Setup {
        router,
        pairs,
        comp,
    }
}

fn msg(n: usize, body: usize) -> Element {
    Element::new("message", "jabber:server")
        .with_attr("from", "u@echo.a.test")
        .with_attr("to", "v@b.test")
        .with_attr("id", format!("m{n}"))
        .with_child(Element::new("body", "jabber:server").with_text("z".repeat(body)))
}

impl Setup {
    /// Route `n` numbered messages from the component to b.test, starting what the router asks.
    fn send(&self, range: std::ops::Range<usize>, body: usize) {
        for n in range {
            super::start(&self.router, self.router.route(msg(n, body)));
        }
    }

    /// Bounces received by the component so far, waiting (bounded) until there are `n`.
    fn bounces(&self, n: usize) -> Vec<Element> {
        let mut got = Vec::new();
        let deadline = Instant::now() + BOUND;
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{} bounces of {n} within {BOUND:?}",
                got.len()
            );
            if self.comp.inbox().prepare_sleep() {
                super::link::poll(&[(self.comp.inbox().fd(), libc::POLLIN)], left).unwrap();
            }
            let mut batch = Vec::new();
            self.comp.inbox().take(&mut batch, usize::MAX);
            for input in batch {
                if let Input::Stanza(el, bytes) = input {
                    self.comp.taken(bytes);
                    got.push(el);
                }
            }
        }
        got
    }

    /// Wait (bounded) until no stream is left.
    fn no_streams(&self) {
        let ended = self.router.wait_streams(None, Instant::now() + BOUND);
        assert!(ended, "streams left: {}", self.router.stream_count());
    }
}

/// The error condition of a bounce.
fn condition(el: &Element) -> String {
    el.elements()
        .find(|e| e.name == "error")
        .and_then(|e| e.elements().next())
        .map(|c| c.name.to_string())
        .unwrap_or_default()
}

/// The peer's side of a connected pair: a blocking reader of our stream, and its writer.
struct Peer {
    reader: StreamReader<UnixStream>,
    writer: UnixStream,
}

impl Peer {
    fn new(sock: UnixStream) -> Peer {
        let writer = sock.try_clone().unwrap();
        Peer {
            reader: StreamReader::new(sock, Limits::default()),
            writer,
        }
    }

    fn next(&mut self) -> StreamEvent {
        self.reader.next_event().expect("the stream goes on")
    }

    /// Play the Receiving Server up to `type='valid'`: the stream is established.
    fn accept_dialback(&mut self) {
        assert!(matches!(self.next(), StreamEvent::Header(_)));
        self.writer
            .write_all(
                b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
                  xmlns:db='jabber:server:dialback' from='b.test' to='echo.a.test' id='x1' version='1.0'>\
                  <stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
            )
            .unwrap();
        match self.next() {
            StreamEvent::Element(e) if e.name == "result" => {}
            other => panic!("expected db:result, got {other:?}"),
        }
        self.writer
            .write_all(b"<db:result from='b.test' to='echo.a.test' type='valid'/>")
            .unwrap();
    }

    /// The ids of the messages that arrive until the stream ends (EOF, close or error).
    fn messages(&mut self) -> Vec<String> {
        let mut ids = Vec::new();
        while let Ok(StreamEvent::Element(e)) = self.reader.next_event() {
            if e.name == "message" {
                ids.push(e.attr("id").unwrap_or_default().to_string());
            }
        }
        ids
    }
}

#[test]
fn route02_srv06_the_deadline_fires_while_dialling_and_the_pair_backs_off() {
    let s = setup(1);
    let _peer = s.pairs.never();
    s.send(0..3, 10);
    let b = s.bounces(3);
    assert!(
        b.iter().all(|e| condition(e) == "remote-server-timeout"),
        "{b:?}"
    );
    s.no_streams();
    assert_eq!(s.router.outbound_streams(), 0);
    // Backoff: the next stanza bounces at once, with no new dial.
    s.send(3..4, 10);
    assert_eq!(condition(&s.bounces(1)[0]), "remote-server-timeout");
    assert_eq!(s.pairs.calls.load(Ordering::SeqCst), 1);
}

#[test]
fn shutdown_ends_a_stream_that_is_dialling_and_bounces_its_queue() {
    let s = setup(60);
    let _peer = s.pairs.never();
    s.send(0..5, 10);
    s.router.shutdown(BOUND);
    assert_eq!(s.router.stream_count(), 0);
    assert_eq!(s.bounces(5).len(), 5);
}

#[test]
fn the_deadline_fires_while_negotiating_with_a_silent_peer() {
    let s = setup(1);
    let mut peer = Peer::new(s.pairs.connected());
    s.send(0..2, 10);
    // The peer reads our header and never answers.
    assert!(matches!(peer.next(), StreamEvent::Header(_)));
    let b = s.bounces(2);
    assert!(
        b.iter().all(|e| condition(e) == "remote-server-timeout"),
        "{b:?}"
    );
    match peer.next() {
        StreamEvent::Element(e) => assert!(e.elements().any(|c| c.name == "connection-timeout")),
        other => panic!("expected a stream error, got {other:?}"),
    }
    s.no_streams();
}

/// Send `n` stanzas over an established stream whose peer reads `read_first` of them and then
/// nothing; returns (the peer, the ids it read first).
fn stalled(s: &Setup, n: usize, read_first: usize) -> (Peer, Vec<String>) {
    let mut peer = Peer::new(s.pairs.connected());
    s.send(0..1, 10);
    peer.accept_dialback();
    let mut first = Vec::new();
    while first.len() < read_first {
        match peer.next() {
            StreamEvent::Element(e) if e.name == "message" => {
                first.push(e.attr("id").unwrap_or_default().to_string())
            }
            other => panic!("{other:?}"),
        }
    }
    s.send(1..n, 1000);
    (peer, first)
}

/// Every id 0..n is delivered (read by the peer) or bounced, never both, never twice; the
/// delivered ones in order.
fn accounted(n: usize, delivered: &[String], bounced: &[Element]) {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for id in delivered {
        assert!(seen.insert(id.clone(), "delivered").is_none(), "{id} twice");
    }
    for b in bounced {
        let id = b.attr("id").unwrap_or_default().to_string();
        assert!(
            seen.insert(id.clone(), "bounced").is_none(),
            "{id} delivered and bounced"
        );
    }
    assert_eq!(seen.len(), n, "every stanza accounted for");
    let order: Vec<usize> = delivered.iter().map(|i| i[1..].parse().unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "delivered in order");
}

#[test]
fn route01_route02_a_peer_that_reads_nothing_is_dropped_and_what_it_did_not_take_bounces() {
    let s = setup(1);
    let n = 3000;
    let (mut peer, first) = stalled(&s, n, 1);
    // The stall bound (1 s) ends the stream; the peer then reads what reached its socket.
    let bounced_so_far = s.bounces(1);
    let mut delivered = first;
    delivered.extend(peer.messages());
    let rest = n - delivered.len() - bounced_so_far.len();
    let mut bounced = bounced_so_far;
    bounced.extend(s.bounces(rest));
    accounted(n, &delivered, &bounced);
    assert!(
        bounced.len() > 100,
        "the socket cannot hold 3 MB: {}",
        bounced.len()
    );
    s.no_streams();
}

#[test]
fn shutdown_ends_a_stream_blocked_writing_and_bounces_the_rest() {
    let s = setup(60);
    let n = 3000;
    let (mut peer, first) = stalled(&s, n, 1);
    let t0 = Instant::now();
    s.router.shutdown(Duration::from_secs(5));
    assert!(t0.elapsed() < Duration::from_secs(5), "within the bound");
    assert_eq!(s.router.stream_count(), 0);
    let mut delivered = first;
    delivered.extend(peer.messages());
    let bounced = s.bounces(n - delivered.len());
    accounted(n, &delivered, &bounced);
}

#[test]
fn a_panic_in_a_stream_is_contained_and_releases_everything() {
    let s = setup(60);
    s.pairs.next.lock().unwrap().push_back(Next::Panic);
    s.send(0..3, 10);
    let b = s.bounces(3);
    assert!(
        b.iter().all(|e| condition(e) == "internal-server-error"),
        "{b:?}"
    );
    s.no_streams();
    assert_eq!(s.router.outbound_streams(), 0);
    assert_eq!(s.router.queued_bytes().used(), 0);
}

#[test]
fn sec11_a_verification_whose_requester_ended_is_abandoned_at_once() {
    let s = setup(60);
    let _peer = s.pairs.never();
    let requester = s.router.new_handle(StreamKind::Server, 10).unwrap();
    let req = crate::stream::VerifyRequest {
        local: Domain::parse("a.test").unwrap(),
        remote: Domain::parse("b.test").unwrap(),
        stream_id: "sid".into(),
        key: "k".into(),
    };
    let start = s.router.verify(req, &requester).unwrap();
    super::start(&s.router, vec![start]);
    assert_eq!(s.router.stream_count(), 1);
    let t0 = Instant::now();
    requester.close();
    s.no_streams();
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "long before its 60 s deadline"
    );
    // Its place under limits.pending_verifications is free again.
    let cap = s.router.ctx().config.limits.pending_verifications;
    let mut starts = Vec::new();
    for _ in 0..cap {
        let req = crate::stream::VerifyRequest {
            local: Domain::parse("a.test").unwrap(),
            remote: Domain::parse("b.test").unwrap(),
            stream_id: "sid".into(),
            key: "k".into(),
        };
        starts.push(
            s.router
                .verify(req, &requester)
                .expect("room for every one"),
        );
    }
    drop(starts);
}

/// Read from `r` until `needle` has arrived (bounded by the socket's timeout); what was read.
fn read_until(r: &mut impl std::io::Read, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = r
            .read(&mut buf)
            .expect("the peer keeps reading within the bound");
        assert!(
            n > 0,
            "EOF before {needle:?}: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn tls01_route01_an_outbound_stream_upgrades_to_tls_in_memory_and_delivers_in_order() {
    let dir = std::env::temp_dir().join(format!("dialbackd-conn-tls-{}", std::process::id()));
    let ours = crate::tls::gen_cert(&Domain::parse("echo.a.test").unwrap(), &dir).unwrap();
    let theirs = crate::tls::gen_cert(&Domain::parse("b.test").unwrap(), &dir).unwrap();
    let ctx = testutil::ctx_with(|c| {
        c.tls.enabled = true;
        c.tls.certs.insert(
            Domain::parse("echo.a.test").unwrap(),
            crate::config::CertPair {
                certificate: ours.0.clone(),
                key: ours.1.clone(),
            },
        );
        c.routes.insert(
            Domain::parse("b.test").unwrap(),
            StaticRoute {
                host: "192.0.2.1".into(),
                port: 5269,
            },
        );
    });
    let tls = crate::tls::TlsContext::from_config(&ctx.config).unwrap();
    let pairs = Arc::new(Pairs::default());
    let resolver = Resolver::new(Vec::new(), Duration::from_secs(1));
    let router = Router::with_connector(ctx, resolver, Some(tls), pairs.clone());
    let comp = router.new_handle(StreamKind::Component, 1000).unwrap();
    assert!(router.register_component(Domain::parse("echo.a.test").unwrap(), comp.clone()));
    let s = Setup {
        router,
        pairs,
        comp,
    };
    let mut sock = s.pairs.connected();
    s.send(0..50, 100);
    // Plaintext: header, features offering STARTTLS (the stream must take it), proceed.
    read_until(&mut sock, "<stream:stream");
    sock.write_all(
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
          xmlns:db='jabber:server:dialback' from='b.test' to='echo.a.test' id='p1' version='1.0'>\
          <stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
          <dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
    )
    .unwrap();
    read_until(&mut sock, "starttls");
    sock.write_all(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .unwrap();
    // TLS, the way rustls pairs a client and a server: the peer is a rustls server.
    let certs = crate::tls::ServerCerts::load(
        &[(Domain::parse("b.test").unwrap(), theirs.0, theirs.1)],
        None,
    )
    .unwrap();
    let server = rustls::ServerConnection::new(crate::tls::server_config(&certs).unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(server, sock);
    read_until(&mut tls, "<stream:stream");
    tls.write_all(
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
          xmlns:db='jabber:server:dialback' from='b.test' to='echo.a.test' id='p2' version='1.0'>\
          <stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
    )
    .unwrap();
    read_until(&mut tls, "</db:result>");
    tls.write_all(b"<db:result from='b.test' to='echo.a.test' type='valid'/>")
        .unwrap();
    let text = read_until(&mut tls, "id='m49'");
    let ids: Vec<usize> = text
        .split("<message ")
        .skip(1)
        .filter_map(|m| m.split("id='m").nth(1)?.split('\'').next()?.parse().ok())
        .collect();
    assert_eq!(ids, (0..50).collect::<Vec<_>>(), "all, in order, over TLS");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The stream header the monitoring plugin check_xmppng `--s2s` sends (before and after
/// STARTTLS): an XML declaration, `to` but no `from`, no `xmlns:db`.
const PROBE_HEADER: &[u8] = b"<?xml version='1.0' ?><stream:stream to='a.test' \
    xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

/// An inbound stream over STARTTLS that the peer closes gets our `</stream:stream>` and then
/// TLS close_notify before the connection ends (STR-05; RFC 8446 §6.1: each party MUST send
/// close_notify before closing its write side). Without it a TLS client reads an unexpected
/// EOF: check_xmppng `--s2s --starttls` reported UNKNOWN (`UNEXPECTED_EOF_WHILE_READING`)
/// when the socket was closed bare after the closing tag.
#[test]
fn an_inbound_tls_stream_closed_by_the_peer_ends_with_close_notify() {
    let dir = std::env::temp_dir().join(format!("dialbackd-conn-in-tls-{}", std::process::id()));
    let a = Domain::parse("a.test").unwrap();
    let (certificate, key) = crate::tls::gen_cert(&a, &dir).unwrap();
    let ctx = testutil::ctx_with(|c| {
        c.tls.enabled = true;
        c.tls.require_encryption = true;
        c.timeouts.close = Duration::from_secs(1);
        c.tls
            .certs
            .insert(a.clone(), crate::config::CertPair { certificate, key });
    });
    let tls = crate::tls::TlsContext::from_config(&ctx.config).unwrap();
    // Our own client configuration accepts any server certificate, as the plugin's
    // --no-check-certificates does.
    let client = tls.client(&a, false).unwrap();
    let resolver = Resolver::new(Vec::new(), Duration::from_secs(1));
    let router = Router::with_connector(ctx, resolver, Some(tls), Arc::new(Pairs::default()));
    let (ours, mut peer) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_read_timeout(Some(BOUND)).unwrap();
    let addr = "127.0.0.1:40000".parse().unwrap();
    super::start_incoming(&router, Box::new(ours), addr, false).unwrap();
    peer.write_all(PROBE_HEADER).unwrap();
    assert!(read_until(&mut peer, "</stream:features>").contains("<required/>"));
    peer.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .unwrap();
    read_until(&mut peer, "<proceed");
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let conn = rustls::ClientConnection::new(client, name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, peer);
    tls.write_all(PROBE_HEADER).unwrap();
    let features = read_until(&mut tls, "</stream:features>");
    assert!(!features.contains("starttls"), "{features}");
    tls.write_all(b"</stream:stream>").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match std::io::Read::read(&mut tls, &mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "the stream ended without close_notify ({e}) after {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    assert_eq!(got, b"</stream:stream>", "our close, then close_notify");
    let _ = std::fs::remove_dir_all(&dir);
}
