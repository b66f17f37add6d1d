//! What the daemon counts, and the OpenMetrics text the status listener serves at `/metrics`.
//!
//! In scope: the counters ([`METRICS`], one process-wide set of atomics, incremented where the
//! events happen: `router`, `conn`, `net`, the stream cores for their own caps), the gauges
//! read at scrape time ([`Gauges`]: streams by direction and state, queue depths, the DNS
//! cache), and rendering both as OpenMetrics 1.0 text ([`render`]). Every label set is bounded
//! by an enum: no label carries a domain, an address or anything else a peer chooses.
//!
//! Out of scope: serving it (`status`).

use crate::condition::StanzaCondition;
use crate::dns::CacheStats;
use crate::status::{Direction, StreamState};
use crate::stream::Verdict;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The counters of this process.
pub static METRICS: Metrics = Metrics::new();

const CONDITIONS: usize = StanzaCondition::ALL.len();

/// Where a routed stanza was headed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// One of our domains: a component, or the daemon itself (ping).
    Local,
    /// A remote server.
    Remote,
}

/// The dialback role a verdict was seen in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A peer's answer to our `<db:result/>` (we are the Initiating Server).
    Initiating,
    /// Our answer to a peer's `<db:result/>` (we are the Receiving Server).
    Receiving,
    /// Our answer to a peer's `<db:verify/>` (we are the Authoritative Server).
    Authoritative,
}

/// A TLS handshake's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// A peer connected to us.
    Server,
    /// We connected to a peer.
    Client,
}

/// Which way a server stream runs, for what is counted per stream: inbound (a peer connected
/// to us and authenticates to us) or outbound (we connected to a peer and authenticate to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// A peer connected to us.
    Inbound,
    /// We connected to a peer.
    Outbound,
}

