//! One stream's threads: socket ⇄ XML reader ⇄ protocol core ⇄ router ⇄ socket.
//!
//! Each stream has a **reader thread** (blocking socket read → [`StreamReader`] → `Input`s in
//! the stream's [`Mailbox`]) and a **worker thread** that owns the protocol core and is the only
//! writer of the socket. Every other thread reaches a stream through its [`Handle`] and never
//! blocks on it: a full outbox bounces with `resource-constraint`. The worker carries out the
//! core's [`Action`]s in order and takes no protocol decision of its own; it owns the clock
//! (negotiation deadline, idle close, whitespace keepalives, close handshake).
//!
//! STARTTLS: the reader stops after `<starttls/>` (inbound) or `<proceed/>` (outbound) and hands
//! over the bytes it had already read; any such byte is plaintext injection and closes the
//! stream with `policy-violation`. The worker upgrades the socket and gives the reader a fresh
//! transport, on which it starts a fresh parser (RFC 6120 §5.4.3.3).
//!
//! Parking: after `PARK_AFTER` without input, an open stream's worker leaves itself in the
//! mailbox and its thread ends; the next input resumes it on a new thread, and the stream's
//! deadlines (keepalive, idle close) reach it through one `alarm` thread. An idle stream thus
//! costs one thread (its reader, blocked in `read`), not two.
//!
//! Submodules: `dial` (finding and connecting to a peer), `alarm` (deadlines of parked streams), `starttls` (TLS upgrade and the
//! certificate policy), `spawn` (starting each kind of stream), `caps` (what the stream holds
//! against the resource caps, given back when it ends; write buffer shrinking).
//!
//! Out of scope: protocol rules (`stream`), routing tables (`router`), accepting (`net`).

use crate::domain::Domain;
use crate::keys;
use crate::mailbox::{Mailbox, ReadAhead, Resume};
use crate::router::{Handle, Router, StreamKind};
use crate::stanza;
use crate::stream::component::Component;
use crate::stream::incoming::Incoming;
use crate::stream::outgoing::Outgoing;
use crate::stream::{Action, Event, StreamError, Verdict};
use crate::tls::TlsWriter;
use crate::xml::{Element, Limits, StreamEvent, StreamReader, XmlError, STREAM_CLOSE, TLS_NS};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod alarm;
mod caps;
mod dial;
mod spawn;
mod starttls;

pub use spawn::{spawn_component, spawn_incoming, spawn_outgoing, spawn_verify};

/// Stack size of stream threads: enough for the parser, rustls and our serializer, small
/// enough for thousands of streams on a 32-bit box.
const STACK_SIZE: usize = 256 * 1024;
/// How long a stream closing at shutdown waits for the peer's `</stream:stream>`.
const SHUTDOWN_CLOSE_WAIT: Duration = Duration::from_millis(500);
/// Inputs handled before the worker flushes its writes.
const BATCH: usize = 64;

/// A message to a stream's worker.
#[derive(Debug)]
pub enum Input {
    /// From the reader: the next event or the error that ended reading.
    Xml(Result<StreamEvent, XmlError>),
    /// From the reader: it stopped after this STARTTLS element; `leftover` is what it had
    /// already read beyond it.
    Paused {
        /// `<starttls/>` or `<proceed/>`.
        element: Element,
        /// Bytes read past the element (must be empty).
        leftover: Vec<u8>,
    },
    /// A stanza to send on this stream (outbound routes and components), with the bytes it
    /// was charged against the stream's caps ([`crate::stanza::wire_size`], measured once).
    Stanza(Element, usize),
    /// The answer to a verification this stream asked for.
    Verified {
        /// The originating domain.
        remote: Domain,
        /// Our domain.
        local: Domain,
        /// The Authoritative Server's answer.
        verdict: Verdict,
    },
    /// Close now: the daemon is shutting down.
    Shutdown,
    /// A deadline of a parked stream passed: wake up and check the timers.
    Tick,
}

/// A stream's inbox: its worker parks here when the stream is idle.
pub type Inbox = Mailbox<Input, Parked>;

