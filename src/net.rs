//! The accept loop: one `mio::Poll` over every listener and the signals.
//!
//! In scope: binding the listeners named in the config, accepting (each accepted non-blocking
//! socket is handed to `conn`, which starts the stream's thread), the connection caps (in total and
//! per remote IP, IPv6 grouped per /64: [`ip_group`]; for components also refusing addresses
//! with too many failed handshakes), handing connections accepted on the status listener
//! (`[status]`) to `status`, SIGTERM/SIGINT → graceful shutdown, and SIGHUP → the
//! configuration read again and put in force for new streams (`reload`; loading a file and its
//! certificates is quick, so it is done right here), and the systemd notifications of those
//! state changes (`notify`). Out of scope: everything after accept.

use crate::condition::StreamCondition;
use crate::config::Config;
use crate::conn;
use crate::metrics::{Cap, METRICS};
use crate::notify::Notifier;
use crate::ratelimit::{warn_limited, RateLimit, LOG_EVERY};
use crate::router::{ComponentRefusal, Router};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

const SIGNALS: Token = Token(0);
/// After EMFILE the backlog gives no new readiness event; poll again after this long.
const RETRY_ACCEPT: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    S2s,
    DirectTls,
    Component,
    Status,
}

/// The bound listening sockets.
pub struct Listeners {
    socks: Vec<(Kind, TcpListener)>,
}

