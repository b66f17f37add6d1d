//! Streams a peer opened to us: the **Receiving Server** role for its `<db:result/>`
//! (XEP-0220 §2.2.1) and the **Authoritative Server** role for its `<db:verify/>` (§2.2.2).
//!
//! In scope: header validation (RFC 6120 §4.7–4.9), features (STARTTLS, dialback with
//! `<errors/>`, DB-26), the dialback bookkeeping per domain pair (several pairs per stream,
//! DB-28), and the address checks on stanzas (DB-17, SEC-10, ADDR-01/02). Out of scope: asking
//! the Authoritative Server (the connection layer runs a verify connection when it sees
//! [`Action::Verify`] and reports back with [`Event::Verified`]).

use super::{
    db_result, db_verify, domain_attr, s2s_header, Action, Ctx, DbBody, Event, StreamError,
    Verdict, VerifyRequest,
};
use crate::domain::Domain;
use crate::ratelimit::{warn_limited, RateLimit, LOG_EVERY};
use crate::stanza;
use crate::xml::{
    Element, StreamHeader, DIALBACK_FEATURE_NS, DIALBACK_NS, SERVER_NS, STREAM_NS, TLS_NS,
};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    ExpectHeader,
    Open,
    AwaitTls,
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
        }
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

    /// The stream's name for log lines.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Feed one event; returns what to do, in order.
    pub fn handle(&mut self, ev: Event) -> Vec<Action> {
        match (self.state, ev) {
            (State::Closed, _) => Vec::new(),
            (State::ExpectHeader, Event::Header(h)) => self.expect_header(h),
            // ERR-01: answer with a header even when the header itself is what is wrong.
            (
                State::ExpectHeader,
                Event::Broken {
                    condition: Some(c),
                    reason,
                },
            ) => {
                log::info!("{}: bad stream header: {reason}", self.label);
                self.state = State::Closed;
                let id = (self.new_id)();
                vec![
                    Action::SendHeader(s2s_header(
                        self.ctx.config.domains.first(),
                        None,
                        Some(&id),
                    )),
                    Action::Close(Some(StreamError::new(c))),
                ]
            }
            (State::Open, Event::Element(e)) => self.open(e),
            (State::AwaitTls, Event::TlsEstablished) => {
                self.tls = true;
                self.state = State::ExpectHeader;
                Vec::new()
            }
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
                self.close(Some(StreamError::new("connection-timeout")))
            }
            (_, Event::Idle) => {
                log::info!("{}: idle, closing", self.label);
                self.close(None)
            }
            (_, Event::Shutdown) => self.close(Some(StreamError::new("system-shutdown"))),
            (state, ev) => {
                log::debug!("{}: ignoring {ev:?} in state {state:?}", self.label);
                Vec::new()
            }
        }
    }

    fn close(&mut self, err: Option<StreamError>) -> Vec<Action> {
        self.state = State::Closed;
        vec![Action::Close(err)]
    }

    fn refuse_header(&mut self, local: Option<&Domain>, err: StreamError) -> Vec<Action> {
        log::info!("{}: refusing stream: {err}", self.label);
        self.state = State::Closed;
        self.id = (self.new_id)();
        let from = local.or(self.ctx.config.domains.first());
        vec![
            Action::SendHeader(s2s_header(from, None, Some(&self.id))),
            Action::Close(Some(err)),
        ]
    }

    fn expect_header(&mut self, h: StreamHeader) -> Vec<Action> {
        if h.name != "stream" || h.ns != STREAM_NS {
            return self.refuse_header(None, StreamError::new("invalid-namespace"));
        }
        if h.default_ns.as_deref() != Some(SERVER_NS) {
            let text = format!(
                "expected the jabber:server namespace, got {:?}",
                h.default_ns.unwrap_or_default()
            );
            return self.refuse_header(None, StreamError::text("invalid-namespace", text));
        }
        let local = match h.to.as_deref().map(Domain::parse) {
            None => self
                .local
                .clone()
                .unwrap_or_else(|| self.ctx.config.domains[0].clone()),
            Some(Ok(d)) if self.ctx.config.is_local(&d) => d,
            Some(_) => {
                let text = format!("This host does not serve {}", h.to.unwrap_or_default());
                return self.refuse_header(None, StreamError::text("host-unknown", text));
            }
        };
        if !h.version.as_deref().is_some_and(|v| v.starts_with("1.")) {
            return self.refuse_header(
                Some(&local),
                StreamError::text("unsupported-version", "XMPP 1.0 streams only"),
            );
        }
        // STR-04: a restarted stream keeps its addresses.
        if self.local.as_ref().is_some_and(|l| *l != local) {
            return self.refuse_header(Some(&local), StreamError::new("improper-addressing"));
        }
        self.local = Some(local.clone());
        self.id = (self.new_id)();
        self.state = State::Open;
        let peer = h.from.as_deref().and_then(|f| Domain::parse(f).ok());
        if !self.label.contains('→') {
            let from = peer.as_ref().map_or("?", Domain::as_str);
            self.label = format!("{} {from}→{local}", self.label);
        }
        let mut features = Element::new("features", STREAM_NS);
        if self.ctx.tls_available && !self.tls {
            let mut starttls = Element::new("starttls", TLS_NS);
            if self.ctx.config.tls.require_encryption {
                starttls.push_child(Element::new("required", TLS_NS));
            }
            features.push_child(starttls);
        }
        // DB-26: offered before and after TLS, in every policy.
        features.push_child(
            Element::new("dialback", DIALBACK_FEATURE_NS)
                .with_child(Element::new("errors", DIALBACK_FEATURE_NS)),
        );
        vec![
            Action::SendHeader(s2s_header(
                Some(&local),
                peer.as_ref().map(Domain::as_str),
                Some(&self.id),
            )),
            Action::Send(features),
        ]
    }

    fn open(&mut self, e: Element) -> Vec<Action> {
        if e.is("starttls", TLS_NS) {
            if self.ctx.tls_available && !self.tls {
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
        let text = format!("unexpected <{}/> in {}", e.name, e.ns);
        self.close(Some(StreamError::text("unsupported-stanza-type", text)))
    }

    /// XEP-0220 §2.2.1: the peer claims a domain; ask that domain's Authoritative Server.
    fn db_result(&mut self, e: Element) -> Vec<Action> {
        if e.attr("type").is_some() {
            // DB-16 / SEC-01: a typed db:result on an inbound stream authorises nothing.
            log::debug!(
                "{}: ignoring a typed db:result on an inbound stream",
                self.label
            );
            return Vec::new();
        }
        let (Some(remote), Some(local)) = (domain_attr(&e, "from"), domain_attr(&e, "to")) else {
            return self.close(Some(StreamError::text(
                "improper-addressing",
                "db:result needs valid 'from' and 'to'",
            )));
        };
        let answer = |v: Verdict| {
            vec![Action::Send(db_result(
                &local,
                &remote,
                DbBody::Verdict(&v),
            ))]
        };
        if !self.ctx.config.is_local(&local) {
            // DB-19: a dialback error, not a stream error.
            return answer(Verdict::Error("item-not-found"));
        }
        if self.ctx.config.tls.require_encryption_for(&remote) && !self.tls {
            log::info!(
                "{}: {remote} tried dialback without TLS and require_encryption is on",
                self.label
            );
            return answer(Verdict::Error("policy-violation"));
        }
        if self.ctx.config.is_local(&remote) {
            log::warn!("{}: peer claims to be our own domain {remote}", self.label);
            return answer(Verdict::Error("not-acceptable"));
        }
        let pair = (remote.clone(), local.clone());
        if self.verified.contains(&pair) {
            return answer(Verdict::Valid);
        }
        if self.pending.contains(&pair) {
            log::debug!("{}: {remote} is already being verified", self.label);
            return Vec::new();
        }
        let cap = self.ctx.config.limits.pairs_per_stream;
        if self.verified.len() + self.pending.len() >= cap {
            // XEP-0220 §2.5 resource-constraint: "cannot add another pair to this connection";
            // the peer may open a new connection for it. Nothing is verified (no callback).
            static LOG: RateLimit = RateLimit::new(LOG_EVERY);
            warn_limited!(LOG,
                "{}: refusing {remote}→{local}: {cap} domain pairs on this stream (limits.pairs_per_stream)",
                self.label
            );
            return answer(Verdict::Error("resource-constraint"));
        }
        if self.pending.len() >= self.ctx.config.limits.pending_verifications_per_stream {
            // SEC-11: bound the callbacks one stream can make us do.
            return answer(Verdict::Error("resource-constraint"));
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

    /// XEP-0220 §2.2.2: we are the Authoritative Server; recompute the key.
    fn db_verify(&mut self, e: Element) -> Vec<Action> {
        if e.attr("type").is_some() {
            log::debug!(
                "{}: ignoring a typed db:verify on an inbound stream",
                self.label
            );
            return Vec::new();
        }
        let (Some(from), Some(to), Some(id)) = (e.attr("from"), e.attr("to"), e.attr("id")) else {
            return self.close(Some(StreamError::text(
                "improper-addressing",
                "db:verify needs 'from', 'to' and 'id'",
            )));
        };
        let local = Domain::parse(to)
            .ok()
            .filter(|d| self.ctx.config.is_local(d));
        let remote = Domain::parse(from).ok();
        let verdict = match (&local, &remote) {
            (None, _) => Verdict::Error("item-not-found"),
            (Some(_), None) => Verdict::Error("item-not-found"),
            (Some(_), Some(r)) if self.ctx.config.tls.require_encryption_for(r) && !self.tls => {
                log::info!(
                    "{}: {r} asked db:verify without TLS and require_encryption is on",
                    self.label
                );
                Verdict::Error("policy-violation")
            }
            (Some(l), Some(r)) => {
                if self
                    .ctx
                    .secret
                    .verify(r.as_str(), l.as_str(), id, &e.text())
                {
                    Verdict::Valid
                } else {
                    log::info!(
                        "{}: key from {r} for {l} (stream {id}) is not ours: invalid",
                        self.label
                    );
                    Verdict::Invalid
                }
            }
        };
        vec![Action::Send(db_verify(
            to,
            from,
            id,
            DbBody::Verdict(&verdict),
        ))]
    }

    fn stanza(&mut self, e: Element) -> Vec<Action> {
        let addrs = match stanza::addresses(&e) {
            Ok(a) => a,
            Err(err) => {
                return self.close(Some(StreamError::text(
                    "improper-addressing",
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
                "not-authorized",
                "dialback is not complete",
            )));
        }
        if !self.verified.iter().any(|(r, _)| *r == remote) {
            // SEC-10: a verified peer speaking for a domain it did not prove.
            return self.close(Some(StreamError::text(
                "invalid-from",
                format!("{remote} is not verified on this stream"),
            )));
        }
        self.close(Some(StreamError::text(
            "host-unknown",
            format!("{local} is not verified for {remote} on this stream"),
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
        if self.state == State::Closed {
            return Vec::new();
        }
        let mut out = vec![Action::Send(db_result(
            &local,
            &remote,
            DbBody::Verdict(&verdict),
        ))];
        match verdict {
            Verdict::Valid => {
                log::info!("{}: {remote}→{local} verified by dialback", self.label);
                self.verified.push(pair);
                out.push(Action::Authenticated { local, remote });
            }
            Verdict::Invalid => {
                log::warn!(
                    "{}: dialback key for {remote} is invalid (its Authoritative Server says so)",
                    self.label
                );
                // DB-21: the first pair failed: the stream must close.
                if self.verified.is_empty() && self.pending.is_empty() {
                    out.extend(self.close(None));
                }
            }
            Verdict::Error(cond) => {
                log::info!("{}: could not verify {remote}: {cond}", self.label);
            }
        }
        out
    }
}

/// `condition (text)` of a received `<stream:error/>`, for logs.
pub(crate) fn describe_stream_error(e: &Element) -> String {
    let cond = e
        .elements()
        .find(|c| c.name != "text")
        .map(|c| c.name.clone())
        .unwrap_or_else(|| "undefined-condition".into());
    match e.elements().find(|c| c.name == "text") {
        Some(t) => format!("{cond} ({})", t.text()),
        None => cond,
    }
}

#[cfg(test)]
#[path = "incoming_tests.rs"]
mod tests;
