//! Unit tests of the inbound stream core on literal XML. Each cites the rule it proves.

use super::*;
use crate::keys::DialbackSecret;
use crate::stream::testutil::{closes_with, ctx, ctx_with, el, header, ids, tls_ctx, SECRET};
use std::sync::Arc;

fn d(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

/// A new inbound stream in `ctx`.
fn incoming_with(ctx: Arc<Ctx>) -> Incoming {
    Incoming::new(ctx, "t".into(), ids(), false)
}

fn incoming() -> Incoming {
    incoming_with(ctx())
}

/// A stream from b.test to a.test past the header, in `ctx`.
fn opened_with(ctx: Arc<Ctx>) -> Incoming {
    let mut s = incoming_with(ctx);
    s.handle(Event::Header(header(Some("b.test"), Some("a.test"))));
    s
}

/// A stream from b.test to a.test past the header.
fn opened() -> Incoming {
    opened_with(ctx())
}

/// The peer's db:result claiming `from` towards `to` (with a key the tests never check).
fn claim(from: &str, to: &str) -> Event {
    Event::Element(el(&format!(
        "<db:result from='{from}' to='{to}'>k</db:result>"
    )))
}

/// The XEP-0185 key for b.test→a.test on stream `id`, with the test context's secret.
fn key_for(id: &str) -> String {
    DialbackSecret::from_secret(SECRET).key("b.test", "a.test", id)
}

/// b.test asking us, a.test's Authoritative Server, to verify `key` for its stream `id`.
fn db_verify(id: &str, key: &str) -> Event {
    Event::Element(el(&format!(
        "<db:verify from='b.test' to='a.test' id='{id}'>{key}</db:verify>"
    )))
}

/// The verdict on the pair `remote`→`local`, as the verify connection reports it.
fn verified_as(remote: &str, local: &str, verdict: Verdict) -> Event {
    Event::Verified {
        remote: d(remote),
        local: d(local),
        verdict,
    }
}

/// A stream with b.test→a.test verified.
fn verified() -> Incoming {
    let mut s = opened();
    s.handle(claim("b.test", "a.test"));
    s.handle(verified_as("b.test", "a.test", Verdict::Valid));
    assert!(s.is_authenticated());
    s
}

/// The one element `out` sends, checked to be a dialback error (DB-27) with `condition`.
fn sent_dialback_error(out: &[Action], condition: StanzaCondition) -> &Element {
    let [Action::Send(r)] = out else {
        panic!("{out:?}")
    };
    assert!(
        matches!(Verdict::of(r), Some(Verdict::Error(c)) if c == condition),
        "expected a dialback error {condition}: {r:?}"
    );
    assert!(r.child("error", SERVER_NS).is_some());
    r
}

#[test]
fn db01_db26_header_answered_with_id_and_dialback_errors_feature() {
    let mut s = incoming();
    let out = s.handle(Event::Header(header(Some("b.test"), Some("a.test"))));
    let [Action::SendHeader(h), Action::Send(f)] = &out[..] else {
        panic!("{out:?}")
    };
    assert!(h.db_ns, "DB-01: xmlns:db on every s2s header");
    assert_eq!(h.from.as_deref(), Some("a.test"));
    assert_eq!(h.to.as_deref(), Some("b.test"));
    assert_eq!(h.id.as_deref(), Some("id1"));
    assert_eq!(h.version.as_deref(), Some("1.0"));
    let db = f
        .child("dialback", DIALBACK_FEATURE_NS)
        .expect("DB-26 dialback feature");
    assert!(db.child("errors", DIALBACK_FEATURE_NS).is_some());
    assert!(
        f.child("starttls", TLS_NS).is_none(),
        "no TLS configured, none offered"
    );
}

#[test]
fn err03_header_for_unhosted_domain_is_host_unknown() {
    let mut s = incoming();
    let out = s.handle(Event::Header(header(Some("b.test"), Some("nosuch.test"))));
    assert!(
        matches!(&out[0], Action::SendHeader(_)),
        "ERR-01: header first"
    );
    assert!(closes_with(&out, StreamCondition::HostUnknown));
}

#[test]
fn str07_wrong_content_namespace_is_invalid_namespace() {
    let mut s = incoming();
    let mut h = header(Some("b.test"), Some("a.test"));
    h.default_ns = Some("jabber:client".into());
    let out = s.handle(Event::Header(h));
    assert!(matches!(&out[0], Action::SendHeader(_)));
    assert!(closes_with(&out, StreamCondition::InvalidNamespace));
}

/// A peer header with `version` set to `v` (`None`: no attribute).
fn header_version(v: Option<&str>) -> StreamHeader {
    let mut h = header(Some("b.test"), Some("a.test"));
    h.version = v.map(str::to_string);
    h
}

/// STR-01, RFC 6120 §4.7.5: a higher version is answered with ours (1.0), numerically
/// compared, and the stream goes on with features; the initiator decides.
#[test]
fn str01_higher_version_is_answered_with_ours() {
    for v in ["2.0", "1.5", "1.10", "01.00", "99999999999.0"] {
        let mut s = incoming();
        let out = s.handle(Event::Header(header_version(Some(v))));
        let [Action::SendHeader(h), Action::Send(f)] = &out[..] else {
            panic!("{v}: {out:?}")
        };
        assert_eq!(h.version.as_deref(), Some("1.0"), "{v}");
        assert!(f.is("features", STREAM_NS), "{v}");
    }
}

/// STR-01, RFC 6120 §4.7.5: only a version that is not major.minor is refused, with our
/// header first (ERR-01) and the bad value bounded in the text.
#[test]
fn str01_unparsable_version_is_unsupported_version_after_our_header() {
    let long = "9".repeat(5000) + "x";
    for v in [
        "",
        "1",
        "abc",
        "1.x",
        "-1.0",
        "1.0.0",
        " 1.0",
        long.as_str(),
    ] {
        let mut s = incoming();
        let out = s.handle(Event::Header(header_version(Some(v))));
        assert!(
            matches!(&out[..], [Action::SendHeader(_), Action::Close(Some(e))]
                if e.condition == StreamCondition::UnsupportedVersion
                    && e.text.as_ref().unwrap().chars().count() < 128),
            "{v:?}: {out:?}"
        );
    }
}

/// STR-01, DB-25, RFC 6120 §4.7.5: a header without `version`, `from` and `to` (a pre-1.0
/// server) is answered with a header without version and without features, and dialback
/// runs on it as on a 1.0 stream: db:result, callback, valid, stanzas.
#[test]
fn str01_db25_pre_1_0_stream_runs_dialback_without_features() {
    let mut s = incoming();
    let mut h = header_version(None);
    h.from = None;
    h.to = None;
    let out = s.handle(Event::Header(h));
    let [Action::SendHeader(ours)] = &out[..] else {
        panic!("only a header, no features: {out:?}")
    };
    assert_eq!(
        ours.version, None,
        "RFC 6120 §4.7.5: no version in the answer"
    );
    assert_eq!(ours.id.as_deref(), Some("id1"));
    assert!(ours.db_ns, "DB-01");
    assert!(s.is_legacy());
    assert_eq!(s.named_local(), None);
    let out = s.handle(claim("b.test", "a.test"));
    assert!(
        matches!(&out[..], [Action::Verify(v)] if v.stream_id == "id1" && v.remote == d("b.test"))
    );
    let out = s.handle(verified_as("b.test", "a.test", Verdict::Valid));
    assert_eq!(
        out[0],
        Action::Send(el("<db:result from='a.test' to='b.test' type='valid'/>"))
    );
    let m = el("<message from='u@b.test' to='v@a.test'/>");
    assert_eq!(
        s.handle(Event::Element(m.clone())),
        vec![Action::Deliver(m)]
    );
    // DB-23: the Authoritative role works on it too (a pre-1.0 verify connection).
    let mut s = incoming();
    s.handle(Event::Header(header_version(None)));
    let key = key_for("S1");
    let out = s.handle(db_verify("S1", &key));
    assert_eq!(
        out,
        vec![Action::Send(el(
            "<db:verify from='a.test' to='b.test' id='S1' type='valid'/>"
        ))]
    );
}

/// RFC 6120 §4.7.5: an explicit version below 1.0 is answered with that version (the lower
/// of the two) and is a pre-1.0 stream: no features, no STARTTLS even when TLS is available.
#[test]
fn str01_version_0_9_is_answered_0_9_without_features_or_starttls() {
    let ctx = tls_ctx(false);
    let mut s = incoming_with(ctx);
    let out = s.handle(Event::Header(header_version(Some("0.9"))));
    assert!(
        matches!(&out[..], [Action::SendHeader(h)] if h.version.as_deref() == Some("0.9")),
        "{out:?}"
    );
    let out = s.handle(Event::Element(el(
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    )));
    assert!(
        !out.contains(&Action::StartTls),
        "STARTTLS was never offered: {out:?}"
    );
}

/// SEC-12 on a pre-1.0 stream: with encryption required for the claimed domain, the db:result
/// gets the `policy-violation` dialback error (XEP-0220 §2.5) without any callback, and since
/// such a stream cannot negotiate STARTTLS it is closed with the `policy-violation` stream
/// error (RFC 6120 §4.9.3.14), as Prosody does. A peer exempted by its own policy goes on.
#[test]
fn sec12_pre_1_0_stream_refused_when_encryption_required_unless_the_peer_is_exempt() {
    let ctx = ctx_with(|c| {
        c.tls.enabled = true;
        c.tls.require_encryption = true;
        c.tls.peers.insert(
            d("old.test"),
            crate::config::PeerPolicy {
                require_encryption: Some(false),
                ..Default::default()
            },
        );
    });
    let mut s = incoming_with(ctx.clone());
    s.handle(Event::Header(header_version(None)));
    let out = s.handle(claim("b.test", "a.test"));
    assert!(
        !out.iter().any(|a| matches!(a, Action::Verify(_))),
        "{out:?}"
    );
    sent_dialback_error(&out[..1], StanzaCondition::PolicyViolation);
    assert!(
        closes_with(&out, StreamCondition::PolicyViolation),
        "{out:?}"
    );
    // The Authoritative role is refused the same way.
    let mut s = incoming_with(ctx.clone());
    s.handle(Event::Header(header_version(None)));
    let out = s.handle(Event::Element(el(
        "<db:verify from='b.test' to='a.test' id='S1'>k</db:verify>",
    )));
    sent_dialback_error(&out[..1], StanzaCondition::PolicyViolation);
    assert!(
        closes_with(&out, StreamCondition::PolicyViolation),
        "{out:?}"
    );
    // The exempt peer: dialback in the clear, as configured.
    let mut s = incoming_with(ctx);
    s.handle(Event::Header(header_version(None)));
    let out = s.handle(claim("old.test", "a.test"));
    assert!(matches!(&out[..], [Action::Verify(_)]), "{out:?}");
}

/// ERR-01 (RFC 6120 §4.9.1.1): the negotiation timeout and shutdown before the peer's header
/// is complete: our header still precedes our error. Once a header went out, none is repeated.
#[test]
fn err01_timeout_and_shutdown_before_the_header_send_ours_first() {
    for (ev, cond) in [
        (Event::Timeout, StreamCondition::ConnectionTimeout),
        (Event::Shutdown, StreamCondition::SystemShutdown),
    ] {
        let mut s = incoming();
        let out = s.handle(ev);
        let [Action::SendHeader(h), Action::Close(Some(e))] = &out[..] else {
            panic!("{cond}: {out:?}")
        };
        assert_eq!(e.condition, cond);
        assert_eq!(h.from.as_deref(), Some("a.test"));
        assert!(h.id.is_some(), "STR-03");
    }
    let mut s = opened();
    assert!(matches!(
        &s.handle(Event::Shutdown)[..],
        [Action::Close(Some(e))] if e.condition == StreamCondition::SystemShutdown
    ));
}

/// ERR-01 after the STARTTLS restart: the stream over TLS is a new stream, so a timeout
/// before the peer's new header sends a new header of ours (a new id) before the error.
#[test]
fn err01_timeout_after_the_tls_restart_sends_a_new_header_first() {
    let ctx = tls_ctx(false);
    let mut s = opened_with(ctx);
    s.handle(Event::Element(el(
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    )));
    s.handle(Event::TlsEstablished);
    let out = s.handle(Event::Timeout);
    assert!(
        matches!(&out[..], [Action::SendHeader(h), Action::Close(Some(e))]
            if h.id.as_deref() == Some("id2") && h.from.as_deref() == Some("a.test")
                && e.condition == StreamCondition::ConnectionTimeout),
        "{out:?}"
    );
}

/// TLS-01 (RFC 6120 §5.4.3.3): between our `<proceed/>` and the end of the TLS handshake no
/// XML can go out; a timeout, a shutdown or a broken stream there just ends the stream
/// (found by the core_incoming fuzz target).
#[test]
fn tls01_nothing_is_written_between_proceed_and_the_handshake() {
    for ev in [
        Event::Timeout,
        Event::Shutdown,
        Event::Broken {
            condition: Some(StreamCondition::NotWellFormed),
            reason: "x".into(),
        },
    ] {
        let mut s = opened_with(tls_ctx(false));
        let out = s.handle(Event::Element(el(
            "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        )));
        assert!(matches!(out.last(), Some(Action::StartTls)), "{out:?}");
        let out = s.handle(ev);
        assert_eq!(out, vec![Action::Close(None)]);
    }
}

/// TLS-01 (RFC 6120 §5.4.3.3): the STARTTLS restart discards the pairs verified and pending
/// on the insecure stream: their stanzas are refused and a late answer authorises nothing.
#[test]
fn tls01_restart_discards_pairs_verified_and_pending_before_tls() {
    let ctx = tls_ctx(false);
    let mut s = opened_with(ctx);
    s.handle(claim("b.test", "a.test"));
    s.handle(verified_as("b.test", "a.test", Verdict::Valid));
    s.handle(claim("c.test", "a.test"));
    assert!(s.is_authenticated());
    s.handle(Event::Element(el(
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    )));
    s.handle(Event::TlsEstablished);
    assert!(!s.is_authenticated(), "verified pairs discarded");
    s.handle(Event::Header(header(Some("b.test"), Some("a.test"))));
    // The answer for the pair pending before TLS is now unsolicited (SEC-01).
    let out = s.handle(verified_as("c.test", "a.test", Verdict::Valid));
    assert!(out.is_empty(), "{out:?}");
    let out = s.handle(Event::Element(el(
        "<message from='u@b.test' to='v@a.test'/>",
    )));
    assert!(
        closes_with(&out, StreamCondition::NotAuthorized),
        "DB-17: {out:?}"
    );
}

#[test]
fn err01_broken_header_is_still_answered_with_a_header() {
    let mut s = incoming();
    let out = s.handle(Event::Broken {
        condition: Some(StreamCondition::NotWellFormed),
        reason: "junk".into(),
    });
    assert!(matches!(&out[0], Action::SendHeader(_)));
    assert!(closes_with(&out, StreamCondition::NotWellFormed));
}

#[test]
fn db10_db_result_starts_verification_with_our_stream_id() {
    let mut s = opened();
    let out = s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test'>\n  abc123\n</db:result>",
    )));
    assert_eq!(
        out,
        vec![Action::Verify(VerifyRequest {
            local: d("a.test"),
            remote: d("b.test"),
            stream_id: "id1".into(),
            key: "abc123".into(),
        })]
    );
    assert!(!s.is_authenticated());
}

#[test]
fn db20_db18_valid_answer_authorises_the_pair_and_stanzas_flow() {
    let mut s = opened();
    s.handle(claim("b.test", "a.test"));
    let out = s.handle(verified_as("b.test", "a.test", Verdict::Valid));
    let [Action::Send(r), Action::Authenticated { .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        r,
        &el("<db:result from='a.test' to='b.test' type='valid'/>")
    );
    let m = el("<message from='u@b.test' to='v@a.test'><body>hi</body></message>");
    assert_eq!(
        s.handle(Event::Element(m.clone())),
        vec![Action::Deliver(m)]
    );
    // DB-18: dialback keeps working on an authorised stream.
    let out = s.handle(Event::Element(el(
        "<db:result from='muc.b.test' to='a.test'>k2</db:result>",
    )));
    assert!(matches!(&out[..], [Action::Verify(_)]));
}

#[test]
fn db21_invalid_answer_on_first_pair_answers_invalid_and_closes() {
    let mut s = opened();
    s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test'>forged</db:result>",
    )));
    let out = s.handle(verified_as("b.test", "a.test", Verdict::Invalid));
    assert_eq!(
        out[0],
        Action::Send(el("<db:result from='a.test' to='b.test' type='invalid'/>"))
    );
    assert_eq!(out[1], Action::Close(None));
    // Nothing it sends afterwards is delivered.
    let m = el("<message from='u@b.test' to='v@a.test'/>");
    assert!(s.handle(Event::Element(m)).is_empty());
}

