//! The certificate part of the TLS step: the names, the chain, the expiry and the validity for
//! the domain of the certificate a peer presented, and what this configuration's policy makes
//! of it.
//!
//! webpki (through [`PeerCert`]) judges the chain and the name; the names and the expiry date
//! are read here with a small DER walker, since webpki keeps them to itself. The walker reads
//! only what it needs (TBSCertificate → validity, and the subjectAltName extension's dNSName
//! entries) and gives up (`None`, empty) on anything it does not expect; it never panics.

use super::report::{Item, Status};
use crate::config::{CertMode, TlsPolicy};
use crate::domain::Domain;
use crate::tls::{judge, CertJudgement, PeerCert};
use rustls::RootCertStore;
use std::sync::Arc;

/// A certificate expiring within this many days gets a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

const DAY: i64 = 86_400;

/// The trust anchors the chain is checked against, or why there are none.
pub struct Roots {
    /// The anchors, when they could be loaded.
    pub store: Result<Arc<RootCertStore>, String>,
    /// Where they come from, for the report ("the system's CA bundle", "ca_file …").
    pub source: String,
}

/// The items for the certificate `cert` presented for `domain`, judged at `now` (Unix
/// seconds) against `roots` and the configuration's `policy`.
pub fn certificate_items(
    domain: &Domain,
    cert: Option<&PeerCert>,
    roots: &Roots,
    policy: &TlsPolicy,
    now: i64,
) -> Vec<Item> {
    let Some(cert) = cert else {
        return vec![Item::fail(format!("{domain} presented no certificate"))
            .hint("a server must present a certificate for its domain in the TLS handshake")];
    };
    let pkix = policy.verify_for(domain) == CertMode::Pkix;
    // Under pkix the daemon refuses what is wrong with a certificate; otherwise it accepts it
    // (identity by dialback) and the problem is only the peer's standing with other servers.
    let wrong = if pkix { Status::Fail } else { Status::Warn };
    let der = cert.chain().first().map(|c| c.as_ref()).unwrap_or(&[]);
    let mut items = vec![names_item(der), chain_item(domain, cert, roots, wrong)];
    items.push(expiry_item(not_after(der), now));
    items.push(match cert.valid_for(domain) {
        Ok(()) => Item::ok(format!("valid for {domain}")),
        Err(why) => Item::new(wrong, format!("name: {why}")).hint(format!(
            "the certificate must name {domain} in its subjectAltName (a DNS name, or a \
             wildcard *.parent); servers that check certificates refuse it otherwise"
        )),
    });
    items.push(policy_item(domain, cert, roots, policy));
    items
}

fn names_item(der: &[u8]) -> Item {
    let names = dns_names(der);
    if names.is_empty() {
        Item::warn("certificate names: none (no DNS name in subjectAltName)")
            .hint("servers match the domain against subjectAltName DNS names only (RFC 6125)")
    } else {
        Item::ok(format!("certificate names: {}", names.join(", ")))
    }
}

fn chain_item(domain: &Domain, cert: &PeerCert, roots: &Roots, wrong: Status) -> Item {
    let store = match &roots.store {
        Ok(s) => s,
        Err(why) => {
            return Item::warn(format!("chain: not checked ({why})"))
                .hint("set [tls] ca_file, or install the system CA bundle (ca-certificates)")
        }
    };
    let n = cert.chain_len();
    match cert.verify_chain(store, domain) {
        Ok(()) => Item::ok(format!(
            "chain: valid ({n} certificate{}, trusted by {})",
            if n == 1 { "" } else { "s" },
            roots.source
        )),
        Err(why) => Item::new(wrong, format!("chain: {why} (against {})", roots.source)).hint(
            if why == "unknown issuer" {
                "the server may not send its intermediate certificates: it must send the full \
                 chain (e.g. Let's Encrypt's fullchain.pem, not cert.pem)"
            } else {
                "servers that check certificates (Prosody's s2s_secure_auth, verify = pkix in \
                 dialbackd, most public servers) refuse it: they fall back to dialback or \
                 refuse the stream; a certificate from a public CA (e.g. Let's Encrypt) fixes it"
            },
        ),
    }
}

/// ✘ expired, ⚠ within [`EXPIRY_WARNING_DAYS`] or unreadable, ✔ otherwise.
fn expiry_item(not_after: Option<i64>, now: i64) -> Item {
    let Some(end) = not_after else {
        return Item::warn("expiry: the certificate's notAfter could not be read");
    };
    let date = format_date(end);
    if end <= now {
        let ago = (now - end) / DAY;
        return Item::fail(format!("expired on {date} ({ago} days ago)"))
            .hint("renew the certificate, and check that renewal runs automatically");
    }
    let left = (end - now) / DAY;
    if left < EXPIRY_WARNING_DAYS {
        Item::warn(format!("expires on {date} (in {left} days)"))
            .hint("the server's operator should renew it now (and check that renewal is automatic)")
    } else {
        Item::ok(format!("expires on {date} (in {left} days)"))
    }
}

