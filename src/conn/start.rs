//! Starting streams — inbound server-to-server, components, outbound pairs and verify
//! connections — each on its own thread, and containing what can go wrong there: a thread that
//! cannot be started is a refused connection (or bounced stanzas, or an answered verification)
//! with every count given back, and a panic inside a stream is caught at the thread boundary,
//! logged, and followed by the same release as a normal end (its stanzas bounce with
//! `internal-server-error`), while the daemon keeps serving.

use super::link::Link;
use super::{fresh_id, Core, Role, Stream, STACK_SIZE};
use crate::inbox::{Handle, Input, StreamKind};
use crate::router::{Router, Start, Starts};
use crate::stanza::Bounce;
use crate::stream::component::Component;
use crate::stream::incoming::Incoming;
use crate::stream::outgoing::{Outgoing, Purpose};
use crate::stream::{StanzaCondition, Verdict};
use crate::transport::Transport;
use std::io;
use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

/// Serve a peer that connected to our server-to-server port (`direct_tls` for the XEP-0368
/// listener). The caller counted its address (`Router::admit_ip`); the stream gives it back
/// when it ends.
///
/// # Errors
/// When the stream cannot be started: the socket is closed, and the caller gives the address's
/// count back.
pub fn start_incoming(
    router: &Arc<Router>,
    sock: Box<dyn Transport>,
    peer: SocketAddr,
    direct_tls: bool,
) -> io::Result<()> {
    let live = router.live();
    let cfg = &live.ctx.config;
    let me = router.new_handle(StreamKind::Server, cfg.limits.outbox)?;
    let mut s = Stream::new(
        router,
        &live,
        me,
        &format!("s2s-in {peer}"),
        Role::Inbound {
            ip: Some(peer.ip()),
            bidi: Vec::new(),
        },
        cfg.timeouts.negotiation,
        |label| {
            Core::In(Incoming::new(
                live.ctx.clone(),
                label,
                Box::new(fresh_id),
                direct_tls,
            ))
        },
    );
    s.report_peer(peer);
    let mut link = Link::new(sock);
    if direct_tls {
        link.start_tls(s.server_session(None)?);
    }
    s.link = Some(link);
    log::debug!("{}: connected", s.core.label());
    spawn(s)?;
    Ok(())
}

/// Serve an XEP-0114 component that connected to the component port. The caller admitted it
/// (`Router::admit_component`); the stream gives that back when it ends.
///
/// # Errors
/// When the stream cannot be started (the caller gives the admission back).
pub fn start_component(
    router: &Arc<Router>,
    sock: Box<dyn Transport>,
    peer: SocketAddr,
) -> io::Result<()> {
    let live = router.live();
    let cfg = &live.ctx.config;
    let me = router.new_handle(StreamKind::Component, cfg.limits.outbox)?;
    let mut s = Stream::new(
        router,
        &live,
        me,
        &format!("component {peer}"),
        Role::Component {
            ip: Some(peer.ip()),
            domain: None,
        },
        cfg.timeouts.negotiation,
        |label| Core::Comp(Component::new(live.ctx.clone(), label, fresh_id())),
    );
    s.report_peer(peer);
    s.link = Some(Link::new(sock));
    spawn(s)
}

/// Start what the router asked for (outside every lock). A start that fails gives back what
/// it held: the pair's stanzas bounce, the verification is answered.
pub fn start(router: &Arc<Router>, starts: Starts) {
    for st in starts {
        match st {
            Start::Outbound {
                local,
                remote,
                handle,
                slot,
            } => {
                let key = (local, remote);
                let mut s = outbound(router, handle.clone(), Purpose::Pair, &key, false);
                s.caps.outbound = Some(slot);
                if spawn(s).is_err() {
                    let why = Bounce::new(
                        StanzaCondition::ResourceConstraint,
                        "the server cannot open more connections",
                    );
                    let more = router.outbound_closing(&key, &handle, Some(why));
                    start(router, more);
                }
            }
            Start::Verify { req, reply, handle } => {
                let key = (req.local.clone(), req.remote.clone());
                let mut s = outbound(router, handle, Purpose::Verify(req), &key, true);
                if let Role::Verify { reply: r, .. } = &mut s.role {
                    *r = Some(reply.clone());
                }
                reply.inbox().watch(s.me.inbox());
                if spawn(s).is_err() {
                    router.verification_done();
                    reply.send(Input::Verified {
                        remote: key.1,
                        local: key.0,
                        verdict: Verdict::Error(StanzaCondition::ResourceConstraint),
                    });
                }
            }
        }
    }
}

