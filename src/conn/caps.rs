//! What a stream counts against the resource caps, and gives back when it ends.
//!
//! In scope: the bytes of stanzas its core holds in the pair's queue (kept in step with the
//! stream's [`Handle`](crate::inbox::Handle), so `limits.queue_bytes` and
//! `limits.queued_bytes` see them), the outbound-stream slot of an outbound pair stream, the
//! connection it was admitted as (per-IP counts; for a component, reporting a failed handshake
//! from that address once), and shrinking the write buffer after a burst. The decisions themselves are made
//! elsewhere: the caps in `router` and `net`, the protocol in `stream`.

use super::{Core, Role, Stream};
use crate::router::OutboundSlot;

/// A stream's holdings against the caps.
#[derive(Default)]
pub(super) struct StreamCaps {
    /// Bytes of stanzas the core holds, as last counted into the handle.
    core_bytes: usize,
    /// The outbound-stream slot, for outbound pair streams; given back when the stream ends.
    pub(super) outbound: Option<OutboundSlot>,
    /// Whether a failed component handshake was reported already.
    failure_reported: bool,
}

/// Give a drained buffer's memory back when a burst grew it far beyond `keep`.
pub(super) fn reclaim(buf: &mut Vec<u8>, keep: usize) {
    if buf.is_empty() && buf.capacity() > 4 * keep {
        buf.shrink_to(keep);
    }
}

impl Stream {
    /// After the core handled an event: count what its queue holds now, and report a failed
    /// component handshake.
    pub(super) fn caps_after_feed(&mut self) {
        let held = match &self.core {
            Core::Out(c) => c.queued_bytes(),
            _ => 0,
        };
        if held != self.caps.core_bytes {
            self.me.recharge(self.caps.core_bytes, held);
            self.caps.core_bytes = held;
        }
        if let (Core::Comp(c), Role::Component { ip: Some(ip), .. }) = (&self.core, &self.role) {
            let ip = *ip;
            if c.auth_failed() && !self.caps.failure_reported {
                self.caps.failure_reported = true;
                if self.router.component_auth_failed(ip) {
                    let l = &self.ctx.config.limits;
                    log::warn!(
                        "{}: {} failed component handshakes from this address in {}s; refusing it for as long (limits.component_failures)",
                        self.core.label(),
                        l.component_failures,
                        l.component_failure_window.as_secs()
                    );
                }
            }
        }
    }

    /// The stream ended: give back what it held.
    pub(super) fn caps_finish(&mut self) {
        self.me.recharge(self.caps.core_bytes, 0);
        self.caps.core_bytes = 0;
        match &mut self.role {
            Role::Component { ip, .. } => {
                if let Some(ip) = ip.take() {
                    self.router.release_component(ip);
                }
            }
            Role::Inbound { ip, .. } => {
                if let Some(ip) = ip.take() {
                    self.router.release_ip(ip);
                }
            }
            Role::Outbound { .. } | Role::Verify { .. } => {}
        }
        self.caps.outbound = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::link::WBUF_KEEP;

    #[test]
    fn a_drained_buffer_shrinks_after_a_burst_only() {
        let mut buf: Vec<u8> = Vec::with_capacity(WBUF_KEEP);
        buf.extend_from_slice(&[b'x'; 1000]);
        buf.clear();
        reclaim(&mut buf, WBUF_KEEP);
        assert!(
            buf.capacity() >= WBUF_KEEP,
            "a normal buffer keeps its memory"
        );
        // A 1 MiB burst.
        buf.extend(std::iter::repeat_n(b'x', 1 << 20));
        reclaim(&mut buf, WBUF_KEEP);
        assert!(buf.capacity() >= 1 << 20, "not while it holds data");
        buf.clear();
        reclaim(&mut buf, WBUF_KEEP);
        assert!(
            buf.capacity() <= 2 * WBUF_KEEP,
            "back near the baseline: {}",
            buf.capacity()
        );
    }
}
