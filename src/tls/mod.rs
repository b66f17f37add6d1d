//! TLS for server-to-server streams: rustls configurations, certificates, and one TLS
//! connection per stream, driven by the thread that owns its socket.
//!
//! In scope:
//! - loading our certificate chains and keys from PEM files, one pair per hosted domain plus an
//!   optional default, with the key checked against its certificate at load time ([`ServerCerts`]);
//! - the rustls [`server_config`] (certificate chosen by SNI; client certificates requested but
//!   never required, and accepted whatever they are) and [`client_config`] (our certificate
//!   presented, any server certificate accepted at the handshake, handshake signatures still
//!   verified);
//! - judging the peer's certificate *after* the handshake ([`PeerCert`]): RFC 5280 path
//!   validation plus an RFC 6125 DNS-ID match (SAN dNSName, wildcard in the left-most label only)
//!   with webpki, and SPKI SHA-256 pins. The judgement is taken against the domain that matters
//!   when it matters: for inbound dialback that is the `from` of each `db:result`, not only the
//!   stream header (CVE-2021-32919, XEP-0344 §3; standards.md SEC-04, SEC-13);
//! - [`Session`]: one unsplit `rustls::Connection` for STARTTLS (RFC 6120 §5) and direct TLS
//!   (XEP-0368), stepped over a non-blocking socket by its owner (no lock, no halves);
//! - `dialbackd gen-cert` ([`gen_cert`]).
//!
//! Out of scope: the STARTTLS negotiation itself (`<starttls/>`/`<proceed/>`, refusing to
//! upgrade when bytes follow `<starttls/>`, policy for plaintext dialback, standards.md SEC-12:
//! all in the stream core and the connection code); the decision *which* of dialback, pkix or
//! pins applies (configuration); SRV-ID and XmppAddr identifiers (webpki matches DNS-IDs only,
//! which is what RFC 9525 and current servers use; CN is never matched); revocation (CRL/OCSP);
//! DANE; internationalised domain names.
//!
//! Policy (RFC 7590): TLS 1.2 and TLS 1.3 only (rustls implements nothing older), the rustls
//! *ring* provider's cipher suites (all AEAD with forward secrecy). Session resumption is off on
//! both sides, so every connection presents and judges full certificates. rustls never
//! renegotiates, neither as client nor as server (TLS-01, SEC-07, CVE-2021-32920): the first
//! TLS 1.2 renegotiation request is refused with a `no_renegotiation` warning alert and costs no
//! handshake, a second one is a fatal error; TLS 1.3 has no renegotiation. For direct TLS,
//! SNI is the peer's JID domain, not the SRV target, and ALPN is `xmpp-server` (DTLS-03).
//!
//! Use:
//! - At start-up: [`ServerCerts::load`], then [`server_config`] once (or [`server_config_for`]
//!   per hosted domain) and [`client_config`] per (local domain, direct TLS or not); all cheap
//!   to share (`Arc`). [`load_roots`] when some peer is checked in pkix mode.
//! - Inbound: after `<proceed/>` (or at once on the direct-TLS port), [`Session::accept`]; the
//!   stream's reads and writes drive the handshake. Afterwards [`Session::info`] gives the
//!   [`HandshakeInfo`] with the peer's certificate, to judge at each `db:result`.
//! - Outbound: [`Session::connect`] with SNI = the peer's domain; once the handshake is done,
//!   judge its `peer_cert`.
//! - Judging: dialback mode needs nothing; pkix is [`PeerCert::verify_pkix`] against the domain
//!   being authenticated; pins are [`PeerCert::matches_pin`].
//!
//! Nothing here waits: the stream thread bounds the handshake with its negotiation deadline.

mod context;
mod gencert;
mod peer;
mod session;
#[cfg(test)]
mod tests;
mod verifiers;
pub mod words;