/// How long a stream must be idle before its worker parks (ends its thread until the next
/// input or deadline). Measured: a parked stream saves its worker thread's stack, ~17 KiB.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// An idle stream's worker, parked in its inbox.
pub struct Parked(Worker);

impl Resume for Parked {
    fn resume(self) {
        let mut w = self.0;
        w.last_input = Instant::now();
        let id = w.me.id();
        // The worker travels in a slot so that a failed spawn does not lose it.
        let slot = Arc::new(std::sync::Mutex::new(Some(w)));
        let s2 = slot.clone();
        let spawned = thread::Builder::new()
            .name(format!("st-{id}"))
            .stack_size(STACK_SIZE)
            .spawn(move || {
                let w = s2.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(w) = w {
                    w.run();
                }
            });
        if let Err(e) = spawned {
            let w = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(w) = w {
                // Keep it parked and try again shortly: nothing queued is lost.
                log::error!(
                    "{}: cannot resume the stream: {e}; retrying",
                    w.core.label()
                );
                let inbox = Arc::downgrade(&w.inbox);
                if let Err(Parked(w)) = w.inbox.clone().park_anyway(Parked(w)) {
                    drop(w);
                }
                alarm::wake_at(Instant::now() + Duration::from_millis(200), inbox);
            }
        }
    }
}

/// How many parsed events, and how much of their memory, a reader may have in flight before it
/// waits for the worker: a peer that sends faster than we route is slowed down by TCP instead
/// of filling our memory.
///
/// 64 parsed stanzas of the largest size would be 64 × 8 × stanza_size of trees: a peer that
/// stops reading our answers (so the worker blocks writing) must not make us hold that. The
/// memory bound follows the stanza budget in force: twice the budget (32 KiB by default before
/// the peer is authenticated), at most 1 MiB; one larger stanza always fits alone.
fn read_ahead(budget: &crate::xml::StanzaBudget) -> ReadAhead {
    ReadAhead {
        items: 64,
        bytes: budget.get().saturating_mul(2).min(1 << 20),
    }
}

enum ReaderCmd {
    Resume(Box<dyn Read + Send>),
}

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

    /// The stream's name for log lines.
    fn label(&self) -> &str {
        match self {
            Core::In(c) => c.label(),
            Core::Out(c) => c.label(),
            Core::Comp(c) => c.label(),
        }
    }

    /// The STARTTLS element after which the reader must stop.
    fn pause_on(&self) -> Option<&'static str> {
        match self {
            Core::In(_) => Some("starttls"),
            Core::Out(_) => Some("proceed"),
            Core::Comp(_) => None,
        }
    }
}

fn fresh_id() -> String {
    // The OS generator was checked at start-up (main draws the secret and an id); a failure
    // now means the kernel cannot give randomness, and no stream may go on without it.
    keys::new_stream_id().expect("the OS random number generator failed")
}

struct Worker {
    router: Arc<Router>,
    core: Core,
    me: Handle,
    inbox: Arc<Inbox>,
    sock: Option<TcpStream>,
    out: Option<Box<dyn Write + Send>>,
    wbuf: Vec<u8>,
    wbuf_stanzas: Vec<Element>,
    reader_ctl: Option<Sender<ReaderCmd>>,
    reader_running: bool,
    leftover: Option<Vec<u8>>,
    deadline: Instant,
    deadline_fired: bool,
    last_activity: Instant,
    last_write: Instant,
    /// When the last input arrived (for parking).
    last_input: Instant,
    /// The pending alarm-thread wake-up for this stream, if any (one at a time).
    alarm_at: Option<Instant>,
    closing_until: Option<Instant>,
    done: bool,
    route_key: Option<(Domain, Domain)>,
    component: Option<Domain>,
    verify: Option<(Handle, Domain, Domain)>,
    peer_ip: Option<IpAddr>,
    /// The TLS connection, once there is one (its handshake facts are read from here).
    tls: Option<TlsWriter>,
    /// What the stream holds against the resource caps (see `caps`).
    caps: caps::StreamCaps,
    /// The reader's per-stanza byte budget: `limits.pre_auth_stanza_size` until the stream is
    /// authenticated, then `limits.stanza_size` (see `sync_budget`).
    budget: crate::xml::StanzaBudget,
}

