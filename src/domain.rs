//! `Domain`: a validated, normalised XMPP domainpart (RFC 7622 §3.2), and JID helpers.
//!
//! In scope: ASCII domain names (lower-cased, one trailing dot removed, label syntax checked) and
//! IP literals, and splitting a JID string into its parts. Out of scope: internationalised names
//! (we build hickory-proto with the ASCII-only IDNA adapter, so U-labels are refused with a clear
//! error rather than half-supported).
//!
//! `Domain` is the only type in dialbackd that carries a host name: everything that routes,
//! verifies or looks up a domain takes one, so a name is validated exactly once, where it enters.

use std::fmt;

/// The longest domainpart RFC 7622 allows, in octets.
const MAX_DOMAIN_LEN: usize = 1023;
/// The longest DNS label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// A validated, lower-case XMPP domainpart.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

/// Why a string is not a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainError {
    input: String,
    reason: &'static str,
}

impl fmt::Display for DomainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid domain {:?}: {}", self.input, self.reason)
    }
}

impl std::error::Error for DomainError {}

impl Domain {
    /// Validate and normalise `input`.
    ///
    /// # Errors
    /// When `input` is empty, too long, not ASCII, or has an empty or malformed label.
    pub fn parse(input: &str) -> Result<Domain, DomainError> {
        let err = |reason| DomainError {
            input: input.chars().take(80).collect(),
            reason,
        };
        let s = input.strip_suffix('.').unwrap_or(input);
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.len() > MAX_DOMAIN_LEN {
            return Err(err("longer than 1023 octets"));
        }
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            return match inner.parse::<std::net::Ipv6Addr>() {
                Ok(ip) => Ok(Domain(format!("[{ip}]"))),
                Err(_) => Err(err("bad IPv6 literal")),
            };
        }
        if !s.is_ascii() {
            return Err(err("non-ASCII domains are not supported"));
        }
        let lower = s.to_ascii_lowercase();
        for label in lower.split('.') {
            if label.is_empty() {
                return Err(err("empty label"));
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(err("label longer than 63 octets"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(err("label has a character other than a-z, 0-9, '-', '_'"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(err("label starts or ends with '-'"));
            }
        }
        Ok(Domain(lower))
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Domain {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Domain, DomainError> {
        Domain::parse(s)
    }
}

/// A parsed JID: `[node@]domain[/resource]` (RFC 7622), with the domain validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jid {
    /// The localpart, if any (not validated beyond being non-empty).
    pub node: Option<String>,
    /// The domainpart.
    pub domain: Domain,
    /// The resourcepart, if any.
    pub resource: Option<String>,
}

impl Jid {
    /// Split and validate a JID string.
    ///
    /// # Errors
    /// When the domainpart is invalid or a present localpart/resourcepart is empty.
    pub fn parse(s: &str) -> Result<Jid, DomainError> {
        let bad = |reason| DomainError {
            input: s.chars().take(80).collect(),
            reason,
        };
        let (bare, resource) = match s.split_once('/') {
            Some((_, "")) => return Err(bad("empty resourcepart")),
            Some((b, r)) => (b, Some(r.to_string())),
            None => (s, None),
        };
        let (node, domain) = match bare.split_once('@') {
            Some(("", _)) => return Err(bad("empty localpart")),
            Some((n, d)) => (Some(n.to_string()), d),
            None => (None, bare),
        };
        if node.as_deref().is_some_and(|n| n.len() > 1023)
            || resource.as_deref().is_some_and(|r| r.len() > 1023)
        {
            return Err(bad("part longer than 1023 octets"));
        }
        Ok(Jid {
            node,
            domain: Domain::parse(domain)?,
            resource,
        })
    }

    /// True when the JID is a bare domain (no localpart, no resource).
    pub fn is_domain(&self) -> bool {
        self.node.is_none() && self.resource.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_trailing_dot() {
        assert_eq!(Domain::parse("A.Example.").unwrap().as_str(), "a.example");
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            ".",
            "a..b",
            "-a.b",
            "a-.b",
            "a b",
            "ex ample.org",
            "bücher.example",
            "a/b",
        ] {
            assert!(Domain::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Domain::parse(&"a".repeat(64)).is_err());
    }

    #[test]
    fn accepts_ip_literals() {
        assert_eq!(Domain::parse("127.0.0.1").unwrap().as_str(), "127.0.0.1");
        assert_eq!(Domain::parse("[::1]").unwrap().as_str(), "[::1]");
    }

    #[test]
    fn parses_jids() {
        let j = Jid::parse("romeo@Montague.example/orchard").unwrap();
        assert_eq!(j.node.as_deref(), Some("romeo"));
        assert_eq!(j.domain.as_str(), "montague.example");
        assert_eq!(j.resource.as_deref(), Some("orchard"));
        assert!(Jid::parse("example.org").unwrap().is_domain());
        // A resource may contain '@' and '/'.
        let j = Jid::parse("example.org/a@b/c").unwrap();
        assert_eq!(j.resource.as_deref(), Some("a@b/c"));
        assert!(Jid::parse("@example.org").is_err());
        assert!(Jid::parse("a@example.org/").is_err());
        assert!(Jid::parse("a@").is_err());
    }
}
