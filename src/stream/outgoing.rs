//! Streams we open: the **Initiating Server** role for one domain pair (XEP-0220 §2.1.1) and
//! dedicated verify connections to an **Authoritative Server** (§2.1.2, DB-11).
//!
//! In scope: the stream header and features, STARTTLS when offered (and refusing to go on in
//! plaintext when encryption is required: SEC-12), sending `<db:result/>` with the XEP-0185 key
//! or the `<db:verify/>` we were asked to send (or, for a pair, SASL EXTERNAL first when the peer
//! offers it and our certificate names our domain, with dialback as the fallback: SASL-01),
//! correlating the answer with what we sent on this
//! stream (DB-07, DB-14), the per-pair FIFO of stanzas queued until `type='valid'` (DB-05,
//! ROUTE-01), and bouncing it when the pair cannot be established (DB-06, DB-08, DB-09,
//! ROUTE-02). Once established, a stream whose peer advertised dialback errors may carry
//! further domain pairs (target multiplexing, DB-29: submodule `mux`). Out of scope: DNS and
//! connecting (the connection layer reports
//! [`Event::Connected`] or [`Event::ConnectFailed`]).

use super::bidi;
use super::incoming::describe_stream_error;
use super::sasl::{self, SASL_NS};
use super::{
    db_result, db_verify, parse_version, s2s_header, Action, Ctx, DbBody, Event, StanzaCondition,
    StreamCondition, StreamError, Verdict, VerifyRequest,
};
use crate::domain::Domain;
use crate::ratelimit::{warn_limited, RateLimit, LOG_EVERY};
use crate::stanza::{self, echo, Bounce};
use crate::xml::{
    Element, StreamHeader, DIALBACK_NS, SERVER_NS, STREAM_LIMITS_NS, STREAM_NS, TLS_NS,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// The dialback error we give the claimant when its Authoritative Server could not be asked
/// (XEP-0220 §2.5: the Receiving Server could not connect to the Authoritative Server).
pub const VERIFY_FAILED: StanzaCondition = StanzaCondition::RemoteConnectionFailed;

/// Why we opened the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Carry stanzas from `local` to `remote` once dialback says valid.
    Pair,
    /// Ask `remote`'s Authoritative Server about one key, then close.
    Verify(VerifyRequest),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Connecting,
    ExpectHeader,
    ExpectFeatures,
    ExpectProceed,
    AwaitTls,
    /// We sent `<auth mechanism='EXTERNAL'/>` (SASL-01).
    ExpectSasl,
    ExpectResult,
    ExpectVerify,
    Established,
    Closed,
}

/// The core of one outbound server-to-server stream.
pub struct Outgoing {
    ctx: Arc<Ctx>,
    label: String,
    local: Domain,
    remote: Domain,
    purpose: Purpose,
    state: State,
    tls: bool,
    their_id: String,
    queue: VecDeque<Element>,
    /// [`stanza::wire_size`] of the stanzas in `queue`.
    queue_bytes: usize,
    /// The peer answered with a pre-1.0 header (no features, no STARTTLS).
    legacy: bool,
    /// Why the pair could not be set up, once it could not: what its stanzas bounce with.
    failure: Option<Bounce>,
    /// XEP-0478: the peer's `max-bytes` from its latest features (none: no limit advertised).
    peer_max_bytes: Option<usize>,
    /// XEP-0478: the peer's `idle-seconds` from its latest features.
    peer_idle: Option<Duration>,
    /// The peer's latest features advertised dialback errors (XEP-0220 §2.4.2).
    errors_offered: bool,
    /// Pairs carried besides the stream's own (target multiplexing, DB-29; see `mux`).
    joins: mux::Joins,
    /// Our certificate for `local` names `local`: SASL EXTERNAL is worth trying (SASL-01).
    can_external: bool,
    /// The peer's latest features offered SASL EXTERNAL.
    external_offered: bool,
    /// How SASL EXTERNAL went on this stream.
    external: External,
    /// The peer's latest features offered XEP-0288 bidi (BIDI-01).
    bidi_offered: bool,
    /// We asked for bidi (BIDI-02): once the pair is verified, the peer's stanzas for the
    /// inverse pair arrive on this stream too.
    bidi: bool,
    /// We closed an established bidi stream cleanly and wait for the peer's close: its stanzas
    /// for the inverse pair are still delivered.
    bidi_closing: bool,
}

/// SASL EXTERNAL on an outbound stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum External {
    NotTried,
    Failed,
    /// `<success/>`: the stream restarts, and its next features establish the pair.
    Succeeded,
}

