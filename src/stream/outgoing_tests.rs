//! Unit tests of the outbound stream core on literal XML. Each cites the rule it proves.

use super::*;
use crate::keys::DialbackSecret;
use crate::stream::testutil::{closes_with, ctx, ctx_with, el, header, tls_ctx, SECRET};
use crate::stream::ConnectError;
use crate::xml::STANZAS_NS;
use std::sync::Arc;

fn d(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

/// b.test's answer to our header, with stream id `id`.
fn their_header(id: Option<&str>) -> StreamHeader {
    StreamHeader {
        id: id.map(str::to_string),
        ..header(Some("b.test"), Some("a.test"))
    }
}

/// A pair stream a.test→b.test, not connected yet.
fn new_pair(ctx: Arc<Ctx>) -> Outgoing {
    Outgoing::new(
        ctx,
        "t".into(),
        d("a.test"),
        d("b.test"),
        Purpose::Pair,
        false,
    )
}

/// A pair stream a.test→b.test, connected (our header sent).
fn pair_stream(ctx: Arc<Ctx>) -> Outgoing {
    let mut s = new_pair(ctx);
    s.handle(Event::Connected { tls: false });
    s
}

/// A verify stream a.test→b.test for `req`, not connected yet.
fn new_verify(req: VerifyRequest) -> Outgoing {
    Outgoing::new(
        ctx(),
        "t".into(),
        d("a.test"),
        d("b.test"),
        Purpose::Verify(req),
        false,
    )
}

/// The request to verify `key` for b.test's stream IN-1 to a.test.
fn verify_request(key: &str) -> VerifyRequest {
    VerifyRequest {
        local: d("a.test"),
        remote: d("b.test"),
        stream_id: "IN-1".into(),
        key: key.into(),
    }
}

/// Our db:result with the XEP-0185 key for b.test's stream `id`.
fn key_sent(id: &str) -> Action {
    let key = DialbackSecret::from_secret(SECRET).key("b.test", "a.test", id);
    Action::Send(el(&format!(
        "<db:result from='a.test' to='b.test'>{key}</db:result>"
    )))
}

fn features() -> Element {
    el("<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>")
}

fn msg(n: u32) -> Element {
    el(&format!(
        "<message from='bot@a.test' to='u@b.test' id='m{n}'><body>{n}</body></message>"
    ))
}

/// A pair stream a.test→b.test that has sent its db:result.
fn awaiting_result() -> (Outgoing, Vec<Action>) {
    let mut s = new_pair(ctx());
    let out = s.handle(Event::Connected { tls: false });
    let [Action::SendHeader(h)] = &out[..] else {
        panic!("{out:?}")
    };
    assert!(h.db_ns, "DB-01");
    assert_eq!(
        (h.from.as_deref(), h.to.as_deref()),
        (Some("a.test"), Some("b.test")),
        "STR-02"
    );
    assert!(s
        .handle(Event::Header(their_header(Some("ID-B"))))
        .is_empty());
    let out = s.handle(Event::Element(features()));
    (s, out)
}

fn bounced(out: &[Action]) -> Option<(usize, StanzaCondition)> {
    out.iter().find_map(|a| match a {
        Action::Bounce {
            stanzas, condition, ..
        } => Some((stanzas.len(), *condition)),
        _ => None,
    })
}

/// SEC-12: encryption is required and cannot be had: no key goes out in the clear, the one
/// queued stanza bounces with remote-server-timeout (ROUTE-02: negotiation failed) and the
/// stream closes with policy-violation.
fn refused_in_the_clear(out: &[Action]) {
    assert!(
        !out.iter().any(|a| matches!(a, Action::Send(_))),
        "no key in the clear: {out:?}"
    );
    assert_eq!(
        bounced(out),
        Some((1, StanzaCondition::RemoteServerTimeout))
    );
    assert!(
        closes_with(out, StreamCondition::PolicyViolation),
        "{out:?}"
    );
}

#[test]
fn db03_db_result_carries_the_xep0185_key_for_their_stream_id() {
    let (_, out) = awaiting_result();
    assert_eq!(out, vec![key_sent("ID-B")]);
}

#[test]
fn db05_rout01_stanzas_wait_for_valid_then_flush_in_order() {
    let mut s = new_pair(ctx());
    assert!(
        s.handle(Event::Stanza(msg(1))).is_empty(),
        "queued before connecting"
    );
    s.handle(Event::Connected { tls: false });
    s.handle(Event::Header(their_header(Some("ID-B"))));
    assert!(s.handle(Event::Stanza(msg(2))).is_empty());
    let out = s.handle(Event::Element(features()));
    assert!(
        matches!(&out[..], [Action::Send(e)] if e.name == "result"),
        "only the key goes out"
    );
    assert!(s.handle(Event::Stanza(msg(3))).is_empty());
    let out = s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test' type='valid'/>",
    )));
    assert!(matches!(&out[0], Action::Authenticated { .. }));
    assert_eq!(
        out[1..],
        [
            Action::Send(msg(1)),
            Action::Send(msg(2)),
            Action::Send(msg(3))
        ]
    );
    assert_eq!(s.handle(Event::Stanza(msg(4))), vec![Action::Send(msg(4))]);
}

