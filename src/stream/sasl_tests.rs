//! Unit tests of SASL EXTERNAL in both stream cores, on literal XML (standards.md SASL-01,
//! RFC 6120 §6, XEP-0178).

use super::incoming::Incoming;
use super::outgoing::{Outgoing, Purpose};
use super::sasl::{CertCheck, SASL_NS};
use super::testutil::{closes_with, ctx_with, el, header, ids, tls_ctx, SECRET};
use super::*;
use crate::config::{AuthMode, CertMode, PeerPolicy};
use crate::xml::{DIALBACK_FEATURE_NS, TLS_NS};

fn d(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

/// A certificate that proves exactly `domains`.
fn cert_for(domains: &'static [&'static str]) -> CertCheck {
    CertCheck::new(move |dom| {
        if domains.contains(&dom.as_str()) {
            Ok(())
        } else {
            Err(format!("certificate for {dom}: not valid for {dom}"))
        }
    })
}

/// TLS available, peer b.test checked under pkix (`auth` as given).
fn pkix_ctx(auth: Option<AuthMode>) -> Arc<Ctx> {
    ctx_with(|c| {
        c.tls.enabled = true;
        c.tls.require_encryption = true;
        c.tls.peers.insert(
            d("b.test"),
            PeerPolicy {
                verify: Some(CertMode::Pkix),
                auth,
                ..PeerPolicy::default()
            },
        );
    })
}

/// An inbound stream from b.test to a.test through STARTTLS, the peer's certificate being
/// `cert`; returns the stream and the features sent after TLS.
fn after_tls(ctx: Arc<Ctx>, cert: Option<CertCheck>) -> (Incoming, Element) {
    let mut s = Incoming::new(ctx, "t".into(), ids(), false);
    let out = s.handle(Event::Header(header(Some("b.test"), Some("a.test"))));
    let Some(Action::Send(f)) = out.last() else {
        panic!("{out:?}")
    };
    assert!(
        f.child("mechanisms", SASL_NS).is_none(),
        "SASL-01, TLS-01: no SASL before TLS: {f:?}"
    );
    let out = s.handle(Event::Element(el(
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    )));
    assert_eq!(out.last(), Some(&Action::StartTls));
    assert!(s.handle(Event::TlsEstablished).is_empty());
    assert!(s.handle(Event::PeerCertificate(cert)).is_empty());
    let out = s.handle(Event::Header(header(Some("b.test"), Some("a.test"))));
    let [Action::SendHeader(_), Action::Send(f)] = &out[..] else {
        panic!("{out:?}")
    };
    (s, f.clone())
}

fn auth(body: &str) -> Event {
    Event::Element(el(&format!(
        "<auth xmlns='{SASL_NS}' mechanism='EXTERNAL'>{body}</auth>"
    )))
}

/// `out` is exactly one `<failure/>` with `cond`.
fn is_failure(out: &[Action], cond: &str) -> bool {
    matches!(out, [Action::Send(f)] if f.is("failure", SASL_NS) && f.child(cond, SASL_NS).is_some())
}

fn claim_b() -> Event {
    Event::Element(el("<db:result from='b.test' to='a.test'>k</db:result>"))
}

fn offers(f: &Element) -> bool {
    sasl::offers_external(f)
}

#[test]
fn sasl01_external_offered_after_tls_only_when_a_certificate_was_presented() {
    let (_, f) = after_tls(pkix_ctx(None), None);
    assert!(!offers(&f), "no certificate, no EXTERNAL: {f:?}");
    assert!(f.child("dialback", DIALBACK_FEATURE_NS).is_some());
    let (_, f) = after_tls(pkix_ctx(None), Some(cert_for(&["b.test"])));
    assert!(offers(&f), "{f:?}");
    assert!(f.child("starttls", TLS_NS).is_none());
    // Dialback stays offered beside it (DB-26): the peer may fall back to it.
    assert!(f.child("dialback", DIALBACK_FEATURE_NS).is_some());
}

