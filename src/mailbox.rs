//! A stream's inbox: many senders, one receiver, never blocking a sender on the receiver —
//! except the stream's own reader thread, which is held back when it is too far ahead.
//!
//! In scope: queueing, batch receipt with a timeout, read-ahead flow control for the reader,
//! closing (later sends fail, so a stanza racing a stream's end is handed back to its sender
//! instead of being lost), and **parking**: an idle receiver may leave its state in the mailbox
//! and end its thread; the next send takes it out and resumes it ([`Resume`]). Out of scope:
//! what the items are (see `conn::Input`) and how a receiver is resumed.
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

/// A parked receiver, resumed (on a new thread) by the next send.
pub trait Resume: Send {
    /// Start running again; called by a sender, outside the mailbox's lock.
    fn resume(self);
}

/// For mailboxes whose receiver never parks.
impl Resume for () {
    fn resume(self) {}
}

/// How far the reader may run ahead of the receiver: at most `items` of its items and, unless
/// none is queued, at most `bytes` of their memory (one large item always fits alone).
#[derive(Clone, Copy, Debug)]
pub struct ReadAhead {
    /// Most reader items queued.
    pub items: usize,
    /// Most memory of queued reader items, as the reader counts it.
    pub bytes: usize,
}

struct State<T, P> {
    /// The items, each with its memory if it came from the reader (`None` otherwise).
    items: VecDeque<(T, Option<usize>)>,
    /// Reader items queued.
    from_reader: usize,
    /// Their memory.
    reader_bytes: usize,
    closed: bool,
    receiver_waiting: bool,
    reader_waiting: bool,
    /// The receiver's state while it is parked.
    parked: Option<P>,
}

/// See the module documentation.
pub struct Mailbox<T, P: Resume = ()> {
    state: Mutex<State<T, P>>,
    /// Signalled when an item arrives and the receiver waits.
    ready: Condvar,
    /// Signalled when the reader may go on (room again, or closed).
    room: Condvar,
}

impl<T, P: Resume> Default for Mailbox<T, P> {
    fn default() -> Self {
        Mailbox {
            state: Mutex::new(State {
                items: VecDeque::new(),
                from_reader: 0,
                reader_bytes: 0,
                closed: false,
                receiver_waiting: false,
                reader_waiting: false,
                parked: None,
            }),
            ready: Condvar::new(),
            room: Condvar::new(),
        }
    }
}

impl<T, P: Resume> Mailbox<T, P> {
    fn lock(&self) -> MutexGuard<'_, State<T, P>> {
        // Every critical section leaves the state consistent; a panic elsewhere changes nothing.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `item`. Never waits for the receiver.
    ///
    /// # Errors
    /// The item comes back once the mailbox is closed.
    pub fn send(&self, item: T) -> Result<(), T> {
        self.push(item, None)
    }

    fn push(&self, item: T, from_reader: Option<usize>) -> Result<(), T> {
        let mut st = self.lock();
        let parked = self.push_locked(&mut st, item, from_reader)?;
        drop(st);
        if let Some(p) = parked {
            p.resume();
        }
        Ok(())
    }

    /// Queue under the lock; returns the parked receiver to resume once the lock is released.
    fn push_locked(
        &self,
        st: &mut State<T, P>,
        item: T,
        from_reader: Option<usize>,
    ) -> Result<Option<P>, T> {
        if st.closed {
            return Err(item);
        }
        st.items.push_back((item, from_reader));
        if let Some(bytes) = from_reader {
            st.from_reader += 1;
            st.reader_bytes += bytes;
        }
        if st.receiver_waiting {
            st.receiver_waiting = false;
            self.ready.notify_one();
        }
        Ok(st.parked.take())
    }

    /// Park `p` even though items may be queued (a resume that could not start): the next
    /// send, or a retry, resumes it.
    ///
    /// # Errors
    /// `p` comes back when the mailbox is closed.
    pub fn park_anyway(&self, p: P) -> Result<(), P> {
        let mut st = self.lock();
        if st.closed {
            return Err(p);
        }
        st.parked = Some(p);
        Ok(())
    }

    /// The receiver: leave `p` here and stop, if nothing is queued (else it comes back, and
    /// the receiver goes on). The next send resumes it.
    ///
    /// # Errors
    /// `p` comes back when items are queued or the mailbox is closed.
    pub fn park(&self, p: P) -> Result<(), P> {
        let mut st = self.lock();
        if !st.items.is_empty() || st.closed {
            return Err(p);
        }
        st.parked = Some(p);
        Ok(())
    }

