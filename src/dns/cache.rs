//! The answer cache of [`super::Resolver`], as plain data: answers kept for their TTL, clamped
//! to a floor and a ceiling, at most a given number of them, and one query in flight per key.
//!
//! * A lookup of a key whose answer is held and not expired is answered from memory.
//! * Otherwise the first caller (the leader) runs the query; callers of the same key that
//!   arrive while it runs wait for its result, each for at most its own bound, instead of
//!   sending the same query again. Failures are handed to those waiters but never kept.
//! * A successful answer, positive or negative (the caller turns NXDOMAIN and "no records"
//!   into an empty value with the TTL of RFC 2308), is kept for its TTL clamped to
//!   `[min_ttl, max_ttl]`; a clamped TTL of 0 keeps nothing.
//! * When the table is full, expired answers go first, then the one closest to expiry.
//!
//! The clock is injectable so that expiry is tested without waiting.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How many answers a cache keeps and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLimits {
    /// The most answers held at once; 0 keeps none (lookups are still coalesced).
    pub entries: usize,
    /// The shortest time an answer is kept, whatever its TTL says (a TTL of 0 included).
    pub min_ttl: Duration,
    /// The longest time an answer is kept, whatever its TTL says.
    pub max_ttl: Duration,
}

impl CacheLimits {
    /// No answer kept (lookups are still coalesced).
    pub const OFF: CacheLimits = CacheLimits {
        entries: 0,
        min_ttl: Duration::ZERO,
        max_ttl: Duration::ZERO,
    };

    /// How long an answer with `ttl` seconds is kept.
    pub fn keep_for(&self, ttl: u32) -> Duration {
        Duration::from_secs(u64::from(ttl))
            .max(self.min_ttl)
            .min(self.max_ttl)
    }
}

impl Default for CacheLimits {
    /// 4096 answers, TTLs clamped to 30 s … 1 day (the `[dns] cache_*` defaults; the TTL
    /// bounds are jabberd2's `min-ttl` and `max-ttl`, and unbound's ceiling).
    fn default() -> CacheLimits {
        CacheLimits {
            entries: 4096,
            min_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(86400),
        }
    }
}

/// A waiter's bound passed before the query it waited for finished (or the leader gave up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitTimedOut;

/// Counters of a cache since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from memory.
    pub hits: u64,
    /// Queries run (lookups that found nothing held and nothing in flight).
    pub queries: u64,
    /// Lookups that waited for another caller's query.
    pub coalesced: u64,
    /// Queries that failed (their error went to the caller and its waiters; nothing kept).
    pub failures: u64,
    /// Answers held now.
    pub entries: usize,
}

/// The clock a cache reads expiry times from.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// A cache of answers `V` by key `K`; `E` is the error of a failed query, handed to the callers
/// that waited for it (see the module documentation).
pub struct Cache<K, V, E> {
    limits: CacheLimits,
    clock: Clock,
    state: Mutex<State<K, V, E>>,
    hits: AtomicU64,
    queries: AtomicU64,
    coalesced: AtomicU64,
    failures: AtomicU64,
}

struct State<K, V, E> {
    /// Answers, when they expire, and their place in `by_expiry`.
    held: HashMap<K, (V, Instant, u64)>,
    /// The held keys by expiry (ties broken by insertion), so the next to go is found without
    /// a scan: making room and dropping expired answers cost O(log n) each.
    by_expiry: BTreeMap<(Instant, u64), K>,
    /// Insertions so far (the tie breaker above).
    seq: u64,
    /// Queries running now, by key.
    flights: HashMap<K, Arc<Flight<V, E>>>,
}

/// One query in flight: its outcome once known, and the waiters' wake-up.
struct Flight<V, E> {
    outcome: Mutex<Outcome<V, E>>,
    done: Condvar,
}

enum Outcome<V, E> {
    Running,
    Done(Result<V, E>),
    /// The leader went away without an outcome (it panicked).
    Abandoned,
}