impl Worker {
    /// A worker for a new stream; `core` makes the protocol core given the stream's log label
    /// (`label` plus the stream's number).
    fn new(
        router: &Arc<Router>,
        label: &str,
        kind: StreamKind,
        cap: usize,
        negotiation: Duration,
        core: impl FnOnce(String) -> Core,
    ) -> (Worker, Handle) {
        let inbox = Arc::new(Mailbox::default());
        // limits.queued_bytes is for server streams together; a component (local, one per
        // configured domain) is bounded by its own queue_bytes, so the errors we bounce to it
        // are not lost when remote pairs fill the total.
        let l = &router.ctx.config.limits;
        let total = match kind {
            StreamKind::Server => router.queued_bytes().clone(),
            StreamKind::Component => Arc::new(crate::router::ByteTotal::new(usize::MAX)),
        };
        let me = Handle::new(router.next_id(), kind, inbox.clone(), cap)
            .with_byte_caps(l.queue_bytes, total);
        let label = format!("{label} #{}", me.id());
        let core = core(label.clone());
        let now = Instant::now();
        let w = Worker {
            router: router.clone(),
            core,
            me: me.clone(),
            inbox,
            sock: None,
            out: None,
            wbuf: Vec::new(),
            wbuf_stanzas: Vec::new(),
            reader_ctl: None,
            reader_running: false,
            leftover: None,
            deadline: now + negotiation,
            deadline_fired: false,
            last_activity: now,
            last_write: now,
            last_input: now,
            alarm_at: None,
            closing_until: None,
            done: false,
            route_key: None,
            component: None,
            verify: None,
            peer_ip: None,
            tls: None,
            caps: caps::StreamCaps::default(),
            budget: crate::xml::StanzaBudget::new(router.ctx.config.limits.pre_auth_stanza_size),
        };
        (w, me)
    }

    fn limits(&self) -> Limits {
        let l = &self.router.ctx.config.limits;
        Limits {
            max_stanza_bytes: l.stanza_size,
            max_depth: l.depth,
        }
    }

    /// Take over a connected socket: start the reader, keep the write half.
    fn attach(&mut self, sock: TcpStream) -> io::Result<()> {
        let _ = sock.set_nodelay(true);
        sock.set_write_timeout(Some(self.router.ctx.config.timeouts.negotiation))?;
        let read_half = sock.try_clone()?;
        self.out = Some(Box::new(sock.try_clone()?));
        self.sock = Some(sock);
        self.start_reader(Box::new(read_half))
    }

    fn start_reader(&mut self, read: Box<dyn Read + Send>) -> io::Result<()> {
        let (ctl_tx, ctl_rx) = mpsc::channel();
        let inbox = self.inbox.clone();
        let limits = self.limits();
        let pause_on = self.core.pause_on();
        let budget = self.budget.clone();
        thread::Builder::new()
            .name(format!("rd-{}", self.me.id()))
            .stack_size(STACK_SIZE)
            .spawn(move || reader_loop(read, limits, budget, &inbox, &ctl_rx, pause_on))?;
        self.reader_ctl = Some(ctl_tx);
        self.reader_running = true;
        Ok(())
    }

    fn spawn(mut self, connect: bool) -> io::Result<()> {
        self.router.add_stream(self.me.clone());
        let name = format!("st-{}", self.me.id());
        let id = self.me.id();
        let router = self.router.clone();
        thread::Builder::new()
            .name(name)
            .stack_size(STACK_SIZE)
            .spawn(move || {
                if connect {
                    self.connect();
                }
                self.run();
            })
            .map(|_| ())
            .inspect_err(|_| router.remove_stream(id))
    }

    fn local_domain(&self) -> Domain {
        match (&self.route_key, &self.verify) {
            (Some((l, _)), _) | (None, Some((_, _, l))) => l.clone(),
            (None, None) => unreachable!("outbound workers have a route or a verify request"),
        }
    }

    fn remote_domain(&self) -> Domain {
        match (&self.route_key, &self.verify) {
            (Some((_, r)), _) | (None, Some((_, r, _))) => r.clone(),
            (None, None) => unreachable!("outbound workers have a route or a verify request"),
        }
    }

