//! Small rate limiters for caps: log lines and failures per address.
//!
//! In scope: [`RateLimit`], at most one log line per period for one cap, with the number of
//! events suppressed since the last line (so a flood of refusals is one line every few seconds,
//! not one per refusal); and [`FailureWindow`], failures counted per key (an address) within a
//! window, after which the key is refused for a while (the component handshake guesses). Out of
//! scope: what is capped (see `router`, `net`, `stream`).
//!
//! Both take the time as an argument, so they are tested without sleeping; `warn_limited!`
//! reads the clock itself because it is only about logging, never about protocol behaviour.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often each cap may log a line by default.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// At most one event per `every` passes; the others are counted.
pub struct RateLimit {
    every: Duration,
    state: Mutex<State>,
}

struct State {
    /// When the next line may be logged (`None`: at once).
    next: Option<Instant>,
    /// Events suppressed since the last line.
    suppressed: u64,
}

impl RateLimit {
    /// A limiter passing one event per `every`; usable in a `static`.
    pub const fn new(every: Duration) -> RateLimit {
        RateLimit {
            every,
            state: Mutex::new(State {
                next: None,
                suppressed: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is two plain numbers: a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An event happened at `now`: `Some(n)` when it may be logged, `n` being the number of
    /// events suppressed since the last one logged; `None` when it is suppressed (and counted).
    pub fn check(&self, now: Instant) -> Option<u64> {
        let mut st = self.lock();
        if st.next.is_some_and(|t| now < t) {
            st.suppressed += 1;
            return None;
        }
        st.next = Some(now + self.every);
        Some(std::mem::take(&mut st.suppressed))
    }
}

/// `warn!` through a [`RateLimit`]: logged (with the caller's module as target) unless a line
/// went out less than a period ago; the line says how many were suppressed in between.
/// `warn_limited!(LIMIT, "format", args…)`.
macro_rules! warn_limited {
    ($limit:expr, $($arg:tt)+) => {
        if let Some(n) = $limit.check(std::time::Instant::now()) {
            if n == 0 {
                log::warn!($($arg)+);
            } else {
                log::warn!("{} ({n} more since the last such line)", format_args!($($arg)+));
            }
        }
    };
}
pub(crate) use warn_limited;

/// Failures per key within a window; `max` of them within `window` of the first refuse the
/// key for `window` from the last one. The table is pruned of expired entries as it grows, so
/// its size stays proportional to the keys that failed recently.
pub struct FailureWindow<K> {
    max: u32,
    window: Duration,
    entries: HashMap<K, Entry>,
}

struct Entry {
    since: Instant,
    count: u32,
    banned_until: Option<Instant>,
}

impl Entry {
    fn expired(&self, now: Instant, window: Duration) -> bool {
        match self.banned_until {
            Some(t) => now >= t,
            None => now >= self.since + window,
        }
    }
}

/// Prune expired entries once the table holds this many.
const PRUNE_AT: usize = 1024;

impl<K: Hash + Eq + Clone> FailureWindow<K> {
    /// `max` failures within `window` refuse a key for `window`.
    pub fn new(max: u32, window: Duration) -> FailureWindow<K> {
        FailureWindow {
            max: max.max(1),
            window,
            entries: HashMap::new(),
        }
    }

    /// New limits (a configuration reload); the failures counted so far are kept.
    pub fn set_limits(&mut self, max: u32, window: Duration) {
        self.max = max.max(1);
        self.window = window;
    }

    /// True while `key` is refused.
    pub fn is_banned(&mut self, key: &K, now: Instant) -> bool {
        match self.entries.get(key) {
            Some(e) if e.expired(now, self.window) => {
                self.entries.remove(key);
                false
            }
            Some(e) => e.banned_until.is_some(),
            None => false,
        }
    }

    /// Count a failure of `key`; true when this failure makes it refused.
    pub fn failed(&mut self, key: &K, now: Instant) -> bool {
        if self.entries.len() >= PRUNE_AT {
            let w = self.window;
            self.entries.retain(|_, e| !e.expired(now, w));
        }
        let window = self.window;
        let e = self.entries.entry(key.clone()).or_insert(Entry {
            since: now,
            count: 0,
            banned_until: None,
        });
        if e.expired(now, window) {
            *e = Entry {
                since: now,
                count: 0,
                banned_until: None,
            };
        }
        e.count = e.count.saturating_add(1);
        if e.count >= self.max {
            let was = e.banned_until.is_some();
            e.banned_until = Some(now + window);
            return !was;
        }
        false
    }

    /// How many keys the table holds (for tests and bounds).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no key has failed recently.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn one_event_per_period_passes_and_the_rest_are_counted() {
        let r = RateLimit::new(10 * S);
        let t0 = Instant::now();
        assert_eq!(r.check(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(r.check(t0 + i * S), None, "within the period");
        }
        // The next line reports the five suppressed events, then the count starts over.
        assert_eq!(r.check(t0 + 10 * S), Some(5));
        assert_eq!(r.check(t0 + 11 * S), None);
        assert_eq!(r.check(t0 + 25 * S), Some(1));
        assert_eq!(r.check(t0 + 40 * S), Some(0));
    }

    #[test]
    fn limiters_are_independent_and_static() {
        static A: RateLimit = RateLimit::new(LOG_EVERY);
        static B: RateLimit = RateLimit::new(LOG_EVERY);
        let t0 = Instant::now();
        assert_eq!(A.check(t0), Some(0));
        assert_eq!(B.check(t0), Some(0), "another cap has its own budget");
        assert_eq!(A.check(t0), None);
    }

    #[test]
    fn failures_within_the_window_ban_the_key_for_a_while() {
        let mut f = FailureWindow::new(3, 60 * S);
        let t0 = Instant::now();
        assert!(!f.failed(&"a", t0));
        assert!(!f.failed(&"a", t0 + S));
        assert!(!f.is_banned(&"a", t0 + S));
        assert!(f.failed(&"a", t0 + 2 * S), "the third failure bans");
        assert!(f.is_banned(&"a", t0 + 3 * S));
        assert!(
            !f.is_banned(&"b", t0 + 3 * S),
            "other keys are not affected"
        );
        // A failure while banned extends the ban but does not report a new one.
        assert!(!f.failed(&"a", t0 + 30 * S));
        assert!(f.is_banned(&"a", t0 + 80 * S));
        assert!(!f.is_banned(&"a", t0 + 91 * S), "the ban ends");
        assert!(f.is_empty(), "an ended ban is forgotten");
    }

    #[test]
    fn failures_spread_over_more_than_the_window_do_not_ban() {
        let mut f = FailureWindow::new(3, 60 * S);
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(!f.failed(&"a", t0 + i * 40 * S), "failure {i}");
            assert!(!f.is_banned(&"a", t0 + i * 40 * S));
        }
    }

    #[test]
    fn the_table_is_pruned_of_expired_entries() {
        let mut f = FailureWindow::new(5, 60 * S);
        let t0 = Instant::now();
        for k in 0..PRUNE_AT as u32 {
            f.failed(&k, t0);
        }
        assert_eq!(f.len(), PRUNE_AT);
        f.failed(&u32::MAX, t0 + 61 * S);
        assert_eq!(f.len(), 1, "only the fresh failure is left");
    }
}
