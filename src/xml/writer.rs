//! Serialiser for [`Element`] trees as first-level children of our own XML streams.
//!
//! In scope: namespace-correct output for elements routed between streams (RFC 6120 §4.8: the
//! `stream:` and `db:` prefixes bound on our stream header, content namespaces left implicit), and
//! escaping that survives a round trip through a conforming parser (attribute-value and end-of-line
//! normalisation, XML 1.0 §2.11 and §3.3.3).
//!
//! Out of scope: the stream header (see [`super::StreamHeader::to_bytes`]), pretty printing, and
//! writing to sockets (callers serialise once to a `Vec<u8>` and `write_all` it).
//!
//! # Fidelity: what comes out is what went in
//! Written as a first-level child of one of our streams — a server-to-server stream (default
//! namespace `jabber:server`, `stream` and `db` prefixes bound) or a component stream (default
//! namespace `jabber:component:accept`, only `stream` bound) — any tree the reader produced parses
//! back, on the peer's side, to the **same tree up to content-namespace translation**:
//! - names, attributes (in order, namespaces included), text and the namespace of every element are
//!   the same, except that
//! - if the first-level element is in a content namespace N (`jabber:server`, `jabber:client`,
//!   `jabber:component:accept`), it and every descendant reached from it through elements all in N
//!   (its `body`, `error`, `subject`… children, their children in N, and so on) come out in the
//!   content namespace C of the stream written to. This is how a stanza moves between a component
//!   stream and a server-to-server stream (RFC 6120 §4.8.3, XEP-0114). An element in N below an
//!   element in another namespace, or an element in a content namespace other than its parent's
//!   (e.g. a `jabber:client` message forwarded inside a `jabber:server` one, XEP-0297) keeps its
//!   namespace exactly.
//!
//! How: only first-level elements use prefixes (`stream:` for the stream namespace, `db:` for
//! dialback; the latter only occurs on server-to-server streams, whose headers always bind it: the
//! router hands components stanzas only). Nested elements never use a prefix: an element gets an
//! `xmlns` declaration whenever its namespace differs from the default namespace in scope, which for
//! the children of a first-level element in a content namespace means "differs from that element's
//! namespace", for the children of a `stream:`/`db:` element means always (the stream's default is
//! not theirs), and below that the parent's namespace. Attributes in a namespace get a generated
//! prefix (`ns0`, `ns1`…) declared on their element.
//!
//! Robustness rules beyond the API contract: characters that XML 1.0 cannot carry at all (C0 controls
//! other than tab/newline/CR, U+FFFE, U+FFFF) are dropped, and attributes whose key is not a usable
//! name (empty, containing markup characters, an `xmlns` declaration, an unknown prefix, a malformed
//! `{ns}local`, or one in the `xmlns` namespace) are skipped with a warning, so that our output stays
//! well-formed whatever the tree holds. Element names are written as given: they come from the reader
//! (always valid) or from constants.

use super::element::{Element, Node, Ns};
use super::{is_content_ns, DIALBACK_NS, STREAM_NS};

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";

/// Serialise `el` as it would appear as a child of the stream root (top level), appending to `out`.
/// See the module documentation for the namespace rules and what a round trip preserves.
/// Empty elements are self-closed. Escaping: text: & < > and \r as &#xD;  attributes
/// (single-quoted): & < > ' " and \t \n \r as &#x9; &#xA; &#xD;.
pub fn write_element(el: &Element, out: &mut Vec<u8>) {
    let (prefix, scope): (&[u8], Scope<'_>) = if el.ns == STREAM_NS {
        (b"stream:", Scope::StreamDefault(None))
    } else if el.ns == DIALBACK_NS {
        (b"db:", Scope::StreamDefault(None))
    } else if is_content_ns(&el.ns) {
        (b"", Scope::StreamDefault(Some(el.ns.as_str())))
    } else {
        (b"", Scope::Declared(el.ns.as_str()))
    };
    let declare = prefix.is_empty() && !is_content_ns(&el.ns);
    write_one(el, prefix, declare, scope, out);
}

