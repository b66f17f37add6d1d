//! The status listener of real daemons on loopback: OpenMetrics at `/metrics` after a dialback
//! and stanzas over STARTTLS, `dialbackd status` printing the live streams, the HTTP answers
//! over the wire, and a busy listener that never holds up the accept loop.

mod common;

use common::dns_server::TestDns;
use common::*;
use dialbackd::domain::Domain;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A directory of self-signed certificates, removed when dropped.
struct Certs(PathBuf);

impl Certs {
    fn new() -> Certs {
        let dir = std::env::temp_dir().join(format!("dialbackd-status-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Certs(dir)
    }

    /// `[tls]` presenting a self-signed certificate for `domain`.
    fn tls(&self, domain: &str) -> String {
        let (c, k) = dialbackd::tls::gen_cert(&Domain::parse(domain).unwrap(), &self.0).unwrap();
        format!(
            "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\n",
            c.display(),
            k.display()
        )
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A daemon for `domain` with component `(component, secret)`, TLS when `tls` is given, and
/// the status listener on its own address; returns it and the listener's address.
fn daemon(
    name: &str,
    (domain, component, secret): (&str, &str, &str),
    dns: SocketAddr,
    tls: &str,
) -> (Daemon, SocketAddr) {
    let ip = next_ip();
    let status = SocketAddr::from((ip, free_port(ip)));
    let extra = format!("{tls}[status]\nlisten = \"{status}\"\n");
    let d = Daemon::start(
        name,
        ip,
        &config(&[domain], &[(component, secret)], dns, &extra),
    );
    (d, status)
}

/// A raw HTTP exchange: the response's head and body.
fn http(addr: SocketAddr, request: &str) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).expect("connect to the status listener");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("a whole response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_string(), body.to_string())
}

fn get(addr: SocketAddr, path: &str) -> (String, String) {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

/// The body of `GET /metrics`, its head checked.
fn metrics(addr: SocketAddr) -> String {
    let (head, body) = get(addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(&format!("\r\nContent-Type: {OPENMETRICS}")),
        "{head}"
    );
    assert!(head.contains("\r\nConnection: close"), "{head}");
    assert!(
        head.contains(&format!("\r\nContent-Length: {}", body.len())),
        "{head}"
    );
    assert!(body.ends_with("\n# EOF\n"), "{body}");
    body
}

/// The value of the sample `series` (name and labels exactly as rendered).
fn sample(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series}\n{body}"))
}

/// Wait (bounded, re-checked as `d` logs: each scrape logs a line) until `/metrics` satisfies
/// `pred`; returns the body that did.
fn wait_metrics(d: &Daemon, addr: SocketAddr, what: &str, pred: impl Fn(&str) -> bool) -> String {
    d.wait_until(what, |_| pred(&metrics(addr)));
    metrics(addr)
}

/// `dialbackd status --config FILE`.
fn status_command(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dialbackd"))
        .arg("status")
        .arg("--config")
        .arg(config)
        .output()
        .expect("run dialbackd status")
}

/// a.test (component echo.a.test) and b.test (component b.test), both with TLS and the status
/// listener, published in a test DNS server.
struct Fed {
    _certs: Certs,
    dns: TestDns,
    a: Daemon,
    sa: SocketAddr,
    b: Daemon,
    sb: SocketAddr,
}

fn federation() -> Fed {
    let certs = Certs::new();
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let a_tls = certs.tls("a.test");
    let (a, sa) = daemon("a", ("a.test", "echo.a.test", "ka"), dns.addr(), &a_tls);
    let b_tls = certs.tls("b.test");
    let (b, sb) = daemon("b", ("b.test", "b.test", "kb"), dns.addr(), &b_tls);
    for (name, d) in [("a.test", &a), ("echo.a.test", &a), ("b.test", &b)] {
        publish(&dns, name, d.s2s());
    }
    Fed {
        _certs: certs,
        dns,
        a,
        sa,
        b,
        sb,
    }
}

const DB: &str = "dialbackd_dialback_verifications_total";

/// b, the Receiving Server: its inbound stream is open and its dialback said valid.
fn assert_receiving_side(mb: &str) {
    let v = |series: &str| sample(mb, series);
    assert_eq!(
        v("dialbackd_streams{direction=\"s2s_in\",state=\"open\"}"),
        1
    );
    assert_eq!(
        v("dialbackd_streams{direction=\"component\",state=\"open\"}"),
        1
    );
    assert_eq!(
        v(&format!("{DB}{{role=\"receiving\",outcome=\"valid\"}}")),
        1
    );
    assert_eq!(
        v(&format!("{DB}{{role=\"receiving\",outcome=\"invalid\"}}")),
        0
    );
    assert!(v("dialbackd_stanzas_routed_total{destination=\"local\"}") >= 1);
    assert!(v("dialbackd_tls_handshakes_total{side=\"server\"}") >= 1);
    let client = v("dialbackd_tls_handshakes_total{side=\"client\"}");
    assert!(client >= 1, "the verify connection");
    let lookups = v("dialbackd_dns_lookups_total");
    assert!(lookups >= 1, "b looked a.test up to verify it");
    assert!(v("dialbackd_dns_queries_total") >= 1);
    assert_eq!(v("dialbackd_tls_failures_total{side=\"server\"}"), 0);
}

/// a, the Initiating and Authoritative Server, after one stanza crossed and one bounced.
fn assert_initiating_side(ma: &str) {
    let v = |series: &str| sample(ma, series);
    assert_eq!(
        v(&format!("{DB}{{role=\"initiating\",outcome=\"valid\"}}")),
        1
    );
    assert_eq!(
        v(&format!("{DB}{{role=\"authoritative\",outcome=\"valid\"}}")),
        1
    );
    assert!(v("dialbackd_stanzas_routed_total{destination=\"remote\"}") >= 2);
    let bounced = "dialbackd_stanzas_bounced_total";
    assert!(
        v(&format!(
            "{bounced}{{condition=\"remote-server-not-found\"}}"
        )) >= 1
    );
    assert_eq!(
        v(&format!("{bounced}{{condition=\"remote-server-timeout\"}}")),
        0
    );
    assert!(v("dialbackd_tls_handshakes_total{side=\"client\"}") >= 1);
    assert_eq!(v("dialbackd_inbox_stanzas"), 0, "nothing waits at rest");
    assert_eq!(v("dialbackd_queued_bytes"), 0);
}

/// An oversized element before authentication hits an XML budget, counted once.
fn assert_xml_budget_counted(d: &Daemon, status: SocketAddr) {
    let series = "dialbackd_caps_hit_total{cap=\"xml_budget\"}";
    let before = sample(&metrics(status), series);
    let mut c = XmlConn::connect(d.s2s());
    c.send(&s2s_header("c.test", "b.test", None));
    c.send(&format!("<message>{}</message>", "x".repeat(20_000)));
    assert_eq!(c.stream_error(), "policy-violation");
    assert_eq!(sample(&metrics(status), series), before + 1);
}

/// `dialbackd status` of `d`: its table, which has a row containing each of `want`.
fn status_table(d: &Daemon, want: &[&[&str]]) -> String {
    let out = status_command(&d.dir.join("dialbackd.toml"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}{err}");
    assert!(text.starts_with("ID "), "{text}");
    for row in want {
        assert!(
            text.lines().any(|l| row.iter().all(|w| l.contains(w))),
            "{}: no row with {row:?}\n{text}",
            d.name
        );
    }
    text
}

#[test]
fn metrics_and_status_follow_a_dialback_and_stanzas_over_starttls() {
    let f = federation();
    let mut ca = ComponentClient::connect(f.a.component_addr(), "echo.a.test", "ka");
    let cb = ComponentClient::connect(f.b.component_addr(), "b.test", "kb");
    ca.send("<message from='bot@echo.a.test' to='u@b.test' id='m1'><body>hi</body></message>");
    let m = cb.recv(WAIT).expect("the message crossed");
    assert_eq!(m.attr("id"), Some("m1"));
    // A stanza for a domain that does not exist bounces.
    ca.send("<message from='bot@echo.a.test' to='x@nosuch.test' id='m2'/>");
    let r = ca.recv(WAIT).expect("the bounce");
    assert_eq!((r.attr("id"), r.attr("type")), (Some("m2"), Some("error")));

    assert_receiving_side(&metrics(f.sb));
    let ma = wait_metrics(&f.a, f.sa, "a's outbound stream is open", |m| {
        sample(m, "dialbackd_streams{direction=\"s2s_out\",state=\"open\"}") == 1
    });
    assert_initiating_side(&ma);
    assert_xml_budget_counted(&f.b, f.sb);

    // `dialbackd status` lists the streams, as a table.
    let pair = "echo.a.test → b.test";
    let tls = "yes (TLSv1.3)";
    let text = status_table(
        &f.a,
        &[
            &["s2s_out", "open", tls, pair],
            &["component", "open", "no"],
        ],
    );
    // A component's row names its domain alone.
    let row = text.lines().find(|l| l.contains("component")).unwrap();
    assert!(
        row.ends_with("  echo.a.test") && !row.contains('→'),
        "{text}"
    );
    let text = status_table(&f.b, &[&["s2s_in", "open", tls, pair]]);
    // The id and peer columns are the stream's, as its log lines name it.
    let row = text.lines().find(|l| l.contains("s2s_in")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    let (id, peer) = (cols[0], cols[3]);
    assert!(peer.parse::<SocketAddr>().is_ok(), "{row}");
    assert!(
        f.b.log_text().contains(&format!("s2s-in {peer} #{id}")),
        "{row}\n{}",
        f.b.log_text()
    );
    drop(f.dns);
}

#[test]
fn the_listener_answers_http_strictly_over_the_wire() {
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let (_d, addr) = daemon("http", ("a.test", "echo.a.test", "k"), dns.addr(), "");
    let (head, body) = get(addr, "/nope");
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    assert!(body.contains("/metrics"), "{body}");
    let (head, _) = http(
        addr,
        &format!("POST /metrics HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
    assert!(head.contains("\r\nAllow: GET, HEAD"), "{head}");
    let (head, body) = http(
        addr,
        &format!("HEAD /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    );
    assert!(
        head.starts_with("HTTP/1.1 200 ") && body.is_empty(),
        "{head}"
    );
    let (head, _) = http(addr, "GET /metrics HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 400 "), "no Host: {head}");
    let (head, _) = http(addr, "GET /metrics HTTP/3.0\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 505 "), "{head}");
    let (head, _) = http(
        addr,
        &format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000)),
    );
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    let (head, body) = get(addr, "/status");
    assert!(
        head.contains("Content-Type: text/tab-separated-values"),
        "{head}"
    );
    assert!(body.starts_with("# dialbackd status 1\n"), "{body}");
}

#[test]
fn a_busy_status_listener_answers_503_and_never_holds_up_the_accept_loop() {
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let (d, addr) = daemon("busy", ("a.test", "echo.a.test", "k"), dns.addr(), "");
    // Four clients that send nothing hold every status thread (until their read bound).
    let holders: Vec<TcpStream> = (0..dialbackd::status::MAX_ACTIVE)
        .map(|_| TcpStream::connect_timeout(&addr, WAIT).unwrap())
        .collect();
    let (head, _) = get(addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    // Meanwhile server-to-server connections are accepted and answered as ever.
    let mut c = XmlConn::connect(d.s2s());
    c.send(&s2s_header("c.test", "a.test", None));
    let h = c.header();
    assert!(h.id.is_some(), "{h:?}");
    drop(holders);
}

#[test]
fn the_status_command_says_how_to_enable_the_listener() {
    let dir = std::env::temp_dir().join(format!("dialbackd-status-cmd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let off = dir.join("off.toml");
    std::fs::write(&off, "domains = [\"a.test\"]\n").unwrap();
    let ip = next_ip();
    let nobody = dir.join("nobody.toml");
    std::fs::write(
        &nobody,
        format!(
            "domains = [\"a.test\"]\n[status]\nlisten = \"{ip}:{}\"\n",
            free_port(ip)
        ),
    )
    .unwrap();
    let out_off = status_command(&off);
    let out_nobody = status_command(&nobody);
    let out_missing = status_command(&dir.join("missing.toml"));
    std::fs::remove_dir_all(&dir).unwrap();

    let err = String::from_utf8_lossy(&out_off.stderr);
    assert_eq!(out_off.status.code(), Some(1), "{err}");
    assert!(
        err.contains("status listener is off") && err.contains("enable [status]"),
        "{err}"
    );
    let err = String::from_utf8_lossy(&out_nobody.stderr);
    assert_eq!(out_nobody.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot reach the status listener at {ip}:"))
            && err.contains("[status]"),
        "{err}"
    );
    let err = String::from_utf8_lossy(&out_missing.stderr);
    assert_eq!(out_missing.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot read the file"), "{err}");
}
