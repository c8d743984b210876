//! Quality scoring of records that were logged without a score: the [`QualityScorer`]
//! trait and a deterministic heuristic default, [`HeuristicScorer`].

use std::collections::HashSet;

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
        let response_words: Vec<String> = words(response).collect();
        let n = response_words.len();
        if n == 0 {
            return 0.0;
        }
        let length = if n >= 2000 {
            0.8
        } else {
            (n as f64 / 20.0).min(1.0)
        };
        let distinct: HashSet<&str> = response_words.iter().map(String::as_str).collect();
        let diversity = if n >= 10 {
            let ratio = distinct.len() as f64 / n as f64;
            ((ratio - 0.2) / 0.3).clamp(0.0, 1.0)
        } else {
            1.0
        };
        let query_words: HashSet<String> = words(query).collect();
        let jaccard = if query_words.is_empty() {
            0.0
        } else {
            let shared = distinct
                .iter()
                .filter(|w| query_words.contains(**w))
                .count();
            shared as f64 / (query_words.len() + distinct.len() - shared) as f64
        };
        let echo = 1.0 - ((jaccard - 0.7) / 0.3).clamp(0.0, 1.0);
        let mut score = 0.5 * length + 0.25 * diversity + 0.25 * echo;
        let lower = response.to_lowercase().replace('\u{2019}', "'");
        if REFUSALS.iter().any(|p| lower.contains(p)) {
            score *= 0.5;
        }
        (score * 10_000.0).round() / 10_000.0
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
