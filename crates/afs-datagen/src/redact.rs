//! Redaction of personal data and secrets before export: e-mail addresses, phone numbers,
//! credit-card numbers (Luhn-checked), IP addresses and secrets become typed placeholders.
//!
//! What is and is not replaced (each rule is a regular expression plus a check in code):
//!
//! * `<SECRET>`: PEM private-key blocks (`-----BEGIN … PRIVATE KEY-----` to its `END` line,
//!   or to the end of the text when the block is cut off); API-key shapes `sk-…` (20+
//!   characters after the prefix, also `sk-proj-`, `sk-ant-`), `sk_live_`/`rk_test_…`,
//!   `AKIA…`/`ASIA…` (AWS, 16 more characters), `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_…` (30+),
//!   `github_pat_…`, `xoxb-`/`xoxp-`/… (Slack), `AIza…` (Google); the token after `Bearer`
//!   (kept: `Bearer `; the token must be 16+ characters, or 8+ with a digit, so "bearer of
//!   bad news" stays); and the value of `key=value` / `key: value` pairs whose key is or
//!   ends in `password`, `passwd`, `passphrase`, `secret`, `api_key`, `access_token`,
//!   `auth_token`, `refresh_token`, `private_key` or `client_secret` (`DB_PASSWORD=x`,
//!   `"api-key": "x"`): the key name, separator and quotes are kept, the value replaced.
//!   `secretary: Jane` and "the secret is out" stay.
//! * `<EMAIL>`: `local@domain.tld` with a TLD of 2+ letters (`user@localhost` stays).
//! * `<IP_ADDRESS>`: IPv4 dotted quads with every part <= 255, not part of a longer dotted
//!   run (`1.2.3.4.5` stays) nor glued to a letter (`v1.2.3.4` stays). A bare `1.2.3.4`
//!   **is** redacted: it cannot be told from an address, and over-redacting a version
//!   number is cheaper than leaking an address. IPv6 addresses that parse as such and
//!   have 3+ colons or a group of 3+ hex digits (`2001:db8::1`, `fe80::1`,
//!   `::ffff:192.0.2.1`); `::1`, `a::b`, `std::io` and times like `12:30:45` stay.
//! * `<CREDIT_CARD>`: 13 to 19 digits, optionally grouped by single spaces or dashes, that
//!   pass the Luhn check. A 16-digit number failing Luhn stays.
//! * `<PHONE>`: North-American shapes with separators (`555-123-4567`, `(555) 123-4567`,
//!   `555.123.4567`, `+1 555 123 4567`, `1-800-555-0199`) and international numbers
//!   written with `+` (8 to 15 digits: `+44 20 7946 0958`, `+14155552671`). Digit runs
//!   without separators (`5551234567`), dates (`2024-01-15`), times and short numbers stay;
//!   national formats other than the North-American one need the `+` prefix.
//!
//! Rules run in that order (secrets, e-mail, IPv6, IPv4, card, phone), so a value matched
//! by one is a placeholder by the time the next runs.

use std::borrow::Cow;
use std::net::Ipv6Addr;
use std::str::FromStr;
use std::sync::OnceLock;

use regex::{Captures, Regex, Replacer};
use serde::Serialize;

/// Placeholder for e-mail addresses.
pub const EMAIL: &str = "<EMAIL>";
/// Placeholder for phone numbers.
pub const PHONE: &str = "<PHONE>";
/// Placeholder for credit-card numbers.
pub const CREDIT_CARD: &str = "<CREDIT_CARD>";
/// Placeholder for IPv4 and IPv6 addresses.
pub const IP_ADDRESS: &str = "<IP_ADDRESS>";
/// Placeholder for secrets (keys, tokens, passwords, private keys).
pub const SECRET: &str = "<SECRET>";

const PLACEHOLDERS: [&str; 5] = [EMAIL, PHONE, CREDIT_CARD, IP_ADDRESS, SECRET];

