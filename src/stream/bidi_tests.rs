//! Unit tests of XEP-0288 bidi in both stream cores, on literal XML. Each cites the rule it
//! proves (BIDI-01..05 in standards.md §1.3, with DB-16 and DB-24).

use super::{BIDI_FEATURE_NS, BIDI_NS};
use crate::domain::Domain;
use crate::stream::incoming::Incoming;
use crate::stream::outgoing::{Outgoing, Purpose};
use crate::stream::testutil::{closes_with, ctx, ctx_with, el, header, ids, tls_ctx};
use crate::stream::{Action, Ctx, Event, StanzaCondition, StreamCondition, Verdict};
use crate::xml::{Element, StreamHeader, DIALBACK_NS, TLS_NS};
use std::sync::Arc;

fn d(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

/// A context like [`ctx`] with `[s2s] bidi = false`.
fn bidi_off() -> Arc<Ctx> {
    ctx_with(|c| c.s2s.bidi = false)
}

/// The features element among `out`.
fn features_in(out: &[Action]) -> &Element {
    out.iter()
        .find_map(|a| match a {
            Action::Send(e) if e.name == "features" => Some(e),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no features in {out:?}"))
}

fn offers_bidi(features: &Element) -> bool {
    features.child("bidi", BIDI_FEATURE_NS).is_some()
}

/// The peer's request, in the right namespace (`BIDI_NS`) or another.
fn bidi_in(ns: &str) -> Event {
    Event::Element(el(&format!("<bidi xmlns='{ns}'/>")))
}

// ---- Inbound: a peer connected to us ----------------------------------------------------

/// An inbound stream from b.test to a.test past the header; the header's answer.
fn inbound(ctx: Arc<Ctx>) -> (Incoming, Vec<Action>) {
    let mut s = Incoming::new(ctx, "t".into(), ids(), false);
    let out = s.handle(Event::Header(header(Some("b.test"), Some("a.test"))));
    (s, out)
}

/// b.test claims b.test→a.test, and its Authoritative Server says valid.
fn verify_b(s: &mut Incoming) -> Vec<Action> {
    let out = s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test'>k</db:result>",
    )));
    assert!(matches!(&out[..], [Action::Verify(_)]), "{out:?}");
    s.handle(Event::Verified {
        remote: d("b.test"),
        local: d("a.test"),
        verdict: Verdict::Valid,
    })
}

/// An inbound bidi stream with b.test→a.test verified.
fn bidi_inbound() -> Incoming {
    let (mut s, _) = inbound(ctx());
    assert!(s.handle(bidi_in(BIDI_NS)).is_empty());
    assert!(s.is_bidi());
    verify_b(&mut s);
    s
}

/// Our stanza from `from` to `to`.
fn ours(from: &str, to: &str) -> Element {
    el(&format!(
        "<message from='bot@{from}' to='u@{to}' id='r1'><body>hi</body></message>"
    ))
}

#[test]
fn bidi01_feature_offered_once_the_stream_is_encrypted_when_starttls_is_offered() {
    for require in [true, false] {
        let (mut s, out) = inbound(tls_ctx(require));
        let f = features_in(&out);
        assert!(f.child("starttls", TLS_NS).is_some());
        assert!(
            !offers_bidi(f),
            "BIDI-01: not before STARTTLS (require_encryption = {require})"
        );
        s.handle(Event::Element(el(&format!("<starttls xmlns='{TLS_NS}'/>"))));
        s.handle(Event::TlsEstablished);
        let out = s.handle(Event::Header(header(Some("b.test"), Some("a.test"))));
        let f = features_in(&out);
        assert!(f.child("starttls", TLS_NS).is_none());
        assert!(offers_bidi(f), "BIDI-01: offered after TLS");
    }
}

#[test]
fn bidi01_plaintext_offer_only_without_tls_and_not_when_turned_off() {
    // No TLS configured and none required: offered in plaintext, as Prosody's mod_s2s_bidi
    // does when s2s_require_encryption is off.
    let (_, out) = inbound(ctx());
    assert!(offers_bidi(features_in(&out)));
    let (_, out) = inbound(bidi_off());
    assert!(!offers_bidi(features_in(&out)), "[s2s] bidi = false");
}

#[test]
fn bidi02_request_before_dialback_enables_bidi() {
    let (mut s, _) = inbound(ctx());
    assert!(!s.is_bidi());
    let out = s.handle(bidi_in(BIDI_NS));
    assert!(out.is_empty(), "the request has no answer: {out:?}");
    assert!(s.is_bidi());
}

