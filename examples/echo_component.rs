//! An external component (XEP-0114) that echoes messages back: the starting point for writing
//! your own. It uses the standard library only, so it can be copied out of this repository and
//! built on its own (`rustc -O echo_component.rs`); `make demo` runs it.
//!
//! ```text
//! echo_component serve ADDR DOMAIN SECRET          answer messages sent to DOMAIN until the
//!                                                  server closes the stream
//! echo_component send ADDR DOMAIN SECRET TO TEXT   send TEXT from demo@DOMAIN to TO, print the
//!                                                  echo that comes back; exit 1 without one
//! ```
//!
//! For example, with `make run` and `make run-peer` running (etc/dialbackd.toml and
//! etc/peer.toml configure these components and secrets):
//!
//! ```text
//! cargo run --release --example echo_component -- serve 127.0.0.2:5347 echo.b.test echo-secret-change-me
//! cargo run --release --example echo_component -- send 127.0.0.1:5347 echo.a.test echo-secret-change-me echo.b.test hello
//! ```
//!
//! What a component does (XEP-0114 §3), in the order of this file:
//!
//! 1. connect over TCP to the server's component port (`[listen] component`);
//! 2. open a stream in the `jabber:component:accept` namespace, `to` its domain;
//! 3. read the server's stream header and take its `id`;
//! 4. send `<handshake>` with hex(SHA-1(id + secret)); the server answers an empty
//!    `<handshake/>` (or closes the stream with `<not-authorized/>`);
//! 5. exchange stanzas: every stanza addressed to DOMAIN (or to `user@DOMAIN`) reaches the
//!    component, from anywhere in the federation; stanzas it sends must be `from` DOMAIN.
//!
//! The XML reading here is deliberately small: it cuts the stream into top-level elements by
//! counting tags and reads attributes as written (no entity decoding). It is enough for the
//! stanzas a server sends, not for arbitrary XML: a real component should use an XML parser.
//! The echo answers messages that have a `<body>` (with `echo: ` before the text) and never
//! answers an echo or an error, so two echo components cannot ping-pong; an `<iq/>` get or
//! set gets `service-unavailable` (RFC 6120 §8.2.3: every request gets an answer).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// How long `connect` and `send` wait for the server.
const WAIT: Duration = Duration::from_secs(20);

/// One top-level element of the stream: its name, the attributes of its start tag (as
/// written, entities not decoded), and its content between the start and end tags.
#[derive(Debug)]
pub struct Stanza {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub inner: String,
}

impl Stanza {
    /// The value of attribute `key`, as written.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The text of the first child element called `name` (as written).
    pub fn child_text(&self, name: &str) -> Option<&str> {
        let start = self.inner.find(&format!("<{name}"))?;
        let rest = &self.inner[start..];
        let open = tag_end(rest.as_bytes(), 0)?;
        if rest.as_bytes()[open - 1] == b'/' {
            return Some("");
        }
        let text = &rest[open + 1..];
        Some(&text[..text.find(&format!("</{name}>"))?])
    }
}

/// An authenticated component stream.
pub struct Component {
    pub domain: String,
    sock: TcpStream,
    buf: Vec<u8>,
}

/// Connect to the server at `addr` as component `domain` with `secret` (steps 1 to 4).
pub fn connect(addr: &str, domain: &str, secret: &str) -> io::Result<Component> {
    let target: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{addr}: no address")))?;
    let sock = TcpStream::connect_timeout(&target, WAIT)?;
    let mut c = Component {
        domain: domain.to_string(),
        sock,
        buf: Vec::new(),
    };
    c.write(&format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
    ))?;
    let deadline = Instant::now() + WAIT;
    let id = c.read_header(deadline)?;
    c.write(&format!(
        "<handshake>{}</handshake>",
        sha1_hex(format!("{id}{secret}").as_bytes())
    ))?;
    match c.next(deadline)? {
        Some(s) if s.name == "handshake" => Ok(c),
        Some(s) => Err(io::Error::other(format!(
            "handshake refused: <{}>{}",
            s.name, s.inner
        ))),
        None => Err(io::Error::other(
            "handshake refused: the server closed the stream (wrong domain or secret?)",
        )),
    }
}

