//! What the daemon's streams need of TLS, built once at start-up from the config, and the
//! certificate policy (`[tls] verify`, per-peer overrides and pins).
//!
//! The policy is judged against the domain that matters at the moment it matters: on
//! outbound streams the domain we dialled, right after the handshake; on inbound streams the
//! `from` of each `<db:result/>` when it arrives (SEC-04, SEC-13: a certificate valid for
//! `a.example` says nothing about a piggybacked `b.example`).

use super::{
    client_config, load_roots, server_config, server_config_for, PeerCert, ServerCerts, TlsError,
};
use crate::config::{CertMode, Config, TlsPolicy};
use crate::domain::Domain;
use rustls::RootCertStore;
use std::collections::HashMap;
use std::sync::Arc;

/// Loaded certificates and the rustls configurations made from them.
pub struct TlsContext {
    /// For inbound streams (STARTTLS and direct TLS).
    pub server: Arc<rustls::ServerConfig>,
    /// For inbound STARTTLS on a stream whose header named one of our domains in `to`: that
    /// domain's certificate whatever the client's SNI says (see [`TlsContext::server_for`]).
    servers_by_to: HashMap<Domain, Arc<rustls::ServerConfig>>,
    /// For outbound streams, by (local domain, direct TLS).
    clients: HashMap<(Domain, bool), Arc<rustls::ClientConfig>>,
    /// Trust anchors for `pkix` mode; `None` when no peer is checked that way.
    roots: Option<Arc<RootCertStore>>,
    /// Local domains whose certificate (the one we present as TLS client) names them: those
    /// may authenticate by SASL EXTERNAL (SASL-01).
    external_ok: std::collections::HashSet<Domain>,
}

/// The verdict on a peer's certificate.
#[derive(Debug, PartialEq, Eq)]
pub enum CertJudgement {
    /// Accepted; identity is left to dialback. The text says what the certificate was.
    Accepted(String),
    /// Valid for the domain under `pkix` (XEP-0344: dialback may be answered without a
    /// callback).
    Trusted,
    /// Refused, with the reason for the log.
    Refused(String),
}

impl TlsContext {
    /// Load every certificate the config names and build the configurations.
    ///
    /// # Errors
    /// A certificate or key cannot be loaded (the message names the file), or the CA bundle
    /// for `pkix` mode cannot be read.
    pub fn from_config(config: &Config) -> Result<TlsContext, TlsError> {
        let tls = &config.tls;
        let per_domain: Vec<_> = tls
            .certs
            .iter()
            .map(|(d, p)| (d.clone(), p.certificate.clone(), p.key.clone()))
            .collect();
        let default = tls
            .default_cert
            .as_ref()
            .map(|p| (p.certificate.as_path(), p.key.as_path()));
        let certs = ServerCerts::load(&per_domain, default)?;
        let server = server_config(&certs)?;
        let mut servers_by_to = HashMap::new();
        for local in config.local_domains() {
            let cfg = server_config_for(&certs, Some(&local))?;
            servers_by_to.insert(local, cfg);
        }
        let external_ok = config
            .local_domains()
            .into_iter()
            .filter(|d| certs.client_cert_names(d))
            .collect();
        let mut clients = HashMap::new();
        for local in config.local_domains() {
            for direct in [false, true] {
                clients.insert(
                    (local.clone(), direct),
                    client_config(&certs, &local, direct)?,
                );
            }
        }
        let uses_pkix = tls.verify == CertMode::Pkix
            || tls.peers.values().any(|p| p.verify == Some(CertMode::Pkix));
        // Trust anchors are needed for pkix mode; in dialback mode they only make the logs say
        // what a certificate is ("self-signed", "expired"…), so a missing bundle is no error.
        let roots = if uses_pkix {
            Some(load_roots(tls.ca_file.as_deref())?)
        } else {
            load_roots(tls.ca_file.as_deref()).ok()
        };
        Ok(TlsContext {
            server,
            servers_by_to,
            clients,
            roots,
            external_ok,
        })
    }