    fn run(mut self) {
        let mut batch = Vec::new();
        while !self.done {
            let parkable = self.parkable();
            if parkable && Instant::now() >= self.last_input + PARK_AFTER {
                let wake = self.next_wakeup();
                // One alarm per stream: an earlier pending one wakes us early, which is
                // harmless (we check the timers and park again, re-arming for `wake`).
                let arm = !self
                    .alarm_at
                    .is_some_and(|t| t <= wake && t > Instant::now());
                if arm {
                    self.alarm_at = Some(wake);
                }
                let inbox = self.inbox.clone();
                log::debug!("{}: idle, worker parked", self.core.label());
                match inbox.park(Parked(self)) {
                    Ok(()) => {
                        if arm {
                            alarm::wake_at(wake, Arc::downgrade(&inbox));
                        }
                        return;
                    }
                    Err(Parked(w)) => self = w,
                }
            }
            let mut deadline = self.next_wakeup();
            if parkable {
                deadline = deadline.min(self.last_input + PARK_AFTER);
            }
            if self.inbox.recv_batch(&mut batch, BATCH, deadline) > 0 {
                self.last_input = Instant::now();
            }
            for input in batch.drain(..) {
                if self.done {
                    // Whatever is left goes through the core's closed state in finish().
                    self.leftovers(input);
                } else {
                    self.input(input);
                }
            }
            if batch.capacity() > BATCH {
                batch.shrink_to(BATCH);
            }
            self.flush();
            self.timers();
            self.flush();
        }
        self.finish();
    }

    /// True when the worker may park: the stream carries traffic, nothing is half-done.
    fn parkable(&self) -> bool {
        self.core.is_open()
            && !self.done
            && self.closing_until.is_none()
            && self.reader_running
            && self.wbuf.is_empty()
            && self.leftover.is_none()
            && self.verify.is_none()
    }