/// ejabberd #4300: a request in the feature namespace is not a request; it enables nothing,
/// and the stream goes on (Prosody closes it with unsupported-stanza-type).
#[test]
fn bidi02_request_in_the_feature_namespace_enables_nothing_and_keeps_the_stream() {
    let (mut s, _) = inbound(ctx());
    let out = s.handle(bidi_in(BIDI_FEATURE_NS));
    assert!(out.is_empty(), "no stream error: {out:?}");
    assert!(!s.is_bidi());
    verify_b(&mut s);
    assert!(s.is_authenticated());
    let out = s.handle(Event::Stanza(ours("a.test", "b.test")));
    assert!(
        !out.iter().any(|a| matches!(a, Action::Send(_))),
        "BIDI-03, DB-24: nothing of ours on a stream without bidi: {out:?}"
    );
}

#[test]
fn bidi02_request_not_offered_or_after_dialback_enables_nothing() {
    // Before STARTTLS while TLS is offered: not offered yet.
    let (mut s, _) = inbound(tls_ctx(true));
    assert!(s.handle(bidi_in(BIDI_NS)).is_empty());
    assert!(!s.is_bidi());
    // Turned off.
    let (mut s, _) = inbound(bidi_off());
    assert!(s.handle(bidi_in(BIDI_NS)).is_empty());
    assert!(!s.is_bidi());
    // After a pair is verified (Prosody accepts it only on an unauthenticated stream).
    let (mut s, _) = inbound(ctx());
    verify_b(&mut s);
    assert!(s.handle(bidi_in(BIDI_NS)).is_empty());
    assert!(!s.is_bidi());
}

#[test]
fn bidi02_tls01_the_starttls_restart_discards_a_plaintext_request() {
    // TLS available but not required, the peer asks in plaintext anyway, then does STARTTLS.
    let (mut s, _) = inbound(tls_ctx(false));
    s.handle(bidi_in(BIDI_NS));
    s.handle(Event::Element(el(&format!("<starttls xmlns='{TLS_NS}'/>"))));
    s.handle(Event::TlsEstablished);
    s.handle(Event::Header(header(Some("b.test"), Some("a.test"))));
    assert!(!s.is_bidi(), "TLS-01: nothing from before TLS counts");
    s.handle(bidi_in(BIDI_NS));
    assert!(s.is_bidi(), "asked again after TLS");
}

#[test]
fn bidi03_our_stanzas_go_back_only_for_the_inverse_of_a_verified_pair() {
    let mut s = bidi_inbound();
    let out = s.handle(Event::Stanza(ours("a.test", "b.test")));
    assert!(
        matches!(&out[..], [Action::Send(e)] if e.attr("to") == Some("u@b.test")),
        "{out:?}"
    );
    // conference.a.test→b.test was never verified here (only b.test→a.test was).
    for (from, to) in [("conference.a.test", "b.test"), ("a.test", "c.test")] {
        let out = s.handle(Event::Stanza(ours(from, to)));
        assert!(
            matches!(&out[..], [Action::Bounce { stanzas, .. }] if stanzas.len() == 1),
            "BIDI-03: {from}→{to} is not authenticated here: {out:?}"
        );
    }
}

#[test]
fn bidi03_nothing_is_sent_back_before_the_pair_is_verified() {
    let (mut s, _) = inbound(ctx());
    s.handle(bidi_in(BIDI_NS));
    s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test'>k</db:result>",
    )));
    let out = s.handle(Event::Stanza(ours("a.test", "b.test")));
    assert!(!out.iter().any(|a| matches!(a, Action::Send(_))), "{out:?}");
}

#[test]
fn bidi03_closing_stream_hands_stanzas_back_to_the_router() {
    let mut s = bidi_inbound();
    s.handle(Event::Close);
    let out = s.handle(Event::Stanza(ours("a.test", "b.test")));
    assert!(matches!(&out[..], [Action::Deliver(_)]), "{out:?}");
}