#[test]
fn sasl01_str03_str04_success_authenticates_the_pair_and_restarts_the_stream() {
    let (mut s, _) = after_tls(pkix_ctx(None), Some(cert_for(&["b.test"])));
    let first_id = s.stream_id().to_string();
    let out = s.handle(auth("="));
    assert_eq!(
        out,
        vec![
            Action::Send(sasl::success()),
            Action::Restart,
            Action::Authenticated {
                local: d("a.test"),
                remote: d("b.test")
            }
        ]
    );
    assert!(s.is_authenticated());
    // The restarted stream: a new header with a new id, features without SASL or STARTTLS.
    let out = s.handle(Event::Header(header(Some("b.test"), Some("a.test"))));
    let [Action::SendHeader(h), Action::Send(f)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_ne!(h.id.as_deref(), Some(first_id.as_str()), "STR-03: a new id");
    assert!(!offers(f) && f.child("starttls", TLS_NS).is_none(), "{f:?}");
    // Stanzas from the authenticated domain flow ...
    let m = el("<message from='u@b.test' to='v@a.test'/>");
    assert_eq!(
        s.handle(Event::Element(m.clone())),
        vec![Action::Deliver(m)]
    );
    // ... any other `from` is invalid-from (ERR-03, RFC 6120 §4.9.3.9).
    let out = s.handle(Event::Element(el(
        "<message from='u@c.test' to='v@a.test'/>",
    )));
    assert!(closes_with(&out, StreamCondition::InvalidFrom), "{out:?}");
}

#[test]
fn sasl01_authzid_equal_to_the_stream_from_is_accepted_another_is_invalid_authzid() {
    let (mut s, _) = after_tls(pkix_ctx(None), Some(cert_for(&["b.test", "c.test"])));
    // base64("c.test"): the certificate names it, but the stream is from b.test.
    let out = s.handle(auth("Yy50ZXN0"));
    assert!(is_failure(&out, "invalid-authzid"), "{out:?}");
    assert!(!s.is_authenticated());
    // base64("b.test"), as Prosody sends it.
    let out = s.handle(auth("Yi50ZXN0"));
    assert!(matches!(&out[..], [Action::Send(e), Action::Restart, ..] if e.is("success", SASL_NS)));
}

#[test]
fn sasl01_failure_keeps_the_stream_open_for_dialback() {
    // The certificate names c.test only: EXTERNAL as b.test fails.
    let (mut s, _) = after_tls(pkix_ctx(None), Some(cert_for(&["c.test"])));
    let out = s.handle(auth("="));
    assert!(is_failure(&out, "not-authorized"), "{out:?}");
    let [Action::Send(f)] = &out[..] else {
        unreachable!()
    };
    assert!(f
        .child("text", SASL_NS)
        .is_some_and(|t| t.text().contains("not valid for")));
    assert!(!s.is_authenticated());
    // Dialback on the same stream (SASL-01: Prosody and ejabberd fall back this way).
    let out = s.handle(claim_b());
    assert!(
        matches!(&out[..], [Action::Verify(r)] if r.remote == d("b.test")),
        "{out:?}"
    );
}

#[test]
fn sasl01_malformed_or_unoffered_auth_gets_a_clear_failure() {
    let (mut s, _) = after_tls(pkix_ctx(None), Some(cert_for(&["b.test"])));
    assert!(is_failure(&s.handle(auth("!!!!")), "incorrect-encoding"));
    assert!(
        is_failure(&s.handle(auth("/w==")), "invalid-authzid"),
        "not UTF-8"
    );
    // base64 of "not a domain!"
    assert!(is_failure(
        &s.handle(auth("bm90IGEgZG9tYWluIQ==")),
        "invalid-authzid"
    ));
    let plain = Event::Element(el(&format!(
        "<auth xmlns='{SASL_NS}' mechanism='PLAIN'>AGEAYg==</auth>"
    )));
    assert!(is_failure(&s.handle(plain), "invalid-mechanism"));
    // Three attempts are allowed (RFC 6120 §6.4.5); the stream is then closed.
    let out = s.handle(auth("="));
    assert!(
        closes_with(&out, StreamCondition::PolicyViolation),
        "{out:?}"
    );

    // No certificate: EXTERNAL was not offered.
    let (mut s, _) = after_tls(pkix_ctx(None), None);
    assert!(is_failure(&s.handle(auth("=")), "invalid-mechanism"));
    // Before TLS: encryption-required.
    let mut s = Incoming::new(pkix_ctx(None), "t".into(), ids(), false);
    s.handle(Event::Header(header(Some("b.test"), Some("a.test"))));
    assert!(is_failure(&s.handle(auth("=")), "encryption-required"));
}

#[test]
fn sasl01_missing_initial_response_is_asked_for_with_an_empty_challenge() {
    let (mut s, _) = after_tls(pkix_ctx(None), Some(cert_for(&["b.test"])));
    let out = s.handle(Event::Element(el(&format!(
        "<auth xmlns='{SASL_NS}' mechanism='EXTERNAL'/>"
    ))));
    assert_eq!(out, vec![Action::Send(sasl::challenge())]);
    let out = s.handle(Event::Element(el(&format!(
        "<response xmlns='{SASL_NS}'>=</response>"
    ))));
    assert!(
        matches!(&out[..], [Action::Send(e), ..] if e.is("success", SASL_NS)),
        "{out:?}"
    );
}

#[test]
fn sasl01_str04_restart_after_sasl_must_keep_the_from() {
    let (mut s, _) = after_tls(pkix_ctx(None), Some(cert_for(&["b.test"])));
    s.handle(auth("="));
    let out = s.handle(Event::Header(header(Some("c.test"), Some("a.test"))));
    assert!(
        closes_with(&out, StreamCondition::ImproperAddressing),
        "{out:?}"
    );
}

#[test]
fn sasl01_external_required_refuses_dialback_but_accepts_external() {
    let (mut s, _) = after_tls(
        pkix_ctx(Some(AuthMode::External)),
        Some(cert_for(&["c.test"])),
    );
    assert!(is_failure(&s.handle(auth("=")), "not-authorized"));
    let out = s.handle(claim_b());
    let [Action::Send(r)] = &out[..] else {
        panic!("{out:?}")
    };
    assert!(
        matches!(
            Verdict::of(r),
            Some(Verdict::Error(StanzaCondition::PolicyViolation))
        ),
        "dialback refused with policy-violation, nothing verified: {r:?}"
    );
    let (mut s, _) = after_tls(
        pkix_ctx(Some(AuthMode::External)),
        Some(cert_for(&["b.test"])),
    );
    assert!(s.handle(auth("=")).contains(&Action::Restart));
}

#[test]
fn sasl01_bidi03_stanzas_routed_during_the_restart_wait_for_our_new_header() {
    // A bidi stream (BIDI-02) authenticated by SASL: the router may route the inverse pair to
    // it as soon as it is authenticated, before the peer's new header; nothing may precede our
    // new header (RFC 6120 §6.4.6).
    let bidi_stream = || {
        let (mut s, f) = after_tls(pkix_ctx(None), Some(cert_for(&["b.test"])));
        assert!(f.child("bidi", bidi::BIDI_FEATURE_NS).is_some(), "{f:?}");
        assert!(s.handle(Event::Element(bidi::request())).is_empty());
        assert!(s.handle(auth("=")).contains(&Action::Restart));
        assert!(s.is_bidi());
        s
    };
    let ours = || el("<message from='v@a.test' to='u@b.test' id='m1'/>");
    let mut s = bidi_stream();
    assert_eq!(s.handle(Event::Stanza(ours())), vec![]);
    let out = s.handle(Event::Header(header(Some("b.test"), Some("a.test"))));
    assert!(
        matches!(&out[..], [Action::SendHeader(_), Action::Send(f), Action::Send(m)] if f.name == "features" && *m == ours()),
        "{out:?}"
    );
    assert_eq!(s.handle(Event::Stanza(ours())), vec![Action::Send(ours())]);
    // The stream ends before the peer restarted: the stanza goes back to the router.
    let mut s = bidi_stream();
    assert_eq!(s.handle(Event::Stanza(ours())), vec![]);
    assert_eq!(
        s.handle(Event::Idle),
        vec![Action::Deliver(ours()), Action::Close(None)]
    );
}

// ---- outbound ----------------------------------------------------------------------------

fn their_header(id: &str) -> StreamHeader {
    StreamHeader {
        id: Some(id.into()),
        ..header(Some("b.test"), Some("a.test"))
    }
}

fn mechanisms_features() -> Event {
    Event::Element(el(&format!(
        "<stream:features><mechanisms xmlns='{SASL_NS}'><mechanism>EXTERNAL</mechanism></mechanisms><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"
    )))
}

fn msg() -> Element {
    el("<message from='bot@a.test' to='u@b.test' id='m1'><body>hi</body></message>")
}

/// A pair stream a.test→b.test through STARTTLS, a message queued, up to the features after
/// TLS (not fed yet); `can` says whether our certificate names a.test.
fn outbound_after_tls(ctx: Arc<Ctx>, can: bool) -> Outgoing {
    let mut s = Outgoing::new(
        ctx,
        "t".into(),
        d("a.test"),
        d("b.test"),
        Purpose::Pair,
        false,
    )
    .with_external(can);
    s.handle(Event::Stanza(msg()));
    s.handle(Event::Connected { tls: false });
    s.handle(Event::Header(their_header("ID-1")));
    let out = s.handle(Event::Element(el(
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>",
    )));
    assert_eq!(out, vec![Action::Send(Element::new("starttls", TLS_NS))]);
    s.handle(Event::Element(el(
        "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    )));
    s.handle(Event::TlsEstablished);
    s.handle(Event::Header(their_header("ID-2")));
    s
}

fn key_sent(id: &str) -> Action {
    let key = crate::keys::DialbackSecret::from_secret(SECRET).key("b.test", "a.test", id);
    Action::Send(el(&format!(
        "<db:result from='a.test' to='b.test'>{key}</db:result>"
    )))
}

#[test]
fn sasl01_outbound_uses_external_then_restarts_and_flushes_the_queue() {
    let mut s = outbound_after_tls(tls_ctx(true), true);
    let out = s.handle(mechanisms_features());
    // XEP-0178 §3: no authzid, the empty response "=".
    assert_eq!(
        out,
        vec![Action::Send(el(&format!(
            "<auth xmlns='{SASL_NS}' mechanism='EXTERNAL'>=</auth>"
        )))]
    );
    assert!(!s.is_established());
    let out = s.handle(Event::Element(el(&format!("<success xmlns='{SASL_NS}'/>"))));
    assert!(
        matches!(&out[..], [Action::Restart, Action::SendHeader(h)] if h.from.as_deref() == Some("a.test")),
        "{out:?}"
    );
    assert_eq!(
        s.queued(),
        1,
        "nothing is sent before the restarted stream's features"
    );
    s.handle(Event::Header(their_header("ID-3")));
    let out = s.handle(Event::Element(el("<stream:features/>")));
    assert_eq!(
        out,
        vec![
            Action::Authenticated {
                local: d("a.test"),
                remote: d("b.test")
            },
            Action::Send(msg())
        ]
    );
    assert!(s.is_established());
}

#[test]
fn sasl01_outbound_failure_falls_back_to_dialback_on_the_same_stream() {
    let mut s = outbound_after_tls(tls_ctx(true), true);
    s.handle(mechanisms_features());
    let out = s.handle(Event::Element(el(&format!(
        "<failure xmlns='{SASL_NS}'><not-authorized/><text>self signed certificate</text></failure>"
    ))));
    assert_eq!(out, vec![key_sent("ID-2")]);
    let out = s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test' type='valid'/>",
    )));
    assert!(
        matches!(&out[..], [Action::Authenticated { .. }, Action::Send(_)]),
        "{out:?}"
    );
}

#[test]
fn sasl01_outbound_dialback_when_external_is_not_offered_or_our_certificate_cannot_do_it() {
    let mut s = outbound_after_tls(tls_ctx(true), false);
    assert_eq!(s.handle(mechanisms_features()), vec![key_sent("ID-2")]);
    let mut s = outbound_after_tls(tls_ctx(true), true);
    let out = s.handle(Event::Element(el(
        "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
    )));
    assert_eq!(out, vec![key_sent("ID-2")]);
}

#[test]
fn sasl01_outbound_external_required_never_falls_back_and_bounces() {
    let required = || pkix_ctx(Some(AuthMode::External));
    // Not offered: no dialback, the queue bounces, policy-violation.
    let mut s = outbound_after_tls(required(), true);
    let out = s.handle(Event::Element(el("<stream:features/>")));
    assert!(
        matches!(&out[0], Action::Bounce { condition: StanzaCondition::RemoteServerTimeout, stanzas, .. } if stanzas.len() == 1),
        "{out:?}"
    );
    assert!(
        closes_with(&out, StreamCondition::PolicyViolation),
        "{out:?}"
    );
    assert!(
        !out.iter().any(|a| matches!(a, Action::Send(_))),
        "no db:result: {out:?}"
    );
    // Refused: the stream closes without dialback.
    let mut s = outbound_after_tls(required(), true);
    s.handle(mechanisms_features());
    let out = s.handle(Event::Element(el(&format!(
        "<failure xmlns='{SASL_NS}'><not-authorized/></failure>"
    ))));
    assert!(matches!(&out[0], Action::Bounce { .. }), "{out:?}");
    assert!(matches!(out.last(), Some(Action::Close(None))), "{out:?}");
    assert!(!out.iter().any(|a| matches!(a, Action::Send(_))), "{out:?}");
}

#[test]
fn sasl01_verify_connections_keep_using_dialback() {
    let req = VerifyRequest {
        local: d("a.test"),
        remote: d("b.test"),
        stream_id: "IN-1".into(),
        key: "k3y".into(),
    };
    let mut s = Outgoing::new(
        tls_ctx(false),
        "t".into(),
        d("a.test"),
        d("b.test"),
        Purpose::Verify(req),
        true,
    )
    .with_external(true);
    s.handle(Event::Connected { tls: true });
    s.handle(Event::Header(their_header("ID-1")));
    let out = s.handle(mechanisms_features());
    assert!(
        matches!(&out[..], [Action::Send(v)] if v.name == "verify"),
        "{out:?}"
    );
}

#[test]
fn sasl01_odd_sasl_input_never_panics_and_never_authenticates_wrongly() {
    // base64 of "B.TEST" (the same domain, other case), "b.test\0", "u@b.test", "", a long name.
    let bodies = [
        "Qi5URVNU",
        "Yi50ZXN0AA==",
        "dUBiLnRlc3Q=",
        "====",
        "=",
        "==",
        "Yi50ZXN0\nYi50ZXN0",
        &"QUFB".repeat(2000),
        "<x/>",
    ];
    for body in bodies {
        let (mut s, _) = after_tls(pkix_ctx(None), Some(cert_for(&["b.test"])));
        let out = s.handle(auth(body));
        for a in &out {
            match a {
                Action::Authenticated { remote, local } => {
                    assert_eq!((remote, local), (&d("b.test"), &d("a.test")), "{body:?}");
                }
                Action::Send(e) => assert_eq!(e.ns, SASL_NS, "{body:?}: {e:?}"),
                Action::Restart => {}
                other => panic!("{body:?}: {other:?}"),
            }
        }
    }
    // SASL elements out of place: answered or refused, never a panic, never authenticated.
    for xml in [
        format!("<response xmlns='{SASL_NS}'>=</response>"),
        format!("<abort xmlns='{SASL_NS}'/>"),
        format!("<success xmlns='{SASL_NS}'/>"),
        format!("<auth xmlns='{SASL_NS}'>=</auth>"),
        format!("<auth xmlns='{SASL_NS}' mechanism='EXTERNAL'><x/>=</auth>"),
    ] {
        let (mut s, _) = after_tls(pkix_ctx(None), Some(cert_for(&["b.test"])));
        let out = s.handle(Event::Element(el(&xml)));
        assert!(
            !out.iter()
                .any(|a| matches!(a, Action::Authenticated { .. })),
            "{xml}: {out:?}"
        );
        if xml.contains("<x/>") {
            assert!(is_failure(&out, "malformed-request"), "{out:?}");
        }
    }
}
