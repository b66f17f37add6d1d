//! Target multiplexing on an outbound stream (XEP-0220 §2.6.2, DB-29): further domain pairs
//! carried by an established stream whose peer advertised dialback errors (`<errors/>` in its
//! `urn:xmpp:features:dialback` feature, §2.4.2).
//!
//! In scope: the pairs that join the stream ([`Event::Join`](crate::stream::Event::Join)), each
//! with its own state and FIFO: its `<db:result/>` (keyed with the stream's id, XEP-0185), its
//! queue until `type='valid'` (DB-05), its stanzas flushed on `valid` and bounced on `invalid`
//! (`internal-server-error`, DB-08) or `error` (`remote-server-timeout`, DB-09) or a timeout,
//! without touching the stream's other pairs; after an `invalid` the stream takes no new pair
//! (DB-08: the peer may close it). A pair still waiting when the stream ends is treated as a
//! dialback error (DB-06). Out of scope: which stream a pair joins (the connection layer and
//! the router decide, by the peer's address), and the clock (the connection layer reports
//! [`Event::JoinTimeout`](crate::stream::Event::JoinTimeout)).

use super::{Outgoing, State};
use crate::domain::Domain;
use crate::stanza::{self, Bounce};
use crate::stream::{bidi, db_result, Action, DbBody, StanzaCondition, StreamError, Verdict};
use crate::xml::{Element, DIALBACK_FEATURE_NS};
use std::collections::VecDeque;

/// Where a joined pair stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PairState {
    /// Our `<db:result/>` for it was sent; its stanzas queue.
    Pending,
    /// The peer said valid: its stanzas go straight out.
    Valid,
    /// It failed: its stanzas bounce with this, until the router routes them elsewhere.
    Failed(Bounce),
}

/// A pair carried besides the stream's own.
struct Joined {
    local: Domain,
    remote: Domain,
    state: PairState,
    queue: VecDeque<Element>,
    /// [`stanza::wire_size`] of the stanzas in `queue`.
    queue_bytes: usize,
}

/// The pairs a stream carries besides its own.
#[derive(Default)]
pub(super) struct Joins {
    pairs: Vec<Joined>,
    /// A joined pair was refused (`invalid`): no new pair on this stream (DB-08).
    refuse: bool,
}

impl Joins {
    /// Stanzas queued for pairs waiting for their answer.
    pub(super) fn queued(&self) -> usize {
        self.pairs.iter().map(|p| p.queue.len()).sum()
    }

    /// Their bytes.
    pub(super) fn queued_bytes(&self) -> usize {
        self.pairs.iter().map(|p| p.queue_bytes).sum()
    }

    /// Take every queued stanza (after an internal error).
    pub(super) fn take_queues(&mut self) -> Vec<Element> {
        let mut out = Vec::new();
        for p in &mut self.pairs {
            p.queue_bytes = 0;
            out.extend(p.queue.drain(..));
        }
        out
    }

    fn find(&self, local: &Domain, remote: &Domain) -> Option<usize> {
        self.pairs
            .iter()
            .position(|p| p.local == *local && p.remote == *remote)
    }
}

impl Outgoing {
    /// True when the peer's latest features advertised dialback errors (`<errors/>`, XEP-0220
    /// §2.4.2): only then may further target domains share the stream (DB-29).
    pub fn offers_errors(&self) -> bool {
        self.errors_offered
    }

    /// True when another pair may join the stream now: established, the peer offered dialback
    /// errors (DB-29), no joined pair was refused (DB-08), and fewer than
    /// `limits.pairs_per_stream` pairs are carried.
    pub fn accepts_pairs(&self) -> bool {
        self.state == State::Established
            && self.errors_offered
            && !self.joins.refuse
            && self.joins.pairs.len() + 1 < self.ctx.config.limits.pairs_per_stream
    }

    /// The pairs the stream carried besides its own, each with what its stanzas bounce with
    /// when it failed (`None`: it was verified, or never answered before the stream ended
    /// without a failure; its stanzas may go to a new stream).
    pub fn joined_pairs(&self) -> Vec<((Domain, Domain), Option<Bounce>)> {
        self.joins
            .pairs
            .iter()
            .map(|p| {
                let failure = match &p.state {
                    PairState::Failed(b) => Some(b.clone()),
                    _ => None,
                };
                ((p.local.clone(), p.remote.clone()), failure)
            })
            .collect()
    }

    /// The pairs joined to the stream and not failed: (local, remote, verified).
    pub fn joined_live(&self) -> impl Iterator<Item = (&Domain, &Domain, bool)> {
        self.joins.pairs.iter().filter_map(|p| match p.state {
            PairState::Pending => Some((&p.local, &p.remote, false)),
            PairState::Valid => Some((&p.local, &p.remote, true)),
            PairState::Failed(_) => None,
        })
    }

