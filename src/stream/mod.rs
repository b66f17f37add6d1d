//! The sans-I/O protocol core: one state machine per stream, `Event` in, `Vec<Action>` out.
//!
//! In scope: everything XEP-0220 and RFC 6120 say a stream must do, for the three kinds of
//! stream dialbackd has:
//! - [`incoming::Incoming`]: a peer connected to us. We are the **Receiving Server** for its
//!   `<db:result/>` and the **Authoritative Server** for its `<db:verify/>`.
//! - [`outgoing::Outgoing`]: we connected to a peer, either as the **Initiating Server** of one
//!   domain pair (stanzas queue until `type='valid'`) or to ask its **Authoritative Server** one
//!   `<db:verify/>` (a dedicated verify connection, XEP-0220 §2.1.2, DB-11).
//! - [`component::Component`]: an XEP-0114 external component.
//!
//! XEP-0288 bidirectional streams ([`bidi`]) live in the first two: an inbound stream on which
//! the peer asked for bidi also carries our stanzas for the inverse of its verified pairs, and
//! an outbound one on which we asked also takes the peer's stanzas for our verified pair.
//!
//! Out of scope: sockets, threads, TLS, DNS and the clock. The connection layer (`conn`) feeds
//! parsed XML, timer expiries and router messages in as [`Event`]s and carries out the
//! [`Action`]s in order; it takes no protocol decision of its own.
//!
//! ```text
//!  Incoming:  ExpectHeader ──header──► Open ──<starttls/>──► AwaitTls ──TlsEstablished──► ExpectHeader
//!                                       │  db:result → Verify action … Verified → db:result type=…
//!                                       │  <auth EXTERNAL> → <success/> → ExpectHeader (sasl)
//!                                       │                  → <failure/>, dialback may follow
//!                                       │  db:verify → answered at once (Authoritative)
//!                                       └─ stanzas of verified pairs → Deliver
//!  Outgoing:  ExpectHeader → ExpectFeatures ─starttls─► ExpectProceed → AwaitTls → ExpectHeader
//!                               └─ <auth EXTERNAL> → ExpectSasl ─success─► ExpectHeader → Established
//!                                                              └─failure─► db:result (fallback)
//!                               └─ db:result → ExpectResult ─valid─► Established (queue flushed)
//!                               └─ db:verify → ExpectVerify ─answer─► VerifyDone, close
//!  Established (peer offered <errors/>): Join(pair) → db:result for it on the same stream
//!                               ─valid─► its queue flushed; invalid/error ─► its queue bounced
//! ```

pub mod bidi;
pub mod component;
pub mod incoming;
pub mod outgoing;
pub mod sasl;

pub use crate::condition::{StanzaCondition, StreamCondition};

use crate::config::Config;
use crate::domain::Domain;
use crate::keys::DialbackSecret;
use crate::xml::{
    Element, StreamHeader, DIALBACK_NS, SERVER_NS, STANZAS_NS, STREAMS_ERR_NS, STREAM_NS,
};
use std::sync::Arc;

/// What every stream core needs to know about the daemon.
pub struct Ctx {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The dialback secret (mints our keys, checks `<db:verify/>` as Authoritative Server).
    pub secret: DialbackSecret,
    /// Whether we can offer and use TLS (certificates are configured and loaded).
    pub tls_available: bool,
}

/// A stream-level error (RFC 6120 §4.9): sent, then the stream is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamError {
    /// The defined condition (RFC 6120 §4.9.3), e.g. `host-unknown`.
    pub condition: StreamCondition,
    /// Human-readable text for the peer's operator.
    pub text: Option<String>,
}

impl StreamError {
    /// An error with a condition and no text.
    pub fn new(condition: StreamCondition) -> StreamError {
        StreamError {
            condition,
            text: None,
        }
    }

