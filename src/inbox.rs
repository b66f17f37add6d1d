//! How other threads reach a stream's thread: its bounded [`Inbox`], its wake fd, and the
//! [`Handle`] that counts what is queued against the caps.
//!
//! In scope: queueing without ever waiting for the receiver, waking the stream thread out of its
//! `poll(2)` (one eventfd per stream, written only when the thread may be asleep), closing (later
//! sends fail, so a stanza racing a stream's end goes back to whoever sent it), watchers (a
//! verify connection is woken when the stream that asked for it ends, and abandons the
//! verification), and the stanza and byte caps of a stream's queue. Out of scope: what the
//! stream does with its inputs (`conn`), and which stream gets a stanza (`router`).
//!
//! Why not `std::sync::mpsc`: its list channel allocates 31-slot blocks per stream (measured
//! ~3–7 KiB of an idle stream's memory) and cannot wake a thread sleeping in `poll(2)`.

use crate::domain::Domain;
use crate::stanza;
use crate::status::StreamInfo;
use crate::stream::Verdict;
use crate::xml::Element;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Capacity kept after a burst: a drained queue larger than this shrinks back.
const KEEP: usize = 16;

/// A message to a stream's thread.
#[derive(Debug)]
pub enum Input {
    /// A stanza to send on this stream (outbound routes and components), with the bytes it
    /// was charged against the stream's caps ([`crate::stanza::wire_size`], measured once).
    Stanza(Element, usize),
    /// The answer to a verification this stream asked for.
    Verified {
        /// The originating domain.
        remote: Domain,
        /// Our domain.
        local: Domain,
        /// The Authoritative Server's answer.
        verdict: Verdict,
    },
    /// An established outbound stream takes over the pair (`local`, `remote`) with the stanzas
    /// queued for it so far, oldest first (target multiplexing, XEP-0220 §2.6.2). They were
    /// counted against the stream that held them, not this one.
    Join {
        /// Our domain.
        local: Domain,
        /// The peer's domain.
        remote: Domain,
        /// The pair's FIFO so far.
        stanzas: Vec<Element>,
    },
}

/// An eventfd: written by other threads, polled by the stream's thread.
#[derive(Debug)]
struct WakeFd(OwnedFd);

impl WakeFd {
    fn new() -> io::Result<WakeFd> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and nothing else owns it.
        Ok(WakeFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn poke(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own descriptor. A full counter (never
        // reached: it is reset on every wake) would only mean the fd is readable already.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    fn clear(&self) {
        let mut n: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from our own non-blocking descriptor.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&raw mut n).cast(), 8) };
    }
}

struct State {
    items: VecDeque<Input>,
    closed: bool,
    /// The daemon is shutting down: the stream must close (seen even while it takes no input).
    shutdown: bool,
    /// The receiver is about to sleep (or sleeps) in `poll(2)`: senders must write the eventfd.
    sleeping: bool,
    /// The eventfd was written since the receiver last cleared it.
    poked: bool,
    /// A poke without an item since the receiver last took: it must look at what it watches.
    nudged: bool,
    /// Inboxes to wake when this one closes.
    watchers: Vec<Weak<Inbox>>,
}

/// A stream's inbox: many senders, one receiver (the stream's thread), never blocking a sender.
pub struct Inbox {
    state: Mutex<State>,
    wake: WakeFd,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").field("fd", &self.fd()).finish()
    }
}

