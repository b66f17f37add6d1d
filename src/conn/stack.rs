//! What a sleeping stream thread keeps of its stack: only the frames it sleeps in.
//!
//! A stream thread touches its stack deeply now and then (the TLS handshake, DNS for a dial,
//! parsing a large stanza), and a new thread may be given the stack of one that ended (glibc
//! keeps stacks for reuse) with all its pages still resident. Before a long sleep the thread
//! gives the part of its stack below its current frame back to the kernel (`madvise` with
//! `MADV_DONTNEED`: the pages read as zero again when touched). Measured: 56 KiB of stack per
//! idle stream before, see BENCHMARKS.md for after.
//!
//! Why this is sound: memory below the stack pointer belongs to no live frame, and nothing else
//! runs on this stack — the stream threads block the asynchronous signals ([`block_signals`]),
//! so no signal handler can be running below us while the pages go, and Rust's own stack
//! overflow handler runs on its alternate signal stack.

use std::cell::Cell;

/// Left untouched below [`release`]'s own frame: room for the `madvise` call it makes.
const MARGIN: usize = 1024;

thread_local! {
    /// The lowest address of this thread's stack (0: not known).
    static LOW: Cell<usize> = const { Cell::new(0) };
}

/// Block the asynchronous signals in the calling thread: SIGTERM, SIGINT and SIGHUP then
/// reach the accept loop's thread, where the daemon handles them, and never interrupt a stream
/// thread. Synchronous faults (SIGSEGV, SIGBUS, …) stay as they are.
pub(super) fn block_signals() {
    // SAFETY: `set` is a local sigset_t initialised by sigfillset before use; pthread_sigmask
    // reads it and changes only the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&raw mut set);
        for sig in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
            libc::SIGABRT,
        ] {
            libc::sigdelset(&raw mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
    }
    LOW.with(|low| low.set(stack_low().unwrap_or(0)));
}

/// The lowest address of the calling thread's stack, from `pthread_getattr_np`.
fn stack_low() -> Option<usize> {
    // SAFETY: `attr` is initialised by pthread_getattr_np before it is read and destroyed
    // after; the out-pointers are to locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &raw mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&raw const attr, &raw mut addr, &raw mut size);
        libc::pthread_attr_destroy(&raw mut attr);
        (rc == 0 && size > 0).then_some(addr as usize)
    }
}

/// Give back the pages of this thread's stack below the caller's frame (minus [`MARGIN`]).
/// Does nothing in a thread that did not call [`block_signals`] first.
#[inline(never)]
pub(super) fn release() {
    let low = LOW.with(Cell::get);
    if low == 0 {
        return;
    }
    let here = 0u8;
    let sp = std::ptr::addr_of!(here) as usize;
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let from = low.div_ceil(page) * page;
    let to = sp.saturating_sub(MARGIN) / page * page;
    if to > from {
        // SAFETY: [from, to) lies within this thread's stack, below every live frame (the
        // stack grows down and `to` is under our own frame by MARGIN), and no signal handler
        // runs on this thread (see the module doc); MADV_DONTNEED on private anonymous memory
        // only makes those pages read as zero when next touched.
        unsafe {
            libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_DONTNEED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Touch `n` KiB of stack below the caller.
    #[inline(never)]
    fn deep(n: usize) -> u8 {
        let mut buf = [1u8; 1024];
        std::hint::black_box(&mut buf);
        if n == 0 {
            buf[0]
        } else {
            buf[7].wrapping_add(deep(n - 1))
        }
    }

    /// Resident KiB of the mapping that holds `addr`, from /proc/self/smaps.
    fn resident_kib_at(addr: usize) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) =
                        (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                    {
                        inside = (a..b).contains(&addr);
                        continue;
                    }
                }
            }
            if inside {
                if let Some(kb) = line.strip_prefix("Rss:") {
                    return kb.trim().trim_end_matches(" kB").trim().parse().unwrap();
                }
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn a_deep_stack_is_given_back_and_the_thread_goes_on() {
        let t = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(|| {
                block_signals();
                let here = 0u8;
                let addr = std::ptr::addr_of!(here) as usize;
                assert_eq!(deep(200), 201);
                let before = resident_kib_at(addr);
                release();
                let after = resident_kib_at(addr);
                // The thread still works, deep again.
                deep(100);
                (before, after)
            })
            .unwrap();
        let (before, after) = t.join().unwrap();
        assert!(
            before >= 200,
            "the deep call touched its stack: {before} KiB"
        );
        assert!(after <= 64, "given back: {before} KiB → {after} KiB");
    }
}
