//! Unit tests of target multiplexing on the outbound core (XEP-0220 §2.6.2) on literal XML:
//! further pairs on an established stream, each with its own key, FIFO and outcome. Each test
//! cites the rule it proves.

use super::*;
use crate::keys::DialbackSecret;
use crate::stream::testutil::{ctx, el, header, SECRET};

fn d(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

fn features(errors: bool) -> Element {
    let inner = if errors { "<errors/>" } else { "" };
    el(&format!(
        "<stream:features><dialback xmlns='urn:xmpp:features:dialback'>{inner}</dialback></stream:features>"
    ))
}

/// A stream a.test→b.test on b.test's stream ID-B, verified; its peer advertised dialback
/// errors when `errors`.
fn established(errors: bool) -> Outgoing {
    let mut s = Outgoing::new(
        ctx(),
        "t".into(),
        d("a.test"),
        d("b.test"),
        Purpose::Pair,
        false,
    );
    s.handle(Event::Connected { tls: false });
    let h = StreamHeader {
        id: Some("ID-B".into()),
        ..header(Some("b.test"), Some("a.test"))
    };
    s.handle(Event::Header(h));
    s.handle(Event::Element(features(errors)));
    let out = s.handle(Event::Element(el(
        "<db:result from='b.test' to='a.test' type='valid'/>",
    )));
    assert!(matches!(out[0], Action::Authenticated { .. }), "{out:?}");
    assert!(s.is_established());
    s
}

/// A message from `from` (a JID) to `to`, with id `id`.
fn msg(from: &str, to: &str, id: &str) -> Element {
    el(&format!(
        "<message from='{from}' to='{to}' id='{id}'><body>{id}</body></message>"
    ))
}

fn join(s: &mut Outgoing, local: &str, remote: &str, stanzas: Vec<Element>) -> Vec<Action> {
    s.handle(Event::Join {
        local: d(local),
        remote: d(remote),
        stanzas,
    })
}

/// Our db:result for `local`→`remote` keyed with b.test's stream id ID-B (XEP-0185).
fn key_for(local: &str, remote: &str) -> Action {
    let key = DialbackSecret::from_secret(SECRET).key(remote, local, "ID-B");
    Action::Send(el(&format!(
        "<db:result from='{local}' to='{remote}'>{key}</db:result>"
    )))
}

fn answer(s: &mut Outgoing, from: &str, to: &str, ty: &str) -> Vec<Action> {
    let extra = if ty == "error" {
        "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
    } else {
        ""
    };
    s.handle(Event::Element(el(&format!(
        "<db:result from='{from}' to='{to}' type='{ty}'>{extra}</db:result>"
    ))))
}

fn sent_ids(out: &[Action]) -> Vec<String> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send(e) if e.name == "message" => e.attr("id").map(str::to_string),
            _ => None,
        })
        .collect()
}

fn bounce_of(out: &[Action]) -> Option<(Vec<String>, StanzaCondition)> {
    out.iter().find_map(|a| match a {
        Action::Bounce {
            stanzas, condition, ..
        } => Some((
            stanzas
                .iter()
                .filter_map(|e| e.attr("id").map(str::to_string))
                .collect(),
            *condition,
        )),
        _ => None,
    })
}

fn pair_failed(out: &[Action], local: &str, remote: &str) -> bool {
    out.iter().any(|a| {
        matches!(a, Action::PairFailed { local: l, remote: r, .. } if *l == d(local) && *r == d(remote))
    })
}

/// DB-29: without `<errors/>` in the peer's features the stream is not offered to other
/// targets, and a pair handed to it anyway gets no db:result: its stanzas bounce and it is
/// routed elsewhere (PairFailed).
#[test]
fn db29_no_second_target_unless_the_peer_advertised_errors() {
    let mut s = established(false);
    assert!(!s.offers_errors() && !s.accepts_pairs());
    let out = join(
        &mut s,
        "a.test",
        "c.test",
        vec![msg("x@a.test", "y@c.test", "c1")],
    );
    assert!(
        !out.iter()
            .any(|a| matches!(a, Action::Send(e) if e.name == "result")),
        "{out:?}"
    );
    assert_eq!(
        bounce_of(&out),
        Some((vec!["c1".into()], StanzaCondition::RemoteServerTimeout))
    );
    assert!(pair_failed(&out, "a.test", "c.test"));
    assert!(!out.iter().any(|a| matches!(a, Action::Close(_))));
}