impl Inbox {
    /// A new, open inbox with its own eventfd.
    ///
    /// # Errors
    /// No eventfd could be made (out of descriptors).
    pub fn new() -> io::Result<Arc<Inbox>> {
        Ok(Arc::new(Inbox {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
                shutdown: false,
                sleeping: false,
                poked: false,
                nudged: false,
                watchers: Vec::new(),
            }),
            wake: WakeFd::new()?,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent; a panic elsewhere changes nothing.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `item` and wake the receiver. Never waits for it.
    ///
    /// # Errors
    /// The item comes back once the inbox is closed.
    pub fn send(&self, item: Input) -> Result<(), Input> {
        let mut st = self.lock();
        if st.closed {
            return Err(item);
        }
        st.items.push_back(item);
        self.poke_locked(&mut st);
        Ok(())
    }

    /// Like [`Inbox::send`], but when called on a stream thread (see [`defer_wakes`]) the wake
    /// is written at the end of that thread's turn ([`flush_wakes`]), once for all it sent:
    /// a receiver on the same core then takes a whole batch instead of being switched to for
    /// every stanza.
    ///
    /// # Errors
    /// The item comes back once the inbox is closed.
    pub fn send_batched(self: &Arc<Self>, item: Input) -> Result<(), Input> {
        let mut st = self.lock();
        if st.closed {
            return Err(item);
        }
        st.items.push_back(item);
        let wake = st.sleeping && !st.poked;
        st.poked |= wake;
        drop(st);
        if wake {
            wake_later(self);
        }
        Ok(())
    }

    /// Write the eventfd if the receiver sleeps (or is about to) and it was not written yet:
    /// a busy receiver takes whole batches without a system call per item.
    fn poke_locked(&self, st: &mut State) {
        if st.sleeping && !st.poked {
            st.poked = true;
            self.wake.poke();
        }
    }

    /// Wake the receiver without queueing anything (it re-checks what it watches).
    pub fn poke(&self) {
        let mut st = self.lock();
        st.nudged = true;
        self.poke_locked(&mut st);
    }

    /// The receiver, right before it polls the eventfd: true when it may sleep (nothing is
    /// queued, no poke or shutdown is pending); from now on senders wake it. False: it must
    /// look at its inputs first.
    pub fn prepare_sleep(&self) -> bool {
        self.prepare_sleep_as(false)
    }

    /// [`Inbox::prepare_sleep`] for a receiver that takes no items for now (its peer is not
    /// reading what it writes): queued items do not keep it awake, and a wake already
    /// signalled for them is cleared, so it sleeps until the next send, poke or shutdown.
    pub fn prepare_sleep_ignoring_items(&self) -> bool {
        self.prepare_sleep_as(true)
    }

    fn prepare_sleep_as(&self, ignore_items: bool) -> bool {
        let mut st = self.lock();
        if (!ignore_items && !st.items.is_empty()) || st.nudged || st.shutdown {
            return false;
        }
        if st.poked {
            st.poked = false;
            self.wake.clear();
        }
        st.sleeping = true;
        true
    }

    /// Ask the stream to close now (the daemon is shutting down), and wake it.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        st.shutdown = true;
        self.poke_locked(&mut st);
    }

    /// The receiver: whether shutdown was asked for since it last looked.
    pub fn take_shutdown(&self) -> bool {
        std::mem::take(&mut self.lock().shutdown)
    }

    /// The receiver: move up to `max` queued items into `out`. Returns true when more are
    /// left (the receiver must not sleep before taking them).
    pub fn take(&self, out: &mut Vec<Input>, max: usize) -> bool {
        let mut st = self.lock();
        st.sleeping = false;
        st.nudged = false;
        if st.poked {
            st.poked = false;
            self.wake.clear();
        }
        let n = st.items.len().min(max);
        out.extend(st.items.drain(..n));
        if st.items.is_empty() && st.items.capacity() > KEEP {
            st.items.shrink_to(KEEP);
        }
        !st.items.is_empty()
    }

    /// Give back the queue's memory when it is empty (an idle stream).
    pub fn trim(&self) {
        let mut st = self.lock();
        if st.items.is_empty() {
            st.items = VecDeque::new();
        }
    }

    /// The descriptor to poll for readability: readable after a send or a poke.
    pub fn fd(&self) -> RawFd {
        self.wake.0.as_raw_fd()
    }

    /// Close: every later send fails; returns what was queued, and wakes the watchers.
    pub fn close(&self) -> Vec<Input> {
        let mut st = self.lock();
        st.closed = true;
        let items = st.items.drain(..).collect();
        let watchers = std::mem::take(&mut st.watchers);
        drop(st);
        for w in watchers.iter().filter_map(Weak::upgrade) {
            w.poke();
        }
        items
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Wake `watcher` when this inbox closes (at once if it is closed already).
    pub fn watch(&self, watcher: &Arc<Inbox>) {
        let mut st = self.lock();
        if st.closed {
            drop(st);
            watcher.poke();
            return;
        }
        st.watchers.retain(|w| w.strong_count() > 0);
        st.watchers.push(Arc::downgrade(watcher));
    }
}

thread_local! {
    /// On a stream thread: the inboxes to wake at the end of its turn.
    static DEFERRED: std::cell::RefCell<Option<Vec<Arc<Inbox>>>> =
        const { std::cell::RefCell::new(None) };
}

/// The calling thread is a stream thread: wakes of inboxes it sends to wait for
/// [`flush_wakes`].
pub fn defer_wakes() {
    DEFERRED.with(|d| *d.borrow_mut() = Some(Vec::new()));
}

/// Write the wakes the calling thread deferred (at the end of each turn of a stream's loop,
/// before it sleeps, and when it ends).
pub fn flush_wakes() {
    let due = DEFERRED.with(|d| d.borrow_mut().as_mut().map(std::mem::take));
    for inbox in due.into_iter().flatten() {
        inbox.wake.poke();
    }
}

fn wake_later(inbox: &Arc<Inbox>) {
    let deferred = DEFERRED.with(|d| match d.borrow_mut().as_mut() {
        Some(list) => {
            list.push(inbox.clone());
            true
        }
        None => false,
    });
    if !deferred {
        inbox.wake.poke();
    }
}

/// What kind of stream a handle belongs to (shutdown closes server streams before components).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// A server-to-server stream, either direction, or a verify connection.
    Server,
    /// An XEP-0114 component.
    Component,
}

/// Bytes of stanzas held for many streams together, and their cap (`limits.queued_bytes` for
/// the server streams).
pub struct ByteTotal {
    used: AtomicUsize,
    cap: AtomicUsize,
}

impl ByteTotal {
    /// A total capped at `cap` bytes.
    pub fn new(cap: usize) -> ByteTotal {
        ByteTotal {
            used: AtomicUsize::new(0),
            cap: AtomicUsize::new(cap),
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// A new cap (a configuration reload): it refuses what would go beyond it from now on;
    /// what is held already stays.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Release);
    }
}

/// Which byte cap refused a stanza.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteCap {
    /// `limits.queue_bytes`: too much held for this stream.
    Stream,
    /// `limits.queued_bytes`: too much held for all streams.
    Total,
}

/// Why a stanza could not be handed to a stream.
#[derive(Debug)]
pub enum SendError {
    /// The stream's outbox is full (`resource-constraint`).
    Full(Element),
    /// The stream has ended.
    Gone(Element),
    /// Too many bytes are held for the stream or in total (`resource-constraint`).
    Bytes(Element, ByteCap),
}

/// A way to reach one stream's thread. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct Handle {
    id: u64,
    kind: StreamKind,
    inbox: Arc<Inbox>,
    queued: Arc<AtomicUsize>,
    cap: usize,
    /// Bytes of stanzas held for the stream (its inbox plus its core's queue).
    bytes: Arc<AtomicUsize>,
    byte_cap: usize,
    total: Arc<ByteTotal>,
    /// What the status listener shows of the stream.
    info: Arc<StreamInfo>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Handle {
    /// A handle over `inbox`, refusing stanzas once `cap` are waiting.
    pub fn new(id: u64, kind: StreamKind, inbox: Arc<Inbox>, cap: usize) -> Handle {
        Handle {
            id,
            kind,
            inbox,
            queued: Arc::new(AtomicUsize::new(0)),
            cap,
            bytes: Arc::new(AtomicUsize::new(0)),
            byte_cap: usize::MAX,
            total: Arc::new(ByteTotal::new(usize::MAX)),
            info: Arc::new(StreamInfo::default()),
        }
    }

    /// Cap the bytes of stanzas held for this stream at `per_stream`, counted into `total`.
    pub fn with_byte_caps(mut self, per_stream: usize, total: Arc<ByteTotal>) -> Handle {
        self.byte_cap = per_stream;
        self.total = total;
        self
    }

    /// The stream's id (unique in this process).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The stream's kind.
    pub fn kind(&self) -> StreamKind {
        self.kind
    }

    /// The stream's inbox.
    pub fn inbox(&self) -> &Arc<Inbox> {
        &self.inbox
    }

    /// What the status listener shows of the stream (its thread keeps it up to date).
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// Bytes of stanzas held for this stream now.
    pub fn held_bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Stanzas sent to the stream and not yet taken by its thread.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Count `n` more bytes held, unless a cap refuses them. A stream with nothing held
    /// always takes one stanza (one stanza of any allowed size must be deliverable).
    fn charge(&self, n: usize) -> Result<(), ByteCap> {
        let here = self.bytes.fetch_add(n, Ordering::AcqRel);
        if here > 0 && here.saturating_add(n) > self.byte_cap {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            return Err(ByteCap::Stream);
        }
        let total = self.total.used.fetch_add(n, Ordering::AcqRel);
        if total.saturating_add(n) > self.total.cap.load(Ordering::Acquire) {
            self.total.used.fetch_sub(n, Ordering::AcqRel);
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            return Err(ByteCap::Total);
        }
        Ok(())
    }

    /// The bytes held for this stream went from `old` to `new` (its core queued or sent
    /// stanzas it had taken from the inbox): no cap applies, they were admitted already.
    pub fn recharge(&self, old: usize, new: usize) {
        if new > old {
            self.bytes.fetch_add(new - old, Ordering::AcqRel);
            self.total.used.fetch_add(new - old, Ordering::AcqRel);
        } else if old > new {
            self.bytes.fetch_sub(old - new, Ordering::AcqRel);
            self.total.used.fetch_sub(old - new, Ordering::AcqRel);
        }
    }

    /// The stream's thread took a stanza of `bytes` (as charged by `send_stanza`) out of the
    /// inbox: it no longer counts as waiting there.
    pub fn taken(&self, bytes: usize) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.recharge(bytes, 0);
    }

