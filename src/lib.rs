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
//! # Threads and data flow
//! ```text
//!  acceptor (net): mio Poll over listeners + signals ──accept──► conn::spawn_*
//!  per stream (conn):  reader thread: socket → xml::StreamReader → Input ─┐
//!                      worker thread: Input → stream core (sans-I/O) → Actions → socket writes,
//!                                     router calls (route, bounce, verify, register);
//!                                     parked in the stream's mailbox while the stream is idle
//!  router: routes (local, remote) → Handle (non-blocking, bounded outbox), components,
//!          live streams; any thread may hand a stanza to any stream without blocking on it
//! ```
//!
//! # Modules
//! - [`stream`]: the protocol core, no I/O: `Event` in, `Vec<Action>` out.
//! - [`xml`]: the push framer (bytes → complete first-level elements, budgets), the policy
//!   parser over the `xml` crate (each complete element parsed from memory) and our serializer.
//! - [`keys`], [`domain`], [`stanza`]: XEP-0185 keys, validated names, stanza helpers.
//! - [`logsafe`]: peer-supplied strings escaped and bounded for log lines.
//! - [`router`], [`conn`], [`mailbox`], [`net`]: routing tables, stream threads and their
//!   inboxes, the accept loop; [`ratelimit`]: log lines and failures per address, rate-limited.
//! - [`dns`], [`tls`], [`config`]: the blocking resolver and the private-network guard, rustls,
//!   the typed configuration.
pub mod config;
pub mod conn;
pub mod dns;
pub mod domain;
pub mod keys;
pub mod logsafe;
pub mod mailbox;
pub mod net;
pub mod ratelimit;
pub mod router;
pub mod stanza;
pub mod stream;
pub mod tls;
pub mod xml;
