//! Quality scoring of records that were logged without a score: the [`QualityScorer`]
//! trait and a deterministic heuristic default, [`HeuristicScorer`].

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

use crate::error::BoxError;

/// Scores a query/response pair in [0, 1]; higher is better training material.
///
/// # Contract
/// [`crate::generate`] calls [`score`](Self::score) once for each record that passed the
/// feedback filter and has no quality score, in log order, from the calling thread. It
/// must return a finite number within [0, 1]; anything else fails the run with
/// [`crate::DatagenError::InvalidScore`] naming the record. An `Err` fails the run with
/// [`crate::DatagenError::Scorer`]; nothing is written to the output path then. For the
/// output to be reproducible, the same texts must give the same score.
pub trait QualityScorer: Send + Sync {
    /// The quality of `response` as an answer to `query`.
    fn score(&self, query: &str, response: &str) -> Result<f64, BoxError>;
}

/// Phrases that mark a refusal or a canned non-answer (matched lowercase, anywhere).
const REFUSALS: [&str; 14] = [
    "i can't help with",
    "i cannot help with",
    "i can't assist with",
    "i cannot assist with",
    "i'm sorry, but i can",
    "i am sorry, but i can",
    "i'm unable to",
    "i am unable to",
    "i'm not able to",
    "i am not able to",
    "as an ai language model",
    "as an ai, i",
    "i won't be able to",
    "i cannot provide",
];

/// A cheap, deterministic quality estimate from the texts alone.
///
/// The response is split into words (runs of letters and digits, lowercased). Then
///
/// * `length` = min(1, words / 20): a response of 20+ words is long enough; an empty one
///   scores 0 overall. Responses of 2,000+ words get `length` 0.8 (rambling).
/// * `diversity` (responses of 10+ words, else 1) = distinct words / words, mapped
///   linearly from 0.2 → 0 to 0.5 → 1 and clamped: it catches loops like "the the the".
/// * `echo` = 1 − clamp((J − 0.7) / 0.3, 0, 1), where J is the Jaccard similarity of the
///   query's and the response's word sets: a response that repeats the query scores low.
///
/// `score = 0.5·length + 0.25·diversity + 0.25·echo`, halved when the response contains a
/// refusal phrase ("i can't help with", "as an ai language model", …), rounded to 4
/// decimals. A fluent 30-word answer scores 1.0, a refusal at most 0.5, "ok" about 0.52.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeuristicScorer;

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

impl HeuristicScorer {
    /// The score of `response` to `query` (the formula in the type's docs).
    pub fn score_texts(query: &str, response: &str) -> f64 {
        if query.is_ascii() && response.is_ascii() {
            score_ascii(query.as_bytes(), response.as_bytes())
        } else {
            score_unicode(query, response)
        }
    }
}

/// The parts of the score that depend on the words, combined and rounded.
fn combine(n: usize, distinct: usize, query_words: usize, shared: usize, refusal: bool) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let length = if n >= 2000 {
        0.8
    } else {
        (n as f64 / 20.0).min(1.0)
    };
    let diversity = if n >= 10 {
        let ratio = distinct as f64 / n as f64;
        ((ratio - 0.2) / 0.3).clamp(0.0, 1.0)
    } else {
        1.0
    };
    let jaccard = if query_words == 0 {
        0.0
    } else {
        shared as f64 / (query_words + distinct - shared) as f64
    };
    let echo = 1.0 - ((jaccard - 0.7) / 0.3).clamp(0.0, 1.0);
    let mut score = 0.5 * length + 0.25 * diversity + 0.25 * echo;
    if refusal {
        score *= 0.5;
    }
    (score * 10_000.0).round() / 10_000.0
}

/// The general path, for texts with non-ASCII characters: Unicode words and lowercasing.
fn score_unicode(query: &str, response: &str) -> f64 {
    let response_words: Vec<String> = words(response).collect();
    let distinct: HashSet<&str> = response_words.iter().map(String::as_str).collect();
    let query_words: HashSet<String> = words(query).collect();
    let shared = distinct
        .iter()
        .filter(|w| query_words.contains(**w))
        .count();
    let lower = response.to_lowercase().replace('\u{2019}', "'");
    let refusal = REFUSALS.iter().any(|p| lower.contains(p));
    combine(
        response_words.len(),
        distinct.len(),
        query_words.len(),
        shared,
        refusal,
    )
}

