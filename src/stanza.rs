//! Stanza helpers: what a stanza is, its addresses, and error replies (RFC 6120 §8).
//!
//! In scope: recognising `<message/>`, `<presence/>` and `<iq/>` in any stream content
//! namespace, reading their addresses, and building the error reply or bounce for one. Out of
//! scope: routing (see `router`) and stream-level errors (see `stream`).

use crate::condition::StanzaCondition;
use crate::domain::{DomainError, Jid};
use crate::xml::{is_content_ns, Element, Node, STANZAS_NS};

/// XEP-0199 ping namespace.
pub const PING_NS: &str = "urn:xmpp:ping";
/// XEP-0030 service discovery: the information namespace.
pub const DISCO_INFO_NS: &str = "http://jabber.org/protocol/disco#info";
/// XEP-0092 software version namespace.
pub const VERSION_NS: &str = "jabber:iq:version";
/// What the daemon itself always answers on a hosted domain (XEP-0030 §3.1): the features of
/// [`disco_info_result`] when no optional handler is on.
pub const SERVER_FEATURES: [&str; 2] = [DISCO_INFO_NS, PING_NS];

/// The features the daemon answers on a hosted domain: [`SERVER_FEATURES`], and
/// [`VERSION_NS`] when the XEP-0092 handler (`[handlers] version`) is on.
pub fn server_features(version: bool) -> Vec<&'static str> {
    let mut f = SERVER_FEATURES.to_vec();
    if version {
        f.push(VERSION_NS);
    }
    f
}

/// True for `<message/>`, `<presence/>` and `<iq/>` in a stream content namespace.
pub fn is_stanza(el: &Element) -> bool {
    matches!(el.name.as_str(), "message" | "presence" | "iq") && is_content_ns(&el.ns)
}

/// The parsed `from` and `to` of a stanza.
#[derive(Debug)]
pub struct Addresses {
    /// The sender.
    pub from: Jid,
    /// The recipient.
    pub to: Jid,
}

/// Why a stanza's addresses are unusable (RFC 6120 §8.1.1.2, §8.1.2.2: `improper-addressing`).
#[derive(Debug)]
pub enum AddressError {
    /// `from` or `to` is missing or empty.
    Missing(&'static str),
    /// `from` or `to` is not a valid JID.
    Invalid(&'static str, DomainError),
}

impl std::fmt::Display for AddressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddressError::Missing(a) => write!(f, "stanza has no '{a}'"),
            // The error repeats the peer's value: bounded, it goes into a stream error.
            AddressError::Invalid(a, e) => write!(f, "stanza '{a}': {}", echo(&e.to_string())),
        }
    }
}

/// Read and validate both addresses.
///
/// # Errors
/// When either is missing, empty or not a valid JID.
pub fn addresses(el: &Element) -> Result<Addresses, AddressError> {
    let get = |a: &'static str| match el.attr(a) {
        None | Some("") => Err(AddressError::Missing(a)),
        Some(v) => Jid::parse(v).map_err(|e| AddressError::Invalid(a, e)),
    };
    Ok(Addresses {
        from: get("from")?,
        to: get("to")?,
    })
}

/// Why stanzas go back to their senders: the condition of the error and a text for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounce {
    /// The stanza error condition (RFC 6120 §8.3.3).
    pub condition: StanzaCondition,
    /// Human-readable text for the sender (and the log).
    pub text: String,
}

impl Bounce {
    /// A bounce with `condition` and `text`.
    pub fn new(condition: StanzaCondition, text: impl Into<String>) -> Bounce {
        Bounce {
            condition,
            text: text.into(),
        }
    }
}

impl std::fmt::Display for Bounce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.condition, self.text)
    }
}

/// True when a stanza must never be answered with an error: errors themselves (no loops) and
/// iq results (RFC 6120 §8.3.1).
pub fn is_unbounceable(el: &Element) -> bool {
    match el.attr("type") {
        Some("error") => true,
        Some("result") => el.name == "iq",
        _ => false,
    }
}

