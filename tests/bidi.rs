//! XEP-0288 bidirectional streams between two real daemons on loopback: one TCP connection
//! per peer pair carries stanzas both ways (counted in /proc/net/tcp), keys are still verified
//! on a connection of their own (BIDI-03, DB-11), and when the bidi stream ends the pair falls
//! back to a connection of its own. Each test cites the rule it proves.

mod common;

use common::dns_server::TestDns;
use common::*;
use std::net::IpAddr;

/// A (a.test + component echo.a.test) and B (b.test, whose component serves b.test itself),
/// with extra TOML for each, both resolved through SRV records.
struct Pair {
    _dns: TestDns,
    a: Daemon,
    b: Daemon,
}

fn pair(a_extra: &str, b_extra: &str) -> Pair {
    pair_with(|c| c, a_extra, b_extra)
}

/// [`pair`] with A's whole configuration passed through `a_config` last.
fn pair_with(a_config: impl FnOnce(String) -> String, a_extra: &str, b_extra: &str) -> Pair {
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let (ia, ib) = (next_ip(), next_ip());
    let a = Daemon::start(
        "a",
        ia,
        &a_config(config(
            &["a.test"],
            &[("echo.a.test", "sa")],
            dns.addr(),
            a_extra,
        )),
    );
    let b = Daemon::start(
        "b",
        ib,
        &config(&["b.test"], &[("b.test", "sb")], dns.addr(), b_extra),
    );
    for (name, addr) in [
        ("a.test", a.s2s()),
        ("echo.a.test", a.s2s()),
        ("b.test", b.s2s()),
    ] {
        publish(&dns, name, addr);
    }
    Pair { _dns: dns, a, b }
}

/// One message from echo.a.test to b.test and B's reply, each checked on arrival.
fn exchange(ca: &mut ComponentClient, cb: &mut ComponentClient, n: u32, p: &Pair) {
    ca.send(&format!(
        "<message from='bot@echo.a.test' to='u@b.test' id='a{n}'><body>to b {n}</body></message>"
    ));
    let m = cb
        .recv(WAIT)
        .unwrap_or_else(|| panic!("B's component got a{n}\n{}", p.a.log_text()));
    assert_eq!(m.attr("id"), Some(format!("a{n}").as_str()));
    cb.send(&format!(
        "<message from='u@b.test' to='bot@echo.a.test' id='b{n}'><body>to a {n}</body></message>"
    ));
    let r = ca
        .recv(WAIT)
        .unwrap_or_else(|| panic!("A's component got b{n}\n{}", p.b.log_text()));
    assert_eq!(r.attr("id"), Some(format!("b{n}").as_str()));
}

/// Lines `d` logged so far that contain every one of `parts`.
fn count_with(d: &Daemon, parts: &[&str]) -> usize {
    let text = d.log_text();
    let lines: Vec<String> = text.lines().map(String::from).collect();
    lines_with(&lines, parts)
}

