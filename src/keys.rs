//! Dialback keys (XEP-0185) and stream ids.
//!
//! `key = hex(HMAC-SHA256(key = hex(SHA256(secret)), "receiving originating stream-id"))`:
//! the HMAC key is the lower-case **hex string** of the secret's SHA-256 (KEY-02; the published
//! vectors only reproduce that way, KEY-05), the fields are joined with single spaces (KEY-04),
//! and verification is constant-time through `ring::hmac::verify` (SEC-05). The secret comes from
//! the configuration or is 256 random bits drawn at start-up (KEY-03, SEC-03). Stream ids are 128
//! random bits from the OS CSPRNG (SEC-14).
//!
//! Pure: no I/O but the OS random number generator.

use ring::{digest, hmac, rand::SecureRandom};
use std::fmt;

/// The process's dialback secret, ready to mint and check keys. Clones share the key (a
/// configuration reload keeps the secret in force).
#[derive(Clone)]
pub struct DialbackSecret {
    key: hmac::Key,
}

impl fmt::Debug for DialbackSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.write_str("DialbackSecret(..)")
    }
}

/// The OS random number generator failed; the daemon cannot run safely without it.
#[derive(Debug)]
pub struct RandomError;

impl fmt::Display for RandomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the operating system's random number generator failed")
    }
}

impl std::error::Error for RandomError {}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// Fill a buffer from the OS CSPRNG.
///
/// # Errors
/// When the OS generator fails.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut buf = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| RandomError)?;
    Ok(buf)
}

/// A fresh stream id: 128 random bits as 32 lower-case hex digits (an NMTOKEN).
///
/// # Errors
/// When the OS generator fails.
pub fn new_stream_id() -> Result<String, RandomError> {
    Ok(hex(&random_bytes::<16>()?))
}

impl DialbackSecret {
    /// Use a configured secret.
    pub fn from_secret(secret: &str) -> DialbackSecret {
        let hashed = hex(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref());
        DialbackSecret {
            key: hmac::Key::new(hmac::HMAC_SHA256, hashed.as_bytes()),
        }
    }

    /// Draw a 256-bit secret from the OS CSPRNG.
    ///
    /// # Errors
    /// When the OS generator fails.
    pub fn random() -> Result<DialbackSecret, RandomError> {
        Ok(DialbackSecret::from_secret(&hex(&random_bytes::<32>()?)))
    }

    /// The key the Originating Server `originating` sends to the Receiving Server `receiving`
    /// on the stream whose id (chosen by the Receiving Server) is `stream_id`.
    pub fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        let msg = format!("{receiving} {originating} {stream_id}");
        hex(hmac::sign(&self.key, msg.as_bytes()).as_ref())
    }

    /// Check a key in constant time. Surrounding whitespace is ignored (the XEP examples put the
    /// key on its own indented line); anything that is not 64 hex digits is simply invalid.
    pub fn verify(&self, receiving: &str, originating: &str, stream_id: &str, key: &str) -> bool {
        let Some(tag) = unhex(key.trim()) else {
            return false;
        };
        let msg = format!("{receiving} {originating} {stream_id}");
        hmac::verify(&self.key, msg.as_bytes(), &tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// KEY-05: the three published vectors (XEP-0185 §3, XEP-0220 Ex. 1 and §2.2.2).
    #[test]
    fn key05_published_vectors() {
        let vectors = [
            (
                "s3cr3tf0rd14lb4ck",
                "xmpp.example.com",
                "example.org",
                "D60000229F",
                "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643",
            ),
            (
                "s3cr3tf0rd14lb4ck",
                "montague.example",
                "capulet.example",
                "D60000229F",
                "b4835385f37fe2895af6c196b59097b16862406db80559900d96bf6fa7d23df3",
            ),
            (
                "d14lb4ck43v3r",
                "capulet.example",
                "montague.example",
                "417GAF25",
                "225cc5aa6a071133249d25fef42ae516fc7a86c523aa1c6980a7f73e784c972d",
            ),
        ];
        for (secret, recv, orig, id, want) in vectors {
            let s = DialbackSecret::from_secret(secret);
            assert_eq!(s.key(recv, orig, id), want);
            assert!(s.verify(recv, orig, id, want));
            assert!(s.verify(recv, orig, id, &format!("\n   {}\n ", want.to_uppercase())));
        }
    }

    /// KEY-04 / SEC-02: every field is bound; changing or swapping any of them breaks the key.
    #[test]
    fn sec02_keys_bind_every_field() {
        let s = DialbackSecret::from_secret("s3cr3tf0rd14lb4ck");
        let k = s.key("montague.example", "capulet.example", "D60000229F");
        assert!(!s.verify("capulet.example", "montague.example", "D60000229F", &k));
        assert!(!s.verify("montague.example", "capulet.example", "D60000229G", &k));
        assert!(!s.verify("montague.example", "evil.example", "D60000229F", &k));
        // One hex digit changed.
        let mut bad = k.clone().into_bytes();
        bad[10] = if bad[10] == b'0' { b'1' } else { b'0' };
        assert!(!s.verify(
            "montague.example",
            "capulet.example",
            "D60000229F",
            std::str::from_utf8(&bad).unwrap()
        ));
        // Not hex, wrong length, empty.
        for junk in ["", "zz", &k[..63], "not a key at all"] {
            assert!(!s.verify("montague.example", "capulet.example", "D60000229F", junk));
        }
        // A different secret gives a different key.
        let other = DialbackSecret::from_secret("another secret");
        assert!(!other.verify("montague.example", "capulet.example", "D60000229F", &k));
    }

    /// SEC-03 / SEC-14: random secrets and ids differ and ids are 128-bit NMTOKENs.
    #[test]
    fn sec14_random_ids_and_secrets() {
        let a = new_stream_id().unwrap();
        let b = new_stream_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        let s1 = DialbackSecret::random().unwrap();
        let s2 = DialbackSecret::random().unwrap();
        assert_ne!(s1.key("a", "b", "c"), s2.key("a", "b", "c"));
    }
}
