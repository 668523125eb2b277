//! [`Secret`]: a string that never prints itself.
//!
//! Tokens, refresh tokens, client secrets, passwords, TOTP seeds and keys are
//! carried as `Secret` from the moment they are read until the moment they
//! are written to the wire or encrypted, so a stray `{:?}` in a log line or
//! an error message prints `***` instead of the value.

use std::fmt;

use serde::{Deserialize, Deserializer, Serializer};
use subtle::ConstantTimeEq;

/// A secret string. `Debug` and `Display` print `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value. Call this only where the value leaves the process
    /// on purpose (an HTTP request to the provider, a response to an
    /// authenticated client, the cipher).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares in constant time (for the length of the shorter input).
    pub fn ct_eq(&self, other: &str) -> bool {
        ct_eq(self.0.as_bytes(), other.as_bytes())
    }
}

/// Constant-time byte comparison; a length mismatch returns false without
/// short-circuiting on content.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl Secret {
    /// Serializes the real value. `Secret` is deliberately not `Serialize`:
    /// a field that hands a token out on purpose (a lease's access token, a
    /// new client's key) names this in `#[serde(serialize_with = ...)]`, so
    /// no struct can put a secret on the wire by merely deriving `Serialize`.
    pub fn serialize_exposed<S: Serializer>(secret: &Secret, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&secret.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("hunter2-token");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(***)");
        assert_eq!(s.expose(), "hunter2-token");
    }

    #[test]
    fn constant_time_compare() {
        let s = Secret::new("abc");
        assert!(s.ct_eq("abc"));
        assert!(!s.ct_eq("abd"));
        assert!(!s.ct_eq("ab"));
        assert!(!s.ct_eq(""));
    }
}
