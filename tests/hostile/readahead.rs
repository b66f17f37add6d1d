//! A verified peer that stops reading what we send it (so the stream's worker blocks writing)
//! while it goes on sending large stanzas: the stream's reader may run ahead of the worker by
//! a bounded amount of memory, not by 64 whole stanza trees (64 × 8 × 512 KiB).

use crate::common::dns_server::TestDns;
use crate::common::*;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// Read from `sock` (bounded by WAIT) until what was read contains `needle`; returns it all.
fn read_until(sock: &mut TcpStream, seen: &mut String, needle: &str) {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} in {seen:?}");
        let n = sock.read(&mut buf).expect("read");
        assert!(n > 0, "closed before {needle:?}: {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// A stanza of about 500 KB made of 9,000 small elements: a tree of several MB, within the
/// reader's bounds (8 × wire bytes, 10,000 elements).
fn wide_stanza(n: usize) -> String {
    let item = format!("<i n='{}'/>", "v".repeat(44));
    format!(
        "<message from='x@a.test' to='b.test' id='w{n}'><x xmlns='urn:example:wide'>{}</x></message>",
        item.repeat(9_000)
    )
}

/// SEC-06 (bounded memory). The peer is f.test, played on a raw socket: it accepts our outbound stream, says `valid`
/// to our key (DB-04: it need not call back), then never reads again while our component sends
/// it enough to block the stream's worker in its write, and sends large stanzas of its own.
#[test]
fn mem06_a_peer_that_stops_reading_cannot_make_us_hold_its_stanzas() {
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let b = Daemon::start(
        "b",
        next_ip(),
        &config(&["b.test"], &[("b.test", "sb")], dns.addr(), ""),
    );
    let f = FakeServer::bind(next_ip());
    publish(&dns, "b.test", b.s2s());
    publish(&dns, "f.test", f.addr());
    let mut component = ComponentClient::connect(b.component_addr(), "b.test", "sb");
    component.send("<message from='b.test' to='u@f.test' id='first'><body>hi</body></message>");

    f.listener.set_nonblocking(false).unwrap();
    let (mut sock, _) = f.listener.accept().expect("our outbound stream");
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut seen = String::new();
    read_until(&mut sock, &mut seen, "xmlns:db=");
    sock.write_all(
        format!(
            "{}<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
            s2s_header("f.test", "b.test", Some("f-1"))
        )
        .as_bytes(),
    )
    .unwrap();
    read_until(&mut sock, &mut seen, "</db:result>");
    sock.write_all(b"<db:result from='f.test' to='b.test' type='valid'/>")
        .unwrap();
    read_until(&mut sock, &mut seen, "id='first'");

    // From now on f.test reads nothing. 40 × 400 KB from the component fill both socket
    // buffers (what does not fit in limits.queue_bytes bounces back to the component), so
    // the worker blocks in its write; f.test's stanzas then pile up in the stream's reader.
    let before = b.peak_rss_kib();
    let body = "z".repeat(400_000);
    for n in 0..40 {
        component.send(&format!(
            "<message from='b.test' to='u@f.test' id='big{n}'><body>{body}</body></message>"
        ));
    }
    let mut w = sock.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let writer = thread::spawn(move || {
        let mut sent = 0;
        for n in 0..64 {
            if w.write_all(wide_stanza(n).as_bytes()).is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let sent = writer.join().unwrap();
    assert!(sent >= 3, "the reader took only {sent} large stanzas");
    let peak = b.peak_rss_kib();
    assert!(
        peak < PEAK_RSS_BOUND_KIB.max(before + 32 * 1024),
        "peak RSS {peak} KiB (before: {before} KiB) with {sent} large stanzas behind a blocked worker"
    );
    drop(sock);
    b.assert_alive();

    // Alive and still federating: a fresh outbound stream to f.test passes dialback.
    component.send("<message from='b.test' to='u@f.test' id='after'><body>again</body></message>");
    let mut c = f.accept();
    let _ = c.header();
    c.send(&s2s_header("f.test", "b.test", Some("f-2")));
    c.send("<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>");
    c.element_where(WAIT, |e| e.name == "result")
        .expect("our db:result");
    c.send("<db:result from='f.test' to='b.test' type='valid'/>");
    c.element_where(WAIT, |e| e.attr("id") == Some("after"))
        .expect("the stanza after the attack");
}
