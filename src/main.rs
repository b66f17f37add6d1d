//! The `dialbackd` command: parse arguments, load the configuration, start logging, serve.

use dialbackd::check;
use dialbackd::config::Config;
use dialbackd::dns::Resolver;
use dialbackd::domain::Domain;
use dialbackd::keys::{self, DialbackSecret};
use dialbackd::net::{self, Listeners};
use dialbackd::reload;
use dialbackd::router::Router;
use dialbackd::status;
use dialbackd::stream::Ctx;
use dialbackd::tls::TlsContext;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

const DEFAULT_CONFIG: &str = "/etc/dialbackd/dialbackd.toml";

const USAGE: &str = "\
usage: dialbackd [--config FILE]          run the daemon (default config: /etc/dialbackd/dialbackd.toml)
       dialbackd --check-config FILE      validate a configuration file and exit
       dialbackd gen-cert DOMAIN --out DIR
                                          make a self-signed certificate DIR/DOMAIN.crt + DIR/DOMAIN.key
       dialbackd check DOMAIN [--from LOCAL] [--config FILE]
                                          test federating with DOMAIN: DNS, TCP, TLS and certificate,
                                          a real dialback from LOCAL (default: the first domain);
                                          exit 0 all good, 1 a check failed, 2 bad arguments/config
       dialbackd status [--config FILE]   list the live streams (needs [status] in the config)
       dialbackd --version | --help
Logging: RUST_LOG=error|warn|info|debug|trace (default info; off for check).";

enum Command {
    Run(PathBuf),
    Check(PathBuf),
    GenCert(String, PathBuf),
    CheckDomain {
        domain: String,
        from: Option<String>,
        config: PathBuf,
    },
    Status(PathBuf),
    Version,
    Help,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    if args.first().map(String::as_str) == Some("gen-cert") {
        return match &args[1..] {
            [domain, flag, dir] if flag == "--out" => {
                Ok(Command::GenCert(domain.clone(), PathBuf::from(dir)))
            }
            _ => Err("usage: dialbackd gen-cert DOMAIN --out DIR".into()),
        };
    }
    if args.first().map(String::as_str) == Some("check") {
        return parse_check(&args[1..]);
    }
    let status = args.first().map(String::as_str) == Some("status");
    let mut it = args.iter().skip(usize::from(status));
    let mut config = None;
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a FILE argument"))
        };
        match a.as_str() {
            "-c" | "--config" => config = Some(PathBuf::from(value(a)?)),
            "--check-config" if !status => return Ok(Command::Check(PathBuf::from(value(a)?))),
            "-V" | "--version" => return Ok(Command::Version),
            "-h" | "--help" => return Ok(Command::Help),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let config = config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    Ok(if status {
        Command::Status(config)
    } else {
        Command::Run(config)
    })
}

/// `check DOMAIN [--from LOCAL] [--config FILE]`, options in any order.
fn parse_check(args: &[String]) -> Result<Command, String> {
    let (mut domain, mut from, mut config) = (None, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--from" | "-c" | "--config" => {
                let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
                if a == "--from" {
                    from = Some(v.clone());
                } else {
                    config = Some(PathBuf::from(v));
                }
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag:?}")),
            d if domain.is_none() => domain = Some(d.to_string()),
            extra => return Err(format!("unexpected argument {extra:?}")),
        }
    }
    Ok(Command::CheckDomain {
        domain: domain.ok_or("check needs a DOMAIN")?,
        from,
        config: config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG)),
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dialbackd: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match cmd {
        Command::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("dialbackd {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check(path) => match Config::load(&path) {
            Ok(c) => {
                println!(
                    "{}: OK ({} domains, {} components)",
                    path.display(),
                    c.domains.len(),
                    c.components.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dialbackd: {e}");
                ExitCode::from(2)
            }
        },
        Command::GenCert(domain, dir) => gen_cert(&domain, &dir),
        Command::CheckDomain {
            domain,
            from,
            config,
        } => check(&domain, from.as_deref(), &config),
        Command::Status(path) => status(&path),
        Command::Run(path) => run(&path),
    }
}

