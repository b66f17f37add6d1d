//! systemd `Type=notify` readiness (sd_notify(3)), against the real daemon: started with
//! `$NOTIFY_SOCKET` naming a datagram socket this test binds, it sends `READY=1` once it
//! listens, `RELOADING=1` (with `MONOTONIC_USEC=`) and `READY=1` around each SIGHUP reload
//! (a refused configuration included: the one in force keeps serving), and `STOPPING=1` when
//! SIGTERM starts the graceful shutdown.

mod common;

use common::dns_server::TestDns;
use common::*;
use std::net::{IpAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;

/// The test's notification socket, in a directory of its own removed when dropped.
struct NotifySocket {
    dir: PathBuf,
    sock: UnixDatagram,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = std::env::temp_dir().join(format!("dialbackd-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = UnixDatagram::bind(dir.join("notify")).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        NotifySocket { dir, sock }
    }

    fn path(&self) -> String {
        self.dir.join("notify").display().to_string()
    }

    /// The next notification (bounded by [`WAIT`]); panics with `d`'s log if none comes.
    fn recv(&self, d: &Daemon) -> String {
        let mut buf = [0u8; 512];
        match self.sock.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => panic!("no notification within {WAIT:?}: {e}\n{}", d.log_text()),
        }
    }

    /// The next notification is `RELOADING=1` with a monotonic timestamp.
    fn expect_reloading(&self, d: &Daemon) {
        let r = self.recv(d);
        let usec = r
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("expected RELOADING=1, got {r:?}"));
        assert!(usec.parse::<u64>().is_ok_and(|u| u > 0), "{r:?}");
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal(d: &Daemon, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(d.pid().to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn ready_reloading_and_stopping_reach_notify_socket() {
    let notify = NotifySocket::bind();
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let path = notify.path();
    let mut d = Daemon::start_env(
        "b",
        next_ip(),
        &config(&["b.test"], &[], dns.addr(), ""),
        &[("NOTIFY_SOCKET", path.as_str())],
    );
    assert_eq!(notify.recv(&d), "READY=1");
    // Ready means listening.
    TcpStream::connect(d.s2s()).expect("the s2s listener accepts once READY=1 is sent");

    // A reload that succeeds: RELOADING=1, then READY=1 once the new configuration is in force.
    signal(&d, "HUP");
    notify.expect_reloading(&d);
    assert_eq!(notify.recv(&d), "READY=1");
    d.wait_log("configuration reloaded");

    // A reload that is refused: the configuration in force stays and serves, so READY=1 again.
    std::fs::write(
        d.dir.join("dialbackd.toml"),
        "domains = [\"not a domain\"]\n",
    )
    .unwrap();
    signal(&d, "HUP");
    notify.expect_reloading(&d);
    assert_eq!(notify.recv(&d), "READY=1");
    d.wait_log("configuration not reloaded");
    TcpStream::connect(d.s2s()).expect("still listening after a refused reload");

    signal(&d, "TERM");
    assert_eq!(notify.recv(&d), "STOPPING=1");
    let st = d.terminate().expect("the daemon exits after SIGTERM");
    assert!(st.success(), "exit status {st}\n{}", d.log_text());
}

#[test]
fn an_unusable_notify_socket_is_reported_and_the_daemon_serves() {
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let mut d = Daemon::start_env(
        "b",
        next_ip(),
        &config(&["b.test"], &[], dns.addr(), ""),
        &[("NOTIFY_SOCKET", "relative/notify")],
    );
    d.wait_log("NOTIFY_SOCKET=relative/notify: cannot notify the service manager");
    TcpStream::connect(d.s2s()).expect("listening regardless");
    let st = d.terminate().expect("the daemon exits after SIGTERM");
    assert!(st.success(), "exit status {st}\n{}", d.log_text());
}

/// The shipped unit is a `Type=notify` service reloaded by SIGHUP, and `systemd-analyze verify`
/// (where installed) finds nothing wrong with it, run on a copy whose `ExecStart` names the
/// binary under test (the installed path does not exist here).
#[test]
fn the_unit_is_type_notify_and_verifies() {
    let unit = include_str!("../etc/dialbackd.service");
    let directives: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert!(directives.contains(&"Type=notify"), "{unit}");
    assert!(
        directives.contains(&"ExecReload=/bin/kill -HUP $MAINPID"),
        "{unit}"
    );
    let Ok(found) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not installed: unit not verified");
        return;
    };
    assert!(found.status.success());
    let dir = std::env::temp_dir().join(format!("dialbackd-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("dialbackd.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/dialbackd", env!("CARGO_BIN_EXE_dialbackd")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
