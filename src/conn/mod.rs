//! The one thread of a stream: `poll(socket, wake, deadline)` ⇄ TLS ⇄ framer ⇄ parser ⇄ core ⇄
//! router.
//!
//! Each stream (s2s in, s2s out, verify, component) is one thread that owns its non-blocking
//! socket (`Link`: the [`Transport`](crate::transport::Transport), one unsplit TLS session,
//! what waits to be written), its [`StreamParser`] and its protocol core, and sleeps in `poll(2)`
//! on the socket and its inbox's wake descriptor with the timeout = its earliest deadline
//! (negotiation, idle, keepalive, close handshake, a write the peer does not take). Other
//! threads hand it stanzas through its bounded [`Inbox`](crate::inbox::Inbox) and wake it;
//! nobody else touches its socket. An outbound stream dials in the same loop, under the same
//! deadline (`dial`).
//!
//! The thread carries out the core's [`Action`]s in order and takes no protocol decision of its
//! own. What it holds (its route or component registration, its verification, its counts) is
//! given back when it ends, on every path — a panic in the stream included (`start`).
//!
//! Submodules: `link` (socket, TLS and write buffer), `dial` (finding and connecting to a peer),
//! `tls` (STARTTLS, direct TLS and the certificate policy), `start` (starting each kind of stream
//! and containing its failures), `caps` (what the stream holds against the resource caps),
//! `stack` (what a sleeping thread keeps of its stack), `pool` (threads of ended streams
//! waiting briefly for the next one), `mux` (the further pairs an outbound stream carries, DB-29),
//! `report` (what the status listener and the metrics see of the stream).
//!
//! Wakes: a stream thread asks to be woken only right before it sleeps, and the wakes it causes
//! in other streams are written once per turn of its loop ([`crate::inbox::flush_wakes`]), so a
//! busy pair of streams on one core hands over whole batches, not single stanzas.
//!
//! Out of scope: protocol rules (`stream`), routing tables (`router`), accepting (`net`).

use crate::domain::Domain;
use crate::inbox::{Handle, Input};
use crate::keys;
use crate::metrics::{Cap, METRICS};
use crate::router::{Live, Router, Starts};
use crate::stanza::{self, Bounce};
use crate::stream::component::Component;
use crate::stream::incoming::Incoming;
use crate::stream::outgoing::Outgoing;
use crate::stream::{Action, Ctx, Event, StanzaCondition, StreamCondition, StreamError, Verdict};
use crate::tls::TlsContext;
use crate::xml::{Limits, StreamEvent, StreamParser, XmlError, STREAM_CLOSE};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod caps;
mod dial;
mod link;
mod mux;
mod pool;
mod report;
mod stack;
mod start;
#[cfg(test)]
mod tests;
mod tls;

use link::Link;
pub use start::{start, start_component, start_incoming};

/// Stack size of stream threads: enough for the parser, rustls and our serializer, small
/// enough for thousands of streams on a 32-bit box.
const STACK_SIZE: usize = 256 * 1024;
/// How long a stream closing at shutdown waits for the peer's `</stream:stream>`.
const SHUTDOWN_CLOSE_WAIT: Duration = Duration::from_millis(500);
/// Inputs (inbox items, parsed elements) handled per turn of the loop before writing.
const BATCH: usize = 64;
/// How far reads may run ahead of the parser, at least (see `read`).
const READ_AHEAD: usize = 64 * 1024;
/// A sleep at least this long gives buffer memory back first (streams that carry traffic; one
/// still negotiating is woken by its peer soon, and a dialback burst would pay for it).
const IDLE_TRIM: Duration = Duration::from_secs(1);
/// Longest sleep when no deadline is nearer.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// The protocol core of a stream.
enum Core {
    In(Incoming),
    Out(Outgoing),
    Comp(Component),
}

impl Core {
    fn handle(&mut self, ev: Event) -> Vec<Action> {
        match self {
            Core::In(c) => c.handle(ev),
            Core::Out(c) => c.handle(ev),
            Core::Comp(c) => c.handle(ev),
        }
    }

    /// True once the stream carries traffic (so idle and keepalive timers apply, and the
    /// negotiation deadline no longer does).
    fn is_open(&self) -> bool {
        match self {
            Core::In(c) => c.is_authenticated(),
            Core::Out(c) => c.is_established(),
            Core::Comp(c) => c.domain().is_some(),
        }
    }