    /// An input that arrived after the stream ended: stanzas go through the (closed) core,
    /// which re-routes or bounces them; anything else is moot.
    fn leftovers(&mut self, input: Input) {
        if let Input::Stanza(el, bytes) = input {
            self.me.taken(bytes);
            self.feed(Event::Stanza(el));
        }
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Xml(res) => self.xml_input(res),
            Input::Paused { element, leftover } => self.paused(element, leftover),
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
            Input::Tick => {
                if self.alarm_at.is_some_and(|t| t <= Instant::now()) {
                    self.alarm_at = None;
                }
            }
            Input::Shutdown => {
                self.feed(Event::Shutdown);
                if let Some(until) = &mut self.closing_until {
                    *until = (*until).min(Instant::now() + SHUTDOWN_CLOSE_WAIT);
                }
            }
        }
    }

    /// What the reader parsed (or why it stopped), as an event for the core.
    fn xml_input(&mut self, res: Result<StreamEvent, XmlError>) {
        self.last_activity = Instant::now();
        let ev = match res {
            Ok(StreamEvent::Header(h)) => Event::Header(h),
            Ok(StreamEvent::Element(e)) => Event::Element(e),
            Ok(StreamEvent::Close) => {
                self.reader_running = false;
                Event::Close
            }
            Err(e) => {
                self.reader_running = false;
                Event::Broken {
                    condition: e.condition(),
                    // XML errors quote the peer's input: escaped and bounded here, where the
                    // peer's text enters the reason the core logs.
                    reason: crate::logsafe::peer(&e.to_string()).to_string(),
                }
            }
        };
        if self.closing_until.is_some() {
            // We already closed; the peer's close (or EOF) ends the handshake.
            if !self.reader_running {
                self.done = true;
            }
            return;
        }
        self.feed(ev);
    }

    /// The reader stopped at a STARTTLS element (`<starttls/>` or `<proceed/>`), with the
    /// bytes it had read beyond it.
    fn paused(&mut self, element: Element, leftover: Vec<u8>) {
        self.reader_running = false;
        if !leftover.is_empty() {
            // Plaintext injection: bytes sent after <starttls/> (or <proceed/>) that would be
            // taken as coming from inside TLS. Refuse before answering.
            log::warn!(
                "{}: {} bytes sent after STARTTLS before the TLS handshake",
                self.core.label(),
                leftover.len()
            );
            self.feed(Event::Broken {
                condition: Some("policy-violation"),
                reason: "plaintext sent after STARTTLS before the TLS handshake".into(),
            });
            return;
        }
        self.leftover = Some(leftover);
        self.feed(Event::Element(element));
        if self.leftover.is_some() && self.closing_until.is_none() && !self.done {
            // The core did not start TLS: the element was out of place.
            self.feed(Event::Broken {
                condition: Some("policy-violation"),
                reason: "unexpected STARTTLS element".into(),
            });
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

    /// The reader's byte budget follows authentication (before anything we write lets the peer
    /// send more): the full stanza size once the stream is open — an inbound stream with a
    /// verified pair, an outbound stream whose db:result is valid, a registered component —,
    /// the pre-authentication size otherwise (verify connections always).
    fn sync_budget(&self) {
        let l = &self.router.ctx.config.limits;
        let open = self.core.is_open() && self.verify.is_none();
        self.budget.set(if open {
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
                    crate::xml::write_element(&el, &mut self.wbuf);
                    if stanza::is_stanza(&el) {
                        self.last_activity = Instant::now();
                        self.wbuf_stanzas.push(el);
                    }
                }
                Action::StartTls => self.start_tls(),
                Action::Verify(req) => match self.verify_by_certificate(&req) {
                    Some(verdict) => self.feed(Event::Verified {
                        remote: req.remote,
                        local: req.local,
                        verdict,
                    }),
                    None => self.router.verify(req, self.me.clone()),
                },
                Action::Authenticated { .. } => self.deadline_fired = true,
                Action::Deliver(el) => self.router.route(el),
                Action::Bounce {
                    stanzas,
                    condition,
                    text,
                } => {
                    for s in stanzas {
                        self.router.bounce(s, condition, &text);
                    }
                }
                Action::VerifyDone(v) => self.answer_verify(v),
                Action::Register(domain) => {
                    let ok = self
                        .router
                        .register_component(domain.clone(), self.me.clone());
                    if ok {
                        self.component = Some(domain);
                    }
                    let more = self.core.handle(Event::Registered(ok));
                    self.sync_budget();
                    self.execute(more);
                }
                Action::Close(err) => self.close(err),
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
    }

    /// Push buffered bytes to the socket. On failure the stanzas in the batch are bounced
    /// (nothing accepted is silently lost) and the core learns the stream broke.
    fn flush(&mut self) {
        if self.wbuf.is_empty() {
            return;
        }
        let res = match &mut self.out {
            Some(out) => out.write_all(&self.wbuf).and_then(|()| out.flush()),
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "no transport")),
        };
        self.wbuf.clear();
        caps::reclaim(&mut self.wbuf, caps::WBUF_KEEP);
        let sent = std::mem::take(&mut self.wbuf_stanzas);
        match res {
            Ok(()) => self.last_write = Instant::now(),
            Err(e) => {
                let had_transport = self.out.take().is_some();
                for s in sent {
                    self.router.bounce(
                        s,
                        "remote-server-timeout",
                        "the connection failed while sending",
                    );
                }
                if had_transport && !self.done {
                    self.feed(Event::Broken {
                        condition: None,
                        reason: format!("write failed: {e}"),
                    });
                    self.wbuf.clear();
                    self.done = true;
                }
            }
        }
    }

    fn close(&mut self, err: Option<StreamError>) {
        if let Some(e) = &err {
            log::debug!("{}: closing with {e}", self.core.label());
            self.write(&e.to_element().to_bytes());
        }
        self.write(STREAM_CLOSE);
        self.flush();
        self.unroute();
        let wait = if self.router.is_shutting_down() {
            SHUTDOWN_CLOSE_WAIT
        } else {
            self.router.ctx.config.timeouts.close
        };
        if self.out.is_none() || !self.reader_running {
            self.done = true;
        } else {
            self.closing_until = Some(Instant::now() + wait);
        }
    }

    /// Stop the router from sending us more stanzas.
    fn unroute(&mut self) {
        if let Some(key) = self.route_key.take() {
            self.router.remove_route(&key, self.me.id());
        }
        if let Some(domain) = self.component.take() {
            self.router.unregister_component(&domain, self.me.id());
        }
    }

    fn answer_verify(&mut self, verdict: Verdict) {
        if let Some((reply, remote, local)) = self.verify.take() {
            reply.send(Input::Verified {
                remote,
                local,
                verdict,
            });
            self.router.verification_done();
        }
    }

    fn next_wakeup(&self) -> Instant {
        let cfg = &self.router.ctx.config.timeouts;
        let mut t = Instant::now() + Duration::from_secs(3600);
        if let Some(c) = self.closing_until {
            return t.min(c);
        }
        if !self.core.is_open() && !self.deadline_fired {
            t = t.min(self.deadline);
        }
        if self.core.is_open() {
            t = t
                .min(self.last_activity + cfg.idle)
                .min(self.last_write + cfg.keepalive);
        }
        t
    }

    fn timers(&mut self) {
        if self.done {
            return;
        }
        let now = Instant::now();
        let cfg = &self.router.ctx.config.timeouts;
        if let Some(c) = self.closing_until {
            if now >= c {
                log::debug!(
                    "{}: peer did not close its stream in time",
                    self.core.label()
                );
                self.done = true;
            }
            return;
        }
        if !self.core.is_open() && !self.deadline_fired && now >= self.deadline {
            self.deadline_fired = true;
            self.feed(Event::Timeout);
        } else if self.core.is_open() && now >= self.last_activity + cfg.idle {
            self.feed(Event::Idle);
        } else if self.core.is_open() && now >= self.last_write + cfg.keepalive {
            // RFC 6120 §4.6.1: whitespace keepalive.
            self.write(b" ");
        }
    }

    fn finish(mut self) {
        self.flush();
        self.unroute();
        if self.verify.is_some() {
            // The same answer as every other failure to ask the Authoritative Server.
            self.answer_verify(Verdict::Error(crate::stream::outgoing::VERIFY_FAILED));
        }
        if let Some(sock) = &self.sock {
            // Unblocks the reader thread's read().
            let _ = sock.shutdown(Shutdown::Both);
        }
        self.reader_ctl = None;
        // Stanzas that raced our close: outbound ones go back to the router (a new
        // connection), ones for a component bounce, and with no transport left anything the
        // core would still write bounces too (see flush).
        self.out = None;
        for input in self.inbox.close() {
            self.leftovers(input);
        }
        self.flush();
        if let Some(ip) = self.peer_ip {
            self.router.release_ip(ip);
        }
        self.caps_finish();
        log::debug!("{}: stream ended", self.core.label());
        self.router.remove_stream(self.me.id());
    }
}

