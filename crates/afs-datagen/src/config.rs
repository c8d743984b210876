//! What a generation run does: the [`GeneratorConfig`], the output [`Format`] and the
//! near-duplicate settings, with their defaults and validation.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::error::DatagenError;

/// The training-file format. Every format writes one JSON object per line.
///
/// | name | one line |
/// | --- | --- |
/// | `chatml` | `{"messages":[{"role":"system",..}?,{"role":"user",..},{"role":"assistant",..}],"metadata":{..}}` |
/// | `openai` | `{"messages":[..]}`: OpenAI's chat fine-tuning format, messages only |
/// | `alpaca` | `{"instruction":..,"input":"","output":..,"system":..?}` |
/// | `completion` | `{"prompt":..,"completion":..}` |
/// | `text` | `{"text":..}` |
/// | `sharegpt` | `{"conversations":[{"from":"system",..}?,{"from":"user",..},{"from":"assistant",..}]}` |
/// | `dpo` | `{"prompt":..,"chosen":..,"rejected":..}` |
/// | `openai-dpo` | `{"input":{"messages":[..]},"preferred_output":[..],"non_preferred_output":[..]}` |
/// | `kto` | `{"prompt":..,"completion":..,"label":true}` |
///
/// `completion`, `dpo` and `kto` come in either [`Shape`]; the others have one shape only.
/// `dpo`, `openai-dpo` and `kto` are preference formats: the user's feedback is their
/// label, so the feedback filter does not apply to them (see
/// [`GeneratorConfig::min_user_feedback`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Format {
    /// Chat messages with a `metadata` object per line (TRL SFT conversational, axolotl
    /// `chat_template`); without metadata it is [`Format::OpenAi`].
    #[default]
    ChatMl,
    /// Alpaca instruction/input/output.
    Alpaca,
    /// TRL prompt–completion.
    Completion,
    /// Plain language-modelling text.
    Text,
    /// ShareGPT conversations with the system turn inside and `system`/`user`/`assistant`
    /// roles (LLaMA-Factory with its `tags`, axolotl, TRL after `maybe_convert_to_chatml`).
    ShareGpt,
    /// Preference pairs for DPO-style trainers (TRL).
    Dpo,
    /// Unpaired labelled examples for KTO (TRL).
    Kto,
    /// OpenAI's chat fine-tuning format: `messages` and nothing else.
    OpenAi,
    /// OpenAI's preference fine-tuning format (DPO).
    OpenAiDpo,
}

impl Format {
    /// Every format, in the order of the table above.
    pub const ALL: [Format; 9] = [
        Format::ChatMl,
        Format::OpenAi,
        Format::Alpaca,
        Format::Completion,
        Format::Text,
        Format::ShareGpt,
        Format::Dpo,
        Format::OpenAiDpo,
        Format::Kto,
    ];

    /// The format's name as the CLI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::ChatMl => "chatml",
            Format::Alpaca => "alpaca",
            Format::Completion => "completion",
            Format::Text => "text",
            Format::ShareGpt => "sharegpt",
            Format::Dpo => "dpo",
            Format::Kto => "kto",
            Format::OpenAi => "openai",
            Format::OpenAiDpo => "openai-dpo",
        }
    }

    /// The kind of example the format holds: `dpo` and `openai-dpo` preference pairs,
    /// `kto` labelled responses, every other format supervised examples.
    pub fn example_kind(self) -> crate::ExampleKind {
        match self {
            Format::Dpo | Format::OpenAiDpo => crate::ExampleKind::Preference,
            Format::Kto => crate::ExampleKind::Labeled,
            _ => crate::ExampleKind::Sft,
        }
    }

    /// True for `dpo`, `openai-dpo` and `kto`, whose label is the user's feedback.
    pub fn is_preference(self) -> bool {
        matches!(self, Format::Dpo | Format::OpenAiDpo | Format::Kto)
    }

    /// True for the formats whose samples are pairs of records (`dpo`, `openai-dpo`).
    pub fn is_paired(self) -> bool {
        self.example_kind() == crate::ExampleKind::Preference
    }

    /// The shapes the format can be written in: both for `completion`, `dpo` and `kto`;
    /// only [`Shape::Conversational`] for the message formats (`chatml`, `openai`,
    /// `sharegpt`, `openai-dpo`); only [`Shape::Plain`] for `alpaca` and `text`.
    pub fn shapes(self) -> &'static [Shape] {
        match self {
            Format::Completion | Format::Dpo | Format::Kto => {
                &[Shape::Plain, Shape::Conversational]
            }
            Format::ChatMl | Format::OpenAi | Format::ShareGpt | Format::OpenAiDpo => {
                &[Shape::Conversational]
            }
            Format::Alpaca | Format::Text => &[Shape::Plain],
        }
    }

    /// The shape used when none is configured: the first of [`Format::shapes`], so
    /// `completion`, `dpo` and `kto` are plain (strings) unless asked otherwise.
    pub fn default_shape(self) -> Shape {
        self.shapes()[0]
    }
}

