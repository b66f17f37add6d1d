//! Push framer: cuts the stream header, each complete first-level element and the root end tag out
//! of the bytes of one XML stream (RFC 6120 §4), whatever the bytes arrive in.
//!
//! In scope:
//! - Accepting bytes as they come ([`Framer::feed`]: any split, a UTF-8 character across two reads
//!   included: only ASCII delimiters matter) and telling when a [`Frame`] is complete
//!   ([`Framer::next_frame`]): the root start tag (after an optional XML declaration), each
//!   first-level element from its `<` to its final `>`, the root end tag. It knows just enough XML
//!   for that: start, end and empty tags, attribute values in either quote (a `>` or `/>` inside one
//!   ends nothing), CDATA sections (a `</x>` inside one is text).
//! - Refusing while framing, before anything is buffered whole: comments, DOCTYPE and processing
//!   instructions (other than the XML declaration at the very start) → `restricted-xml` as soon as
//!   they are recognisable; text before the root or markup that cannot start a tag →
//!   `not-well-formed`; and the limits → `policy-violation`: the per-element byte budget (the
//!   [`StanzaBudget`] in force, capped by [`Limits::max_stanza_bytes`], counted from the end of the
//!   previous frame, whitespace included, and for the header from the start of the stream), the
//!   nesting depth ([`Limits::max_depth`]), names longer than [`MAX_NAME_LENGTH`], more than
//!   [`MAX_ATTRIBUTES`] attributes or [`MAX_DECLARATIONS_PER_ELEMENT`] namespace declarations on one
//!   start tag.
//! - Handing the bytes of complete frames to the parser through [`Read`] (never a byte of an
//!   incomplete one, so the parser never meets the end of its input inside an element) and handing
//!   back the bytes after the last frame ([`Framer::unframed`]) for the STARTTLS check.
//!
//! Out of scope: well-formedness beyond the delimiters (tag names matching, entity references,
//! UTF-8 validity, namespaces: the `xml` crate checks all of that on each complete frame, see
//! [`super::reader`]), and I/O: the caller reads from its transport and feeds.
//!
//! Memory: the framer holds the incomplete frame it is cutting, the frames the parser has not read
//! yet, and what the last [`Framer::feed`] gave it; bytes the parser has read are dropped on the next
//! feed.

use std::io::{self, Read};
use std::ops::Range;

use super::reader::{
    Limits, StanzaBudget, XmlError, MAX_ATTRIBUTES, MAX_DECLARATIONS_PER_ELEMENT, MAX_NAME_LENGTH,
};

/// Past this capacity, the buffer is shrunk once it is mostly empty.
const SHRINK_ABOVE: usize = 64 * 1024;

/// What a [`Frame`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// The root start tag.
    Header,
    /// One complete first-level element.
    Element,
    /// The root end tag (an empty span right after the header if the root was self-closed).
    Close,
}

/// One complete piece of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What it is.
    pub kind: FrameKind,
    /// Where it is, in bytes from the start of the stream: from its `<` to just after its `>`.
    /// What came between the previous frame and this one (whitespace, an XML declaration before the
    /// header) is not in the span, but it was counted against the budget and is handed to the parser
    /// with the frame.
    pub span: Range<usize>,
}

/// Where the framer is in the markup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    /// Character data, or whitespace between elements.
    Text,
    /// Just read `<`.
    Open,
    /// In a start tag's element name.
    StartName,
    /// In a start tag, between attributes.
    Attrs,
    /// In an attribute name; `.0` bytes of "xmlns:" matched so far (`u8::MAX`: not a declaration).
    AttrName(u8),
    /// In an attribute value closed by `.0`.
    Quoted(u8),
    /// Read `/` in a start tag.
    Slash,
    /// In an end tag.
    EndTag,
    /// After `<!` (`.0` = 0) or inside `<![CDATA[` (`.0` bytes of "[CDATA[" matched).
    Bang(u8),
    /// In a CDATA section; `.0` `]` in a row (at most 2).
    CData(u8),
    /// After `<?` at the very start of the stream; `.0` bytes of "xml" matched.
    Pi(u8),
    /// In the XML declaration; `.0`: the last byte was `?`.
    Decl(bool),
}

