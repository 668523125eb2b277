//! Encryption of secrets at rest: ChaCha20-Poly1305, a random nonce per
//! value, and the row and column as associated data so that a ciphertext
//! copied to another account or field fails to decrypt.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

const NONCE_LEN: usize = 12;
pub const KEY_LEN: usize = 32;

/// The store key. Never printed.
pub struct Cipher {
    aead: ChaCha20Poly1305,
    fingerprint: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the store key must be {KEY_LEN} bytes (base64 or hex encoded), got something else")]
    BadKey,
    #[error("a stored secret could not be decrypted (wrong key or damaged data)")]
    Decrypt,
}

impl Cipher {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        let fingerprint = {
            let mut h = Sha256::new();
            h.update(b"relogin-farm store key v1:");
            h.update(key);
            hex(&h.finalize()[..8])
        };
        Cipher {
            aead: ChaCha20Poly1305::new(Key::from_slice(key)),
            fingerprint,
        }
    }

    /// Parses a key file's or variable's text: base64 (standard) or hex of
    /// 32 bytes, surrounding white space ignored.
    pub fn from_text(text: &Secret) -> Result<Self, CryptoError> {
        use base64::Engine;
        let t = text.expose().trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(t)
            .ok()
            .filter(|b| b.len() == KEY_LEN)
            .or_else(|| unhex(t).filter(|b| b.len() == KEY_LEN))
            .ok_or(CryptoError::BadKey)?;
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&bytes);
        Ok(Cipher::new(&key))
    }

    /// A fresh random key as base64 text (what `init` writes).
    pub fn generate_key_text() -> Secret {
        use base64::Engine;
        let mut key = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Secret::new(base64::engine::general_purpose::STANDARD.encode(key))
    }

    /// A short, non-reversible identifier of the key, stored in the database
    /// so a different key is refused at start instead of failing later.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn seal(&self, plaintext: &Secret, aad: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.expose().as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .expect("ChaCha20-Poly1305 encryption cannot fail for in-memory sizes");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    pub fn open(&self, sealed: &[u8], aad: &str) -> Result<Secret, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let pt = self
            .aead
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Decrypt)?;
        String::from_utf8(pt)
            .map(Secret::new)
            .map_err(|_| CryptoError::Decrypt)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// SHA-256 of a client key, as stored. Client keys are 256-bit random
/// values, so a plain hash is enough (no password stretching needed).
pub fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let c = Cipher::from_text(&Cipher::generate_key_text()).unwrap();
        let s = Secret::new("refresh-token-value");
        let sealed = c.seal(&s, "account:1:refresh_token");
        assert!(
            !sealed.windows(7).any(|w| w == b"refresh"),
            "plaintext must not appear"
        );
        assert_eq!(
            c.open(&sealed, "account:1:refresh_token").unwrap().expose(),
            "refresh-token-value"
        );
        assert!(
            c.open(&sealed, "account:2:refresh_token").is_err(),
            "bound to its row"
        );
        let other = Cipher::from_text(&Cipher::generate_key_text()).unwrap();
        assert!(other.open(&sealed, "account:1:refresh_token").is_err());
        assert_ne!(c.fingerprint(), other.fingerprint());
    }

    #[test]
    fn key_text_forms() {
        let hexkey = "00".repeat(32);
        assert!(Cipher::from_text(&Secret::new(hexkey)).is_ok());
        assert!(Cipher::from_text(&Secret::new("short")).is_err());
        let err = Cipher::from_text(&Secret::new("c2VjcmV0"))
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("c2VjcmV0"));
    }
}