    /// Put `stanzas` back at the head of the stream's own queue, in order (a hand-over to
    /// another stream that could not be made).
    pub fn restore_queue(&mut self, stanzas: Vec<Element>) {
        for el in stanzas.into_iter().rev() {
            self.queue_bytes += stanza::wire_size(&el);
            self.queue.push_front(el);
        }
    }

    /// Read the dialback feature of the peer's latest features.
    pub(super) fn note_features(&mut self, features: &Element) {
        self.errors_offered = features
            .child("dialback", DIALBACK_FEATURE_NS)
            .is_some_and(|d| d.child("errors", DIALBACK_FEATURE_NS).is_some());
    }

    /// BIDI-03 on a bidi stream: `el` must be a stanza of the inverse of the stream's own pair,
    /// or of a joined pair the peer verified (DB-29); the stream error for it otherwise.
    pub(super) fn check_inverse(&self, el: &Element) -> Result<(), StreamError> {
        let own = bidi::check_inverse(el, &self.local, &self.remote);
        if own.is_err() {
            if let Ok(a) = stanza::addresses(el) {
                let joined = self.joins.find(&a.to.domain, &a.from.domain);
                if joined.is_some_and(|i| matches!(self.joins.pairs[i].state, PairState::Valid)) {
                    return Ok(());
                }
            }
        }
        own
    }

    /// The joined pair `el` belongs to, by its addresses.
    pub(super) fn joined_index(&self, el: &Element) -> Option<usize> {
        if self.joins.pairs.is_empty() {
            return None;
        }
        let a = stanza::addresses(el).ok()?;
        self.joins.find(&a.from.domain, &a.to.domain)
    }

    /// Carry (`local`, `remote`) on this stream too: send its `<db:result/>` and queue
    /// `stanzas` until the answer.
    pub(super) fn join(
        &mut self,
        local: Domain,
        remote: Domain,
        stanzas: Vec<Element>,
    ) -> Vec<Action> {
        if local == self.local && remote == self.remote {
            return stanzas.into_iter().flat_map(|el| self.stanza(el)).collect();
        }
        if self.state == State::Closed {
            // The stream ended before it took the pair: the stanzas go back to the router.
            return stanzas.into_iter().map(Action::Deliver).collect();
        }
        let i = match self.joins.find(&local, &remote) {
            // Already carried (waiting or verified): the stanzas follow the pair's own.
            Some(i) if !matches!(self.joins.pairs[i].state, PairState::Failed(_)) => {
                return self.joined_stanzas(i, stanzas);
            }
            // It failed before: a new key (DB-05: more keys MAY be sent).
            Some(i) => i,
            None => {
                self.joins.pairs.push(Joined {
                    local: local.clone(),
                    remote: remote.clone(),
                    state: PairState::Pending,
                    queue: VecDeque::new(),
                    queue_bytes: 0,
                });
                self.joins.pairs.len() - 1
            }
        };
        if self.state != State::Established || !self.errors_offered {
            // DB-29: never without <errors/> (the router only offers streams that have it).
            let why = Bounce::new(
                StanzaCondition::RemoteServerTimeout,
                format!("the stream to {} cannot carry {remote}", self.remote),
            );
            let p = &mut self.joins.pairs[i];
            p.queue.extend(stanzas);
            return self.joined_failed(i, why);
        }
        self.joins.pairs[i].state = PairState::Pending;
        log::info!(
            "{}: carrying {local}→{remote} on this stream too (target multiplexing): sending db:result",
            self.label
        );
        let key = self
            .ctx
            .secret
            .key(remote.as_str(), local.as_str(), &self.their_id);
        let mut out = vec![Action::Send(db_result(&local, &remote, DbBody::Key(&key)))];
        out.extend(self.joined_stanzas(i, stanzas));
        out
    }

    fn joined_stanzas(&mut self, i: usize, stanzas: Vec<Element>) -> Vec<Action> {
        stanzas
            .into_iter()
            .flat_map(|el| self.joined_stanza(i, el))
            .collect()
    }

    /// A stanza for joined pair `i`: queued, sent, bounced, or back to the router.
    pub(super) fn joined_stanza(&mut self, i: usize, el: Element) -> Vec<Action> {
        match &self.joins.pairs[i].state {
            PairState::Failed(b) => vec![Action::Bounce {
                stanzas: vec![el],
                condition: b.condition,
                text: b.text.clone(),
            }],
            // The stream is over: the router finds the pair a new one.
            _ if self.state == State::Closed => vec![Action::Deliver(el)],
            PairState::Valid => self.send_within_limit(vec![el]),
            PairState::Pending => {
                let p = &mut self.joins.pairs[i];
                super::enqueue(
                    (&mut p.queue, &mut p.queue_bytes),
                    el,
                    &self.ctx.config.limits,
                    &p.remote,
                    &self.label,
                )
            }
        }
    }