impl Outgoing {
    /// A new outbound stream from `local` to `remote`. `tls` is true when the transport is
    /// direct TLS (XEP-0368) from the start; STARTTLS is then never used (DTLS-02).
    pub fn new(
        ctx: Arc<Ctx>,
        label: String,
        local: Domain,
        remote: Domain,
        purpose: Purpose,
        tls: bool,
    ) -> Outgoing {
        Outgoing {
            ctx,
            label,
            local,
            remote,
            purpose,
            state: State::Connecting,
            tls,
            their_id: String::new(),
            queue: VecDeque::new(),
            queue_bytes: 0,
            legacy: false,
            failure: None,
            peer_max_bytes: None,
            peer_idle: None,
            errors_offered: false,
            joins: mux::Joins::default(),
            can_external: false,
            external_offered: false,
            external: External::NotTried,
            bidi_offered: false,
            bidi: false,
            bidi_closing: false,
        }
    }

    /// Try SASL EXTERNAL (XEP-0178) when the peer offers it: `can` is true when the certificate
    /// we present for our domain names that domain (the connection layer knows it). Off by
    /// default: dialback only.
    pub fn with_external(mut self, can: bool) -> Outgoing {
        self.can_external = can;
        self
    }

    /// How SASL EXTERNAL went on this stream: `None` before the peer answered our `<auth/>`
    /// (or when it was not tried), `Some(true)` after `<success/>`, `Some(false)` after
    /// `<failure/>` (dialback then authenticates the pair, unless the policy forbids it).
    pub fn sasl_external(&self) -> Option<bool> {
        match self.external {
            External::NotTried => None,
            External::Succeeded => Some(true),
            External::Failed => Some(false),
        }
    }

    /// True once we asked for XEP-0288 bidi on this stream (BIDI-02).
    pub fn is_bidi(&self) -> bool {
        self.bidi
    }

    /// True once dialback said valid and stanzas go straight to the wire.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// True once the stream is over (nothing more will be sent).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// How many stanzas wait for the pair (and the pairs joined to the stream) to be verified.
    pub fn queued(&self) -> usize {
        self.queue.len() + self.joins.queued()
    }

    /// The bytes of the stanzas waiting for the pair (and the pairs joined to the stream) to
    /// be verified ([`stanza::wire_size`]).
    pub fn queued_bytes(&self) -> usize {
        self.queue_bytes + self.joins.queued_bytes()
    }

    /// Why the pair could not be set up: the bounce condition and the reason, once the stream
    /// failed before dialback said valid (`None` for a stream that was established, or is
    /// still trying).
    pub fn failure(&self) -> Option<&Bounce> {
        self.failure.as_ref()
    }

    /// Take the stanzas still queued (for a connection layer that must give up on the stream
    /// without going through its states, after an internal error).
    pub fn take_queue(&mut self) -> Vec<Element> {
        self.queue_bytes = 0;
        let mut out: Vec<Element> = self.queue.drain(..).collect();
        out.extend(self.joins.take_queues());
        out
    }

    /// XEP-0478: how long the peer lets the stream sit without traffic from us, as its
    /// features advertised (`idle-seconds`); the connection layer keeps the stream alive
    /// within it.
    pub fn peer_idle_limit(&self) -> Option<Duration> {
        self.peer_idle
    }

    /// XEP-0478: the largest element the peer accepts (`max-bytes`), as its features said.
    pub fn peer_max_bytes(&self) -> Option<usize> {
        self.peer_max_bytes
    }

    /// The stream's name for log lines.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The connection layer reached `addr`: name it in every later log line (`label [addr]`).
    pub fn set_peer_address(&mut self, addr: std::net::SocketAddr) {
        self.label = format!("{} [{addr}]", self.label);
    }

