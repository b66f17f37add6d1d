//! `dialbackd check DOMAIN`: the report and the exit status against real daemons on loopback,
//! with the test DNS server. The checking process uses the configuration of the running a.test
//! daemon (same domain, same dialback secret), so the peer's callback to a.test's
//! Authoritative Server reaches a daemon that knows the key (XEP-0220 §2.1, DB-10).

mod common;

use common::dns_server::TestDns;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Bound on one check run: its own waits are bounded by the test configs' timeouts
/// (dns 2 s, connect 3 s, negotiation and dialback 15 s).
const CHECK_BOUND: Duration = Duration::from_secs(90);

/// What one `dialbackd check` run gave.
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn show(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Run `dialbackd ARGS`, bounded by [`CHECK_BOUND`] (killed by PID past it).
fn dialbackd(args: &[&str]) -> Outcome {
    let child = Command::new(env!("CARGO_BIN_EXE_dialbackd"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dialbackd check");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(CHECK_BOUND) {
        Ok(out) => {
            let out = out.expect("dialbackd check output");
            Outcome {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }
        Err(_) => {
            // SAFETY: kill(2) on the PID of the child this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("dialbackd {args:?} did not finish within {CHECK_BOUND:?}");
        }
    }
}

fn check(domain: &str, config: &Path) -> Outcome {
    dialbackd(&["check", domain, "--config", &config.display().to_string()])
}

/// The report lines with this mark.
fn lines<'a>(o: &'a Outcome, mark: &str) -> Vec<&'a str> {
    o.stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(mark))
        .collect()
}

/// A directory for this test's files, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("dialbackd-check-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    /// A config file with `text` (`{ip}` as 127.0.0.1: the check never listens).
    fn config(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text.replace("{ip}", "127.0.0.1")).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA in `dir` (ca.pem) and, for each domain, a certificate it signed and its key;
/// returns `[tls]` sections (certificate, key, ca_file) by domain, in order.
fn ca_signed(dir: &Path, domains: &[&str]) -> Vec<String> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "dialbackd check test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    domains
        .iter()
        .map(|d| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(vec![d.to_string()]).unwrap();
            p.distinguished_name.push(DnType::CommonName, *d);
            let cert = p.signed_by(&key, &ca).unwrap();
            let (c, k) = (dir.join(format!("{d}.crt")), dir.join(format!("{d}.key")));
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            format!(
                "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\nca_file = \"{}\"\n",
                c.display(),
                k.display(),
                ca_path.display()
            )
        })
        .collect()
}

/// a.test (dialback secret "check-secret") and b.test as real daemons with certificates from
/// one test CA (which both trust as `ca_file`), both published in DNS; with `direct`, b.test
/// listens for direct TLS too and is published by an `_xmpps-server` record only.
fn served(dir: &Dir, direct: bool) -> (TestDns, Daemon, Daemon) {
    let tls = ca_signed(&dir.0, &["a.test", "b.test"]);
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let a = Daemon::start(
        "a",
        next_ip(),
        &format!(
            "dialback_secret = \"check-secret\"\n{}",
            config(&["a.test"], &[], dns.addr(), &tls[0])
        ),
    );
    let mut b_cfg = config(&["b.test"], &[], dns.addr(), &tls[1]);
    if direct {
        b_cfg = b_cfg.replace(
            "s2s = [\"{ip}:0\"]",
            "s2s = [\"{ip}:0\"]\ndirect_tls = [\"{ip}:0\"]",
        );
    }
    let b = Daemon::start("b", next_ip(), &b_cfg);
    publish(&dns, "a.test", a.s2s());
    if direct {
        let port = b.direct_tls().port();
        dns.add_srv("_xmpps-server._tcp.b.test", 5, 0, port, "tls.b.test");
        dns.add_a("tls.b.test", b.ip);
    } else {
        publish(&dns, "b.test", b.s2s());
    }
    (dns, a, b)
}

