//! `core_incoming`, `core_outgoing`, `core_component`: the sans-I/O stream cores fed arbitrary
//! sequences of events built from a small vocabulary, with a model of what each core may do
//! checked after every event.

use super::Input;
use dialbackd::config::Config;
use dialbackd::domain::{Domain, Jid};
use dialbackd::keys::DialbackSecret;
use dialbackd::stanza;
use dialbackd::stream::bidi::{BIDI_FEATURE_NS, BIDI_NS};
use dialbackd::stream::component::{handshake_digest, Component};
use dialbackd::stream::incoming::Incoming;
use dialbackd::stream::outgoing::{Outgoing, Purpose};
use dialbackd::stream::sasl::{self, CertCheck, SASL_NS};
use dialbackd::stream::{
    parse_version, Action, ConnectError, Ctx, Event, StanzaCondition, StreamCondition, Verdict,
    VerifyRequest,
};
use dialbackd::xml::{
    Element, StreamHeader, CLIENT_NS, COMPONENT_NS, DIALBACK_NS, SERVER_NS, STANZAS_NS,
    STREAMS_ERR_NS, STREAM_NS, TLS_NS,
};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// How often the deepest paths were reached (summed over every input checked in this process):
/// a stanza delivered on an inbound stream, sent on an outbound stream after `valid`, a verify
/// connection reporting `valid`, a stanza delivered from a component, a db:verify answered
/// `valid` on an inbound stream (Authoritative Server role), SASL EXTERNAL success on an inbound
/// stream, an outbound pair established by SASL EXTERNAL. The regression test asserts the
/// committed seeds reach each of them.
pub static REACHED: [AtomicUsize; 7] = [
    AtomicUsize::new(0),
    AtomicUsize::new(0),
    AtomicUsize::new(0),
    AtomicUsize::new(0),
    AtomicUsize::new(0),
    AtomicUsize::new(0),
    AtomicUsize::new(0),
];

fn reached(i: usize) {
    REACHED[i].fetch_add(1, Ordering::Relaxed);
}

/// Most events fed per input.
const MAX_EVENTS: usize = 96;

const SECRET: &str = "s3cr3tf0rd14lb4ck";
const COMPONENT_SECRET: &str = "echosecret";
/// Our stream id on component streams.
const COMPONENT_ID: &str = "cid";
/// The stream id a verify connection asks about.
const VERIFY_SID: &str = "sid1";

const CONFIG: &str = r#"
domains = ["a.test", "conference.a.test"]
dialback_secret = "s3cr3tf0rd14lb4ck"
[limits]
queue = 4
pending_verifications_per_stream = 3
[[component]]
domain = "echo.a.test"
secret = "echosecret"
"#;

/// Domain names the events use: ours, the component's, peers', and malformed ones.
const NAMES: [&str; 13] = [
    "a.test",
    "b.test",
    "conference.a.test",
    "echo.a.test",
    "c.test",
    "B.TEST",
    "b.test.",
    "",
    "bad domain",
    "10.0.0.5",
    "[::1]",
    "a.test/x",
    "u@b.test",
];

const VERDICTS: [Verdict; 4] = [
    Verdict::Valid,
    Verdict::Invalid,
    Verdict::Error(StanzaCondition::RemoteServerNotFound),
    Verdict::Error(StanzaCondition::ItemNotFound),
];

fn ctx(tls_available: bool) -> Arc<Ctx> {
    static CONF: OnceLock<Arc<Config>> = OnceLock::new();
    let config = CONF
        .get_or_init(|| {
            Arc::new(Config::parse(CONFIG, Path::new("fuzz.toml")).expect("fuzz config parses"))
        })
        .clone();
    Arc::new(Ctx {
        config,
        secret: DialbackSecret::from_secret(SECRET),
        tls_available,
    })
}

fn domain(s: &str) -> Domain {
    Domain::parse(s).expect("a valid test domain")
}

/// What was fed, kept for the checks (`Event` is not `Clone`).
#[derive(Clone, Debug)]
enum Fed {
    Header(StreamHeader),
    Element(Element),
    Close,
    Broken(Option<StreamCondition>),
    TlsEstablished,
    /// What the peer's certificate proves (`None`: no certificate): the names it is valid for.
    PeerCertificate(Option<Vec<&'static str>>),
    Connected(bool),
    ConnectFailed(bool),
    Stanza(Element),
    Verified(Domain, Domain, Verdict),
    Registered(bool),
    Timeout,
    Idle,
    Shutdown,
}

impl Fed {
    fn to_event(&self) -> Event {
        match self.clone() {
            Fed::Header(h) => Event::Header(h),
            Fed::Element(e) => Event::Element(e),
            Fed::Close => Event::Close,
            Fed::Broken(condition) => Event::Broken {
                condition,
                reason: "fuzz".into(),
            },
            Fed::TlsEstablished => Event::TlsEstablished,
            Fed::PeerCertificate(names) => Event::PeerCertificate(names.map(cert_for)),
            Fed::Connected(tls) => Event::Connected { tls },
            Fed::ConnectFailed(true) => Event::ConnectFailed(ConnectError::NotFound("fuzz".into())),
            Fed::ConnectFailed(false) => {
                Event::ConnectFailed(ConnectError::Unreachable("fuzz".into()))
            }
            Fed::Stanza(e) => Event::Stanza(e),
            Fed::Verified(remote, local, verdict) => Event::Verified {
                remote,
                local,
                verdict,
            },
            Fed::Registered(ok) => Event::Registered(ok),
            Fed::Timeout => Event::Timeout,
            Fed::Idle => Event::Idle,
            Fed::Shutdown => Event::Shutdown,
        }
    }

    fn element(&self) -> Option<&Element> {
        match self {
            Fed::Element(e) => Some(e),
            _ => None,
        }
    }
}

/// Names a certificate in `Fed::PeerCertificate` may be valid for (bit `i` of the mask byte
/// names `CERT_NAMES[i]`): the peer's domains, ours, another case.
const CERT_NAMES: [&str; 4] = ["b.test", "c.test", "a.test", "B.TEST"];

/// A certificate check that proves exactly the domains `names` parse to.
fn cert_for(names: Vec<&'static str>) -> CertCheck {
    CertCheck::new(move |d| {
        if names
            .iter()
            .any(|n| Domain::parse(n).ok().as_ref() == Some(d))
        {
            Ok(())
        } else {
            Err(format!("not valid for {d}"))
        }
    })
}

/// Whether the names a certificate was made for prove `d` (the model's view of `cert_for`).
fn cert_proves(names: &[&str], d: &Domain) -> bool {
    names
        .iter()
        .any(|n| Domain::parse(n).ok().as_ref() == Some(d))
}

/// The authorization identities the vocabulary base64-encodes into `<auth/>` and
/// `<response/>` (besides `NAMES`): NUL inside, not UTF-8 after decoding is elsewhere.
const AUTHZIDS: [&str; 3] = ["b.test\0", "b.test ", "ü.test"];

/// Padded standard base64 (RFC 4648 §4), written independently of the core's decoder.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The authorization identity a SASL response of the vocabulary carries: `Some(None)` for the
/// empty one (`=`), `Some(Some(name))` for base64 of a name the vocabulary encodes, `None` for
/// anything else (which must never authenticate).
fn authzid_of(text: &str) -> Option<Option<&'static str>> {
    let t = text.trim();
    if t == "=" {
        return Some(None);
    }
    NAMES
        .iter()
        .chain(&AUTHZIDS)
        .find(|n| !n.is_empty() && base64(n.as_bytes()) == t)
        .map(|n| Some(*n))
}

/// Builds events from fuzz input. `pairs` are (remote, local) pairs the harness wants reachable
/// (outstanding or verified ones); `ids` are stream ids worth naming.
struct Vocab {
    secret: DialbackSecret,
    pairs: Vec<(String, String)>,
    ids: Vec<String>,
    stanzas: usize,
}

impl Vocab {
    fn new() -> Vocab {
        Vocab {
            secret: DialbackSecret::from_secret(SECRET),
            pairs: Vec::new(),
            ids: vec!["id1".into(), "their1".into(), VERIFY_SID.into()],
            stanzas: 0,
        }
    }