    /// Feed one event; returns what to do, in order.
    pub fn handle(&mut self, ev: Event) -> Vec<Action> {
        match (self.state, ev) {
            (State::Closed, Event::Element(e)) if self.bidi_closing && stanza::is_stanza(&e) => {
                self.closing_delivery(e)
            }
            (_, Event::Stanza(el)) => match self.joined_index(&el) {
                Some(i) => self.joined_stanza(i, el),
                None => self.stanza(el),
            },
            (
                _,
                Event::Join {
                    local,
                    remote,
                    stanzas,
                },
            ) => self.join(local, remote, stanzas),
            (_, Event::JoinTimeout { local, remote }) => self.join_timeout(&local, &remote),
            (State::Closed, _) => Vec::new(),
            (State::Connecting, Event::Connected { tls }) => {
                self.tls |= tls;
                self.state = State::ExpectHeader;
                vec![self.header()]
            }
            (State::Connecting, Event::ConnectFailed(why)) => {
                let mut out = self.fail(why.condition(), why.reason());
                out.push(Action::Close(None));
                out
            }
            (State::ExpectHeader, Event::Header(h)) => self.expect_header(h),
            (State::AwaitTls, Event::TlsEstablished) => {
                self.tls = true;
                self.state = State::ExpectHeader;
                // TLS-01 (RFC 6120 §5.4.3.3): nothing learned on the insecure stream carries
                // over; the key is minted for the id of the header that follows TLS.
                self.their_id.clear();
                vec![self.header()]
            }
            (state, Event::Element(e)) => self.element(state, e),
            (state, ev) => self.end_event(state, ev),
        }
    }

    /// A top-level element from the peer, in `state`.
    fn element(&mut self, state: State, e: Element) -> Vec<Action> {
        match state {
            State::Established | State::ExpectResult if self.bidi => self.bidi_element(e),
            State::ExpectFeatures if e.is("features", STREAM_NS) => self.expect_features(&e),
            State::ExpectProceed if e.is("proceed", TLS_NS) => {
                self.state = State::AwaitTls;
                vec![Action::StartTls]
            }
            State::ExpectResult if e.ns == DIALBACK_NS && e.name == "result" => {
                self.expect_result(&e)
            }
            State::ExpectVerify if e.ns == DIALBACK_NS && e.name == "verify" => {
                self.expect_verify(&e)
            }
            // DB-29: the answers for pairs joined to the stream.
            State::Established if e.ns == DIALBACK_NS && e.name == "result" => {
                self.joined_result(&e)
            }
            State::ExpectSasl if e.ns == SASL_NS => self.expect_sasl(&e),
            _ if e.is("error", STREAM_NS) => self.peer_stream_error(&e),
            State::ExpectProceed if e.is("failure", TLS_NS) => self.fail_and_close(
                StanzaCondition::RemoteServerTimeout,
                &format!("{} refused STARTTLS", self.remote),
                None,
            ),
            State::Established => {
                // DB-24: dialback is one-way; the peer has no business sending on our stream.
                log::debug!(
                    "{}: ignoring <{}/> from the peer on an outbound stream",
                    self.label,
                    e.name
                );
                Vec::new()
            }
            _ => {
                // DB-07, DB-14, SEC-01: answers that match nothing we asked on this stream.
                log::debug!(
                    "{}: ignoring unexpected <{} xmlns='{}'/> in state {:?}",
                    self.label,
                    e.name,
                    e.ns,
                    self.state
                );
                Vec::new()
            }
        }
    }

    /// An element from the peer on a bidi stream (XEP-0288), in `ExpectResult` or
    /// `Established`: once the pair is verified, stanzas of the inverse pair are delivered
    /// (BIDI-03); dialback the peer starts here for other pairs (BIDI-04) is refused with a
    /// dialback error, so that it opens a connection of its own; our own result is awaited as
    /// on any stream.
    fn bidi_element(&mut self, e: Element) -> Vec<Action> {
        let established = self.state == State::Established;
        if stanza::is_stanza(&e) {
            if !established {
                // BIDI-03: nothing before our pair is verified (DB-17 in the other direction).
                return self.fail_and_close(
                    StanzaCondition::RemoteServerTimeout,
                    &format!("{} sent a stanza before dialback completed", self.remote),
                    Some(StreamError::text(
                        StreamCondition::NotAuthorized,
                        "dialback is not complete",
                    )),
                );
            }
            return match self.check_inverse(&e) {
                Ok(()) => vec![Action::Deliver(e)],
                Err(err) => {
                    log::warn!("{}: closing: peer sent {err}", self.label);
                    self.state = State::Closed;
                    vec![Action::Close(Some(err))]
                }
            };
        }
        if e.ns == DIALBACK_NS && e.name == "result" && e.attr("type").is_none() {
            return self.refuse_piggyback(&e);
        }
        if !established && e.ns == DIALBACK_NS && e.name == "result" {
            return self.expect_result(&e);
        }
        if e.ns == DIALBACK_NS && e.name == "result" {
            // DB-29: the answers for pairs joined to the stream.
            return self.joined_result(&e);
        }
        if e.is("error", STREAM_NS) {
            return self.peer_stream_error(&e);
        }
        log::debug!(
            "{}: ignoring <{} xmlns='{}'/> on a bidi stream",
            self.label,
            echo(&e.name),
            echo(&e.ns)
        );
        Vec::new()
    }

