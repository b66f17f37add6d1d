//! Who is connected, and where each stanza goes.
//!
//! In scope: the per-(local, remote) outbound routes and their FIFO handles (one connection
//! attempt per pair, later stanzas queue behind it: DB-02, ROUTE-01), the connected components,
//! local delivery (components, the built-in XEP-0199 ping answer, `service-unavailable`
//! otherwise), bounces (never of errors or iq results: ROUTE-02), the global cap on pending
//! dialback verifications (SEC-11), the registry of live streams for a graceful shutdown, and
//! the per-IP connection counts (IPv6 per /64), and the resource caps of the "Hostile input"
//! issue: outbound streams in total, bytes of stanzas held per stream and in total, bounded
//! bounce payloads, component connections and handshake failures per address. Out of scope:
//! the streams themselves (`conn`) and the protocol (`stream`).
//!
//! Every table is behind its own `Mutex`, held only for map operations and non-blocking channel
//! sends: no thread ever waits on another stream's socket while holding one.

use crate::conn::{self, Inbox, Input};
use crate::dns::Resolver;
use crate::domain::{Domain, Jid};
use crate::ratelimit::{warn_limited, FailureWindow, RateLimit, LOG_EVERY};
use crate::stanza;
use crate::stream::outgoing::Purpose;
use crate::stream::{Ctx, Verdict, VerifyRequest};
use crate::tls::TlsContext;
use crate::xml::Element;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What kind of stream a handle belongs to (shutdown closes server streams before components).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// A server-to-server stream, either direction, or a verify connection.
    Server,
    /// An XEP-0114 component.
    Component,
}

/// A way to reach one stream's worker thread. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct Handle {
    id: u64,
    kind: StreamKind,
    inbox: Arc<Inbox>,
    queued: Arc<AtomicUsize>,
    cap: usize,
    /// Bytes of stanzas held for the stream (its inbox plus its core's queue).
    bytes: Arc<AtomicUsize>,
    byte_cap: usize,
    total: Arc<ByteTotal>,
}

/// Bytes of stanzas held for many streams together, and their cap (`limits.queued_bytes` for
/// the server streams).
pub struct ByteTotal {
    used: AtomicUsize,
    cap: usize,
}