    /// An error with a condition and explanatory text, bounded to
    /// [`stanza::TEXT_MAX`](crate::stanza::TEXT_MAX) characters without control characters
    /// (peer-supplied parts should also go through [`crate::stanza::echo`]).
    pub fn text(condition: StreamCondition, text: impl Into<String>) -> StreamError {
        let text: String = text.into();
        StreamError {
            condition,
            text: Some(crate::stanza::bounded(&text, crate::stanza::TEXT_MAX)),
        }
    }

    /// `<stream:error><condition xmlns='…streams'/><text>…</text></stream:error>`.
    pub fn to_element(&self) -> Element {
        let mut e = Element::new("error", STREAM_NS)
            .with_child(Element::new(self.condition.as_str(), STREAMS_ERR_NS));
        if let Some(t) = &self.text {
            e.push_child(
                Element::new("text", STREAMS_ERR_NS)
                    .with_attr("xml:lang", "en")
                    .with_text(t.clone()),
            );
        }
        e
    }
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.text {
            Some(t) => write!(f, "{} ({t})", self.condition),
            None => write!(f, "{}", self.condition),
        }
    }
}

/// The outcome of one dialback verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The key is right: the pair is authorised.
    Valid,
    /// The key is wrong: the sender is not who it claims to be.
    Invalid,
    /// Verification could not be done; the condition is one of XEP-0220 §2.5.
    Error(StanzaCondition),
}

impl Verdict {
    /// `valid`, `invalid` or `error`.
    pub fn type_attr(&self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "invalid",
            Verdict::Error(_) => "error",
        }
    }

    /// Read the verdict of a typed `<db:result/>` or `<db:verify/>`; `None` when untyped or
    /// when the type is not one XEP-0220 defines.
    pub fn of(el: &Element) -> Option<Verdict> {
        match el.attr("type")? {
            "valid" => Some(Verdict::Valid),
            "invalid" => Some(Verdict::Invalid),
            "error" => Some(Verdict::Error(dialback_error_condition(el))),
            _ => None,
        }
    }
}

/// The condition inside a dialback error (`undefined-condition` when there is none we know).
fn dialback_error_condition(el: &Element) -> StanzaCondition {
    el.elements()
        .find(|e| e.name == "error")
        .and_then(|e| {
            e.elements()
                .find(|c| c.ns == STANZAS_NS && c.name != "text")
        })
        .map_or(StanzaCondition::UndefinedCondition, |c| {
            StanzaCondition::of_peer(&c.name)
        })
}

/// Why an outgoing connection could not be made; each kind has its bounce condition (ROUTE-02).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// DNS says the domain has no XMPP service, or no address we may dial is left: retrying
    /// soon cannot help (`remote-server-not-found`). The reason, for the log and the bounce.
    NotFound(String),
    /// The domain has addresses, but no connection could be made or used (refused, timed out,
    /// TLS failed, DNS failed for now): `remote-server-timeout`. The reason, as above.
    Unreachable(String),
}

impl ConnectError {
    /// The condition stanzas for the pair bounce with.
    pub fn condition(&self) -> StanzaCondition {
        match self {
            ConnectError::NotFound(_) => StanzaCondition::RemoteServerNotFound,
            ConnectError::Unreachable(_) => StanzaCondition::RemoteServerTimeout,
        }
    }