    /// A stanza from the peer while our clean close of an established bidi stream is under way:
    /// delivered when it is of the inverse pair (BIDI-03); anything else ends the deliveries.
    fn closing_delivery(&mut self, e: Element) -> Vec<Action> {
        match self.check_inverse(&e) {
            Ok(()) => vec![Action::Deliver(e)],
            Err(err) => {
                log::warn!(
                    "{}: dropping what the peer sends while closing: {err}",
                    self.label
                );
                self.bidi_closing = false;
                Vec::new()
            }
        }
    }

    /// BIDI-04: the peer asks to verify another pair on our bidi stream. dialbackd verifies
    /// keys only on streams peers open to it, so the answer is the dialback error
    /// `resource-constraint` (XEP-0220 §2.5: this connection cannot take another pair; open a
    /// new one), or `item-not-found` for a domain we do not host (DB-19); the stream stays.
    /// Prosody closes the stream in this case (`invalid-id`); a dialback error keeps our pair.
    fn refuse_piggyback(&self, e: &Element) -> Vec<Action> {
        let (Some(from), Some(to)) = (
            e.attr("from").and_then(|f| Domain::parse(f).ok()),
            e.attr("to").and_then(|t| Domain::parse(t).ok()),
        ) else {
            log::debug!(
                "{}: ignoring a db:result without valid addresses",
                self.label
            );
            return Vec::new();
        };
        let condition = if self.ctx.config.is_local(&to) {
            StanzaCondition::ResourceConstraint
        } else {
            StanzaCondition::ItemNotFound
        };
        static LOG: RateLimit = RateLimit::new(LOG_EVERY);
        warn_limited!(
            LOG,
            "{}: {from} asked to verify {from}→{to} on our bidi stream; refused ({condition})",
            self.label
        );
        vec![Action::Send(db_result(
            &to,
            &from,
            DbBody::Verdict(&Verdict::Error(condition)),
        ))]
    }

    /// The peer's `<stream:error/>`: the attempt fails.
    fn peer_stream_error(&mut self, e: &Element) -> Vec<Action> {
        // The peer's text goes into our bounces: bounded.
        let what = echo(&describe_stream_error(e));
        log::warn!(
            "{}: {} closed the stream with an error: {what}",
            self.label,
            self.remote
        );
        // XEP-0220 §2.5: host-unknown from the Authoritative Server means not found.
        let host_unknown = StreamCondition::HostUnknown.as_str();
        let condition = if e.child(host_unknown, crate::xml::STREAMS_ERR_NS).is_some() {
            StanzaCondition::RemoteServerNotFound
        } else {
            StanzaCondition::RemoteServerTimeout
        };
        self.fail_and_close(
            condition,
            &format!("{} sent a stream error: {what}", self.remote),
            None,
        )
    }

    /// The stream's end, a timer or a shutdown, in `state`.
    fn end_event(&mut self, state: State, ev: Event) -> Vec<Action> {
        let timeout = StanzaCondition::RemoteServerTimeout;
        match (state, ev) {
            (State::Established, Event::Close) => {
                log::info!("{}: closed by the peer", self.label);
                self.state = State::Closed;
                let reason = format!(
                    "{} closed the stream before dialback completed",
                    self.remote
                );
                let mut out = self.joins_end(&reason);
                out.push(Action::Close(None));
                out
            }
            (_, Event::Close) => {
                let reason = format!(
                    "{} closed the stream before dialback completed",
                    self.remote
                );
                self.fail_and_close(timeout, &reason, None)
            }
            (_, Event::Broken { condition, reason }) => {
                let reason = format!("stream to {} broke: {reason}", self.remote);
                self.fail_and_close(timeout, &reason, condition.map(StreamError::new))
            }
            (State::Established, Event::Timeout) => Vec::new(),
            (_, Event::Timeout) => {
                let reason = format!("timed out setting up the stream to {}", self.remote);
                let err = Some(StreamError::new(StreamCondition::ConnectionTimeout));
                self.fail_and_close(timeout, &reason, err)
            }
            (_, Event::Idle) | (_, Event::Shutdown) => {
                // A bidi stream we close cleanly still takes the peer's stanzas until its close
                // (RFC 6120 §4.4): they were sent before it saw ours.
                self.bidi_closing = self.bidi && state == State::Established;
                let reason = "the server is closing the stream".to_string();
                self.fail_and_close(timeout, &reason, None)
            }
            (state, ev) => {
                log::debug!("{}: ignoring {ev:?} in state {state:?}", self.label);
                Vec::new()
            }
        }
    }

