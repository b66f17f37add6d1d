//! A stream's connection: its transport, TLS once there is TLS, and what waits to be written —
//! with the stanzas among it not yet known to be written, so a connection that fails can give
//! them back to be bounced.
//!
//! Everything is non-blocking: [`Link::read`] takes what has arrived, [`Link::flush`] writes
//! what the socket takes, and [`Link::wait`] is the one place the stream thread sleeps, in
//! `poll(2)` on the socket and its inbox's wake descriptor, until the deadline it is given.

use crate::tls::{ReadEnd, Session};
use crate::transport::Transport;
use crate::xml::Element;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Bytes handed to TLS at a time: rustls encrypts what it is given at once, so this bounds the
/// ciphertext held while the socket is full.
const TLS_CHUNK: usize = 64 * 1024;
/// Socket reads per [`Link::read`] (plaintext), so one busy peer cannot hold the loop.
const READS_PER_STEP: usize = 8;
/// Size of one plaintext read.
const READ_SIZE: usize = 16 * 1024;
/// Capacity the write buffer shrinks back to once it drained after a burst.
pub(super) const WBUF_KEEP: usize = 16 * 1024;

/// See the module documentation.
pub(super) struct Link {
    sock: Box<dyn Transport>,
    tls: Option<Box<Session>>,
    /// TLS to switch to once everything queued before it (`<proceed/>`) is written.
    tls_next: Option<Box<Session>>,
    /// Plaintext queued and not yet handed to TLS or the socket: `out[sent..]`.
    out: Vec<u8>,
    sent: usize,
    /// Plaintext bytes queued since the link was made, and known written.
    queued_total: u64,
    written_total: u64,
    /// Stanzas among the queued bytes not known written yet, with the offset where each ends.
    stanzas: VecDeque<(u64, Element)>,
}

impl Link {
    /// A link over a connected transport.
    pub(super) fn new(sock: Box<dyn Transport>) -> Link {
        Link {
            sock,
            tls: None,
            tls_next: None,
            out: Vec::new(),
            sent: 0,
            queued_total: 0,
            written_total: 0,
            stanzas: VecDeque::new(),
        }
    }

    /// The TLS session, once TLS is in use.
    pub(super) fn tls(&self) -> Option<&Session> {
        self.tls.as_deref().or(self.tls_next.as_deref())
    }

    /// Switch to TLS once everything queued so far is written (our `<proceed/>` goes out in
    /// plaintext first). Client side, the ClientHello is queued at once.
    pub(super) fn start_tls(&mut self, session: Session) {
        self.tls_next = Some(Box::new(session));
    }

    /// Queue bytes to send.
    pub(super) fn queue(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
        self.queued_total += bytes.len() as u64;
    }

    /// Queue a stanza, remembered until its bytes are known written.
    pub(super) fn queue_stanza(&mut self, el: Element) {
        let before = self.out.len();
        crate::xml::write_element(&el, &mut self.out);
        self.queued_total += (self.out.len() - before) as u64;
        self.stanzas.push_back((self.queued_total, el));
    }

    /// Queue a non-stanza element.
    pub(super) fn queue_element(&mut self, el: &Element) {
        let before = self.out.len();
        crate::xml::write_element(el, &mut self.out);
        self.queued_total += (self.out.len() - before) as u64;
    }

    /// Plaintext bytes waiting to be written (not counting ciphertext TLS holds).
    pub(super) fn backlog(&self) -> usize {
        self.out.len() - self.sent
    }

