//! The router as plain data: routes, the pair FIFO across a stream's end, backoff, caps. No
//! stream threads: the tests hold the `Start`s the router returns and play the streams.

use super::*;
use crate::dns::Resolver;
use crate::stream::testutil;
use std::thread;

fn router() -> Arc<Router> {
    let ctx = testutil::ctx_with(|c| {
        c.timeouts.retry = Duration::from_secs(60);
        c.limits.outbound_streams = 2;
    });
    Router::new(ctx, Resolver::new(Vec::new(), Duration::from_secs(1)), None)
}

pub(super) fn key(remote: &str) -> (Domain, Domain) {
    (
        Domain::parse("a.test").unwrap(),
        Domain::parse(remote).unwrap(),
    )
}

fn msg(n: usize, to: &str) -> Element {
    Element::new("message", "jabber:server")
        .with_attr("from", "u@a.test")
        .with_attr("to", format!("v@{to}"))
        .with_attr("id", format!("m{n}"))
}

/// The ids waiting in `h`'s inbox, in order (taken out).
fn waiting(h: &Handle) -> Vec<String> {
    h.close()
        .iter()
        .map(|e| e.attr("id").unwrap_or_default().to_string())
        .collect()
}

/// The handle of an outbound start.
pub(super) fn outbound(mut starts: Starts) -> Handle {
    assert_eq!(starts.len(), 1, "{starts:?}");
    match starts.pop() {
        Some(Start::Outbound { handle, slot, .. }) => {
            std::mem::forget(slot);
            handle
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn db02_route01_the_first_stanza_starts_one_stream_and_later_ones_queue_behind_it() {
    let r = router();
    let h = outbound(r.route(msg(0, "b.test")));
    for n in 1..5 {
        assert!(
            r.route(msg(n, "b.test")).is_empty(),
            "no second stream (DB-02)"
        );
    }
    assert_eq!(waiting(&h), ["m0", "m1", "m2", "m3", "m4"]);
}

#[test]
fn route01_a_stream_that_ends_hands_its_stanzas_back_ahead_of_newer_ones() {
    let r = router();
    let h1 = outbound(r.route(msg(0, "b.test")));
    for n in 1..4 {
        let _ = r.route(msg(n, "b.test"));
    }
    // The stream took m0 (sent it); m1..m3 wait in its inbox when it closes cleanly.
    let mut took = Vec::new();
    h1.inbox().take(&mut took, 1);
    let h2 = outbound(r.outbound_closing(&key("b.test"), &h1, None));
    // Newer stanzas go behind the handed-back ones, on the new stream.
    for n in 4..6 {
        assert!(r.route(msg(n, "b.test")).is_empty());
    }
    assert_eq!(waiting(&h2), ["m1", "m2", "m3", "m4", "m5"]);
}

#[test]
fn route01_no_reordering_while_senders_race_the_close() {
    let r = router();
    let h1 = outbound(r.route(msg(0, "b.test")));
    let r2 = r.clone();
    let sender = thread::spawn(move || {
        let mut starts = Vec::new();
        for n in 1..2000 {
            starts.extend(r2.route(msg(n, "b.test")));
        }
        starts
    });
    // Close while the sender runs; every stanza is in h1 (before) or h2 (after), in order.
    let h2 = outbound(r.outbound_closing(&key("b.test"), &h1, None));
    let late = sender.join().unwrap();
    assert!(late.is_empty(), "one route, one stream: {late:?}");
    let ids: Vec<usize> = waiting(&h2)
        .iter()
        .map(|i| i[1..].parse().unwrap())
        .collect();
    assert_eq!(ids, (0..2000).collect::<Vec<_>>());
}

#[test]
fn srv06_route02_a_failed_pair_backs_off_then_tries_again() {
    let r = router();
    let comp = r.new_handle(StreamKind::Component, 100).unwrap();
    assert!(r.register_component(Domain::parse("echo.a.test").unwrap(), comp.clone()));
    let from_comp = |n: usize| msg(n, "b.test").with_attr("from", "u@echo.a.test");
    let k = (
        Domain::parse("echo.a.test").unwrap(),
        Domain::parse("b.test").unwrap(),
    );
    let h = outbound(r.route(from_comp(0)));
    let _ = r.route(from_comp(1));
    let failure = Some(Bounce::new(
        StanzaCondition::RemoteServerNotFound,
        "no such domain",
    ));
    assert!(r.outbound_closing(&k, &h, failure).is_empty());
    // Waiting stanzas bounce with the failure's condition; so does the next one, at once,
    // without a new attempt.
    assert!(
        r.route(from_comp(2)).is_empty(),
        "no re-dial during the backoff"
    );
    let bounced = comp.close();
    let conditions: Vec<&str> = bounced
        .iter()
        .map(|e| e.elements().find(|c| c.name == "error").unwrap())
        .map(|e| e.elements().next().unwrap().name.as_str())
        .collect();
    assert_eq!(conditions, ["remote-server-not-found"; 3]);
    // Once the window has passed, the next stanza tries again.
    match lock(&r.routes).get_mut(&k) {
        Some(Route::Backoff { until, .. }) => *until = Instant::now(),
        _ => panic!("the pair is in backoff"),
    }
    let again = outbound(r.route(from_comp(3)));
    assert_eq!(waiting(&again), ["m3"]);
}

#[test]
fn srv06_the_window_is_jittered_within_half_and_all_of_the_retry_time() {
    let d = Duration::from_secs(10);
    let windows: Vec<Duration> = (0..50).map(|_| jittered(d)).collect();
    assert!(
        windows.iter().all(|w| *w >= d / 2 && *w <= d),
        "{windows:?}"
    );
    assert!(
        windows.iter().any(|w| *w != windows[0]),
        "random: {windows:?}"
    );
}

#[test]
fn outbound_streams_are_capped_and_a_slot_comes_back_when_a_stream_ends() {
    let r = router();
    let mut starts = r.route(msg(0, "b.test"));
    starts.extend(r.route(msg(1, "c.test")));
    assert_eq!(r.outbound_streams(), 2);
    // The third pair is refused (limits.outbound_streams = 2); its sender gets the bounce.
    assert!(r.route(msg(2, "d.test")).is_empty());
    assert_eq!(r.outbound_streams(), 2);
    // A stream ends (its start, slot included, dropped): the slot is free again.
    let s = starts.pop();
    drop(s);
    assert_eq!(r.outbound_streams(), 1);
    assert_eq!(r.route(msg(3, "d.test")).len(), 1);
}

#[test]
fn a_component_that_closes_hands_back_what_waited_for_it() {
    let r = router();
    let d = Domain::parse("echo.a.test").unwrap();
    let comp = r.new_handle(StreamKind::Component, 100).unwrap();
    assert!(r.register_component(d.clone(), comp.clone()));
    let to_comp = |n: usize| {
        Element::new("message", "jabber:server")
            .with_attr("from", "x@b.test")
            .with_attr("to", "bot@echo.a.test")
            .with_attr("id", format!("c{n}"))
    };
    let _ = r.route(to_comp(0));
    let back = r.component_closing(Some(&d), &comp);
    assert_eq!(back.len(), 1);
    // Later stanzas find no component: they bounce (to b.test: a new route is started).
    assert_eq!(r.route(to_comp(1)).len(), 1);
}

#[test]
fn route02_bounces_reach_a_component_whose_queue_is_full() {
    let ctx = testutil::ctx_with(|c| c.limits.outbox = 2);
    let r = Router::new(ctx, Resolver::new(Vec::new(), Duration::from_secs(1)), None);
    let d = Domain::parse("echo.a.test").unwrap();
    let comp = r.new_handle(StreamKind::Component, 2).unwrap();
    assert!(r.register_component(d, comp.clone()));
    let to_comp = |n: usize| {
        Element::new("message", "jabber:server")
            .with_attr("from", "x@echo.a.test")
            .with_attr("to", "bot@echo.a.test")
            .with_attr("id", format!("c{n}"))
    };
    for n in 0..2 {
        assert!(r.route(to_comp(n)).is_empty());
    }
    // The queue is full: a third stanza would be refused; a bounce of a stanza the component
    // sent (already accepted, e.g. from a failed pair) must not be, or it would be lost (an
    // error is never bounced again).
    let mine = msg(7, "b.test").with_attr("from", "u@echo.a.test");
    assert!(r
        .bounce(mine, StanzaCondition::RemoteServerTimeout, "test")
        .is_empty());
    let got = comp.close();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2].attr("type"), Some("error"));
    assert_eq!(got[2].attr("id"), Some("m7"));
}

/// A router whose `[policy]` lists are `allow` and `deny`, with the component echo.a.test
/// connected (the sender of the stanzas, which receives their bounces).
fn router_with_lists(allow: &[&str], deny: &[&str]) -> (Arc<Router>, Handle) {
    let list = |l: &[&str]| {
        l.iter()
            .map(|s| crate::policy::DomainPattern::parse(s).unwrap())
            .collect()
    };
    let ctx = testutil::ctx_with(|c| {
        c.federation.allow = list(allow);
        c.federation.deny = list(deny);
    });
    let r = Router::new(ctx, Resolver::new(Vec::new(), Duration::from_secs(1)), None);
    let comp = r.new_handle(StreamKind::Component, 100).unwrap();
    assert!(r.register_component(Domain::parse("echo.a.test").unwrap(), comp.clone()));
    (r, comp)
}

/// `(condition, error type)` of each bounce in `bounced`.
fn bounce_conditions(bounced: &[Element]) -> Vec<(String, String)> {
    bounced
        .iter()
        .map(|b| {
            let e = b.elements().find(|c| c.name == "error").expect("an error");
            let cond = e.elements().next().expect("a condition").name.clone();
            (cond, e.attr("type").unwrap_or_default().to_string())
        })
        .collect()
}

/// RFC 6120 §8.3.3.10: a stanza for a domain the `[policy]` lists refuse bounces at once
/// with `not-allowed` (type cancel) and starts no stream: nothing is dialled.
#[test]
fn stanzas_for_a_refused_domain_bounce_not_allowed_without_dialling() {
    let (r, comp) = router_with_lists(&[], &["spam.test", "*.spam.test"]);
    let from_comp = |n: usize, to: &str| msg(n, to).with_attr("from", "u@echo.a.test");
    for (n, to) in ["spam.test", "x.spam.test", "a.b.spam.test"]
        .iter()
        .enumerate()
    {
        assert!(
            r.route(from_comp(n, to)).is_empty(),
            "{to}: nothing dialled"
        );
    }
    assert_eq!(r.outbound_streams(), 0);
    let bounced = comp.close();
    assert_eq!(
        bounce_conditions(&bounced),
        vec![("not-allowed".to_string(), "cancel".to_string()); 3]
    );
    assert_eq!(bounced[1].attr("to"), Some("u@echo.a.test"));
    assert_eq!(bounced[1].attr("from"), Some("v@x.spam.test"));
    // A domain the lists do not refuse is dialled as usual.
    let (r, _comp) = router_with_lists(&[], &["spam.test", "*.spam.test"]);
    let h = outbound(r.route(from_comp(9, "notspam.test")));
    assert_eq!(waiting(&h), ["m9"]);
}

/// With an allow list, only the domains it covers are dialled; a denied one stays refused even
/// when the allow list covers it, and our own domains are never subject to the lists.
#[test]
fn an_allow_list_refuses_every_other_domain() {
    let (r, comp) = router_with_lists(&["b.test", "*.corp.test"], &["bad.corp.test"]);
    let from_comp = |n: usize, to: &str| msg(n, to).with_attr("from", "u@echo.a.test");
    let mut allowed = r.route(from_comp(0, "b.test"));
    allowed.extend(r.route(from_comp(1, "x.corp.test")));
    assert_eq!(allowed.len(), 2, "{allowed:?}");
    for (n, to) in [(2, "c.test"), (3, "corp.test"), (4, "bad.corp.test")] {
        assert!(r.route(from_comp(n, to)).is_empty(), "{to}");
    }
    // A ping to our own domain is answered (a.test is hosted, not judged by the lists).
    let ping = crate::xml::Element::new("iq", "jabber:server")
        .with_attr("type", "get")
        .with_attr("id", "p1")
        .with_attr("from", "u@echo.a.test")
        .with_attr("to", "a.test")
        .with_child(Element::new("ping", stanza::PING_NS));
    assert!(r.route(ping).is_empty());
    let got = comp.close();
    let (pong, bounced): (Vec<_>, Vec<_>) = got
        .into_iter()
        .partition(|e| e.attr("type") == Some("result"));
    assert_eq!(pong.len(), 1, "the ping is answered");
    assert_eq!(
        bounce_conditions(&bounced),
        vec![("not-allowed".to_string(), "cancel".to_string()); 3]
    );
    drop(allowed);
}

/// An iq get of disco#info from the component echo.a.test to `to`, with `query` attributes.
fn disco(id: &str, to: &str, node: Option<&str>) -> Element {
    let mut query = Element::new("query", stanza::DISCO_INFO_NS);
    if let Some(n) = node {
        query.set_attr("node", n);
    }
    Element::new("iq", "jabber:server")
        .with_attr("type", "get")
        .with_attr("id", id)
        .with_attr("from", "u@echo.a.test/r")
        .with_attr("to", to)
        .with_child(query)
}

/// XEP-0030 §3.1: disco#info to a hosted domain is answered by the daemon (server/im and the
/// features it answers); to a JID of that domain with a node or resource, and to a component's
/// domain, it is not (service-unavailable, or the component gets it); a node gets
/// item-not-found (§3.2).
#[test]
fn disco_info_to_a_hosted_domain_is_answered_by_the_daemon() {
    let (r, comp) = router_with_lists(&[], &[]);
    for (id, to, node) in [
        ("d1", "a.test", None),
        ("d2", "conference.a.test", None),
        ("d3", "x@a.test", None),
        ("d4", "a.test/r", None),
        ("d5", "a.test", Some("n")),
        ("d6", "echo.a.test", None),
    ] {
        assert!(
            r.route(disco(id, to, node)).is_empty(),
            "{id}: nothing dialled"
        );
    }
    let got = comp.close();
    let by_id = |id: &str| got.iter().find(|e| e.attr("id") == Some(id)).unwrap();
    for (id, from) in [("d1", "a.test"), ("d2", "conference.a.test")] {
        let a = by_id(id);
        assert_eq!(
            (a.attr("type"), a.attr("from")),
            (Some("result"), Some(from))
        );
        let q = a.child("query", stanza::DISCO_INFO_NS).expect("the answer");
        let identity = q.child("identity", stanza::DISCO_INFO_NS).unwrap();
        assert_eq!(
            (identity.attr("category"), identity.attr("type")),
            (Some("server"), Some("im"))
        );
        let vars: Vec<_> = q.elements().filter_map(|f| f.attr("var")).collect();
        assert_eq!(vars, stanza::SERVER_FEATURES);
    }
    for (id, cond) in [
        ("d3", "service-unavailable"),
        ("d4", "service-unavailable"),
        ("d5", "item-not-found"),
    ] {
        assert_eq!(bounce_conditions(&[by_id(id).clone()])[0].0, cond, "{id}");
    }
    // echo.a.test is the component's domain: the component itself gets the query.
    let d6 = by_id("d6");
    assert_eq!(d6.attr("type"), Some("get"));
    assert_eq!(got.len(), 6, "{got:?}");
}

/// A hosted domain that a component serves: the component answers its disco#info, not the
/// daemon (no component connected: service-unavailable). Pings are still the daemon's.
#[test]
fn disco_info_to_a_hosted_domain_with_its_own_component_is_the_component_s() {
    let ctx = testutil::ctx_with(|c| {
        c.components.push(crate::config::ComponentConfig {
            domain: Domain::parse("a.test").unwrap(),
            secret: "s".into(),
        });
    });
    let r = Router::new(ctx, Resolver::new(Vec::new(), Duration::from_secs(1)), None);
    let comp = r.new_handle(StreamKind::Component, 100).unwrap();
    assert!(r.register_component(Domain::parse("echo.a.test").unwrap(), comp.clone()));
    assert!(r.route(disco("d1", "a.test", None)).is_empty());
    let mut ping = disco("p1", "a.test", None);
    ping.children.clear();
    ping.push_child(Element::new("ping", stanza::PING_NS));
    assert!(r.route(ping).is_empty());
    let got = comp.close();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        bounce_conditions(&got[..1])[0].0,
        "service-unavailable",
        "{got:?}"
    );
    assert_eq!(
        (got[1].attr("id"), got[1].attr("type")),
        (Some("p1"), Some("result"))
    );
}

