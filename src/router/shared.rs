//! Outbound streams that may carry further domain pairs (target multiplexing, XEP-0220 §2.6.2,
//! DB-29): established streams whose peer advertised dialback errors, by the address they are
//! connected to.
//!
//! In scope: the table of such streams (under its own lock, always taken after the routes lock
//! when both are held), the hand-over of a pair from the new stream that was about to dial the
//! same address to the shared one — the pair's stanzas, held and waiting, go over in order
//! ahead of anything newer, under the routes lock the senders take —, and the backoff of a
//! joined pair that failed while its stream stays up. Out of scope: resolving and judging the
//! address (the new stream's thread does that, `conn`), and the dialback itself (`stream`).

use super::{jittered, lock, Handle, Input, Route, Router};
use crate::domain::Domain;
use crate::stanza::Bounce;
use crate::tls::PeerCert;
use crate::xml::Element;
use std::net::SocketAddr;
use std::time::Instant;

/// An established outbound stream that may carry further pairs: its peer advertised dialback
/// errors (`<errors/>`).
#[derive(Clone, Debug)]
pub struct SharedStream {
    /// The stream's handle.
    pub handle: Handle,
    /// The address it is connected to.
    pub addr: SocketAddr,
    /// Whether it is encrypted.
    pub tls: bool,
    /// The certificate the peer presented, if any (a joining pair's policy judges it).
    pub cert: Option<PeerCert>,
}

impl Router {
    /// Offer the established stream `s` to pairs whose target resolves to `s.addr` (its peer
    /// advertised dialback errors). Nothing happens when the stream is closing already.
    pub fn share(&self, s: SharedStream) {
        let _routes = lock(&self.routes);
        if s.handle.inbox().is_closed() {
            return;
        }
        let mut shared = lock(&self.shared);
        let at = shared.entry(s.addr).or_default();
        if !at.iter().any(|x| x.handle.id() == s.handle.id()) {
            at.push(s);
        }
    }

    /// Stop offering the stream `id` for new pairs; whether it was offered.
    pub fn unshare(&self, id: u64) -> bool {
        let mut shared = lock(&self.shared);
        let mut found = false;
        shared.retain(|_, at| {
            let before = at.len();
            at.retain(|s| s.handle.id() != id);
            found |= at.len() != before;
            !at.is_empty()
        });
        found
    }

    /// The streams offered at `addr`, oldest first (a snapshot).
    pub fn shared_at(&self, addr: SocketAddr) -> Vec<SharedStream> {
        lock(&self.shared).get(&addr).cloned().unwrap_or_default()
    }

    /// Hand the pair `key` over from its new stream `from` (not connected) to the shared stream
    /// `to`: `held` (what `from`'s core had queued, oldest first) and then what waits in
    /// `from`'s inbox go to `to` as one [`Input::Join`], `from`'s inbox is closed and the
    /// pair's route points at `to`, all under the routes lock: every later stanza of the pair
    /// queues behind them. `Err(held)` when the hand-over cannot be made (`to` is no longer
    /// offered, or the route is not `from`'s); `from` then goes on alone.
    ///
    /// # Errors
    /// The held stanzas come back when nothing was handed over.
    pub fn join_shared(
        &self,
        key: &(Domain, Domain),
        from: &Handle,
        held: Vec<Element>,
        to: &SharedStream,
    ) -> Result<(), Vec<Element>> {
        let mut routes = lock(&self.routes);
        let ours = matches!(routes.get(key), Some(Route::Stream { handle, .. }) if handle.id() == from.id());
        let offered = lock(&self.shared)
            .get(&to.addr)
            .is_some_and(|at| at.iter().any(|s| s.handle.id() == to.handle.id()));
        // An outbound stream's inbox closes only under the routes lock (outbound_closing):
        // open now, it stays open until the Join is queued.
        if !ours || !offered || self.is_shutting_down() || to.handle.inbox().is_closed() {
            return Err(held);
        }
        let mut stanzas = held;
        stanzas.extend(from.close());
        let join = Input::Join {
            local: key.0.clone(),
            remote: key.1.clone(),
            stanzas,
        };
        if let Err(Input::Join { stanzas, .. }) = to.handle.inbox().send(join) {
            // Not reachable (see above); `from`'s inbox is closed, so it goes on with these.
            return Err(stanzas);
        }
        routes.insert(
            key.clone(),
            Route::Stream {
                handle: to.handle.clone(),
                up: false,
            },
        );
        Ok(())
    }

    /// The pair `key`, joined to the stream behind `handle`, failed (`bounce`) while the
    /// stream stays up for its other pairs: the pair enters its backoff window, so its
    /// stanzas bounce as its queue did instead of reaching the stream.
    pub fn pair_failed(&self, key: &(Domain, Domain), handle: &Handle, bounce: Bounce) {
        let mut routes = lock(&self.routes);
        if matches!(routes.get(key), Some(Route::Stream { handle: h, .. }) if h.id() == handle.id())
        {
            let until = Instant::now() + jittered(self.ctx().config.timeouts.retry);
            routes.insert(key.clone(), Route::Backoff { until, bounce });
        }
    }
}