/// Defines [`Cap`]: each cap with the configuration key it is named after.
macro_rules! caps {
    ($( $(#[$m:meta])* $variant:ident = $name:literal, )*) => {
        /// A resource cap that refused something (named after its `[limits]` key).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Cap {
            $( $(#[$m])* $variant, )*
        }

        impl Cap {
            /// Every cap, in the order metrics list them.
            pub const ALL: &'static [Cap] = &[$(Cap::$variant),*];

            /// The label value: the `[limits]` key.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Cap::$variant => $name, )*
                }
            }
        }
    };
}

caps! {
    /// Streams in total: an inbound connection refused.
    Connections = "connections",
    /// Inbound streams from one address (IPv6: /64).
    ConnectionsPerIp = "connections_per_ip",
    /// Outbound domain-pair streams: a stanza bounced instead of opening one more.
    OutboundStreams = "outbound_streams",
    /// Stanzas waiting for one stream: a stanza bounced.
    Outbox = "outbox",
    /// Stanzas queued for one pair while dialback runs: a stanza bounced.
    Queue = "queue",
    /// Bytes held for one stream or pair: a stanza bounced.
    QueueBytes = "queue_bytes",
    /// Bytes held for all server streams: a stanza bounced.
    QueuedBytes = "queued_bytes",
    /// Dialback verifications outstanding in total: one refused.
    PendingVerifications = "pending_verifications",
    /// Dialback verifications outstanding on one stream: one refused.
    PendingVerificationsPerStream = "pending_verifications_per_stream",
    /// Domain pairs on one inbound stream: a `<db:result/>` refused.
    PairsPerStream = "pairs_per_stream",
    /// An XML budget (stanza_size, pre_auth_stanza_size, depth, or the parser's own limits on
    /// names and attributes): the stream closed with `<policy-violation/>`.
    XmlBudget = "xml_budget",
    /// Component connections in total: one refused.
    ComponentConnections = "component_connections",
    /// Component connections from one address: one refused.
    ComponentConnectionsPerIp = "component_connections_per_ip",
    /// Failed component handshakes from one address: the address refused for a while.
    ComponentFailures = "component_failures",
}

/// The process-wide counters (see the module documentation). Relaxed atomics: each counter is
/// independent, and a scrape needs no consistent cut across them.
pub struct Metrics {
    routed: [AtomicU64; 2],
    bounced: [AtomicU64; CONDITIONS],
    dialback: [[AtomicU64; 3]; 3],
    tls_ok: [AtomicU64; 2],
    tls_failed: [AtomicU64; 2],
    /// By [`Way`], then success (0) and failure (1).
    sasl_external: [[AtomicU64; 2]; 2],
    bidi: [AtomicU64; 2],
    caps: [AtomicU64; Cap::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Metrics {
    /// All counters at zero.
    pub const fn new() -> Metrics {
        Metrics {
            routed: [const { AtomicU64::new(0) }; 2],
            bounced: [const { AtomicU64::new(0) }; CONDITIONS],
            dialback: [const { [const { AtomicU64::new(0) }; 3] }; 3],
            tls_ok: [const { AtomicU64::new(0) }; 2],
            tls_failed: [const { AtomicU64::new(0) }; 2],
            sasl_external: [const { [const { AtomicU64::new(0) }; 2] }; 2],
            bidi: [const { AtomicU64::new(0) }; 2],
            caps: [const { AtomicU64::new(0) }; Cap::ALL.len()],
        }
    }

    /// A stanza was handed to the router for `to`.
    pub fn routed(&self, to: Destination) {
        add(&self.routed[to as usize]);
    }

    /// An error reply with `condition` went back to a stanza's sender.
    pub fn bounced(&self, condition: StanzaCondition) {
        add(&self.bounced[condition as usize]);
    }

    /// A dialback verdict in `role`.
    pub fn dialback(&self, role: Role, verdict: &Verdict) {
        add(&self.dialback[role as usize][outcome(verdict)]);
    }

    /// A TLS handshake completed.
    pub fn tls_handshake(&self, side: Side) {
        add(&self.tls_ok[side as usize]);
    }

    /// A TLS handshake failed, or the peer's certificate was refused after it.
    pub fn tls_failure(&self, side: Side) {
        add(&self.tls_failed[side as usize]);
    }

    /// A SASL EXTERNAL attempt was decided: `<success/>` or `<failure/>`, sent to a peer
    /// (inbound) or received from it in answer to our `<auth/>` (outbound).
    pub fn sasl_external(&self, way: Way, success: bool) {
        add(&self.sasl_external[way as usize][usize::from(!success)]);
    }

    /// XEP-0288 bidi was negotiated on a stream: the peer asked for it (inbound) or we did
    /// (outbound).
    pub fn bidi(&self, way: Way) {
        add(&self.bidi[way as usize]);
    }

    /// A resource cap refused something.
    pub fn cap_hit(&self, cap: Cap) {
        add(&self.caps[cap as usize]);
    }

    /// How often `cap` refused something.
    pub fn caps_hit(&self, cap: Cap) -> u64 {
        get(&self.caps[cap as usize])
    }
}

fn outcome(v: &Verdict) -> usize {
    match v {
        Verdict::Valid => 0,
        Verdict::Invalid => 1,
        Verdict::Error(_) => 2,
    }
}

const OUTCOMES: [&str; 3] = ["valid", "invalid", "error"];
const ROLES: [(Role, &str); 3] = [
    (Role::Initiating, "initiating"),
    (Role::Receiving, "receiving"),
    (Role::Authoritative, "authoritative"),
];
const SIDES: [(Side, &str); 2] = [(Side::Server, "server"), (Side::Client, "client")];
const WAYS: [(Way, &str); 2] = [(Way::Inbound, "inbound"), (Way::Outbound, "outbound")];

/// What is read at scrape time rather than counted.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    /// Live streams, by [`Direction`] and [`StreamState`] (in their `ALL` order).
    pub streams: [[u64; 3]; 4],
    /// Stanzas waiting in stream inboxes.
    pub inbox_stanzas: u64,
    /// Stanzas held by outbound streams' cores while dialback runs.
    pub core_queued: u64,
    /// Bytes of stanzas held for server streams (`limits.queued_bytes` counts these).
    pub queued_bytes: u64,
    /// `limits.queued_bytes`.
    pub queued_bytes_limit: u64,
    /// The DNS cache's counters.
    pub dns: CacheStats,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time: u64,
}

impl Gauges {
    /// Count one live stream.
    pub fn count_stream(&mut self, d: Direction, s: StreamState) {
        let di = Direction::ALL.iter().position(|x| *x == d).unwrap_or(0);
        let si = StreamState::ALL.iter().position(|x| *x == s).unwrap_or(0);
        self.streams[di][si] += 1;
    }
}

/// The kinds of metric families used here.
#[derive(Clone, Copy)]
enum Type {
    Counter,
    Gauge,
    Info,
}

/// An OpenMetrics text exposition under construction.
struct Exposition {
    out: String,
    family: &'static str,
    kind: Type,
}

impl Exposition {
    fn new() -> Exposition {
        Exposition {
            out: String::with_capacity(8 * 1024),
            family: "",
            kind: Type::Gauge,
        }
    }

    /// Start a family: `# TYPE`, `# HELP` (and `# UNIT` for `_seconds`).
    fn family(&mut self, name: &'static str, kind: Type, help: &str) {
        self.family = name;
        self.kind = kind;
        let t = match kind {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Info => "info",
        };
        let _ = writeln!(self.out, "# TYPE {name} {t}");
        if name.ends_with("_seconds") {
            let _ = writeln!(self.out, "# UNIT {name} seconds");
        }
        let _ = writeln!(self.out, "# HELP {name} {}", escape(help));
    }

    /// One sample of the current family (`_total` added for counters, `_info` for info).
    fn sample(&mut self, labels: &[(&str, &str)], value: u64) {
        let suffix = match self.kind {
            Type::Counter => "_total",
            Type::Info => "_info",
            Type::Gauge => "",
        };
        self.out.push_str(self.family);
        self.out.push_str(suffix);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn finish(mut self) -> String {
        self.out.push_str("# EOF\n");
        self.out
    }
}

/// OpenMetrics escaping of label values and help text (an `escaped-string`): `\`, newline
/// and `"`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// The OpenMetrics text of [`METRICS`] and `g` (media type
/// `application/openmetrics-text; version=1.0.0`), ending with `# EOF`.
pub fn render(g: &Gauges) -> String {
    render_from(&METRICS, g)
}

/// [`render`] for any set of counters.
fn render_from(m: &Metrics, g: &Gauges) -> String {
    let mut x = Exposition::new();
    x.family("dialbackd_build", Type::Info, "The dialbackd version.");
    x.sample(&[("version", env!("CARGO_PKG_VERSION"))], 1);
    x.family(
        "dialbackd_start_time_seconds",
        Type::Gauge,
        "When the process started, in seconds since the Unix epoch.",
    );
    x.sample(&[], g.start_time);
    streams(&mut x, g);
    stanzas(&mut x, m, g);
    dialback(&mut x, m);
    sasl_and_bidi(&mut x, m);
    dns(&mut x, &g.dns);
    x.family(
        "dialbackd_tls_handshakes",
        Type::Counter,
        "TLS handshakes completed.",
    );
    for (side, name) in SIDES {
        x.sample(&[("side", name)], get(&m.tls_ok[side as usize]));
    }
    x.family(
        "dialbackd_tls_failures",
        Type::Counter,
        "TLS handshakes that failed, and peer certificates refused after a handshake.",
    );
    for (side, name) in SIDES {
        x.sample(&[("side", name)], get(&m.tls_failed[side as usize]));
    }
    x.family(
        "dialbackd_caps_hit",
        Type::Counter,
        "Times a resource cap refused something, by its [limits] key.",
    );
    for cap in Cap::ALL {
        x.sample(&[("cap", cap.as_str())], m.caps_hit(*cap));
    }
    x.finish()
}

fn streams(x: &mut Exposition, g: &Gauges) {
    x.family(
        "dialbackd_streams",
        Type::Gauge,
        "Live streams by direction and state.",
    );
    for (di, d) in Direction::ALL.iter().enumerate() {
        for (si, s) in StreamState::ALL.iter().enumerate() {
            let labels = [("direction", d.as_str()), ("state", s.as_str())];
            x.sample(&labels, g.streams[di][si]);
        }
    }
}

fn stanzas(x: &mut Exposition, m: &Metrics, g: &Gauges) {
    x.family(
        "dialbackd_stanzas_routed",
        Type::Counter,
        "Stanzas handed to the router (from peers and components), by destination.",
    );
    for (to, name) in [
        (Destination::Local, "local"),
        (Destination::Remote, "remote"),
    ] {
        x.sample(&[("destination", name)], get(&m.routed[to as usize]));
    }
    x.family(
        "dialbackd_stanzas_bounced",
        Type::Counter,
        "Error replies sent back to the senders of stanzas that could not be delivered.",
    );
    for c in StanzaCondition::ALL {
        x.sample(&[("condition", c.as_str())], get(&m.bounced[*c as usize]));
    }
    x.family(
        "dialbackd_inbox_stanzas",
        Type::Gauge,
        "Stanzas waiting in stream inboxes.",
    );
    x.sample(&[], g.inbox_stanzas);
    x.family(
        "dialbackd_pair_queue_stanzas",
        Type::Gauge,
        "Stanzas queued for domain pairs whose dialback is under way.",
    );
    x.sample(&[], g.core_queued);
    x.family(
        "dialbackd_queued_bytes",
        Type::Gauge,
        "Bytes of stanzas held for server streams (counted against limits.queued_bytes).",
    );
    x.sample(&[], g.queued_bytes);
    x.family(
        "dialbackd_queued_bytes_limit",
        Type::Gauge,
        "limits.queued_bytes.",
    );
    x.sample(&[], g.queued_bytes_limit);
}

fn dialback(x: &mut Exposition, m: &Metrics) {
    x.family(
        "dialbackd_dialback_verifications",
        Type::Counter,
        "Dialback verdicts: a peer's answer to our db:result (initiating), our answer to a \
         peer's db:result (receiving) or db:verify (authoritative).",
    );
    for (role, rname) in ROLES {
        for (oi, oname) in OUTCOMES.iter().enumerate() {
            let labels = [("role", rname), ("outcome", *oname)];
            x.sample(&labels, get(&m.dialback[role as usize][oi]));
        }
    }
}

fn sasl_and_bidi(x: &mut Exposition, m: &Metrics) {
    x.family(
        "dialbackd_sasl_external",
        Type::Counter,
        "SASL EXTERNAL attempts by direction (inbound: a peer authenticating to us; outbound: \
         us to a peer) and outcome.",
    );
    for (way, wname) in WAYS {
        for (oi, oname) in ["success", "failure"].iter().enumerate() {
            let labels = [("direction", wname), ("outcome", *oname)];
            x.sample(&labels, get(&m.sasl_external[way as usize][oi]));
        }
    }
    x.family(
        "dialbackd_bidi_streams",
        Type::Counter,
        "Streams on which XEP-0288 bidi was negotiated, by direction (inbound: the peer asked \
         for it; outbound: we did).",
    );
    for (way, wname) in WAYS {
        x.sample(&[("direction", wname)], get(&m.bidi[way as usize]));
    }
}

fn dns(x: &mut Exposition, s: &CacheStats) {
    let lookups = s.hits + s.queries + s.coalesced;
    let counters = [
        (
            "dialbackd_dns_lookups",
            "DNS lookups (SRV, A, AAAA).",
            lookups,
        ),
        (
            "dialbackd_dns_cache_hits",
            "DNS lookups answered from the cache.",
            s.hits,
        ),
        (
            "dialbackd_dns_coalesced",
            "DNS lookups that shared another lookup's query.",
            s.coalesced,
        ),
        (
            "dialbackd_dns_queries",
            "DNS queries sent to the nameservers.",
            s.queries,
        ),
        (
            "dialbackd_dns_failures",
            "DNS queries that failed (timeout, SERVFAIL, bad answer).",
            s.failures,
        ),
    ];
    for (name, help, v) in counters {
        x.family(name, Type::Counter, help);
        x.sample(&[], v);
    }
    x.family(
        "dialbackd_dns_cache_entries",
        Type::Gauge,
        "Answers held in the DNS cache.",
    );
    x.sample(&[], s.entries as u64);
}

#[cfg(test)]
mod tests;