    /// Queue a stanza for the stream.
    ///
    /// # Errors
    /// The stanza comes back when the outbox is full or the stream is gone.
    pub fn send_stanza(&self, el: Element) -> Result<(), SendError> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.cap {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(SendError::Full(el));
        }
        let n = stanza::wire_size(&el);
        if let Err(cap) = self.charge(n) {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(SendError::Bytes(el, cap));
        }
        self.enqueue(el, n)
    }

    /// Put a stanza already counted (one more queued, `n` bytes) in the inbox; undo the counts
    /// when the stream is gone.
    fn enqueue(&self, el: Element, n: usize) -> Result<(), SendError> {
        self.inbox.send_batched(Input::Stanza(el, n)).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.recharge(n, 0);
            match e {
                Input::Stanza(el, _) => SendError::Gone(el),
                _ => unreachable!("we sent a stanza"),
            }
        })
    }

    /// Queue a bounce the router made for a stanza it had already accepted (and counted
    /// elsewhere, where it is released now): no cap refuses it, since refusing it would lose
    /// it — an error stanza is never bounced again — and it costs no more than the stanza did.
    ///
    /// # Errors
    /// The stanza comes back when the stream is gone.
    pub fn send_bounce(&self, el: Element) -> Result<(), SendError> {
        let n = stanza::wire_size(&el);
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.recharge(0, n);
        self.enqueue(el, n)
    }

    /// Send a control message; false when the stream is gone.
    pub fn send(&self, input: Input) -> bool {
        self.inbox.send_batched(input).is_ok()
    }

    /// Close the inbox: later sends fail. Returns the stanzas that were waiting (their counts
    /// released), in order, those of a pair handed over ([`Input::Join`]) in its place;
    /// other inputs are dropped.
    pub fn close(&self) -> Vec<Element> {
        let mut out = Vec::new();
        for input in self.inbox.close() {
            match input {
                Input::Stanza(el, bytes) => {
                    self.taken(bytes);
                    out.push(el);
                }
                Input::Join { stanzas, .. } => out.extend(stanzas),
                Input::Verified { .. } => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stanza(n: usize) -> Element {
        Element::new("message", "jabber:server")
            .with_attr("from", "a@a.test")
            .with_attr("to", "b@b.test")
            .with_child(Element::new("body", "jabber:server").with_text("z".repeat(n)))
    }

    fn handle(per: usize, total: &Arc<ByteTotal>) -> Handle {
        Handle::new(1, StreamKind::Server, Inbox::new().unwrap(), 1000)
            .with_byte_caps(per, total.clone())
    }

    fn input() -> Input {
        Input::Stanza(stanza(1), 1)
    }

    /// Whether `fd` is readable within `ms` milliseconds.
    fn readable(fd: RawFd, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&raw mut p, 1, ms) == 1 }
    }

    #[test]
    fn bytes_are_capped_per_stream_and_in_total_and_released_when_taken() {
        let one = stanza::wire_size(&stanza(1000));
        let total = Arc::new(ByteTotal::new(5 * one));
        let a = handle(3 * one, &total);
        let b = handle(3 * one, &total);
        for _ in 0..3 {
            assert!(a.send_stanza(stanza(1000)).is_ok());
        }
        assert!(matches!(
            a.send_stanza(stanza(1000)),
            Err(SendError::Bytes(_, ByteCap::Stream))
        ));
        assert!(b.send_stanza(stanza(1000)).is_ok());
        assert!(b.send_stanza(stanza(1000)).is_ok());
        assert!(matches!(
            b.send_stanza(stanza(1000)),
            Err(SendError::Bytes(_, ByteCap::Total))
        ));
        assert_eq!(total.used(), 5 * one);
        // a's stanzas are handed back: their bytes are free again, for anyone.
        assert_eq!(a.close().len(), 3);
        assert_eq!((a.held_bytes(), total.used(), a.queued()), (0, 2 * one, 0));
        assert!(b.send_stanza(stanza(1000)).is_ok());
        // A send to a closed stream gives everything back.
        assert!(matches!(
            a.send_stanza(stanza(1000)),
            Err(SendError::Gone(_))
        ));
        assert_eq!((a.held_bytes(), total.used()), (0, 3 * one));
        // The core's queue counts too, and gives back on the way out.
        b.recharge(0, one);
        assert_eq!((b.held_bytes(), total.used()), (4 * one, 4 * one));
        b.recharge(one, 0);
        assert_eq!(total.used(), 3 * one);
    }

    #[test]
    fn an_empty_stream_takes_one_stanza_larger_than_its_cap() {
        let total = Arc::new(ByteTotal::new(1 << 20));
        let h = handle(100, &total);
        assert!(h.send_stanza(stanza(5000)).is_ok());
        assert!(matches!(
            h.send_stanza(stanza(1)),
            Err(SendError::Bytes(_, ByteCap::Stream))
        ));
    }

    #[test]
    fn only_a_sleeping_receiver_is_woken_and_once() {
        let inbox = Inbox::new().unwrap();
        // A busy receiver (not about to sleep): sends cost no system call.
        for _ in 0..3 {
            inbox.send(input()).unwrap();
        }
        assert!(!readable(inbox.fd(), 0), "no wake for a busy receiver");
        assert!(!inbox.prepare_sleep(), "items are queued: no sleep");
        let mut out = Vec::new();
        assert!(inbox.take(&mut out, 2), "one is left");
        assert!(!inbox.take(&mut out, 2));
        assert_eq!(out.len(), 3);
        // About to sleep: the next send wakes it, once.
        assert!(inbox.prepare_sleep());
        inbox.send(input()).unwrap();
        inbox.send(input()).unwrap();
        assert!(readable(inbox.fd(), 0));
        assert!(!inbox.take(&mut out, 8));
        assert!(!readable(inbox.fd(), 0), "taking clears the wake");
        // A shutdown from another thread wakes a receiver sleeping in poll.
        assert!(inbox.prepare_sleep());
        let i2 = inbox.clone();
        let t = std::thread::spawn(move || i2.shutdown());
        assert!(readable(inbox.fd(), 10_000));
        t.join().unwrap();
        assert!(!inbox.prepare_sleep(), "a pending shutdown keeps it awake");
        let _ = inbox.take_shutdown();
        inbox.take(&mut out, 8);
        // On a stream thread, wakes wait for the end of its turn, one for all it sent.
        assert!(inbox.prepare_sleep());
        let i2 = inbox.clone();
        let woke_early = std::thread::spawn(move || {
            defer_wakes();
            i2.send_batched(input()).unwrap();
            i2.send_batched(input()).unwrap();
            let early = readable(i2.fd(), 0);
            flush_wakes();
            early
        })
        .join()
        .unwrap();
        assert!(!woke_early, "not before the turn ends");
        assert!(readable(inbox.fd(), 0), "woken at its end");
        assert!(!inbox.take(&mut out, 8));
        inbox.shutdown();
        assert!(inbox.take_shutdown());
        assert!(!inbox.take_shutdown(), "seen once");
        // A poke while the receiver is busy keeps it from sleeping until it takes.
        inbox.poke();
        assert!(!inbox.prepare_sleep());
        inbox.take(&mut out, 8);
        assert!(inbox.prepare_sleep());
        // A receiver that takes nothing for now sleeps despite queued items, until the next
        // send (not woken again and again by the ones already queued).
        inbox.send(input()).unwrap();
        assert!(readable(inbox.fd(), 0));
        assert!(inbox.prepare_sleep_ignoring_items());
        assert!(!readable(inbox.fd(), 0), "the old wake is cleared");
        inbox.send(input()).unwrap();
        assert!(readable(inbox.fd(), 0), "a new send wakes it");
    }

    #[test]
    fn closing_returns_the_queue_refuses_sends_and_wakes_watchers() {
        let inbox = Inbox::new().unwrap();
        let watcher = Inbox::new().unwrap();
        inbox.watch(&watcher);
        assert!(watcher.prepare_sleep());
        inbox.send(input()).unwrap();
        assert!(!readable(watcher.fd(), 0));
        assert_eq!(inbox.close().len(), 1);
        assert!(inbox.is_closed());
        assert!(matches!(inbox.send(input()), Err(Input::Stanza(..))));
        assert!(readable(watcher.fd(), 0), "the watcher was woken");
        // Watching a closed inbox wakes at once.
        let late = Inbox::new().unwrap();
        assert!(late.prepare_sleep());
        inbox.watch(&late);
        assert!(readable(late.fd(), 0));
    }
}
