//! The peer's certificate chain as presented, judged after the handshake.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, RootCertStore};

use super::{server_name, sig_algs};
use crate::domain::Domain;

/// The peer's certificate chain (end-entity first) as presented in the handshake.
///
/// Nothing about it was checked at the handshake except that the peer holds the end-entity
/// key. Judge it with [`PeerCert::verify_pkix`] or [`PeerCert::matches_pin`] against the domain
/// that matters *at the time it matters*: for inbound dialback, the `from` of each `db:result`,
/// not only the stream header (CVE-2021-32919, XEP-0344 §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCert {
    chain: Vec<CertificateDer<'static>>,
}

impl PeerCert {
    /// Wrap a DER chain, end-entity first; `None` when it is empty.
    pub fn from_chain(chain: Vec<CertificateDer<'static>>) -> Option<PeerCert> {
        if chain.is_empty() {
            None
        } else {
            Some(PeerCert { chain })
        }
    }

    /// How many certificates the peer sent.
    pub fn chain_len(&self) -> usize {
        self.chain.len()
    }

    /// The chain as presented, end-entity first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// SHA-256 of the end-entity certificate's DER SubjectPublicKeyInfo (the value pinned by
    /// `pins`); `None` when the certificate does not parse.
    pub fn spki_sha256(&self) -> Option<[u8; 32]> {
        let ee = self.chain.first()?;
        let parsed = ParsedCertificate::try_from(ee).ok()?;
        let spki = parsed.subject_public_key_info();
        let digest = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
        digest.as_ref().try_into().ok()
    }

    /// [`PeerCert::spki_sha256`] in lower-case hex, for logs ("unparsable" when it fails).
    pub fn spki_sha256_hex(&self) -> String {
        match self.spki_sha256() {
            Some(d) => d.iter().map(|b| format!("{b:02x}")).collect(),
            None => "unparsable".to_owned(),
        }
    }

    /// RFC 5280 path validation and RFC 6125 name check with webpki: the chain leads to one of
    /// `roots`, every certificate is valid now, the end-entity certificate may be used for TLS
    /// servers (no EKU, or serverAuth), and it has a DNS-ID (SAN dNSName; a wildcard only as
    /// the whole left-most label) matching `domain` (an IP literal matches a SAN iPAddress).
    /// CN, SRV-ID and XmppAddr are not considered. No revocation checks.
    ///
    /// # Errors
    /// A short reason for logs: "self-signed", "expired", "not yet valid", "unknown issuer",
    /// "not valid for b.test", or the webpki error for anything else.
    pub fn verify_pkix(&self, domain: &Domain, roots: &Arc<RootCertStore>) -> Result<(), String> {
        self.verify_chain(roots, domain)?;
        self.valid_for(domain)
    }

    /// The path-validation half of [`PeerCert::verify_pkix`]: the chain leads to one of `roots`,
    /// every certificate is valid now, and the end-entity certificate may be used for TLS
    /// servers. `domain` only names the peer in error texts; no name is checked.
    ///
    /// # Errors
    /// A short reason: "self-signed", "expired", "not yet valid", "unknown issuer", or the
    /// webpki error for anything else.
    pub fn verify_chain(&self, roots: &Arc<RootCertStore>, domain: &Domain) -> Result<(), String> {
        let ee = self.chain.first().ok_or("no certificate")?;
        let parsed = ParsedCertificate::try_from(ee).map_err(|e| describe(e, domain))?;
        let now = UnixTime::now();
        let algs = sig_algs().all;
        let intermediates = self.chain.get(1..).unwrap_or(&[]);
        if let Err(e) = rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            roots,
            intermediates,
            now,
            algs,
        ) {
            let unknown = matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            );
            if unknown && self.is_self_signed(&parsed, now) {
                return Err("self-signed".to_owned());
            }
            return Err(describe(e, domain));
        }
        Ok(())
    }

    /// The name half of [`PeerCert::verify_pkix`]: the end-entity certificate has a DNS-ID
    /// matching `domain` (RFC 6125, as webpki matches it), whatever its chain.
    ///
    /// # Errors
    /// "not valid for b.test", or why the certificate or the name cannot be read.
    pub fn valid_for(&self, domain: &Domain) -> Result<(), String> {
        let ee = self.chain.first().ok_or("no certificate")?;
        let parsed = ParsedCertificate::try_from(ee).map_err(|e| describe(e, domain))?;
        let name = server_name(domain)?;
        rustls::client::verify_server_name(&parsed, &name).map_err(|e| describe(e, domain))
    }

    /// Whether the end-entity certificate verifies with itself as the only trust anchor.
    fn is_self_signed(&self, parsed: &ParsedCertificate<'_>, now: UnixTime) -> bool {
        let Some(ee) = self.chain.first() else {
            return false;
        };
        let mut store = RootCertStore::empty();
        if store.add(ee.clone()).is_err() {
            return false;
        }
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            parsed,
            &store,
            &[],
            now,
            sig_algs().all,
        )
        .is_ok()
    }

    /// Whether the end-entity SPKI SHA-256 is one of `pins`.
    pub fn matches_pin(&self, pins: &[[u8; 32]]) -> bool {
        match self.spki_sha256() {
            Some(d) => pins.contains(&d),
            None => false,
        }
    }
}

/// A short reason for a webpki failure, in words (see [`super::words`]).
fn describe(e: rustls::Error, domain: &Domain) -> String {
    match e {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!("not valid for {domain}"),
        rustls::Error::InvalidCertificate(c) => super::words::certificate(&c),
        other => super::words::error(&other),
    }
}