pub use context::{judge, CertJudgement, TlsContext};
pub use gencert::gen_cert;
pub use peer::PeerCert;
pub use session::{HandshakeInfo, ReadEnd, Session};
use verifiers::{AcceptAnyClientCert, AcceptAnyServerCert, SniResolver};

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::ParsedCertificate;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{RootCertStore, SupportedProtocolVersion};

use crate::domain::Domain;

/// The ALPN protocol id for server-to-server streams over direct TLS (XEP-0368).
pub const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";

/// The protocol versions we enable: TLS 1.3 and TLS 1.2, nothing older (RFC 7590).
pub const PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Where the system's CA bundle lives on Debian and derivatives.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The largest PEM file we read (a full CA bundle is about 200 KiB).
const MAX_PEM_FILE: u64 = 16 * 1024 * 1024;

/// A TLS set-up error; the message names the file and the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsError(String);

impl TlsError {
    fn new(msg: impl Into<String>) -> TlsError {
        TlsError(msg.into())
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// The crypto provider used everywhere: rustls's *ring* provider, built once.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The signature algorithms of [`provider`], for chain and handshake-signature checks.
fn sig_algs() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// Read a whole PEM file, at most [`MAX_PEM_FILE`] bytes. `what` is "certificate", "key", ...
fn read_pem_file(what: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let file = std::fs::File::open(path)
        .map_err(|e| TlsError(format!("{what} {}: {e}", path.display())))?;
    let mut data = Vec::new();
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut data)
        .map_err(|e| TlsError(format!("{what} {}: {e}", path.display())))?;
    if data.len() as u64 > MAX_PEM_FILE {
        return Err(TlsError(format!(
            "{what} {}: larger than {MAX_PEM_FILE} bytes",
            path.display()
        )));
    }
    Ok(data)
}

/// Load a certificate chain (end-entity first) from a PEM file.
fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = read_pem_file("certificate", path)?;
    let chain = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("certificate {}: bad PEM: {e}", path.display())))?;
    if chain.is_empty() {
        return Err(TlsError(format!(
            "certificate {}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(chain)
}

/// Load a certificate chain and its private key and check that they belong together.
/// `label` names what the pair is for in error messages ("a.test", "the default certificate").
fn load_pair(cert: &Path, key: &Path, label: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_chain(cert)?;
    let parsed = chain.first().map(ParsedCertificate::try_from);
    if let Some(Err(e)) = parsed {
        return Err(TlsError(format!(
            "certificate {}: not a valid X.509 certificate: {e}",
            cert.display()
        )));
    }
    let data = read_pem_file("key", key)?;
    let der = PrivateKeyDer::from_pem_slice(&data).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError(format!("key {}: no PEM private key found", key.display()))
        }
        e => TlsError(format!("key {}: bad PEM: {e}", key.display())),
    })?;
    let signing = provider().key_provider.load_private_key(der).map_err(|e| {
        TlsError(format!(
            "key {}: unsupported or malformed private key: {e}",
            key.display()
        ))
    })?;
    let certified = CertifiedKey::new(chain, signing);
    // Every key type the ring provider loads knows its public key, so this is decisive.
    certified.keys_match().map_err(|_| {
        TlsError(format!(
            "key {}: does not match certificate {} for {label}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok(Arc::new(certified))
}

/// Our certificates: one chain+key per hosted domain, chosen by SNI, plus an optional default.
#[derive(Clone)]
pub struct ServerCerts {
    by_domain: BTreeMap<Domain, Arc<CertifiedKey>>,
    /// The first configured domain's pair: the last resort when there is no SNI and no default.
    first: Option<Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl fmt::Debug for ServerCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCerts")
            .field("domains", &self.by_domain.keys().collect::<Vec<_>>())
            .field("default", &self.default.is_some())
            .finish()
    }
}

impl ServerCerts {
    /// Load PEM files. `per_domain`: (domain, cert chain path, key path); `default`: (cert
    /// chain path, key path) used when SNI matches no domain.
    ///
    /// Each key is checked against the end-entity certificate of its chain. A certificate that
    /// is not valid for its domain is loaded with a warning (dialback peers accept it).
    ///
    /// # Errors
    /// A file is missing, unreadable, not PEM, holds no certificate or key, the key does not
    /// match its certificate, a domain is listed twice, or nothing at all is configured.
    pub fn load(
        per_domain: &[(Domain, PathBuf, PathBuf)],
        default: Option<(&Path, &Path)>,
    ) -> Result<ServerCerts, TlsError> {
        let mut by_domain = BTreeMap::new();
        let mut first = None;
        for (domain, cert, key) in per_domain {
            let pair = load_pair(cert, key, domain.as_str())?;
            warn_if_not_valid_for(&pair, domain, cert);
            if first.is_none() {
                first = Some(pair.clone());
            }
            if by_domain.insert(domain.clone(), pair).is_some() {
                return Err(TlsError(format!(
                    "certificate {}: a second certificate for {domain}",
                    cert.display()
                )));
            }
        }
        let default = match default {
            Some((cert, key)) => Some(load_pair(cert, key, "the default certificate")?),
            None => None,
        };
        if first.is_none() && default.is_none() {
            return Err(TlsError::new("no TLS certificate configured"));
        }
        Ok(ServerCerts {
            by_domain,
            first,
            default,
        })
    }

    /// The pair for `domain`, or the default, or the first configured domain's.
    fn for_server(&self, domain: Option<&Domain>) -> Option<Arc<CertifiedKey>> {
        domain
            .and_then(|d| self.by_domain.get(d))
            .or(self.default.as_ref())
            .or(self.first.as_ref())
            .cloned()
    }

    /// The pair we present as a TLS client for `local`: its own, or the default, or none.
    fn for_client(&self, local: &Domain) -> Option<Arc<CertifiedKey>> {
        self.by_domain.get(local).or(self.default.as_ref()).cloned()
    }

    /// Whether the certificate we present as a TLS client for `local` has a DNS-ID for it
    /// (what SASL EXTERNAL as `local` needs).
    pub fn client_cert_names(&self, local: &Domain) -> bool {
        self.for_client(local)
            .is_some_and(|pair| names(&pair, local))
    }
}

/// Whether `pair`'s end-entity certificate has a DNS-ID matching `domain`.
fn names(pair: &CertifiedKey, domain: &Domain) -> bool {
    match (pair.end_entity_cert(), server_name(domain)) {
        (Ok(ee), Ok(name)) => ParsedCertificate::try_from(ee)
            .and_then(|p| rustls::client::verify_server_name(&p, &name))
            .is_ok(),
        _ => false,
    }
}

/// Log a warning when `pair`'s certificate has no DNS-ID for `domain`.
fn warn_if_not_valid_for(pair: &CertifiedKey, domain: &Domain, path: &Path) {
    let ok = names(pair, domain);
    if !ok {
        log::warn!(
            "certificate {}: not valid for {domain} (peers that check certificates will fall back to dialback or refuse)",
            path.display()
        );
    }
}

/// The rustls name for `domain`: a DNS name, or an IP address for an IP literal.
pub(crate) fn server_name(domain: &Domain) -> Result<ServerName<'static>, String> {
    let s = domain.as_str();
    let r = match s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(ip) => ServerName::try_from(ip.to_owned()),
        None => ServerName::try_from(s.to_owned()),
    };
    r.map_err(|e| format!("{domain}: not usable as a TLS server name: {e}"))
}

/// Build the rustls server configuration: TLS 1.2 + 1.3, ring, our certificate chosen by SNI
/// (falling back to the default, then to the first configured domain), client certificates
/// requested but optional and accepted whatever they are, ALPN `xmpp-server` offered.
///
/// Note on ALPN: a client that offers ALPN protocols none of which is `xmpp-server` is refused
/// by rustls (RFC 7301); clients that offer no ALPN, as on STARTTLS, are unaffected.
///
/// # Errors
/// Only if rustls refuses the protocol versions (not expected).
pub fn server_config(certs: &ServerCerts) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_for(certs, None)
}

