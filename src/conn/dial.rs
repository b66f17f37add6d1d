//! Outbound connections: static routes, else SRV and A/AAAA (RFC 6120 §3.2), tried in order
//! under the stream's one deadline; every address DNS gives passes the private-network guard
//! ([`NetworkPolicy`]) first.
//!
//! Each connect is non-blocking and waited for in `poll(2)` together with the stream's inbox,
//! so stanzas queue, shutdown is seen and an abandoned verification stops while we dial. At most
//! [`MAX_ADDRESSES`] addresses are tried, each for at most `timeouts.connect`, all of them
//! within the stream's negotiation (or verification) deadline.

use super::link::{poll, Link};
use super::{Core, Event, Role, Stream};
use crate::dns::{NetworkPolicy, Target, DEFAULT_S2S_PORT};
use crate::domain::Domain;
use crate::stream::ConnectError;
use crate::transport::Transport;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How many addresses one dial tries at most (targets × addresses).
pub(super) const MAX_ADDRESSES: usize = 16;
/// How many addresses a failed attempt's log line and bounce text list (the rest are counted).
const LISTED_ADDRESSES: usize = 8;

/// Why a dial failed: not found when DNS says there is no such service or no permitted
/// address is left (retrying cannot help), else unreachable; and a reason naming what was tried.
fn dial_error(not_found: bool, reason: String) -> ConnectError {
    if not_found {
        ConnectError::NotFound(reason)
    } else {
        ConnectError::Unreachable(reason)
    }
}

/// A connection made by [`Stream::dial`].
struct Dialled {
    sock: Box<dyn Transport>,
    addr: SocketAddr,
    /// The host name it was found under (SRV target, the domain itself, or a route's host).
    host: String,
    direct_tls: bool,
}

/// Where to dial, in order, and whether the private-network guard applies.
struct Targets {
    list: Vec<Target>,
    /// False for static routes: the operator's explicit choice is never judged.
    guarded: bool,
}

impl Stream {
    /// Outbound: resolve, connect, and tell the core how it went.
    #[inline(never)] // (see `run`)
    pub(super) fn connect(&mut self) {
        let remote = self.domains().1;
        let ev = match self.dial(&remote) {
            Ok(Some(d)) => self.connected(d, &remote),
            // Handed over to a stream already connected there (see `mux`).
            Ok(None) => None,
            Err(why) => Some(Event::ConnectFailed(why)),
        };
        if let Some(ev) = ev {
            self.feed(ev);
        }
    }

    /// Take over a connection: the core learns of it now, or after the TLS handshake.
    fn connected(&mut self, d: Dialled, remote: &Domain) -> Option<Event> {
        let how = if d.direct_tls { ", direct TLS" } else { "" };
        let (addr, host) = (d.addr, &d.host);
        if matches!(self.role, Role::Verify { .. }) {
            log::debug!("{}: connected to {addr} ({host}{how})", self.core.label());
        } else {
            log::info!("{}: connected to {addr} ({host}{how})", self.core.label());
        }
        // Every later line of this stream names the address too.
        if let Core::Out(c) = &mut self.core {
            c.set_peer_address(addr);
        }
        self.report_peer(addr);
        self.mux.addr = Some(addr);
        self.link = Some(Link::new(d.sock));
        if !d.direct_tls {
            return Some(Event::Connected { tls: false });
        }
        // Direct-TLS targets are only chosen when TLS is configured (see dial).
        match self.client_session(true) {
            Ok(s) => {
                if let Some(link) = &mut self.link {
                    link.start_tls(s);
                }
                self.tls_pending = Some(Event::Connected { tls: true });
                None
            }
            Err(e) => Some(Event::ConnectFailed(ConnectError::Unreachable(format!(
                "TLS with {addr} ({host}) for {remote}: {e}"
            )))),
        }
    }

