//! Step 1 of the check: where the daemon would connect for a domain, in the order it would try
//! (static `[routes]`, else SRV `_xmpp-server` + `_xmpps-server` per RFC 6120 §3.2 and
//! XEP-0368, else the domain on port 5269), each target's A/AAAA addresses, and which of them
//! the private-network guard refuses. It follows `conn::dial` step by step.

use super::report::{Item, Section, Status};
use crate::config::Config;
use crate::dns::{
    s2s_targets, system_rand, DnsError, NetworkPolicy, Resolver, SrvRecord, Target,
    DEFAULT_S2S_PORT,
};
use crate::domain::Domain;
use std::net::{IpAddr, SocketAddr};

/// Most addresses tried, as the daemon's dialler (targets × addresses).
pub const MAX_ADDRESSES: usize = 16;

/// One address to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The address.
    pub addr: SocketAddr,
    /// The host name it was found under (SRV target, the domain, or a route's host).
    pub host: String,
    /// TLS from the first byte (an `_xmpps-server` target, XEP-0368).
    pub direct_tls: bool,
}

/// The DNS section of the report, and the addresses to try, in order.
pub fn dns_section(
    config: &Config,
    resolver: &Resolver,
    domain: &Domain,
) -> (Section, Vec<Candidate>) {
    let mut s = Section::new("DNS");
    let policy = NetworkPolicy::new(&config.allow_networks);
    let (targets, guarded) = if let Some(r) = config.routes.get(domain) {
        s.push(Item::ok(format!(
            "static route in [routes]: {}:{} (DNS SRV records are not consulted)",
            r.host, r.port
        )));
        (vec![plain_target(r.host.clone(), r.port)], false)
    } else {
        match policy.check_domain(domain.as_str()) {
            Err(refusal) => {
                s.push(
                    Item::fail(format!("{domain}: not dialled: {refusal}")).hint(
                        "an IP-literal domain is dialled only when [dns] allow_networks \
                         covers it; numeric names never are",
                    ),
                );
                return (s, Vec::new());
            }
            Ok(Some(ip)) => {
                s.push(Item::ok(format!(
                    "{domain}: an IP literal covered by [dns] allow_networks: no DNS, port \
                     {DEFAULT_S2S_PORT}"
                )));
                (vec![plain_target(ip.to_string(), DEFAULT_S2S_PORT)], true)
            }
            Ok(None) => match srv_targets(&mut s, resolver, domain) {
                Some(t) => (t, true),
                None => return (s, Vec::new()),
            },
        }
    };
    let candidates = addresses(
        &mut s,
        config,
        resolver,
        &policy,
        (domain, &targets),
        guarded,
    );
    (s, candidates)
}

fn plain_target(host: String, port: u16) -> Target {
    Target {
        host,
        port,
        direct_tls: false,
    }
}

/// Both SRV lookups, reported, and the targets they give in the order they will be tried;
/// `None` when the domain says it has no XMPP service.
fn srv_targets(s: &mut Section, resolver: &Resolver, domain: &Domain) -> Option<Vec<Target>> {
    let plain = srv_lookup(s, resolver, &format!("_xmpp-server._tcp.{domain}"), true);
    let tls = srv_lookup(s, resolver, &format!("_xmpps-server._tcp.{domain}"), false);
    let usable: Vec<u16> = plain
        .iter()
        .chain(&tls)
        .filter(|r| r.target != ".")
        .map(|r| r.priority)
        .collect();
    let any_record = !usable.is_empty();
    let shared_priority = usable
        .iter()
        .enumerate()
        .any(|(i, p)| usable[i + 1..].contains(p));
    match s2s_targets(domain.to_string(), plain, tls, &mut system_rand) {
        Err(DnsError::NoService) => {
            s.push(
                Item::fail(format!(
                    "{domain} says it has no XMPP service (SRV target \".\", RFC 6120 §3.2.1)"
                ))
                .hint("the domain's owner published a \".\" SRV record: it does not federate"),
            );
            None
        }
        Err(e) => {
            s.push(Item::fail(format!("{domain}: {e}")));
            None
        }
        Ok(targets) => {
            s.push(order_item(domain, &targets, any_record, shared_priority));
            Some(targets)
        }
    }
}

/// The targets in the order they will be tried (or the fallback to the domain itself).
fn order_item(domain: &Domain, targets: &[Target], any_record: bool, shared: bool) -> Item {
    if !any_record {
        return Item::ok(format!(
            "no SRV records: {domain}:{DEFAULT_S2S_PORT} (RFC 6120 §3.2.2)"
        ));
    }
    let how = if shared {
        " (equal priorities in weighted random order, RFC 2782)"
    } else {
        ""
    };
    let mut item = Item::ok(format!("targets in the order they will be tried{how}:"));
    for (n, t) in targets.iter().enumerate() {
        let tls = if t.direct_tls { " (direct TLS)" } else { "" };
        item = item.detail(format!("{}. {}:{}{tls}", n + 1, t.host, t.port));
    }
    item
}

