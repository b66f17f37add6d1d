//! Which addresses we may dial for a remote domain: the private-network guard.
//!
//! Anyone on the Internet can make us dial a domain of their choosing: a `<db:result/>` claiming
//! `internal.example` sends a verify connection wherever that name's SRV and A/AAAA records
//! point. Without a guard that makes the daemon a proxy into the networks it sits in (loopback
//! services, RFC 1918 hosts, cloud metadata on link-local addresses) and a port scanner.
//!
//! [`NetworkPolicy`] judges every address after DNS, just before it is dialled: addresses that
//! are not globally reachable (the table [`SPECIAL`]: loopback, unspecified, RFC 1918, CGNAT,
//! link-local, ULA, site-local, multicast, broadcast and reserved ranges, documentation and
//! benchmarking ranges) are refused unless the operator listed a network covering them in
//! `[dns] allow_networks`. IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`,
//! NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by that IPv4 address; the deprecated
//! IPv4-compatible form `::a.b.c.d` and local-use NAT64 `64:ff9b:1::/48` are refused outright.
//! IP-literal domains (`10.0.0.5`, `[::1]`) are refused unless allowed, and numeric names that
//! some resolvers read as IPv4 (`127.1`, `2130706433`, `0x7f.1`) always are: no top-level
//! domain is numeric (RFC 3696 §2).
//!
//! Out of scope: static `[routes]` (the operator's explicit choice, never judged) and applying the
//! policy (the connection layer does, for every outbound and verify connection).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network: an address and a prefix length, host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `a.b.c.d/prefix`. Panics (at compile time in a `const`) when the prefix is over 32.
    pub const fn v4(octets: [u8; 4], prefix: u8) -> Cidr {
        assert!(prefix <= 32);
        let [a, b, c, d] = octets;
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    /// `segments/prefix`. Panics (at compile time in a `const`) when the prefix is over 128.
    pub const fn v6(segments: [u16; 8], prefix: u8) -> Cidr {
        assert!(prefix <= 128);
        let [a, b, c, d, e, f, g, h] = segments;
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix,
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True when `ip` is in this network (same address family only).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `ADDRESS/PREFIX` (`10.0.0.0/8`, `fd00::/8`), or a bare address for that one address
    /// (`/32` or `/128`). Host bits must be zero: `10.0.0.1/8` is an error (it is ambiguous).
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!(
                "{s:?} is not a network: expected ADDRESS/PREFIX like \"127.0.0.0/8\" or \
                 \"fd00::/8\", or one address"
            )
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        let cidr = Cidr { addr, prefix };
        let network = cidr.network();
        if network != addr {
            return Err(format!(
                "{s:?} has host bits set; the network is {network}/{prefix}"
            ));
        }
        Ok(cidr)
    }
}

impl Cidr {
    /// The address with the host bits cleared.
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }
}

/// Why an address or domain is not dialled (for logs; never sent to the peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    what: &'static str,
    /// The IPv6 form the address was judged through, when not the address itself.
    via: Option<&'static str>,
}

impl Refusal {
    /// The name of the range or rule (e.g. `private network (RFC 1918)`).
    pub fn reason(&self) -> &'static str {
        self.what
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.via {
            Some(via) => write!(f, "{} ({via})", self.what),
            None => f.write_str(self.what),
        }
    }
}

/// Not globally reachable IPv4 ranges, first match names the reason (IANA special-purpose
/// registry, RFC 6890).
const SPECIAL_V4: &[(Cidr, &str)] = &[
    (Cidr::v4([0, 0, 0, 0], 32), "unspecified address"),
    (Cidr::v4([0, 0, 0, 0], 8), "\"this network\" (0.0.0.0/8)"),
    (Cidr::v4([10, 0, 0, 0], 8), "private network (RFC 1918)"),
    (
        Cidr::v4([100, 64, 0, 0], 10),
        "shared address space (CGNAT, RFC 6598)",
    ),
    (Cidr::v4([127, 0, 0, 0], 8), "loopback"),
    (Cidr::v4([169, 254, 0, 0], 16), "link-local"),
    (Cidr::v4([172, 16, 0, 0], 12), "private network (RFC 1918)"),
    (
        Cidr::v4([192, 0, 0, 0], 24),
        "IETF protocol assignments (192.0.0.0/24)",
    ),
    (Cidr::v4([192, 0, 2, 0], 24), "documentation range"),
    (Cidr::v4([192, 168, 0, 0], 16), "private network (RFC 1918)"),
    (
        Cidr::v4([198, 18, 0, 0], 15),
        "benchmarking range (RFC 2544)",
    ),
    (Cidr::v4([198, 51, 100, 0], 24), "documentation range"),
    (Cidr::v4([203, 0, 113, 0], 24), "documentation range"),
    (Cidr::v4([224, 0, 0, 0], 4), "multicast"),
    (Cidr::v4([255, 255, 255, 255], 32), "broadcast"),
    (Cidr::v4([240, 0, 0, 0], 4), "reserved (240.0.0.0/4)"),
];

