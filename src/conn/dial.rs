//! Outbound connections: static routes, else SRV and A/AAAA (RFC 6120 §3.2), tried in order.

use super::{Core, Worker, BATCH};
use crate::domain::Domain;
use crate::stream::Event;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Instant;

impl Worker {
    /// Outbound: resolve, connect, and tell the core how it went.
    pub(super) fn connect(&mut self) {
        let Core::Out(_) = &self.core else { return };
        let remote = self.remote_domain();
        let ev = match self.dial(&remote) {
            Ok((sock, addr, direct_tls)) => {
                log::debug!("{}: connected to {addr}", self.core.label());
                if direct_tls {
                    // Direct-TLS targets are only chosen when TLS is configured (see dial).
                    match self.attach_tls_client(sock, &remote) {
                        Ok(()) => Event::Connected { tls: true },
                        Err(e) => Event::ConnectFailed {
                            not_found: false,
                            reason: format!("TLS with {addr}: {e}"),
                        },
                    }
                } else {
                    match self.attach(sock) {
                        Ok(()) => Event::Connected { tls: false },
                        Err(e) => Event::ConnectFailed {
                            not_found: false,
                            reason: e.to_string(),
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

    /// Find and connect to `remote` (static route, else SRV/A per RFC 6120 §3.2).
    pub(super) fn dial(
        &self,
        remote: &Domain,
    ) -> Result<(TcpStream, SocketAddr, bool), (bool, String)> {
        let cfg = &self.router.ctx.config;
        let targets = match cfg.routes.get(remote) {
            Some(r) => vec![(r.host.clone(), r.port, false)],
            None => match self.router.resolver.resolve_s2s(remote.as_str()) {
                Ok(t) => t
                    .into_iter()
                    .map(|t| (t.host, t.port, t.direct_tls))
                    .collect(),
                Err(e) => {
                    return Err((
                        e.is_not_found(),
                        format!("DNS lookup for {remote} failed: {e}"),
                    ))
                }
            },
        };
        let mut any_address = false;
        let mut transient = false;
        let mut errors = Vec::new();
        for (host, port, direct_tls) in targets {
            if direct_tls && !self.router.ctx.tls_available {
                log::debug!(
                    "{}: skipping direct-TLS target {host}:{port}, TLS is not configured",
                    self.core.label()
                );
                continue;
            }
            let ips = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => match self.router.resolver.ips(&host) {
                    Ok(ips) => ips,
                    Err(e) => {
                        transient |= !e.is_not_found();
                        errors.push(format!("{host}: {e}"));
                        continue;
                    }
                },
            };
            for ip in ips {
                any_address = true;
                let addr = SocketAddr::new(ip, port);
                match TcpStream::connect_timeout(&addr, cfg.timeouts.connect) {
                    Ok(s) => return Ok((s, addr, direct_tls)),
                    Err(e) => errors.push(format!("{addr}: {e}")),
                }
            }
        }
        let not_found = !any_address && !transient;
        let detail = if errors.is_empty() {
            "no address".to_string()
        } else {
            errors.join("; ")
        };
        Err((not_found, format!("cannot connect to {remote}: {detail}")))
    }
}