#[test]
fn db21_invalid_for_a_second_pair_keeps_the_first() {
    let mut s = verified();
    s.handle(Event::Element(el(
        "<db:result from='c.test' to='a.test'>forged</db:result>",
    )));
    let out = s.handle(verified_as("c.test", "a.test", Verdict::Invalid));
    // DB-15, XEP-0220 §2.1.2/§2.5: `invalid` would have to close the stream (DB-21); the
    // dialback error <forbidden/> refuses c.test alone.
    let r = sent_dialback_error(&out, StanzaCondition::Forbidden);
    assert_eq!(
        (r.attr("from"), r.attr("to")),
        (Some("a.test"), Some("c.test"))
    );
    let m = el("<message from='u@b.test' to='v@a.test'/>");
    assert_eq!(
        s.handle(Event::Element(m.clone())),
        vec![Action::Deliver(m)]
    );
    // SEC-10: and c.test still may not send.
    let out = s.handle(Event::Element(el(
        "<message from='u@c.test' to='v@a.test'/>",
    )));
    assert!(closes_with(&out, StreamCondition::InvalidFrom));
}

#[test]
fn db27_verification_error_is_a_dialback_error_and_the_stream_stays() {
    let mut s = opened();
    s.handle(claim("b.test", "a.test"));
    let out = s.handle(verified_as(
        "b.test",
        "a.test",
        Verdict::Error(StanzaCondition::RemoteServerNotFound),
    ));
    sent_dialback_error(&out, StanzaCondition::RemoteServerNotFound);
    // The stream is still open: a new db:result is processed.
    let out = s.handle(claim("b.test", "a.test"));
    assert!(matches!(&out[..], [Action::Verify(_)]));
}