/// BIDI-03: the key that came in on a bidi stream is checked on a connection of its own
/// (Action::Verify: a dedicated verify connection, DB-11), never with a db:verify sent back
/// on the stream it came in on.
#[test]
fn bidi03_a_key_is_never_verified_on_the_stream_it_came_in_on() {
    let mut s = bidi_inbound();
    let out = s.handle(Event::Element(el(
        "<db:result from='conference.b.test' to='a.test'>k2</db:result>",
    )));
    let [Action::Verify(req)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(req.remote, d("conference.b.test"));
    assert!(!out
        .iter()
        .any(|a| matches!(a, Action::Send(e) if e.ns == DIALBACK_NS)));
}

/// BIDI-05 with DB-16, DB-07, SEC-01: typed dialback elements on an inbound stream answer
/// nothing dialbackd sent on it, with bidi or without: they authorise nothing, are not
/// answered, and do not end the stream.
#[test]
fn bidi05_db16_typed_dialback_on_an_inbound_stream_authorises_nothing() {
    for bidi in [true, false] {
        let (mut s, _) = inbound(ctx());
        if bidi {
            s.handle(bidi_in(BIDI_NS));
        }
        assert_eq!(s.is_bidi(), bidi);
        for xml in [
            "<db:result from='b.test' to='a.test' type='valid'/>",
            "<db:verify from='b.test' to='a.test' id='id1' type='valid'/>",
            "<db:result from='b.test' to='a.test' type='error'><error type='cancel'>\
             <item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>",
        ] {
            let out = s.handle(Event::Element(el(xml)));
            assert!(out.is_empty(), "bidi={bidi} {xml}: {out:?}");
        }
        assert!(!s.is_authenticated(), "bidi={bidi}");
        let peer = el("<message from='u@b.test' to='v@a.test'/>");
        let out = s.handle(Event::Element(peer));
        assert!(
            closes_with(&out, StreamCondition::NotAuthorized),
            "DB-17: still nothing verified (bidi={bidi}): {out:?}"
        );
    }
}

// ---- Outbound: we connected ------------------------------------------------------------

/// b.test's answer header.
fn their_header() -> StreamHeader {
    StreamHeader {
        id: Some("ID-B".into()),
        ..header(Some("b.test"), Some("a.test"))
    }
}

fn features(extra: &str) -> Event {
    Event::Element(el(&format!(
        "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>\
         {extra}</stream:features>"
    )))
}

/// A pair stream a.test→b.test in `ctx` given b.test's features with `extra`; what it sent.
fn outbound(ctx: Arc<Ctx>, extra: &str) -> (Outgoing, Vec<Action>) {
    let mut s = Outgoing::new(
        ctx,
        "t".into(),
        d("a.test"),
        d("b.test"),
        Purpose::Pair,
        false,
    );
    s.handle(Event::Connected { tls: false });
    assert!(s.handle(Event::Header(their_header())).is_empty());
    let out = s.handle(features(extra));
    (s, out)
}

const OFFER: &str = "<bidi xmlns='urn:xmpp:features:bidi'/>";

/// The names of the elements `out` sends, in order, with the namespace of `<bidi/>`.
fn sent(out: &[Action]) -> Vec<String> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send(e) if e.name == "bidi" => Some(format!("bidi {}", e.ns)),
            Action::Send(e) => Some(e.name.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn bidi02_outbound_asks_before_dialback_only_when_offered() {
    let (s, out) = outbound(ctx(), OFFER);
    assert_eq!(sent(&out), [format!("bidi {BIDI_NS}"), "result".into()]);
    assert!(s.is_bidi());
    let (s, out) = outbound(ctx(), "");
    assert_eq!(sent(&out), ["result"], "not offered: not asked");
    assert!(!s.is_bidi());
    let (s, out) = outbound(bidi_off(), OFFER);
    assert_eq!(sent(&out), ["result"], "[s2s] bidi = false");
    assert!(!s.is_bidi());
    // ejabberd before #4581 advertised the feature in the request namespace: no offer.
    let (s, out) = outbound(ctx(), "<bidi xmlns='urn:xmpp:bidi'/>");
    assert_eq!(sent(&out), ["result"]);
    assert!(!s.is_bidi());
}

#[test]
fn bidi01_bidi02_outbound_asks_only_after_starttls() {
    let (mut s, out) = outbound(
        tls_ctx(true),
        &format!("<starttls xmlns='{TLS_NS}'/>{OFFER}"),
    );
    assert_eq!(sent(&out), ["starttls"], "BIDI-01: TLS first");
    s.handle(Event::Element(el(&format!("<proceed xmlns='{TLS_NS}'/>"))));
    s.handle(Event::TlsEstablished);
    s.handle(Event::Header(their_header()));
    let out = s.handle(features(OFFER));
    assert_eq!(sent(&out), [format!("bidi {BIDI_NS}"), "result".into()]);
    assert!(s.is_bidi());
}

/// A bidi pair stream a.test→b.test that dialback said valid on.
fn bidi_outbound() -> Outgoing {
    let (mut s, _) = outbound(ctx(), OFFER);
    let out = s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test' type='valid'/>",
    )));
    assert!(matches!(&out[0], Action::Authenticated { .. }), "{out:?}");
    s
}

