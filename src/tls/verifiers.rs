//! The rustls hooks: certificate choice by SNI, and verifiers that accept any peer certificate
//! at the handshake (it is judged afterwards by [`super::PeerCert`]) while still verifying the
//! handshake signatures.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::ServerCerts;
use crate::domain::Domain;

/// Chooses our certificate: the stream's `to` when we have a certificate for it, else the
/// client's SNI (see [`ServerCerts::for_server`]).
#[derive(Debug)]
pub(super) struct SniResolver {
    pub(super) certs: ServerCerts,
    /// The `to` of the stream header that preceded STARTTLS. With STARTTLS the header names
    /// the domain the peer is authenticating (RFC 7590 §3.2, RFC 6120 §13.7.2); its SNI may
    /// be missing or name something else (the SRV target), so the header wins.
    pub(super) hint: Option<Domain>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = client_hello
            .server_name()
            .and_then(|s| Domain::parse(s).ok());
        let hosted = |d: &&Domain| self.certs.by_domain.contains_key(*d);
        let chosen = self
            .hint
            .as_ref()
            .filter(hosted)
            .or(sni.as_ref().filter(hosted));
        let pair = self.certs.for_server(chosen);
        if pair.is_none() {
            log::warn!(
                "TLS: no certificate for SNI {:?}",
                client_hello.server_name().map(crate::logsafe::peer)
            );
        }
        pair
    }
}

/// Requests a client certificate and accepts any chain (or none): the peer's certificate is
/// judged after the handshake by [`PeerCert`]. Handshake signatures are still verified.
#[derive(Debug)]
pub(super) struct AcceptAnyClientCert {
    pub(super) algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AcceptAnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // An empty list asks the client for whatever certificate it has.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Accepts any server certificate at the handshake (dialback mode accepts self-signed ones, and
/// pkix/pins are judged afterwards against the peer's domain by [`PeerCert`]). Handshake
/// signatures are still verified, so the peer must hold the certificate's key.
#[derive(Debug)]
pub(super) struct AcceptAnyServerCert {
    pub(super) algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
