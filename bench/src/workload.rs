//! The synthetic workload: records shaped like production LLM calls, drawn from a fixed-seed RNG.
//!
//! A record carries about 1.3 KB of text (a ~300-byte query and a ~1,000-byte response) made
//! of words from a vocabulary of a few thousand pseudo-words, so rows are neither identical
//! nor trivially compressible. Around 90% of records have a quality score and 20% have
//! feedback (mostly positive); timestamps move forward with exponential gaps.

use std::collections::HashSet;

use afs_store::{Feedback, FeedbackValue, NewUsage};
use chrono::{DateTime, Duration, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Seed of the vocabulary, shared by every workload so they all speak the same language.
const VOCAB_SEED: u64 = 0x5EED_0AF5;
/// Distinct pseudo-words in the vocabulary.
const N_WORDS: usize = 4000;
/// Distinct unit ids (users).
const N_UNITS: u32 = 20_000;
/// Models and their share of the traffic.
const MODELS: [(&str, f64); 4] = [
    ("nayru-v1", 0.40),
    ("nayru-v2", 0.30),
    ("farore-v1", 0.20),
    ("din-v3", 0.10),
];
const EXPERTS: [&str; 4] = ["general", "code", "lore", "asm"];
const CONSONANTS: &[u8] = b"bcdfghjklmnprstvwz";
const VOWELS: &[u8] = b"aeiou";

/// The first timestamp of every workload; fixed so runs are reproducible.
fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid fixed date")
}

/// A deterministic stream of usage records.
pub(crate) struct Workload {
    rng: StdRng,
    vocab: Vec<String>,
    mean_gap_us: f64,
    /// Microseconds from [`start`] to the last timestamp handed out.
    offset_us: i64,
    text_bytes: u64,
}

impl Workload {
    /// A workload seeded with `seed` whose timestamps are `mean_gap` apart on average.
    pub(crate) fn new(seed: u64, mean_gap: Duration) -> Self {
        Workload {
            rng: StdRng::seed_from_u64(seed),
            vocab: make_vocab(),
            mean_gap_us: mean_gap.num_microseconds().unwrap_or(1_000_000) as f64,
            offset_us: 0,
            text_bytes: 0,
        }
    }

    /// The timestamp of the last record generated.
    pub(crate) fn last_timestamp(&self) -> DateTime<Utc> {
        start() + Duration::microseconds(self.offset_us)
    }

    /// Bytes of query and response text generated so far.
    pub(crate) fn text_bytes(&self) -> u64 {
        self.text_bytes
    }

    /// The next `n` records, as an import or a backfill would write them.
    pub(crate) fn batch(&mut self, n: usize) -> Vec<NewUsage> {
        (0..n).map(|_| self.next_record()).collect()
    }

    /// The next record as a live service logs it: no timestamp (the store's clock stamps it)
    /// and no feedback yet.
    pub(crate) fn next_live(&mut self) -> NewUsage {
        NewUsage {
            timestamp: None,
            feedback: None,
            ..self.next_record()
        }
    }

    /// The next record, with a timestamp and possibly feedback.
    pub(crate) fn next_record(&mut self) -> NewUsage {
        let gap = -(1.0 - self.rng.gen::<f64>()).ln() * self.mean_gap_us;
        self.offset_us += (gap as i64).max(1);
        let timestamp = self.last_timestamp();

        let query_len = self.rng.gen_range(200..400);
        let response_len = self.rng.gen_range(700..1300);
        let query = self.text(query_len, '?');
        let response = self.text(response_len, '.');
        self.text_bytes += (query.len() + response.len()) as u64;

        let model = self.pick_model();
        let expert = self
            .rng
            .gen_bool(0.7)
            .then(|| EXPERTS[self.rng.gen_range(0..EXPERTS.len())].to_string());
        let latency_ms = 150.0 + -(1.0 - self.rng.gen::<f64>()).ln() * 350.0;
        let token_count = ((query.len() + response.len()) / 4) as i64 + self.rng.gen_range(0..50);
        let quality_score = self.rng.gen_bool(0.9).then(|| self.quality());
        let unit_id = self
            .rng
            .gen_bool(0.95)
            .then(|| format!("user-{:05}", self.rng.gen_range(0..N_UNITS)));
        let feedback = self.rng.gen_bool(0.2).then(|| Feedback {
            value: self.feedback_value(),
            text: None,
            at: Some(timestamp + Duration::seconds(self.rng.gen_range(5..3600))),
        });
        NewUsage {
            query,
            response,
            model: model.to_string(),
            expert,
            latency_ms: Some((latency_ms * 10.0).round() / 10.0),
            token_count: Some(token_count),
            quality_score,
            unit_id,
            context_hash: None,
            timestamp: Some(timestamp),
            feedback,
            messages: None,
        }
    }

    fn pick_model(&mut self) -> &'static str {
        let mut u = self.rng.gen::<f64>();
        for (model, share) in MODELS {
            if u < share {
                return model;
            }
            u -= share;
        }
        MODELS[0].0
    }

    /// A score around 0.75 with a bell-shaped spread, clamped to [0, 1].
    fn quality(&mut self) -> f64 {
        let z = (self.rng.gen::<f64>() + self.rng.gen::<f64>() + self.rng.gen::<f64>() - 1.5) * 2.0;
        let q = (0.75 + 0.15 * z).clamp(0.0, 1.0);
        (q * 1000.0).round() / 1000.0
    }

    /// 70% thumbs up, 10% neutral, 20% thumbs down.
    fn feedback_value(&mut self) -> FeedbackValue {
        match self.rng.gen::<f64>() {
            u if u < 0.7 => FeedbackValue::Positive,
            u if u < 0.8 => FeedbackValue::Neutral,
            _ => FeedbackValue::Negative,
        }
    }

    /// Sentences of vocabulary words, about `len` bytes long, ending with `end`.
    fn text(&mut self, len: usize, end: char) -> String {
        let mut text = String::with_capacity(len + 16);
        let mut words_in_sentence = 0;
        while text.len() < len {
            if !text.is_empty() {
                text.push(' ');
            }
            // Squaring the uniform draw favours the front of the vocabulary, as word
            // frequencies in real text favour common words.
            let u = self.rng.gen::<f64>();
            let index = ((u * u) * self.vocab.len() as f64) as usize;
            text.push_str(&self.vocab[index.min(self.vocab.len() - 1)]);
            words_in_sentence += 1;
            if words_in_sentence >= 6 && self.rng.gen_bool(0.12) {
                text.push(if self.rng.gen_bool(0.8) { '.' } else { ',' });
                words_in_sentence = 0;
            }
        }
        text.push(end);
        text
    }
}

/// `N_WORDS` distinct pseudo-words of one to four syllables.
fn make_vocab() -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(VOCAB_SEED);
    let mut seen = HashSet::with_capacity(N_WORDS);
    let mut vocab = Vec::with_capacity(N_WORDS);
    while vocab.len() < N_WORDS {
        let mut word = String::new();
        for _ in 0..rng.gen_range(1..=4) {
            word.push(CONSONANTS[rng.gen_range(0..CONSONANTS.len())] as char);
            word.push(VOWELS[rng.gen_range(0..VOWELS.len())] as char);
            if rng.gen_bool(0.3) {
                word.push(CONSONANTS[rng.gen_range(0..CONSONANTS.len())] as char);
            }
        }
        if seen.insert(word.clone()) {
            vocab.push(word);
        }
    }
    vocab
}