    fn header(&self) -> Action {
        Action::SendHeader(s2s_header(
            Some(&self.local),
            Some(self.remote.as_str()),
            None,
        ))
    }

    fn stanza(&mut self, el: Element) -> Vec<Action> {
        match self.state {
            State::Established => self.send_within_limit(vec![el]),
            // The route is gone: hand it back to the router for a fresh connection.
            State::Closed => vec![Action::Deliver(el)],
            _ => enqueue(
                (&mut self.queue, &mut self.queue_bytes),
                el,
                &self.ctx.config.limits,
                &self.remote,
                &self.label,
            ),
        }
    }

    fn expect_header(&mut self, h: StreamHeader) -> Vec<Action> {
        if h.name != "stream" || h.ns != STREAM_NS || h.default_ns.as_deref() != Some(SERVER_NS) {
            let reason = format!(
                "{} answered with a stream that is not jabber:server",
                self.remote
            );
            return self.fail_and_close(
                StanzaCondition::RemoteServerTimeout,
                &reason,
                Some(StreamError::new(StreamCondition::InvalidNamespace)),
            );
        }
        match h.id {
            Some(id) if !id.is_empty() && !id.contains(char::is_whitespace) => self.their_id = id,
            _ => {
                // STR-03: the key depends on the id; without one there is no dialback.
                let reason = format!("{} sent no usable stream id", self.remote);
                return self.fail_and_close(
                    StanzaCondition::RemoteServerTimeout,
                    &reason,
                    Some(StreamError::new(StreamCondition::UndefinedCondition)),
                );
            }
        }
        // RFC 6120 §4.7.5: an answer without `version` (or below 1.0) comes from a pre-1.0
        // peer that sends no features: dialback right away (DB-25, STR-01), if policy allows.
        match h.version.as_deref().map(parse_version) {
            Some(Some((major, _))) if major >= 1 => {
                self.state = State::ExpectFeatures;
                Vec::new()
            }
            None | Some(Some(_)) => {
                log::debug!(
                    "{}: {} answered with a pre-1.0 stream (version {:?}): dialback without features",
                    self.label,
                    self.remote,
                    h.version
                );
                self.legacy = true;
                self.after_features(false)
            }
            Some(None) => {
                let reason = format!(
                    "{} answered with version '{}', which is not major.minor",
                    self.remote,
                    echo(h.version.as_deref().unwrap_or_default())
                );
                self.fail_and_close(
                    StanzaCondition::RemoteServerTimeout,
                    &reason,
                    Some(StreamError::new(StreamCondition::UnsupportedVersion)),
                )
            }
        }
    }

    fn expect_features(&mut self, features: &Element) -> Vec<Action> {
        // XEP-0478: the latest features say what holds (those after STARTTLS replace the
        // earlier ones, TLS-01); a missing or unreadable value is no limit.
        self.peer_max_bytes = stream_limit(features, "max-bytes").and_then(|n| n.try_into().ok());
        self.peer_idle = stream_limit(features, "idle-seconds").map(Duration::from_secs);
        self.note_features(features);
        self.external_offered = sasl::offers_external(features);
        self.bidi_offered = bidi::offered(features);
        self.after_features(features.child("starttls", TLS_NS).is_some())
    }

    /// Send `stanzas`, except those larger than the peer's `max-bytes`: XEP-0478: a stanza that exceeds the limit after serialisation SHOULD NOT be sent on the
    /// stream; the server SHOULD return an error to the sender with `<policy-violation/>` and
    /// no `by` (the policy is not ours). Measured as written ([`Element::to_bytes`] is the
    /// writer the link uses), only when the peer advertised a limit.
    fn send_within_limit(&mut self, stanzas: Vec<Element>) -> Vec<Action> {
        let Some(max) = self.peer_max_bytes else {
            return stanzas.into_iter().map(Action::Send).collect();
        };
        let (fit, over): (Vec<_>, Vec<_>) = stanzas
            .into_iter()
            .partition(|el| el.to_bytes().len() <= max);
        // The bounce first: what is sent then keeps its order with nothing skipped over.
        let mut out = Vec::new();
        if !over.is_empty() {
            static LOG: RateLimit = RateLimit::new(LOG_EVERY);
            warn_limited!(
                LOG,
                "{}: bouncing {} stanzas larger than the {max} bytes {} accepts (XEP-0478)",
                self.label,
                over.len(),
                self.remote
            );
            out.push(Action::Bounce {
                stanzas: over,
                condition: StanzaCondition::PolicyViolation,
                text: format!("larger than the {max} bytes {} accepts", self.remote),
            });
        }
        out.extend(fit.into_iter().map(Action::Send));
        out
    }

