//! XEP-0288 bidirectional server-to-server streams: the wire elements and the address rule the
//! two stream cores share.
//!
//! A receiving server advertises `<bidi xmlns='urn:xmpp:features:bidi'/>` in its stream
//! features (BIDI-01); the connecting server asks for bidi with `<bidi xmlns='urn:xmpp:bidi'/>`
//! before dialback (BIDI-02). The two namespaces differ; a request in the feature namespace
//! (ejabberd before its fix for issue #4300 sent one) is not a request, and enables nothing.
//! Once a pair is verified on such a stream, stanzas of the inverse pair may travel on it in
//! the other direction, and only those (BIDI-03). Keys are never verified on the stream they
//! came in on: dialbackd asks the Authoritative Server on a connection of its own (DB-11).

use super::StreamCondition;
use super::StreamError;
use crate::domain::Domain;
use crate::stanza::{self, echo};
use crate::xml::Element;

/// The namespace of the stream feature (BIDI-01).
pub const BIDI_FEATURE_NS: &str = "urn:xmpp:features:bidi";
/// The namespace of the request the connecting server sends (BIDI-02).
pub const BIDI_NS: &str = "urn:xmpp:bidi";

/// `<bidi xmlns='urn:xmpp:features:bidi'/>`, for stream features.
pub fn feature() -> Element {
    Element::new("bidi", BIDI_FEATURE_NS)
}

/// `<bidi xmlns='urn:xmpp:bidi'/>`, the request.
pub fn request() -> Element {
    Element::new("bidi", BIDI_NS)
}

/// True when `features` offer bidi.
pub fn offered(features: &Element) -> bool {
    features.child("bidi", BIDI_FEATURE_NS).is_some()
}

/// What a top-level `<bidi/>` from the peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// `<bidi xmlns='urn:xmpp:bidi'/>`: a request (BIDI-02).
    Valid,
    /// `<bidi xmlns='urn:xmpp:features:bidi'/>`: the feature's namespace, not a request.
    FeatureNamespace,
}

impl Request {
    /// Classify a top-level element; `None` when it is no `<bidi/>` of either namespace.
    pub fn of(e: &Element) -> Option<Request> {
        match (e.name.as_str(), e.ns.as_str()) {
            ("bidi", BIDI_NS) => Some(Request::Valid),
            ("bidi", BIDI_FEATURE_NS) => Some(Request::FeatureNamespace),
            _ => None,
        }
    }
}

/// BIDI-03: a stanza the peer sends back on a bidi stream must be of a pair verified in the
/// other direction: from `remote`, to `local`. The stream error otherwise (the same as for an
/// inbound stream: bad addresses, a sender not verified, a recipient we do not serve there).
///
/// # Errors
/// The stream error to close the stream with.
pub fn check_inverse(el: &Element, local: &Domain, remote: &Domain) -> Result<(), StreamError> {
    let addrs = stanza::addresses(el)
        .map_err(|e| StreamError::text(StreamCondition::ImproperAddressing, e.to_string()))?;
    if addrs.from.domain != *remote {
        return Err(StreamError::text(
            StreamCondition::InvalidFrom,
            format!(
                "{} is not verified on this stream",
                echo(addrs.from.domain.as_str())
            ),
        ));
    }
    if addrs.to.domain != *local {
        return Err(StreamError::text(
            StreamCondition::HostUnknown,
            format!(
                "{} is not verified for {remote} on this stream",
                echo(addrs.to.domain.as_str())
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "bidi_tests.rs"]
mod tests;
