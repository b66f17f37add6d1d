//! One TLS connection, owned and driven by the thread that owns its socket.
//!
//! A [`Session`] is a `rustls::Connection` plus what we learn about it, with the I/O steps a
//! non-blocking poll loop needs: take what ciphertext the socket has ([`Session::read_from`]),
//! give back the plaintext, queue plaintext ([`Session::write_plain`]) and send what can be sent
//! ([`Session::write_to`]). Nothing here blocks, locks or spawns: a socket that would block just
//! ends the step, and the owner polls for readiness with its own deadline. There is one owner
//! and no split halves, so there is no lock order to reason about (DESIGN.md, "TLS").

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::{ClientConnection, Connection, ProtocolVersion, ServerConnection};

use super::{server_name, PeerCert};
use crate::domain::Domain;

/// Socket reads per [`Session::read_from`]: a busy peer cannot keep one step going forever.
const READS_PER_STEP: usize = 8;

/// What a completed handshake established, for decisions and logs.
#[derive(Clone, Debug)]
pub struct HandshakeInfo {
    /// The peer's certificate chain, `None` when the peer sent none (a client may send none).
    pub peer_cert: Option<PeerCert>,
    /// The negotiated protocol version: "TLSv1.3" or "TLSv1.2".
    pub version: String,
    /// The negotiated ALPN protocol, if any (`b"xmpp-server"` on direct TLS).
    pub alpn: Option<Vec<u8>>,
    /// Server side: the SNI the client asked for (`None` when it sent none). Client side: the
    /// SNI we sent (`None` for an IP literal, where SNI is not sent).
    pub sni: Option<String>,
}

/// What one [`Session::read_from`] step saw at the end of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// The socket has nothing more for now.
    WouldBlock,
    /// The peer sent close_notify: the TLS stream ended cleanly.
    Closed,
    /// The socket reached EOF without close_notify (after the handshake).
    Eof,
}

/// See the module documentation.
pub struct Session {
    conn: Connection,
    /// Client side: the SNI we sent.
    sni_sent: Option<String>,
    /// The first TLS failure, reported again by every later step.
    failed: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("handshaking", &self.conn.is_handshaking())
            .field("failed", &self.failed)
            .finish()
    }
}

impl Session {
    /// Server side: after `<proceed/>` for STARTTLS, at once for direct TLS. The handshake is
    /// driven by the reads and writes that follow.
    ///
    /// # Errors
    /// rustls refuses the configuration.
    pub fn accept(cfg: Arc<rustls::ServerConfig>) -> io::Result<Session> {
        let conn = ServerConnection::new(cfg).map_err(io::Error::other)?;
        Ok(Session::new(Connection::Server(conn), None))
    }

    /// Client side, with SNI = the peer's JID domain (DTLS-03: not the SRV target; an IP literal
    /// sends no SNI). The ClientHello is queued at once: send it with [`Session::write_to`].
    ///
    /// # Errors
    /// `sni` is not usable as a TLS name, or rustls refuses the configuration.
    pub fn connect(cfg: Arc<rustls::ClientConfig>, sni: &Domain) -> io::Result<Session> {
        let name = server_name(sni).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let sent = match &name {
            rustls::pki_types::ServerName::DnsName(d) => Some(d.as_ref().to_owned()),
            _ => None,
        };
        let conn = ClientConnection::new(cfg, name).map_err(io::Error::other)?;
        Ok(Session::new(Connection::Client(conn), sent))
    }

    fn new(mut conn: Connection, sni_sent: Option<String>) -> Session {
        // Our own caller bounds what it hands over (see `write_plain`).
        conn.set_buffer_limit(None);
        Session {
            conn,
            sni_sent,
            failed: None,
        }
    }

