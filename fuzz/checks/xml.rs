//! `xml_reader`, `xml_chunked`, `serializer_roundtrip`: the stream reader and the serialiser.

use dialbackd::stanza::is_stanza;
use dialbackd::xml::{
    is_content_ns, Element, Limits, Node, StreamEvent, StreamReader, XmlError, SERVER_NS,
};
use std::io::{self, Read};

/// The header a peer server opens a stream with (binds `stream:` and `db:`, like ours).
pub(crate) const S2S_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
    from='b.test' to='a.test' version='1.0'>";

/// The header of a component stream (XEP-0114): binds `stream:` only.
pub(crate) const COMPONENT_HEADER: &str = "<stream:stream xmlns='jabber:component:accept' \
    xmlns:stream='http://etherx.jabber.org/streams' to='echo.a.test'>";

/// Small limits, so that fuzzing reaches the size and depth checks cheaply.
const SMALL: Limits = Limits {
    max_stanza_bytes: 600,
    max_depth: 6,
};

/// An error, without its message (which may name a position).
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Restricted,
    NotWellFormed,
    PolicyViolation,
    Eof,
    Io,
}

fn kind(e: &XmlError) -> Kind {
    match e {
        XmlError::Restricted(_) => Kind::Restricted,
        XmlError::NotWellFormed(_) => Kind::NotWellFormed,
        XmlError::PolicyViolation(_) => Kind::PolicyViolation,
        XmlError::Eof => Kind::Eof,
        XmlError::Io(_) => Kind::Io,
    }
}

/// Every event of one stream until it closes or fails, checking the reader's contract on the
/// way: the header first and only once; each element within the depth limit; no I/O error from
/// an in-memory source; every error is a stream error condition (or EOF); errors are sticky;
/// after the close only EOF; and the number of events is bounded by the input size.
fn read_all<R: Read>(
    r: &mut StreamReader<R>,
    input_len: usize,
    limits: Limits,
) -> (Vec<StreamEvent>, Kind) {
    let mut events = Vec::new();
    // Each element takes at least 4 bytes (`<a/>`); the header and the close one more each.
    let bound = input_len / 4 + 3;
    loop {
        assert!(
            events.len() <= bound,
            "{} events from {input_len} bytes",
            events.len()
        );
        match r.next_event() {
            Ok(StreamEvent::Header(h)) => {
                assert!(events.is_empty(), "a second header: {h:?}");
                events.push(StreamEvent::Header(h));
            }
            Ok(StreamEvent::Element(e)) => {
                assert!(!events.is_empty(), "an element before the header");
                let d = depth(&e);
                assert!(d <= limits.max_depth, "depth {d} > {}", limits.max_depth);
                assert!(!e.name.is_empty(), "element without a name");
                events.push(StreamEvent::Element(e));
            }
            Ok(StreamEvent::Close) => {
                assert!(!events.is_empty(), "a close before the header");
                events.push(StreamEvent::Close);
                for _ in 0..2 {
                    let after = r.next_event();
                    assert!(
                        matches!(after, Err(XmlError::Eof)),
                        "after close: {after:?}"
                    );
                }
                return (events, Kind::Eof);
            }
            Err(e) => {
                let k = kind(&e);
                assert_ne!(k, Kind::Io, "I/O error from an in-memory source: {e}");
                assert_eq!(
                    e.condition().is_some(),
                    k != Kind::Eof,
                    "{e}: condition {:?}",
                    e.condition()
                );
                // The message is bounded whatever the input (it ends up in logs).
                assert!(
                    e.to_string().len() < 1024,
                    "error message of {} bytes",
                    e.to_string().len()
                );
                for _ in 0..2 {
                    let again = r.next_event().expect_err("errors are sticky");
                    assert_eq!(kind(&again), k, "sticky error changed: {e} then {again}");
                }
                return (events, k);
            }
        }
    }
}

fn depth(e: &Element) -> usize {
    1 + e.elements().map(depth).max().unwrap_or(0)
}

/// The stream reader over arbitrary bytes: as given (the input is the whole stream, header
/// included) with the default limits, and after a valid header with small limits.
pub fn xml_reader(data: &[u8]) {
    read_all(
        &mut StreamReader::new(data, Limits::default()),
        data.len(),
        Limits::default(),
    );
    let mut with_header = S2S_HEADER.as_bytes().to_vec();
    with_header.extend_from_slice(data);
    read_all(
        &mut StreamReader::new(&with_header[..], SMALL),
        with_header.len(),
        SMALL,
    );
}