    /// Whether the certificate we present as TLS client for `local` names `local` (RFC 6125
    /// DNS-ID): only then is SASL EXTERNAL worth trying as that domain (SASL-01). Whether the
    /// peer trusts its issuer, only the peer knows (it answers `<failure/>` otherwise).
    pub fn can_authenticate_as(&self, local: &Domain) -> bool {
        self.external_ok.contains(local)
    }

    /// Whether `cert` proves `peer`'s identity for SASL EXTERNAL (SASL-01): under `policy` the
    /// certificate is valid for `peer` (`verify = "pkix"`), or matches its pins. Dialback mode
    /// without pins proves nothing: any certificate is accepted there.
    ///
    /// # Errors
    /// Why not, in words fit for the log and the peer (no key material).
    pub fn proves(&self, policy: &TlsPolicy, peer: &Domain, cert: &PeerCert) -> Result<(), String> {
        match self.judge(policy, peer, Some(cert)) {
            CertJudgement::Trusted => Ok(()),
            CertJudgement::Accepted(_) if !policy.pins_for(peer).is_empty() => Ok(()),
            CertJudgement::Accepted(_) => Err(format!(
                "certificates of {peer} are not checked here (verify = \"dialback\")"
            )),
            CertJudgement::Refused(why) => Err(why),
        }
    }

    /// The server configuration for an inbound STARTTLS after a header whose `to` was `to`:
    /// the certificate of `to` when it has one of its own, else chosen by SNI as usual.
    pub fn server_for(&self, to: Option<&Domain>) -> Arc<rustls::ServerConfig> {
        to.and_then(|d| self.servers_by_to.get(d))
            .unwrap_or(&self.server)
            .clone()
    }

    /// The client configuration for streams from `local`.
    pub fn client(&self, local: &Domain, direct: bool) -> Option<Arc<rustls::ClientConfig>> {
        self.clients.get(&(local.clone(), direct)).cloned()
    }

    /// Judge `peer`'s certificate under `policy`.
    pub fn judge(
        &self,
        policy: &TlsPolicy,
        peer: &Domain,
        cert: Option<&PeerCert>,
    ) -> CertJudgement {
        judge(policy, self.roots.as_ref(), peer, cert)
    }
}

/// The certificate policy, pure: pins first (a pinned peer must present a pinned key), then
/// the mode.
pub fn judge(
    policy: &TlsPolicy,
    roots: Option<&Arc<RootCertStore>>,
    peer: &Domain,
    cert: Option<&PeerCert>,
) -> CertJudgement {
    let pins = policy.pins_for(peer);
    if !pins.is_empty() {
        match cert {
            Some(c) if c.matches_pin(pins) => {}
            Some(c) => {
                return CertJudgement::Refused(format!(
                    "certificate for {peer} does not match its pinned fingerprint (got sha256:{})",
                    c.spki_sha256_hex()
                ))
            }
            None => {
                return CertJudgement::Refused(format!(
                    "{peer} presented no certificate but its fingerprint is pinned"
                ))
            }
        }
    }
    match policy.verify_for(peer) {
        CertMode::Pkix => match (cert, roots) {
            (None, _) => {
                CertJudgement::Refused(format!("{peer} presented no certificate and verify = pkix"))
            }
            (Some(_), None) => {
                CertJudgement::Refused("no trust anchors loaded for pkix mode".into())
            }
            (Some(c), Some(r)) => match c.verify_pkix(peer, r) {
                Ok(()) => CertJudgement::Trusted,
                Err(why) => CertJudgement::Refused(format!(
                    "certificate for {peer}: {why}; refused (verify = pkix)"
                )),
            },
        },
        CertMode::Dialback => match cert {
            None => CertJudgement::Accepted(format!(
                "{peer} presented no certificate; identity by dialback"
            )),
            Some(c) => {
                let what = match roots.map(|r| c.verify_pkix(peer, r)) {
                    Some(Ok(())) => "valid".to_string(),
                    Some(Err(why)) => why,
                    None => "not checked".to_string(),
                };
                CertJudgement::Accepted(format!(
                    "certificate for {peer}: {what}, accepted under dialback mode"
                ))
            }
        },
    }
}
