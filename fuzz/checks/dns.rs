//! `dns_message`: what the resolver makes of a reply datagram, and SRV ordering.

use super::Input;
use dialbackd::dns::{
    order_srv, read_reply, s2s_targets, DnsError, Reply, SrvRecord, DEFAULT_S2S_PORT,
};
use hickory_proto::rr::RecordType;

/// The query id every seed answers.
pub const ID: u16 = 0x1234;
/// The SRV query every seed of type SRV answers.
pub const SRV_NAME: &str = "_xmpp-server._tcp.example.test";
/// The A/AAAA query every seed of those types answers.
pub const HOST_NAME: &str = "xmpp.example.test";
const DOMAIN: &str = "example.test";

/// Input: one byte (the query: SRV, A or AAAA; and how to split the SRV records between the
/// `_xmpp-server` and `_xmpps-server` sets), two bytes giving the datagram length, the
/// datagram, then the random values the ordering draws.
///
/// Checks: `read_reply` never panics and accepts our names; NXDOMAIN has no records; SRV
/// targets are `"."` or lowercase host names (no trailing dot, no escaped bytes); `order_srv` returns a permutation of the
/// usable records in ascending priority, whatever the random source returns; `s2s_targets`
/// gives the records (or the fallback, or `NoService` exactly when the only plain record is
/// `"."` and nothing else is usable).
pub fn dns_message(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let len = usize::from(u16::from_be_bytes([input.byte(), input.byte()]));
    let datagram = input.bytes(len);
    let (name, rtype) = match mode % 3 {
        0 => (SRV_NAME, RecordType::SRV),
        1 => (HOST_NAME, RecordType::A),
        _ => (HOST_NAME, RecordType::AAAA),
    };
    let reply = read_reply(datagram, ID, name, rtype).expect("our names are valid");
    let records = match reply {
        Reply::Ignored | Reply::Truncated | Reply::Failure(_) => return,
        Reply::Addresses {
            nxdomain,
            addresses,
        } => {
            assert!(!nxdomain || addresses.is_empty());
            for a in addresses {
                assert_eq!(a.is_ipv4(), rtype == RecordType::A, "{a} for {rtype}");
            }
            return;
        }
        Reply::Srv { nxdomain, records } => {
            assert!(!nxdomain || records.is_empty());
            records
        }
    };
    for r in &records {
        assert!(
            r.target == "." || is_host_name(&r.target),
            "target {:?}",
            r.target
        );
    }
    let mut rand_bytes = input;
    let mut rand = move |n: u32| {
        let v = u32::from_be_bytes([
            rand_bytes.byte(),
            rand_bytes.byte(),
            rand_bytes.byte(),
            rand_bytes.byte(),
        ]);
        // Mostly in range, sometimes not (the ordering must survive a misbehaving source).
        if v & 1 == 0 {
            v % (n.saturating_add(1)).max(1)
        } else {
            v
        }
    };

    let usable: Vec<SrvRecord> = records
        .iter()
        .filter(|r| r.target != ".")
        .cloned()
        .collect();
    let ordered = order_srv(records.clone(), &mut rand);
    assert_eq!(
        sorted(&ordered),
        sorted(&usable),
        "not a permutation of the usable records"
    );
    assert!(
        ordered.windows(2).all(|w| w[0].priority <= w[1].priority),
        "priorities out of order"
    );

    let split = usize::from(mode >> 2) % (records.len() + 1);
    let plain = records[..split].to_vec();
    let tls = records[split..].to_vec();
    let tls_usable = tls.iter().filter(|r| r.target != ".").count();
    let plain_usable = plain.iter().filter(|r| r.target != ".").count();
    match s2s_targets(DOMAIN.to_string(), plain.clone(), tls, &mut rand) {
        Err(DnsError::NoService) => {
            assert!(plain.len() == 1 && plain[0].target == "." && tls_usable == 0);
        }
        Err(e) => panic!("s2s_targets failed: {e}"),
        Ok(targets) if plain_usable + tls_usable == 0 => {
            assert_eq!(targets.len(), 1);
            assert_eq!(
                (targets[0].host.as_str(), targets[0].port),
                (DOMAIN, DEFAULT_S2S_PORT)
            );
            assert!(!targets[0].direct_tls);
        }
        Ok(targets) => {
            assert_eq!(targets.len(), plain_usable + tls_usable);
            assert_eq!(targets.iter().filter(|t| t.direct_tls).count(), tls_usable);
            assert!(targets.iter().all(|t| t.host != "."));
        }
    }
}

fn sorted(v: &[SrvRecord]) -> Vec<(u16, u16, u16, String)> {
    let mut out: Vec<_> = v
        .iter()
        .map(|r| (r.priority, r.weight, r.port, r.target.clone()))
        .collect();
    out.sort();
    out
}

/// Lowercase letters, digits, `-` and `_` in labels of 1 to 63 bytes, 253 bytes at most, no
/// trailing dot: what the resolver can look up and the connection layer can dial.
fn is_host_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 253
        && t.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}