#[test]
fn db07_sec01_result_for_another_pair_is_ignored() {
    let (mut s, _) = awaiting_result();
    s.handle(Event::Stanza(msg(1)));
    for bad in [
        "<db:result from='c.test' to='a.test' type='valid'/>",
        "<db:result from='b.test' to='conference.a.test' type='valid'/>",
        "<db:result from='b.test' to='a.test'/>",
        "<db:verify from='b.test' to='a.test' id='ID-B' type='valid'/>",
    ] {
        assert!(s.handle(Event::Element(el(bad))).is_empty(), "{bad}");
        assert!(!s.is_established());
    }
    assert_eq!(s.queued(), 1);
}

#[test]
fn db04_valid_may_arrive_without_any_verify_round_trip() {
    let (mut s, _) = awaiting_result();
    let out = s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test' type='valid'/>",
    )));
    assert!(matches!(&out[..], [Action::Authenticated { .. }]));
    assert!(s.is_established());
}

#[test]
fn db08_invalid_bounces_queue_with_internal_server_error() {
    let (mut s, _) = awaiting_result();
    s.handle(Event::Stanza(msg(1)));
    s.handle(Event::Stanza(msg(2)));
    let out = s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test' type='invalid'/>",
    )));
    assert_eq!(
        bounced(&out),
        Some((2, StanzaCondition::InternalServerError))
    );
    assert_eq!(out.last(), Some(&Action::Close(None)));
}

#[test]
fn db09_error_bounces_queue_with_remote_server_timeout() {
    let (mut s, _) = awaiting_result();
    s.handle(Event::Stanza(msg(1)));
    let out = s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test' type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>",
    )));
    assert_eq!(
        bounced(&out),
        Some((1, StanzaCondition::RemoteServerTimeout))
    );
}

#[test]
fn db06_peer_closing_mid_dialback_bounces() {
    for ev in [
        Event::Close,
        Event::Broken {
            condition: None,
            reason: "EOF".into(),
        },
        Event::Timeout,
    ] {
        let (mut s, _) = awaiting_result();
        s.handle(Event::Stanza(msg(1)));
        let out = s.handle(ev);
        assert_eq!(
            bounced(&out),
            Some((1, StanzaCondition::RemoteServerTimeout))
        );
        assert!(s.is_closed());
    }
}

#[test]
fn route02_resolution_failure_is_remote_server_not_found() {
    let mut s = Outgoing::new(
        ctx(),
        "t".into(),
        d("a.test"),
        d("nosuch.test"),
        Purpose::Pair,
        false,
    );
    s.handle(Event::Stanza(msg(1)));
    let out = s.handle(Event::ConnectFailed(ConnectError::NotFound(
        "NXDOMAIN".into(),
    )));
    assert_eq!(
        bounced(&out),
        Some((1, StanzaCondition::RemoteServerNotFound))
    );
    let mut s = new_pair(ctx());
    s.handle(Event::Stanza(msg(1)));
    let out = s.handle(Event::ConnectFailed(ConnectError::Unreachable(
        "refused".into(),
    )));
    assert_eq!(
        bounced(&out),
        Some((1, StanzaCondition::RemoteServerTimeout))
    );
}