    fn name(&self, input: &mut Input) -> String {
        input.pick(&NAMES).to_string()
    }

    /// A (remote, local) pair: a known one when there is one and the input says so.
    fn pair(&self, input: &mut Input) -> (String, String) {
        let b = input.byte();
        if b & 1 == 0 && !self.pairs.is_empty() {
            return self.pairs[usize::from(b >> 1) % self.pairs.len()].clone();
        }
        (self.name(input), self.name(input))
    }

    fn id(&self, input: &mut Input) -> String {
        let i = input.below(self.ids.len() + 2);
        match i.checked_sub(2) {
            Some(k) => self.ids[k].clone(),
            None => ["", "x y"][i].to_string(),
        }
    }

    fn header(&self, input: &mut Input) -> StreamHeader {
        let opt = |input: &mut Input| {
            let b = input.below(NAMES.len() + 1);
            NAMES.get(b).map(|s| s.to_string())
        };
        StreamHeader {
            name: input.pick(&["stream", "stream", "features"]).into(),
            ns: input.pick(&[STREAM_NS, STREAM_NS, SERVER_NS]).into(),
            default_ns: input
                .pick(&[
                    Some(SERVER_NS),
                    Some(SERVER_NS),
                    Some(COMPONENT_NS),
                    Some(CLIENT_NS),
                    None,
                ])
                .map(str::to_string),
            db_ns: input.flag(),
            from: opt(input),
            to: opt(input),
            id: if input.flag() {
                Some(self.id(input))
            } else {
                None
            },
            version: input
                .pick(&[
                    Some("1.0"),
                    Some("1.0"),
                    Some("1.1"),
                    Some("2.0"),
                    Some("0.9"),
                    Some(""),
                    None,
                ])
                .map(str::to_string),
            lang: None,
        }
    }

    /// `<db:result/>` or `<db:verify/>`, with a key (right or wrong) or a type.
    fn dialback(&self, input: &mut Input) -> Element {
        let verify = input.flag();
        let (remote, local) = self.pair(input);
        let mut e = Element::new(if verify { "verify" } else { "result" }, DIALBACK_NS);
        if input.below(8) != 0 {
            e.set_attr("from", remote.as_str());
        }
        if input.below(8) != 0 {
            e.set_attr("to", local.as_str());
        }
        let id = self.id(input);
        if verify && input.below(8) != 0 {
            e.set_attr("id", id.as_str());
        }
        match input.below(6) {
            // Keys: the right one as the Authoritative Server computes it (receiving server =
            // `from`, originating = `to`, the stream id), one for another id, one with
            // whitespace around it, none.
            0 | 1 => e = e.with_text(self.secret.key(&remote, &local, &id)),
            2 => e = e.with_text(self.secret.key(&remote, &local, "other")),
            3 => e = e.with_text(format!("  {}\n", self.secret.key(&remote, &local, &id))),
            4 => {}
            _ => {
                let t = input.pick(&["valid", "valid", "invalid", "error", "bogus"]);
                e.set_attr("type", t);
                if t == "error" {
                    e.push_child(Element::new("error", SERVER_NS).with_child(Element::new(
                        input.pick(&["item-not-found", "remote-server-timeout", "x"]),
                        STANZAS_NS,
                    )));
                }
            }
        }
        e
    }

    fn jid(&self, input: &mut Input, domain: &str) -> Option<String> {
        match input.below(6) {
            0 => None,
            1 => Some(domain.to_string()),
            2 => Some(format!("u@{domain}/r")),
            3 => Some(format!("@{domain}")),
            _ => Some(format!("u@{domain}")),
        }
    }

    /// A stanza (or something named like one in another namespace).
    fn stanza(&mut self, input: &mut Input) -> Element {
        let (remote, local) = self.pair(input);
        let mut e = Element::new(
            input.pick(&["message", "iq", "presence", "message", "db"]),
            input.pick(&[SERVER_NS, SERVER_NS, CLIENT_NS, COMPONENT_NS, "urn:x"]),
        );
        if let Some(f) = self.jid(input, &remote) {
            e.set_attr("from", f);
        }
        if let Some(t) = self.jid(input, &local) {
            e.set_attr("to", t);
        }
        self.stanzas += 1;
        e.set_attr("id", format!("s{}", self.stanzas));
        if input.flag() {
            e.push_child(Element::new("body", SERVER_NS).with_text("hi"));
        }
        e
    }

    fn element(&mut self, input: &mut Input) -> Element {
        match input.below(12) {
            0..=3 => self.dialback(input),
            4 | 5 => self.stanza(input),
            6 => {
                let mut f = Element::new("features", STREAM_NS);
                if input.flag() {
                    let mut s = Element::new("starttls", TLS_NS);
                    if input.flag() {
                        s.push_child(Element::new("required", TLS_NS));
                    }
                    f.push_child(s);
                }
                if input.flag() {
                    f.push_child(Element::new("dialback", "urn:xmpp:features:dialback"));
                }
                f
            }
            7 => Element::new(input.pick(&["proceed", "failure", "starttls"]), TLS_NS),
            8 => Element::new("error", STREAM_NS).with_child(Element::new(
                input.pick(&["host-unknown", "not-authorized", "x"]),
                STREAMS_ERR_NS,
            )),
            9 | 10 => {
                let text = match input.below(5) {
                    0 | 1 => handshake_digest(COMPONENT_ID, COMPONENT_SECRET),
                    2 => handshake_digest(COMPONENT_ID, COMPONENT_SECRET).to_uppercase(),
                    3 => handshake_digest("other", COMPONENT_SECRET),
                    _ => String::new(),
                };
                Element::new("handshake", input.pick(&[COMPONENT_NS, SERVER_NS])).with_text(text)
            }
            _ => self.other_element(input),
        }
    }

    /// An element the cores mostly do not expect; first bytes 250..=255 name the XEP-0288
    /// ones, 240..=249 the SASL ones (the rest name the junk they always named, so older seeds
    /// keep their meaning): the bidi request, a request in the feature's namespace (ejabberd
    /// #4300), features offering bidi (with STARTTLS or not).
    fn other_element(&mut self, input: &mut Input) -> Element {
        let (name, ns) = (input.byte(), input.byte());
        match name {
            240..=249 => self.sasl_element(name - 240, ns, input),
            250 | 251 => Element::new("bidi", BIDI_NS),
            252 | 253 => Element::new("bidi", BIDI_FEATURE_NS),
            254 | 255 => {
                let mut f = Element::new("features", STREAM_NS);
                if ns & 1 == 1 {
                    f.push_child(Element::new("starttls", TLS_NS));
                }
                f.with_child(Element::new("dialback", "urn:xmpp:features:dialback"))
                    .with_child(Element::new("bidi", BIDI_FEATURE_NS))
            }
            _ => Element::new(
                ["x", "result", "verify"][usize::from(name) % 3],
                ["urn:x", ""][usize::from(ns) % 2],
            ),
        }
    }

