//! A stable 64-bit hash (FNV-1a) for values that are stored and compared
//! across processes and versions: snapshot keys, Kafka record keys.
//! `std`'s hashers are randomly seeded or free to change between releases,
//! so they cannot be used for anything that outlives a process.

/// 64-bit FNV-1a. Not cryptographic: fine for telling apart values that are
/// not chosen by an adversary.
#[derive(Clone, Debug)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv1a {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// A hash of nothing yet.
    pub fn new() -> Self {
        Fnv1a(Self::OFFSET)
    }

    /// Adds `bytes` as they are (no length: callers hashing several values
    /// use [`write_bytes`](Self::write_bytes) so boundaries count).
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    /// Adds a length (or count) as 8 little-endian bytes.
    pub fn write_len(&mut self, len: usize) {
        self.write(&(len as u64).to_le_bytes());
    }

    /// Adds `bytes` prefixed by their length, so `("ab", "c")` and
    /// `("a", "bc")` hash differently.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        self.write_len(bytes.len());
        self.write(bytes);
    }

    /// [`write_bytes`](Self::write_bytes) of a string's UTF-8.
    pub fn write_str(&mut self, s: &str) {
        self.write_bytes(s.as_bytes());
    }

    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_vectors() {
        for (input, expected) in [
            (&b""[..], 0xcbf2_9ce4_8422_2325),
            (b"a", 0xaf63_dc4c_8601_ec8c),
            (b"foobar", 0x8594_4171_f739_67e8),
        ] {
            let mut h = Fnv1a::new();
            h.write(input);
            assert_eq!(h.finish(), expected, "{input:?}");
        }
    }
}
