//! The router's side of target multiplexing (XEP-0220 §2.6.2, DB-29) as plain data: a pair
//! handed over to a shared stream keeps its order, a joined pair that fails backs off alone,
//! and a shared stream that ends hands every pair it carried back. No stream threads.

use super::tests::{key, outbound};
use super::*;
use crate::dns::Resolver;
use crate::stream::testutil;
use std::net::SocketAddr;
use std::thread;

fn router() -> Arc<Router> {
    let ctx = testutil::ctx_with(|c| c.timeouts.retry = Duration::from_secs(60));
    Router::new(ctx, Resolver::new(Vec::new(), Duration::from_secs(1)), None)
}

fn msg(n: usize, to: &str) -> Element {
    Element::new("message", "jabber:server")
        .with_attr("from", "u@a.test")
        .with_attr("to", format!("v@{to}"))
        .with_attr("id", format!("{to}-{n}"))
}

fn id(e: &Element) -> String {
    e.attr("id").unwrap_or_default().to_string()
}

/// The remote domain and handle of each outbound start.
fn outbounds(starts: Starts) -> Vec<(String, Handle)> {
    starts
        .into_iter()
        .map(|s| match s {
            Start::Outbound {
                remote,
                handle,
                slot,
                ..
            } => {
                std::mem::forget(slot);
                (remote.to_string(), handle)
            }
            other => panic!("{other:?}"),
        })
        .collect()
}

/// What waits in `h`'s inbox, in order, a hand-over's stanzas in its place (taken out).
fn inbox_ids(h: &Handle) -> Vec<String> {
    let mut items = Vec::new();
    h.inbox().take(&mut items, usize::MAX);
    let mut ids = Vec::new();
    for i in items {
        match i {
            Input::Stanza(el, _) => ids.push(id(&el)),
            Input::Join { stanzas, .. } => ids.extend(stanzas.iter().map(id)),
            Input::Verified { .. } => {}
        }
    }
    ids
}

const ADDR: &str = "127.0.0.9:5269";

/// b.test's stream S, up and offered at ADDR.
fn shared_stream(r: &Router) -> (Handle, SharedStream) {
    let s = outbound(r.route(msg(0, "b.test")));
    r.outbound_up(&key("b.test"), s.id());
    let shared = SharedStream {
        handle: s.clone(),
        addr: ADDR.parse::<SocketAddr>().unwrap(),
        tls: false,
        cert: None,
    };
    r.share(shared.clone());
    (s, shared)
}

/// DB-29, ROUTE-01: c.test's new stream hands its pair to S while a sender keeps routing to
/// c.test: what the new stream held, then what waited in its inbox, then every later stanza,
/// reach S in order, none lost, and no second stream starts.
#[test]
fn db29_route01_a_handover_keeps_the_pair_s_order_while_senders_race_it() {
    let r = router();
    let (s, shared) = shared_stream(&r);
    assert_eq!(inbox_ids(&s), ["b.test-0"]);
    let j = outbound(r.route(msg(0, "c.test")));
    let r2 = r.clone();
    let sender = thread::spawn(move || {
        let mut starts = Vec::new();
        for n in 1..2000 {
            starts.extend(r2.route(msg(n, "c.test")));
        }
        starts
    });
    // The new stream's core took what had arrived so far (its held queue).
    let mut took = Vec::new();
    j.inbox().take(&mut took, 64);
    let held: Vec<Element> = took
        .into_iter()
        .filter_map(|i| match i {
            Input::Stanza(el, _) => Some(el),
            _ => None,
        })
        .collect();
    assert!(r.join_shared(&key("c.test"), &j, held, &shared).is_ok());
    let late = sender.join().unwrap();
    assert!(late.is_empty(), "no second stream: {late:?}");
    assert!(j.inbox().is_closed());
    let want: Vec<String> = (0..2000).map(|n| format!("c.test-{n}")).collect();
    assert_eq!(inbox_ids(&s), want);
}

