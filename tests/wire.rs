//! What a misbehaving or hostile peer sees on the wire, and what an operator sees on the
//! command line. Each test cites the rule it proves.

mod common;

use common::dns_server::TestDns;
use common::*;
use dialbackd::xml::StreamEvent;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

fn daemon(extra: &str) -> (TestDns, Daemon) {
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let d = Daemon::start("d", next_ip(), &config(&["b.test"], &[], dns.addr(), extra));
    (dns, d)
}

/// Open a stream to `d` as a.test and read its header and features.
fn opened(d: &Daemon) -> XmlConn {
    open_s2s(d, "a.test", "b.test").0
}

#[test]
fn err01_garbage_instead_of_a_header_gets_a_header_then_not_well_formed() {
    let (_dns, d) = daemon("");
    let mut c = XmlConn::connect(d.s2s());
    c.send("<<<this is not xml>>>");
    c.our_header("b.test");
    assert_eq!(c.stream_error(), "not-well-formed");
}

#[test]
fn err03_header_for_a_domain_we_do_not_host_is_host_unknown() {
    let (_dns, d) = daemon("");
    let mut c = XmlConn::connect(d.s2s());
    c.send(&s2s_header("a.test", "nosuch.test", None));
    c.our_header("b.test");
    assert_eq!(c.stream_error(), "host-unknown");
}

#[test]
fn sec08_doctype_is_restricted_xml_without_expansion() {
    let (_dns, d) = daemon("");
    let mut c = XmlConn::connect(d.s2s());
    c.send("<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;'>]>");
    c.our_header("b.test");
    assert_eq!(c.stream_error(), "restricted-xml");
}

#[test]
fn xml01_comment_inside_a_stanza_is_restricted_xml() {
    let (_dns, d) = daemon("");
    let mut c = opened(&d);
    c.send("<message from='a@a.test' to='b@b.test'><!-- hi --></message>");
    assert_eq!(c.stream_error(), "restricted-xml");
}

#[test]
fn sec06_oversized_stanza_is_policy_violation_before_it_is_buffered() {
    let (_dns, d) = daemon("[limits]\nstanza_size = 10000\n");
    let mut c = opened(&d);
    c.send("<message from='a@a.test' to='b@b.test'><body>");
    let chunk = "x".repeat(4096);
    // 1 MB of body: the daemon must stop reading long before the end.
    for _ in 0..256 {
        if c.try_send(&chunk).is_err() {
            break;
        }
    }
    assert_eq!(c.stream_error(), "policy-violation");
}

#[test]
fn dos01_deeply_nested_stanza_is_policy_violation() {
    let (_dns, d) = daemon("");
    let mut c = opened(&d);
    c.send(&format!(
        "<message from='a@a.test' to='b@b.test'>{}",
        "<x>".repeat(100)
    ));
    assert_eq!(c.stream_error(), "policy-violation");
}

#[test]
fn negotiation_timeout_closes_an_unauthenticated_stream_with_connection_timeout() {
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let cfg =
        config(&["b.test"], &[], dns.addr(), "").replace("negotiation = 15", "negotiation = 1");
    let d = Daemon::start("d", next_ip(), &cfg);
    let c = opened(&d);
    assert_eq!(c.stream_error(), "connection-timeout");
    // Then the stream ends.
    c.assert_ends();
}

#[test]
fn sec11_connections_per_ip_are_capped() {
    let (_dns, d) = daemon("[limits]\nconnections_per_ip = 2\n");
    let _a = opened(&d);
    let _b = opened(&d);
    let c = XmlConn::connect(d.s2s());
    let _ = c.header();
    assert_eq!(c.stream_error(), "policy-violation");
    // Closing one frees a slot.
    drop(_a);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut c = XmlConn::connect(d.s2s());
        c.send(&s2s_header("a.test", "b.test", None));
        let _ = c.header();
        match c.next(WAIT) {
            Some(Ok(StreamEvent::Element(e))) if e.name == "features" => break,
            _ if std::time::Instant::now() < deadline => {
                let _ = c.next(Duration::from_millis(50));
            }
            other => panic!("no slot freed: {other:?}"),
        }
    }
}

#[test]
fn check_config_names_file_key_and_problem() {
    let dir = std::env::temp_dir().join(format!("dialbackd-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "domains = [\"a.test\"]\n[limits]\nstanza_size = 500\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dialbackd"))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("bad.toml") && msg.contains("limits.stanza_size") && msg.contains("10000"),
        "{msg}"
    );
    let good = Command::new(env!("CARGO_BIN_EXE_dialbackd"))
        .arg("--check-config")
        .arg("etc/dialbackd.toml")
        .output()
        .unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_certificate_is_a_clear_start_up_error() {
    let dir = std::env::temp_dir().join(format!("dialbackd-nocert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    let ip = next_ip();
    std::fs::write(
        &path,
        format!("domains = [\"a.test\"]\n[listen]\ns2s = [\"{ip}:0\"]\n[dns]\nnameservers = [\"127.0.0.1\"]\nallow_networks = [\"127.0.0.0/8\"]\n[tls]\ncertificate = \"nope.crt\"\nkey = \"nope.key\"\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dialbackd"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("nope.crt"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gen_cert_writes_a_usable_pair_and_never_overwrites() {
    let dir = std::env::temp_dir().join(format!("dialbackd-gencert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_dialbackd"))
            .args(["gen-cert", "a.test", "--out"])
            .arg(&dir)
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let certs = dialbackd::tls::ServerCerts::load(
        &[(
            dialbackd::domain::Domain::parse("a.test").unwrap(),
            dir.join("a.test.crt"),
            dir.join("a.test.key"),
        )],
        None,
    );
    assert!(certs.is_ok(), "{certs:?}");
    let second = run();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("refusing to overwrite"));
    let _ = std::fs::remove_dir_all(&dir);
}
