//! Blocking DNS lookups for server-to-server connections.
//!
//! This module finds where to connect for outbound S2S traffic to a remote
//! domain:
//!
//! * `_xmpp-server._tcp.<domain>` SRV records (RFC 6120 §3.2.1), ordered by
//!   priority and weight as RFC 2782 describes ([`order_srv`]);
//! * `_xmpps-server._tcp.<domain>` SRV records for direct TLS (XEP-0368),
//!   merged with the plain records into one RFC 2782 set;
//! * the fallback to the domain itself on port 5269 when there are no SRV
//!   records (RFC 6120 §3.2.2);
//! * A and AAAA lookups of the chosen targets ([`Resolver::ips`]);
//! * the private-network guard ([`NetworkPolicy`]): which resolved addresses and which
//!   IP-literal domains may be dialled (`[dns] allow_networks`);
//! * a cache of answers ([`Cache`], `[dns] cache_*`), shared by every clone of a
//!   [`Resolver`]: SRV, A and AAAA answers, positive and negative, kept for their TTL (the
//!   negative TTL from the SOA record per RFC 2308 §5) clamped to a floor and a ceiling, in a
//!   bounded table; concurrent lookups of one (name, type) send one query and share its result.
//!
//! It is a small stub resolver: `hickory-proto` encodes and decodes the
//! messages, and `std::net` sockets carry them (UDP, with a TCP retry when the
//! answer is truncated). Each query uses a fresh UDP socket (random source
//! port), a random 16-bit id, recursion desired and EDNS with a 1232-byte
//! payload. Answers whose id, question name or type don't match are ignored.
//! Every query has a hard overall deadline, so a lookup never blocks longer
//! than `timeout * attempts * nameservers`, and at most 64 queries are in flight at once
//! (`inflight`: a burst waits its turn instead of overflowing the nameserver's socket).
//!
//! Out of scope: `/etc/hosts`, `search`/`ndots` handling (all names
//! are queried as fully qualified), DNSSEC, and non-ASCII (IDNA) names, which
//! are rejected with [`DnsError::BadName`]. Connecting to the targets, and
//! trying every address of a target before the next one, is the caller's job.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use ring::rand::{SecureRandom, SystemRandom};

mod cache;
mod inflight;
mod policy;
mod srv;
pub use cache::{Cache, CacheLimits, CacheStats, Clock, WaitTimedOut};
pub use policy::{special, Cidr, NetworkPolicy, Refusal, SPECIAL};
use srv::order_by;
pub use srv::{order_srv, system_rand};

/// Default S2S port used for the A/AAAA fallback (RFC 6120 §3.2.2).
pub const DEFAULT_S2S_PORT: u16 = 5269;

/// EDNS UDP payload size we advertise (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;

/// The read buffer of a UDP answer: room for more than the payload we advertise.
const UDP_BUFFER: usize = 4096;

/// Number of passes over the nameserver list.
const ATTEMPTS: usize = 2;

/// The daemon's queries in flight (see [`inflight`]).
static IN_FLIGHT: inflight::Limiter = inflight::Limiter::new(inflight::MAX_IN_FLIGHT);

/// One SRV resource record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Lowercase, without the trailing dot; the root target is kept as `"."`.
    pub target: String,
}

/// A place to connect to, in the order returned by [`Resolver::resolve_s2s`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// Connect with TLS from the first byte (XEP-0368); otherwise plain TCP
    /// (STARTTLS later).
    pub direct_tls: bool,
}

/// Why a lookup failed.
#[derive(Debug)]
pub enum DnsError {
    /// The only `_xmpp-server` record has target `"."`: the service is
    /// decidedly not available (RFC 6120 §3.2.1).
    NoService,
    /// No answer from any nameserver within the bound.
    Timeout,
    /// SERVFAIL/REFUSED/other error rcode, or a malformed answer.
    ServerFailure(String),
    /// The name cannot be encoded as a DNS name.
    BadName(String),
    Io(io::Error),
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::NoService => {
                f.write_str("service decidedly not available (SRV target \".\")")
            }
            DnsError::Timeout => f.write_str("DNS query timed out"),
            DnsError::ServerFailure(s) => write!(f, "DNS server failure: {s}"),
            DnsError::BadName(s) => write!(f, "invalid DNS name: {s}"),
            DnsError::Io(e) => write!(f, "DNS I/O error: {e}"),
        }
    }
}

impl std::error::Error for DnsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DnsError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for DnsError {
    fn from(e: io::Error) -> Self {
        DnsError::Io(e)
    }
}

