//! Encryption of Secrets at rest: AES-256-GCM with a random nonce per write, so the
//! store file never holds a Secret's data in clear.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;

/// Marks a sealed value; the version leaves room for key rotation.
const PREFIX: &[u8] = b"skiff:enc:aesgcm:v1:";
const NONCE_LEN: usize = 12;
pub const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("the encryption key must be {KEY_LEN} bytes")]
    KeyLength,
    #[error("encrypting failed")]
    Seal,
    #[error("a sealed value is truncated or was not sealed with this key")]
    Open,
}

pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl SecretBox {
    pub fn new(key: &[u8]) -> Result<Self, EncryptionError> {
        let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| EncryptionError::KeyLength)?;
        Ok(Self { cipher })
    }

    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .map_err(|_| EncryptionError::Seal)?;
        Ok([PREFIX, &nonce, &ciphertext].concat())
    }

    /// Whether `stored` was sealed (rather than stored in clear).
    pub fn is_sealed(stored: &[u8]) -> bool {
        stored.starts_with(PREFIX)
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        let body = sealed.strip_prefix(PREFIX).ok_or(EncryptionError::Open)?;
        if body.len() < NONCE_LEN {
            return Err(EncryptionError::Open);
        }
        let (nonce, ciphertext) = body.split_at(NONCE_LEN);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| EncryptionError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_and_hide_the_plaintext() {
        let secret_box = SecretBox::new(&[7u8; KEY_LEN]).unwrap();
        let sealed = secret_box.seal(b"password=hunter2").unwrap();
        assert!(SecretBox::is_sealed(&sealed));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(secret_box.open(&sealed).unwrap(), b"password=hunter2");
        // A fresh nonce each time.
        assert_ne!(secret_box.seal(b"password=hunter2").unwrap(), sealed);
    }

    #[test]
    fn tampered_or_foreign_values_do_not_open() {
        let secret_box = SecretBox::new(&[7u8; KEY_LEN]).unwrap();
        let mut sealed = secret_box.seal(b"data").unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(secret_box.open(&sealed).is_err());
        let other = SecretBox::new(&[8u8; KEY_LEN]).unwrap();
        assert!(other.open(&secret_box.seal(b"data").unwrap()).is_err());
        assert!(secret_box.open(b"{\"plain\":1}").is_err());
        assert!(SecretBox::new(&[0u8; 16]).is_err());
    }
}
