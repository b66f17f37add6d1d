//! Which remote domains we federate with: the `[policy]` allow and deny lists.
//!
//! In scope: a list entry ([`DomainPattern`]: one domain, or `*.suffix` for every subdomain of
//! `suffix`) and the decision for a remote domain ([`FederationPolicy::check`]): a domain that
//! matches `deny` is refused; otherwise, when `allow` is not empty, a domain that matches none
//! of its entries is refused; everyone else is allowed. Out of scope: where the decision is
//! applied (the inbound core answers a refused `<db:result/>` with the dialback error
//! `forbidden`, the router bounces stanzas for a refused domain with `not-allowed` without
//! dialling) and our own domains, which the lists never cover.

use crate::domain::Domain;
use std::fmt;

/// One entry of an allow or deny list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainPattern {
    /// Exactly this domain.
    Exact(Domain),
    /// `*.suffix`: every subdomain of `suffix`, at any depth, but not `suffix` itself.
    Subdomains(Domain),
}

impl DomainPattern {
    /// Parse `example.org` or `*.example.org`.
    ///
    /// # Errors
    /// Not a domain, a wildcard anywhere but as the whole first label, or a wildcard over an IP
    /// literal; the message says which.
    pub fn parse(s: &str) -> Result<DomainPattern, String> {
        let (wild, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if name.contains('*') {
            return Err(format!(
                "{s:?}: a wildcard is only allowed as \"*.\" at the start (\"*.example.org\")"
            ));
        }
        let domain = Domain::parse(name).map_err(|e| e.to_string())?;
        if !wild {
            return Ok(DomainPattern::Exact(domain));
        }
        if domain.as_str().starts_with('[') || domain.as_str().parse::<std::net::Ipv4Addr>().is_ok()
        {
            return Err(format!("{s:?}: an IP address has no subdomains"));
        }
        Ok(DomainPattern::Subdomains(domain))
    }

    /// True when `d` is covered by this entry.
    pub fn matches(&self, d: &Domain) -> bool {
        match self {
            DomainPattern::Exact(e) => e == d,
            DomainPattern::Subdomains(suffix) => {
                let (d, suffix) = (d.as_str(), suffix.as_str());
                d.len() > suffix.len() + 1
                    && d.ends_with(suffix)
                    && d.as_bytes()[d.len() - suffix.len() - 1] == b'.'
            }
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Exact(d) => write!(f, "{d}"),
            DomainPattern::Subdomains(d) => write!(f, "*.{d}"),
        }
    }
}

/// Why a remote domain is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It matches an entry of `policy.deny`.
    Denied,
    /// `policy.allow` is not empty and it matches none of its entries.
    NotAllowed,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Denied => "it is listed in policy.deny",
            Refusal::NotAllowed => "it is not listed in policy.allow",
        })
    }
}

/// `[policy]`: the remote domains we exchange stanzas with. The default (both lists empty)
/// allows every domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FederationPolicy {
    /// When not empty, only the domains these entries cover (and not denied) are allowed.
    pub allow: Vec<DomainPattern>,
    /// Domains refused whatever `allow` says.
    pub deny: Vec<DomainPattern>,
}

impl FederationPolicy {
    /// `Ok` when we federate with the remote domain `d`; why not otherwise.
    ///
    /// # Errors
    /// `d` is denied, or not allowed.
    pub fn check(&self, d: &Domain) -> Result<(), Refusal> {
        if self.deny.iter().any(|p| p.matches(d)) {
            return Err(Refusal::Denied);
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|p| p.matches(d)) {
            return Err(Refusal::NotAllowed);
        }
        Ok(())
    }

    /// True when neither list restricts anything.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Domain {
        Domain::parse(s).unwrap()
    }

    fn policy(allow: &[&str], deny: &[&str]) -> FederationPolicy {
        let list = |l: &[&str]| l.iter().map(|s| DomainPattern::parse(s).unwrap()).collect();
        FederationPolicy {
            allow: list(allow),
            deny: list(deny),
        }
    }

    #[test]
    fn a_wildcard_covers_subdomains_at_any_depth_but_not_the_domain_itself() {
        let p = DomainPattern::parse("*.Example.org.").unwrap();
        assert_eq!(p.to_string(), "*.example.org", "normalised like any domain");
        for yes in ["a.example.org", "x.y.example.org"] {
            assert!(p.matches(&d(yes)), "{yes}");
        }
        for no in [
            "example.org",
            "badexample.org",
            "org",
            "example.org.evil",
            "a.example.net",
        ] {
            assert!(!p.matches(&d(no)), "{no}");
        }
        let exact = DomainPattern::parse("Example.org").unwrap();
        assert!(exact.matches(&d("example.org")));
        assert!(!exact.matches(&d("a.example.org")));
    }

    #[test]
    fn bad_entries_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("*", "wildcard"),
            ("*.", "empty"),
            ("a.*.org", "wildcard"),
            ("*example.org", "wildcard"),
            ("*.*.org", "wildcard"),
            ("*.[::1]", "IP address"),
            ("*.192.0.2.1", "IP address"),
            ("exa mple.org", "character"),
        ] {
            let e = DomainPattern::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn deny_wins_and_an_empty_allow_list_allows_everyone_else() {
        let open = FederationPolicy::default();
        assert!(open.is_open());
        assert_eq!(open.check(&d("anyone.example")), Ok(()));

        let deny = policy(&[], &["spam.example", "*.spam.example"]);
        assert_eq!(deny.check(&d("spam.example")), Err(Refusal::Denied));
        assert_eq!(deny.check(&d("x.spam.example")), Err(Refusal::Denied));
        assert_eq!(deny.check(&d("ham.example")), Ok(()));

        let allow = policy(&["friend.example", "*.corp.example"], &["bad.corp.example"]);
        assert_eq!(allow.check(&d("friend.example")), Ok(()));
        assert_eq!(allow.check(&d("a.corp.example")), Ok(()));
        assert_eq!(allow.check(&d("bad.corp.example")), Err(Refusal::Denied));
        assert_eq!(allow.check(&d("corp.example")), Err(Refusal::NotAllowed));
        assert_eq!(
            allow.check(&d("stranger.example")),
            Err(Refusal::NotAllowed)
        );
    }
}
