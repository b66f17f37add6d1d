//! Threads of streams that ended wait a moment for the next stream instead of exiting.
//!
//! Every stream still has exactly one thread of its own while it lives; what this saves is the
//! start and the end of a thread (`clone`, the stack's first page faults, `munmap` of stacks
//! beyond glibc's cache) when streams come and go in bursts: a dialback handshake is an inbound
//! stream plus a verify connection, two short lives. Measured with 500 handshakes in flight
//! (`benches/profile.sh`, `PROFILE_PARTS=handshake`): thread starts and exits were ~15 % of the
//! daemon's time.
//!
//! A spare thread waits at most [`SPARE_FOR`] and there are at most [`MAX_SPARE`] of them, so a
//! quiet daemon is back to one thread per live stream within a second or two (and gives their
//! stacks back); how many wait follows how many streams ended in the last second.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// The work a thread is given: one stream's whole life.
pub(super) type Job = Box<dyn FnOnce() + Send + 'static>;

/// How long a thread whose stream ended waits for another before it exits.
pub(super) const SPARE_FOR: Duration = Duration::from_secs(1);
/// At most this many threads wait for a stream at a time; more end at once. A new thread is
/// dear in a burst: measured with 500 handshakes in flight, one could take over a second from
/// `spawn` to its first instruction (each start maps a stack, a guard page and a signal stack,
/// and those wait for the process's memory-map lock among a thousand busy threads), while a
/// spare runs at once; with 64 spares about 60 of every 2,000 handshakes waited that long.
const MAX_SPARE: usize = 512;

/// A thread waiting for its next job.
struct Spare {
    job: Mutex<Option<Job>>,
    given: Condvar,
}

/// The threads waiting for a job, most recently parked last (the one whose stack is warmest is
/// taken first).
static SPARES: Mutex<Vec<Arc<Spare>>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Run `job` on a spare thread if one waits, else on a new one (`stack` bytes of stack).
///
/// # Errors
/// No thread waits and a new one cannot be started (the job is dropped).
pub(super) fn run(job: Job, stack: usize) -> io::Result<()> {
    let spare = lock(&SPARES).pop();
    match spare {
        Some(spare) => {
            *lock(&spare.job) = Some(job);
            spare.given.notify_one();
            Ok(())
        }
        None => thread::Builder::new()
            .name("stream".into())
            .stack_size(stack)
            .spawn(move || serve(job))
            .map(|_| ()),
    }
}

/// A pool thread: run the job, then the next ones it is given, until it waits in vain.
fn serve(first: Job) {
    let mut job = first;
    loop {
        job();
        match next() {
            Some(next) => job = next,
            None => break,
        }
    }
    // glibc keeps the stacks of ended threads for reuse, with every page they touched still
    // resident (a verify connection's DNS and handshake: 24 KiB each): give back all but the
    // frames still in use, as a sleeping stream does.
    super::stack::release();
}

/// Wait up to [`SPARE_FOR`] to be given another job; `None`: exit now.
fn next() -> Option<Job> {
    let me = Arc::new(Spare {
        job: Mutex::new(None),
        given: Condvar::new(),
    });
    {
        let mut spares = lock(&SPARES);
        if spares.len() >= MAX_SPARE {
            return None;
        }
        spares.push(me.clone());
    }
    let mut until = Some(Instant::now() + SPARE_FOR);
    let mut slot = lock(&me.job);
    loop {
        if let Some(job) = slot.take() {
            return Some(job);
        }
        if until.is_some_and(|t| Instant::now() >= t) {
            // Time is up: leave the list, unless a starter already took us from it (its job is
            // then on its way into our slot, and is waited for without a deadline). No lock
            // order issue: a starter never holds the list while it takes our slot.
            if leave(&me) {
                log::debug!("a spare stream thread ends (no new stream for {SPARE_FOR:?})");
                return None;
            }
            until = None;
        }
        slot = match until {
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                let waited = me.given.wait_timeout(slot, left);
                waited.unwrap_or_else(PoisonError::into_inner).0
            }
            None => me.given.wait(slot).unwrap_or_else(PoisonError::into_inner),
        };
    }
}

/// Take `me` off the list of spares; false when a starter took it off already.
fn leave(me: &Arc<Spare>) -> bool {
    let mut spares = lock(&SPARES);
    match spares.iter().position(|s| Arc::ptr_eq(s, me)) {
        Some(i) => {
            spares.swap_remove(i);
            true
        }
        None => false,
    }
}

/// How many threads wait for a stream now.
#[cfg(test)]
pub(super) fn spares() -> usize {
    lock(&SPARES).len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A job given while a thread waits runs on that thread (no new thread), and every job runs
    /// exactly once.
    #[test]
    fn a_spare_thread_takes_the_next_job() {
        let (tx, rx) = mpsc::channel();
        let mut ids = Vec::new();
        for _ in 0..20 {
            let tx = tx.clone();
            run(
                Box::new(move || tx.send(thread::current().id()).unwrap()),
                64 * 1024,
            )
            .unwrap();
            ids.push(rx.recv_timeout(Duration::from_secs(10)).unwrap());
            // Bounded wait until a thread is parked (ours, or one of another test's streams).
            let until = Instant::now() + Duration::from_secs(10);
            while spares() == 0 && Instant::now() < until {
                thread::yield_now();
            }
        }
        assert!(rx.try_recv().is_err(), "each job ran once");
        ids.sort_unstable_by_key(|id| format!("{id:?}"));
        ids.dedup();
        assert!(
            ids.len() < 20,
            "parked threads are reused: {} threads for 20 jobs",
            ids.len()
        );
    }
}