/// The same score for ASCII texts, where a word is a run of ASCII letters and digits and
/// lowercasing is byte by byte: the words are slices of one lowercased copy, found 64
/// bytes at a time from a bit mask and kept in sets with a cheap hash, and refusals are
/// found in one pass.
fn score_ascii(query: &[u8], response: &[u8]) -> f64 {
    let response_lower = response.to_ascii_lowercase();
    let (n, distinct) = WordSet::of(&response_lower);
    if n == 0 {
        return 0.0;
    }
    let query_lower = query.to_ascii_lowercase();
    let (_, query_words) = WordSet::of(&query_lower);
    let shared = distinct.shared(&query_words);
    let refusal = refusals().is_match(&response_lower);
    combine(n, distinct.len(), query_words.len(), shared, refusal)
}

/// [`REFUSALS`] as one expression: a literal alternation, searched in one pass.
fn refusals() -> &'static regex::bytes::Regex {
    static REFUSALS_RE: OnceLock<regex::bytes::Regex> = OnceLock::new();
    REFUSALS_RE.get_or_init(|| {
        let alternation = REFUSALS
            .iter()
            .map(|p| regex::escape(p))
            .collect::<Vec<_>>()
            .join("|");
        // A constant alternation of escaped literals always compiles.
        regex::bytes::Regex::new(&alternation).expect("refusal phrases compile")
    })
}

/// The distinct words of a lowercased ASCII text. Words of up to 16 bytes (nearly all)
/// are packed into a `u128`, zero-padded: words have no zero bytes, so the packing is
/// exact and comparing two is one integer comparison.
#[derive(Debug)]
struct WordSet<'a> {
    short: HashSet<u128, BuildHasherDefault<WordHasher>>,
    long: HashSet<&'a [u8], BuildHasherDefault<WordHasher>>,
}

impl<'a> WordSet<'a> {
    /// The number of words in `lower` (runs of ASCII letters and digits) and their set.
    fn of(lower: &'a [u8]) -> (usize, Self) {
        let mut set = WordSet {
            short: HashSet::with_capacity_and_hasher(lower.len() / 6, Default::default()),
            long: HashSet::default(),
        };
        let mut n = 0;
        for (start, end) in words_at(lower) {
            n += 1;
            let len = end - start;
            if len <= 16 {
                set.short.insert(pack(lower, start, len));
            } else {
                set.long.insert(&lower[start..end]);
            }
        }
        (n, set)
    }

    fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }

    /// How many words are in both sets.
    fn shared(&self, other: &WordSet<'_>) -> usize {
        fn count<T: std::hash::Hash + Eq, S: std::hash::BuildHasher>(
            a: &HashSet<T, S>,
            b: &HashSet<T, S>,
        ) -> usize {
            let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
            small.iter().filter(|w| large.contains(*w)).count()
        }
        count(&self.short, &other.short) + count(&self.long, &other.long)
    }
}

/// The `(start, end)` of every run of ASCII letters and digits in ASCII `text`. Each block
/// of 64 bytes becomes a bit mask, eight bytes at a time (see [`alphanumeric_bits`]), whose
/// edges are where words start and end: no branch per byte.
fn words_at(text: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    // The current block's base, the start and end bits not yet visited, where the next
    // block begins, and the start of a word whose end is still to come.
    let (mut base, mut starts, mut ends, mut next) = (0, 0u64, 0u64, 0);
    let mut open: Option<usize> = None;
    std::iter::from_fn(move || loop {
        if open.is_none() && starts != 0 {
            open = Some(base + starts.trailing_zeros() as usize);
            starts &= starts - 1;
        }
        // Within a block, starts and ends alternate; a word open from an earlier block
        // ends at the block's first end.
        if open.is_some() && ends != 0 {
            let end = base + ends.trailing_zeros() as usize + 1;
            ends &= ends - 1;
            return open.take().map(|start| (start, end));
        }
        // Nothing left in this block (or the open word runs on): the next block.
        if next >= text.len() {
            // Unreachable: the last byte of a word at the end of the text is an end.
            return open.take().map(|start| (start, text.len()));
        }
        base = next;
        next = (base + 64).min(text.len());
        (starts, ends) = edges(text, base, next);
    })
}