/// A caller that waited for another caller's query of the same name timed out.
impl From<WaitTimedOut> for DnsError {
    fn from(_: WaitTimedOut) -> Self {
        DnsError::Timeout
    }
}

/// A copy, for every caller that waited for one query (an I/O error keeps its kind and text).
impl Clone for DnsError {
    fn clone(&self) -> Self {
        match self {
            DnsError::NoService => DnsError::NoService,
            DnsError::Timeout => DnsError::Timeout,
            DnsError::ServerFailure(s) => DnsError::ServerFailure(s.clone()),
            DnsError::BadName(s) => DnsError::BadName(s.clone()),
            DnsError::Io(e) => DnsError::Io(io::Error::new(e.kind(), e.to_string())),
        }
    }
}

impl DnsError {
    /// True when the failure means "the domain does not exist / has no XMPP
    /// service" (bounce `remote-server-not-found`) rather than a transient
    /// failure. A name that cannot be a DNS name ([`DnsError::BadName`]) also
    /// counts as not found.
    pub fn is_not_found(&self) -> bool {
        matches!(self, DnsError::NoService | DnsError::BadName(_))
    }
}

/// Result of one successful exchange.
enum Answer {
    /// NOERROR: the answer section (possibly empty = NODATA), and the negative TTL the
    /// authority section gives (for NODATA).
    Records(Vec<Record>, u32),
    /// NXDOMAIN, with the negative TTL the authority section gives.
    NxDomain(u32),
}

/// What the cache keeps for one (name, type): the SRV records of an SRV query, or the
/// addresses of an A or AAAA query (empty: NXDOMAIN or no records).
#[derive(Clone, Debug, Default)]
struct Records {
    srv: Vec<SrvRecord>,
    ips: Vec<IpAddr>,
}

/// The resolver's cache: by lowercase name without the trailing dot, and type.
type AnswerCache = Cache<(String, RecordType), Records, DnsError>;

/// A blocking stub resolver (see the module documentation). Clones share one cache.
#[derive(Clone)]
pub struct Resolver {
    nameservers: Vec<SocketAddr>,
    timeout: Duration,
    attempts: usize,
    cache: Arc<AnswerCache>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("nameservers", &self.nameservers)
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .field("cache", &self.cache.limits())
            .finish()
    }
}

impl Resolver {
    /// Use these nameservers (ip:port). `timeout` bounds each query attempt. No answer is
    /// kept ([`Resolver::with_cache`] turns the cache on); concurrent lookups of one name
    /// are coalesced all the same.
    pub fn new(nameservers: Vec<SocketAddr>, timeout: Duration) -> Resolver {
        Resolver {
            nameservers,
            timeout,
            attempts: ATTEMPTS,
            cache: Arc::new(Cache::new(CacheLimits::OFF)),
        }
    }

    /// This resolver with a new, empty cache of answers with these limits (shared by its
    /// clones from then on).
    pub fn with_cache(self, limits: CacheLimits) -> Resolver {
        Resolver {
            cache: Arc::new(Cache::new(limits)),
            ..self
        }
    }

    /// This resolver asking its own nameservers within its own timeout, but sharing `other`'s
    /// cache of answers (a configuration reload that changes `[dns] nameservers` or
    /// `[timeouts] dns` keeps what is cached, and the cache's counters).
    pub fn sharing_cache(self, other: &Resolver) -> Resolver {
        Resolver {
            cache: other.cache.clone(),
            ..self
        }
    }

