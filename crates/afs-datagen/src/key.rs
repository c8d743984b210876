//! Exact-duplicate keys: BLAKE3 over normalised text (lowercase, whitespace collapsed,
//! trimmed), and a set of such keys that hashes them cheaply.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};

use afs_store::key::{key_into, PAIR_TAG};
use afs_store::{Message, Role};

/// A BLAKE3 digest (32 bytes) identifying a normalised text or query/response pair.
pub(crate) type Key = afs_store::key::TextKey;

/// Domain tags, so a pair key (the store's), a text key and a query key never collide by
/// construction.
const TAG_TEXT: u8 = b'T';
const TAG_QUERY: u8 = b'Q';
/// The tag of a conversation's prompt (its turns before the response).
const TAG_PROMPT_TURNS: u8 = b'R';

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

    /// The key `dpo` and `kto` pair records by: the normalised query, or for a conversation
    /// every turn before the response (a conversation of one user turn keys as its query).
    pub(crate) fn prompt(&mut self, query: &str, turns: Option<&[Message]>) -> Key {
        match turns {
            Some(turns) if !matches!(turns, [only] if only.role == Role::User) => {
                let parts: Vec<&str> = turns
                    .iter()
                    .flat_map(|m| [m.role.as_str(), m.content.as_str()])
                    .collect();
                self.digest(TAG_PROMPT_TURNS, &parts)
            }
            _ => self.query(query),
        }
    }

    /// The exact-duplicate key of a record's texts, as the store computes it
    /// ([`afs_store::key::record_key`]): a conversation's turns before the response are given
    /// as `turns`.
    pub(crate) fn record(&mut self, query: &str, response: &str, turns: Option<&[Message]>) -> Key {
        match turns {
            None => self.pair(query, response),
            Some(turns) => {
                let mut messages = turns.to_vec();
                messages.push(Message::new(Role::Assistant, response));
                afs_store::key::record_key(query, response, Some(&messages))
            }
        }
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