#[test]
fn db17_stanza_before_verification_is_not_authorized() {
    let mut s = opened();
    let out = s.handle(Event::Element(el(
        "<message from='u@b.test' to='v@a.test'/>",
    )));
    assert!(closes_with(&out, StreamCondition::NotAuthorized));
}

#[test]
fn sec10_stanza_from_unverified_domain_is_invalid_from() {
    let mut s = verified();
    let out = s.handle(Event::Element(el(
        "<message from='mallory@c.test' to='v@a.test'/>",
    )));
    assert!(closes_with(&out, StreamCondition::InvalidFrom));
}

#[test]
fn addr01_stanza_to_a_pair_not_verified_is_host_unknown() {
    let mut s = verified();
    let out = s.handle(Event::Element(el(
        "<message from='u@b.test' to='v@conference.a.test'/>",
    )));
    assert!(closes_with(&out, StreamCondition::HostUnknown));
}

#[test]
fn addr01_addr02_missing_or_bad_addresses_are_improper_addressing() {
    for m in [
        "<message from='u@b.test'/>",
        "<message to='v@a.test'/>",
        "<message from='u@b.test' to=''/>",
        "<message from='u@b test' to='v@a.test'/>",
    ] {
        let mut s = verified();
        let out = s.handle(Event::Element(el(m)));
        assert!(
            closes_with(&out, StreamCondition::ImproperAddressing),
            "{m}: {out:?}"
        );
    }
}

