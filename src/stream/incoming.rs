//! Streams a peer opened to us: the **Receiving Server** role for its `<db:result/>`
//! (XEP-0220 §2.2.1) and the **Authoritative Server** role for its `<db:verify/>` (§2.2.2).
//!
//! In scope: header validation (RFC 6120 §4.7–4.9; versions per §4.7.5: a higher one is
//! answered with 1.0, none means a pre-1.0 peer that gets a header without `version`, no
//! features and dialback all the same), features (STARTTLS, dialback with `<errors/>`, DB-26),
//! our header before any stream error we send (ERR-01), the dialback bookkeeping per domain
//! pair (several pairs per stream: the peer's domains, DB-28, and, since we advertise dialback
//! errors, our hosted domains as targets, DB-29; discarded by the STARTTLS restart, TLS-01), the
//! `[policy]` lists (a `<db:result/>` from a refused domain gets the dialback error
//! `forbidden` and no verification), and the address checks on stanzas (DB-17, SEC-10,
//! ADDR-01/02), and SASL EXTERNAL (XEP-0178, SASL-01: `incoming_sasl.rs`). Peer strings
//! repeated in our errors
//! are bounded ([`crate::stanza::echo`]). Out of scope: asking
//! the Authoritative Server (the connection layer runs a verify connection when it sees
//! [`Action::Verify`] and reports back with [`Event::Verified`]).

use super::bidi::{self, Request};
use super::{
    db_result, db_verify, domain_attr, parse_version, s2s_header, Action, Ctx, DbBody, Event,
    StanzaCondition, StreamCondition, StreamError, Verdict, VerifyRequest, OUR_VERSION,
};
use crate::domain::Domain;
use crate::ratelimit::{warn_limited, RateLimit, LOG_EVERY};
use crate::stanza::{self, echo};
use crate::xml::{
    Element, StreamHeader, DIALBACK_FEATURE_NS, DIALBACK_NS, SERVER_NS, STREAM_LIMITS_NS,
    STREAM_NS, TLS_NS,
};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    ExpectHeader,
    Open,
    AwaitTls,
    /// We closed the stream cleanly and wait for the peer's close: stanzas it still sends are
    /// processed (RFC 6120 §4.4), nothing else.
    Closing,
    Closed,
}

/// The core of one inbound server-to-server stream.
pub struct Incoming {
    ctx: Arc<Ctx>,
    label: String,
    state: State,
    id: String,
    new_id: Box<dyn FnMut() -> String + Send>,
    tls: bool,
    /// Our domain as the peer named it in its first header (`to`).
    local: Option<Domain>,
    /// Pairs (remote, local) authorised on this stream.
    verified: Vec<(Domain, Domain)>,
    /// Pairs (remote, local) whose key is being checked.
    pending: Vec<(Domain, Domain)>,
    /// Our header went out on the current stream (reset by the STARTTLS restart): a stream
    /// error we send must follow it (ERR-01, RFC 6120 §4.9.1.1).
    header_sent: bool,
    /// The `version` of our answer header (RFC 6120 §4.7.5); `None` for a pre-1.0 peer.
    version: Option<String>,
    /// The peer's header had no `version` (or one below 1.0): no stream features, hence no
    /// STARTTLS; dialback runs without them (DB-25, STR-01).
    legacy: bool,
    /// The peer's first header named our domain in `to` (not defaulted).
    to_given: bool,
    /// The `from` of the peer's first header, when it is a valid domain.
    peer: Option<Domain>,
    /// SASL EXTERNAL (SASL-01).
    sasl: sasl::InboundSasl,
    /// The features we sent on the current stream offered XEP-0288 bidi (BIDI-01).
    bidi_offered: bool,
    /// The peer asked for bidi (BIDI-02): our stanzas for the inverse of the pairs verified
    /// here may go back over this stream (BIDI-03).
    bidi: bool,
    /// Stanzas the router handed in for a pair SASL just authenticated on a bidi stream, while
    /// the stream restarts (RFC 6120 §6.4.6): they follow our new header and features, or go
    /// back to the router when the stream closes first.
    held: Vec<Element>,
}