/// How many values of each kind were replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RedactionCounts {
    /// E-mail addresses.
    pub email: u64,
    /// Phone numbers.
    pub phone: u64,
    /// Credit-card numbers.
    pub credit_card: u64,
    /// IPv4 and IPv6 addresses.
    pub ip_address: u64,
    /// Secrets.
    pub secret: u64,
}

impl RedactionCounts {
    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &RedactionCounts) {
        self.email += other.email;
        self.phone += other.phone;
        self.credit_card += other.credit_card;
        self.ip_address += other.ip_address;
        self.secret += other.secret;
    }

    /// All replacements together.
    pub fn total(&self) -> u64 {
        self.email + self.phone + self.credit_card + self.ip_address + self.secret
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    PrivateKey,
    Bearer,
    KeyValue,
    ApiKey,
    Email,
    Ipv6,
    Ipv4,
    CreditCard,
    Phone,
}

const RULES: [(Rule, &str); 9] = [
    (
        Rule::PrivateKey,
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?s:.*?)(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\z)",
    ),
    (
        Rule::Bearer,
        r"(?-u:\b)(?i:bearer)[ \t]+(?P<token>[A-Za-z0-9._~+/-]+=*)",
    ),
    (
        Rule::KeyValue,
        r#"(?i)(?-u:\b)(?P<key>(?:[a-z0-9]+[_.-])*(?:password|passwd|passphrase|secret|api[_-]?key|access[_-]?token|auth[_-]?token|refresh[_-]?token|private[_-]?key|client[_-]?secret)(?:[_.-][a-z0-9]+)*)(?-u:\b)(?P<sep>"?[ \t]*[:=][ \t]*)(?:"(?P<dq>[^"\r\n]*)"|'(?P<sq>[^'\r\n]*)'|(?P<bare>[^\s"',;&)}\]]+))"#,
    ),
    (
        Rule::ApiKey,
        r"(?-u:\b)(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}|(?:AKIA|ASIA)[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})(?-u:\b)",
    ),
    (
        Rule::Email,
        r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?-u:\b)",
    ),
    (
        Rule::Ipv6,
        r"(?:[0-9A-Fa-f]{1,4})?(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.[0-9]{1,3}){0,3}",
    ),
    (
        Rule::Ipv4,
        r"(?-u:\b)[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?-u:\b)",
    ),
    (
        Rule::CreditCard,
        r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)",
    ),
    (
        Rule::Phone,
        r"(?:(?:\+?1[ .-]?)?(?:\([0-9]{3}\)[ .-]?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}|\+[0-9]{1,3}[ .-]?\(?[0-9]{1,4}\)?(?:[ .-]?[0-9]{2,5}){1,4})(?-u:\b)",
    ),
];

/// Replaces personal data and secrets with typed placeholders (see the module docs for the
/// exact rules). The expressions are compiled once per process, the first time a text
/// needs them, and shared by every `Redactor`; building one costs nothing.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    _private: (),
}

/// The compiled expressions.
#[derive(Debug)]
struct Compiled {
    /// All rules as one alternation: one pass of one automaton tells whether any applies.
    any: Regex,
    rules: Vec<(Rule, Regex)>,
}

impl Compiled {
    /// The process's expressions, compiled on first use (a few milliseconds).
    fn get() -> &'static Compiled {
        static COMPILED: OnceLock<Compiled> = OnceLock::new();
        COMPILED.get_or_init(|| {
            // The patterns are constants covered by the tests below; failing to compile one
            // is a bug in this file, not a runtime condition.
            let alternation = RULES
                .iter()
                .map(|(_, p)| format!("(?:{p})"))
                .collect::<Vec<_>>()
                .join("|");
            let any = Regex::new(&alternation).expect("redaction patterns compile");
            let rules = RULES
                .iter()
                .map(|(rule, p)| (*rule, Regex::new(p).expect("redaction pattern compiles")))
                .collect();
            Compiled { any, rules }
        })
    }
}

