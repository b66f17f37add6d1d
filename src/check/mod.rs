//! `dialbackd check DOMAIN [--from LOCAL]`: can this configuration federate with DOMAIN, and
//! if not, where does it break? One report, ✔/⚠/✘ per item, a hint under each problem.
//!
//! The steps, in order, each done as the daemon does it and bounded by the configuration's
//! timeouts (anchors: `prosodyctl check dns|certs|connectivity`, which has no dialback step):
//! 1. **DNS** (`dns.rs`): a static route from `[routes]`, else the `_xmpp-server._tcp` and
//!    `_xmpps-server._tcp` SRV records (RFC 6120 §3.2, XEP-0368) and the order the targets will
//!    be tried in, else DOMAIN on port 5269; the A/AAAA addresses of each target, and which of
//!    them the private-network guard refuses (`[dns] allow_networks`). `[dns] nameservers`
//!    are used as the daemon uses them.
//! 2. **TCP connect** (`connect.rs`) to each address, each within `timeouts.connect`.
//! 3. **TLS** on the first address that accepted (`session.rs`, `outcome.rs`): the daemon's own
//!    Initiating Server core opens the stream; STARTTLS when offered (or direct TLS on an
//!    `_xmpps-server` target), with this configuration's client TLS (or one without a client
//!    certificate when it has none); the certificate's names, chain (webpki, against the system
//!    roots or `[tls] ca_file`), expiry (a warning under 14 days), validity for DOMAIN, and what
//!    `[tls] verify` / pins make of it (`cert.rs`).
//! 4. **Dialback**: the real `<db:result/>` from `--from` (default: the first hosted domain)
//!    with the XEP-0185 key of `dialback_secret`, and the peer's verdict. The peer checks the
//!    key with `--from`'s Authoritative Server, so `valid` needs a dialbackd for `--from`
//!    running with the same secret and reachable from DOMAIN.
//!
//! A step that cannot start because the one before failed is left out. The exit status
//! ([`Report::exit_code`]): [`EXIT_OK`] when nothing failed (warnings allowed), [`EXIT_FAILED`]
//! when something did, [`EXIT_USAGE`] when the check could not run (arguments, configuration).

mod cert;
pub(crate) use cert::civil_from_days;
mod connect;
mod dns;
mod outcome;
pub mod report;
mod session;
mod wire;

pub use report::{Item, Report, Section, Status, EXIT_FAILED, EXIT_OK, EXIT_USAGE};

use crate::config::Config;
use crate::dns::Resolver;
use crate::domain::Domain;
use crate::tls::{client_config_without_cert, load_roots, TlsContext};
use cert::Roots;
use outcome::Context;
use session::{ClientTls, Dialer};
use std::fmt;
use std::sync::Arc;

/// What to check.
#[derive(Clone, Debug)]
pub struct Options {
    /// The remote domain.
    pub domain: Domain,
    /// The hosted domain to do dialback from; `None`: the configuration's first domain.
    pub from: Option<Domain>,
}

/// Why the check could not run (exit status [`EXIT_USAGE`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetupError(pub String);

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetupError {}

/// Run every step against `opts.domain` under `config`.
///
/// # Errors
/// `--from` is not a domain of the configuration, no nameserver is known, or the configured
/// certificates cannot be loaded.
pub fn run(config: Arc<Config>, opts: &Options) -> Result<Report, SetupError> {
    let from = pick_from(&config, opts.from.as_ref())?;
    let domain = &opts.domain;
    let resolver = resolver(&config)?;
    let tls = client_tls(&config, &from)?;
    let roots = roots(&config);
    let mut report = Report::new(format!(
        "dialbackd check {domain} (from {from}, configuration {})",
        config.path.display()
    ));
    let (dns, candidates) = dns::dns_section(&config, &resolver, domain);
    report.sections.push(dns);
    if candidates.is_empty() {
        return Ok(report);
    }
    let (connect, first) = connect::connect_section(&candidates, config.timeouts.connect);
    report.sections.push(connect);
    let Some(cand) = first.and_then(|i| candidates.get(i)) else {
        return Ok(report);
    };
    let dialer = Dialer {
        config: &config,
        tls: &tls,
        roots: &roots,
        from: &from,
        domain,
    };
    let observed = dialer.run(cand);
    let cx = Context {
        config: &config,
        domain,
        from: &from,
        roots: &roots,
        now: unix_now(),
    };
    report
        .sections
        .push(outcome::tls_section(&cx, cand, &observed));
    report
        .sections
        .push(outcome::dialback_section(&cx, &observed));
    Ok(report)
}

/// `--from`, or the first hosted domain; it must be one of the configuration's domains.
fn pick_from(config: &Config, from: Option<&Domain>) -> Result<Domain, SetupError> {
    let Some(from) = from.or(config.domains.first()) else {
        return Err(SetupError(
            "the configuration hosts no domain: give --from".into(),
        ));
    };
    if !config.is_local(from) {
        let ours: Vec<_> = config
            .local_domains()
            .iter()
            .map(|d| d.to_string())
            .collect();
        return Err(SetupError(format!(
            "--from {from}: not a domain of {} (it has {})",
            config.path.display(),
            ours.join(", ")
        )));
    }
    Ok(from.clone())
}

/// The nameservers the daemon would use: `[dns] nameservers`, else /etc/resolv.conf.
fn resolver(config: &Config) -> Result<Resolver, SetupError> {
    if !config.nameservers.is_empty() {
        return Ok(Resolver::new(
            config.nameservers.clone(),
            config.timeouts.dns,
        ));
    }
    Resolver::from_system(config.timeouts.dns).map_err(|e| {
        SetupError(format!(
            "/etc/resolv.conf: {e}; set [dns] nameservers in {}",
            config.path.display()
        ))
    })
}

/// The configuration's client TLS for `from` (its certificate presented), or one without a
/// client certificate when the configuration has no TLS.
fn client_tls(config: &Config, from: &Domain) -> Result<ClientTls, SetupError> {
    let setup = |e: &dyn fmt::Display| SetupError(format!("{}: {e}", config.path.display()));
    if !config.tls.enabled {
        return Ok(ClientTls {
            starttls: client_config_without_cert(false).map_err(|e| setup(&e))?,
            direct: client_config_without_cert(true).map_err(|e| setup(&e))?,
        });
    }
    let ctx = TlsContext::from_config(config).map_err(|e| setup(&e))?;
    let pick = |direct| {
        ctx.client(from, direct)
            .ok_or_else(|| setup(&format!("no TLS client configuration for {from}")))
    };
    Ok(ClientTls {
        starttls: pick(false)?,
        direct: pick(true)?,
    })
}

/// `[tls] ca_file`, else the system's CA bundle.
fn roots(config: &Config) -> Roots {
    let source = match &config.tls.ca_file {
        Some(p) => format!("ca_file {}", p.display()),
        None => "the system CA bundle".into(),
    };
    Roots {
        store: load_roots(config.tls.ca_file.as_deref()).map_err(|e| e.to_string()),
        source,
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
