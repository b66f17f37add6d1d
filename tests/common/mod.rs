//! Shared helpers for the integration tests: real `dialbackd` processes on their own
//! 127.x.y.z addresses, a test DNS server, an XEP-0114 component client and a raw
//! server-to-server peer. Every wait is bounded; every process started is stopped by PID.
#![allow(dead_code)]

pub mod dns_server;

use dialbackd::keys::DialbackSecret;
use dialbackd::tls::PeerCert;
use dialbackd::xml::{
    Element, Limits, StreamEvent, StreamReader, STANZAS_NS, STREAMS_ERR_NS, STREAM_NS,
};
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(20);

/// The generous bound on a daemon's peak resident memory (`VmHWM`) after an attack.
pub const PEAK_RSS_BOUND_KIB: usize = 64 * 1024;

/// A fresh loopback address for one server: 127.P.N.1 where P depends on the process (test
/// binaries never share addresses) and N counts up within it.
pub fn next_ip() -> Ipv4Addr {
    static N: AtomicU32 = AtomicU32::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let p = 20 + (std::process::id() % 200) as u8;
    Ipv4Addr::new(127, p, (n % 250) as u8, 1 + (n / 250) as u8)
}

/// A running `dialbackd` process.
pub struct Daemon {
    child: Child,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    /// Every line logged so far; the condvar is notified after each line.
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
    lines: Receiver<String>,
    pub name: String,
    /// What the daemon listens on, as it logged it: ("s2s", addr), ("component", addr), …
    pub listening: Vec<(String, SocketAddr)>,
}

impl Daemon {
    /// Write `config` (with `{ip}` and `{dir}` replaced) and start the daemon on it; returns
    /// once it logged that it listens.
    pub fn start(name: &str, ip: Ipv4Addr, config: &str) -> Daemon {
        Daemon::start_env(name, ip, config, &[])
    }

