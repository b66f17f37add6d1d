//! dialbackd: an XMPP server-to-server daemon that federates its domains by Server Dialback
//! (XEP-0220, keys per XEP-0185), over STARTTLS or direct TLS (XEP-0368), and routes stanzas
//! between remote servers and local XEP-0114 components.
//!
//! # Roles
//! - **Initiating Server**: the first stanza for a (local, remote) domain pair starts one
//!   outbound connection; later stanzas queue behind it and go out in order once the peer says
//!   `type='valid'` (or bounce to their senders when it cannot be established).
//! - **Receiving Server**: a peer's `<db:result/>` is checked with the claimed domain's
//!   Authoritative Server over a dedicated verify connection, which never waits for our own
//!   authentication (Prosody answers only after it authenticated to us).
//! - **Authoritative Server**: `<db:verify/>` for our domains is answered by recomputing the key.
//!
//! Where both sides have certificates that prove their domains, streams authenticate by SASL
//! EXTERNAL (XEP-0178) instead, in both directions, with dialback as the fallback on the same
//! stream when EXTERNAL fails (`[tls] auth`; `stream::sasl`).
//!
//! # Threads and data flow
//! ```text
//!  acceptor (net): mio Poll over listeners + signals ──accept──► conn::start_incoming/_component
//!  per stream (conn): ONE thread, asleep in poll(2) on its socket + its inbox's wake fd, with
//!                     the timeout = its earliest deadline:
//!                     socket ⇄ TLS ⇄ framer/parser ⇄ stream core (sans-I/O) ⇄ router;
//!                     outbound streams dial (DNS, non-blocking connect, TLS) in the same loop
//!  router: tables only — route per (local, remote) pair (a stream whose inbox is the pair's
//!          FIFO: ours, or a peer's XEP-0288 bidi stream; or a backoff window), components,
//!          live streams, outbound streams that may carry pairs of other targets at their
//!          address (DB-29); returns what to start
//! ```
//!
//! # Modules
//! - [`stream`]: the protocol core, no I/O: `Event` in, `Vec<Action>` out.
//! - [`xml`]: the push framer (bytes → complete first-level elements, budgets), the policy
//!   parser over the `xml` crate (each complete element parsed from memory) and our serializer.
//! - [`keys`], [`domain`], [`stanza`]: XEP-0185 keys, validated names, stanza helpers;
//!   [`condition`]: the stream and stanza error conditions as enums.
//! - [`logsafe`]: peer-supplied strings escaped and bounded for log lines.
//! - [`router`], [`conn`], [`inbox`], [`transport`], [`net`]: routing tables, stream threads,
//!   their inboxes, the socket seam, the accept loop; [`ratelimit`]: log lines and failures per
//!   address, rate-limited; [`reload`]: the configuration read again on SIGHUP; [`notify`]: the
//!   systemd readiness notifications (`Type=notify`).
//! - [`dns`], [`tls`], [`config`]: the blocking resolver and the private-network guard, rustls,
//!   the typed configuration; [`policy`]: the `[policy]` allow and deny lists.
//! - [`check`]: `dialbackd check DOMAIN`, the operator's report on federating with a domain
//!   (DNS, TCP, TLS and certificate, a real dialback round trip).
//! - [`metrics`], [`status`]: counters and their OpenMetrics text; the optional status listener
//!   (`/metrics`, `/status`) and the `dialbackd status` client.
pub mod check;
pub mod condition;
pub mod config;
pub mod conn;
pub mod dns;
pub mod domain;
pub mod inbox;
pub mod keys;
pub mod logsafe;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod policy;
pub mod ratelimit;
pub mod reload;
pub mod router;
pub mod stanza;
pub mod status;
pub mod stream;
pub mod tls;
pub mod transport;
pub mod xml;