/// Like [`server_config`], but a client that sends no SNI gets the certificate of `to` (the
/// `to` of the stream header that preceded STARTTLS) when we host it. Cheap to build: the
/// connection code may build one per hosted domain once and keep them.
///
/// # Errors
/// Only if rustls refuses the protocol versions (not expected).
pub fn server_config_for(
    certs: &ServerCerts,
    to: Option<&Domain>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| TlsError(format!("TLS server configuration: {e}")))?
        .with_client_cert_verifier(Arc::new(AcceptAnyClientCert { algs: sig_algs() }))
        .with_cert_resolver(Arc::new(SniResolver {
            certs: certs.clone(),
            hint: to.cloned(),
        }));
    cfg.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// Build the rustls client configuration: TLS 1.2 + 1.3, ring, our certificate for `local`
/// presented (or the default one; none if neither exists), any server certificate accepted at
/// the handshake with its handshake signature verified. `alpn`: offer `xmpp-server` (direct
/// TLS, XEP-0368); false for STARTTLS.
///
/// # Errors
/// Only if rustls refuses the protocol versions (not expected).
pub fn client_config(
    certs: &ServerCerts,
    local: &Domain,
    alpn: bool,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    client_config_versions(certs, local, alpn, PROTOCOL_VERSIONS)
}

