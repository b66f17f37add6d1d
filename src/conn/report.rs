//! What a stream tells the status listener and the metrics: its [`StreamInfo`] kept up to date
//! when its state, its domain pairs or its TLS change (checked once per turn of the loop, by
//! cheap comparisons), its last activity and core queue as atomics, and the counts of the
//! events only the stream sees: TLS handshakes and their failures, dialback verdicts, SASL
//! EXTERNAL outcomes, bidi negotiated.
//!
//! [`StreamInfo`]: crate::status::StreamInfo

use super::{Core, Role, Stream};
use crate::metrics::{Role as DbRole, Side, Way, METRICS};
use crate::status::{Direction, Pair, StreamState};
use crate::stream::sasl::SASL_NS;
use crate::stream::{Event, Verdict};
use crate::xml::{Element, DIALBACK_NS};
use std::net::SocketAddr;

/// Where the stream's TLS stands, as last seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum TlsSeen {
    #[default]
    None,
    Handshaking,
    Done,
}

/// What was last published, to publish again only on a change.
#[derive(Debug, Default)]
pub(super) struct Published {
    /// State, verified pairs, pairs being verified, bidi, a pair authorised by SASL EXTERNAL.
    key: Option<(StreamState, usize, usize, bool, bool)>,
    tls: TlsSeen,
    /// Bidi negotiated was counted.
    bidi_counted: bool,
    /// The outcome of our SASL EXTERNAL attempt (outbound) was counted.
    external_counted: bool,
}

impl Stream {
    /// Name the stream's kind in its record.
    pub(super) fn report_start(&self) {
        let direction = match self.role {
            Role::Inbound { .. } => Direction::S2sIn,
            Role::Component { .. } => Direction::Component,
            Role::Outbound { .. } => Direction::S2sOut,
            Role::Verify { .. } => Direction::Verify,
        };
        self.me.info().update(|d| d.direction = direction);
    }

    /// The stream's peer is at `addr` (known at accept, or once an outbound stream connected).
    pub(super) fn report_peer(&self, addr: SocketAddr) {
        self.me.info().update(|d| d.peer = Some(addr));
    }

    /// Bring the record up to date (each turn of the loop; the lock only on a change).
    #[inline(never)] // (see `run`)
    pub(super) fn publish(&mut self) {
        let info = self.me.info();
        info.touch(self.clock.last_activity);
        if let Core::Out(c) = &self.core {
            info.set_core_queued(c.queued());
        }
        self.watch_tls();
        let state = if self.done || self.clock.closing_until.is_some() {
            StreamState::Closing
        } else if self.core.is_open() {
            StreamState::Open
        } else {
            StreamState::Negotiating
        };
        let (verified, pending) = match &self.core {
            Core::In(c) => (c.verified_pairs().len(), c.pending_pairs().len()),
            Core::Out(c) => c.joined_live().fold((0, 0), |(v, p), (_, _, up)| {
                (v + usize::from(up), p + usize::from(!up))
            }),
            Core::Comp(_) => (0, 0),
        };
        let (bidi, external) = self.watch_auth();
        let key = Some((state, verified, pending, bidi, external));
        if key == self.published.key {
            return;
        }
        self.published.key = key;
        let pairs = self.pairs(state);
        self.me.info().update(|d| {
            d.state = state;
            d.pairs = pairs;
            d.bidi = bidi;
        });
    }

    /// Whether bidi was negotiated on the stream, and whether SASL EXTERNAL authorised a pair
    /// on it; counts bidi once, and the outcome of our own EXTERNAL attempt once (the peer's
    /// attempts are counted as we answer them, [`count_sent`](Self::count_sent)).
    fn watch_auth(&mut self) -> (bool, bool) {
        let (bidi, way, external) = match &self.core {
            Core::In(c) => (c.is_bidi(), Way::Inbound, c.external_pair().is_some()),
            Core::Out(c) => {
                let outcome = c.sasl_external();
                if let (Some(ok), false) = (outcome, self.published.external_counted) {
                    self.published.external_counted = true;
                    METRICS.sasl_external(Way::Outbound, ok);
                }
                (c.is_bidi(), Way::Outbound, outcome == Some(true))
            }
            Core::Comp(_) => return (false, false),
        };
        if bidi && !self.published.bidi_counted {
            self.published.bidi_counted = true;
            METRICS.bidi(way);
        }
        (bidi, external)
    }