/// The most characters of a peer-supplied string we repeat in an error we send.
pub const ECHO_MAX: usize = 64;

/// The most characters of human-readable text in an error we send (stream error, stanza error).
pub const TEXT_MAX: usize = 256;

/// `s` without control characters and cut to `max` characters (ending in `…` when cut).
pub fn bounded(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max * 4));
    for (n, c) in s.chars().filter(|c| !c.is_control()).enumerate() {
        if n == max {
            out.pop();
            out.push('…');
            return out;
        }
        out.push(c);
    }
    out
}

/// A peer-supplied string (a namespace, an element name, an address, a peer's own error text)
/// made fit to repeat in an error we send: no control characters, at most [`ECHO_MAX`]
/// characters. A peer must not make us send back, or log, what it sent us at any length.
pub fn echo(s: &str) -> String {
    bounded(s, ECHO_MAX)
}

/// The `<error/>` child for `condition`, with an optional human-readable text (bounded to
/// [`TEXT_MAX`] characters, whoever wrote it).
pub fn error_element(condition: StanzaCondition, text: Option<&str>) -> Element {
    let mut err = Element::new("error", "jabber:server")
        .with_attr("type", condition.error_type().as_str())
        .with_child(Element::new(condition.as_str(), STANZAS_NS));
    if let Some(t) = text {
        err.push_child(
            Element::new("text", STANZAS_NS)
                .with_attr("xml:lang", "en")
                .with_text(bounded(t, TEXT_MAX)),
        );
    }
    err
}

/// The error reply to `el`: addresses swapped, `type='error'`, the original payload kept (RFC
/// 6120 §8.3.1 allows it and it helps the sender see what failed), and an `<error/>` with
/// `condition`. `None` when `el` must not be answered with an error.
pub fn error_reply(
    el: &Element,
    condition: StanzaCondition,
    text: Option<&str>,
) -> Option<Element> {
    error_reply_within(el, condition, text, usize::MAX)
}

/// Like [`error_reply`], but the reply keeps only the first child elements of the original
/// payload (in order, text between them included) whose [`wire_size`] adds up to at most
/// `payload` bytes; 0 keeps none. The stanza's own addressing is always kept. Nothing beyond
/// the budget is copied.
pub fn error_reply_within(
    el: &Element,
    condition: StanzaCondition,
    text: Option<&str>,
    payload: usize,
) -> Option<Element> {
    if is_unbounceable(el) || !is_stanza(el) {
        return None;
    }
    let mut reply = Element::new(&el.name, "jabber:server");
    if let Some(from) = el.attr("to") {
        reply.set_attr("from", from);
    }
    if let Some(to) = el.attr("from") {
        reply.set_attr("to", to);
    }
    if let Some(id) = el.attr("id") {
        reply.set_attr("id", id);
    }
    reply.set_attr("type", "error");
    let mut left = payload;
    reply.children = el
        .children
        .iter()
        .filter(|n| !matches!(n, Node::Element(c) if c.name == "error" && is_content_ns(&c.ns)))
        .take_while(|n| {
            let size = match n {
                Node::Element(c) => wire_size(c),
                Node::Text(t) => t.len(),
            };
            match left.checked_sub(size) {
                Some(rest) => {
                    left = rest;
                    true
                }
                None => false,
            }
        })
        .cloned()
        .collect();
    reply.push_child(error_element(condition, text));
    Some(reply)
}

/// The size of `el` written out, close enough for accounting: names, namespace declarations
/// where the namespace changes, attributes and text, without escaping. Walks the tree without
/// recursion (its depth is bounded by the reader, but not here).
pub fn wire_size(el: &Element) -> usize {
    let mut total = 0;
    let mut stack: Vec<(&Element, &str)> = vec![(el, "")];
    while let Some((e, parent_ns)) = stack.pop() {
        // <name …/> or <name …></name>
        total += 2 * e.name.len() + 5;
        if e.ns != parent_ns {
            total += e.ns.len() + 10;
        }
        for (k, v) in &e.attrs {
            total += k.len() + v.len() + 4;
        }
        for n in &e.children {
            match n {
                Node::Element(c) => stack.push((c, &e.ns)),
                Node::Text(t) => total += t.len(),
            }
        }
    }
    total
}

