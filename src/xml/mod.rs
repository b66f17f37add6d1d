//! XML layer of dialbackd: the stream header, the stanza tree, the push framer, the stream parser
//! and reader, and the stanza serialiser.
//!
//! In scope:
//! - [`Framer`]: cuts the stream header, each complete first-level element and the root end tag
//!   out of the bytes as they arrive, whatever the split, and refuses while framing what it can see
//!   on the bytes (comments, DOCTYPE, processing instructions; the per-element byte budget, depth,
//!   name length, attributes and namespace declarations), before an element is buffered whole.
//! - [`StreamParser`] (push: feed bytes, take events; no I/O) and [`StreamReader`] (the same over a
//!   blocking `Read`): turn the bytes of one XML stream (RFC 6120 §4) into [`StreamEvent`]s: the
//!   root start tag, one complete [`Element`] per first-level child (stanzas, `db:result`,
//!   `stream:features`, `stream:error`…), and the root end tag. Each complete frame is parsed from
//!   memory by the `xml` crate, which therefore never sees the end of its input or a WouldBlock
//!   inside an element. They enforce the restrictions of RFC 6120 §11 (no DTD, no comments, no
//!   processing instructions, UTF-8 only) and size/depth limits, and map every failure to the
//!   stream error condition of RFC 6120 §4.9.3. The memory of each element they build is bounded
//!   by its size whatever its shape (8× its bytes plus 16 KiB; see the reader's "Memory" section),
//!   and its byte budget can be lowered until the peer is authenticated ([`StanzaBudget`]).
//! - [`write_element`] / [`Element::to_bytes`]: serialise an element as a first-level child of our own
//!   stream (RFC 6120 §4.8 namespace handling) so that it parses back to the same tree on any of our
//!   streams (see the writer's "Fidelity" section), and [`StreamHeader::to_bytes`] for our stream
//!   headers (RFC 6120 §4.7).
//!
//! Out of scope: validating the header (name, namespace, version, addresses — the stream layer does
//! that), stream negotiation, stanza semantics, TLS, and anything about sockets except that
//! [`StreamReader::into_inner`] and [`StreamParser::unparsed`] hand back unparsed bytes for the
//! STARTTLS restart (RFC 6120 §5.3.3).

pub mod element;
pub mod framer;
pub mod reader;
pub mod writer;

pub use element::{Element, Node, Ns};
pub use framer::{Frame, FrameKind, Framer};
pub use reader::{
    tree_bytes, Limits, StanzaBudget, StreamEvent, StreamParser, StreamReader, XmlError,
};
pub use writer::{escape_attr, escape_text, write_element};

/// Namespace of the stream root and of `stream:features` / `stream:error` (RFC 6120 §4.8.1).
pub const STREAM_NS: &str = "http://etherx.jabber.org/streams";
/// Content namespace of server-to-server streams (RFC 6120 §4.8.3).
pub const SERVER_NS: &str = "jabber:server";
/// Content namespace of client-to-server streams (RFC 6120 §4.8.3).
pub const CLIENT_NS: &str = "jabber:client";
/// Content namespace of external component streams (XEP-0114).
pub const COMPONENT_NS: &str = "jabber:component:accept";
/// Namespace of the Server Dialback elements `db:result` / `db:verify` (XEP-0220).
pub const DIALBACK_NS: &str = "jabber:server:dialback";
/// Namespace of stream error conditions (RFC 6120 §4.9.3).
pub const STREAMS_ERR_NS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// Namespace of stanza error conditions (RFC 6120 §8.3.3).
pub const STANZAS_NS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// Namespace of STARTTLS negotiation (RFC 6120 §5).
pub const TLS_NS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// Namespace of the dialback stream feature (XEP-0220 §2.4).
pub const DIALBACK_FEATURE_NS: &str = "urn:xmpp:features:dialback";
/// Namespace of the stream limits feature (XEP-0478 §3).
pub const STREAM_LIMITS_NS: &str = "urn:xmpp:stream-limits:0";