impl ByteTotal {
    /// A total capped at `cap` bytes.
    pub fn new(cap: usize) -> ByteTotal {
        ByteTotal {
            used: AtomicUsize::new(0),
            cap,
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Which byte cap refused a stanza.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteCap {
    /// `limits.queue_bytes`: too much held for this stream.
    Stream,
    /// `limits.queued_bytes`: too much held for all streams.
    Total,
}

/// Why a stanza could not be handed to a stream.
pub enum SendError {
    /// The stream's outbox is full (`resource-constraint`).
    Full(Element),
    /// The stream has ended.
    Gone(Element),
    /// Too many bytes are held for the stream or in total (`resource-constraint`).
    Bytes(Element, ByteCap),
}

impl Handle {
    /// A handle over `inbox`, refusing stanzas once `cap` are waiting.
    pub fn new(id: u64, kind: StreamKind, inbox: Arc<Inbox>, cap: usize) -> Handle {
        Handle {
            id,
            kind,
            inbox,
            queued: Arc::new(AtomicUsize::new(0)),
            cap,
            bytes: Arc::new(AtomicUsize::new(0)),
            byte_cap: usize::MAX,
            total: Arc::new(ByteTotal::new(usize::MAX)),
        }
    }

    /// Cap the bytes of stanzas held for this stream at `per_stream`, counted into `total`.
    pub fn with_byte_caps(mut self, per_stream: usize, total: Arc<ByteTotal>) -> Handle {
        self.byte_cap = per_stream;
        self.total = total;
        self
    }

    /// Bytes of stanzas held for this stream now.
    pub fn held_bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Count `n` more bytes held, unless a cap refuses them. A stream with nothing held
    /// always takes one stanza (one stanza of any allowed size must be deliverable).
    fn charge(&self, n: usize) -> Result<(), ByteCap> {
        let here = self.bytes.fetch_add(n, Ordering::AcqRel);
        if here > 0 && here.saturating_add(n) > self.byte_cap {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            return Err(ByteCap::Stream);
        }
        let total = self.total.used.fetch_add(n, Ordering::AcqRel);
        if total.saturating_add(n) > self.total.cap {
            self.total.used.fetch_sub(n, Ordering::AcqRel);
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            return Err(ByteCap::Total);
        }
        Ok(())
    }

    /// The bytes held for this stream went from `old` to `new` (its core queued or sent
    /// stanzas it had taken from the inbox): no cap applies, they were admitted already.
    pub fn recharge(&self, old: usize, new: usize) {
        if new > old {
            self.bytes.fetch_add(new - old, Ordering::AcqRel);
            self.total.used.fetch_add(new - old, Ordering::AcqRel);
        } else if old > new {
            self.bytes.fetch_sub(old - new, Ordering::AcqRel);
            self.total.used.fetch_sub(old - new, Ordering::AcqRel);
        }
    }

    /// The worker took a stanza of `bytes` (as charged by `send_stanza`) out of the inbox: it
    /// no longer counts as waiting there.
    pub fn taken(&self, bytes: usize) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.recharge(bytes, 0);
    }

    /// The stream's id (unique in this process).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The counter of stanzas sent but not yet taken by the worker.
    pub fn queued(&self) -> &Arc<AtomicUsize> {
        &self.queued
    }

    /// Queue a stanza for the stream.
    ///
    /// # Errors
    /// The stanza comes back when the outbox is full or the stream is gone.
    pub fn send_stanza(&self, el: Element) -> Result<(), SendError> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.cap {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(SendError::Full(el));
        }
        let n = stanza::wire_size(&el);
        if let Err(cap) = self.charge(n) {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(SendError::Bytes(el, cap));
        }
        self.inbox.send(Input::Stanza(el, n)).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.recharge(n, 0);
            match e {
                Input::Stanza(el, _) => SendError::Gone(el),
                _ => unreachable!("we sent a stanza"),
            }
        })
    }

    /// Send a control message; false when the stream is gone.
    pub fn send(&self, input: Input) -> bool {
        self.inbox.send(input).is_ok()
    }
}

/// One outbound domain-pair stream counted against `limits.outbound_streams`; dropping it (when
/// the stream's worker ends, on whatever path) gives the slot back.
pub struct OutboundSlot(Arc<AtomicUsize>);

impl Drop for OutboundSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a component connection is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComponentRefusal {
    /// `limits.component_connections` are open.
    Total,
    /// `limits.component_connections_per_ip` are open from this address.
    PerIp,
    /// Too many failed handshakes from this address lately (`limits.component_failures`).
    Banned,
}

/// Component connections per address, in total, and handshake failures per address.
struct ComponentGate {
    open: HashMap<IpAddr, usize>,
    total: usize,
    failures: FailureWindow<IpAddr>,
}