impl Incoming {
    /// A new inbound stream. `new_id` draws a fresh stream id (one per header we send, STR-03);
    /// `tls` is true on a direct-TLS listener. `label` prefixes log lines.
    pub fn new(
        ctx: Arc<Ctx>,
        label: String,
        new_id: Box<dyn FnMut() -> String + Send>,
        tls: bool,
    ) -> Incoming {
        Incoming {
            ctx,
            label,
            state: State::ExpectHeader,
            id: String::new(),
            new_id,
            tls,
            local: None,
            verified: Vec::new(),
            pending: Vec::new(),
            header_sent: false,
            version: Some("1.0".into()),
            legacy: false,
            to_given: false,
            peer: None,
            sasl: sasl::InboundSasl::default(),
            bidi_offered: false,
            bidi: false,
            held: Vec::new(),
        }
    }

    /// True once the peer asked for XEP-0288 bidi on this stream (BIDI-02): the inverse of each
    /// verified pair may then be routed over it (BIDI-03).
    pub fn is_bidi(&self) -> bool {
        self.bidi
    }

    /// Our domain as the peer's stream header named it in `to` (not defaulted): known before
    /// STARTTLS, it chooses the certificate we present whatever the TLS client's SNI says.
    /// Further targets the peer multiplexes on the stream later (DB-29) do not change it: the
    /// certificate is chosen once, at STARTTLS, before any `<db:result/>`.
    pub fn named_local(&self) -> Option<&Domain> {
        self.local.as_ref().filter(|_| self.to_given)
    }

