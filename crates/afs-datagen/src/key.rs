//! Exact-duplicate keys: BLAKE3 over normalised text (lowercase, whitespace collapsed,
//! trimmed), and a set of such keys that hashes them cheaply.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};

use afs_store::key::{key_into, PAIR_TAG};

/// A BLAKE3 digest (32 bytes) identifying a normalised text or query/response pair.
pub(crate) type Key = afs_store::key::TextKey;

/// Domain tags, so a pair key (the store's), a text key and a query key never collide by
/// construction.
const TAG_TEXT: u8 = b'T';
const TAG_QUERY: u8 = b'Q';

/// Builds keys with one reusable buffer, so computing a key allocates nothing once warm.
#[derive(Debug, Default)]
pub(crate) struct KeyBuilder {
    buf: Vec<u8>,
}

impl KeyBuilder {
    fn digest(&mut self, tag: u8, parts: &[&str]) -> Key {
        key_into(&mut self.buf, tag, parts)
    }

    /// The key of a query/response pair: the one the store keeps with each record it logs
    /// ([`afs_store::key::pair_key`]).
    pub(crate) fn pair(&mut self, query: &str, response: &str) -> Key {
        self.digest(PAIR_TAG, &[query, response])
    }

    /// The key of a whole text (a `text`-format line).
    pub(crate) fn text(&mut self, text: &str) -> Key {
        self.digest(TAG_TEXT, &[text])
    }

    /// The key of a query alone (groups responses for preference pairs).
    pub(crate) fn query(&mut self, query: &str) -> Key {
        self.digest(TAG_QUERY, &[query])
    }
}

/// Hashes a [`Key`] by taking 8 of its bytes: keys are already uniformly distributed, so
/// running SipHash over them again would only cost time.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct KeyHasherBuilder;

/// The hasher of [`KeyHasherBuilder`].
#[derive(Debug, Default)]
pub(crate) struct KeyHasher {
    state: u64,
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.state
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its bytes (after no length prefix); fold whatever arrives so
        // other key types still hash correctly, if slowly.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.state = (self.state.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_u64(&mut self, value: u64) {
        // Already-mixed keys (band hashes) pass through unchanged.
        self.state ^= value;
    }

    fn write_u32(&mut self, value: u32) {
        // hashbrown takes the bucket from the low bits and a tag from the top 7 bits, so
        // spread the 32 mixed bits over both halves.
        self.state ^= u64::from(value) | (u64::from(value) << 32);
    }
}

impl BuildHasher for KeyHasherBuilder {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher::default()
    }
}

/// A set of exact-duplicate keys.
pub(crate) type KeySet = HashSet<Key, KeyHasherBuilder>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_ignore_case_and_spacing_but_not_content() {
        let mut kb = KeyBuilder::default();
        assert_eq!(
            kb.pair("What is  Rust?", "A language."),
            kb.pair(" what is rust? ", "a\nlanguage.")
        );
        assert_ne!(kb.pair("ab", "c"), kb.pair("a", "bc"));
        assert_ne!(kb.pair("q", "r"), kb.pair("q", "s"));
        assert_ne!(kb.text("q"), kb.query("q"));
        assert_ne!(kb.pair("q", ""), kb.text("q"));
    }

    #[test]
    fn key_set_finds_keys() {
        let mut kb = KeyBuilder::default();
        let mut set = KeySet::default();
        assert!(set.insert(kb.pair("a", "b")));
        assert!(!set.insert(kb.pair("A", "B")));
        assert!(set.insert(kb.pair("a", "c")));
        assert_eq!(set.len(), 2);
    }
}
