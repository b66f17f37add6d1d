//! Typed configuration: one TOML file, read at start-up (and again on SIGHUP, see `reload`) and
//! validated into typed values.
//!
//! `etc/dialbackd.toml` is the documented example (every key, with its default). Loading is two
//! steps: the text is deserialised into private `Raw*` structs that mirror the file exactly
//! (`deny_unknown_fields`, so a misspelt key is an error, not a silently ignored line), then
//! [`Config::parse`] checks every value and builds the public, typed structs below. Nothing else in
//! dialbackd reads the file or sees a string where a typed value belongs: domains are [`Domain`]s,
//! addresses are [`SocketAddr`]s, timeouts are [`Duration`]s.
//!
//! Every error is a [`ConfigError`] that names the file, the key and the problem, for example
//! `etc/x.toml: limits.stanza_size: must be at least 10000 (RFC 6120 §13.12), got 500`. TOML syntax
//! errors and type errors also carry the line and column toml reported.
//!
//! Not done here: certificate and key files are not opened (the TLS code does that, and reports
//! its own errors); the dialback secret is not generated (start-up does that when it is `None`).
//! Secrets never appear in `Debug` output.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::dns::{CacheLimits, Cidr};
use crate::domain::Domain;
use crate::policy::{DomainPattern, FederationPolicy};

/// The smallest stanza size limit we accept: RFC 6120 §13.12 says servers must allow at least
/// 10 000 bytes.
pub const MIN_STANZA_SIZE: usize = 10_000;
/// The smallest element depth limit we accept (a stanza with an error payload is already 4 deep).
pub const MIN_DEPTH: usize = 8;
/// Smallest allowed `limits.pre_auth_stanza_size`: room for a stream header and a peer's stream
/// features.
pub const MIN_PRE_AUTH_STANZA_SIZE: usize = 4096;
/// The longest timeout we accept, in seconds (a week); longer values are almost certainly typos
/// and would risk `Instant` overflow.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
/// The most answers `[dns] cache_entries` may ask the DNS cache to hold.
pub const MAX_CACHE_ENTRIES: u64 = 1_000_000;
/// The XMPP server-to-server port (RFC 6120 §14.7), used when a route gives no port.
pub const DEFAULT_S2S_PORT: u16 = 5269;
/// The DNS port, used when a nameserver gives no port.
pub const DEFAULT_DNS_PORT: u16 = 53;

/// The whole configuration, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// The file this was read from (as given on the command line).
    pub path: PathBuf,
    /// Hosted domains: at least one, no duplicates, in file order.
    pub domains: Vec<Domain>,
    /// The secret dialback keys are derived from (XEP-0185); `None` → 256 random bits at start-up.
    /// Never empty when `Some`. Redacted in `Debug`.
    pub dialback_secret: Option<String>,
    /// Listening sockets.
    pub listen: Listen,
    /// External components (XEP-0114), in file order; no two share a domain.
    pub components: Vec<ComponentConfig>,
    /// DNS servers to ask; empty → the ones in `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    /// `[dns] allow_networks`: networks outbound and verify connections may reach although the
    /// private-network guard refuses them by default (loopback, RFC 1918, link-local, …; see
    /// [`crate::dns::NetworkPolicy`]). Default empty. Static routes never need it.
    pub allow_networks: Vec<Cidr>,
    /// `[dns] cache_entries`, `cache_min_ttl`, `cache_max_ttl`: the answer cache shared by
    /// every stream (default [`CacheLimits::default`]).
    pub dns_cache: CacheLimits,
    /// Static routes: remote domains reached at a fixed host and port instead of via DNS SRV.
    pub routes: BTreeMap<Domain, StaticRoute>,
    /// How long each kind of wait may last.
    pub timeouts: Timeouts,
    /// Caps on resources.
    pub limits: Limits,
    /// TLS certificates and per-peer encryption and verification policy.
    pub tls: TlsPolicy,
    /// `[policy] allow` / `deny`: the remote domains we exchange stanzas with (default:
    /// every one).
    pub federation: FederationPolicy,
    /// `[status]`: the metrics and status listener; `None` (the default) when off.
    pub status: Option<StatusConfig>,
    /// `[handlers]`: the optional built-in answers on hosted domains.
    pub handlers: Handlers,
    /// `[s2s]`: optional server-to-server protocol extensions.
    pub s2s: S2s,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("domains", &self.domains)
            .field(
                "dialback_secret",
                &self.dialback_secret.as_ref().map(|_| Redacted),
            )
            .field("listen", &self.listen)
            .field("components", &self.components)
            .field("nameservers", &self.nameservers)
            .field("allow_networks", &self.allow_networks)
            .field("dns_cache", &self.dns_cache)
            .field("routes", &self.routes)
            .field("timeouts", &self.timeouts)
            .field("limits", &self.limits)
            .field("tls", &self.tls)
            .field("federation", &self.federation)
            .field("status", &self.status)
            .field("handlers", &self.handlers)
            .field("s2s", &self.s2s)
            .finish()
    }
}

/// Stands in for a secret in `Debug` output.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `[listen]`: the sockets we accept connections on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    /// Server-to-server listeners (STARTTLS when TLS is enabled); default `0.0.0.0:5269`.
    /// At least one: peers must be able to reach us to verify our dialback keys.
    pub s2s: Vec<SocketAddr>,
    /// The external component listener (XEP-0114); default `127.0.0.1:5347`.
    pub component: SocketAddr,
    /// Direct-TLS server-to-server listeners (XEP-0368); default none. Needs TLS enabled.
    pub direct_tls: Vec<SocketAddr>,
}

impl Default for Listen {
    fn default() -> Listen {
        Listen {
            s2s: vec![SocketAddr::from(([0, 0, 0, 0], DEFAULT_S2S_PORT))],
            component: SocketAddr::from(([127, 0, 0, 1], 5347)),
            direct_tls: Vec::new(),
        }
    }
}

/// `[status]`: the listener serving OpenMetrics text at `/metrics` and the live streams at
/// `/status` (read by `dialbackd status`). It has no authentication, so it listens on a
/// loopback address unless `allow_remote` says otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusConfig {
    /// Where it listens; default [`StatusConfig::DEFAULT_LISTEN`].
    pub listen: SocketAddr,
    /// Whether `listen` may be other than a loopback address; default false.
    pub allow_remote: bool,
}

impl StatusConfig {
    /// The default `status.listen`.
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:5280";
}

/// `[handlers]`: built-in answers the daemon gives on a hosted domain that has no component of
/// its own, beyond the ping (XEP-0199) and disco#info (XEP-0030) it always answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handlers {
    /// `version`: answer XEP-0092 software version queries (name and version, never the
    /// operating system); default false, as the version tells attackers what to try.
    pub version: bool,
}

/// `[s2s]`: optional server-to-server protocol extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S2s {
    /// `bidi`: XEP-0288 bidirectional streams: advertise `urn:xmpp:features:bidi` to peers
    /// that connect to us, and ask for bidi on our outbound streams when a peer offers it.
    /// Default true: it is used only when the peer opts in, only for the pairs dialback
    /// verified on the stream (BIDI-03), and a peer that does not offer it is unaffected.
    pub bidi: bool,
}

impl Default for S2s {
    fn default() -> S2s {
        S2s { bidi: true }
    }
}

/// `[[component]]`: one external component (XEP-0114).
#[derive(Clone, PartialEq, Eq)]
pub struct ComponentConfig {
    /// The domain the component serves.
    pub domain: Domain,
    /// The shared secret of the component handshake; never empty. Redacted in `Debug`.
    pub secret: String,
}

impl fmt::Debug for ComponentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComponentConfig")
            .field("domain", &self.domain)
            .field("secret", &Redacted)
            .finish()
    }
}

/// `[routes]`: where to connect for one remote domain instead of asking DNS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticRoute {
    /// A host name (validated, lower-case) or an IP address literal (IPv6 without brackets), so
    /// `(host.as_str(), port)` works with `std::net::ToSocketAddrs`.
    pub host: String,
    /// The port; 5269 when the file gives none.
    pub port: u16,
}

/// `[timeouts]`: every wait has a bound. Whole seconds (≥ 1) in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// One DNS lookup (all its retries); default 10 s.
    pub dns: Duration,
    /// One TCP connect attempt, per address; default 10 s.
    pub connect: Duration,
    /// From accept/connect until the stream is authenticated (TLS and dialback included); a
    /// stream not done by then is closed with `connection-timeout`. Default 90 s.
    pub negotiation: Duration,
    /// Waiting for the answer to one `db:verify` or `db:result`; default 60 s.
    pub dialback: Duration,
    /// A verified stream with no stanza traffic for this long is closed; default 3600 s.
    pub idle: Duration,
    /// Whitespace keepalive interval on idle streams; default 300 s, always less than `idle`.
    pub keepalive: Duration,
    /// Waiting for the peer's `</stream:stream>` after sending ours; default 5 s.
    pub close: Duration,
    /// Bound on graceful shutdown after SIGTERM; default 10 s.
    pub shutdown: Duration,
    /// After a failed attempt to reach a domain, stanzas for it bounce at once (with the
    /// failure's condition) for this long, jittered between half and all of it, before the
    /// next attempt; default 5 s.
    pub retry: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            dns: Duration::from_secs(10),
            connect: Duration::from_secs(10),
            negotiation: Duration::from_secs(90),
            dialback: Duration::from_secs(60),
            idle: Duration::from_secs(3600),
            keepalive: Duration::from_secs(300),
            close: Duration::from_secs(5),
            shutdown: Duration::from_secs(10),
            retry: Duration::from_secs(5),
        }
    }
}