/// A stream no longer offered (it refused a pair, DB-08, or is closing) takes no hand-over:
/// the held stanzas come back and the new stream keeps its route and inbox.
#[test]
fn db29_no_handover_to_a_stream_no_longer_offered() {
    let r = router();
    let (s, shared) = shared_stream(&r);
    assert!(r.unshare(s.id()));
    let j = outbound(r.route(msg(0, "c.test")));
    let held = vec![msg(9, "c.test")];
    let back = r
        .join_shared(&key("c.test"), &j, held, &shared)
        .unwrap_err();
    assert_eq!(back.iter().map(id).collect::<Vec<_>>(), ["c.test-9"]);
    assert!(!j.inbox().is_closed());
    assert!(r.route(msg(1, "c.test")).is_empty());
    assert_eq!(inbox_ids(&j), ["c.test-0", "c.test-1"]);
    assert!(r.shared_at(ADDR.parse().unwrap()).is_empty());
}

/// DB-08, DB-09 with DB-29: a joined pair that fails backs off alone; the stream's own pair
/// still routes to it.
#[test]
fn db29_a_joined_pair_that_fails_backs_off_alone() {
    let r = router();
    let (s, shared) = shared_stream(&r);
    let j = outbound(r.route(msg(0, "c.test")));
    r.join_shared(&key("c.test"), &j, Vec::new(), &shared)
        .unwrap();
    let why = Bounce::new(StanzaCondition::InternalServerError, "refused");
    r.pair_failed(&key("c.test"), &s, why);
    assert!(matches!(
        lock(&r.routes).get(&key("c.test")),
        Some(Route::Backoff { .. })
    ));
    assert!(r.route(msg(1, "c.test")).is_empty(), "no new dial");
    assert!(r.route(msg(1, "b.test")).is_empty());
    assert_eq!(inbox_ids(&s), ["b.test-0", "c.test-0", "b.test-1"]);
}

/// ROUTE-01, DB-06 with DB-29: a shared stream that ends hands every pair it carried back:
/// its own (b.test) and a verified joined one (c.test) get new streams with their waiting
/// stanzas in order, ahead of newer ones; a pair whose hand-over still waited in the inbox
/// (e.test) too; a joined pair that failed (d.test) bounces and backs off. The stream is no
/// longer offered.
#[test]
fn db29_route01_a_shared_stream_that_ends_hands_back_every_pair() {
    let r = router();
    let (s, shared) = shared_stream(&r);
    for remote in ["c.test", "d.test", "e.test"] {
        let j = outbound(r.route(msg(0, remote)));
        r.join_shared(&key(remote), &j, Vec::new(), &shared)
            .unwrap();
    }
    // S's thread took the hand-overs of c.test and d.test (not e.test's) and b.test-0.
    let mut took = Vec::new();
    s.inbox().take(&mut took, 3);
    for n in 1..3 {
        for remote in ["b.test", "c.test", "d.test", "e.test"] {
            assert!(r.route(msg(n, remote)).is_empty());
        }
    }
    let failed = Some(Bounce::new(StanzaCondition::RemoteServerTimeout, "closed"));
    let joined = vec![(key("c.test"), None), (key("d.test"), failed)];
    let starts = outbounds(r.outbound_closing_pairs(&key("b.test"), &s, None, joined));
    assert!(r.shared_at(ADDR.parse().unwrap()).is_empty());
    let mut got: Vec<(String, Vec<String>)> = starts
        .iter()
        .map(|(remote, h)| {
            let _ = r.route(msg(3, remote));
            (remote.clone(), inbox_ids(h))
        })
        .collect();
    got.sort();
    let ids = |remote: &str, ns: &[usize]| -> Vec<String> {
        ns.iter().map(|n| format!("{remote}-{n}")).collect()
    };
    assert_eq!(
        got,
        [
            ("b.test".to_string(), ids("b.test", &[1, 2, 3])),
            ("c.test".to_string(), ids("c.test", &[1, 2, 3])),
            ("e.test".to_string(), ids("e.test", &[0, 1, 2, 3])),
        ]
    );
    assert!(matches!(
        lock(&r.routes).get(&key("d.test")),
        Some(Route::Backoff { .. })
    ));
}
