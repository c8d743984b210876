//! Near-duplicate detection: MinHash signatures over shingles, LSH banding to find
//! candidates, and verification by the Jaccard similarity the signatures estimate.

use std::collections::HashMap;

use crate::config::NearDedupeConfig;
use crate::key::KeyHasherBuilder;
use crate::rng::{mix64, SplitMix64};

/// The permutations are fixed (not the run's seed): a signature means the same in every run.
const PERMUTATION_SEED: u64 = 0x6166_732d_6d69_6e68; // "afs-minh"

/// At most this many earlier samples are compared per band bucket, so a flood of samples
/// that share a band but are not near each other cannot make the run quadratic.
const MAX_CANDIDATES_PER_BAND: usize = 256;

const NONE: u32 = u32::MAX;

/// The LSH banding `(bands, rows)` with `bands × rows <= num_permutations` whose threshold
/// `(1/bands)^(1/rows)` is closest to `threshold`; ties go to the banding using more rows.
pub(crate) fn lsh_params(threshold: f64, num_permutations: usize) -> (usize, usize) {
    let mut best = (num_permutations, 1);
    let mut best_err = f64::INFINITY;
    for rows in 1..=num_permutations {
        let bands = num_permutations / rows;
        let t = (1.0 / bands as f64).powf(1.0 / rows as f64);
        let err = (t - threshold).abs();
        if err < best_err - 1e-12
            || ((err - best_err).abs() <= 1e-12 && bands * rows > best.0 * best.1)
        {
            best = (bands, rows);
            best_err = err;
        }
    }
    best
}

/// Remembers the samples kept so far and tells whether a new one is a near-duplicate of
/// one of them.
///
/// Memory per kept sample: `num_permutations` bytes of signature (the low 8 bits of each
/// MinHash value: "b-bit MinHash", whose match rate `p` gives the Jaccard estimate
/// `(p − 2⁻⁸) / (1 − 2⁻⁸)`), plus one bucket entry (8 bytes) and one chain link (4 bytes)
/// per band: about 300 bytes with the defaults.
#[derive(Debug)]
pub(crate) struct NearDeduper {
    config: NearDedupeConfig,
    bands: usize,
    rows: usize,
    mul: Vec<u64>,
    add: Vec<u64>,
    stored: Vec<u8>,
    /// Band key → the latest kept sample with it. Keys are 32 bits of the band hash: a
    /// rare collision only adds a candidate, which verification then rejects.
    buckets: HashMap<u32, u32, KeyHasherBuilder>,
    chain: Vec<u32>,
    n_kept: u32,
    signature: Vec<u32>,
    band_keys: Vec<u32>,
    shingles: Vec<u64>,
    words: Vec<u64>,
    chars: Vec<char>,
    checked: Vec<u32>,
}

impl NearDeduper {
    pub(crate) fn new(config: &NearDedupeConfig) -> Self {
        let (bands, rows) = lsh_params(config.threshold, config.num_permutations);
        let mut rng = SplitMix64::new(PERMUTATION_SEED);
        let n = config.num_permutations;
        // Multiply-add-shift hashing: (a·x + b) >> 32 with odd a is a universal family.
        let mul = (0..n).map(|_| rng.next_u64() | 1).collect();
        let add = (0..n).map(|_| rng.next_u64()).collect();
        NearDeduper {
            config: config.clone(),
            bands,
            rows,
            mul,
            add,
            stored: Vec::new(),
            buckets: HashMap::default(),
            chain: Vec::new(),
            n_kept: 0,
            signature: vec![u32::MAX; n],
            band_keys: vec![0; bands],
            shingles: Vec::new(),
            words: Vec::new(),
            chars: Vec::new(),
            checked: Vec::new(),
        }
    }

    /// True when the sample is a near-duplicate of a sample kept earlier; otherwise it is
    /// kept (remembered) and false is returned. A sample without any letter, digit or
    /// symbol is never a near-duplicate (exact dedupe handles it).
    pub(crate) fn check_and_insert(&mut self, query: &str, response: &str) -> bool {
        if !self.shingle(query, response) {
            return false;
        }
        self.sign();
        for band in 0..self.bands {
            let mut h = mix64(PERMUTATION_SEED ^ (band as u64 + 1));
            for &v in &self.signature[band * self.rows..(band + 1) * self.rows] {
                h = mix64(h ^ u64::from(v));
            }
            self.band_keys[band] = (h >> 32) as u32;
        }
        self.checked.clear();
        for band in 0..self.bands {
            let mut candidate = self
                .buckets
                .get(&self.band_keys[band])
                .copied()
                .unwrap_or(NONE);
            let mut seen = 0;
            while candidate != NONE && seen < MAX_CANDIDATES_PER_BAND {
                seen += 1;
                if !self.checked.contains(&candidate) {
                    if self.estimated_jaccard(candidate) >= self.config.threshold {
                        return true;
                    }
                    self.checked.push(candidate);
                }
                candidate = self.chain[candidate as usize * self.bands + band];
            }
        }
        self.insert();
        false
    }

