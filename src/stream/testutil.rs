//! Helpers for the core's unit tests: a context from a literal config, and elements parsed
//! from literal XML through the real reader.

use super::{Action, Ctx, StreamCondition};
use crate::config::Config;
use crate::keys::DialbackSecret;
use crate::xml::{Element, Limits, StreamEvent, StreamHeader, StreamReader, SERVER_NS, STREAM_NS};
use std::path::Path;
use std::sync::Arc;

/// The dialback secret every test context uses.
pub const SECRET: &str = "s3cr3tf0rd14lb4ck";

const BASE: &str = r#"
domains = ["a.test", "conference.a.test"]
dialback_secret = "s3cr3tf0rd14lb4ck"
[[component]]
domain = "echo.a.test"
secret = "echosecret"
"#;

/// A context hosting a.test and conference.a.test with component echo.a.test, TLS off.
pub fn ctx() -> Arc<Ctx> {
    ctx_with(|_| ())
}

/// Like [`ctx`], with the config adjusted by `f` (and TLS available when `f` enables it).
pub fn ctx_with(f: impl FnOnce(&mut Config)) -> Arc<Ctx> {
    let mut config = Config::parse(BASE, Path::new("test.toml")).expect("test config parses");
    f(&mut config);
    Arc::new(Ctx {
        tls_available: config.tls.enabled,
        config: Arc::new(config),
        secret: DialbackSecret::from_secret(SECRET),
    })
}

/// Like [`ctx`], with TLS available and encryption required of peers or not.
pub fn tls_ctx(require_encryption: bool) -> Arc<Ctx> {
    ctx_with(|c| {
        c.tls.enabled = true;
        c.tls.require_encryption = require_encryption;
    })
}

/// Parse one element as it would arrive on a jabber:server stream.
pub fn el(xml: &str) -> Element {
    let doc = format!(
        "<stream:stream xmlns='jabber:server' xmlns:stream='{STREAM_NS}' xmlns:db='jabber:server:dialback'>{xml}"
    );
    let mut r = StreamReader::new(doc.as_bytes(), Limits::default());
    assert!(matches!(r.next_event(), Ok(StreamEvent::Header(_))));
    match r.next_event() {
        Ok(StreamEvent::Element(e)) => e,
        other => panic!("not one element: {other:?}"),
    }
}

/// A peer's s2s stream header.
pub fn header(from: Option<&str>, to: Option<&str>) -> StreamHeader {
    StreamHeader {
        name: "stream".into(),
        ns: STREAM_NS.into(),
        default_ns: Some(SERVER_NS.into()),
        db_ns: true,
        from: from.map(str::to_string),
        to: to.map(str::to_string),
        id: None,
        version: Some("1.0".into()),
        lang: None,
    }
}

/// `out` ends by closing the stream with the stream error `cond`.
pub fn closes_with(out: &[Action], cond: StreamCondition) -> bool {
    matches!(out.last(), Some(Action::Close(Some(e))) if e.condition == cond)
}

/// Stream ids id1, id2, … in order.
pub fn ids() -> Box<dyn FnMut() -> String + Send> {
    let mut n = 0;
    Box::new(move || {
        n += 1;
        format!("id{n}")
    })
}