/// True for an XEP-0199 ping request (`<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>`).
pub fn is_ping(el: &Element) -> bool {
    el.name == "iq" && el.attr("type") == Some("get") && el.child("ping", PING_NS).is_some()
}

/// An `<iq type='get'/>` asking for service discovery information (XEP-0030 §3.1): the
/// query element, to read its `node`.
pub fn disco_info_query(el: &Element) -> Option<&Element> {
    if el.name != "iq" || el.attr("type") != Some("get") {
        return None;
    }
    el.child("query", DISCO_INFO_NS)
}

/// The answer to a disco#info query of a hosted domain (XEP-0030 §3.1): the identity of an
/// IM server (category `server`, type `im`, name `dialbackd`, as the Service Discovery
/// Identities registry defines it) and the features we answer ourselves (`features`, see
/// [`server_features`]).
pub fn disco_info_result(iq: &Element, features: &[&str]) -> Element {
    let mut query = Element::new("query", DISCO_INFO_NS).with_child(
        Element::new("identity", DISCO_INFO_NS)
            .with_attr("category", "server")
            .with_attr("type", "im")
            .with_attr("name", "dialbackd"),
    );
    for &var in features {
        query.push_child(Element::new("feature", DISCO_INFO_NS).with_attr("var", var));
    }
    iq_result(iq).with_child(query)
}

/// True for an XEP-0092 software version request (`<iq type='get'><query
/// xmlns='jabber:iq:version'/></iq>`).
pub fn is_version_query(el: &Element) -> bool {
    el.name == "iq" && el.attr("type") == Some("get") && el.child("query", VERSION_NS).is_some()
}

/// The answer to a software version request (XEP-0092 §3): name `dialbackd` and this build's
/// version. The optional `os` is left out: the operating system is nobody else's business.
pub fn version_result(iq: &Element) -> Element {
    let query = Element::new("query", VERSION_NS)
        .with_child(Element::new("name", VERSION_NS).with_text("dialbackd"))
        .with_child(Element::new("version", VERSION_NS).with_text(env!("CARGO_PKG_VERSION")));
    iq_result(iq).with_child(query)
}