    /// How long after our last write a whitespace keepalive goes out: `timeouts.keepalive`,
    /// or sooner, half the `idle-seconds` an outbound peer advertised (XEP-0478).
    fn keepalive(&self, ours: Duration) -> Duration {
        match self {
            Core::Out(c) => c.peer_idle_limit().map_or(ours, |idle| ours.min(idle / 2)),
            _ => ours,
        }
    }

    /// The stream's name for log lines.
    fn label(&self) -> &str {
        match self {
            Core::In(c) => c.label(),
            Core::Out(c) => c.label(),
            Core::Comp(c) => c.label(),
        }
    }
}

fn fresh_id() -> String {
    // The OS generator was checked at start-up (main draws the secret and an id); a failure
    // now means the kernel cannot give randomness, and no stream may go on without it.
    keys::new_stream_id().expect("the OS random number generator failed")
}

/// What kind of stream this is, with what it holds in the router's tables.
enum Role {
    /// A peer connected to us; its address counts against `limits.connections_per_ip`.
    /// `bidi`: the pairs routed over it (XEP-0288), while they are.
    Inbound {
        ip: Option<IpAddr>,
        bidi: Vec<(Domain, Domain)>,
    },
    /// A component; its address was admitted against the component caps.
    Component {
        ip: Option<IpAddr>,
        /// The domain it registered, while registered.
        domain: Option<Domain>,
    },
    /// The Initiating Server side of a pair; `routed` while the route still points here.
    Outbound { key: (Domain, Domain), routed: bool },
    /// A verify connection; `reply` until answered.
    Verify {
        reply: Option<Handle>,
        local: Domain,
        remote: Domain,
    },
}

/// The stream's clocks.
struct Clock {
    /// Negotiation (or verification) deadline, until the stream is authenticated.
    deadline: Instant,
    deadline_fired: bool,
    last_activity: Instant,
    last_write: Instant,
    /// We sent `</stream:stream>`: wait this long for the peer's.
    closing_until: Option<Instant>,
    /// Since when the peer has not taken what we write.
    write_stalled_since: Option<Instant>,
}

/// One stream (see the module documentation).
struct Stream {
    router: Arc<Router>,
    /// The configuration in force when the stream was created, kept for its life (a reload
    /// changes what new streams get).
    ctx: Arc<Ctx>,
    /// The certificates in force when the stream was created, when TLS is enabled.
    tls: Option<Arc<TlsContext>>,
    core: Core,
    me: Handle,
    role: Role,
    link: Option<Link>,
    parser: StreamParser,
    clock: Clock,
    /// The peer ended the connection (EOF or close_notify).
    eof: bool,
    done: bool,
    /// Outbound: the TLS handshake is under way; on completion the core gets this event.
    tls_pending: Option<Event>,
    /// Shutdown was asked for; it happens once the inbox is empty.
    shutdown_pending: bool,
    /// What the stream holds against the resource caps (see `caps`).
    caps: caps::StreamCaps,
    /// What it last told the status listener (see `report`).
    published: report::Published,
    /// Outbound: the pairs it carries besides its own, and its offer to carry more (see `mux`).
    mux: mux::Mux,
}

impl Stream {
    /// A stream for `me` under the configuration `live`, whose core is made from its log label
    /// (`label` plus the stream's number); `negotiation` bounds it until it is authenticated.
    fn new(
        router: &Arc<Router>,
        live: &Live,
        me: Handle,
        label: &str,
        role: Role,
        negotiation: Duration,
        core: impl FnOnce(String) -> Core,
    ) -> Box<Stream> {
        let label = format!("{label} #{}", me.id());
        let core = core(label);
        let now = Instant::now();
        let parser = new_parser(&live.ctx);
        // On the heap: the thread's stack then holds only its frames (see `stack`).
        let s = Box::new(Stream {
            router: router.clone(),
            ctx: live.ctx.clone(),
            tls: live.tls.clone(),
            core,
            me,
            role,
            link: None,
            parser,
            clock: Clock {
                deadline: now + negotiation,
                deadline_fired: false,
                last_activity: now,
                last_write: now,
                closing_until: None,
                write_stalled_since: None,
            },
            eof: false,
            done: false,
            tls_pending: None,
            shutdown_pending: false,
            caps: caps::StreamCaps::default(),
            published: report::Published::default(),
            mux: mux::Mux::default(),
        });
        s.report_start();
        s
    }