#[test]
fn db19_db_result_for_unhosted_domain_is_item_not_found_and_stream_stays() {
    let mut s = opened();
    let out = s.handle(claim("b.test", "nosuch.test"));
    let r = sent_dialback_error(&out, StanzaCondition::ItemNotFound);
    assert_eq!(r.attr("from"), Some("nosuch.test"));
    assert_eq!(r.attr("to"), Some("b.test"));
    let out = s.handle(claim("b.test", "a.test"));
    assert!(matches!(&out[..], [Action::Verify(_)]));
}

#[test]
fn db32_db_result_without_from_is_improper_addressing() {
    let mut s = opened();
    let out = s.handle(Event::Element(el("<db:result to='a.test'>k</db:result>")));
    assert!(closes_with(&out, StreamCondition::ImproperAddressing));
}

#[test]
fn db16_sec01_typed_dialback_on_inbound_authorises_nothing() {
    let mut s = opened();
    assert!(s
        .handle(Event::Element(el(
            "<db:result from='b.test' to='a.test' type='valid'/>"
        )))
        .is_empty());
    assert!(s
        .handle(Event::Element(el(
            "<db:verify from='b.test' to='a.test' id='id1' type='valid'/>"
        )))
        .is_empty());
    let out = s.handle(Event::Element(el(
        "<message from='u@b.test' to='v@a.test'/>",
    )));
    assert!(closes_with(&out, StreamCondition::NotAuthorized));
}

#[test]
/// DB-31: an answer without a request on this stream is rejected.
fn sec01_unsolicited_verification_answer_is_dropped() {
    let mut s = opened();
    let out = s.handle(verified_as("b.test", "a.test", Verdict::Valid));
    assert!(out.is_empty());
    assert!(!s.is_authenticated());
}

#[test]
fn db23_authoritative_answers_db_verify_swapped_with_id() {
    let key = key_for("S1");
    let mut s = opened();
    let out = s.handle(db_verify("S1", &key));
    assert_eq!(
        out,
        vec![Action::Send(el(
            "<db:verify from='a.test' to='b.test' id='S1' type='valid'/>"
        ))]
    );
    let out = s.handle(db_verify("S2", &key));
    assert_eq!(
        out,
        vec![Action::Send(el(
            "<db:verify from='a.test' to='b.test' id='S2' type='invalid'/>"
        ))]
    );
    // A verify-only stream needs no authentication of its own (DB-11).
    assert!(!s.is_authenticated());
}

#[test]
/// SEC-09: the Authoritative Server checks that `to` is ours.
fn db22_db_verify_for_unhosted_domain_is_item_not_found() {
    let mut s = opened();
    let out = s.handle(Event::Element(el(
        "<db:verify from='b.test' to='nosuch.test' id='S1'>k</db:verify>",
    )));
    let r = sent_dialback_error(&out, StanzaCondition::ItemNotFound);
    assert_eq!(
        (r.attr("from"), r.attr("to"), r.attr("id")),
        (Some("nosuch.test"), Some("b.test"), Some("S1"))
    );
}

#[test]
fn db28_several_sender_domains_on_one_stream() {
    let mut s = verified();
    s.handle(claim("muc.b.test", "conference.a.test"));
    s.handle(verified_as(
        "muc.b.test",
        "conference.a.test",
        Verdict::Valid,
    ));
    let m = el("<presence from='r@muc.b.test/x' to='u@conference.a.test'/>");
    assert_eq!(
        s.handle(Event::Element(m.clone())),
        vec![Action::Deliver(m)]
    );
    assert_eq!(s.verified_pairs().len(), 2);
}

#[test]
fn sec11_pending_verifications_per_stream_are_capped() {
    let ctx = ctx_with(|c| c.limits.pending_verifications_per_stream = 2);
    let mut s = opened_with(ctx);
    for n in 0..2 {
        let out = s.handle(claim(&format!("x{n}.test"), "a.test"));
        assert!(matches!(&out[..], [Action::Verify(_)]));
    }
    let out = s.handle(claim("x9.test", "a.test"));
    sent_dialback_error(&out, StanzaCondition::ResourceConstraint);
}

