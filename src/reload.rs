//! Reloading the configuration on SIGHUP (`systemctl reload dialbackd`).
//!
//! The file the daemon started with is read and checked again exactly as at start-up
//! ([`Config::load`], the certificates and keys by [`TlsContext::from_config`], the
//! nameservers); when anything fails, the start-up error (file, key, problem) is logged at error
//! level and the configuration in force stays. Otherwise the new one is put in force at once
//! ([`Router::reconfigure`]), without dropping any stream:
//! - **new streams and new dials** use it: certificates and keys (always read again, so a
//!   certificate renewed under the same file name is picked up), the TLS policy
//!   (`require_encryption`, `verify`, pins, `[tls.peers]`), component secrets, hosted and
//!   component domains, static routes, `[dns] nameservers` and `allow_networks`, timeouts,
//!   the per-stream limits and `[s2s] bidi`;
//! - **the router's own decisions** follow at once: routing, the built-in `[handlers]`, the
//!   `[policy]` lists (stanzas from a newly refused domain are dropped even on streams
//!   verified before), the caps it keeps (`limits.queued_bytes`, `outbound_streams`,
//!   `connections`, `pending_verifications`, the component caps…);
//! - **established streams** keep the configuration they started with — their TLS session and
//!   certificate, policy, timeouts and per-stream limits — until they end;
//! - **what needs a restart** is named in the log (`needs a restart: …`) and the running value
//!   stays: the listening sockets (`[listen]`, `[status]`, and the component listener when the
//!   daemon started without components), the size of the DNS answer cache, and the dialback
//!   secret (keys already sent to peers, and keys they are checking now, were made with the one
//!   in force: changing it under them would fail those verifications).
//!
//! The log level is `RUST_LOG`, read once at start-up.

use crate::config::Config;
use crate::dns::Resolver;
use crate::router::{Live, Router};
use crate::stream::Ctx;
use crate::tls::TlsContext;
use std::path::Path;
use std::sync::Arc;

/// A configuration loaded and checked, ready to be put in force.
pub struct Prepared {
    /// What new streams will use.
    pub live: Live,
    /// The parts of the file that changed (`tls`, `limits`…), for the log.
    pub changed: Vec<&'static str>,
    /// Settings that changed but need a restart: the running value was kept.
    pub restart: Vec<&'static str>,
}

/// Reload the file `router`'s configuration was read from (SIGHUP). Logs the outcome; true
/// when the new configuration is in force.
pub fn reload(router: &Router) -> bool {
    let old = router.live();
    let path = old.ctx.config.path.clone();
    log::info!(
        "SIGHUP: reloading the configuration from {}",
        path.display()
    );
    let prepared = match prepare(&path, &old) {
        Ok(p) => p,
        Err(e) => {
            log::error!("configuration not reloaded (the one in force stays): {e}");
            return false;
        }
    };
    for what in &prepared.restart {
        log::warn!("needs a restart: {what}; the running value stays until then");
    }
    let mut changed = if prepared.changed.is_empty() {
        "no setting changed".to_string()
    } else {
        format!("changed: {}", prepared.changed.join(", "))
    };
    if prepared.live.tls.is_some() {
        changed.push_str("; certificates and keys read again");
    }
    router.reconfigure(prepared.live);
    log::info!(
        "configuration reloaded from {} ({changed}); established streams keep the \
         configuration they started with",
        path.display()
    );
    true
}

/// Read and check the configuration at `path` as start-up does, against `old` (the one in
/// force): what needs a restart keeps its running value, the dialback secret is kept, and the
/// DNS answer cache is shared.
///
/// # Errors
/// The message start-up would print for the same file (naming the file and the key).
pub fn prepare(path: &Path, old: &Live) -> Result<Prepared, String> {
    let mut config = Config::load(path).map_err(|e| e.to_string())?;
    let restart = keep_running(&old.ctx.config, &mut config);
    if !config.tls.enabled && !config.listen.direct_tls.is_empty() {
        return Err(format!(
            "{}: tls.enabled: the direct-TLS listeners (listen.direct_tls) stay open until a \
             restart, so TLS cannot be turned off by a reload",
            path.display()
        ));
    }
    let tls = load_tls(&config)?;
    let resolver = resolver(&config)?.sharing_cache(&old.resolver);
    let changed = changed(&old.ctx.config, &config);
    let ctx = Arc::new(Ctx {
        tls_available: tls.is_some(),
        config: Arc::new(config),
        secret: old.ctx.secret.clone(),
    });
    Ok(Prepared {
        live: Live {
            ctx,
            tls: tls.map(Arc::new),
            resolver,
        },
        changed,
        restart,
    })
}

