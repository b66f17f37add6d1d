//! A minimal owned XML element tree for stanzas and stream-level elements.
//!
//! In scope: building, inspecting and modifying elements (name, namespace, attributes, child elements
//! and text). Every element carries its resolved namespace URI; prefixes are not kept, so an element
//! can be moved from one stream to another and re-serialised with the prefixes of the new stream
//! (RFC 6120 §4.8, namespaces of stanzas routed between streams).
//!
//! Out of scope: parsing (see [`super::reader`]) and serialising (see [`super::writer`]); comments and
//! processing instructions, which XMPP forbids (RFC 6120 §11.1).
//!
//! Attribute keys: the local name for attributes in no namespace; `"xml:lang"` (generally
//! `"xml:local"`) for the xml namespace; `"{nsuri}local"` for attributes in any other namespace.
//!
//! Namespace URIs are [`Ns`] values: a shared, immutable string that is cheap to clone, so that a
//! stanza with thousands of elements in one namespace holds that URI once (the well-known XMPP
//! namespaces are shared by every stream; the reader shares a URI between the elements of a stanza).

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::{Arc, LazyLock};

use super::writer::write_element;

/// A namespace URI ("" for no namespace): a shared immutable string, cheap to clone.
///
/// It dereferences to `str` and compares equal to `str`, `&str` and `String`, so `el.ns == SERVER_NS`,
/// `is_content_ns(&el.ns)` and `format!("{}", el.ns)` work as with a `String`.
#[derive(Clone)]
pub struct Ns(Arc<str>);

/// The namespaces every stream uses, allocated once per process and shared by all elements.
static WELL_KNOWN: LazyLock<Vec<Arc<str>>> = LazyLock::new(|| {
    use super::*;
    [
        "",
        SERVER_NS,
        COMPONENT_NS,
        CLIENT_NS,
        DIALBACK_NS,
        STREAM_NS,
        STREAMS_ERR_NS,
        STANZAS_NS,
        TLS_NS,
        DIALBACK_FEATURE_NS,
    ]
    .into_iter()
    .map(Arc::from)
    .collect()
});

impl Ns {
    /// The namespace `uri`: one of the well-known XMPP namespaces is shared, any other is allocated.
    pub fn new(uri: &str) -> Ns {
        Ns::well_known(uri).unwrap_or_else(|| Ns(Arc::from(uri)))
    }

    /// The shared value for `uri` if it is one of the well-known XMPP namespaces (no allocation).
    pub(crate) fn well_known(uri: &str) -> Option<Ns> {
        WELL_KNOWN
            .iter()
            .find(|k| ***k == *uri)
            .map(|k| Ns(k.clone()))
    }

    /// The URI.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether both values share one allocation (then they are equal without comparing bytes).
    pub fn ptr_eq(&self, other: &Ns) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Default for Ns {
    /// No namespace ("").
    fn default() -> Ns {
        Ns::new("")
    }
}

impl Deref for Ns {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Ns {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Ns {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Ns {
    fn eq(&self, other: &Ns) -> bool {
        self.ptr_eq(other) || *self.0 == *other.0
    }
}

impl Eq for Ns {}

impl Hash for Ns {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq<str> for Ns {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Ns {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for Ns {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Ns> for str {
    fn eq(&self, other: &Ns) -> bool {
        *self == *other.0
    }
}

impl PartialEq<Ns> for &str {
    fn eq(&self, other: &Ns) -> bool {
        **self == *other.0
    }
}

impl PartialEq<Ns> for String {
    fn eq(&self, other: &Ns) -> bool {
        **self == *other.0
    }
}

impl fmt::Debug for Ns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Ns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Ns {
    fn from(uri: &str) -> Ns {
        Ns::new(uri)
    }
}

impl From<String> for Ns {
    fn from(uri: String) -> Ns {
        Ns::new(&uri)
    }
}

impl From<Ns> for String {
    fn from(ns: Ns) -> String {
        ns.as_str().to_owned()
    }
}

/// One XML element with its resolved namespace, attributes in document order and children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    /// Local name (no prefix).
    pub name: String,
    /// Namespace URI ("" for no namespace), shared (see [`Ns`]).
    pub ns: Ns,
    /// Attributes in order; keys as described in the module documentation.
    pub attrs: Vec<(String, String)>,
    /// Child elements and text, in document order.
    pub children: Vec<Node>,
}

/// A child of an [`Element`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data (entities decoded; CDATA sections become text).
    Text(String),
}

impl Element {
    /// A new empty element `name` in namespace `ns`.
    pub fn new(name: &str, ns: &str) -> Element {
        Element {
            name: name.to_owned(),
            ns: Ns::new(ns),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// The value of attribute `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Set attribute `name`: replaces an existing one in place (keeps the order), or appends it.
    pub fn set_attr(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value,
            None => self.attrs.push((name.to_owned(), value)),
        }
    }

    /// Remove attribute `name` and return its value, if it was present.
    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let pos = self.attrs.iter().position(|(k, _)| k == name)?;
        Some(self.attrs.remove(pos).1)
    }