/// XEP-0220 §2.5 (standards.md, dialback error conditions: resource-constraint, "RS cannot
/// add another pair to this connection"), DB-28: sender multiplexing is accepted up to
/// `limits.pairs_per_stream` pairs, verified and pending together; beyond it each db:result
/// gets a dialback error and no verification is started.
#[test]
fn db28_pairs_per_stream_are_capped_with_resource_constraint() {
    let ctx = ctx_with(|c| c.limits.pairs_per_stream = 3);
    let mut s = opened_with(ctx);
    // Two verified, one pending: the stream is full.
    for n in 0..3 {
        let out = s.handle(claim(&format!("x{n}.test"), "a.test"));
        assert!(matches!(&out[..], [Action::Verify(_)]), "{out:?}");
    }
    for n in 0..2 {
        s.handle(verified_as(&format!("x{n}.test"), "a.test", Verdict::Valid));
    }
    assert_eq!(s.verified_pairs().len(), 2);
    let out = s.handle(claim("x9.test", "a.test"));
    let r = sent_dialback_error(&out, StanzaCondition::ResourceConstraint);
    assert_eq!(
        (r.attr("from"), r.attr("to")),
        (Some("a.test"), Some("x9.test"))
    );
    // Nothing was verified for it: a valid answer for it now authorises nothing.
    let late = s.handle(verified_as("x9.test", "a.test", Verdict::Valid));
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(s.verified_pairs().len(), 2);
    // A pair already verified is still answered valid (no new pair), and a pending one is
    // still waited for.
    let out = s.handle(claim("x0.test", "a.test"));
    assert!(matches!(&out[..], [Action::Send(r)] if Verdict::of(r) == Some(Verdict::Valid)));
    // The stream stays open: an error on one pair is not fatal (DB-09).
    let m = el("<message from='u@x1.test' to='v@a.test'/>");
    assert_eq!(
        s.handle(Event::Element(m.clone())),
        vec![Action::Deliver(m)]
    );
    // When the pending one fails, its place is free again.
    s.handle(verified_as("x2.test", "a.test", Verdict::Invalid));
    let out = s.handle(claim("x9.test", "a.test"));
    assert!(matches!(&out[..], [Action::Verify(_)]), "{out:?}");
}

#[test]
fn sec12_dialback_without_tls_when_required_is_policy_violation() {
    let ctx = tls_ctx(true);
    let mut s = incoming_with(ctx);
    let out = s.handle(Event::Header(header(Some("b.test"), Some("a.test"))));
    let [_, Action::Send(f)] = &out[..] else {
        panic!("{out:?}")
    };
    let starttls = f.child("starttls", TLS_NS).expect("STARTTLS offered");
    assert!(starttls.child("required", TLS_NS).is_some());
    assert!(
        f.child("dialback", DIALBACK_FEATURE_NS).is_some(),
        "DB-26 before TLS too"
    );
    let out = s.handle(claim("b.test", "a.test"));
    sent_dialback_error(&out, StanzaCondition::PolicyViolation);
}

#[test]
fn tls01_starttls_then_restart_with_new_id_and_dialback_still_offered() {
    let ctx = tls_ctx(true);
    let mut s = opened_with(ctx);
    let out = s.handle(Event::Element(el(
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    )));
    assert_eq!(
        out,
        vec![
            Action::Send(Element::new("proceed", TLS_NS)),
            Action::StartTls
        ]
    );
    assert!(s.handle(Event::TlsEstablished).is_empty());
    let out = s.handle(Event::Header(header(Some("b.test"), Some("a.test"))));
    let [Action::SendHeader(h), Action::Send(f)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        h.id.as_deref(),
        Some("id2"),
        "STR-03: a new id after the restart"
    );
    assert!(f.child("starttls", TLS_NS).is_none());
    assert!(
        f.child("dialback", DIALBACK_FEATURE_NS).is_some(),
        "DB-26 after TLS"
    );
    let out = s.handle(claim("b.test", "a.test"));
    assert!(matches!(&out[..], [Action::Verify(v)] if v.stream_id == "id2"));
}

#[test]
fn str04_restart_may_not_change_the_target() {
    let ctx = tls_ctx(false);
    let mut s = opened_with(ctx);
    s.handle(Event::Element(el(
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    )));
    s.handle(Event::TlsEstablished);
    let out = s.handle(Event::Header(header(
        Some("b.test"),
        Some("conference.a.test"),
    )));
    assert!(closes_with(&out, StreamCondition::ImproperAddressing));
}

#[test]
fn starttls_without_tls_configured_fails() {
    let mut s = opened();
    let out = s.handle(Event::Element(el(
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    )));
    assert_eq!(
        out,
        vec![
            Action::Send(Element::new("failure", TLS_NS)),
            Action::Close(None)
        ]
    );
}

#[test]
fn negotiation_timeout_closes_unauthenticated_streams_only() {
    let mut s = opened();
    assert!(closes_with(
        &s.handle(Event::Timeout),
        StreamCondition::ConnectionTimeout
    ));
    let mut s = verified();
    assert!(s.handle(Event::Timeout).is_empty());
}

#[test]
fn unknown_top_level_element_is_unsupported_stanza_type() {
    let mut s = verified();
    let out = s.handle(Event::Element(el("<foo xmlns='urn:example'/>")));
    assert!(closes_with(&out, StreamCondition::UnsupportedStanzaType));
}

/// Bounded echo: a 30 KB namespace URI is not repeated in the `unsupported-stanza-type` text
/// (nor is any other peer string in the errors we send: `to`, namespaces, addresses).
#[test]
fn peer_strings_in_stream_errors_are_bounded() {
    let ns = format!("urn:{}", "x".repeat(30_000));
    let mut s = verified();
    // Built directly: the reader itself refuses URIs over 1 KiB, so this is the core's own
    // bound on a stanza handed to it from elsewhere.
    let out = s.handle(Event::Element(Element::new("message", &ns)));
    let Some(Action::Close(Some(e))) = out.last() else {
        panic!("{out:?}")
    };
    assert_eq!(e.condition, StreamCondition::UnsupportedStanzaType);
    let text = e.text.as_deref().unwrap();
    assert!(text.chars().count() <= 128, "{} chars", text.len());
    assert!(text.contains("urn:xxx"), "still says what it was: {text}");
    let wire = e.to_element().to_bytes();
    assert!(wire.len() < 512, "{} bytes on the wire", wire.len());

    let long_to = format!("{}.test", "a".repeat(5000));
    let out = incoming().handle(Event::Header(header(Some("b.test"), Some(&long_to))));
    assert!(matches!(out.last(), Some(Action::Close(Some(e)))
        if e.condition == StreamCondition::HostUnknown && e.text.as_ref().unwrap().chars().count() <= 128));
    let mut h = header(Some("b.test"), Some("a.test"));
    h.default_ns = Some(ns.clone());
    let out = incoming().handle(Event::Header(h));
    assert!(matches!(out.last(), Some(Action::Close(Some(e)))
        if e.condition == StreamCondition::InvalidNamespace && e.text.as_ref().unwrap().chars().count() <= 128));
    let out = s_verified_stanza(&format!(
        "<message from='u@b.test' to='{}@a.test'/>",
        "v".repeat(3000)
    ));
    assert!(matches!(out.last(), Some(Action::Close(Some(e)))
        if e.condition == StreamCondition::ImproperAddressing && e.text.as_ref().unwrap().chars().count() <= 256));
}

