//! Memory per stanza and serializer fidelity (issue 8, items 1 and 4): a stanza's cost is bounded
//! by its size whatever its shape, an unauthenticated peer has a small stanza budget, and what a
//! verified peer sends reaches a component as the same tree.

use crate::common::*;
use dialbackd::xml::DIALBACK_NS;

/// The secret of a.test's daemon, so that a raw peer can mint a.test's keys.
const A_SECRET: &str = "known-secret";

/// a.test (Authoritative Server for the raw peer's claims) and b.test (the target, whose
/// component "b.test" receives what is routed to b.test users).
struct Setup {
    p: AandB,
    component: ComponentClient,
}

fn setup(limits: &str) -> Setup {
    let p = AandB::start(A_SECRET, |dns, _| {
        config(&["b.test"], &[("b.test", "sb")], dns, limits)
    });
    let component = ComponentClient::connect(p.b.component_addr(), "b.test", "sb");
    Setup { p, component }
}

/// The measured attack: a 30 KB namespace URI on a stanza with 100 000 empty children.
fn namespace_bomb() -> String {
    format!(
        "<message xmlns='urn:{}' from='x@a.test' to='y@b.test'>{}</message>",
        "x".repeat(30_000),
        "<a/>".repeat(100_000)
    )
}

fn attack_is_refused_cheaply(limits: &str, payload: String) {
    let mut s = setup(limits);
    let (c, writer) =
        XmlConn::connect_sending(s.p.b.s2s(), s2s_header("a.test", "b.test", None), payload);
    c.our_header("b.test");
    assert_eq!(c.stream_error(), "policy-violation");
    drop(c);
    writer.join().unwrap();
    s.p.b.wait_log("policy");
    s.p.b.assert_peak_rss_bounded();
    // Still alive, still federating, and a verified peer's stanza is delivered.
    let mut c = dialback_as_a(&s.p.b, A_SECRET);
    c.send("<message from='x@a.test' to='y@b.test' id='after'><body>still here</body></message>");
    let m = s.component.recv(WAIT).expect("delivered after the attack");
    assert_eq!(m.attr("id"), Some("after"));
}

/// SEC-06 (bounded resources): the 430 KB stanza that cost 2.9 GB is refused with
/// policy-violation while memory stays small, even with the full stanza budget before
/// authentication (so the tree bounds do the work, not the pre-authentication budget).
#[test]
fn mem01_namespace_bomb_with_full_budget_is_policy_violation_and_cheap() {
    let payload = namespace_bomb();
    assert!(payload.len() < 512 * 1024);
    attack_is_refused_cheaply("[limits]\npre_auth_stanza_size = 524288\n", payload);
}

/// The same stanza with the default configuration: the pre-authentication budget (16 KiB) stops
/// it after a few KiB.
#[test]
fn mem02_namespace_bomb_before_authentication_is_policy_violation_and_cheap() {
    attack_is_refused_cheaply("", namespace_bomb());
}

/// 100 000 tiny elements in an ordinary namespace: refused by the per-stanza memory bound.
#[test]
fn mem03_element_flood_with_full_budget_is_policy_violation_and_cheap() {
    let payload = format!(
        "<message from='x@a.test' to='y@b.test'>{}</message>",
        "<a b=''/>".repeat(55_000)
    );
    assert!(payload.len() < 512 * 1024);
    attack_is_refused_cheaply("[limits]\npre_auth_stanza_size = 524288\n", payload);
}

/// DOS-01/SEC-06: before authentication a stanza over `limits.pre_auth_stanza_size` (default 16 KiB) is a policy
/// violation, even an ordinary one; after authentication the same stanza (and a 300 KiB one) is
/// delivered to the component intact.
#[test]
fn mem04_pre_auth_budget_is_small_and_verified_peers_get_the_full_one() {
    let mut s = setup("");
    // A component gets the full budget right after its handshake (before anything is routed to
    // it): its 40 KiB stanza (to an address it serves itself) comes back to it.
    let big_c = "C".repeat(40 * 1024);
    s.component.send(&format!(
        "<message from='z@b.test' to='y@b.test' id='from-component'><body>{big_c}</body></message>"
    ));
    let m = s.component.recv(WAIT).expect("the component's big stanza");
    assert_eq!(m.attr("id"), Some("from-component"));
    assert_eq!(
        m.child("body", "jabber:component:accept")
            .map(|b| b.text().len()),
        Some(big_c.len())
    );
    let body = "b".repeat(20 * 1024);
    let stanza = |id: &str, body: &str| {
        format!("<message from='x@a.test' to='y@b.test' id='{id}'><body>{body}</body></message>")
    };
    let (c, writer) = XmlConn::connect_sending(
        s.p.b.s2s(),
        s2s_header("a.test", "b.test", None),
        stanza("early", &body),
    );
    c.our_header("b.test");
    assert_eq!(c.stream_error(), "policy-violation");
    drop(c);
    writer.join().unwrap();
    s.p.b.wait_log("policy");

    let mut c = dialback_as_a(&s.p.b, A_SECRET);
    let big = "B".repeat(300 * 1024);
    c.send(&stanza("small-after", &body));
    c.send(&stanza("big-after", &big));
    for (id, len) in [("small-after", body.len()), ("big-after", big.len())] {
        let m = s
            .component
            .recv(WAIT)
            .expect("delivered after authentication");
        assert_eq!(m.attr("id"), Some(id));
        let text = m
            .child("body", "jabber:component:accept")
            .map(|b| b.text())
            .unwrap_or_default();
        assert_eq!(text.len(), len);
    }
    s.p.b.assert_peak_rss_bounded();
}

/// Serializer fidelity on the wire: a verified peer's message holding an element in the dialback
/// namespace reaches the component as that element in that namespace (we used to write `<db:x/>`,
/// a prefix the component stream does not bind, and the component's parser dropped the stream).
#[test]
fn mem05_dialback_namespace_child_reaches_a_component_intact() {
    let s = setup("");
    let mut c = dialback_as_a(&s.p.b, A_SECRET);
    c.send(
        "<message from='x@a.test' to='y@b.test' id='m1'>\
         <x xmlns='jabber:server:dialback' a='1'><db:result from='p' to='q'>k</db:result></x>\
         <stream:features/><body>hi</body></message>",
    );
    let m = s
        .component
        .recv(WAIT)
        .expect("the message reached the component");
    assert_eq!(m.attr("id"), Some("m1"));
    let x = m
        .child("x", DIALBACK_NS)
        .expect("x in the dialback namespace");
    assert_eq!(x.attr("a"), Some("1"));
    let r = x.child("result", DIALBACK_NS).expect("nested db:result");
    assert_eq!((r.attr("from"), r.text().as_str()), (Some("p"), "k"));
    assert!(m
        .child("features", "http://etherx.jabber.org/streams")
        .is_some());
    assert_eq!(
        m.child("body", "jabber:component:accept").map(|b| b.text()),
        Some("hi".into())
    );
    // The component's stream is still up: the next stanza arrives too.
    c.send("<message from='x@a.test' to='y@b.test' id='m2'><body>again</body></message>");
    let m = s
        .component
        .recv(WAIT)
        .expect("the component stream survived");
    assert_eq!(m.attr("id"), Some("m2"));
}