/// The tree a peer reads back when `el` is written (by [`write_element`]) on a stream whose content
/// namespace is `content_ns`: `el` itself if it is not in a content namespace; otherwise `el` with
/// its namespace N replaced by `content_ns` on itself and on every descendant reached through
/// elements all in N (see the module documentation). For tests and fuzzing of the round trip.
pub fn as_read_back(el: &Element, content_ns: &str) -> Element {
    fn walk(el: &Element, from: &str, to: &Ns) -> Element {
        if el.ns != from {
            return el.clone();
        }
        Element {
            name: el.name.clone(),
            ns: to.clone(),
            attrs: el.attrs.clone(),
            children: el
                .children
                .iter()
                .map(|c| match c {
                    Node::Element(e) => Node::Element(walk(e, from, to)),
                    Node::Text(t) => Node::Text(t.clone()),
                })
                .collect(),
        }
    }
    if is_content_ns(&el.ns) {
        walk(el, &el.ns, &Ns::new(content_ns))
    } else {
        el.clone()
    }
}

/// The default namespace in scope for the children of an element, as the peer will resolve it.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// The stream's own default namespace (its content namespace), standing for the given content
    /// namespace of the tree (None below a `stream:`/`db:` element: no namespace of the tree is
    /// implied there).
    StreamDefault(Option<&'a str>),
    /// A namespace we declared with `xmlns`.
    Declared(&'a str),
}

fn write_nested(el: &Element, scope: Scope<'_>, out: &mut Vec<u8>) {
    let inherited = match scope {
        Scope::StreamDefault(Some(ns)) | Scope::Declared(ns) => el.ns == ns,
        Scope::StreamDefault(None) => false,
    };
    if inherited {
        write_one(el, b"", false, scope, out);
    } else {
        write_one(el, b"", true, Scope::Declared(el.ns.as_str()), out);
    }
}

/// Write `el` with `prefix` on its name, an `xmlns` declaration if `declare`, and its children
/// under `child_scope`.
fn write_one(
    el: &Element,
    prefix: &[u8],
    declare: bool,
    child_scope: Scope<'_>,
    out: &mut Vec<u8>,
) {
    out.push(b'<');
    out.extend_from_slice(prefix);
    out.extend_from_slice(el.name.as_bytes());
    if declare {
        out.extend_from_slice(b" xmlns='");
        escape_attr(&el.ns, out);
        out.push(b'\'');
    }
    write_attrs(el, out);
    if el.children.is_empty() {
        out.extend_from_slice(b"/>");
        return;
    }
    out.push(b'>');
    for child in &el.children {
        match child {
            Node::Element(e) => write_nested(e, child_scope, out),
            Node::Text(t) => escape_text(t, out),
        }
    }
    out.extend_from_slice(b"</");
    out.extend_from_slice(prefix);
    out.extend_from_slice(el.name.as_bytes());
    out.push(b'>');
}

/// How one attribute key is written.
enum AttrName<'a> {
    /// Written as is (no namespace, or `xml:local`).
    Plain(&'a str),
    /// `{xml-namespace}local`, written as `xml:local`.
    Xml(&'a str),
    /// In namespace `.0` with local name `.1`: needs a generated prefix.
    Namespaced(&'a str, &'a str),
}

fn is_simple_name(s: &str) -> bool {
    !s.is_empty()
        && !s.contains(|c: char| {
            c.is_whitespace()
                || matches!(
                    c,
                    '<' | '>' | '&' | '\'' | '"' | '=' | '/' | '{' | '}' | ':' | '?' | '!'
                )
                || c.is_control()
        })
        && !s.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
}

fn classify_attr(key: &str) -> Option<AttrName<'_>> {
    if let Some(rest) = key.strip_prefix('{') {
        // A namespace URI may contain '}', a local name (an NCName) cannot: split at the last.
        let (ns, local) = rest.rsplit_once('}')?;
        if !is_simple_name(local) || ns.is_empty() || ns == XMLNS_NS {
            return None;
        }
        if ns == XML_NS {
            // Only reachable via a hand-built key; the reader produces "xml:local".
            return Some(AttrName::Xml(local));
        }
        return Some(AttrName::Namespaced(ns, local));
    }
    if let Some(local) = key.strip_prefix("xml:") {
        return is_simple_name(local).then_some(AttrName::Plain(key));
    }
    if key == "xmlns" || key.starts_with("xmlns:") {
        // "xmlns" and "xmlns:*" are namespace declarations, which the writer generates itself
        // (other names that merely start with "xmlns", like "xmlnsto", are plain attributes).
        return None;
    }
    is_simple_name(key).then_some(AttrName::Plain(key))
}

fn write_attrs(el: &Element, out: &mut Vec<u8>) {
    // Namespaces that got a generated prefix on this element; the prefix is `ns{index}`.
    let mut declared: Vec<&str> = Vec::new();
    for (key, value) in &el.attrs {
        let Some(name) = classify_attr(key) else {
            log::warn!(
                "xml writer: skipping attribute with unusable name {:?} on <{}>",
                crate::logsafe::peer(key),
                crate::logsafe::peer(&el.name)
            );
            continue;
        };
        out.push(b' ');
        match name {
            AttrName::Xml(local) => {
                out.extend_from_slice(b"xml:");
                out.extend_from_slice(local.as_bytes());
            }
            AttrName::Plain(k) => out.extend_from_slice(k.as_bytes()),
            AttrName::Namespaced(ns, local) => {
                let idx = match declared.iter().position(|d| *d == ns) {
                    Some(i) => i,
                    None => {
                        declared.push(ns);
                        let i = declared.len() - 1;
                        out.extend_from_slice(format!("xmlns:ns{i}='").as_bytes());
                        escape_attr(ns, out);
                        out.extend_from_slice(b"' ");
                        i
                    }
                };
                out.extend_from_slice(format!("ns{idx}:").as_bytes());
                out.extend_from_slice(local.as_bytes());
            }
        }
        out.extend_from_slice(b"='");
        escape_attr(value, out);
        out.push(b'\'');
    }
}

/// Characters XML 1.0 cannot represent at all, not even as character references.
fn is_forbidden_char(c: char) -> bool {
    (c < '\u{20}' && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{FFFE}' || c == '\u{FFFF}'
}

/// Copy `s` to `out`, replacing characters for which `subst` returns a replacement and dropping
/// characters XML cannot carry.
fn escape_with(s: &str, out: &mut Vec<u8>, subst: impl Fn(char) -> Option<&'static [u8]>) {
    out.reserve(s.len());
    // `start` and `i` are always char boundaries of `s` with `start <= i`, so the slices below are in
    // bounds and never split a character.
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let replacement: Option<&[u8]> = if is_forbidden_char(c) {
            Some(b"")
        } else {
            subst(c)
        };
        if let Some(r) = replacement {
            out.extend_from_slice(&s.as_bytes()[start..i]);
            out.extend_from_slice(r);
            start = i + c.len_utf8();
        }
    }
    out.extend_from_slice(&s.as_bytes()[start..]);
}

/// Escape character data: `&` `<` `>` as entities and `\r` as `&#xD;` (so that end-of-line
/// normalisation in the peer's parser does not turn it into `\n`). Appends to `out`.
pub fn escape_text(s: &str, out: &mut Vec<u8>) {
    escape_with(s, out, |c| match c {
        '&' => Some(b"&amp;"),
        '<' => Some(b"&lt;"),
        '>' => Some(b"&gt;"),
        '\r' => Some(b"&#xD;"),
        _ => None,
    });
}

/// Escape an attribute value for a single- or double-quoted attribute: `&` `<` `>` `'` `"` as entities
/// and `\t` `\n` `\r` as character references (so attribute-value normalisation keeps them). Appends to
/// `out`.
pub fn escape_attr(s: &str, out: &mut Vec<u8>) {
    escape_with(s, out, |c| match c {
        '&' => Some(b"&amp;"),
        '<' => Some(b"&lt;"),
        '>' => Some(b"&gt;"),
        '\'' => Some(b"&apos;"),
        '"' => Some(b"&quot;"),
        '\t' => Some(b"&#x9;"),
        '\n' => Some(b"&#xA;"),
        '\r' => Some(b"&#xD;"),
        _ => None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::reader::{Limits, StreamEvent, StreamReader};
    use crate::xml::{
        StreamHeader, COMPONENT_NS, DIALBACK_FEATURE_NS, SERVER_NS, STANZAS_NS, STREAMS_ERR_NS,
        TLS_NS,
    };

    fn s(el: &Element) -> String {
        String::from_utf8(el.to_bytes()).unwrap()
    }

    /// Parse `body` as the content of a stream with default namespace `default_ns` (and the
    /// `db` prefix bound when `db_ns`): our header, then elements until the stream closes.
    fn parse_stream(default_ns: &str, db_ns: bool, body: &[u8]) -> Result<Vec<Element>, String> {
        let h = StreamHeader {
            default_ns: Some(default_ns.to_owned()),
            db_ns,
            ..Default::default()
        };
        let mut input = h.to_bytes();
        input.extend_from_slice(body);
        input.extend_from_slice(crate::xml::STREAM_CLOSE);
        let mut r = StreamReader::new(&input[..], Limits::default());
        let mut out = Vec::new();
        match r.next_event().map_err(|e| e.to_string())? {
            StreamEvent::Header(_) => {}
            other => return Err(format!("expected the header, got {other:?}")),
        }
        loop {
            match r.next_event().map_err(|e| e.to_string())? {
                StreamEvent::Element(e) => out.push(e),
                StreamEvent::Close => return Ok(out),
                other => return Err(format!("expected an element, got {other:?}")),
            }
        }
    }

    /// Parse `body` as the content of a stream with the given default namespace (`db` bound).
    fn parse_under(default_ns: &str, body: &[u8]) -> Vec<Element> {
        parse_stream(default_ns, true, body).unwrap()
    }

    fn round_trip(el: &Element) {
        let bytes = el.to_bytes();
        let parsed = parse_under(SERVER_NS, &bytes);
        assert_eq!(
            parsed,
            vec![el.clone()],
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }

    #[test]
    fn attributes_named_like_xmlns_are_kept() {
        // Found by the serializer_roundtrip fuzz target: `xmlnsto` was dropped as if it were a
        // namespace declaration.
        let el = parse_under(SERVER_NS, b"<presence xmlnsto='v@a.test' xmlns1='x'/>").remove(0);
        assert_eq!(el.attr("xmlnsto"), Some("v@a.test"));
        assert_eq!(s(&el), "<presence xmlnsto='v@a.test' xmlns1='x'/>");
        round_trip(&el);
        // Real declarations are still never copied from the tree.
        let decl = Element::new("x", "urn:x")
            .with_attr("xmlns", "urn:evil")
            .with_attr("xmlns:db", "urn:evil");
        assert_eq!(s(&decl), "<x xmlns='urn:x'/>");
    }

    #[test]
    fn attribute_namespace_with_closing_brace() {
        // Found by the serializer_roundtrip fuzz target: the key `{ur}n:p}x` was split at the
        // first '}' and the attribute dropped.
        let el = parse_under(SERVER_NS, b"<message xmlns:p='ur}n:p' p:x='1'/>").remove(0);
        assert_eq!(el.attr("{ur}n:p}x"), Some("1"));
        assert_eq!(s(&el), "<message xmlns:ns0='ur}n:p' ns0:x='1'/>");
        round_trip(&el);
    }

    #[test]
    fn escaping() {
        let mut out = Vec::new();
        escape_text("a&b<c>d]]>e\rf\ng\t'\"", &mut out);
        assert_eq!(out, b"a&amp;b&lt;c&gt;d]]&gt;e&#xD;f\ng\t'\"");
        out.clear();
        escape_attr("a&b<c>d'e\"f\tg\nh\ri", &mut out);
        assert_eq!(out, b"a&amp;b&lt;c&gt;d&apos;e&quot;f&#x9;g&#xA;h&#xD;i");
        out.clear();
        escape_text("x\u{0}y\u{1b}z\u{FFFF}é", &mut out);
        assert_eq!(out, "xyzé".as_bytes());
    }

    #[test]
    fn prefixes_and_default_namespaces() {
        let el = Element::new("result", DIALBACK_NS)
            .with_attr("from", "a")
            .with_attr("to", "b")
            .with_text("key");
        assert_eq!(s(&el), "<db:result from='a' to='b'>key</db:result>");

        let err = Element::new("error", STREAM_NS)
            .with_child(Element::new("not-authorized", STREAMS_ERR_NS))
            .with_child(Element::new("text", STREAMS_ERR_NS).with_text("x"));
        assert_eq!(
            s(&err),
            "<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>x</text></stream:error>"
        );

        let feats = Element::new("features", STREAM_NS)
            .with_child(Element::new("starttls", TLS_NS))
            .with_child(Element::new("dialback", DIALBACK_FEATURE_NS));
        assert_eq!(
            s(&feats),
            "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
             <dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"
        );

        // Children in the parent's namespace inherit it; a child back in a content namespace
        // under a foreign default needs its xmlns again; no-namespace needs xmlns=''.
        let msg = Element::new("message", COMPONENT_NS)
            .with_child(Element::new("body", COMPONENT_NS).with_text("hi"))
            .with_child(
                Element::new("x", "urn:x")
                    .with_child(Element::new("y", "urn:x"))
                    .with_child(Element::new("body", SERVER_NS))
                    .with_child(Element::new("none", "")),
            );
        assert_eq!(
            s(&msg),
            "<message><body>hi</body><x xmlns='urn:x'><y/><body xmlns='jabber:server'/>\
             <none xmlns=''/></x></message>"
        );
    }

    #[test]
    fn namespaced_attributes() {
        let el = Element::new("iq", SERVER_NS)
            .with_attr("{urn:a}one", "1")
            .with_attr("{urn:b}two", "2")
            .with_attr("{urn:a}three", "3")
            .with_attr("xml:lang", "en")
            .with_attr("type", "get");
        assert_eq!(
            s(&el),
            "<iq xmlns:ns0='urn:a' ns0:one='1' xmlns:ns1='urn:b' ns1:two='2' ns0:three='3' \
             xml:lang='en' type='get'/>"
        );
        round_trip(&el);
    }

    #[test]
    fn unusable_attribute_names_are_skipped() {
        let el = Element::new("a", SERVER_NS)
            .with_attr("", "1")
            .with_attr("x y", "1")
            .with_attr("xmlns", "urn:evil")
            .with_attr("xmlns:db", "urn:evil")
            .with_attr("p:q", "1")
            .with_attr("{urn:x", "1")
            .with_attr("{}z", "1")
            .with_attr("{http://www.w3.org/XML/1998/namespace}space", "keep")
            .with_attr("ok", "1");
        assert_eq!(s(&el), "<a xml:space='keep' ok='1'/>");
    }

    #[test]
    fn round_trips() {
        round_trip(
            &Element::new("message", SERVER_NS)
                .with_attr("to", "a@b")
                .with_attr("id", "q'\"<>&\t\n\r end")
                .with_child(
                    Element::new("body", SERVER_NS).with_text("a < b & c > d ]]> \r\n 'x' \"y\""),
                )
                .with_child(
                    Element::new("x", "urn:x")
                        .with_child(
                            Element::new("y", "urn:y").with_child(Element::new("z", "urn:y")),
                        )
                        .with_child(Element::new("w", "urn:x").with_text("w")),
                )
                .with_child(Element::new("result", DIALBACK_NS).with_text("nested db")),
        );
        round_trip(
            &Element::new("result", DIALBACK_NS)
                .with_attr("from", "a")
                .with_attr("to", "b")
                .with_text("abc"),
        );
        round_trip(&Element::new("verify", DIALBACK_NS).with_attr("type", "valid"));
        round_trip(
            &Element::new("error", STREAM_NS)
                .with_child(Element::new("host-unknown", STREAMS_ERR_NS))
                .with_child(
                    Element::new("text", STREAMS_ERR_NS)
                        .with_attr("xml:lang", "en")
                        .with_text("no"),
                ),
        );
        round_trip(
            &Element::new("iq", SERVER_NS)
                .with_attr("type", "error")
                .with_child(
                    Element::new("error", SERVER_NS)
                        .with_attr("type", "cancel")
                        .with_child(Element::new("service-unavailable", STANZAS_NS)),
                ),
        );
        round_trip(&Element::new("starttls", TLS_NS));
        round_trip(&Element::new("nons", ""));
    }

    #[test]
    fn component_stanza_is_written_without_xmlns() {
        let parsed = parse_under(
            COMPONENT_NS,
            b"<message to='a@b' from='c.d'><body>hi</body><x xmlns='urn:x'/></message>",
        );
        assert_eq!(parsed[0].ns, COMPONENT_NS);
        assert_eq!(
            parsed[0].child("body", COMPONENT_NS).map(|b| b.text()),
            Some("hi".into())
        );
        let out = s(&parsed[0]);
        assert_eq!(
            out,
            "<message to='a@b' from='c.d'><body>hi</body><x xmlns='urn:x'/></message>"
        );
        // ... and comes out of a jabber:server stream as a jabber:server stanza.
        let again = parse_under(SERVER_NS, out.as_bytes());
        assert_eq!(again[0].ns, SERVER_NS);
        assert_eq!(
            again[0].child("x", "urn:x").map(|x| x.ns.as_str()),
            Some("urn:x")
        );
    }

    /// Parse `body` behind the header we send on a stream of kind `kind`: server-to-server
    /// (`jabber:server`, `db` bound) or component (`jabber:component:accept`, `db` not bound).
    fn parse_on(kind: Kind, body: &[u8]) -> Result<Vec<Element>, String> {
        parse_stream(kind.content_ns(), kind == Kind::S2s, body)
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Kind {
        S2s,
        Component,
    }

    impl Kind {
        fn content_ns(self) -> &'static str {
            match self {
                Kind::S2s => SERVER_NS,
                Kind::Component => COMPONENT_NS,
            }
        }
    }

    /// A small deterministic pseudo-random generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }
    }

    const NAMESPACES: &[&str] = &[
        SERVER_NS,
        COMPONENT_NS,
        crate::xml::CLIENT_NS,
        DIALBACK_NS,
        STREAM_NS,
        STREAMS_ERR_NS,
        STANZAS_NS,
        TLS_NS,
        DIALBACK_FEATURE_NS,
        "",
        "urn:x",
        "urn:y",
        "http://jabber.org/protocol/pubsub#event",
        "urn:a}b",
        "http://example.org/q?a=1&b='2'\"<x>",
        "urn:\u{e9}t\u{e9}:\u{1F600}",
    ];

    const NAMES: &[&str] = &[
        "message",
        "iq",
        "presence",
        "body",
        "error",
        "result",
        "verify",
        "features",
        "x",
        "item",
        "a",
        "b-c",
        "d.e",
        "_f",
        "\u{fc}n\u{ef}",
        "n123",
        "text",
        "handshake",
    ];

    fn gen_text(rng: &mut Rng) -> String {
        const PIECES: &[&str] = &[
            "a",
            "hello",
            " ",
            "\t",
            "\n",
            "\r",
            "\r\n",
            "&",
            "<",
            ">",
            "]]>",
            "'",
            "\"",
            "&amp;",
            "\u{e9}",
            "\u{1F600}",
            "\u{FFFD}",
            "x y",
            "\u{85}",
            "\u{2028}",
        ];
        (0..1 + rng.below(6)).map(|_| rng.pick(PIECES)).collect()
    }

    fn gen_element(rng: &mut Rng, ns: &str, depth: usize) -> Element {
        let mut el = Element::new(rng.pick(NAMES), ns);
        for _ in 0..rng.below(5) {
            let key = match rng.below(4) {
                0 => "xml:lang".to_owned(),
                1 => {
                    let uri = rng.pick(&NAMESPACES[..NAMESPACES.len() - 1]);
                    let uri = if uri.is_empty() { "urn:attr" } else { uri };
                    format!("{{{uri}}}{}", rng.pick(&["a", "id", "type", "k-1"]))
                }
                _ => rng
                    .pick(&["to", "from", "id", "type", "a", "b-c", "x.y"])
                    .to_owned(),
            };
            if el.attr(&key).is_none() {
                let value = if rng.below(4) == 0 {
                    String::new()
                } else {
                    gen_text(rng)
                };
                el.attrs.push((key, value));
            }
        }
        if depth < 4 {
            for _ in 0..rng.below(5) {
                if rng.below(3) == 0 {
                    el = el.with_text(gen_text(rng));
                } else {
                    // Children mostly stay in their parent's namespace, as in real stanzas.
                    let child_ns = if rng.below(2) == 0 {
                        el.ns.as_str().to_owned()
                    } else {
                        rng.pick(NAMESPACES).to_owned()
                    };
                    let child = gen_element(rng, &child_ns, depth + 1);
                    el.push_child(child);
                }
            }
        }
        el
    }

    /// Writer fidelity: thousands of generated trees (names, every kind of namespace nested in every
    /// other, prefixed attributes, xml:lang, text needing escaping) written as on a
    /// server-to-server stream and as on a component stream parse back to the same tree (up to the
    /// documented content-namespace translation), with no unbound prefix.
    #[test]
    fn round_trip_property_over_generated_trees() {
        let mut checked = 0;
        for seed in 1..=3000u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let top_ns = rng.pick(NAMESPACES);
            let tree = gen_element(&mut rng, top_ns, 1);
            for kind in [Kind::S2s, Kind::Component] {
                if kind == Kind::Component && tree.ns == DIALBACK_NS {
                    // Dialback elements are never written at top level on component streams.
                    continue;
                }
                let bytes = tree.to_bytes();
                let parsed = parse_on(kind, &bytes).unwrap_or_else(|e| {
                    panic!(
                        "seed {seed} {kind:?}: {e}\n{}",
                        String::from_utf8_lossy(&bytes)
                    )
                });
                let want = as_read_back(&tree, kind.content_ns());
                assert_eq!(
                    parsed,
                    vec![want],
                    "seed {seed} {kind:?}: {}",
                    String::from_utf8_lossy(&bytes)
                );
                checked += 1;
            }
        }
        assert!(checked > 5000, "{checked}");
    }

    /// The measured bug: a verified peer's message with a nested dialback-namespace element, routed
    /// to a component (whose stream header does not bind `db`), came out as `<db:x/>`.
    #[test]
    fn dialback_namespace_child_routed_to_component_keeps_its_namespace() {
        let from_peer = parse_on(
            Kind::S2s,
            b"<message from='a@a.example' to='c@comp.example'><x xmlns='jabber:server:dialback'/>\
              <db:result>k</db:result><stream:features/></message>",
        )
        .unwrap()
        .remove(0);
        let bytes = from_peer.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains("db:") && !text.contains("stream:"), "{text}");
        let got = parse_on(Kind::Component, &bytes).unwrap().remove(0);
        assert_eq!(got, as_read_back(&from_peer, COMPONENT_NS));
        let x = got.elements().next().unwrap();
        assert_eq!((x.name.as_str(), x.ns.as_str()), ("x", DIALBACK_NS));
        assert_eq!(got.ns, COMPONENT_NS);
        // A content namespace nested in another one keeps its own (XEP-0297 forwarding).
        let fwd = Element::new("message", SERVER_NS).with_child(
            Element::new("message", crate::xml::CLIENT_NS)
                .with_child(Element::new("body", crate::xml::CLIENT_NS).with_text("hi")),
        );
        let got = parse_on(Kind::Component, &fwd.to_bytes())
            .unwrap()
            .remove(0);
        assert_eq!(got, as_read_back(&fwd, COMPONENT_NS));
        assert_eq!(got.elements().next().unwrap().ns, crate::xml::CLIENT_NS);
    }

    #[test]
    fn header_round_trips_through_reader() {
        for h in [
            StreamHeader {
                name: "stream".into(),
                ns: STREAM_NS.into(),
                default_ns: Some(SERVER_NS.into()),
                db_ns: true,
                from: Some("a.example".into()),
                to: Some("b.example".into()),
                id: Some("i'd<&>\"\t\n".into()),
                version: Some("1.0".into()),
                lang: Some("en".into()),
            },
            StreamHeader {
                name: "stream".into(),
                ns: STREAM_NS.into(),
                default_ns: Some(COMPONENT_NS.into()),
                ..Default::default()
            },
        ] {
            let bytes = h.to_bytes();
            let mut r = StreamReader::new(&bytes[..], Limits::default());
            match r.next_event().unwrap() {
                StreamEvent::Header(got) => assert_eq!(got, h),
                other => panic!("{other:?}"),
            }
        }
    }
}
