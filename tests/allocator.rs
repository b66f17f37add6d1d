//! The daemon runs with glibc's per-thread malloc cache off (it restarts itself once with
//! `GLIBC_TUNABLES=glibc.malloc.tcache_count=0`, keeping its PID), unless the operator's
//! `GLIBC_TUNABLES` already names `tcache_count`. Measured effect: BENCHMARKS.md.

mod common;

use common::dns_server::TestDns;
use common::{config, next_ip, Daemon};
use std::net::IpAddr;

/// The daemon's debug line naming the tunables in force.
fn tunables_line(d: &Daemon) -> String {
    d.log_text()
        .lines()
        .find(|l| l.contains("allocator: GLIBC_TUNABLES="))
        .unwrap_or_else(|| panic!("no allocator line:\n{}", d.log_text()))
        .to_string()
}

#[test]
fn the_per_thread_cache_is_off_in_the_same_process_unless_the_operator_chose() {
    let dns = TestDns::start(IpAddr::V4(next_ip()));
    let cfg = config(&["a.test"], &[], dns.addr(), "");
    // Daemon::start waits for "listening on" from the process it started (the same PID).
    let d = Daemon::start_env("tuned", next_ip(), &cfg, &[("GLIBC_TUNABLES", "")]);
    assert!(tunables_line(&d).ends_with("GLIBC_TUNABLES=glibc.malloc.tcache_count=0"));
    d.assert_alive();
    // Other tunables are kept, the cache setting added.
    let d2 = Daemon::start_env(
        "kept",
        next_ip(),
        &cfg,
        &[("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")],
    );
    assert!(tunables_line(&d2)
        .ends_with("GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0"));
    // The operator's own choice is left alone.
    let d3 = Daemon::start_env(
        "chosen",
        next_ip(),
        &cfg,
        &[("GLIBC_TUNABLES", "glibc.malloc.tcache_count=7")],
    );
    assert!(tunables_line(&d3).ends_with("GLIBC_TUNABLES=glibc.malloc.tcache_count=7"));
}
