//! SHA-256 content digests: the names blobs and layers are stored under, and a
//! reader that computes one over whatever passes through it.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest, written `sha256:<64 lowercase hex digits>`. Only this
/// algorithm is accepted: it is what every image tool writes, and a validated hex
/// string is safe to use as a file name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<hex>`; None for anything else (other algorithms included).
    pub fn parse(text: &str) -> Option<Digest> {
        let hex = text.strip_prefix("sha256:")?;
        Digest::from_hex(hex)
    }

    /// Parses the bare 64 hex digits, as they appear in blob file names.
    pub fn from_hex(hex: &str) -> Option<Digest> {
        let valid = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        valid.then(|| Digest {
            hex: hex.to_owned(),
        })
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The 64 hex digits, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    fn from_hasher(hasher: Sha256) -> Digest {
        let hex = hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Digest { hex }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a sha256 digest")))
    }
}

/// A digest computed over bytes that arrive piecemeal.
#[derive(Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Digest {
        Digest::from_hasher(self.0)
    }
}

/// Passes reads through while hashing and counting them.
pub struct Digesting<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> Digesting<R> {
    pub fn new(inner: R) -> Digesting<R> {
        Digesting {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Reads what the consumer left unread (a tar reader stops at the end-of-archive
    /// blocks, a gzip reader before trailing bytes), so the digest covers it all;
    /// then returns the inner reader, the digest and the length.
    pub fn finish(mut self) -> io::Result<(R, Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.inner, Digest::from_hasher(self.hasher), self.len))
    }
}

impl<R: Read> Read for Digesting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digests_what_is_read_including_the_unread_rest() {
        let mut reader = Digesting::new(&b"hello world"[..]);
        let mut first = [0u8; 5];
        reader.read_exact(&mut first).unwrap();
        let (_, digest, len) = reader.finish().unwrap();
        assert_eq!(digest, Digest::of(b"hello world"));
        assert_eq!(len, 11);
        assert_eq!(Digest::of(b"").to_string(), format!("sha256:{EMPTY}"));
        let mut hasher = Hasher::default();
        hasher.update(b"hello ");
        hasher.update(b"world");
        assert_eq!(hasher.finish(), Digest::of(b"hello world"));
    }

    #[test]
    fn parses_only_sha256_hex() {
        assert_eq!(
            Digest::parse(&format!("sha256:{EMPTY}")).unwrap().hex(),
            EMPTY
        );
        assert_eq!(Digest::parse(EMPTY), None);
        assert_eq!(Digest::parse(&format!("sha512:{EMPTY}")), None);
        assert_eq!(Digest::parse("sha256:../../etc/passwd"), None);
        assert_eq!(Digest::from_hex(&EMPTY.to_uppercase()), None);
    }
}
