//! Request parsing (bounded, strict, RFC 9112), reading within a time bound, and responses.

use super::*;
use std::net::TcpListener;
use std::thread;

fn get(path: &str) -> Request {
    Request {
        method: Method::Get,
        path: path.into(),
    }
}

fn bad(head: &str) -> HttpError {
    match parse(head.as_bytes()) {
        Err(e) => e,
        Ok(r) => panic!("accepted {head:?}: {r:?}"),
    }
}

#[test]
fn a_get_with_host_is_parsed_and_an_incomplete_head_waits() {
    let full = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:5280\r\nAccept: */*\r\n\r\n";
    assert_eq!(parse(full.as_bytes()), Ok(Some(get("/metrics"))));
    for cut in 0..full.len() {
        assert_eq!(parse(&full.as_bytes()[..cut]), Ok(None), "cut at {cut}");
    }
    // Whatever follows the head (a body, a pipelined request) is not ours to read.
    assert_eq!(
        parse(format!("{full}GET /status HTTP/1.1\r\n").as_bytes()),
        Ok(Some(get("/metrics")))
    );
}

#[test]
fn methods_targets_and_line_ends() {
    let req = |line: &str| parse(format!("{line}\r\nHost: x\r\n\r\n").as_bytes());
    assert_eq!(
        req("HEAD /status HTTP/1.1"),
        Ok(Some(Request {
            method: Method::Head,
            path: "/status".into()
        }))
    );
    assert_eq!(
        req("POST /metrics HTTP/1.1").unwrap().unwrap().method,
        Method::Other
    );
    assert_eq!(
        req("get /metrics HTTP/1.1").unwrap().unwrap().method,
        Method::Other
    );
    // The query is not part of the path; an absolute-form target is reduced to its path.
    assert_eq!(req("GET /metrics?x=1 HTTP/1.1"), Ok(Some(get("/metrics"))));
    assert_eq!(
        req("GET http://127.0.0.1:5280/metrics HTTP/1.1"),
        Ok(Some(get("/metrics")))
    );
    assert_eq!(req("GET HTTP://h HTTP/1.1"), Ok(Some(get("/"))));
    assert_eq!(req("GET http://h?q=/x HTTP/1.1"), Ok(Some(get("/"))));
    // HTTP/1.0 needs no Host; bare LF line ends and leading empty lines are tolerated.
    assert_eq!(
        parse(b"\r\n\nGET /status HTTP/1.0\n\n"),
        Ok(Some(get("/status")))
    );
}

#[test]
fn malformed_heads_are_400_and_other_versions_505() {
    for head in [
        "GET /metrics\r\nHost: x\r\n\r\n",
        "GET  /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /metrics HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        "GET /metrics HTTP/1\r\nHost: x\r\n\r\n",
        "GET /metrics http/1.1\r\nHost: x\r\n\r\n",
        "G(T /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n",
        // RFC 9112 §3.2: HTTP/1.1 needs exactly one Host.
        "GET /metrics HTTP/1.1\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        // §5.1: no whitespace between the name and the colon; §5.2: no line folding.
        "GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    ] {
        assert!(
            matches!(bad(head), HttpError::BadRequest(_)),
            "{head:?}: {:?}",
            bad(head)
        );
        assert_eq!(bad(head).status().map(|s| s.0), Some(400));
    }
    assert!(matches!(
        parse(b"GET /metrics HTTP/1.1\r\nHost: \xff\r\n\r\n"),
        Err(HttpError::BadRequest(_))
    ));
    assert_eq!(bad("GET /metrics HTTP/2.0\r\n\r\n"), HttpError::Version);
    assert_eq!(HttpError::Version.status().map(|s| s.0), Some(505));
}

#[test]
fn a_head_over_the_bound_is_refused_complete_or_not() {
    let endless = format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST));
    assert_eq!(bad(&endless), HttpError::TooLarge);
    let complete = format!("{endless}\r\nHost: x\r\n\r\n");
    assert_eq!(bad(&complete), HttpError::TooLarge);
    assert_eq!(HttpError::TooLarge.status().map(|s| s.0), Some(431));
    // Just under the bound is fine.
    let pad = MAX_REQUEST - "GET / HTTP/1.1\r\nHost: x\r\nX: \r\n\r\n".len();
    let fits = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
        "a".repeat(pad)
    );
    assert_eq!(fits.len(), MAX_REQUEST);
    assert_eq!(parse(fits.as_bytes()), Ok(Some(get("/"))));
}

/// A connected loopback pair: (client, server side).
fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

#[test]
fn reading_is_bounded_in_time_and_copes_with_pieces_and_hangups() {
    // In pieces.
    let (mut c, mut s) = pair();
    let t = thread::spawn(move || {
        for piece in ["GET /sta", "tus HTTP/1.1\r\nHo", "st: x\r\n", "\r\n"] {
            c.write_all(piece.as_bytes()).unwrap();
            c.flush().unwrap();
        }
        c
    });
    let r = read_request(&mut s, Duration::from_secs(20));
    let _c = t.join().unwrap();
    assert_eq!(r, Ok(get("/status")));
    // A client that sends nothing gets 408 when the bound passes.
    let (_c, mut s) = pair();
    assert_eq!(
        read_request(&mut s, Duration::from_millis(50)),
        Err(HttpError::Timeout)
    );
    assert_eq!(HttpError::Timeout.status().map(|s| s.0), Some(408));
    // One that hangs up half-way gets nothing.
    let (mut c, mut s) = pair();
    c.write_all(b"GET /metrics HTT").unwrap();
    drop(c);
    assert_eq!(
        read_request(&mut s, Duration::from_secs(20)),
        Err(HttpError::Closed)
    );
    assert_eq!(HttpError::Closed.status(), None);
}

#[test]
fn responses_carry_length_date_and_close_and_head_has_no_body() {
    let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
    let r = Response::text(200, "OK", "hello\n");
    let text = String::from_utf8(response_bytes(&r, false, now)).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    for h in [
        "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
        "Content-Length: 6\r\n",
        "Connection: close\r\n",
        "Content-Type: text/plain; charset=utf-8\r\n",
    ] {
        assert!(text.contains(h), "{h:?} in {text}");
    }
    assert!(text.ends_with("\r\n\r\nhello\n"), "{text}");
    assert!(!text.contains("Allow:"));
    let head = String::from_utf8(response_bytes(&r, true, now)).unwrap();
    assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
    assert!(
        head.contains("Content-Length: 6\r\n"),
        "HEAD keeps the GET length"
    );
    let r405 = Response::text(405, "Method Not Allowed", "");
    let text = String::from_utf8(response_bytes(&r405, false, now)).unwrap();
    assert!(text.contains("Allow: GET, HEAD\r\n"), "{text}");
}

#[test]
fn dates_are_imf_fixdate() {
    let at = |s: u64| http_date(UNIX_EPOCH + Duration::from_secs(s));
    assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    // RFC 9110 §5.6.7's example.
    assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    // A leap day, and the day after.
    assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    assert_eq!(at(951_868_799), "Tue, 29 Feb 2000 23:59:59 GMT");
    assert_eq!(at(951_868_800), "Wed, 01 Mar 2000 00:00:00 GMT");
    assert_eq!(at(1_735_689_600), "Wed, 01 Jan 2025 00:00:00 GMT");
}
