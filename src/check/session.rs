//! Steps 3 and 4 of the check: one server-to-server stream to the domain, driven by the
//! daemon's own protocol core ([`Outgoing`], the Initiating Server) in a simple blocking loop:
//! the header, STARTTLS when offered (or direct TLS), the certificate judged under the
//! configuration's policy, then the real `<db:result/>` with the XEP-0185 key of the configured
//! secret, and the peer's verdict. What the peer showed on the way is recorded in
//! [`Observed`] for the report.

use super::cert::Roots;
use super::dns::Candidate;
use super::wire::{Wire, WireError};
use crate::config::Config;
use crate::domain::Domain;
use crate::keys::DialbackSecret;
use crate::stream::incoming::describe_stream_error;
use crate::stream::outgoing::{Outgoing, Purpose};
use crate::stream::{Action, ConnectError, Ctx, Event, Verdict};
use crate::tls::{judge, CertJudgement, HandshakeInfo};
use crate::xml::{Element, Limits, StreamEvent, DIALBACK_NS, STREAM_CLOSE, STREAM_NS, TLS_NS};
use std::sync::Arc;
use std::time::Instant;

/// Most events one check stream handles (a peer cannot keep it going with junk).
const MAX_EVENTS: usize = 64;

/// The TLS client configurations the check uses.
pub struct ClientTls {
    /// For STARTTLS (no ALPN).
    pub starttls: Arc<rustls::ClientConfig>,
    /// For direct TLS (ALPN `xmpp-server`).
    pub direct: Arc<rustls::ClientConfig>,
}

/// Which wait ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before our `<db:result/>` was sent (`timeouts.negotiation`).
    Negotiation,
    /// Waiting for the answer to it (`timeouts.dialback`).
    Dialback,
}

/// What the stream showed.
#[derive(Debug, Default)]
pub struct Observed {
    /// The address was a direct-TLS target.
    pub direct_tls: bool,
    /// The peer answered with a pre-1.0 stream header (no features, no STARTTLS).
    pub legacy: bool,
    /// Whether the features before TLS offered `<starttls/>`; `None` when none came.
    pub starttls_offered: Option<bool>,
    /// The `<starttls/>` offered carried `<required/>`.
    pub starttls_required: bool,
    /// The TLS handshake: what it established, or why it failed; `None` when not tried.
    pub tls: Option<Result<HandshakeInfo, String>>,
    /// The configuration's certificate policy refused the certificate: why.
    pub cert_refused: Option<String>,
    /// Our `<db:result/>` went out.
    pub db_sent: bool,
    /// The configuration has no dialback secret: the round trip was not tried.
    pub no_secret: bool,
    /// The peer's typed `<db:result/>` for our pair.
    pub verdict: Option<Verdict>,
    /// A wait ran out.
    pub timed_out: Option<Phase>,
    /// The peer's `<stream:error/>`, in words.
    pub stream_error: Option<String>,
    /// Why the stream ended before `valid`, in words.
    pub failure: Option<String>,
}

/// What one check stream needs.
pub struct Dialer<'a> {
    /// The configuration (timeouts, limits, TLS policy).
    pub config: &'a Arc<Config>,
    /// TLS for the stream.
    pub tls: &'a ClientTls,
    /// Trust anchors for judging the certificate.
    pub roots: &'a Roots,
    /// The hosted domain the dialback is for (`--from`).
    pub from: &'a Domain,
    /// The domain checked.
    pub domain: &'a Domain,
}

/// What to do after carrying out a batch of actions.
enum Next {
    /// Read the peer's next event.
    Read,
    /// Feed this event at once (after a TLS handshake).
    Feed(Event),
    /// The stream is over.
    Done,
}