#[test]
fn closed_route_hands_stanzas_back_to_the_router() {
    let (mut s, _) = awaiting_result();
    s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test' type='valid'/>",
    )));
    s.handle(Event::Idle);
    assert_eq!(
        s.handle(Event::Stanza(msg(9))),
        vec![Action::Deliver(msg(9))]
    );
}

#[test]
fn queue_cap_bounces_resource_constraint() {
    let ctx = ctx_with(|c| c.limits.queue = 2);
    let mut s = new_pair(ctx);
    s.handle(Event::Stanza(msg(1)));
    s.handle(Event::Stanza(msg(2)));
    let out = s.handle(Event::Stanza(msg(3)));
    assert_eq!(
        bounced(&out),
        Some((1, StanzaCondition::ResourceConstraint))
    );
    assert_eq!(s.queued(), 2);
}

#[test]
fn str03_header_without_id_fails() {
    let mut s = pair_stream(ctx());
    s.handle(Event::Stanza(msg(1)));
    let out = s.handle(Event::Header(their_header(None)));
    assert_eq!(
        bounced(&out),
        Some((1, StanzaCondition::RemoteServerTimeout))
    );
}

#[test]
fn tls01_starttls_when_offered_and_restart_after_proceed() {
    let ctx = tls_ctx(false);
    let mut s = pair_stream(ctx);
    s.handle(Event::Header(their_header(Some("ID-1"))));
    let out = s.handle(Event::Element(el(
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
    )));
    assert_eq!(out, vec![Action::Send(Element::new("starttls", TLS_NS))]);
    assert_eq!(
        s.handle(Event::Element(el(
            "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
        ))),
        vec![Action::StartTls]
    );
    let out = s.handle(Event::TlsEstablished);
    assert!(matches!(&out[..], [Action::SendHeader(_)]));
    s.handle(Event::Header(their_header(Some("ID-2"))));
    let out = s.handle(Event::Element(features()));
    assert_eq!(out, vec![key_sent("ID-2")]);
}

#[test]
fn sec12_stripped_starttls_with_required_encryption_sends_nothing() {
    let mut s = pair_stream(tls_ctx(true));
    s.handle(Event::Stanza(msg(1)));
    s.handle(Event::Header(their_header(Some("ID-1"))));
    let out = s.handle(Event::Element(features()));
    refused_in_the_clear(&out);
}

fn verify_stream() -> Outgoing {
    let req = verify_request("k3y");
    let mut s = new_verify(req);
    s.handle(Event::Connected { tls: false });
    s.handle(Event::Header(their_header(Some("ID-B"))));
    let out = s.handle(Event::Element(features()));
    assert_eq!(
        out,
        vec![Action::Send(el(
            "<db:verify from='a.test' to='b.test' id='IN-1'>k3y</db:verify>"
        ))],
        "DB-10"
    );
    s
}

#[test]
fn db11_db14_verify_answer_must_match_and_then_the_connection_closes() {
    let mut s = verify_stream();
    for bad in [
        "<db:verify from='b.test' to='a.test' id='OTHER' type='valid'/>",
        "<db:verify from='c.test' to='a.test' id='IN-1' type='valid'/>",
        "<db:result from='b.test' to='a.test' type='valid'/>",
    ] {
        assert!(s.handle(Event::Element(el(bad))).is_empty(), "{bad}");
    }
    let out = s.handle(Event::Element(el(
        "<db:verify from='b.test' to='a.test' id='IN-1' type='invalid'/>",
    )));
    assert_eq!(
        out,
        vec![Action::VerifyDone(Verdict::Invalid), Action::Close(None)]
    );
}

