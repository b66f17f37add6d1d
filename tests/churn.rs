//! Accounting under churn (DESIGN.md, rules of the road: "Nothing lost, nothing reordered" and
//! "Shutdown is graceful"; issue 9). Three real daemons, a.test, b.test and c.test, each with two
//! XEP-0114 components, exchange numbered stanzas over 48 (from, to) JID pairs (24 domain
//! pairs, every pair across instances) at a steady rate while the test kills (SIGKILL) and
//! restarts b, stalls c (kills it and puts a listener that accepts and never answers on its
//! address, so queues fill and time out together), and finally SIGTERMs a while its queues
//! towards the stalled c are full. Every stanza is counted where it ends: delivered to its
//! destination component, or bounced (`type='error'`, same id) to its sender (ROUTE-02).
//!
//! Asserted for every stanza sent:
//! - it is never delivered twice, never bounced twice, never both delivered and bounced;
//! - it is delivered only to its destination, and bounced only to its sender;
//! - per JID pair, the delivered ones arrive in the order sent (sequence numbers strictly
//!   increase; gaps are the bounced or lost ones): one FIFO per domain pair, ROUTE-01, across
//!   every stream that ends and every re-dial.
//!
//! Asserted for every *strict* stanza: it is delivered or bounced by the end.
//!
//! Which stanzas are not strict, and why. Without stream management XMPP has no
//! application-level acknowledgement: a stanza written to a TCP socket whose far end is then
//! SIGKILLed is gone, and neither side can know. So, when instance K is SIGKILLed:
//! - a stanza not yet accounted whose sender or destination is on K is exempt (it may sit in
//!   K's memory or in one of K's sockets, or be a bounce on its way to K);
//! - a stanza sent afterwards towards K is exempt until the sending daemon has shown that it
//!   noticed the death: until a stanza of the same pair sent after the kill is accounted
//!   (delivered by the restarted K, or bounced for any reason but `resource-constraint`, which a
//!   stream still believed up may give) or, for the stall, until the listener sees the sender
//!   dial that domain pair anew. From then on the pair's route cannot be the dead stream, so
//!   everything sent on it is strict again.
//!
//! At the SIGTERM of a, a's components first stop sending, and a ping through each of them
//! proves a has read everything they sent: all of it stays strict (shutdown delivers or bounces
//! every queued stanza, the full queues towards the stalled c included). Stanzas towards a not
//! yet accounted at the SIGTERM are exempt (b may have written them to a socket a was closing;
//! RFC 6120 §4.4 lets a process them, but a closing a has nowhere left to bounce them), and so
//! are those b sends to a until it shows it noticed, as above.
//!
//! So strict are: everything sent while nothing is disturbed; everything the restarted b's
//! components send; everything sent towards the stalled c once its senders dialled it anew
//! (those queues time out together and must all bounce); everything a's components sent before
//! its SIGTERM; and everything b sends to the terminated a once it noticed.

mod common;

use common::dns_server::TestDns;
use common::*;
use dialbackd::xml::{Element, StreamEvent, STREAM_NS};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The instances; `a.test` is served by instance 0, and so on.
const INSTANCES: [&str; 3] = ["a", "b", "c"];
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
/// Components per instance (`c1.a.test`, `c2.a.test`, …), and in total.
const COMPS_PER_INSTANCE: usize = 2;
const COMPS: usize = INSTANCES.len() * COMPS_PER_INSTANCE;
/// JID pairs per domain pair (`u0@c1.a.test` → `v0@c1.b.test`, `u1@…` → `v1@…`).
const USERS: usize = 2;
/// The sender writes one stanza per JID pair per tick: 48 pairs every 50 ms, 960 stanzas/s.
const TICK: Duration = Duration::from_millis(50);
/// Bounds every loop of the test (the sender's ticks, every reader).
const BOUND: Duration = Duration::from_secs(150);
const MAX_TICKS: usize = 3000;
/// Stanzas per JID pair sent at once to the stalled c: 3,200 queued per sending component
/// (three times a component's default inbox of 1,024), 12,800 in all.
const BURST: usize = 800;
/// Deliveries per pair that show traffic flows in a phase (about 3 s of traffic).
const WARM: usize = 80;
/// Stanzas per pair b sends to a once it noticed a's shutdown (all of them must bounce).
const AFTER_TERM: usize = 10;
/// How long the end waits for the last strict stanzas (the stall's dials time out after 4 s).
const DRAIN: Duration = Duration::from_secs(15);
/// Strict stanzas below which the run proves too little.
const MIN_STRICT: usize = 10_000;
/// How many problems of one kind the report lists.
const SAMPLE: usize = 12;

fn comp_instance(k: usize) -> usize {
    k / COMPS_PER_INSTANCE
}