/// Whether prompts and responses are plain strings or lists of chat messages.
///
/// The shape is chosen by the configuration alone ([`GeneratorConfig::shape`]), never by
/// the data: every line of one file has the same shape, and a system prompt is carried in
/// the way the shape allows. In the plain shape of `completion`, `dpo` and `kto`, the
/// prompt is the system prompt (if any) and the query, each followed by a blank line
/// ([`PLAIN_SEPARATOR`]), and the response follows it unchanged, so that `prompt +
/// completion` is exactly the `text` format's line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// Strings: `{"prompt":"..\n\n","completion":".."}`.
    Plain,
    /// Message lists, as TRL's conversational datasets and chat templates take them.
    Conversational,
}

/// What ends the system prompt and the query in a plain prompt (see [`Shape`]).
pub const PLAIN_SEPARATOR: &str = "\n\n";

impl Shape {
    /// Both shapes.
    pub const ALL: [Shape; 2] = [Shape::Plain, Shape::Conversational];

    /// `plain` or `conversational`.
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::Plain => "plain",
            Shape::Conversational => "conversational",
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Shape {
    type Err = String;

    /// Parses `plain` or `conversational`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Shape::ALL
            .into_iter()
            .find(|shape| shape.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown shape {s:?} (expected plain or conversational)"))
    }
}

impl serde::Serialize for Shape {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown format name. Its message names the format meant when the name is another
/// tool's name for one of afs's formats, or a near misspelling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown format {name:?}{}; expected one of chatml, openai, alpaca, completion, text, sharegpt, dpo, openai-dpo, kto", hint_text(.name))]
pub struct ParseFormatError {
    /// The name that was given.
    pub name: String,
}

/// Other tools' names for afs's formats (lowercase, `_` and spaces written `-`), and the
/// format each means.
const OTHER_NAMES: &[(&str, &str)] = &[
    (
        "messages",
        "chatml (with metadata) or openai (messages only)",
    ),
    ("chat", "chatml (with metadata) or openai (messages only)"),
    ("openai-chat", "openai"),
    ("openai-sft", "openai"),
    ("openai-messages", "openai"),
    ("openai-preference", "openai-dpo"),
    ("openai-pref", "openai-dpo"),
    ("preference", "dpo (TRL) or openai-dpo (OpenAI)"),
    ("trl-dpo", "dpo"),
    ("orpo", "dpo"),
    ("cpo", "dpo"),
    ("pairs", "dpo"),
    ("trl-kto", "kto"),
    ("unpaired", "kto"),
    ("prompt-completion", "completion"),
    ("trl", "completion, dpo or kto (TRL's formats)"),
    ("llama-factory", "sharegpt or alpaca"),
    ("llamafactory", "sharegpt or alpaca"),
    ("conversations", "sharegpt"),
    ("vicuna", "sharegpt"),
    ("plain", "text"),
    ("lm", "text"),
];

/// `" (did you mean X?)"` for a name that is another tool's name for a format, differs
/// from one only in case, `_` or spaces, or is one or two edits away from one; else "".
fn hint_text(name: &str) -> String {
    let normal = name.trim().to_ascii_lowercase().replace(['_', ' '], "-");
    if let Some((_, meant)) = OTHER_NAMES.iter().find(|(other, _)| *other == normal) {
        return format!(" (did you mean {meant}?)");
    }
    let closest = Format::ALL
        .into_iter()
        .map(|f| (edit_distance(&normal, f.as_str()), f))
        .min_by_key(|(d, _)| *d);
    match closest {
        Some((d, f)) if d <= 2 && d < normal.len() => format!(" (did you mean {f}?)"),
        _ => String::new(),
    }
}

/// Levenshtein distance between two short ASCII names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

impl FromStr for Format {
    type Err = ParseFormatError;

    /// Parses a format name, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseFormatError {
                name: s.to_string(),
            })
    }
}