impl<K, V, E> Cache<K, V, E>
where
    K: Hash + Eq + Clone,
    V: Clone,
    E: Clone + From<WaitTimedOut>,
{
    /// An empty cache with these limits, on the system clock.
    pub fn new(limits: CacheLimits) -> Cache<K, V, E> {
        Cache::with_clock(limits, Arc::new(Instant::now))
    }

    /// An empty cache with these limits, reading the time from `clock`.
    pub fn with_clock(limits: CacheLimits, clock: Clock) -> Cache<K, V, E> {
        Cache {
            limits,
            clock,
            state: Mutex::new(State {
                held: HashMap::new(),
                by_expiry: BTreeMap::new(),
                seq: 0,
                flights: HashMap::new(),
            }),
            hits: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// The limits this cache was made with.
    pub fn limits(&self) -> CacheLimits {
        self.limits
    }

    /// The answer for `key`: held, or the one a concurrent caller's query gives (waiting at
    /// most `wait` for it), or the result of `query`, which returns the answer and its TTL in
    /// seconds. A waiter whose bound passes gets `E::from(WaitTimedOut)`.
    pub fn get(
        &self,
        key: &K,
        wait: Duration,
        query: impl FnOnce() -> Result<(V, u32), E>,
    ) -> Result<V, E> {
        let flight = {
            let mut st = self.lock();
            let now = (self.clock)();
            match st.held.get(key) {
                Some((v, expires, _)) if now < *expires => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(v.clone());
                }
                Some(_) => {
                    // Expired: it goes when room is made (`store`), in expiry order.
                }
                None => {}
            }
            if let Some(f) = st.flights.get(key) {
                let f = f.clone();
                drop(st);
                self.coalesced.fetch_add(1, Ordering::Relaxed);
                return f.wait(wait);
            }
            let f = Arc::new(Flight {
                outcome: Mutex::new(Outcome::Running),
                done: Condvar::new(),
            });
            st.flights.insert(key.clone(), f.clone());
            f
        };
        self.queries.fetch_add(1, Ordering::Relaxed);
        let mut guard = Leader {
            cache: self,
            key,
            flight,
            finished: false,
        };
        let result = query();
        if result.is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        guard.finish(&result);
        result.map(|(v, _)| v)
    }

    /// Counters and the number of answers held.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            queries: self.queries.load(Ordering::Relaxed),
            coalesced: self.coalesced.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            entries: self.lock().held.len(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<K, V, E>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep `value` for `key` for `ttl` seconds clamped to the limits, making room if full:
    /// expired answers go first, then the one closest to expiry.
    fn store(&self, st: &mut State<K, V, E>, key: &K, value: V, ttl: u32) {
        let keep = self.limits.keep_for(ttl);
        if self.limits.entries == 0 || keep.is_zero() {
            return;
        }
        let now = (self.clock)();
        if let Some((_, at, seq)) = st.held.remove(key) {
            st.by_expiry.remove(&(at, seq));
        }
        while let Some(entry) = st.by_expiry.first_entry() {
            let expired = entry.key().0 <= now;
            if !expired && st.held.len() < self.limits.entries {
                break;
            }
            let k = entry.remove();
            st.held.remove(&k);
        }
        st.seq += 1;
        let expires = now + keep;
        st.by_expiry.insert((expires, st.seq), key.clone());
        st.held.insert(key.clone(), (value, expires, st.seq));
    }
}

/// The leader's side of a flight: publishes the outcome, and on drop without one (a panic in
/// the query) releases the waiters and the key.
struct Leader<'a, K, V, E>
where
    K: Hash + Eq + Clone,
    V: Clone,
    E: Clone + From<WaitTimedOut>,
{
    cache: &'a Cache<K, V, E>,
    key: &'a K,
    flight: Arc<Flight<V, E>>,
    finished: bool,
}

impl<K, V, E> Leader<'_, K, V, E>
where
    K: Hash + Eq + Clone,
    V: Clone,
    E: Clone + From<WaitTimedOut>,
{
    fn finish(&mut self, result: &Result<(V, u32), E>) {
        {
            let mut st = self.cache.lock();
            st.flights.remove(self.key);
            if let Ok((v, ttl)) = result {
                self.cache.store(&mut st, self.key, v.clone(), *ttl);
            }
        }
        let shared = result.as_ref().map(|(v, _)| v.clone()).map_err(E::clone);
        self.flight.publish(Outcome::Done(shared));
        self.finished = true;
    }
}

impl<K, V, E> Drop for Leader<'_, K, V, E>
where
    K: Hash + Eq + Clone,
    V: Clone,
    E: Clone + From<WaitTimedOut>,
{
    fn drop(&mut self) {
        if !self.finished {
            self.cache.lock().flights.remove(self.key);
            self.flight.publish(Outcome::Abandoned);
        }
    }
}

impl<V: Clone, E: Clone + From<WaitTimedOut>> Flight<V, E> {
    fn publish(&self, outcome: Outcome<V, E>) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = outcome;
        self.done.notify_all();
    }

    /// The leader's outcome, waiting at most `wait`.
    fn wait(&self, wait: Duration) -> Result<V, E> {
        let deadline = Instant::now() + wait;
        let mut outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match &*outcome {
                Outcome::Done(Ok(v)) => return Ok(v.clone()),
                Outcome::Done(Err(e)) => return Err(e.clone()),
                Outcome::Abandoned => return Err(E::from(WaitTimedOut)),
                Outcome::Running => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(E::from(WaitTimedOut));
            }
            outcome = self
                .done
                .wait_timeout(outcome, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::thread;

    /// The error of the fake query function.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Fail {
        Server,
        Waited,
    }

    impl From<WaitTimedOut> for Fail {
        fn from(_: WaitTimedOut) -> Fail {
            Fail::Waited
        }
    }

    type TestCache = Cache<&'static str, Vec<u32>, Fail>;

    /// A clock the test moves by hand, in whole seconds.
    fn manual_clock() -> (Clock, Arc<AtomicU64>) {
        let base = Instant::now();
        let secs = Arc::new(AtomicU64::new(0));
        let s = secs.clone();
        let clock: Clock = Arc::new(move || base + Duration::from_secs(s.load(Ordering::SeqCst)));
        (clock, secs)
    }

    fn limits(entries: usize, min_ttl: u64, max_ttl: u64) -> CacheLimits {
        CacheLimits {
            entries,
            min_ttl: Duration::from_secs(min_ttl),
            max_ttl: Duration::from_secs(max_ttl),
        }
    }

    const WAIT: Duration = Duration::from_secs(20);

    /// Looks `key` up with a fake query that answers `value` with `ttl` and counts its calls.
    fn lookup(
        c: &TestCache,
        key: &'static str,
        value: &[u32],
        ttl: u32,
        calls: &AtomicUsize,
    ) -> Vec<u32> {
        c.get(&key, WAIT, || {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok((value.to_vec(), ttl))
        })
        .unwrap()
    }

    #[test]
    fn an_answer_is_kept_for_its_ttl_then_asked_again() {
        let (clock, secs) = manual_clock();
        let c = TestCache::with_clock(limits(16, 0, 3600), clock);
        let calls = AtomicUsize::new(0);
        assert_eq!(lookup(&c, "a", &[1], 60, &calls), [1]);
        secs.store(59, Ordering::SeqCst);
        assert_eq!(lookup(&c, "a", &[2], 60, &calls), [1], "held for 60 s");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        secs.store(60, Ordering::SeqCst);
        assert_eq!(lookup(&c, "a", &[2], 60, &calls), [2], "expired at 60 s");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let st = c.stats();
        assert_eq!((st.hits, st.queries, st.entries), (1, 2, 1));
    }

    #[test]
    fn ttls_are_clamped_to_the_floor_and_the_ceiling() {
        let (clock, secs) = manual_clock();
        let c = TestCache::with_clock(limits(16, 5, 100), clock);
        let calls = AtomicUsize::new(0);
        lookup(&c, "zero", &[1], 0, &calls);
        lookup(&c, "huge", &[1], u32::MAX, &calls);
        secs.store(4, Ordering::SeqCst);
        lookup(&c, "zero", &[1], 0, &calls);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "TTL 0 raised to the 5 s floor"
        );
        secs.store(5, Ordering::SeqCst);
        lookup(&c, "zero", &[1], 0, &calls);
        assert_eq!(calls.load(Ordering::SeqCst), 3, "and no longer");
        secs.store(99, Ordering::SeqCst);
        lookup(&c, "huge", &[1], u32::MAX, &calls);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "a huge TTL is kept up to the ceiling"
        );
        secs.store(100, Ordering::SeqCst);
        lookup(&c, "huge", &[1], u32::MAX, &calls);
        assert_eq!(calls.load(Ordering::SeqCst), 4, "cut to the 100 s ceiling");
    }

    #[test]
    fn nothing_is_kept_with_no_entries_or_a_zero_ttl_and_no_floor() {
        let (clock, _) = manual_clock();
        let calls = AtomicUsize::new(0);
        let off = TestCache::with_clock(CacheLimits::OFF, clock.clone());
        lookup(&off, "a", &[1], 60, &calls);
        lookup(&off, "a", &[1], 60, &calls);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let no_floor = TestCache::with_clock(limits(16, 0, 60), clock);
        lookup(&no_floor, "a", &[1], 0, &calls);
        lookup(&no_floor, "a", &[1], 0, &calls);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(no_floor.stats().entries, 0);
    }

    /// A negative answer (NXDOMAIN or no records: an empty value) is kept like any other, for
    /// the TTL the caller read from the SOA record.
    #[test]
    fn negative_answers_are_kept_for_their_ttl() {
        let (clock, secs) = manual_clock();
        let c = TestCache::with_clock(limits(16, 0, 3600), clock);
        let calls = AtomicUsize::new(0);
        assert!(lookup(&c, "nx", &[], 30, &calls).is_empty());
        secs.store(29, Ordering::SeqCst);
        assert!(
            lookup(&c, "nx", &[7], 30, &calls).is_empty(),
            "still the negative answer"
        );
        secs.store(30, Ordering::SeqCst);
        assert_eq!(lookup(&c, "nx", &[7], 30, &calls), [7], "published since");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn failures_are_not_kept() {
        let c = TestCache::new(limits(16, 60, 3600));
        assert_eq!(c.get(&"a", WAIT, || Err(Fail::Server)), Err(Fail::Server));
        let calls = AtomicUsize::new(0);
        assert_eq!(lookup(&c, "a", &[1], 60, &calls), [1]);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the failure was not held");
        let st = c.stats();
        assert_eq!(
            (st.queries, st.failures),
            (2, 1),
            "one of two queries failed"
        );
    }

    #[test]
    fn a_full_table_drops_expired_answers_first_then_the_soonest_to_expire() {
        let (clock, secs) = manual_clock();
        let c = TestCache::with_clock(limits(3, 0, 3600), clock);
        let calls = AtomicUsize::new(0);
        lookup(&c, "short", &[1], 10, &calls);
        lookup(&c, "long", &[2], 1000, &calls);
        lookup(&c, "mid", &[3], 100, &calls);
        lookup(&c, "new", &[4], 500, &calls); // full: "short" (soonest) goes
        assert_eq!(c.stats().entries, 3);
        let before = calls.load(Ordering::SeqCst);
        for (k, v) in [("long", 2), ("mid", 3), ("new", 4)] {
            assert_eq!(lookup(&c, k, &[0], 1, &calls), [v], "{k} kept");
        }
        assert_eq!(calls.load(Ordering::SeqCst), before);
        lookup(&c, "short", &[1], 10, &calls);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            before + 1,
            "short was evicted"
        );
        // Held now: long (1000 s), new (500 s), short (10 s; "mid" made room for it). By 150 s
        // "short" has expired: the next answer takes its slot and the live ones stay.
        secs.store(150, Ordering::SeqCst);
        lookup(&c, "other", &[5], 1000, &calls);
        assert_eq!(c.stats().entries, 3);
        let before = calls.load(Ordering::SeqCst);
        assert_eq!(lookup(&c, "long", &[0], 1, &calls), [2]);
        assert_eq!(lookup(&c, "new", &[0], 1, &calls), [4]);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            before,
            "live answers kept over expired ones"
        );
    }

    /// Bounded wait until `n` callers are waiting on a flight (the counter moves before they
    /// block; this only orders the test's steps).
    fn until_coalesced(c: &TestCache, n: u64) {
        let deadline = Instant::now() + WAIT;
        while c.stats().coalesced < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} callers waiting",
                c.stats().coalesced
            );
            thread::yield_now();
        }
    }

    #[test]
    fn concurrent_lookups_of_one_key_send_one_query_and_share_its_answer() {
        // No answer kept: every caller gets the answer from the one query in flight.
        let c = Arc::new(TestCache::new(CacheLimits::OFF));
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, released) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel();
        let leader = {
            let (c, calls) = (c.clone(), calls.clone());
            thread::spawn(move || {
                c.get(&"k", WAIT, || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    started_tx.send(()).unwrap();
                    released.recv_timeout(WAIT).unwrap();
                    Ok((vec![42], 0))
                })
            })
        };
        started.recv_timeout(WAIT).unwrap();
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let (c, calls) = (c.clone(), calls.clone());
                thread::spawn(move || {
                    c.get(&"k", WAIT, || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        Ok((vec![0], 0))
                    })
                })
            })
            .collect();
        until_coalesced(&c, 8);
        // Another key is not held up by this one.
        assert_eq!(c.get(&"other", WAIT, || Ok((vec![1], 0))), Ok(vec![1]));
        release.send(()).unwrap();
        assert_eq!(leader.join().unwrap(), Ok(vec![42]));
        for w in waiters {
            assert_eq!(w.join().unwrap(), Ok(vec![42]));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn waiters_share_a_failure_and_give_up_at_their_own_bound() {
        let c = Arc::new(TestCache::new(limits(16, 60, 3600)));
        let (release, released) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel();
        let leader = {
            let c = c.clone();
            thread::spawn(move || {
                c.get(&"k", WAIT, || {
                    started_tx.send(()).unwrap();
                    released.recv_timeout(WAIT).unwrap();
                    Err(Fail::Server)
                })
            })
        };
        started.recv_timeout(WAIT).unwrap();
        // A caller with a short bound stops waiting; the query goes on.
        let short = c.get(&"k", Duration::from_millis(20), || Ok((vec![0], 60)));
        assert_eq!(short, Err(Fail::Waited));
        let patient = {
            let c = c.clone();
            thread::spawn(move || c.get(&"k", WAIT, || Ok((vec![0], 60))))
        };
        until_coalesced(&c, 2);
        release.send(()).unwrap();
        assert_eq!(leader.join().unwrap(), Err(Fail::Server));
        assert_eq!(patient.join().unwrap(), Err(Fail::Server));
        assert_eq!(c.stats().entries, 0);
    }

    #[test]
    fn a_leader_that_panics_releases_its_waiters_and_the_key() {
        let c = Arc::new(TestCache::new(limits(16, 60, 3600)));
        let (release, released) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel();
        let leader = {
            let c = c.clone();
            thread::spawn(move || {
                c.get(&"k", WAIT, || -> Result<(Vec<u32>, u32), Fail> {
                    started_tx.send(()).unwrap();
                    released.recv_timeout(WAIT).unwrap();
                    panic!("query failed hard")
                })
            })
        };
        started.recv_timeout(WAIT).unwrap();
        let waiter = {
            let c = c.clone();
            thread::spawn(move || c.get(&"k", WAIT, || Ok((vec![0], 60))))
        };
        until_coalesced(&c, 1);
        release.send(()).unwrap();
        assert!(leader.join().is_err());
        assert_eq!(waiter.join().unwrap(), Err(Fail::Waited));
        let calls = AtomicUsize::new(0);
        assert_eq!(
            lookup(&c, "k", &[3], 60, &calls),
            [3],
            "the key is free again"
        );
    }
}