fn policy_item(domain: &Domain, cert: &PeerCert, roots: &Roots, policy: &TlsPolicy) -> Item {
    let mode = policy.verify_for(domain);
    match judge(policy, roots.store.as_ref().ok(), domain, Some(cert)) {
        CertJudgement::Trusted => Item::ok(format!(
            "accepted by this configuration (verify = {mode}): trusted"
        )),
        CertJudgement::Accepted(_) => Item::ok(format!(
            "accepted by this configuration (verify = {mode}): identity by dialback"
        )),
        CertJudgement::Refused(why) => Item::fail(format!("refused by this configuration: {why}"))
            .hint(format!(
                "the daemon will not federate with {domain} while [tls] verify/pins refuse \
                 this certificate"
            )),
    }
}

// ---------------------------------------------------------------------------------------------
// DER

/// A cursor over DER TLVs.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next (tag, contents); `None` at the end or on anything malformed (multi-byte tags,
    /// indefinite or overlong lengths, contents past the end).
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let bytes = rest.get(..n)?;
            let len = bytes.iter().fold(0usize, |l, b| (l << 8) | usize::from(*b));
            (len, rest.get(n..)?)
        };
        let body = rest.get(..len)?;
        self.0 = rest.get(len..)?;
        Some((tag, body))
    }

    /// The next TLV's contents if its tag is `tag`.
    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (t, body) if t == tag => Some(body),
            _ => None,
        }
    }
}

const SEQUENCE: u8 = 0x30;
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11]; // 2.5.29.17
const DNS_NAME: u8 = 0x82; // GeneralName [2] IMPLICIT IA5String

/// The validity SEQUENCE and the extensions SEQUENCE (if any) of a DER certificate.
fn tbs_parts(der: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let cert = Der(der).expect(SEQUENCE)?;
    let mut tbs = Der(Der(cert).expect(SEQUENCE)?);
    let (mut tag, _) = tbs.next()?;
    if tag == 0xa0 {
        // [0] EXPLICIT version; the serial number follows.
        tag = tbs.next()?.0;
    }
    if tag != 0x02 {
        return None;
    }
    tbs.expect(SEQUENCE)?; // signature algorithm
    tbs.expect(SEQUENCE)?; // issuer
    let validity = tbs.expect(SEQUENCE)?;
    tbs.expect(SEQUENCE)?; // subject
    tbs.expect(SEQUENCE)?; // subjectPublicKeyInfo
    let mut extensions = None;
    while let Some((tag, body)) = tbs.next() {
        if tag == 0xa3 {
            extensions = Der(body).expect(SEQUENCE);
        }
    }
    Some((validity, extensions))
}

/// The certificate's notAfter, in Unix seconds.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (validity, _) = tbs_parts(der)?;
    let mut v = Der(validity);
    v.next()?; // notBefore
    let (tag, time) = v.next()?;
    parse_time(tag, time)
}

/// The dNSName entries of the certificate's subjectAltName, as written (lower-cased).
pub fn dns_names(der: &[u8]) -> Vec<String> {
    let Some((_, Some(extensions))) = tbs_parts(der) else {
        return Vec::new();
    };
    let mut exts = Der(extensions);
    while let Some((SEQUENCE, ext)) = exts.next() {
        let mut e = Der(ext);
        if e.expect(0x06) != Some(SAN_OID) {
            continue;
        }
        let mut value = e.next();
        if let Some((0x01, _)) = value {
            value = e.next(); // the critical flag
        }
        let Some((0x04, octets)) = value else {
            return Vec::new();
        };
        let Some(general_names) = Der(octets).expect(SEQUENCE) else {
            return Vec::new();
        };
        let mut names = Der(general_names);
        let mut out = Vec::new();
        while let Some((tag, body)) = names.next() {
            if tag == DNS_NAME && body.is_ascii() {
                out.push(String::from_utf8_lossy(body).to_ascii_lowercase());
            }
        }
        return out;
    }
    Vec::new()
}

/// UTCTime (`YYMMDDHHMMSSZ`, RFC 5280: years 1950–2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`) to Unix seconds.
fn parse_time(tag: u8, t: &[u8]) -> Option<i64> {
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = std::str::from_utf8(t.get(r)?).ok()?;
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (year, rest) = match (tag, t.len()) {
        (0x17, 13) => {
            let yy = digits(0..2)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
        }
        (0x18, 15) => (digits(0..4)?, 4),
        _ => return None,
    };
    if t.last() != Some(&b'Z') {
        return None;
    }
    let field = |i: usize| digits(rest + 2 * i..rest + 2 * i + 2);
    let (month, day) = (field(0)?, field(1)?);
    let (hour, min, sec) = (field(2)?, field(3)?, field(4)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * DAY + hour * 3600 + min * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` (UTC) of Unix seconds.
pub fn format_date(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(DAY));
    format!("{y:04}-{m:02}-{d:02}")
}

/// (year, month 1–12, day 1–31) of a day count since 1970-01-01, negative counts included
/// (H. Hinnant's algorithm); also used for the status listener's HTTP dates.
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
#[path = "cert_tests.rs"]
mod tests;
