//! The path `make demo` takes, on this test's own loopback addresses: the two example
//! configurations (etc/dialbackd.toml for a.test, etc/peer.toml for b.test, their addresses
//! moved so that a running `make run` cannot collide) and the example component
//! examples/echo_component.rs, compiled in here, as echo.b.test; a message from echo.a.test
//! crosses to b.test by dialback and its echo comes back.

mod common;

#[path = "../examples/echo_component.rs"]
#[allow(dead_code)]
mod echo_component;

use common::*;
use std::sync::mpsc;
use std::thread;

/// `text` with every `from` replaced by `to`; each must occur.
fn replace_all(mut text: String, pairs: &[(&str, String)]) -> String {
    for (from, to) in pairs {
        assert!(
            text.contains(from),
            "{from} is not in the example configuration"
        );
        text = text.replace(from, to);
    }
    text
}

/// The first component secret in the configuration `text`.
fn secret(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("secret = \"")?.strip_suffix('"'))
        .expect("a component secret")
        .to_string()
}

/// Both example instances, on fresh addresses, with their routes to each other.
fn example_instances() -> (Daemon, String, Daemon, String) {
    let a_text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/etc/dialbackd.toml"))
            .unwrap();
    let b_text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/etc/peer.toml")).unwrap();
    let (ia, ib) = (next_ip(), next_ip());
    let (pa, pb) = (free_port(ia), free_port(ib));
    let moves = [
        ("127.0.0.1:5269", format!("{ia}:{pa}")),
        ("127.0.0.2:5269", format!("{ib}:{pb}")),
        ("127.0.0.1:5347", format!("{ia}:0")),
        ("127.0.0.2:5347", format!("{ib}:0")),
    ];
    let (a_secret, b_secret) = (secret(&a_text), secret(&b_text));
    let a = Daemon::start(
        "demo-a",
        ia,
        &replace_all(
            a_text,
            &[moves[0].clone(), moves[1].clone(), moves[2].clone()],
        ),
    );
    let b = Daemon::start(
        "demo-b",
        ib,
        &replace_all(
            b_text,
            &[moves[0].clone(), moves[1].clone(), moves[3].clone()],
        ),
    );
    (a, a_secret, b, b_secret)
}

#[test]
fn demo_message_crosses_to_b_test_and_its_echo_comes_back() {
    let (a, a_secret, b, b_secret) = example_instances();
    let mut echo =
        echo_component::connect(&b.component_addr().to_string(), "echo.b.test", &b_secret)
            .unwrap_or_else(|e| panic!("echo.b.test: {e}\n{}", b.log_text()));
    let (done_tx, done) = mpsc::channel();
    thread::spawn(move || {
        let _ = done_tx.send(echo_component::serve(&mut echo));
    });

    let mut sender =
        echo_component::connect(&a.component_addr().to_string(), "echo.a.test", &a_secret)
            .unwrap_or_else(|e| panic!("echo.a.test: {e}\n{}", a.log_text()));
    let echoed = echo_component::send(&mut sender, "echo.b.test", "hello <from> a.test")
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.log_text(), b.log_text()));
    assert_eq!(echoed, "echo: hello &lt;from&gt; a.test");
    // It crossed by dialback, verified by b.test's receiving server; the echo came back over
    // the same stream (XEP-0288 bidi, on by default, for the inverse of the verified pair:
    // BIDI-03), so a.test had nothing to verify.
    assert!(
        b.log_count("echo.a.test→echo.b.test verified by dialback") >= 1,
        "{}",
        b.log_text()
    );
    assert!(
        b.log_count("routing echo.b.test→echo.a.test over this stream (bidi)") >= 1,
        "{}",
        b.log_text()
    );
    assert_eq!(a.log_count("verified by dialback"), 0, "{}", a.log_text());

    // Stopping b.test ends the echo component's stream: `serve` returns.
    drop(b);
    let served = done
        .recv_timeout(WAIT)
        .expect("serve returned after b.test stopped");
    assert!(served.is_ok(), "{served:?}");
    drop(a);
}

/// The example's SHA-1 is the one the daemon checks the handshake with (XEP-0114 §3), on
/// lengths around the padding boundaries.
#[test]
fn example_sha1_matches_the_daemons_handshake_digest() {
    for len in [0, 1, 40, 55, 56, 63, 64, 65, 119, 120, 200] {
        let id: String = "s".repeat(len);
        let want = dialbackd::stream::component::handshake_digest(&id, "secret");
        assert_eq!(
            echo_component::sha1_hex(format!("{id}secret").as_bytes()),
            want,
            "length {len}"
        );
    }
}

/// The echo answers messages with a body and iq requests, and never an echo or an error, so
/// two echo components cannot answer each other forever.
#[test]
fn example_echo_never_answers_an_echo_or_an_error() {
    let stanza = |xml: &str| echo_component::parse_stanza(xml).expect("parses");
    let reply = echo_component::answer(&stanza(
        "<message from='u@x.test' to='e.test' id='1' type='chat'><body>hi</body></message>",
    ))
    .expect("an echo");
    assert_eq!(
        reply,
        "<message from='e.test' to='u@x.test' type='chat' id='1'><body>echo: hi</body></message>"
    );
    for quiet in [
        "<message from='e.test' to='u@x.test' id='1'><body>echo: hi</body></message>",
        "<message from='u@x.test' to='e.test' type='error' id='1'><body>hi</body></message>",
        "<message from='u@x.test' to='e.test'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
        "<iq from='u@x.test' to='e.test' type='result' id='2'/>",
        "<presence from='u@x.test' to='e.test'/>",
    ] {
        assert_eq!(echo_component::answer(&stanza(quiet)), None, "{quiet}");
    }
    let iq = echo_component::answer(&stanza(
        "<iq from='u@x.test' to='e.test' type='get' id='3'><query xmlns='jabber:iq:version'/></iq>",
    ))
    .expect("an iq error");
    assert!(
        iq.starts_with("<iq from='e.test' to='u@x.test' type='error' id='3'>"),
        "{iq}"
    );
    assert!(
        iq.contains("<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"),
        "{iq}"
    );
}