/// Not globally reachable IPv6 ranges (those carrying an IPv4 address are handled first).
const SPECIAL_V6: &[(Cidr, &str)] = &[
    (Cidr::v6([0; 8], 128), "unspecified address"),
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    (
        Cidr::v6([0; 8], 96),
        "IPv4-compatible IPv6 address (deprecated, RFC 4291)",
    ),
    (
        Cidr::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "local-use NAT64 (RFC 8215)",
    ),
    (
        Cidr::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
        "discard-only range",
    ),
    (
        Cidr::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        "documentation range",
    ),
    (
        Cidr::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
        "documentation range",
    ),
    (
        Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "unique local address (ULA)",
    ),
    (Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (
        Cidr::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "site-local (deprecated)",
    ),
    (Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

/// Every range the guard refuses by default, IPv4 then IPv6 (for documentation and tests).
pub const SPECIAL: [&[(Cidr, &str)]; 2] = [SPECIAL_V4, SPECIAL_V6];

/// IPv6 prefixes whose addresses carry an IPv4 address that decides.
const MAPPED: Cidr = Cidr::v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96);
const NAT64: Cidr = Cidr::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
const SIX_TO_FOUR: Cidr = Cidr::v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);

/// The IPv4 address an IPv6 address stands for, and the form, if it has one.
fn embedded_v4(ip: Ipv6Addr) -> Option<(Ipv4Addr, &'static str)> {
    let v6 = IpAddr::V6(ip);
    let bits = u128::from(ip);
    if MAPPED.contains(v6) {
        Some((Ipv4Addr::from(bits as u32), "IPv4-mapped IPv6 address"))
    } else if NAT64.contains(v6) {
        Some((Ipv4Addr::from(bits as u32), "NAT64 address"))
    } else if SIX_TO_FOUR.contains(v6) {
        Some((Ipv4Addr::from((bits >> 80) as u32), "6to4 address"))
    } else {
        None
    }
}

/// The special range `ip` is in, if any (no allow list applied).
pub fn special(ip: IpAddr) -> Option<Refusal> {
    let v4 = |a: Ipv4Addr| {
        SPECIAL_V4
            .iter()
            .find(|(net, _)| net.contains(IpAddr::V4(a)))
            .map(|(_, what)| *what)
    };
    match ip {
        IpAddr::V4(a) => v4(a).map(|what| Refusal { what, via: None }),
        IpAddr::V6(a) => match embedded_v4(a) {
            Some((inner, via)) => v4(inner).map(|what| Refusal {
                what,
                via: Some(via),
            }),
            None => SPECIAL_V6
                .iter()
                .find(|(net, _)| net.contains(ip))
                .map(|(_, what)| Refusal { what, via: None }),
        },
    }
}

/// A domain name that is an IP address, or that some resolver would read as one.
const IP_LITERAL: &str = "IP-literal domain";
const NUMERIC_NAME: &str = "numeric name (read as an IPv4 address by some resolvers)";

/// The dialling policy: the default refusals above, minus the networks the operator allows.
#[derive(Clone, Copy, Debug)]
pub struct NetworkPolicy<'a> {
    allow: &'a [Cidr],
}

