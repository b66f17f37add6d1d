use super::*;
use crate::config::PeerPolicy;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::CertificateDer;

fn d(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

/// 2030-06-15T12:00:00Z.
const END_2030: i64 = 1_907_755_200;

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "Check Test CA");
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf for `names` ending 2030-06-15T12:00:00Z, self-signed or signed by `ca`.
fn leaf(names: &[&str], ca: Option<&CertifiedIssuer<'static, KeyPair>>) -> CertificateDer<'static> {
    let mut p =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2030, 6, 15) + time_of_day_noon();
    let key = KeyPair::generate().unwrap();
    match ca {
        Some(ca) => p.signed_by(&key, ca).unwrap().der().clone(),
        None => p.self_signed(&key).unwrap().der().clone(),
    }
}

fn time_of_day_noon() -> std::time::Duration {
    std::time::Duration::from_secs(12 * 3600)
}

fn roots_of(ca: &CertifiedIssuer<'static, KeyPair>) -> Roots {
    let mut store = RootCertStore::empty();
    store.add(ca.der().clone()).unwrap();
    Roots {
        store: Ok(Arc::new(store)),
        source: "the test CA".into(),
    }
}

fn statuses(items: &[Item]) -> Vec<Status> {
    items.iter().map(|i| i.status).collect()
}

#[test]
fn reads_names_and_expiry_from_der() {
    let der = leaf(&["b.test", "*.b.test", "conference.b.test"], None);
    assert_eq!(
        dns_names(&der),
        vec!["b.test", "*.b.test", "conference.b.test"]
    );
    assert_eq!(not_after(&der), Some(END_2030));
    assert_eq!(format_date(END_2030), "2030-06-15");
}

#[test]
fn malformed_der_gives_nothing_and_never_panics() {
    let der = leaf(&["b.test"], None);
    for cut in 0..der.len() {
        let part = &der[..cut];
        assert!(dns_names(part).is_empty());
        assert_eq!(not_after(part), None);
    }
    let mut flipped = der.to_vec();
    for i in 0..flipped.len() {
        flipped[i] ^= 0xff;
        let _ = dns_names(&flipped);
        let _ = not_after(&flipped);
        flipped[i] ^= 0xff;
    }
    // Lengths past the end, multi-byte tags, five-byte lengths.
    for junk in [
        &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff][..],
        &[0x1f, 0x01, 0x00],
        &[0x30, 0x85],
    ] {
        assert!(dns_names(junk).is_empty());
        assert_eq!(not_after(junk), None);
    }
}

#[test]
fn asn1_times_and_dates() {
    assert_eq!(parse_time(0x17, b"300615120000Z"), Some(END_2030));
    assert_eq!(parse_time(0x18, b"20300615120000Z"), Some(END_2030));
    assert_eq!(parse_time(0x17, b"700101000000Z"), Some(0));
    assert_eq!(parse_time(0x17, b"491231235959Z"), Some(2_524_607_999));
    assert_eq!(parse_time(0x17, b"300615120000+"), None);
    assert_eq!(parse_time(0x17, b"301315120000Z"), None, "month 13");
    assert_eq!(parse_time(0x18, b"2030061512000Z"), None, "short");
    assert_eq!(parse_time(0x04, b"300615120000Z"), None, "not a time");
    assert_eq!(format_date(0), "1970-01-01");
    assert_eq!(format_date(951_782_400), "2000-02-29");
    assert_eq!(format_date(-86_400), "1969-12-31");
}

#[test]
fn expiry_fails_when_expired_and_warns_within_fourteen_days() {
    let soon = expiry_item(Some(END_2030), END_2030 - 5 * DAY);
    assert_eq!(soon.status, Status::Warn);
    assert_eq!(soon.text, "expires on 2030-06-15 (in 5 days)");
    let edge = expiry_item(Some(END_2030), END_2030 - EXPIRY_WARNING_DAYS * DAY);
    assert_eq!(edge.status, Status::Ok);
    let late = expiry_item(Some(END_2030), END_2030 + 3 * DAY);
    assert_eq!(late.status, Status::Fail);
    assert_eq!(late.text, "expired on 2030-06-15 (3 days ago)");
    assert!(!late.hints.is_empty());
    assert_eq!(expiry_item(None, 0).status, Status::Warn);
}

#[test]
fn a_ca_signed_certificate_for_the_domain_passes_every_item() {
    let ca = ca();
    let cert = PeerCert::from_chain(vec![leaf(&["b.test"], Some(&ca))]).unwrap();
    let items = certificate_items(
        &d("b.test"),
        Some(&cert),
        &roots_of(&ca),
        &TlsPolicy::default(),
        END_2030 - 100 * DAY,
    );
    assert_eq!(statuses(&items), vec![Status::Ok; 5], "{items:#?}");
    assert_eq!(items[0].text, "certificate names: b.test");
    assert!(
        items[1].text.contains("trusted by the test CA"),
        "{items:#?}"
    );
    assert_eq!(items[3].text, "valid for b.test");
}

/// Under verify = dialback the daemon accepts a self-signed certificate for another name (the
/// identity comes from dialback): warnings. Under pkix it refuses it: failures.
#[test]
fn self_signed_wrong_name_warns_under_dialback_and_fails_under_pkix() {
    let cert = PeerCert::from_chain(vec![leaf(&["other.test"], None)]).unwrap();
    let roots = roots_of(&ca());
    let now = END_2030 - 100 * DAY;
    let items = certificate_items(
        &d("b.test"),
        Some(&cert),
        &roots,
        &TlsPolicy::default(),
        now,
    );
    use Status::*;
    assert_eq!(statuses(&items), vec![Ok, Warn, Ok, Warn, Ok], "{items:#?}");
    assert!(items[1].text.contains("self-signed"), "{items:#?}");
    assert_eq!(items[3].text, "name: not valid for b.test");

    let mut pkix = TlsPolicy::default();
    pkix.peers.insert(
        d("b.test"),
        PeerPolicy {
            verify: Some(CertMode::Pkix),
            ..PeerPolicy::default()
        },
    );
    let items = certificate_items(&d("b.test"), Some(&cert), &roots, &pkix, now);
    assert_eq!(
        statuses(&items),
        vec![Ok, Fail, Ok, Fail, Fail],
        "{items:#?}"
    );
    assert!(items[4].text.starts_with("refused by this configuration"));
}

#[test]
fn no_certificate_or_no_roots() {
    let items = certificate_items(
        &d("b.test"),
        None,
        &roots_of(&ca()),
        &TlsPolicy::default(),
        0,
    );
    assert_eq!(statuses(&items), vec![Status::Fail]);
    let cert = PeerCert::from_chain(vec![leaf(&["b.test"], None)]).unwrap();
    let none = Roots {
        store: Err("no CA bundle".into()),
        source: "the system's CA bundle".into(),
    };
    let items = certificate_items(&d("b.test"), Some(&cert), &none, &TlsPolicy::default(), 0);
    assert_eq!(items[1].status, Status::Warn);
    assert_eq!(items[1].text, "chain: not checked (no CA bundle)");
}
