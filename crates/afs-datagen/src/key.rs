//! Exact-duplicate keys: BLAKE3 over normalised text (lowercase, whitespace collapsed,
//! trimmed), and a set of such keys that hashes them cheaply.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// A 32-byte BLAKE3 digest identifying a normalised text or query/response pair.
pub(crate) type Key = [u8; 32];

/// Domain tags, so a pair key, a text key and a query key never collide by construction.
const TAG_PAIR: u8 = b'P';
const TAG_TEXT: u8 = b'T';
const TAG_QUERY: u8 = b'Q';

/// Appends `text` to `out` normalised: lowercase, every run of whitespace replaced by one
/// space, leading and trailing whitespace removed. The result is UTF-8.
pub(crate) fn normalise_into(text: &str, out: &mut Vec<u8>) {
    let start = out.len();
    let mut pending_space = false;
    if text.is_ascii() {
        // Fast path: copy, lowercase in place (both vectorised), and collapse whitespace
        // only when the text has some other than single inner spaces. `char::is_whitespace`
        // on ASCII is space, \t, \n, vertical tab, form feed and \r, as below.
        out.extend_from_slice(text.as_bytes());
        let buf = &mut out[start..];
        buf.make_ascii_lowercase();
        let irregular = buf.first() == Some(&b' ')
            || buf.last() == Some(&b' ')
            || memchr::memchr3(b'\n', b'\t', b'\r', buf).is_some()
            || memchr::memchr2(0x0B, 0x0C, buf).is_some()
            || double_space().find(buf).is_some();
        if !irregular {
            return;
        }
        let is_space = |b: u8| b == b' ' || (0x09..=0x0D).contains(&b);
        let mut write = start;
        for read in start..out.len() {
            let b = out[read];
            if is_space(b) {
                pending_space = true;
                continue;
            }
            if pending_space && write > start {
                out[write] = b' ';
                write += 1;
            }
            pending_space = false;
            out[write] = b;
            write += 1;
        }
        out.truncate(write);
        return;
    }
    let mut utf8 = [0u8; 4];
    for c in text.chars() {
        if c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if pending_space && out.len() > start {
            out.push(b' ');
        }
        pending_space = false;
        for lower in c.to_lowercase() {
            out.extend_from_slice(lower.encode_utf8(&mut utf8).as_bytes());
        }
    }
}

/// A finder for two spaces in a row, built once (building one per text would cost more
/// than the search).
fn double_space() -> &'static memchr::memmem::Finder<'static> {
    static FINDER: OnceLock<memchr::memmem::Finder<'static>> = OnceLock::new();
    FINDER.get_or_init(|| memchr::memmem::Finder::new(b"  "))
}

/// Builds keys with one reusable buffer, so computing a key allocates nothing once warm.
#[derive(Debug, Default)]
pub(crate) struct KeyBuilder {
    buf: Vec<u8>,
}

impl KeyBuilder {
    fn digest(&mut self, tag: u8, parts: &[&str]) -> Key {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&[tag]);
        for part in parts {
            self.buf.clear();
            normalise_into(part, &mut self.buf);
            // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
            hasher.update(&(self.buf.len() as u64).to_le_bytes());
            hasher.update(&self.buf);
        }
        *hasher.finalize().as_bytes()
    }

    /// The key of a query/response pair.
    pub(crate) fn pair(&mut self, query: &str, response: &str) -> Key {
        self.digest(TAG_PAIR, &[query, response])
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

    fn check(input: &str, expected: &str) {
        let mut out = Vec::new();
        normalise_into(input, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            expected,
            "normalising {input:?}"
        );
    }

    #[test]
    fn normalisation() {
        check("", "");
        check("   ", "");
        check("Hello", "hello");
        check("Hello World", "hello world");
        check("a  b", "a b");
        check(" a", "a");
        check("a ", "a");
        check("a\nb", "a b");
        check("  Hello \t\n World  ", "hello world");
        check("A\u{a0}B", "a b");
        check("ÉCOLE  Straße", "école straße");
        check("İ", "i\u{307}");
        check("日本語\u{3000}テキスト", "日本語 テキスト");
        // The ASCII fast path and the Unicode path agree on every ASCII space.
        check("a\u{b}b\u{c}c\rd", "a b c d");
        check("é\u{b}b\u{c}c\rd", "é b c d");
    }

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
