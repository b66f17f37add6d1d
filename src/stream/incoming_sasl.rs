//! SASL EXTERNAL on inbound streams (RFC 6120 §6, XEP-0178 §3; standards.md SASL-01): we are the
//! receiving server of the peer's `<auth/>`.
//!
//! EXTERNAL is offered in the features after TLS when the peer presented a certificate. The
//! authorization identity is the stream header's `from` (an empty response, `=`) or must equal
//! it (XEP-0178 §3, as Prosody checks); the certificate must prove that domain under its
//! certificate policy (`verify = "pkix"` or pins; the TLS layer judges, the core gets the
//! verdict through [`CertCheck`]). Success authorises the pair (identity, our domain) and
//! restarts the stream (a new id and features, STR-03, STR-04); failure answers `<failure/>`
//! and keeps the stream open so that the peer can fall back to dialback on it (Prosody and
//! ejabberd do).

use super::Incoming;
use crate::domain::Domain;
use crate::stream::sasl::{self, CertCheck, SaslCondition, SASL_NS};
use crate::stream::{Action, StreamCondition, StreamError};
use crate::xml::Element;

/// How many `<auth/>` attempts one stream may make (RFC 6120 §6.4.5: a reasonable number of
/// retries); each costs a certificate check.
const MAX_ATTEMPTS: u8 = 3;

/// Where the SASL negotiation of an inbound stream stands.
#[derive(Debug, Default)]
pub(super) struct InboundSasl {
    /// What the TLS layer says about the peer's certificate (`None`: none presented, or no TLS).
    pub(super) cert: Option<CertCheck>,
    /// We sent an empty challenge for a missing initial response and wait for `<response/>`.
    awaiting_response: bool,
    /// The domain SASL authenticated on this stream.
    pub(super) done: Option<Domain>,
    attempts: u8,
}

impl InboundSasl {
    /// Whether the features we send now offer EXTERNAL: after TLS, with a certificate, before
    /// SASL succeeded.
    pub(super) fn offer(&self, tls: bool) -> bool {
        tls && self.cert.is_some() && self.done.is_none()
    }
}

impl Incoming {
    /// The pair (remote, local) SASL EXTERNAL authorised on this stream, if any; the other
    /// verified pairs were verified by dialback. (EXTERNAL is refused while any pair is verified
    /// or pending, so its pair is the first verified one.)
    pub fn external_pair(&self) -> Option<&(Domain, Domain)> {
        let identity = self.sasl.done.as_ref()?;
        self.verified.first().filter(|(r, _)| r == identity)
    }

    /// A SASL element on an open stream.
    pub(super) fn sasl(&mut self, e: &Element) -> Vec<Action> {
        if matches!(e.name.as_str(), "auth" | "response") && e.elements().next().is_some() {
            // RFC 6120 §6.4.2: base64 character data only.
            self.sasl.awaiting_response = false;
            return sasl_failure(SaslCondition::MalformedRequest, None);
        }
        match e.name.as_str() {
            "auth" => self.sasl_auth(e),
            "response" if self.sasl.awaiting_response => {
                self.sasl.awaiting_response = false;
                self.sasl_decide(&e.text())
            }
            "abort" if self.sasl.awaiting_response => {
                self.sasl.awaiting_response = false;
                sasl_failure(SaslCondition::Aborted, None)
            }
            _ => self.close(Some(StreamError::text(
                StreamCondition::UnsupportedStanzaType,
                format!("unexpected SASL <{}/>", crate::stanza::echo(&e.name)),
            ))),
        }
    }

    fn sasl_auth(&mut self, e: &Element) -> Vec<Action> {
        self.sasl.awaiting_response = false;
        if !self.tls {
            return sasl_failure(SaslCondition::EncryptionRequired, None);
        }
        let offered = self.sasl.offer(self.tls) && !self.legacy;
        if !offered || e.attr("mechanism") != Some(sasl::EXTERNAL) {
            // RFC 6120 §6.4.5: a mechanism we did not offer.
            return sasl_failure(SaslCondition::InvalidMechanism, None);
        }
        if !self.verified.is_empty() || !self.pending.is_empty() {
            // SASL restarts the stream: not while dialback pairs are negotiated on it.
            let text = "dialback is already in use on this stream";
            return sasl_failure(SaslCondition::NotAuthorized, Some(text));
        }
        let text = e.text();
        if text.trim().is_empty() {
            // RFC 6120 §6.4.2: no initial response: ask for it with an empty challenge.
            self.sasl.awaiting_response = true;
            return vec![Action::Send(sasl::challenge())];
        }
        self.sasl_decide(&text)
    }