    /// A SASL element (RFC 6120 §6.4, XEP-0178), `kind` 0..=9: `<auth/>` (EXTERNAL with one of
    /// the texts of `sasl_text`, or another or no mechanism), `<response/>`, `<abort/>`,
    /// `<success/>`, `<failure/>` with a condition, `<challenge/>`, features offering
    /// EXTERNAL, an auth or response with child elements, a SASL element of another name or an
    /// `<auth/>` in another namespace.
    fn sasl_element(&mut self, kind: u8, v: u8, input: &mut Input) -> Element {
        match kind {
            0 | 1 => {
                let mut e = Element::new("auth", SASL_NS);
                match v % 8 {
                    0..=4 => e.set_attr("mechanism", sasl::EXTERNAL),
                    5 => e.set_attr("mechanism", "PLAIN"),
                    6 => e.set_attr("mechanism", "external"),
                    _ => {}
                }
                e.with_text(self.sasl_text(input))
            }
            2 => Element::new("response", SASL_NS).with_text(self.sasl_text(input)),
            3 => sasl::abort(),
            4 => sasl::success(),
            5 => {
                let conditions = [
                    "not-authorized",
                    "aborted",
                    "invalid-authzid",
                    "invalid-mechanism",
                    "x",
                ];
                let mut e = Element::new("failure", SASL_NS);
                if let Some(c) = conditions.get(usize::from(v % 6)) {
                    e.push_child(Element::new(c, SASL_NS));
                }
                if v & 8 != 0 {
                    e.push_child(Element::new("text", SASL_NS).with_text("no"));
                }
                e
            }
            6 => Element::new("challenge", SASL_NS)
                .with_text(["", "=", "Yi50ZXN0"][usize::from(v % 3)]),
            7 => {
                let mut f = Element::new("features", STREAM_NS);
                if v & 1 != 0 {
                    f.push_child(Element::new("starttls", TLS_NS));
                }
                let mechanism =
                    ["EXTERNAL", "EXTERNAL", " EXTERNAL ", "PLAIN"][usize::from(v >> 1) % 4];
                f.push_child(
                    Element::new("mechanisms", SASL_NS)
                        .with_child(Element::new("mechanism", SASL_NS).with_text(mechanism)),
                );
                if v & 8 != 0 {
                    f.push_child(Element::new("dialback", "urn:xmpp:features:dialback"));
                }
                if v & 16 != 0 {
                    f.push_child(Element::new("bidi", BIDI_FEATURE_NS));
                }
                f
            }
            8 => {
                let name = if v & 1 == 0 { "auth" } else { "response" };
                let mut e = Element::new(name, SASL_NS)
                    .with_attr("mechanism", sasl::EXTERNAL)
                    .with_child(Element::new(
                        "x",
                        ["urn:x", SASL_NS][usize::from(v >> 1) % 2],
                    ));
                if v & 4 != 0 {
                    e = e.with_text("=");
                }
                e
            }
            _ => match v % 3 {
                0 => Element::new("auth", "urn:x")
                    .with_attr("mechanism", sasl::EXTERNAL)
                    .with_text("="),
                1 => Element::new("mechanisms", SASL_NS),
                _ => Element::new(["success", "auth"][usize::from(v >> 2) % 2], SASL_NS)
                    .with_attr("mechanism", sasl::EXTERNAL)
                    .with_text("Yi50ZXN0"),
            },
        }
    }

    /// The text of an `<auth/>` or `<response/>`: empty (`=`, nothing, blanks), base64 of a
    /// name (ours, the peer's, another, malformed ones, NUL inside, not UTF-8), with blanks
    /// around it, non-base64, bad padding, oversized.
    fn sasl_text(&mut self, input: &mut Input) -> String {
        match input.below(16) {
            0..=2 => "=".into(),
            3 => String::new(),
            4 => " \n ".into(),
            5..=7 => base64(self.name(input).as_bytes()),
            8 => base64(input.pick(&AUTHZIDS).as_bytes()),
            9 => format!(" {}\n", base64(b"b.test")),
            10 => "/w==".into(),
            11 => input
                .pick(&[
                    "!!!!",
                    "Yi50ZXN0=",
                    "====",
                    "==",
                    "Y",
                    "YQ=a",
                    "Yi50ZXN0\nYi50ZXN0",
                ])
                .into(),
            12 => "QUFB".repeat(2000),
            13 => base64("b.test".repeat(200).as_bytes()),
            _ => base64(b"b.test"),
        }
    }

    fn event(&mut self, input: &mut Input) -> Fed {
        match input.below(20) {
            0..=1 => Fed::Header(self.header(input)),
            2..=8 => Fed::Element(self.element(input)),
            9 => Fed::Close,
            10 => Fed::Broken(input.pick(&[
                None,
                Some(StreamCondition::NotWellFormed),
                Some(StreamCondition::PolicyViolation),
            ])),
            11 => Fed::TlsEstablished,
            12 => {
                if input.flag() {
                    Fed::Connected(input.flag())
                } else {
                    Fed::ConnectFailed(input.flag())
                }
            }
            13 | 14 => Fed::Stanza(self.stanza(input)),
            15 | 16 => {
                let (remote, local) = self.pair(input);
                let d = |s: &str| Domain::parse(s).unwrap_or_else(|_| domain("c.test"));
                Fed::Verified(d(&remote), d(&local), input.pick(&VERDICTS))
            }
            17 => Fed::Registered(input.flag()),
            18 => Fed::Timeout,
            // 248..=255: the peer's certificate (SASL-01); the rest as always.
            _ => match input.byte() {
                248 => Fed::PeerCertificate(None),
                249..=255 => {
                    let mask = input.byte();
                    let names = (0..CERT_NAMES.len()).filter(|i| mask >> i & 1 == 1);
                    Fed::PeerCertificate(Some(names.map(|i| CERT_NAMES[i]).collect()))
                }
                b => [Fed::Idle, Fed::Shutdown][usize::from(b) % 2].clone(),
            },
        }
    }
}

fn is_db(e: &Element, name: &str) -> bool {
    e.ns == DIALBACK_NS && e.name == name
}

fn attr_domain(e: &Element, a: &str) -> Option<Domain> {
    e.attr(a).and_then(|v| Domain::parse(v).ok())
}

/// RFC 6120 §4.9.1.1 (ERR-01): our stream header precedes our stream error, also when the
/// error comes before the peer's header was complete (a timeout, a shutdown).
const HEADER_BEFORE_ERROR: bool = true;

/// Our header (inbound and component streams) comes first in its batch, and either answers the
/// peer's header (or a broken one), or is the header sent just before closing a stream that
/// had none yet.
fn header_ok(i: usize, fed: &Fed, header_sent: bool, actions: &[Action]) {
    let answers = matches!(fed, Fed::Header(_) | Fed::Broken(_));
    assert!(
        i == 0 && (answers || (!header_sent && close_is_last(actions))),
        "{fed:?} → {actions:?}"
    );
}