/// The push framer of one stream (see the module doc). A restarted stream needs a new one.
#[derive(Debug)]
pub struct Framer {
    /// Bytes fed and not yet dropped; `buf[0]` is byte `base` of the stream.
    buf: Vec<u8>,
    base: usize,
    /// The parser has read `buf[..read]`.
    read: usize,
    /// End of the last frame returned: the parser may read up to here; the next frame is counted
    /// from here.
    released: usize,
    /// Next byte to look at.
    scan: usize,
    lex: Lex,
    /// Open elements, the root included.
    depth: usize,
    /// Where the `<` of the current tag at depth 0 or 1 is (the span start of the next frame).
    lt: usize,
    /// Bytes of the name being read.
    run: usize,
    /// Attributes and namespace declarations on the current start tag.
    attrs: usize,
    decls: usize,
    /// The current start tag is the root's.
    root_tag: bool,
    /// The root was self-closed: a Close frame is due.
    close_due: bool,
    /// The root end tag was framed: nothing more is looked at.
    done: bool,
    /// The first error (returned again by every later call).
    failed: Option<XmlError>,
    limits: Limits,
    budget: StanzaBudget,
}

impl Framer {
    /// A framer for a new stream, with the byte budget `budget` (capped by
    /// `limits.max_stanza_bytes`), which another thread may change at any time: the value is read on
    /// every [`Framer::next_frame`] and applies at once, to the frame being cut too.
    pub fn new(limits: Limits, budget: StanzaBudget) -> Framer {
        Framer {
            buf: Vec::new(),
            base: 0,
            read: 0,
            released: 0,
            scan: 0,
            lex: Lex::Text,
            depth: 0,
            lt: 0,
            run: 0,
            attrs: 0,
            decls: 0,
            root_tag: false,
            close_due: false,
            done: false,
            failed: None,
            limits,
            budget,
        }
    }

    /// The budget handle.
    pub fn budget(&self) -> &StanzaBudget {
        &self.budget
    }

    /// The budget in force.
    fn limit(&self) -> usize {
        self.budget.get().min(self.limits.max_stanza_bytes)
    }

    /// Add bytes from the transport. Bytes the parser has read are dropped first, once they
    /// are at least half of the buffer (so a large buffer is not moved for every small feed).
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.read > 0 && (self.read * 2 >= self.buf.len() || bytes.is_empty()) {
            self.compact();
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Drop the bytes the parser has read.
    fn compact(&mut self) {
        self.buf.drain(..self.read);
        self.base += self.read;
        self.released -= self.read;
        self.scan -= self.read;
        self.lt = self.lt.saturating_sub(self.read);
        self.read = 0;
        if self.buf.capacity() > SHRINK_ABOVE && self.buf.len() < self.buf.capacity() / 4 {
            // A big element has gone: do not keep its memory for the rest of the stream.
            self.buf.shrink_to(self.buf.len());
        }
    }

    /// Bytes fed and not yet read by the parser.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.read
    }

    /// Give back the memory of bytes the parser has read (an idle stream keeps only what it
    /// has not parsed yet).
    pub fn trim(&mut self) {
        if self.read > 0 {
            self.compact();
        }
        self.buf.shrink_to_fit();
    }

    /// How many bytes the framer holds (for tests and accounting).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The stream offset up to which the parser has read (see [`Read`]).
    pub fn read_offset(&self) -> usize {
        self.base + self.read
    }

    /// Hand `bytes` to the parser again before everything it has not read yet: a new parser
    /// brought back for a parked one reads the stream header first (see the reader's `parked`).
    /// Stream offsets are kept: the replayed bytes sit just before the parser's read position
    /// and count as already read there.
    pub fn replay(&mut self, bytes: &[u8]) {
        if self.read > 0 {
            self.compact();
        }
        // base >= bytes.len(): the header being replayed came earlier in this stream.
        self.base = self.base.saturating_sub(bytes.len());
        self.buf.splice(0..0, bytes.iter().copied());
        let h = bytes.len();
        self.released += h;
        self.scan += h;
        self.lt += h;
    }

    /// The bytes the parser may read and has not read yet: the last frame returned, with what
    /// came before it (whitespace, the XML declaration before the header).
    pub fn released(&self) -> &[u8] {
        &self.buf[self.read..self.released]
    }