/// A source that returns at most the next of `sizes` bytes per read (short reads, never
/// `WouldBlock`, never an empty read before the end).
struct Chunked<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    next: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.sizes[self.next % self.sizes.len()];
        self.next += 1;
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// The framer/parser pipeline: the same stream delivered in arbitrary chunks gives the same
/// events and the same error as delivered whole. Input: one byte `n` (bit 7: small limits),
/// `n % 16 + 1` chunk sizes (0 means 4096), then the stream.
pub fn xml_chunked(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let limits = if n & 0x80 != 0 {
        SMALL
    } else {
        Limits::default()
    };
    let count = usize::from(n % 16) + 1;
    if rest.len() < count {
        return;
    }
    let (sizes, stream) = rest.split_at(count);
    let sizes: Vec<usize> = sizes
        .iter()
        .map(|&s| if s == 0 { 4096 } else { usize::from(s) })
        .collect();
    let whole = read_all(&mut StreamReader::new(stream, limits), stream.len(), limits);
    let chunked = Chunked {
        data: stream,
        sizes: sizes.clone(),
        next: 0,
    };
    let split = read_all(
        &mut StreamReader::new(chunked, limits),
        stream.len(),
        limits,
    );
    assert_eq!(whole, split, "chunk sizes {sizes:?} change the result");
}

/// Content namespaces are interchangeable on the wire (see `xml::is_content_ns`): compare
/// trees with every content namespace read as `jabber:server`.
#[allow(clippy::useless_conversion)] // `ns` is a String here, an `Ns` after issue 8's merge
fn normalise(e: &Element) -> Element {
    Element {
        name: e.name.clone(),
        ns: if is_content_ns(&e.ns) {
            SERVER_NS.to_string().into()
        } else {
            e.ns.clone()
        },
        attrs: e.attrs.clone(),
        children: e
            .children
            .iter()
            .map(|c| match c {
                Node::Element(c) => Node::Element(normalise(c)),
                Node::Text(t) => Node::Text(t.clone()),
            })
            .collect(),
    }
}

/// Write `el` on a stream opened with `header` and read it back.
fn reparse(header: &str, el: &Element) -> Result<Element, String> {
    let bytes = el.to_bytes();
    let mut doc = header.as_bytes().to_vec();
    doc.extend_from_slice(&bytes);
    let mut r = StreamReader::new(&doc[..], Limits::default());
    let shown = || String::from_utf8_lossy(&bytes).into_owned();
    match r.next_event() {
        Ok(StreamEvent::Header(_)) => {}
        other => panic!("our own test header failed: {other:?}"),
    }
    let back = match r.next_event() {
        Ok(StreamEvent::Element(back)) => back,
        other => return Err(format!("{} does not parse back: {other:?}", shown())),
    };
    match r.next_event() {
        Err(XmlError::Eof) => Ok(back),
        other => Err(format!("{} is more than one element: {other:?}", shown())),
    }
}

/// The serialiser round trip: every element read from an arbitrary stream (as given, and after
/// a valid header), written with `write_element`, reads back as the same tree (namespaces and
/// attributes included, content namespaces equivalent) on a server-to-server stream, and, for
/// stanzas (the only elements routed to components), on a component stream; and writing the
/// tree read back from a server-to-server stream gives the same bytes.
pub fn serializer_roundtrip(data: &[u8]) {
    let mut with_header = S2S_HEADER.as_bytes().to_vec();
    with_header.extend_from_slice(data);
    for input in [data, &with_header[..]] {
        let (events, _) = read_all(
            &mut StreamReader::new(input, Limits::default()),
            input.len(),
            Limits::default(),
        );
        for ev in events {
            let StreamEvent::Element(el) = ev else {
                continue;
            };
            let mut headers = vec![S2S_HEADER];
            if is_stanza(&el) {
                headers.push(COMPONENT_HEADER);
            }
            for header in headers {
                let back = reparse(header, &el).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(
                    normalise(&el),
                    normalise(&back),
                    "round trip changed the tree"
                );
                // Byte stability on the stream kind the element came from. Across kinds the
                // content namespaces are equivalent, so a child in jabber:component:accept
                // inside a jabber:server stanza legitimately reads back as inheriting the
                // component stream's namespace (and is then written without an xmlns).
                if header == S2S_HEADER {
                    assert_eq!(
                        String::from_utf8_lossy(&el.to_bytes()),
                        String::from_utf8_lossy(&back.to_bytes()),
                        "writing is not stable"
                    );
                }
            }
        }
    }
}