#[test]
fn db27_authoritative_error_becomes_remote_server_not_found() {
    let mut s = verify_stream();
    let out = s.handle(Event::Element(el(
        "<db:verify from='b.test' to='a.test' id='IN-1' type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:verify>",
    )));
    assert_eq!(
        out[0],
        Action::VerifyDone(Verdict::Error(StanzaCondition::RemoteServerNotFound))
    );
}

/// ERR-04, XEP-0220 §2.5: an Authoritative Server we could not ask is `remote-connection-failed`,
/// whatever the reason (DNS, refused, guard, closed, stream error, timeout, broken transport): the
/// claimant chooses where we connect and must not learn what is listening there (issue 8).
#[test]
fn db13_every_verify_connection_failure_is_remote_connection_failed() {
    let req = verify_request("k");
    let mk = || new_verify(req.clone());
    let failed = Action::VerifyDone(Verdict::Error(StanzaCondition::RemoteConnectionFailed));
    let reason = "NXDOMAIN, refused or not dialled".to_string();
    for why in [
        ConnectError::NotFound(reason.clone()),
        ConnectError::Unreachable(reason),
    ] {
        let out = mk().handle(Event::ConnectFailed(why.clone()));
        assert_eq!(out[0], failed, "{why:?}");
    }
    let after_connect: Vec<Event> = vec![
        Event::Close,
        Event::Element(el(
            "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
        )),
        Event::Element(el(
            "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
        )),
        Event::Timeout,
        Event::Broken {
            condition: Some(StreamCondition::NotWellFormed),
            reason: "an SSH banner".into(),
        },
        Event::Broken {
            condition: None,
            reason: "EOF".into(),
        },
    ];
    for ev in after_connect {
        let what = format!("{ev:?}");
        let mut s = verify_stream();
        let out = s.handle(ev);
        assert_eq!(out[0], failed, "{what}");
    }
    // A stream header that is not jabber:server (some other protocol that speaks XML).
    let mut s = mk();
    let _ = s.handle(Event::Connected { tls: false });
    let mut h = their_header(Some("X"));
    h.default_ns = Some("jabber:client".into());
    let out = s.handle(Event::Header(h));
    assert_eq!(out[0], failed);
}

#[test]
fn dialback_error_condition_is_read() {
    let e = el("<db:result from='b.test' to='a.test' type='error'><error type='cancel'><remote-connection-failed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>");
    assert_eq!(
        Verdict::of(&e),
        Some(Verdict::Error(StanzaCondition::RemoteConnectionFailed))
    );
    let _ = STANZAS_NS;
}

#[test]
fn dtls02_direct_tls_never_starttls_and_satisfies_required_encryption() {
    let ctx = tls_ctx(true);
    let mut s = new_pair(ctx);
    s.handle(Event::Connected { tls: true });
    s.handle(Event::Header(their_header(Some("ID-1"))));
    // Even if the features (wrongly) offer STARTTLS, we are already encrypted: dialback now.
    let out = s.handle(Event::Element(el(
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
    )));
    assert!(
        matches!(&out[..], [Action::Send(e)] if e.name == "result"),
        "{out:?}"
    );
}