impl<'a> NetworkPolicy<'a> {
    /// The default policy with `allow` (`[dns] allow_networks`) exempted.
    pub fn new(allow: &'a [Cidr]) -> NetworkPolicy<'a> {
        NetworkPolicy { allow }
    }

    /// True when an allowed network covers `ip` (or the IPv4 address it carries).
    fn allowed(&self, ip: IpAddr) -> bool {
        let inner = match ip {
            IpAddr::V6(a) => embedded_v4(a).map(|(v4, _)| IpAddr::V4(v4)),
            IpAddr::V4(_) => None,
        };
        self.allow
            .iter()
            .any(|net| net.contains(ip) || inner.is_some_and(|i| net.contains(i)))
    }

    /// May we connect to `ip`?
    ///
    /// # Errors
    /// The range that forbids it, when no allowed network covers it.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        match special(ip) {
            Some(r) if !self.allowed(ip) => Err(r),
            _ => Ok(()),
        }
    }

    /// Judge a remote domain before any lookup: `Ok(None)` for a name to resolve, `Ok(Some(ip))`
    /// for an IP-literal domain that an allowed network covers (dial it directly).
    ///
    /// # Errors
    /// For an IP-literal domain no allowed network covers, and for numeric names.
    pub fn check_domain(&self, domain: &str) -> Result<Option<IpAddr>, Refusal> {
        let d = domain.strip_suffix('.').unwrap_or(domain);
        let literal = d
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(d);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            if self.allowed(ip) {
                return Ok(Some(ip));
            }
            return Err(Refusal {
                what: IP_LITERAL,
                via: None,
            });
        }
        let last = d.rsplit('.').next().unwrap_or(d);
        let hex = last
            .strip_prefix("0x")
            .or_else(|| last.strip_prefix("0X"))
            .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        if hex || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit())) {
            return Err(Refusal {
                what: NUMERIC_NAME,
                via: None,
            });
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// Every refused range, with an address at each edge and its reason.
    #[test]
    fn special_ranges_are_refused_by_default() {
        let table = [
            ("0.0.0.0", "unspecified address"),
            ("0.1.2.3", "\"this network\""),
            ("0.255.255.255", "\"this network\""),
            ("10.0.0.0", "RFC 1918"),
            ("10.0.0.5", "RFC 1918"),
            ("10.255.255.255", "RFC 1918"),
            ("100.64.0.0", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("169.254.169.254", "link-local"),
            ("172.16.0.0", "RFC 1918"),
            ("172.31.255.255", "RFC 1918"),
            ("192.0.0.8", "IETF protocol"),
            ("192.0.2.1", "documentation"),
            ("192.168.0.1", "RFC 1918"),
            ("192.168.255.255", "RFC 1918"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.255", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.254", "reserved"),
            ("255.255.255.255", "broadcast"),
            ("::", "unspecified address"),
            ("::1", "loopback"),
            ("::10.0.0.5", "IPv4-compatible"),
            ("::8.8.8.8", "IPv4-compatible"),
            ("::2", "IPv4-compatible"),
            ("64:ff9b:1::a00:5", "local-use NAT64"),
            ("100::1", "discard-only"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("fc00::1", "ULA"),
            ("fd12:3456::1", "ULA"),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ULA"),
            ("fe80::1", "link-local"),
            ("febf:ffff::1", "link-local"),
            ("fec0::1", "site-local"),
            ("feff::1", "site-local"),
            ("ff02::1", "multicast"),
            ("ff0e::101", "multicast"),
        ];
        let policy = NetworkPolicy::new(&[]);
        for (addr, want) in table {
            let r = policy
                .check(ip(addr))
                .expect_err(&format!("{addr} must be refused"));
            assert!(r.to_string().contains(want), "{addr}: {r} lacks {want:?}");
        }
    }

    #[test]
    fn public_addresses_are_dialled() {
        let policy = NetworkPolicy::new(&[]);
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.255",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2001:4860:4860::8888",
            "2a00:1450::1",
            "fbff::1",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(policy.check(ip(addr)), Ok(()), "{addr}");
        }
    }

    /// IPv6 forms carrying an IPv4 address are judged by that address.
    #[test]
    fn mapped_nat64_and_6to4_are_judged_by_their_ipv4_address() {
        let policy = NetworkPolicy::new(&[]);
        for (addr, want, via) in [
            ("::ffff:127.0.0.1", "loopback", "IPv4-mapped"),
            ("::ffff:10.0.0.5", "RFC 1918", "IPv4-mapped"),
            ("::ffff:169.254.169.254", "link-local", "IPv4-mapped"),
            ("::ffff:0.0.0.0", "unspecified", "IPv4-mapped"),
            ("::ffff:255.255.255.255", "broadcast", "IPv4-mapped"),
            ("64:ff9b::7f00:1", "loopback", "NAT64"),
            ("64:ff9b::192.168.1.1", "RFC 1918", "NAT64"),
            ("64:ff9b::100.64.0.1", "CGNAT", "NAT64"),
            ("2002:7f00:1::", "loopback", "6to4"),
            ("2002:a00:5:1::1", "RFC 1918", "6to4"),
        ] {
            let r = policy.check(ip(addr)).expect_err(addr);
            let s = r.to_string();
            assert!(s.contains(want) && s.contains(via), "{addr}: {s}");
        }
    }

    #[test]
    fn allowed_networks_lift_the_refusal_and_nothing_else() {
        let allow = nets(&["127.0.0.0/8", "::1/128", "10.1.0.0/16", "fd00::/8"]);
        let policy = NetworkPolicy::new(&allow);
        for addr in [
            "127.0.0.1",
            "127.20.5.1",
            "::1",
            "10.1.2.3",
            "fd00::5",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "::ffff:10.1.0.1",
        ] {
            assert_eq!(policy.check(ip(addr)), Ok(()), "{addr}");
        }
        for addr in [
            "10.2.0.1",
            "192.168.1.1",
            "::2",
            "fc00::1",
            "169.254.169.254",
            "::ffff:10.2.0.1",
        ] {
            assert!(policy.check(ip(addr)).is_err(), "{addr}");
        }
        // An IPv6 allow entry in mapped form covers the IPv4 address too.
        let allow = nets(&["::ffff:192.168.0.0/112"]);
        let policy = NetworkPolicy::new(&allow);
        assert_eq!(policy.check(ip("::ffff:192.168.3.4")), Ok(()));
        assert!(policy.check(ip("192.168.3.4")).is_err());
        // Everything allowed.
        let allow = nets(&["0.0.0.0/0", "::/0"]);
        let policy = NetworkPolicy::new(&allow);
        assert_eq!(policy.check(ip("10.0.0.5")), Ok(()));
        assert_eq!(policy.check(ip("fe80::1")), Ok(()));
    }

    #[test]
    fn ip_literal_and_numeric_domains() {
        let none = NetworkPolicy::new(&[]);
        for d in [
            "10.0.0.5",
            "127.0.0.1",
            "8.8.8.8",
            "[::1]",
            "[fe80::1]",
            "[2001:4860:4860::8888]",
            "[::ffff:10.0.0.5]",
            "10.0.0.5.",
        ] {
            let r = none.check_domain(d).expect_err(d);
            assert_eq!(r.reason(), IP_LITERAL, "{d}");
        }
        for d in [
            "127.1",
            "2130706433",
            "0x7f.1",
            "0x7f000001",
            "0X7F.0.0.1",
            "017700000001",
            "10.0.0.5.1",
            "a.123",
        ] {
            let r = none.check_domain(d).expect_err(d);
            assert_eq!(r.reason(), NUMERIC_NAME, "{d}");
        }
        for d in [
            "example.org",
            "xmpp.a.test",
            "1.example",
            "123.45.example",
            "0x.test",
        ] {
            assert_eq!(none.check_domain(d), Ok(None), "{d}");
        }
        let allow = nets(&["127.0.0.0/8", "::1/128"]);
        let some = NetworkPolicy::new(&allow);
        assert_eq!(some.check_domain("127.0.0.1"), Ok(Some(ip("127.0.0.1"))));
        assert_eq!(some.check_domain("[::1]"), Ok(Some(ip("::1"))));
        assert!(some.check_domain("10.0.0.5").is_err());
        // A public IP literal is not special, but an IP-literal domain still needs allowing.
        assert!(some.check_domain("8.8.8.8").is_err());
        // Numeric names are refused whatever is allowed.
        assert!(some.check_domain("127.1").is_err());
    }

    #[test]
    fn cidr_parsing() {
        let c: Cidr = "127.0.0.0/8".parse().unwrap();
        assert_eq!((c.addr(), c.prefix()), (ip("127.0.0.0"), 8));
        assert_eq!(c.to_string(), "127.0.0.0/8");
        let c: Cidr = "::1".parse().unwrap();
        assert_eq!((c.addr(), c.prefix()), (ip("::1"), 128));
        let c: Cidr = "10.0.0.5".parse().unwrap();
        assert_eq!(c.prefix(), 32);
        assert!(c.contains(ip("10.0.0.5")) && !c.contains(ip("10.0.0.6")));
        let c: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(c.contains(ip("255.1.2.3")) && !c.contains(ip("::1")));
        let c: Cidr = "fd00::/8".parse().unwrap();
        assert!(c.contains(ip("fdff::1")) && !c.contains(ip("fc00::1")));
        for bad in [
            "",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "localhost",
            "10.0.0/8",
            "127.0.0.1/8",
            "fe80::1/10",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} must not parse");
        }
        let e = "127.0.0.1/8".parse::<Cidr>().unwrap_err();
        assert!(e.contains("127.0.0.0/8"), "{e}");
    }

    #[test]
    fn cidr_edges() {
        let c = Cidr::v4([172, 16, 0, 0], 12);
        assert!(c.contains(ip("172.16.0.0")) && c.contains(ip("172.31.255.255")));
        assert!(!c.contains(ip("172.32.0.0")) && !c.contains(ip("172.15.255.255")));
        let c = Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10);
        assert!(c.contains(ip("febf:ffff::")) && !c.contains(ip("fec0::")));
        let all6 = Cidr::v6([0; 8], 0);
        assert!(all6.contains(ip("ffff::1")) && !all6.contains(ip("1.2.3.4")));
    }
}