fn comp_domain(k: usize) -> String {
    format!(
        "c{}.{}.test",
        k % COMPS_PER_INSTANCE + 1,
        INSTANCES[comp_instance(k)]
    )
}

fn comp_secret(k: usize) -> String {
    format!("secret-{}", comp_domain(k))
}

/// One (from, to) JID pair, with its sending and receiving components and instances.
struct Pair {
    from: String,
    to: String,
    src_comp: usize,
    dst_comp: usize,
    src: usize,
    dst: usize,
}

/// Every pair: each component to each component of the other instances, [`USERS`] JID pairs
/// per domain pair.
fn all_pairs() -> Vec<Pair> {
    let mut pairs = Vec::new();
    for s in 0..COMPS {
        for d in (0..COMPS).filter(|&d| comp_instance(d) != comp_instance(s)) {
            for u in 0..USERS {
                pairs.push(Pair {
                    from: format!("u{u}@{}", comp_domain(s)),
                    to: format!("v{u}@{}", comp_domain(d)),
                    src_comp: s,
                    dst_comp: d,
                    src: comp_instance(s),
                    dst: comp_instance(d),
                });
            }
        }
    }
    pairs
}

/// The test's phases, to tell where a stanza was sent in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Calm,
    RestartB,
    StallC,
    BurstToStalledC,
    TermA,
    Drain,
}

/// One stanza sent: where it ended.
struct Rec {
    phase: Phase,
    /// Why it may legitimately be lost (see the module documentation); None: strict.
    exempt: Option<&'static str>,
    delivered: u32,
    bounced: u32,
    condition: Option<String>,
}

impl Rec {
    fn accounted(&self) -> bool {
        self.delivered + self.bounced > 0
    }
}

/// One JID pair's stanzas, indexed by sequence number.
#[derive(Default)]
struct Track {
    recs: Vec<Rec>,
    delivered: usize,
    last_delivered: Option<usize>,
    /// (sequence number delivered after a higher one, that higher one).
    reordered: Vec<(usize, usize)>,
    /// The pair's destination was killed or terminated: from this sequence number on, stanzas
    /// are exempt for `reason` until the sender shows it noticed.
    unsettled: Option<(usize, &'static str)>,
    /// Counters at the last `mark`: deliveries and stanzas sent.
    mark: (usize, usize),
}

/// Everything the test counts; one lock, and a condvar notified on every change.
struct Ledger {
    pairs: Arc<Vec<Pair>>,
    tracks: Vec<Track>,
    /// Per instance: its components may send.
    sending: [bool; 3],
    phase: Phase,
    /// Strict stanzas not accounted yet.
    strict_open: usize,
    pongs: HashSet<String>,
    /// Domain pairs (from, to) the stall listener saw dialled.
    dials: HashSet<(String, String)>,
    problems: Vec<String>,
}

fn parse_id(id: &str) -> Option<(usize, usize)> {
    let (p, seq) = id.strip_prefix('p')?.split_once('-')?;
    Some((p.parse().ok()?, seq.parse().ok()?))
}

impl Ledger {
    fn new(pairs: Vec<Pair>) -> Ledger {
        Ledger {
            tracks: pairs.iter().map(|_| Track::default()).collect(),
            pairs: Arc::new(pairs),
            sending: [true; 3],
            phase: Phase::Calm,
            strict_open: 0,
            pongs: HashSet::new(),
            dials: HashSet::new(),
            problems: Vec::new(),
        }
    }

    fn problem(&mut self, what: String) {
        self.problems.push(what);
    }

    /// A new stanza on pair `p`; its sequence number.
    fn alloc(&mut self, p: usize) -> usize {
        let phase = self.phase;
        let t = &mut self.tracks[p];
        let exempt = t.unsettled.map(|(_, why)| why);
        t.recs.push(Rec {
            phase,
            exempt,
            delivered: 0,
            bounced: 0,
            condition: None,
        });
        if exempt.is_none() {
            self.strict_open += 1;
        }
        t.recs.len() - 1
    }

    fn make_exempt(&mut self, p: usize, seq: usize, why: &'static str) {
        let r = &mut self.tracks[p].recs[seq];
        if r.exempt.is_none() && !r.accounted() {
            r.exempt = Some(why);
            self.strict_open -= 1;
        }
    }

    /// Every stanza of the pairs `which` not accounted yet becomes exempt for `why`.
    fn in_flight(&mut self, which: impl Fn(&Pair) -> bool, why: &'static str) {
        let pairs = self.pairs.clone();
        for (p, _) in pairs.iter().enumerate().filter(|(_, x)| which(x)) {
            for seq in 0..self.tracks[p].recs.len() {
                self.make_exempt(p, seq, why);
            }
        }
    }

