//! SASL EXTERNAL between servers (RFC 6120 §6, XEP-0178; standards.md SASL-01): the wire
//! elements, the initial response, and how a core learns whether the peer's TLS certificate
//! proves a domain.
//!
//! In scope: building `<mechanisms/>`, `<auth/>`, `<success/>`, `<failure/>`; decoding the
//! initial response (RFC 6120 §6.4.2: base64, `=` for an empty one) into an authorization
//! identity; [`CertCheck`], the verdict function the connection layer hands an inbound core once
//! the TLS handshake is done. Out of scope: the certificate policy itself (pkix, pins: `tls`),
//! and the stream states (`incoming`, `outgoing`).

use crate::domain::Domain;
use crate::xml::Element;
use std::fmt;

/// The SASL namespace (RFC 6120 §6.4).
pub const SASL_NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

/// The one mechanism we offer and use.
pub const EXTERNAL: &str = "EXTERNAL";

/// A SASL failure condition (RFC 6120 §6.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslCondition {
    /// The initiating entity aborted (`<abort/>`).
    Aborted,
    /// TLS is needed before this mechanism.
    EncryptionRequired,
    /// The data is not valid base64 (RFC 4648 §4).
    IncorrectEncoding,
    /// The authorization identity is malformed, or not one the certificate may act as.
    InvalidAuthzid,
    /// The mechanism is not offered on this stream.
    InvalidMechanism,
    /// The request is malformed.
    MalformedRequest,
    /// The credentials (here: the certificate) do not prove the identity.
    NotAuthorized,
}

impl SaslCondition {
    /// The element name of the condition.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslCondition::Aborted => "aborted",
            SaslCondition::EncryptionRequired => "encryption-required",
            SaslCondition::IncorrectEncoding => "incorrect-encoding",
            SaslCondition::InvalidAuthzid => "invalid-authzid",
            SaslCondition::InvalidMechanism => "invalid-mechanism",
            SaslCondition::MalformedRequest => "malformed-request",
            SaslCondition::NotAuthorized => "not-authorized",
        }
    }
}

impl fmt::Display for SaslCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Says whether the peer's TLS certificate proves a domain under that domain's certificate
/// policy (`Ok`), or why not (`Err`, a short reason for the log and the `<failure/>` text).
/// Made by the connection layer from the TLS session after the handshake; the core only sees
/// the verdict.
pub struct CertCheck(Box<Judge>);

/// The function inside a [`CertCheck`].
type Judge = dyn Fn(&Domain) -> Result<(), String> + Send;

impl CertCheck {
    /// A check that asks `f`.
    pub fn new(f: impl Fn(&Domain) -> Result<(), String> + Send + 'static) -> CertCheck {
        CertCheck(Box::new(f))
    }

    /// Does the certificate prove `domain`?
    ///
    /// # Errors
    /// Why it does not.
    pub fn check(&self, domain: &Domain) -> Result<(), String> {
        (self.0)(domain)
    }
}

impl fmt::Debug for CertCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertCheck")
    }
}

/// `<mechanisms><mechanism>EXTERNAL</mechanism></mechanisms>` for the stream features.
pub fn mechanisms() -> Element {
    Element::new("mechanisms", SASL_NS)
        .with_child(Element::new("mechanism", SASL_NS).with_text(EXTERNAL))
}

/// Whether stream features offer EXTERNAL.
pub fn offers_external(features: &Element) -> bool {
    features.child("mechanisms", SASL_NS).is_some_and(|m| {
        m.elements()
            .any(|c| c.is("mechanism", SASL_NS) && c.text().trim() == EXTERNAL)
    })
}

/// `<auth mechanism='EXTERNAL'>=</auth>`: XEP-0178 §3 and RFC 6120 §6.3.8: no authorization
/// identity (a zero-length initial response, `=`): the receiving server takes the `from` of our
/// stream header, whose name our certificate carries.
pub fn auth_external() -> Element {
    Element::new("auth", SASL_NS)
        .with_attr("mechanism", EXTERNAL)
        .with_text("=")
}

/// `<success/>`.
pub fn success() -> Element {
    Element::new("success", SASL_NS)
}