/// Give `new` the running value of every setting that needs a restart to change (see the
/// module documentation); names those that differed.
pub fn keep_running(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut restart = Vec::new();
    if new.listen != old.listen {
        restart.push("[listen] (the listening sockets)");
        new.listen = old.listen.clone();
    }
    if old.components.is_empty() && !new.components.is_empty() {
        restart.push(
            "[[component]] (the component listener is opened at start-up only when components \
             are configured)",
        );
    }
    if new.status != old.status {
        restart.push("[status] (the status listener)");
        new.status = old.status.clone();
    }
    if new.dns_cache != old.dns_cache {
        restart.push("[dns] cache_entries, cache_min_ttl, cache_max_ttl (the DNS answer cache)");
        new.dns_cache = old.dns_cache;
    }
    if new.dialback_secret != old.dialback_secret {
        restart.push(
            "dialback_secret (keys already sent to peers, and those they are checking now, \
             were made with the one in force)",
        );
        new.dialback_secret = old.dialback_secret.clone();
    }
    restart
}

/// The parts of the configuration that differ between `old` and `new`, in file order. Every
/// field is named here, so a new setting cannot be forgotten: those that need a restart were
/// given their running value by [`keep_running`] and never differ.
pub fn changed(old: &Config, new: &Config) -> Vec<&'static str> {
    let Config {
        path: _,
        domains,
        dialback_secret,
        listen,
        components,
        nameservers,
        allow_networks,
        dns_cache,
        routes,
        timeouts,
        limits,
        tls,
        federation,
        status,
        handlers,
        s2s,
    } = new;
    let parts = [
        ("domains", *domains != old.domains),
        ("dialback_secret", *dialback_secret != old.dialback_secret),
        ("listen", *listen != old.listen),
        ("components", *components != old.components),
        (
            "dns",
            *nameservers != old.nameservers
                || *allow_networks != old.allow_networks
                || *dns_cache != old.dns_cache,
        ),
        ("routes", *routes != old.routes),
        ("timeouts", *timeouts != old.timeouts),
        ("limits", *limits != old.limits),
        ("tls", *tls != old.tls),
        ("policy", *federation != old.federation),
        ("status", *status != old.status),
        ("handlers", *handlers != old.handlers),
        ("s2s", *s2s != old.s2s),
    ];
    parts
        .into_iter()
        .filter(|(_, differs)| *differs)
        .map(|(name, _)| name)
        .collect()
}

/// The certificates and TLS configurations when TLS is enabled (with a warning otherwise), as
/// start-up loads them.
///
/// # Errors
/// A certificate, key or CA bundle cannot be loaded: the configuration file and the file at
/// fault are named.
pub fn load_tls(config: &Config) -> Result<Option<TlsContext>, String> {
    if !config.tls.enabled {
        log::warn!(
            "TLS is disabled: streams are plaintext and most public servers will refuse them"
        );
        return Ok(None);
    }
    TlsContext::from_config(config)
        .map(Some)
        .map_err(|e| format!("{}: {e}", config.path.display()))
}

/// A resolver asking the configured nameservers, or those of /etc/resolv.conf (read again on
/// each call), without a cache.
///
/// # Errors
/// No nameserver is configured and /etc/resolv.conf gives none.
pub fn resolver(config: &Config) -> Result<Resolver, String> {
    if !config.nameservers.is_empty() {
        return Ok(Resolver::new(
            config.nameservers.clone(),
            config.timeouts.dns,
        ));
    }
    Resolver::from_system(config.timeouts.dns).map_err(|e| {
        format!(
            "/etc/resolv.conf: {e}; set [dns] nameservers in {}",
            config.path.display()
        )
    })
}

#[cfg(test)]
#[path = "reload_tests.rs"]
mod tests;