    /// The stream's domain pairs, in the direction stanzas travel.
    fn pairs(&self, state: StreamState) -> Vec<Pair> {
        let pair = |from: &crate::domain::Domain, to: &crate::domain::Domain, verified| Pair {
            from: from.clone(),
            to: to.clone(),
            verified,
            external: false,
        };
        match (&self.core, &self.role) {
            (Core::In(c), _) => {
                let verified = c.verified_pairs().iter().map(|p| Pair {
                    external: c.external_pair() == Some(p),
                    ..pair(&p.0, &p.1, true)
                });
                let pending = c.pending_pairs().iter().map(|(r, l)| pair(r, l, false));
                verified.chain(pending).collect()
            }
            (Core::Comp(c), _) => c.domain().map(|d| pair(d, d, true)).into_iter().collect(),
            (_, Role::Outbound { key, .. }) => {
                let up = self.core.is_open() || state == StreamState::Open;
                let mut pairs = vec![pair(&key.0, &key.1, up)];
                // Pairs carried too (target multiplexing), always by dialback.
                if let Core::Out(c) = &self.core {
                    pairs[0].external = c.sasl_external() == Some(true);
                    pairs.extend(c.joined_live().map(|(l, r, v)| pair(l, r, v)));
                }
                pairs
            }
            (_, Role::Verify { local, remote, .. }) => vec![pair(local, remote, false)],
            _ => Vec::new(),
        }
    }

    fn side(&self) -> Side {
        match self.core {
            Core::Out(_) => Side::Client,
            _ => Side::Server,
        }
    }

    /// Count a TLS handshake once it completed, and note the version.
    fn watch_tls(&mut self) {
        if self.published.tls == TlsSeen::Done {
            return;
        }
        let Some(session) = self.link.as_ref().and_then(|l| l.tls()) else {
            return;
        };
        if session.is_handshaking() {
            self.published.tls = TlsSeen::Handshaking;
            return;
        }
        self.published.tls = TlsSeen::Done;
        METRICS.tls_handshake(self.side());
        let version = session.info().map(|i| i.version);
        self.me.info().update(|d| d.tls = version);
    }

    /// The stream ends: a TLS handshake still under way failed; an EXTERNAL outcome or bidi
    /// not yet seen by [`publish`](Self::publish) is counted.
    pub(super) fn publish_end(&mut self) {
        self.watch_tls();
        self.watch_auth();
        if self.published.tls == TlsSeen::Handshaking {
            METRICS.tls_failure(self.side());
        }
        self.me.info().update(|d| d.state = StreamState::Closing);
    }

    /// Count the verdict in a peer's answer to our `<db:result/>`.
    pub(super) fn count_received(&self, ev: &Event) {
        if let (Event::Element(e), Role::Outbound { .. }) = (ev, &self.role) {
            if e.is("result", DIALBACK_NS) {
                if let Some(v) = Verdict::of(e) {
                    METRICS.dialback(DbRole::Initiating, &v);
                }
            }
        }
    }

    /// Count the verdict in our answer to a peer's `<db:result/>` or `<db:verify/>`, or the
    /// outcome of its SASL EXTERNAL attempt (`<success/>`, `<failure/>`).
    pub(super) fn count_sent(&self, el: &Element) {
        if !matches!(self.core, Core::In(_)) {
            return;
        }
        if el.ns == SASL_NS && matches!(el.name.as_str(), "success" | "failure") {
            return METRICS.sasl_external(Way::Inbound, el.name == "success");
        }
        if el.ns != DIALBACK_NS {
            return;
        }
        let role = match el.name.as_str() {
            "result" => DbRole::Receiving,
            "verify" => DbRole::Authoritative,
            _ => return,
        };
        if let Some(v) = Verdict::of(el) {
            METRICS.dialback(role, &v);
        }
    }
}