/// The bits of the bytes `start..end` (at most 64) of ASCII `text` where words start and
/// end.
fn edges(text: &[u8], start: usize, end: usize) -> (u64, u64) {
    let mut mask = 0u64;
    for (i, chunk) in text[start..end].chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        // Bytes past the chunk are 0, not alphanumeric, and so add no bit.
        mask |= alphanumeric_bits(u64::from_le_bytes(word)) << (8 * i);
    }
    let before = start > 0 && text[start - 1].is_ascii_alphanumeric();
    let after = text.get(end).is_some_and(u8::is_ascii_alphanumeric);
    let starts = mask & !((mask << 1) | u64::from(before));
    let ends = mask & !((mask >> 1) | (u64::from(after) << (end - start - 1)));
    (starts, ends)
}

/// One bit per byte of `word` (eight ASCII bytes, little-endian): set when the byte is an
/// ASCII letter or digit. Eight bytes are tested at once: adding `0x80 - lo` to a byte
/// below 0x80 sets its high bit exactly when it is `>= lo`, and no byte carries into the
/// next.
fn alphanumeric_bits(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let at_least = |lo: u8| word.wrapping_add(ONES * u64::from(0x80 - lo));
    let in_range = |lo: u8, hi: u8| at_least(lo) & !at_least(hi + 1);
    let high = (in_range(b'0', b'9') | in_range(b'a', b'z') | in_range(b'A', b'Z')) & HIGH;
    // Gather the eight high bits into the low byte.
    (high >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// The `len` (at most 16) bytes at `start` of `text` packed little-endian into a `u128`.
fn pack(text: &[u8], start: usize, len: usize) -> u128 {
    match text.get(start..start + 16) {
        // One unaligned load, then the bytes past the word masked off.
        Some(window) => {
            let all = u128::from_le_bytes(window.try_into().expect("16 bytes"));
            if len == 16 {
                all
            } else {
                all & ((1u128 << (8 * len)) - 1)
            }
        }
        None => text[start..start + len]
            .iter()
            .rev()
            .fold(0u128, |acc, &b| (acc << 8) | u128::from(b)),
    }
}

/// A multiply-rotate hash: words are short and not adversarial (a collision only costs
/// time), so SipHash's strength would be wasted here.
#[derive(Debug, Default)]
struct WordHasher(u64);

impl WordHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.mix(n as u64);
        self.mix((n >> 64) as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn finish(&self) -> u64 {
        // The multiplication mixes upwards; fold the well-mixed high half into the low bits
        // the table indexes with.
        self.0 ^ (self.0 >> 32)
    }
}

impl QualityScorer for HeuristicScorer {
    fn score(&self, query: &str, response: &str) -> Result<f64, BoxError> {
        Ok(HeuristicScorer::score_texts(query, response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(query: &str, response: &str, expected: f64) {
        let got = HeuristicScorer::score_texts(query, response);
        assert!(
            (got - expected).abs() < 1e-9,
            "score({query:?}, {response:?}) = {got}, expected {expected}"
        );
    }

    const ANSWER: &str = "The 65816 is a 16-bit microprocessor designed by Western Design Center; \
                          it powers the Super Nintendo and the Apple IIGS, and keeps a 6502 emulation mode.";

    #[test]
    fn heuristic_table() {
        check("What is the 65816?", ANSWER, 1.0);
        check("q", "", 0.0);
        check("q", "   ", 0.0);
        // "ok": length 1/20, diversity 1, echo 1 → 0.5/20 + 0.5.
        check("Is it fine?", "ok", 0.525);
        // A refusal of full length is halved.
        check(
            "How do I pick a lock?",
            "I'm sorry, but I can't help with that request because it could be used to break into property you do not own.",
            0.5,
        );
        // Curly apostrophes count as refusals too.
        check("x", "I\u{2019}m unable to do this for you today, but here is some other information about locks and keys and doors.", 0.5);
        // Repeating the query back: J = 1 → echo 0.
        check(
            "what is the capital of france",
            "What is the capital of France?",
            0.5 * 6.0 / 20.0 + 0.25,
        );
        // A loop: 30 words, 1 distinct → diversity 0.
        check("q", &"the ".repeat(30), 0.75);
    }

    #[test]
    fn ascii_path_agrees_with_the_general_one() {
        let vocabulary = [
            "the",
            "The",
            "THE",
            "cache",
            "Cache",
            "x",
            "65816",
            "a1",
            "i",
            "I'm",
            "sorry,",
            "but",
            "can't",
            "help",
            "with",
            "as",
            "an",
            "AI",
            "language",
            "model",
            "unable",
            "to",
            "--",
            "...",
            "\n",
            "\t",
            "",
            "  ",
            "i'm not able to",
            "won't",
            "be",
            "able",
        ];
        let mut state = 3u64;
        let mut next = |n: usize| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 33) as usize % n
        };
        for _ in 0..3000 {
            let mut text = |max: usize| {
                let words = next(max);
                (0..words)
                    .map(|_| vocabulary[next(vocabulary.len())])
                    .collect::<Vec<_>>()
                    .join(if next(4) == 0 { "" } else { " " })
            };
            let query = text(12);
            let response = text(60);
            assert_eq!(
                score_ascii(query.as_bytes(), response.as_bytes()).to_bits(),
                score_unicode(&query, &response).to_bits(),
                "{query:?} / {response:?}"
            );
        }
        let long = "word ".repeat(2500);
        for (q, r) in [
            ("", ""),
            ("q", ANSWER),
            (ANSWER, ANSWER),
            ("q", long.as_str()),
        ] {
            assert_eq!(
                score_ascii(q.as_bytes(), r.as_bytes()).to_bits(),
                score_unicode(q, r).to_bits()
            );
        }
    }

    #[test]
    fn alphanumeric_bits_match_bytes() {
        let mut state = 5u64;
        for _ in 0..20_000 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            // Every byte below 0x80, the ASCII path's domain.
            let word = state & 0x7f7f_7f7f_7f7f_7f7f;
            let expected = word
                .to_le_bytes()
                .iter()
                .enumerate()
                .fold(0u64, |m, (i, b)| {
                    m | u64::from(b.is_ascii_alphanumeric()) << i
                });
            assert_eq!(alphanumeric_bits(word), expected, "{word:#x}");
        }
        for b in 0..0x80u8 {
            let expected = u64::from(b.is_ascii_alphanumeric()) * 0xff;
            assert_eq!(
                alphanumeric_bits(u64::from(b) * 0x0101_0101_0101_0101),
                expected
            );
        }
    }

    #[test]
    fn words_are_found_across_blocks() {
        let check = |text: &str| {
            let expected: Vec<(usize, usize)> = text
                .char_indices()
                .filter(|&(i, c)| {
                    c.is_ascii_alphanumeric()
                        && (i == 0 || !text.as_bytes()[i - 1].is_ascii_alphanumeric())
                })
                .map(|(i, _)| {
                    let len = text[i..]
                        .bytes()
                        .take_while(u8::is_ascii_alphanumeric)
                        .count();
                    (i, i + len)
                })
                .collect();
            assert_eq!(
                words_at(text.as_bytes()).collect::<Vec<_>>(),
                expected,
                "{text:?}"
            );
        };
        check("");
        check(" ");
        check("a");
        check("ab cd");
        check(" ab, cd ");
        for len in [62, 63, 64, 65, 127, 128, 129, 200] {
            check(&"x".repeat(len));
            check(&format!(" {}", "x".repeat(len)));
            check(&format!("{} y", "x".repeat(len)));
            check(&"a ".repeat(len));
            check(&"ab ".repeat(len));
            check(&" a".repeat(len));
        }
    }

    #[test]
    fn scores_are_deterministic_and_in_range() {
        let texts = [
            "",
            "a",
            ANSWER,
            "日本語のテキストです。とても良い答え。",
            "😀 😀 😀",
        ];
        for q in texts {
            for r in texts {
                let a = HeuristicScorer.score(q, r).unwrap();
                assert!((0.0..=1.0).contains(&a));
                assert_eq!(a, HeuristicScorer.score(q, r).unwrap());
            }
        }
    }
}