/// Lines of `log` that contain every one of `parts`.
fn lines_with(log: &[String], parts: &[&str]) -> usize {
    log.iter()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

/// Wait until the verify connection `verifier` opened to `authority` has ended at both ends
/// (the last streams of the exchange that close on their own, DB-11).
fn verify_connections_ended(verifier: &Daemon, authority: &Daemon, n: usize) {
    verifier.wait_until("the verify connections ended", |log| {
        lines_with(log, &["verify ", "stream ended"]) >= n
    });
    authority.wait_until("the verify connections' inbound ends ended", |log| {
        lines_with(log, &["s2s-in ", "stream ended"]) >= n
    });
}

/// BIDI-01..03, DB-11: A dials B and asks for bidi; B verifies A's key on a verify connection of
/// its own to A, and sends its replies back over A's stream: one TCP connection in all between
/// the two once the verify connection has ended, for two rounds both ways.
#[test]
fn bidi03_one_connection_per_peer_pair_carries_both_directions() {
    let p = pair(STATUS, STATUS);
    let mut ca = ComponentClient::connect(p.a.component_addr(), "echo.a.test", "sa");
    let mut cb = ComponentClient::connect(p.b.component_addr(), "b.test", "sb");
    for n in 0..2 {
        exchange(&mut ca, &mut cb, n, &p);
    }
    // Negotiated on both ends, and logged with the stream (peer and direction).
    assert_eq!(
        count_with(
            &p.a,
            &[
                "s2s-out echo.a.test→b.test",
                "bidi negotiated (XEP-0288, outbound)"
            ]
        ),
        1,
        "{}",
        p.a.log_text()
    );
    assert_eq!(
        p.b.log_count("bidi negotiated (XEP-0288, inbound)"),
        1,
        "{}",
        p.b.log_text()
    );
    assert_eq!(
        p.b.log_count("routing b.test→echo.a.test over this stream (bidi)"),
        1
    );
    // A dialled one pair stream; B none, only its verify connection to A (DB-11), which
    // never runs over the stream the key came in on (BIDI-03).
    assert_eq!(p.a.log_count(": connecting to "), 1, "{}", p.a.log_text());
    assert_eq!(
        count_with(&p.b, &["s2s-out ", ": connecting to "]),
        0,
        "{}",
        p.b.log_text()
    );
    assert_eq!(
        p.b.log_count(": connecting to "),
        1,
        "the verify connection"
    );
    verify_connections_ended(&p.b, &p.a, 1);
    assert_eq!(
        established_to(&[p.a.s2s(), p.b.s2s()]),
        1,
        "one TCP connection carries both directions"
    );
    // A verified nothing inbound: B's replies rode A's own stream.
    assert_eq!(
        p.a.log_count("verified by dialback"),
        0,
        "{}",
        p.a.log_text()
    );
    // What the operator sees: one bidi stream counted at each end, and its rows say bidi.
    let bidi = |way| format!("dialbackd_bidi_streams_total{{direction=\"{way}\"}}");
    assert_eq!(p.a.wait_metric(&bidi("outbound"), |n| n >= 1), 1);
    assert_eq!(p.a.wait_metric(&bidi("inbound"), |_| true), 0);
    assert_eq!(p.b.wait_metric(&bidi("inbound"), |n| n >= 1), 1);
    assert_eq!(p.b.wait_metric(&bidi("outbound"), |_| true), 0);
    let row = |direction| {
        [
            ("direction", direction),
            ("state", "open"),
            ("auth", "dialback"),
            ("bidi", "yes"),
            ("domains", "echo.a.test→b.test"),
        ]
    };
    p.a.wait_status_row(&row("s2s_out"));
    p.b.wait_status_row(&row("s2s_in"));
}

/// DB-24, the control: with `[s2s] bidi = false` on A, A does not ask; B opens its own stream
/// for its replies, and two TCP connections carry the two directions.
#[test]
fn db24_without_bidi_each_direction_has_its_own_connection() {
    let p = pair(&format!("[s2s]\nbidi = false\n{STATUS}"), STATUS);
    let mut ca = ComponentClient::connect(p.a.component_addr(), "echo.a.test", "sa");
    let mut cb = ComponentClient::connect(p.b.component_addr(), "b.test", "sb");
    exchange(&mut ca, &mut cb, 0, &p);
    assert_eq!(p.a.log_count("bidi negotiated"), 0, "{}", p.a.log_text());
    assert_eq!(p.b.log_count("bidi negotiated"), 0, "{}", p.b.log_text());
    // Each side verified the other's key on a verify connection; both end.
    verify_connections_ended(&p.b, &p.a, 1);
    verify_connections_ended(&p.a, &p.b, 1);
    assert_eq!(established_to(&[p.a.s2s(), p.b.s2s()]), 2);
    // Nothing counted as bidi; the rows say so.
    for d in [&p.a, &p.b] {
        for way in ["inbound", "outbound"] {
            let series = format!("dialbackd_bidi_streams_total{{direction=\"{way}\"}}");
            assert_eq!(d.wait_metric(&series, |_| true), 0, "{}", d.name);
        }
        for direction in ["s2s_in", "s2s_out"] {
            d.wait_status_row(&[("direction", direction), ("state", "open"), ("bidi", "no")]);
        }
    }
}

/// ROUTE-01 across the end of a bidi stream: when A's stream idles out, B's next stanza for
/// the pair opens a stream of B's own (the normal path), and arrives.
#[test]
fn route01_when_the_bidi_stream_ends_the_pair_falls_back_to_a_stream_of_its_own() {
    // A closes its streams after 3 s without traffic from the peer.
    let short_idle = |c: String| c.replace("[timeouts]\n", "[timeouts]\nidle = 3\nkeepalive = 1\n");
    let p = pair_with(short_idle, "", "");
    let mut ca = ComponentClient::connect(p.a.component_addr(), "echo.a.test", "sa");
    let mut cb = ComponentClient::connect(p.b.component_addr(), "b.test", "sb");
    exchange(&mut ca, &mut cb, 0, &p);
    p.b.wait_log_count("routing b.test→echo.a.test over this stream (bidi)", 1);
    // A's stream idles out; B sees the close and gives the route up.
    p.b.wait_until("B saw the bidi stream end", |log| {
        lines_with(log, &["s2s-in ", "echo.a.test→b.test", "stream ended"]) >= 1
    });
    assert_eq!(count_with(&p.b, &["s2s-out ", ": connecting to "]), 0);
    cb.send("<message from='u@b.test' to='bot@echo.a.test' id='late'><body>after</body></message>");
    let r = ca
        .recv(WAIT)
        .unwrap_or_else(|| panic!("A's component got the late message\n{}", p.b.log_text()));
    assert_eq!(r.attr("id"), Some("late"));
    p.b.wait_until("B dialled A for the pair", |log| {
        lines_with(log, &["s2s-out b.test→echo.a.test", ": connecting to "]) == 1
    });
}

/// One thread per stream with bidi: once the verify connection has ended, each daemon runs its
/// accept loop, its component and the one stream between them; the idle bidi stream wakes for
/// the way back at B (BIDI-03), and no stream is added for it on either side.
#[test]
fn bidi03_the_way_back_wakes_the_idle_stream_and_adds_no_thread() {
    let p = pair("", "");
    let mut ca = ComponentClient::connect(p.a.component_addr(), "echo.a.test", "sa");
    let mut cb = ComponentClient::connect(p.b.component_addr(), "b.test", "sb");
    ca.send("<message from='bot@echo.a.test' to='u@b.test' id='w1'/>");
    assert!(cb.recv(WAIT).is_some_and(|m| m.attr("id") == Some("w1")));
    p.a.wait_threads(1 + 2);
    p.b.wait_threads(1 + 2);
    cb.send("<message from='u@b.test' to='bot@echo.a.test' id='w2'/>");
    assert!(ca.recv(WAIT).is_some_and(|m| m.attr("id") == Some("w2")));
    ca.send("<message from='bot@echo.a.test' to='u@b.test' id='w3'/>");
    assert!(cb.recv(WAIT).is_some_and(|m| m.attr("id") == Some("w3")));
    p.a.wait_threads(1 + 2);
    p.b.wait_threads(1 + 2);
    assert_eq!(count_with(&p.b, &["s2s-out ", ": connecting to "]), 0);
}