impl Dialer<'_> {
    /// Open a stream to `cand` and go as far as the peer's dialback verdict.
    pub fn run(&self, cand: &Candidate) -> Observed {
        let t = &self.config.timeouts;
        let start = Instant::now();
        let limits = Limits {
            max_stanza_bytes: self.config.limits.stanza_size,
            max_depth: self.config.limits.depth,
        };
        let mut obs = Observed {
            direct_tls: cand.direct_tls,
            ..Observed::default()
        };
        let mut wire = match Wire::connect(cand.addr, start + t.connect, limits) {
            Ok(w) => w,
            Err(e) => {
                obs.failure = Some(format!("connecting to {}: {e}", cand.addr));
                return obs;
            }
        };
        wire.set_deadline(start + t.negotiation);
        let mut core = self.core(cand);
        let mut ev = if cand.direct_tls {
            self.handshake(&mut wire, &mut obs, true)
        } else {
            Event::Connected { tls: false }
        };
        for _ in 0..MAX_EVENTS {
            match self.carry_out(core.handle(ev), &mut wire, &mut obs, start) {
                Next::Feed(e) => ev = e,
                Next::Done => break,
                Next::Read if core.is_closed() => break,
                Next::Read => ev = self.read(&mut wire, &mut obs),
            }
        }
        if obs.verdict != Some(Verdict::Valid) && obs.failure.is_none() {
            obs.failure = core.failure().map(|b| b.text.clone());
        }
        wire.shutdown();
        obs
    }

    /// The daemon's Initiating Server core for (`from`, `domain`). TLS counts as available
    /// whether or not the configuration has certificates: the check looks at the peer's TLS
    /// either way (without a certificate of ours when the configuration has none).
    fn core(&self, cand: &Candidate) -> Outgoing {
        let ctx = Arc::new(Ctx {
            config: self.config.clone(),
            // Without a configured secret no key is ever sent (see `carry_out`).
            secret: DialbackSecret::from_secret(
                self.config.dialback_secret.as_deref().unwrap_or_default(),
            ),
            tls_available: true,
        });
        let label = format!("check {}→{} [{}]", self.from, self.domain, cand.addr);
        Outgoing::new(
            ctx,
            label,
            self.from.clone(),
            self.domain.clone(),
            Purpose::Pair,
            cand.direct_tls,
        )
    }

    /// Carry out the core's actions in order.
    fn carry_out(
        &self,
        actions: Vec<Action>,
        wire: &mut Wire,
        obs: &mut Observed,
        start: Instant,
    ) -> Next {
        for action in actions {
            let sent = match action {
                Action::SendHeader(h) => wire.send(&h.to_bytes()),
                Action::Send(el) => {
                    if el.is("result", DIALBACK_NS) {
                        if self.config.dialback_secret.is_none() {
                            obs.no_secret = true;
                            close(wire, None, self.config);
                            return Next::Done;
                        }
                        obs.db_sent = true;
                        let t = &self.config.timeouts;
                        wire.set_deadline((start + t.negotiation).min(Instant::now() + t.dialback));
                    }
                    wire.send(&el.to_bytes())
                }
                Action::StartTls => return Next::Feed(self.handshake(wire, obs, false)),
                Action::Authenticated { .. } => {
                    close(wire, None, self.config);
                    return Next::Done;
                }
                Action::Close(err) => {
                    close(wire, err.map(|e| e.to_element()), self.config);
                    return Next::Done;
                }
                _ => Ok(()),
            };
            if let Err(e) = sent {
                obs.failure = Some(format!("sending to {}: {e}", self.domain));
                return Next::Done;
            }
        }
        Next::Read
    }

    /// The TLS handshake, and the certificate judged as the daemon judges it; the event for
    /// the core (TLS up, or the stream broken).
    fn handshake(&self, wire: &mut Wire, obs: &mut Observed, direct: bool) -> Event {
        let cfg = if direct {
            self.tls.direct.clone()
        } else {
            self.tls.starttls.clone()
        };
        let failed = |reason: String| {
            if direct {
                Event::ConnectFailed(ConnectError::Unreachable(reason))
            } else {
                Event::Broken {
                    condition: None,
                    reason,
                }
            }
        };
        match wire.start_tls(cfg, self.domain) {
            Ok(info) => {
                let store = self.roots.store.as_ref().ok();
                let verdict = judge(
                    &self.config.tls,
                    store,
                    self.domain,
                    info.peer_cert.as_ref(),
                );
                obs.tls = Some(Ok(info));
                if let CertJudgement::Refused(why) = verdict {
                    obs.cert_refused = Some(why.clone());
                    return failed(why);
                }
                if direct {
                    Event::Connected { tls: true }
                } else {
                    Event::TlsEstablished
                }
            }
            Err(why) => {
                obs.tls = Some(Err(why.clone()));
                failed(format!("TLS: {why}"))
            }
        }
    }

    /// The peer's next event for the core, noting what the report needs on the way.
    fn read(&self, wire: &mut Wire, obs: &mut Observed) -> Event {
        let broken = |reason: String| Event::Broken {
            condition: None,
            reason,
        };
        match wire.next_event() {
            Ok(StreamEvent::Header(h)) => {
                let v1 = h.version.as_deref().and_then(crate::stream::parse_version);
                obs.legacy |= !matches!(v1, Some((major, _)) if major >= 1);
                Event::Header(h)
            }
            Ok(StreamEvent::Element(e)) => {
                self.observe(&e, obs);
                Event::Element(e)
            }
            Ok(StreamEvent::Close) => Event::Close,
            Err(WireError::Timeout) => {
                let phase = if obs.db_sent {
                    Phase::Dialback
                } else {
                    Phase::Negotiation
                };
                obs.timed_out = Some(phase);
                Event::Timeout
            }
            Err(WireError::Xml(e)) => Event::Broken {
                condition: e.condition(),
                reason: format!("bad XML from {}: {e}", self.domain),
            },
            Err(e) => broken(e.to_string()),
        }
    }

    fn observe(&self, e: &Element, obs: &mut Observed) {
        if e.is("features", STREAM_NS) && obs.tls.is_none() && obs.starttls_offered.is_none() {
            let starttls = e.child("starttls", TLS_NS);
            obs.starttls_offered = Some(starttls.is_some());
            obs.starttls_required = starttls.is_some_and(|s| s.child("required", TLS_NS).is_some());
        } else if e.is("result", DIALBACK_NS)
            && e.attr("from") == Some(self.domain.as_str())
            && e.attr("to") == Some(self.from.as_str())
        {
            if let Some(v) = Verdict::of(e) {
                obs.verdict = Some(v);
            }
        } else if e.is("error", STREAM_NS) {
            obs.stream_error = Some(describe_stream_error(e));
        }
    }
}

/// Close our side: the stream error if any, `</stream:stream>`, then wait (bounded by
/// `timeouts.close`) for the peer's close.
fn close(wire: &mut Wire, error: Option<Element>, config: &Config) {
    if let Some(e) = error {
        let _ = wire.send(&e.to_bytes());
    }
    if wire.send(STREAM_CLOSE).is_err() {
        return;
    }
    wire.set_deadline(Instant::now() + config.timeouts.close);
    for _ in 0..MAX_EVENTS {
        if matches!(wire.next_event(), Ok(StreamEvent::Close) | Err(_)) {
            return;
        }
    }
}