    /// [`Daemon::start`] with extra environment variables (`NOTIFY_SOCKET`, …).
    pub fn start_env(name: &str, ip: Ipv4Addr, config: &str, env: &[(&str, &str)]) -> Daemon {
        let dir =
            std::env::temp_dir().join(format!("dialbackd-test-{}-{name}-{ip}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let text = config
            .replace("{ip}", &ip.to_string())
            .replace("{dir}", &dir.display().to_string());
        let path = dir.join("dialbackd.toml");
        std::fs::write(&path, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_dialbackd"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dialbackd");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let (tx, lines) = mpsc::channel();
        let log2 = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.0.lock().unwrap().push(line.clone());
                log2.1.notify_all();
                let _ = tx.send(line);
            }
        });
        let mut d = Daemon {
            child,
            ip,
            dir,
            log,
            lines,
            name: name.to_string(),
            listening: Vec::new(),
        };
        // Listeners are on port 0 (a server already on *:5269 cannot break the tests); the
        // log line says which ports the kernel gave.
        let line = d.wait_log("listening on");
        let list = line.split("listening on ").nth(1).unwrap_or_default();
        d.listening = list
            .split(", ")
            .filter_map(|item| {
                let (kind, addr) = item.rsplit_once(' ')?;
                Some((kind.to_string(), addr.parse().ok()?))
            })
            .collect();
        d
    }

    /// Wait (bounded) for a log line containing `needle`; panics with the log if none comes.
    pub fn wait_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!(
                    "{}: no log line with {needle:?} in {WAIT:?}\n{}",
                    self.name,
                    self.log_text()
                ),
            }
        }
    }

    /// Everything the daemon logged so far.
    pub fn log_text(&self) -> String {
        self.log.0.lock().unwrap().join("\n")
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Block (bounded by [`WAIT`]) until the lines logged so far satisfy `pred`; whether they
    /// do.
    pub fn log_satisfies(&self, pred: impl Fn(&[String]) -> bool) -> bool {
        let (lock, cv) = &*self.log;
        let (log, _) = cv
            .wait_timeout_while(lock.lock().unwrap(), WAIT, |log| !pred(log))
            .unwrap();
        pred(&log)
    }

    /// Block (bounded by [`WAIT`]) until the lines logged so far satisfy `pred`; panics with
    /// `what` and the log if they do not in time.
    pub fn wait_until(&self, what: &str, pred: impl Fn(&[String]) -> bool) {
        if !self.log_satisfies(pred) {
            panic!(
                "{}: {what}: not within {WAIT:?}\n{}",
                self.name,
                self.log_text()
            );
        }
    }

    /// Block (bounded by [`WAIT`]) until at least `n` log lines contain `needle`.
    pub fn wait_log_count(&self, needle: &str, n: usize) {
        self.wait_until(&format!("{n} log lines with {needle:?}"), |log| {
            log.iter().filter(|l| l.contains(needle)).count() >= n
        });
    }

    /// The address of its status listener (its config has [`STATUS`]).
    pub fn status_addr(&self) -> SocketAddr {
        self.listener("status")
    }

    /// The body of `GET path` from its status listener; empty when it does not answer `200`.
    pub fn status_get(&self, path: &str) -> String {
        dialbackd::status::client::fetch(self.status_addr(), path).unwrap_or_default()
    }

    /// The value of the sample `series` (name and labels exactly as rendered) in its
    /// `/metrics`, once it satisfies `pred` (bounded, re-checked as it logs: each scrape logs
    /// a line); panics with the metrics and the log if it does not in time.
    pub fn wait_metric(&self, series: &str, pred: impl Fn(u64) -> bool) -> u64 {
        let value = |body: &str| {
            body.lines().find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .parse::<u64>()
                    .ok()
            })
        };
        let ok = self.log_satisfies(|_| value(&self.status_get("/metrics")).is_some_and(&pred));
        let body = self.status_get("/metrics");
        match value(&body) {
            Some(v) if ok => v,
            _ => panic!(
                "{}: {series} not as expected within {WAIT:?}\n{body}\n{}",
                self.name,
                self.log_text()
            ),
        }
    }

    /// The rows of its `/status`, each as column → value.
    pub fn status_rows(&self) -> Vec<HashMap<String, String>> {
        let text = self.status_get("/status");
        let mut lines = text.lines().skip(1);
        let columns: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
        lines
            .map(|l| {
                let cells = columns.iter().zip(l.split('\t'));
                cells.map(|(c, v)| (c.to_string(), v.to_string())).collect()
            })
            .collect()
    }

    /// Block (bounded, re-checked as it logs) until its `/status` has a row with each
    /// (column, value) of `want`; panics with the status and the log if none comes in time.
    pub fn wait_status_row(&self, want: &[(&str, &str)]) {
        let matches = |r: &HashMap<String, String>| {
            want.iter().all(|(c, v)| r.get(*c).is_some_and(|x| x == v))
        };
        if !self.log_satisfies(|_| self.status_rows().iter().any(matches)) {
            panic!(
                "{}: no /status row with {want:?} within {WAIT:?}\n{}\n{}",
                self.name,
                self.status_get("/status"),
                self.log_text()
            );
        }
    }

    fn listener(&self, kind: &str) -> SocketAddr {
        self.listening
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("{}: no {kind} listener in {:?}", self.name, self.listening))
    }

    pub fn s2s(&self) -> SocketAddr {
        self.listener("s2s")
    }

    pub fn direct_tls(&self) -> SocketAddr {
        self.listener("s2s direct TLS")
    }

    pub fn component_addr(&self) -> SocketAddr {
        self.listener("component")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of `/proc/PID/status`: a size in KiB (`VmHWM`) or a count (`Threads`).
    pub fn proc_status(&self, key: &str) -> usize {
        let pid = self.pid();
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("{}: /proc/{pid}/status: {e}", self.name));
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{}: no {key} in /proc/{pid}/status", self.name))
    }

    /// Peak resident memory (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> usize {
        self.proc_status("VmHWM")
    }

    /// Its peak resident memory is under [`PEAK_RSS_BOUND_KIB`].
    pub fn assert_peak_rss_bounded(&self) {
        let peak = self.peak_rss_kib();
        assert!(
            peak < PEAK_RSS_BOUND_KIB,
            "{}: peak RSS {peak} KiB, over {PEAK_RSS_BOUND_KIB}",
            self.name
        );
    }

    /// How many threads the process runs.
    pub fn threads(&self) -> usize {
        self.proc_status("Threads")
    }

    /// Wait (bounded by [`WAIT`]) until the process runs exactly `n` threads; panics with the
    /// count if not. Re-checked as the daemon logs and every 50 ms besides: a thread whose
    /// stream ended may wait up to a second for another stream before it exits, silently.
    pub fn wait_threads(&self, n: usize) {
        let until = Instant::now() + WAIT;
        let (lock, cv) = &*self.log;
        let mut log = lock.lock().unwrap();
        while self.threads() != n && Instant::now() < until {
            log = cv.wait_timeout(log, Duration::from_millis(50)).unwrap().0;
        }
        drop(log);
        if self.threads() != n {
            panic!(
                "{}: {} threads, expected {n}\n{}",
                self.name,
                self.threads(),
                self.log_text()
            );
        }
    }

    /// How many file descriptors the process holds open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap_or_else(|e| panic!("{}: /proc/PID/fd: {e}", self.name))
            .count()
    }

    /// The process still runs: not gone, and not a zombie (an exited child keeps its
    /// `/proc/PID` until it is reaped, which only `terminate` and `Drop` do).
    pub fn assert_alive(&self) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("{} died: {e}\n{}", self.name, self.log_text()));
        let state = status
            .lines()
            .find_map(|l| l.strip_prefix("State:"))
            .map(str::trim)
            .unwrap_or_default();
        assert!(
            !state.starts_with('Z') && !state.starts_with('X'),
            "{} died (state {state})\n{}",
            self.name,
            self.log_text()
        );
    }

    /// Send SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        self.wait_exit(WAIT)
    }

    /// Kill the process with SIGKILL and reap it: a crash (no stream closed, nothing bounced,
    /// every socket reset by the kernel).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait (bounded) for the process to exit. The log channel's timeout paces the checks,
    /// so a daemon that exits is noticed within 50 ms.
    fn wait_exit(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            let _ = self.lines.recv_timeout(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.pid().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                let _ = self.lines.recv_timeout(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() || std::env::var_os("DIALBACKD_TEST_LOGS").is_some() {
            eprintln!(
                "===== log of {} ({}) =====\n{}",
                self.name,
                self.ip,
                self.log_text()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client of XML streams: a transport, a reader thread delivering parsed events.
pub struct XmlConn {
    w: Box<dyn Write + Send>,
    events: Receiver<Result<StreamEvent, String>>,
    /// Shuts the transport down (the reader thread holds a clone of it).
    shutdown: Option<Box<dyn Fn() + Send>>,
    /// The TCP socket, for a plain TCP connection.
    sock: Option<TcpStream>,
}

impl Drop for XmlConn {
    /// Dropping the connection closes it.
    fn drop(&mut self) {
        if let Some(shutdown) = &self.shutdown {
            shutdown();
        }
    }
}

impl XmlConn {
    pub fn connect(addr: SocketAddr) -> XmlConn {
        let sock = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
        XmlConn::over(sock)
    }

    pub fn over(sock: TcpStream) -> XmlConn {
        sock.set_nodelay(true).unwrap();
        let rd = sock.try_clone().unwrap();
        let mut c = XmlConn::over_halves(Box::new(rd), Box::new(sock.try_clone().unwrap()));
        c.sock = sock.try_clone().ok();
        c.shutdown = Some(Box::new(move || {
            let _ = sock.shutdown(Shutdown::Both);
        }));
        c
    }

    /// A second handle on the socket (None over TLS), to write from another thread while this
    /// connection's events are read.
    pub fn socket(&self) -> Option<TcpStream> {
        self.sock.as_ref().and_then(|s| s.try_clone().ok())
    }

    /// TLS as a client over `sock`, from where TLS starts (after `<proceed/>`, or at once for
    /// direct TLS): `cfg`, TLS name `sni` (an IP literal in brackets sends no SNI). Returns the
    /// server's certificate and the connection over TLS; panics when the handshake fails. A
    /// relay thread owns the TLS connection and passes the plaintext over a socket pair.
    pub fn over_tls(
        mut sock: TcpStream,
        cfg: Arc<rustls::ClientConfig>,
        sni: &str,
    ) -> (Option<PeerCert>, XmlConn) {
        let name = match sni.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            Some(ip) => ServerName::try_from(ip.to_owned()),
            None => ServerName::try_from(sni.to_owned()),
        };
        let mut tls = rustls::ClientConnection::new(cfg, name.expect("a TLS name")).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        sock.set_write_timeout(Some(WAIT)).unwrap();
        for _ in 0..64 {
            if !tls.is_handshaking() {
                break;
            }
            tls.complete_io(&mut sock).expect("TLS handshake");
        }
        assert!(!tls.is_handshaking(), "TLS handshake unfinished");
        let cert = tls
            .peer_certificates()
            .and_then(|c| PeerCert::from_chain(c.to_vec()));
        let (ours, relay_end) = UnixStream::pair().unwrap();
        relay_end.set_write_timeout(Some(WAIT)).unwrap();
        thread::spawn(move || relay(tls, sock, relay_end));
        let rd = ours.try_clone().unwrap();
        let mut c = XmlConn::over_halves(Box::new(rd), Box::new(ours.try_clone().unwrap()));
        c.shutdown = Some(Box::new(move || {
            let _ = ours.shutdown(Shutdown::Both);
        }));
        (cert, c)
    }

    /// Over any transport (a TLS stream's halves).
    pub fn over_halves(rd: Box<dyn std::io::Read + Send>, w: Box<dyn Write + Send>) -> XmlConn {
        let (tx, events) = mpsc::channel();
        thread::spawn(move || {
            let mut r = StreamReader::new(rd, Limits::default());
            loop {
                let ev = r.next_event().map_err(|e| e.to_string());
                let end = !matches!(ev, Ok(StreamEvent::Header(_)) | Ok(StreamEvent::Element(_)));
                if tx.send(ev).is_err() || end {
                    return;
                }
            }
        });
        XmlConn {
            w,
            events,
            shutdown: None,
            sock: None,
        }
    }

    pub fn send(&mut self, xml: &str) {
        self.w.write_all(xml.as_bytes()).expect("write");
        self.w.flush().expect("flush");
    }

    /// Like `send`, but a refused write (the peer closed) is returned, not a panic.
    pub fn try_send(&mut self, xml: &str) -> std::io::Result<()> {
        self.w.write_all(xml.as_bytes())?;
        self.w.flush()
    }

    /// The next event, or None after `bound`.
    pub fn next(&self, bound: Duration) -> Option<Result<StreamEvent, String>> {
        self.events.recv_timeout(bound).ok()
    }

    /// The next element (skipping nothing); panics on anything else.
    pub fn element(&self) -> Element {
        match self.next(WAIT) {
            Some(Ok(StreamEvent::Element(e))) => e,
            other => panic!("expected an element, got {other:?}"),
        }
    }

    /// Wait for the next element satisfying `f`, skipping others; None if the stream ends or
    /// `bound` passes.
    pub fn element_where(&self, bound: Duration, f: impl Fn(&Element) -> bool) -> Option<Element> {
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(Ok(StreamEvent::Element(e))) if f(&e) => return Some(e),
                Some(Ok(StreamEvent::Element(_))) | Some(Ok(StreamEvent::Header(_))) => {}
                _ => return None,
            }
        }
    }

    pub fn header(&self) -> dialbackd::xml::StreamHeader {
        match self.next(WAIT) {
            Some(Ok(StreamEvent::Header(h))) => h,
            other => panic!("expected a stream header, got {other:?}"),
        }
    }

    /// The next event is the daemon's stream header for a stream it serves: `stream:stream`,
    /// from `from`, with a stream id.
    pub fn our_header(&self, from: &str) -> dialbackd::xml::StreamHeader {
        match self.next(WAIT) {
            Some(Ok(StreamEvent::Header(h))) => {
                assert_eq!((h.name.as_str(), h.ns.as_str()), ("stream", STREAM_NS));
                assert_eq!(h.from.as_deref(), Some(from), "{h:?}");
                assert!(h.id.is_some(), "no stream id: {h:?}");
                h
            }
            other => panic!("expected our stream header first, got {other:?}"),
        }
    }

    /// The condition of the next stream error (other elements are skipped).
    pub fn stream_error(&self) -> String {
        let e = self
            .element_where(WAIT, |e| e.name == "error")
            .expect("a stream error");
        stream_condition(&e)
    }

    /// The stream ends (closed, broken or silent) within [`WAIT`]; nothing else comes.
    pub fn assert_ends(&self) {
        let next = self.next(WAIT);
        assert!(
            matches!(next, Some(Ok(StreamEvent::Close)) | Some(Err(_)) | None),
            "the stream must end, got {next:?}"
        );
    }

    /// Connect to `addr` and write `header` then `payload` from another thread (a daemon
    /// that refuses stops reading, and the writer gives up after [`WAIT`]); returns the
    /// connection to read the answer on, and the writer to join.
    pub fn connect_sending(
        addr: SocketAddr,
        header: String,
        payload: String,
    ) -> (XmlConn, thread::JoinHandle<()>) {
        let sock = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
        let mut w = sock.try_clone().unwrap();
        w.set_write_timeout(Some(WAIT)).unwrap();
        let c = XmlConn::over(sock);
        let writer = thread::spawn(move || {
            let mut data = header.into_bytes();
            data.extend_from_slice(payload.as_bytes());
            for chunk in data.chunks(16 * 1024) {
                if w.write_all(chunk).is_err() {
                    return;
                }
            }
        });
        (c, writer)
    }
}

/// How long a TLS relay of [`XmlConn::over_tls`] lives at most, and its bound on steps.
const RELAY_BOUND: Duration = Duration::from_secs(300);
const RELAY_STEPS: usize = 10_000_000;

/// Relay plaintext between `plain` (an [`XmlConn`]'s side of a socket pair) and `tls` over
/// `net` until either side ends (or [`RELAY_BOUND`] passes), then close both: the end of the
/// TLS stream is EOF for the `XmlConn`, and its EOF sends close_notify.
fn relay(mut tls: rustls::ClientConnection, mut net: TcpStream, mut plain: UnixStream) {
    let deadline = Instant::now() + RELAY_BOUND;
    let mut buf = vec![0u8; 16 * 1024];
    for _ in 0..RELAY_STEPS {
        match relay_step(&mut tls, &mut net, &mut plain, &mut buf, deadline) {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
    }
    // What is left (close_notify, an alert): each write moves bytes or ends the loop.
    while tls.wants_write() && tls.write_tls(&mut net).is_ok_and(|n| n > 0) {}
    let _ = net.shutdown(Shutdown::Both);
    let _ = plain.shutdown(Shutdown::Both);
}

/// One step of [`relay`]; `Ok(false)` when the relay is over.
fn relay_step(
    tls: &mut rustls::ClientConnection,
    net: &mut TcpStream,
    plain: &mut UnixStream,
    buf: &mut [u8],
    deadline: Instant,
) -> std::io::Result<bool> {
    loop {
        match tls.reader().read(buf) {
            Ok(0) => return Ok(false),
            Ok(n) => plain.write_all(&buf[..n])?,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    while tls.wants_write() {
        tls.write_tls(net)?;
    }
    let Some([net_ready, plain_ready]) =
        poll_readable([net.as_raw_fd(), plain.as_raw_fd()], deadline)
    else {
        return Ok(false);
    };
    if net_ready {
        if tls.read_tls(net)? == 0 {
            return Ok(false);
        }
        if let Err(e) = tls.process_new_packets() {
            // The alert rustls queued goes out after the loop.
            return Err(std::io::Error::other(e));
        }
    }
    if plain_ready {
        let n = plain.read(buf)?;
        if n == 0 {
            tls.send_close_notify();
            return Ok(false);
        }
        tls.writer().write_all(&buf[..n])?;
    }
    Ok(true)
}

/// Wait in poll(2) until one of `fds` is readable (or closed); which ones are, or `None` when
/// `deadline` passes first.
fn poll_readable<const N: usize>(fds: [RawFd; N], deadline: Instant) -> Option<[bool; N]> {
    let mut p = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: `p` is a valid array of N pollfd structures for the whole call.
        let rc = unsafe { libc::poll(p.as_mut_ptr(), N as libc::nfds_t, ms) };
        if rc > 0 {
            return Some(p.map(|p| p.revents != 0));
        }
        if rc < 0 && std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
            return None;
        }
    }
}

/// The condition of stream error `e` (which must be a `<stream:error/>`): its child in the
/// stream-errors namespace other than `<text/>` (RFC 6120 §4.9.3).
pub fn stream_condition(e: &Element) -> String {
    assert!(e.is("error", STREAM_NS), "not a stream error: {e:?}");
    e.elements()
        .find(|x| x.ns == STREAMS_ERR_NS && x.name != "text")
        .map(|x| x.name.clone())
        .unwrap_or_default()
}

/// The `<error/>` child of a stanza or dialback answer of `type='error'`.
pub fn error_child(e: &Element) -> Option<&Element> {
    e.elements().find(|c| c.name == "error")
}

/// The condition of a stanza error, or of a dialback error (`<db:result type='error'>`,
/// XEP-0220 §2.5): the `<error/>` child's child in the stanza-errors namespace other than
/// `<text/>` (RFC 6120 §8.3.3).
pub fn error_condition(e: &Element) -> Option<String> {
    error_child(e)?
        .elements()
        .find(|c| c.ns == STANZAS_NS && c.name != "text")
        .map(|c| c.name.clone())
}

/// An XEP-0114 component connected and authenticated.
pub struct ComponentClient {
    pub conn: XmlConn,
    pub domain: String,
}

impl ComponentClient {
    pub fn connect(addr: SocketAddr, domain: &str, secret: &str) -> ComponentClient {
        let mut conn = XmlConn::connect(addr);
        conn.send(&format!(
            "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
        ));
        let h = conn.header();
        let id = h.id.expect("stream id");
        let digest = dialbackd::stream::component::handshake_digest(&id, secret);
        conn.send(&format!("<handshake>{digest}</handshake>"));
        let ack = conn.element();
        assert_eq!(
            ack.name, "handshake",
            "component handshake refused: {ack:?}"
        );
        ComponentClient {
            conn,
            domain: domain.to_string(),
        }
    }

    pub fn send(&mut self, xml: &str) {
        self.conn.send(xml);
    }

    /// The next stanza, within `bound`.
    pub fn recv(&self, bound: Duration) -> Option<Element> {
        self.conn.element_where(bound, |_| true)
    }
}

/// A TCP listener standing in for a remote server the test scripts by hand.
pub struct FakeServer {
    pub listener: TcpListener,
}

impl FakeServer {
    pub fn bind(ip: Ipv4Addr) -> FakeServer {
        FakeServer {
            listener: TcpListener::bind((ip, 0)).expect("bind fake server"),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    /// Accept one connection within the bound.
    pub fn accept(&self) -> XmlConn {
        self.listener.set_nonblocking(false).unwrap();
        let (tx, rx) = mpsc::channel();
        let l = self.listener.try_clone().unwrap();
        thread::spawn(move || {
            let _ = tx.send(l.accept());
        });
        let (sock, _) = rx
            .recv_timeout(WAIT)
            .expect("no connection came")
            .expect("accept");
        XmlConn::over(sock)
    }
}

/// `<stream:stream …>` of a server-to-server stream.
pub fn s2s_header(from: &str, to: &str, id: Option<&str>) -> String {
    let id = id.map(|i| format!(" id='{i}'")).unwrap_or_default();
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns:db='jabber:server:dialback' from='{from}' to='{to}' version='1.0'{id}>"
    )
}

/// Extra TOML for a status listener on the daemon's own address, at a port the kernel picks
/// ([`Daemon::status_addr`]).
pub const STATUS: &str = "[status]\nlisten = \"{ip}:0\"\n";

/// The networks test daemons may dial: they and their peers all live on 127.x.y.z, which the
/// private-network guard refuses unless allowed.
pub const TEST_ALLOW_NETWORKS: &[&str] = &["127.0.0.0/8"];

/// A daemon config: `domains`, components `(domain, secret)`, nameserver, extra TOML. It opts in
/// to dialling loopback (`[dns] allow_networks`, [`TEST_ALLOW_NETWORKS`]).
pub fn config(
    domains: &[&str],
    components: &[(&str, &str)],
    dns: SocketAddr,
    extra: &str,
) -> String {
    config_allowing(domains, components, dns, TEST_ALLOW_NETWORKS, extra)
}

/// [`config`] with `[dns] allow_networks = allow` (none: the default guard, for the tests that
/// prove it).
pub fn config_allowing(
    domains: &[&str],
    components: &[(&str, &str)],
    dns: SocketAddr,
    allow: &[&str],
    extra: &str,
) -> String {
    let mut s = format!(
        "domains = [{}]\n[listen]\ns2s = [\"{{ip}}:0\"]\ncomponent = \"{{ip}}:0\"\n[dns]\nnameservers = [\"{dns}\"]\n",
        domains.iter().map(|d| format!("\"{d}\"")).collect::<Vec<_>>().join(", ")
    );
    if !allow.is_empty() {
        s.push_str(&format!(
            "allow_networks = [{}]\n",
            allow
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    s.push_str("[timeouts]\nnegotiation = 15\ndialback = 15\nclose = 2\nshutdown = 6\ndns = 2\nconnect = 3\n");
    for (d, secret) in components {
        s.push_str(&format!(
            "[[component]]\ndomain = \"{d}\"\nsecret = \"{secret}\"\n"
        ));
    }
    s.push_str(extra);
    s
}

/// a.test as a real daemon with dialback secret `secret` (so that a test can mint its keys),
/// published in `dns`: the Authoritative Server of a legitimate dialback from a.test.
pub fn a_test_daemon(dns: &dns_server::TestDns, secret: &str) -> Daemon {
    let a = Daemon::start(
        "a",
        next_ip(),
        &format!(
            "dialback_secret = \"{secret}\"\n{}",
            config(&["a.test"], &[], dns.addr(), "")
        ),
    );
    publish(dns, "a.test", a.s2s());
    a
}

/// The `<db:result/>` by which `from`'s server, whose dialback secret is `secret`, claims
/// `from` towards `to` on the stream `id` (XEP-0220 §2.1.1, the key per XEP-0185).
pub fn db_result(from: &str, to: &str, id: &str, secret: &str) -> String {
    let key = DialbackSecret::from_secret(secret).key(to, from, id);
    format!("<db:result from='{from}' to='{to}'>{key}</db:result>")
}

/// A legitimate peer and the daemon under test: a.test as a real daemon (see
/// [`a_test_daemon`]) and b.test, both published in `dns`.
pub struct AandB {
    pub dns: dns_server::TestDns,
    pub a: Daemon,
    pub b: Daemon,
}

impl AandB {
    /// a.test with dialback secret `secret`, and b.test on the config `b_config` writes from
    /// the DNS server's address and a.test's s2s address.
    pub fn start(secret: &str, b_config: impl FnOnce(SocketAddr, SocketAddr) -> String) -> AandB {
        let dns = dns_server::TestDns::start(IpAddr::V4(next_ip()));
        let a = a_test_daemon(&dns, secret);
        let b = Daemon::start("b", next_ip(), &b_config(dns.addr(), a.s2s()));
        publish(&dns, "b.test", b.s2s());
        AandB { dns, a, b }
    }
}

/// Open a server-to-server stream to `d` as `from` for `to`, and read the daemon's header
/// (from `to`, with a stream id) and its features; returns the stream and its id.
pub fn open_s2s(d: &Daemon, from: &str, to: &str) -> (XmlConn, String) {
    let mut c = XmlConn::connect(d.s2s());
    c.send(&s2s_header(from, to, None));
    let id = c.our_header(to).id.unwrap_or_default();
    let features = c.element();
    assert_eq!(features.name, "features", "{features:?}");
    (c, id)
}

/// Open a stream to `d` as a.test for b.test and send the db:result with the key a.test's
/// daemon (dialback secret `secret`) mints for this stream (XEP-0185); returns the stream,
/// waiting for the answer.
pub fn send_db_result(d: &Daemon, secret: &str) -> XmlConn {
    let (mut c, id) = open_s2s(d, "a.test", "b.test");
    c.send(&db_result("a.test", "b.test", &id, secret));
    c
}

/// The answer to the db:result on `c` is `valid`.
pub fn expect_valid(c: &XmlConn, d: &Daemon) {
    let r = c
        .element_where(WAIT, |e| e.name == "result")
        .expect("an answer to our db:result");
    assert_eq!(r.attr("type"), Some("valid"), "{r:?}\n{}", d.log_text());
}

/// A legitimate dialback: `d` is alive and a.test, whose real daemon (dialback secret
/// `secret`) is its Authoritative Server, passes dialback with b.test; returns the verified
/// stream.
pub fn dialback_as_a(d: &Daemon, secret: &str) -> XmlConn {
    d.assert_alive();
    let c = send_db_result(d, secret);
    expect_valid(&c, d);
    c
}

/// Make `name` resolve to `addr` through an `_xmpp-server._tcp` SRV record (RFC 6120 §3.2.1).
pub fn publish(dns: &dns_server::TestDns, name: &str, addr: SocketAddr) {
    let target = format!("host.{name}");
    dns.add_srv(
        &format!("_xmpp-server._tcp.{name}"),
        10,
        0,
        addr.port(),
        &target,
    );
    match addr.ip() {
        IpAddr::V4(ip) => dns.add_a(&target, ip),
        IpAddr::V6(ip) => dns.add_aaaa(&target, ip),
    }
}

/// A port free on `ip` now (the daemon binds it right after; the address is this test's own).
pub fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// TCP connections in ESTABLISHED state whose accepting end is one of `listeners` (each
/// connection counted once, at the end that accepted it), from /proc/net/tcp (IPv4).
pub fn established_to(listeners: &[SocketAddr]) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let wanted: Vec<String> = listeners.iter().map(proc_addr).collect();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "01" && wanted.iter().any(|w| w == f[1])
        })
        .count()
}

/// `addr` as /proc/net/tcp writes a local IPv4 address: the address as a little-endian u32 in
/// hex, a colon, the port in hex.
fn proc_addr(addr: &SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only: {addr}")
    };
    let ip = u32::from_le_bytes(v4.ip().octets());
    format!("{ip:08X}:{:04X}", v4.port())
}