/// DB-05 with `limits.queue_bytes`: the pair's queue is bounded in bytes, not only in stanzas;
/// overflow bounces with resource-constraint (ROUTE-02 keeps errors out of it: the router never
/// bounces error stanzas), the accounting follows the queue and is released when it is flushed
/// or bounced.
#[test]
fn db05_queue_is_capped_in_bytes_and_released_on_flush_and_failure() {
    let body = "y".repeat(900);
    let big = |n: u32| {
        el(&format!(
            "<message from='bot@a.test' to='u@b.test' id='b{n}'><body>{body}</body></message>"
        ))
    };
    let one = crate::stanza::wire_size(&big(0));
    let ctx = ctx_with(|c| c.limits.queue_bytes = 3 * one);
    let new = || new_pair(ctx.clone());
    let mut s = new();
    for n in 0..3 {
        assert!(s.handle(Event::Stanza(big(n))).is_empty());
    }
    assert_eq!(s.queued_bytes(), 3 * one);
    let out = s.handle(Event::Stanza(big(3)));
    assert_eq!(
        bounced(&out),
        Some((1, StanzaCondition::ResourceConstraint))
    );
    assert_eq!((s.queued(), s.queued_bytes()), (3, 3 * one));
    // Valid: everything goes out and nothing is held any more.
    s.handle(Event::Connected { tls: false });
    s.handle(Event::Header(their_header(Some("ID-B"))));
    s.handle(Event::Element(features()));
    let out = s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test' type='valid'/>",
    )));
    assert_eq!(
        out.iter()
            .filter(|a| matches!(a, Action::Send(e) if e.name == "message"))
            .count(),
        3
    );
    assert_eq!(s.queued_bytes(), 0);
    // A failed pair releases its bytes with the bounce.
    let mut s = new();
    s.handle(Event::Stanza(big(0)));
    s.handle(Event::Stanza(big(1)));
    let out = s.handle(Event::ConnectFailed(ConnectError::Unreachable(
        "refused".into(),
    )));
    assert_eq!(
        bounced(&out),
        Some((2, StanzaCondition::RemoteServerTimeout))
    );
    assert_eq!(s.queued_bytes(), 0);
    // One stanza larger than the whole cap is still taken when nothing is queued.
    let ctx = ctx_with(|c| c.limits.queue_bytes = 10);
    let mut s = new_pair(ctx);
    assert!(s.handle(Event::Stanza(big(0))).is_empty());
    assert_eq!(
        bounced(&s.handle(Event::Stanza(msg(1)))),
        Some((1, StanzaCondition::ResourceConstraint))
    );
}

/// The header of a pre-1.0 peer: no `version`, no `from`, no `to`, only an id.
fn legacy_header(id: &str) -> StreamHeader {
    StreamHeader {
        from: None,
        to: None,
        version: None,
        ..their_header(Some(id))
    }
}

/// STR-01, DB-25, RFC 6120 §4.7.5: a peer answering without `version` sends no features;
/// the key goes out at once (for the id of its header), and valid flushes the queue.
#[test]
fn str01_db25_pre_1_0_answer_gets_the_key_without_waiting_for_features() {
    let mut s = pair_stream(ctx());
    s.handle(Event::Stanza(msg(1)));
    let out = s.handle(Event::Header(legacy_header("OLD-1")));
    assert_eq!(out, vec![key_sent("OLD-1")]);
    let out = s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test' type='valid'/>",
    )));
    assert!(s.is_established());
    assert_eq!(out.last(), Some(&Action::Send(msg(1))));
    // The same for an explicit version below 1.0.
    let mut s = pair_stream(ctx());
    let mut h = legacy_header("OLD-2");
    h.version = Some("0.9".into());
    let out = s.handle(Event::Header(h));
    assert!(
        matches!(&out[..], [Action::Send(r)] if r.name == "result"),
        "{out:?}"
    );
}

/// DB-11 on a pre-1.0 Authoritative Server: the db:verify goes out without features.
#[test]
fn db11_pre_1_0_verify_connection_sends_db_verify_at_once() {
    let req = verify_request("k3y");
    let mut s = new_verify(req);
    s.handle(Event::Connected { tls: false });
    let out = s.handle(Event::Header(legacy_header("AS-1")));
    assert_eq!(
        out,
        vec![Action::Send(el(
            "<db:verify from='a.test' to='b.test' id='IN-1'>k3y</db:verify>"
        ))]
    );
    let out = s.handle(Event::Element(el(
        "<db:verify from='b.test' to='a.test' id='IN-1' type='valid'/>",
    )));
    assert_eq!(out[0], Action::VerifyDone(Verdict::Valid));
}

/// SEC-12 with a pre-1.0 peer: it can offer no STARTTLS, so when our policy requires
/// encryption for it nothing is sent in the clear, the queue bounces with
/// remote-server-timeout (ROUTE-02: negotiation failed) and the stream closes with
/// policy-violation.
#[test]
fn sec12_pre_1_0_answer_with_encryption_required_fails_cleanly() {
    let mut s = pair_stream(tls_ctx(true));
    s.handle(Event::Stanza(msg(1)));
    let out = s.handle(Event::Header(legacy_header("OLD-1")));
    refused_in_the_clear(&out);
    assert!(s.is_closed());
}