fn gen_cert(domain: &str, dir: &std::path::Path) -> ExitCode {
    let domain = match Domain::parse(domain) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("dialbackd: {e}");
            return ExitCode::from(2);
        }
    };
    match dialbackd::tls::gen_cert(&domain, dir) {
        Ok((cert, key)) => {
            println!(
                "certificate {}\nkey         {}",
                cert.display(),
                key.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dialbackd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `dialbackd check`: the report on stdout; logging off unless RUST_LOG asks for it.
fn check(domain: &str, from: Option<&str>, path: &std::path::Path) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
    let usage = |e: &dyn std::fmt::Display| {
        eprintln!("dialbackd: {e}");
        ExitCode::from(check::EXIT_USAGE)
    };
    let domain = match Domain::parse(domain) {
        Ok(d) => d,
        Err(e) => return usage(&e),
    };
    let from = match from.map(Domain::parse).transpose() {
        Ok(f) => f,
        Err(e) => return usage(&e),
    };
    let config = match Config::load(path) {
        Ok(c) => Arc::new(c),
        Err(e) => return usage(&e),
    };
    match check::run(config, &check::Options { domain, from }) {
        Ok(report) => {
            print!("{report}");
            ExitCode::from(report.exit_code())
        }
        Err(e) => usage(&e),
    }
}

/// `dialbackd status`: the live streams, from the status listener the configuration names.
fn status(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dialbackd: {e}");
            return ExitCode::from(2);
        }
    };
    let shown = status::client::address(&config)
        .and_then(|addr| status::client::fetch(addr, "/status"))
        .and_then(|text| status::client::table(&text));
    match shown {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dialbackd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// glibc's per-thread malloc cache ("tcache") keeps up to 7 freed chunks of each small size in
/// every thread, for that thread only. A stream thread frees what its handshake used (TLS above
/// all) and then sleeps for hours holding those chunks: measured with 1,000 idle streams, 5 KiB
/// per plain and 14 KiB per TLS stream (BENCHMARKS.md), for 7 % of one-way throughput. glibc
/// reads its tunables only at start, so the daemon starts itself again once, the same process
/// (`exec`, same PID), with `glibc.malloc.tcache_count=0` added to `GLIBC_TUNABLES` — unless
/// that variable already names `tcache_count` (the operator's choice: set
/// `GLIBC_TUNABLES=glibc.malloc.tcache_count=7` to keep glibc's default).
mod allocator {
    /// The tunable we add.
    const TUNABLE: &str = "glibc.malloc.tcache_count=0";

    /// Re-exec with the tunable when it is not set yet; returns only when no re-exec happens:
    /// the tunables in force when they name the cache, `None` when not glibc, or the error of
    /// the failed exec.
    pub fn tune() -> Result<Option<String>, String> {
        if !cfg!(all(target_os = "linux", target_env = "gnu")) {
            return Ok(None);
        }
        let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if current.contains("glibc.malloc.tcache_count") {
            return Ok(Some(current));
        }
        let tunables = if current.is_empty() {
            TUNABLE.to_string()
        } else {
            format!("{current}:{TUNABLE}")
        };
        use std::os::unix::process::CommandExt;
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_default();
        let e = std::process::Command::new("/proc/self/exe")
            .arg0(arg0)
            .args(args)
            .env("GLIBC_TUNABLES", tunables)
            .exec();
        Err(e.to_string())
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let tuned = allocator::tune();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match tuned {
        Ok(Some(tunables)) => log::debug!("allocator: GLIBC_TUNABLES={tunables}"),
        Ok(None) => {}
        Err(e) => {
            log::warn!("could not restart with glibc's per-thread cache off ({e}); running with it")
        }
    }
    let (router, listeners) = match start(path) {
        Ok(started) => started,
        Err(code) => return code,
    };
    match net::serve(&router, listeners) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Everything before serving: the configuration, the dialback secret, the resolver, the
/// listening sockets, TLS and the router. On failure the error has been printed already and
/// the exit code is returned: 2 for a bad configuration, 1 otherwise.
fn start(path: &std::path::Path) -> Result<(Arc<Router>, Listeners), ExitCode> {
    status::started();
    let config = match Config::load(path) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("dialbackd: {e}");
            return Err(ExitCode::from(2));
        }
    };
    let secret = dialback_secret(&config)?;
    keys::new_stream_id().map_err(fail)?;
    let resolver = resolver(&config)?;
    let listeners = Listeners::bind(&config).map_err(fail)?;
    let tls = load_tls(&config)?;
    let ctx = Arc::new(Ctx {
        config: config.clone(),
        secret,
        tls_available: tls.is_some(),
    });
    let router = Router::new(ctx, resolver, tls);
    log::info!(
        "dialbackd {} serving {}",
        env!("CARGO_PKG_VERSION"),
        config
            .local_domains()
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok((router, listeners))
}

/// Prints `e` as a start-up failure; the exit code to return.
fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("dialbackd: {e}");
    ExitCode::FAILURE
}

/// SEC-03: a configured secret, or 256 bits from the OS generator; fail loudly without one.
fn dialback_secret(config: &Config) -> Result<DialbackSecret, ExitCode> {
    match &config.dialback_secret {
        Some(s) => Ok(DialbackSecret::from_secret(s)),
        None => DialbackSecret::random().map_err(fail),
    }
}

/// The configured nameservers, or those of /etc/resolv.conf, with the configured answer cache
/// (one for the whole process: the router shares this resolver with every stream).
fn resolver(config: &Config) -> Result<Resolver, ExitCode> {
    Ok(reload::resolver(config)
        .map_err(fail)?
        .with_cache(config.dns_cache))
}

/// The certificates when TLS is enabled; otherwise `None`, with a warning.
fn load_tls(config: &Config) -> Result<Option<TlsContext>, ExitCode> {
    reload::load_tls(config).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn check_takes_a_domain_and_options_in_any_order() {
        let Ok(Command::CheckDomain {
            domain,
            from,
            config,
        }) = parse_args(&args("check b.test --config c.toml --from a.test"))
        else {
            panic!("not parsed")
        };
        assert_eq!(
            (domain.as_str(), from.as_deref(), config),
            ("b.test", Some("a.test"), PathBuf::from("c.toml"))
        );
        let Ok(Command::CheckDomain { from, config, .. }) =
            parse_args(&args("check --config c.toml b.test"))
        else {
            panic!("not parsed")
        };
        assert_eq!((from, config), (None, PathBuf::from("c.toml")));
        let Ok(Command::CheckDomain { config, .. }) = parse_args(&args("check b.test")) else {
            panic!("not parsed")
        };
        assert_eq!(config, PathBuf::from(DEFAULT_CONFIG));
    }

    #[test]
    fn check_refuses_what_it_does_not_know() {
        for bad in [
            "check",
            "check b.test c.test",
            "check b.test --from",
            "check b.test --verbose",
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad}");
        }
    }
}