fn reader_loop(
    read: Box<dyn Read + Send>,
    limits: Limits,
    budget: crate::xml::StanzaBudget,
    inbox: &Inbox,
    ctl: &Receiver<ReaderCmd>,
    pause_on: Option<&'static str>,
) {
    let send = |input, bytes| {
        inbox
            .send_from_reader(input, bytes, read_ahead(&budget))
            .is_ok()
    };
    let mut reader = StreamReader::with_budget(read, limits, budget.clone());
    loop {
        match reader.next_event() {
            Ok(StreamEvent::Element(e)) if pause_on.is_some_and(|n| e.is(n, TLS_NS)) => {
                let (inner, leftover) = reader.into_inner();
                drop(inner);
                let input = Input::Paused {
                    element: e,
                    leftover,
                };
                if !send(input, 0) {
                    return;
                }
                match ctl.recv() {
                    Ok(ReaderCmd::Resume(r)) => {
                        reader = StreamReader::with_budget(r, limits, budget.clone())
                    }
                    Err(_) => return,
                }
            }
            Ok(ev) => {
                let end = ev == StreamEvent::Close;
                let bytes = match ev {
                    StreamEvent::Element(_) => reader.last_element_bytes(),
                    StreamEvent::Header(_) | StreamEvent::Close => 0,
                };
                if !send(Input::Xml(Ok(ev)), bytes) || end {
                    return;
                }
            }
            Err(e) => {
                send(Input::Xml(Err(e)), 0);
                return;
            }
        }
    }
}