    /// True while anything waits to be written.
    pub(super) fn wants_write(&self) -> bool {
        self.backlog() > 0
            || self.tls_next.is_some()
            || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Give back the write buffer's memory when nothing waits in it (an idle stream).
    pub(super) fn trim(&mut self) {
        if self.out.is_empty() {
            self.out = Vec::new();
        }
        if self.stanzas.is_empty() {
            self.stanzas = VecDeque::new();
        }
    }

    /// The stanzas not known written, in order (for bouncing when the link failed).
    pub(super) fn take_unsent(&mut self) -> Vec<Element> {
        self.stanzas.drain(..).map(|(_, el)| el).collect()
    }

    /// Read what has arrived: plaintext goes to `plain`. `Ok(None)` while the connection is
    /// open, `Ok(Some(end))` when the peer ended it.
    ///
    /// # Errors
    /// Socket errors, TLS failures.
    pub(super) fn read(&mut self, plain: &mut Vec<u8>) -> io::Result<Option<ReadEnd>> {
        if self.tls_next.is_some() {
            // Not before our <proceed/> is out and TLS has begun.
            return Ok(None);
        }
        if let Some(tls) = &mut self.tls {
            return match tls.read_from(&mut *self.sock, plain)? {
                ReadEnd::WouldBlock => Ok(None),
                end => Ok(Some(end)),
            };
        }
        // On the stack, not the heap: the heap then only holds what was read, and the stack
        // pages go back to the kernel when the thread sleeps (see `stack`).
        let mut buf = [0u8; READ_SIZE];
        for _ in 0..READS_PER_STEP {
            match self.sock.read(&mut buf) {
                Ok(0) => return Ok(Some(ReadEnd::Eof)),
                Ok(n) => {
                    plain.extend_from_slice(&buf[..n]);
                    if n < READ_SIZE {
                        return Ok(None);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Write what the socket takes now. `Ok(true)` when nothing is left; `Ok(false)` when the
    /// socket is full (poll for writability and call again).
    ///
    /// # Errors
    /// Socket errors other than `WouldBlock`, TLS failures.
    pub(super) fn flush(&mut self) -> io::Result<bool> {
        loop {
            let progress = match &mut self.tls {
                Some(tls) => Self::flush_tls(tls, &mut *self.sock, &self.out, &mut self.sent)?,
                None => self.flush_plain()?,
            };
            match progress {
                Flush::Again => {}
                Flush::Blocked => return Ok(false),
                Flush::Done => {
                    self.written_total = self.queued_total;
                    self.forget_written();
                    if let Some(next) = self.tls_next.take() {
                        self.tls = Some(next);
                        continue;
                    }
                    self.out.clear();
                    self.sent = 0;
                    super::caps::reclaim(&mut self.out, WBUF_KEEP);
                    return Ok(true);
                }
            }
        }
    }

    fn flush_plain(&mut self) -> io::Result<Flush> {
        if self.sent == self.out.len() {
            return Ok(Flush::Done);
        }
        match self.sock.write(&self.out[self.sent..]) {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                self.sent += n;
                self.written_total += n as u64;
                self.forget_written();
                Ok(Flush::Again)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Flush::Blocked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Flush::Again),
            Err(e) => Err(e),
        }
    }

    fn flush_tls(
        tls: &mut Session,
        sock: &mut dyn Transport,
        out: &[u8],
        sent: &mut usize,
    ) -> io::Result<Flush> {
        if tls.wants_write() {
            return Ok(if tls.write_to(sock)? {
                Flush::Again
            } else {
                Flush::Blocked
            });
        }
        if *sent == out.len() {
            return Ok(Flush::Done);
        }
        // Everything handed to TLS before is on the wire: hand over the next chunk.
        let end = out.len().min(*sent + TLS_CHUNK);
        tls.write_plain(&out[*sent..end])?;
        *sent = end;
        Ok(Flush::Again)
    }

    /// Drop the stanzas whose bytes are all written.
    fn forget_written(&mut self) {
        while self
            .stanzas
            .front()
            .is_some_and(|(end, _)| *end <= self.written_total)
        {
            self.stanzas.pop_front();
        }
    }

    /// Send close_notify (TLS) and stop sending, best effort and without waiting.
    pub(super) fn shutdown(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.close_notify();
        }
        let _ = self.flush();
        self.sock.shutdown_write();
    }

    /// Sleep until the socket is readable (when `read`), writable (when anything waits to be
    /// written), `wake` is readable, or `timeout` passes.
    ///
    /// # Errors
    /// `poll(2)` failed (not for EINTR, which returns as a wake-up).
    pub(super) fn wait(&self, wake: RawFd, read: bool, timeout: Duration) -> io::Result<()> {
        let mut events = 0;
        if read {
            events |= libc::POLLIN;
        }
        if self.wants_write() {
            events |= libc::POLLOUT;
        }
        let fds = [(self.sock.as_raw_fd(), events), (wake, libc::POLLIN)];
        poll(&fds, timeout).map(|_| ())
    }
}

enum Flush {
    Again,
    Blocked,
    Done,
}

/// `poll(2)` on `fds` (descriptor, events) for at most `timeout` (rounded up to a millisecond);
/// returns each descriptor's `revents`, all zero on timeout or EINTR.
///
/// # Errors
/// `poll(2)` failed otherwise.
pub(super) fn poll(
    fds: &[(RawFd, libc::c_short)],
    timeout: Duration,
) -> io::Result<Vec<libc::c_short>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `p` is a live, properly initialised array of `p.len()` pollfd structures for the
    // duration of the call; poll writes only their `revents` fields.
    let rc = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(p.iter().map(|p| p.revents).collect())
}