    /// Builder form of [`Element::set_attr`].
    pub fn with_attr(mut self, name: &str, value: impl Into<String>) -> Element {
        self.set_attr(name, value);
        self
    }

    /// Builder form of [`Element::push_child`].
    pub fn with_child(mut self, child: Element) -> Element {
        self.push_child(child);
        self
    }

    /// Append a text child (merged into a directly preceding text child; empty text is not added).
    pub fn with_text(mut self, text: impl Into<String>) -> Element {
        self.push_text(text.into());
        self
    }

    /// Append a child element.
    pub fn push_child(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    /// Append text, merging it with a directly preceding text node so that the tree has the same shape
    /// as one produced by the reader.
    pub(crate) fn push_text(&mut self, text: String) {
        if text.is_empty() {
            return;
        }
        if let Some(Node::Text(last)) = self.children.last_mut() {
            last.push_str(&text);
        } else {
            self.children.push(Node::Text(text));
        }
    }

    /// Whether this element is `name` in namespace `ns`.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// The first direct child element `name` in namespace `ns`.
    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(name, ns))
    }

    /// The direct child elements, in order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The concatenation of the direct text children (text inside child elements is not included).
    pub fn text(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                s.push_str(t);
            }
        }
        s
    }

    /// Serialise as a first-level child of one of our streams (see [`write_element`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        write_element(self, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{DIALBACK_NS, SERVER_NS, STANZAS_NS};

    #[test]
    fn attributes() {
        let mut e = Element::new("message", SERVER_NS)
            .with_attr("to", "a")
            .with_attr("from", "b")
            .with_attr("type", "chat");
        assert_eq!(e.attr("from"), Some("b"));
        assert_eq!(e.attr("id"), None);
        e.set_attr("from", "c");
        let keys: Vec<&str> = e.attrs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["to", "from", "type"]);
        assert_eq!(e.attr("from"), Some("c"));
        assert_eq!(e.remove_attr("to"), Some("a".to_owned()));
        assert_eq!(e.remove_attr("to"), None);
        assert_eq!(e.attrs.len(), 2);
    }

    #[test]
    fn children_and_text() {
        let e = Element::new("iq", SERVER_NS)
            .with_text("a")
            .with_child(
                Element::new("error", SERVER_NS)
                    .with_child(Element::new("item-not-found", STANZAS_NS).with_text("inner")),
            )
            .with_text("b")
            .with_text("c")
            .with_text("")
            .with_child(Element::new("result", DIALBACK_NS));
        assert_eq!(e.text(), "abc");
        assert_eq!(e.children.len(), 4); // "a", error, "bc", result
        assert_eq!(e.elements().count(), 2);
        assert!(e.child("result", DIALBACK_NS).is_some());
        assert!(e.child("result", SERVER_NS).is_none());
        let err = e.child("error", SERVER_NS).unwrap();
        assert!(err
            .child("item-not-found", STANZAS_NS)
            .unwrap()
            .is("item-not-found", STANZAS_NS));
        assert_eq!(err.text(), "");
    }
}