fn s_verified_stanza(xml: &str) -> Vec<Action> {
    verified().handle(Event::Element(el(xml)))
}

/// DB-32, XEP-0220 §6: a db:verify whose `from`/`to` are not domains or whose `id` is not a
/// stream id is improper-addressing; nothing of it is repeated back.
#[test]
fn db32_db_verify_with_bad_addresses_or_id_is_improper_addressing() {
    let long_id = "i".repeat(300);
    for xml in [
        "<db:verify from='b test' to='a.test' id='S1'>k</db:verify>".to_string(),
        "<db:verify from='b.test' to='a..test' id='S1'>k</db:verify>".to_string(),
        "<db:verify from='b.test' to='a.test' id='S 1'>k</db:verify>".to_string(),
        "<db:verify from='b.test' to='a.test' id=''>k</db:verify>".to_string(),
        format!("<db:verify from='b.test' to='a.test' id='{long_id}'>k</db:verify>"),
    ] {
        let out = opened().handle(Event::Element(el(&xml)));
        assert!(
            closes_with(&out, StreamCondition::ImproperAddressing),
            "{xml}: {out:?}"
        );
        assert!(!out.iter().any(|a| matches!(a, Action::Send(_))), "{out:?}");
    }
}

/// XEP-0220 §2.5: every dialback error the Receiving and Authoritative roles send on their
/// own carries a condition the table defines for that situation.
#[test]
fn db27_dialback_errors_we_send_use_xep0220_conditions() {
    use StanzaCondition as C;
    const TABLE: [C; 9] = [
        C::ItemNotFound,
        C::RemoteConnectionFailed,
        C::RemoteServerNotFound,
        C::RemoteServerTimeout,
        C::PolicyViolation,
        C::NotAuthorized,
        C::Forbidden,
        C::NotAcceptable,
        // Added in XEP-0220 v1.1 (2014): the pair cannot be added to this stream (SEC-11).
        C::ResourceConstraint,
    ];
    let cases = [
        (
            "<db:result from='b.test' to='nosuch.test'>k</db:result>",
            C::ItemNotFound,
        ),
        (
            "<db:verify from='b.test' to='nosuch.test' id='S1'>k</db:verify>",
            C::ItemNotFound,
        ),
        (
            "<db:result from='a.test' to='conference.a.test'>k</db:result>",
            C::NotAcceptable,
        ),
    ];
    for (xml, cond) in cases {
        let out = opened().handle(Event::Element(el(xml)));
        sent_dialback_error(&out, cond);
        assert!(TABLE.contains(&cond));
    }
}

#[test]
fn peer_claiming_our_own_domain_is_refused() {
    let mut s = opened();
    let out = s.handle(claim("a.test", "a.test"));
    sent_dialback_error(&out, StanzaCondition::NotAcceptable);
}

#[test]
fn db12_verified_traffic_flows_while_another_verification_is_pending() {
    let mut s = verified();
    let out = s.handle(claim("muc.b.test", "a.test"));
    assert!(matches!(&out[..], [Action::Verify(_)]));
    let m = el("<message from='u@b.test' to='v@a.test'/>");
    assert_eq!(
        s.handle(Event::Element(m.clone())),
        vec![Action::Deliver(m)]
    );
    // And the stream still answers as Authoritative Server meanwhile.
    let key = key_for("S9");
    let out = s.handle(db_verify("S9", &key));
    assert!(matches!(&out[..], [Action::Send(v)] if v.attr("type") == Some("valid")));
}

#[test]
fn str05_stanzas_sent_while_we_close_an_idle_stream_are_still_delivered() {
    let mut s = verified();
    let out = s.handle(Event::Idle);
    assert!(matches!(&out[..], [Action::Close(None)]), "{out:?}");
    // RFC 6120 §4.4: until the peer's close, what it sends is processed.
    let m = el("<message from='x@b.test' to='y@a.test' id='late'/>");
    let out = s.handle(Event::Element(m));
    assert!(
        matches!(&out[..], [Action::Deliver(e)] if e.attr("id") == Some("late")),
        "{out:?}"
    );
    // Nothing else is acted on any more, and a refused stanza does not close twice.
    assert!(s.handle(claim("c.test", "a.test")).is_empty());
    let bad = el("<message from='x@c.test' to='y@a.test'/>");
    let out = s.handle(Event::Element(bad));
    assert!(
        !out.iter().any(|a| matches!(a, Action::Close(_))),
        "{out:?}"
    );
    let m = el("<message from='x@b.test' to='y@a.test' id='later'/>");
    assert!(s.handle(Event::Element(m)).is_empty(), "closed for good");
}

#[test]
fn str05_after_a_stream_error_nothing_more_is_processed() {
    let mut s = verified();
    let out = s.handle(Event::Shutdown);
    assert!(
        closes_with(&out, StreamCondition::SystemShutdown),
        "{out:?}"
    );
    let m = el("<message from='x@b.test' to='y@a.test'/>");
    assert!(s.handle(Event::Element(m)).is_empty());
}

