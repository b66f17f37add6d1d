//! TLS for a stream: the STARTTLS upgrade (RFC 6120 §5), direct TLS (XEP-0368), and the
//! certificate policy applied where it belongs (SEC-04).
//!
//! Server side the core learns of TLS at once (the handshake is driven by the reads and writes
//! that follow, and the core waits for the new header anyway); client side only once the
//! handshake is complete and the server's certificate was judged under the policy for the peer.

use super::{new_parser, Core, Event, Role, Stream};
use crate::domain::Domain;
use crate::stream::sasl::CertCheck;
use crate::stream::{ConnectError, StanzaCondition, Verdict, VerifyRequest};
use crate::tls::{CertJudgement, Session};
use std::io;
use std::time::Instant;

impl Stream {
    /// STARTTLS: after our `<proceed/>` (inbound) or the peer's (outbound).
    pub(super) fn start_tls(&mut self) {
        let session = match &self.core {
            Core::In(c) => self.server_session(c.named_local()),
            Core::Out(_) => self.client_session(false),
            Core::Comp(_) => Err(io::Error::other("no TLS on component streams")),
        };
        let session = match session {
            Ok(s) => s,
            Err(e) => {
                return self.feed(Event::Broken {
                    condition: None,
                    reason: format!("TLS failed: {e}"),
                })
            }
        };
        // The stream restarts: no parser state carries over (RFC 6120 §4.3.3).
        self.parser = new_parser(&self.ctx);
        if let Some(link) = &mut self.link {
            link.start_tls(session);
        }
        match self.core {
            Core::In(_) => self.tls_established(),
            _ => self.tls_pending = Some(Event::TlsEstablished),
        }
    }

    /// The stream restarts after SASL (RFC 6120 §4.3.3): a fresh parser, which takes over what
    /// was read beyond the element that ended the old stream, with the budget the stream's
    /// state calls for.
    pub(super) fn restart(&mut self) {
        let rest = self.parser.unparsed().to_vec();
        self.parser = new_parser(&self.ctx);
        self.parser.feed(&rest);
        self.sync_budget();
    }

    /// Inbound, before a header that arrives over TLS: tell the core whether the peer presented
    /// a certificate and how to ask what it proves (SASL EXTERNAL, SASL-01). The judgement
    /// stays here, in the TLS layer, under the policy the stream was created with.
    pub(super) fn tell_peer_certificate(&mut self) {
        if !matches!(self.core, Core::In(_)) {
            return;
        }
        let Some(session) = self.link.as_ref().and_then(|l| l.tls()) else {
            return;
        };
        if session.is_handshaking() {
            return;
        }
        let cert = session.info().and_then(|i| i.peer_cert);
        let check = match (cert, &self.tls) {
            (Some(cert), Some(tls)) => {
                let (tls, config) = (tls.clone(), self.ctx.config.clone());
                Some(CertCheck::new(move |domain| {
                    tls.proves(&config.tls, domain, &cert)
                }))
            }
            _ => None,
        };
        self.feed(Event::PeerCertificate(check));
    }

    /// The core learns that TLS is up; the restart discards the pairs verified in plaintext
    /// (RFC 6120 §5.4.3.3): the stream must authenticate again, within a new deadline.
    fn tls_established(&mut self) {
        self.feed(Event::TlsEstablished);
        if self.clock.deadline_fired && !self.core.is_open() && !self.done {
            self.clock.deadline = Instant::now() + self.ctx.config.timeouts.negotiation;
            self.clock.deadline_fired = false;
        }
    }

    /// Server side of TLS for a stream whose header named `to`: we present that domain's
    /// certificate, whatever the client's SNI (it may send none).
    pub(super) fn server_session(&self, to: Option<&Domain>) -> io::Result<Session> {
        let ctx = self
            .tls
            .as_ref()
            .ok_or_else(|| io::Error::other("TLS is not configured"))?;
        Session::accept(ctx.server_for(to))
    }