    /// Number of samples remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.n_kept as usize
    }

    fn insert(&mut self) {
        let index = self.n_kept;
        self.n_kept += 1;
        self.stored.extend(self.signature.iter().map(|&v| v as u8));
        for band in 0..self.bands {
            let previous = self
                .buckets
                .insert(self.band_keys[band], index)
                .unwrap_or(NONE);
            self.chain.push(previous);
        }
    }

    fn estimated_jaccard(&self, candidate: u32) -> f64 {
        let n = self.config.num_permutations;
        let start = candidate as usize * n;
        let other = &self.stored[start..start + n];
        let matches = other
            .iter()
            .zip(&self.signature)
            .filter(|(a, b)| **a == **b as u8)
            .count();
        let p = matches as f64 / n as f64;
        let chance = 1.0 / 256.0;
        ((p - chance) / (1.0 - chance)).max(0.0)
    }

    /// Fills `self.shingles` with the shingle hashes of the sample; false when it has none.
    fn shingle(&mut self, query: &str, response: &str) -> bool {
        self.shingles.clear();
        self.words.clear();
        word_hashes(query, &mut self.words);
        word_hashes(response, &mut self.words);
        let k = self.config.word_shingle;
        if self.words.len() >= self.config.min_words.max(k) {
            for window in self.words.windows(k) {
                let mut h: u64 = 0x7773_6869_6e67_6c65; // "wshingle"
                for &w in window {
                    h = mix64(h.rotate_left(23) ^ w);
                }
                self.shingles.push(h);
            }
            return true;
        }
        self.chars.clear();
        normalised_chars(query, &mut self.chars);
        if !self.chars.is_empty() {
            self.chars.push(' ');
        }
        normalised_chars(response, &mut self.chars);
        if self.chars.last() == Some(&' ') {
            self.chars.pop();
        }
        if self.chars.is_empty() {
            return false;
        }
        let k = self.config.char_shingle.min(self.chars.len());
        for window in self.chars.windows(k) {
            let mut h: u64 = 0x6373_6869_6e67_6c65; // "cshingle"
            for &c in window {
                h = mix64(h.rotate_left(23) ^ u64::from(c));
            }
            self.shingles.push(h);
        }
        true
    }

    fn sign(&mut self) {
        self.signature.fill(u32::MAX);
        for &x in &self.shingles {
            for ((slot, &a), &b) in self.signature.iter_mut().zip(&self.mul).zip(&self.add) {
                let v = (a.wrapping_mul(x).wrapping_add(b) >> 32) as u32;
                if v < *slot {
                    *slot = v;
                }
            }
        }
    }
}

/// Appends one hash per word (a run of letters and digits, lowercased) of `text`.
fn word_hashes(text: &str, out: &mut Vec<u64>) {
    const START: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = START;
    let mut in_word = false;
    for c in text.chars() {
        if c.is_alphanumeric() {
            if c.is_ascii() {
                h = (h ^ u64::from(c.to_ascii_lowercase())).wrapping_mul(PRIME);
            } else {
                for l in c.to_lowercase() {
                    h = (h ^ u64::from(l)).wrapping_mul(PRIME);
                }
            }
            in_word = true;
        } else if in_word {
            out.push(mix64(h));
            h = START;
            in_word = false;
        }
    }
    if in_word {
        out.push(mix64(h));
    }
}

/// Appends the characters of `text` lowercased, with whitespace runs collapsed to one
/// space and no leading or trailing space.
fn normalised_chars(text: &str, out: &mut Vec<char>) {
    let mut pending_space = false;
    let start = out.len();
    for c in text.chars() {
        if c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if pending_space && out.len() > start {
            out.push(' ');
        }
        pending_space = false;
        out.extend(c.to_lowercase());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banding_matches_the_threshold() {
        assert_eq!(lsh_params(0.8, 128), (11, 11));
        let (b, r) = lsh_params(0.5, 128);
        assert!(
            ((1.0 / b as f64).powf(1.0 / r as f64) - 0.5).abs() < 0.03,
            "{b}x{r}"
        );
        assert_eq!(lsh_params(1.0, 128), (1, 128));
        for t in [0.3, 0.6, 0.7, 0.9, 0.95] {
            let (b, r) = lsh_params(t, 128);
            assert!(b * r <= 128);
            assert!(
                ((1.0 / b as f64).powf(1.0 / r as f64) - t).abs() < 0.05,
                "{t}: {b}x{r}"
            );
        }
    }

    fn text(n: usize, salt: &str) -> String {
        (0..n)
            .map(|i| format!("w{i}{salt}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn finds_small_edits_and_keeps_different_texts() {
        let mut d = NearDeduper::new(&NearDedupeConfig::default());
        let base = text(200, "");
        assert!(!d.check_and_insert("q", &base));
        // One word changed in 200: Jaccard of 5-shingles about 0.95.
        let edited = base.replacen("w100 ", "changed ", 1);
        assert!(d.check_and_insert("q", &edited));
        // Same words, other content.
        assert!(!d.check_and_insert("q", &text(200, "x")));
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn short_texts_use_characters() {
        let mut d = NearDeduper::new(&NearDedupeConfig::default());
        assert!(!d.check_and_insert(
            "How do I reset my password on the website?",
            "Open settings, then security, then reset."
        ));
        assert!(d.check_and_insert(
            "How do I reset my pasword on the website?",
            "Open settings, then security, then reset."
        ));
        assert!(!d.check_and_insert("What is the capital of France?", "Paris."));
        assert!(!d.check_and_insert("", ""));
        assert!(!d.check_and_insert("ab", ""));
        assert!(d.check_and_insert("AB", ""));
    }

    #[test]
    fn word_hashes_ignore_case_and_punctuation() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        word_hashes("Hello, World! Ünïcode", &mut a);
        word_hashes("hello world ünïcode", &mut b);
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
    }
}