/// DB-29, DB-03, DB-05: with `<errors/>` a second target joins: one db:result for it, keyed
/// with the stream's id (XEP-0185), its stanzas queued (none on the wire before valid) while
/// the stream's verified pair keeps sending.
#[test]
fn db29_db05_second_target_gets_its_key_and_its_own_queue() {
    let mut s = established(true);
    assert!(s.offers_errors() && s.accepts_pairs());
    let out = join(
        &mut s,
        "a.test",
        "c.test",
        vec![msg("x@a.test", "y@c.test", "c1")],
    );
    assert_eq!(out, vec![key_for("a.test", "c.test")]);
    assert!(s
        .handle(Event::Stanza(msg("x@a.test", "y@c.test", "c2")))
        .is_empty());
    assert_eq!(s.queued(), 2);
    let out = s.handle(Event::Stanza(msg("x@a.test", "u@b.test", "b1")));
    assert_eq!(sent_ids(&out), ["b1"], "the verified pair is not held up");
}

/// DB-28 with DB-29: the joined pair may come from another of our domains (sender and target
/// multiplexing together); its key is for that domain.
#[test]
fn db28_db29_joined_pair_from_another_local_domain() {
    let mut s = established(true);
    let out = join(&mut s, "conference.a.test", "c.test", Vec::new());
    assert_eq!(out, vec![key_for("conference.a.test", "c.test")]);
}

/// DB-08 (valid), DB-29: valid for one joined pair flushes its queue in order and only its
/// queue; another joined pair still waits.
#[test]
fn db08_db29_valid_flushes_only_that_pair() {
    let mut s = established(true);
    join(
        &mut s,
        "a.test",
        "c.test",
        vec![msg("x@a.test", "y@c.test", "c1")],
    );
    join(
        &mut s,
        "a.test",
        "d.test",
        vec![msg("x@a.test", "y@d.test", "d1")],
    );
    s.handle(Event::Stanza(msg("x@a.test", "y@c.test", "c2")));
    let out = answer(&mut s, "c.test", "a.test", "valid");
    assert_eq!(
        out[0],
        Action::Authenticated {
            local: d("a.test"),
            remote: d("c.test")
        }
    );
    assert_eq!(sent_ids(&out), ["c1", "c2"]);
    assert_eq!(s.queued(), 1, "d.test's stanza still waits");
    let out = s.handle(Event::Stanza(msg("x@a.test", "y@c.test", "c3")));
    assert_eq!(sent_ids(&out), ["c3"], "then straight out");
    assert!(s
        .handle(Event::Stanza(msg("x@a.test", "y@d.test", "d2")))
        .is_empty());
}

/// DB-08 (invalid), DB-29: invalid for a joined pair bounces its queue with
/// internal-server-error and its later stanzas too; the stream stays for its verified pair, but
/// takes no new target (SHOULD NOT send for other pairs after invalid: no new ones).
#[test]
fn db08_db29_invalid_bounces_only_that_pair() {
    let mut s = established(true);
    join(
        &mut s,
        "a.test",
        "c.test",
        vec![msg("x@a.test", "y@c.test", "c1")],
    );
    let out = answer(&mut s, "c.test", "a.test", "invalid");
    assert_eq!(
        bounce_of(&out),
        Some((vec!["c1".into()], StanzaCondition::InternalServerError))
    );
    assert!(pair_failed(&out, "a.test", "c.test"));
    assert!(
        !out.iter().any(|a| matches!(a, Action::Close(_))),
        "{out:?}"
    );
    assert!(!s.accepts_pairs());
    let out = s.handle(Event::Stanza(msg("x@a.test", "y@c.test", "c2")));
    assert_eq!(
        bounce_of(&out),
        Some((vec!["c2".into()], StanzaCondition::InternalServerError))
    );
    let out = s.handle(Event::Stanza(msg("x@a.test", "u@b.test", "b1")));
    assert_eq!(sent_ids(&out), ["b1"]);
    assert_eq!(
        s.joined_pairs()[0].1.as_ref().map(|b| b.condition),
        Some(StanzaCondition::InternalServerError)
    );
}