    /// Stanzas sent from now on towards instance `k` are exempt for `why` until their pair
    /// settles.
    fn unsettle_to(&mut self, k: usize, why: &'static str) {
        for (t, pair) in self.tracks.iter_mut().zip(self.pairs.iter()) {
            if pair.dst == k {
                t.unsettled = Some((t.recs.len(), why));
            }
        }
    }

    /// Instance `k` is SIGKILLed now (see the module documentation).
    fn crash(&mut self, k: usize, in_flight: &'static str, unnoticed: &'static str) {
        self.sending[k] = false;
        self.in_flight(|p| p.src == k || p.dst == k, in_flight);
        self.unsettle_to(k, unnoticed);
    }

    /// Every pair in `which` whose sender still sends has settled.
    fn settled(&self, which: impl Fn(&Pair) -> bool) -> bool {
        self.tracks
            .iter()
            .zip(self.pairs.iter())
            .all(|(t, p)| !which(p) || !self.sending[p.src] || t.unsettled.is_none())
    }

    /// Stanzas of pairs towards instance `k` not accounted yet.
    fn open_towards(&self, k: usize) -> usize {
        let towards = self.tracks.iter().zip(self.pairs.iter());
        towards
            .filter(|(_, p)| p.dst == k)
            .map(|(t, _)| {
                t.recs
                    .iter()
                    .rev()
                    .take(8)
                    .filter(|r| !r.accounted())
                    .count()
            })
            .sum()
    }

    fn set_marks(&mut self) {
        for t in &mut self.tracks {
            t.mark = (t.delivered, t.recs.len());
        }
    }

    /// Every pair in `which` delivered at least `n` stanzas since the last mark.
    fn delivered_since_mark(&self, which: impl Fn(&Pair) -> bool, n: usize) -> bool {
        self.tracks
            .iter()
            .zip(self.pairs.iter())
            .all(|(t, p)| !which(p) || t.delivered - t.mark.0 >= n)
    }

    /// Every pair in `which` had at least `n` strict stanzas sent since the last mark.
    fn strict_sent_since_mark(&self, which: impl Fn(&Pair) -> bool, n: usize) -> bool {
        self.tracks.iter().zip(self.pairs.iter()).all(|(t, p)| {
            !which(p)
                || t.recs[t.mark.1..]
                    .iter()
                    .filter(|r| r.exempt.is_none())
                    .count()
                    >= n
        })
    }

    /// The stall listener saw `from` dial `to`: that domain pair's route is a new dial.
    fn dial_seen(&mut self, from: &str, to: &str) {
        self.dials.insert((from.to_string(), to.to_string()));
        for (t, pair) in self.tracks.iter_mut().zip(self.pairs.iter()) {
            if comp_domain(pair.src_comp) == from && comp_domain(pair.dst_comp) == to {
                t.unsettled = None;
            }
        }
    }

    /// Component `comp` received `e`.
    fn record(&mut self, comp: usize, e: &Element) {
        if e.is("error", STREAM_NS) {
            // A shutting-down daemon may close with <system-shutdown/> (RFC 6120 §4.9.3.19).
            let cond = stream_condition(e);
            if cond != "system-shutdown" || self.sending[comp_instance(comp)] {
                self.problem(format!("{}: stream error {cond}", comp_domain(comp)));
            }
            return;
        }
        if e.name == "iq" {
            match e.attr("id") {
                Some(id) if e.attr("type") == Some("result") && id.starts_with("sync-") => {
                    self.pongs.insert(id.to_string());
                }
                _ => self.problem(format!("{}: unexpected iq {e:?}", comp_domain(comp))),
            }
            return;
        }
        let known = e
            .attr("id")
            .and_then(parse_id)
            .filter(|&(p, seq)| p < self.tracks.len() && seq < self.tracks[p].recs.len());
        let Some((p, seq)) = known else {
            return self.problem(format!("{}: unknown stanza {e:?}", comp_domain(comp)));
        };
        let bounced = e.attr("type") == Some("error");
        if bounced {
            self.record_bounce(comp, p, seq, e);
        } else {
            self.record_delivery(comp, p, seq, e);
        }
        let rec = &self.tracks[p].recs[seq];
        if rec.delivered + rec.bounced == 1 && rec.exempt.is_none() {
            self.strict_open -= 1;
        }
        let busy = bounced && rec.condition.as_deref() == Some("resource-constraint");
        let t = &mut self.tracks[p];
        if matches!(t.unsettled, Some((from, _)) if seq >= from && !busy) {
            t.unsettled = None;
        }
    }

    fn record_bounce(&mut self, comp: usize, p: usize, seq: usize, e: &Element) {
        let pair = &self.pairs[p];
        if comp != pair.src_comp || e.attr("to") != Some(pair.from.as_str()) {
            let what = format!("bounce p{p}-{seq} reached {}: {e:?}", comp_domain(comp));
            self.problem(what);
        }
        let r = &mut self.tracks[p].recs[seq];
        r.bounced += 1;
        r.condition = Some(error_condition(e).unwrap_or_else(|| "(none)".into()));
    }

