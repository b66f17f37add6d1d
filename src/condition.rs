//! The defined error conditions of XMPP, as enums: [`StreamCondition`] (RFC 6120 §4.9.3) for
//! stream errors, [`StanzaCondition`] (RFC 6120 §8.3.3, and the dialback errors of XEP-0220
//! §2.5) for stanza errors and dialback errors, and [`ErrorType`] (RFC 6120 §8.3.2) for the
//! `type` of a stanza error.
//!
//! In scope: the names on the wire (`as_str`, `Display`), reading a name back (`parse`), and
//! the error type we give each stanza condition. Out of scope: building the error elements
//! (see `stream::StreamError` and `stanza::error_element`).

use std::fmt;

/// Defines a condition enum: each variant with its doc and its XMPP name, `ALL`, `as_str`,
/// `parse` and `Display`.
macro_rules! conditions {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $xmpp:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $name {
            /// Every condition, in the order the specification lists them.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The XMPP name: the local name of the condition element.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $xmpp, )*
                }
            }

            /// The condition named `name` (an element's local name); `None` for any other name.
            pub fn parse(name: &str) -> Option<$name> {
                match name {
                    $( $xmpp => Some($name::$variant), )*
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

conditions! {
    /// A stream error condition (RFC 6120 §4.9.3, standards.md ERR-02), in
    /// `urn:ietf:params:xml:ns:xmpp-streams`.
    StreamCondition {
        /// §4.9.3.1: the entity sent XML that cannot be processed.
        BadFormat = "bad-format",
        /// §4.9.3.2: an unsupported namespace prefix.
        BadNamespacePrefix = "bad-namespace-prefix",
        /// §4.9.3.3: a new stream conflicts with an existing one.
        Conflict = "conflict",
        /// §4.9.3.4: no traffic for a while (or the negotiation took too long).
        ConnectionTimeout = "connection-timeout",
        /// §4.9.3.5: the `to` domain is no longer served here.
        HostGone = "host-gone",
        /// §4.9.3.6: the `to` domain is not served here.
        HostUnknown = "host-unknown",
        /// §4.9.3.7: a stanza or dialback element lacks the addresses it needs.
        ImproperAddressing = "improper-addressing",
        /// §4.9.3.8: a misconfiguration or other internal error.
        InternalServerError = "internal-server-error",
        /// §4.9.3.9: the `from` is not authorised on this stream.
        InvalidFrom = "invalid-from",
        /// §4.9.3.10: the stream or content namespace is wrong.
        InvalidNamespace = "invalid-namespace",
        /// §4.9.3.11: XML that is well-formed but invalid.
        InvalidXml = "invalid-xml",
        /// §4.9.3.12: data sent before the stream was authenticated.
        NotAuthorized = "not-authorized",
        /// §4.9.3.13: XML that is not well-formed.
        NotWellFormed = "not-well-formed",
        /// §4.9.3.14: a local policy was violated (sizes, rates, required TLS…).
        PolicyViolation = "policy-violation",
        /// §4.9.3.15: a remote entity needed for authentication could not be reached.
        RemoteConnectionFailed = "remote-connection-failed",
        /// §4.9.3.16: the stream is being reset (security or trust changed).
        Reset = "reset",
        /// §4.9.3.17: the server lacks the resources to serve the stream.
        ResourceConstraint = "resource-constraint",
        /// §4.9.3.18: restricted XML (comments, processing instructions, DTDs…).
        RestrictedXml = "restricted-xml",
        /// §4.9.3.19: connect to another host instead.
        SeeOtherHost = "see-other-host",
        /// §4.9.3.20: the server is shutting down.
        SystemShutdown = "system-shutdown",
        /// §4.9.3.21: none of the defined conditions applies.
        UndefinedCondition = "undefined-condition",
        /// §4.9.3.22: an encoding other than UTF-8.
        UnsupportedEncoding = "unsupported-encoding",
        /// §4.9.3.23: a mandatory stream feature is not supported.
        UnsupportedFeature = "unsupported-feature",
        /// §4.9.3.24: a first-level child we do not support.
        UnsupportedStanzaType = "unsupported-stanza-type",
        /// §4.9.3.25: a stream version we do not support.
        UnsupportedVersion = "unsupported-version",
    }
}

conditions! {
    /// A stanza error condition (RFC 6120 §8.3.3), in `urn:ietf:params:xml:ns:xmpp-stanzas`;
    /// also the condition of a dialback error (XEP-0220 §2.5), which adds
    /// `remote-connection-failed`.
    StanzaCondition {
        /// §8.3.3.1: the request is malformed.
        BadRequest = "bad-request",
        /// §8.3.3.2: a resource or session with that name exists.
        Conflict = "conflict",
        /// §8.3.3.3: the feature is not implemented.
        FeatureNotImplemented = "feature-not-implemented",
        /// §8.3.3.4: the requester lacks the permissions (XEP-0220: the key was invalid).
        Forbidden = "forbidden",
        /// §8.3.3.5: the recipient is no longer at this address.
        Gone = "gone",
        /// §8.3.3.6: a misconfiguration or other internal error.
        InternalServerError = "internal-server-error",
        /// §8.3.3.7: the addressed entity does not exist (XEP-0220: domain not hosted here).
        ItemNotFound = "item-not-found",
        /// §8.3.3.8: the address is not a valid JID.
        JidMalformed = "jid-malformed",
        /// §8.3.3.9: the request does not meet the recipient's criteria.
        NotAcceptable = "not-acceptable",
        /// §8.3.3.10: the recipient or server does not allow this action ("e.g., sending to
        /// entities at a blacklisted domain"; type `cancel`).
        NotAllowed = "not-allowed",
        /// §8.3.3.11: authentication is needed first (XEP-0220: no acceptable certificate).
        NotAuthorized = "not-authorized",
        /// §8.3.3.12: a local policy was violated (XEP-0220: TLS required before dialback).
        PolicyViolation = "policy-violation",
        /// §8.3.3.13: the recipient is temporarily unavailable.
        RecipientUnavailable = "recipient-unavailable",
        /// §8.3.3.14: the recipient is at another address.
        Redirect = "redirect",
        /// §8.3.3.15: registration is needed first.
        RegistrationRequired = "registration-required",
        /// XEP-0220 §2.5: the Receiving Server could not connect to the Authoritative Server
        /// (a stream condition in RFC 6120, used as a dialback error condition).
        RemoteConnectionFailed = "remote-connection-failed",
        /// §8.3.3.16: the remote domain does not exist or cannot be resolved.
        RemoteServerNotFound = "remote-server-not-found",
        /// §8.3.3.17: the remote domain was found but no stream to it could be set up.
        RemoteServerTimeout = "remote-server-timeout",
        /// §8.3.3.18: the server lacks the resources (XEP-0220: no room for another pair).
        ResourceConstraint = "resource-constraint",
        /// §8.3.3.19: the service is not provided here.
        ServiceUnavailable = "service-unavailable",
        /// §8.3.3.20: a subscription is needed first.
        SubscriptionRequired = "subscription-required",
        /// §8.3.3.21: none of the defined conditions applies.
        UndefinedCondition = "undefined-condition",
        /// §8.3.3.22: the request was not expected now.
        UnexpectedRequest = "unexpected-request",
    }
}

/// The `type` of a stanza error (RFC 6120 §8.3.2): what the sender can do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// Retry after providing credentials.
    Auth,
    /// Do not retry: the error cannot be remedied.
    Cancel,
    /// Proceed: the condition was only a warning.
    Continue,
    /// Retry after changing the data sent.
    Modify,
    /// Retry after waiting: the error is temporary.
    Wait,
}

impl ErrorType {
    /// The value of the `type` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StanzaCondition {
    /// The error type we send with this condition (RFC 6120 §8.3.3, XEP-0220 §2.5): `wait`
    /// for what may pass, `modify` for what the sender must change, `auth` for a missing
    /// authentication, `cancel` for the rest.
    pub fn error_type(self) -> ErrorType {
        use StanzaCondition as C;
        match self {
            C::RemoteServerTimeout
            | C::ResourceConstraint
            | C::RecipientUnavailable
            | C::UnexpectedRequest => ErrorType::Wait,
            C::BadRequest | C::JidMalformed | C::NotAcceptable | C::PolicyViolation => {
                ErrorType::Modify
            }
            C::NotAuthorized => ErrorType::Auth,
            _ => ErrorType::Cancel,
        }
    }

    /// The condition of a dialback error a peer sent (XEP-0220 §2.5, DB-27):
    /// `undefined-condition` when `name` is none we know.
    pub fn of_peer(name: &str) -> StanzaCondition {
        StanzaCondition::parse(name).unwrap_or(StanzaCondition::UndefinedCondition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ERR-02: the 25 stream conditions of RFC 6120 §4.9.3, in its order.
    #[test]
    fn err02_stream_conditions_are_the_rfc_list_and_round_trip() {
        let names: Vec<&str> = StreamCondition::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "bad-format",
                "bad-namespace-prefix",
                "conflict",
                "connection-timeout",
                "host-gone",
                "host-unknown",
                "improper-addressing",
                "internal-server-error",
                "invalid-from",
                "invalid-namespace",
                "invalid-xml",
                "not-authorized",
                "not-well-formed",
                "policy-violation",
                "remote-connection-failed",
                "reset",
                "resource-constraint",
                "restricted-xml",
                "see-other-host",
                "system-shutdown",
                "undefined-condition",
                "unsupported-encoding",
                "unsupported-feature",
                "unsupported-stanza-type",
                "unsupported-version",
            ]
        );
        for &c in StreamCondition::ALL {
            assert_eq!(StreamCondition::parse(c.as_str()), Some(c));
            assert_eq!(c.to_string(), c.as_str());
        }
        assert_eq!(StreamCondition::parse("text"), None);
        assert_eq!(StreamCondition::parse("Host-Unknown"), None);
        assert_eq!(StreamCondition::parse(""), None);
    }

    /// RFC 6120 §8.3.3 (22 conditions) plus XEP-0220 §2.5's remote-connection-failed.
    #[test]
    fn stanza_conditions_are_the_rfc_list_and_round_trip() {
        let names: Vec<&str> = StanzaCondition::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "bad-request",
                "conflict",
                "feature-not-implemented",
                "forbidden",
                "gone",
                "internal-server-error",
                "item-not-found",
                "jid-malformed",
                "not-acceptable",
                "not-allowed",
                "not-authorized",
                "policy-violation",
                "recipient-unavailable",
                "redirect",
                "registration-required",
                "remote-connection-failed",
                "remote-server-not-found",
                "remote-server-timeout",
                "resource-constraint",
                "service-unavailable",
                "subscription-required",
                "undefined-condition",
                "unexpected-request",
            ]
        );
        for &c in StanzaCondition::ALL {
            assert_eq!(StanzaCondition::parse(c.as_str()), Some(c));
            assert_eq!(StanzaCondition::of_peer(c.as_str()), c);
            assert_eq!(c.to_string(), c.as_str());
        }
        assert_eq!(StanzaCondition::parse("text"), None);
        assert_eq!(StanzaCondition::parse("host-unknown"), None);
        // DB-27: whatever else a peer names reads as undefined-condition.
        for odd in ["", "x", "Forbidden", "host-unknown", "forbidden "] {
            assert_eq!(
                StanzaCondition::of_peer(odd),
                StanzaCondition::UndefinedCondition
            );
        }
    }

    #[test]
    fn error_types_follow_the_table() {
        let of = |t: ErrorType| -> Vec<&str> {
            StanzaCondition::ALL
                .iter()
                .filter(|c| c.error_type() == t)
                .map(|c| c.as_str())
                .collect()
        };
        assert_eq!(
            of(ErrorType::Wait),
            [
                "recipient-unavailable",
                "remote-server-timeout",
                "resource-constraint",
                "unexpected-request"
            ]
        );
        assert_eq!(
            of(ErrorType::Modify),
            [
                "bad-request",
                "jid-malformed",
                "not-acceptable",
                "policy-violation"
            ]
        );
        assert_eq!(of(ErrorType::Auth), ["not-authorized"]);
        assert_eq!(of(ErrorType::Continue), Vec::<&str>::new());
        // ROUTE-02 and XEP-0220 §2.5: the conditions we send most.
        for (c, t) in [
            (StanzaCondition::RemoteServerNotFound, "cancel"),
            (StanzaCondition::RemoteServerTimeout, "wait"),
            (StanzaCondition::ServiceUnavailable, "cancel"),
            (StanzaCondition::ItemNotFound, "cancel"),
            (StanzaCondition::RemoteConnectionFailed, "cancel"),
            (StanzaCondition::Forbidden, "cancel"),
            // RFC 6120 §8.3.3.10: SHOULD be "cancel" (a domain we refuse stays refused).
            (StanzaCondition::NotAllowed, "cancel"),
            (StanzaCondition::UndefinedCondition, "cancel"),
        ] {
            assert_eq!(c.error_type().as_str(), t, "{c}");
            assert_eq!(c.error_type().to_string(), t, "{c}");
        }
    }
}