    /// Find and connect to `remote` (static route, else SRV/A per RFC 6120 §3.2). Outside static
    /// routes, IP-literal domains and every resolved address go through the private-network
    /// guard; refused addresses are skipped (logged at debug) and never connected to. `None`
    /// when, before an address was dialled, the pair was handed over to an established stream
    /// to that address (target multiplexing, DB-29).
    fn dial(&mut self, remote: &Domain) -> Result<Option<Dialled>, ConnectError> {
        let ctx = self.ctx.clone();
        let cfg = &ctx.config;
        let resolver = self.router.resolver();
        let policy = NetworkPolicy::new(&cfg.allow_networks);
        let Targets { list, guarded } = self.targets(remote, &policy)?;
        let mut tried: Vec<String> = Vec::new();
        let (mut any_address, mut transient, mut attempts) = (false, false, 0);
        for Target {
            host,
            port,
            direct_tls,
        } in list
        {
            if direct_tls && !ctx.tls_available {
                continue;
            }
            let ips = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => match resolver.ips(&host) {
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
                        let label = self.core.label();
                        log::debug!(
                            "{label}: not dialling {addr} ({host}) for {remote}: {refusal}"
                        );
                        tried.push(format!("{addr} ({host}): not dialled, {refusal}"));
                        continue;
                    }
                }
                any_address = true;
                if attempts == super::dial::MAX_ADDRESSES {
                    tried.push(format!(
                        "{addr} ({host}): not tried, {MAX_ADDRESSES} addresses tried already"
                    ));
                    continue;
                }
                if self.try_join(addr, remote) {
                    return Ok(None);
                }
                attempts += 1;
                if let Some(stop) = self.dial_stopped() {
                    tried.push(stop);
                    return Err(ConnectError::Unreachable(format!(
                        "cannot connect to {remote}: {}",
                        listed(tried)
                    )));
                }
                match self.try_address(addr, &host) {
                    Ok(sock) => {
                        return Ok(Some(Dialled {
                            sock,
                            addr,
                            host,
                            direct_tls,
                        }))
                    }
                    Err(e) => tried.push(format!("{addr} ({host}): {e}")),
                }
            }
        }
        let not_found = !any_address && !transient;
        let detail = listed(tried);
        Err(dial_error(
            not_found,
            format!("cannot connect to {remote}: {detail}"),
        ))
    }

    /// Why dialling must stop now (deadline passed, shutdown, the verification abandoned), if
    /// it must.
    fn dial_stopped(&mut self) -> Option<String> {
        if self.done || !matches!(&self.core, Core::Out(c) if !c.is_closed()) {
            return Some("stopped".into());
        }
        if Instant::now() >= self.clock.deadline {
            return Some("out of time".into());
        }
        None
    }

    /// Connect to one address: non-blocking, waited for in `poll(2)` with the inbox, for at
    /// most `timeouts.connect` and never past the stream's deadline.
    fn try_address(&mut self, addr: SocketAddr, host: &str) -> Result<Box<dyn Transport>, String> {
        log::debug!("{}: connecting to {addr} ({host})", self.core.label());
        let sock = self
            .router
            .connector
            .connect(addr)
            .map_err(|e| e.to_string())?;
        let until = (Instant::now() + self.ctx.config.timeouts.connect).min(self.clock.deadline);
        let wake = self.me.inbox().fd();
        loop {
            let now = Instant::now();
            if now >= until {
                return Err("connection timed out".into());
            }
            crate::inbox::flush_wakes();
            let asleep = self.me.inbox().prepare_sleep();
            let wait = if asleep { until - now } else { Duration::ZERO };
            let fds = [(sock.as_raw_fd(), libc::POLLOUT), (wake, libc::POLLIN)];
            let revents = poll(&fds, wait).map_err(|e| e.to_string())?;
            if !asleep || revents[1] != 0 {
                // Stanzas queue in the core; a shutdown or an abandoned verification ends it.
                self.inputs();
                if let Some(why) = self.dial_stopped() {
                    return Err(why);
                }
            }
            if revents[0] != 0 {
                return match sock.take_error() {
                    Ok(None) => Ok(sock),
                    Ok(Some(e)) | Err(e) => Err(e.to_string()),
                };
            }
        }
    }

    /// Where to dial `remote`, in order, and whether the private-network guard applies (not to
    /// static routes). IP-literal domains are judged here, before any DNS.
    fn targets(
        &self,
        remote: &Domain,
        policy: &NetworkPolicy<'_>,
    ) -> Result<Targets, ConnectError> {
        let label = self.core.label();
        let target = |host: String, port: u16| Target {
            host,
            port,
            direct_tls: false,
        };
        let (list, guarded) = match self.ctx.config.routes.get(remote) {
            // The operator's explicit choice: never judged.
            Some(r) => (vec![target(r.host.clone(), r.port)], false),
            None => match policy.check_domain(remote.as_str()) {
                Err(refusal) => {
                    log::debug!("{label}: not dialling {remote}: {refusal}");
                    return Err(ConnectError::NotFound(format!(
                        "not dialling {remote}: {refusal}"
                    )));
                }
                // An allowed IP literal: no DNS, the default port (RFC 6120 §3.2.2).
                Ok(Some(ip)) => (vec![target(ip.to_string(), DEFAULT_S2S_PORT)], true),
                Ok(None) => match self.router.resolver().resolve_s2s(remote.as_str()) {
                    Ok(list) => (list, true),
                    Err(e) => {
                        return Err(dial_error(
                            e.is_not_found(),
                            format!("DNS lookup for {remote} failed: {e}"),
                        ))
                    }
                },
            },
        };
        Ok(Targets { list, guarded })
    }
}

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