    /// The cache's counters (hits, queries sent, coalesced lookups, answers held).
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Nameservers from `nameserver` lines of /etc/resolv.conf (port 53).
    /// Error if the file has none.
    pub fn from_system(timeout: Duration) -> io::Result<Resolver> {
        let text = std::fs::read_to_string("/etc/resolv.conf")?;
        let ns = Self::parse_resolv_conf(&text);
        if ns.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no nameserver lines in /etc/resolv.conf",
            ));
        }
        Ok(Resolver::new(ns, timeout))
    }

    /// Parse resolv.conf text: `nameserver <ip>` lines, port 53. Comments
    /// (`#`, `;`) and unparsable addresses are skipped. An IPv6 zone index is
    /// kept when it is numeric (`fe80::1%2`); named zones are skipped.
    pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            if words.next() != Some("nameserver") {
                continue;
            }
            let Some(addr) = words.next() else { continue };
            if let Ok(ip) = addr.parse::<IpAddr>() {
                out.push(SocketAddr::new(ip, 53));
            } else if let Some((ip, zone)) = addr.split_once('%') {
                if let (Ok(ip), Ok(scope)) = (ip.parse(), zone.parse()) {
                    out.push(SocketAddr::V6(std::net::SocketAddrV6::new(
                        ip, 53, 0, scope,
                    )));
                }
            }
        }
        out
    }

    /// SRV records for `name` (e.g. `_xmpp-server._tcp.example.org`), in
    /// answer order. NXDOMAIN or NODATA give `Ok(empty)`.
    pub fn srv(&self, name: &str) -> Result<Vec<SrvRecord>, DnsError> {
        let qname = to_name(name)?;
        Ok(self.cached(&qname, RecordType::SRV)?.srv)
    }

    /// A and AAAA addresses of `host` (IPv4 first, then IPv6). NXDOMAIN/NODATA
    /// give `Ok(empty)`. An IP literal is returned without querying.
    pub fn ips(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let qname = to_name(host)?;
        let v4 = self.addresses(&qname, RecordType::A);
        let v6 = self.addresses(&qname, RecordType::AAAA);
        match (v4, v6) {
            (Ok(mut a), Ok(b)) => {
                a.extend(b);
                Ok(a)
            }
            // One family failed: use the other if it gave addresses.
            (Ok(a), Err(e)) | (Err(e), Ok(a)) => {
                if a.is_empty() {
                    Err(e)
                } else {
                    log::debug!("dns: {host}: one address family failed: {e}");
                    Ok(a)
                }
            }
            (Err(e), Err(_)) => Err(e),
        }
    }

    fn addresses(&self, qname: &Name, rtype: RecordType) -> Result<Vec<IpAddr>, DnsError> {
        Ok(self.cached(qname, rtype)?.ips)
    }

    /// The SRV records or addresses of `qname`: from the cache, from a concurrent lookup of
    /// the same, or from a query whose answer the cache then keeps for its TTL.
    fn cached(&self, qname: &Name, rtype: RecordType) -> Result<Records, DnsError> {
        let key = (name_to_string(qname), rtype);
        let bound = self.timeout * (self.attempts.max(1) * self.nameservers.len().max(1)) as u32;
        let mut hit = true;
        let records = self.cache.get(&key, bound, || {
            hit = false;
            let (records, negative_ttl) = match self.query(qname, rtype)? {
                Answer::NxDomain(ttl) => return Ok((Records::default(), ttl)),
                Answer::Records(r, ttl) => (r, ttl),
            };
            let found = if rtype == RecordType::SRV {
                Records {
                    srv: srv_records(qname, &records),
                    ips: Vec::new(),
                }
            } else {
                Records {
                    srv: Vec::new(),
                    ips: address_records(qname, &records, rtype),
                }
            };
            let ttl = match answer_ttl(qname, &records, rtype) {
                Some(ttl) if !(found.srv.is_empty() && found.ips.is_empty()) => ttl,
                _ => negative_ttl,
            };
            Ok((found, ttl))
        })?;
        if hit {
            log::debug!("dns: {qname} {rtype}: answered from the cache (or a lookup under way)");
        }
        Ok(records)
    }

    /// Where to connect for S2S traffic to `domain`, in the order to try
    /// (RFC 6120 §3.2, XEP-0368):
    ///
    /// * `_xmpp-server` and `_xmpps-server` records form one RFC 2782 set;
    ///   `xmpps` targets get `direct_tls = true`;
    /// * a single `"."` `_xmpp-server` record gives [`DnsError::NoService`]
    ///   (unless `_xmpps-server` offers usable targets, which are then used);
    /// * `"."` in `_xmpps-server` only means "no direct TLS";
    /// * no usable records at all, or a failed `_xmpp-server` query →
    ///   `[domain:5269, plain]` (the latter logged at warn);
    /// * when records exist the fallback is never added.
    pub fn resolve_s2s(&self, domain: &str) -> Result<Vec<Target>, DnsError> {
        let domain = normalize(domain);
        // Validate once so a bad domain is BadName rather than a fallback.
        to_name(&domain)?;

        let plain_name = format!("_xmpp-server._tcp.{domain}");
        let plain = match self.srv(&plain_name) {
            Ok(r) => r,
            Err(e @ DnsError::BadName(_)) => return Err(e),
            Err(e) => {
                log::warn!("dns: SRV lookup of {plain_name} failed ({e}); falling back to {domain}:{DEFAULT_S2S_PORT} if no direct-TLS records");
                Vec::new()
            }
        };
        let tls_name = format!("_xmpps-server._tcp.{domain}");
        let tls = match self.srv(&tls_name) {
            Ok(r) => r,
            Err(e @ DnsError::BadName(_)) => return Err(e),
            Err(e) => {
                log::debug!("dns: SRV lookup of {tls_name} failed ({e}); ignoring direct TLS");
                Vec::new()
            }
        };
        s2s_targets(domain, plain, tls, &mut system_rand)
    }

    /// One query with retries over all nameservers and a hard deadline.
    fn query(&self, qname: &Name, rtype: RecordType) -> Result<Answer, DnsError> {
        let tries = self.attempts.max(1) * self.nameservers.len().max(1);
        let overall = Instant::now() + self.timeout * tries as u32;
        let mut last = DnsError::Timeout;
        for _ in 0..self.attempts.max(1) {
            for &ns in &self.nameservers {
                let now = Instant::now();
                if now >= overall {
                    return Err(last);
                }
                let deadline = (now + self.timeout).min(overall);
                match self.exchange(ns, qname, rtype, deadline) {
                    Ok(msg) => match answer_of(msg) {
                        Ok(answer) => return Ok(answer),
                        Err(rc) => {
                            log::debug!("dns: {ns}: {qname} {rtype}: rcode {rc}");
                            last = DnsError::ServerFailure(format!("{rc} from {ns}"));
                        }
                    },
                    Err(e) => {
                        log::debug!("dns: {ns}: {qname} {rtype}: {e}");
                        // Keep the most informative error: a timeout says less
                        // than a server failure or an I/O error.
                        if !matches!(e, DnsError::Timeout) || matches!(last, DnsError::Timeout) {
                            if let DnsError::BadName(_) = e {
                                return Err(e);
                            }
                            last = e;
                        }
                    }
                }
            }
        }
        Err(last)
    }

    /// One attempt against one nameserver: UDP, then TCP if truncated.
    fn exchange(
        &self,
        ns: SocketAddr,
        qname: &Name,
        rtype: RecordType,
        deadline: Instant,
    ) -> Result<Message, DnsError> {
        let id = random_id()?;
        let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
        msg.add_query(Query::query(qname.clone(), rtype));
        msg.metadata.recursion_desired = true;
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        msg.set_edns(edns);
        let wire = msg
            .to_vec()
            .map_err(|e| DnsError::BadName(format!("{qname}: {e}")))?;

        let Some(_turn) = IN_FLIGHT.turn(deadline) else {
            return Err(DnsError::Timeout);
        };
        let bind: SocketAddr = if ns.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let sock = UdpSocket::bind(bind)?;
        sock.connect(ns)?;
        sock.send(&wire)?;
        // Answers must fit the EDNS payload we advertise; one that fills this buffer was cut
        // short by the read, and is asked again over TCP.
        let mut buf = [0u8; UDP_BUFFER];
        loop {
            sock.set_read_timeout(Some(remaining(deadline)?))?;
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if is_timeout(&e) => return Err(DnsError::Timeout),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DnsError::Io(e)),
            };
            let verdict = if n == buf.len() && buf[..2] == id.to_be_bytes() {
                Datagram::Truncated
            } else {
                classify_datagram(&buf[..n], id, qname, rtype)
            };
            match verdict {
                Datagram::Answer(resp) => return Ok(resp),
                Datagram::Truncated => {
                    log::debug!("dns: {ns}: {qname} {rtype}: truncated, retrying over TCP");
                    return tcp_exchange(ns, &wire, id, qname, rtype, deadline);
                }
                Datagram::Ignore(why) => log::debug!("dns: {ns}: ignoring {why}"),
            }
        }
    }
}

