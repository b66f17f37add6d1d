//! The I/O seam under every stream: a non-blocking byte pipe with a descriptor to poll
//! ([`Transport`]), and a way to start an outbound one ([`Connector`]).
//!
//! The daemon uses TCP ([`Tcp`]); the connection layer's unit tests use Unix socket pairs (and a
//! connector that hands out their ends), so every path of a stream thread — dialling, TLS,
//! writing to a peer that reads nothing, shutdown — runs in memory, with real descriptors for
//! `poll(2)` and no network.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// A connected (or connecting) non-blocking byte stream.
pub trait Transport: Read + Write + AsRawFd + Send {
    /// The pending socket error, if any: how a non-blocking connect that became writable ended.
    ///
    /// # Errors
    /// The query itself failed.
    fn take_error(&self) -> io::Result<Option<io::Error>>;

    /// Stop sending (the peer reads EOF after what was sent), best effort.
    fn shutdown_write(&self);
}

impl Transport for mio::net::TcpStream {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        mio::net::TcpStream::take_error(self)
    }

    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl Transport for std::os::unix::net::UnixStream {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        std::os::unix::net::UnixStream::take_error(self)
    }

    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// Starts outbound connections.
pub trait Connector: Send + Sync {
    /// Start connecting to `addr` without waiting: the transport is established once it polls
    /// writable and [`Transport::take_error`] says no error.
    ///
    /// # Errors
    /// The connection could not even be started (no descriptor, no route).
    fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn Transport>>;
}

/// Non-blocking TCP (`mio::net::TcpStream::connect`), with `TCP_NODELAY`: stanzas are whole
/// messages, written as soon as they are ready.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tcp;

impl Connector for Tcp {
    fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn Transport>> {
        let s = mio::net::TcpStream::connect(addr)?;
        let _ = s.set_nodelay(true);
        Ok(Box::new(s))
    }
}