/// DB-09, DB-29: a dialback error for a joined pair bounces its queue with
/// remote-server-timeout; the stream stays open and keeps taking pairs.
#[test]
fn db09_db29_error_bounces_only_that_pair_and_the_stream_stays() {
    let mut s = established(true);
    join(
        &mut s,
        "a.test",
        "c.test",
        vec![msg("x@a.test", "y@c.test", "c1")],
    );
    join(
        &mut s,
        "a.test",
        "d.test",
        vec![msg("x@a.test", "y@d.test", "d1")],
    );
    let out = answer(&mut s, "c.test", "a.test", "error");
    assert_eq!(
        bounce_of(&out),
        Some((vec!["c1".into()], StanzaCondition::RemoteServerTimeout))
    );
    assert!(pair_failed(&out, "a.test", "c.test"));
    assert!(!out.iter().any(|a| matches!(a, Action::Close(_))));
    assert!(s.accepts_pairs());
    let out = answer(&mut s, "d.test", "a.test", "valid");
    assert_eq!(sent_ids(&out), ["d1"]);
}

/// DB-07: an answer for a target we never sent a key for on this stream authorises nothing,
/// and a second answer for a pair changes nothing.
#[test]
fn db07_answers_for_pairs_not_joined_are_ignored() {
    let mut s = established(true);
    assert!(answer(&mut s, "e.test", "a.test", "valid").is_empty());
    join(
        &mut s,
        "a.test",
        "c.test",
        vec![msg("x@a.test", "y@c.test", "c1")],
    );
    assert!(answer(&mut s, "c.test", "conference.a.test", "valid").is_empty());
    assert_eq!(s.queued(), 1);
    answer(&mut s, "c.test", "a.test", "valid");
    assert!(answer(&mut s, "c.test", "a.test", "invalid").is_empty());
}

/// DB-05 (timeout), DB-29: a joined pair not answered in time bounces with
/// remote-server-timeout; the others go on.
#[test]
fn db05_db29_joined_pair_timeout_fails_only_that_pair() {
    let mut s = established(true);
    join(
        &mut s,
        "a.test",
        "c.test",
        vec![msg("x@a.test", "y@c.test", "c1")],
    );
    let out = s.handle(Event::JoinTimeout {
        local: d("a.test"),
        remote: d("c.test"),
    });
    assert_eq!(
        bounce_of(&out),
        Some((vec!["c1".into()], StanzaCondition::RemoteServerTimeout))
    );
    assert!(pair_failed(&out, "a.test", "c.test"));
    let out = s.handle(Event::Stanza(msg("x@a.test", "u@b.test", "b1")));
    assert_eq!(sent_ids(&out), ["b1"]);
}

/// DB-06: a joined pair still waiting when the peer closes the stream fails as by a dialback
/// error (remote-server-timeout); a verified one is not failed (its later stanzas go to a new
/// stream, through the router).
#[test]
fn db06_joined_pair_waiting_when_the_stream_closes_bounces() {
    let mut s = established(true);
    join(
        &mut s,
        "a.test",
        "c.test",
        vec![msg("x@a.test", "y@c.test", "c1")],
    );
    join(&mut s, "a.test", "d.test", Vec::new());
    answer(&mut s, "d.test", "a.test", "valid");
    let out = s.handle(Event::Close);
    assert_eq!(
        bounce_of(&out),
        Some((vec!["c1".into()], StanzaCondition::RemoteServerTimeout))
    );
    assert_eq!(out.last(), Some(&Action::Close(None)));
    let pairs = s.joined_pairs();
    assert_eq!(
        pairs
            .iter()
            .map(|(k, f)| (k.1.to_string(), f.is_some()))
            .collect::<Vec<_>>(),
        [("c.test".to_string(), true), ("d.test".to_string(), false)]
    );
    let out = s.handle(Event::Stanza(msg("x@a.test", "y@d.test", "d1")));
    assert!(matches!(&out[..], [Action::Deliver(_)]), "{out:?}");
}

/// ROUTE-01: a hand-over that could not be made puts the stanzas back at the head of the
/// stream's own queue, in order, ahead of what it queued meanwhile.
#[test]
fn route01_restored_queue_stays_ahead() {
    let mut s = Outgoing::new(
        ctx(),
        "t".into(),
        d("a.test"),
        d("b.test"),
        Purpose::Pair,
        false,
    );
    s.handle(Event::Stanza(msg("x@a.test", "u@b.test", "1")));
    s.handle(Event::Stanza(msg("x@a.test", "u@b.test", "2")));
    let held = s.take_queue();
    s.handle(Event::Stanza(msg("x@a.test", "u@b.test", "3")));
    s.restore_queue(held);
    let ids: Vec<_> = s
        .take_queue()
        .iter()
        .filter_map(|e| e.attr("id").map(str::to_string))
        .collect();
    assert_eq!(ids, ["1", "2", "3"]);
}