/// How [`Resolver::resolve_s2s`] turns the `_xmpp-server` (`plain`) and `_xmpps-server` (`tls`)
/// records of `domain` (normalised) into the targets to try, with `rand` as in [`order_srv`]:
/// one RFC 2782 set; a lone `"."` plain record and nothing usable gives [`DnsError::NoService`];
/// no usable record at all gives the `domain:5269` fallback.
pub fn s2s_targets(
    domain: String,
    plain: Vec<SrvRecord>,
    tls: Vec<SrvRecord>,
    rand: &mut dyn FnMut(u32) -> u32,
) -> Result<Vec<Target>, DnsError> {
    let plain_refused = plain.len() == 1 && plain[0].target == ".";

    let mut set: Vec<(SrvRecord, bool)> = plain.into_iter().map(|r| (r, false)).collect();
    set.extend(tls.into_iter().map(|r| (r, true)));
    let ordered = order_by(set, |(r, _)| r, rand);
    if ordered.is_empty() {
        if plain_refused {
            log::debug!("dns: {domain}: SRV target \".\": no XMPP service");
            return Err(DnsError::NoService);
        }
        log::debug!("dns: {domain}: no SRV records, using {domain}:{DEFAULT_S2S_PORT}");
        return Ok(vec![Target {
            host: domain,
            port: DEFAULT_S2S_PORT,
            direct_tls: false,
        }]);
    }
    Ok(ordered
        .into_iter()
        .map(|(r, direct_tls)| Target {
            host: r.target,
            port: r.port,
            direct_tls,
        })
        .collect())
}