    /// Why, naming what was tried.
    pub fn reason(&self) -> &str {
        match self {
            ConnectError::NotFound(r) | ConnectError::Unreachable(r) => r,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// One `<db:verify/>` to ask an Authoritative Server (XEP-0220 §2.1.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyRequest {
    /// Our domain: the Receiving Server's (the `to` of the peer's `<db:result/>`).
    pub local: Domain,
    /// The domain whose key is checked: the Originating Server's (the `from`).
    pub remote: Domain,
    /// The id of the inbound stream the key arrived on (DB-10).
    pub stream_id: String,
    /// The key as received.
    pub key: String,
}

/// Input to a stream core.
#[derive(Debug)]
pub enum Event {
    /// The peer's stream header (also after a restart).
    Header(StreamHeader),
    /// A complete top-level element from the peer.
    Element(Element),
    /// The peer closed its stream (`</stream:stream>`).
    Close,
    /// The stream broke: bad XML (`condition` is the stream error to send, if any), or the
    /// transport failed or hit EOF (`condition` is `None`).
    Broken {
        /// The stream error condition to send, when the peer sent something invalid.
        condition: Option<StreamCondition>,
        /// What went wrong, for the log.
        reason: String,
    },
    /// The TLS handshake is done (or under way, server side); a new stream begins.
    TlsEstablished,
    /// Incoming, after the TLS handshake is complete and before the restarted stream's header:
    /// whether the peer presented a certificate, and if so how to ask whether it proves a
    /// domain (SASL EXTERNAL, SASL-01).
    PeerCertificate(Option<sasl::CertCheck>),
    /// Outgoing: the connection is up (`tls`: over direct TLS, XEP-0368); open the stream.
    Connected {
        /// True when the transport is already TLS (never STARTTLS then, DTLS-02).
        tls: bool,
    },
    /// Outgoing: no connection could be made.
    ConnectFailed(ConnectError),
    /// Outgoing: a stanza from the router for this stream's domain pair.
    Stanza(Element),
    /// Incoming: the Authoritative Server's answer for a key this stream asked about.
    Verified {
        /// The originating domain.
        remote: Domain,
        /// Our domain.
        local: Domain,
        /// The answer.
        verdict: Verdict,
    },
    /// Component: the router accepted (`true`) or refused (`false`, already connected) the
    /// component's domain.
    Registered(bool),
    /// Outgoing, once established: carry the domain pair (`local`, `remote`) on this stream too
    /// (target multiplexing, XEP-0220 §2.6.2, DB-29), with the stanzas already waiting for it,
    /// oldest first. Later stanzas of the pair arrive as [`Event::Stanza`].
    Join {
        /// Our domain.
        local: Domain,
        /// The peer's domain.
        remote: Domain,
        /// The pair's FIFO so far.
        stanzas: Vec<Element>,
    },
    /// Outgoing: the pair that joined with [`Event::Join`] was not answered in time.
    JoinTimeout {
        /// Our domain.
        local: Domain,
        /// The peer's domain.
        remote: Domain,
    },
    /// The negotiation or dialback deadline passed.
    Timeout,
    /// The stream was idle for the configured time.
    Idle,
    /// The daemon is shutting down.
    Shutdown,
}

/// Output of a stream core, to be carried out in order.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Write our stream header.
    SendHeader(StreamHeader),
    /// Write an element.
    Send(Element),
    /// Upgrade the transport to TLS now (after `<proceed/>` was sent or received).
    StartTls,
    /// The stream restarts after SASL (RFC 6120 §4.3.3, §6.4.6): what the peer sends next is a
    /// new stream header, read by a fresh parser.
    Restart,
    /// Ask the Authoritative Server of `remote` about a key (dedicated verify connection).
    Verify(VerifyRequest),
    /// A domain pair is now authorised on this stream (for logs and routing).
    Authenticated {
        /// Our domain.
        local: Domain,
        /// The peer's domain.
        remote: Domain,
    },
    /// Hand a stanza to the router.
    Deliver(Element),
    /// Return these stanzas to their senders with an error.
    Bounce {
        /// The stanzas (errors and iq results among them are dropped by the router).
        stanzas: Vec<Element>,
        /// The stanza error condition.
        condition: StanzaCondition,
        /// Why, for the sender and the log.
        text: String,
    },
    /// Verify connection: report the Authoritative Server's answer to the waiting stream.
    VerifyDone(Verdict),
    /// Component: register this domain with the router.
    Register(Domain),
    /// A pair this stream carried besides its own (target multiplexing) failed: its queue was
    /// bounced (an earlier action); its later stanzas must bounce as it did, not come here.
    PairFailed {
        /// Our domain.
        local: Domain,
        /// The peer's domain.
        remote: Domain,
        /// What the pair's stanzas bounce with.
        bounce: crate::stanza::Bounce,
    },
    /// Close the stream: send the error if any, then `</stream:stream>`, wait (bounded) for the
    /// peer's close, then close the transport.
    Close(Option<StreamError>),
}

/// The stream header we send on server-to-server streams: `xmlns:db` always declared (DB-01).
pub fn s2s_header(from: Option<&Domain>, to: Option<&str>, id: Option<&str>) -> StreamHeader {
    StreamHeader {
        name: "stream".into(),
        ns: STREAM_NS.into(),
        default_ns: Some(SERVER_NS.into()),
        db_ns: true,
        from: from.map(|d| d.to_string()),
        to: to.map(str::to_string),
        id: id.map(str::to_string),
        version: Some("1.0".into()),
        lang: None,
    }
}

/// The XMPP version we speak (RFC 6120 §4.7.5).
pub const OUR_VERSION: (u32, u32) = (1, 0);

/// Parse a stream header's `version` (RFC 6120 §4.7.5): `major.minor`, two non-negative
/// integers compared numerically, leading zeros ignored. `None` when it is not of that form
/// (answered with `unsupported-version`). A number too large for `u32` is taken as `u32::MAX`:
/// still a version, just a higher one than ours.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let number = |s: &str| -> Option<u32> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(s.parse().unwrap_or(u32::MAX))
    };
    let (major, minor) = v.split_once('.')?;
    Some((number(major)?, number(minor)?))
}