    /// True for a pre-1.0 stream (no `version` in the peer's header): no features were sent.
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }

    /// The id of the stream we sent (empty before the peer's header).
    pub fn stream_id(&self) -> &str {
        &self.id
    }

    /// True once at least one domain pair is authorised.
    pub fn is_authenticated(&self) -> bool {
        !self.verified.is_empty()
    }

    /// The pairs (remote, local) authorised so far.
    pub fn verified_pairs(&self) -> &[(Domain, Domain)] {
        &self.verified
    }

    /// The pairs (remote, local) whose key is being checked.
    pub fn pending_pairs(&self) -> &[(Domain, Domain)] {
        &self.pending
    }

    /// The stream's name for log lines.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Feed one event; returns what to do, in order.
    pub fn handle(&mut self, ev: Event) -> Vec<Action> {
        match (self.state, ev) {
            (_, Event::Stanza(el)) => self.send_back(el),
            (State::Closing, Event::Element(e)) if stanza::is_stanza(&e) => {
                let out = self.stanza(e);
                super::closing_deliveries(out, &mut self.state, State::Closed)
            }
            (State::Closed | State::Closing, _) => Vec::new(),
            (State::ExpectHeader, Event::Header(h)) => {
                let mut out = self.expect_header(h);
                if self.state == State::Open {
                    out.extend(self.held.drain(..).map(Action::Send));
                }
                out
            }
            // ERR-01: answer with a header even when the header itself is what is wrong
            // (close() sends ours first).
            (
                State::ExpectHeader,
                Event::Broken {
                    condition: Some(c),
                    reason,
                },
            ) => {
                log::info!("{}: bad stream header: {reason}", self.label);
                self.close(Some(StreamError::new(c)))
            }
            (State::Open, Event::Element(e)) => self.open(e),
            (_, Event::PeerCertificate(check)) => {
                self.sasl.cert = check;
                Vec::new()
            }
            (State::AwaitTls, Event::TlsEstablished) => self.tls_established(),
            (
                _,
                Event::Verified {
                    remote,
                    local,
                    verdict,
                },
            ) => self.verified(remote, local, verdict),
            (_, Event::Close) => self.close(None),
            (_, Event::Broken { condition, reason }) => {
                log::info!("{}: stream broken: {reason}", self.label);
                self.close(condition.map(StreamError::new))
            }
            (_, Event::Timeout) if self.verified.is_empty() => {
                log::info!("{}: not authenticated in time, closing", self.label);
                self.close(Some(StreamError::new(StreamCondition::ConnectionTimeout)))
            }
            (_, Event::Idle) => {
                log::info!("{}: idle, closing", self.label);
                self.close(None)
            }
            (_, Event::Shutdown) => {
                self.close(Some(StreamError::new(StreamCondition::SystemShutdown)))
            }
            (state, ev) => {
                log::debug!("{}: ignoring {ev:?} in state {state:?}", self.label);
                Vec::new()
            }
        }
    }

    /// STARTTLS completed: the stream restarts over TLS (TLS-01).
    fn tls_established(&mut self) -> Vec<Action> {
        self.tls = true;
        self.state = State::ExpectHeader;
        self.header_sent = false;
        // TLS-01 (RFC 6120 §5.4.3.3): the TLS restart discards everything learned on
        // the insecure stream; pairs verified or pending in plaintext must be
        // negotiated again over TLS (their answers are dropped as unsolicited).
        if !self.verified.is_empty() || !self.pending.is_empty() {
            log::info!(
                "{}: STARTTLS restart discards {} verified and {} pending pairs",
                self.label,
                self.verified.len(),
                self.pending.len()
            );
        }
        self.verified.clear();
        self.pending.clear();
        self.bidi = false;
        self.bidi_offered = false;
        Vec::new()
    }

    /// End the stream, with `err` if any. ERR-01 (RFC 6120 §4.9.1.1): when our header has
    /// not gone out on this stream yet (the peer's header is incomplete, broken or refused, or
    /// the TLS restart's new header never came), it goes out first, so that the error is
    /// always a child of our stream.
    ///
    /// Between our `<proceed/>` and the end of the TLS handshake no XML can be sent: the
    /// stream then just ends (RFC 6120 §5.4.3.3: a failed TLS negotiation closes the TCP
    /// connection).
    fn close(&mut self, err: Option<StreamError>) -> Vec<Action> {
        let err = err.filter(|_| self.state != State::AwaitTls);
        let mut out = Vec::with_capacity(2);
        if err.is_some() && !self.header_sent {
            self.header_sent = true;
            self.id = (self.new_id)();
            let from = self.local.as_ref().or(self.ctx.config.domains.first());
            let mut h = s2s_header(from, None, Some(&self.id));
            h.version.clone_from(&self.version);
            out.push(Action::SendHeader(h));
        }
        self.state = match (self.state, &err) {
            (State::Open, None) if !self.verified.is_empty() => State::Closing,
            _ => State::Closed,
        };
        // Stanzas held over a SASL restart go back to the router for another route.
        out.extend(self.held.drain(..).map(Action::Deliver));
        out.push(Action::Close(err));
        out
    }

    fn refuse_header(&mut self, err: StreamError) -> Vec<Action> {
        log::info!("{}: refusing stream: {err}", self.label);
        self.close(Some(err))
    }

    fn expect_header(&mut self, h: StreamHeader) -> Vec<Action> {
        if h.name != "stream" || h.ns != STREAM_NS {
            return self.refuse_header(StreamError::new(StreamCondition::InvalidNamespace));
        }
        if h.default_ns.as_deref() != Some(SERVER_NS) {
            let text = format!(
                "expected the jabber:server namespace, got {:?}",
                echo(&h.default_ns.unwrap_or_default())
            );
            return self.refuse_header(StreamError::text(StreamCondition::InvalidNamespace, text));
        }
        if let Err(err) = self.negotiate_version(h.version.as_deref()) {
            return self.refuse_header(err);
        }
        let local = match self.local_for(h.to.as_deref()) {
            Ok(local) => local,
            Err(err) => return self.refuse_header(err),
        };
        // STR-04: a restarted stream keeps its addresses; after SASL, the `from` too.
        let peer = h.from.as_deref().and_then(|f| Domain::parse(f).ok());
        let from_changed = self.sasl.done.is_some() && peer.is_some() && peer != self.peer;
        if self.local.as_ref().is_some_and(|l| *l != local) || from_changed {
            return self.refuse_header(StreamError::new(StreamCondition::ImproperAddressing));
        }
        if self.local.is_none() {
            self.to_given = h.to.is_some();
            self.peer.clone_from(&peer);
        }
        self.local = Some(local.clone());
        self.id = (self.new_id)();
        self.state = State::Open;
        self.header_sent = true;
        if !self.label.contains('→') {
            let from = peer.as_ref().map_or("?", Domain::as_str);
            self.label = format!("{} {from}→{local}", self.label);
        }
        let mut header = s2s_header(
            Some(&local),
            peer.as_ref().map(Domain::as_str),
            Some(&self.id),
        );
        header.version.clone_from(&self.version);
        if self.legacy {
            // DB-25: dialback predates stream features; every db:result and db:verify names
            // its own domains, so it works on this stream as on a 1.0 one.
            log::debug!(
                "{}: pre-1.0 stream (version {:?}): no features, dialback only",
                self.label,
                h.version
            );
            return vec![Action::SendHeader(header)];
        }
        self.bidi_offered = self.offers_bidi();
        vec![Action::SendHeader(header), Action::Send(self.features())]
    }

    /// STR-01, RFC 6120 §4.7.5: no version means a pre-1.0 peer ("0.9"): answer without one
    /// and send no features; a higher version is answered with ours (1.0) and the initiator
    /// decides; only a version that is not major.minor is refused.
    fn negotiate_version(&mut self, theirs: Option<&str>) -> Result<(), StreamError> {
        let (version, legacy) = match theirs {
            None => (None, true),
            Some(v) => {
                let Some(theirs) = parse_version(v) else {
                    let text = format!("version '{}' is not major.minor", echo(v));
                    return Err(StreamError::text(StreamCondition::UnsupportedVersion, text));
                };
                let (major, minor) = theirs.min(OUR_VERSION);
                (Some(format!("{major}.{minor}")), major < 1)
            }
        };
        self.version = version;
        self.legacy = legacy;
        Ok(())
    }

    /// Our domain for a header addressed `to` (none: the one of the stream before its
    /// restart, or our first domain); ERR-03: host-unknown when we do not serve it.
    fn local_for(&self, to: Option<&str>) -> Result<Domain, StreamError> {
        match to.map(Domain::parse) {
            None => Ok(self
                .local
                .clone()
                .unwrap_or_else(|| self.ctx.config.domains[0].clone())),
            Some(Ok(d)) if self.ctx.config.is_local(&d) => Ok(d),
            Some(_) => {
                let text = format!("This host does not serve {}", echo(to.unwrap_or_default()));
                Err(StreamError::text(StreamCondition::HostUnknown, text))
            }
        }
    }

    /// Our stream features (1.0 streams): STARTTLS while it is possible, dialback always.
    fn features(&self) -> Element {
        let mut features = Element::new("features", STREAM_NS);
        if self.ctx.tls_available && !self.tls {
            let mut starttls = Element::new("starttls", TLS_NS);
            if self.ctx.config.tls.require_encryption {
                starttls.push_child(Element::new("required", TLS_NS));
            }
            features.push_child(starttls);
        }
        if self.sasl.offer(self.tls) {
            // SASL-01, XEP-0178 §3: after TLS, when the peer presented a certificate.
            features.push_child(super::sasl::mechanisms());
        }
        // DB-26: offered before and after TLS, in every policy.
        features.push_child(
            Element::new("dialback", DIALBACK_FEATURE_NS)
                .with_child(Element::new("errors", DIALBACK_FEATURE_NS)),
        );
        if self.offers_bidi() {
            features.push_child(bidi::feature());
        }
        features.push_child(self.limits());
        features
    }

    /// BIDI-01: XEP-0288 bidi is offered when `[s2s] bidi` is on and the stream is encrypted,
    /// or when we offer no STARTTLS and do not require encryption (as Prosody's mod_s2s_bidi
    /// does): TLS, when used, always comes before bidi.
    fn offers_bidi(&self) -> bool {
        let cfg = &self.ctx.config;
        cfg.s2s.bidi && (self.tls || !(self.ctx.tls_available || cfg.tls.require_encryption))
    }

    /// A top-level `<bidi/>` (BIDI-02). Accepted only in the request namespace, when our
    /// features offered it, and before any pair is verified (Prosody accepts it only on an
    /// unauthenticated stream); anything else enables nothing and is otherwise ignored: the
    /// peer's own stanzas still flow, and ours go over a connection of our own.
    fn bidi_request(&mut self, kind: Request) -> Vec<Action> {
        match kind {
            Request::FeatureNamespace => {
                static LOG: RateLimit = RateLimit::new(LOG_EVERY);
                warn_limited!(
                    LOG,
                    "{}: bidi asked for in the feature namespace {} instead of {} \
                     (ejabberd issue #4300); not enabled",
                    self.label,
                    bidi::BIDI_FEATURE_NS,
                    bidi::BIDI_NS
                );
            }
            Request::Valid if self.bidi => {}
            Request::Valid if !self.bidi_offered || !self.verified.is_empty() => {
                log::debug!(
                    "{}: bidi asked for {}; not enabled",
                    self.label,
                    if self.bidi_offered {
                        "after dialback"
                    } else {
                        "but not offered"
                    }
                );
            }
            Request::Valid => {
                self.bidi = true;
                log::info!(
                    "{}: bidi negotiated (XEP-0288, inbound): stanzas to the verified domains \
                     go back over this stream",
                    self.label
                );
            }
        }
        Vec::new()
    }

    /// A stanza the router hands us for the peer (XEP-0288): sent when it belongs to the inverse
    /// of a pair verified here (BIDI-03). Once we are closing, it goes back to the router for
    /// another route; a stanza for a pair not verified here (the router never sends one)
    /// bounces.
    fn send_back(&mut self, el: Element) -> Vec<Action> {
        if matches!(self.state, State::Closing | State::Closed) {
            return vec![Action::Deliver(el)];
        }
        let pair = stanza::addresses(&el)
            .ok()
            .map(|a| (a.to.domain, a.from.domain));
        if self.bidi && pair.is_some_and(|p| self.verified.contains(&p)) {
            if self.state != State::ExpectHeader {
                return vec![Action::Send(el)];
            }
            // Only SASL restarts a stream that has verified pairs (the TLS restart clears
            // them): nothing may go out before our new header.
            if self.held.len() < self.ctx.config.limits.queue {
                self.held.push(el);
                return Vec::new();
            }
            crate::metrics::METRICS.cap_hit(crate::metrics::Cap::Queue);
            return vec![Action::Bounce {
                stanzas: vec![el],
                condition: StanzaCondition::ResourceConstraint,
                text: "too many stanzas wait for the stream to restart".into(),
            }];
        }
        log::warn!(
            "{}: not sending a stanza for a pair not verified on this stream",
            self.label
        );
        vec![Action::Bounce {
            stanzas: vec![el],
            condition: StanzaCondition::InternalServerError,
            text: "no verified route to the recipient on this connection".into(),
        }]
    }

    /// XEP-0478: the limits we enforce on what the peer sends, in every features element
    /// (before and after STARTTLS).
    ///
    /// `max-bytes` is `limits.stanza_size`, not the pre-authentication budget the reader holds
    /// while the features go out: dialback never restarts the stream, so these features are the
    /// only ones the peer gets, and what it uses them for is sizing the stanzas it sends, which
    /// it may only send once authenticated, when `stanza_size` is in force. Advertising
    /// `pre_auth_stanza_size` would make a conforming peer refuse stanzas we accept. What a peer
    /// legitimately sends before that (`<starttls/>`, `<db:result/>`, `<db:verify/>`) is far
    /// below the pre-authentication budget.
    ///
    /// `idle-seconds` is `timeouts.idle`: an authenticated stream is closed only after that long
    /// without traffic (before authentication the shorter `timeouts.negotiation` deadline bounds
    /// the whole negotiation, which is not an idle limit).
    fn limits(&self) -> Element {
        let config = &self.ctx.config;
        let number =
            |name: &str, n: u64| Element::new(name, STREAM_LIMITS_NS).with_text(n.to_string());
        Element::new("limits", STREAM_LIMITS_NS)
            .with_child(number("max-bytes", config.limits.stanza_size as u64))
            .with_child(number("idle-seconds", config.timeouts.idle.as_secs()))
    }

    fn open(&mut self, e: Element) -> Vec<Action> {
        if e.is("starttls", TLS_NS) {
            // Never offered on a pre-1.0 stream (it has no features).
            if self.ctx.tls_available && !self.tls && !self.legacy {
                self.state = State::AwaitTls;
                return vec![
                    Action::Send(Element::new("proceed", TLS_NS)),
                    Action::StartTls,
                ];
            }
            self.state = State::Closed;
            return vec![
                Action::Send(Element::new("failure", TLS_NS)),
                Action::Close(None),
            ];
        }
        if sasl::is_sasl(&e) {
            return self.sasl(&e);
        }
        if let Some(kind) = Request::of(&e) {
            return self.bidi_request(kind);
        }
        if e.ns == DIALBACK_NS && e.name == "result" {
            return self.db_result(e);
        }
        if e.ns == DIALBACK_NS && e.name == "verify" {
            return self.db_verify(e);
        }
        if e.is("error", STREAM_NS) {
            log::warn!(
                "{}: peer sent a stream error: {}",
                self.label,
                describe_stream_error(&e)
            );
            return self.close(None);
        }
        if stanza::is_stanza(&e) {
            return self.stanza(e);
        }
        let text = format!("unexpected <{}/> in {}", echo(&e.name), echo(&e.ns));
        self.close(Some(StreamError::text(
            StreamCondition::UnsupportedStanzaType,
            text,
        )))
    }

    /// XEP-0220 §2.2.1: the peer claims a domain; ask that domain's Authoritative Server.
    fn db_result(&mut self, e: Element) -> Vec<Action> {
        if e.attr("type").is_some() {
            return self.typed_answer(&e);
        }
        let (Some(remote), Some(local)) = (domain_attr(&e, "from"), domain_attr(&e, "to")) else {
            return self.close(Some(StreamError::text(
                StreamCondition::ImproperAddressing,
                "db:result needs valid 'from' and 'to'",
            )));
        };
        if let Some(out) = self.refuse_claim(&remote, &local) {
            return out;
        }
        let pair = (remote.clone(), local.clone());
        if self.verified.contains(&pair) {
            return answer(&local, &remote, Verdict::Valid);
        }
        if self.pending.contains(&pair) {
            log::debug!("{}: {remote} is already being verified", self.label);
            return Vec::new();
        }
        if let Some(condition) = self.no_room_for(&remote, &local) {
            return answer(&local, &remote, Verdict::Error(condition));
        }
        self.pending.push(pair);
        log::debug!("{}: verifying {remote}→{local}", self.label);
        vec![Action::Verify(VerifyRequest {
            local,
            remote,
            stream_id: self.id.clone(),
            key: e.text().trim().to_string(),
        })]
    }

    /// A typed `<db:result/>` or `<db:verify/>` from the peer. DB-16: without bidi none belongs
    /// on an inbound stream. BIDI-05: with bidi the stream carries our direction too, so it may
    /// carry answers, but only to requests sent on it (DB-07, DB-14, SEC-01); dialbackd sends
    /// none on an inbound stream (its keys go out on its own streams, its verifications on a
    /// dedicated connection), so each is unsolicited: it authorises nothing, and the stream
    /// goes on.
    fn typed_answer(&self, e: &Element) -> Vec<Action> {
        if self.bidi {
            log::debug!(
                "{}: dropping an unsolicited typed db:{} on a bidi stream (nothing was asked \
                 on it)",
                self.label,
                e.name
            );
        } else {
            log::debug!(
                "{}: ignoring a typed db:{} on an inbound stream",
                self.label,
                e.name
            );
        }
        Vec::new()
    }

    /// The dialback error (and what else to do) for a claim of `remote` towards `local` that is
    /// refused before any callback: a domain we do not host, one the `[policy]` lists refuse,
    /// dialback without the TLS the policy requires, or our own domain. `None`: go on.
    fn refuse_claim(&mut self, remote: &Domain, local: &Domain) -> Option<Vec<Action>> {
        let refuse = |c: StanzaCondition| Some(answer(local, remote, Verdict::Error(c)));
        if !self.ctx.config.is_local(local) {
            // DB-19: a dialback error, not a stream error.
            return refuse(StanzaCondition::ItemNotFound);
        }
        if let Err(why) = self.federates_with(remote) {
            static LOG: RateLimit = RateLimit::new(LOG_EVERY);
            warn_limited!(
                LOG,
                "{}: refusing dialback from {remote}: {why}",
                self.label
            );
            // XEP-0220 §2.5 `forbidden` for this pair alone, nothing verified (no callback,
            // SEC-11), the stream kept for other pairs (DB-18), as ejabberd answers a domain
            // its s2s_access refuses.
            return refuse(StanzaCondition::Forbidden);
        }
        if self.ctx.config.tls.require_encryption_for(remote) && !self.tls {
            log::info!(
                "{}: {remote} tried dialback without TLS and require_encryption is on",
                self.label
            );
            // XEP-0220 §2.5: policy-violation, TLS is required before dialback.
            let mut out = answer(
                local,
                remote,
                Verdict::Error(StanzaCondition::PolicyViolation),
            );
            out.extend(self.close_if_never_encrypted());
            return Some(out);
        }
        if self.ctx.config.is_local(remote) {
            log::warn!("{}: peer claims to be our own domain {remote}", self.label);
            return refuse(StanzaCondition::NotAcceptable);
        }
        if self.ctx.config.tls.external_required_for(remote) {
            log::info!(
                "{}: refusing dialback from {remote}: SASL EXTERNAL is required of it (auth = \"external\")",
                self.label
            );
            // SASL-01: the peer must prove its domain with its certificate; dialback, which
            // proves only control of DNS and the Authoritative Server, is not enough. XEP-0220
            // §2.5 policy-violation for this pair, as for dialback without the TLS required.
            return refuse(StanzaCondition::PolicyViolation);
        }
        None
    }

    /// The condition when this stream may not verify one more pair: `limits.pairs_per_stream`
    /// or `limits.pending_verifications_per_stream` (SEC-11). Nothing is verified then.
    fn no_room_for(&self, remote: &Domain, local: &Domain) -> Option<StanzaCondition> {
        let cap = self.ctx.config.limits.pairs_per_stream;
        if self.verified.len() + self.pending.len() >= cap {
            // XEP-0220 §2.5 resource-constraint: "cannot add another pair to this connection";
            // the peer may open a new connection for it.
            crate::metrics::METRICS.cap_hit(crate::metrics::Cap::PairsPerStream);
            static LOG: RateLimit = RateLimit::new(LOG_EVERY);
            warn_limited!(LOG,
                "{}: refusing {remote}→{local}: {cap} domain pairs on this stream (limits.pairs_per_stream)",
                self.label
            );
            return Some(StanzaCondition::ResourceConstraint);
        }
        if self.pending.len() >= self.ctx.config.limits.pending_verifications_per_stream {
            // SEC-11: bound the callbacks one stream can make us do.
            crate::metrics::METRICS.cap_hit(crate::metrics::Cap::PendingVerificationsPerStream);
            return Some(StanzaCondition::ResourceConstraint);
        }
        None
    }

    /// The `[policy]` lists say whether we take stanzas from the remote domain `remote`
    /// (our own domains are not theirs to judge: a peer claiming one gets `not-acceptable`).
    fn federates_with(&self, remote: &Domain) -> Result<(), crate::policy::Refusal> {
        if self.ctx.config.is_local(remote) {
            return Ok(());
        }
        self.ctx.config.federation.check(remote)
    }

    /// XEP-0220 §2.2.2: we are the Authoritative Server; recompute the key.
    fn db_verify(&mut self, e: Element) -> Vec<Action> {
        if e.attr("type").is_some() {
            return self.typed_answer(&e);
        }
        let (Some(from), Some(to), Some(id)) = (e.attr("from"), e.attr("to"), e.attr("id")) else {
            return self.close(Some(StreamError::text(
                StreamCondition::ImproperAddressing,
                "db:verify needs 'from', 'to' and 'id'",
            )));
        };
        // DB-32: the answer repeats all three, so each must be what the schema says (two
        // domains and a stream id) before anything of them goes back on the wire.
        let (Ok(to_domain), Ok(remote)) = (Domain::parse(to), Domain::parse(from)) else {
            return self.close(Some(StreamError::text(
                StreamCondition::ImproperAddressing,
                "db:verify needs valid 'from' and 'to' domains",
            )));
        };
        if !is_stream_id(id) {
            return self.close(Some(StreamError::text(
                StreamCondition::ImproperAddressing,
                "db:verify 'id' is not a stream id",
            )));
        }
        let local = Some(to_domain).filter(|d| self.ctx.config.is_local(d));
        let mut refused_for_tls = false;
        let verdict = match (&local, &remote) {
            // DB-22, XEP-0220 §2.5: item-not-found, the stream stays.
            (None, _) => Verdict::Error(StanzaCondition::ItemNotFound),
            (Some(_), r) if self.ctx.config.tls.require_encryption_for(r) && !self.tls => {
                log::info!(
                    "{}: {r} asked db:verify without TLS and require_encryption is on",
                    self.label
                );
                refused_for_tls = true;
                Verdict::Error(StanzaCondition::PolicyViolation)
            }
            (Some(l), r) => {
                if self
                    .ctx
                    .secret
                    .verify(r.as_str(), l.as_str(), id, &e.text())
                {
                    Verdict::Valid
                } else {
                    log::info!(
                        "{}: key from {r} for {l} (stream {}) is not ours: invalid",
                        self.label,
                        crate::logsafe::peer(id)
                    );
                    Verdict::Invalid
                }
            }
        };
        let mut out = vec![Action::Send(db_verify(
            to,
            from,
            id,
            DbBody::Verdict(&verdict),
        ))];
        if refused_for_tls {
            out.extend(self.close_if_never_encrypted());
        }
        out
    }

    /// After a `policy-violation` dialback error for lack of TLS: a pre-1.0 stream has no
    /// features, hence no STARTTLS (RFC 6120 §4.7.5, §5.3.1), and can never become encrypted.
    /// When it carries nothing else (no pair verified or pending), close it with the
    /// `policy-violation` stream error (RFC 6120 §4.9.3.14), as Prosody does for streams that
    /// authenticate without the encryption its policy requires (mod_s2s `make_authenticated`),
    /// rather than leave a peer that may not understand dialback errors (they postdate RFC
    /// 3920, XEP-0220 §2.5) waiting for its negotiation timeout.
    fn close_if_never_encrypted(&mut self) -> Vec<Action> {
        if !self.legacy || self.tls || !self.verified.is_empty() || !self.pending.is_empty() {
            return Vec::new();
        }
        self.close(Some(StreamError::text(
            StreamCondition::PolicyViolation,
            "encryption is required, and a stream without version='1.0' cannot negotiate TLS",
        )))
    }

    fn stanza(&mut self, e: Element) -> Vec<Action> {
        let addrs = match stanza::addresses(&e) {
            Ok(a) => a,
            Err(err) => {
                return self.close(Some(StreamError::text(
                    StreamCondition::ImproperAddressing,
                    err.to_string(),
                )))
            }
        };
        let pair = (addrs.from.domain, addrs.to.domain);
        if self.verified.contains(&pair) {
            return vec![Action::Deliver(e)];
        }
        let (remote, local) = pair;
        if self.verified.is_empty() {
            // DB-17: nothing is authorised yet.
            return self.close(Some(StreamError::text(
                StreamCondition::NotAuthorized,
                "dialback is not complete",
            )));
        }
        if !self.verified.iter().any(|(r, _)| *r == remote) {
            // SEC-10: a verified peer speaking for a domain it did not prove.
            return self.close(Some(StreamError::text(
                StreamCondition::InvalidFrom,
                format!("{} is not verified on this stream", echo(remote.as_str())),
            )));
        }
        self.close(Some(StreamError::text(
            StreamCondition::HostUnknown,
            format!(
                "{} is not verified for {} on this stream",
                echo(local.as_str()),
                echo(remote.as_str())
            ),
        )))
    }

    fn verified(&mut self, remote: Domain, local: Domain, verdict: Verdict) -> Vec<Action> {
        let pair = (remote.clone(), local.clone());
        let Some(pos) = self.pending.iter().position(|p| *p == pair) else {
            log::debug!(
                "{}: dropping an answer for {remote}→{local} nobody asked for",
                self.label
            );
            return Vec::new();
        };
        self.pending.swap_remove(pos);
        if matches!(self.state, State::Closed | State::Closing) {
            return Vec::new();
        }
        let answer = |v: &Verdict| Action::Send(db_result(&local, &remote, DbBody::Verdict(v)));
        let mut out = Vec::with_capacity(2);
        match verdict {
            Verdict::Valid => {
                log::info!("{}: {remote}→{local} verified by dialback", self.label);
                out.push(answer(&verdict));
                self.verified.push(pair);
                out.push(Action::Authenticated { local, remote });
            }
            Verdict::Invalid => {
                log::warn!(
                    "{}: dialback key for {remote} is invalid (its Authoritative Server says so)",
                    self.label
                );
                if self.verified.is_empty() && self.pending.is_empty() {
                    // DB-21: the first pair failed: `invalid`, and the stream must close.
                    out.push(answer(&verdict));
                    out.extend(self.close(None));
                } else {
                    // DB-15, DB-21, XEP-0220 §2.1.2 and §2.5: `invalid` would have to close
                    // the stream and lose the pairs already negotiated on it; the dialback
                    // error `forbidden` refuses this pair alone.
                    out.push(answer(&Verdict::Error(StanzaCondition::Forbidden)));
                }
            }
            Verdict::Error(cond) => {
                log::info!("{}: could not verify {remote}: {cond}", self.label);
                out.push(answer(&verdict));
            }
        }
        out
    }
}