impl Redactor {
    /// A redactor (see the type's docs: the expressions are shared and compiled lazily).
    pub fn new() -> Self {
        Redactor { _private: () }
    }

    /// `text` with every match replaced, adding what was replaced to `counts`. Borrows the
    /// input when nothing needs replacing.
    pub fn redact<'t>(&self, text: &'t str, counts: &mut RedactionCounts) -> Cow<'t, str> {
        if !may_match(text) {
            return Cow::Borrowed(text);
        }
        let compiled = Compiled::get();
        if !compiled.any.is_match(text) {
            return Cow::Borrowed(text);
        }
        let mut current = Cow::Borrowed(text);
        for (rule, regex) in &compiled.rules {
            let haystack: &str = &current;
            let replaced = regex.replace_all(
                haystack,
                Apply {
                    rule: *rule,
                    haystack,
                    counts: &mut *counts,
                },
            );
            if let Cow::Owned(s) = replaced {
                current = Cow::Owned(s);
            }
        }
        current
    }
}

/// False only when no rule can match `text`: a cheap first look, about ten times faster
/// than running the combined expression over prose.
///
/// Every match of a rule contains a character or pair this looks for: a digit (IPv4, card,
/// phone), `@` (e-mail), `:` (IPv6 and the `key: value` separator), `=` (the other
/// separator), `-` (PEM blocks, `sk-`, `xox?-`), `_` (`sk_live_`, `gh?_`, `github_pat_`),
/// `AK`/`AS`/`AI` (`AKIA`, `ASIA`, `AIza`) or `ea` in any case (`bearer`). Non-ASCII
/// text needs no special care: the only non-ASCII letters that case-fold to ASCII ones are
/// the Kelvin sign (`k`) and the long s (`s`), and every rule written case-insensitively
/// needs `ea` or a separator besides.
fn may_match(text: &str) -> bool {
    // Non-short-circuit `|` keeps these free of branches, so the chunk test compiles to SIMD.
    fn lone(b: u8) -> bool {
        (b.wrapping_sub(b'0') < 10)
            | (b == b'@')
            | (b == b':')
            | (b == b'=')
            | (b == b'-')
            | (b == b'_')
    }
    fn pair(a: u8, b: u8) -> bool {
        ((a == b'A') & ((b == b'K') | (b == b'S') | (b == b'I')))
            | ((a | 0x20 == b'e') & (b | 0x20 == b'a'))
    }
    const CHUNK: usize = 32;
    let bytes = text.as_bytes();
    // Each step looks at the bytes `i..i + CHUNK` and the pairs they start.
    let mut i = 0;
    while let Some(window) = bytes.get(i..i + CHUNK + 1) {
        let window: &[u8; CHUNK + 1] = window.try_into().expect("a window of CHUNK + 1 bytes");
        let hit = window[..CHUNK]
            .iter()
            .zip(&window[1..])
            .fold(false, |hit, (&a, &b)| hit | lone(a) | pair(a, b));
        if hit {
            return true;
        }
        i += CHUNK;
    }
    let tail = &bytes[i..];
    tail.iter().any(|&b| lone(b)) || tail.windows(2).any(|w| pair(w[0], w[1]))
}

struct Apply<'h, 'c> {
    rule: Rule,
    haystack: &'h str,
    counts: &'c mut RedactionCounts,
}