/// What a lookup makes of one reply datagram: the socket-free part of [`Resolver`], for tests
/// and the `dns_message` fuzz target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Not an answer to the query (id, question, type or class differ) or undecodable and not
    /// truncated: ignored, the resolver waits for another datagram.
    Ignored,
    /// Our answer, truncated: the resolver asks again over TCP.
    Truncated,
    /// NXDOMAIN (`nxdomain`), or NOERROR with these records of the query's type owned by the
    /// query name or its CNAME chain (empty for NODATA).
    Srv {
        /// The answer was NXDOMAIN (then `records` is empty).
        nxdomain: bool,
        /// The SRV records, in answer order.
        records: Vec<SrvRecord>,
    },
    /// As `Srv`, for an A or AAAA query.
    Addresses {
        /// The answer was NXDOMAIN (then `addresses` is empty).
        nxdomain: bool,
        /// The addresses, in answer order.
        addresses: Vec<IpAddr>,
    },
    /// Another rcode (SERVFAIL, REFUSED…): the resolver tries the next server.
    Failure(String),
}

/// Decode `data` as the reply to query `id` for `name` and `rtype` (SRV, A or AAAA) exactly as
/// [`Resolver`] does over UDP.
///
/// # Errors
/// [`DnsError::BadName`] when `name` cannot be a DNS name, or `rtype` is not SRV, A or AAAA.
pub fn read_reply(data: &[u8], id: u16, name: &str, rtype: RecordType) -> Result<Reply, DnsError> {
    let qname = to_name(name)?;
    if !matches!(rtype, RecordType::SRV | RecordType::A | RecordType::AAAA) {
        return Err(DnsError::BadName(format!("{rtype} queries are not made")));
    }
    let msg = match classify_datagram(data, id, &qname, rtype) {
        Datagram::Answer(msg) => msg,
        Datagram::Truncated => return Ok(Reply::Truncated),
        Datagram::Ignore(_) => return Ok(Reply::Ignored),
    };
    let (nxdomain, records) = match answer_of(msg) {
        Ok(Answer::NxDomain(_)) => (true, Vec::new()),
        Ok(Answer::Records(r, _)) => (false, r),
        Err(rc) => return Ok(Reply::Failure(rc.to_string())),
    };
    Ok(if rtype == RecordType::SRV {
        Reply::Srv {
            nxdomain,
            records: srv_records(&qname, &records),
        }
    } else {
        Reply::Addresses {
            nxdomain,
            addresses: address_records(&qname, &records, rtype),
        }
    })
}

/// What to do with one datagram received for a query.
enum Datagram {
    /// Our answer, complete.
    Answer(Message),
    /// Our answer, truncated (or undecodable with our id and TC set): retry over TCP.
    Truncated,
    /// Someone else's, or garbage (the reason, for the log).
    Ignore(String),
}

fn classify_datagram(data: &[u8], id: u16, qname: &Name, rtype: RecordType) -> Datagram {
    match Message::from_vec(data) {
        Ok(resp) if matches_query(&resp, id, qname, rtype) => {
            if resp.metadata.truncation {
                Datagram::Truncated
            } else {
                Datagram::Answer(resp)
            }
        }
        Ok(_) => Datagram::Ignore("non-matching answer".into()),
        // A truncated answer may not decode; its header still tells.
        Err(_) if truncated_header(data, id) => Datagram::Truncated,
        Err(e) => Datagram::Ignore(format!("undecodable datagram: {e}")),
    }
}

/// NOERROR and NXDOMAIN are answers; any other rcode is the server's failure.
fn answer_of(msg: Message) -> Result<Answer, ResponseCode> {
    let negative_ttl = negative_ttl(&msg.authorities);
    match msg.metadata.response_code {
        ResponseCode::NoError => Ok(Answer::Records(msg.answers, negative_ttl)),
        ResponseCode::NXDomain => Ok(Answer::NxDomain(negative_ttl)),
        rc => Err(rc),
    }
}

