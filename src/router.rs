//! Who is connected, and where each stanza goes: tables only.
//!
//! In scope: the route of each (local, remote) pair — a stream (starting or up) whose inbox is
//! the pair's one FIFO (DB-02, ROUTE-01): ours, or a peer's inbound stream on which XEP-0288
//! bidi verified the inverse pair (BIDI-03) —, or a backoff window after a failed attempt (stanzas
//! bounce at once with the failure's condition until it passes) —, the connected components,
//! local delivery (components, the built-in XEP-0199 ping, XEP-0030 disco#info and optional
//! XEP-0092 answers, `service-unavailable` otherwise), the `[policy]` lists for outbound stanzas (a refused
//! domain bounces with `not-allowed`, nothing dialled) and for inbound ones (a stream verified
//! before a reload refused its domain: dropped), bounces (never of errors or iq results:
//! ROUTE-02), the global cap on pending dialback verifications (SEC-11), the registry of live
//! streams for a graceful shutdown, the per-IP connection counts (IPv6 per /64), and the
//! resource caps of the "Hostile input" issue.
//!
//! The configuration in force (the protocol context, TLS and the resolver: [`Live`]) can be
//! replaced while the daemon runs ([`Router::reconfigure`], on SIGHUP): the router's own
//! decisions (routes, the `[policy]` lists, caps) read the current one; each stream takes a
//! snapshot when it is created and keeps it for its life.
//!
//! The router never starts a thread, never dials and never does I/O: when a stanza needs a new
//! outbound stream or a key needs a verify connection, it records the route and returns a
//! [`Start`]; the caller (`conn`) starts it, outside every lock, and reports a start that
//! failed. A stream that ends hands its unsent stanzas back through
//! [`Router::outbound_closing`], under the same lock the senders take, so they stay ahead of
//! anything newer for the pair. Every table is behind its own `Mutex`, held only for map
//! operations and non-blocking inbox sends.

use crate::dns::Resolver;
use crate::domain::{Domain, Jid};
pub use crate::inbox::{ByteCap, ByteTotal, Handle, Inbox, Input, SendError, StreamKind};
use crate::metrics::{Cap, Destination, METRICS};
use crate::ratelimit::{warn_limited, FailureWindow, RateLimit, LOG_EVERY};
use crate::stanza::{self, Bounce};
use crate::stream::{Ctx, StanzaCondition, Verdict, VerifyRequest};
use crate::tls::TlsContext;
use crate::transport::{Connector, Tcp};
use crate::xml::Element;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

mod shared;
pub use shared::SharedStream;

/// A stream the caller must start (outside every lock), as the router decided.
#[derive(Debug)]
#[must_use = "a route was recorded for this stream: start it, or report the failure"]
pub enum Start {
    /// The Initiating Server side of a pair; its inbox already holds the pair's first stanzas.
    Outbound {
        /// Our domain.
        local: Domain,
        /// The peer's domain.
        remote: Domain,
        /// The route's handle (the pair's FIFO).
        handle: Handle,
        /// Its place under `limits.outbound_streams`, held while the stream lives.
        slot: OutboundSlot,
    },
    /// A dedicated verify connection (DB-11) asking `req.remote`'s Authoritative Server.
    Verify {
        /// What to ask.
        req: VerifyRequest,
        /// The stream waiting for the answer.
        reply: Handle,
        /// The verify connection's own handle.
        handle: Handle,
    },
}

/// Streams to start; usually none.
pub type Starts = Vec<Start>;

/// What the router knows about one (local, remote) pair.
enum Route {
    /// A stream for the pair exists (starting, negotiating or up): its inbox is the pair's FIFO.
    Stream {
        handle: Handle,
        /// Dialback said valid on it.
        up: bool,
    },
    /// The last attempt failed: bounce as it did until `until`, then try again.
    Backoff { until: Instant, bounce: Bounce },
}

/// One outbound domain-pair stream counted against `limits.outbound_streams`; dropping it (when
/// the stream's thread ends, on whatever path) gives the slot back.
#[derive(Debug)]
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

/// The configuration in force: what new streams start with and the router decides by.
#[derive(Clone)]
pub struct Live {
    /// The protocol context shared by stream cores.
    pub ctx: Arc<Ctx>,
    /// Certificates and TLS configurations, when TLS is enabled.
    pub tls: Option<Arc<TlsContext>>,
    /// The DNS resolver for outbound connections.
    pub resolver: Resolver,
}