/// One SRV lookup, reported; a failed lookup counts as no records, as in the daemon.
fn srv_lookup(s: &mut Section, resolver: &Resolver, name: &str, plain: bool) -> Vec<SrvRecord> {
    match resolver.srv(name) {
        Ok(records) if records.is_empty() => {
            s.push(Item::ok(format!("{name}: no records")));
            records
        }
        Ok(records) => {
            let n = records.len();
            let mut item = Item::ok(format!(
                "{name}: {n} record{}",
                if n == 1 { "" } else { "s" }
            ));
            for r in &records {
                item = item.detail(format!(
                    "priority {} weight {} port {} target {}",
                    r.priority, r.weight, r.port, r.target
                ));
            }
            s.push(item);
            records
        }
        Err(e) => {
            let then = if plain {
                "the daemon goes on as if there were none"
            } else {
                "the daemon ignores direct TLS then"
            };
            s.push(
                Item::warn(format!("{name}: lookup failed: {e}; {then}"))
                    .hint("check [dns] nameservers (or /etc/resolv.conf) and the domain's zone"),
            );
            Vec::new()
        }
    }
}

/// Resolve every target, report its addresses (marking those the guard refuses), and return
/// the addresses the daemon would connect to, in order.
fn addresses(
    s: &mut Section,
    config: &Config,
    resolver: &Resolver,
    policy: &NetworkPolicy<'_>,
    (domain, targets): (&Domain, &[Target]),
    guarded: bool,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for t in targets {
        if t.direct_tls && !config.tls.enabled {
            s.push(Item::warn(format!(
                "{}:{} (direct TLS): skipped, TLS is disabled in this configuration",
                t.host, t.port
            )));
            continue;
        }
        let guard = if guarded { Some(policy) } else { None };
        // The fallback to the domain itself (RFC 6120 §3.2.2).
        let fallback = guarded && targets.len() == 1 && t.host == domain.as_str();
        let item = target_item(t, resolver, guard, fallback, &mut out);
        if item.status != Status::Ok {
            problems.push(s.items.len());
        }
        s.push(item);
    }
    if out.is_empty() {
        // Nothing to connect to: what looked like a warning is the failure.
        for i in problems {
            s.items[i].status = Status::Fail;
        }
        if s.items.iter().all(|i| i.status != Status::Fail) {
            s.push(Item::fail("no address to connect to"));
        }
    }
    out
}

/// One target's addresses, as an item (a warning when none is usable); the usable ones are
/// appended to `out` (at most [`MAX_ADDRESSES`] in all).
fn target_item(
    t: &Target,
    resolver: &Resolver,
    guard: Option<&NetworkPolicy<'_>>,
    fallback: bool,
    out: &mut Vec<Candidate>,
) -> Item {
    let name = format!("{}:{}", t.host, t.port);
    let ips = match t.host.parse::<IpAddr>() {
        Ok(ip) => Ok(vec![ip]),
        Err(_) => resolver.ips(&t.host),
    };
    let ips = match ips {
        Ok(ips) if ips.is_empty() && fallback => {
            let d = &t.host;
            return Item::warn(format!("{name}: no A/AAAA records")).hint(format!(
                "{d} has neither _xmpp-server._tcp SRV records nor an address: publish SRV \
                 records (`_xmpp-server._tcp.{d}. SRV 0 5 5269 xmpp.{d}.`) and A/AAAA \
                 records for their targets, or A/AAAA records for {d} itself (and check the \
                 spelling of the name)"
            ));
        }
        Ok(ips) if ips.is_empty() => {
            return Item::warn(format!("{name}: no A/AAAA records"))
                .hint(format!("publish an A or AAAA record for {}", t.host))
        }
        Ok(ips) => ips,
        Err(e) => return Item::warn(format!("{name}: address lookup failed: {e}")),
    };
    let mut item = Item::ok(format!("{name}: {}", list(&ips)));
    let mut usable = false;
    for ip in ips {
        match guard.and_then(|p| p.check(ip).err()) {
            Some(r) => item = item.detail(format!("{ip}: not dialled, {r}")),
            None if out.len() < MAX_ADDRESSES => {
                usable = true;
                out.push(Candidate {
                    addr: SocketAddr::new(ip, t.port),
                    host: t.host.clone(),
                    direct_tls: t.direct_tls,
                });
            }
            None => item = item.detail(format!("{ip}: not tried, {MAX_ADDRESSES} tried already")),
        }
    }
    if !usable {
        item.status = Status::Warn;
        item = item.hint(
            "the daemon never dials loopback, private, link-local or other special addresses \
             unless [dns] allow_networks covers them (SSRF guard): publish public addresses, \
             or allow the network if the server really is on it",
        );
    }
    item
}

fn list(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
