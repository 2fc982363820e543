//! The byte layout of what the embedded store keeps in redb.
//!
//! - A *record* is a key's state without the key: `create_revision`, `mod_revision`
//!   and `version` (u64 little-endian each), then the value's length (u64) and bytes.
//!   The keys table maps a key to its record.
//! - The history table maps a revision to the *events* of that revision, one after
//!   the other in op order. An event is its kind (0 put, 1 delete), the key
//!   (length-prefixed UTF-8), for a put the record written, then 0, or 1 and the
//!   record the change replaced.
//!
//! A delete's own key-value is not stored: it is always the key, an empty value and
//! the deleting revision.

use crate::store::{Event, EventKind, KeyValue, Revision};

const PUT: u8 = 0;
const DELETE: u8 = 1;
const ABSENT: u8 = 0;
const PRESENT: u8 = 1;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the stored bytes end early")]
    Truncated,
    #[error("trailing bytes after the record")]
    Trailing,
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    #[error("unknown presence flag {0}")]
    UnknownFlag(u8),
    #[error("a stored key is not UTF-8")]
    KeyNotUtf8,
}

/// The record of `kv`, for the keys table.
pub fn encode_record(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + kv.value.len());
    put_record(&mut out, kv);
    out
}

/// The key-value that `bytes`, the record of `key`, describes.
pub fn decode_record(key: &str, bytes: &[u8]) -> Result<KeyValue, DecodeError> {
    let mut reader = Reader { rest: bytes };
    let kv = reader.record(key)?;
    reader.finish()?;
    Ok(kv)
}

/// The history entry of one revision: its events, in order.
pub fn encode_events(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        out.push(match event.kind {
            EventKind::Put => PUT,
            EventKind::Delete => DELETE,
        });
        put_bytes(&mut out, event.kv.key.as_bytes());
        if event.kind == EventKind::Put {
            put_record(&mut out, &event.kv);
        }
        match &event.prev_kv {
            None => out.push(ABSENT),
            Some(prev) => {
                out.push(PRESENT);
                put_record(&mut out, prev);
            }
        }
    }
    out
}

/// The events of the history entry of `revision`.
pub fn decode_events(revision: Revision, bytes: &[u8]) -> Result<Vec<Event>, DecodeError> {
    let mut reader = Reader { rest: bytes };
    let mut events = Vec::new();
    while !reader.rest.is_empty() {
        let kind = match reader.u8()? {
            PUT => EventKind::Put,
            DELETE => EventKind::Delete,
            other => return Err(DecodeError::UnknownKind(other)),
        };
        let key = reader.string()?;
        let kv = match kind {
            EventKind::Put => reader.record(&key)?,
            EventKind::Delete => KeyValue {
                key: key.clone(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: revision,
                version: 0,
            },
        };
        let prev_kv = match reader.u8()? {
            ABSENT => None,
            PRESENT => Some(reader.record(&key)?),
            other => return Err(DecodeError::UnknownFlag(other)),
        };
        events.push(Event { kind, kv, prev_kv });
    }
    Ok(events)
}

fn put_record(out: &mut Vec<u8>, kv: &KeyValue) {
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
    put_bytes(out, &kv.value);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The unread part of an encoded record or history entry.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self
            .rest
            .split_at_checked(len)
            .ok_or(DecodeError::Truncated)?;
        self.rest = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&byte, rest) = self.rest.split_first().ok_or(DecodeError::Truncated)?;
        self.rest = rest;
        Ok(byte)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<8>()
            .ok_or(DecodeError::Truncated)?;
        self.rest = rest;
        Ok(u64::from_le_bytes(*head))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        // A length beyond usize cannot fit in the remaining bytes either.
        let len = usize::try_from(self.u64()?).map_err(|_| DecodeError::Truncated)?;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::KeyNotUtf8)
    }

    fn record(&mut self, key: &str) -> Result<KeyValue, DecodeError> {
        let create_revision = self.u64()?;
        let mod_revision = self.u64()?;
        let version = self.u64()?;
        let value = self.bytes()?.to_vec();
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision,
            version,
        })
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, create: Revision, modified: Revision, version: u64) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
            create_revision: create,
            mod_revision: modified,
            version,
        }
    }

    #[test]
    fn record_round_trips() {
        let original = kv("/a", "value", 3, 7, 2);
        let bytes = encode_record(&original);
        assert_eq!(decode_record("/a", &bytes), Ok(original));
    }

    #[test]
    fn events_round_trip_in_order() {
        let events = vec![
            Event {
                kind: EventKind::Put,
                kv: kv("/b", "new", 9, 9, 1),
                prev_kv: None,
            },
            Event {
                kind: EventKind::Put,
                kv: kv("/a", "two", 4, 9, 2),
                prev_kv: Some(kv("/a", "one", 4, 4, 1)),
            },
            Event {
                kind: EventKind::Delete,
                kv: kv("/c", "", 0, 9, 0),
                prev_kv: Some(kv("/c", "gone", 5, 6, 2)),
            },
        ];
        assert_eq!(decode_events(9, &encode_events(&events)), Ok(events));
    }

    #[test]
    fn damaged_bytes_are_errors() {
        let bytes = encode_record(&kv("/a", "value", 1, 1, 1));
        assert_eq!(
            decode_record("/a", &bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated)
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_record("/a", &longer), Err(DecodeError::Trailing));
        assert_eq!(decode_events(1, &[7]), Err(DecodeError::UnknownKind(7)));
    }
}