    /// True until the handshake has completed.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// What the handshake established; `None` until it has completed.
    pub fn info(&self) -> Option<HandshakeInfo> {
        if self.conn.is_handshaking() {
            return None;
        }
        let version = match self.conn.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
            Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
            Some(v) => format!("{v:?}"),
            None => "unknown".to_owned(),
        };
        let sni = match &self.conn {
            Connection::Server(s) => s.server_name().map(str::to_owned),
            Connection::Client(_) => self.sni_sent.clone(),
        };
        Some(HandshakeInfo {
            peer_cert: self
                .conn
                .peer_certificates()
                .and_then(|c| PeerCert::from_chain(c.to_vec())),
            version,
            alpn: self.conn.alpn_protocol().map(<[u8]>::to_vec),
            sni,
        })
    }

    fn check_failed(&self) -> io::Result<()> {
        match &self.failed {
            Some(msg) => Err(io::Error::new(io::ErrorKind::InvalidData, msg.clone())),
            None => Ok(()),
        }
    }

    /// Read what ciphertext `sock` has (a bounded number of reads, stopping at `WouldBlock`),
    /// process it and append the plaintext to `plain`.
    ///
    /// # Errors
    /// Socket errors; a TLS failure (`InvalidData`, sticky; the alert rustls queued goes out
    /// with the next [`Session::write_to`]); EOF during the handshake (`UnexpectedEof`).
    pub fn read_from(&mut self, sock: &mut dyn Read, plain: &mut Vec<u8>) -> io::Result<ReadEnd> {
        self.check_failed()?;
        for _ in 0..READS_PER_STEP {
            match self.conn.read_tls(sock) {
                Ok(0) => return self.at_eof(plain),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadEnd::WouldBlock),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::Other => {
                    // "received plaintext buffer full": drain it, then read again; any other
                    // such refusal is final.
                    let before = plain.len();
                    self.drain(plain)?;
                    if plain.len() == before {
                        return Err(e);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
            self.process()?;
            if let Some(end) = self.drain(plain)? {
                return Ok(end);
            }
        }
        Ok(ReadEnd::WouldBlock)
    }

    /// The socket said EOF: rustls learns it; what it still held comes out.
    fn at_eof(&mut self, plain: &mut Vec<u8>) -> io::Result<ReadEnd> {
        self.process()?;
        if self.conn.is_handshaking() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed during the TLS handshake",
            ));
        }
        Ok(self.drain(plain)?.unwrap_or(ReadEnd::Eof))
    }

    /// Process new records; a TLS error sticks (and rustls queued an alert for the peer).
    fn process(&mut self) -> io::Result<()> {
        match self.conn.process_new_packets() {
            Ok(_) => Ok(()),
            Err(e) => {
                let msg = format!("TLS: {}", super::words::error(&e));
                self.failed = Some(msg.clone());
                Err(io::Error::new(io::ErrorKind::InvalidData, msg))
            }
        }
    }

    /// Move decrypted plaintext into `plain`; `Some` when the TLS stream ended.
    fn drain(&mut self, plain: &mut Vec<u8>) -> io::Result<Option<ReadEnd>> {
        let mut buf = [0u8; 4096];
        loop {
            match self.conn.reader().read(&mut buf) {
                Ok(0) => return Ok(Some(ReadEnd::Closed)),
                Ok(n) => plain.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    log::debug!("TLS: peer closed the connection without close_notify");
                    return Ok(Some(ReadEnd::Eof));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Queue plaintext to send (encrypted now if the handshake is done, else when it is). The
    /// caller bounds how much it queues while [`Session::wants_write`] is true.
    ///
    /// # Errors
    /// A TLS failure happened before.
    pub fn write_plain(&mut self, data: &[u8]) -> io::Result<()> {
        self.check_failed()?;
        self.conn.writer().write_all(data)
    }

    /// True while ciphertext waits to be sent.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Send queued ciphertext until the socket would block. `Ok(true)` when nothing is left.
    ///
    /// # Errors
    /// Socket errors other than `WouldBlock`.
    pub fn write_to(&mut self, sock: &mut dyn Write) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Queue close_notify (send it with [`Session::write_to`]).
    pub fn close_notify(&mut self) {
        self.conn.send_close_notify();
    }
}
