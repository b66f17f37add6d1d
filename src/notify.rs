//! systemd service notifications (sd_notify(3)) for `Type=notify` units, without libsystemd.
//!
//! In scope: reading `$NOTIFY_SOCKET` once (a filesystem path, or an abstract-namespace name
//! written with a leading `@`), and sending one datagram per state change: `READY=1` once the
//! daemon listens, `RELOADING=1` (with `MONOTONIC_USEC=`, as systemd ≥ 253 asks) and `READY=1`
//! again around a SIGHUP reload, `STOPPING=1` when a graceful shutdown starts. Out of scope:
//! the watchdog, file descriptor store, status text. Without `$NOTIFY_SOCKET` (not started by
//! systemd, or `Type=simple`) every call does nothing.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where service manager notifications go, when the daemon was started with `$NOTIFY_SOCKET`.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` names; a disabled one when it is unset or empty. An
    /// address that cannot be used is logged (warning) and notifications are then skipped.
    pub fn from_env() -> Notifier {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::disabled();
        };
        let value = value.to_string_lossy().into_owned();
        if value.is_empty() {
            return Notifier::disabled();
        }
        match Self::open(&value) {
            Ok(target) => Notifier {
                target: Some(target),
            },
            Err(e) => {
                log::warn!("NOTIFY_SOCKET={value}: cannot notify the service manager: {e}");
                Notifier::disabled()
            }
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    fn open(value: &str) -> io::Result<(UnixDatagram, SocketAddr)> {
        let addr = parse_addr(value)?;
        Ok((UnixDatagram::unbound()?, addr))
    }

    /// `READY=1`: start-up (or a reload) is complete and the daemon serves.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// `RELOADING=1` with the monotonic clock now, before the configuration is read again.
    pub fn reloading(&self) {
        if self.target.is_some() {
            self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        }
    }

    /// `STOPPING=1`: a graceful shutdown has started.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// One datagram; a failure is logged at debug level (the service manager may be gone, and
    /// the daemon serves regardless).
    fn send(&self, state: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                log::debug!("cannot notify the service manager ({state:?}): {e}");
            }
        }
    }
}

/// The socket address `$NOTIFY_SOCKET` names: `@name` an abstract-namespace socket (Linux),
/// anything else a filesystem path (systemd only ever passes absolute ones).
///
/// # Errors
/// A name or path too long for a socket address, or an abstract name where there are none.
pub fn parse_addr(value: &str) -> io::Result<SocketAddr> {
    if let Some(name) = value.strip_prefix('@') {
        abstract_addr(name.as_bytes())
    } else if value.starts_with('/') {
        SocketAddr::from_pathname(value)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither an absolute path nor an abstract socket name (@…)",
        ))
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract socket names exist on Linux only",
    ))
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares `MONOTONIC_USEC=` with.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("dialbackd-notify-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn a_path_socket_gets_ready_reloading_and_stopping() {
        let dir = temp_dir("path");
        let path = dir.join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some(Notifier::open(path.to_str().unwrap()).unwrap()),
        };
        n.ready();
        assert_eq!(recv(&server), "READY=1");
        n.reloading();
        let r = recv(&server);
        let usec = r
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("not a RELOADING notification: {r:?}"));
        assert!(usec.parse::<u64>().unwrap() > 0, "{r:?}");
        n.stopping();
        assert_eq!(recv(&server), "STOPPING=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_abstract_name_is_reached_by_its_at_sign_form() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("dialbackd-notify-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = Notifier {
            target: Some(Notifier::open(&format!("@{name}")).unwrap()),
        };
        n.ready();
        assert_eq!(recv(&server), "READY=1");
    }

    #[test]
    fn unusable_addresses_are_refused_not_panicked_on() {
        assert!(parse_addr("relative/path").is_err());
        assert!(parse_addr(&format!("/{}", "x".repeat(200))).is_err());
        // A disabled notifier sends nothing and does not fail.
        let n = Notifier::disabled();
        n.ready();
        n.reloading();
        n.stopping();
    }
}
