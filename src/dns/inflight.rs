//! At most [`MAX_IN_FLIGHT`] queries of this daemon wait for a nameserver at a time; more wait
//! their turn here (within their own deadline).
//!
//! A burst of dialback handshakes is a burst of lookups: four queries each (two SRV, A, AAAA)
//! for every new domain. Sent all at once they overflow the receive buffer of a local
//! resolver's socket (measured with dnsmasq: 500 handshakes in flight lost ~150 queries, each a
//! 5-second retry); queued here, they cost the wait of a turn instead.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Queries in flight at once, per daemon.
pub const MAX_IN_FLIGHT: usize = 128;

/// Queries in flight now, and the condition waiters sleep on.
pub struct Limiter {
    busy: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

/// One query's turn; the turn is given back when this is dropped.
pub struct Turn<'a>(&'a Limiter);

impl Limiter {
    /// A limiter allowing `max` queries at once.
    pub const fn new(max: usize) -> Limiter {
        Limiter {
            busy: Mutex::new(0),
            freed: Condvar::new(),
            max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wait for a turn until `deadline`; `None` when the deadline passed first.
    pub fn turn(&self, deadline: Instant) -> Option<Turn<'_>> {
        let mut busy = self.lock();
        while *busy >= self.max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            busy = self
                .freed
                .wait_timeout(busy, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *busy += 1;
        Some(Turn(self))
    }

    /// Queries in flight now.
    #[cfg(test)]
    pub fn busy(&self) -> usize {
        *self.lock()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.0.lock() -= 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    /// The limit holds, a waiter gets the turn given back, and one whose deadline passes gets
    /// none.
    #[test]
    fn turns_are_bounded_and_handed_on() {
        let l = Arc::new(Limiter::new(2));
        let soon = || Instant::now() + Duration::from_secs(10);
        let a = l.turn(soon()).expect("first turn");
        let b = l.turn(soon()).expect("second turn");
        assert_eq!(l.busy(), 2);
        assert!(
            l.turn(Instant::now()).is_none(),
            "no third turn at once while two are busy"
        );
        let l2 = l.clone();
        let waiter = thread::spawn(move || l2.turn(soon()).is_some());
        drop(a);
        assert!(waiter.join().unwrap(), "a waiter gets a turn given back");
        drop(b);
        assert_eq!(l.busy(), 0, "every turn is given back");
    }
}