    fn record_delivery(&mut self, comp: usize, p: usize, seq: usize, e: &Element) {
        let pair = &self.pairs[p];
        let (from, to) = (e.attr("from"), e.attr("to"));
        if comp != pair.dst_comp || to != Some(pair.to.as_str()) || from != Some(pair.from.as_str())
        {
            let what = format!("p{p}-{seq} delivered to {}: {e:?}", comp_domain(comp));
            self.problem(what);
        }
        let t = &mut self.tracks[p];
        t.recs[seq].delivered += 1;
        t.delivered += 1;
        match t.last_delivered {
            Some(last) if seq <= last => t.reordered.push((seq, last)),
            _ => t.last_delivered = Some(seq),
        }
    }
}

/// The ledger, its condvar, and the flag that stops every thread of the test.
struct Shared {
    ledger: Mutex<Ledger>,
    cv: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Block until `pred` holds, at most `bound`; whether it holds.
    fn wait(&self, bound: Duration, pred: impl Fn(&Ledger) -> bool) -> bool {
        let (l, _) = self
            .cv
            .wait_timeout_while(self.lock(), bound, |l| !pred(l))
            .unwrap_or_else(|e| e.into_inner());
        pred(&l)
    }

    /// Like `wait` within [`WAIT`], panicking with `what` and the tally if it does not hold.
    fn require(&self, what: &str, pred: impl Fn(&Ledger) -> bool) {
        if !self.wait(WAIT, pred) {
            panic!("{what}: not within {WAIT:?}\n{}", tally(&self.lock()));
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.lock().phase = phase;
    }
}

/// The writing half of one component's stream; `gen` counts its connections.
struct Link {
    w: Option<TcpStream>,
    open: bool,
    gen: u64,
}

fn stanza(p: usize, seq: usize, pair: &Pair) -> String {
    format!(
        "<message from='{}' to='{}' id='p{p}-{seq}'><body>{p}:{seq}</body></message>",
        pair.from, pair.to
    )
}

/// Send `per_pair` stanzas on every pair of component `comp` that `want` selects, in one
/// write. The link's lock is held from numbering to writing, so per pair the wire order is
/// the order of the sequence numbers.
fn send_round(
    shared: &Shared,
    link: &Mutex<Link>,
    comp: usize,
    per_pair: usize,
    want: &dyn Fn(&Pair) -> bool,
) -> usize {
    let mut link = link.lock().unwrap_or_else(|e| e.into_inner());
    if !link.open {
        return 0;
    }
    let mut batch = String::new();
    let mut sent = Vec::new();
    {
        let mut l = shared.lock();
        if !l.sending[comp_instance(comp)] {
            return 0;
        }
        let pairs = l.pairs.clone();
        for (p, pair) in pairs.iter().enumerate() {
            if pair.src_comp == comp && want(pair) {
                for _ in 0..per_pair {
                    let seq = l.alloc(p);
                    batch.push_str(&stanza(p, seq, pair));
                    sent.push((p, seq));
                }
            }
        }
    }
    let written = match link.w.as_mut() {
        Some(w) => w.write_all(batch.as_bytes()),
        None => Err(std::io::ErrorKind::NotConnected.into()),
    };
    if let Err(e) = written {
        link.open = false;
        let mut l = shared.lock();
        if l.sending[comp_instance(comp)] {
            l.problem(format!("{}: writing failed: {e}", comp_domain(comp)));
        }
        for &(p, seq) in &sent {
            l.make_exempt(p, seq, "its component's write failed");
        }
    }
    sent.len()
}

/// The stream of `link` ended; at the daemon's `</stream:stream>`, answer with ours (STR-05;
/// nothing more is sent on it).
fn close_link(link: &Mutex<Link>, gen: u64, answer: bool) {
    let mut l = link.lock().unwrap_or_else(|e| e.into_inner());
    if l.gen == gen {
        l.open = false;
        if let (true, Some(w)) = (answer, l.w.as_mut()) {
            let _ = w.write_all(b"</stream:stream>");
        }
    }
}

/// Read component `comp`'s stream continuously (so it never blocks the daemon), counting
/// everything it receives, until the stream ends or the test stops.
fn read_component(shared: &Shared, link: &Mutex<Link>, comp: usize, gen: u64, c: ComponentClient) {
    let deadline = Instant::now() + BOUND;
    while Instant::now() < deadline && !shared.stop.load(Ordering::Relaxed) {
        match c.conn.next(Duration::from_millis(200)) {
            Some(Ok(StreamEvent::Element(e))) => {
                shared.lock().record(comp, &e);
                shared.cv.notify_all();
            }
            Some(Ok(StreamEvent::Close)) => return close_link(link, gen, true),
            Some(Ok(StreamEvent::Header(h))) => {
                shared
                    .lock()
                    .problem(format!("{}: a second header {h:?}", c.domain));
            }
            Some(Err(_)) => return close_link(link, gen, false),
            None => {}
        }
    }
}

/// The components' streams, their readers and the paced sender; dropping it stops them all.
struct Traffic {
    shared: Arc<Shared>,
    links: Arc<Vec<Mutex<Link>>>,
    sender_stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<()>>,
    readers: Vec<JoinHandle<()>>,
}

impl Traffic {
    fn new(shared: Arc<Shared>) -> Traffic {
        let links = (0..COMPS)
            .map(|_| {
                Mutex::new(Link {
                    w: None,
                    open: false,
                    gen: 0,
                })
            })
            .collect();
        Traffic {
            shared,
            links: Arc::new(links),
            sender_stop: Arc::new(AtomicBool::new(false)),
            sender: None,
            readers: Vec::new(),
        }
    }