/// How long a negative answer (NXDOMAIN, or no record of the type) may be kept: the smaller of
/// the SOA record's TTL and its MINIMUM field (RFC 2308 §5), or 0 when the authority section
/// holds no SOA (RFC 2308 §5: such answers SHOULD NOT be cached; the cache's floor still
/// applies).
fn negative_ttl(authorities: &[Record]) -> u32 {
    authorities
        .iter()
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })
        .unwrap_or(0)
}

/// The TTL of a positive answer: the smallest TTL of the records of type `rtype` owned by
/// `qname` or its CNAME chain, and of the CNAME records of that chain; `None` when there are
/// none.
fn answer_ttl(qname: &Name, records: &[Record], rtype: RecordType) -> Option<u32> {
    let owners = owner_chain(qname, records);
    records
        .iter()
        .filter(|r| owners.contains(&r.name))
        .filter(|r| r.record_type() == rtype || r.record_type() == RecordType::CNAME)
        .map(|r| r.ttl)
        .min()
}

/// The SRV records of the answer owned by `qname` or its CNAME chain.
fn srv_records(qname: &Name, records: &[Record]) -> Vec<SrvRecord> {
    let owners = owner_chain(qname, records);
    records
        .iter()
        .filter(|r| owners.contains(&r.name))
        .filter_map(|r| match &r.data {
            RData::SRV(s) => {
                let target = name_to_string(&s.target);
                // The target must be a host name we can look up (RFC 2782); a label holding
                // escaped bytes ("\000", "\.") is not one.
                if target != "." && to_name(&target).is_err() {
                    log::debug!("dns: {qname}: skipping SRV target {target:?}: not a host name");
                    return None;
                }
                Some(SrvRecord {
                    priority: s.priority,
                    weight: s.weight,
                    port: s.port,
                    target,
                })
            }
            _ => None,
        })
        .collect()
}