/// An empty `<challenge/>`: asks for the initial response the peer left out (RFC 6120 §6.4.2).
pub fn challenge() -> Element {
    Element::new("challenge", SASL_NS)
}

/// `<abort/>`.
pub fn abort() -> Element {
    Element::new("abort", SASL_NS)
}

/// `<failure><condition/><text>…</text></failure>`; the text is bounded like stream error
/// texts.
pub fn failure(condition: SaslCondition, text: Option<&str>) -> Element {
    let mut e =
        Element::new("failure", SASL_NS).with_child(Element::new(condition.as_str(), SASL_NS));
    if let Some(t) = text {
        e.push_child(
            Element::new("text", SASL_NS)
                .with_attr("xml:lang", "en")
                .with_text(crate::stanza::bounded(t, crate::stanza::TEXT_MAX)),
        );
    }
    e
}

/// The condition (and text) of a received `<failure/>`, for logs; `undefined` when none.
pub fn describe_failure(e: &Element) -> String {
    let cond = e
        .elements()
        .find(|c| c.name != "text")
        .map_or_else(|| "undefined".to_string(), |c| c.name.clone());
    let cond = crate::logsafe::peer(&cond).to_string();
    match e.elements().find(|c| c.name == "text") {
        Some(t) => format!("{cond} ({})", crate::logsafe::peer(&t.text())),
        None => cond,
    }
}

/// Decode a SASL response (RFC 6120 §6.4.2): `=` is an empty response, anything else base64
/// (RFC 4648 §4, padded, no whitespace inside) of UTF-8 text: the authorization identity, empty
/// when there is none.
///
/// # Errors
/// [`SaslCondition::IncorrectEncoding`] for bad base64, [`SaslCondition::InvalidAuthzid`] for
/// bytes that are not UTF-8.
pub fn decode_response(text: &str) -> Result<String, SaslCondition> {
    let text = text.trim();
    if text == "=" {
        return Ok(String::new());
    }
    let bytes = base64_decode(text).ok_or(SaslCondition::IncorrectEncoding)?;
    String::from_utf8(bytes).map_err(|_| SaslCondition::InvalidAuthzid)
}

/// Strict base64 (RFC 4648 §4): a multiple of four characters from the standard alphabet,
/// `=` padding only at the end. `None` otherwise.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if b.is_empty() || b.len() % 4 != 0 {
        return None;
    }
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for (i, chunk) in b.chunks(4).enumerate() {
        let last = i == b.len() / 4 - 1;
        let mut n = 0u32;
        let mut pads = 0;
        for &c in chunk {
            let v = if c == b'=' && last {
                pads += 1;
                0
            } else if pads > 0 {
                return None;
            } else {
                value(c)?
            };
            n = n << 6 | v;
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pads]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_strict() {
        assert_eq!(decode_response("=").unwrap(), "");
        assert_eq!(decode_response("Yi50ZXN0").unwrap(), "b.test");
        assert_eq!(decode_response("YS50ZXN0").unwrap(), "a.test");
        assert_eq!(decode_response("YQ==").unwrap(), "a");
        assert_eq!(decode_response("YWI=").unwrap(), "ab");
        for bad in [
            "",
            "Y",
            "YQ=",
            "Y===",
            "YQ=a",
            "Y Q==",
            "Yi50ZXN0=",
            "!!!!",
            "YQ==YQ==",
        ] {
            assert_eq!(
                decode_response(bad),
                Err(SaslCondition::IncorrectEncoding),
                "{bad:?}"
            );
        }
        // /w== is the single byte 0xff: base64, but not UTF-8.
        assert_eq!(decode_response("/w=="), Err(SaslCondition::InvalidAuthzid));
    }

    #[test]
    fn offers_external_reads_the_mechanisms() {
        let f = Element::new("features", crate::xml::STREAM_NS).with_child(mechanisms());
        assert!(offers_external(&f));
        let plain = Element::new("features", crate::xml::STREAM_NS).with_child(
            Element::new("mechanisms", SASL_NS)
                .with_child(Element::new("mechanism", SASL_NS).with_text("PLAIN")),
        );
        assert!(!offers_external(&plain));
        assert!(!offers_external(&Element::new(
            "features",
            crate::xml::STREAM_NS
        )));
    }
}
