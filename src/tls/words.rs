//! TLS failures and certificate verdicts in words, for log lines and dialback error texts.
//!
//! rustls's `Display` falls back to Rust `Debug` output for many errors
//! (`Other(OtherError(CaUsedAsEndEntity))`, `received fatal alert: BadCertificate`); an
//! operator should read "a CA certificate used as the end-entity certificate" and "the peer
//! sent the alert 'bad certificate'" instead.

use rustls::{CertificateError, Error};

/// A rustls error in words.
pub fn error(e: &Error) -> String {
    match e {
        Error::InvalidCertificate(c) => format!("invalid peer certificate: {}", certificate(c)),
        Error::AlertReceived(a) => {
            format!(
                "the peer sent the alert '{}'",
                debug_words(&format!("{a:?}"))
            )
        }
        Error::PeerIncompatible(why) => {
            format!("peer is incompatible: {}", debug_words(&format!("{why:?}")))
        }
        Error::PeerMisbehaved(why) => {
            format!("peer misbehaved: {}", debug_words(&format!("{why:?}")))
        }
        Error::InvalidMessage(why) => {
            format!("corrupt message: {}", debug_words(&format!("{why:?}")))
        }
        Error::InappropriateMessage { .. } | Error::InappropriateHandshakeMessage { .. } => {
            "unexpected message in the TLS handshake".to_owned()
        }
        Error::InvalidCertRevocationList(_) => "invalid certificate revocation list".to_owned(),
        Error::Other(o) => debug_words(&o.to_string()),
        other => other.to_string(),
    }
}

/// A certificate verification failure in words.
pub fn certificate(c: &CertificateError) -> String {
    use CertificateError as C;
    let text = match c {
        C::Expired | C::ExpiredContext { .. } => "expired",
        C::NotValidYet | C::NotValidYetContext { .. } => "not yet valid",
        C::UnknownIssuer => "unknown issuer",
        C::NotValidForName | C::NotValidForNameContext { .. } => "not valid for the name asked",
        C::BadEncoding => "malformed certificate",
        C::BadSignature => "bad signature",
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            "not valid for TLS servers (extended key usage)"
        }
        C::Revoked => "revoked",
        C::UnhandledCriticalExtension => "unsupported critical extension",
        C::UnknownRevocationStatus => "unknown revocation status",
        C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => {
            "expired revocation list"
        }
        #[allow(deprecated)]
        C::UnsupportedSignatureAlgorithm => "unsupported signature algorithm",
        C::UnsupportedSignatureAlgorithmContext { .. }
        | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "unsupported signature algorithm"
        }
        C::InvalidOcspResponse => "invalid OCSP response",
        C::ApplicationVerificationFailure => "rejected by the verifier",
        C::Other(o) => return debug_words(&o.to_string()),
        other => return debug_words(&format!("{other:?}")),
    };
    text.to_owned()
}

/// The words of the innermost identifier of a `Debug` rendering:
/// `Other(OtherError(CaUsedAsEndEntity))` → "CA used as end entity";
/// `BadCertificate` → "bad certificate". Anything that is not a plain identifier is kept as
/// it is, less the wrapping.
pub fn debug_words(debug: &str) -> String {
    let inner = debug
        .rsplit(['(', '{', ' '])
        .map(|s| s.trim_end_matches([')', '}', ',', ' ']))
        .find(|s| !s.is_empty())
        .unwrap_or(debug);
    if !inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return inner.to_owned();
    }
    let mut words: Vec<String> = Vec::new();
    let mut current = String::new();
    for c in inner.chars() {
        if c == '_' {
            words.push(std::mem::take(&mut current));
            continue;
        }
        if c.is_ascii_uppercase() && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    words.push(current);
    let words: Vec<String> = words
        .into_iter()
        .filter(|w| !w.is_empty())
        .map(|w| match w.as_str() {
            "Ca" => "CA".to_owned(),
            "Crl" => "CRL".to_owned(),
            "Ocsp" => "OCSP".to_owned(),
            "Tls" => "TLS".to_owned(),
            "Sni" => "SNI".to_owned(),
            _ => w.to_ascii_lowercase(),
        })
        .collect();
    let mut text = words.join(" ");
    if text.is_empty() {
        text = debug.to_owned();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription, OtherError};
    use std::sync::Arc;

    #[derive(Debug)]
    struct Webpki(&'static str);
    impl std::fmt::Display for Webpki {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Webpki {}

    #[test]
    fn debug_identifiers_become_words() {
        assert_eq!(
            debug_words("Other(OtherError(CaUsedAsEndEntity))"),
            "CA used as end entity"
        );
        assert_eq!(debug_words("BadCertificate"), "bad certificate");
        assert_eq!(debug_words("Unknown(77)"), "77");
    }

    #[test]
    fn the_verdict_reported_as_debug_reads_as_words() {
        let e = Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Webpki(
            "CaUsedAsEndEntity",
        )))));
        assert_eq!(error(&e), "invalid peer certificate: CA used as end entity");
        let alert = Error::AlertReceived(AlertDescription::BadCertificate);
        assert_eq!(error(&alert), "the peer sent the alert 'bad certificate'");
        assert_eq!(
            certificate(&CertificateError::UnknownIssuer),
            "unknown issuer"
        );
        for e in [alert, e, Error::DecryptError] {
            let words = error(&e);
            assert!(!words.contains('('), "{words}");
        }
    }
}