/// `<db:result from to>key</db:result>` (DB-03) or typed (DB-20).
pub fn db_result(from: &Domain, to: &Domain, body: DbBody<'_>) -> Element {
    body.apply(
        Element::new("result", DIALBACK_NS)
            .with_attr("from", from.as_str())
            .with_attr("to", to.as_str()),
    )
}

/// `<db:verify from to id>key</db:verify>` (DB-10) or typed (DB-23).
pub fn db_verify(from: &str, to: &str, id: &str, body: DbBody<'_>) -> Element {
    body.apply(
        Element::new("verify", DIALBACK_NS)
            .with_attr("from", from)
            .with_attr("to", to)
            .with_attr("id", id),
    )
}

/// What goes in a dialback element: a key, or a verdict.
pub enum DbBody<'a> {
    /// The key, as character data.
    Key(&'a str),
    /// `type='valid|invalid|error'` (with the `<error/>` child for errors, DB-27).
    Verdict(&'a Verdict),
}

impl DbBody<'_> {
    fn apply(self, el: Element) -> Element {
        match self {
            DbBody::Key(k) => el.with_text(k),
            DbBody::Verdict(v) => {
                let el = el.with_attr("type", v.type_attr());
                match v {
                    Verdict::Error(cond) => el.with_child(
                        Element::new("error", SERVER_NS)
                            .with_attr("type", cond.error_type().as_str())
                            .with_child(Element::new(cond.as_str(), STANZAS_NS)),
                    ),
                    _ => el,
                }
            }
        }
    }
}

/// A stanza arrived while we wait for the peer's close after closing cleanly: keep what
/// delivers or bounces it; anything else it asked for (a second close) means the stanza was
/// refused, and the stream is then `closed` for good.
fn closing_deliveries<S>(out: Vec<Action>, state: &mut S, closed: S) -> Vec<Action> {
    if out.iter().any(|a| matches!(a, Action::Close(_))) {
        *state = closed;
    }
    out.into_iter()
        .filter(|a| matches!(a, Action::Deliver(_) | Action::Bounce { .. }))
        .collect()
}

/// Parse a domain attribute of a dialback element.
fn domain_attr(el: &Element, name: &str) -> Option<Domain> {
    el.attr(name).and_then(|v| Domain::parse(v).ok())
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod sasl_tests;