fn theirs(from: &str, to: &str) -> Event {
    Event::Element(el(&format!(
        "<message from='u@{from}' to='bot@{to}'><body>hi</body></message>"
    )))
}

#[test]
fn bidi03_outbound_delivers_the_peers_stanzas_for_the_inverse_pair() {
    let mut s = bidi_outbound();
    let out = s.handle(theirs("b.test", "a.test"));
    assert!(matches!(&out[..], [Action::Deliver(_)]), "{out:?}");
    let out = s.handle(theirs("b.test", "a.test"));
    assert!(
        matches!(&out[..], [Action::Deliver(_)]),
        "and the next: {out:?}"
    );
}

#[test]
fn bidi03_outbound_refuses_stanzas_of_other_pairs() {
    for (from, to, cond) in [
        ("c.test", "a.test", StreamCondition::InvalidFrom),
        ("b.test", "conference.a.test", StreamCondition::HostUnknown),
    ] {
        let mut s = bidi_outbound();
        let out = s.handle(theirs(from, to));
        assert!(closes_with(&out, cond), "{from}→{to}: {out:?}");
        assert!(!out.iter().any(|a| matches!(a, Action::Deliver(_))));
    }
}

#[test]
fn bidi03_outbound_refuses_stanzas_before_our_pair_is_verified() {
    let (mut s, _) = outbound(ctx(), OFFER);
    let out = s.handle(theirs("b.test", "a.test"));
    assert!(closes_with(&out, StreamCondition::NotAuthorized), "{out:?}");
    assert!(!out.iter().any(|a| matches!(a, Action::Deliver(_))));
}

#[test]
fn db24_without_bidi_the_peers_stanzas_on_our_stream_are_not_delivered() {
    let (mut s, _) = outbound(ctx(), "");
    s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test' type='valid'/>",
    )));
    assert!(s.is_established());
    let out = s.handle(theirs("b.test", "a.test"));
    assert!(out.is_empty(), "DB-24: {out:?}");
}

/// BIDI-04: the peer may start dialback for its other domains on our bidi stream; dialbackd
/// answers with a dialback error (XEP-0220 §2.5), so the peer opens its own connection, and
/// keeps the stream and its pair.
#[test]
fn bidi04_dialback_for_another_pair_on_our_stream_gets_a_dialback_error() {
    let mut s = bidi_outbound();
    for (from, to, cond) in [
        (
            "conference.b.test",
            "a.test",
            StanzaCondition::ResourceConstraint,
        ),
        ("b.test", "nosuch.test", StanzaCondition::ItemNotFound),
    ] {
        let out = s.handle(Event::Element(el(&format!(
            "<db:result from='{from}' to='{to}'>k</db:result>"
        ))));
        let [Action::Send(r)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!((r.ns.as_str(), r.name.as_str()), (DIALBACK_NS, "result"));
        assert_eq!(
            (r.attr("from"), r.attr("to")),
            (Some(to), Some(from)),
            "DB-20"
        );
        assert!(
            matches!(Verdict::of(r), Some(Verdict::Error(c)) if c == cond),
            "{r:?}"
        );
    }
    assert!(s.is_established(), "the stream and its pair stay");
    let out = s.handle(theirs("b.test", "a.test"));
    assert!(matches!(&out[..], [Action::Deliver(_)]), "{out:?}");
}

/// RFC 6120 §4.4 on a bidi stream we close: what the peer sent before it saw our close is
/// still delivered when it is of the inverse pair (BIDI-03), and only that.
#[test]
fn bidi03_stanzas_in_flight_during_our_close_are_delivered() {
    let mut s = bidi_outbound();
    let out = s.handle(Event::Idle);
    assert!(matches!(out.last(), Some(Action::Close(None))), "{out:?}");
    let out = s.handle(theirs("b.test", "a.test"));
    assert!(matches!(&out[..], [Action::Deliver(_)]), "{out:?}");
    let out = s.handle(theirs("c.test", "a.test"));
    assert!(out.is_empty(), "not of the pair: {out:?}");
    let out = s.handle(theirs("b.test", "a.test"));
    assert!(
        out.is_empty(),
        "nothing more after a stanza of another pair: {out:?}"
    );
    // Without bidi, nothing the peer sends on our stream is delivered (DB-24).
    let (mut s, _) = outbound(ctx(), "");
    s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test' type='valid'/>",
    )));
    s.handle(Event::Idle);
    assert!(s.handle(theirs("b.test", "a.test")).is_empty());
}
