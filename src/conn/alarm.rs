//! One thread for the deadlines of parked streams: at a stream's next deadline (keepalive,
//! idle close) it sends the stream a `Tick`, which resumes its worker.

use super::{Inbox, Input};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::thread;
use std::time::{Duration, Instant};

/// The longest the alarm thread sleeps without checking its list.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

#[derive(Default)]
struct Alarm {
    state: Mutex<Deadlines>,
    changed: Condvar,
}

#[derive(Default)]
struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    inboxes: HashMap<u64, Weak<Inbox>>,
    next: u64,
}

fn alarm() -> &'static Arc<Alarm> {
    static ALARM: OnceLock<Arc<Alarm>> = OnceLock::new();
    ALARM.get_or_init(|| {
        let a = Arc::new(Alarm::default());
        let a2 = a.clone();
        // If the thread cannot start, parked streams still wake on their next input; log it.
        if let Err(e) = thread::Builder::new()
            .name("alarm".into())
            .stack_size(64 * 1024)
            .spawn(move || run(&a2))
        {
            log::error!(
                "cannot start the alarm thread: {e}; idle streams will not send keepalives"
            );
        }
        a
    })
}

/// Send `inbox` a `Tick` at `deadline` (if it still exists then).
pub(super) fn wake_at(deadline: Instant, inbox: Weak<Inbox>) {
    let a = alarm();
    let mut st = a.state.lock().unwrap_or_else(|p| p.into_inner());
    let n = st.next;
    st.next += 1;
    st.heap.push(Reverse((deadline, n)));
    st.inboxes.insert(n, inbox);
    a.changed.notify_one();
}

fn run(a: &Alarm) {
    loop {
        let due: Vec<Weak<Inbox>> = {
            let mut st = a.state.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                let now = Instant::now();
                let mut due = Vec::new();
                while let Some(Reverse((t, n))) = st.heap.peek().copied() {
                    if t > now {
                        break;
                    }
                    st.heap.pop();
                    if let Some(w) = st.inboxes.remove(&n) {
                        due.push(w);
                    }
                }
                if !due.is_empty() {
                    break due;
                }
                let wait = st.heap.peek().map_or(MAX_SLEEP, |Reverse((t, _))| {
                    t.saturating_duration_since(now)
                });
                st = a
                    .changed
                    .wait_timeout(st, wait.min(MAX_SLEEP))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        };
        // Outside the lock: a send may resume a worker (spawning its thread).
        for w in due {
            if let Some(inbox) = w.upgrade() {
                let _ = inbox.send(Input::Tick);
            }
        }
    }
}