/// The shared routing state of the daemon.
pub struct Router {
    /// The configuration in force (replaced on reload; see [`Router::reconfigure`]).
    live: RwLock<Live>,
    /// How outbound connections are made (TCP; in-memory pairs in the unit tests).
    pub connector: Arc<dyn Connector>,
    routes: Mutex<HashMap<(Domain, Domain), Route>>,
    /// Streams that may carry further pairs, by address (see `shared`); locked after `routes`.
    shared: Mutex<HashMap<std::net::SocketAddr, Vec<SharedStream>>>,
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

/// A stanza to bounce, and what it bounces with.
type Refused = (Element, Bounce);

/// What became of a stanza for a remote pair.
enum Sent {
    /// Queued on the pair's stream.
    Queued,
    /// Queued on a new stream for the pair, to be started.
    Start(Start),
    /// Not queued: bounce it.
    Refused(Refused),
}

impl Router {
    /// A router for this context, dialling over TCP.
    pub fn new(ctx: Arc<Ctx>, resolver: Resolver, tls: Option<TlsContext>) -> Arc<Router> {
        Router::with_connector(ctx, resolver, tls, Arc::new(Tcp))
    }

    /// A router whose outbound connections are made by `connector`.
    pub fn with_connector(
        ctx: Arc<Ctx>,
        resolver: Resolver,
        tls: Option<TlsContext>,
        connector: Arc<dyn Connector>,
    ) -> Arc<Router> {
        let limits = &ctx.config.limits;
        let tls = tls.map(Arc::new);
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
            live: RwLock::new(Live { ctx, tls, resolver }),
            connector,
            routes: Mutex::new(HashMap::new()),
            shared: Mutex::new(HashMap::new()),
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

    /// The configuration in force (a snapshot: a later reload does not change it).
    pub fn live(&self) -> Live {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The protocol context in force.
    pub fn ctx(&self) -> Arc<Ctx> {
        self.live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .ctx
            .clone()
    }

    /// The certificates in force, when TLS is enabled.
    pub fn tls(&self) -> Option<Arc<TlsContext>> {
        self.live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .tls
            .clone()
    }

    /// The resolver in force (its clones share one answer cache).
    pub fn resolver(&self) -> Resolver {
        self.live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .resolver
            .clone()
    }

    /// Put `live` in force: new streams and the router's own decisions use it from now on;
    /// streams already running keep the snapshot they took. The caps the router keeps itself
    /// (`limits.queued_bytes`, `limits.component_failures` and its window) follow at once.
    pub fn reconfigure(&self, live: Live) {
        let l = &live.ctx.config.limits;
        self.queued_bytes.set_cap(l.queued_bytes);
        lock(&self.components_gate).failures.set_limits(
            u32::try_from(l.component_failures).unwrap_or(u32::MAX),
            l.component_failure_window,
        );
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = live;
    }

    /// A fresh stream id for handles and logs.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// True once shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// A handle for a new stream of `kind`, with its caps: `cap` stanzas waiting, and the byte
    /// caps (limits.queued_bytes is for server streams together; a component, local and one per
    /// configured domain, is bounded by its own queue_bytes, so the errors we bounce to it are
    /// not lost when remote pairs fill the total).
    ///
    /// # Errors
    /// No wake descriptor could be made (out of file descriptors).
    pub fn new_handle(&self, kind: StreamKind, cap: usize) -> std::io::Result<Handle> {
        let ctx = self.ctx();
        let l = &ctx.config.limits;
        let total = match kind {
            StreamKind::Server => self.queued_bytes.clone(),
            StreamKind::Component => Arc::new(ByteTotal::new(usize::MAX)),
        };
        Ok(Handle::new(self.next_id(), kind, Inbox::new()?, cap)
            .with_byte_caps(l.queue_bytes, total))
    }

    /// Route a stanza by its `to`: to a local receiver, or out to a remote server.
    pub fn route(&self, el: Element) -> Starts {
        self.route_as(el, false)
    }

    /// Route `el`; `bounce` when it is a bounce we made (see [`Handle::send_bounce`]).
    fn route_as(&self, el: Element, bounce: bool) -> Starts {
        let mut starts = Vec::new();
        let mut refused = Vec::new();
        self.route_into(el, bounce, &mut starts, &mut refused);
        // Bounces may need routes of their own (to remote senders); a bounce is an error
        // stanza, never bounced again, so this ends.
        while let Some((el, why)) = refused.pop() {
            if let Some(reply) = self.bounce_reply(&el, why.condition, &why.text) {
                self.route_into(reply, true, &mut starts, &mut refused);
            }
        }
        starts
    }

    fn route_into(
        &self,
        el: Element,
        bounce: bool,
        starts: &mut Starts,
        refused: &mut Vec<Refused>,
    ) {
        let to = match el.attr("to").map(Jid::parse) {
            Some(Ok(j)) => j,
            _ => {
                log::debug!("dropping a stanza with no usable 'to'");
                return;
            }
        };
        let ctx = self.ctx();
        let local = ctx.config.is_local(&to.domain);
        if !bounce {
            METRICS.routed(if local {
                Destination::Local
            } else {
                Destination::Remote
            });
        }
        if local {
            if !bounce && refused_sender(&ctx, &el) {
                return;
            }
            return self.deliver_local(el, &to, bounce, starts, refused);
        }
        let from = match el.attr("from").map(Jid::parse) {
            Some(Ok(j)) if ctx.config.is_local(&j.domain) => j.domain,
            _ => {
                // Only our own domains originate outbound traffic: we are no open relay.
                log::warn!(
                    "dropping a stanza to {} whose 'from' is not one of our domains",
                    to.domain
                );
                return;
            }
        };
        if let Err(why) = ctx.config.federation.check(&to.domain) {
            // RFC 6120 §8.3.3.10: not-allowed ("e.g., sending to entities at a blacklisted
            // domain"), type cancel, rather than service-unavailable (§8.3.3.19, a service not
            // offered): the sender learns that our policy refuses the domain. Nothing is
            // dialled; as Prosody's s2s blocklist modules answer.
            static LOG: RateLimit = RateLimit::new(LOG_EVERY);
            warn_limited!(LOG, "bouncing a stanza for {}: {why}", to.domain);
            let text = format!("communication with {} is not allowed here", to.domain);
            refused.push((el, Bounce::new(StanzaCondition::NotAllowed, text)));
            return;
        }
        match self.send_remote((from, to.domain), el, bounce) {
            Sent::Start(start) => starts.push(start),
            Sent::Queued => {}
            Sent::Refused(r) => refused.push(r),
        }
    }

    fn deliver_local(
        &self,
        el: Element,
        to: &Jid,
        bounce: bool,
        starts: &mut Starts,
        refused: &mut Vec<Refused>,
    ) {
        match self.builtin(&el, to) {
            Some(Ok(answer)) => return self.route_into(answer, false, starts, refused),
            Some(Err(why)) => return refused.push((el, why)),
            None => {}
        }
        // Sent while holding the lock, so a component that unregisters and drains its
        // queue cannot miss a stanza (the send never blocks).
        let sent = match lock(&self.components).get(&to.domain) {
            Some(h) => send(h, el, bounce),
            None => Err(SendError::Gone(el)),
        };
        match sent {
            Ok(()) => {}
            Err(SendError::Full(el)) => {
                METRICS.cap_hit(Cap::Outbox);
                refused.push((
                    el,
                    Bounce::new(
                        StanzaCondition::ResourceConstraint,
                        "the recipient's queue is full",
                    ),
                ));
            }
            Err(SendError::Bytes(el, cap)) => refused.push(self.bytes_refused(el, cap, &to.domain)),
            Err(SendError::Gone(el)) => refused.push((
                el,
                Bounce::new(
                    StanzaCondition::ServiceUnavailable,
                    "no service here handles this address",
                ),
            )),
        }
    }

    /// The daemon's own answer to `el`, sent to one of our domains `to`: the reply to route,
    /// or the error to bounce it with; `None` when `el` is not one we answer ourselves.
    ///
    /// XEP-0199: pings to any of our domains. XEP-0030 §3.1: disco#info to a hosted domain
    /// without a component of its own (a component serving a domain answers for it), with
    /// `item-not-found` for any node (§3.2: we have none). XEP-0092 software version to such
    /// a domain when `[handlers] version` is on. Anything else to a bare domain,
    /// and everything to a JID with a node or resource, goes to the domain's component or
    /// bounces `service-unavailable`.
    fn builtin(&self, el: &Element, to: &Jid) -> Option<Result<Element, Bounce>> {
        if !to.is_domain() {
            return None;
        }
        if stanza::is_ping(el) {
            return Some(Ok(stanza::iq_result(el)));
        }
        let ctx = self.ctx();
        let c = &ctx.config;
        let own = c.domains.contains(&to.domain)
            && !c.components.iter().any(|comp| comp.domain == to.domain);
        if !own {
            return None;
        }
        let version = c.handlers.version;
        if version && stanza::is_version_query(el) {
            return Some(Ok(stanza::version_result(el)));
        }
        let query = stanza::disco_info_query(el)?;
        if query.attr("node").is_some() {
            return Some(Err(Bounce::new(
                StanzaCondition::ItemNotFound,
                "no such node",
            )));
        }
        let features = stanza::server_features(version);
        Some(Ok(stanza::disco_info_result(el, &features)))
    }

    /// Queue `el` on the pair's route; a new route (and a [`Start`]) for the first stanza.
    fn send_remote(&self, key: (Domain, Domain), el: Element, bounce: bool) -> Sent {
        let mut routes = lock(&self.routes);
        let el = match routes.get(&key) {
            Some(Route::Stream { handle, .. }) => match send(handle, el, bounce) {
                Ok(()) => return Sent::Queued,
                Err(SendError::Full(el)) => {
                    METRICS.cap_hit(Cap::Outbox);
                    let text = format!("too many stanzas queued for {}", key.1);
                    let why = Bounce::new(StanzaCondition::ResourceConstraint, text);
                    return Sent::Refused((el, why));
                }
                Err(SendError::Bytes(el, cap)) => {
                    drop(routes);
                    return Sent::Refused(self.bytes_refused(el, cap, &key.1));
                }
                // The stream closed its inbox without handing the route back: start anew.
                Err(SendError::Gone(el)) => el,
            },
            Some(Route::Backoff { until, bounce }) if Instant::now() < *until => {
                return Sent::Refused((el, bounce.clone()))
            }
            Some(Route::Backoff { .. }) | None => el,
        };
        routes.remove(&key);
        if self.is_shutting_down() {
            let why = Bounce::new(
                StanzaCondition::RemoteServerTimeout,
                "the server is shutting down",
            );
            return Sent::Refused((el, why));
        }
        let (start, handle) = match self.new_outbound(&key) {
            Ok(new) => new,
            Err(why) => {
                let why = Bounce::new(StanzaCondition::ResourceConstraint, why);
                return Sent::Refused((el, why));
            }
        };
        // A fresh inbox with room: the first stanza always fits.
        if let Err(SendError::Full(el) | SendError::Gone(el) | SendError::Bytes(el, _)) =
            send(&handle, el, bounce)
        {
            let why = Bounce::new(
                StanzaCondition::ResourceConstraint,
                "could not queue the stanza",
            );
            return Sent::Refused((el, why));
        }
        routes.insert(key, Route::Stream { handle, up: false });
        Sent::Start(start)
    }

    /// A route's stream for `key` (under the routes lock), within `limits.outbound_streams`.
    fn new_outbound(&self, key: &(Domain, Domain)) -> Result<(Start, Handle), &'static str> {
        const NO_MORE: &str = "the server cannot open more connections";
        let ctx = self.ctx();
        let cap = ctx.config.limits.outbound_streams;
        // Checked under the routes lock, which every new outbound stream is made under: no two
        // senders can both take the last slot.
        if self.outbound_streams() >= cap {
            METRICS.cap_hit(Cap::OutboundStreams);
            static LOG: RateLimit = RateLimit::new(LOG_EVERY);
            warn_limited!(LOG,
                "not opening a stream {}→{}: {cap} outbound streams open (limits.outbound_streams); bouncing",
                key.0, key.1
            );
            return Err(NO_MORE);
        }
        let l = &ctx.config.limits;
        let handle = self
            .new_handle(StreamKind::Server, l.outbox + l.queue)
            .map_err(|e| {
                log::error!("cannot start a connection to {}: {e}", key.1);
                NO_MORE
            })?;
        let start = Start::Outbound {
            local: key.0.clone(),
            remote: key.1.clone(),
            handle: handle.clone(),
            slot: self.outbound_slot(),
        };
        Ok((start, handle))
    }

    /// A byte cap refused `el` (for `to`): what to bounce, with one rate-limited line per cap.
    fn bytes_refused(&self, el: Element, cap: ByteCap, to: &Domain) -> Refused {
        static STREAM: RateLimit = RateLimit::new(LOG_EVERY);
        static TOTAL: RateLimit = RateLimit::new(LOG_EVERY);
        let ctx = self.ctx();
        let l = &ctx.config.limits;
        let text = match cap {
            ByteCap::Stream => {
                METRICS.cap_hit(Cap::QueueBytes);
                warn_limited!(
                    STREAM,
                    "bouncing a stanza for {to}: {} bytes already held for it (limits.queue_bytes)",
                    l.queue_bytes
                );
                format!("too much is queued for {to}")
            }
            ByteCap::Total => {
                METRICS.cap_hit(Cap::QueuedBytes);
                warn_limited!(TOTAL,
                    "bouncing a stanza for {to}: {} bytes held for all streams (limits.queued_bytes)",
                    self.queued_bytes.used()
                );
                "the server's queues are full".to_string()
            }
        };
        (el, Bounce::new(StanzaCondition::ResourceConstraint, text))
    }

    /// Send the error reply for `el` back to its sender (nothing for errors and iq results).
    pub fn bounce(&self, el: Element, condition: StanzaCondition, text: &str) -> Starts {
        match self.bounce_reply(&el, condition, text) {
            Some(reply) => self.route_as(reply, true),
            None => Vec::new(),
        }
    }

    /// The error reply for `el`, keeping at most `limits.bounce_payload` bytes of the original
    /// payload when it goes to a remote sender, `limits.bounce_payload_component` when to a local
    /// one; `None` for errors and iq results (ROUTE-02).
    fn bounce_reply(
        &self,
        el: &Element,
        condition: StanzaCondition,
        text: &str,
    ) -> Option<Element> {
        let ctx = self.ctx();
        let limits = &ctx.config.limits;
        let local_sender = el
            .attr("from")
            .and_then(|f| Jid::parse(f).ok())
            .is_some_and(|j| ctx.config.is_local(&j.domain));
        let payload = if local_sender {
            limits.bounce_payload_component
        } else {
            limits.bounce_payload
        };
        let reply = stanza::error_reply_within(el, condition, Some(text), payload);
        if reply.is_some() {
            METRICS.bounced(condition);
        } else {
            log::debug!(
                "not bouncing a {} of type {:?} ({condition})",
                el.name,
                el.attr("type")
            );
        }
        reply
    }

    /// The outbound stream `id` of `key` was authenticated (dialback said valid).
    pub fn outbound_up(&self, key: &(Domain, Domain), id: u64) {
        if let Some(Route::Stream { handle, up }) = lock(&self.routes).get_mut(key) {
            if handle.id() == id {
                *up = true;
            }
        }
    }

    /// The outbound stream of `key` behind `handle` is closing: close its inbox, so no stanza
    /// reaches it any more, and take back what was waiting there, under the lock senders take.
    ///
    /// After a `failure` (the pair could not be set up) the waiting stanzas bounce with it and
    /// the pair enters its backoff window (`timeouts.retry`, jittered). After a clean end they
    /// go, in order and ahead of anything newer, to a new stream for the pair (returned to be
    /// started); during shutdown they bounce.
    pub fn outbound_closing(
        &self,
        key: &(Domain, Domain),
        handle: &Handle,
        failure: Option<Bounce>,
    ) -> Starts {
        self.outbound_closing_pairs(key, handle, failure, Vec::new())
    }

    /// [`Router::outbound_closing`] for a stream that also carried `joined` pairs (target
    /// multiplexing, DB-29), each with its failure (`None`: verified). Each pair the stream
    /// carried — those given, and those whose hand-over still waited in the inbox — gets back
    /// the stanzas of its own that were waiting (told apart by their addresses; the rest are
    /// the stream's own pair's), ahead of anything newer, or bounces them with its failure.
    pub fn outbound_closing_pairs(
        &self,
        key: &(Domain, Domain),
        handle: &Handle,
        failure: Option<Bounce>,
        joined: Vec<((Domain, Domain), Option<Bounce>)>,
    ) -> Starts {
        let mut routes = lock(&self.routes);
        let waiting = handle.close();
        let was_shared = self.unshare(handle.id());
        let mut pairs = vec![(key.clone(), failure)];
        pairs.extend(joined.into_iter().filter(|(k, _)| k != key));
        if was_shared || pairs.len() > 1 {
            for (k, r) in routes.iter() {
                let here = matches!(r, Route::Stream { handle: h, .. } if h.id() == handle.id());
                if here && !pairs.iter().any(|(p, _)| p == k) {
                    pairs.push((k.clone(), None));
                }
            }
        }
        let mut buckets: Vec<Vec<Element>> = pairs.iter().map(|_| Vec::new()).collect();
        for el in waiting {
            let i = if pairs.len() == 1 {
                0
            } else {
                stanza::addresses(&el)
                    .ok()
                    .and_then(|a| {
                        let k = (a.from.domain, a.to.domain);
                        pairs.iter().position(|(p, _)| *p == k)
                    })
                    .unwrap_or(0)
            };
            buckets[i].push(el);
        }
        let mut refused: Vec<Refused> = Vec::new();
        let mut starts = Vec::new();
        for ((k, failure), waiting) in pairs.into_iter().zip(buckets) {
            self.pair_closing(
                &mut routes,
                &k,
                handle,
                failure,
                waiting,
                &mut starts,
                &mut refused,
            );
        }
        drop(routes);
        for (el, why) in refused {
            starts.extend(self.bounce(el, why.condition, &why.text));
        }
        starts
    }

    /// One pair of a closing stream (under the routes lock): its route is removed if it points
    /// at the stream; after a `failure` its waiting stanzas bounce and it enters its backoff
    /// window, else they go to a new stream for it (see [`Router::outbound_closing`]).
    #[allow(clippy::too_many_arguments)]
    fn pair_closing(
        &self,
        routes: &mut HashMap<(Domain, Domain), Route>,
        key: &(Domain, Domain),
        handle: &Handle,
        failure: Option<Bounce>,
        waiting: Vec<Element>,
        starts: &mut Starts,
        refused: &mut Vec<Refused>,
    ) {
        let ours = matches!(routes.get(key), Some(Route::Stream { handle: h, .. }) if h.id() == handle.id());
        if ours {
            routes.remove(key);
        }
        if let Some(bounce) = failure {
            refused.extend(waiting.into_iter().map(|el| (el, bounce.clone())));
            if ours {
                let until = Instant::now() + jittered(self.ctx().config.timeouts.retry);
                routes.insert(key.clone(), Route::Backoff { until, bounce });
            }
        } else if !waiting.is_empty() {
            self.requeue(routes, key, waiting, starts, refused);
        }
    }

    /// XEP-0288: an inbound stream behind `handle` on which the peer asked for bidi has
    /// verified the inverse of `key` (BIDI-03): it becomes `key`'s route, unless the pair has a
    /// stream already (ours, starting or up, or another bidi stream), which stays its one FIFO
    /// (ROUTE-01). A backoff window ends: the peer has just shown it is reachable. True when
    /// the route now goes over `handle`. The pair was verified under the certificate policy
    /// for the peer (SEC-04: pins and `pkix` apply to an inbound stream's certificate as to an
    /// outbound one's), so the route is as strong as a stream of our own.
    pub fn bidi_route(&self, key: &(Domain, Domain), handle: &Handle) -> bool {
        let mut routes = lock(&self.routes);
        if let Some(Route::Stream { handle: h, .. }) = routes.get(key) {
            if !h.inbox().is_closed() {
                return false;
            }
        }
        routes.insert(
            key.clone(),
            Route::Stream {
                handle: handle.clone(),
                up: true,
            },
        );
        true
    }

    /// The bidi stream behind `handle`, the route of `keys`, is closing: close its inbox and
    /// give each pair the stanzas that were waiting for it, in order and ahead of anything
    /// newer, on a new stream of ours (as [`Router::outbound_closing`] does after a clean end;
    /// they bounce during shutdown).
    pub fn bidi_closing(&self, keys: &[(Domain, Domain)], handle: &Handle) -> Starts {
        let mut routes = lock(&self.routes);
        let waiting = handle.close();
        for key in keys {
            if matches!(routes.get(key), Some(Route::Stream { handle: h, .. }) if h.id() == handle.id())
            {
                routes.remove(key);
            }
        }
        // One inbox carried every pair routed here: split it by pair, each keeping its order.
        let mut by_pair: Vec<((Domain, Domain), Vec<Element>)> = Vec::new();
        let mut refused: Vec<Refused> = Vec::new();
        for el in waiting {
            let Some(key) = pair_of(&el) else {
                let why = "the connection closed before the stanza was sent";
                refused.push((el, Bounce::new(StanzaCondition::RemoteServerTimeout, why)));
                continue;
            };
            match by_pair.iter_mut().find(|(k, _)| *k == key) {
                Some((_, els)) => els.push(el),
                None => by_pair.push((key, vec![el])),
            }
        }
        let mut starts = Vec::new();
        for (key, els) in by_pair {
            self.requeue(&mut routes, &key, els, &mut starts, &mut refused);
        }
        drop(routes);
        for (el, why) in refused {
            starts.extend(self.bounce(el, why.condition, &why.text));
        }
        starts
    }

    /// Put `waiting` (in order) at the head of `key`'s route: a new stream, since the route has
    /// none any more (or bounce them when that cannot be).
    fn requeue(
        &self,
        routes: &mut HashMap<(Domain, Domain), Route>,
        key: &(Domain, Domain),
        waiting: Vec<Element>,
        starts: &mut Starts,
        refused: &mut Vec<Refused>,
    ) {
        let text = "the connection closed before the stanza was sent";
        if self.is_shutting_down() || routes.contains_key(key) {
            let why = "the server is shutting down";
            let why = Bounce::new(StanzaCondition::RemoteServerTimeout, why);
            refused.extend(waiting.into_iter().map(|el| (el, why.clone())));
            return;
        }
        let (start, handle) = match self.new_outbound(key) {
            Ok(new) => new,
            Err(why) => {
                let why = Bounce::new(StanzaCondition::ResourceConstraint, why);
                refused.extend(waiting.into_iter().map(|el| (el, why.clone())));
                return;
            }
        };
        for el in waiting {
            if let Err(SendError::Full(el) | SendError::Gone(el) | SendError::Bytes(el, _)) =
                handle.send_stanza(el)
            {
                let why = Bounce::new(StanzaCondition::RemoteServerTimeout, text);
                refused.push((el, why));
            }
        }
        routes.insert(key.clone(), Route::Stream { handle, up: false });
        starts.push(start);
    }

    /// Ask `req.remote`'s Authoritative Server about a key on a dedicated connection (DB-11);
    /// the answer goes to `reply` as [`Input::Verified`]. `Err` is the answer to give at once
    /// (the cap on pending verifications, SEC-11).
    ///
    /// # Errors
    /// The verdict to answer with when no verification can be started.
    pub fn verify(&self, req: VerifyRequest, reply: &Handle) -> Result<Start, Verdict> {
        if self.is_shutting_down() {
            return Err(Verdict::Error(StanzaCondition::RemoteConnectionFailed));
        }
        let ctx = self.ctx();
        let cap = ctx.config.limits.pending_verifications;
        if self.verifications.fetch_add(1, Ordering::AcqRel) >= cap {
            self.verifications.fetch_sub(1, Ordering::AcqRel);
            METRICS.cap_hit(Cap::PendingVerifications);
            log::warn!(
                "{cap} dialback verifications already pending; refusing one for {}",
                req.remote
            );
            return Err(Verdict::Error(StanzaCondition::ResourceConstraint));
        }
        match self.new_handle(StreamKind::Server, ctx.config.limits.outbox) {
            Ok(handle) => Ok(Start::Verify {
                req,
                reply: reply.clone(),
                handle,
            }),
            Err(e) => {
                self.verifications.fetch_sub(1, Ordering::AcqRel);
                log::error!("cannot start a verify connection: {e}");
                // XEP-0220 §2.5: we could not connect to the Authoritative Server.
                Err(Verdict::Error(StanzaCondition::RemoteConnectionFailed))
            }
        }
    }

    /// A verify connection ended (pairs with a successful [`Router::verify`]).
    pub fn verification_done(&self) {
        self.verifications.fetch_sub(1, Ordering::AcqRel);
    }

    /// The component of `domain` behind `handle` is closing: unregister it and close its inbox
    /// under the lock senders take; returns the stanzas that were waiting, to bounce.
    pub fn component_closing(&self, domain: Option<&Domain>, handle: &Handle) -> Vec<Element> {
        let mut comps = lock(&self.components);
        if let Some(d) = domain {
            if comps.get(d).is_some_and(|h| h.id() == handle.id()) {
                comps.remove(d);
            }
        }
        handle.close()
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

    /// Count a live stream (for caps and shutdown).
    pub fn add_stream(&self, handle: Handle) {
        let mut streams = lock(&self.streams);
        if self.is_shutting_down() {
            // Started while shutdown was under way: it must end too.
            handle.inbox().shutdown();
        }
        streams.insert(handle.id(), handle);
    }

    /// A stream ended.
    pub fn remove_stream(&self, id: u64) {
        lock(&self.streams).remove(&id);
        self.streams_changed.notify_all();
    }

    /// The live streams' handles, for the status listener (a snapshot: the lock is not held
    /// while they are read).
    pub fn stream_handles(&self) -> Vec<Handle> {
        lock(&self.streams).values().cloned().collect()
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
        let ctx = self.ctx();
        let l = &ctx.config.limits;
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
        let cap = self.ctx().config.limits.connections_per_ip;
        let ip = crate::net::ip_group(ip);
        let mut m = lock(&self.per_ip);
        let n = m.entry(ip).or_insert(0);
        if *n >= cap {
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
                .filter(|h| h.kind() == kind)
                .cloned()
                .collect();
            for h in &handles {
                h.inbox().shutdown();
            }
            let stage_end = if kind == StreamKind::Server {
                Instant::now() + bound / 2
            } else {
                deadline
            };
            if !self.wait_streams(Some(kind), stage_end) {
                let left = lock(&self.streams)
                    .values()
                    .filter(|h| h.kind() == kind)
                    .count();
                log::warn!("{left} {kind:?} streams did not close in time");
            }
        }
    }

    /// Wait until no stream (of `kind`, if given) is left, or `until` passes; whether none is.
    pub fn wait_streams(&self, kind: Option<StreamKind>, until: Instant) -> bool {
        let left =
            |s: &HashMap<u64, Handle>| s.values().any(|h| kind.is_none_or(|k| h.kind() == k));
        let mut streams = lock(&self.streams);
        while left(&streams) {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            streams = self
                .streams_changed
                .wait_timeout(streams, until - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }
}

/// True (and logged, rate-limited) when `el` comes from a remote domain the `[policy]`
/// lists in force refuse: a stream verified before a reload denied the domain still carries
/// its stanzas, and they stop here.
fn refused_sender(ctx: &Ctx, el: &Element) -> bool {
    let Some(Ok(from)) = el.attr("from").map(Jid::parse) else {
        return false;
    };
    if ctx.config.is_local(&from.domain) {
        return false;
    }
    let Err(why) = ctx.config.federation.check(&from.domain) else {
        return false;
    };
    static LOG: RateLimit = RateLimit::new(LOG_EVERY);
    warn_limited!(LOG, "dropping a stanza from {}: {why}", from.domain);
    true
}

/// The (local, remote) pair a stanza queued for a remote domain was routed by.
fn pair_of(el: &Element) -> Option<(Domain, Domain)> {
    let from = Jid::parse(el.attr("from")?).ok()?;
    let to = Jid::parse(el.attr("to")?).ok()?;
    Some((from.domain, to.domain))
}

/// Queue `el` on `h`: under its caps, or as a bounce (see [`Handle::send_bounce`]).
fn send(h: &Handle, el: Element, bounce: bool) -> Result<(), SendError> {
    if bounce {
        h.send_bounce(el)
    } else {
        h.send_stanza(el)
    }
}

/// Between half and all of `d`, at random, so that pairs which failed together do not all try
/// again at the same moment.
fn jittered(d: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    let r = ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_or(u16::MAX, |()| u16::from_le_bytes(b));
    d / 2 + d.mul_f64(f64::from(r) / f64::from(u16::MAX) / 2.0)
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "router_shared_tests.rs"]
mod shared_tests;