/// The addresses of type `rtype` (A or AAAA) owned by `qname` or its CNAME chain.
fn address_records(qname: &Name, records: &[Record], rtype: RecordType) -> Vec<IpAddr> {
    let owners = owner_chain(qname, records);
    records
        .iter()
        .filter(|r| owners.contains(&r.name))
        .filter_map(|r| match (&r.data, rtype) {
            (RData::A(a), RecordType::A) => Some(IpAddr::V4(a.0)),
            (RData::AAAA(a), RecordType::AAAA) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn tcp_exchange(
    ns: SocketAddr,
    wire: &[u8],
    id: u16,
    qname: &Name,
    rtype: RecordType,
    deadline: Instant,
) -> Result<Message, DnsError> {
    let len = u16::try_from(wire.len())
        .map_err(|_| DnsError::BadName(format!("{qname}: query too long")))?;
    let mut stream =
        TcpStream::connect_timeout(&ns, remaining(deadline)?).map_err(io_or_timeout)?;
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    let mut out = Vec::with_capacity(wire.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(wire);
    stream.write_all(&out).map_err(io_or_timeout)?;
    let mut lenbuf = [0u8; 2];
    read_full(&mut stream, &mut lenbuf, deadline)?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(lenbuf))];
    read_full(&mut stream, &mut body, deadline)?;
    let resp = Message::from_vec(&body)
        .map_err(|e| DnsError::ServerFailure(format!("malformed TCP answer from {ns}: {e}")))?;
    if !matches_query(&resp, id, qname, rtype) {
        return Err(DnsError::ServerFailure(format!(
            "TCP answer from {ns} does not match the query"
        )));
    }
    Ok(resp)
}

/// `read_exact` that honours an overall deadline.
fn read_full(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), DnsError> {
    let mut got = 0;
    while got < buf.len() {
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        match stream.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(DnsError::ServerFailure(
                    "TCP connection closed mid-answer".into(),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_or_timeout(e)),
        }
    }
    Ok(())
}

fn remaining(deadline: Instant) -> Result<Duration, DnsError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(DnsError::Timeout)
    } else {
        Ok(left)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn io_or_timeout(e: io::Error) -> DnsError {
    if is_timeout(&e) {
        DnsError::Timeout
    } else {
        DnsError::Io(e)
    }
}

/// Does `resp` answer our query (id, QR, one question with our name/type/class)?
fn matches_query(resp: &Message, id: u16, qname: &Name, rtype: RecordType) -> bool {
    resp.metadata.id == id
        && resp.metadata.message_type == MessageType::Response
        && resp.queries.len() == 1
        && resp.queries[0].name() == qname // case-insensitive
        && resp.queries[0].query_type() == rtype
        && resp.queries[0].query_class() == DNSClass::IN
}

/// Raw header check for an answer that did not decode: our id, QR=1, TC=1.
fn truncated_header(data: &[u8], id: u16) -> bool {
    data.len() >= 12 && u16::from_be_bytes([data[0], data[1]]) == id && data[2] & 0x82 == 0x82
}

/// The query name plus every name reached from it through CNAME records in
/// the answer (a recursive server has already followed the chain).
fn owner_chain(qname: &Name, records: &[Record]) -> Vec<Name> {
    let mut owners = vec![qname.clone()];
    // Bounded: each pass adds at most one name, and there are at most
    // `records.len()` CNAMEs.
    for _ in 0..records.len().min(16) {
        let next = records.iter().find_map(|r| match &r.data {
            RData::CNAME(c) if owners.contains(&r.name) && !owners.contains(&c.0) => {
                Some(c.0.clone())
            }
            _ => None,
        });
        match next {
            Some(n) => owners.push(n),
            None => break,
        }
    }
    owners
}

/// Lowercase, without one trailing dot.
fn normalize(name: &str) -> String {
    let name = name.trim();
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Encode `name` as a fully qualified DNS name.
fn to_name(name: &str) -> Result<Name, DnsError> {
    let n = normalize(name);
    let bad = |why: &str| DnsError::BadName(format!("{name:?}: {why}"));
    if n.is_empty() || n.len() > 253 {
        return Err(bad("empty or too long"));
    }
    if !n.is_ascii() {
        return Err(bad("non-ASCII names are not supported"));
    }
    if n.bytes()
        .any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'))
    {
        return Err(bad("invalid character"));
    }
    if n.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return Err(bad("empty or over-long label"));
    }
    Name::from_str_relaxed(format!("{n}.")).map_err(|e| bad(&e.to_string()))
}

/// Lowercase text form without the trailing dot; the root stays `"."`.
fn name_to_string(name: &Name) -> String {
    if name.is_root() {
        return ".".to_string();
    }
    let s = name.to_ascii().to_ascii_lowercase();
    match s.strip_suffix('.') {
        Some(t) if !t.is_empty() => t.to_string(),
        _ => s,
    }
}

fn random_id() -> Result<u16, DnsError> {
    let mut b = [0u8; 2];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| DnsError::Io(io::Error::other("system random generator failed")))?;
    Ok(u16::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_parsing() {
        let text = "# generated\n\
                    ; also a comment\n\
                    search example.org\n\
                    nameserver 192.0.2.1   \n\
                    nameserver\t2001:db8::53 # trailing comment\n\
                    #nameserver 192.0.2.99\n\
                    nameserver fe80::1%2\n\
                    nameserver not-an-ip\n\
                    nameserverx 192.0.2.7\n\
                    options ndots:2\n";
        let ns = Resolver::parse_resolv_conf(text);
        let want: Vec<SocketAddr> = vec![
            "192.0.2.1:53".parse().unwrap(),
            "[2001:db8::53]:53".parse().unwrap(),
            "[fe80::1%2]:53".parse().unwrap(),
        ];
        assert_eq!(ns, want);
        assert!(Resolver::parse_resolv_conf("search a\noptions x\n").is_empty());
        assert!(Resolver::parse_resolv_conf("").is_empty());
    }

    #[test]
    fn names() {
        assert!(to_name("_xmpp-server._tcp.Example.ORG.").is_ok());
        assert!(matches!(to_name(""), Err(DnsError::BadName(_))));
        assert!(matches!(to_name("a..b"), Err(DnsError::BadName(_))));
        assert!(matches!(to_name("a b"), Err(DnsError::BadName(_))));
        assert!(matches!(
            to_name("bücher.example"),
            Err(DnsError::BadName(_))
        ));
        assert!(matches!(
            to_name(&"a".repeat(64)),
            Err(DnsError::BadName(_))
        ));
        assert_eq!(name_to_string(&Name::root()), ".");
        let n = Name::from_ascii("XMPP.Example.ORG.").unwrap();
        assert_eq!(name_to_string(&n), "xmpp.example.org");
    }

    #[test]
    fn not_found_classification() {
        assert!(DnsError::NoService.is_not_found());
        assert!(!DnsError::Timeout.is_not_found());
        assert!(!DnsError::ServerFailure("x".into()).is_not_found());
    }

    /// Never panic on datagram content: every single-byte mutation and every
    /// truncation of a valid answer goes through decode + validation.
    #[test]
    fn mutated_answers_do_not_panic() {
        use hickory_proto::rr::rdata::SRV;
        let qname = Name::from_ascii("_xmpp-server._tcp.example.test.").unwrap();
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(qname.clone(), RecordType::SRV));
        let target = Name::from_ascii("xmpp.example.test.").unwrap();
        let srv = RData::SRV(SRV::new(1, 2, 5269, target));
        m.add_answer(Record::from_rdata(qname.clone(), 60, srv));
        let wire = m.to_vec().unwrap();
        let check = |data: &[u8]| {
            if let Ok(resp) = Message::from_vec(data) {
                let _ = matches_query(&resp, 7, &qname, RecordType::SRV);
                let _ = owner_chain(&qname, &resp.answers);
            }
            let _ = truncated_header(data, 7);
        };
        for len in 0..wire.len() {
            check(&wire[..len]);
        }
        for i in 0..wire.len() {
            for v in [0u8, 1, 0x3f, 0x40, 0x7f, 0xc0, 0xff] {
                let mut w = wire.clone();
                w[i] = v;
                check(&w);
            }
        }
    }

    /// Found by the dns_message fuzz target: a target whose labels hold bytes a host name
    /// cannot (here a 0 byte and a literal dot) came out in escaped form ("x\000y.z\.")
    /// and was handed on as a host to connect to. Such records are skipped.
    #[test]
    fn srv_targets_that_are_not_host_names_are_skipped() {
        use hickory_proto::rr::rdata::SRV;
        let qname = Name::from_ascii("_xmpp-server._tcp.example.test.").unwrap();
        let bad = Name::from_labels(vec![&b"x\0y"[..], &b"z."[..]]).unwrap();
        let good = Name::from_ascii("XMPP.example.test.").unwrap();
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(qname.clone(), RecordType::SRV));
        for target in [bad, good, Name::root()] {
            let srv = RData::SRV(SRV::new(1, 2, 5269, target));
            m.add_answer(Record::from_rdata(qname.clone(), 60, srv));
        }
        let wire = m.to_vec().unwrap();
        let reply = read_reply(&wire, 7, "_xmpp-server._tcp.example.test", RecordType::SRV);
        let Ok(Reply::Srv { nxdomain, records }) = reply else {
            panic!("{reply:?}");
        };
        assert!(!nxdomain);
        let targets: Vec<&str> = records.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(targets, ["xmpp.example.test", "."]);
        // The datagram of another query is ignored; a non-ASCII name is refused.
        assert_eq!(
            read_reply(&wire, 8, "_xmpp-server._tcp.example.test", RecordType::SRV).unwrap(),
            Reply::Ignored
        );
        assert!(read_reply(&wire, 7, "bücher.test", RecordType::SRV).is_err());
    }

    /// RFC 2308 §5: a negative answer is kept for the smaller of the SOA record's TTL and
    /// its MINIMUM; without an SOA, 0. A positive answer for the smallest TTL of the records
    /// used, the CNAMEs leading to them included.
    #[test]
    fn answer_and_negative_ttls() {
        use hickory_proto::rr::rdata::{A, CNAME, SOA};
        let zone = Name::from_ascii("example.test.").unwrap();
        let soa = |ttl, minimum| {
            let ns = Name::from_ascii("ns.example.test.").unwrap();
            let soa = SOA::new(ns.clone(), ns, 1, 3600, 600, 86400, minimum);
            Record::from_rdata(zone.clone(), ttl, RData::SOA(soa))
        };
        assert_eq!(negative_ttl(&[soa(900, 60)]), 60);
        assert_eq!(negative_ttl(&[soa(30, 600)]), 30);
        assert_eq!(negative_ttl(&[]), 0);

        let q = Name::from_ascii("alias.example.test.").unwrap();
        let host = Name::from_ascii("host.example.test.").unwrap();
        let records = vec![
            Record::from_rdata(q.clone(), 120, RData::CNAME(CNAME(host.clone()))),
            Record::from_rdata(host.clone(), 300, RData::A(A::new(192, 0, 2, 1))),
            Record::from_rdata(host.clone(), 200, RData::A(A::new(192, 0, 2, 2))),
            Record::from_rdata(zone.clone(), 5, RData::A(A::new(192, 0, 2, 3))),
        ];
        assert_eq!(answer_ttl(&q, &records, RecordType::A), Some(120));
        assert_eq!(answer_ttl(&host, &records, RecordType::A), Some(200));
        assert_eq!(answer_ttl(&host, &records, RecordType::AAAA), None);
    }

    #[test]
    fn header_truncation_check() {
        let mut h = [0u8; 12];
        h[0] = 0x12;
        h[1] = 0x34;
        h[2] = 0x82;
        assert!(truncated_header(&h, 0x1234));
        assert!(!truncated_header(&h, 0x1235));
        assert!(!truncated_header(&h[..5], 0x1234));
    }
}