/// `[limits]`: every resource has a cap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest stanza in bytes; default 524288, at least 10000 (RFC 6120 §13.12).
    pub stanza_size: usize,
    /// Largest stanza (and stream header) in bytes before the stream is authenticated (an inbound
    /// stream until its first pair is verified, an outbound stream until our db:result is valid, a
    /// verify connection always, a component until its handshake); default 16384, at least
    /// 4096 and at most `stanza_size`. Dialback elements and stream features are tiny.
    pub pre_auth_stanza_size: usize,
    /// Deepest element nesting inside the stream; default 64, at least 8.
    pub depth: usize,
    /// Stanzas queued per (local, remote) domain pair while its stream is being set up; default
    /// 10000.
    pub queue: usize,
    /// Stanzas waiting to be written on one stream; default 1024.
    pub outbox: usize,
    /// Outstanding `db:verify` requests caused by one inbound stream; default 8.
    pub pending_verifications_per_stream: usize,
    /// Outstanding `db:verify` requests in total; default 256.
    pub pending_verifications: usize,
    /// Streams in total, inbound plus outbound; default 4096.
    pub connections: usize,
    /// Inbound streams from one remote IP address (IPv6: one /64); default 64.
    pub connections_per_ip: usize,
    /// Outbound domain-pair streams in total (verify connections are capped by
    /// `pending_verifications`); default 256.
    pub outbound_streams: usize,
    /// Domain pairs verified or being verified on one inbound stream (XEP-0220 §2.5
    /// `resource-constraint` beyond it), and carried by one outbound stream (target
    /// multiplexing, XEP-0220 §2.6.2); default 16.
    pub pairs_per_stream: usize,
    /// Bytes of stanzas held for one stream (its inbox plus the pair's queue while it is set
    /// up); default 8 MiB, at least `stanza_size`.
    pub queue_bytes: usize,
    /// Bytes of stanzas held for all server streams together (each component has its own
    /// `queue_bytes`); default 64 MiB, at least `queue_bytes`.
    pub queued_bytes: usize,
    /// Bytes of the original payload a bounce to a remote sender carries; default 1024.
    pub bounce_payload: usize,
    /// Bytes of the original payload a bounce to a local sender (a component) carries; default
    /// 65536.
    pub bounce_payload_component: usize,
    /// Component connections in total; default 64.
    pub component_connections: usize,
    /// Component connections from one IP address (IPv6: one /64); default 16.
    pub component_connections_per_ip: usize,
    /// Failed component handshakes from one address within `component_failure_window` after
    /// which it is refused for that long; default 5.
    pub component_failures: usize,
    /// The window for `component_failures`, in seconds; default 60.
    pub component_failure_window: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            stanza_size: 524_288,
            pre_auth_stanza_size: 16_384,
            depth: 64,
            queue: 10_000,
            outbox: 1024,
            pending_verifications_per_stream: 8,
            pending_verifications: 256,
            connections: 4096,
            connections_per_ip: 64,
            outbound_streams: 256,
            pairs_per_stream: 16,
            queue_bytes: 8 << 20,
            queued_bytes: 64 << 20,
            bounce_payload: 1024,
            bounce_payload_component: 65_536,
            component_connections: 64,
            component_connections_per_ip: 16,
            component_failures: 5,
            component_failure_window: Duration::from_secs(60),
        }
    }
}

/// How a peer's TLS certificate is checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CertMode {
    /// Any certificate is accepted; the peer's identity is proven by dialback (`"dialback"`).
    #[default]
    Dialback,
    /// The certificate must chain to a trusted CA and be valid for the peer's domain, RFC 6125
    /// (`"pkix"`).
    Pkix,
}

impl fmt::Display for CertMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertMode::Dialback => "dialback",
            CertMode::Pkix => "pkix",
        })
    }
}

/// How a peer must authenticate its domain (`auth`, SASL-01).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AuthMode {
    /// Dialback is allowed: SASL EXTERNAL (XEP-0178) is used when both sides can, with dialback
    /// as the fallback on the same stream (`"dialback"`).
    #[default]
    Dialback,
    /// SASL EXTERNAL is required: the peer's certificate must prove its domain; a dialback
    /// attempt is refused, and we never fall back to dialback towards it (`"external"`).
    External,
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMode::Dialback => "dialback",
            AuthMode::External => "external",
        })
    }
}

/// `[tls.peers."DOMAIN"]`: overrides for one remote domain; `None` → the `[tls]` setting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    /// Overrides `tls.require_encryption` for this peer.
    pub require_encryption: Option<bool>,
    /// Overrides `tls.verify` for this peer.
    pub verify: Option<CertMode>,
    /// SHA-256 digests of the peer's SubjectPublicKeyInfo (DER); when non-empty, the peer's
    /// certificate key must match one of them.
    pub fingerprints: Vec<[u8; 32]>,
    /// Overrides `tls.auth` for this peer.
    pub auth: Option<AuthMode>,
}

/// A certificate chain and its private key, both PEM files (not opened here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPair {
    /// The certificate chain, leaf first; relative paths are resolved against the config file's
    /// directory.
    pub certificate: PathBuf,
    /// The private key; resolved like `certificate`.
    pub key: PathBuf,
}

/// `[tls]`: certificates and the encryption and verification policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsPolicy {
    /// Whether STARTTLS is offered and used at all. Default: true when any certificate is
    /// configured. Always false when no certificate is configured.
    pub enabled: bool,
    /// Refuse to exchange stanzas with a peer over an unencrypted stream. Default: `enabled`.
    /// Never true while `enabled` is false.
    pub require_encryption: bool,
    /// How peer certificates are checked, unless a peer overrides it. Default `Dialback`.
    pub verify: CertMode,
    /// How peers must authenticate, unless a peer overrides it. Default `Dialback` (SASL
    /// EXTERNAL when possible, dialback allowed).
    pub auth: AuthMode,
    /// PEM bundle of trusted CAs for `Pkix`; `None` → the system store.
    pub ca_file: Option<PathBuf>,
    /// The certificate for hosted domains without an entry in `certs`.
    pub default_cert: Option<CertPair>,
    /// Per-domain certificates (`[tls.domains."DOMAIN"]`); keys are local domains.
    pub certs: BTreeMap<Domain, CertPair>,
    /// Per-peer overrides (`[tls.peers."DOMAIN"]`).
    pub peers: BTreeMap<Domain, PeerPolicy>,
}

impl TlsPolicy {
    /// Whether a stream with `peer` must be encrypted before stanzas flow: the peer's
    /// `require_encryption`, else `[tls] require_encryption`. A peer whose certificate must be
    /// checked (`verify = "pkix"` or fingerprint pins), or that must use SASL EXTERNAL
    /// (`auth = "external"`), is always required to use TLS: a plaintext stream would skip the
    /// check.
    pub fn require_encryption_for(&self, peer: &Domain) -> bool {
        self.verify_for(peer) == CertMode::Pkix
            || !self.pins_for(peer).is_empty()
            || self.external_required_for(peer)
            || self
                .peers
                .get(peer)
                .and_then(|p| p.require_encryption)
                .unwrap_or(self.require_encryption)
    }

    /// How `peer`'s certificate is checked when the stream is encrypted: the peer's `verify`,
    /// else `[tls] verify`.
    pub fn verify_for(&self, peer: &Domain) -> CertMode {
        self.peers
            .get(peer)
            .and_then(|p| p.verify)
            .unwrap_or(self.verify)
    }

    /// Whether `peer` must authenticate by SASL EXTERNAL (the peer's `auth`, else `[tls] auth`
    /// is `"external"`): no dialback with it in either direction.
    pub fn external_required_for(&self, peer: &Domain) -> bool {
        let mode = self
            .peers
            .get(peer)
            .and_then(|p| p.auth)
            .unwrap_or(self.auth);
        mode == AuthMode::External
    }

    /// Whether a certificate can prove `peer`'s identity under its policy (`verify = "pkix"`
    /// or pins): what SASL EXTERNAL needs.
    pub fn checks_identity_of(&self, peer: &Domain) -> bool {
        self.verify_for(peer) == CertMode::Pkix || !self.pins_for(peer).is_empty()
    }

    /// The SPKI SHA-256 pins for `peer`; empty when none are configured (no pinning).
    pub fn pins_for(&self, peer: &Domain) -> &[[u8; 32]] {
        self.peers
            .get(peer)
            .map(|p| p.fingerprints.as_slice())
            .unwrap_or(&[])
    }

    /// The certificate to present for local domain `domain`: its own, else the default one.
    pub fn cert_for(&self, domain: &Domain) -> Option<&CertPair> {
        self.certs.get(domain).or(self.default_cert.as_ref())
    }
}

/// A configuration problem: which file, which key, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    file: PathBuf,
    key: String,
    message: String,
    position: Option<(usize, usize)>,
}

