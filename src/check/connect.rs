//! Step 2 of the check: a TCP connection to every address, each bounded by
//! `timeouts.connect`, as the daemon's dialler would try them in turn.

use super::dns::Candidate;
use super::report::{Item, Section, Status};
use std::io;
use std::net::TcpStream;
use std::time::Duration;

/// The section, and the index of the first address that accepted a connection (the one the
/// daemon would use).
pub fn connect_section(candidates: &[Candidate], timeout: Duration) -> (Section, Option<usize>) {
    let mut s = Section::new("TCP connect");
    let mut first = None;
    for (i, c) in candidates.iter().enumerate() {
        let what = format!("{} ({}{})", c.addr, c.host, tls_note(c));
        match TcpStream::connect_timeout(&c.addr, timeout) {
            Ok(sock) => {
                drop(sock);
                first.get_or_insert(i);
                s.push(Item::ok(format!("{what}: connected")));
            }
            Err(e) => s.push(connect_failure(&what, &e, timeout)),
        }
    }
    settle(&mut s, first.is_some());
    (s, first)
}

/// With some address reachable, a dead one is a warning: the daemon moves on to the next
/// address, so it costs time, not the stream. With none reachable, every one is a failure.
fn settle(s: &mut Section, any_connected: bool) {
    if any_connected {
        for item in s.items.iter_mut().filter(|i| i.status == Status::Fail) {
            item.status = Status::Warn;
        }
    }
}

fn tls_note(c: &Candidate) -> &'static str {
    if c.direct_tls {
        ", direct TLS"
    } else {
        ""
    }
}

/// A failed connect, with the hint its kind calls for.
pub fn connect_failure(what: &str, e: &io::Error, timeout: Duration) -> Item {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Item::fail(format!("{what}: connection refused"))
            .hint("nothing listens there: is the XMPP server running, and listening for servers on that address and port?"),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Item::fail(format!(
            "{what}: no answer within {} s (timeouts.connect)",
            timeout.as_secs()
        ))
        .hint("a firewall may drop the packets (port 5269, or the SRV record's port, must be open to other servers)"),
        _ => Item::fail(format!("{what}: {e}"))
            .hint("check the route to that address (and that it is the server's address)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Item {
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        connect_failure("127.0.0.9:5269 (host.b.test)", &e, Duration::from_secs(3))
    }

    #[test]
    fn failures_say_what_happened_with_a_hint() {
        let r = refused();
        assert_eq!(r.status, Status::Fail);
        assert_eq!(r.text, "127.0.0.9:5269 (host.b.test): connection refused");
        assert!(r.hints[0].contains("nothing listens"));
        let e = io::Error::from(io::ErrorKind::TimedOut);
        let t = connect_failure("x", &e, Duration::from_secs(3));
        assert_eq!(t.text, "x: no answer within 3 s (timeouts.connect)");
        assert!(t.hints[0].contains("firewall"));
    }

    #[test]
    fn a_dead_address_fails_alone_and_warns_beside_a_live_one() {
        let mut alone = Section::new("TCP connect");
        alone.push(refused());
        settle(&mut alone, false);
        assert_eq!(alone.items[0].status, Status::Fail);

        let mut beside = Section::new("TCP connect");
        beside.push(refused());
        beside.push(Item::ok("127.0.0.10:5269 (host.b.test): connected"));
        settle(&mut beside, true);
        let marks: Vec<_> = beside.items.iter().map(|i| i.status).collect();
        assert_eq!(marks, vec![Status::Warn, Status::Ok]);
    }
}