    fn after_features(&mut self, starttls_offered: bool) -> Vec<Action> {
        if !self.tls && starttls_offered && self.ctx.tls_available {
            self.state = State::ExpectProceed;
            return vec![Action::Send(Element::new("starttls", TLS_NS))];
        }
        if !self.tls && self.ctx.config.tls.require_encryption_for(&self.remote) {
            // SEC-12: a stripped or missing STARTTLS; send nothing in the clear.
            let reason = if starttls_offered {
                format!("{} offers STARTTLS but we have no TLS configured, and require_encryption is on", self.remote)
            } else if self.legacy {
                format!(
                    "{} answered without version='1.0' (no STARTTLS possible) and require_encryption is on",
                    self.remote
                )
            } else {
                format!(
                    "{} offered no STARTTLS and require_encryption is on",
                    self.remote
                )
            };
            log::warn!("{}: {reason}", self.label);
            return self.fail_and_close(
                StanzaCondition::RemoteServerTimeout,
                &reason,
                Some(StreamError::new(StreamCondition::PolicyViolation)),
            );
        }
        match &self.purpose {
            Purpose::Pair => self.authenticate(),
            Purpose::Verify(req) => {
                self.state = State::ExpectVerify;
                log::debug!(
                    "{}: sending db:verify for stream {}",
                    self.label,
                    req.stream_id
                );
                vec![Action::Send(db_verify(
                    req.local.as_str(),
                    req.remote.as_str(),
                    &req.stream_id,
                    DbBody::Key(&req.key),
                ))]
            }
        }
    }

    /// Authenticate the pair: SASL EXTERNAL when offered and our certificate names our domain,
    /// else dialback (unless the peer's policy requires EXTERNAL: SASL-01).
    fn authenticate(&mut self) -> Vec<Action> {
        if self.external == External::Succeeded {
            // The features of the stream restarted after <success/>.
            return self.established("SASL EXTERNAL");
        }
        let usable = self.tls && self.external_offered && self.can_external;
        if usable && self.external == External::NotTried {
            log::debug!("{}: trying SASL EXTERNAL", self.label);
            self.state = State::ExpectSasl;
            return vec![Action::Send(sasl::auth_external())];
        }
        if self.ctx.config.tls.external_required_for(&self.remote) {
            let reason = if !self.external_offered {
                format!("{} does not offer SASL EXTERNAL", self.remote)
            } else if !self.can_external {
                format!("our certificate does not name {}", self.local)
            } else {
                format!("SASL EXTERNAL with {} failed", self.remote)
            };
            let reason = format!("{reason}, and auth = \"external\" forbids dialback with it");
            log::warn!("{}: {reason}", self.label);
            return self.fail_and_close(
                StanzaCondition::RemoteServerTimeout,
                &reason,
                Some(StreamError::new(StreamCondition::PolicyViolation)),
            );
        }
        self.send_db_result()
    }

    fn send_db_result(&mut self) -> Vec<Action> {
        self.state = State::ExpectResult;
        let key = self
            .ctx
            .secret
            .key(self.remote.as_str(), self.local.as_str(), &self.their_id);
        let mut out = self.ask_bidi();
        log::debug!("{}: sending db:result", self.label);
        out.push(Action::Send(db_result(
            &self.local,
            &self.remote,
            DbBody::Key(&key),
        )));
        out
    }