impl Listeners {
    /// Bind every listener the config names.
    ///
    /// # Errors
    /// The first address that cannot be bound, named in the message.
    pub fn bind(config: &Config) -> io::Result<Listeners> {
        let mut socks = Vec::new();
        let mut add = |kind: Kind, addr: SocketAddr| -> io::Result<()> {
            let l = TcpListener::bind(addr).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {addr} ({kind:?}): {e}"))
            })?;
            deepen_backlog(&l);
            socks.push((kind, l));
            Ok(())
        };
        for a in &config.listen.s2s {
            add(Kind::S2s, *a)?;
        }
        for a in &config.listen.direct_tls {
            add(Kind::DirectTls, *a)?;
        }
        if !config.components.is_empty() {
            add(Kind::Component, config.listen.component)?;
        }
        if let Some(st) = &config.status {
            add(Kind::Status, st.listen)?;
        }
        Ok(Listeners { socks })
    }

    /// What is listening where, for the start-up log line.
    pub fn describe(&self) -> String {
        self.socks
            .iter()
            .map(|(k, l)| {
                let kind = match k {
                    Kind::S2s => "s2s",
                    Kind::DirectTls => "s2s direct TLS",
                    Kind::Component => "component",
                    Kind::Status => "status",
                };
                match l.local_addr() {
                    Ok(a) => format!("{kind} {a}"),
                    Err(_) => kind.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The accept queue we ask for. mio (like std) listens with a backlog of 128, which a burst of
/// peers overflows (measured: SYNs dropped and peers waiting for retransmits while the daemon
/// had CPU to spare); the kernel caps this at `net.core.somaxconn`.
const BACKLOG: libc::c_int = 1024;

/// Raise the listen backlog of a bound listener: on Linux, calling `listen` again on a
/// listening socket just updates its backlog.
fn deepen_backlog(l: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: `listen` on a file descriptor we own and that stays open for the call; it reads
    // no memory of ours.
    let rc = unsafe { libc::listen(l.as_raw_fd(), BACKLOG) };
    if rc != 0 {
        log::warn!(
            "cannot raise the listen backlog: {}",
            io::Error::last_os_error()
        );
    }
}

/// Accept until SIGTERM or SIGINT, then shut down gracefully (bounded by
/// `timeouts.shutdown`); reload the configuration on SIGHUP. Tells systemd (`$NOTIFY_SOCKET`,
/// see [`crate::notify`]) when it is ready, reloading and stopping.
///
/// # Errors
/// When the poll itself fails.
pub fn serve(router: &Arc<Router>, mut listeners: Listeners) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;
    for (i, (_, l)) in listeners.socks.iter_mut().enumerate() {
        poll.registry()
            .register(l, Token(i + 1), Interest::READABLE)?;
    }
    log::info!("listening on {}", listeners.describe());
    let notify = Notifier::from_env();
    notify.ready();
    let mut events = Events::with_capacity(64);
    let mut retry = false;
    // Connections were accepted since memory was last given back (see `give_back_memory`).
    let mut busy = false;
    'run: loop {
        let timeout = if retry {
            Some(RETRY_ACCEPT)
        } else {
            busy.then_some(QUIET)
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if events.is_empty() && !retry && busy {
            busy = false;
            give_back_memory();
            continue;
        }
        busy = true;
        retry = false;
        let mut ready: Vec<usize> = Vec::new();
        for ev in events.iter() {
            match ev.token() {
                SIGNALS => {
                    for sig in signals.pending() {
                        if sig == SIGHUP {
                            notify.reloading();
                            crate::reload::reload(router);
                            notify.ready();
                        } else {
                            log::info!("signal {sig}: shutting down");
                            notify.stopping();
                            break 'run;
                        }
                    }
                }
                Token(i) => ready.push(i - 1),
            }
        }
        if events.is_empty() {
            // The retry timer after EMFILE: try every listener again.
            ready = (0..listeners.socks.len()).collect();
        }
        for i in ready {
            if let Some((kind, l)) = listeners.socks.get(i) {
                retry |= accept_all(router, *kind, l);
            }
        }
    }
    let bound = router.ctx().config.timeouts.shutdown;
    router.shutdown(bound);
    log::info!("stopped");
    Ok(())
}

/// How long the accept loop must have had nothing to do before it gives memory back.
const QUIET: Duration = Duration::from_secs(2);

/// After a burst (connections came and went, verify connections and their DNS with them), the
/// allocator holds freed memory in the middle of its heaps; give it back to the kernel once the
/// daemon is quiet. Measured: see BENCHMARKS.md (RSS per idle stream).
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only returns free pages of the allocator's
    // heaps to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Accept until the listener would block (mio is edge-triggered). True when accepting failed
/// for lack of resources and should be retried soon.
fn accept_all(router: &Arc<Router>, kind: Kind, l: &TcpListener) -> bool {
    loop {
        let (sock, peer) = match l.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("accept failed: {e}");
                return true;
            }
        };
        let _ = sock.set_nodelay(true);
        if router.is_shutting_down() {
            continue;
        }
        let ctx = router.ctx();
        let limits = &ctx.config.limits;
        if kind == Kind::Component {
            if let Err(why) = router.admit_component(peer.ip()) {
                refuse_component(sock, peer, why, limits);
                continue;
            }
        }
        if matches!(kind, Kind::S2s | Kind::DirectTls) {
            if router.stream_count() >= limits.connections {
                METRICS.cap_hit(Cap::Connections);
                static TOTAL: RateLimit = RateLimit::new(LOG_EVERY);
                warn_limited!(
                    TOTAL,
                    "{peer}: refused, {} connections open (limits.connections)",
                    limits.connections
                );
                refuse(sock, StreamCondition::ResourceConstraint);
                continue;
            }
            if !router.admit_ip(peer.ip()) {
                METRICS.cap_hit(Cap::ConnectionsPerIp);
                static PER_IP: RateLimit = RateLimit::new(LOG_EVERY);
                warn_limited!(
                    PER_IP,
                    "{peer}: refused, {} connections from this address (limits.connections_per_ip)",
                    limits.connections_per_ip
                );
                refuse(sock, StreamCondition::PolicyViolation);
                continue;
            }
        }
        let res = match kind {
            Kind::S2s => conn::start_incoming(router, Box::new(sock), peer, false),
            Kind::DirectTls => conn::start_incoming(router, Box::new(sock), peer, true),
            Kind::Component => conn::start_component(router, Box::new(sock), peer),
            Kind::Status => {
                crate::status::accept(router, sock, peer);
                Ok(())
            }
        };
        if let Err(e) = res {
            log::error!("{peer}: cannot start the stream: {e}");
            if kind == Kind::Component {
                router.release_component(peer.ip());
            } else {
                router.release_ip(peer.ip());
            }
        }
    }
}

/// The address per-IP caps count `ip` under: an IPv4 address itself (also when mapped into
/// IPv6, as a dual-stack listener reports it), an IPv6 address its /64 — one site's network,
/// which a single host can usually pick addresses from at will.
pub fn ip_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

/// Refuse a component connection: one rate-limited line per reason, a header in the component
/// namespace and a stream error, without blocking the accept loop.
fn refuse_component(
    mut sock: mio::net::TcpStream,
    peer: SocketAddr,
    why: ComponentRefusal,
    limits: &crate::config::Limits,
) {
    static TOTAL: RateLimit = RateLimit::new(LOG_EVERY);
    static PER_IP: RateLimit = RateLimit::new(LOG_EVERY);
    static BANNED: RateLimit = RateLimit::new(LOG_EVERY);
    METRICS.cap_hit(match why {
        ComponentRefusal::Total => Cap::ComponentConnections,
        ComponentRefusal::PerIp => Cap::ComponentConnectionsPerIp,
        ComponentRefusal::Banned => Cap::ComponentFailures,
    });
    let (condition, text) = match why {
        ComponentRefusal::Total => {
            warn_limited!(TOTAL,
                "component {peer}: refused, {} component connections open (limits.component_connections)",
                limits.component_connections
            );
            (
                StreamCondition::ResourceConstraint,
                "too many component connections",
            )
        }
        ComponentRefusal::PerIp => {
            warn_limited!(PER_IP,
                "component {peer}: refused, {} component connections from this address (limits.component_connections_per_ip)",
                limits.component_connections_per_ip
            );
            (
                StreamCondition::PolicyViolation,
                "too many component connections from this address",
            )
        }
        ComponentRefusal::Banned => {
            warn_limited!(BANNED,
                "component {peer}: refused, too many failed handshakes from this address (limits.component_failures)"
            );
            (
                StreamCondition::PolicyViolation,
                "too many failed handshakes from this address",
            )
        }
    };
    let msg = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>\
         <stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{text}</text></stream:error></stream:stream>"
    );
    let _ = sock.write_all(msg.as_bytes());
}

/// Best effort: a header and a stream error, without blocking the accept loop.
fn refuse(mut sock: mio::net::TcpStream, condition: StreamCondition) {
    let msg = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>\
         <stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
    );
    let _ = sock.write_all(msg.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_addresses_count_per_64_and_ipv4_one_by_one() {
        // One /64: any interface identifier is the same site.
        assert_eq!(ip_group(ip("2001:db8:1:2::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            ip_group(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            ip("2001:db8:1:2::")
        );
        // The next /64 is another group.
        assert_ne!(
            ip_group(ip("2001:db8:1:3::1")),
            ip_group(ip("2001:db8:1:2::1"))
        );
        // IPv4, plain or mapped by a dual-stack listener: the address itself.
        assert_eq!(ip_group(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(ip_group(ip("192.0.2.7")), ip_group(ip("192.0.2.8")));
        assert_eq!(ip_group(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(ip_group(ip("::1")), ip("::"));
    }
}
