//! Monitoring plugins operators already run, against a real daemon on loopback: the Debian
//! package `nagios-check-xmppng` (`check_xmppng --s2s`), run with Debian's own Python as an
//! operator would. tests/setup.sh installs the package (`make test`, CI); where it is absent
//! each test says so and passes without running.

mod common;

use common::*;
use dialbackd::domain::Domain;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;

const PLUGIN: &str = "/usr/lib/nagios/plugins/check_xmppng";
const PYTHON: &str = "/usr/bin/python3";

/// The plugin is installed (with the Python it runs on); otherwise a note on stderr.
fn plugin_present(test: &str) -> bool {
    let present = Path::new(PLUGIN).is_file() && Path::new(PYTHON).is_file();
    if !present {
        eprintln!(
            "{test}: SKIPPED: {PLUGIN} is not installed (Debian package nagios-check-xmppng; \
             tests/setup.sh installs it)"
        );
    }
    present
}

/// Run check_xmppng against `d`'s s2s listener as server name a.test, with `args`; bounded by
/// [`WAIT`] (the plugin itself sets no timeout): killed by PID past it.
fn check_xmppng(d: &Daemon, args: &[&str]) -> Output {
    let addr = d.s2s();
    let child = Command::new(PYTHON)
        .arg(PLUGIN)
        .args(["-H", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["--servername", "a.test", "--s2s"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start check_xmppng");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(out) => out.expect("check_xmppng ran"),
        Err(_) => {
            // SAFETY: kill(2) on the PID of the child this test started and has not reaped
            // (its waiting thread still holds it).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!(
                "check_xmppng {args:?} did not finish within {WAIT:?}\n{}",
                d.log_text()
            );
        }
    }
}

/// The plugin said OK (exit status 0, `XMPP OK` on its first line).
fn assert_ok(out: &Output, args: &[&str], d: &Daemon) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.code() == Some(0) && stdout.starts_with("XMPP OK"),
        "check_xmppng --s2s {args:?}: {:?}\nstdout: {stdout}\nstderr: {}\ndaemon:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
}

/// A directory for a self-signed certificate of a.test, removed when dropped.
struct Cert(PathBuf);

impl Cert {
    fn new(name: &str) -> (Cert, String) {
        let dir =
            std::env::temp_dir().join(format!("dialbackd-plugins-{}-{name}", std::process::id()));
        let (c, k) = dialbackd::tls::gen_cert(&Domain::parse("a.test").unwrap(), &dir).unwrap();
        let tls = format!(
            "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\n",
            c.display(),
            k.display()
        );
        (Cert(dir), tls)
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// a.test with `extra` configuration. The daemon never resolves anything in these tests; the
/// nameserver is only a required setting.
fn a_test(extra: &str) -> Daemon {
    let unused_dns = "127.0.0.1:53".parse().unwrap();
    Daemon::start("a", next_ip(), &config(&["a.test"], &[], unused_dns, extra))
}

/// `check_xmppng --s2s` on a daemon without TLS: header (without `from` or `xmlns:db`, STR-02)
/// answered with features, then a clean close (STR-05).
#[test]
fn check_xmppng_s2s_is_ok() {
    if !plugin_present("check_xmppng_s2s_is_ok") {
        return;
    }
    let d = a_test("");
    assert_ok(&check_xmppng(&d, &[]), &[], &d);
    d.assert_alive();
}

/// `check_xmppng --s2s --starttls --no-check-certificates` on a daemon that requires TLS:
/// STARTTLS (TLS-01), the restarted stream's features, and a close that ends with TLS
/// close_notify (RFC 8446 §6.1; without it the plugin said UNKNOWN, UNEXPECTED_EOF_WHILE_READING).
/// Without `--starttls` the plugin follows our `<required/>` and says OK too.
#[test]
fn check_xmppng_s2s_starttls_is_ok() {
    if !plugin_present("check_xmppng_s2s_starttls_is_ok") {
        return;
    }
    let (_cert, tls) = Cert::new("starttls");
    let d = a_test(&tls);
    for args in [
        &["--starttls", "--no-check-certificates"][..],
        &["--no-check-certificates"][..],
    ] {
        assert_ok(&check_xmppng(&d, args), args, &d);
    }
    d.assert_alive();
}