/// An outbound stream (not started): a pair's Initiating Server side, or a verify connection.
fn outbound(
    router: &Arc<Router>,
    me: Handle,
    purpose: Purpose,
    key: &(crate::domain::Domain, crate::domain::Domain),
    verify: bool,
) -> Box<Stream> {
    let live = router.live();
    let t = &live.ctx.config.timeouts;
    let (kind, deadline, role) = if verify {
        let role = Role::Verify {
            reply: None,
            local: key.0.clone(),
            remote: key.1.clone(),
        };
        ("verify", t.dialback, role)
    } else {
        let role = Role::Outbound {
            key: key.clone(),
            routed: true,
        };
        ("s2s-out", t.negotiation, role)
    };
    Stream::new(
        router,
        &live,
        me,
        &format!("{kind} {}→{}", key.0, key.1),
        role,
        deadline,
        |label| {
            // SASL-01: EXTERNAL is worth trying when our certificate names our domain.
            let external = live
                .tls
                .as_ref()
                .is_some_and(|t| t.can_authenticate_as(&key.0));
            Core::Out(
                Outgoing::new(
                    live.ctx.clone(),
                    label,
                    key.0.clone(),
                    key.1.clone(),
                    purpose,
                    false,
                )
                .with_external(external),
            )
        },
    )
}

/// Run `s` on its own thread, registered with the router for shutdown while it lives.
///
/// # Errors
/// The thread could not be started (the stream is dropped, unregistered).
fn spawn(s: Box<Stream>) -> io::Result<()> {
    let router = s.router.clone();
    let id = s.me.id();
    router.add_stream(s.me.clone());
    let started = super::pool::run(
        Box::new(move || {
            name_thread(id);
            contained(s);
        }),
        STACK_SIZE,
    );
    if let Err(e) = &started {
        router.remove_stream(id);
        log::error!("cannot start a stream thread: {e}");
    }
    started
}

/// Name the calling thread `st-ID` after its stream (seen in `top -H`, `/proc/PID/task`).
fn name_thread(id: u64) {
    let name = format!("st-{id}\0");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes (longer ones are
    // truncated by the kernel) from a pointer valid for the call.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
    }
}

/// The thread boundary: run the stream; after a panic, release what it holds.
fn contained(mut s: Box<Stream>) {
    super::stack::block_signals();
    crate::inbox::defer_wakes();
    if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| s.run())) {
        recover(s, &*p);
    }
}

/// After a panic in stream `s`: log it, bounce what it queued, release what it holds. Never
/// inlined: its locals would sit in the frames a sleeping stream keeps (see `stack`).
#[inline(never)]
fn recover(mut s: Box<Stream>, p: &(dyn std::any::Any + Send)) {
    let what = p
        .downcast_ref::<&str>()
        .map(|m| (*m).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into());
    log::error!(
        "{}: internal error ({what}); the stream is closed and its stanzas bounced",
        s.core.label()
    );
    let released = panic::catch_unwind(AssertUnwindSafe(|| {
        s.done = true;
        let text = "internal server error";
        let queued = match &mut s.core {
            Core::Out(c) => c.take_queue(),
            _ => Vec::new(),
        };
        for el in queued {
            super::start::start(
                &s.router,
                s.router
                    .bounce(el, StanzaCondition::InternalServerError, text),
            );
        }
        if let Some(link) = &mut s.link {
            link.shutdown();
        }
        s.release(Some(Bounce::new(
            StanzaCondition::InternalServerError,
            text,
        )));
    }));
    if released.is_err() {
        log::error!("a stream could not be released after an internal error");
    }
    crate::inbox::flush_wakes();
}