/// A client configuration that presents no certificate, as [`client_config`] otherwise: for
/// `dialbackd check` when the configuration has no TLS of its own. `alpn` as there.
///
/// # Errors
/// Only if rustls refuses the protocol versions (not expected).
pub fn client_config_without_cert(alpn: bool) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let none = ServerCerts {
        by_domain: BTreeMap::new(),
        first: None,
        default: None,
    };
    // `local` only picks a certificate, and there is none to pick.
    let local = Domain::parse("localhost").map_err(|e| TlsError(e.to_string()))?;
    client_config_versions(&none, &local, alpn, PROTOCOL_VERSIONS)
}

fn client_config_versions(
    certs: &ServerCerts,
    local: &Domain,
    alpn: bool,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError(format!("TLS client configuration: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert { algs: sig_algs() }));
    let mut cfg = match certs.for_client(local) {
        Some(pair) => builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(pair))),
        None => {
            log::debug!("TLS: no certificate for {local}; connecting without a client certificate");
            builder.with_no_client_auth()
        }
    };
    if alpn {
        cfg.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
    }
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// Root store from a PEM bundle (`ca_file`) or, with `None`, the system bundle
/// `/etc/ssl/certs/ca-certificates.crt` (an empty store, with a warning, if that is absent).
/// Certificates in the bundle that webpki cannot use are skipped with a debug log.
///
/// # Errors
/// `ca_file` is missing, unreadable, not PEM, or holds no usable certificate; the system
/// bundle exists but cannot be read.
pub fn load_roots(ca_file: Option<&Path>) -> Result<Arc<RootCertStore>, TlsError> {
    let path = match ca_file {
        Some(p) => p,
        None => {
            let p = Path::new(SYSTEM_CA_BUNDLE);
            if !p.exists() {
                log::warn!(
                    "CA bundle {SYSTEM_CA_BUNDLE} not found: no certificate will pass pkix checks"
                );
                return Ok(Arc::new(RootCertStore::empty()));
            }
            p
        }
    };
    let data = read_pem_file("CA file", path)?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("CA file {}: bad PEM: {e}", path.display())))?;
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if ignored > 0 {
        log::debug!(
            "CA file {}: {ignored} certificate(s) skipped as unusable",
            path.display()
        );
    }
    if added == 0 {
        return Err(TlsError(format!(
            "CA file {}: no usable PEM certificate found",
            path.display()
        )));
    }
    Ok(Arc::new(roots))
}