    /// Run until the stream ends, then give back what it holds.
    ///
    /// The steps of the loop are never inlined into it: their locals (read buffers, parsed
    /// trees) then live only while they run, and the frame the thread sleeps in stays small
    /// (see `stack`).
    #[inline(never)]
    fn run(&mut self) {
        if matches!(self.role, Role::Outbound { .. } | Role::Verify { .. }) {
            self.connect();
        }
        while !self.done {
            let more = self.inputs() | self.read();
            self.flush();
            self.tls_progress();
            self.timers();
            crate::inbox::flush_wakes();
            if self.done {
                break;
            }
            self.publish();
            self.sleep(more);
        }
        self.finish();
    }

    /// Take inputs from the inbox (unless the peer is not taking what we write). True when
    /// more are waiting.
    ///
    /// Shutdown: what was queued before it still goes out first (a component gets the bounces
    /// the server streams just made); a stream whose peer takes nothing closes at once, and
    /// what waits for it is handed back.
    #[inline(never)] // (see `run`)
    fn inputs(&mut self) -> bool {
        if self.me.inbox().take_shutdown() {
            self.shutdown_pending = true;
        }
        if self.backlogged() {
            self.shutdown_now();
            return false;
        }
        let mut batch = Vec::new();
        let more = self.me.inbox().take(&mut batch, BATCH);
        for input in batch {
            self.input(input);
        }
        self.check_abandoned();
        if !more {
            self.shutdown_now();
        }
        more
    }

    /// Carry out a pending shutdown.
    fn shutdown_now(&mut self) {
        if !std::mem::take(&mut self.shutdown_pending) {
            return;
        }
        self.feed(Event::Shutdown);
        if let Some(until) = &mut self.clock.closing_until {
            *until = (*until).min(Instant::now() + SHUTDOWN_CLOSE_WAIT);
        }
    }

