//! Who is connected, and where each stanza goes.
//!
//! In scope: the per-(local, remote) outbound routes and their FIFO handles (one connection
//! attempt per pair, later stanzas queue behind it: DB-02, ROUTE-01), the connected components,
//! local delivery (components, the built-in XEP-0199 ping answer, `service-unavailable`
//! otherwise), bounces (never of errors or iq results: ROUTE-02), the global cap on pending
//! dialback verifications (SEC-11), the registry of live streams for a graceful shutdown, and
//! the per-IP connection counts. Out of scope: the streams themselves (`conn`) and the protocol
//! (`stream`).
//!
//! Every table is behind its own `Mutex`, held only for map operations and non-blocking channel
//! sends: no thread ever waits on another stream's socket while holding one.

use crate::conn::{self, Inbox, Input};
use crate::dns::Resolver;
use crate::domain::{Domain, Jid};
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
}

/// Why a stanza could not be handed to a stream.
pub enum SendError {
    /// The stream's outbox is full (`resource-constraint`).
    Full(Element),
    /// The stream has ended.
    Gone(Element),
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
        }
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
        self.inbox.send(Input::Stanza(el)).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            match e {
                Input::Stanza(el) => SendError::Gone(el),
                _ => unreachable!("we sent a stanza"),
            }
        })
    }

    /// Send a control message; false when the stream is gone.
    pub fn send(&self, input: Input) -> bool {
        self.inbox.send(input).is_ok()
    }
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
        Arc::new(Router {
            ctx,
            resolver,
            tls,
            routes: Mutex::new(HashMap::new()),
            components: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            streams_changed: Condvar::new(),
            per_ip: Mutex::new(HashMap::new()),
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
            Err(SendError::Gone(el)) => {
                routes.remove(&key);
                el
            }
        };
        if self.is_shutting_down() {
            drop(routes);
            return self.bounce(el, "remote-server-timeout", "the server is shutting down");
        }
        // DB-02: the first stanza for a pair starts the one connection attempt.
        match conn::spawn_outgoing(self, key.0.clone(), key.1.clone(), Purpose::Pair) {
            Ok(handle) => {
                let sent = handle.send_stanza(el);
                routes.insert(key, handle);
                drop(routes);
                if let Err(SendError::Full(el) | SendError::Gone(el)) = sent {
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

    /// Send the error reply for `el` back to its sender (nothing for errors and iq results).
    pub fn bounce(self: &Arc<Self>, el: Element, condition: &str, text: &str) {
        match stanza::error_reply(&el, condition, Some(text)) {
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

    /// Count an inbound connection from `ip`; false (and not counted) when over the cap.
    pub fn admit_ip(&self, ip: IpAddr) -> bool {
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
