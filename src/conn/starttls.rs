//! TLS for a stream: the STARTTLS upgrade (RFC 6120 §5), direct TLS (XEP-0368), and the
//! certificate policy applied where it belongs (SEC-04).

use super::{Core, Event, ReaderCmd, Router, Worker};
use crate::domain::Domain;
use crate::stream::{Verdict, VerifyRequest};
use crate::tls::{CertJudgement, TlsReader, TlsStream, TlsWriter};
use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

impl Worker {
    /// STARTTLS: the reader has stopped; check for injected bytes and upgrade.
    pub(super) fn start_tls(&mut self) {
        self.flush();
        if self.leftover.take().is_none() {
            self.feed(Event::Broken {
                condition: Some("internal-server-error"),
                reason: "STARTTLS out of order".into(),
            });
            return;
        }
        let upgraded = match (&self.core, self.sock.as_ref().map(TcpStream::try_clone)) {
            (Core::In(c), Some(Ok(sock))) => {
                upgrade_server_for(&self.router, sock, c.named_local())
            }
            (Core::Out(_), Some(Ok(sock))) => {
                let (local, remote) = (self.local_domain(), self.remote_domain());
                upgrade_client(
                    &self.router,
                    self.core.label(),
                    sock,
                    &local,
                    &remote,
                    false,
                )
            }
            (_, Some(Err(e))) => Err(e),
            _ => Err(io::Error::other("no transport to upgrade")),
        };
        match upgraded {
            Ok((reader, writer)) => {
                self.tls = Some(writer.clone());
                self.out = Some(Box::new(writer));
                match self
                    .reader_ctl
                    .as_ref()
                    .map(|c| c.send(ReaderCmd::Resume(Box::new(reader))))
                {
                    Some(Ok(())) => {
                        self.reader_running = true;
                        self.feed(Event::TlsEstablished);
                        // The restart discards the pairs verified in plaintext (RFC 6120
                        // §5.4.3.3): the stream must authenticate again, within a new
                        // negotiation deadline.
                        if self.deadline_fired && !self.core.is_open() && !self.done {
                            self.deadline =
                                Instant::now() + self.router.ctx.config.timeouts.negotiation;
                            self.deadline_fired = false;
                        }
                    }
                    _ => self.feed(Event::Broken {
                        condition: None,
                        reason: "reader thread gone".into(),
                    }),
                }
            }
            Err(e) => {
                self.out = None;
                self.feed(Event::Broken {
                    condition: None,
                    reason: format!("TLS failed: {e}"),
                });
            }
        }
    }

    pub(super) fn attach_tls_client(&mut self, sock: TcpStream, remote: &Domain) -> io::Result<()> {
        let _ = sock.set_nodelay(true);
        sock.set_write_timeout(Some(self.router.ctx.config.timeouts.negotiation))?;
        let local = self.local_domain();
        let (reader, writer) = upgrade_client(
            &self.router,
            self.core.label(),
            sock.try_clone()?,
            &local,
            remote,
            true,
        )?;
        self.tls = Some(writer.clone());
        self.out = Some(Box::new(writer));
        self.sock = Some(sock);
        self.start_reader(Box::new(reader))
    }

    /// XEP-0344 and the certificate policy, judged against the `from` of this db:result
    /// (SEC-04): `Some` when the certificate decides, `None` to ask the Authoritative Server.
    pub(super) fn verify_by_certificate(&self, req: &VerifyRequest) -> Option<Verdict> {
        let (tls, ctx) = (self.tls.as_ref()?, self.router.tls.as_ref()?);
        let cert = tls.info().and_then(|i| i.peer_cert);
        match ctx.judge(&self.router.ctx.config.tls, &req.remote, cert.as_ref()) {
            CertJudgement::Trusted => {
                log::info!(
                    "{}: certificate of {} is valid for it (pkix): verified without a callback",
                    self.core.label(),
                    req.remote
                );
                Some(Verdict::Valid)
            }
            CertJudgement::Refused(why) => {
                log::warn!("{}: {why}", self.core.label());
                Some(Verdict::Error("not-authorized"))
            }
            CertJudgement::Accepted(what) => {
                log::debug!("{}: {what}", self.core.label());
                None
            }
        }
    }
}

/// Server side of TLS (after `<proceed/>`, or at once on the direct-TLS listener); the
/// handshake is driven by the reader thread's first reads.
pub(super) fn upgrade_server(
    router: &Arc<Router>,
    sock: TcpStream,
) -> io::Result<(TlsReader, TlsWriter)> {
    upgrade_server_for(router, sock, None)
}

/// [`upgrade_server`] after a stream header whose `to` named `to`: we present that domain's
/// certificate, whatever the client's SNI (it may send none).
fn upgrade_server_for(
    router: &Arc<Router>,
    sock: TcpStream,
    to: Option<&Domain>,
) -> io::Result<(TlsReader, TlsWriter)> {
    let ctx = router
        .tls
        .as_ref()
        .ok_or_else(|| io::Error::other("TLS is not configured"))?;
    let s = TlsStream::accept(sock, ctx.server_for(to))?;
    Ok((s.reader, s.writer))
}

/// Client side of TLS: handshake now (bounded by the negotiation timeout), then judge the
/// peer's certificate under the policy for `remote`.
pub(super) fn upgrade_client(
    router: &Arc<Router>,
    label: &str,
    sock: TcpStream,
    local: &Domain,
    remote: &Domain,
    direct: bool,
) -> io::Result<(TlsReader, TlsWriter)> {
    let ctx = router
        .tls
        .as_ref()
        .ok_or_else(|| io::Error::other("TLS is not configured"))?;
    let cfg = ctx
        .client(local, direct)
        .ok_or_else(|| io::Error::other(format!("no TLS client configuration for {local}")))?;
    let timeouts = sock.try_clone()?;
    timeouts.set_read_timeout(Some(router.ctx.config.timeouts.negotiation))?;
    let mut s = TlsStream::connect(sock, cfg, remote)?;
    let info = s.handshake()?;
    timeouts.set_read_timeout(None)?;
    if let Some(c) = &info.peer_cert {
        log::debug!(
            "{label}: {} certificate fingerprint sha256:{}",
            remote,
            c.spki_sha256_hex()
        );
    }
    match ctx.judge(&router.ctx.config.tls, remote, info.peer_cert.as_ref()) {
        CertJudgement::Refused(why) => {
            log::warn!("{label}: {why}");
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
        }
        CertJudgement::Accepted(what) => log::info!("{label}: {} with {what}", info.version),
        CertJudgement::Trusted => log::info!(
            "{label}: {} with a valid certificate for {remote}",
            info.version
        ),
    }
    Ok((s.reader, s.writer))
}