    /// The stream's reader: wait while queueing `item` (`bytes` of memory) would take its
    /// queued items past `limit`, then queue.
    ///
    /// # Errors
    /// The item comes back once the mailbox is closed.
    pub fn send_from_reader(&self, item: T, bytes: usize, limit: ReadAhead) -> Result<(), T> {
        let mut st = self.lock();
        while !st.closed
            && (st.from_reader >= limit.items
                || (st.from_reader > 0 && st.reader_bytes + bytes > limit.bytes))
        {
            st.reader_waiting = true;
            st = self.room.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let parked = self.push_locked(&mut st, item, Some(bytes))?;
        drop(st);
        if let Some(p) = parked {
            p.resume();
        }
        Ok(())
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
        let (mut reader_items, mut reader_bytes) = (0, 0);
        for (item, from_reader) in st.items.drain(..n) {
            if let Some(bytes) = from_reader {
                reader_items += 1;
                reader_bytes += bytes;
            }
            out.push(item);
        }
        st.from_reader -= reader_items;
        st.reader_bytes -= reader_bytes;
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
        st.reader_bytes = 0;
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

    const ONE: ReadAhead = ReadAhead {
        items: 1,
        bytes: usize::MAX,
    };
    const FOUR: ReadAhead = ReadAhead {
        items: 4,
        bytes: usize::MAX,
    };

    #[test]
    fn reader_is_held_back_by_the_memory_of_its_queued_items() {
        let m: Arc<Mailbox<usize>> = Arc::new(Mailbox::default());
        let limit = ReadAhead {
            items: 64,
            bytes: 1000,
        };
        let m2 = m.clone();
        // Items of 400 bytes, then one of 5000 (larger than the limit: it goes alone).
        let sizes = [400, 400, 400, 400, 5000, 400];
        let reader = thread::spawn(move || {
            for (i, bytes) in sizes.into_iter().enumerate() {
                m2.send_from_reader(i, bytes, limit).unwrap();
            }
        });
        let mut got = Vec::new();
        let deadline = after(Duration::from_secs(10));
        while got.len() < sizes.len() && Instant::now() < deadline {
            let before = got.len();
            m.recv_batch(&mut got, 64, after(Duration::from_secs(1)));
            let held: usize = got[before..].iter().map(|&i| sizes[i]).sum();
            let alone = got.len() - before == 1;
            assert!(held <= 1000 || alone, "{held} bytes were queued at once");
        }
        reader.join().unwrap();
        assert_eq!(got, (0..sizes.len()).collect::<Vec<_>>());
    }

    #[test]
    fn batches_in_order_and_times_out_when_empty() {
        let m: Mailbox<i32> = Mailbox::default();
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
        let m: Mailbox<i32> = Mailbox::default();
        m.send(1).unwrap();
        assert_eq!(m.close(), vec![1]);
        assert_eq!(m.send(2), Err(2));
        assert_eq!(m.send_from_reader(3, 0, ONE), Err(3));
    }

    #[test]
    fn reader_is_held_back_until_the_receiver_catches_up() {
        let m: Arc<Mailbox<i32>> = Arc::new(Mailbox::default());
        let m2 = m.clone();
        let reader = thread::spawn(move || {
            for i in 0..100 {
                m2.send_from_reader(i, 0, FOUR).unwrap();
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
        let m: Arc<Mailbox<i32>> = Arc::new(Mailbox::default());
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
        let m: Arc<Mailbox<i32>> = Arc::new(Mailbox::default());
        m.send_from_reader(0, 0, ONE).unwrap();
        let m2 = m.clone();
        let t = thread::spawn(move || m2.send_from_reader(1, 0, ONE));
        let _ = m.close();
        assert_eq!(t.join().unwrap(), Err(1));
    }

    /// Records resumes on a channel.
    struct Probe(std::sync::mpsc::Sender<u32>, u32);

    impl Resume for Probe {
        fn resume(self) {
            let _ = self.0.send(self.1);
        }
    }

    #[test]
    fn a_parked_receiver_is_resumed_by_the_next_send_only() {
        let (tx, rx) = std::sync::mpsc::channel();
        let m: Mailbox<i32, Probe> = Mailbox::default();
        assert!(m.park(Probe(tx.clone(), 1)).is_ok());
        assert!(rx.try_recv().is_err(), "parking resumes nothing");
        m.send(5).unwrap();
        assert_eq!(rx.try_recv(), Ok(1));
        m.send(6).unwrap();
        assert!(rx.try_recv().is_err(), "resumed once");
        // Items queued: parking is refused and the state comes back.
        assert!(m.park(Probe(tx.clone(), 2)).is_err());
        let mut out = Vec::new();
        m.recv_batch(&mut out, 8, Instant::now());
        assert!(m.park(Probe(tx, 3)).is_ok());
        m.send_from_reader(7, 0, FOUR).unwrap();
        assert_eq!(rx.try_recv(), Ok(3));
        let _ = m.close();
    }
}
