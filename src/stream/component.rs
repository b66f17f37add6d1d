//! XEP-0114 external components (`jabber:component:accept`).
//!
//! In scope: the component's stream header (its `to` must be a configured component domain),
//! the handshake (`hex(SHA-1(stream id + secret))`, compared in constant time), registration
//! with the router (one connection per component domain: a second gets `conflict`), and the
//! `from` check on the stanzas it sends (`invalid-from`). A wrong handshake or an unknown
//! component domain closes the stream at once and is reported by [`Component::auth_failed`]
//! (the connection layer counts failures per address). Out of scope: routing.

use super::incoming::describe_stream_error;
use super::{Action, Ctx, Event, StanzaCondition, StreamCondition, StreamError};
use crate::domain::{Domain, Jid};
use crate::stanza::{self, echo};
use crate::xml::{Element, StreamHeader, COMPONENT_NS, STREAM_NS};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    ExpectHeader,
    ExpectHandshake,
    AwaitRegistration,
    Open,
    Closed,
}

/// The core of one component stream.
pub struct Component {
    ctx: Arc<Ctx>,
    label: String,
    state: State,
    id: String,
    domain: Option<Domain>,
    auth_failed: bool,
    /// Our header went out: a stream error must follow it (ERR-01, RFC 6120 §4.9.1.1).
    header_sent: bool,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `hex(SHA-1(stream_id ‖ secret))` (XEP-0114 §3).
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{stream_id}{secret}").as_bytes(),
    );
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Component {
    /// A new component stream; `id` is the stream id we will send.
    pub fn new(ctx: Arc<Ctx>, label: String, id: String) -> Component {
        Component {
            ctx,
            label,
            state: State::ExpectHeader,
            id,
            domain: None,
            auth_failed: false,
            header_sent: false,
        }
    }

    /// True once the component failed to authenticate: a wrong handshake, or a header for a
    /// domain no component is configured for.
    pub fn auth_failed(&self) -> bool {
        self.auth_failed
    }

    /// The component's domain once it authenticated.
    pub fn domain(&self) -> Option<&Domain> {
        self.domain
            .as_ref()
            .filter(|_| matches!(self.state, State::Open | State::Closed))
    }

    /// The stream's name for log lines.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Feed one event; returns what to do, in order.
    pub fn handle(&mut self, ev: Event) -> Vec<Action> {
        match (self.state, ev) {
            (State::Open, Event::Stanza(el)) => vec![Action::Send(el)],
            (_, Event::Stanza(el)) => vec![Action::Bounce {
                stanzas: vec![el],
                condition: StanzaCondition::ServiceUnavailable,
                text: "the component is not connected".into(),
            }],
            (State::Closed, _) => Vec::new(),
            (State::ExpectHeader, Event::Header(h)) => self.expect_header(h),
            (
                State::ExpectHeader,
                Event::Broken {
                    condition: Some(c), ..
                },
            ) => self.close(Some(StreamError::new(c))),
            (State::ExpectHandshake, Event::Element(e)) if e.is("handshake", COMPONENT_NS) => {
                self.handshake(&e)
            }
            (State::AwaitRegistration, Event::Registered(true)) => {
                self.state = State::Open;
                log::info!(
                    "{}: component {} connected",
                    self.label,
                    self.domain.as_ref().map(Domain::as_str).unwrap_or("")
                );
                vec![Action::Send(Element::new("handshake", COMPONENT_NS))]
            }
            (State::AwaitRegistration, Event::Registered(false)) => {
                self.close(Some(StreamError::text(
                    StreamCondition::Conflict,
                    "this component is already connected",
                )))
            }
            (State::Open, Event::Element(e)) if stanza::is_stanza(&e) => self.stanza(e),
            (_, Event::Element(e)) if e.is("error", STREAM_NS) => {
                log::warn!(
                    "{}: component sent a stream error: {}",
                    self.label,
                    describe_stream_error(&e)
                );
                self.close(None)
            }
            (State::Open, Event::Element(e)) => self.close(Some(StreamError::text(
                StreamCondition::UnsupportedStanzaType,
                format!("unexpected <{}/>", echo(&e.name)),
            ))),
            (_, Event::Element(_)) => self.close(Some(StreamError::text(
                StreamCondition::NotAuthorized,
                "handshake first",
            ))),
            (_, Event::Close) => self.close(None),
            (_, Event::Broken { condition, reason }) => {
                log::info!("{}: stream broken: {reason}", self.label);
                self.close(condition.map(StreamError::new))
            }
            (State::Open, Event::Timeout) => Vec::new(),
            (_, Event::Timeout) => {
                self.close(Some(StreamError::new(StreamCondition::ConnectionTimeout)))
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

    /// End the stream; our header goes first when it has not gone out yet (ERR-01, RFC 6120
    /// §4.9.1.1: a stream error is always a child of our stream).
    fn close(&mut self, err: Option<StreamError>) -> Vec<Action> {
        let mut out = Vec::with_capacity(2);
        if err.is_some() && !self.header_sent {
            self.header_sent = true;
            out.push(Action::SendHeader(self.header(None)));
        }
        self.state = State::Closed;
        out.push(Action::Close(err));
        out
    }

    fn header(&self, from: Option<&Domain>) -> StreamHeader {
        StreamHeader {
            name: "stream".into(),
            ns: STREAM_NS.into(),
            default_ns: Some(COMPONENT_NS.into()),
            db_ns: false,
            from: from.map(|d| d.to_string()),
            id: Some(self.id.clone()),
            ..StreamHeader::default()
        }
    }

    fn expect_header(&mut self, h: StreamHeader) -> Vec<Action> {
        if h.name != "stream" || h.ns != STREAM_NS || h.default_ns.as_deref() != Some(COMPONENT_NS)
        {
            return self.close(Some(StreamError::new(StreamCondition::InvalidNamespace)));
        }
        let domain = h.to.as_deref().and_then(|t| Domain::parse(t).ok());
        let known = domain
            .as_ref()
            .is_some_and(|d| self.ctx.config.components.iter().any(|c| c.domain == *d));
        if !known {
            self.auth_failed = true;
            let text = format!(
                "no component is configured for {}",
                echo(&h.to.unwrap_or_default())
            );
            return self.close(Some(StreamError::text(StreamCondition::HostUnknown, text)));
        }
        self.domain = domain;
        self.state = State::ExpectHandshake;
        self.header_sent = true;
        vec![Action::SendHeader(self.header(self.domain.as_ref()))]
    }

    fn handshake(&mut self, e: &Element) -> Vec<Action> {
        let Some(domain) = self.domain.clone() else {
            return self.close(None);
        };
        let Some(conf) = self
            .ctx
            .config
            .components
            .iter()
            .find(|c| c.domain == domain)
        else {
            return self.close(None);
        };
        let want = handshake_digest(&self.id, &conf.secret);
        let got = e.text().trim().to_ascii_lowercase();
        if !constant_time_eq(want.as_bytes(), got.as_bytes()) {
            log::warn!("{}: component {domain} sent a wrong handshake", self.label);
            self.auth_failed = true;
            self.domain = None;
            return self.close(Some(StreamError::text(
                StreamCondition::NotAuthorized,
                "wrong handshake",
            )));
        }
        self.state = State::AwaitRegistration;
        vec![Action::Register(domain)]
    }

    fn stanza(&mut self, e: Element) -> Vec<Action> {
        let Some(domain) = &self.domain else {
            return self.close(None);
        };
        let from_ok = e
            .attr("from")
            .and_then(|f| Jid::parse(f).ok())
            .is_some_and(|j| j.domain == *domain);
        if !from_ok {
            let text = format!(
                "stanzas from this component must come from {}",
                echo(domain.as_str())
            );
            return self.close(Some(StreamError::text(StreamCondition::InvalidFrom, text)));
        }
        if let Err(err) = stanza::addresses(&e) {
            return self.close(Some(StreamError::text(
                StreamCondition::ImproperAddressing,
                err.to_string(),
            )));
        }
        vec![Action::Deliver(e)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::testutil::{ctx, el};

    fn open(c: &mut Component) {
        let h = StreamHeader {
            name: "stream".into(),
            ns: STREAM_NS.into(),
            default_ns: Some(COMPONENT_NS.into()),
            to: Some("echo.a.test".into()),
            ..StreamHeader::default()
        };
        let out = c.handle(Event::Header(h));
        assert!(
            matches!(&out[..], [Action::SendHeader(h)] if h.from.as_deref() == Some("echo.a.test") && h.id.as_deref() == Some("cid"))
        );
    }

    #[test]
    fn handshake_registers_and_acknowledges() {
        let mut c = Component::new(ctx(), "t".into(), "cid".into());
        open(&mut c);
        let hs = Element::new("handshake", COMPONENT_NS)
            .with_text(handshake_digest("cid", "echosecret"));
        assert_eq!(
            c.handle(Event::Element(hs)),
            vec![Action::Register(Domain::parse("echo.a.test").unwrap())]
        );
        assert_eq!(
            c.handle(Event::Registered(true)),
            vec![Action::Send(Element::new("handshake", COMPONENT_NS))]
        );
        let m =
            el("<message xmlns='jabber:component:accept' from='bot@echo.a.test' to='x@b.test'/>");
        assert_eq!(
            c.handle(Event::Element(m.clone())),
            vec![Action::Deliver(m)]
        );
    }

    #[test]
    fn wrong_handshake_is_not_authorized() {
        let mut c = Component::new(ctx(), "t".into(), "cid".into());
        open(&mut c);
        let hs =
            Element::new("handshake", COMPONENT_NS).with_text(handshake_digest("cid", "wrong"));
        let out = c.handle(Event::Element(hs));
        assert!(
            matches!(&out[..], [Action::Close(Some(e))] if e.condition == StreamCondition::NotAuthorized)
        );
        assert!(c.auth_failed(), "reported for the per-address count");
        // The stream is over: a second guess on it is not even looked at.
        let again = Element::new("handshake", COMPONENT_NS)
            .with_text(handshake_digest("cid", "echosecret"));
        assert!(c.handle(Event::Element(again)).is_empty());
        assert!(c.domain().is_none());
    }

    #[test]
    fn second_connection_gets_conflict() {
        let mut c = Component::new(ctx(), "t".into(), "cid".into());
        open(&mut c);
        let hs = Element::new("handshake", COMPONENT_NS)
            .with_text(handshake_digest("cid", "echosecret"));
        c.handle(Event::Element(hs));
        let out = c.handle(Event::Registered(false));
        assert!(
            matches!(&out[..], [Action::Close(Some(e))] if e.condition == StreamCondition::Conflict)
        );
    }

    #[test]
    fn spoofed_from_is_invalid_from() {
        let mut c = Component::new(ctx(), "t".into(), "cid".into());
        open(&mut c);
        let hs = Element::new("handshake", COMPONENT_NS)
            .with_text(handshake_digest("cid", "echosecret"));
        c.handle(Event::Element(hs));
        c.handle(Event::Registered(true));
        let m = el("<message xmlns='jabber:component:accept' from='bot@a.test' to='x@b.test'/>");
        let out = c.handle(Event::Element(m));
        assert!(
            matches!(&out[..], [Action::Close(Some(e))] if e.condition == StreamCondition::InvalidFrom)
        );
    }

    #[test]
    fn unknown_component_domain_is_host_unknown() {
        let mut c = Component::new(ctx(), "t".into(), "cid".into());
        let h = StreamHeader {
            name: "stream".into(),
            ns: STREAM_NS.into(),
            default_ns: Some(COMPONENT_NS.into()),
            to: Some("other.a.test".into()),
            ..StreamHeader::default()
        };
        let out = c.handle(Event::Header(h));
        assert!(
            matches!(&out[..], [Action::SendHeader(_), Action::Close(Some(e))] if e.condition == StreamCondition::HostUnknown)
        );
        assert!(c.auth_failed(), "guessing domains counts as a failure");
    }

    #[test]
    fn stanza_before_handshake_is_not_authorized() {
        let mut c = Component::new(ctx(), "t".into(), "cid".into());
        open(&mut c);
        let m =
            el("<message xmlns='jabber:component:accept' from='bot@echo.a.test' to='x@b.test'/>");
        let out = c.handle(Event::Element(m));
        assert!(
            matches!(&out[..], [Action::Close(Some(e))] if e.condition == StreamCondition::NotAuthorized)
        );
    }

    /// ERR-01 (RFC 6120 §4.9.1.1): a timeout or shutdown before the component's header is
    /// complete still sends our header before the error.
    #[test]
    fn err01_timeout_and_shutdown_before_the_header_send_ours_first() {
        for (ev, cond) in [
            (Event::Timeout, StreamCondition::ConnectionTimeout),
            (Event::Shutdown, StreamCondition::SystemShutdown),
        ] {
            let mut c = Component::new(ctx(), "t".into(), "cid".into());
            let out = c.handle(ev);
            assert!(
                matches!(&out[..], [Action::SendHeader(h), Action::Close(Some(e))]
                    if h.id.as_deref() == Some("cid") && e.condition == cond),
                "{out:?}"
            );
        }
        let mut c = Component::new(ctx(), "t".into(), "cid".into());
        open(&mut c);
        assert!(matches!(
            &c.handle(Event::Timeout)[..],
            [Action::Close(Some(_))]
        ));
    }

    #[test]
    fn handshake_digest_is_hex_sha1_of_id_and_secret() {
        // Cross-checked with Python's hashlib.sha1(b"3BF96D32secret").
        assert_eq!(
            handshake_digest("3BF96D32", "secret"),
            "b09ea9b3b7f586be8a08d0a3dd7466f110aeb136"
        );
    }
}