    /// Connect component `comp` to the daemon at `addr` and start reading it.
    fn connect(&mut self, comp: usize, addr: SocketAddr) {
        let client = ComponentClient::connect(addr, &comp_domain(comp), &comp_secret(comp));
        let w = client.conn.socket().expect("a plain TCP component stream");
        w.set_write_timeout(Some(WAIT)).expect("write timeout");
        let gen = {
            let mut link = self.links[comp].lock().unwrap();
            link.gen += 1;
            link.w = Some(w);
            link.open = true;
            link.gen
        };
        let (shared, links) = (self.shared.clone(), self.links.clone());
        self.readers.push(thread::spawn(move || {
            read_component(&shared, &links[comp], comp, gen, client)
        }));
    }

    /// Start the paced sender: one stanza per pair of every component that may send, per tick.
    fn start_sender(&mut self) {
        let (shared, links, stop) = (
            self.shared.clone(),
            self.links.clone(),
            self.sender_stop.clone(),
        );
        self.sender = Some(thread::spawn(move || {
            for _ in 0..MAX_TICKS {
                if stop.load(Ordering::Relaxed) || shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                for (comp, link) in links.iter().enumerate() {
                    send_round(&shared, link, comp, 1, &|_| true);
                }
                shared.cv.notify_all();
                // Pacing: one tick, cut short when the sender is told to stop.
                let stopped =
                    || stop.load(Ordering::Relaxed) || shared.stop.load(Ordering::Relaxed);
                shared.wait(TICK, |_| stopped());
            }
        }));
    }

    fn stop_sender(&mut self) {
        self.sender_stop.store(true, Ordering::Relaxed);
        self.shared.cv.notify_all();
        if let Some(s) = self.sender.take() {
            let _ = s.join();
        }
    }

    /// `n` stanzas on every pair `want` selects, at once; how many were sent.
    fn burst(&self, want: impl Fn(&Pair) -> bool, n: usize) -> usize {
        (0..COMPS)
            .map(|comp| send_round(&self.shared, &self.links[comp], comp, n, &want))
            .sum()
    }