/// RFC 6120 §4.7.5: an answer whose version is not major.minor ends the attempt.
#[test]
fn str01_unparsable_version_in_the_answer_is_unsupported_version() {
    let mut s = pair_stream(ctx());
    s.handle(Event::Stanza(msg(1)));
    let mut h = their_header(Some("ID-B"));
    h.version = Some("one".into());
    let out = s.handle(Event::Header(h));
    assert_eq!(
        bounced(&out),
        Some((1, StanzaCondition::RemoteServerTimeout))
    );
    assert!(
        closes_with(&out, StreamCondition::UnsupportedVersion),
        "{out:?}"
    );
}

/// Bounded echo: the text of a peer's stream error reaches our bounces cut short.
#[test]
fn peer_stream_error_text_in_bounces_is_bounded() {
    let mut s = pair_stream(ctx());
    s.handle(Event::Stanza(msg(1)));
    let long = "y".repeat(30_000);
    let out = s.handle(Event::Element(el(&format!(
        "<stream:error><undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{long}</text></stream:error>"
    ))));
    let text = out
        .iter()
        .find_map(|a| match a {
            Action::Bounce { text, .. } => Some(text.clone()),
            _ => None,
        })
        .expect("a bounce");
    assert!(text.chars().count() <= 256, "{} chars", text.len());
}

