//! The listener's answers over a router with streams in it, without sockets.

use super::*;
use crate::dns::Resolver;
use crate::domain::Domain;
use crate::stream::testutil;
use crate::xml::Element;

fn router() -> Arc<Router> {
    Router::new(
        testutil::ctx(),
        Resolver::new(Vec::new(), Duration::from_secs(1)),
        None,
    )
}

fn req(method: Method, path: &str) -> Request {
    Request {
        method,
        path: path.into(),
    }
}

fn d(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

/// An inbound stream from 192.0.2.7, open, b.test→a.test verified (by SASL EXTERNAL) and
/// c.test→a.test being verified, over TLS, bidi, with one stanza waiting in its inbox.
fn open_inbound(r: &Router) -> Handle {
    let h = r.new_handle(crate::inbox::StreamKind::Server, 10).unwrap();
    h.info().update(|det| {
        det.direction = Direction::S2sIn;
        det.state = StreamState::Open;
        det.peer = Some("192.0.2.7:40000".parse().unwrap());
        det.tls = Some("TLSv1.3".into());
        det.bidi = true;
        det.pairs = vec![
            Pair {
                from: d("b.test"),
                to: d("a.test"),
                verified: true,
                external: true,
            },
            Pair {
                from: d("c.test"),
                to: d("a.test"),
                verified: false,
                external: false,
            },
        ];
    });
    let m = Element::new("message", "jabber:server")
        .with_attr("from", "u@a.test")
        .with_attr("to", "v@b.test");
    h.send_stanza(m).unwrap();
    r.add_stream(h.clone());
    h
}

#[test]
fn unknown_paths_are_404_and_other_methods_405() {
    let r = router();
    assert_eq!(respond(&r, &req(Method::Get, "/")).status, 404);
    assert_eq!(respond(&r, &req(Method::Get, "/metrics/x")).status, 404);
    assert_eq!(respond(&r, &req(Method::Other, "/nope")).status, 404);
    assert_eq!(respond(&r, &req(Method::Other, "/metrics")).status, 405);
    assert_eq!(respond(&r, &req(Method::Other, "/status")).status, 405);
    let head = respond(&r, &req(Method::Head, "/metrics"));
    assert_eq!((head.status, head.content_type), (200, OPENMETRICS));
}

#[test]
fn metrics_count_the_live_streams_and_their_inboxes() {
    let r = router();
    let h = open_inbound(&r);
    let resp = respond(&r, &req(Method::Get, "/metrics"));
    assert_eq!((resp.status, resp.content_type), (200, OPENMETRICS));
    let body = &resp.body;
    assert!(
        body.contains("\ndialbackd_streams{direction=\"s2s_in\",state=\"open\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("\ndialbackd_streams{direction=\"s2s_out\",state=\"open\"} 0\n"),
        "{body}"
    );
    assert!(body.contains("\ndialbackd_inbox_stanzas 1\n"), "{body}");
    assert!(body.ends_with("# EOF\n"));
    // No label carries a domain or an address.
    assert!(
        !body.contains("b.test") && !body.contains("192.0.2.7"),
        "{body}"
    );
    r.remove_stream(h.id());
    let body = respond(&r, &req(Method::Get, "/metrics")).body;
    assert!(body.contains("\ndialbackd_streams{direction=\"s2s_in\",state=\"open\"} 0\n"));
}

#[test]
fn status_lists_each_stream_on_a_line_the_client_reads() {
    let r = router();
    let h = open_inbound(&r);
    let resp = respond(&r, &req(Method::Get, "/status"));
    assert_eq!((resp.status, resp.content_type), (200, STATUS_TYPE));
    let lines: Vec<&str> = resp.body.lines().collect();
    assert_eq!(lines[0], STATUS_MAGIC);
    assert_eq!(lines[1], COLUMNS.join("\t"));
    let f: Vec<&str> = lines[2].split('\t').collect();
    assert_eq!(f.len(), COLUMNS.len(), "{:?}", lines[2]);
    assert_eq!(f[0], h.id().to_string());
    assert_eq!(
        (f[1], f[2], f[3], f[4], f[7], f[8]),
        (
            "s2s_in",
            "open",
            "192.0.2.7:40000",
            "TLSv1.3",
            "1",
            "b.test→a.test c.test→a.test?"
        )
    );
    // SASL-01, BIDI-02: how the pairs were authenticated, and bidi, after the old columns.
    assert_eq!((f[9], f[10]), ("external", "yes"));
    let table = client::table(&resp.body).unwrap();
    assert!(
        table.contains("external  yes   b.test → a.test, c.test → a.test (verifying)"),
        "{table}"
    );
    assert!(table.ends_with("1 stream\n"), "{table}");
}

#[test]
fn auth_names_how_the_verified_pairs_were_authenticated() {
    let p = |verified, external| Pair {
        from: d("b.test"),
        to: d("a.test"),
        verified,
        external,
    };
    let detail = |direction, pairs| Detail {
        direction,
        state: StreamState::Open,
        peer: None,
        pairs,
        tls: None,
        bidi: false,
    };
    let cases = [
        (
            Direction::S2sIn,
            vec![p(true, true), p(true, false)],
            "external,dialback",
        ),
        (
            Direction::S2sOut,
            vec![p(true, false), p(false, false)],
            "dialback",
        ),
        (Direction::S2sOut, vec![p(true, true)], "external"),
        // Nothing verified yet: nothing to say.
        (Direction::S2sIn, vec![p(false, false)], "-"),
        (Direction::Verify, vec![p(false, false)], "-"),
        // A component authenticates by its handshake.
        (Direction::Component, vec![p(true, false)], "-"),
    ];
    for (direction, pairs, want) in cases {
        let det = detail(direction, pairs);
        assert_eq!(auth(&det), want, "{det:?}");
    }
}
