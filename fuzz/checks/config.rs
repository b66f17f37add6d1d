//! `config`: the configuration loader over arbitrary text.

use dialbackd::config::Config;
use std::collections::BTreeSet;
use std::path::Path;

/// `Config::parse` (what `Config::load` runs on the file's text) over arbitrary UTF-8: never
/// panics; an error names the file and has a bounded message with a position inside the text;
/// an accepted configuration keeps the documented invariants (at least one domain, no
/// duplicates, limits and timeouts within their bounds) and its `Debug` output never shows a
/// secret.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/dialbackd/fuzz.toml");
    let c = match Config::parse(text, path) {
        Ok(c) => c,
        Err(e) => {
            assert_eq!(e.file(), path);
            let shown = e.to_string();
            assert!(!shown.is_empty());
            if let Some((line, col)) = e.position() {
                let lines = text.split('\n').count();
                assert!(line >= 1 && line <= lines, "line {line} of {lines}");
                assert!(col >= 1, "column {col}");
            }
            return;
        }
    };
    assert!(!c.domains.is_empty(), "no domain");
    let unique: BTreeSet<&str> = c.domains.iter().map(|d| d.as_str()).collect();
    assert_eq!(unique.len(), c.domains.len(), "duplicate domains");
    let comps: BTreeSet<&str> = c.components.iter().map(|k| k.domain.as_str()).collect();
    assert_eq!(
        comps.len(),
        c.components.len(),
        "duplicate component domains"
    );
    assert!(
        c.components.iter().all(|k| !k.secret.is_empty()),
        "empty component secret"
    );
    assert!(
        c.dialback_secret.as_ref().is_none_or(|s| !s.is_empty()),
        "empty secret"
    );
    let l = &c.limits;
    assert!(l.stanza_size >= 10_000, "stanza_size {}", l.stanza_size);
    assert!(l.depth >= 8, "depth {}", l.depth);
    for (name, v) in [
        ("queue", l.queue),
        ("outbox", l.outbox),
        (
            "pending_verifications_per_stream",
            l.pending_verifications_per_stream,
        ),
        ("pending_verifications", l.pending_verifications),
        ("connections", l.connections),
        ("connections_per_ip", l.connections_per_ip),
    ] {
        assert!(v >= 1, "limits.{name} = {v}");
    }
    let t = &c.timeouts;
    for d in [
        t.dns,
        t.connect,
        t.negotiation,
        t.dialback,
        t.idle,
        t.keepalive,
        t.close,
        t.shutdown,
    ] {
        assert!(d.as_secs() >= 1, "timeout {d:?}");
    }
    assert!(
        t.keepalive < t.idle,
        "keepalive {:?} >= idle {:?}",
        t.keepalive,
        t.idle
    );
    // Secrets never reach Debug output: changing them does not change it.
    let mut other = c.clone();
    other.dialback_secret = other.dialback_secret.map(|s| format!("{s}-changed"));
    for k in &mut other.components {
        k.secret.push_str("-changed");
    }
    assert_eq!(
        format!("{c:?}"),
        format!("{other:?}"),
        "a secret shows in Debug"
    );
}