impl ConfigError {
    fn new(file: &Path, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            key: key.into(),
            message: message.into(),
            position: None,
        }
    }

    /// The configuration file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The key at fault, as a dotted path: `limits.stanza_size`, `component[1].domain` (array
    /// indices count from 0), `tls.peers."b.test".verify`. Empty when no key applies (the file
    /// cannot be read, or a TOML syntax error).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What is wrong, without file, key or position.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Line and column (both from 1) toml reported, for syntax and type errors.
    pub fn position(&self) -> Option<(usize, usize)> {
        self.position
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some((line, column)) = self.position {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Read and validate the configuration file at `path`.
    ///
    /// Relative certificate, key and CA paths are resolved against the file's directory.
    ///
    /// # Errors
    /// When the file cannot be read, is not valid TOML, or any value is invalid.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, "", format!("cannot read the file: {e}")))?;
        Config::parse(&text, path)
    }

    /// Validate configuration `text`; `path` is named in errors and relative paths in the
    /// configuration are resolved against its directory.
    ///
    /// # Errors
    /// When `text` is not valid TOML, or any value is invalid.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        Validator { file: path }.config(raw)
    }

    /// Hosted domains and component domains: every domain we serve and answer dialback for.
    pub fn is_local(&self, d: &Domain) -> bool {
        self.domains.contains(d) || self.components.iter().any(|c| &c.domain == d)
    }

    /// Every local domain once: hosted domains in file order, then component domains that are not
    /// also hosted.
    pub fn local_domains(&self) -> Vec<Domain> {
        let mut out = self.domains.clone();
        for c in &self.components {
            if !out.contains(&c.domain) {
                out.push(c.domain.clone());
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    domains: Option<Vec<String>>,
    dialback_secret: Option<String>,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    component: Vec<RawComponent>,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    routes: BTreeMap<String, String>,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    tls: RawTls,
    #[serde(default, rename = "policy")]
    federation: RawFederation,
    status: Option<RawStatus>,
    #[serde(default)]
    handlers: RawHandlers,
    #[serde(default)]
    s2s: RawS2s,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawS2s {
    bidi: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHandlers {
    #[serde(default)]
    version: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFederation {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    listen: Option<String>,
    allow_remote: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawListen {
    s2s: Option<Vec<String>>,
    component: Option<String>,
    direct_tls: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    domain: String,
    secret: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    nameservers: Vec<String>,
    #[serde(default)]
    allow_networks: Vec<String>,
    cache_entries: Option<i64>,
    cache_min_ttl: Option<i64>,
    cache_max_ttl: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    dns: Option<i64>,
    connect: Option<i64>,
    negotiation: Option<i64>,
    dialback: Option<i64>,
    idle: Option<i64>,
    keepalive: Option<i64>,
    close: Option<i64>,
    shutdown: Option<i64>,
    retry: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    stanza_size: Option<i64>,
    pre_auth_stanza_size: Option<i64>,
    depth: Option<i64>,
    queue: Option<i64>,
    outbox: Option<i64>,
    pending_verifications_per_stream: Option<i64>,
    pending_verifications: Option<i64>,
    connections: Option<i64>,
    connections_per_ip: Option<i64>,
    outbound_streams: Option<i64>,
    pairs_per_stream: Option<i64>,
    queue_bytes: Option<i64>,
    queued_bytes: Option<i64>,
    bounce_payload: Option<i64>,
    bounce_payload_component: Option<i64>,
    component_connections: Option<i64>,
    component_connections_per_ip: Option<i64>,
    component_failures: Option<i64>,
    component_failure_window: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    enabled: Option<bool>,
    require_encryption: Option<bool>,
    verify: Option<String>,
    auth: Option<String>,
    ca_file: Option<String>,
    certificate: Option<String>,
    key: Option<String>,
    #[serde(default)]
    domains: BTreeMap<String, RawCertPair>,
    #[serde(default)]
    peers: BTreeMap<String, RawPeer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertPair {
    certificate: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    require_encryption: Option<bool>,
    verify: Option<String>,
    auth: Option<String>,
    #[serde(default)]
    fingerprints: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Validation: raw → typed.

struct Validator<'a> {
    file: &'a Path,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file, key, message)
    }

    fn domain(&self, key: &str, s: &str) -> Result<Domain, ConfigError> {
        Domain::parse(s).map_err(|e| self.err(key, e.to_string()))
    }

    /// A path from the file, relative ones resolved against the file's directory.
    fn path(&self, key: &str, s: &str) -> Result<PathBuf, ConfigError> {
        if s.is_empty() {
            return Err(self.err(key, "must not be empty"));
        }
        let p = Path::new(s);
        Ok(match self.file.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        })
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let domains = self.domains(raw.domains)?;
        let dialback_secret = match raw.dialback_secret {
            Some(s) if s.is_empty() => {
                return Err(self.err(
                    "dialback_secret",
                    "must not be empty (leave it out to use a random secret per start)",
                ))
            }
            other => other,
        };
        let components = self.components(raw.component)?;
        let local: BTreeSet<Domain> = domains
            .iter()
            .chain(components.iter().map(|c| &c.domain))
            .cloned()
            .collect();
        let tls = self.tls(raw.tls, &local)?;
        let listen = self.listen(raw.listen, &tls)?;
        let nameservers = raw
            .dns
            .nameservers
            .iter()
            .enumerate()
            .map(|(i, s)| self.nameserver(&format!("dns.nameservers[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?;
        let allow_networks = self.allow_networks(&raw.dns.allow_networks)?;
        let dns_cache = self.dns_cache(&raw.dns)?;
        let routes = self.routes(raw.routes, &local)?;
        let timeouts = self.timeouts(raw.timeouts)?;
        let limits = self.limits(raw.limits)?;
        let federation = self.federation(&raw.federation, &local)?;
        let status = raw.status.map(|st| self.status(st, &listen)).transpose()?;
        Ok(Config {
            path: self.file.to_path_buf(),
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
            handlers: Handlers {
                version: raw.handlers.version,
            },
            s2s: S2s {
                bidi: raw.s2s.bidi.unwrap_or(S2s::default().bidi),
            },
        })
    }

    fn domains(&self, raw: Option<Vec<String>>) -> Result<Vec<Domain>, ConfigError> {
        let raw = raw.ok_or_else(|| {
            self.err(
                "domains",
                "missing: list the domains this server hosts, e.g. domains = [\"example.org\"]",
            )
        })?;
        if raw.is_empty() {
            return Err(self.err("domains", "must list at least one domain"));
        }
        let mut out: Vec<Domain> = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            let key = format!("domains[{i}]");
            let d = self.domain(&key, s)?;
            if out.contains(&d) {
                return Err(self.err(key, format!("{d} is listed twice")));
            }
            out.push(d);
        }
        Ok(out)
    }

    fn components(&self, raw: Vec<RawComponent>) -> Result<Vec<ComponentConfig>, ConfigError> {
        let mut out: Vec<ComponentConfig> = Vec::with_capacity(raw.len());
        for (i, c) in raw.into_iter().enumerate() {
            let key = format!("component[{i}].domain");
            let domain = self.domain(&key, &c.domain)?;
            if let Some(j) = out.iter().position(|o| o.domain == domain) {
                return Err(self.err(
                    key,
                    format!("{domain} is already the domain of component[{j}]"),
                ));
            }
            if c.secret.is_empty() {
                return Err(self.err(format!("component[{i}].secret"), "must not be empty"));
            }
            out.push(ComponentConfig {
                domain,
                secret: c.secret,
            });
        }
        Ok(out)
    }

    fn listen(&self, raw: RawListen, tls: &TlsPolicy) -> Result<Listen, ConfigError> {
        let default = Listen::default();
        let addrs = |name: &str, list: Option<Vec<String>>, default: Vec<SocketAddr>| {
            list.map_or(Ok(default), |list| {
                list.iter()
                    .enumerate()
                    .map(|(i, s)| self.socket_addr(&format!("listen.{name}[{i}]"), s))
                    .collect::<Result<Vec<_>, _>>()
            })
        };
        let s2s = addrs("s2s", raw.s2s, default.s2s)?;
        if s2s.is_empty() {
            return Err(self.err(
                "listen.s2s",
                "must list at least one address: peers connect to us to verify our dialback keys",
            ));
        }
        let component = match raw.component {
            Some(s) => self.socket_addr("listen.component", &s)?,
            None => default.component,
        };
        let direct_tls = addrs("direct_tls", raw.direct_tls, default.direct_tls)?;
        if !direct_tls.is_empty() && !tls.enabled {
            return Err(self.err(
                "listen.direct_tls",
                "needs TLS: configure tls.certificate and tls.key, or remove direct_tls",
            ));
        }
        let mut seen: Vec<(String, SocketAddr)> = Vec::new();
        let all = s2s
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("listen.s2s[{i}]"), *a))
            .chain(std::iter::once(("listen.component".to_string(), component)))
            .chain(
                direct_tls
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (format!("listen.direct_tls[{i}]"), *a)),
            );
        for (key, addr) in all {
            if let Some((other, _)) = seen.iter().find(|(_, a)| *a == addr && addr.port() != 0) {
                return Err(self.err(key, format!("{addr} is already used by {other}")));
            }
            seen.push((key, addr));
        }
        Ok(Listen {
            s2s,
            component,
            direct_tls,
        })
    }

    /// `[status]`: on a loopback address unless `allow_remote`, and on none of the other
    /// listeners' addresses.
    fn status(&self, raw: RawStatus, listen: &Listen) -> Result<StatusConfig, ConfigError> {
        let addr = raw
            .listen
            .as_deref()
            .unwrap_or(StatusConfig::DEFAULT_LISTEN);
        let addr = self.socket_addr("status.listen", addr)?;
        let allow_remote = raw.allow_remote.unwrap_or(false);
        if !allow_remote && !addr.ip().is_loopback() {
            return Err(self.err(
                "status.listen",
                format!(
                    "{addr} is not a loopback address: the status listener has no \
                     authentication and shows every peer and stream; listen on 127.0.0.1 or \
                     [::1], or set status.allow_remote = true (and firewall the port)"
                ),
            ));
        }
        let mut others = listen
            .s2s
            .iter()
            .chain(&listen.direct_tls)
            .chain(std::iter::once(&listen.component));
        if addr.port() != 0 && others.any(|a| *a == addr) {
            return Err(self.err(
                "status.listen",
                format!("{addr} is already used by a [listen] address"),
            ));
        }
        Ok(StatusConfig {
            listen: addr,
            allow_remote,
        })
    }

    fn socket_addr(&self, key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
        s.parse().map_err(|_| {
            self.err(
                key,
                format!(
                    "must be an IP address and port, like \"127.0.0.1:5269\" or \"[::1]:5269\", \
                     got {s:?}"
                ),
            )
        })
    }

    fn nameserver(&self, key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
        let addr = s
            .parse::<SocketAddr>()
            .ok()
            .or_else(|| {
                s.parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, DEFAULT_DNS_PORT))
            })
            .ok_or_else(|| {
                self.err(
                    key,
                    format!(
                        "must be an IP address with an optional port, like \"127.0.0.1\", \
                         \"127.0.0.1:5353\", \"::1\" or \"[::1]:53\", got {s:?}"
                    ),
                )
            })?;
        if addr.port() == 0 {
            return Err(self.err(key, "port must not be 0"));
        }
        Ok(addr)
    }

    /// `[dns] cache_*`: at most `MAX_CACHE_ENTRIES` answers (0: none kept); TTL bounds in
    /// seconds, the floor 0 to the ceiling, the ceiling 1 to a week.
    fn dns_cache(&self, raw: &RawDns) -> Result<CacheLimits, ConfigError> {
        let d = CacheLimits::default();
        let bounded = |name: &str, v: Option<i64>, default: u64, min: u64, max: u64, unit: &str| {
            let Some(v) = v else { return Ok(default) };
            match u64::try_from(v) {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(self.err(
                    format!("dns.{name}"),
                    format!("must be {min} to {max}{unit}, got {v}"),
                )),
            }
        };
        let entries = bounded(
            "cache_entries",
            raw.cache_entries,
            d.entries as u64,
            0,
            MAX_CACHE_ENTRIES,
            " (0 keeps no answer)",
        )?;
        let max_ttl = bounded(
            "cache_max_ttl",
            raw.cache_max_ttl,
            d.max_ttl.as_secs(),
            1,
            MAX_TIMEOUT_SECS,
            " (seconds)",
        )?;
        let min_ttl = bounded(
            "cache_min_ttl",
            raw.cache_min_ttl,
            d.min_ttl.as_secs().min(max_ttl),
            0,
            max_ttl,
            " (seconds, at most dns.cache_max_ttl)",
        )?;
        Ok(CacheLimits {
            entries: entries as usize,
            min_ttl: Duration::from_secs(min_ttl),
            max_ttl: Duration::from_secs(max_ttl),
        })
    }

    fn allow_networks(&self, raw: &[String]) -> Result<Vec<Cidr>, ConfigError> {
        let mut out: Vec<Cidr> = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            let key = format!("dns.allow_networks[{i}]");
            let net: Cidr = s.trim().parse().map_err(|e: String| self.err(&key, e))?;
            if out.contains(&net) {
                return Err(self.err(key, format!("{net} is listed twice")));
            }
            out.push(net);
        }
        Ok(out)
    }

    /// `[policy]`: each list's entries valid and distinct, no entry in both lists, and no
    /// entry naming one of our own domains (the lists are about remote domains only).
    fn federation(
        &self,
        raw: &RawFederation,
        local: &BTreeSet<Domain>,
    ) -> Result<FederationPolicy, ConfigError> {
        let list = |name: &str, raw: &[String]| -> Result<Vec<DomainPattern>, ConfigError> {
            let mut out: Vec<DomainPattern> = Vec::with_capacity(raw.len());
            for (i, s) in raw.iter().enumerate() {
                let key = format!("policy.{name}[{i}]");
                let p = DomainPattern::parse(s).map_err(|e| self.err(&key, e))?;
                if out.contains(&p) {
                    return Err(self.err(key, format!("{p} is listed twice")));
                }
                if let DomainPattern::Exact(d) = &p {
                    if local.contains(d) {
                        let why = "is one of our domains; these lists are for remote domains";
                        return Err(self.err(key, format!("{d} {why}")));
                    }
                }
                out.push(p);
            }
            Ok(out)
        };
        let allow = list("allow", &raw.allow)?;
        let deny = list("deny", &raw.deny)?;
        if let Some((i, p)) = deny.iter().enumerate().find(|(_, p)| allow.contains(p)) {
            return Err(self.err(
                format!("policy.deny[{i}]"),
                format!("{p} is in policy.allow too"),
            ));
        }
        Ok(FederationPolicy { allow, deny })
    }

    fn routes(
        &self,
        raw: BTreeMap<String, String>,
        local: &BTreeSet<Domain>,
    ) -> Result<BTreeMap<Domain, StaticRoute>, ConfigError> {
        let mut out = BTreeMap::new();
        for (name, target) in raw {
            let key = format!("routes.{}", key_segment(&name));
            let domain = self.domain(&key, &name)?;
            if local.contains(&domain) {
                return Err(self.err(
                    key,
                    format!("{domain} is a local domain; routes are for remote domains"),
                ));
            }
            let route = self.route(&key, &target)?;
            if out.insert(domain.clone(), route).is_some() {
                return Err(self.err(key, format!("a route for {domain} is given twice")));
            }
        }
        Ok(out)
    }

    fn route(&self, key: &str, s: &str) -> Result<StaticRoute, ConfigError> {
        let bad = |why: &str| {
            self.err(
                key,
                format!(
                    "{why}: expected \"HOST\" or \"HOST:PORT\" (HOST a name or IP address, \
                     IPv6 in brackets with a port), got {s:?}"
                ),
            )
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (ip, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("bad port"))?),
            };
            (ip, port)
        } else if s.parse::<std::net::Ipv6Addr>().is_ok() {
            (s, None)
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        let port = match port {
            None => DEFAULT_S2S_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(bad("bad port")),
            },
        };
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) if s.starts_with('[') => return Err(bad("bad IPv6 address")),
            Err(_) => Domain::parse(host)
                .map_err(|e| bad(&e.to_string()))?
                .as_str()
                .to_string(),
        };
        Ok(StaticRoute { host, port })
    }

    fn timeouts(&self, raw: RawTimeouts) -> Result<Timeouts, ConfigError> {
        let d = Timeouts::default();
        let secs = |name: &str, v: Option<i64>, default: Duration| -> Result<_, ConfigError> {
            let Some(v) = v else { return Ok(default) };
            let key = format!("timeouts.{name}");
            if v < 1 {
                return Err(self.err(key, format!("must be at least 1 (seconds), got {v}")));
            }
            if v.unsigned_abs() > MAX_TIMEOUT_SECS {
                return Err(self.err(
                    key,
                    format!("must be at most {MAX_TIMEOUT_SECS} (seconds, a week), got {v}"),
                ));
            }
            Ok(Duration::from_secs(v.unsigned_abs()))
        };
        let t = Timeouts {
            dns: secs("dns", raw.dns, d.dns)?,
            connect: secs("connect", raw.connect, d.connect)?,
            negotiation: secs("negotiation", raw.negotiation, d.negotiation)?,
            dialback: secs("dialback", raw.dialback, d.dialback)?,
            idle: secs("idle", raw.idle, d.idle)?,
            keepalive: secs("keepalive", raw.keepalive, d.keepalive)?,
            close: secs("close", raw.close, d.close)?,
            shutdown: secs("shutdown", raw.shutdown, d.shutdown)?,
            retry: secs("retry", raw.retry, d.retry)?,
        };
        if t.keepalive >= t.idle {
            return Err(self.err(
                "timeouts.keepalive",
                format!(
                    "must be less than timeouts.idle ({}), got {}",
                    t.idle.as_secs(),
                    t.keepalive.as_secs()
                ),
            ));
        }
        Ok(t)
    }

    fn limits(&self, raw: RawLimits) -> Result<Limits, ConfigError> {
        let l = self.older_limits(&raw)?;
        self.resource_caps(&raw, l)
    }

    fn older_limits(&self, raw: &RawLimits) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let count = |name: &str, v: Option<i64>, default: usize, min: usize, why: &str| {
            self.cap(name, v, default, min, why)
        };
        Ok(Limits {
            stanza_size: count(
                "stanza_size",
                raw.stanza_size,
                d.stanza_size,
                MIN_STANZA_SIZE,
                " (RFC 6120 §13.12)",
            )?,
            pre_auth_stanza_size: self.pre_auth_stanza_size(raw, &d)?,
            depth: count("depth", raw.depth, d.depth, MIN_DEPTH, "")?,
            queue: count("queue", raw.queue, d.queue, 1, "")?,
            outbox: count("outbox", raw.outbox, d.outbox, 1, "")?,
            pending_verifications_per_stream: count(
                "pending_verifications_per_stream",
                raw.pending_verifications_per_stream,
                d.pending_verifications_per_stream,
                1,
                "",
            )?,
            pending_verifications: count(
                "pending_verifications",
                raw.pending_verifications,
                d.pending_verifications,
                1,
                "",
            )?,
            connections: count("connections", raw.connections, d.connections, 1, "")?,
            connections_per_ip: count(
                "connections_per_ip",
                raw.connections_per_ip,
                d.connections_per_ip,
                1,
                "",
            )?,
            ..d
        })
    }

    /// The caps of the "Hostile input" issue (item 2), on top of the older limits in `l`.
    fn resource_caps(&self, raw: &RawLimits, l: Limits) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let l = self.queue_caps(raw, &d, l)?;
        let window = self.cap(
            "component_failure_window",
            raw.component_failure_window,
            d.component_failure_window.as_secs() as usize,
            1,
            " second",
        )?;
        let l = self.stream_caps(raw, &d, l)?;
        let l = self.bounce_caps(raw, &d, l)?;
        let l = self.component_caps(raw, &d, l)?;
        Ok(Limits {
            component_failure_window: Duration::from_secs(window as u64),
            ..l
        })
    }

    /// `limits.{name}`: `v` as a count of at least `min`, or `default` if unset; `why` follows
    /// the minimum in the error message.
    fn cap(
        &self,
        name: &str,
        v: Option<i64>,
        default: usize,
        min: usize,
        why: &str,
    ) -> Result<usize, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        match usize::try_from(v) {
            Ok(n) if n >= min => Ok(n),
            _ => Err(self.err(
                format!("limits.{name}"),
                format!("must be at least {min}{why}, got {v}"),
            )),
        }
    }

    /// `queue_bytes` (one stanza of `l.stanza_size` must fit) and `queued_bytes` (at least one
    /// queue).
    fn queue_caps(&self, raw: &RawLimits, d: &Limits, l: Limits) -> Result<Limits, ConfigError> {
        let queue_bytes = self.cap(
            "queue_bytes",
            raw.queue_bytes,
            d.queue_bytes.max(l.stanza_size),
            l.stanza_size,
            " (limits.stanza_size: one stanza must fit)",
        )?;
        let queued_bytes = self.cap(
            "queued_bytes",
            raw.queued_bytes,
            d.queued_bytes.max(queue_bytes),
            queue_bytes,
            " (limits.queue_bytes)",
        )?;
        Ok(Limits {
            queue_bytes,
            queued_bytes,
            ..l
        })
    }

    /// `outbound_streams` and `pairs_per_stream`.
    fn stream_caps(&self, raw: &RawLimits, d: &Limits, l: Limits) -> Result<Limits, ConfigError> {
        Ok(Limits {
            outbound_streams: self.cap(
                "outbound_streams",
                raw.outbound_streams,
                d.outbound_streams,
                1,
                "",
            )?,
            pairs_per_stream: self.cap(
                "pairs_per_stream",
                raw.pairs_per_stream,
                d.pairs_per_stream,
                1,
                "",
            )?,
            ..l
        })
    }

    /// `bounce_payload` and `bounce_payload_component` (0 allowed).
    fn bounce_caps(&self, raw: &RawLimits, d: &Limits, l: Limits) -> Result<Limits, ConfigError> {
        Ok(Limits {
            bounce_payload: self.cap(
                "bounce_payload",
                raw.bounce_payload,
                d.bounce_payload,
                0,
                "",
            )?,
            bounce_payload_component: self.cap(
                "bounce_payload_component",
                raw.bounce_payload_component,
                d.bounce_payload_component,
                0,
                "",
            )?,
            ..l
        })
    }

    /// `component_connections`, `component_connections_per_ip` and `component_failures`.
    fn component_caps(
        &self,
        raw: &RawLimits,
        d: &Limits,
        l: Limits,
    ) -> Result<Limits, ConfigError> {
        Ok(Limits {
            component_connections: self.cap(
                "component_connections",
                raw.component_connections,
                d.component_connections,
                1,
                "",
            )?,
            component_connections_per_ip: self.cap(
                "component_connections_per_ip",
                raw.component_connections_per_ip,
                d.component_connections_per_ip,
                1,
                "",
            )?,
            component_failures: self.cap(
                "component_failures",
                raw.component_failures,
                d.component_failures,
                1,
                "",
            )?,
            ..l
        })
    }

    /// `limits.pre_auth_stanza_size`: at least [`MIN_PRE_AUTH_STANZA_SIZE`], at most the stanza
    /// size (already validated); the default is lowered to the stanza size if that is smaller.
    fn pre_auth_stanza_size(&self, raw: &RawLimits, d: &Limits) -> Result<usize, ConfigError> {
        let stanza_size = raw
            .stanza_size
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(d.stanza_size);
        let Some(v) = raw.pre_auth_stanza_size else {
            return Ok(d.pre_auth_stanza_size.min(stanza_size));
        };
        let key = "limits.pre_auth_stanza_size";
        match usize::try_from(v) {
            Ok(n) if n < MIN_PRE_AUTH_STANZA_SIZE => Err(self.err(
                key,
                format!("must be at least {MIN_PRE_AUTH_STANZA_SIZE}, got {v}"),
            )),
            Ok(n) if n > stanza_size => Err(self.err(
                key,
                format!("must be at most limits.stanza_size ({stanza_size}), got {v}"),
            )),
            Ok(n) => Ok(n),
            Err(_) => Err(self.err(
                key,
                format!("must be at least {MIN_PRE_AUTH_STANZA_SIZE}, got {v}"),
            )),
        }
    }

    fn cert_mode(&self, key: &str, s: &str) -> Result<CertMode, ConfigError> {
        match s {
            "dialback" => Ok(CertMode::Dialback),
            "pkix" => Ok(CertMode::Pkix),
            _ => Err(self.err(key, format!("must be \"dialback\" or \"pkix\", got {s:?}"))),
        }
    }

    fn tls(&self, raw: RawTls, local: &BTreeSet<Domain>) -> Result<TlsPolicy, ConfigError> {
        let default_cert = self.default_cert(raw.certificate, raw.key)?;
        let certs = self.domain_certs(raw.domains, local)?;
        let have_cert = default_cert.is_some() || !certs.is_empty();
        let enabled = self.tls_enabled(raw.enabled, have_cert)?;
        let require_encryption = self.require_encryption(raw.require_encryption, enabled)?;
        let verify = self.verify_mode(raw.verify, enabled)?;
        let ca_file = raw
            .ca_file
            .map(|s| self.path("tls.ca_file", &s))
            .transpose()?;
        let auth = raw
            .auth
            .map(|s| self.auth_mode("tls.auth", &s))
            .transpose()?
            .unwrap_or_default();
        let peers = self.peer_policies(raw.peers, enabled)?;
        let policy = TlsPolicy {
            enabled,
            require_encryption,
            verify,
            auth,
            ca_file,
            default_cert,
            certs,
            peers,
        };
        self.external_checkable(&policy)?;
        Ok(policy)
    }

    fn auth_mode(&self, key: &str, s: &str) -> Result<AuthMode, ConfigError> {
        match s {
            "dialback" => Ok(AuthMode::Dialback),
            "external" => Ok(AuthMode::External),
            _ => Err(self.err(
                key,
                format!("must be \"dialback\" or \"external\", got {s:?}"),
            )),
        }
    }

    /// `auth = "external"` needs TLS and a certificate check that can prove the peer's identity
    /// (`verify = "pkix"` or pins): `[tls] auth` needs `[tls] verify = "pkix"`, and every peer
    /// it applies to needs pkix or pins of its own.
    fn external_checkable(&self, policy: &TlsPolicy) -> Result<(), ConfigError> {
        let needs = "\"external\" needs TLS and a certificate check that proves the peer's \
                     domain: verify = \"pkix\" or fingerprints";
        if policy.auth == AuthMode::External && !(policy.enabled && policy.verify == CertMode::Pkix)
        {
            return Err(self.err("tls.auth", needs));
        }
        for (domain, p) in &policy.peers {
            if policy.external_required_for(domain)
                && !(policy.enabled && policy.checks_identity_of(domain))
            {
                // Name the key that breaks it: the peer's own auth, else its verify override.
                let which = if p.auth.is_some() { "auth" } else { "verify" };
                let key = format!("tls.peers.{}.{which}", key_segment(domain.as_str()));
                return Err(self.err(key, needs));
            }
        }
        Ok(())
    }

    /// `tls.certificate` and `tls.key`: both or neither.
    fn default_cert(
        &self,
        certificate: Option<String>,
        key: Option<String>,
    ) -> Result<Option<CertPair>, ConfigError> {
        match (certificate, key) {
            (Some(c), Some(k)) => Ok(Some(CertPair {
                certificate: self.path("tls.certificate", &c)?,
                key: self.path("tls.key", &k)?,
            })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(self.err("tls.key", "missing: tls.certificate needs a key")),
            (None, Some(_)) => Err(self.err(
                "tls.certificate",
                "missing: tls.key is set but no certificate",
            )),
        }
    }

    /// `[tls.domains]`: per-domain certificates, each for a hosted or component domain, once.
    fn domain_certs(
        &self,
        domains: BTreeMap<String, RawCertPair>,
        local: &BTreeSet<Domain>,
    ) -> Result<BTreeMap<Domain, CertPair>, ConfigError> {
        let mut certs = BTreeMap::new();
        for (name, pair) in domains {
            let key = format!("tls.domains.{}", key_segment(&name));
            let domain = self.domain(&key, &name)?;
            if !local.contains(&domain) {
                return Err(self.err(
                    key,
                    format!("{domain} is neither a hosted domain nor a component domain"),
                ));
            }
            let pair = CertPair {
                certificate: self.path(&format!("{key}.certificate"), &pair.certificate)?,
                key: self.path(&format!("{key}.key"), &pair.key)?,
            };
            if certs.insert(domain.clone(), pair).is_some() {
                return Err(self.err(key, format!("{domain} is given twice")));
            }
        }
        Ok(certs)
    }

    /// `tls.enabled`: defaults to whether a certificate is configured; true needs one.
    fn tls_enabled(&self, enabled: Option<bool>, have_cert: bool) -> Result<bool, ConfigError> {
        match enabled {
            Some(true) if !have_cert => Err(self.err(
                "tls.certificate",
                "missing: tls.enabled is true but no certificate is configured (set \
                 tls.certificate and tls.key; `dialbackd gen-cert DOMAIN --out DIR` makes a \
                 self-signed one)",
            )),
            Some(e) => Ok(e),
            None => Ok(have_cert),
        }
    }

    /// `tls.require_encryption`: defaults to `enabled`; true needs TLS.
    fn require_encryption(&self, r: Option<bool>, enabled: bool) -> Result<bool, ConfigError> {
        match r {
            Some(true) if !enabled => Err(self.err(
                "tls.require_encryption",
                "cannot be true while TLS is disabled (no certificate, or tls.enabled = false)",
            )),
            Some(r) => Ok(r),
            None => Ok(enabled),
        }
    }

    /// `tls.verify`: defaults to dialback; "pkix" needs TLS.
    fn verify_mode(&self, verify: Option<String>, enabled: bool) -> Result<CertMode, ConfigError> {
        let Some(s) = verify else {
            return Ok(CertMode::Dialback);
        };
        let mode = self.cert_mode("tls.verify", &s)?;
        if mode == CertMode::Pkix && !enabled {
            return Err(self.err(
                "tls.verify",
                "\"pkix\" needs TLS, which is disabled (no certificate, or tls.enabled = false)",
            ));
        }
        Ok(mode)
    }

    /// `[tls.peers]`: one policy per peer domain, each given once.
    fn peer_policies(
        &self,
        peers: BTreeMap<String, RawPeer>,
        enabled: bool,
    ) -> Result<BTreeMap<Domain, PeerPolicy>, ConfigError> {
        let mut policies = BTreeMap::new();
        for (name, p) in peers {
            let key = format!("tls.peers.{}", key_segment(&name));
            let domain = self.domain(&key, &name)?;
            let policy = self.peer_policy(&key, p, enabled)?;
            if policies.insert(domain.clone(), policy).is_some() {
                return Err(self.err(key, format!("{domain} is given twice")));
            }
        }
        Ok(policies)
    }

    /// One `[tls.peers.DOMAIN]` table at `key`: anything but `require_encryption = false` or
    /// `verify = "dialback"` needs TLS.
    fn peer_policy(&self, key: &str, p: RawPeer, enabled: bool) -> Result<PeerPolicy, ConfigError> {
        let verify = p
            .verify
            .map(|s| self.cert_mode(&format!("{key}.verify"), &s))
            .transpose()?;
        let fingerprints = p
            .fingerprints
            .iter()
            .enumerate()
            .map(|(i, s)| self.fingerprint(&format!("{key}.fingerprints[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?;
        let auth = p
            .auth
            .map(|s| self.auth_mode(&format!("{key}.auth"), &s))
            .transpose()?;
        if !enabled {
            let problem = if p.require_encryption == Some(true) {
                Some("require_encryption")
            } else if verify == Some(CertMode::Pkix) {
                Some("verify")
            } else if !fingerprints.is_empty() {
                Some("fingerprints")
            } else {
                None
            };
            if let Some(k) = problem {
                return Err(self.err(
                    format!("{key}.{k}"),
                    "needs TLS, which is disabled (no certificate, or tls.enabled = false)",
                ));
            }
        }
        Ok(PeerPolicy {
            require_encryption: p.require_encryption,
            verify,
            fingerprints,
            auth,
        })
    }

    /// `sha256:` + 64 hex digits, optionally with `:` between the bytes.
    fn fingerprint(&self, key: &str, s: &str) -> Result<[u8; 32], ConfigError> {
        let bad = || {
            self.err(
                key,
                format!(
                    "must be \"sha256:\" followed by 64 hex digits (the SHA-256 of the \
                     certificate's SubjectPublicKeyInfo), optionally with ':' between bytes, \
                     got {s:?}"
                ),
            )
        };
        let hex = s
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("sha256:"))
            .map(|_| &s[7..])
            .ok_or_else(bad)?;
        let pairs: Vec<&str> = if hex.contains(':') {
            hex.split(':').collect()
        } else if hex.len() == 64 && hex.is_ascii() {
            (0..32).map(|i| &hex[2 * i..2 * i + 2]).collect()
        } else {
            return Err(bad());
        };
        if pairs.len() != 32 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(pairs) {
            if pair.len() != 2 || !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// toml errors → ConfigError, with the key found from the error's position.

/// `name` as one segment of a dotted key path: bare when TOML allows it, else quoted.
fn key_segment(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

fn toml_error(file: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let span = e.span();
    let position = span.as_ref().map(|s| line_column(text, s.start));
    let syntax_ok = toml::de::DeTable::parse(text).is_ok();
    let key = match span {
        Some(s) if syntax_ok => key_at(text, s.start),
        _ => String::new(),
    };
    // serde speaks of fields, sequences and i64; the file has keys, arrays and integers.
    let mut message = e
        .message()
        .trim_end()
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key")
        .replace("expected a sequence", "expected an array")
        .replace("expected i64", "expected an integer");
    if !syntax_ok {
        message.insert_str(0, "TOML syntax error: ");
    }
    if key == "component" && message.contains("expected an array") {
        message.push_str("; write [[component]] (double brackets) for each component");
    }
    let under_domain_map = ["routes.", "tls.domains.", "tls.peers."].iter().any(|p| {
        key.strip_prefix(p)
            .is_some_and(|rest| !rest.starts_with('"'))
    });
    if under_domain_map {
        message.push_str(
            "; quote domain names that contain dots, e.g. [tls.peers.\"b.example\"] or \
             \"b.example\" = \"host:5269\"",
        );
    }
    ConfigError {
        file: file.to_path_buf(),
        key,
        message,
        position,
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The dotted path of the innermost key whose key or value contains byte `offset`.
///
/// Every entry is searched, not only those whose span contains the offset: the span of a table
/// opened by a `[header]` covers the header, not the keys below it.
fn key_at(text: &str, offset: usize) -> String {
    use toml::de::{DeTable, DeValue};

    /// The path below `value` to the innermost key or value containing `offset`.
    fn find(value: &DeValue<'_>, offset: usize) -> Option<String> {
        match value {
            DeValue::Table(t) => t.iter().find_map(|(k, v)| {
                let name = key_segment(k.get_ref());
                match find(v.get_ref(), offset) {
                    Some(rest) if rest.starts_with('[') => Some(format!("{name}{rest}")),
                    Some(rest) => Some(format!("{name}.{rest}")),
                    None if k.span().contains(&offset) || v.span().contains(&offset) => Some(name),
                    None => None,
                }
            }),
            DeValue::Array(a) => {
                a.iter()
                    .enumerate()
                    .find_map(|(i, v)| match find(v.get_ref(), offset) {
                        Some(rest) if rest.starts_with('[') => Some(format!("[{i}]{rest}")),
                        Some(rest) => Some(format!("[{i}].{rest}")),
                        None if v.span().contains(&offset) => Some(format!("[{i}]")),
                        None => None,
                    })
            }
            _ => None,
        }
    }

    DeTable::parse(text)
        .ok()
        .and_then(|doc| find(&DeValue::Table(doc.into_inner()), offset))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "domains = [\"a.test\"]\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("etc/x.toml"))
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn d(s: &str) -> Domain {
        Domain::parse(s).unwrap()
    }

    #[test]
    fn minimal_config_has_the_documented_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.path, Path::new("etc/x.toml"));
        assert_eq!(c.domains, vec![d("a.test")]);
        assert_eq!(c.dialback_secret, None);
        assert_eq!(c.listen, Listen::default());
        assert_eq!(c.listen.s2s, vec!["0.0.0.0:5269".parse().unwrap()]);
        assert_eq!(c.listen.component, "127.0.0.1:5347".parse().unwrap());
        assert!(c.listen.direct_tls.is_empty());
        assert!(c.components.is_empty() && c.nameservers.is_empty() && c.routes.is_empty());
        assert!(c.allow_networks.is_empty());
        assert_eq!(c.timeouts, Timeouts::default());
        assert_eq!(c.timeouts.negotiation, Duration::from_secs(90));
        assert_eq!(c.timeouts.idle, Duration::from_secs(3600));
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.limits.stanza_size, 524_288);
        assert_eq!(c.tls, TlsPolicy::default());
        assert!(!c.tls.enabled && !c.tls.require_encryption);
        assert_eq!(c.tls.verify, CertMode::Dialback);
        assert!(
            c.federation.is_open(),
            "federation with everyone by default"
        );
        assert_eq!(c.status, None, "the status listener is off by default");
    }

    #[test]
    fn example_configs_parse() {
        let a = parse(include_str!("../etc/dialbackd.toml")).unwrap();
        assert_eq!(a.domains, vec![d("a.test")]);
        assert_eq!(a.listen.s2s, vec!["127.0.0.1:5269".parse().unwrap()]);
        assert_eq!(a.components.len(), 1);
        assert_eq!(a.components[0].domain, d("echo.a.test"));
        assert_eq!(
            a.routes[&d("b.test")],
            StaticRoute {
                host: "127.0.0.2".into(),
                port: 5269
            }
        );
        assert!(!a.tls.enabled);
        // The demo reaches its peer through static routes, which need no allow_networks.
        assert!(a.allow_networks.is_empty());
        // The example documents every default: it must not change them.
        assert_eq!(a.timeouts, Timeouts::default());
        assert_eq!(a.limits, Limits::default());
        assert_eq!(a.dns_cache, CacheLimits::default());

        let b = parse(include_str!("../etc/peer.toml")).unwrap();
        assert_eq!(b.domains, vec![d("b.test")]);
        assert_eq!(b.listen.s2s, vec!["127.0.0.2:5269".parse().unwrap()]);
        assert_eq!(b.listen.component, "127.0.0.2:5347".parse().unwrap());
        assert!(b.routes.contains_key(&d("a.test")) && b.routes.contains_key(&d("echo.a.test")));
        assert!(b.is_local(&d("echo.b.test")));
    }

    #[test]
    fn example_documents_the_real_defaults() {
        // Uncomment every `# key = value` line of [timeouts] and [limits], and the cache keys of
        // [dns], in the example: the result must still be exactly the defaults, so the
        // comments cannot drift from the code.
        let mut section = "";
        let mut changed = 0;
        let text: String = include_str!("../etc/dialbackd.toml")
            .lines()
            .map(|line| {
                if line.starts_with('[') {
                    section = line;
                }
                let key_value = line.strip_prefix("# ").filter(|rest| {
                    rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    })
                });
                match key_value {
                    Some(kv) if section == "[timeouts]" || section == "[limits]" => {
                        changed += 1;
                        format!("{kv}\n")
                    }
                    Some(kv) if section == "[dns]" && kv.starts_with("cache_") => {
                        changed += 1;
                        format!("{kv}\n")
                    }
                    _ => format!("{line}\n"),
                }
            })
            .collect();
        assert_eq!(
            changed, 31,
            "every timeout, limit and cache key is documented once"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.timeouts, Timeouts::default());
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.dns_cache, CacheLimits::default());
    }

    #[test]
    fn federation_lists_are_validated_and_named() {
        let c = parse(&format!(
            "{MIN}[policy]\nallow = [\"Friend.example\", \"*.corp.example\"]\ndeny = [\"x.corp.example\"]\n"
        ))
        .unwrap();
        assert_eq!(
            c.federation.allow,
            [
                DomainPattern::Exact(d("friend.example")),
                DomainPattern::Subdomains(d("corp.example"))
            ]
        );
        assert_eq!(
            c.federation.deny,
            [DomainPattern::Exact(d("x.corp.example"))]
        );
        for (text, want) in [
            (
                "deny = [\"a.*\"]",
                "policy.deny[0]: \"a.*\": a wildcard is only allowed",
            ),
            (
                "allow = [\"x\", \"*.\"]",
                "policy.allow[1]: invalid domain \"\": empty",
            ),
            (
                "deny = [\"*.[::1]\"]",
                "policy.deny[0]: \"*.[::1]\": an IP address has no subdomains",
            ),
            (
                "deny = [\"b.example\", \"B.example.\"]",
                "policy.deny[1]: b.example is listed twice",
            ),
            (
                "deny = [\"a.test\"]",
                "policy.deny[0]: a.test is one of our domains",
            ),
            (
                "allow = [\"*.x\"]\ndeny = [\"y\", \"*.x\"]",
                "policy.deny[1]: *.x is in policy.allow too",
            ),
            ("deny = \"spam.example\"", "policy.deny"),
            ("block = []", "block"),
        ] {
            let e = err(&format!("{MIN}[policy]\n{text}\n"));
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn dns_cache_keys_are_validated_and_named() {
        let c = parse(&format!(
            "{MIN}[dns]\ncache_entries = 0\ncache_min_ttl = 0\ncache_max_ttl = 60\n"
        ))
        .unwrap();
        assert_eq!(
            c.dns_cache,
            CacheLimits {
                entries: 0,
                min_ttl: Duration::ZERO,
                max_ttl: Duration::from_secs(60)
            }
        );
        // A ceiling below the default floor lowers the floor with it.
        let c = parse(&format!("{MIN}[dns]\ncache_max_ttl = 10\n")).unwrap();
        assert_eq!(c.dns_cache.min_ttl, Duration::from_secs(10));
        for (text, want) in [
            (
                "cache_entries = -1",
                "dns.cache_entries: must be 0 to 1000000 (0 keeps no answer), got -1",
            ),
            (
                "cache_entries = 1000001",
                "dns.cache_entries: must be 0 to 1000000",
            ),
            (
                "cache_max_ttl = 0",
                "dns.cache_max_ttl: must be 1 to 604800 (seconds), got 0",
            ),
            (
                "cache_min_ttl = 120\ncache_max_ttl = 60",
                "dns.cache_min_ttl: must be 0 to 60 (seconds, at most dns.cache_max_ttl), got 120",
            ),
            ("cache_min_ttl = \"5\"", "dns.cache_min_ttl"),
        ] {
            let e = err(&format!("{MIN}[dns]\n{text}\n"));
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn stanza_size_below_rfc_minimum_is_named() {
        let e = parse(&format!("{MIN}[limits]\nstanza_size = 500\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "etc/x.toml: limits.stanza_size: must be at least 10000 (RFC 6120 §13.12), got 500"
        );
        assert_eq!(e.key(), "limits.stanza_size");
        assert_eq!(e.file(), Path::new("etc/x.toml"));
        assert!(err(&format!("{MIN}[limits]\ndepth = 2\n"))
            .contains("limits.depth: must be at least 8"));
        assert!(err(&format!("{MIN}[limits]\noutbox = -1\n"))
            .contains("limits.outbox: must be at least 1, got -1"));
    }

    #[test]
    fn resource_caps_are_validated_and_named() {
        let c = parse(&format!(
            "{MIN}[limits]\noutbound_streams = 3\npairs_per_stream = 2\nqueue_bytes = 20000\n\
             queued_bytes = 40000\nbounce_payload = 0\nbounce_payload_component = 10\n\
             component_connections = 4\ncomponent_connections_per_ip = 2\n\
             component_failures = 3\ncomponent_failure_window = 9\nstanza_size = 20000\n"
        ))
        .unwrap();
        let l = &c.limits;
        assert_eq!(
            (
                l.outbound_streams,
                l.pairs_per_stream,
                l.queue_bytes,
                l.queued_bytes
            ),
            (3, 2, 20_000, 40_000)
        );
        assert_eq!((l.bounce_payload, l.bounce_payload_component), (0, 10));
        assert_eq!(
            (l.component_connections, l.component_connections_per_ip),
            (4, 2)
        );
        assert_eq!(l.component_failures, 3);
        assert_eq!(l.component_failure_window, Duration::from_secs(9));
        // One stanza must fit in a pair's queue, and a pair's queue in the total.
        assert!(err(&format!("{MIN}[limits]\nqueue_bytes = 9999\n"))
            .contains("limits.queue_bytes: must be at least 524288"));
        assert!(err(&format!(
            "{MIN}[limits]\nqueue_bytes = 600000\nqueued_bytes = 500000\n"
        ))
        .contains("limits.queued_bytes: must be at least 600000"));
        // A larger stanza_size raises the default queue_bytes with it.
        let big = parse(&format!("{MIN}[limits]\nstanza_size = 16777216\n")).unwrap();
        assert_eq!(big.limits.queue_bytes, 16 << 20);
        assert_eq!(big.limits.queued_bytes, 64 << 20);
        for key in [
            "outbound_streams",
            "pairs_per_stream",
            "component_connections",
            "component_connections_per_ip",
            "component_failures",
            "component_failure_window",
        ] {
            let e = parse(&format!("{MIN}[limits]\n{key} = 0\n")).unwrap_err();
            assert_eq!(e.key(), format!("limits.{key}"), "{e}");
        }
        assert_eq!(
            parse(&format!("{MIN}[limits]\nbounce_payload = -1\n"))
                .unwrap_err()
                .key(),
            "limits.bounce_payload"
        );
    }

    #[test]
    fn pre_auth_stanza_size_is_bounded_by_stanza_size() {
        let c = parse(&format!("{MIN}[limits]\npre_auth_stanza_size = 8192\n")).unwrap();
        assert_eq!(c.limits.pre_auth_stanza_size, 8192);
        assert_eq!(c.limits.stanza_size, 524_288);
        let e = parse(&format!(
            "{MIN}[limits]\nstanza_size = 20000\npre_auth_stanza_size = 30000\n"
        ))
        .unwrap_err();
        assert_eq!(e.key(), "limits.pre_auth_stanza_size");
        assert!(
            e.message()
                .contains("must be at most limits.stanza_size (20000), got 30000"),
            "{e}"
        );
        assert!(err(&format!("{MIN}[limits]\npre_auth_stanza_size = 100\n"))
            .contains("limits.pre_auth_stanza_size: must be at least 4096, got 100"));
        // A stanza_size below the default pre-auth size lowers the default with it.
        let c = parse(&format!("{MIN}[limits]\nstanza_size = 10000\n")).unwrap();
        assert_eq!(c.limits.pre_auth_stanza_size, 10_000);
    }

    #[test]
    fn unknown_keys_are_errors_with_key_and_position() {
        let e = parse(&format!("{MIN}[limits]\nstanza_sise = 100000\n")).unwrap_err();
        assert_eq!(e.key(), "limits.stanza_sise", "{e}");
        assert!(e.message().contains("unknown key `stanza_sise`"), "{e}");
        assert!(e.message().contains("stanza_size"), "{e}");
        assert_eq!(e.position(), Some((3, 1)), "{e}");

        let e = parse(&format!("domian = \"x\"\n{MIN}")).unwrap_err();
        assert_eq!(e.key(), "domian", "{e}");

        let e = parse(&format!(
            "{MIN}[[component]]\ndomain = \"c.test\"\nsecert = \"x\"\n"
        ))
        .unwrap_err();
        assert!(e.key().starts_with("component[0]"), "{e}");
        assert!(e.to_string().contains("secert"), "{e}");

        let e = parse(&format!("{MIN}[tls.peers.\"b.test\"]\nverfy = \"pkix\"\n")).unwrap_err();
        assert_eq!(e.key(), "tls.peers.\"b.test\".verfy", "{e}");
    }

    #[test]
    fn common_mistakes_get_a_hint() {
        let e = err(&format!(
            "{MIN}[component]\ndomain = \"c.test\"\nsecret = \"s\"\n"
        ));
        assert!(
            e.contains("component: invalid type: map, expected an array"),
            "{e}"
        );
        assert!(e.contains("[[component]]"), "{e}");
        let e = err(&format!("{MIN}[tls.peers.b.test]\nverify = \"pkix\"\n"));
        assert!(e.contains("quote domain names"), "{e}");
    }

    #[test]
    fn type_errors_name_the_key() {
        let e = parse(&format!("{MIN}[timeouts]\ndns = \"10\"\n")).unwrap_err();
        assert_eq!(e.key(), "timeouts.dns", "{e}");
        assert!(e.message().contains("expected an integer"), "{e}");
        assert_eq!(e.position().map(|p| p.0), Some(3), "{e}");
        let e = parse(&format!("{MIN}[[component]]\ndomain = \"c.test\"\n")).unwrap_err();
        assert!(e.key().starts_with("component"), "{e}");
        assert!(e.message().contains("missing key `secret`"), "{e}");
    }

    #[test]
    fn syntax_errors_keep_line_and_column() {
        let e = parse("domains = [\"a.test\"]\n\n[limits\n").unwrap_err();
        assert_eq!(e.position().map(|p| p.0), Some(3), "{e}");
        assert!(e.to_string().starts_with("etc/x.toml: "), "{e}");
        assert!(e.to_string().contains("(line 3, column"), "{e}");
        assert!(e.message().starts_with("TOML syntax error: "), "{e}");
        assert_eq!(e.key(), "");
    }

    #[test]
    fn domains_required_unique_and_valid() {
        assert!(err("").contains("etc/x.toml: domains: missing"));
        assert!(err("domains = []").contains("domains: must list at least one"));
        let e = err("domains = [\"a.test\", \"A.test.\"]");
        assert!(e.contains("domains[1]: a.test is listed twice"), "{e}");
        let e = err("domains = [\"a..test\"]");
        assert!(e.contains("domains[0]: invalid domain"), "{e}");
    }

    #[test]
    fn components_may_share_a_hosted_domain_but_not_each_other() {
        let ok = format!(
            "{MIN}[[component]]\ndomain = \"a.test\"\nsecret = \"s\"\n\
             [[component]]\ndomain = \"echo.a.test\"\nsecret = \"t\"\n"
        );
        let c = parse(&ok).unwrap();
        assert_eq!(c.local_domains(), vec![d("a.test"), d("echo.a.test")]);
        assert!(c.is_local(&d("echo.a.test")) && c.is_local(&d("A.TEST")));
        assert!(!c.is_local(&d("b.test")));

        let dup = format!(
            "{MIN}[[component]]\ndomain = \"e.test\"\nsecret = \"s\"\n\
             [[component]]\ndomain = \"E.test\"\nsecret = \"t\"\n"
        );
        let e = err(&dup);
        assert!(
            e.contains("component[1].domain: e.test is already the domain of component[0]"),
            "{e}"
        );
        let e = err(&format!(
            "{MIN}[[component]]\ndomain = \"e.test\"\nsecret = \"\"\n"
        ));
        assert!(e.contains("component[0].secret: must not be empty"), "{e}");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = parse(&format!(
            "dialback_secret = \"hunter2-dialback\"\n{MIN}\
             [[component]]\ndomain = \"e.test\"\nsecret = \"hunter2-component\"\n"
        ))
        .unwrap();
        assert_eq!(c.dialback_secret.as_deref(), Some("hunter2-dialback"));
        let dbg = format!("{c:?} {:?} {:#?}", c.components[0], c);
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
        let e = err(&format!("dialback_secret = \"\"\n{MIN}"));
        assert!(e.contains("dialback_secret: must not be empty"), "{e}");
    }

    #[test]
    fn listen_addresses_parse_and_do_not_collide() {
        let c = parse(&format!(
            "{MIN}[listen]\ns2s = [\"127.0.0.1:5269\", \"[::1]:5269\"]\ncomponent = \"127.0.0.1:6000\"\n"
        ))
        .unwrap();
        assert_eq!(c.listen.s2s[1], "[::1]:5269".parse().unwrap());
        let e = err(&format!("{MIN}[listen]\ns2s = [\"localhost:5269\"]\n"));
        assert!(
            e.contains("listen.s2s[0]: must be an IP address and port"),
            "{e}"
        );
        let e = err(&format!("{MIN}[listen]\ns2s = []\n"));
        assert!(e.contains("listen.s2s: must list at least one"), "{e}");
        let e = err(&format!("{MIN}[listen]\ncomponent = \"0.0.0.0:5269\"\n"));
        assert!(
            e.contains("listen.component: 0.0.0.0:5269 is already used by listen.s2s[0]"),
            "{e}"
        );
        let e = err(&format!("{MIN}[listen]\ndirect_tls = [\"0.0.0.0:5270\"]\n"));
        assert!(e.contains("listen.direct_tls: needs TLS"), "{e}");
    }

    #[test]
    fn nameservers_default_to_port_53() {
        let c = parse(&format!(
            "{MIN}[dns]\nnameservers = [\"127.0.0.1\", \"127.0.0.1:5353\", \"::1\", \"[::1]:53\"]\n"
        ))
        .unwrap();
        let want: Vec<SocketAddr> = ["127.0.0.1:53", "127.0.0.1:5353", "[::1]:53", "[::1]:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(c.nameservers, want);
        let e = err(&format!("{MIN}[dns]\nnameservers = [\"ns1.test\"]\n"));
        assert!(
            e.contains("dns.nameservers[0]: must be an IP address"),
            "{e}"
        );
    }

    #[test]
    fn allow_networks_are_cidrs_and_errors_name_the_key() {
        let c = parse(&format!(
            "{MIN}[dns]\nallow_networks = [\"127.0.0.0/8\", \"::1/128\", \"10.0.0.5\", \"fd00::/8\"]\n"
        ))
        .unwrap();
        let want: Vec<Cidr> = ["127.0.0.0/8", "::1/128", "10.0.0.5/32", "fd00::/8"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(c.allow_networks, want);
        for (bad, why) in [
            ("\"loopback\"", "is not a network"),
            ("\"127.0.0.0/33\"", "prefix length must be 0 to 32"),
            (
                "\"127.0.0.1/8\"",
                "host bits set; the network is 127.0.0.0/8",
            ),
            ("\"::1/129\"", "prefix length must be 0 to 128"),
        ] {
            let e = err(&format!(
                "{MIN}[dns]\nallow_networks = [\"10.0.0.0/8\", {bad}]\n"
            ));
            assert!(
                e.contains("dns.allow_networks[1]: ") && e.contains(why),
                "{e}"
            );
        }
        let e = err(&format!(
            "{MIN}[dns]\nallow_networks = [\"10.0.0.0/8\", \"10.0.0.0/8\"]\n"
        ));
        assert!(
            e.contains("dns.allow_networks[1]: 10.0.0.0/8 is listed twice"),
            "{e}"
        );
        let e = err(&format!("{MIN}[dns]\nallow_networks = \"10.0.0.0/8\"\n"));
        assert!(e.contains("allow_networks"), "{e}");
    }

    #[test]
    fn routes_take_names_ips_and_default_port() {
        let c = parse(&format!(
            "{MIN}[routes]\n\"b.test\" = \"127.0.0.2:5269\"\n\"c.test\" = \"Relay.Example\"\n\
             \"d.test\" = \"[::1]:5270\"\n\"e.test\" = \"::1\"\n\"f.test\" = \"[::2]\"\n"
        ))
        .unwrap();
        let r = |s: &str| c.routes[&d(s)].clone();
        let sr = |h: &str, p| StaticRoute {
            host: h.into(),
            port: p,
        };
        assert_eq!(r("b.test"), sr("127.0.0.2", 5269));
        assert_eq!(r("c.test"), sr("relay.example", 5269));
        assert_eq!(r("d.test"), sr("::1", 5270));
        assert_eq!(r("e.test"), sr("::1", 5269));
        assert_eq!(r("f.test"), sr("::2", 5269));
        let e = err(&format!("{MIN}[routes]\n\"b.test\" = \"127.0.0.2:0\"\n"));
        assert!(e.contains("routes.\"b.test\": bad port"), "{e}");
        let e = err(&format!("{MIN}[routes]\n\"b..test\" = \"127.0.0.2\"\n"));
        assert!(e.contains("routes.\"b..test\": invalid domain"), "{e}");
        let e = err(&format!("{MIN}[routes]\n\"a.test\" = \"127.0.0.2\"\n"));
        assert!(e.contains("is a local domain"), "{e}");
        let e = err(&format!("{MIN}[routes]\nb.test = \"127.0.0.2\"\n"));
        assert!(e.contains("quote domain names"), "{e}");
    }

    #[test]
    fn timeouts_are_whole_positive_seconds() {
        let c = parse(&format!("{MIN}[timeouts]\nnegotiation = 30\nclose = 1\n")).unwrap();
        assert_eq!(c.timeouts.negotiation, Duration::from_secs(30));
        assert_eq!(c.timeouts.close, Duration::from_secs(1));
        let e = err(&format!("{MIN}[timeouts]\nconnect = 0\n"));
        assert!(
            e.contains("timeouts.connect: must be at least 1 (seconds), got 0"),
            "{e}"
        );
        let e = err(&format!("{MIN}[timeouts]\nidle = 100\nkeepalive = 100\n"));
        assert!(
            e.contains("timeouts.keepalive: must be less than timeouts.idle (100)"),
            "{e}"
        );
        let e = err(&format!("{MIN}[timeouts]\ndns = 99999999\n"));
        assert!(e.contains("timeouts.dns: must be at most"), "{e}");
    }

    #[test]
    fn tls_defaults_follow_the_certificates() {
        let base = format!("{MIN}[tls]\ncertificate = \"certs/a.pem\"\nkey = \"/k/a.key\"\n");
        let c = Config::parse(&base, Path::new("/etc/dialbackd/dialbackd.toml")).unwrap();
        assert!(c.tls.enabled && c.tls.require_encryption);
        let pair = c.tls.default_cert.as_ref().unwrap();
        assert_eq!(pair.certificate, Path::new("/etc/dialbackd/certs/a.pem"));
        assert_eq!(pair.key, Path::new("/k/a.key"));
        assert_eq!(c.tls.cert_for(&d("a.test")), Some(pair));

        let c = parse(&format!("{base}require_encryption = false\n")).unwrap();
        assert!(c.tls.enabled && !c.tls.require_encryption);
        let c = parse(&format!("{base}enabled = false\n")).unwrap();
        assert!(!c.tls.enabled && !c.tls.require_encryption);

        let e = err(&format!("{MIN}[tls]\nenabled = true\n"));
        assert!(e.contains("etc/x.toml: tls.certificate: missing"), "{e}");
        let e = err(&format!("{MIN}[tls]\nrequire_encryption = true\n"));
        assert!(e.contains("tls.require_encryption: cannot be true"), "{e}");
        let e = err(&format!("{MIN}[tls]\ncertificate = \"a.pem\"\n"));
        assert!(e.contains("tls.key: missing"), "{e}");
        let e = err(&format!("{MIN}[tls]\ncertificate = \"\"\nkey = \"k\"\n"));
        assert!(e.contains("tls.certificate: must not be empty"), "{e}");
        let e = err(&format!("{MIN}[tls]\nverify = \"pkix\"\n"));
        assert!(e.contains("tls.verify: \"pkix\" needs TLS"), "{e}");
        let e = err(&format!("{base}verify = \"PKIX-ish\"\n"));
        assert!(
            e.contains("tls.verify: must be \"dialback\" or \"pkix\""),
            "{e}"
        );
    }

    #[test]
    fn per_domain_certificates_are_for_local_domains() {
        let text =
            format!("{MIN}[tls.domains.\"a.test\"]\ncertificate = \"a.pem\"\nkey = \"a.key\"\n");
        let c = Config::parse(&text, Path::new("conf/x.toml")).unwrap();
        assert!(c.tls.enabled && c.tls.default_cert.is_none());
        assert_eq!(c.tls.certs[&d("a.test")].key, Path::new("conf/a.key"));
        let e = err(&format!(
            "{MIN}[tls.domains.\"z.test\"]\ncertificate = \"a.pem\"\nkey = \"a.key\"\n"
        ));
        assert!(
            e.contains("tls.domains.\"z.test\": z.test is neither"),
            "{e}"
        );
        let e = err(&format!(
            "{MIN}[tls.domains.\"a.test\"]\ncertificate = \"a.pem\"\n"
        ));
        assert!(
            e.contains("tls.domains.\"a.test\"") && e.contains("missing key `key`"),
            "{e}"
        );
    }

    #[test]
    fn sasl01_auth_external_needs_a_certificate_check_and_names_the_key() {
        let tls = "[tls]\ncertificate = \"a.pem\"\nkey = \"a.key\"\n";
        let c = parse(&format!(
            "{MIN}{tls}[tls.peers.\"b.test\"]\nverify = \"pkix\"\nauth = \"external\"\n\
             [tls.peers.\"p.test\"]\nauth = \"external\"\n\
             fingerprints = [\"sha256:{}\"]\n",
            "00".repeat(32)
        ))
        .unwrap();
        let t = &c.tls;
        assert_eq!(t.auth, AuthMode::Dialback, "the default: dialback allowed");
        assert!(t.external_required_for(&d("b.test")));
        assert!(
            t.external_required_for(&d("p.test")),
            "pins prove the identity too"
        );
        assert!(!t.external_required_for(&d("other.test")));
        assert!(t.require_encryption_for(&d("p.test")));

        let c = parse(&format!(
            "{MIN}{tls}auth = \"external\"\nverify = \"pkix\"\n\
             [tls.peers.\"old.test\"]\nauth = \"dialback\"\n"
        ))
        .unwrap();
        assert!(c.tls.external_required_for(&d("b.test")));
        assert!(!c.tls.external_required_for(&d("old.test")));

        let e = err(&format!("{MIN}{tls}auth = \"sasl\"\n"));
        assert!(
            e.contains("tls.auth: must be \"dialback\" or \"external\""),
            "{e}"
        );
        let e = err(&format!("{MIN}{tls}auth = \"external\"\n"));
        assert!(e.contains("tls.auth: \"external\" needs TLS"), "{e}");
        let e = err(&format!(
            "{MIN}{tls}[tls.peers.\"b.test\"]\nauth = \"external\"\n"
        ));
        assert!(
            e.contains("tls.peers.\"b.test\".auth: \"external\" needs"),
            "{e}"
        );
        let e = err(&format!(
            "{MIN}{tls}auth = \"external\"\nverify = \"pkix\"\n\
             [tls.peers.\"b.test\"]\nverify = \"dialback\"\n"
        ));
        assert!(
            e.contains("tls.peers.\"b.test\".verify: \"external\" needs"),
            "{e}"
        );
    }

    #[test]
    fn peer_policies_override_the_defaults() {
        let pin_hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let pin_colons: String = (0..32)
            .map(|i| &pin_hex[2 * i..2 * i + 2])
            .collect::<Vec<_>>()
            .join(":");
        let text = format!(
            "{MIN}[tls]\ncertificate = \"a.pem\"\nkey = \"a.key\"\n\
             [tls.peers.\"old.test\"]\nrequire_encryption = false\n\
             [tls.peers.\"b.test\"]\nverify = \"pkix\"\n\
             fingerprints = [\"sha256:{pin_hex}\", \"SHA256:{pin_colons}\"]\n"
        );
        let c = parse(&text).unwrap();
        let t = &c.tls;
        assert!(t.require_encryption_for(&d("b.test")));
        assert!(!t.require_encryption_for(&d("old.test")));
        assert!(t.require_encryption_for(&d("other.test")));
        assert_eq!(t.verify_for(&d("b.test")), CertMode::Pkix);
        assert_eq!(t.verify_for(&d("old.test")), CertMode::Dialback);
        let pins = t.pins_for(&d("b.test"));
        assert_eq!(pins.len(), 2);
        assert_eq!(pins[0], pins[1]);
        assert_eq!(pins[0][..4], [0x00, 0x11, 0x22, 0x33]);
        assert_eq!(pins[0][31], 0xff);
        assert!(t.pins_for(&d("old.test")).is_empty());

        for bad in [
            "sha256:00",
            "md5:00",
            "sha256:zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        ] {
            let e = err(&format!(
                "{MIN}[tls]\ncertificate = \"a.pem\"\nkey = \"a.key\"\n\
                 [tls.peers.\"b.test\"]\nfingerprints = [\"{bad}\"]\n"
            ));
            assert!(
                e.contains("tls.peers.\"b.test\".fingerprints[0]: must be \"sha256:\""),
                "{e}"
            );
        }
        let e = err(&format!(
            "{MIN}[tls.peers.\"b.test\"]\nrequire_encryption = true\n"
        ));
        assert!(
            e.contains("tls.peers.\"b.test\".require_encryption: needs TLS"),
            "{e}"
        );
        let e = err(&format!(
            "{MIN}[tls.peers.\"b.test\"]\nfingerprints = [\"sha256:{pin_hex}\"]\n"
        ));
        assert!(
            e.contains("tls.peers.\"b.test\".fingerprints: needs TLS"),
            "{e}"
        );
    }

    #[test]
    fn load_reads_a_file_and_resolves_paths_next_to_it() {
        let dir =
            std::env::temp_dir().join(format!("dialbackd-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("dialbackd.toml");
        std::fs::write(
            &file,
            format!("{MIN}[tls]\ncertificate = \"a.pem\"\nkey = \"a.key\"\nca_file = \"ca.pem\"\n"),
        )
        .unwrap();
        let c = Config::load(&file);
        let missing = Config::load(&dir.join("nope.toml"));
        std::fs::remove_dir_all(&dir).unwrap();
        let c = c.unwrap();
        assert_eq!(c.path, file);
        assert_eq!(c.tls.default_cert.unwrap().certificate, dir.join("a.pem"));
        assert_eq!(c.tls.ca_file, Some(dir.join("ca.pem")));
        let e = missing.unwrap_err();
        assert!(
            e.to_string().contains("nope.toml: cannot read the file"),
            "{e}"
        );
        assert_eq!(e.key(), "");
    }

    #[test]
    fn status_listener_is_loopback_unless_remote_is_allowed() {
        // An empty section turns it on at the default address.
        let c = parse(&format!("{MIN}[status]\n")).unwrap();
        let st = c.status.unwrap();
        assert_eq!(st.listen, "127.0.0.1:5280".parse().unwrap());
        assert!(!st.allow_remote);
        let c = parse(&format!("{MIN}[status]\nlisten = \"[::1]:9100\"\n")).unwrap();
        assert_eq!(c.status.unwrap().listen, "[::1]:9100".parse().unwrap());
        // Anything but loopback is refused without allow_remote, the unspecified address too.
        for addr in [
            "0.0.0.0:5280",
            "192.0.2.1:5280",
            "[::]:5280",
            "[2001:db8::1]:5280",
        ] {
            let e = err(&format!("{MIN}[status]\nlisten = \"{addr}\"\n"));
            assert!(
                e.contains("status.listen") && e.contains("not a loopback address"),
                "{addr}: {e}"
            );
            assert!(e.contains("status.allow_remote = true"), "{e}");
            let c = parse(&format!(
                "{MIN}[status]\nlisten = \"{addr}\"\nallow_remote = true\n"
            ))
            .unwrap();
            assert_eq!(c.status.unwrap().listen, addr.parse().unwrap());
        }
    }

    #[test]
    fn status_section_errors_name_the_key() {
        let e = err(&format!("{MIN}[status]\nlisten = \"localhost:5280\"\n"));
        assert!(
            e.contains("status.listen: must be an IP address and port"),
            "{e}"
        );
        let e = err(&format!("{MIN}[status]\nlisten = \"127.0.0.1\"\n"));
        assert!(e.contains("status.listen"), "{e}");
        let e = err(&format!("{MIN}[status]\nport = 5280\n"));
        assert!(e.contains("port"), "an unknown key is an error: {e}");
        let e = err(&format!("{MIN}[status]\nallow_remote = \"yes\"\n"));
        assert!(e.contains("allow_remote"), "{e}");
        // It cannot share an address with another listener.
        let e = err(&format!(
            "{MIN}[listen]\ns2s = [\"127.0.0.1:5269\"]\n[status]\nlisten = \"127.0.0.1:5269\"\n"
        ));
        assert!(
            e.contains("status.listen") && e.contains("already used"),
            "{e}"
        );
    }

    /// `[handlers] version` (XEP-0092) is off unless the file turns it on; a misspelt key or a
    /// value that is not a boolean is an error naming it.
    #[test]
    fn version_handler_is_off_by_default() {
        assert!(!parse(MIN).unwrap().handlers.version);
        assert!(
            !parse(&format!("{MIN}[handlers]\n"))
                .unwrap()
                .handlers
                .version
        );
        assert!(
            parse(&format!("{MIN}[handlers]\nversion = true\n"))
                .unwrap()
                .handlers
                .version
        );
        let e = err(&format!("{MIN}[handlers]\nversion = \"yes\"\n"));
        assert!(e.contains("version"), "{e}");
        let e = err(&format!("{MIN}[handlers]\nversoin = true\n"));
        assert!(e.contains("versoin"), "an unknown key is an error: {e}");
    }

    /// `[s2s] bidi` (XEP-0288) is on unless the file turns it off; a value that is not a
    /// boolean, or a misspelt key, is an error naming it.
    #[test]
    fn bidi_is_on_by_default() {
        assert!(parse(MIN).unwrap().s2s.bidi);
        assert!(parse(&format!("{MIN}[s2s]\n")).unwrap().s2s.bidi);
        assert!(
            !parse(&format!("{MIN}[s2s]\nbidi = false\n"))
                .unwrap()
                .s2s
                .bidi
        );
        let e = err(&format!("{MIN}[s2s]\nbidi = \"yes\"\n"));
        assert!(e.contains("bidi"), "{e}");
        let e = err(&format!("{MIN}[s2s]\nbdi = true\n"));
        assert!(e.contains("bdi"), "an unknown key is an error: {e}");
        // The example documents the default: uncommented, it changes nothing.
        let example = include_str!("../etc/dialbackd.toml");
        assert!(
            example.contains("\n[s2s]\n"),
            "the example has an [s2s] section"
        );
        let text = example.replace("\n# bidi = true\n", "\nbidi = true\n");
        assert_ne!(text, example, "the example documents `bidi`");
        assert_eq!(parse(&text).unwrap().s2s, S2s::default());
    }
}