/// The shared routing state of the daemon.
pub struct Router {
    /// The protocol context shared by all stream cores.
    pub ctx: Arc<Ctx>,
    /// The DNS resolver for outbound connections.
    pub resolver: Resolver,
    /// Certificates and TLS configurations, when TLS is enabled.
    pub tls: Option<TlsContext>,
    routes: Mutex<HashMap<(Domain, Domain), Handle>>,
    components: Mutex<HashMap<Domain, Handle>>,
    streams: Mutex<HashMap<u64, Handle>>,
    streams_changed: Condvar,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Outbound domain-pair streams alive (`limits.outbound_streams`).
    outbound: Arc<AtomicUsize>,
    /// Bytes of stanzas held for all streams (`limits.queued_bytes`).
    queued_bytes: Arc<ByteTotal>,
    /// Component connections and handshake failures per address.
    components_gate: Mutex<ComponentGate>,
    next_id: AtomicU64,
    verifications: AtomicUsize,
    shutting_down: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another thread while it held the lock leaves the map itself consistent
    // (every critical section is a single map operation), so keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Router {
    /// A router for this context.
    pub fn new(ctx: Arc<Ctx>, resolver: Resolver, tls: Option<TlsContext>) -> Arc<Router> {
        let limits = &ctx.config.limits;
        let queued_bytes = Arc::new(ByteTotal::new(limits.queued_bytes));
        let components_gate = Mutex::new(ComponentGate {
            open: HashMap::new(),
            total: 0,
            failures: FailureWindow::new(
                u32::try_from(limits.component_failures).unwrap_or(u32::MAX),
                limits.component_failure_window,
            ),
        });
        Arc::new(Router {
            ctx,
            resolver,
            tls,
            routes: Mutex::new(HashMap::new()),
            components: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            streams_changed: Condvar::new(),
            per_ip: Mutex::new(HashMap::new()),
            outbound: Arc::new(AtomicUsize::new(0)),
            queued_bytes,
            components_gate,
            next_id: AtomicU64::new(1),
            verifications: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// A fresh stream id for handles and logs.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// True once shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Route a stanza by its `to`: to a local receiver, or out to a remote server.
    pub fn route(self: &Arc<Self>, el: Element) {
        let to = match el.attr("to").map(Jid::parse) {
            Some(Ok(j)) => j,
            _ => {
                log::debug!("dropping a stanza with no usable 'to'");
                return;
            }
        };
        if self.ctx.config.is_local(&to.domain) {
            return self.deliver_local(el, &to);
        }
        let from = match el.attr("from").map(Jid::parse) {
            Some(Ok(j)) if self.ctx.config.is_local(&j.domain) => j.domain,
            _ => {
                // Only our own domains originate outbound traffic: we are no open relay.
                log::warn!(
                    "dropping a stanza to {} whose 'from' is not one of our domains",
                    to.domain
                );
                return;
            }
        };
        self.send_remote(from, to.domain, el);
    }

    fn deliver_local(self: &Arc<Self>, el: Element, to: &Jid) {
        if to.is_domain() && stanza::is_ping(&el) {
            // XEP-0199: the daemon answers pings to its domains itself.
            return self.route(stanza::iq_result(&el));
        }
        // Sent while holding the lock, so a component that unregisters and drains its
        // queue cannot miss a stanza (the send never blocks).
        let sent = match lock(&self.components).get(&to.domain) {
            Some(h) => h.send_stanza(el),
            None => Err(SendError::Gone(el)),
        };
        match sent {
            Ok(()) => {}
            Err(SendError::Full(el)) => {
                self.bounce(el, "resource-constraint", "the recipient's queue is full")
            }
            Err(SendError::Bytes(el, cap)) => self.bytes_refused(el, cap, &to.domain),
            Err(SendError::Gone(el)) => self.bounce(
                el,
                "service-unavailable",
                "no service here handles this address",
            ),
        }
    }

    fn send_remote(self: &Arc<Self>, local: Domain, remote: Domain, el: Element) {
        let key = (local, remote);
        let mut routes = lock(&self.routes);
        let result = match routes.get(&key) {
            Some(h) => h.send_stanza(el),
            None => Err(SendError::Gone(el)),
        };
        let el = match result {
            Ok(()) => return,
            Err(SendError::Full(el)) => {
                drop(routes);
                return self.bounce(
                    el,
                    "resource-constraint",
                    &format!("too many stanzas queued for {}", key.1),
                );
            }
            Err(SendError::Bytes(el, cap)) => {
                drop(routes);
                return self.bytes_refused(el, cap, &key.1);
            }
            Err(SendError::Gone(el)) => {
                routes.remove(&key);
                el
            }
        };
        if self.is_shutting_down() {
            drop(routes);
            return self.bounce(el, "remote-server-timeout", "the server is shutting down");
        }
        // Checked under the routes lock, which every new outbound stream is started under:
        // no two senders can both take the last slot.
        let cap = self.ctx.config.limits.outbound_streams;
        if self.outbound_streams() >= cap {
            drop(routes);
            static LOG: RateLimit = RateLimit::new(LOG_EVERY);
            warn_limited!(LOG,
                "not opening a stream {}→{}: {cap} outbound streams open (limits.outbound_streams); bouncing",
                key.0, key.1
            );
            return self.bounce(
                el,
                "resource-constraint",
                "the server cannot open more connections",
            );
        }
        // DB-02: the first stanza for a pair starts the one connection attempt.
        match conn::spawn_outgoing(self, key.0.clone(), key.1.clone(), Purpose::Pair) {
            Ok(handle) => {
                let sent = handle.send_stanza(el);
                routes.insert(key, handle);
                drop(routes);
                if let Err(SendError::Full(el) | SendError::Gone(el) | SendError::Bytes(el, _)) =
                    sent
                {
                    self.bounce(el, "remote-server-timeout", "could not queue the stanza");
                }
            }
            Err(e) => {
                drop(routes);
                log::error!("cannot start a connection to {}: {e}", key.1);
                self.bounce(
                    el,
                    "resource-constraint",
                    "the server cannot open more connections",
                );
            }
        }
    }

    /// Forget the route of `key` if it is still the stream `id` (a newer one may have replaced it).
    pub fn remove_route(&self, key: &(Domain, Domain), id: u64) {
        let mut routes = lock(&self.routes);
        if routes.get(key).is_some_and(|h| h.id == id) {
            routes.remove(key);
        }
    }

    /// A byte cap refused `el` (for `to`): bounce it, with one rate-limited line per cap.
    fn bytes_refused(self: &Arc<Self>, el: Element, cap: ByteCap, to: &Domain) {
        static STREAM: RateLimit = RateLimit::new(LOG_EVERY);
        static TOTAL: RateLimit = RateLimit::new(LOG_EVERY);
        let l = &self.ctx.config.limits;
        let text = match cap {
            ByteCap::Stream => {
                warn_limited!(
                    STREAM,
                    "bouncing a stanza for {to}: {} bytes already held for it (limits.queue_bytes)",
                    l.queue_bytes
                );
                format!("too much is queued for {to}")
            }
            ByteCap::Total => {
                warn_limited!(TOTAL,
                    "bouncing a stanza for {to}: {} bytes held for all streams (limits.queued_bytes)",
                    self.queued_bytes.used()
                );
                "the server's queues are full".to_string()
            }
        };
        self.bounce(el, "resource-constraint", &text);
    }

    /// Send the error reply for `el` back to its sender (nothing for errors and iq results).
    /// The reply keeps at most `limits.bounce_payload` bytes of the original payload when it
    /// goes to a remote sender, `limits.bounce_payload_component` when to a local one.
    pub fn bounce(self: &Arc<Self>, el: Element, condition: &str, text: &str) {
        let limits = &self.ctx.config.limits;
        let local_sender = el
            .attr("from")
            .and_then(|f| Jid::parse(f).ok())
            .is_some_and(|j| self.ctx.config.is_local(&j.domain));
        let payload = if local_sender {
            limits.bounce_payload_component
        } else {
            limits.bounce_payload
        };
        match stanza::error_reply_within(&el, condition, Some(text), payload) {
            Some(reply) => self.route(reply),
            None => log::debug!(
                "not bouncing a {} of type {:?} ({condition})",
                el.name,
                el.attr("type")
            ),
        }
    }

    /// Ask `req.remote`'s Authoritative Server about a key; the answer goes to `reply` as
    /// [`Input::Verified`].
    pub fn verify(self: &Arc<Self>, req: VerifyRequest, reply: Handle) {
        let answer = |verdict| Input::Verified {
            remote: req.remote.clone(),
            local: req.local.clone(),
            verdict,
        };
        let cap = self.ctx.config.limits.pending_verifications;
        if self.verifications.fetch_add(1, Ordering::AcqRel) >= cap {
            self.verifications.fetch_sub(1, Ordering::AcqRel);
            log::warn!(
                "{cap} dialback verifications already pending; refusing one for {}",
                req.remote
            );
            reply.send(answer(Verdict::Error("resource-constraint")));
            return;
        }
        let (local, remote) = (req.local.clone(), req.remote.clone());
        // XEP-0220 §2.5: we could not connect to the Authoritative Server.
        let fail = answer(Verdict::Error("remote-connection-failed"));
        if let Err(e) = conn::spawn_verify(self, local, remote, req, reply.clone()) {
            self.verifications.fetch_sub(1, Ordering::AcqRel);
            log::error!("cannot start a verify connection: {e}");
            reply.send(fail);
        }
    }

    /// A verify connection ended (pairs with a successful [`Router::verify`]).
    pub fn verification_done(&self) {
        self.verifications.fetch_sub(1, Ordering::AcqRel);
    }

    /// Register a component; false when one is already connected for `domain`.
    pub fn register_component(&self, domain: Domain, handle: Handle) -> bool {
        let mut comps = lock(&self.components);
        if comps.contains_key(&domain) {
            return false;
        }
        comps.insert(domain, handle);
        true
    }

    /// Forget the component of `domain` if it is still the stream `id`.
    pub fn unregister_component(&self, domain: &Domain, id: u64) {
        let mut comps = lock(&self.components);
        if comps.get(domain).is_some_and(|h| h.id == id) {
            comps.remove(domain);
        }
    }

    /// Count a live stream (for caps and shutdown).
    pub fn add_stream(&self, handle: Handle) {
        lock(&self.streams).insert(handle.id, handle);
    }

    /// A stream ended.
    pub fn remove_stream(&self, id: u64) {
        lock(&self.streams).remove(&id);
        self.streams_changed.notify_all();
    }

    /// How many streams are live.
    pub fn stream_count(&self) -> usize {
        lock(&self.streams).len()
    }

    /// Outbound domain-pair streams alive now.
    pub fn outbound_streams(&self) -> usize {
        self.outbound.load(Ordering::Acquire)
    }

    /// Count one more outbound domain-pair stream until the slot is dropped (the caller checked
    /// `limits.outbound_streams` under the routes lock).
    pub fn outbound_slot(&self) -> OutboundSlot {
        self.outbound.fetch_add(1, Ordering::AcqRel);
        OutboundSlot(self.outbound.clone())
    }

    /// Bytes of stanzas held for all streams, and their cap.
    pub fn queued_bytes(&self) -> &Arc<ByteTotal> {
        &self.queued_bytes
    }

    /// Count a component connection from `ip`, or say why it is refused.
    pub fn admit_component(&self, ip: IpAddr) -> Result<(), ComponentRefusal> {
        let l = &self.ctx.config.limits;
        let ip = crate::net::ip_group(ip);
        let mut guard = lock(&self.components_gate);
        let g = &mut *guard;
        if g.failures.is_banned(&ip, Instant::now()) {
            return Err(ComponentRefusal::Banned);
        }
        if g.total >= l.component_connections {
            return Err(ComponentRefusal::Total);
        }
        let n = g.open.entry(ip).or_insert(0);
        if *n >= l.component_connections_per_ip {
            return Err(ComponentRefusal::PerIp);
        }
        *n += 1;
        g.total += 1;
        Ok(())
    }

    /// A component connection from `ip` ended (pairs with a successful `admit_component`).
    pub fn release_component(&self, ip: IpAddr) {
        let ip = crate::net::ip_group(ip);
        let mut guard = lock(&self.components_gate);
        let g = &mut *guard;
        if let Some(n) = g.open.get_mut(&ip) {
            *n -= 1;
            g.total = g.total.saturating_sub(1);
            if *n == 0 {
                g.open.remove(&ip);
            }
        }
    }

    /// A component from `ip` failed its handshake; true when this refuses the address for
    /// `limits.component_failure_window`.
    pub fn component_auth_failed(&self, ip: IpAddr) -> bool {
        let ip = crate::net::ip_group(ip);
        lock(&self.components_gate)
            .failures
            .failed(&ip, Instant::now())
    }

    /// Count an inbound connection from `ip`; false (and not counted) when over the cap.
    /// IPv6 addresses count per /64 (see [`crate::net::ip_group`]).
    pub fn admit_ip(&self, ip: IpAddr) -> bool {
        let ip = crate::net::ip_group(ip);
        let mut m = lock(&self.per_ip);
        let n = m.entry(ip).or_insert(0);
        if *n >= self.ctx.config.limits.connections_per_ip {
            return false;
        }
        *n += 1;
        true
    }

    /// An inbound connection from `ip` ended.
    pub fn release_ip(&self, ip: IpAddr) {
        let ip = crate::net::ip_group(ip);
        let mut m = lock(&self.per_ip);
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }

    /// Close every stream: server streams first (their queues bounce to components), then
    /// components; returns when all ended or `bound` passed.
    pub fn shutdown(&self, bound: Duration) {
        self.shutting_down.store(true, Ordering::Release);
        let deadline = Instant::now() + bound;
        for kind in [StreamKind::Server, StreamKind::Component] {
            let handles: Vec<Handle> = lock(&self.streams)
                .values()
                .filter(|h| h.kind == kind)
                .cloned()
                .collect();
            for h in &handles {
                h.send(Input::Shutdown);
            }
            let stage_end = if kind == StreamKind::Server {
                Instant::now() + bound / 2
            } else {
                deadline
            };
            let mut streams = lock(&self.streams);
            while streams.values().any(|h| h.kind == kind) {
                let now = Instant::now();
                if now >= stage_end {
                    log::warn!(
                        "{} {kind:?} streams did not close in time",
                        streams.values().filter(|h| h.kind == kind).count()
                    );
                    break;
                }
                streams = self
                    .streams_changed
                    .wait_timeout(streams, stage_end - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::Mailbox;

    fn stanza(n: usize) -> Element {
        Element::new("message", "jabber:server")
            .with_attr("from", "a@a.test")
            .with_attr("to", "b@b.test")
            .with_child(Element::new("body", "jabber:server").with_text("z".repeat(n)))
    }

    fn handle(per: usize, total: &Arc<ByteTotal>) -> (Handle, Arc<Inbox>) {
        let inbox: Arc<Inbox> = Arc::new(Mailbox::default());
        let h = Handle::new(1, StreamKind::Server, inbox.clone(), 1000)
            .with_byte_caps(per, total.clone());
        (h, inbox)
    }

    #[test]
    fn bytes_are_capped_per_stream_and_in_total_and_released_when_taken() {
        let one = stanza::wire_size(&stanza(1000));
        let total = Arc::new(ByteTotal::new(5 * one));
        let (a, inbox_a) = handle(3 * one, &total);
        let (b, _inbox_b) = handle(3 * one, &total);
        for _ in 0..3 {
            assert!(a.send_stanza(stanza(1000)).is_ok());
        }
        assert!(matches!(
            a.send_stanza(stanza(1000)),
            Err(SendError::Bytes(_, ByteCap::Stream))
        ));
        assert!(b.send_stanza(stanza(1000)).is_ok());
        assert!(b.send_stanza(stanza(1000)).is_ok());
        assert!(matches!(
            b.send_stanza(stanza(1000)),
            Err(SendError::Bytes(_, ByteCap::Total))
        ));
        assert_eq!(total.used(), 5 * one);
        // The worker takes a's stanzas: their bytes are free again, for anyone.
        let taken = inbox_a.close();
        for input in &taken {
            let Input::Stanza(_, bytes) = input else {
                panic!("{input:?}")
            };
            a.taken(*bytes);
        }
        assert_eq!((a.held_bytes(), total.used()), (0, 2 * one));
        assert!(b.send_stanza(stanza(1000)).is_ok());
        // A send to a closed stream gives everything back.
        assert!(matches!(
            a.send_stanza(stanza(1000)),
            Err(SendError::Gone(_))
        ));
        assert_eq!((a.held_bytes(), total.used()), (0, 3 * one));
        // The core's queue counts too, and gives back on the way out.
        b.recharge(0, one);
        assert_eq!((b.held_bytes(), total.used()), (4 * one, 4 * one));
        b.recharge(one, 0);
        assert_eq!(total.used(), 3 * one);
    }

    #[test]
    fn an_empty_stream_takes_one_stanza_larger_than_its_cap() {
        let total = Arc::new(ByteTotal::new(1 << 20));
        let (h, _inbox) = handle(100, &total);
        assert!(h.send_stanza(stanza(5000)).is_ok());
        assert!(matches!(
            h.send_stanza(stanza(1)),
            Err(SendError::Bytes(_, ByteCap::Stream))
        ));
    }
}