/// The stream header the monitoring plugin check_xmppng (`--s2s`) sends, before and after
/// STARTTLS: an XML declaration, `to` but no `from` (legal for s2s: RFC 6120 §4.7.1, STR-02),
/// and no `xmlns:db` (the peer offers no dialback).
const PROBE_HEADER: &[u8] = b"<?xml version='1.0' ?><stream:stream to='a.test' \
    xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

/// [`PROBE_HEADER`] through the real push parser, as the connection layer hands it to the core.
fn probe_header() -> StreamHeader {
    let mut p = crate::xml::StreamParser::new(crate::xml::Limits::default());
    p.feed(PROBE_HEADER);
    match p.next_event() {
        Ok(Some(crate::xml::StreamEvent::Header(h))) => h,
        other => panic!("the probe's header does not parse: {other:?}"),
    }
}

/// A header without `from` and without `xmlns:db` is answered with our header (from our
/// domain, to nobody, xmlns:db declared: DB-01) and features (STR-04), on the first stream and
/// on the one restarted after STARTTLS (TLS-01), and the peer's close is answered with ours
/// and no stream error (STR-05). This is the whole conversation of check_xmppng
/// `--s2s --starttls`.
#[test]
fn str02_a_header_without_from_or_xmlns_db_gets_features_before_and_after_tls() {
    let h = probe_header();
    assert_eq!((h.from.as_deref(), h.db_ns), (None, false), "{h:?}");
    let mut s = incoming_with(tls_ctx(true));
    let answer = |out: &[Action], id: &str| -> Element {
        let [Action::SendHeader(ours), Action::Send(f)] = out else {
            panic!("header and features expected: {out:?}")
        };
        assert_eq!(ours.from.as_deref(), Some("a.test"));
        assert_eq!(ours.to, None, "the peer named no domain");
        assert!(ours.db_ns, "DB-01");
        assert_eq!(ours.id.as_deref(), Some(id), "STR-03");
        assert_eq!(ours.version.as_deref(), Some("1.0"));
        assert!(f.is("features", STREAM_NS), "{f:?}");
        assert!(f.child("dialback", DIALBACK_FEATURE_NS).is_some(), "DB-26");
        f.clone()
    };
    let f = answer(&s.handle(Event::Header(h)), "id1");
    let starttls = f.child("starttls", TLS_NS).expect("STARTTLS offered");
    assert!(starttls.child("required", TLS_NS).is_some());
    let out = s.handle(Event::Element(el(
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    )));
    assert_eq!(
        out,
        [
            Action::Send(Element::new("proceed", TLS_NS)),
            Action::StartTls
        ]
    );
    assert!(s.handle(Event::TlsEstablished).is_empty());
    let f = answer(&s.handle(Event::Header(probe_header())), "id2");
    assert!(f.child("starttls", TLS_NS).is_none(), "TLS is on already");
    assert_eq!(s.handle(Event::Close), [Action::Close(None)]);
}

/// Inbound streams in a context whose `[policy]` lists are `allow` and `deny`.
fn opened_with_lists(allow: &[&str], deny: &[&str]) -> Incoming {
    let list = |l: &[&str]| {
        l.iter()
            .map(|s| crate::policy::DomainPattern::parse(s).unwrap())
            .collect()
    };
    opened_with(ctx_with(|c| {
        c.federation.allow = list(allow);
        c.federation.deny = list(deny);
    }))
}

/// A db:result claiming a domain the `[policy]` lists refuse gets the dialback error
/// `forbidden` (XEP-0220 §2.5, as DB-15/DB-21 refuse a pair without closing the stream) and no
/// verification is asked for (SEC-11: no connection to the claimed domain); the stream goes on,
/// so a pair the lists allow is still verified on it (DB-18, DB-28).
#[test]
fn db15_a_db_result_from_a_refused_domain_gets_forbidden_and_no_verification() {
    let mut s = opened_with_lists(&[], &["*.spam.test"]);
    let out = s.handle(claim("x.spam.test", "a.test"));
    let r = sent_dialback_error(&out, StanzaCondition::Forbidden);
    assert_eq!(
        (r.attr("from"), r.attr("to")),
        (Some("a.test"), Some("x.spam.test"))
    );
    let out = s.handle(claim("b.test", "a.test"));
    assert!(
        matches!(&out[..], [Action::Verify(v)] if v.remote == d("b.test")),
        "{out:?}"
    );
    // An allow list refuses every domain it does not cover, the same way.
    let mut s = opened_with_lists(&["c.test"], &[]);
    let out = s.handle(claim("b.test", "a.test"));
    sent_dialback_error(&out, StanzaCondition::Forbidden);
    let out = s.handle(claim("c.test", "a.test"));
    assert!(matches!(&out[..], [Action::Verify(_)]), "{out:?}");
    // A peer claiming one of our own domains is refused as before (not-acceptable), whatever
    // the lists say: they are about remote domains.
    let mut s = opened_with_lists(&["c.test"], &[]);
    let out = s.handle(claim("conference.a.test", "a.test"));
    sent_dialback_error(&out, StanzaCondition::NotAcceptable);
}

/// The XEP-0478 `<limits/>` in our features `f`: (max-bytes, idle-seconds) as text.
fn advertised_limits(f: &Element) -> (String, String) {
    let limits = f
        .child("limits", STREAM_LIMITS_NS)
        .expect("XEP-0478 limits advertised");
    let value = |name| limits.child(name, STREAM_LIMITS_NS).expect(name).text();
    (value("max-bytes"), value("idle-seconds"))
}

/// XEP-0478: our features advertise `limits.stanza_size` as `max-bytes` (what holds once the
/// peer may send stanzas) and `timeouts.idle` as `idle-seconds`, before and after STARTTLS.
#[test]
fn xep0478_features_advertise_our_limits_before_and_after_starttls() {
    let ctx = ctx_with(|c| {
        c.limits.stanza_size = 20_000;
        c.timeouts.idle = std::time::Duration::from_secs(900);
        c.tls.enabled = true;
        c.tls.require_encryption = false;
    });
    let mut s = incoming_with(ctx);
    let out = s.handle(Event::Header(header(Some("b.test"), Some("a.test"))));
    let [Action::SendHeader(_), Action::Send(f)] = &out[..] else {
        panic!("{out:?}")
    };
    assert!(f.child("starttls", TLS_NS).is_some());
    let expected = ("20000".to_string(), "900".to_string());
    assert_eq!(advertised_limits(f), expected);
    s.handle(Event::Element(el(
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    )));
    s.handle(Event::TlsEstablished);
    let out = s.handle(Event::Header(header(Some("b.test"), Some("a.test"))));
    let [Action::SendHeader(_), Action::Send(f)] = &out[..] else {
        panic!("{out:?}")
    };
    assert!(f.child("starttls", TLS_NS).is_none());
    assert_eq!(advertised_limits(f), expected, "after TLS");
}