    /// A typed `<db:result/>` on the established stream: the answer for a joined pair that
    /// waits for one (DB-07: from its target, to its sender), or nothing we asked.
    pub(super) fn joined_result(&mut self, e: &Element) -> Vec<Action> {
        let from = e.attr("from").and_then(|f| Domain::parse(f).ok());
        let to = e.attr("to").and_then(|t| Domain::parse(t).ok());
        let i = match (to, from) {
            (Some(local), Some(remote)) => self.joins.find(&local, &remote),
            _ => None,
        };
        let (Some(i), Some(verdict)) = (i, Verdict::of(e)) else {
            log::debug!(
                "{}: ignoring a db:result that answers nothing we sent",
                self.label
            );
            return Vec::new();
        };
        if self.joins.pairs[i].state != PairState::Pending {
            log::debug!("{}: ignoring a second answer for a pair", self.label);
            return Vec::new();
        }
        let (local, remote) = {
            let p = &self.joins.pairs[i];
            (p.local.clone(), p.remote.clone())
        };
        match verdict {
            Verdict::Valid => {
                let p = &mut self.joins.pairs[i];
                p.state = PairState::Valid;
                p.queue_bytes = 0;
                let queued: Vec<Element> = p.queue.drain(..).collect();
                log::info!(
                    "{}: {local}→{remote} authenticated by dialback on this stream, {} queued stanzas sent",
                    self.label,
                    queued.len()
                );
                let mut out = vec![Action::Authenticated { local, remote }];
                out.extend(self.send_within_limit(queued));
                out
            }
            Verdict::Invalid => {
                // DB-08: refused; and no new pair on this stream, the peer may close it.
                self.joins.refuse = true;
                let why = format!("{remote} refused our dialback key");
                let why = Bounce::new(StanzaCondition::InternalServerError, why);
                self.joined_failed(i, why)
            }
            Verdict::Error(cond) => {
                // DB-09: not fatal for the stream.
                let why = format!("{remote} answered dialback with an error: {cond}");
                let why = Bounce::new(StanzaCondition::RemoteServerTimeout, why);
                self.joined_failed(i, why)
            }
        }
    }

    /// The joined pair (`local`, `remote`) was not answered in time (DB-05).
    pub(super) fn join_timeout(&mut self, local: &Domain, remote: &Domain) -> Vec<Action> {
        match self.joins.find(local, remote) {
            Some(i) if self.joins.pairs[i].state == PairState::Pending => {
                let why = format!("{remote} did not answer our dialback key in time");
                let why = Bounce::new(StanzaCondition::RemoteServerTimeout, why);
                self.joined_failed(i, why)
            }
            _ => Vec::new(),
        }
    }

    /// Joined pair `i` failed with `why`: bounce its queue; the router routes it elsewhere.
    fn joined_failed(&mut self, i: usize, why: Bounce) -> Vec<Action> {
        let p = &mut self.joins.pairs[i];
        log::warn!(
            "{}: {}→{}: {}; bouncing {} stanzas ({}); the stream stays for its other pairs",
            self.label,
            p.local,
            p.remote,
            why.text,
            p.queue.len(),
            why.condition
        );
        p.state = PairState::Failed(why.clone());
        p.queue_bytes = 0;
        let queued: Vec<Element> = p.queue.drain(..).collect();
        let mut out = Vec::new();
        if !queued.is_empty() {
            out.push(Action::Bounce {
                stanzas: queued,
                condition: why.condition,
                text: why.text.clone(),
            });
        }
        out.push(Action::PairFailed {
            local: p.local.clone(),
            remote: p.remote.clone(),
            bounce: why,
        });
        out
    }

    /// The stream is ending: a joined pair still waiting is treated as a dialback error
    /// (DB-06), its queue bounced with `remote-server-timeout`.
    pub(super) fn joins_end(&mut self, reason: &str) -> Vec<Action> {
        let mut out = Vec::new();
        for p in &mut self.joins.pairs {
            if p.state != PairState::Pending {
                continue;
            }
            let why = Bounce::new(StanzaCondition::RemoteServerTimeout, reason);
            p.state = PairState::Failed(why.clone());
            p.queue_bytes = 0;
            if !p.queue.is_empty() {
                out.push(Action::Bounce {
                    stanzas: p.queue.drain(..).collect(),
                    condition: why.condition,
                    text: why.text,
                });
            }
        }
        out
    }
}