/// XEP-0220 §2.1 end to end: b.test, served by a dialbackd with a CA-signed certificate,
/// passes every step, and the dialback round trip is real: b.test verified a.test's key with
/// a.test's running daemon.
#[test]
fn a_served_domain_passes_every_step_with_dialback_valid() {
    let dir = Dir::new("ok");
    let (_dns, a, mut b) = served(&dir, false);
    let o = check("b.test", &a.dir.join("dialbackd.toml"));
    assert_eq!(o.code, 0, "{}", o.show());
    assert!(lines(&o, "✘").is_empty(), "{}", o.show());
    assert!(lines(&o, "⚠").is_empty(), "{}", o.show());
    let wanted = [
        "dialbackd check b.test (from a.test,",
        "✔ _xmpp-server._tcp.b.test: 1 record",
        &format!("✔ host.b.test:{}: {}", b.s2s().port(), b.s2s().ip()),
        &format!("✔ {} (host.b.test): connected", b.s2s()),
        "✔ STARTTLS offered",
        "✔ TLS handshake: TLSv1.3",
        "✔ certificate names: b.test",
        "✔ chain: valid (1 certificate, trusted by ca_file",
        "✔ valid for b.test",
        "✔ b.test answered valid",
        "✔ all checks passed",
    ];
    for w in wanted {
        assert!(o.stdout.contains(w), "missing {w:?}\n{}", o.show());
    }
    b.wait_log("a.test→b.test verified by dialback");
}

/// XEP-0368: an `_xmpps-server` target is checked over TLS from the first byte (no STARTTLS,
/// DTLS-02), and dialback runs inside it.
#[test]
fn a_direct_tls_target_is_checked_over_direct_tls() {
    let dir = Dir::new("direct");
    let (_dns, a, mut b) = served(&dir, true);
    let o = check("b.test", &a.dir.join("dialbackd.toml"));
    assert_eq!(o.code, 0, "{}", o.show());
    let wanted = [
        format!("1. tls.b.test:{} (direct TLS)", b.direct_tls().port()),
        format!("✔ {} (tls.b.test, direct TLS): connected", b.direct_tls()),
        "✔ direct TLS (XEP-0368): TLSv1.3".to_string(),
        "✔ valid for b.test".to_string(),
        "✔ b.test answered valid".to_string(),
    ];
    for w in &wanted {
        assert!(o.stdout.contains(w.as_str()), "missing {w:?}\n{}", o.show());
    }
    assert!(!o.stdout.contains("STARTTLS"), "{}", o.show());
    b.wait_log("a.test→b.test verified by dialback");
}

/// A domain with no server: NXDOMAIN, or records pointing at an address where nothing
/// listens. Each fails with a hint and exit status 1; later steps are not run.
#[test]
fn a_domain_with_no_server_fails_with_a_hint() {
    let dir = Dir::new("none");
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let cfg = dir.config(
        "check.toml",
        &format!(
            "dialback_secret = \"s\"\n{}",
            config(&["a.test"], &[], dns.addr(), "")
        ),
    );

    let o = check("nosuch.test", &cfg);
    assert_eq!(o.code, 1, "{}", o.show());
    assert!(
        o.stdout
            .contains("✔ _xmpp-server._tcp.nosuch.test: no records"),
        "{}",
        o.show()
    );
    assert!(
        o.stdout.contains("✘ nosuch.test:5269: no A/AAAA records"),
        "{}",
        o.show()
    );
    assert!(
        o.stdout
            .contains("hint: nosuch.test has neither _xmpp-server._tcp SRV records nor an address"),
        "{}",
        o.show()
    );
    assert!(!o.stdout.contains("TCP connect"), "{}", o.show());
    assert!(o.stdout.contains("✘ 1 check failed"), "{}", o.show());

    // Published, but nothing listens on the port.
    let closed = TcpListener::bind((next_ip(), 0))
        .unwrap()
        .local_addr()
        .unwrap();
    publish(&dns, "dead.test", closed);
    let o = check("dead.test", &cfg);
    assert_eq!(o.code, 1, "{}", o.show());
    let refused = format!("✘ {closed} (host.dead.test): connection refused");
    assert!(o.stdout.contains(&refused), "{}", o.show());
    assert!(
        o.stdout.contains("hint: nothing listens there"),
        "{}",
        o.show()
    );
    assert!(!o.stdout.contains("Dialback"), "{}", o.show());
}