/// A context hosting a.test, conference.a.test and c.test, with `limits.pairs_per_stream` =
/// `cap`.
fn three_local_domains(cap: usize) -> Arc<Ctx> {
    ctx_with(|c| {
        c.domains.push(d("c.test"));
        c.limits.pairs_per_stream = cap;
    })
}

/// The verification one db:result asks for: (local, remote, stream id, key).
fn asked(out: &[Action]) -> (String, String, String, String) {
    let [Action::Verify(req)] = out else {
        panic!("expected one verification: {out:?}")
    };
    (
        req.local.to_string(),
        req.remote.to_string(),
        req.stream_id.clone(),
        req.key.clone(),
    )
}

/// DB-29 (XEP-0220 §2.6.2), DB-26: we advertise `<errors/>`, so a peer may multiplex targets:
/// on a stream opened for a.test, db:results for a.test and then for our other domains
/// conference.a.test and c.test are each verified on their own (one request per pair, same
/// stream id, their own key), each answered from its own domain, and stanzas flow for each
/// verified pair, while a pair still pending is refused. The certificate choice (the header's
/// `to`) is unchanged by the later targets.
#[test]
fn db29_target_multiplexing_verifies_each_local_domain_on_one_stream() {
    let mut s = opened_with(three_local_domains(10));
    let (local, remote, id, key) = asked(&s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test'>k1</db:result>",
    ))));
    assert_eq!(
        (&*local, &*remote, &*id, &*key),
        ("a.test", "b.test", "id1", "k1")
    );
    s.handle(verified_as("b.test", "a.test", Verdict::Valid));
    for (n, target) in ["conference.a.test", "c.test"].into_iter().enumerate() {
        let key = format!("k{}", n + 2);
        let out = s.handle(Event::Element(el(&format!(
            "<db:result from='b.test' to='{target}'>{key}</db:result>"
        ))));
        assert_eq!(
            asked(&out),
            (target.into(), "b.test".into(), "id1".into(), key)
        );
    }
    assert_eq!(s.pending_pairs().len(), 2);
    // conference.a.test is verified; c.test is still pending.
    let out = s.handle(verified_as("b.test", "conference.a.test", Verdict::Valid));
    let [Action::Send(r), Action::Authenticated { local, remote }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(Verdict::of(r), Some(Verdict::Valid));
    assert_eq!(
        (r.attr("from"), r.attr("to")),
        (Some("conference.a.test"), Some("b.test"))
    );
    assert_eq!(
        (local.as_str(), remote.as_str()),
        ("conference.a.test", "b.test")
    );
    for to in ["v@a.test", "room@conference.a.test"] {
        let m = el(&format!("<message from='u@b.test' to='{to}'/>"));
        assert_eq!(
            s.handle(Event::Element(m.clone())),
            vec![Action::Deliver(m)]
        );
    }
    assert_eq!(s.verified_pairs().len(), 2);
    assert_eq!(
        s.named_local(),
        Some(&d("a.test")),
        "the header's `to` still names the stream"
    );
    // c.test is ours but not verified for b.test on this stream: host-unknown, as before.
    let out = s.handle(Event::Element(el(
        "<message from='u@b.test' to='w@c.test'/>",
    )));
    assert!(closes_with(&out, StreamCondition::HostUnknown), "{out:?}");
}

/// DB-29 with DB-21/§2.5: a second target whose key is invalid is refused alone (`forbidden`,
/// the stream and the first pair kept); stanzas for it stay refused, and a target that is not
/// ours still gets `item-not-found` (DB-19) on a multiplexed stream.
#[test]
fn db29_invalid_second_target_is_refused_alone() {
    let mut s = verified();
    assert!(matches!(
        &s.handle(claim("b.test", "conference.a.test"))[..],
        [Action::Verify(_)]
    ));
    let out = s.handle(verified_as("b.test", "conference.a.test", Verdict::Invalid));
    let r = sent_dialback_error(&out, StanzaCondition::Forbidden);
    assert_eq!(r.attr("from"), Some("conference.a.test"));
    assert_eq!(s.verified_pairs(), &[(d("b.test"), d("a.test"))]);
    let out = s.handle(claim("b.test", "nosuch.test"));
    sent_dialback_error(&out, StanzaCondition::ItemNotFound);
    let m = el("<message from='u@b.test' to='v@a.test'/>");
    assert_eq!(
        s.handle(Event::Element(m.clone())),
        vec![Action::Deliver(m)]
    );
    let out = s.handle(Event::Element(el(
        "<message from='u@b.test' to='room@conference.a.test'/>",
    )));
    assert!(closes_with(&out, StreamCondition::HostUnknown), "{out:?}");
}

/// DB-29 within the caps: targets count as pairs against `limits.pairs_per_stream`, so a third
/// local domain on a stream capped at two gets `resource-constraint` and no verification.
#[test]
fn db29_target_multiplexing_counts_against_pairs_per_stream() {
    let mut s = opened_with(three_local_domains(2));
    for target in ["a.test", "conference.a.test"] {
        assert!(matches!(
            &s.handle(claim("b.test", target))[..],
            [Action::Verify(_)]
        ));
    }
    s.handle(verified_as("b.test", "a.test", Verdict::Valid));
    let out = s.handle(claim("b.test", "c.test"));
    let r = sent_dialback_error(&out, StanzaCondition::ResourceConstraint);
    assert_eq!(r.attr("from"), Some("c.test"));
    assert!(s
        .handle(verified_as("b.test", "c.test", Verdict::Valid))
        .is_empty());
    assert_eq!(s.pending_pairs(), &[(d("b.test"), d("conference.a.test"))]);
}
