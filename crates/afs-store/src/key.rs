//! Exact-duplicate keys of texts: BLAKE3 over the normalised text (lowercase, whitespace
//! collapsed, trimmed), so two texts that differ only in case or spacing have one key.
//!
//! The store computes the key of every query/response pair it logs ([`pair_key`], kept in
//! [`UsageRecord::pair_key`](crate::UsageRecord::pair_key)) once, when the record is
//! written; training-data generation dedupes on it without hashing the texts again, and
//! computes the same key itself (with [`key_into`]) for rows that lack one.

use std::sync::OnceLock;

use crate::record::{is_single_turn, Message};

/// The BLAKE3 digest (32 bytes, as the design fixes for exact-dedupe keys) identifying a
/// normalised text, or a group of them.
pub type TextKey = [u8; 32];

/// The domain tag of a query/response pair's key ([`pair_key`]). Other users of
/// [`key_into`] pick other tags, so keys of different kinds never collide by construction.
pub const PAIR_TAG: u8 = b'P';

/// Appends `text` to `out` normalised: lowercase, every run of whitespace replaced by one
/// space, leading and trailing whitespace removed. The result is UTF-8.
pub fn normalise_into(text: &str, out: &mut Vec<u8>) {
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

/// The key of `parts` under domain `tag`: BLAKE3 over the tag and each part normalised
/// (see [`normalise_into`]) and prefixed with its length, so ("ab", "c") and ("a", "bc")
/// differ. `buf` is scratch space, reused so a warm caller allocates nothing.
pub fn key_into(buf: &mut Vec<u8>, tag: u8, parts: &[&str]) -> TextKey {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[tag]);
    for part in parts {
        buf.clear();
        normalise_into(part, buf);
        hasher.update(&(buf.len() as u64).to_le_bytes());
        hasher.update(buf);
    }
    *hasher.finalize().as_bytes()
}

/// The exact-duplicate key of a query/response pair: equal for pairs that differ only in
/// case or whitespace. The store writes it with every record it logs.
pub fn pair_key(query: &str, response: &str) -> TextKey {
    key_into(&mut Vec::new(), PAIR_TAG, &[query, response])
}

/// The domain tag of a conversation's key ([`record_key`]).
pub const CONVERSATION_TAG: u8 = b'C';

/// The exact-duplicate key of a record: [`pair_key`] of its query and response, or for a
/// conversation of more than one user and one assistant turn, the key of every turn's role
/// and content in order, so conversations that end alike but began differently differ.
pub fn record_key(query: &str, response: &str, messages: Option<&[Message]>) -> TextKey {
    let Some(messages) = messages.filter(|m| !is_single_turn(m)) else {
        return pair_key(query, response);
    };
    let parts: Vec<&str> = messages
        .iter()
        .flat_map(|m| [m.role.as_str(), m.content.as_str()])
        .collect();
    key_into(&mut Vec::new(), CONVERSATION_TAG, &parts)
}

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
    fn pair_keys_ignore_case_and_spacing_but_not_content() {
        assert_eq!(
            pair_key("What is  Rust?", "A language."),
            pair_key(" what is rust? ", "a\nlanguage.")
        );
        assert_ne!(pair_key("ab", "c"), pair_key("a", "bc"));
        assert_ne!(pair_key("q", "r"), pair_key("q", "s"));
        let mut buf = Vec::new();
        assert_eq!(
            key_into(&mut buf, PAIR_TAG, &["Q", "R"]),
            pair_key("q", "r")
        );
        assert_ne!(key_into(&mut buf, b'T', &["q", "r"]), pair_key("q", "r"));
    }
}
