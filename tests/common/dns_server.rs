//! A tiny authoritative DNS server for integration tests.
//!
//! Serves UDP and TCP on the same port of a loopback address. Records live in
//! a shared table and can be added while the server runs. A name with no
//! records gets NXDOMAIN; a name with records of other types gets NOERROR
//! with an empty answer (NODATA). Answers carry TTL 300 unless [`TestDns::set_ttl`] says
//! otherwise; negative answers carry no SOA record unless [`TestDns::set_negative_ttl`] asks
//! for one. Per-name fault injection: truncated UDP answers, SERVFAIL, or no answer at all.
//! Queries are counted, in total and per (name, type).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// How often the server threads look at the stop flag.
const POLL: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Zone {
    records: HashMap<String, Vec<RData>>,
    truncate: HashSet<String>,
    servfail: HashSet<String>,
    drop: HashSet<String>,
    /// Queries received per (name, type).
    asked: HashMap<(String, RecordType), usize>,
    /// The SOA TTL (and MINIMUM) of negative answers; `None`: no SOA.
    negative_ttl: Option<u32>,
}

struct Shared {
    zone: Mutex<Zone>,
    queries: AtomicUsize,
    ttl: AtomicU32,
    stop: AtomicBool,
}

pub struct TestDns {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

fn key(name: &str) -> String {
    let name = name.trim();
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn fqdn(name: &str) -> Name {
    let k = key(name);
    if k.is_empty() {
        return Name::root();
    }
    Name::from_str_relaxed(format!("{k}.")).expect("test DNS name")
}

impl TestDns {
    /// Start serving on `ip` on a random free port (UDP and TCP, same port).
    pub fn start(ip: IpAddr) -> TestDns {
        let (udp, tcp) = (0..20)
            .find_map(|_| {
                let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).ok()?;
                let port = udp.local_addr().ok()?.port();
                let tcp = TcpListener::bind(SocketAddr::new(ip, port)).ok()?;
                Some((udp, tcp))
            })
            .expect("could not bind UDP and TCP on the same port");
        let addr = udp.local_addr().expect("local addr");
        udp.set_read_timeout(Some(POLL)).expect("udp timeout");
        let shared = Arc::new(Shared {
            zone: Mutex::new(Zone::default()),
            queries: AtomicUsize::new(0),
            ttl: AtomicU32::new(300),
            stop: AtomicBool::new(false),
        });
        let s1 = shared.clone();
        let t_udp = thread::Builder::new()
            .name("testdns-udp".into())
            .spawn(move || udp_loop(udp, s1))
            .expect("spawn");
        let s2 = shared.clone();
        let t_tcp = thread::Builder::new()
            .name("testdns-tcp".into())
            .spawn(move || tcp_loop(tcp, s2))
            .expect("spawn");
        TestDns {
            addr,
            shared,
            threads: vec![t_udp, t_tcp],
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn add(&self, name: &str, data: RData) {
        let mut z = self.shared.zone.lock().unwrap();
        z.records.entry(key(name)).or_default().push(data);
    }

    pub fn add_srv(&self, name: &str, priority: u16, weight: u16, port: u16, target: &str) {
        self.add(
            name,
            RData::SRV(SRV::new(priority, weight, port, fqdn(target))),
        );
    }

    pub fn add_a(&self, name: &str, ip: Ipv4Addr) {
        self.add(name, RData::A(A(ip)));
    }

    pub fn add_aaaa(&self, name: &str, ip: Ipv6Addr) {
        self.add(name, RData::AAAA(AAAA(ip)));
    }

    /// Every UDP answer for `name` comes back truncated (TC=1, no answers).
    pub fn truncate_udp(&self, name: &str) {
        self.shared.zone.lock().unwrap().truncate.insert(key(name));
    }

    /// Answer SERVFAIL for `name`.
    pub fn servfail(&self, name: &str) {
        self.shared.zone.lock().unwrap().servfail.insert(key(name));
    }

    /// Never answer queries for `name` (UDP or TCP).
    pub fn drop_queries(&self, name: &str) {
        self.shared.zone.lock().unwrap().drop.insert(key(name));
    }

    /// How many queries were received (UDP and TCP, including dropped ones).
    pub fn query_count(&self) -> usize {
        self.shared.queries.load(Ordering::SeqCst)
    }

    /// How many queries for `name` and `rtype` were received (as [`TestDns::query_count`]).
    pub fn queries_for(&self, name: &str, rtype: RecordType) -> usize {
        let z = self.shared.zone.lock().unwrap();
        z.asked.get(&(key(name), rtype)).copied().unwrap_or(0)
    }

    /// The TTL of the records in later answers (default 300).
    pub fn set_ttl(&self, secs: u32) {
        self.shared.ttl.store(secs, Ordering::SeqCst);
    }

    /// Later negative answers (NXDOMAIN, NODATA) carry an SOA record with this TTL and
    /// MINIMUM, which makes them cacheable for that long (RFC 2308 §5).
    pub fn set_negative_ttl(&self, secs: u32) {
        self.shared.zone.lock().unwrap().negative_ttl = Some(secs);
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the TCP thread's blocking accept (the UDP one wakes on its read timeout).
        let _ = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(2));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Build the answer to `query`; `None` means stay silent.
fn answer(shared: &Shared, query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    if req.metadata.message_type != MessageType::Query {
        return None;
    }
    shared.queries.fetch_add(1, Ordering::SeqCst);
    let mut resp = Message::response(req.metadata.id, OpCode::Query);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = true;
    let Some(q) = req.queries.first().cloned() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp.to_vec().ok();
    };
    let k = key(&q.name().to_ascii());
    resp.add_query(q.clone());
    let mut zone = shared.zone.lock().unwrap();
    *zone.asked.entry((k.clone(), q.query_type())).or_default() += 1;
    if zone.drop.contains(&k) {
        return None;
    }
    let ttl = shared.ttl.load(Ordering::SeqCst);
    if zone.servfail.contains(&k) {
        resp.metadata.response_code = ResponseCode::ServFail;
    } else if udp && zone.truncate.contains(&k) {
        resp.metadata.truncation = true;
    } else if let Some(rdatas) = zone.records.get(&k) {
        for rd in rdatas {
            if rd.record_type() == q.query_type() || q.query_type() == RecordType::ANY {
                resp.add_answer(Record::from_rdata(q.name().clone(), ttl, rd.clone()));
            }
        }
    } else {
        resp.metadata.response_code = ResponseCode::NXDomain;
    }
    let negative = resp.answers.is_empty() && !resp.metadata.truncation;
    if negative && resp.metadata.response_code != ResponseCode::ServFail {
        if let Some(neg) = zone.negative_ttl {
            resp.add_authority(soa_record(neg));
        }
    }
    resp.to_vec().ok()
}

/// The SOA record of the `test.` zone, with TTL and MINIMUM `ttl`.
fn soa_record(ttl: u32) -> Record {
    let soa = SOA::new(
        fqdn("ns.test"),
        fqdn("hostmaster.test"),
        1,
        3600,
        600,
        86400,
        ttl,
    );
    Record::from_rdata(fqdn("test"), ttl, RData::SOA(soa))
}

fn udp_loop(sock: UdpSocket, shared: Arc<Shared>) {
    let mut buf = [0u8; 4096];
    while !shared.stop.load(Ordering::SeqCst) {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => continue, // read timeout: check the stop flag
        };
        if let Some(out) = answer(&shared, &buf[..n], true) {
            let _ = sock.send_to(&out, peer);
        }
    }
}

/// Blocking accept; `Drop` wakes it with a connection to itself after setting the stop flag.
fn tcp_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(stream) = stream {
            let _ = serve_tcp(stream, &shared);
        }
    }
}

/// Serve length-prefixed queries on one connection until EOF, an error, or stop.
fn serve_tcp(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    loop {
        let mut len = [0u8; 2];
        read_full(&mut stream, &mut len, shared)?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        read_full(&mut stream, &mut body, shared)?;
        if let Some(out) = answer(shared, &body, false) {
            let mut framed = (out.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&out);
            stream.write_all(&framed)?;
        }
    }
}

fn read_full(stream: &mut TcpStream, buf: &mut [u8], shared: &Shared) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        if shared.stop.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        match stream.read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
