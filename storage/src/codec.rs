//! Small, explicit binary encoding shared by every record this crate writes.
//!
//! Hand-written rather than serde-based so that the byte layout (which is
//! hashed, and must be identical on every node) is obvious and can never
//! change behind our back with a dependency upgrade.

use sha2::{Digest, Sha256};

use crate::error::corrupt;
use crate::{Hash, StorageError, Timestamp};

/// Length of the truncated SHA-256 checksum prefixed to metadata records and
/// Raft log records. 64 bits is plenty to detect accidental corruption; these
/// records are not part of the tamper-evident chain (checkpoints and audit
/// records carry a full 32-byte hash).
pub(crate) const CHECKSUM_LEN: usize = 8;

/// Encoded size of a `Timestamp`: u64 + u32 + u64.
pub(crate) const TIMESTAMP_LEN: usize = 20;

pub(crate) fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

pub(crate) fn checksum(payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::digest(payload);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    out
}

/// `checksum(payload) ++ payload`.
pub(crate) fn seal_value(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHECKSUM_LEN + payload.len());
    out.extend_from_slice(&checksum(payload));
    out.extend_from_slice(payload);
    out
}

/// Verifies and strips the checksum written by `seal_value`.
pub(crate) fn open_value<'a>(raw: &'a [u8], what: &str) -> Result<&'a [u8], StorageError> {
    if raw.len() < CHECKSUM_LEN {
        return Err(corrupt(format!("{what}: record shorter than its checksum")));
    }
    let (sum, payload) = raw.split_at(CHECKSUM_LEN);
    if sum != checksum(payload) {
        return Err(corrupt(format!("{what}: checksum mismatch")));
    }
    Ok(payload)
}

/// Appends big-endian integers and u64-length-prefixed byte strings.
#[derive(Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(n),
        }
    }
    pub(crate) fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.raw(&v.to_be_bytes())
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.raw(&v.to_be_bytes())
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u64(b.len() as u64).raw(b)
    }
    pub(crate) fn timestamp(&mut self, ts: &Timestamp) -> &mut Self {
        self.u64(ts.physical_micros).u32(ts.logical).u64(ts.node_id)
    }
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }
    /// Overwrites a u64 written earlier at `pos` (used for counts known only
    /// at the end).
    pub(crate) fn patch_u64(&mut self, pos: usize, v: u64) {
        if let Some(slot) = self.buf.get_mut(pos..pos + 8) {
            slot.copy_from_slice(&v.to_be_bytes());
        }
    }
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.buf
    }
    pub(crate) fn into_inner(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads what `Writer` wrote. Every failure is `Corrupt` naming `what`; no
/// length read from the input is trusted before it is checked against the
/// remaining bytes, so arbitrary input can neither panic nor allocate much.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'a str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'a str) -> Self {
        Reader { buf, what }
    }
    fn truncated(&self) -> StorageError {
        corrupt(format!("{}: truncated record", self.what))
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        if n > self.buf.len() {
            return Err(self.truncated());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    pub(crate) fn tag(&mut self, tag: &[u8]) -> Result<(), StorageError> {
        if self.take(tag.len())? != tag {
            return Err(corrupt(format!("{}: wrong record tag", self.what)));
        }
        Ok(())
    }
    pub(crate) fn u8(&mut self) -> Result<u8, StorageError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Result<u32, StorageError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(b))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, StorageError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], StorageError> {
        let len = self.u64()?;
        let len = usize::try_from(len).map_err(|_| self.truncated())?;
        self.take(len)
    }
    pub(crate) fn string(&mut self) -> Result<String, StorageError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec())
            .map_err(|_| corrupt(format!("{}: string is not UTF-8", self.what)))
    }
    pub(crate) fn hash(&mut self) -> Result<Hash, StorageError> {
        let mut h = [0u8; 32];
        h.copy_from_slice(self.take(32)?);
        Ok(h)
    }
    pub(crate) fn timestamp(&mut self) -> Result<Timestamp, StorageError> {
        Ok(Timestamp {
            physical_micros: self.u64()?,
            logical: self.u32()?,
            node_id: self.u64()?,
        })
    }
    /// Fails unless every byte was consumed: trailing garbage is corruption.
    pub(crate) fn finish(self) -> Result<(), StorageError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(corrupt(format!("{}: trailing bytes", self.what)))
        }
    }
}

/// u64 big-endian key, so that sled's byte order is numeric order.
pub(crate) fn u64_key(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub(crate) fn key_u64(k: &[u8]) -> Option<u64> {
    let arr: [u8; 8] = k.try_into().ok()?;
    Some(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_value_round_trip_and_flip() {
        let sealed = seal_value(b"hello");
        assert_eq!(open_value(&sealed, "t").unwrap(), b"hello");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(open_value(&bad, "t").unwrap_err().is_corrupt(), "pos {i}");
        }
        assert!(open_value(&sealed[..3], "t").is_err());
    }

    #[test]
    fn reader_rejects_huge_length_without_allocating() {
        let mut w = Writer::default();
        w.u64(u64::MAX);
        let mut r = Reader::new(w.as_slice(), "t");
        assert!(r.bytes().is_err());
    }

    #[test]
    fn writer_reader_round_trip() {
        let ts = Timestamp {
            physical_micros: 7,
            logical: 3,
            node_id: 9,
        };
        let mut w = Writer::with_capacity(64);
        w.u8(1).u32(2).u64(3).bytes(b"abc").timestamp(&ts);
        assert_eq!(w.len(), 1 + 4 + 8 + 8 + 3 + TIMESTAMP_LEN);
        let buf = w.into_inner();
        let mut r = Reader::new(&buf, "t");
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.u32().unwrap(), 2);
        assert_eq!(r.u64().unwrap(), 3);
        assert_eq!(r.bytes().unwrap(), b"abc");
        assert_eq!(r.timestamp().unwrap(), ts);
        r.finish().unwrap();
    }
}