/// An iq get of XEP-0092 software version from the component echo.a.test to `to`.
fn version_get(id: &str, to: &str) -> Element {
    Element::new("iq", "jabber:server")
        .with_attr("type", "get")
        .with_attr("id", id)
        .with_attr("from", "u@echo.a.test/r")
        .with_attr("to", to)
        .with_child(Element::new("query", stanza::VERSION_NS))
}

/// A router whose `[handlers] version` is `on`, with the component echo.a.test connected.
fn router_with_version(on: bool) -> (Arc<Router>, Handle) {
    let ctx = testutil::ctx_with(|c| c.handlers.version = on);
    let r = Router::new(ctx, Resolver::new(Vec::new(), Duration::from_secs(1)), None);
    let comp = r.new_handle(StreamKind::Component, 100).unwrap();
    assert!(r.register_component(Domain::parse("echo.a.test").unwrap(), comp.clone()));
    (r, comp)
}

/// XEP-0092 with `[handlers] version = true`: a hosted domain's bare JID answers with name and
/// version and no `os`, and disco#info lists `jabber:iq:version`; a JID with a node still gets
/// service-unavailable, and the component's domain gets the query itself.
#[test]
fn software_version_is_answered_on_hosted_domains_when_on() {
    let (r, comp) = router_with_version(true);
    for (id, to) in [("v1", "a.test"), ("v2", "x@a.test"), ("v3", "echo.a.test")] {
        assert!(
            r.route(version_get(id, to)).is_empty(),
            "{id}: nothing dialled"
        );
    }
    assert!(r.route(disco("d1", "a.test", None)).is_empty());
    let got = comp.close();
    let by_id = |id: &str| got.iter().find(|e| e.attr("id") == Some(id)).unwrap();
    let v1 = by_id("v1");
    assert_eq!(
        (v1.attr("type"), v1.attr("from"), v1.attr("to")),
        (Some("result"), Some("a.test"), Some("u@echo.a.test/r"))
    );
    let q = v1.child("query", stanza::VERSION_NS).expect("the answer");
    let name = q.child("name", stanza::VERSION_NS).map(Element::text);
    let version = q.child("version", stanza::VERSION_NS).map(Element::text);
    assert_eq!(name.as_deref(), Some("dialbackd"));
    assert_eq!(version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert!(q.child("os", stanza::VERSION_NS).is_none(), "no os: {v1:?}");
    assert_eq!(
        bounce_conditions(&[by_id("v2").clone()])[0].0,
        "service-unavailable"
    );
    assert_eq!(by_id("v3").attr("type"), Some("get"), "the component's own");
    let disco = by_id("d1").child("query", stanza::DISCO_INFO_NS).unwrap();
    let vars: Vec<_> = disco.elements().filter_map(|f| f.attr("var")).collect();
    assert_eq!(
        vars,
        [stanza::DISCO_INFO_NS, stanza::PING_NS, stanza::VERSION_NS]
    );
    assert_eq!(got.len(), 4, "{got:?}");
}

/// XEP-0092 off (the default): the version query bounces service-unavailable as any other
/// unanswered iq, and disco#info does not list it.
#[test]
fn software_version_is_service_unavailable_when_off() {
    let (r, comp) = router_with_version(false);
    assert!(r.route(version_get("v1", "a.test")).is_empty());
    assert!(r.route(disco("d1", "a.test", None)).is_empty());
    let got = comp.close();
    let by_id = |id: &str| got.iter().find(|e| e.attr("id") == Some(id)).unwrap();
    let v1 = by_id("v1");
    assert_eq!(v1.attr("type"), Some("error"));
    assert_eq!(
        bounce_conditions(std::slice::from_ref(v1))[0].0,
        "service-unavailable"
    );
    assert!(v1
        .child("query", stanza::VERSION_NS)
        .is_none_or(|q| q.child("name", stanza::VERSION_NS).is_none()));
    let disco = by_id("d1").child("query", stanza::DISCO_INFO_NS).unwrap();
    let vars: Vec<_> = disco.elements().filter_map(|f| f.attr("var")).collect();
    assert_eq!(vars, stanza::SERVER_FEATURES);
}

/// An inbound stream's handle (a peer connected to us), as `conn` makes it.
fn inbound(r: &Router) -> Handle {
    r.new_handle(StreamKind::Server, 100).unwrap()
}

/// BIDI-03, ROUTE-01: once an inbound bidi stream verified b.test→a.test, a.test's stanzas to
/// b.test go over it: no stream of ours is started.
#[test]
fn bidi03_a_pair_is_routed_over_the_bidi_stream_that_verified_its_inverse() {
    let r = router();
    let inb = inbound(&r);
    assert!(r.bidi_route(&key("b.test"), &inb));
    for n in 0..3 {
        assert!(r.route(msg(n, "b.test")).is_empty(), "no stream of ours");
    }
    assert_eq!(r.outbound_streams(), 0);
    assert_eq!(waiting(&inb), ["m0", "m1", "m2"]);
    // Another pair is not routed there.
    assert_eq!(r.route(msg(9, "c.test")).len(), 1);
}

/// ROUTE-01: one route per pair: a pair that has a stream of ours keeps it (its FIFO) when a
/// bidi stream verifies its inverse; a second bidi stream does not take over from the first.
#[test]
fn bidi03_a_pair_with_a_stream_keeps_it() {
    let r = router();
    let ours = outbound(r.route(msg(0, "b.test")));
    let inb = inbound(&r);
    assert!(!r.bidi_route(&key("b.test"), &inb));
    assert!(r.route(msg(1, "b.test")).is_empty());
    assert_eq!(waiting(&ours), ["m0", "m1"]);
    assert!(waiting(&inb).is_empty());

    let r = router();
    let first = inbound(&r);
    let second = inbound(&r);
    assert!(r.bidi_route(&key("b.test"), &first));
    assert!(!r.bidi_route(&key("b.test"), &second));
    let _ = r.route(msg(0, "b.test"));
    assert_eq!(waiting(&first), ["m0"]);
}

/// A pair in its backoff window is routed over a bidi stream that verifies its inverse: the
/// peer has just shown that it is reachable.
#[test]
fn bidi03_a_bidi_stream_ends_a_backoff_window() {
    let r = router();
    let h = outbound(r.route(msg(0, "b.test")));
    let failure = Some(Bounce::new(StanzaCondition::RemoteServerTimeout, "x"));
    let _ = r.outbound_closing(&key("b.test"), &h, failure);
    let inb = inbound(&r);
    assert!(r.bidi_route(&key("b.test"), &inb));
    assert!(r.route(msg(1, "b.test")).is_empty());
    assert_eq!(waiting(&inb), ["m1"]);
}

/// ROUTE-01 across a bidi stream's end: the stanzas waiting in its inbox go, per pair and in
/// order, ahead of newer ones, to new streams of ours; nothing is lost or reordered.
#[test]
fn route01_a_closing_bidi_stream_hands_each_pair_its_stanzas_back_in_order() {
    let r = router();
    let inb = inbound(&r);
    let kb = key("b.test");
    let kc = (
        Domain::parse("conference.a.test").unwrap(),
        Domain::parse("b.test").unwrap(),
    );
    assert!(r.bidi_route(&kb, &inb));
    assert!(r.bidi_route(&kc, &inb));
    for n in 0..6 {
        let el = msg(n, "b.test");
        let el = if n % 2 == 1 {
            el.with_attr("from", "u@conference.a.test")
        } else {
            el
        };
        assert!(r.route(el).is_empty());
    }
    // The stream took m0 (sent it); the rest wait when it closes.
    let mut took = Vec::new();
    inb.inbox().take(&mut took, 1);
    let mut starts = r.bidi_closing(&[kb.clone(), kc.clone()], &inb);
    assert_eq!(starts.len(), 2, "one new stream per pair: {starts:?}");
    let mut by_pair = HashMap::new();
    for st in starts.drain(..) {
        let Start::Outbound {
            local,
            remote,
            handle,
            slot,
        } = st
        else {
            panic!("{st:?}")
        };
        std::mem::forget(slot);
        by_pair.insert((local, remote), handle);
    }
    // Newer stanzas go behind the handed-back ones.
    assert!(r.route(msg(6, "b.test")).is_empty());
    assert_eq!(waiting(&by_pair[&kb]), ["m2", "m4", "m6"]);
    assert_eq!(waiting(&by_pair[&kc]), ["m1", "m3", "m5"]);
    assert!(inb.inbox().is_closed());
}

/// ROUTE-01 with senders racing a bidi stream's close: every stanza is on the bidi stream
/// (before) or on our new stream (after), in order.
#[test]
fn route01_no_reordering_while_senders_race_a_bidi_streams_close() {
    let r = router();
    let inb = inbound(&r);
    assert!(r.bidi_route(&key("b.test"), &inb));
    let r2 = r.clone();
    let sender = thread::spawn(move || {
        let mut starts = Vec::new();
        for n in 0..2000 {
            starts.extend(r2.route(msg(n, "b.test")));
        }
        starts
    });
    let mut starts = r.bidi_closing(&[key("b.test")], &inb);
    starts.extend(sender.join().unwrap());
    // Either the close found stanzas waiting (and started the new stream) or a sender did,
    // after it: one new stream in all.
    let h = outbound(starts);
    let ids: Vec<usize> = waiting(&h)
        .iter()
        .map(|i| i[1..].parse().unwrap())
        .collect();
    assert_eq!(ids, (0..2000).collect::<Vec<_>>());
}

/// During shutdown the stanzas a closing bidi stream held bounce (as an outbound stream's do).
#[test]
fn a_bidi_stream_closing_at_shutdown_bounces_what_waited() {
    let r = router();
    let comp = r.new_handle(StreamKind::Component, 100).unwrap();
    assert!(r.register_component(Domain::parse("echo.a.test").unwrap(), comp.clone()));
    let k = (
        Domain::parse("echo.a.test").unwrap(),
        Domain::parse("b.test").unwrap(),
    );
    let inb = inbound(&r);
    assert!(r.bidi_route(&k, &inb));
    let _ = r.route(msg(0, "b.test").with_attr("from", "u@echo.a.test"));
    r.shutting_down.store(true, Ordering::Release);
    assert!(r.bidi_closing(&[k], &inb).is_empty(), "nothing started");
    let bounced = comp.close();
    assert_eq!(bounced.len(), 1);
    assert_eq!(bounced[0].attr("type"), Some("error"));
}