/// True for a plausible stream id (XEP-0220 §6: an NMTOKEN; ours are 32 hex digits, Prosody's
/// 36-character UUIDs, ejabberd's up to 20 digits): 1 to 256 characters, none of them
/// whitespace or control characters.
fn is_stream_id(id: &str) -> bool {
    !id.is_empty()
        && id.chars().count() <= 256
        && !id.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// `condition (text)` of a received `<stream:error/>`, for logs.
pub(crate) fn describe_stream_error(e: &Element) -> String {
    let cond = e
        .elements()
        .find(|c| c.name != "text")
        .map(|c| crate::logsafe::peer(&c.name).to_string())
        .unwrap_or_else(|| StreamCondition::UndefinedCondition.to_string());
    match e.elements().find(|c| c.name == "text") {
        Some(t) => format!("{cond} ({})", crate::logsafe::peer(&t.text())),
        None => cond,
    }
}

/// Our typed `<db:result/>` for `remote`→`local` (DB-20, DB-27).
fn answer(local: &Domain, remote: &Domain, v: Verdict) -> Vec<Action> {
    vec![Action::Send(db_result(local, remote, DbBody::Verdict(&v)))]
}

#[path = "incoming_sasl.rs"]
mod sasl;

#[cfg(test)]
#[path = "incoming_tests.rs"]
mod tests;