impl Component {
    /// Send raw XML.
    pub fn write(&mut self, xml: &str) -> io::Result<()> {
        self.sock.write_all(xml.as_bytes())
    }

    /// The next stanza, waiting until `deadline`; `None` when the server closed the stream.
    pub fn next(&mut self, deadline: Instant) -> io::Result<Option<Stanza>> {
        loop {
            let start = self.buf.iter().position(|b| !b.is_ascii_whitespace());
            if let Some(start) = start {
                if self.buf[start..].starts_with(b"</") {
                    return Ok(None); // </stream:stream>
                }
                if let Some(end) = element_end(&self.buf[start..]) {
                    let raw: Vec<u8> = self.buf.drain(..start + end).skip(start).collect();
                    return parse_stanza(&String::from_utf8_lossy(&raw)).map(Some);
                }
            }
            if !self.fill(deadline)? {
                return Ok(None);
            }
        }
    }

    /// Read the server's `<stream:stream>` header; its `id`.
    fn read_header(&mut self, deadline: Instant) -> io::Result<String> {
        loop {
            if let Some(at) = find(&self.buf, b"<stream:stream") {
                if let Some(end) = tag_end(&self.buf, at) {
                    let tag: Vec<u8> = self.buf.drain(..=end).skip(at).collect();
                    let header = parse_stanza(&String::from_utf8_lossy(&tag))?;
                    return header
                        .attr("id")
                        .map(str::to_string)
                        .ok_or_else(|| io::Error::other("the stream header has no id"));
                }
            }
            if !self.fill(deadline)? {
                return Err(io::Error::other("the server closed the connection"));
            }
        }
    }

    /// Read more bytes, waiting until `deadline`; false at end of stream.
    fn fill(&mut self, deadline: Instant) -> io::Result<bool> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        self.sock.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 16384];
        match self.sock.read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
            }
            Err(e) => Err(e),
        }
    }
}

/// `serve`: answer every stanza until the server closes the stream.
pub fn serve(c: &mut Component) -> io::Result<()> {
    // A day: the server keeps idle streams alive with whitespace, which `next` skips.
    while let Some(s) = c.next(Instant::now() + Duration::from_secs(86400))? {
        if let Some(reply) = answer(&s) {
            println!(
                "echo: {} -> {}: {}",
                s.attr("from").unwrap_or("?"),
                s.attr("to").unwrap_or("?"),
                s.child_text("body").unwrap_or("(iq)")
            );
            c.write(&reply)?;
        }
    }
    Ok(())
}

/// The reply to `s`, if it gets one: the echo of a message, an error for an iq request.
pub fn answer(s: &Stanza) -> Option<String> {
    let (from, to) = (s.attr("from")?, s.attr("to")?);
    let id = s
        .attr("id")
        .map(|i| format!(" id={}", quote(i)))
        .unwrap_or_default();
    let kind = s.attr("type").unwrap_or("normal");
    match (s.name.as_str(), kind) {
        ("message", "error") => None,
        ("message", _) => {
            let body = s.child_text("body")?;
            if body.starts_with("echo: ") {
                return None; // never answer an echo
            }
            Some(format!(
                "<message from={} to={} type={}{id}><body>echo: {body}</body></message>",
                quote(to),
                quote(from),
                quote(kind)
            ))
        }
        ("iq", "get" | "set") => Some(format!(
            "<iq from={} to={} type='error'{id}><error type='cancel'>\
             <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
            quote(to),
            quote(from)
        )),
        _ => None,
    }
}

/// `send`: send `text` from `demo@DOMAIN` to `to` and wait for its echo; the echoed text.
pub fn send(c: &mut Component, to: &str, text: &str) -> io::Result<String> {
    let from = format!("demo@{}", c.domain);
    let msg = format!(
        "<message from={} to={} type='chat' id='echo-demo-1'><body>{}</body></message>",
        quote(&from),
        quote(to),
        escape(text)
    );
    println!("sent:     {msg}");
    c.write(&msg)?;
    let deadline = Instant::now() + WAIT;
    while let Some(s) = c
        .next(deadline)
        .map_err(|e| io::Error::new(e.kind(), format!("no echo from {to} within {WAIT:?} ({e})")))?
    {
        if s.attr("id") != Some("echo-demo-1") {
            continue;
        }
        if s.attr("type") == Some("error") {
            return Err(io::Error::other(format!(
                "bounced by the server: {}",
                s.inner
            )));
        }
        let echoed = s.child_text("body").unwrap_or_default().to_string();
        println!(
            "received: <message from='{}' to='{}'>… {echoed}",
            s.attr("from").unwrap_or("?"),
            s.attr("to").unwrap_or("?")
        );
        return Ok(echoed);
    }
    Err(io::Error::other("the server closed the stream"))
}