impl Replacer for Apply<'_, '_> {
    fn replace_append(&mut self, caps: &Captures<'_>, dst: &mut String) {
        let whole = caps.get(0).expect("group 0 always matches");
        let (start, end) = (whole.start(), whole.end());
        let before = self.haystack[..start].chars().next_back();
        let after = self.haystack[end..].chars().next();
        let text = whole.as_str();
        match self.rule {
            Rule::PrivateKey | Rule::ApiKey => {
                self.counts.secret += 1;
                dst.push_str(SECRET);
            }
            Rule::Bearer => {
                let token = caps.name("token").expect("token group");
                let has_digit = token.as_str().bytes().any(|b| b.is_ascii_digit());
                if token.len() >= 16 || (token.len() >= 8 && has_digit) {
                    self.counts.secret += 1;
                    dst.push_str(&text[..token.start() - start]);
                    dst.push_str(SECRET);
                } else {
                    dst.push_str(text);
                }
            }
            Rule::KeyValue => {
                let value = ["dq", "sq", "bare"]
                    .iter()
                    .find_map(|g| caps.name(g))
                    .expect("one value group");
                if value.as_str().trim().is_empty() || PLACEHOLDERS.contains(&value.as_str()) {
                    dst.push_str(text);
                    return;
                }
                self.counts.secret += 1;
                dst.push_str(&text[..value.start() - start]);
                dst.push_str(SECRET);
                dst.push_str(&text[value.end() - start..]);
            }
            Rule::Email => {
                self.counts.email += 1;
                dst.push_str(EMAIL);
            }
            Rule::Ipv6 => {
                let glued = |c: Option<char>| {
                    c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':' || c == '.')
                };
                if !glued(before) && !glued(after) && looks_like_ipv6(text) {
                    self.counts.ip_address += 1;
                    dst.push_str(IP_ADDRESS);
                } else {
                    dst.push_str(text);
                }
            }
            Rule::Ipv4 => {
                let dotted_run_before = before == Some('.');
                let dotted_run_after = after == Some('.') && next_is_digit(self.haystack, end + 1);
                let in_range = text
                    .split('.')
                    .all(|part| part.parse::<u16>().is_ok_and(|n| n <= 255));
                if in_range && !dotted_run_before && !dotted_run_after {
                    self.counts.ip_address += 1;
                    dst.push_str(IP_ADDRESS);
                } else {
                    dst.push_str(text);
                }
            }
            Rule::CreditCard => {
                let digits: Vec<u8> = text
                    .bytes()
                    .filter(u8::is_ascii_digit)
                    .map(|b| b - b'0')
                    .collect();
                let glued = |c: Option<char>| c.is_some_and(|c| c == '-' || c == '.' || c == '_');
                if (13..=19).contains(&digits.len()) && luhn_valid(&digits) && !glued(before) {
                    self.counts.credit_card += 1;
                    dst.push_str(CREDIT_CARD);
                } else {
                    dst.push_str(text);
                }
            }
            Rule::Phone => {
                let digits = text.bytes().filter(u8::is_ascii_digit).count();
                let glued_before = before
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '+')
                    || (matches!(before, Some('-' | '.'))
                        && prev_is_digit(self.haystack, start - 1));
                let glued_after =
                    matches!(after, Some('-' | '.')) && next_is_digit(self.haystack, end + 1);
                let plausible = if text.starts_with('+') {
                    (8..=15).contains(&digits)
                } else {
                    (10..=11).contains(&digits)
                };
                if plausible && !glued_before && !glued_after {
                    self.counts.phone += 1;
                    dst.push_str(PHONE);
                } else {
                    dst.push_str(text);
                }
            }
        }
    }
}

fn next_is_digit(haystack: &str, at: usize) -> bool {
    haystack.as_bytes().get(at).is_some_and(u8::is_ascii_digit)
}

fn prev_is_digit(haystack: &str, at: usize) -> bool {
    at > 0
        && haystack
            .as_bytes()
            .get(at - 1)
            .is_some_and(u8::is_ascii_digit)
}

/// A candidate is an IPv6 address when it parses as one and does not look like code or a
/// clock time: it needs 3+ colons or a group of 3+ hex digits (`a::b` and `::1` stay).
fn looks_like_ipv6(candidate: &str) -> bool {
    if Ipv6Addr::from_str(candidate).is_err() {
        return false;
    }
    let colons = candidate.bytes().filter(|&b| b == b':').count();
    colons >= 3 || candidate.split(':').any(|group| group.len() >= 3)
}