    /// True when so much waits to be written that we take no more work until the peer reads.
    fn backlogged(&self) -> bool {
        let high = self.ctx.config.limits.stanza_size.max(64 * 1024);
        self.link.as_ref().is_some_and(|l| l.backlog() > high)
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Stanza(el, bytes) => {
                self.me.taken(bytes);
                self.feed(Event::Stanza(el));
            }
            Input::Verified {
                remote,
                local,
                verdict,
            } => self.feed(Event::Verified {
                remote,
                local,
                verdict,
            }),
            Input::Join {
                local,
                remote,
                stanzas,
            } => self.joined(local, remote, stanzas),
        }
    }

    /// A verify connection whose requesting stream has ended stops at once.
    fn check_abandoned(&mut self) {
        if let Role::Verify {
            reply: Some(r),
            remote,
            ..
        } = &self.role
        {
            if r.inbox().is_closed() {
                log::debug!(
                    "{}: the stream that asked about {remote} has ended; abandoning",
                    self.core.label()
                );
                self.role_verify_answered();
                self.done = true;
            }
        }
    }

    /// Read what arrived and feed the parser's events to the core. True when more may be
    /// waiting (the batch was full).
    #[inline(never)] // (see `run`)
    fn read(&mut self) -> bool {
        if self.done || self.eof || self.backlogged() {
            return false;
        }
        let Some(link) = &mut self.link else {
            return false;
        };
        // Read ahead of the parser by at most one stanza budget (64 KiB at least): a partial
        // element never exceeds it, so beyond it there are complete ones to parse first.
        let ahead = self.parser.budget().get().max(READ_AHEAD);
        if self.parser.pending_bytes() > ahead {
            return self.parse();
        }
        let mut plain = Vec::new();
        let res = link.read(&mut plain);
        if !plain.is_empty() {
            self.clock.last_activity = Instant::now();
            self.parser.feed(&plain);
        }
        drop(plain);
        let more = self.parse();
        match res {
            Ok(None) => more,
            Ok(Some(_end)) => {
                self.eof = true;
                if !more {
                    self.ended_by_peer();
                }
                more
            }
            Err(e) => {
                self.eof = true;
                self.broken(None, e.to_string());
                false
            }
        }
    }

    /// Feed parsed events to the core, up to a batch. True when the batch was full.
    fn parse(&mut self) -> bool {
        for _ in 0..BATCH {
            if self.done {
                return false;
            }
            match self.parser.next_event() {
                Ok(None) => return false,
                Ok(Some(ev)) => {
                    let ev = match ev {
                        StreamEvent::Header(h) => Event::Header(h),
                        StreamEvent::Element(e) => Event::Element(e),
                        StreamEvent::Close => Event::Close,
                    };
                    if self.injected_after_starttls(&ev) {
                        return false;
                    }
                    if matches!(ev, Event::Header(_)) {
                        self.tell_peer_certificate();
                    }
                    self.count_received(&ev);
                    if self.clock.closing_until.is_some() && matches!(ev, Event::Close) {
                        // The peer's close ends our close handshake.
                        self.done = true;
                        return false;
                    }
                    self.feed(ev);
                }
                Err(e) => {
                    self.eof = true;
                    if matches!(e, XmlError::PolicyViolation(_)) {
                        METRICS.cap_hit(Cap::XmlBudget);
                    }
                    // XML errors quote the peer's input: escaped and bounded here, where the
                    // peer's text enters the reason the core logs.
                    let reason = crate::logsafe::peer(&e.to_string()).to_string();
                    self.broken(e.condition(), reason);
                    return false;
                }
            }
        }
        true
    }

    /// RFC 6120 §5.3.3: bytes sent after `<starttls/>` (inbound) or `<proceed/>` (outbound)
    /// and before the TLS handshake would be taken as coming from inside TLS: plaintext
    /// injection. Checked before the core sees the element, so we never answer `<proceed/>`.
    fn injected_after_starttls(&mut self, ev: &Event) -> bool {
        let Event::Element(e) = ev else { return false };
        let starts_tls = match self.core {
            Core::In(_) => e.is("starttls", crate::xml::TLS_NS),
            Core::Out(_) => e.is("proceed", crate::xml::TLS_NS),
            Core::Comp(_) => false,
        };
        let extra = self.parser.unparsed().len();
        if !starts_tls || extra == 0 {
            return false;
        }
        log::warn!(
            "{}: {extra} bytes sent after STARTTLS before the TLS handshake",
            self.core.label()
        );
        self.eof = true;
        self.feed(Event::Broken {
            condition: Some(StreamCondition::PolicyViolation),
            reason: "plaintext sent after STARTTLS before the TLS handshake".into(),
        });
        true
    }

    /// The peer closed the connection (EOF) with nothing left to parse.
    fn ended_by_peer(&mut self) {
        if self.clock.closing_until.is_some() {
            self.done = true;
        } else {
            self.broken(None, XmlError::Eof.to_string());
        }
    }

    /// The stream broke (bad XML with `condition` to send, or the transport failed).
    fn broken(&mut self, condition: Option<StreamCondition>, reason: String) {
        if self.clock.closing_until.is_some() {
            self.done = true;
            return;
        }
        self.feed(Event::Broken { condition, reason });
        if self.eof && self.clock.closing_until.is_some() {
            // Nothing more will come from the peer: no close handshake to wait for.
            self.done = true;
        }
    }

    fn feed(&mut self, ev: Event) {
        let actions = self.core.handle(ev);
        self.sync_budget();
        // Count a failed component handshake before the close we write lets the peer try
        // again (and again after: executing may have fed more events).
        self.caps_after_feed();
        self.execute(actions);
        self.caps_after_feed();
    }

    /// The parser's byte budget follows authentication (before anything we write lets the
    /// peer send more): the full stanza size once the stream is open, the pre-authentication
    /// size otherwise (verify connections always).
    fn sync_budget(&self) {
        let l = &self.ctx.config.limits;
        let open = self.core.is_open() && !matches!(self.role, Role::Verify { .. });
        self.parser.set_max_stanza_bytes(if open {
            l.stanza_size
        } else {
            l.pre_auth_stanza_size
        });
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::SendHeader(h) => self.write(&h.to_bytes()),
                Action::Send(el) => {
                    self.count_sent(&el);
                    self.send(el);
                }
                Action::StartTls => self.start_tls(),
                Action::Restart => self.restart(),
                Action::Verify(req) => self.verify(req),
                Action::Authenticated { local, remote } => self.authenticated(local, remote),
                Action::PairFailed {
                    local,
                    remote,
                    bounce,
                } => self.pair_failed(local, remote, bounce),
                Action::Deliver(el) => self.start(self.router.route(el)),
                Action::Bounce {
                    stanzas,
                    condition,
                    text,
                } => {
                    for s in stanzas {
                        self.start(self.router.bounce(s, condition, &text));
                    }
                }
                Action::VerifyDone(v) => self.answer_verify(v),
                Action::Register(domain) => self.register(domain),
                Action::Close(err) => self.close(err),
            }
        }
    }

    /// Start what the router asked for.
    fn start(&self, starts: Starts) {
        start::start(&self.router, starts);
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Some(link) = &mut self.link {
            link.queue(bytes);
        }
    }

    fn send(&mut self, el: crate::xml::Element) {
        let Some(link) = &mut self.link else {
            // No transport (never connected, or gone): a stanza cannot be sent.
            if stanza::is_stanza(&el) {
                let why = "the connection failed before the stanza was sent";
                self.start(
                    self.router
                        .bounce(el, StanzaCondition::RemoteServerTimeout, why),
                );
            }
            return;
        };
        if stanza::is_stanza(&el) {
            self.clock.last_activity = Instant::now();
            link.queue_stanza(el);
        } else {
            link.queue_element(&el);
        }
    }

    fn verify(&mut self, req: crate::stream::VerifyRequest) {
        if let Some(verdict) = self.verify_by_certificate(&req) {
            return self.feed(Event::Verified {
                remote: req.remote,
                local: req.local,
                verdict,
            });
        }
        match self.router.verify(req.clone(), &self.me) {
            Ok(s) => self.start(vec![s]),
            Err(verdict) => self.feed(Event::Verified {
                remote: req.remote,
                local: req.local,
                verdict,
            }),
        }
    }

    fn authenticated(&mut self, local: Domain, remote: Domain) {
        self.clock.deadline_fired = true;
        if matches!(self.role, Role::Outbound { .. }) {
            return self.pair_up(local, remote);
        }
        match &mut self.role {
            Role::Inbound { bidi, .. } if matches!(&self.core, Core::In(c) if c.is_bidi()) => {
                // BIDI-03: the inverse of the pair just verified may travel back over this
                // stream, when the pair has no stream of its own.
                let key = (local, remote);
                if self.router.bidi_route(&key, &self.me) {
                    log::info!(
                        "{}: routing {}→{} over this stream (bidi)",
                        self.core.label(),
                        key.0,
                        key.1
                    );
                    bidi.push(key);
                }
            }
            _ => {}
        }
    }

    fn register(&mut self, domain: Domain) {
        let ok = self
            .router
            .register_component(domain.clone(), self.me.clone());
        if let (true, Role::Component { domain: d, .. }) = (ok, &mut self.role) {
            *d = Some(domain);
        }
        let more = self.core.handle(Event::Registered(ok));
        self.sync_budget();
        self.execute(more);
    }

    /// Push what waits to the socket, as far as it takes it now. A failure bounces the stanzas
    /// not known written and tells the core the stream broke.
    #[inline(never)] // (see `run`)
    fn flush(&mut self) {
        let Some(link) = &mut self.link else { return };
        let had = link.wants_write();
        match link.flush() {
            Ok(true) => {
                if had {
                    self.clock.last_write = Instant::now();
                }
                self.clock.write_stalled_since = None;
            }
            Ok(false) => {
                self.clock
                    .write_stalled_since
                    .get_or_insert_with(Instant::now);
            }
            Err(e) => self.write_failed(&e.to_string()),
        }
    }

    /// Writing failed: what was not written bounces; the link is gone.
    fn write_failed(&mut self, why: &str) {
        let Some(mut link) = self.link.take() else {
            return;
        };
        for s in link.take_unsent() {
            let text = "the connection failed while sending";
            self.start(
                self.router
                    .bounce(s, StanzaCondition::RemoteServerTimeout, text),
            );
        }
        self.eof = true;
        if !self.done && self.clock.closing_until.is_none() {
            self.feed(Event::Broken {
                condition: None,
                reason: format!("write failed: {why}"),
            });
        }
        self.done = true;
    }

    /// Close: our error if any and `</stream:stream>`, then wait (bounded) for the peer's.
    fn close(&mut self, err: Option<StreamError>) {
        if let Some(e) = &err {
            log::debug!("{}: closing with {e}", self.core.label());
            self.write(&e.to_element().to_bytes());
        }
        if self.tls_pending.is_none() {
            self.write(STREAM_CLOSE);
        }
        self.unroute();
        let wait = if self.router.is_shutting_down() {
            SHUTDOWN_CLOSE_WAIT
        } else {
            self.ctx.config.timeouts.close
        };
        if self.link.is_none() || self.eof {
            self.done = true;
        } else {
            self.clock.closing_until = Some(Instant::now() + wait);
        }
    }

    /// Stop the router from sending us more stanzas; what was waiting for us goes back to it
    /// (an outbound pair's, ahead of anything newer) or bounces (a component's).
    fn unroute(&mut self) {
        match &mut self.role {
            Role::Outbound { key, routed } if *routed => {
                *routed = false;
                let (failure, joined) = match &self.core {
                    Core::Out(c) => (c.failure().cloned(), c.joined_pairs()),
                    _ => (None, Vec::new()),
                };
                let starts = self
                    .router
                    .outbound_closing_pairs(key, &self.me, failure, joined);
                self.start(starts);
            }
            Role::Inbound { bidi, .. } if !bidi.is_empty() => {
                let keys = std::mem::take(bidi);
                let starts = self.router.bidi_closing(&keys, &self.me);
                self.start(starts);
            }
            Role::Component { domain, .. } => {
                let waiting = self.router.component_closing(domain.as_ref(), &self.me);
                *domain = None;
                for el in waiting {
                    let why = "the service is not connected";
                    self.start(
                        self.router
                            .bounce(el, StanzaCondition::ServiceUnavailable, why),
                    );
                }
            }
            _ => {}
        }
    }

    fn answer_verify(&mut self, verdict: Verdict) {
        if let Role::Verify {
            reply: Some(reply),
            remote,
            local,
        } = &self.role
        {
            reply.send(Input::Verified {
                remote: remote.clone(),
                local: local.clone(),
                verdict,
            });
            self.role_verify_answered();
        }
    }

    /// The verification is answered (or abandoned): release its place under the cap.
    fn role_verify_answered(&mut self) {
        if let Role::Verify { reply, .. } = &mut self.role {
            if reply.take().is_some() {
                self.router.verification_done();
            }
        }
    }

    /// The next moment a timer needs us.
    fn next_wakeup(&self) -> Instant {
        let cfg = &self.ctx.config.timeouts;
        let c = &self.clock;
        let mut t = Instant::now() + MAX_SLEEP;
        if let Some(until) = c.closing_until {
            return t.min(until);
        }
        if let Some(since) = c.write_stalled_since {
            t = t.min(since + cfg.negotiation);
        }
        if !self.core.is_open() && !c.deadline_fired {
            t = t.min(c.deadline);
        }
        if let Some(join) = self.join_deadline() {
            t = t.min(join);
        }
        if self.core.is_open() {
            t = t
                .min(c.last_activity + cfg.idle)
                .min(c.last_write + self.core.keepalive(cfg.keepalive));
        }
        t
    }

    #[inline(never)] // (see `run`)
    fn timers(&mut self) {
        if self.done {
            return;
        }
        let now = Instant::now();
        let cfg = &self.ctx.config.timeouts;
        if let Some(c) = self.clock.closing_until {
            if now >= c {
                log::debug!(
                    "{}: peer did not close its stream in time",
                    self.core.label()
                );
                self.done = true;
            }
            return;
        }
        if self
            .clock
            .write_stalled_since
            .is_some_and(|s| now >= s + cfg.negotiation)
        {
            let secs = cfg.negotiation.as_secs();
            return self.write_failed(&format!("the peer took nothing we wrote for {secs} s"));
        }
        self.join_timers(now);
        if self.done || self.clock.closing_until.is_some() {
            return;
        }
        let cfg = &self.ctx.config.timeouts;
        if !self.core.is_open() && !self.clock.deadline_fired && now >= self.clock.deadline {
            self.clock.deadline_fired = true;
            self.feed(Event::Timeout);
        } else if self.core.is_open() && now >= self.clock.last_activity + cfg.idle {
            self.feed(Event::Idle);
        } else if self.core.is_open()
            && now >= self.clock.last_write + self.core.keepalive(cfg.keepalive)
        {
            // RFC 6120 §4.6.1: whitespace keepalive.
            self.write(b" ");
            self.clock.last_write = now;
        }
    }

    /// Going to sleep for a while: hold no buffer memory meanwhile, and only the stack frames
    /// we sleep in.
    #[inline(never)] // (see `run`)
    fn trim(&mut self) {
        self.parser.trim();
        if let Some(link) = &mut self.link {
            link.trim();
        }
        self.me.inbox().trim();
        stack::release();
    }

    /// Sleep until the socket, the inbox or the next timer needs us (not at all when `busy`).
    fn sleep(&mut self, busy: bool) {
        let inbox = self.me.inbox();
        let may_sleep = if self.backlogged() {
            // Waiting for the peer to read: queued inputs wait too (see `inputs`).
            inbox.prepare_sleep_ignoring_items()
        } else {
            inbox.prepare_sleep()
        };
        let busy = busy || !may_sleep;
        let timeout = if busy {
            Duration::ZERO
        } else {
            self.next_wakeup().saturating_duration_since(Instant::now())
        };
        if timeout >= IDLE_TRIM && self.core.is_open() {
            self.trim();
        }
        let wake = self.me.inbox().fd();
        let res = match &self.link {
            Some(link) => link.wait(wake, !self.eof && !self.backlogged(), timeout),
            None => link::poll(&[(wake, libc::POLLIN)], timeout).map(|_| ()),
        };
        if let Err(e) = res {
            log::error!("{}: poll failed: {e}", self.core.label());
            self.done = true;
        }
    }

    /// The stream is over: a last write, and everything it holds given back.
    #[inline(never)] // (see `run`)
    fn finish(&mut self) {
        self.publish_end();
        if let Some(link) = &mut self.link {
            link.shutdown();
        }
        self.release(None);
        crate::inbox::flush_wakes();
        log::debug!("{}: stream ended", self.core.label());
    }

    /// Give back everything the stream holds; idempotent. `failure` replaces the core's own
    /// for an outbound pair (after a panic).
    fn release(&mut self, failure: Option<Bounce>) {
        if let (Some(failure), Role::Outbound { key, routed: true }) = (failure, &self.role) {
            // Every pair the stream carried fails with it.
            let joined = match &self.core {
                Core::Out(c) => c.joined_pairs(),
                _ => Vec::new(),
            };
            let joined = joined
                .into_iter()
                .map(|(k, _)| (k, Some(failure.clone())))
                .collect();
            let starts = self
                .router
                .outbound_closing_pairs(key, &self.me, Some(failure), joined);
            self.start(starts);
            if let Role::Outbound { routed, .. } = &mut self.role {
                *routed = false;
            }
        }
        self.unroute();
        if let Some(mut link) = self.link.take() {
            for s in link.take_unsent() {
                let text = "the connection closed before the stanza was sent";
                self.start(
                    self.router
                        .bounce(s, StanzaCondition::RemoteServerTimeout, text),
                );
            }
        }
        if matches!(self.role, Role::Verify { reply: Some(_), .. }) {
            // The same answer as every other failure to ask the Authoritative Server.
            self.answer_verify(Verdict::Error(crate::stream::outgoing::VERIFY_FAILED));
        }
        self.caps_finish();
        self.router.remove_stream(self.me.id());
    }
}

/// A parser for a new stream (or a restarted one), with the pre-authentication budget.
fn new_parser(ctx: &Ctx) -> StreamParser {
    let l = &ctx.config.limits;
    let limits = Limits {
        max_stanza_bytes: l.stanza_size,
        max_depth: l.depth,
    };
    let p = StreamParser::new(limits);
    p.set_max_stanza_bytes(l.pre_auth_stanza_size);
    p
}
