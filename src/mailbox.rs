//! A stream's inbox: many senders, one receiver, never blocking a sender on the receiver —
//! except the stream's own reader thread, which is held back when it is too far ahead.
//!
//! In scope: queueing, batch receipt with a timeout, read-ahead flow control for the reader,
//! and closing (later sends fail, so a stanza racing a stream's end is handed back to its
//! sender instead of being lost). Out of scope: what the items are (see `conn::Input`).
//!
//! Why not `std::sync::mpsc`: its list channel allocates 31-slot blocks per stream (measured
//! ~3–7 KiB of an idle stream's memory), wakes the receiver with a futex on every send, and
//! cannot hold the reader back; one mutex over a `VecDeque` does all three with one lock per
//! batch.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Capacity kept after a burst: a drained queue larger than this shrinks back.
const KEEP: usize = 16;

struct State<T> {
    /// The items, each with whether it came from the reader.
    items: VecDeque<(T, bool)>,
    /// Reader items queued.
    from_reader: usize,
    closed: bool,
    receiver_waiting: bool,
    reader_waiting: bool,
}

/// See the module documentation.
pub struct Mailbox<T> {
    state: Mutex<State<T>>,
    /// Signalled when an item arrives and the receiver waits.
    ready: Condvar,
    /// Signalled when the reader may go on (room again, or closed).
    room: Condvar,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox {
            state: Mutex::new(State {
                items: VecDeque::new(),
                from_reader: 0,
                closed: false,
                receiver_waiting: false,
                reader_waiting: false,
            }),
            ready: Condvar::new(),
            room: Condvar::new(),
        }
    }
}

impl<T> Mailbox<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every critical section leaves the state consistent; a panic elsewhere changes nothing.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `item`. Never waits for the receiver.
    ///
    /// # Errors
    /// The item comes back once the mailbox is closed.
    pub fn send(&self, item: T) -> Result<(), T> {
        self.push(item, false)
    }

    fn push(&self, item: T, from_reader: bool) -> Result<(), T> {
        let mut st = self.lock();
        self.push_locked(&mut st, item, from_reader)
    }

    fn push_locked(&self, st: &mut State<T>, item: T, from_reader: bool) -> Result<(), T> {
        if st.closed {
            return Err(item);
        }
        st.items.push_back((item, from_reader));
        st.from_reader += usize::from(from_reader);
        if st.receiver_waiting {
            st.receiver_waiting = false;
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The stream's reader: wait while `limit` of its items are still queued, then queue.
    ///
    /// # Errors
    /// The item comes back once the mailbox is closed.
    pub fn send_from_reader(&self, item: T, limit: usize) -> Result<(), T> {
        let mut st = self.lock();
        while st.from_reader >= limit && !st.closed {
            st.reader_waiting = true;
            st = self.room.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        self.push_locked(&mut st, item, true)
    }

    /// The receiver: move up to `max` queued items into `out`, waiting until `deadline` when
    /// there are none. Returns how many were moved (0 on timeout).
    pub fn recv_batch(&self, out: &mut Vec<T>, max: usize, deadline: Instant) -> usize {
        let mut st = self.lock();
        while st.items.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return 0;
            }
            st.receiver_waiting = true;
            st = self
                .ready
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        st.receiver_waiting = false;
        let n = st.items.len().min(max);
        let mut reader_items = 0;
        for (item, from_reader) in st.items.drain(..n) {
            reader_items += usize::from(from_reader);
            out.push(item);
        }
        st.from_reader -= reader_items;
        if st.items.is_empty() && st.items.capacity() > KEEP {
            st.items.shrink_to(KEEP);
        }
        if reader_items > 0 && st.reader_waiting {
            st.reader_waiting = false;
            self.room.notify_one();
        }
        n
    }

    /// Close: every later send fails, the reader never waits again; returns what was queued.
    pub fn close(&self) -> Vec<T> {
        let mut st = self.lock();
        st.closed = true;
        st.from_reader = 0;
        self.room.notify_all();
        st.items.drain(..).map(|(item, _)| item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    fn after(timeout: Duration) -> Instant {
        Instant::now() + timeout
    }

    #[test]
    fn batches_in_order_and_times_out_when_empty() {
        let m = Mailbox::default();
        for i in 0..5 {
            m.send(i).unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(m.recv_batch(&mut out, 3, after(Duration::ZERO)), 3);
        assert_eq!(m.recv_batch(&mut out, 3, after(Duration::ZERO)), 2);
        assert_eq!(out, [0, 1, 2, 3, 4]);
        assert_eq!(
            m.recv_batch(&mut out, 3, after(Duration::from_millis(10))),
            0
        );
    }

    #[test]
    fn closed_mailbox_returns_sends_and_remaining_items() {
        let m = Mailbox::default();
        m.send(1).unwrap();
        assert_eq!(m.close(), vec![1]);
        assert_eq!(m.send(2), Err(2));
        assert_eq!(m.send_from_reader(3, 1), Err(3));
    }

    #[test]
    fn reader_is_held_back_until_the_receiver_catches_up() {
        let m = Arc::new(Mailbox::default());
        let m2 = m.clone();
        let reader = thread::spawn(move || {
            for i in 0..100 {
                m2.send_from_reader(i, 4).unwrap();
            }
        });
        let mut got = Vec::new();
        let deadline = after(Duration::from_secs(10));
        while got.len() < 100 && Instant::now() < deadline {
            let before = got.len();
            m.recv_batch(&mut got, 64, after(Duration::from_secs(1)));
            assert!(got.len() - before <= 4, "the reader ran more than 4 ahead");
        }
        reader.join().unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_waiting_receiver_is_woken_by_a_send() {
        let m = Arc::new(Mailbox::default());
        let m2 = m.clone();
        let t = thread::spawn(move || {
            let mut out = Vec::new();
            m2.recv_batch(&mut out, 8, after(Duration::from_secs(10)));
            out
        });
        m.send(7).unwrap();
        assert_eq!(t.join().unwrap(), vec![7]);
    }

    #[test]
    fn closing_releases_a_waiting_reader() {
        let m = Arc::new(Mailbox::default());
        m.send_from_reader(0, 1).unwrap();
        let m2 = m.clone();
        let t = thread::spawn(move || m2.send_from_reader(1, 1));
        let _ = m.close();
        assert_eq!(t.join().unwrap(), Err(1));
    }
}