    /// Judge one initial response: the authorization identity and the certificate.
    fn sasl_decide(&mut self, response: &str) -> Vec<Action> {
        self.sasl.attempts += 1;
        if self.sasl.attempts > MAX_ATTEMPTS {
            log::info!("{}: too many SASL attempts, closing", self.label);
            return self.close(Some(StreamError::text(
                StreamCondition::PolicyViolation,
                "too many SASL attempts",
            )));
        }
        let identity = match self.sasl_identity(response) {
            Ok(d) => d,
            Err((cond, why)) => {
                log::info!(
                    "{}: SASL EXTERNAL refused ({cond}: {why}); dialback may follow",
                    self.label
                );
                return sasl_failure(cond, Some(&why));
            }
        };
        let Some(local) = self.local.clone() else {
            return sasl_failure(SaslCondition::NotAuthorized, None);
        };
        if let Err(why) = self.sasl_may_authenticate(&identity) {
            log::info!(
                "{}: SASL EXTERNAL for {identity} failed: {why}; dialback may follow",
                self.label
            );
            return sasl_failure(SaslCondition::NotAuthorized, Some(&why));
        }
        log::info!(
            "{}: {identity}→{local} authenticated by SASL EXTERNAL",
            self.label
        );
        self.sasl.done = Some(identity.clone());
        self.verified.push((identity.clone(), local.clone()));
        // RFC 6120 §6.4.6: the peer restarts the stream; our new header (new id, STR-03) and
        // features answer its new header.
        self.state = super::State::ExpectHeader;
        self.header_sent = false;
        vec![
            Action::Send(sasl::success()),
            Action::Restart,
            Action::Authenticated {
                local,
                remote: identity,
            },
        ]
    }

    /// The authorization identity of a response: the header's `from` for an empty one (XEP-0178
    /// §3), else the decoded domain, which must be that `from` when the header named one.
    fn sasl_identity(&self, response: &str) -> Result<Domain, (SaslCondition, String)> {
        let authzid = sasl::decode_response(response)
            .map_err(|c| (c, "the response is not base64 of a domain".to_string()))?;
        let invalid = |why: String| (SaslCondition::InvalidAuthzid, why);
        let claimed = if authzid.is_empty() {
            None
        } else {
            let d = Domain::parse(&authzid).map_err(|_| {
                invalid(format!(
                    "'{}' is not a domain",
                    crate::stanza::echo(&authzid)
                ))
            })?;
            Some(d)
        };
        match (claimed, &self.peer) {
            (None, Some(from)) => Ok(from.clone()),
            (Some(d), Some(from)) if d == *from => Ok(d),
            (Some(d), Some(from)) => {
                Err(invalid(format!("{d} is not the stream's 'from' ({from})")))
            }
            (Some(d), None) => Ok(d),
            (None, None) => Err(invalid(
                "no authorization identity and no 'from' in the stream header".into(),
            )),
        }
    }

    /// Whether `identity` may authenticate here, and whether the certificate proves it.
    fn sasl_may_authenticate(&self, identity: &Domain) -> Result<(), String> {
        if self.ctx.config.is_local(identity) {
            return Err(format!("{identity} is our own domain"));
        }
        if let Err(why) = self.federates_with(identity) {
            log::info!(
                "{}: refusing SASL EXTERNAL for {identity}: {why}",
                self.label
            );
            return Err(format!("{identity} is not accepted here"));
        }
        match &self.sasl.cert {
            Some(c) => c.check(identity),
            None => Err("no certificate was presented".into()),
        }
    }
}

/// `<failure/>` with `cond`; the stream stays open (dialback may follow).
fn sasl_failure(cond: SaslCondition, text: Option<&str>) -> Vec<Action> {
    vec![Action::Send(sasl::failure(cond, text))]
}

/// Whether `e` is a SASL element (RFC 6120 §6.4).
pub(super) fn is_sasl(e: &Element) -> bool {
    e.ns == SASL_NS
}
