//! What the status listener shows of one live stream: a small record each stream's [`Handle`]
//! carries, which the stream's thread updates when something changes (its state, its domain
//! pairs, TLS) and, through atomics, as it goes (last activity, stanzas its core holds).
//!
//! [`Handle`]: crate::inbox::Handle

use crate::domain::Domain;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What kind of stream this is, as the metrics and the status table name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A peer connected to us (we are its Receiving and Authoritative Server).
    S2sIn,
    /// We connected to a peer for a domain pair (Initiating Server).
    S2sOut,
    /// A dedicated connection asking a peer's Authoritative Server about a key.
    Verify,
    /// An XEP-0114 component.
    Component,
}

impl Direction {
    /// Every direction, in the order metrics list them.
    pub const ALL: [Direction; 4] = [
        Direction::S2sIn,
        Direction::S2sOut,
        Direction::Verify,
        Direction::Component,
    ];

    /// The name in metrics labels and the status table.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::S2sIn => "s2s_in",
            Direction::S2sOut => "s2s_out",
            Direction::Verify => "verify",
            Direction::Component => "component",
        }
    }
}

/// Where a stream is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamState {
    /// Connecting, TLS, dialback or the component handshake: nothing authenticated yet.
    Negotiating,
    /// Authenticated: carrying stanzas.
    Open,
    /// We sent `</stream:stream>` (or the stream ended) and are waiting to let go.
    Closing,
}

impl StreamState {
    /// Every state, in the order metrics list them.
    pub const ALL: [StreamState; 3] = [
        StreamState::Negotiating,
        StreamState::Open,
        StreamState::Closing,
    ];

    /// The name in metrics labels and the status table.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Negotiating => "negotiating",
            StreamState::Open => "open",
            StreamState::Closing => "closing",
        }
    }
}

/// One domain pair of a stream, in the direction stanzas travel (`from` → `to`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// The sending domain.
    pub from: Domain,
    /// The receiving domain.
    pub to: Domain,
    /// Dialback (or the certificate) authorised it; false while it is being checked.
    pub verified: bool,
    /// SASL EXTERNAL authorised it (XEP-0178) rather than dialback.
    pub external: bool,
}

/// What changes only at a stream's state changes (behind one lock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detail {
    /// What kind of stream it is.
    pub direction: Direction,
    /// Where it is in its life.
    pub state: StreamState,
    /// The peer's address, once known (an outbound stream learns it when connected).
    pub peer: Option<SocketAddr>,
    /// Its domain pairs (a component: its domain, as `to`).
    pub pairs: Vec<Pair>,
    /// The TLS version once a handshake completed; `None` for a plaintext stream.
    pub tls: Option<String>,
    /// XEP-0288 bidi was negotiated on it: stanzas travel both ways.
    pub bidi: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub struct StreamInfo {
    started: Instant,
    /// Milliseconds from `started` to the last traffic.
    active_ms: AtomicU64,
    /// Stanzas the stream's core holds (an outbound pair's queue while dialback runs).
    core_queued: AtomicUsize,
    detail: Mutex<Detail>,
}

impl Default for StreamInfo {
    fn default() -> StreamInfo {
        StreamInfo::new(Direction::S2sIn)
    }
}

impl StreamInfo {
    /// A record for a stream starting now.
    pub fn new(direction: Direction) -> StreamInfo {
        StreamInfo {
            started: Instant::now(),
            active_ms: AtomicU64::new(0),
            core_queued: AtomicUsize::new(0),
            detail: Mutex::new(Detail {
                direction,
                state: StreamState::Negotiating,
                peer: None,
                pairs: Vec::new(),
                tls: None,
                bidi: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Detail> {
        // Every update replaces whole fields: a panic elsewhere leaves it consistent.
        self.detail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of what changes at state changes.
    pub fn detail(&self) -> Detail {
        self.lock().clone()
    }

    /// Change what changes at state changes.
    pub fn update(&self, f: impl FnOnce(&mut Detail)) {
        f(&mut self.lock());
    }

    /// The stream's direction and state (for the metrics, without copying the rest).
    pub fn kind_and_state(&self) -> (Direction, StreamState) {
        let d = self.lock();
        (d.direction, d.state)
    }

    /// How long the stream has existed.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// How long since its last traffic.
    pub fn idle(&self) -> Duration {
        let active = Duration::from_millis(self.active_ms.load(Ordering::Relaxed));
        self.age().saturating_sub(active)
    }

    /// Its last traffic was at `at`.
    pub fn touch(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.started).as_millis();
        self.active_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Stanzas its core holds now.
    pub fn set_core_queued(&self, n: usize) {
        self.core_queued.store(n, Ordering::Relaxed);
    }

    /// Stanzas its core holds.
    pub fn core_queued(&self) -> usize {
        self.core_queued.load(Ordering::Relaxed)
    }
}