    /// The bytes after the last frame returned: fed, not framed, never handed to the parser.
    pub fn unframed(&self) -> &[u8] {
        &self.buf[self.released..]
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed (or the root end tag has been
    /// framed), or the reason the stream is refused. After an error every call returns it again.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, XmlError> {
        if let Some(e) = &self.failed {
            return Err(again(e));
        }
        if self.close_due {
            self.close_due = false;
            self.done = true;
            let at = self.base + self.released;
            return Ok(Some(Frame {
                kind: FrameKind::Close,
                span: at..at,
            }));
        }
        if self.done {
            return Ok(None);
        }
        match self.cut() {
            Ok(frame) => Ok(frame),
            Err(e) => {
                self.failed = Some(again(&e));
                Err(e)
            }
        }
    }

    /// Scan from `scan` until a frame is complete, the budget is spent or the bytes run out.
    fn cut(&mut self) -> Result<Option<Frame>, XmlError> {
        let limit = self.limit();
        // The budget: the frame being cut may use buf[released..stop].
        let stop = self.released.saturating_add(limit).min(self.buf.len());
        while self.scan < stop {
            let b = self.buf[self.scan];
            self.scan += 1;
            if let Some(kind) = self.step(b, stop)? {
                let span = self.base + self.lt..self.base + self.scan;
                self.released = self.scan;
                return Ok(Some(Frame { kind, span }));
            }
        }
        if self.scan - self.released >= limit && self.buf.len() > self.scan {
            return Err(XmlError::PolicyViolation(format!(
                "element larger than {limit} bytes"
            )));
        }
        Ok(None)
    }

    /// Take byte `b` (just before `scan`); in text, quoted values and CDATA sections, skip ahead
    /// (up to `stop`) to the next byte that matters. Returns the kind of the frame it completes.
    fn step(&mut self, b: u8, stop: usize) -> Result<Option<FrameKind>, XmlError> {
        match self.lex {
            Lex::Text if self.depth == 0 => self.before_root(b)?,
            Lex::Text => {
                if b == b'<' {
                    self.open(self.scan - 1);
                } else if self.skip_to(b'<', stop) {
                    self.scan += 1;
                    self.open(self.scan - 1);
                }
            }
            Lex::Open => return self.opened(b),
            Lex::StartName => match b {
                b'>' => return self.start_tag_end(false),
                b'/' => self.lex = Lex::Slash,
                _ if is_space(b) => self.lex = Lex::Attrs,
                _ => self.name_byte()?,
            },
            Lex::Attrs => return self.attrs_byte(b),
            Lex::AttrName(m) if is_name_end(b) => {
                self.attr_end(m)?;
                return self.attrs_byte(b);
            }
            Lex::AttrName(m) => {
                self.name_byte()?;
                self.lex = Lex::AttrName(match m {
                    0..=5 if b == b"xmlns:"[usize::from(m)] => m + 1,
                    6 => 6,
                    _ => u8::MAX,
                });
            }
            Lex::Quoted(q) if b == q => self.lex = Lex::Attrs,
            Lex::Quoted(q) => {
                if self.skip_to(q, stop) {
                    self.scan += 1;
                    self.lex = Lex::Attrs;
                }
            }
            Lex::Slash if b == b'>' => return self.start_tag_end(true),
            Lex::Slash => {
                // Not well-formed; the parser will say so. Keep framing.
                return self.attrs_byte(b);
            }
            Lex::EndTag if b == b'>' => return Ok(self.end_tag_end()),
            Lex::EndTag if is_space(b) => {}
            Lex::EndTag => self.name_byte()?,
            Lex::Bang(m) => self.bang(m, b)?,
            Lex::CData(2) if b == b'>' => self.lex = Lex::Text,
            Lex::CData(m) if b == b']' => self.lex = Lex::CData((m + 1).min(2)),
            Lex::CData(_) => {
                self.lex = Lex::CData(0);
                self.skip_to(b']', stop);
            }
            Lex::Pi(m) if m < 3 && b == b"xml"[usize::from(m)] => self.lex = Lex::Pi(m + 1),
            Lex::Pi(3) if is_space(b) => self.lex = Lex::Decl(false),
            Lex::Pi(_) => return Err(pi()),
            Lex::Decl(true) if b == b'>' => self.lex = Lex::Text,
            Lex::Decl(_) => self.lex = Lex::Decl(b == b'?'),
        }
        Ok(None)
    }

    /// Move `scan` to the next `byte` before `stop` (true) or to `stop` (false).
    fn skip_to(&mut self, byte: u8, stop: usize) -> bool {
        match self.buf[self.scan..stop].iter().position(|&c| c == byte) {
            Some(k) => {
                self.scan += k;
                true
            }
            None => {
                self.scan = stop;
                false
            }
        }
    }

    /// A byte before the root: whitespace, the XML declaration at the very start, or the root's `<`.
    fn before_root(&mut self, b: u8) -> Result<(), XmlError> {
        match b {
            b'<' => {
                self.open(self.scan - 1);
                Ok(())
            }
            _ if is_space(b) => Ok(()),
            _ => Err(XmlError::NotWellFormed(
                "text before the stream header".into(),
            )),
        }
    }

    fn open(&mut self, at: usize) {
        if self.depth <= 1 {
            self.lt = at;
        }
        self.lex = Lex::Open;
    }

    /// The byte after `<`.
    fn opened(&mut self, b: u8) -> Result<Option<FrameKind>, XmlError> {
        match b {
            b'/' if self.depth == 0 => Err(XmlError::NotWellFormed(
                "end tag before the stream header".into(),
            )),
            b'/' => {
                self.lex = Lex::EndTag;
                self.run = 0;
                Ok(None)
            }
            b'!' => {
                self.lex = Lex::Bang(0);
                Ok(None)
            }
            b'?' if self.base + self.scan == 2 => {
                self.lex = Lex::Pi(0);
                Ok(None)
            }
            b'?' => Err(pi()),
            _ if is_name_end(b) || b == b'<' => {
                Err(XmlError::NotWellFormed("'<' not followed by a name".into()))
            }
            _ => {
                // A start tag: the new element's level below the root is `depth`.
                if self.depth > self.limits.max_depth {
                    return Err(XmlError::PolicyViolation(format!(
                        "element nesting deeper than {}",
                        self.limits.max_depth
                    )));
                }
                self.root_tag = self.depth == 0;
                self.attrs = 0;
                self.decls = 0;
                self.run = 0;
                self.lex = Lex::StartName;
                self.name_byte()?;
                Ok(None)
            }
        }
    }

    /// One more byte of an element or attribute name.
    fn name_byte(&mut self) -> Result<(), XmlError> {
        self.run += 1;
        if self.run > MAX_NAME_LENGTH {
            return Err(XmlError::PolicyViolation(format!(
                "name longer than {MAX_NAME_LENGTH} bytes"
            )));
        }
        Ok(())
    }

    /// A byte in a start tag between attributes.
    fn attrs_byte(&mut self, b: u8) -> Result<Option<FrameKind>, XmlError> {
        match b {
            b'>' => self.start_tag_end(false),
            b'/' => {
                self.lex = Lex::Slash;
                Ok(None)
            }
            b'\'' | b'"' => {
                self.lex = Lex::Quoted(b);
                Ok(None)
            }
            b'=' => {
                self.lex = Lex::Attrs;
                Ok(None)
            }
            _ if is_space(b) => {
                self.lex = Lex::Attrs;
                Ok(None)
            }
            _ => {
                self.run = 0;
                self.name_byte()?;
                self.lex = Lex::AttrName(if b == b'x' { 1 } else { u8::MAX });
                Ok(None)
            }
        }
    }

    /// An attribute name ended; `m` bytes of "xmlns:" matched.
    fn attr_end(&mut self, m: u8) -> Result<(), XmlError> {
        if m == 6 || (m == 5 && self.run == 5) {
            self.decls += 1;
            if self.decls > MAX_DECLARATIONS_PER_ELEMENT {
                return Err(XmlError::PolicyViolation(format!(
                    "more than {MAX_DECLARATIONS_PER_ELEMENT} namespace declarations on one element"
                )));
            }
        } else {
            self.attrs += 1;
            if self.attrs > MAX_ATTRIBUTES {
                return Err(XmlError::PolicyViolation(format!(
                    "more than {MAX_ATTRIBUTES} attributes on one element"
                )));
            }
        }
        self.lex = Lex::Attrs;
        Ok(())
    }

    /// The `>` of a start tag (`empty`: `/>`).
    fn start_tag_end(&mut self, empty: bool) -> Result<Option<FrameKind>, XmlError> {
        self.lex = Lex::Text;
        if self.root_tag {
            self.root_tag = false;
            self.depth = 1;
            self.close_due = empty;
            return Ok(Some(FrameKind::Header));
        }
        if empty {
            Ok((self.depth == 1).then_some(FrameKind::Element))
        } else {
            self.depth += 1;
            Ok(None)
        }
    }

    /// The `>` of an end tag.
    fn end_tag_end(&mut self) -> Option<FrameKind> {
        self.lex = Lex::Text;
        self.depth -= 1; // >= 1: an end tag before the root is refused in `opened`
        match self.depth {
            0 => {
                self.done = true;
                Some(FrameKind::Close)
            }
            1 => Some(FrameKind::Element),
            _ => None,
        }
    }

    /// The byte after `<!` (`m` = 0) or the `m`th byte of "[CDATA[".
    fn bang(&mut self, m: u8, b: u8) -> Result<(), XmlError> {
        const CDATA: &[u8; 7] = b"[CDATA[";
        match (m, b) {
            (0, b'-') => Err(XmlError::Restricted("comment".into())),
            (0, b'D') => Err(XmlError::Restricted("DOCTYPE declaration".into())),
            (0, b'[') if self.depth == 0 => Err(XmlError::NotWellFormed(
                "CDATA section before the stream header".into(),
            )),
            _ if b == CDATA[usize::from(m)] => {
                self.lex = if usize::from(m) + 1 == CDATA.len() {
                    Lex::CData(0)
                } else {
                    Lex::Bang(m + 1)
                };
                Ok(())
            }
            _ => Err(XmlError::NotWellFormed("invalid markup after '<!'".into())),
        }
    }
}

/// The framed bytes: everything up to the end of the last frame returned by
/// [`Framer::next_frame`], in order, each byte once. `Ok(0)` means "nothing framed left", not the
/// end of the stream.
impl Read for Framer {
    #[inline]
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.released - self.read;
        if out.len() == 1 && avail > 0 {
            out[0] = self.buf[self.read];
            self.read += 1;
            return Ok(1);
        }
        let n = out.len().min(avail);
        out[..n].copy_from_slice(&self.buf[self.read..self.read + n]);
        self.read += n;
        Ok(n)
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Bytes that end a name in a tag.
fn is_name_end(b: u8) -> bool {
    is_space(b) || matches!(b, b'>' | b'/' | b'=' | b'\'' | b'"')
}

fn pi() -> XmlError {
    XmlError::Restricted("processing instruction".into())
}

/// The same error again (the framer only makes these three).
fn again(e: &XmlError) -> XmlError {
    match e {
        XmlError::Restricted(m) => XmlError::Restricted(m.clone()),
        XmlError::PolicyViolation(m) => XmlError::PolicyViolation(m.clone()),
        other => XmlError::NotWellFormed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
        xmlns:stream='http://etherx.jabber.org/streams' to='b.example' version='1.0'>";

    fn framer() -> Framer {
        framer_with(Limits::default())
    }

    fn framer_with(limits: Limits) -> Framer {
        Framer::new(limits, StanzaBudget::new(limits.max_stanza_bytes))
    }

    /// Everything the framer makes of `input` fed in chunks of the given sizes (cycled), with the
    /// bytes the parser side reads after each frame checked against the input. Returns the frames
    /// and the first error.
    fn run(input: &[u8], chunks: &[usize], limits: Limits) -> (Vec<Frame>, Option<String>) {
        let mut f = framer_with(limits);
        let mut frames = Vec::new();
        let mut pos = 0;
        let mut read_to = 0;
        let mut call = 0;
        while pos < input.len() {
            let n = chunks[call % chunks.len()].max(1).min(input.len() - pos);
            call += 1;
            f.feed(&input[pos..pos + n]);
            pos += n;
            loop {
                match f.next_frame() {
                    Ok(Some(frame)) => {
                        // The parser side gets exactly the bytes up to the end of the frame.
                        let mut got = Vec::new();
                        f.read_to_end(&mut got).unwrap();
                        assert_eq!(got, &input[read_to..frame.span.end]);
                        read_to = frame.span.end;
                        assert_eq!(f.unframed(), &input[frame.span.end..pos]);
                        frames.push(frame);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // Sticky.
                        assert_eq!(f.next_frame().unwrap_err().to_string(), e.to_string());
                        return (frames, Some(e.to_string()));
                    }
                }
            }
        }
        (frames, None)
    }

    /// The frames of `input` fed whole, checked to be the same at every split point, fed one byte
    /// at a time and in pseudo-random chunk sizes.
    fn frames(input: &str) -> (Vec<Frame>, Option<String>) {
        let input = input.as_bytes();
        let whole = run(input, &[input.len()], Limits::default());
        assert_eq!(
            run(input, &[1], Limits::default()),
            whole,
            "one byte at a time"
        );
        for k in 1..input.len() {
            assert_eq!(
                run(input, &[k, input.len()], Limits::default()),
                whole,
                "split at {k}"
            );
        }
        let mut seed: u32 = 0x2545_F491;
        for _ in 0..20 {
            let sizes: Vec<usize> = (0..16)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed % 23) as usize + 1
                })
                .collect();
            assert_eq!(run(input, &sizes, Limits::default()), whole, "{sizes:?}");
        }
        whole
    }

