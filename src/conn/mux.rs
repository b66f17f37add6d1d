//! Target multiplexing for outbound streams (XEP-0220 §2.6.2, DB-29), the connection side.
//!
//! In scope: offering an established stream whose peer advertised dialback errors to further
//! pairs (and withdrawing it when it takes no more), handing a new pair's stream over to such a
//! stream when its target resolves to the same address — before it dials, so no connection is
//! made; only when the pair's own TLS policy accepts the shared stream (encryption required,
//! the certificate judged for the new target) —, the deadline of each joined pair's dialback,
//! and telling the router of a joined pair that succeeded or failed. Out of scope: the protocol
//! of the joined pairs (`stream::outgoing`), the tables (`router`).

use super::{Core, Event, Role, Stream};
use crate::domain::Domain;
use crate::router::SharedStream;
use crate::stanza::Bounce;
use crate::tls::CertJudgement;
use crate::xml::Element;
use std::net::SocketAddr;
use std::time::Instant;

/// What an outbound stream knows of its sharing.
#[derive(Default)]
pub(super) struct Mux {
    /// The address the stream is connected to.
    pub(super) addr: Option<SocketAddr>,
    /// The router offers the stream to further pairs.
    shared: bool,
    /// The joined pairs waiting for their answer, and until when.
    pending: Vec<(Instant, (Domain, Domain))>,
}

impl Stream {
    /// A pair handed over to this stream, with its stanzas so far.
    pub(super) fn joined(&mut self, local: Domain, remote: Domain, stanzas: Vec<Element>) {
        let until = Instant::now() + self.ctx.config.timeouts.dialback;
        self.mux
            .pending
            .push((until, (local.clone(), remote.clone())));
        self.feed(Event::Join {
            local,
            remote,
            stanzas,
        });
    }

    /// The pair (`local`, `remote`) was authenticated on this stream: its route is up; the
    /// stream may now carry other pairs too.
    pub(super) fn pair_up(&mut self, local: Domain, remote: Domain) {
        let key = (local, remote);
        if !matches!(self.role, Role::Outbound { .. }) {
            return;
        }
        self.router.outbound_up(&key, self.me.id());
        self.mux.pending.retain(|(_, k)| *k != key);
        self.offer();
    }

    /// A joined pair failed: its route backs off, the stream goes on for the others.
    pub(super) fn pair_failed(&mut self, local: Domain, remote: Domain, bounce: Bounce) {
        let key = (local, remote);
        self.mux.pending.retain(|(_, k)| *k != key);
        self.router.pair_failed(&key, &self.me, bounce);
        self.offer();
    }

    /// Offer the stream to further pairs while its core accepts them; withdraw it otherwise.
    fn offer(&mut self) {
        let Core::Out(c) = &self.core else { return };
        let accepts = c.accepts_pairs() && !self.done && self.clock.closing_until.is_none();
        match (accepts, self.mux.shared, self.mux.addr) {
            (true, false, Some(addr)) => {
                let info = self
                    .link
                    .as_ref()
                    .and_then(|l| l.tls())
                    .and_then(|s| s.info());
                self.router.share(SharedStream {
                    handle: self.me.clone(),
                    addr,
                    tls: self.link.as_ref().is_some_and(|l| l.tls().is_some()),
                    cert: info.and_then(|i| i.peer_cert),
                });
                self.mux.shared = true;
                log::debug!(
                    "{}: the peer offered dialback errors: other pairs for {addr} may share this stream",
                    self.core.label()
                );
            }
            (false, true, _) => {
                self.router.unshare(self.me.id());
                self.mux.shared = false;
            }
            _ => {}
        }
    }

    /// The earliest deadline of a joined pair's dialback.
    pub(super) fn join_deadline(&self) -> Option<Instant> {
        self.mux.pending.iter().map(|(t, _)| *t).min()
    }

    /// Joined pairs whose dialback took too long fail (DB-05).
    pub(super) fn join_timers(&mut self, now: Instant) {
        let (due, left): (Vec<_>, Vec<_>) =
            self.mux.pending.drain(..).partition(|(t, _)| *t <= now);
        self.mux.pending = left;
        for (_, (local, remote)) in due {
            self.feed(Event::JoinTimeout { local, remote });
        }
    }

    /// Before dialling `addr` for `remote`: hand the pair over to an established stream to the
    /// same address whose peer offered dialback errors (DB-29), if the pair's TLS policy accepts
    /// that stream. True when it was handed over: this stream ends without connecting.
    pub(super) fn try_join(&mut self, addr: SocketAddr, remote: &Domain) -> bool {
        let Role::Outbound { key, routed: true } = &self.role else {
            return false;
        };
        let key = key.clone();
        let ctx = self.ctx.clone();
        let policy = &ctx.config.tls;
        for s in self.router.shared_at(addr) {
            if !s.tls && policy.require_encryption_for(remote) {
                continue;
            }
            let refused = s.tls
                && self.tls.as_ref().is_some_and(|t| {
                    matches!(
                        t.judge(policy, remote, s.cert.as_ref()),
                        CertJudgement::Refused(_)
                    )
                });
            if refused {
                continue;
            }
            let Core::Out(c) = &mut self.core else {
                return false;
            };
            let held = c.take_queue();
            self.caps_after_feed();
            match self.router.join_shared(&key, &self.me, held, &s) {
                Ok(()) => {
                    log::info!(
                        "{}: {remote} is at {addr}, where stream #{} already carries traffic and its peer offered dialback errors: the pair joins it (target multiplexing, XEP-0220 §2.6.2)",
                        self.core.label(),
                        s.handle.id()
                    );
                    if let Role::Outbound { routed, .. } = &mut self.role {
                        *routed = false;
                    }
                    self.done = true;
                    return true;
                }
                Err(held) => {
                    if let Core::Out(c) = &mut self.core {
                        c.restore_queue(held);
                    }
                    self.caps_after_feed();
                }
            }
        }
        false
    }
}
