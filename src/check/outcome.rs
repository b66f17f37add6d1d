//! What the stream of steps 3 and 4 showed ([`Observed`]), as the TLS and dialback sections of
//! the report. Pure: no I/O, the clock is a parameter.

use super::cert::{certificate_items, Roots};
use super::dns::Candidate;
use super::report::{Item, Section};
use super::session::{Observed, Phase};
use crate::config::Config;
use crate::domain::Domain;
use crate::stream::{StanzaCondition, Verdict};

/// Who is checked from where, and under which configuration.
pub struct Context<'a> {
    /// The configuration (policy, timeouts).
    pub config: &'a Config,
    /// The domain checked.
    pub domain: &'a Domain,
    /// The hosted domain the dialback is for.
    pub from: &'a Domain,
    /// Trust anchors for the certificate.
    pub roots: &'a Roots,
    /// Now, in Unix seconds (for the expiry).
    pub now: i64,
}

/// The TLS section: STARTTLS offered or not (or direct TLS), the handshake, the certificate.
pub fn tls_section(cx: &Context<'_>, cand: &Candidate, obs: &Observed) -> Section {
    let mut s = Section::new(format!("TLS on {} ({})", cand.addr, cand.host));
    let domain = cx.domain;
    if !obs.direct_tls {
        match starttls_item(cx, obs) {
            Some(item) => s.push(item),
            None => return s,
        }
    }
    match &obs.tls {
        Some(Ok(info)) => {
            let how = if obs.direct_tls {
                "direct TLS (XEP-0368)"
            } else {
                "TLS handshake"
            };
            s.push(Item::ok(format!("{how}: {}", info.version)));
            let items = certificate_items(
                domain,
                info.peer_cert.as_ref(),
                cx.roots,
                &cx.config.tls,
                cx.now,
            );
            for item in items {
                s.push(item);
            }
        }
        Some(Err(why)) => s.push(Item::fail(format!("TLS handshake failed: {why}")).hint(
            "the server's TLS set-up is broken (certificate, key or protocol versions); its \
             own log says more",
        )),
        None if obs.starttls_offered == Some(true) || obs.direct_tls => s.push(
            Item::fail(format!("TLS not started: {}", failure(obs))).hint(format!(
                "{domain} offered TLS but did not go through with it"
            )),
        ),
        None => {}
    }
    s
}

/// The STARTTLS line; `None` when the stream ended before any features (the failure is the
/// dialback section's).
fn starttls_item(cx: &Context<'_>, obs: &Observed) -> Option<Item> {
    let domain = cx.domain;
    let required = cx.config.tls.require_encryption_for(domain);
    let plaintext = |what: String| {
        if required {
            Item::fail(format!("{what}, and [tls] require_encryption is on here"))
                .hint(format!("enable TLS on {domain}'s server, or (not recommended) set require_encryption = false for it in [tls.peers.\"{domain}\"]"))
        } else {
            Item::warn(format!("{what}: dialback runs in plaintext")).hint(
                "most public servers refuse unencrypted server-to-server streams; enable TLS there",
            )
        }
    };
    match obs.starttls_offered {
        Some(true) if obs.starttls_required => Some(Item::ok("STARTTLS offered (required)")),
        Some(true) => Some(Item::ok("STARTTLS offered")),
        Some(false) => Some(plaintext("STARTTLS not offered".into())),
        None if obs.legacy => Some(plaintext(
            "pre-1.0 stream (no version='1.0'): no features, no STARTTLS".into(),
        )),
        None => {
            let item = Item::fail(format!("no stream features: {}", failure(obs)));
            Some(item.hint(format!(
                "{domain}'s server did not open an XMPP server-to-server stream"
            )))
        }
    }
}

/// The dialback section: the peer's verdict on our key.
pub fn dialback_section(cx: &Context<'_>, obs: &Observed) -> Section {
    let (from, domain) = (cx.from, cx.domain);
    let mut s = Section::new(format!("Dialback {from} → {domain}"));
    let callback = format!(
        "{domain} checks the key with {from}'s Authoritative Server, found through {from}'s DNS: \
         a dialbackd serving {from} with this configuration's dialback_secret must be running \
         and reachable from {domain}"
    );
    let item = if obs.no_secret {
        Item::warn("skipped: this configuration has no dialback_secret").hint(
            "without one the daemon makes a random secret at start-up, which the check cannot \
             know; set dialback_secret to test the round trip",
        )
    } else {
        match (&obs.verdict, obs.timed_out) {
            (Some(Verdict::Valid), _) => Item::ok(format!("{domain} answered valid")),
            (Some(Verdict::Invalid), _) => {
                Item::fail(format!("{domain} answered invalid")).hint(callback)
            }
            (Some(Verdict::Error(c)), _) => {
                let item = Item::fail(format!("{domain} answered with an error: {c}"));
                match c {
                    StanzaCondition::RemoteConnectionFailed
                    | StanzaCondition::RemoteServerNotFound
                    | StanzaCondition::RemoteServerTimeout => item.hint(callback),
                    _ => item.hint(format!(
                        "{domain}'s server refused dialback from {from}; its log says why"
                    )),
                }
            }
            (None, Some(Phase::Dialback)) => Item::fail(format!(
                "no answer within {} s (timeouts.dialback)",
                cx.config.timeouts.dialback.as_secs()
            ))
            .hint(callback),
            (None, _) if obs.db_sent => {
                Item::fail(format!("no answer: {}", failure(obs))).hint(callback)
            }
            (None, _) => Item::fail(format!("not attempted: {}", failure(obs))),
        }
    };
    s.push(item);
    s
}

/// Why the stream ended, in words.
fn failure(obs: &Observed) -> String {
    if let Some(e) = &obs.stream_error {
        return format!("stream error {e}");
    }
    if obs.timed_out == Some(Phase::Negotiation) {
        return "timed out setting up the stream (timeouts.negotiation)".into();
    }
    obs.failure
        .clone()
        .unwrap_or_else(|| "the stream ended".into())
}

#[cfg(test)]
#[path = "outcome_tests.rs"]
mod tests;