    fn spans<'a>(input: &'a str, frames: &[Frame]) -> Vec<(FrameKind, &'a str)> {
        frames
            .iter()
            .map(|f| (f.kind, &input[f.span.clone()]))
            .collect()
    }

    #[test]
    fn frames_at_every_split() {
        let elements = [
            "<message to='a' x=\"'>\" y='/>' z=\"/>\"><body>1 > 0 &amp; 'q' \"r\"</body></message>",
            "<db:result from='a.example' to='b.example'/>",
            "<message><body><![CDATA[</message> <x/> ]] ]]]></body><![CDATA[]]></message>",
            "<iq\ttype='get'\nid='1'><query xmlns='urn:q'><item/><item a='1'/></query></iq >",
            "<presence/>",
            "<message><body>é ü 日本 \u{1F600}</body></message>",
        ];
        let mut input = String::from(HEADER);
        for e in elements {
            input.push_str(" \n\t");
            input.push_str(e);
        }
        input.push_str("\r\n </stream:stream>trailing");
        let (got, err) = frames(&input);
        assert_eq!(err, None);
        let mut want = vec![(FrameKind::Header, &HEADER[21..])];
        want.extend(elements.iter().map(|e| (FrameKind::Element, *e)));
        want.push((FrameKind::Close, "</stream:stream>"));
        assert_eq!(spans(&input, &got), want);
    }

    #[test]
    fn header_variants() {
        // No declaration, garbage-free leading whitespace, a self-closed root.
        let input = "\n <s:stream xmlns:s='http://etherx.jabber.org/streams' a='>'/>";
        let (got, err) = frames(input);
        assert_eq!(err, None);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].kind, FrameKind::Header);
        assert_eq!(&input[got[0].span.clone()], &input[2..]);
        assert_eq!(got[1].kind, FrameKind::Close);
        assert_eq!(got[1].span, input.len()..input.len());
        // Nothing after the close is framed.
        let mut f = framer();
        f.feed(b"<a></a><b/>");
        assert_eq!(f.next_frame().unwrap().unwrap().kind, FrameKind::Header);
        assert_eq!(f.next_frame().unwrap().unwrap().kind, FrameKind::Close);
        assert_eq!(f.next_frame().unwrap(), None);
        assert_eq!(f.unframed(), b"<b/>");
    }

    #[test]
    fn frame_comes_out_at_its_last_byte() {
        let mut f = framer();
        let input = format!("{HEADER}<message><body>x</body></message>");
        let (head, last) = input.split_at(input.len() - 1);
        f.feed(head.as_bytes());
        assert_eq!(f.next_frame().unwrap().unwrap().kind, FrameKind::Header);
        assert_eq!(f.next_frame().unwrap(), None);
        f.feed(last.as_bytes());
        assert_eq!(f.next_frame().unwrap().unwrap().kind, FrameKind::Element);
        assert_eq!(f.next_frame().unwrap(), None);
    }

    fn first_error(input: &str, limits: Limits) -> (usize, String) {
        let input = input.as_bytes();
        let (frames, err) = run(input, &[1], limits);
        let err =
            err.unwrap_or_else(|| panic!("no error for {:?}", String::from_utf8_lossy(input)));
        (frames.len(), err)
    }

    /// Feed `input` one byte at a time: the error must come exactly with the last byte.
    fn refused_at_last_byte(input: &str, limits: Limits) -> String {
        let (ok, last) = input.split_at(input.len() - 1);
        let mut f = framer_with(limits);
        for b in ok.bytes() {
            f.feed(&[b]);
            while let Some(frame) = f.next_frame().unwrap_or_else(|e| panic!("early: {e}")) {
                let _ = frame;
            }
        }
        f.feed(last.as_bytes());
        match f.next_frame() {
            Err(e) => e.to_string(),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn restricted_and_garbage_at_once() {
        let l = Limits::default();
        for (input, cond) in [
            (format!("{HEADER}<!-"), "restricted XML: comment"),
            (format!("{HEADER}<message><!-"), "restricted XML: comment"),
            ("<!D".to_string(), "restricted XML: DOCTYPE"),
            (
                "<?xml version='1.0'?><!D".to_string(),
                "restricted XML: DOCTYPE",
            ),
            (format!("{HEADER}<?"), "restricted XML: processing"),
            ("<?p".to_string(), "restricted XML: processing"),
            (" <?".to_string(), "restricted XML: processing"),
            (
                "<?xml version='1.0'?><?".to_string(),
                "restricted XML: processing",
            ),
            ("h".to_string(), "XML not well-formed: text before"),
            (
                "<?xml version='1.0'?> x".to_string(),
                "XML not well-formed: text before",
            ),
            ("</".to_string(), "XML not well-formed: end tag"),
            ("<![".to_string(), "XML not well-formed: CDATA"),
            (format!("{HEADER}<message><<"), "XML not well-formed: '<'"),
            (format!("{HEADER}< "), "XML not well-formed: '<'"),
            (
                format!("{HEADER}<!x"),
                "XML not well-formed: invalid markup",
            ),
            (
                format!("{HEADER}<![CDAT["),
                "XML not well-formed: invalid markup",
            ),
        ] {
            let e = refused_at_last_byte(&input, l);
            assert!(e.starts_with(cond), "{input:?}: {e}");
        }
        // Whitespace and text between elements are fine; CDATA between elements too.
        let input = format!("{HEADER} x <![CDATA[<a>]]> <a/>");
        let (got, err) = frames(&input);
        assert_eq!((got.len(), err), (2, None));
    }

    #[test]
    fn byte_budget_while_framing() {
        let limits = Limits {
            max_stanza_bytes: 100,
            max_depth: 64,
        };
        // Exactly 100 bytes from the end of the header, leading whitespace included: fine.
        let el = |len: usize| format!("  <m>{}</m>", "x".repeat(len - 9));
        let (got, err) = run(
            format!("{HEADER}{}", el(100)).as_bytes(),
            &[1],
            Limits {
                max_stanza_bytes: HEADER.len().max(100),
                ..limits
            },
        );
        assert_eq!((got.len(), err), (2, None));
        // One more: refused at byte 101, long before the end tag.
        let input = format!("{HEADER}{}", el(101));
        let big = Limits {
            max_stanza_bytes: HEADER.len(),
            max_depth: 64,
        };
        let budget = StanzaBudget::new(HEADER.len());
        let mut f = Framer::new(big, budget.clone());
        f.feed(HEADER.as_bytes());
        assert_eq!(f.next_frame().unwrap().unwrap().kind, FrameKind::Header);
        budget.set(100);
        f.feed(&input.as_bytes()[HEADER.len()..HEADER.len() + 100]);
        assert_eq!(f.next_frame().unwrap(), None);
        f.feed(b"x");
        let e = f.next_frame().unwrap_err();
        assert_eq!(
            e.condition(),
            Some(crate::condition::StreamCondition::PolicyViolation)
        );
        assert!(e.to_string().contains("100 bytes"), "{e}");
        // Whitespace keepalives count; the header is bounded from the stream's first byte.
        let (n, e) = first_error(&format!("{HEADER}{}", " ".repeat(HEADER.len() + 1)), big);
        assert_eq!(n, 1);
        assert!(e.contains("larger than"), "{e}");
        let root = &HEADER[21..];
        let exact = Limits {
            max_stanza_bytes: root.len(),
            max_depth: 64,
        };
        assert_eq!(run(root.as_bytes(), &[1], exact).0.len(), 1);
        let (n, e) = first_error(&format!(" {root}"), exact);
        assert_eq!(n, 0);
        assert!(e.contains("larger than"), "{e}");
        // Each element has its own budget.
        let input = format!("{HEADER}{}", el(100).repeat(50));
        let (got, err) = run(input.as_bytes(), &[7], big);
        assert_eq!((got.len(), err), (51, None));
        // A lowered budget applies to the element being cut.
        let budget = StanzaBudget::new(1000);
        let mut f = Framer::new(Limits::default(), budget.clone());
        f.feed(format!("{HEADER}<m>{}", "x".repeat(200)).as_bytes());
        f.next_frame().unwrap().unwrap();
        assert_eq!(f.next_frame().unwrap(), None);
        budget.set(100);
        f.feed(b"y");
        assert!(matches!(f.next_frame(), Err(XmlError::PolicyViolation(_))));
    }

    #[test]
    fn depth_and_names_while_framing() {
        let limits = Limits {
            max_stanza_bytes: 1 << 20,
            max_depth: 3,
        };
        let (got, err) = run(
            format!("{HEADER}<a><b><c/></b></a>").as_bytes(),
            &[1],
            limits,
        );
        assert_eq!((got.len(), err), (2, None));
        let e = refused_at_last_byte(&format!("{HEADER}<a><b><c><d"), limits);
        assert!(e.contains("nesting deeper than 3"), "{e}");
        let l = Limits::default();
        let name = "n".repeat(MAX_NAME_LENGTH);
        let (got, err) = frames(&format!("{HEADER}<{name} {name}='v'></{name}>"));
        assert_eq!((got.len(), err), (2, None));
        for input in [
            format!("{HEADER}<{name}n"),
            format!("<{name}n"),
            format!("{HEADER}<m {name}n"),
            format!("{HEADER}<m></{name}n"),
        ] {
            let e = refused_at_last_byte(&input, l);
            assert!(e.contains("name longer"), "{e}");
        }
    }

    #[test]
    fn attributes_and_declarations_while_framing() {
        let l = Limits::default();
        let attrs: String = (0..MAX_ATTRIBUTES)
            .map(|i| format!(" a{i}='xmlns:x'"))
            .collect();
        let decls: String = (0..MAX_DECLARATIONS_PER_ELEMENT)
            .map(|i| format!(" xmlns:p{i}=\"u\""))
            .collect();
        // At the limits, with "xmlns" in values, an attribute merely starting with "xmlns" and a
        // default-namespace declaration on the next element.
        let input =
            format!("{HEADER}<m{attrs}{decls}><x xmlns='urn:x' xmlnsfoo='1'>xmlns:a=''</x></m>");
        let (got, err) = run(input.as_bytes(), &[1], l);
        assert_eq!((got.len(), err), (2, None));
        let e = refused_at_last_byte(&format!("{HEADER}<m{attrs} b="), l);
        assert!(e.contains("attributes"), "{e}");
        let e = refused_at_last_byte(&format!("{HEADER}<m{decls} xmlns="), l);
        assert!(e.contains("declarations"), "{e}");
        let e = refused_at_last_byte(&format!("{HEADER}<m{decls} xmlns:q "), l);
        assert!(e.contains("declarations"), "{e}");
    }

    #[test]
    fn big_element_memory_is_given_back() {
        let mut f = framer();
        f.feed(HEADER.as_bytes());
        f.next_frame().unwrap().unwrap();
        f.feed(format!("<m>{}</m><n>", "x".repeat(300_000)).as_bytes());
        assert_eq!(f.next_frame().unwrap().unwrap().kind, FrameKind::Element);
        f.read_to_end(&mut Vec::new()).unwrap();
        assert!(f.buf.capacity() > 300_000);
        f.feed(b"</n>");
        assert!(f.buf.capacity() <= SHRINK_ABOVE, "{}", f.buf.capacity());
        assert_eq!(f.next_frame().unwrap().unwrap().kind, FrameKind::Element);
        assert_eq!(f.buffered(), b"<n></n>".len());
    }

    #[test]
    fn holds_one_incomplete_element_and_one_feed() {
        let el = "<message to='a@b'><body>0123456789</body></message>";
        let mut input = String::from(HEADER);
        for _ in 0..1000 {
            input.push_str(el);
            input.push(' ');
        }
        for chunk in [1, 10, 100, 4096] {
            let mut f = framer();
            let mut n = 0;
            for part in input.as_bytes().chunks(chunk) {
                f.feed(part);
                assert!(
                    f.buffered() <= HEADER.len() + 1 + el.len() + chunk,
                    "{} bytes held",
                    f.buffered()
                );
                while f.next_frame().unwrap().is_some() {
                    n += 1;
                    f.read_to_end(&mut Vec::new()).unwrap();
                }
            }
            assert_eq!(n, 1001);
        }
    }
}