    /// Client side of TLS towards the remote domain, SNI = that domain.
    pub(super) fn client_session(&self, direct: bool) -> io::Result<Session> {
        let (local, remote) = self.domains();
        let ctx = self
            .tls
            .as_ref()
            .ok_or_else(|| io::Error::other("TLS is not configured"))?;
        let cfg = ctx
            .client(&local, direct)
            .ok_or_else(|| io::Error::other(format!("no TLS client configuration for {local}")))?;
        Session::connect(cfg, &remote)
    }

    /// (local, remote) of an outbound stream.
    pub(super) fn domains(&self) -> (Domain, Domain) {
        match &self.role {
            Role::Outbound { key, .. } => key.clone(),
            Role::Verify { local, remote, .. } => (local.clone(), remote.clone()),
            Role::Inbound { .. } | Role::Component { .. } => {
                unreachable!("only outbound streams dial")
            }
        }
    }

    /// Client side: once the handshake is complete, judge the certificate and tell the core.
    #[inline(never)] // (see `run`)
    pub(super) fn tls_progress(&mut self) {
        let Some(session) = self.link.as_ref().and_then(|l| l.tls()) else {
            return;
        };
        if self.tls_pending.is_none() || session.is_handshaking() || self.done {
            return;
        }
        let info = session.info();
        let Some(ev) = self.tls_pending.take() else {
            return;
        };
        let (_, remote) = self.domains();
        let label = self.core.label().to_string();
        let cert = info.as_ref().and_then(|i| i.peer_cert.as_ref());
        if let Some(c) = cert {
            log::debug!(
                "{label}: {remote} certificate fingerprint sha256:{}",
                c.spki_sha256_hex()
            );
        }
        let version = info.as_ref().map_or("TLS", |i| i.version.as_str());
        let judged = self
            .tls
            .as_ref()
            .map(|ctx| ctx.judge(&self.ctx.config.tls, &remote, cert));
        match judged {
            Some(CertJudgement::Refused(why)) => {
                crate::metrics::METRICS.tls_failure(crate::metrics::Side::Client);
                log::warn!("{label}: {why}");
                let reason = format!("TLS with {remote}: {why}");
                return self.tls_failed(ev, reason);
            }
            Some(CertJudgement::Accepted(what)) => log::info!("{label}: {version} with {what}"),
            Some(CertJudgement::Trusted) | None => {
                log::info!("{label}: {version} with a valid certificate for {remote}")
            }
        }
        match ev {
            Event::TlsEstablished => self.tls_established(),
            ev => self.feed(ev),
        }
    }

    /// The client handshake failed (or the certificate was refused) while the core waited
    /// for `ev`.
    pub(super) fn tls_failed(&mut self, ev: Event, reason: String) {
        match ev {
            Event::Connected { .. } => {
                self.feed(Event::ConnectFailed(ConnectError::Unreachable(reason)))
            }
            _ => self.feed(Event::Broken {
                condition: None,
                reason,
            }),
        }
    }

    /// XEP-0344 and the certificate policy, judged against the `from` of this db:result
    /// (SEC-04): `Some` when the certificate decides, `None` to ask the Authoritative Server.
    pub(super) fn verify_by_certificate(&self, req: &VerifyRequest) -> Option<Verdict> {
        let session = self.link.as_ref()?.tls()?;
        let ctx = self.tls.as_ref()?;
        let cert = session.info().and_then(|i| i.peer_cert);
        match ctx.judge(&self.ctx.config.tls, &req.remote, cert.as_ref()) {
            CertJudgement::Trusted => {
                log::info!(
                    "{}: certificate of {} is valid for it (pkix): verified without a callback",
                    self.core.label(),
                    req.remote
                );
                Some(Verdict::Valid)
            }
            CertJudgement::Refused(why) => {
                log::warn!("{}: {why}", self.core.label());
                Some(Verdict::Error(StanzaCondition::NotAuthorized))
            }
            CertJudgement::Accepted(what) => {
                log::debug!("{}: {what}", self.core.label());
                None
            }
        }
    }
}