/// TLS-01 (RFC 6120 §5.4.3.3), SEC-01: a verdict slipped in on the insecure stream before
/// `<proceed/>` counts for nothing: after the restart the pair is not established, and the
/// key goes out for the id of the header that follows TLS.
#[test]
fn tls01_nothing_learned_before_tls_counts_after_the_restart() {
    let ctx = tls_ctx(false);
    let mut s = pair_stream(ctx);
    s.handle(Event::Stanza(msg(1)));
    s.handle(Event::Header(their_header(Some("ID-1"))));
    s.handle(Event::Element(el(
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>",
    )));
    let out = s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test' type='valid'/>",
    )));
    assert!(out.is_empty(), "{out:?}");
    s.handle(Event::Element(el(
        "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    )));
    s.handle(Event::TlsEstablished);
    assert!(!s.is_established());
    assert_eq!(s.queued(), 1, "nothing flushed");
    s.handle(Event::Header(their_header(Some("ID-2"))));
    let out = s.handle(Event::Element(features()));
    assert_eq!(out, vec![key_sent("ID-2")]);
}

/// The peer's features with an XEP-0478 `<limits/>` whose children are `inner`.
fn features_with_limits(inner: &str) -> Element {
    el(&format!(
        "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>\
         <limits xmlns='urn:xmpp:stream-limits:0'>{inner}</limits></stream:features>"
    ))
}

/// XEP-0478: the peer's `max-bytes` and `idle-seconds` are read from its features; a missing,
/// unreadable, zero or overflowing value is no limit, never an error.
#[test]
fn xep0478_peer_limits_are_read_and_bad_values_ignored() {
    let secs = |n| Some(Duration::from_secs(n));
    let cases: [(&str, Option<usize>, Option<Duration>); 9] = [
        (
            "<max-bytes>10000</max-bytes><idle-seconds>840</idle-seconds>",
            Some(10000),
            secs(840),
        ),
        (" <max-bytes> 4096 </max-bytes> ", Some(4096), None),
        ("<idle-seconds>60</idle-seconds>", None, secs(60)),
        ("", None, None),
        (
            "<max-bytes>lots</max-bytes><idle-seconds>-5</idle-seconds>",
            None,
            None,
        ),
        (
            "<max-bytes>0</max-bytes><idle-seconds>0</idle-seconds>",
            None,
            None,
        ),
        (
            "<max-bytes>99999999999999999999999</max-bytes><idle-seconds>1e3</idle-seconds>",
            None,
            None,
        ),
        ("<max-bytes><b>5</b></max-bytes>", None, None),
        ("<max-bytes xmlns='urn:example'>5</max-bytes>", None, None),
    ];
    for (inner, bytes, idle) in cases {
        let mut s = pair_stream(ctx());
        s.handle(Event::Header(their_header(Some("ID-B"))));
        let out = s.handle(Event::Element(features_with_limits(inner)));
        assert_eq!(out, vec![key_sent("ID-B")], "{inner}: dialback goes on");
        assert_eq!(s.peer_max_bytes(), bytes, "{inner}");
        assert_eq!(s.peer_idle_limit(), idle, "{inner}");
    }
    // No <limits/> at all.
    let (s, _) = awaiting_result();
    assert_eq!((s.peer_max_bytes(), s.peer_idle_limit()), (None, None));
}

/// XEP-0478: a stanza larger than the peer's `max-bytes` once written is not sent but bounced
/// to its sender with policy-violation, whether it was queued before `valid` or arrives
/// after; one of exactly `max-bytes` goes out.
#[test]
fn xep0478_stanza_over_the_peers_max_bytes_bounces_with_policy_violation() {
    let small = msg(1);
    let wire = "<message from='bot@a.test' to='u@b.test' id='m1'><body>1</body></message>";
    assert_eq!(small.to_bytes(), wire.as_bytes(), "measured as written");
    let max = wire.len();
    let big = || {
        el(&format!(
            "<message from='bot@a.test' to='u@b.test' id='m2'><body>{}</body></message>",
            "x".repeat(max)
        ))
    };
    // One byte over: the same stanza with one more character in an attribute.
    let over = el("<message from='bot@a.test' to='u@b.test' id='m12'><body>1</body></message>");
    assert_eq!(over.to_bytes().len(), max + 1);

    let mut s = pair_stream(ctx());
    s.handle(Event::Stanza(big()));
    s.handle(Event::Stanza(small.clone()));
    s.handle(Event::Header(their_header(Some("ID-B"))));
    s.handle(Event::Element(features_with_limits(&format!(
        "<max-bytes>{max}</max-bytes>"
    ))));
    let out = s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test' type='valid'/>",
    )));
    assert!(matches!(&out[0], Action::Authenticated { .. }), "{out:?}");
    assert_eq!(
        out[2],
        Action::Send(small.clone()),
        "exactly max-bytes is sent"
    );
    let Action::Bounce {
        stanzas, condition, ..
    } = &out[1]
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        (stanzas, *condition),
        (&vec![big()], StanzaCondition::PolicyViolation)
    );
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(s.queued_bytes(), 0);

    // Established: the same rule, stanza by stanza.
    let out = s.handle(Event::Stanza(over.clone()));
    assert_eq!(
        out,
        vec![Action::Bounce {
            stanzas: vec![over],
            condition: StanzaCondition::PolicyViolation,
            text: format!("larger than the {max} bytes b.test accepts"),
        }]
    );
    assert_eq!(
        s.handle(Event::Stanza(small.clone())),
        vec![Action::Send(small)]
    );
}

/// XEP-0478, TLS-01: the features after STARTTLS say what holds; limits advertised on the
/// insecure stream do not carry over.
#[test]
fn xep0478_tls01_limits_after_starttls_replace_the_earlier_ones() {
    let mut s = pair_stream(tls_ctx(false));
    s.handle(Event::Header(their_header(Some("ID-1"))));
    s.handle(Event::Element(el(
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
         <limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>100</max-bytes>\
         <idle-seconds>30</idle-seconds></limits></stream:features>",
    )));
    assert_eq!(s.peer_max_bytes(), Some(100));
    s.handle(Event::Element(el(
        "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    )));
    s.handle(Event::TlsEstablished);
    s.handle(Event::Header(their_header(Some("ID-2"))));
    let out = s.handle(Event::Element(features_with_limits(
        "<max-bytes>20000</max-bytes>",
    )));
    assert_eq!(out, vec![key_sent("ID-2")]);
    assert_eq!(
        (s.peer_max_bytes(), s.peer_idle_limit()),
        (Some(20000), None)
    );
}