/// DB-08 seen from the operator's side: a key made with another secret than a.test's
/// daemon's gets `invalid` from the peer (which asked a.test's daemon), and the check fails.
#[test]
fn a_wrong_secret_gets_dialback_invalid() {
    let dir = Dir::new("wrong");
    let mut ab = AandB::start("the-right-secret", |dns, _| {
        config(&["b.test"], &[], dns, "")
    });
    let cfg = dir.config(
        "check.toml",
        &format!(
            "dialback_secret = \"a-wrong-secret\"\n{}",
            config(&["a.test"], &[], ab.dns.addr(), "")
        ),
    );
    let o = check("b.test", &cfg);
    assert_eq!(o.code, 1, "{}", o.show());
    assert!(
        o.stdout.contains("✘ b.test answered invalid"),
        "{}",
        o.show()
    );
    assert!(
        o.stdout.contains("this configuration's dialback_secret"),
        "the hint names the secret\n{}",
        o.show()
    );
    // b.test has no TLS: a warning, not the failure.
    assert!(
        o.stdout
            .contains("⚠ STARTTLS not offered: dialback runs in plaintext"),
        "{}",
        o.show()
    );
    assert_eq!(
        lines(&o, "✘").len(),
        2,
        "the dialback line and the summary\n{}",
        o.show()
    );
    ab.a.wait_log("is not ours: invalid");
}

/// The private-network guard refuses the loopback address DNS gives (unless allowed), and a
/// static route is used instead of DNS and never judged, as in the daemon's dialler.
#[test]
fn the_guard_and_static_routes_are_honoured() {
    let dir = Dir::new("guard");
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let b = Daemon::start("b", next_ip(), &config(&["b.test"], &[], dns.addr(), ""));
    publish(&dns, "b.test", b.s2s());
    let (ip, port) = (b.s2s().ip(), b.s2s().port());
    let ours = |routes: &str| {
        format!(
            "dialback_secret = \"s\"\n{}",
            config_allowing(&["a.test"], &[], dns.addr(), &[], routes)
        )
    };

    let o = check("b.test", &dir.config("guarded.toml", &ours("")));
    assert_eq!(o.code, 1, "{}", o.show());
    assert!(
        o.stdout.contains(&format!(
            "✘ host.b.test:{port}: {ip}\n      {ip}: not dialled, loopback"
        )),
        "{}",
        o.show()
    );
    assert!(
        o.stdout.contains("allow_networks"),
        "the hint names the key\n{}",
        o.show()
    );
    assert!(!o.stdout.contains("TCP connect"), "{}", o.show());

    let route = format!("[routes]\n\"b.test\" = \"{}\"\n", b.s2s());
    let o = check("b.test", &dir.config("routed.toml", &ours(&route)));
    let wanted = [
        format!("✔ static route in [routes]: {ip}:{port} (DNS SRV records are not consulted)"),
        format!("✔ {ip}:{port}: {ip}"),
        format!("✔ {} ({ip}): connected", b.s2s()),
        // a.test is nowhere: b.test cannot reach its Authoritative Server (XEP-0220 §2.5).
        "✘ b.test answered with an error: remote-connection-failed".to_string(),
    ];
    for w in &wanted {
        assert!(o.stdout.contains(w.as_str()), "missing {w:?}\n{}", o.show());
    }
    assert!(!o.stdout.contains("_xmpp-server"), "{}", o.show());
    assert_eq!(o.code, 1, "{}", o.show());
}

/// Exit status 2 when the check cannot run: a --from that is not ours, a missing config, a
/// bad domain.
#[test]
fn bad_arguments_exit_two() {
    let dir = Dir::new("args");
    let dns: SocketAddr = (Ipv4Addr::LOCALHOST, 53).into();
    let cfg = dir.config("c.toml", &config(&["a.test"], &[], dns, ""));
    let cfg = cfg.display().to_string();
    let o = dialbackd(&["check", "b.test", "--from", "zzz.test", "--config", &cfg]);
    assert_eq!(o.code, 2, "{}", o.show());
    assert!(
        o.stderr.contains("--from zzz.test: not a domain of"),
        "{}",
        o.show()
    );
    assert!(o.stdout.is_empty(), "{}", o.show());
    let missing = dir.0.join("missing.toml").display().to_string();
    assert_eq!(
        dialbackd(&["check", "b.test", "--config", &missing]).code,
        2
    );
    assert_eq!(dialbackd(&["check", "b..test", "--config", &cfg]).code, 2);
    assert_eq!(dialbackd(&["check", "--config", &cfg]).code, 2);
}
