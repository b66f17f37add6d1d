//! The little HTTP/1.1 the status listener speaks (RFC 9110, RFC 9112): one request per
//! connection, GET or HEAD, answered with `Connection: close`.
//!
//! In scope: reading one request head within a byte bound ([`MAX_REQUEST`]) and a time bound,
//! parsing it strictly ([`parse`]: request line, `Host`, no obsolete line folding, no space
//! before a colon), and writing a response with `Date`, `Content-Length` and `Connection:
//! close`. A request body is never read: the connection closes after the response.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The most bytes a request head may have (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;

/// A request's method, as far as we care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`: the GET response without its body (RFC 9110 §9.3.2).
    Head,
    /// Any other (well-formed) method: `405 Method Not Allowed`.
    Other,
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path, without the query (absolute-form targets reduced to it).
    pub path: String,
}

/// Why no request could be read; each has the status to answer with, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// The head is not valid HTTP/1.x (`400`), with why.
    BadRequest(&'static str),
    /// The head exceeds [`MAX_REQUEST`] (`431`).
    TooLarge,
    /// An HTTP version other than 1.x (`505`).
    Version,
    /// The head did not arrive within the time bound (`408`).
    Timeout,
    /// The client closed or reset the connection before a whole head: nothing to answer.
    Closed,
}

impl HttpError {
    /// The response status and reason phrase; `None` when there is nobody to answer.
    pub fn status(&self) -> Option<(u16, &'static str)> {
        match self {
            HttpError::BadRequest(_) => Some((400, "Bad Request")),
            HttpError::TooLarge => Some((431, "Request Header Fields Too Large")),
            HttpError::Version => Some((505, "HTTP Version Not Supported")),
            HttpError::Timeout => Some((408, "Request Timeout")),
            HttpError::Closed => None,
        }
    }
}

/// Parse a request head from the start of `buf`: `Ok(None)` while it is incomplete (no empty
/// line yet). A single LF is accepted as a line end (RFC 9112 §2.2) and empty lines before the
/// request line are skipped.
///
/// # Errors
/// See [`HttpError`]; a `buf` over [`MAX_REQUEST`] without a whole head is `TooLarge`.
pub fn parse(buf: &[u8]) -> Result<Option<Request>, HttpError> {
    let Some(end) = head_end(buf) else {
        return if buf.len() > MAX_REQUEST {
            Err(HttpError::TooLarge)
        } else {
            Ok(None)
        };
    };
    if end > MAX_REQUEST {
        return Err(HttpError::TooLarge);
    }
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| HttpError::BadRequest("the request head is not UTF-8"))?;
    let mut lines = head
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .skip_while(|l| l.is_empty());
    let line = lines
        .next()
        .ok_or(HttpError::BadRequest("no request line"))?;
    let (method, target, minor) = request_line(line)?;
    let mut hosts = 0;
    for field in lines.take_while(|l| !l.is_empty()) {
        if field.starts_with([' ', '\t']) {
            return Err(HttpError::BadRequest("obsolete line folding"));
        }
        let (name, _value) = field
            .split_once(':')
            .ok_or(HttpError::BadRequest("a header line without a colon"))?;
        if !is_token(name) {
            return Err(HttpError::BadRequest("a malformed header name"));
        }
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
    }
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1.
    if hosts > 1 || (minor == 1 && hosts == 0) {
        return Err(HttpError::BadRequest(
            "HTTP/1.1 needs exactly one Host header",
        ));
    }
    Ok(Some(Request {
        method,
        path: path_of(target)?,
    }))
}

/// Where the head ends (just after its empty line), if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    let mut seen_line = false;
    for (i, b) in buf.iter().enumerate() {
        if *b != b'\n' {
            continue;
        }
        let line = &buf[start..i];
        let empty = line.is_empty() || line == b"\r";
        if empty && seen_line {
            return Some(i + 1);
        }
        seen_line |= !empty;
        start = i + 1;
    }
    None
}

/// `METHOD SP target SP HTTP/1.x`: the method, the target and the minor version.
fn request_line(line: &str) -> Result<(Method, &str, u8), HttpError> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::BadRequest("a malformed request line"));
    };
    if !is_token(method) || target.is_empty() {
        return Err(HttpError::BadRequest("a malformed request line"));
    }
    let digits = version
        .strip_prefix("HTTP/")
        .and_then(|v| v.split_once('.'))
        .filter(|(a, b)| a.len() == 1 && b.len() == 1)
        .and_then(|(a, b)| Some((a.parse::<u8>().ok()?, b.parse::<u8>().ok()?)));
    let minor = match digits {
        Some((1, minor)) => minor,
        Some(_) => return Err(HttpError::Version),
        None => return Err(HttpError::BadRequest("a malformed HTTP version")),
    };
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    Ok((method, target, minor))
}

/// The path of an origin-form or absolute-form target (RFC 9112 §3.2), without the query.
fn path_of(target: &str) -> Result<String, HttpError> {
    let path = if target.starts_with('/') {
        target
    } else {
        let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
        let authority_and_path = if lower.starts_with("http://") {
            &target[7..]
        } else if lower.starts_with("https://") {
            &target[8..]
        } else {
            return Err(HttpError::BadRequest("a request target we do not serve"));
        };
        match authority_and_path.find(['/', '?']) {
            Some(i) if authority_and_path[i..].starts_with('/') => &authority_and_path[i..],
            _ => "/",
        }
    };
    let path = path.split('?').next().unwrap_or("/");
    if path.contains('#') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HttpError::BadRequest("a malformed request target"));
    }
    Ok(path.to_string())
}

/// An RFC 9110 §5.6.2 token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Read one request head from `sock` within `bound` (whatever the client's pace).
///
/// # Errors
/// See [`HttpError`].
pub fn read_request(sock: &mut TcpStream, bound: Duration) -> Result<Request, HttpError> {
    let deadline = Instant::now() + bound;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(req) = parse(&buf)? {
            return Ok(req);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout);
        }
        sock.set_read_timeout(Some(left))
            .map_err(|_| HttpError::Closed)?;
        match sock.read(&mut chunk) {
            Ok(0) => return Err(HttpError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HttpError::Timeout)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(HttpError::Closed),
        }
    }
}

/// A response to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: &'static str,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body (not written for HEAD; its length is).
    pub body: String,
}

impl Response {
    /// A `text/plain` response with `body`.
    pub fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// The bytes of `resp` (without the body when `head_only`), dated `now`.
pub fn response_bytes(resp: &Response, head_only: bool, now: SystemTime) -> Vec<u8> {
    let allow = if resp.status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nDate: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        resp.status,
        resp.reason,
        http_date(now),
        resp.content_type,
        resp.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(resp.body.as_bytes());
    }
    out
}

/// Write `bytes`, end our side, and read what the client still sends for a moment (bounded),
/// so that closing does not reset the connection before it has read the response (RFC 9112
/// §9.6).
pub fn send_and_close(sock: &mut TcpStream, bytes: &[u8], bound: Duration) {
    let _ = sock.set_write_timeout(Some(bound));
    if sock.write_all(bytes).is_err() {
        return;
    }
    let _ = sock.shutdown(Shutdown::Write);
    let deadline = Instant::now() + bound;
    let mut sink = [0u8; 1024];
    for _ in 0..64 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match sock.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// An IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86400;
    let (y, m, d) = crate::check::civil_from_days(i64::try_from(days).unwrap_or(0));
    let s = secs % 86400;
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests;
