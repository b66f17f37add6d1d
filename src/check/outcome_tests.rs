use super::*;
use crate::check::report::Status;
use crate::tls::HandshakeInfo;
use std::path::Path;

fn d(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

fn config() -> Config {
    let text = "domains = [\"a.test\"]\ndialback_secret = \"s\"\n[timeouts]\ndialback = 15\n";
    Config::parse(text, Path::new("t.toml")).unwrap()
}

fn roots() -> Roots {
    Roots {
        store: Err("not needed".into()),
        source: "none".into(),
    }
}

fn candidate() -> Candidate {
    Candidate {
        addr: "127.0.0.9:5269".parse().unwrap(),
        host: "host.b.test".into(),
        direct_tls: false,
    }
}

/// The dialback item for `obs` under a config with no TLS.
fn dialback(obs: &Observed) -> Item {
    let (cfg, domain, from, roots) = (config(), d("b.test"), d("a.test"), roots());
    let cx = Context {
        config: &cfg,
        domain: &domain,
        from: &from,
        roots: &roots,
        now: 0,
    };
    let s = dialback_section(&cx, obs);
    assert_eq!(s.title, "Dialback a.test → b.test");
    assert_eq!(s.items.len(), 1);
    s.items[0].clone()
}

/// The TLS section for `obs`; `required`: as if `[tls] require_encryption` were on.
fn tls(obs: &Observed, required: bool) -> Section {
    let (mut cfg, domain, from, roots) = (config(), d("b.test"), d("a.test"), roots());
    cfg.tls.require_encryption = required;
    let cx = Context {
        config: &cfg,
        domain: &domain,
        from: &from,
        roots: &roots,
        now: 0,
    };
    tls_section(&cx, &candidate(), obs)
}

fn sent() -> Observed {
    Observed {
        db_sent: true,
        ..Observed::default()
    }
}

#[test]
fn the_verdict_decides_the_dialback_line() {
    let valid = dialback(&Observed {
        verdict: Some(Verdict::Valid),
        ..sent()
    });
    assert_eq!(
        (valid.status, valid.text.as_str()),
        (Status::Ok, "b.test answered valid")
    );

    let invalid = dialback(&Observed {
        verdict: Some(Verdict::Invalid),
        ..sent()
    });
    assert_eq!(invalid.status, Status::Fail);
    assert_eq!(invalid.text, "b.test answered invalid");
    // The hint explains the callback to our own Authoritative Server.
    assert!(invalid.hints[0].contains("a.test's Authoritative Server"));
    assert!(invalid.hints[0].contains("dialback_secret"));

    let error = dialback(&Observed {
        verdict: Some(Verdict::Error(StanzaCondition::RemoteConnectionFailed)),
        ..sent()
    });
    assert_eq!(error.status, Status::Fail);
    assert_eq!(
        error.text,
        "b.test answered with an error: remote-connection-failed"
    );
    assert!(error.hints[0].contains("reachable from b.test"));
}

#[test]
fn silence_skips_and_earlier_failures_are_named() {
    let timeout = dialback(&Observed {
        timed_out: Some(Phase::Dialback),
        ..sent()
    });
    assert_eq!(timeout.status, Status::Fail);
    assert_eq!(timeout.text, "no answer within 15 s (timeouts.dialback)");
    assert!(!timeout.hints.is_empty());

    let skipped = dialback(&Observed {
        no_secret: true,
        ..Observed::default()
    });
    assert_eq!(skipped.status, Status::Warn);
    assert!(skipped.text.contains("no dialback_secret"));

    let refused = dialback(&Observed {
        stream_error: Some("policy-violation".into()),
        ..Observed::default()
    });
    assert_eq!(refused.status, Status::Fail);
    assert_eq!(refused.text, "not attempted: stream error policy-violation");

    let closed = dialback(&Observed {
        failure: Some("b.test closed the stream before dialback completed".into()),
        ..sent()
    });
    assert_eq!(
        closed.text,
        "no answer: b.test closed the stream before dialback completed"
    );
}

#[test]
fn starttls_missing_warns_unless_encryption_is_required() {
    let plain = Observed {
        starttls_offered: Some(false),
        ..Observed::default()
    };
    let s = tls(&plain, false);
    assert_eq!(s.title, "TLS on 127.0.0.9:5269 (host.b.test)");
    assert_eq!(s.items.len(), 1);
    assert_eq!(s.items[0].status, Status::Warn);
    assert_eq!(
        s.items[0].text,
        "STARTTLS not offered: dialback runs in plaintext"
    );

    let s = tls(&plain, true);
    assert_eq!(s.items[0].status, Status::Fail, "{s:#?}");
    assert!(s.items[0].text.contains("require_encryption is on"));
}

#[test]
fn handshake_lines() {
    let failed = Observed {
        starttls_offered: Some(true),
        tls: Some(Err("TLS: handshake failure".into())),
        ..Observed::default()
    };
    let s = tls(&failed, false);
    let marks: Vec<_> = s.items.iter().map(|i| i.status).collect();
    assert_eq!(marks, vec![Status::Ok, Status::Fail]);
    assert_eq!(
        s.items[1].text,
        "TLS handshake failed: TLS: handshake failure"
    );

    let done = Observed {
        starttls_offered: Some(true),
        starttls_required: true,
        tls: Some(Ok(HandshakeInfo {
            peer_cert: None,
            version: "TLSv1.3".into(),
            alpn: None,
            sni: Some("b.test".into()),
        })),
        ..Observed::default()
    };
    let s = tls(&done, false);
    assert_eq!(s.items[0].text, "STARTTLS offered (required)");
    assert_eq!(s.items[1].text, "TLS handshake: TLSv1.3");
    assert_eq!(s.items[2].text, "b.test presented no certificate");
    assert_eq!(s.items[2].status, Status::Fail);

    let closed = Observed {
        failure: Some("the connection was closed".into()),
        ..Observed::default()
    };
    let s = tls(&closed, false);
    assert_eq!(s.items[0].status, Status::Fail);
    assert_eq!(
        s.items[0].text,
        "no stream features: the connection was closed"
    );
}