// --- A tiny XML reader: enough for the stanzas a server sends --------------------------------

/// The index of the `>` that ends the tag starting at `at` (quotes respected).
fn tag_end(b: &[u8], at: usize) -> Option<usize> {
    let mut quote = None;
    for (i, &c) in b.iter().enumerate().skip(at + 1) {
        match (quote, c) {
            (None, b'\'' | b'"') => quote = Some(c),
            (Some(q), _) if q == c => quote = None,
            (None, b'>') => return Some(i),
            _ => {}
        }
    }
    None
}

/// The length of the complete element at the start of `b`, or `None` if more bytes are needed.
fn element_end(b: &[u8]) -> Option<usize> {
    let (mut depth, mut i) = (0usize, 0);
    loop {
        let lt = i + b[i..].iter().position(|&c| c == b'<')?;
        let gt = tag_end(b, lt)?;
        match (b[lt + 1], b[gt - 1]) {
            (b'/', _) => depth = depth.saturating_sub(1),
            (b'?' | b'!', _) | (_, b'/') => {}
            _ => depth += 1,
        }
        i = gt + 1;
        if depth == 0 {
            return Some(i);
        }
    }
}

/// Name, attributes and content of one complete element (or of a lone start tag).
pub fn parse_stanza(raw: &str) -> io::Result<Stanza> {
    let bad = || io::Error::other(format!("cannot read {raw:?}"));
    let open = tag_end(raw.as_bytes(), 0).ok_or_else(bad)?;
    let tag = raw[1..open].trim_end_matches('/');
    let name_end = tag
        .find(|c: char| c.is_ascii_whitespace())
        .unwrap_or(tag.len());
    let mut attrs = Vec::new();
    let mut rest = &tag[name_end..];
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().to_string();
        let value = rest[eq + 1..].trim_start();
        let q = value.chars().next().ok_or_else(bad)?;
        let close = value[1..].find(q).ok_or_else(bad)? + 1;
        attrs.push((key, value[1..close].to_string()));
        rest = &value[close + 1..];
    }
    let inner = match raw.rfind("</") {
        Some(end) if end > open && !raw[..=open].ends_with("/>") => &raw[open + 1..end],
        _ => "",
    };
    Ok(Stanza {
        name: tag[..name_end].to_string(),
        attrs,
        inner: inner.to_string(),
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An attribute value in quotes: `'` unless the value holds one.
fn quote(v: &str) -> String {
    if v.contains('\'') {
        format!("\"{v}\"")
    } else {
        format!("'{v}'")
    }
}

/// Text escaped for element content.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

// --- SHA-1 (FIPS 180-4), for the handshake only ------------------------------------------------

/// hex(SHA-1(data)).
pub fn sha1_hex(data: &[u8]) -> String {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&(data.len() as u64 * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, &wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(wi);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

fn usage() -> ! {
    eprintln!(
        "usage: echo_component serve ADDR DOMAIN SECRET\n       \
         echo_component send ADDR DOMAIN SECRET TO TEXT"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, addr, domain, secret) = match args.as_slice() {
        [m, a, d, s, ..] => (m.as_str(), a.as_str(), d.as_str(), s.as_str()),
        _ => usage(),
    };
    let result = connect(addr, domain, secret).and_then(|mut c| {
        println!("connected to {addr} as component {domain}");
        match (mode, &args[4..]) {
            ("serve", []) => serve(&mut c),
            ("send", [to, text]) => send(&mut c, to, text).map(|_| ()),
            _ => usage(),
        }
    });
    if let Err(e) = result {
        eprintln!("echo_component {mode} {domain}: {e}");
        std::process::exit(1);
    }
}