impl serde::Serialize for Format {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Near-duplicate removal with MinHash and LSH banding.
///
/// Each sample's text (query and response, normalised) is cut into shingles: word
/// `word_shingle`-grams when it has at least `min_words` words, otherwise character
/// `char_shingle`-grams (short texts have too few word shingles for one edited word to
/// leave the Jaccard similarity high), and a text shorter than one shingle is one shingle.
/// A MinHash signature of `num_permutations` values estimates the Jaccard similarity of
/// two shingle sets. LSH splits the signature into `b` bands of `r` rows, chosen with
/// `b × r <= num_permutations` so that the band threshold `(1/b)^(1/r)` is as close as
/// possible to `threshold` (11 × 11 for 0.8 and 128 permutations). A sample sharing a band
/// with an earlier kept sample is removed when the estimated Jaccard similarity of their
/// signatures is at least `threshold`. The earliest sample in log order is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct NearDedupeConfig {
    /// Jaccard similarity at or above which two samples are near-duplicates, in (0, 1].
    pub threshold: f64,
    /// MinHash signature length, 16..=1024.
    pub num_permutations: usize,
    /// Words per shingle for texts of at least `min_words` words (>= 1).
    pub word_shingle: usize,
    /// Characters per shingle for shorter texts (>= 1).
    pub char_shingle: usize,
    /// Texts with fewer words use character shingles.
    pub min_words: usize,
}

impl Default for NearDedupeConfig {
    /// Threshold 0.8, 128 permutations, word 5-grams from 50 words up, else character 5-grams.
    fn default() -> Self {
        NearDedupeConfig {
            threshold: 0.8,
            num_permutations: 128,
            word_shingle: 5,
            char_shingle: 5,
            min_words: 50,
        }
    }
}

/// Settings of one generation run. `Default` gives the seed's defaults: minimum quality
/// 0.7, thumbs-up feedback required, exact dedupe on, `chatml`, no cap; plus redaction on,
/// no near-dedupe, no existing file and no rehearsal.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    /// Records whose quality score is below this are dropped; in [0, 1]. In `dpo` and
    /// `kto`, only positive (thumbs-up) records must reach it: a rejected or `label: false`
    /// example is expected to be poor.
    pub min_quality_score: f64,
    /// The feedback filter. `Some(n)`: a record passes iff it has feedback and its value
    /// (-1, 0 or 1) is `>= n`; so `Some(1)` keeps thumbs-up only, `Some(0)` neutral or
    /// thumbs-up, `Some(-1)` any record that has feedback. `None`: no condition; records
    /// without feedback pass. `n` must be -1, 0 or 1. Ignored by `dpo` and `kto`, which
    /// take exactly the records with feedback -1 or 1 and use it as the label.
    pub min_user_feedback: Option<i64>,
    /// Remove exact duplicates (same query and response after lowercasing and collapsing
    /// whitespace), within the log and against the existing file.
    pub deduplicate: bool,
    /// Remove near-duplicates too; `None` = off. Not applied to `dpo`, whose pairs are two
    /// responses to one query and often near each other on purpose.
    pub near_dedupe: Option<NearDedupeConfig>,
    /// Output format.
    pub format: Format,
    /// At most this many lines in the output (new and rehearsal samples together); the
    /// new samples kept are those of highest quality, ties going to the earlier record.
    pub max_samples: Option<u64>,
    /// Replace personal data and secrets in the output with typed placeholders.
    pub redact: bool,
    /// An existing training file (any supported format, detected per line): new samples
    /// duplicating one of its samples are dropped, and `rehearsal_ratio` of the output is
    /// drawn from it. May be the output path itself.
    pub existing: Option<PathBuf>,
    /// Share of the output made of existing samples, in [0, 1). With `n` new samples and
    /// `m` usable existing lines, `min(m, round(n × ratio / (1 − ratio)))` existing lines
    /// are mixed in, so they make up `ratio` of the output when the file has enough of
    /// them. Needs `existing`.
    pub rehearsal_ratio: f64,
    /// Seed of the rehearsal choice: the same seed, log and config give the same file.
    pub seed: u64,
    /// Only records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only records strictly before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only records of this model.
    pub model: Option<String>,
    /// A system prompt added to every sample (in the way each format carries one: a
    /// system message, `alpaca`'s `system` key, or the start of a plain prompt). It never
    /// changes the shape of the output.
    pub system_prompt: Option<String>,
    /// Plain strings or message lists; `None` = the format's [`Format::default_shape`].
    /// Must be one of the format's [`Format::shapes`].
    pub shape: Option<Shape>,
    /// Write `chatml`'s `metadata` object (provenance of each line). Off, a `chatml` line
    /// is exactly an `openai` line. Other formats never carry metadata.
    pub metadata: bool,
    /// Write the scores the scorer gives to unscored records back to the store.
    pub write_back_scores: bool,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            min_quality_score: 0.7,
            min_user_feedback: Some(1),
            deduplicate: true,
            near_dedupe: None,
            format: Format::ChatMl,
            max_samples: None,
            redact: true,
            existing: None,
            rehearsal_ratio: 0.0,
            seed: 0,
            since: None,
            until: None,
            model: None,
            system_prompt: None,
            shape: None,
            metadata: true,
            write_back_scores: true,
        }
    }
}