/// The end tag of our stream root.
pub const STREAM_CLOSE: &[u8] = b"</stream:stream>";

/// The stream content namespaces: a stanza in any of them is "a stanza" and serialises without an xmlns
/// under a stream whose default namespace is any of them (so a stanza parsed from a component stream can be
/// written onto a jabber:server stream unchanged).
pub fn is_content_ns(ns: &str) -> bool {
    ns == SERVER_NS || ns == CLIENT_NS || ns == COMPONENT_NS
}

/// The attributes and namespace declarations of a stream root start tag (RFC 6120 §4.7).
///
/// The reader fills this in from whatever root element the peer sent; checking that `name` is
/// `"stream"` and `ns` is [`STREAM_NS`] is the caller's job.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StreamHeader {
    /// Local name of the root element (should be "stream").
    pub name: String,
    /// Namespace of the root element (should be [`STREAM_NS`]).
    pub ns: String,
    /// Default namespace declared on the root (jabber:server, jabber:component:accept…).
    pub default_ns: Option<String>,
    /// Some prefix (any prefix, usually `db`) is bound to [`DIALBACK_NS`] on the root.
    pub db_ns: bool,
    /// The `from` attribute.
    pub from: Option<String>,
    /// The `to` attribute.
    pub to: Option<String>,
    /// The `id` attribute.
    pub id: Option<String>,
    /// The `version` attribute.
    pub version: Option<String>,
    /// The `xml:lang` attribute.
    pub lang: Option<String>,
}

impl StreamHeader {
    /// `<?xml version='1.0'?><stream:stream xmlns='{default_ns or jabber:server}' xmlns:stream='…' [xmlns:db='jabber:server:dialback' if db_ns] [from] [to] [id] [version] [xml:lang]>` — attribute values escaped; never self-closed.
    ///
    /// `name` and `ns` are ignored: we always write `stream:stream` in [`STREAM_NS`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='");
        escape_attr(self.default_ns.as_deref().unwrap_or(SERVER_NS), &mut out);
        out.extend_from_slice(b"' xmlns:stream='");
        out.extend_from_slice(STREAM_NS.as_bytes());
        out.push(b'\'');
        if self.db_ns {
            out.extend_from_slice(b" xmlns:db='");
            out.extend_from_slice(DIALBACK_NS.as_bytes());
            out.push(b'\'');
        }
        let attrs = [
            ("from", &self.from),
            ("to", &self.to),
            ("id", &self.id),
            ("version", &self.version),
            ("xml:lang", &self.lang),
        ];
        for (key, value) in attrs {
            if let Some(value) = value {
                out.push(b' ');
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(b"='");
                escape_attr(value, &mut out);
                out.push(b'\'');
            }
        }
        out.push(b'>');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_namespaces() {
        assert!(is_content_ns(SERVER_NS));
        assert!(is_content_ns(CLIENT_NS));
        assert!(is_content_ns(COMPONENT_NS));
        assert!(!is_content_ns(DIALBACK_NS));
        assert!(!is_content_ns(STREAM_NS));
        assert!(!is_content_ns(""));
    }

    #[test]
    fn header_bytes_exact() {
        let h = StreamHeader {
            db_ns: true,
            from: Some("a.example".into()),
            to: Some("b'<&\"".into()),
            version: Some("1.0".into()),
            ..Default::default()
        };
        assert_eq!(
            String::from_utf8(h.to_bytes()).unwrap(),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
             xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
             from='a.example' to='b&apos;&lt;&amp;&quot;' version='1.0'>"
        );
        let minimal = StreamHeader::default().to_bytes();
        assert!(minimal.ends_with(b"xmlns:stream='http://etherx.jabber.org/streams'>"));
        assert!(!minimal.windows(8).any(|w| w == b"xmlns:db"));
    }
}