/// `Close`, when present, is the last action of a batch.
fn close_is_last(actions: &[Action]) -> bool {
    match actions.iter().position(|a| matches!(a, Action::Close(_))) {
        Some(i) => i + 1 == actions.len(),
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// SASL EXTERNAL on inbound streams

/// How many SASL attempts an inbound stream may make before it is closed (RFC 6120 §6.4.5:
/// a reasonable number of retries; `incoming_sasl.rs` allows three).
const SASL_ATTEMPTS: usize = 3;

/// The inbound model's view of SASL EXTERNAL (SASL-01, XEP-0178: `incoming_sasl.rs`).
#[derive(Default)]
struct InSasl {
    /// The stream is encrypted (direct TLS, or STARTTLS completed).
    tls: bool,
    /// What the latest `PeerCertificate` said (fed before the stream closed).
    cert: Option<Vec<&'static str>>,
    /// The `from` of the first header the core accepted (`Some(None)`: none, or no domain).
    peer: Option<Option<Domain>>,
    /// Our header answered the peer's and nothing restarted or closed the stream since: the
    /// core reads the peer's elements.
    open: bool,
    /// The domain SASL authenticated.
    done: Option<Domain>,
    /// We sent an empty `<challenge/>` and wait for the `<response/>`.
    awaiting_response: bool,
    /// Initial responses the core judged (each costs a certificate check).
    decisions: usize,
    /// After `<success/>`, until our new header: the id of the stream before the restart.
    restarting: Option<String>,
    /// Stanzas the router handed in during the restart (bidi): held until our new header.
    held: Vec<Element>,
}

impl InSasl {
    /// Whether the core must judge `fed` as an initial response (counted against the cap): an
    /// `<auth mechanism='EXTERNAL'>` with text, on an encrypted stream whose peer presented a
    /// certificate, before SASL succeeded and while no dialback pair is in use, or the
    /// `<response/>` to our challenge; never one with child elements.
    fn decides(&self, fed: &Fed, legacy: bool, dialback_in_use: bool) -> bool {
        let Some(e) = fed.element().filter(|e| e.ns == SASL_NS && self.open) else {
            return false;
        };
        if e.elements().next().is_some() {
            return false;
        }
        match e.name.as_str() {
            "auth" => {
                self.tls
                    && self.cert.is_some()
                    && self.done.is_none()
                    && !legacy
                    && !dialback_in_use
                    && e.attr("mechanism") == Some(sasl::EXTERNAL)
                    && !e.text().trim().is_empty()
            }
            "response" => self.awaiting_response,
            _ => false,
        }
    }

    /// Our features: EXTERNAL offered exactly when the stream is encrypted, the peer presented
    /// a certificate and SASL has not succeeded yet (SASL-01), never beside STARTTLS.
    fn features(&self, f: &Element) {
        let offered = f.child("mechanisms", SASL_NS);
        let may = self.tls && self.cert.is_some() && self.done.is_none();
        assert_eq!(offered.is_some(), may, "SASL-01: features {f:?}");
        if let Some(m) = offered {
            assert_eq!(*m, sasl::mechanisms());
            assert!(f.child("starttls", TLS_NS).is_none(), "{f:?}");
        }
    }

    /// The checks of one batch: `decides` as computed before it, `verified` the pairs
    /// authorised before it, `id` the stream id before it.
    fn after(
        &mut self,
        fed: &Fed,
        actions: &[Action],
        decides: bool,
        verified: &[(Domain, Domain)],
        id: &str,
        ctx: &Ctx,
    ) {
        let sasl_fed = fed.element().filter(|e| e.ns == SASL_NS && self.open);
        if decides {
            self.decisions += 1;
            if self.decisions > SASL_ATTEMPTS {
                assert!(
                    matches!(actions, [Action::Close(Some(e))] if e.condition == StreamCondition::PolicyViolation),
                    "attempt {} after {fed:?}: {actions:?}",
                    self.decisions
                );
            } else {
                let judged = |c: &str| {
                    ["incorrect-encoding", "invalid-authzid", "not-authorized"].contains(&c)
                };
                let ok = match actions.first() {
                    Some(Action::Send(e)) if e.is("success", SASL_NS) => true,
                    Some(Action::Send(e)) if e.is("failure", SASL_NS) => {
                        e.elements().next().is_some_and(|c| judged(&c.name))
                    }
                    _ => false,
                };
                assert!(ok, "response {fed:?} judged {actions:?}");
            }
        }
        for (i, a) in actions.iter().enumerate() {
            match a {
                Action::Send(e) if e.ns == SASL_NS => {
                    let f = sasl_fed.unwrap_or_else(|| panic!("sent {e:?} after {fed:?}"));
                    match e.name.as_str() {
                        "success" => self.success(f, actions, decides, verified, ctx),
                        "failure" => {
                            // The stream stays open for dialback (SASL-01).
                            assert_eq!(actions.len(), 1, "{actions:?}");
                            assert!(e.elements().next().is_some(), "{e:?}");
                        }
                        "challenge" => {
                            assert!(
                                f.name == "auth"
                                    && f.text().trim().is_empty()
                                    && actions.len() == 1,
                                "{f:?}"
                            );
                            assert!(
                                self.tls && self.cert.is_some() && self.done.is_none(),
                                "{f:?}"
                            );
                        }
                        _ => panic!("sent {e:?}"),
                    }
                }
                Action::Restart => {
                    assert!(
                        i == 1
                            && matches!(&actions[0], Action::Send(s) if s.is("success", SASL_NS)),
                        "{actions:?}"
                    );
                    self.restarting = Some(id.to_string());
                }
                // RFC 6120 §4.3.3, §6.4.6: after <success/> nothing goes out before our new
                // header, and no element of the old stream is taken.
                // (Held stanzas may go back to the router.)
                Action::Send(_) | Action::Deliver(_)
                    if self.restarting.is_some()
                        && !matches!(actions.first(), Some(Action::SendHeader(_)))
                        && !matches!(a, Action::Deliver(e) if self.held.contains(e)) =>
                {
                    panic!("{a:?} after <success/> before our new header ({fed:?})");
                }
                Action::SendHeader(h) if self.restarting.is_some() => {
                    // STR-03: the restarted stream has a new id.
                    assert_ne!(h.id.as_deref(), self.restarting.as_deref(), "STR-03");
                }
                _ => {}
            }
        }
        if sasl_fed.is_some() {
            self.awaiting_response = actions
                .iter()
                .any(|a| matches!(a, Action::Send(e) if e.is("challenge", SASL_NS)));
        }
        self.invalid_from(fed, actions, verified);
    }

    /// `<success/>` for the response in `f`: the identity is the stream's `from` (an empty
    /// response) or the authzid, which must then be that `from` (XEP-0178 §3); the certificate
    /// proves it; not our own domain; never while dialback pairs are in use on the stream.
    fn success(
        &mut self,
        f: &Element,
        actions: &[Action],
        decides: bool,
        verified: &[(Domain, Domain)],
        ctx: &Ctx,
    ) {
        let [Action::Send(_), Action::Restart, Action::Authenticated { local, remote }] = actions
        else {
            panic!("success: {actions:?}");
        };
        assert!(
            decides && self.decisions <= SASL_ATTEMPTS && verified.is_empty(),
            "success after {f:?}"
        );
        let text = f.text();
        let claimed =
            authzid_of(&text).unwrap_or_else(|| panic!("success for the response {text:?}"));
        let claimed = claimed
            .map(|n| Domain::parse(n).unwrap_or_else(|_| panic!("success for authzid {n:?}")));
        let expected = match (claimed, self.peer.clone().flatten()) {
            (None, Some(from)) => from,
            (Some(d), Some(from)) => {
                assert_eq!(d, from, "XEP-0178: the authzid is not the stream's from");
                d
            }
            (Some(d), None) => d,
            (None, None) => panic!("success without an identity: {f:?}"),
        };
        assert_eq!(*remote, expected);
        assert!(
            !ctx.config.is_local(remote) && ctx.config.is_local(local),
            "{actions:?}"
        );
        assert!(
            cert_proves(self.cert.as_deref().unwrap_or_default(), remote),
            "the certificate does not prove {remote}"
        );
        assert!(self.done.is_none());
        self.done = Some(remote.clone());
        reached(5);
        self.open = false;
    }

    /// SEC-10 on a SASL-authenticated stream: a stanza from a domain not authenticated here is
    /// `invalid-from` (RFC 6120 §4.9.3.9).
    fn invalid_from(&self, fed: &Fed, actions: &[Action], verified: &[(Domain, Domain)]) {
        let Some(e) = fed
            .element()
            .filter(|e| stanza::is_stanza(e) && self.open && self.done.is_some())
        else {
            return;
        };
        let Ok(a) = stanza::addresses(e) else {
            return;
        };
        if verified.iter().any(|(r, _)| *r == a.from.domain) {
            return;
        }
        assert!(
            matches!(actions, [Action::Close(Some(err))] if err.condition == StreamCondition::InvalidFrom),
            "{e:?} on a stream SASL authenticated for {:?}: {actions:?}",
            self.done
        );
    }

    /// Track the stream's state from a batch (after the checks).
    fn track(&mut self, fed: &Fed, actions: &[Action]) {
        let answered = matches!(
            (fed, actions.first()),
            (Fed::Header(_), Some(Action::SendHeader(_)))
        );
        if answered && !actions.iter().any(|a| matches!(a, Action::Close(_))) {
            self.open = true;
            self.restarting = None;
            if let (None, Fed::Header(h)) = (&self.peer, fed) {
                self.peer = Some(h.from.as_deref().and_then(|f| Domain::parse(f).ok()));
            }
        }
        if actions
            .iter()
            .any(|a| matches!(a, Action::Close(_) | Action::StartTls | Action::Restart))
        {
            self.open = false;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Incoming

/// An inbound server-to-server stream. Invariants: nothing is delivered for a pair that was not
/// verified (a `Verified` valid answer for a pair this stream asked about); a `valid` db:result
/// is sent only for such pairs; a db:verify is answered valid/invalid only for our domains, and
/// valid only for the right key; verify requests are for our domains, not duplicated and within
/// the per-stream limit; after a `Close` with an error nothing at all, after a clean one only
/// deliveries for verified pairs (RFC 6120 §4.4: the peer may still send until it closes).
/// XEP-0288: bidi is offered only in features without STARTTLS (BIDI-01) and enabled only by
/// the request in its own namespace, after such features, before any pair is verified
/// (BIDI-02); a stanza the router hands in is sent only on a bidi stream and for the inverse of
/// a verified pair (BIDI-03), otherwise bounced, or handed back once closed. SASL EXTERNAL
/// (SASL-01, `InSasl`): offered only after TLS with a certificate; success only for the
/// stream's `from` proved by the certificate, then a restart with a new id before anything
/// else goes out; `invalid-from` for other domains after it; failures keep the stream; the
/// fourth judged response closes it.
pub fn core_incoming(data: &[u8]) {
    let mut input = Input::new(data);
    let setup = input.byte();
    let ctx = ctx(setup & 1 != 0);
    let mut n = 0;
    let new_id = Box::new(move || {
        n += 1;
        format!("id{n}")
    });
    let mut core = Incoming::new(ctx.clone(), "fuzz".into(), new_id, setup & 2 != 0);
    let limit = ctx.config.limits.pending_verifications_per_stream;
    let mut vocab = Vocab::new();
    let mut outstanding: Vec<(Domain, Domain)> = Vec::new();
    let mut verified: Vec<(Domain, Domain)> = Vec::new();
    let mut tls_started = false;
    // Between our <proceed/> and the TLS handshake's end: no XML may go out.
    let mut awaiting_tls = false;
    let mut closed = false;
    // We closed without an error: stanzas the peer still sends are processed (RFC 6120 §4.4).
    let mut clean_close = false;
    let mut header_sent = false;
    // Our latest features offered bidi (BIDI-01).
    let mut bidi_offered = false;
    let mut sasl = InSasl {
        tls: setup & 2 != 0,
        ..InSasl::default()
    };
    for _ in 0..MAX_EVENTS {
        if input.is_empty() {
            break;
        }
        vocab.pairs = outstanding
            .iter()
            .chain(&verified)
            .map(|(r, l)| (r.to_string(), l.to_string()))
            .collect();
        if !core.stream_id().is_empty() {
            vocab.ids[0] = core.stream_id().to_string();
        }
        let fed = vocab.event(&mut input);
        let mut asked = false;
        if let Fed::Verified(r, l, _) = &fed {
            if let Some(i) = outstanding
                .iter()
                .position(|p| *p == (r.clone(), l.clone()))
            {
                asked = !closed;
                if !closed {
                    outstanding.swap_remove(i);
                }
            }
        }
        let was_bidi = core.is_bidi();
        let dialback_in_use = !verified.is_empty() || !outstanding.is_empty();
        let decides = sasl.decides(&fed, core.is_legacy(), dialback_in_use);
        let id_before = core.stream_id().to_string();
        if let (Fed::PeerCertificate(c), false) = (&fed, closed) {
            sasl.cert.clone_from(c);
        }
        let actions = core.handle(fed.to_event());
        if !closed {
            sasl.after(&fed, &actions, decides, &verified, &id_before, &ctx);
        }
        sasl.track(&fed, &actions);
        if let (Fed::Stanza(s), [], false) = (&fed, &actions[..], closed) {
            // Held over the SASL restart of a bidi stream, for a pair verified here.
            assert!(sasl.restarting.is_some() && core.is_bidi(), "{s:?} dropped");
            sasl.held.push(s.clone());
        }
        if !was_bidi && core.is_bidi() {
            let request = fed.element().is_some_and(|e| e.is("bidi", BIDI_NS));
            assert!(request, "bidi enabled by {fed:?}");
            assert!(bidi_offered && verified.is_empty() && !closed, "{fed:?}");
        }
        if matches!(fed, Fed::TlsEstablished) && awaiting_tls {
            // TLS-01: the restart discards what was verified or pending in plaintext; a pair
            // may be asked again, and a late answer for an old one authorises nothing.
            awaiting_tls = false;
            outstanding.clear();
            verified.clear();
            bidi_offered = false;
            sasl.tls = true;
            assert!(!core.is_bidi(), "bidi survived the TLS restart");
        }
        let handed_in = |e: &Element| matches!(&fed, Fed::Stanza(f) if f == e);
        if closed {
            for a in &actions {
                match a {
                    // A stanza the router handed in goes back to it.
                    Action::Deliver(e) if handed_in(e) => {}
                    Action::Deliver(e) if clean_close => {
                        assert!(matches!(&fed, Fed::Element(f) if f == e));
                        let a = stanza::addresses(e).expect("a delivered stanza has addresses");
                        let pair = (a.from.domain, a.to.domain);
                        assert!(verified.contains(&pair), "closing: delivered for {pair:?}");
                    }
                    Action::Bounce { .. } if clean_close => {}
                    other => panic!("after close, {fed:?} gave {other:?}"),
                }
            }
            continue;
        }
        let answer_ok = |verified: &[(Domain, Domain)], r: &Domain, l: &Domain| {
            verified.contains(&(r.clone(), l.clone()))
                || (asked
                    && matches!(&fed, Fed::Verified(fr, fl, Verdict::Valid) if fr == r && fl == l))
        };
        for (i, a) in actions.iter().enumerate() {
            match a {
                Action::Close(err) => {
                    assert!(close_is_last(&actions), "{actions:?}");
                    assert!(
                        !(awaiting_tls && err.is_some()),
                        "a stream error between <proceed/> and TLS: {fed:?}"
                    );
                    if HEADER_BEFORE_ERROR && err.is_some() {
                        assert!(header_sent, "stream error before our header: {fed:?}");
                    }
                    closed = true;
                    clean_close = err.is_none();
                }
                Action::SendHeader(_) => {
                    header_ok(i, &fed, header_sent, &actions);
                    header_sent = true;
                }
                Action::Send(e) if e.is("features", STREAM_NS) => {
                    assert!(matches!(fed, Fed::Header(_)));
                    if e.child("starttls", TLS_NS).is_some() {
                        assert!(ctx.tls_available && !tls_started && setup & 2 == 0);
                    }
                    bidi_offered = e.child("bidi", BIDI_FEATURE_NS).is_some();
                    if bidi_offered {
                        assert!(e.child("starttls", TLS_NS).is_none(), "BIDI-01: {e:?}");
                    }
                    sasl.features(e);
                }
                // Checked by `InSasl::after`.
                Action::Send(e) if e.ns == SASL_NS => {}
                // Held over the restart: after our new header and features (BIDI-03), or back
                // to the router when the stream closes first.
                Action::Send(e) if sasl.held.contains(e) => {
                    assert!(matches!(actions[0], Action::SendHeader(_)), "{actions:?}");
                    let a = stanza::addresses(e).expect("a held stanza has addresses");
                    assert!(verified.contains(&(a.to.domain, a.from.domain)), "{e:?}");
                    sasl.held.retain(|h| h != e);
                }
                Action::Deliver(e) if sasl.held.contains(e) => {
                    assert!(close_is_last(&actions), "{actions:?}");
                    sasl.held.retain(|h| h != e);
                }
                Action::Restart => header_sent = false,
                Action::Send(e) if handed_in(e) => {
                    let a = stanza::addresses(e).expect("a stanza sent back has addresses");
                    let inverse = (a.to.domain, a.from.domain);
                    assert!(core.is_bidi(), "BIDI-03: sent back without bidi: {e:?}");
                    assert!(
                        verified.contains(&inverse),
                        "BIDI-03: {inverse:?} not verified"
                    );
                }
                Action::Bounce { stanzas, .. } => {
                    assert!(
                        matches!(&stanzas[..], [s] if handed_in(s)),
                        "bounced {stanzas:?} after {fed:?}"
                    );
                }
                Action::Send(e) if e.is("proceed", TLS_NS) || e.is("failure", TLS_NS) => {
                    assert!(
                        fed.element().is_some_and(|f| f.is("starttls", TLS_NS)),
                        "{fed:?}"
                    );
                }
                Action::StartTls => {
                    assert!(ctx.tls_available && !tls_started && setup & 2 == 0);
                    assert!(
                        matches!(actions.get(i.wrapping_sub(1)), Some(Action::Send(p)) if p.is("proceed", TLS_NS))
                    );
                    tls_started = true;
                    awaiting_tls = true;
                    header_sent = false; // a new stream begins after the handshake
                }
                Action::Send(e) if is_db(e, "result") => {
                    let (Some(l), Some(r)) = (attr_domain(e, "from"), attr_domain(e, "to")) else {
                        panic!("db:result answer without valid addresses: {e:?}");
                    };
                    match e.attr("type") {
                        Some("valid") => assert!(
                            answer_ok(&verified, &r, &l),
                            "valid for unverified {r}→{l}: {fed:?}"
                        ),
                        Some("invalid" | "error") => {}
                        other => panic!("db:result answer with type {other:?}"),
                    }
                }
                Action::Send(e) if is_db(e, "verify") => {
                    let q = fed.element().filter(|q| is_db(q, "verify"));
                    let q = q.unwrap_or_else(|| panic!("db:verify answer to {fed:?}"));
                    let (from, to, id) = (e.attr("from"), e.attr("to"), e.attr("id"));
                    assert_eq!((from, to, id), (q.attr("to"), q.attr("from"), q.attr("id")));
                    let (from, to, id) = (from.unwrap(), to.unwrap(), id.unwrap());
                    match e.attr("type") {
                        Some(t @ ("valid" | "invalid")) => {
                            let ours = Domain::parse(from)
                                .ok()
                                .is_some_and(|d| ctx.config.is_local(&d));
                            assert!(ours, "db:verify answered {t} for {from}, not ours");
                            // Keys are minted over normalised names (`b.test.` is `b.test`).
                            let right = match (Domain::parse(to), Domain::parse(from)) {
                                (Ok(r), Ok(l)) => {
                                    vocab.secret.verify(r.as_str(), l.as_str(), id, &q.text())
                                }
                                _ => false,
                            };
                            assert_eq!(t == "valid", right, "db:verify answered {t}: {q:?}");
                            if right {
                                reached(4);
                            }
                        }
                        Some("error") => {}
                        other => panic!("db:verify answer with type {other:?}"),
                    }
                }
                Action::Verify(req) => {
                    let q = fed
                        .element()
                        .filter(|q| is_db(q, "result") && q.attr("type").is_none());
                    let q = q.unwrap_or_else(|| panic!("verify request after {fed:?}"));
                    assert_eq!(attr_domain(q, "from").as_ref(), Some(&req.remote));
                    assert_eq!(attr_domain(q, "to").as_ref(), Some(&req.local));
                    assert_eq!(q.text().trim(), req.key);
                    assert!(ctx.config.is_local(&req.local), "{req:?}");
                    assert!(!ctx.config.is_local(&req.remote), "{req:?}");
                    assert_eq!(req.stream_id, core.stream_id());
                    let pair = (req.remote.clone(), req.local.clone());
                    assert!(
                        !outstanding.contains(&pair) && !verified.contains(&pair),
                        "{pair:?} asked twice"
                    );
                    outstanding.push(pair);
                    assert!(
                        outstanding.len() <= limit,
                        "{} verifications pending",
                        outstanding.len()
                    );
                }
                Action::Authenticated { local, remote } => {
                    // By SASL: checked by `InSasl::success`.
                    let by_sasl =
                        matches!(&actions[0], Action::Send(s) if s.is("success", SASL_NS));
                    assert!(
                        by_sasl || answer_ok(&verified, remote, local),
                        "{remote}→{local} authenticated by {fed:?}"
                    );
                    verified.push((remote.clone(), local.clone()));
                }
                Action::Deliver(e) => {
                    assert!(matches!(&fed, Fed::Element(f) if f == e));
                    let a = stanza::addresses(e).expect("a delivered stanza has addresses");
                    let pair = (a.from.domain, a.to.domain);
                    assert!(
                        verified.contains(&pair),
                        "delivered for unverified {pair:?}: {e:?}"
                    );
                    reached(0);
                }
                other => panic!("incoming core: unexpected {other:?} for {fed:?}"),
            }
        }
        assert!(
            sasl.held.is_empty() || (sasl.restarting.is_some() && !closed),
            "held after the restart: {:?}",
            sasl.held
        );
    }
}

// ---------------------------------------------------------------------------------------------
// SASL EXTERNAL on outbound streams

/// The outbound model's view of SASL EXTERNAL (SASL-01: `outgoing.rs`).
#[derive(Default)]
struct OutSasl {
    /// Our certificate names our domain (`Outgoing::with_external`).
    can: bool,
    /// The stream is encrypted (direct TLS, or STARTTLS completed).
    tls: bool,
    /// We sent `<auth/>` and wait for its answer.
    asked: bool,
    /// We sent `<auth/>` on this connection.
    tried: bool,
    /// `<success/>` came: the restarted stream's features establish the pair, no dialback.
    succeeded: bool,
    /// The latest features the core acted on offered bidi (the request may follow a SASL
    /// failure, before our key).
    bidi_offered: bool,
}

/// Whether features offer EXTERNAL (RFC 6120 §6.4.1), read independently of the core.
fn offers_external(f: &Element) -> bool {
    f.is("features", STREAM_NS)
        && f.child("mechanisms", SASL_NS).is_some_and(|m| {
            m.children.iter().any(|c| {
                matches!(c, dialbackd::xml::Node::Element(c) if c.is("mechanism", SASL_NS) && c.text().trim() == "EXTERNAL")
            })
        })
}

impl OutSasl {
    /// A SASL element we sent: `<auth mechanism='EXTERNAL'>=</auth>` (XEP-0178 §3) only on an
    /// encrypted pair stream whose peer offered EXTERNAL, when our certificate can do it, once,
    /// before any key; `<abort/>` only for a `<challenge/>` to it.
    fn sent(&mut self, e: &Element, fed: &Fed, verify: bool, sent_db: bool) {
        let f = fed.element();
        if e.is("auth", SASL_NS) {
            assert_eq!(*e, sasl::auth_external());
            assert!(f.is_some_and(offers_external), "auth after {fed:?}");
            assert!(
                self.tls && self.can && !verify && !self.tried && !sent_db,
                "auth after {fed:?}"
            );
            self.tried = true;
            self.asked = true;
        } else if e.is("abort", SASL_NS) {
            assert!(
                self.asked && f.is_some_and(|f| f.is("challenge", SASL_NS)),
                "{fed:?}"
            );
        } else {
            panic!("sent {e:?} after {fed:?}");
        }
    }

    /// `Restart`: only first, for the `<success/>` that answers our `<auth/>`, and our new
    /// header right after it (RFC 6120 §6.4.6).
    fn restart(&mut self, fed: &Fed, i: usize, actions: &[Action]) {
        let success = fed.element().is_some_and(|f| f.is("success", SASL_NS));
        assert!(i == 0 && success && self.asked, "restart after {fed:?}");
        assert!(matches!(actions, [_, Action::SendHeader(_)]), "{actions:?}");
        self.asked = false;
        self.succeeded = true;
    }

    /// Our key: never after SASL succeeded; while our `<auth/>` waits, only as the fallback
    /// its `<failure/>` calls for (SASL-01).
    fn key(&mut self, fed: &Fed) {
        assert!(!self.succeeded, "dialback after SASL success: {fed:?}");
        if self.asked {
            let failure = fed.element().is_some_and(|f| f.is("failure", SASL_NS));
            assert!(failure, "key while <auth/> waits, after {fed:?}");
            self.asked = false;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Outgoing

/// An outbound stream (pair or verify connection). Invariants: no stanza is sent before the
/// peer said `valid` to the db:result we sent, and they go out in the order they came; every
/// stanza handed in is sent, bounced or handed back, none twice, and none is left queued once
/// the stream closed; the key we send is the XEP-0185 key for the peer's stream id; a verify
/// connection reports once, `valid` only for the answer to the db:verify it sent; STARTTLS
/// only after the peer's `<proceed/>`; only stanzas handed back after `Close`. XEP-0288: the
/// bidi request goes out only right before our key and after features offering bidi
/// (BIDI-02); the peer's stanzas are delivered only on such a stream, once our pair is
/// verified, and only for the inverse pair (BIDI-03); its dialback for other pairs gets a
/// dialback error (BIDI-04). SASL EXTERNAL (SASL-01, `OutSasl`, setup bit 8: our certificate
/// names our domain): `<auth/>` only over TLS after features offering it, once; the restart
/// right after `<success/>`, no key after it, the pair established by the restarted stream's
/// features; the key after `<failure/>`.
pub fn core_outgoing(data: &[u8]) {
    let mut input = Input::new(data);
    let setup = input.byte();
    let ctx = ctx(setup & 1 != 0);
    let direct_tls = setup & 2 != 0;
    let (local, remote) = (domain("a.test"), domain("b.test"));
    let req = VerifyRequest {
        local: local.clone(),
        remote: remote.clone(),
        stream_id: VERIFY_SID.into(),
        key: "k3y".into(),
    };
    let verify = setup & 4 != 0;
    let purpose = if verify {
        Purpose::Verify(req.clone())
    } else {
        Purpose::Pair
    };
    // Our certificate names a.test: SASL EXTERNAL is tried when offered (never by the old
    // vocabulary, which offers no SASL, so older seeds keep their meaning).
    let mut sasl = OutSasl {
        can: setup & 8 != 0,
        tls: direct_tls,
        ..OutSasl::default()
    };
    let mut core = Outgoing::new(
        ctx.clone(),
        "fuzz".into(),
        local.clone(),
        remote.clone(),
        purpose,
        direct_tls,
    )
    .with_external(sasl.can);
    let mut vocab = Vocab::new();
    vocab.pairs = vec![(remote.to_string(), local.to_string())];
    let mut their_id: Option<String> = None;
    let mut awaiting_header = false;
    let mut sent_db = false;
    let mut sent_starttls = false;
    let mut established = false;
    let mut reported = false;
    let mut closed = false;
    let mut bidi = false;
    let mut pending: VecDeque<String> = VecDeque::new();
    for _ in 0..MAX_EVENTS {
        if input.is_empty() {
            break;
        }
        let mut fed = vocab.event(&mut input);
        if verify {
            // The router never hands stanzas to a verify connection.
            if let Fed::Stanza(_) = fed {
                fed = Fed::Timeout;
            }
        }
        // The peer's header that answers ours carries the id our key is computed over.
        if let Fed::Header(h) = &fed {
            if awaiting_header {
                their_id = h.id.clone();
                awaiting_header = false;
            }
        }
        let fed_id = match &fed {
            Fed::Stanza(s) => {
                let id = s.attr("id").unwrap().to_string();
                pending.push_back(id.clone());
                Some(id)
            }
            _ => None,
        };
        let actions = core.handle(fed.to_event());
        if let Some(f) = fed.element().filter(|f| f.is("features", STREAM_NS)) {
            if !actions.is_empty() {
                sasl.bidi_offered = f.child("bidi", BIDI_FEATURE_NS).is_some();
            }
        }
        let mut answered = 0;
        for (i, a) in actions.iter().enumerate() {
            if closed {
                assert!(
                    matches!(a, Action::Deliver(_)),
                    "after close, {fed:?} gave {a:?}"
                );
            }
            match a {
                Action::Close(_) => {
                    assert!(close_is_last(&actions), "{actions:?}");
                    closed = true;
                }
                Action::SendHeader(h) => {
                    let restart = i == 1 && actions[0] == Action::Restart;
                    assert!(
                        restart || i == 0 && matches!(fed, Fed::Connected(_) | Fed::TlsEstablished),
                        "{fed:?}"
                    );
                    match fed {
                        Fed::Connected(t) => sasl.tls |= t,
                        Fed::TlsEstablished => sasl.tls = true,
                        _ => {}
                    }
                    assert_eq!(h.from.as_deref(), Some(local.as_str()));
                    assert_eq!(h.to.as_deref(), Some(remote.as_str()));
                    awaiting_header = true;
                }
                Action::Send(e) if pending.iter().any(|p| Some(p.as_str()) == e.attr("id")) => {
                    assert!(established, "stanza sent before valid: {e:?}");
                    if let Some(max) = core.peer_max_bytes() {
                        assert!(e.to_bytes().len() <= max, "XEP-0478: over {max}: {e:?}");
                    }
                    let id = e.attr("id").unwrap();
                    assert_eq!(pending.pop_front().as_deref(), Some(id), "out of order");
                    reached(1);
                    answered += usize::from(fed_id.as_deref() == Some(id));
                }
                Action::Restart => sasl.restart(&fed, i, &actions),
                Action::Send(e) if e.ns == SASL_NS => sasl.sent(e, &fed, verify, sent_db),
                Action::Send(e) if e.is("bidi", BIDI_NS) => {
                    let after_failure = sasl.bidi_offered
                        && fed.element().is_some_and(|f| f.is("failure", SASL_NS));
                    let offered = after_failure
                        || fed
                            .element()
                            .is_some_and(|f| f.child("bidi", BIDI_FEATURE_NS).is_some());
                    assert!(offered && !verify && !sent_db && !bidi, "{fed:?}");
                    let key_next =
                        matches!(actions.get(i + 1), Some(Action::Send(k)) if is_db(k, "result"));
                    assert!(
                        key_next,
                        "BIDI-02: the request right before our key: {actions:?}"
                    );
                    assert!(core.is_bidi());
                    bidi = true;
                }
                Action::Send(e) if is_db(e, "result") && e.attr("type").is_some() => {
                    // BIDI-04: the peer's key for another pair, refused with a dialback error.
                    let q = fed
                        .element()
                        .filter(|q| is_db(q, "result") && q.attr("type").is_none());
                    let q = q.unwrap_or_else(|| panic!("typed db:result after {fed:?}"));
                    assert!(bidi && !verify, "{fed:?}");
                    assert_eq!(e.attr("type"), Some("error"));
                    assert_eq!(attr_domain(e, "from"), attr_domain(q, "to"));
                    assert_eq!(attr_domain(e, "to"), attr_domain(q, "from"));
                }
                Action::Send(e) if is_db(e, "result") => {
                    assert!(!verify && !sent_db, "{e:?}");
                    sasl.key(&fed);
                    assert_eq!(e.attr("type"), None);
                    assert_eq!(
                        (e.attr("from"), e.attr("to")),
                        (Some(local.as_str()), Some(remote.as_str()))
                    );
                    let id = their_id
                        .as_deref()
                        .expect("a key without the peer's stream id");
                    assert_eq!(
                        e.text(),
                        vocab.secret.key(remote.as_str(), local.as_str(), id)
                    );
                    sent_db = true;
                }
                Action::Send(e) if is_db(e, "verify") => {
                    assert!(verify && !sent_db, "{e:?}");
                    assert_eq!(e.attr("type"), None);
                    assert_eq!(
                        (e.attr("from"), e.attr("to")),
                        (Some(local.as_str()), Some(remote.as_str()))
                    );
                    assert_eq!(
                        (e.attr("id"), e.text()),
                        (Some(VERIFY_SID), req.key.clone())
                    );
                    sent_db = true;
                }
                Action::Send(e) if e.is("starttls", TLS_NS) => {
                    let offered = fed
                        .element()
                        .and_then(|f| f.child("starttls", TLS_NS))
                        .is_some();
                    assert!(
                        offered && ctx.tls_available && !direct_tls && !sent_starttls,
                        "{fed:?}"
                    );
                    sent_starttls = true;
                }
                Action::StartTls => {
                    assert!(
                        fed.element().is_some_and(|f| f.is("proceed", TLS_NS)) && sent_starttls
                    );
                }
                Action::Authenticated {
                    local: l,
                    remote: r,
                } => {
                    // SASL-01: by the features of the stream restarted after <success/>, or by
                    // its header when that is pre-1.0 (no features follow one: DB-25, STR-01).
                    let restarted = match &fed {
                        Fed::Element(f) => f.is("features", STREAM_NS),
                        Fed::Header(h) => h
                            .version
                            .as_deref()
                            .is_none_or(|v| parse_version(v).is_some_and(|(m, _)| m < 1)),
                        _ => false,
                    };
                    let by_sasl = sasl.succeeded && !sent_db && restarted;
                    assert!(
                        !verify
                            && (sent_db || by_sasl)
                            && !established
                            && (l, r) == (&local, &remote)
                    );
                    if by_sasl {
                        reached(6);
                    }
                    let ok = by_sasl
                        || fed.element().is_some_and(|f| {
                            is_db(f, "result")
                                && f.attr("type") == Some("valid")
                                && attr_domain(f, "from").as_ref() == Some(&remote)
                                && attr_domain(f, "to").as_ref() == Some(&local)
                        });
                    assert!(ok, "authenticated by {fed:?}");
                    established = true;
                }
                Action::VerifyDone(v) => {
                    assert!(verify && !reported, "{a:?}");
                    reported = true;
                    if *v == Verdict::Valid {
                        let ok = fed.element().is_some_and(|f| {
                            is_db(f, "verify")
                                && f.attr("type") == Some("valid")
                                && attr_domain(f, "from").as_ref() == Some(&remote)
                                && attr_domain(f, "to").as_ref() == Some(&local)
                                && f.attr("id") == Some(VERIFY_SID)
                        });
                        assert!(sent_db && ok, "valid reported after {fed:?}");
                        reached(2);
                    }
                }
                Action::Bounce {
                    stanzas, condition, ..
                } => {
                    if established {
                        // XEP-0478: only stanzas over the peer's max-bytes, and only so.
                        let max = core
                            .peer_max_bytes()
                            .expect("bounce on an established stream");
                        assert_eq!(*condition, StanzaCondition::PolicyViolation);
                        assert!(stanzas.iter().all(|s| s.to_bytes().len() > max));
                    }
                    for s in stanzas {
                        let id = s.attr("id").unwrap();
                        let at = pending
                            .iter()
                            .position(|p| p == id)
                            .expect("bounced twice or never handed in");
                        pending.remove(at);
                        answered += usize::from(fed_id.as_deref() == Some(id));
                    }
                }
                Action::Deliver(e) if fed.element() == Some(e) => {
                    // BIDI-03: the peer's stanza on our bidi stream, for the inverse pair only.
                    assert!(bidi && established, "delivered {e:?}");
                    let a = stanza::addresses(e).expect("a delivered stanza has addresses");
                    assert_eq!(
                        (a.from.domain, a.to.domain),
                        (remote.clone(), local.clone())
                    );
                }
                Action::Deliver(e) => {
                    assert!(core.is_closed(), "handed back while open: {e:?}");
                    let id = e.attr("id").unwrap();
                    assert_eq!(fed_id.as_deref(), Some(id));
                    assert_eq!(pending.pop_back().as_deref(), Some(id));
                    answered += 1;
                }
                other => panic!("outgoing core: unexpected {other:?} for {fed:?}"),
            }
        }
        if fed_id.is_some() && (established || closed) {
            assert_eq!(
                answered, 1,
                "stanza neither sent, bounced nor handed back: {actions:?}"
            );
        }
        if closed {
            assert!(
                pending.is_empty(),
                "stanzas left behind at close: {pending:?}"
            );
        }
        if !verify {
            assert_eq!(core.queued(), pending.len(), "queue and model disagree");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Component

/// A component stream. Invariants: registration only after the right handshake for the
/// configured domain named in the header; nothing is delivered, and no routed stanza sent,
/// before the router accepted the registration; delivered stanzas come from the component's
/// domain; every routed stanza is sent or bounced at once; only bounces after `Close`.
pub fn core_component(data: &[u8]) {
    let mut input = Input::new(data);
    let ctx = ctx(false);
    let mut core = Component::new(ctx.clone(), "fuzz".into(), COMPONENT_ID.into());
    let mut vocab = Vocab::new();
    vocab.pairs = vec![
        ("echo.a.test".into(), "b.test".into()),
        ("echo.a.test".into(), "a.test".into()),
    ];
    let mut header_domain: Option<Domain> = None;
    let mut registering: Option<Domain> = None;
    let mut open = false;
    let mut closed = false;
    let mut header_sent = false;
    for _ in 0..MAX_EVENTS {
        if input.is_empty() {
            break;
        }
        let mut fed = vocab.event(&mut input);
        if let Fed::Header(h) = &mut fed {
            // Mostly component headers, so that the handshake is reachable.
            if input.flag() {
                h.default_ns = Some(COMPONENT_NS.into());
                h.name = "stream".into();
                h.ns = STREAM_NS.into();
            }
            if input.flag() {
                h.to = Some(input.pick(&["echo.a.test", "ECHO.a.test", "a.test"]).into());
            }
        }
        let actions = core.handle(fed.to_event());
        let routed = matches!(fed, Fed::Stanza(_));
        if routed {
            assert_eq!(actions.len(), 1, "a routed stanza gave {actions:?}");
        }
        for (i, a) in actions.iter().enumerate() {
            if closed {
                assert!(
                    matches!(a, Action::Bounce { .. }),
                    "after close, {fed:?} gave {a:?}"
                );
            }
            match a {
                Action::Close(err) => {
                    assert!(close_is_last(&actions), "{actions:?}");
                    if HEADER_BEFORE_ERROR && err.is_some() {
                        assert!(header_sent, "stream error before our header: {fed:?}");
                    }
                    closed = true;
                }
                Action::SendHeader(h) => {
                    header_ok(i, &fed, header_sent, &actions);
                    header_sent = true;
                    let Fed::Header(fh) = &fed else {
                        continue;
                    };
                    assert_eq!(h.default_ns.as_deref(), Some(COMPONENT_NS));
                    assert_eq!(h.id.as_deref(), Some(COMPONENT_ID));
                    if let Some(from) = &h.from {
                        let d = domain(from);
                        assert!(ctx.config.components.iter().any(|c| c.domain == d), "{d}");
                        assert_eq!(
                            fh.to.as_deref().and_then(|t| Domain::parse(t).ok()),
                            Some(d.clone())
                        );
                        header_domain = Some(d);
                    }
                }
                Action::Register(d) => {
                    assert_eq!(Some(d), header_domain.as_ref());
                    let secret = &ctx
                        .config
                        .components
                        .iter()
                        .find(|c| c.domain == *d)
                        .unwrap()
                        .secret;
                    let right = handshake_digest(COMPONENT_ID, secret);
                    let hs = fed.element().filter(|e| e.is("handshake", COMPONENT_NS));
                    assert!(
                        hs.is_some_and(|e| e.text().trim().eq_ignore_ascii_case(&right)),
                        "{fed:?}"
                    );
                    registering = Some(d.clone());
                }
                Action::Send(e) if e.is("handshake", COMPONENT_NS) => {
                    assert!(matches!(fed, Fed::Registered(true)) && registering.is_some() && !open);
                    assert!(e.children.is_empty());
                    open = true;
                }
                Action::Send(e) => {
                    assert!(open && routed, "sent {e:?} after {fed:?}");
                    assert!(matches!(&fed, Fed::Stanza(s) if s == e));
                }
                Action::Bounce { stanzas, .. } => {
                    assert!(routed && (!open || closed), "bounced after {fed:?}");
                    assert!(
                        matches!(&fed, Fed::Stanza(s) if stanzas.as_slice() == std::slice::from_ref(s))
                    );
                }
                Action::Deliver(e) => {
                    assert!(open, "delivered before the registration: {e:?}");
                    assert!(matches!(&fed, Fed::Element(f) if f == e));
                    let from = e
                        .attr("from")
                        .and_then(|f| Jid::parse(f).ok())
                        .expect("a from");
                    assert_eq!(Some(&from.domain), registering.as_ref(), "{e:?}");
                    assert!(stanza::addresses(e).is_ok());
                    reached(3);
                }
                other => panic!("component core: unexpected {other:?} for {fed:?}"),
            }
        }
    }
}