    /// A ping from component `comp` to its daemon's domain (XEP-0199), with id `id`.
    fn ping(&self, comp: usize, id: &str) {
        let mut link = self.links[comp].lock().unwrap();
        let iq = format!(
            "<iq type='get' id='{id}' from='{}' to='{}.test'><ping xmlns='urn:xmpp:ping'/></iq>",
            comp_domain(comp),
            INSTANCES[comp_instance(comp)]
        );
        let w = link.w.as_mut().expect("a connected component");
        w.write_all(iq.as_bytes()).expect("send the ping");
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.stop_sender();
        for link in self.links.iter() {
            let link = link.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(w) = &link.w {
                let _ = w.shutdown(Shutdown::Both);
            }
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

/// `text` with `from` replaced by `to`; panics if `from` is not there (the helper that wrote
/// `text` changed).
fn replace_checked(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "no {from:?} in the config:\n{text}");
    text.replace(from, to)
}

/// Instance `i`'s config: its domain, two components, short timeouts (so the stall resolves
/// fast), a fixed dialback secret (keys stay valid across its restart), and its s2s listener on
/// `port` (0: any; a restart reuses the port its peers resolve).
fn instance_config(i: usize, dns: SocketAddr, port: u16) -> String {
    let comps: Vec<(String, String)> = (0..COMPS)
        .filter(|&k| comp_instance(k) == i)
        .map(|k| (comp_domain(k), comp_secret(k)))
        .collect();
    let comps: Vec<(&str, &str)> = comps.iter().map(|(d, s)| (&d[..], &s[..])).collect();
    let domain = format!("{}.test", INSTANCES[i]);
    let text = config(&[&domain], &comps, dns, "");
    let text = replace_checked(
        &text,
        "negotiation = 15\ndialback = 15\nclose = 2\nshutdown = 6\n",
        "negotiation = 4\ndialback = 3\nclose = 1\nshutdown = 4\n",
    );
    let text = replace_checked(
        &text,
        "s2s = [\"{ip}:0\"]",
        &format!("s2s = [\"{{ip}}:{port}\"]"),
    );
    format!("dialback_secret = \"churn-{}\"\n{text}", INSTANCES[i])
}

/// The three daemons and the DNS server that publishes them.
struct Cluster {
    dns: TestDns,
    ips: Vec<Ipv4Addr>,
    s2s: Vec<SocketAddr>,
    live: Vec<Option<Daemon>>,
    /// Killed or terminated daemons, kept so that their logs are shown if the test fails.
    gone: Vec<Daemon>,
}

impl Cluster {
    fn start() -> Cluster {
        let dns = TestDns::start(IpAddr::V4(next_ip()));
        let (mut ips, mut s2s, mut live) = (Vec::new(), Vec::new(), Vec::new());
        for (i, name) in INSTANCES.iter().enumerate() {
            let ip = next_ip();
            let d = Daemon::start(name, ip, &instance_config(i, dns.addr(), 0));
            publish(&dns, &format!("{name}.test"), d.s2s());
            for k in (0..COMPS).filter(|&k| comp_instance(k) == i) {
                publish(&dns, &comp_domain(k), d.s2s());
            }
            ips.push(ip);
            s2s.push(d.s2s());
            live.push(Some(d));
        }
        Cluster {
            dns,
            ips,
            s2s,
            live,
            gone: Vec::new(),
        }
    }

    fn daemon(&self, i: usize) -> &Daemon {
        self.live[i].as_ref().expect("a running instance")
    }

    /// SIGKILL instance `i` and reap it.
    fn kill(&mut self, i: usize) {
        let mut d = self.live[i].take().expect("a running instance");
        d.kill();
        self.gone.push(d);
    }

    /// Start instance `i` again, on the s2s address its peers resolve.
    fn restart(&mut self, i: usize) {
        let name = format!("{}-restarted", INSTANCES[i]);
        let port = self.s2s[i].port();
        let d = Daemon::start(
            &name,
            self.ips[i],
            &instance_config(i, self.dns.addr(), port),
        );
        assert_eq!(d.s2s(), self.s2s[i], "the restart listens where it did");
        self.live[i] = Some(d);
    }

    /// SIGTERM instance `i`; its exit status, if it exited within [`WAIT`].
    fn terminate(&mut self, i: usize) -> Option<ExitStatus> {
        let mut d = self.live[i].take().expect("a running instance");
        let status = d.terminate();
        self.gone.push(d);
        status
    }
}

/// A listener on a killed instance's address that accepts and never answers; it reads the
/// dialler's stream header to see which domain pair dials. Dropping it closes everything.
struct Stall {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Stall {
    fn start(addr: SocketAddr, shared: Arc<Shared>) -> Stall {
        let listener = TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("bind the stall listener on {addr}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (stop2, conns2) = (stop.clone(), conns.clone());
        let acceptor = thread::spawn(move || {
            for sock in listener.incoming().take(10_000) {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(sock) = sock else { continue };
                if let Ok(c) = sock.try_clone() {
                    conns2.lock().unwrap().push(c);
                }
                let shared = shared.clone();
                thread::spawn(move || watch_dial(sock, &shared));
            }
        });
        Stall {
            addr,
            stop,
            conns,
            acceptor: Some(acceptor),
        }
    }
}

/// Note which domain pair dials on `sock`, then hold it without a word until the dialler
/// gives up or the stall ends.
fn watch_dial(sock: TcpStream, shared: &Shared) {
    let c = XmlConn::over(sock);
    if let Some(Ok(StreamEvent::Header(h))) = c.next(WAIT) {
        if let (Some(from), Some(to)) = (h.from, h.to) {
            shared.lock().dial_seen(&from, &to);
            shared.cv.notify_all();
        }
    }
    let deadline = Instant::now() + BOUND;
    while let Some(Ok(_)) = c.next(deadline.saturating_duration_since(Instant::now())) {}
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for c in self.conns.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// Per phase: sent, strict, delivered, bounced, strict not accounted; the exempt stanzas by
/// reason; the bounce conditions.
fn tally(l: &Ledger) -> String {
    let mut phases: BTreeMap<Phase, [usize; 5]> = BTreeMap::new();
    let mut exempt: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut conditions: BTreeMap<&str, usize> = BTreeMap::new();
    for r in l.tracks.iter().flat_map(|t| &t.recs) {
        let row = phases.entry(r.phase).or_default();
        row[0] += 1;
        row[1] += r.exempt.is_none() as usize;
        row[2] += (r.delivered > 0) as usize;
        row[3] += (r.bounced > 0) as usize;
        row[4] += (r.exempt.is_none() && !r.accounted()) as usize;
        if let Some(why) = r.exempt {
            let e = exempt.entry(why).or_default();
            e.0 += 1;
            e.1 += r.accounted() as usize;
        }
        if let Some(c) = &r.condition {
            *conditions.entry(c.as_str()).or_default() += 1;
        }
    }
    let mut s = String::from(
        "stanzas by phase sent: [sent, of which strict, delivered, bounced, strict neither]\n",
    );
    for (phase, row) in &phases {
        s.push_str(&format!("  {phase:?}: {row:?}\n"));
    }
    s.push_str("exempt (count, accounted all the same):\n");
    for (why, n) in &exempt {
        s.push_str(&format!("  {why}: {n:?}\n"));
    }
    s.push_str(&format!(
        "bounce conditions: {conditions:?}\nstall dials seen: {}\n",
        l.dials.len()
    ));
    s
}

/// `what` and up to [`SAMPLE`] of `items`.
fn sample(what: &str, items: &[String]) -> String {
    let shown: Vec<&str> = items.iter().take(SAMPLE).map(|s| s.as_str()).collect();
    format!("{} {what}: {}", items.len(), shown.join(", "))
}

/// Everything the test asserts, as a list of failures (empty: it passed).
fn failures(l: &Ledger) -> Vec<String> {
    let (mut twice, mut both, mut lost, mut reordered) = (vec![], vec![], vec![], vec![]);
    let mut lost_pairs: BTreeMap<String, usize> = BTreeMap::new();
    let mut lost_where: BTreeMap<String, usize> = BTreeMap::new();
    let mut strict = 0;
    for (p, (t, pair)) in l.tracks.iter().zip(l.pairs.iter()).enumerate() {
        for (seq, r) in t.recs.iter().enumerate() {
            let id = format!("p{p}-{seq}");
            if r.delivered > 1 || r.bounced > 1 {
                twice.push(format!(
                    "{id} (delivered {}, bounced {})",
                    r.delivered, r.bounced
                ));
            }
            if r.delivered > 0 && r.bounced > 0 {
                both.push(id.clone());
            }
            strict += r.exempt.is_none() as usize;
            if r.exempt.is_none() && !r.accounted() {
                lost.push(format!("{id} ({:?})", r.phase));
                let (src, dst) = (INSTANCES[pair.src], INSTANCES[pair.dst]);
                *lost_where
                    .entry(format!("{:?} {src}→{dst}", r.phase))
                    .or_default() += 1;
                *lost_pairs
                    .entry(format!("{}→{}", pair.from, pair.to))
                    .or_default() += 1;
            }
        }
        for (seq, after) in &t.reordered {
            reordered.push(format!("p{p}-{seq} after p{p}-{after}"));
        }
    }
    let mut out = Vec::new();
    if !twice.is_empty() {
        out.push(sample("stanzas delivered or bounced twice", &twice));
    }
    if !both.is_empty() {
        out.push(sample("stanzas both delivered and bounced", &both));
    }
    if !reordered.is_empty() {
        out.push(sample("deliveries out of per-pair order", &reordered));
    }
    if !l.problems.is_empty() {
        out.push(sample("misrouted or unexpected", &l.problems));
    }
    if !lost.is_empty() {
        let pairs: Vec<String> = lost_pairs
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        let places: Vec<String> = lost_where
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        out.push(sample(
            "strict stanzas neither delivered nor bounced",
            &lost,
        ));
        out.push(sample(
            "places (phase sent, instances) of such losses",
            &places,
        ));
        out.push(sample("pairs with such losses", &pairs));
    }
    if strict < MIN_STRICT {
        out.push(format!(
            "only {strict} strict stanzas: too few to prove anything"
        ));
    }
    out
}

/// Phase 1: all three up, every pair delivers.
fn calm(shared: &Shared) {
    shared.require("every pair delivers", |l| {
        l.delivered_since_mark(|_| true, WARM)
    });
}

/// Phase 2: SIGKILL b while traffic flows, restart it on the same address, reconnect its
/// components; every pair towards b settles and every pair from the new b delivers.
fn restart_b(cluster: &mut Cluster, traffic: &mut Traffic) {
    let shared = traffic.shared.clone();
    shared.set_phase(Phase::RestartB);
    shared.require("stanzas in flight towards b", |l| l.open_towards(B) >= 8);
    shared.lock().crash(
        B,
        "in flight when b was killed",
        "sent to b before its sender noticed the kill",
    );
    cluster.kill(B);
    cluster.restart(B);
    for k in (0..COMPS).filter(|&k| comp_instance(k) == B) {
        traffic.connect(k, cluster.daemon(B).component_addr());
    }
    {
        let mut l = shared.lock();
        l.sending[B] = true;
        l.set_marks();
    }
    shared.require("every pair towards b settles after its restart", |l| {
        l.settled(|p| p.dst == B)
    });
    shared.require("every pair from the restarted b delivers", |l| {
        l.delivered_since_mark(|p| p.src == B, WARM)
    });
}

/// Phase 3: SIGKILL c and stall its address; once every pair towards c dials it anew (or
/// bounced), send a burst on each: those queues time out together and must all bounce.
fn stall_c(cluster: &mut Cluster, shared: &Arc<Shared>, traffic: &Traffic) -> Stall {
    shared.set_phase(Phase::StallC);
    shared.require("stanzas in flight towards c", |l| l.open_towards(C) >= 8);
    shared.lock().crash(
        C,
        "in flight when c was killed",
        "sent to c before its sender noticed the kill",
    );
    cluster.kill(C);
    let stall = Stall::start(cluster.s2s[C], shared.clone());
    shared.require("every pair towards the stalled c dials it anew", |l| {
        l.settled(|p| p.dst == C)
    });
    shared.set_phase(Phase::BurstToStalledC);
    let n = traffic.burst(|p| p.dst == C, BURST);
    assert_eq!(n, 16 * BURST, "a burst on every live pair towards c");
    stall
}

/// Phase 4: a's components stop sending, a ping proves a read everything, then SIGTERM a
/// while its queues towards the stalled c are full: it must bounce them all and exit 0.
fn terminate_a(cluster: &mut Cluster, shared: &Shared, traffic: &Traffic) {
    shared.set_phase(Phase::TermA);
    shared.lock().sending[A] = false;
    let syncs: Vec<String> = (0..COMPS)
        .filter(|&k| comp_instance(k) == A)
        .map(|k| format!("sync-{k}"))
        .collect();
    for id in &syncs {
        let k = id["sync-".len()..].parse().expect("a component number");
        traffic.ping(k, id);
    }
    shared.require("a answers its components' pings", |l| {
        syncs.iter().all(|id| l.pongs.contains(id))
    });
    {
        let mut l = shared.lock();
        l.in_flight(|p| p.dst == A, "in flight to a at its SIGTERM");
        l.unsettle_to(A, "sent to a before its sender noticed the SIGTERM");
    }
    let status = cluster.terminate(A);
    if !status.is_some_and(|s| s.success()) {
        shared.lock().problem(format!(
            "a did not exit 0 within {WAIT:?} of SIGTERM: {status:?}"
        ));
    }
}

/// Phase 5: b notices a is gone and bounces what it sends there; then the sender stops and
/// the last strict stanzas (the stall's) are waited for, within [`DRAIN`].
fn drain(shared: &Shared, traffic: &mut Traffic) {
    shared.set_phase(Phase::Drain);
    shared.require("every pair towards the terminated a settles", |l| {
        l.settled(|p| p.dst == A)
    });
    shared.lock().set_marks();
    shared.require("b keeps sending to the terminated a", |l| {
        l.strict_sent_since_mark(|p| p.src == B && p.dst == A, AFTER_TERM)
    });
    traffic.stop_sender();
    shared.wait(DRAIN, |l| l.strict_open == 0);
}

/// ROUTE-01, ROUTE-02, STR-05; DESIGN.md "Nothing lost, nothing reordered" and "Shutdown is graceful", under churn: see
/// the module documentation for what is asserted and why.
#[test]
fn every_stanza_is_delivered_once_in_order_or_bounced_once_under_churn() {
    let started = Instant::now();
    let mut cluster = Cluster::start();
    let shared = Arc::new(Shared {
        ledger: Mutex::new(Ledger::new(all_pairs())),
        cv: Condvar::new(),
        stop: AtomicBool::new(false),
    });
    let mut traffic = Traffic::new(shared.clone());
    for k in 0..COMPS {
        traffic.connect(k, cluster.daemon(comp_instance(k)).component_addr());
    }
    traffic.start_sender();
    calm(&shared);
    restart_b(&mut cluster, &mut traffic);
    let stall = stall_c(&mut cluster, &shared, &traffic);
    terminate_a(&mut cluster, &shared, &traffic);
    drain(&shared, &mut traffic);
    cluster.daemon(B).assert_alive();
    let l = shared.lock();
    let report = tally(&l);
    eprintln!("churn accounting after {:?}:\n{report}", started.elapsed());
    let failed = failures(&l);
    assert!(failed.is_empty(), "{}\n{report}", failed.join("\n"));
    drop(l);
    drop(stall);
}