    /// The peer's answer to our `<auth/>`: `<success/>` restarts the stream (RFC 6120 §6.4.6);
    /// `<failure/>` falls back to dialback on the same stream (SASL-01, as Prosody and ejabberd
    /// do), unless the policy requires EXTERNAL.
    fn expect_sasl(&mut self, e: &Element) -> Vec<Action> {
        match e.name.as_str() {
            "success" => {
                // The info line comes with the restarted stream's features (`established`).
                log::debug!(
                    "{}: SASL EXTERNAL succeeded; restarting the stream",
                    self.label
                );
                self.external = External::Succeeded;
                self.state = State::ExpectHeader;
                // Nothing learned before the restart carries over (a new id comes).
                self.their_id.clear();
                vec![Action::Restart, self.header()]
            }
            "failure" => {
                self.external = External::Failed;
                let why = sasl::describe_failure(e);
                if self.ctx.config.tls.external_required_for(&self.remote) {
                    return self.authenticate_after_failure(&why);
                }
                log::info!(
                    "{}: SASL EXTERNAL with {} failed ({why}); using dialback",
                    self.label,
                    self.remote
                );
                self.send_db_result()
            }
            // EXTERNAL has no challenges after an initial response: give up on it; the
            // <failure><aborted/></failure> that follows falls back to dialback.
            "challenge" => vec![Action::Send(sasl::abort())],
            _ => {
                log::debug!("{}: ignoring SASL <{}/>", self.label, e.name);
                Vec::new()
            }
        }
    }

    /// EXTERNAL failed and the policy forbids dialback with the peer.
    fn authenticate_after_failure(&mut self, why: &str) -> Vec<Action> {
        let reason = format!(
            "{} refused SASL EXTERNAL ({why}), and auth = \"external\" forbids dialback with it",
            self.remote
        );
        log::warn!("{}: {reason}", self.label);
        self.fail_and_close(StanzaCondition::RemoteServerTimeout, &reason, None)
    }

    /// The pair is authenticated (`how`: dialback or SASL EXTERNAL): queued stanzas go out.
    fn established(&mut self, how: &str) -> Vec<Action> {
        log::info!(
            "{}: {}→{} authenticated by {how}, {} queued stanzas sent",
            self.label,
            self.local,
            self.remote,
            self.queue.len()
        );
        self.state = State::Established;
        let mut out = vec![Action::Authenticated {
            local: self.local.clone(),
            remote: self.remote.clone(),
        }];
        let queued = self.queue.drain(..).collect();
        self.queue_bytes = 0;
        out.extend(self.send_within_limit(queued));
        out
    }

    /// BIDI-02: ask for bidi before dialback when the peer's features offered it and
    /// `[s2s] bidi` is on; the stream is encrypted by now, or encryption is not required
    /// (Prosody asks under the same condition). Verify connections never ask: they close after
    /// one answer.
    fn ask_bidi(&mut self) -> Vec<Action> {
        let may = self.tls || !self.ctx.config.tls.require_encryption_for(&self.remote);
        if !(self.bidi_offered && self.ctx.config.s2s.bidi && may) {
            return Vec::new();
        }
        self.bidi = true;
        log::info!(
            "{}: bidi negotiated (XEP-0288, outbound): {}'s stanzas to {} may come back over \
             this stream",
            self.label,
            self.remote,
            self.local
        );
        vec![Action::Send(bidi::request())]
    }

    /// Does a typed answer come from the domain we asked, for the domain we asked as (DB-07)?
    fn answers_us(&self, e: &Element) -> bool {
        e.attr("from").and_then(|f| Domain::parse(f).ok()).as_ref() == Some(&self.remote)
            && e.attr("to").and_then(|t| Domain::parse(t).ok()).as_ref() == Some(&self.local)
    }

    fn expect_result(&mut self, e: &Element) -> Vec<Action> {
        let verdict = match Verdict::of(e) {
            Some(v) if self.answers_us(e) => v,
            _ => {
                log::debug!(
                    "{}: ignoring a db:result that answers nothing we sent",
                    self.label
                );
                return Vec::new();
            }
        };
        match verdict {
            Verdict::Valid => self.established("dialback"),
            Verdict::Invalid => {
                // DB-08: our key was refused.
                let reason = format!("{} refused our dialback key", self.remote);
                self.fail_and_close(StanzaCondition::InternalServerError, &reason, None)
            }
            Verdict::Error(cond) => {
                // DB-09.
                let reason = format!("{} answered dialback with an error: {cond}", self.remote);
                self.fail_and_close(StanzaCondition::RemoteServerTimeout, &reason, None)
            }
        }
    }

    fn expect_verify(&mut self, e: &Element) -> Vec<Action> {
        let Purpose::Verify(req) = &self.purpose else {
            return Vec::new();
        };
        let matches = self.answers_us(e) && e.attr("id") == Some(req.stream_id.as_str());
        let verdict = match Verdict::of(e) {
            Some(v) if matches => v,
            _ => {
                log::debug!(
                    "{}: ignoring a db:verify that answers nothing we sent",
                    self.label
                );
                return Vec::new();
            }
        };
        // DB-27: an error from the Authoritative Server becomes remote-server-not-found.
        let verdict = match verdict {
            Verdict::Error(c) => {
                log::info!(
                    "{}: Authoritative Server answered with an error: {c}",
                    self.label
                );
                Verdict::Error(StanzaCondition::RemoteServerNotFound)
            }
            v => v,
        };
        self.state = State::Closed;
        // DB-11: a verify connection closes right after the answer.
        vec![Action::VerifyDone(verdict), Action::Close(None)]
    }

