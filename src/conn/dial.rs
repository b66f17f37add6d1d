//! Outbound connections: static routes, else SRV and A/AAAA (RFC 6120 §3.2), tried in order;
//! every address DNS gives passes the private-network guard ([`NetworkPolicy`]) first.

use super::{Core, Worker, BATCH};
use crate::dns::{NetworkPolicy, DEFAULT_S2S_PORT};
use crate::domain::Domain;
use crate::stream::Event;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Instant;

/// How many addresses a failed attempt's log line and bounce text list (the rest are counted).
const LISTED_ADDRESSES: usize = 8;

/// A connection made by [`Worker::dial`].
pub(super) struct Dialled {
    sock: TcpStream,
    addr: SocketAddr,
    /// The host name it was found under (SRV target, the domain itself, or a route's host).
    host: String,
    direct_tls: bool,
}

impl Worker {
    /// Outbound: resolve, connect, and tell the core how it went.
    pub(super) fn connect(&mut self) {
        let Core::Out(_) = &self.core else { return };
        let remote = self.remote_domain();
        let ev = match self.dial(&remote) {
            Ok(Dialled {
                sock,
                addr,
                host,
                direct_tls,
            }) => {
                let how = if direct_tls { ", direct TLS" } else { "" };
                if self.verify.is_some() {
                    log::debug!("{}: connected to {addr} ({host}{how})", self.core.label());
                } else {
                    log::info!("{}: connected to {addr} ({host}{how})", self.core.label());
                }
                // Every later line of this stream names the address too.
                if let Core::Out(c) = &mut self.core {
                    c.set_peer_address(addr);
                }
                if direct_tls {
                    // Direct-TLS targets are only chosen when TLS is configured (see dial).
                    match self.attach_tls_client(sock, &remote) {
                        Ok(()) => Event::Connected { tls: true },
                        Err(e) => Event::ConnectFailed {
                            not_found: false,
                            reason: format!("TLS with {addr} ({host}): {e}"),
                        },
                    }
                } else {
                    match self.attach(sock) {
                        Ok(()) => Event::Connected { tls: false },
                        Err(e) => Event::ConnectFailed {
                            not_found: false,
                            reason: format!("{addr} ({host}): {e}"),
                        },
                    }
                }
            }
            Err((not_found, reason)) => Event::ConnectFailed { not_found, reason },
        };
        if !matches!(ev, Event::Connected { .. }) {
            // Stanzas that arrived while we dialled are still in the channel: queue them in
            // the core first, so the failure bounces them rather than re-routing them.
            let mut pending = Vec::new();
            while self.inbox.recv_batch(&mut pending, BATCH, Instant::now()) > 0 {
                for input in pending.drain(..) {
                    self.input(input);
                }
            }
        }
        self.feed(ev);
        self.flush();
    }

    /// Find and connect to `remote` (static route, else SRV/A per RFC 6120 §3.2). Outside static
    /// routes, IP-literal domains and every resolved address go through the private-network
    /// guard; refused addresses are skipped (logged at debug) and never connected to.
    ///
    /// The error is `(not_found, reason)`: `not_found` when DNS says there is no such service or
    /// no permitted address is left (retrying cannot help); `reason` names the domain and every
    /// address tried (the core logs it once).
    pub(super) fn dial(&self, remote: &Domain) -> Result<Dialled, (bool, String)> {
        let cfg = &self.router.ctx.config;
        let label = self.core.label();
        let policy = NetworkPolicy::new(&cfg.allow_networks);
        let (targets, guarded) = self.targets(remote, &policy)?;
        let mut any_address = false;
        let mut transient = false;
        let mut tried: Vec<String> = Vec::new();
        for (host, port, direct_tls) in targets {
            if direct_tls && !self.router.ctx.tls_available {
                log::debug!(
                    "{label}: skipping direct-TLS target {host}:{port}, TLS is not configured"
                );
                continue;
            }
            let ips = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => match self.router.resolver.ips(&host) {
                    Ok(ips) => ips,
                    Err(e) => {
                        transient |= !e.is_not_found();
                        tried.push(format!("{host}: {e}"));
                        continue;
                    }
                },
            };
            for ip in ips {
                let addr = SocketAddr::new(ip, port);
                if guarded {
                    if let Err(refusal) = policy.check(ip) {
                        log::debug!(
                            "{label}: not dialling {addr} ({host}) for {remote}: {refusal}"
                        );
                        tried.push(format!("{addr} ({host}): not dialled, {refusal}"));
                        continue;
                    }
                }
                any_address = true;
                log::debug!("{label}: connecting to {addr} ({host})");
                match TcpStream::connect_timeout(&addr, cfg.timeouts.connect) {
                    Ok(sock) => {
                        return Ok(Dialled {
                            sock,
                            addr,
                            host,
                            direct_tls,
                        })
                    }
                    Err(e) => tried.push(format!("{addr} ({host}): {e}")),
                }
            }
        }
        let not_found = !any_address && !transient;
        let detail = listed(tried);
        Err((not_found, format!("cannot connect to {remote}: {detail}")))
    }

    /// Where to dial `remote`: (host, port, direct TLS) in order, and whether the
    /// private-network guard applies (not to static routes). IP-literal domains are judged
    /// here, before any DNS.
    fn targets(
        &self,
        remote: &Domain,
        policy: &NetworkPolicy<'_>,
    ) -> Result<Targets, (bool, String)> {
        let label = self.core.label();
        Ok(match self.router.ctx.config.routes.get(remote) {
            // The operator's explicit choice: never judged.
            Some(r) => (vec![(r.host.clone(), r.port, false)], false),
            None => match policy.check_domain(remote.as_str()) {
                Err(refusal) => {
                    log::debug!("{label}: not dialling {remote}: {refusal}");
                    return Err((true, format!("not dialling {remote}: {refusal}")));
                }
                // An allowed IP literal: no DNS, the default port (RFC 6120 §3.2.2).
                Ok(Some(ip)) => (vec![(ip.to_string(), DEFAULT_S2S_PORT, false)], true),
                Ok(None) => match self.router.resolver.resolve_s2s(remote.as_str()) {
                    Ok(t) => (
                        t.into_iter()
                            .map(|t| (t.host, t.port, t.direct_tls))
                            .collect(),
                        true,
                    ),
                    Err(e) => {
                        return Err((
                            e.is_not_found(),
                            format!("DNS lookup for {remote} failed: {e}"),
                        ))
                    }
                },
            },
        })
    }
}

/// Dial targets: (host, port, direct TLS), and whether the private-network guard applies.
type Targets = (Vec<(String, u16, bool)>, bool);

/// The addresses tried, for the failure reason: at most `LISTED_ADDRESSES`, then a count.
fn listed(mut tried: Vec<String>) -> String {
    if tried.is_empty() {
        "no address".to_string()
    } else if tried.len() > LISTED_ADDRESSES {
        let more = tried.len() - LISTED_ADDRESSES;
        tried.truncate(LISTED_ADDRESSES);
        format!("{}; and {more} more", tried.join("; "))
    } else {
        tried.join("; ")
    }
}
