//! Log hygiene on the wire (issue 8, item 6): peer-supplied strings cannot forge log lines
//! (the `xml` crate turns `&#10;` into a real newline), and a burst of refused connections
//! costs one log line with a count, not one line each. Each test ends with a legitimate
//! dialback: the daemon is alive and still federates.

use crate::common::*;

const A_SECRET: &str = "a-secret";

/// A log line as env_logger writes it, to be smuggled in through peer-supplied text.
const FORGED: &str = "[2026-11-26T00:00:00Z INFO  dialbackd] FORGED";

/// b.test under test with `limits`, a.test (a real daemon) as the Authoritative Server of the
/// legitimate dialback at the end.
fn pair(limits: &str) -> AandB {
    AandB::start(A_SECRET, |dns, _| config(&["b.test"], &[], dns, limits))
}

/// No line of the log starts with what the peer tried to forge.
fn nothing_forged(d: &Daemon, marker: &str) {
    let log = d.log_text();
    for line in log.lines() {
        assert!(
            !line.starts_with(marker) && !line.starts_with("FORGED"),
            "a peer-supplied newline started a log line: {line:?}\n{log}"
        );
    }
}

#[test]
fn log01_peer_supplied_newlines_cannot_forge_log_lines() {
    let mut p = pair("");
    // 1. A peer's stream error text, logged at warn.
    let (mut c, _) = open_s2s(&p.b, "a.test", "b.test");
    c.send(&format!(
        "<stream:error><undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>bye&#10;{FORGED}&#13;&#x202e;&#x85;</text>\
         </stream:error>"
    ));
    let line = p.b.wait_log("peer sent a stream error");
    assert!(
        line.contains("bye\\n[2026-11-26"),
        "escaped, on one line: {line}"
    );
    assert!(
        line.contains("\\r\\u{202e}\\u{85}"),
        "controls escaped: {line}"
    );
    drop(c);

    // 2. The header's `to`, refused with host-unknown.
    let mut c = XmlConn::connect(p.b.s2s());
    c.send(&s2s_header("a.test", &format!("b.test&#10;{FORGED}"), None));
    c.our_header("b.test");
    assert_eq!(c.stream_error(), "host-unknown");
    p.b.wait_log("refusing stream");
    drop(c);

    // 3. A db:verify id (the Authoritative Server role logs ids it finds wrong).
    let (mut c, _) = open_s2s(&p.b, "a.test", "b.test");
    c.send(&format!(
        "<db:verify from='a.test' to='b.test' id='x&#10;{FORGED}'>k</db:verify>"
    ));
    assert_eq!(c.stream_error(), "improper-addressing");
    drop(c);

    // 4. Bad XML whose error message quotes the peer's input.
    let (mut c, _) = open_s2s(&p.b, "a.test", "b.test");
    c.send("<message></mess\nFORGED>");
    let _ = c.element_where(WAIT, |e| e.name == "error");
    p.b.wait_log("stream broken");
    drop(c);

    dialback_as_a(&p.b, A_SECRET);
    nothing_forged(&p.b, FORGED);
}

#[test]
fn log02_a_burst_of_refused_connections_logs_one_line() {
    let mut p = pair("[limits]\nconnections_per_ip = 1\n");
    let (held, _) = open_s2s(&p.b, "a.test", "b.test");
    let burst = 30;
    for _ in 0..burst {
        let c = XmlConn::connect(p.b.s2s());
        // Refused at accept time: a bare header, then the error.
        let _ = c.header();
        assert_eq!(c.stream_error(), "policy-violation");
    }
    let lines = p.b.log_count("connections from this address");
    assert_eq!(lines, 1, "one line for the burst:\n{}", p.b.log_text());
    // The held stream goes; its address may connect again.
    drop(held);
    p.b.wait_log("stream ended");
    dialback_as_a(&p.b, A_SECRET);
}
