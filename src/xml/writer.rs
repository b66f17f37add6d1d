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
//! Robustness rules beyond the API contract: characters that XML 1.0 cannot carry at all (C0 controls
//! other than tab/newline/CR, U+FFFE, U+FFFF) are dropped, and attributes whose key is not a usable
//! name (empty, containing markup characters, an `xmlns` declaration, an unknown prefix or a malformed
//! `{ns}local`) are skipped with a warning, so that our output stays well-formed whatever the tree holds.
//! Element names are written as given: they come from the reader (always valid) or from constants.

use super::element::{Element, Node};
use super::{is_content_ns, DIALBACK_NS, SERVER_NS, STREAM_NS};

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// Serialise `el` as it would appear as a child of the stream root (top level), appending to `out`.
/// Rules: elements in STREAM_NS are written with prefix `stream:`, in DIALBACK_NS with prefix `db:`
/// (both prefixes are bound on our stream headers) — a prefixed element does not change the default
/// namespace in scope for its children. Otherwise an element gets `xmlns='…'` only when its namespace
/// differs from the default namespace in scope, where all content namespaces (is_content_ns) count as
/// equal to each other and the stream's default namespace is the one in scope at top level.
/// "{ns}local" attributes get a generated prefix declared on that element. Empty elements are self-closed.
/// Escaping: text: & < > and \r as &#xD;  attributes (single-quoted): & < > ' " and \t \n \r as &#x9; &#xA; &#xD;.
pub fn write_element(el: &Element, out: &mut Vec<u8>) {
    // At top level the stream's default namespace is in scope; it is a content namespace, and all
    // content namespaces compare equal, so SERVER_NS stands for any of them.
    write_in_scope(el, SERVER_NS, out);
}

/// Whether an element in `ns` needs no `xmlns` under default namespace `scope`.
fn same_default(ns: &str, scope: &str) -> bool {
    ns == scope || (is_content_ns(ns) && is_content_ns(scope))
}

fn write_in_scope(el: &Element, scope: &str, out: &mut Vec<u8>) {
    out.push(b'<');
    let prefix: &[u8] = if el.ns == STREAM_NS {
        b"stream:"
    } else if el.ns == DIALBACK_NS {
        b"db:"
    } else {
        b""
    };
    out.extend_from_slice(prefix);
    out.extend_from_slice(el.name.as_bytes());
    let child_scope = if !prefix.is_empty() {
        scope
    } else {
        if !same_default(&el.ns, scope) {
            out.extend_from_slice(b" xmlns='");
            escape_attr(&el.ns, out);
            out.push(b'\'');
        }
        el.ns.as_str()
    };
    write_attrs(el, out);
    if el.children.is_empty() {
        out.extend_from_slice(b"/>");
        return;
    }
    out.push(b'>');
    for child in &el.children {
        match child {
            Node::Element(e) => write_in_scope(e, child_scope, out),
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
        if !is_simple_name(local) || ns.is_empty() {
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
                "xml writer: skipping attribute with unusable name {key:?} on <{}>",
                el.name
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
        StreamHeader, COMPONENT_NS, DIALBACK_FEATURE_NS, STANZAS_NS, STREAMS_ERR_NS, TLS_NS,
    };

    fn s(el: &Element) -> String {
        String::from_utf8(el.to_bytes()).unwrap()
    }

    /// Parse `body` as the content of a stream with the given default namespace.
    fn parse_under(default_ns: &str, body: &[u8]) -> Vec<Element> {
        let h = StreamHeader {
            default_ns: Some(default_ns.to_owned()),
            db_ns: true,
            ..Default::default()
        };
        let mut input = h.to_bytes();
        input.extend_from_slice(body);
        input.extend_from_slice(crate::xml::STREAM_CLOSE);
        let mut r = StreamReader::new(&input[..], Limits::default());
        let mut out = Vec::new();
        match r.next_event().unwrap() {
            StreamEvent::Header(_) => {}
            other => panic!("{other:?}"),
        }
        loop {
            match r.next_event().unwrap() {
                StreamEvent::Element(e) => out.push(e),
                StreamEvent::Close => return out,
                other => panic!("{other:?}"),
            }
        }
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
