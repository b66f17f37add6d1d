//! Starting streams: inbound server-to-server, components, outbound pairs and verify
//! connections.

use super::starttls::upgrade_server;
use super::{fresh_id, Core, Worker};
use crate::domain::Domain;
use crate::router::{Handle, Router, StreamKind};
use crate::stream::component::Component;
use crate::stream::incoming::Incoming;
use crate::stream::outgoing::{Outgoing, Purpose};
use crate::stream::VerifyRequest;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Serve a peer that connected to our server-to-server port. `direct_tls` for the XEP-0368
/// listener.
///
/// # Errors
/// When the threads cannot be started (the socket is then dropped).
pub fn spawn_incoming(
    router: &Arc<Router>,
    sock: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
) -> io::Result<()> {
    let cfg = &router.ctx.config;
    let (mut w, _) = Worker::new(
        router,
        &format!("s2s-in {peer}"),
        StreamKind::Server,
        cfg.limits.outbox,
        cfg.timeouts.negotiation,
        |label| {
            Core::In(Incoming::new(
                router.ctx.clone(),
                label,
                Box::new(fresh_id),
                direct_tls,
            ))
        },
    );
    w.peer_ip = Some(peer.ip());
    if direct_tls {
        let _ = sock.set_nodelay(true);
        sock.set_write_timeout(Some(cfg.timeouts.negotiation))?;
        let (reader, writer) = upgrade_server(router, sock.try_clone()?)?;
        w.tls = Some(writer.clone());
        w.out = Some(Box::new(writer));
        w.sock = Some(sock);
        w.start_reader(Box::new(reader))?;
    } else {
        w.attach(sock)?;
    }
    log::debug!("{}: connected", w.core.label());
    w.spawn(false)
}

/// Serve an XEP-0114 component that connected to the component port.
///
/// # Errors
/// When the threads cannot be started.
pub fn spawn_component(router: &Arc<Router>, sock: TcpStream, peer: SocketAddr) -> io::Result<()> {
    let cfg = &router.ctx.config;
    let (mut w, _) = Worker::new(
        router,
        &format!("component {peer}"),
        StreamKind::Component,
        cfg.limits.outbox,
        cfg.timeouts.negotiation,
        |label| Core::Comp(Component::new(router.ctx.clone(), label, fresh_id())),
    );
    // Admitted by `net` against the component caps; released when the stream ends.
    w.caps.component_ip = Some(peer.ip());
    w.attach(sock)?;
    w.spawn(false)
}

/// A worker for an outbound stream (not started).
fn outbound(
    router: &Arc<Router>,
    local: &Domain,
    remote: &Domain,
    purpose: Purpose,
    cap: usize,
    deadline: Duration,
) -> (Worker, Handle) {
    let kind = if matches!(purpose, Purpose::Pair) {
        "s2s-out"
    } else {
        "verify"
    };
    Worker::new(
        router,
        &format!("{kind} {local}→{remote}"),
        StreamKind::Server,
        cap,
        deadline,
        |label| {
            Core::Out(Outgoing::new(
                router.ctx.clone(),
                label,
                local.clone(),
                remote.clone(),
                purpose,
                false,
            ))
        },
    )
}

/// Start the Initiating Server side of a domain pair; stanzas sent to the returned handle
/// queue until dialback succeeds.
///
/// # Errors
/// When the thread cannot be started.
pub fn spawn_outgoing(
    router: &Arc<Router>,
    local: Domain,
    remote: Domain,
    purpose: Purpose,
) -> io::Result<Handle> {
    let cfg = &router.ctx.config;
    let cap = cfg.limits.outbox + cfg.limits.queue;
    // Counted against limits.outbound_streams (checked by the router) while the worker lives.
    let slot = matches!(purpose, Purpose::Pair).then(|| router.outbound_slot());
    let (mut w, me) = outbound(
        router,
        &local,
        &remote,
        purpose,
        cap,
        cfg.timeouts.negotiation,
    );
    w.route_key = Some((local, remote));
    w.caps.outbound = slot;
    w.spawn(true)?;
    Ok(me)
}

/// Ask `remote`'s Authoritative Server about `req` on a dedicated connection (DB-11); the
/// answer goes to `reply`.
///
/// # Errors
/// When the thread cannot be started.
pub fn spawn_verify(
    router: &Arc<Router>,
    local: Domain,
    remote: Domain,
    req: VerifyRequest,
    reply: Handle,
) -> io::Result<()> {
    let cfg = &router.ctx.config;
    let (mut w, _) = outbound(
        router,
        &local,
        &remote,
        Purpose::Verify(req),
        cfg.limits.outbox,
        cfg.timeouts.dialback,
    );
    w.verify = Some((reply, remote, local));
    w.spawn(true)
}