    /// Give up: bounce the queue with `condition` (pair) or report [`VERIFY_FAILED`] (verify).
    fn fail(&mut self, condition: StanzaCondition, reason: &str) -> Vec<Action> {
        let was = self.state;
        self.state = State::Closed;
        match &self.purpose {
            // DB-06: pairs joined to the stream and still waiting fail with it.
            Purpose::Pair if was == State::Established => self.joins_end(reason),
            Purpose::Pair => {
                self.failure = Some(Bounce::new(condition, reason));
                log::warn!(
                    "{}: {reason}; bouncing {} stanzas ({condition})",
                    self.label,
                    self.queue.len()
                );
                self.queue_bytes = 0;
                if self.queue.is_empty() {
                    return Vec::new();
                }
                vec![Action::Bounce {
                    stanzas: self.queue.drain(..).collect(),
                    condition,
                    text: reason.to_string(),
                }]
            }
            Purpose::Verify(_) => {
                log::info!("{}: verification failed: {reason}", self.label);
                // XEP-0220 §2.5: we could not get an answer from the Authoritative Server. One
                // condition whatever the cause (DNS, refused, timed out, not XMPP, refused by
                // the private-network guard, TLS, stream error), so that the claimant, who
                // chooses where we connect, learns nothing about the ports and networks we can
                // reach. That includes DNS non-existence: `remote-server-not-found` there would
                // tell a claimant which names our (possibly split-horizon) resolver knows.
                // Only a real answer (DB-27, in expect_verify) says more.
                vec![Action::VerifyDone(Verdict::Error(VERIFY_FAILED))]
            }
        }
    }

    fn fail_and_close(
        &mut self,
        condition: StanzaCondition,
        reason: &str,
        err: Option<StreamError>,
    ) -> Vec<Action> {
        // No XML between <proceed/> and the end of the TLS handshake (RFC 6120 §5.4.3.3).
        let err = err.filter(|_| self.state != State::AwaitTls);
        let mut out = self.fail(condition, reason);
        out.push(Action::Close(err));
        out
    }
}

/// A positive integer child `name` of the XEP-0478 `<limits/>` in `features`; `None` when it
/// is absent, not a number, zero, or beyond `u64` (the peer's word is no limit then).
/// Queue `el` for `remote` while its pair waits for dialback, within `limits.queue` stanzas and
/// `limits.queue_bytes` (a pair with nothing queued always takes one stanza); beyond them, its
/// bounce (`resource-constraint`). `queue` is the pair's queue and the bytes it holds.
fn enqueue(
    (queue, queued_bytes): (&mut VecDeque<Element>, &mut usize),
    el: Element,
    limits: &crate::config::Limits,
    remote: &Domain,
    label: &str,
) -> Vec<Action> {
    use crate::metrics::{Cap, METRICS};
    let size = stanza::wire_size(&el);
    let text = if queue.len() >= limits.queue {
        METRICS.cap_hit(Cap::Queue);
        format!("too many stanzas queued for {remote}")
    } else if *queued_bytes > 0 && *queued_bytes + size > limits.queue_bytes {
        METRICS.cap_hit(Cap::QueueBytes);
        static LOG: RateLimit = RateLimit::new(LOG_EVERY);
        warn_limited!(
            LOG,
            "{label}: bouncing a stanza: {queued_bytes} bytes queued for the pair \
             (limits.queue_bytes)"
        );
        format!("too much is queued for {remote}")
    } else {
        *queued_bytes += size;
        queue.push_back(el);
        return Vec::new();
    };
    vec![Action::Bounce {
        stanzas: vec![el],
        condition: StanzaCondition::ResourceConstraint,
        text,
    }]
}

fn stream_limit(features: &Element, name: &str) -> Option<u64> {
    let text = features
        .child("limits", STREAM_LIMITS_NS)?
        .child(name, STREAM_LIMITS_NS)?
        .text();
    text.trim().parse::<u64>().ok().filter(|&n| n > 0)
}

mod mux;

#[cfg(test)]
#[path = "outgoing_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "outgoing_mux_tests.rs"]
mod mux_tests;