/// The Luhn checksum over decimal digits (each 0..=9), as card numbers carry it.
pub(crate) fn luhn_valid(digits: &[u8]) -> bool {
    if digits.is_empty() {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(s: &str) -> Vec<u8> {
        s.bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| b - b'0')
            .collect()
    }

    #[test]
    fn luhn() {
        for valid in [
            "4111111111111111",
            "5500005555555559",
            "378282246310005",
            "6011111111111117",
            "79927398713",
            "0",
        ] {
            assert!(luhn_valid(&digits(valid)), "{valid}");
        }
        for invalid in ["4111111111111112", "1234567812345678", "79927398710", ""] {
            assert!(!luhn_valid(&digits(invalid)), "{invalid}");
        }
    }

    #[test]
    fn ipv6_shapes() {
        for yes in [
            "2001:db8::1",
            "fe80::1",
            "::ffff:192.0.2.1",
            "1:2:3:4:5:6:7:8",
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        ] {
            assert!(looks_like_ipv6(yes), "{yes}");
        }
        for no in ["::1", "a::b", "12:30:45", "1:2", "::", "gg::1"] {
            assert!(!looks_like_ipv6(no), "{no}");
        }
    }

    #[test]
    fn counts_add_up() {
        let mut a = RedactionCounts {
            email: 1,
            secret: 2,
            ..Default::default()
        };
        a.add(&RedactionCounts {
            email: 1,
            phone: 3,
            credit_card: 1,
            ip_address: 1,
            secret: 0,
        });
        assert_eq!(
            a,
            RedactionCounts {
                email: 2,
                phone: 3,
                credit_card: 1,
                ip_address: 1,
                secret: 2
            }
        );
        assert_eq!(a.total(), 9);
    }

    #[test]
    fn first_look_never_misses_a_match() {
        let any = &Compiled::get().any;
        let examples = [
            "-----BEGIN PRIVATE KEY-----",
            "Authorization: Bearer abcdefghijklmnopqrstuvwxyz",
            "BEARER abcdefghijklmnopqrstuvwxyz",
            "password=hunter2",
            "sk-abcdefghijklmnopqrstuvwxyz",
            "AKIAABCDEFGHIJKLMNOP",
            "ASIAABCDEFGHIJKLMNOP",
            "AIzaabcdefghijklmnopqrstuvwxyzabcdefghi",
            "ghp_abcdefghijklmnopqrstuvwxyzabcdef",
            "a@b.co",
            "fe80::1",
            "1.2.3.4",
            "4111111111111111",
            "+44 20 7946 0958",
            "x7",
            "7",
        ];
        for text in examples {
            assert!(may_match(text), "{text}");
        }
        // Random strings over an alphabet rich in near-misses: whenever an expression
        // matches, the first look must say so.
        let alphabet: Vec<char> = "abekrsABEKIRSZz .,\n\t\u{212a}\u{17f}é日9@:=-_+()"
            .chars()
            .collect();
        let mut state = 1u64;
        let mut matched = 0;
        for i in 0..20_000 {
            let len = 1 + i % 40;
            let text: String = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    alphabet[(state >> 33) as usize % alphabet.len()]
                })
                .collect();
            if any.is_match(&text) {
                matched += 1;
                assert!(may_match(&text), "{text:?}");
            }
        }
        assert!(matched > 200, "only {matched} random texts matched");
        for text in [
            "",
            "plain prose, with commas. And a question?",
            "bird",
            "Ab",
        ] {
            assert!(!may_match(text), "{text}");
        }
        assert!(may_match(&format!("{}ea", "x".repeat(63))));
        assert!(may_match(
            &format!("{}e", "x".repeat(63)).replace("xe", "Ea")
        ));
        assert!(may_match(&format!("{}9", "x".repeat(200))));
    }

    #[test]
    fn unmatched_text_is_borrowed() {
        let r = Redactor::new();
        let mut counts = RedactionCounts::default();
        assert!(matches!(
            r.redact("nothing to see here, 42 apples", &mut counts),
            Cow::Borrowed(_)
        ));
        assert_eq!(counts.total(), 0);
    }
}