/// The empty `<iq type='result'/>` that answers `iq`.
pub fn iq_result(iq: &Element) -> Element {
    let mut r = Element::new("iq", "jabber:server").with_attr("type", "result");
    if let Some(to) = iq.attr("from") {
        r.set_attr("to", to);
    }
    if let Some(from) = iq.attr("to") {
        r.set_attr("from", from);
    }
    if let Some(id) = iq.attr("id") {
        r.set_attr("id", id);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use StanzaCondition as C;

    /// XEP-0030 §3.1: the result keeps the id, swaps the addresses and lists one identity
    /// (server/im) and the features we answer.
    #[test]
    fn disco_info_answer_names_a_server_and_what_it_answers() {
        let iq = Element::new("iq", "jabber:server")
            .with_attr("type", "get")
            .with_attr("id", "d1")
            .with_attr("from", "u@b.test/r")
            .with_attr("to", "a.test")
            .with_child(Element::new("query", DISCO_INFO_NS));
        assert!(disco_info_query(&iq).is_some());
        let r = disco_info_result(&iq, &server_features(false));
        assert_eq!(
            (r.attr("type"), r.attr("id"), r.attr("from"), r.attr("to")),
            (
                Some("result"),
                Some("d1"),
                Some("a.test"),
                Some("u@b.test/r")
            )
        );
        let q = r.child("query", DISCO_INFO_NS).expect("the query");
        let ids: Vec<_> = q.elements().filter(|e| e.name == "identity").collect();
        assert_eq!(ids.len(), 1);
        assert_eq!(
            (
                ids[0].attr("category"),
                ids[0].attr("type"),
                ids[0].attr("name")
            ),
            (Some("server"), Some("im"), Some("dialbackd"))
        );
        let vars: Vec<_> = q
            .elements()
            .filter(|e| e.is("feature", DISCO_INFO_NS))
            .filter_map(|e| e.attr("var"))
            .collect();
        assert_eq!(vars, [DISCO_INFO_NS, PING_NS]);
        // Only a get of disco#info is a query.
        let mut set = iq.clone();
        set.set_attr("type", "set");
        assert!(disco_info_query(&set).is_none());
        let items = Element::new("iq", "jabber:server")
            .with_attr("type", "get")
            .with_child(Element::new(
                "query",
                "http://jabber.org/protocol/disco#items",
            ));
        assert!(disco_info_query(&items).is_none());
    }

    /// XEP-0092 §3: a get of jabber:iq:version is a query (a set is not); the result names
    /// dialbackd and its version and has no `os`.
    #[test]
    fn version_answer_names_dialbackd_and_no_os() {
        let iq = Element::new("iq", "jabber:server")
            .with_attr("type", "get")
            .with_attr("id", "v1")
            .with_attr("from", "u@b.test/r")
            .with_attr("to", "a.test")
            .with_child(Element::new("query", VERSION_NS));
        assert!(is_version_query(&iq));
        let mut set = iq.clone();
        set.set_attr("type", "set");
        assert!(!is_version_query(&set));
        let r = version_result(&iq);
        assert_eq!(
            (r.attr("type"), r.attr("id"), r.attr("from"), r.attr("to")),
            (
                Some("result"),
                Some("v1"),
                Some("a.test"),
                Some("u@b.test/r")
            )
        );
        let q = r.child("query", VERSION_NS).expect("the query");
        let names: Vec<_> = q.elements().map(|e| (e.name.as_str(), e.text())).collect();
        assert_eq!(
            names,
            [
                ("name", "dialbackd".to_string()),
                ("version", env!("CARGO_PKG_VERSION").to_string())
            ]
        );
        assert_eq!(server_features(true), [DISCO_INFO_NS, PING_NS, VERSION_NS]);
        assert_eq!(server_features(false), SERVER_FEATURES);
    }

    fn msg(ty: Option<&str>) -> Element {
        let mut m = Element::new("message", "jabber:component:accept")
            .with_attr("from", "bot@echo.a.test")
            .with_attr("to", "x@b.test")
            .with_attr("id", "m1")
            .with_child(Element::new("body", "jabber:component:accept").with_text("hi"));
        if let Some(t) = ty {
            m.set_attr("type", t);
        }
        m
    }

    #[test]
    fn error_reply_swaps_addresses_and_keeps_payload() {
        let r = error_reply(&msg(Some("chat")), C::RemoteServerTimeout, Some("gone")).unwrap();
        assert_eq!(r.attr("from"), Some("x@b.test"));
        assert_eq!(r.attr("to"), Some("bot@echo.a.test"));
        assert_eq!(r.attr("id"), Some("m1"));
        assert_eq!(r.attr("type"), Some("error"));
        assert!(r.elements().any(|c| c.name == "body"));
        let e = r.child("error", "jabber:server").unwrap();
        assert_eq!(e.attr("type"), Some("wait"));
        assert!(e.child("remote-server-timeout", STANZAS_NS).is_some());
    }

    #[test]
    fn wire_size_is_close_to_the_written_size() {
        let mut m = msg(Some("chat"));
        for i in 0..50 {
            m.push_child(
                Element::new("x", "urn:example:x")
                    .with_attr("n", i.to_string())
                    .with_child(Element::new("y", "urn:example:x").with_text("some text")),
            );
        }
        let written = m.to_bytes().len();
        let size = wire_size(&m);
        assert!(
            size >= written * 9 / 10 && size <= written * 11 / 10,
            "estimate {size}, written {written}"
        );
        // Deep trees are walked without recursion.
        let mut deep = Element::new("a", "urn:x");
        for _ in 0..100_000 {
            deep = Element::new("a", "urn:x").with_child(deep);
        }
        assert!(wire_size(&deep) > 600_000);
        // Dropping a deep tree recursively would overflow the test's stack: unwind it.
        let mut cur = Some(deep);
        while let Some(mut e) = cur {
            cur = match e.children.pop() {
                Some(Node::Element(c)) => Some(c),
                _ => None,
            };
        }
    }

    #[test]
    fn bounded_error_reply_keeps_the_first_children_that_fit() {
        let mut m = msg(None);
        let big = "x".repeat(100_000);
        m.push_child(Element::new("big", "urn:example:big").with_text(big.as_str()));
        m.push_child(Element::new("after", "urn:example:big"));
        let full = error_reply(&m, C::ResourceConstraint, None).unwrap();
        assert!(
            full.to_bytes().len() > 100_000,
            "the unbounded reply keeps it all"
        );
        let r = error_reply_within(&m, C::ResourceConstraint, Some("t"), 1024).unwrap();
        let names: Vec<&str> = r.elements().map(|e| e.name.as_str()).collect();
        // body (small) fits; big does not, and nothing after it is taken (order kept).
        assert_eq!(names, ["body", "error"]);
        assert!(r.to_bytes().len() < 1024 + 400, "{}", r.to_bytes().len());
        assert_eq!(
            (r.attr("from"), r.attr("to"), r.attr("id"), r.attr("type")),
            (
                Some("x@b.test"),
                Some("bot@echo.a.test"),
                Some("m1"),
                Some("error")
            )
        );
        let none = error_reply_within(&m, C::ResourceConstraint, None, 0).unwrap();
        let names: Vec<&str> = none.elements().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["error"], "a zero budget keeps only the error");
        assert!(error_reply_within(&msg(Some("error")), C::BadRequest, None, 0).is_none());
    }

    #[test]
    fn errors_and_iq_results_are_never_bounced() {
        assert!(error_reply(&msg(Some("error")), C::ServiceUnavailable, None).is_none());
        let iq = Element::new("iq", "jabber:server").with_attr("type", "result");
        assert!(error_reply(&iq, C::ServiceUnavailable, None).is_none());
        let db = Element::new("result", crate::xml::DIALBACK_NS);
        assert!(error_reply(&db, C::ServiceUnavailable, None).is_none());
    }

    #[test]
    fn addresses_are_validated() {
        assert!(addresses(&msg(None)).is_ok());
        let mut m = msg(None);
        m.set_attr("to", "");
        assert!(matches!(addresses(&m), Err(AddressError::Missing("to"))));
        m.set_attr("to", "a@b c");
        assert!(matches!(addresses(&m), Err(AddressError::Invalid("to", _))));
    }

    #[test]
    fn echoed_strings_are_bounded_and_without_control_characters() {
        let long = format!("urn:{}", "x".repeat(30_000));
        let e = echo(&long);
        assert_eq!(e.chars().count(), ECHO_MAX);
        assert!(e.starts_with("urn:x") && e.ends_with('…'));
        assert_eq!(echo("a\nforged\u{7}line"), "aforgedline");
        assert_eq!(echo("short"), "short");
        assert_eq!(bounded(&"é".repeat(10), 10), "é".repeat(10));
        // A stanza error's text is bounded whatever its origin.
        let err = error_element(C::RemoteServerTimeout, Some(&long));
        let text = err.child("text", STANZAS_NS).unwrap().text();
        assert_eq!(text.chars().count(), TEXT_MAX);
    }

    #[test]
    fn ping_is_recognised_and_answered() {
        let iq = Element::new("iq", "jabber:server")
            .with_attr("type", "get")
            .with_attr("id", "p")
            .with_attr("from", "alice@p.test/r")
            .with_attr("to", "a.test")
            .with_child(Element::new("ping", PING_NS));
        assert!(is_ping(&iq));
        let r = iq_result(&iq);
        assert_eq!(r.attr("to"), Some("alice@p.test/r"));
        assert_eq!(r.attr("from"), Some("a.test"));
        assert_eq!(r.attr("id"), Some("p"));
    }
}