impl GeneratorConfig {
    /// The shape lines are written in: [`GeneratorConfig::shape`], or the format's default.
    pub fn effective_shape(&self) -> Shape {
        self.shape.unwrap_or(self.format.default_shape())
    }

    /// Checks every field; the first problem found is returned, naming its field.
    pub fn validate(&self) -> Result<(), DatagenError> {
        let q = self.min_quality_score;
        if !q.is_finite() || !(0.0..=1.0).contains(&q) {
            return Err(DatagenError::config(
                "min_quality_score",
                format!("{q} is not a number within [0, 1]"),
            ));
        }
        if let Some(n) = self.min_user_feedback {
            if !(-1..=1).contains(&n) {
                return Err(DatagenError::config(
                    "min_user_feedback",
                    format!("{n} is not one of -1, 0, 1"),
                ));
            }
        }
        if let Some(shape) = self.shape {
            if !self.format.shapes().contains(&shape) {
                let only = self.format.default_shape();
                return Err(DatagenError::config(
                    "shape",
                    format!(
                        "format {} is {only} only; {shape} is for completion, dpo and kto",
                        self.format
                    ),
                ));
            }
        }
        if self.max_samples == Some(0) {
            return Err(DatagenError::config("max_samples", "must be at least 1"));
        }
        let r = self.rehearsal_ratio;
        if !r.is_finite() || !(0.0..1.0).contains(&r) {
            return Err(DatagenError::config(
                "rehearsal_ratio",
                format!("{r} is not a number within [0, 1)"),
            ));
        }
        if r > 0.0 && self.existing.is_none() {
            return Err(DatagenError::config(
                "rehearsal_ratio",
                "needs an existing file to draw from",
            ));
        }
        if let (Some(since), Some(until)) = (self.since, self.until) {
            if since >= until {
                return Err(DatagenError::config(
                    "since",
                    format!("{since} is not before until {until}"),
                ));
            }
        }
        if let Some(model) = &self.model {
            if model.trim().is_empty() {
                return Err(DatagenError::config(
                    "model",
                    "must not be empty when given",
                ));
            }
        }
        if let Some(near) = &self.near_dedupe {
            let t = near.threshold;
            if !t.is_finite() || t <= 0.0 || t > 1.0 {
                return Err(DatagenError::config(
                    "near_dedupe.threshold",
                    format!("{t} is not a number within (0, 1]"),
                ));
            }
            if !(16..=1024).contains(&near.num_permutations) {
                return Err(DatagenError::config(
                    "near_dedupe.num_permutations",
                    format!("{} is not within 16..=1024", near.num_permutations),
                ));
            }
            if near.word_shingle == 0 {
                return Err(DatagenError::config(
                    "near_dedupe.word_shingle",
                    "must be at least 1",
                ));
            }
            if near.char_shingle == 0 {
                return Err(DatagenError::config(
                    "near_dedupe.char_shingle",
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.to_string().parse::<Format>().unwrap(), f);
        }
        assert_eq!("ChatML".parse::<Format>().unwrap(), Format::ChatMl);
        assert_eq!(" ShareGPT ".parse::<Format>().unwrap(), Format::ShareGpt);
        let err = "jsonl".parse::<Format>().unwrap_err();
        assert!(err.to_string().contains("\"jsonl\""), "{err}");
    }

    #[test]
    fn unknown_format_names_point_to_the_format_meant() {
        let check = |name: &str, hint: &str| {
            let message = name.parse::<Format>().unwrap_err().to_string();
            assert!(message.contains(hint), "{name}: {message}");
            assert!(
                message.contains("expected one of chatml, openai"),
                "{message}"
            );
        };
        check("openai_dpo", "did you mean openai-dpo?");
        check("OpenAI-Preference", "did you mean openai-dpo?");
        check("openai-chat", "did you mean openai?");
        check("trl-dpo", "did you mean dpo?");
        check("prompt_completion", "did you mean completion?");
        check("llama-factory", "did you mean sharegpt or alpaca?");
        check("chatlm", "did you mean chatml?");
        check("shargpt", "did you mean sharegpt?");
        let far = "jsonl".parse::<Format>().unwrap_err().to_string();
        assert!(!far.contains("did you mean"), "{far}");
        let short = "x".parse::<Format>().unwrap_err().to_string();
        assert!(!short.contains("did you mean"), "{short}");
        assert_eq!("OpenAI-DPO".parse::<Format>().unwrap(), Format::OpenAiDpo);
    }

    #[test]
    fn shapes_are_those_of_the_format() {
        for format in Format::ALL {
            assert_eq!(format.default_shape(), format.shapes()[0]);
            for shape in Shape::ALL {
                let config = GeneratorConfig {
                    format,
                    shape: Some(shape),
                    ..GeneratorConfig::default()
                };
                let allowed = format.shapes().contains(&shape);
                assert_eq!(config.validate().is_ok(), allowed, "{format} {shape}");
                if allowed {
                    assert_eq!(config.effective_shape(), shape);
                }
            }
        }
        assert_eq!(Format::Completion.default_shape(), Shape::Plain);
        assert_eq!(Format::ChatMl.default_shape(), Shape::Conversational);
        assert_eq!(Format::Alpaca.shapes(), [Shape::Plain]);
        assert_eq!("Conversational".parse::<Shape>(), Ok(Shape::Conversational));
        assert!("list".parse::<Shape>().is_err());
        let refused = GeneratorConfig {
            format: Format::ChatMl,
            shape: Some(Shape::Plain),
            ..GeneratorConfig::default()
        };
        let message = refused.validate().unwrap_err().to_string();
        assert!(
            message.contains("chatml is conversational only"),
            "{message}"
        );
    }

    fn field_of(config: GeneratorConfig) -> Option<&'static str> {
        match config.validate() {
            Ok(()) => None,
            Err(DatagenError::InvalidConfig { field, .. }) => Some(field),
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn validation_names_the_field() {
        let ok = GeneratorConfig::default();
        assert_eq!(field_of(ok.clone()), None);
        let check =
            |config: GeneratorConfig, field: Option<&str>| assert_eq!(field_of(config), field);
        check(
            GeneratorConfig {
                min_quality_score: f64::NAN,
                ..ok.clone()
            },
            Some("min_quality_score"),
        );
        check(
            GeneratorConfig {
                min_quality_score: 1.5,
                ..ok.clone()
            },
            Some("min_quality_score"),
        );
        check(
            GeneratorConfig {
                min_quality_score: 0.0,
                ..ok.clone()
            },
            None,
        );
        check(
            GeneratorConfig {
                min_user_feedback: Some(2),
                ..ok.clone()
            },
            Some("min_user_feedback"),
        );
        check(
            GeneratorConfig {
                min_user_feedback: Some(-1),
                ..ok.clone()
            },
            None,
        );
        check(
            GeneratorConfig {
                min_user_feedback: None,
                ..ok.clone()
            },
            None,
        );
        check(
            GeneratorConfig {
                max_samples: Some(0),
                ..ok.clone()
            },
            Some("max_samples"),
        );
        check(
            GeneratorConfig {
                rehearsal_ratio: 1.0,
                ..ok.clone()
            },
            Some("rehearsal_ratio"),
        );
        check(
            GeneratorConfig {
                rehearsal_ratio: 0.2,
                ..ok.clone()
            },
            Some("rehearsal_ratio"),
        );
        check(
            GeneratorConfig {
                rehearsal_ratio: 0.2,
                existing: Some("old.jsonl".into()),
                ..ok.clone()
            },
            None,
        );
        check(
            GeneratorConfig {
                model: Some(" ".into()),
                ..ok.clone()
            },
            Some("model"),
        );
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        check(
            GeneratorConfig {
                since: Some(t),
                until: Some(t),
                ..ok.clone()
            },
            Some("since"),
        );
        let near = |n: NearDedupeConfig| GeneratorConfig {
            near_dedupe: Some(n),
            ..ok.clone()
        };
        check(near(NearDedupeConfig::default()), None);
        check(
            near(NearDedupeConfig {
                threshold: 0.0,
                ..Default::default()
            }),
            Some("near_dedupe.threshold"),
        );
        check(
            near(NearDedupeConfig {
                num_permutations: 8,
                ..Default::default()
            }),
            Some("near_dedupe.num_permutations"),
        );
        check(
            near(NearDedupeConfig {
                word_shingle: 0,
                ..Default::default()
            }),
            Some("near_dedupe.word_shingle"),
        );
        check(
            near(NearDedupeConfig {
                char_shingle: 0,
                ..Default::default()
            }),
            Some("near_dedupe.char_shingle"),
        );
    }
}
