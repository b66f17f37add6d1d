//! A blocking server-to-server connection for the check: TCP, then TLS (a rustls client over
//! the same socket, STARTTLS or direct), with the crate's own stream parser; every read, write
//! and handshake step bounded by one deadline the caller moves as the stream goes on.
//!
//! The daemon drives its streams non-blocking from a poll loop (`conn`); a command-line tool
//! that runs one stream at a time needs none of that, so this is the simple blocking form.

use crate::domain::Domain;
use crate::tls::{server_name, words, HandshakeInfo, PeerCert};
use crate::xml::{Limits, StreamEvent, StreamParser, XmlError};
use rustls::{ClientConnection, ProtocolVersion};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

/// Why a read or write failed.
#[derive(Debug)]
pub enum WireError {
    /// The deadline passed.
    Timeout,
    /// The peer closed the connection.
    Eof,
    /// The peer's XML broke a rule of the parser.
    Xml(XmlError),
    /// The socket or TLS failed.
    Io(io::Error),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Timeout => f.write_str("timed out"),
            WireError::Eof => f.write_str("the connection was closed"),
            WireError::Xml(e) => write!(f, "bad XML: {e}"),
            WireError::Io(e) => write!(f, "{}", io_error(e)),
        }
    }
}

/// An I/O error in words, with the TLS failure inside it when there is one.
fn io_error(e: &io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(tls) => format!("TLS: {}", words::error(tls)),
        None => e.to_string(),
    }
}

/// See the module documentation.
pub struct Wire {
    sock: TcpStream,
    tls: Option<ClientConnection>,
    parser: StreamParser,
    limits: Limits,
    deadline: Instant,
}

impl Wire {
    /// Connect to `addr` within the deadline; `limits` bound what the parser accepts.
    ///
    /// # Errors
    /// The connect failed or timed out.
    pub fn connect(addr: SocketAddr, deadline: Instant, limits: Limits) -> io::Result<Wire> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let sock = TcpStream::connect_timeout(&addr, left)?;
        Ok(Wire {
            sock,
            tls: None,
            parser: StreamParser::new(limits),
            limits,
            deadline,
        })
    }

    /// Every later step must be done by `deadline`.
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// Set the socket's timeouts to what is left before the deadline.
    fn arm(&self) -> Result<(), WireError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WireError::Timeout);
        }
        self.sock
            .set_read_timeout(Some(left))
            .and_then(|()| self.sock.set_write_timeout(Some(left)))
            .map_err(WireError::Io)
    }

    /// Write `bytes` (through TLS once it is up).
    ///
    /// # Errors
    /// The deadline passed, or the socket or TLS failed.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.arm()?;
        let result = match &mut self.tls {
            Some(c) => {
                let mut s = rustls::Stream::new(c, &mut self.sock);
                s.write_all(bytes).and_then(|()| s.flush())
            }
            None => self.sock.write_all(bytes),
        };
        result.map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => WireError::Timeout,
            _ => WireError::Io(e),
        })
    }

    /// The next header, element or close from the peer.
    ///
    /// # Errors
    /// The deadline passed, the peer closed the connection, its XML is bad, or the socket or
    /// TLS failed.
    pub fn next_event(&mut self) -> Result<StreamEvent, WireError> {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(ev) = self.parser.next_event().map_err(WireError::Xml)? {
                return Ok(ev);
            }
            self.arm()?;
            let n = match &mut self.tls {
                Some(c) => rustls::Stream::new(c, &mut self.sock).read(&mut buf),
                None => self.sock.read(&mut buf),
            };
            match n {
                Ok(0) => return Err(WireError::Eof),
                Ok(n) => self.parser.feed(&buf[..n]),
                // The next arm() says whether the deadline passed.
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(WireError::Eof),
                Err(e) => return Err(WireError::Io(e)),
            }
        }
    }

    /// The TLS handshake with SNI = `sni` (the peer's domain, DTLS-03), over the socket as it
    /// is (after `<proceed/>`, or at once for direct TLS); the stream starts again with a new
    /// parser (RFC 6120 §4.3.3).
    ///
    /// # Errors
    /// In words: the peer sent bytes between `<proceed/>` and the handshake (RFC 6120 §5.3.3),
    /// the handshake failed or timed out.
    pub fn start_tls(
        &mut self,
        cfg: Arc<rustls::ClientConfig>,
        sni: &Domain,
    ) -> Result<HandshakeInfo, String> {
        if !self.parser.unparsed().is_empty() {
            return Err("the peer sent data after <proceed/>, before the TLS handshake".into());
        }
        let name = server_name(sni)?;
        let mut conn = ClientConnection::new(cfg, name).map_err(|e| words::error(&e))?;
        while conn.is_handshaking() {
            self.arm()
                .map_err(|_| "the TLS handshake timed out".to_string())?;
            match conn.complete_io(&mut self.sock) {
                Ok(_) => {}
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err("the peer closed the connection during the TLS handshake".into())
                }
                Err(e) => return Err(io_error(&e)),
            }
        }
        let info = HandshakeInfo {
            peer_cert: conn
                .peer_certificates()
                .and_then(|c| PeerCert::from_chain(c.to_vec())),
            version: match conn.protocol_version() {
                Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
                Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
                v => format!("{v:?}"),
            },
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            sni: Some(sni.to_string()),
        };
        self.tls = Some(conn);
        self.parser = StreamParser::new(self.limits);
        Ok(info)
    }

    /// Say goodbye to TLS (close_notify) if it is up, and close the socket.
    pub fn shutdown(&mut self) {
        let armed = self.arm().is_ok();
        if let Some(c) = &mut self.tls {
            c.send_close_notify();
            if armed {
                let _ = c.write_tls(&mut self.sock);
            }
        }
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
